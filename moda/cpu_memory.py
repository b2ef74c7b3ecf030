"""Faster CPU work by keeping freed memory: glibc's malloc told to reuse large blocks instead of unmapping them.

A training step allocates and frees several vocabulary-sized tensors: the logits, their log-softmax and its
gradient (16 x 29 x 50272 floats, 93 MB each at batch 16), and the LM head's weight gradient (154 MB). glibc
serves any block over its mmap threshold (128 KiB, rising to at most 32 MiB) with a fresh mapping and returns it
to the kernel when freed, so every step the kernel zero-fills those pages again, one page fault per 4 KiB. On this
project's 2-core machine that made the step a sixth to a quarter longer (`python benchmarks/train.py`, the
feature-cache rows with and without "freed memory reused"). Describing a batch of photos also allocates large short-lived
tensors, so `moda describe` sets this too (the CLI rows of `python benchmarks/inference.py`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

from transformers.utils import logging

logger = logging.get_logger(__name__)

# mallopt parameters, from glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
LARGEST_THRESHOLD = 2**31 - 1  # mallopt takes an int; blocks over 2 GiB still get their own mapping


def reuse_freed_memory() -> bool:
    """Makes glibc keep freed blocks (up to 2 GiB) in the heap for the next allocation; returns whether it did.

    Process-wide and permanent: memory freed after a step stays with the process for the next one rather than
    going back to the system. Other C libraries (macOS, musl) are left alone and give False.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    applied = all(libc.mallopt(option, LARGEST_THRESHOLD) == 1 for option in (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD))
    if not applied:
        logger.warning("glibc's mallopt refused the thresholds: freed memory is unmapped as usual")
    return applied


__all__ = ["reuse_freed_memory"]
