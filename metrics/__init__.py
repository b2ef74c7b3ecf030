"""MODA's caption metrics as local `evaluate` modules: `evaluate.load("bleu")` needs the Hub, these do not."""

from pathlib import Path

import evaluate


METRICS_DIR = Path(__file__).resolve().parent


def load_metric(name: str) -> evaluate.EvaluationModule:
    """Load ``bleu``, ``rouge`` or ``fashion_attributes`` from this package, wherever the caller runs from."""
    return evaluate.load(str(METRICS_DIR / name))
