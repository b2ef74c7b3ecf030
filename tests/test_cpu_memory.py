"""Freed memory kept for reuse: a large block allocated again after being freed no longer page-faults."""

import platform
import subprocess
import sys
from pathlib import Path

import pytest

# Runs in a fresh process: the setting is process-wide and permanent, and the "before" count needs glibc's defaults.
SCRIPT = """
import resource
import torch
from moda.cpu_memory import reuse_freed_memory

def page_faults_of_repeated_blocks() -> int:
    for _ in range(3):  # 100 MB blocks: the first uses fault their pages in either way, until the heap has room
        torch.empty(25_000_000).fill_(1.0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        torch.empty(25_000_000).fill_(1.0)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

default = page_faults_of_repeated_blocks()
applied = reuse_freed_memory()
print(default, applied, page_faults_of_repeated_blocks())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's")
def test_reused_blocks_stop_page_faulting():
    output = subprocess.run(
        [sys.executable, "-c", SCRIPT], check=True, capture_output=True, text=True, cwd=Path(__file__).parents[1]
    ).stdout.split()
    default, applied, reused = int(output[0]), output[1], int(output[2])
    assert applied == "True"
    assert default > 1000  # glibc's default: every 100 MB block is a fresh mapping, zero-filled page by page
    assert reused * 10 < default
