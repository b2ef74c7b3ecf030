"""Read the `{"description": ...}` object out of a teacher model's free-form answer.

Teachers wrap the JSON in code fences, chat around it, use single quotes or leave trailing commas; none of that
should cost an item. Every answer that still holds no description fails with a short reason, which the pipeline
records and retries on: `AnswerError` is the only exception `parse_description` raises, whatever the answer.
"""

import ast
import json
import re


class AnswerError(ValueError):
    """An answer with no usable description; `str(error)` is the reason the pipeline records."""


_TRAILING_COMMA = re.compile(r",\s*([}\]])")
_DESCRIPTION_FIELD = re.compile(r"""["']description["']\s*:\s*(["'])(.*?)(?<!\\)\1\s*[,}]""", re.DOTALL)


def _load_object(candidate: str) -> object:
    """Strict JSON first, then the two slips teachers make most: trailing commas and Python-style quotes."""
    for attempt in (
        lambda: json.loads(candidate),
        lambda: json.loads(_TRAILING_COMMA.sub(r"\1", candidate)),
        lambda: ast.literal_eval(candidate),
    ):
        # literal_eval raises TypeError on `{{"description": ...}}` (a set holding a dict is unhashable)
        try:
            return attempt()
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            continue
    match = _DESCRIPTION_FIELD.search(candidate)
    if match is None:
        raise AnswerError("malformed JSON")
    return {"description": match.group(2)}


def parse_description(answer: str) -> str:
    """The description in `answer`, whitespace collapsed; raises `AnswerError` with the reason when there is none."""
    if not isinstance(answer, str):
        raise AnswerError("answer is not text")
    try:
        answer.encode("utf-8")  # a lone surrogate could not be written to the dataset
    except UnicodeEncodeError:
        raise AnswerError("answer is not valid Unicode") from None
    if not answer.strip():
        raise AnswerError("empty answer")
    start = answer.find("{")
    if start == -1:
        raise AnswerError("no JSON object")
    end = answer.rfind("}")
    if end < start:
        raise AnswerError("unterminated JSON object")
    parsed = _load_object(answer[start : end + 1])
    if not isinstance(parsed, dict):
        raise AnswerError("JSON is not an object")
    values = {str(key).strip().lower(): value for key, value in parsed.items()}
    if "description" not in values:
        raise AnswerError("missing 'description' key")
    description = values["description"]
    if not isinstance(description, str):
        raise AnswerError("description is not a string")
    description = " ".join(description.split())
    if not description:
        raise AnswerError("empty description")
    return description
