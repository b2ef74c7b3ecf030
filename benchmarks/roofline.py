"""What this machine allows at best: measured matmul throughput and weight-streaming bandwidth, and the floors
they put under MODA's speed goals.

A goal can be out of reach of any software on a given CPU; these two numbers say when. Training is matmul-bound:
a sample costs about 6 x trained parameters x tokens FLOPs (forward 2, backward 4), so samples/s can never beat
peak GFLOP/s over that. Decoding one image at a time is bandwidth-bound: every token reads every decoder weight,
so the decoder's bytes over the speed at which the int8 kernel streams weights from memory is a per-token floor.
"""

from __future__ import annotations

import warnings

import measure
import torch
from torch import nn

from modeling_moda.fast_inference import quantize_linear_int8


def best_seconds(function, repeats: int) -> float:
    function()  # warm-up
    return measure.seconds(function, "cpu", repeats)


def matmul_gflops(
    dtype: torch.dtype = torch.float32, rows: int = 464, inner: int = 768, columns: int = 3072, repeats: int = 20
) -> float:
    """Matmul throughput at a training-shaped product (a batch of 16 x 29 tokens through OPT's MLP)."""
    left, right = torch.randn(rows, inner, dtype=dtype), torch.randn(inner, columns, dtype=dtype)
    return 2 * rows * inner * columns / best_seconds(lambda: left @ right, repeats) / 1e9


def int8_streaming_gb_per_s(layers: int = 24, repeats: int = 10) -> float:
    """Bytes/s at which torch's dynamic-int8 linear reads weights at batch 1, over more weights than fit in cache."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stack = quantize_linear_int8(nn.Sequential(*(nn.Linear(768, 3072) for _ in range(layers)))).eval()
    token = torch.randn(1, 768)

    def read_all() -> None:
        for layer in stack:
            layer(token)

    with torch.inference_mode():
        return layers * 768 * 3072 / best_seconds(read_all, repeats) / 1e9


__all__ = ["int8_streaming_gb_per_s", "matmul_gflops"]
