"""The tokens a MODA model was trained to write, saved beside its weights as `caption_vocabulary.json`.

A model fine-tuned on fashion captions writes a few thousand of OPT's 50272 tokens. `train_hf.py` saves the
token ids of its training captions; `moda describe --fast int8` reads them back and lets the LM head score only
those (`modeling_moda.fast_inference.restrict_vocabulary`), which cuts the largest matrix of every decoding step.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from transformers.utils import cached_file

VOCABULARY_FILE = "caption_vocabulary.json"


def caption_token_ids(tokenizer, caption: str) -> list[int]:
    """A caption's token ids as training tokenizes its target text: stripped, no special tokens."""
    return tokenizer(caption.strip(), add_special_tokens=False)["input_ids"]


def build_caption_vocabulary(tokenizer, captions: Iterable[str]) -> list[int]:
    """Sorted ids of every token in `captions` (tokenized as training tokenizes them), plus EOS."""
    token_ids = {tokenizer.eos_token_id}
    for caption in captions:
        token_ids.update(caption_token_ids(tokenizer, caption))
    return sorted(token_ids)


def save_caption_vocabulary(token_ids: list[int], folder: str | os.PathLike) -> Path:
    path = Path(folder) / VOCABULARY_FILE
    path.write_text(json.dumps({"token_ids": token_ids}) + "\n")
    return path


def checkpoint_file(model_name_or_path: str | os.PathLike, filename: str) -> Path | None:
    """`filename` in a checkpoint folder, or from a Hub repo (cached); None when it has no such file."""
    if Path(model_name_or_path).is_dir():
        path = Path(model_name_or_path) / filename
        return path if path.is_file() else None
    path = cached_file(
        str(model_name_or_path),
        filename,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
    )
    return None if path is None else Path(path)


def load_caption_vocabulary(model_name_or_path: str | os.PathLike) -> list[int] | None:
    """The saved token ids of a checkpoint folder or Hub repo; None when it has none (e.g. trained elsewhere)."""
    path = checkpoint_file(model_name_or_path, VOCABULARY_FILE)
    if path is None:
        return None
    try:
        token_ids = json.loads(path.read_text())["token_ids"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is not a caption vocabulary ({{\"token_ids\": [...]}}): {error}") from error
    if not token_ids or not all(isinstance(token_id, int) and token_id >= 0 for token_id in token_ids):
        raise ValueError(f"{path}: token_ids must be a non-empty list of non-negative integers")
    return token_ids


__all__ = [
    "VOCABULARY_FILE",
    "build_caption_vocabulary",
    "caption_token_ids",
    "checkpoint_file",
    "load_caption_vocabulary",
    "save_caption_vocabulary",
]
