"""A drafter for random weights: guesses the model's own greedy text, each guess right with a set probability.

A real `CaptionDrafter` guesses well because a trained model writes its training captions' phrases; random
weights write no phrases, so the speed benchmark replays the guess quality measured on the trained demo model
(benchmarks/agreement.py, "guesses kept") instead: guess i of a description is right with probability
`acceptance`, drawn once per position. Right guesses are the model's own next tokens, found by running until
the text no longer changes: with int8 weights a pass's tokens shift each other's activation scale, so the text
written with guesses can differ slightly from the text written one token at a time.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np


class SimulatedDrafter:
    """Guesses `reference` (a full row: prompt and text), wrong where `right` is False; counts its calls."""

    def __init__(self, reference: Sequence[int], right: Sequence[bool]):
        self.reference, self.right = list(reference), list(right)
        self.calls = 0

    def draft(self, tokens: Sequence[int], count: int) -> list[int]:
        self.calls += 1
        start = len(tokens)
        if list(tokens) != self.reference[:start]:
            return []  # off the reference: nothing to guess from
        return [
            token if self.right[position] else token ^ 1  # another token id: a guess the model never agrees with
            for position, token in enumerate(self.reference[start : start + count], start)
        ]


def self_consistent_drafter(
    describe: Callable[[SimulatedDrafter | None], list[int]], acceptance: float, seed: int, rounds: int = 8
) -> SimulatedDrafter:
    """A `SimulatedDrafter` whose right guesses are what `describe` (one image, drafter -> full row) then writes."""
    reference = describe(None)
    right = (np.random.default_rng(seed).random(len(reference)) < acceptance).tolist()
    for _ in range(rounds):
        written = describe(SimulatedDrafter(reference, right))
        if written == reference:
            break
        reference = written
    return SimulatedDrafter(reference, right)


__all__ = ["SimulatedDrafter", "self_consistent_drafter"]
