"""Caption drafts on random weights: a model that writes one token decisively, and guesses right at a set rate.

A real `CaptionDrafter` guesses well because a trained model writes its training captions' phrases; random
weights write no phrases, and their near-tied logits flip under int8 as soon as a pass holds other tokens (a
pass's tokens share one activation scale), so no guess of their text holds still. The speed benchmark therefore
times the pass structure a trained model gets: `make_decisive` makes the model write one token by a wide margin
(a pass costs the same whatever its tokens are), and `SimulatedDrafter` guesses it right with the probability
measured on the trained demo model (benchmarks/agreement.py, "guess_acceptance"), drawn once per position.
`counting_passes` counts the passes a decoding took, for both benchmarks' "tokens per pass".
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn


@torch.no_grad()
def make_decisive(model: nn.Module, token_id: int, strength: float = 100.0) -> nn.Module:
    """Adds `strength` x `token_id`'s embedding to the decoder's final layer-norm bias: that token always wins."""
    decoder = model.language_model.get_decoder()
    decoder.final_layer_norm.bias += strength * model.language_model.get_input_embeddings().weight[token_id]
    return model


@contextmanager
def counting_passes(model: nn.Module) -> Iterator[list[int]]:
    """A one-item list that counts the decoder's passes inside the block: its final layer norm runs once a pass."""
    passes = [0]

    def count(*_) -> None:
        passes[0] += 1

    handle = model.language_model.get_decoder().final_layer_norm.register_forward_hook(count)
    try:
        yield passes
    finally:
        handle.remove()


class SimulatedDrafter:
    """Guesses `reference` (a full row: prompt and text), right at positions where `right` is True."""

    def __init__(self, reference: Sequence[int], acceptance: float, seed: int):
        self.reference = list(reference)
        self.right = (np.random.default_rng(seed).random(len(self.reference)) < acceptance).tolist()

    def draft(self, tokens: Sequence[int], count: int) -> list[int]:
        start, end = len(tokens), min(len(tokens) + count, len(self.reference))
        # token ^ 1: another token id, a guess the model does not agree with
        return [self.reference[i] if self.right[i] else self.reference[i] ^ 1 for i in range(start, end)]


__all__ = ["SimulatedDrafter", "counting_passes", "make_decisive"]
