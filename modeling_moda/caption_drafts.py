"""Guesses of what a MODA model writes next, read off its training captions; saved as `caption_drafts.json`.

MODA's captions are formulaic ("..., ideal for casual wear."), so the token that most often followed the last
few tokens in the training captions is usually the one the model writes next. `train_hf.py` saves that table;
`model.optimize_for_cpu()` loads it as `model.caption_drafter`, and two decoders check its guesses, several in one
pass over the weights, keeping only those the model would have written itself: the lean greedy loop
(`model.generate_fast`, `greedy_decoding.greedy_generate(drafter=...)`), and `model.generate(...,
prompt_lookup_num_tokens=N)` through `CaptionDraftCandidateGenerator`, transformers' candidate interface for
assisted generation. The text never changes; a good table only makes it cheaper (benchmarks/agreement.py counts
the passes).
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable, Sequence

import torch
from transformers.generation.candidate_generator import CandidateGenerator

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


def next_draft_count(asked: int, offered: int, kept: int, most: int) -> int:
    """How many guesses to ask for after a pass that checked `offered` of them and kept `kept`: half as many (at
    least 1) after none kept, twice as many (at most `most`) after all kept. A wrong guess still costs compute, a
    right one saves a pass."""
    if offered and kept >= offered:
        return min(most, 2 * asked)
    if offered and not kept:
        return max(1, asked // 2)
    return asked


def check_guesses(guesses: Sequence[int], vocab_size: int) -> None:
    """Raises on a guess outside the model's vocabulary, which would otherwise surface as an embedding index error."""
    if outside := [token for token in guesses if not 0 <= token < vocab_size]:
        raise ValueError(
            f"the drafter guessed token id {outside[0]}, outside the model's {vocab_size}-token vocabulary "
            "(a caption_drafts.json written for another tokenizer?)"
        )


class CaptionDraftCandidateGenerator(CandidateGenerator):
    """Assisted generation's candidates read off a caption draft table: `generate(prompt_lookup_num_tokens=N)` on
    a model with a `caption_drafter` (`MODAForConditionalGeneration._get_candidate_generator`).

    Like transformers' `PromptLookupCandidateGenerator` it returns tokens without logits, so greedy decoding keeps
    the leading guesses the model agrees with and the text is generate's greedy text. It differs in where it looks
    (the training captions' table, not the prompt) and in how many it asks for: `next_draft_count` from at most
    `num_output_tokens`, as the lean loop adapts them. Guesses stop at the first EOS: nothing after it is kept.
    """

    def __init__(
        self,
        drafter: CaptionDrafter,
        num_output_tokens: int,
        max_length: int,
        vocab_size: int,
        eos_token_id: torch.Tensor | None = None,
    ):
        if num_output_tokens < 1:
            raise ValueError(f"prompt_lookup_num_tokens must be at least 1, got {num_output_tokens}")
        self.drafter, self.most, self.asked = drafter, num_output_tokens, num_output_tokens
        self.max_length, self.vocab_size = max_length, vocab_size
        self.eos = set() if eos_token_id is None else set(eos_token_id.view(-1).tolist())

    def get_candidates(self, input_ids: torch.LongTensor, **kwargs) -> tuple[torch.LongTensor, None]:
        """`input_ids` (one row: assisted generation runs batch 1 only) followed by the table's guesses, and None
        for their logits."""
        count = min(self.asked, self.max_length - input_ids.shape[1] - 1)  # generate adds one token of its own
        guesses = self.drafter.draft(input_ids[0].tolist(), count)[:count] if count > 0 else []
        check_guesses(guesses, self.vocab_size)
        if ends := [index for index, token in enumerate(guesses) if token in self.eos]:
            guesses = guesses[: ends[0] + 1]
        if not guesses:
            return input_ids, None
        drafted = torch.tensor([guesses], dtype=input_ids.dtype, device=input_ids.device)
        return torch.cat([input_ids, drafted], 1), None

    def update_candidate_strategy(self, input_ids: torch.LongTensor, scores: torch.Tensor, num_matches: int) -> None:
        """`scores` holds one row per guess checked plus generate's own next token."""
        self.asked = next_draft_count(self.asked, scores.shape[1] - 1, int(num_matches), self.most)


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


__all__ = [
    "DRAFTS_FILE", "CaptionDraftCandidateGenerator", "CaptionDrafter", "build_caption_drafter", "check_guesses",
    "load_caption_drafter", "next_draft_count", "save_caption_drafter",
]
