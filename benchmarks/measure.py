"""What both benchmarks share: the real-size random checkpoint, one process per variant, timing, memory, tables.

Each variant runs in its own fresh process (spawned, loading the same saved weights), so that its peak RSS is
its own and no variant warms caches or allocators for another.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # `python benchmarks/x.py` from a fresh clone, installed or not

import transformers  # noqa: E402
from transformers.utils import logging  # noqa: E402

from modeling_moda import MODAConfig, MODAForConditionalGeneration  # noqa: E402
from moda.cpu_memory import reuse_freed_memory  # noqa: E402
from modeling_moda.fast_inference import cpu_has_native_bf16  # noqa: E402


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="short smoke run: fewer repeats and sizes")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: PyTorch's choice)")
    parser.add_argument("--json", type=Path, help="also write the results here, e.g. benchmarks/results/cpu.json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--rounds", type=int, default=1, help="measure every variant this many times, interleaved; keep the best"
    )


def parse_arguments(
    parser: argparse.ArgumentParser, variants: dict[str, dict], argv: list[str] | None
) -> argparse.Namespace:
    """Common options plus `--variants`; the baseline always runs, first, since every ratio needs it."""
    add_common_arguments(parser)
    parser.add_argument("--variants", nargs="+", choices=list(variants), help="default: all that fit the device")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible")
    args.command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *(sys.argv[1:] if argv is None else argv)])
    return args


def default_variants(variants: dict[str, dict], device: str) -> list[str]:
    """All variants, less the bf16 ones on a CPU that emulates bf16 (they take minutes and only lose there)."""
    if device == "cuda" or cpu_has_native_bf16():
        return list(variants)
    skipped = [name for name, variant in variants.items() if variant.get("bf16")]
    print(f"this CPU has no native bf16: skipping {skipped} (ask with --variants)", file=sys.stderr)
    return [name for name in variants if name not in skipped]


def run_variants(
    function: Callable[[dict], dict], variants: dict[str, dict], names: list[str], args, **settings
) -> dict[str, dict]:
    """Saves one random checkpoint, then measures each named variant on it in its own process.

    With `args.rounds` > 1 the variants take turns, round after round, so that a slow spell of a shared machine
    hits all of them; each keeps its best times (`best_of`).
    """
    names = ["baseline", *(name for name in names if name != "baseline")]
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as directory:
        print("saving a real-size random MODA checkpoint ...", file=sys.stderr)
        checkpoint = save_random_checkpoint(Path(directory), args.seed)
        for round_index in range(args.rounds):
            for name in names:
                print(f"measuring {name} (round {round_index + 1}/{args.rounds}) ...", file=sys.stderr)
                spec = {**variants[name], **settings, "checkpoint": str(checkpoint), "device": args.device}
                result = run_isolated(function, {**spec, "threads": args.threads, "seed": args.seed})
                results[name] = best_of(results[name], result) if name in results else result
    return results


def best_of(first: dict, second: dict) -> dict:
    """Per number, the better of two measurements: the shorter time ("..._s"), the higher rate ("..._per_s...")."""
    best = dict(first)
    for key, value in second.items():
        if "_per_s" in key:
            best[key] = max(first[key], value)
        elif key.endswith("_s"):
            best[key] = min(first[key], value)
    return best


def save_random_checkpoint(directory: Path, seed: int) -> Path:
    """Real-size MODA (CLIP B/32 + projector + OPT-125M) with random weights, saved once for every variant."""
    torch.manual_seed(seed)
    logging.disable_progress_bar()
    MODAForConditionalGeneration(MODAConfig()).save_pretrained(directory)
    return directory


def setup_worker(device: str, threads: int | None, seed: int, reuse_memory: bool = False) -> None:
    """Quiet logs, threads, seed; `reuse_memory`: glibc keeps freed memory (moda/cpu_memory.py), on CPU."""
    if reuse_memory and device == "cpu":
        reuse_freed_memory()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()


def run_isolated(function: Callable[[dict], dict], spec: dict) -> dict:
    """`function(spec)` in a fresh spawned process; returns its result dict."""
    pool = multiprocessing.get_context("spawn").Pool(1)
    try:
        return pool.apply(function, (spec,))
    finally:
        pool.close()
        pool.join()


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def seconds(function: Callable[[], object], device: str, repeats: int) -> float:
    """Best wall time of `function()` over `repeats` calls (after the caller's warm-up).

    The minimum, as `timeit` reports: on a shared machine other processes only ever add time.
    """
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        function()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times)


def peak_memory_mb(device: str) -> float:
    """Peak resident memory of this process (CPU) or peak allocated GPU memory (CUDA), in MB."""
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


# The CPU features MODA's speed depends on: AVX2 / AVX512 kernels, int8 dot products (VNNI), native bf16.
SPEED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8")


def machine(device: str, threads: int | None) -> dict:
    """What the numbers depend on, recorded beside them (`threads`: what the workers used)."""
    info = {
        "date": datetime.date.today().isoformat(),
        "device": device,
        "cpu": platform.processor() or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cores": os.cpu_count(),
        "native_bf16": cpu_has_native_bf16(),
        "torch_threads": threads or torch.get_num_threads(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }
    if Path("/proc/cpuinfo").exists():
        lines = open("/proc/cpuinfo").read().splitlines()
        names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
        info["cpu"] = names[0] if names else info["cpu"]
        flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
        info["cpu_features"] = [flag for flag in SPEED_FLAGS if flag in flags]
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def ratio(value: float, baseline: float, higher_is_better: bool = True) -> str:
    if not value or not baseline:
        return "-"
    return f"{value / baseline if higher_is_better else baseline / value:.2f}x"


def print_table(title: str, headers: list[str], rows: list[list[object]]) -> None:
    """A Markdown table, so that the output can be pasted into the README as is."""
    print(f"\n### {title}\n")
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" for _ in headers) + "|")
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")


def write_json(path: Path | None, command: str, results: dict) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"command": command, **results}, indent=2) + "\n")
    print(f"\nwrote {path}")
