"""MODA's caption metrics as local `evaluate` modules: `evaluate.load("bleu")` needs the Hub, these do not.

Each folder is a standalone `evaluate` module: `evaluate.load("<this folder>/fashion_attributes")` works from
anywhere, without this package being importable.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import evaluate

METRICS_DIR = Path(__file__).resolve().parent


def load_metric(name: str) -> evaluate.EvaluationModule:
    """Load ``bleu``, ``rouge`` or ``fashion_attributes`` from this package, wherever the caller runs from."""
    import evaluate  # imported here: the fashion vocabulary in this package is read by code that never scores

    return evaluate.load(str(METRICS_DIR / name))
