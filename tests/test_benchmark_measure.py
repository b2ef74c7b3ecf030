"""The benchmarks' bookkeeping: interleaved rounds keep each variant's best numbers, never a mix of directions."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import measure  # noqa: E402


def test_best_of_keeps_shorter_times_higher_rates_and_first_other_values():
    first = {"latency_s": 0.6, "images_per_s_batch8": 7.0, "samples_per_s": 4.0, "peak_memory_mb": 900, "tokens": [1]}
    second = {"latency_s": 0.5, "images_per_s_batch8": 6.0, "samples_per_s": 4.5, "peak_memory_mb": 950, "tokens": [2]}
    assert measure.best_of(first, second) == {
        "latency_s": 0.5, "images_per_s_batch8": 7.0, "samples_per_s": 4.5, "peak_memory_mb": 900, "tokens": [1]
    }
