"""Guesses of what a MODA model writes next, read off its training captions; saved as `caption_drafts.json`.

MODA's captions are formulaic ("..., ideal for casual wear."), so the token that most often followed the last
few tokens in the training captions is usually the one the model writes next. `train_hf.py` saves that table;
`moda describe` hands it to the lean greedy loop (`modeling_moda.greedy_decoding.greedy_generate(drafter=...)`),
which checks several guesses in one pass over the weights and keeps only those the model would have written
itself. The text never changes; a good table only makes it cheaper (benchmarks/agreement.py counts the passes).
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable, Sequence

from .caption_vocabulary import caption_token_ids, checkpoint_file

DRAFTS_FILE = "caption_drafts.json"
DEFAULT_CONTEXT_TOKENS = 3


class CaptionDrafter:
    """Next-token table keyed by the last 1..`context_tokens` tokens; the longest context seen in training wins."""

    def __init__(self, next_token: dict[tuple[int, ...], int], context_tokens: int = DEFAULT_CONTEXT_TOKENS):
        if context_tokens < 1:
            raise ValueError(f"context_tokens must be at least 1, got {context_tokens}")
        self.next_token = next_token
        self.context_tokens = context_tokens

    def draft(self, tokens: Sequence[int], count: int) -> list[int]:
        """Up to `count` guesses after `tokens`, each read with the guesses before it; fewer when the table runs out."""
        text, guesses = list(tokens), []
        while len(guesses) < count:
            guess = next(
                (
                    self.next_token[context]
                    for size in range(min(self.context_tokens, len(text)), 0, -1)
                    if (context := tuple(text[-size:])) in self.next_token
                ),
                None,
            )
            if guess is None:
                break
            guesses.append(guess)
            text.append(guess)
        return guesses

    def __len__(self) -> int:
        return len(self.next_token)


def build_caption_drafter(
    tokenizer, captions: Iterable[str], context_tokens: int = DEFAULT_CONTEXT_TOKENS
) -> CaptionDrafter:
    """The most frequent next token (ties: the lowest id) after every context in `captions`, each tokenized as the
    model reads it: BOS, the caption, EOS."""
    counts: dict[tuple[int, ...], Counter] = defaultdict(Counter)
    for caption in captions:
        text = [tokenizer.bos_token_id, *caption_token_ids(tokenizer, caption), tokenizer.eos_token_id]
        for end in range(1, len(text)):
            for size in range(1, min(context_tokens, end) + 1):
                counts[tuple(text[end - size : end])][text[end]] += 1
    next_token = {
        context: min(counter, key=lambda token: (-counter[token], token)) for context, counter in counts.items()
    }
    return CaptionDrafter(next_token, context_tokens)


def save_caption_drafter(drafter: CaptionDrafter, folder: str | os.PathLike) -> Path:
    """Writes `caption_drafts.json`: one `[context..., next token]` list per entry."""
    path = Path(folder) / DRAFTS_FILE
    entries = [[*context, token] for context, token in sorted(drafter.next_token.items())]
    path.write_text(json.dumps({"context_tokens": drafter.context_tokens, "next_token": entries}) + "\n")
    return path


def load_caption_drafter(model_name_or_path: str | os.PathLike) -> CaptionDrafter | None:
    """The saved table of a checkpoint folder or Hub repo; None when it has none (e.g. trained elsewhere)."""
    path = checkpoint_file(model_name_or_path, DRAFTS_FILE)
    if path is None:
        return None
    try:
        saved = json.loads(path.read_text())
        context_tokens, entries = saved["context_tokens"], saved["next_token"]
        next_token = {tuple(entry[:-1]): entry[-1] for entry in entries}
    except (json.JSONDecodeError, KeyError, TypeError, IndexError) as error:
        raise ValueError(f"{path} is not a caption draft table: {error!r}") from error
    valid = type(context_tokens) is int and context_tokens >= 1 and all(
        isinstance(entry, list)
        and 2 <= len(entry) <= context_tokens + 1
        and all(type(token) is int and token >= 0 for token in entry)  # `type`: JSON true/false are no token ids
        for entry in entries
    )
    if not valid:
        raise ValueError(
            f"{path}: context_tokens must be a positive integer and next_token lists of 2..context_tokens + 1 "
            "non-negative token ids"
        )
    return CaptionDrafter(next_token, context_tokens)


__all__ = ["DRAFTS_FILE", "CaptionDrafter", "build_caption_drafter", "load_caption_drafter", "save_caption_drafter"]
