"""`moda describe`: descriptions for image files, folders or a whole catalogue, resumable, on any device.

    moda describe photos/ shoe.jpg --model ./moda-checkpoint --out results.jsonl
    moda describe catalogue/ --model ./moda-checkpoint --out results.csv        # fashion.csv + images: ids kept
    accelerate launch --num_processes 4 -m moda.cli describe catalogue/ --model ./moda-checkpoint --out results.jsonl

One result per row (`moda.catalogue_rows`), kept in `--out` by id (`moda.results`): a re-run does only what is
missing. An unreadable image is reported (on stderr and as an `error` row); it never stops the run. The exit
status is 1 when rows were to be described and none could be. Under `accelerate launch` each process describes
its share of the rows and the main process merges them. docs/describing.md has the whole story.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from accelerate import PartialState
from accelerate.utils import gather_object, parse_flag_from_env
from tqdm.auto import tqdm

from modeling_moda.fast_inference import MODES, VISION_PRECISIONS

from .catalogue_rows import FileRows, read_rows
from .cpu_memory import reuse_freed_memory
from .describe import (
    DEFAULT_FAST,
    describe_batch,
    failure_reason,
    gpu_dtype,
    load_model,
    resolve_device,
)
from .results import Results, json_lines

if TYPE_CHECKING:
    from datasets import Dataset


def device_name(value: str) -> str:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {value!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moda", description="MODA: describe fashion items from photos")
    commands = parser.add_subparsers(dest="command", required=True)
    describe = commands.add_parser("describe", help="describe image files, folders or a catalogue")
    describe.add_argument(
        "images",
        nargs="+",
        help="image files and/or folders (searched recursively), or one catalogue: a folder with fashion.csv, a "
        ".csv/.jsonl with an image column, a save_to_disk folder or a Hub dataset id",
    )
    describe.add_argument("--model", required=True, help="checkpoint folder or hub id")
    describe.add_argument("--id-column", help="catalogue column that names each row (default: ProductId or id)")
    describe.add_argument(
        "--out",
        type=Path,
        help="results file, .jsonl, .csv or .parquet: a re-run adds only what is missing (default: JSON lines on "
        "stdout, not resumable)",
    )
    describe.add_argument("--overwrite", action="store_true", help="forget the results in --out and start again")
    describe.add_argument(
        "--device",
        type=device_name,
        default="auto",
        help="auto (a GPU when there is one, else the CPU), cpu, cuda (under accelerate launch: each process's own "
        "GPU) or cuda:N (default: auto)",
    )
    describe.add_argument("--batch-size", type=int, default=8)
    describe.add_argument(
        "--max-new-tokens", type=int, help="tokens per description (default: the checkpoint's generation_config.json)"
    )
    describe.add_argument(
        "--num-beams", type=int, help="beam search width (default: the checkpoint's generation_config.json)"
    )
    describe.add_argument(
        "--seed",
        type=int,
        help="makes sampling (do_sample in the checkpoint's generation_config.json) reproducible: batch k, rows "
        "k*B to k*B+B-1 of the input (B = --batch-size), is seeded with SEED+k, so the same command writes the "
        "same text, resumed or split between processes too (docs/describing.md) (default: not seeded)",
    )
    describe.add_argument("--prompt", help="a text each description continues, e.g. 'A red' (it starts each result)")
    describe.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        help="weights' dtype (default: float32 on the CPU, bfloat16 on a GPU, float16 where it has no bf16)",
    )
    describe.add_argument(
        "--fast",
        choices=MODES,
        help=f"CPU speed-up: int8 (int8 decoder, caption vocabulary, lean greedy loop: fastest), bf16 weights, or "
        f"none (exactly transformers' fp32 generate) (default: {DEFAULT_FAST} on the CPU; a GPU runs none)",
    )
    describe.add_argument(
        "--vision",
        default="auto",
        choices=VISION_PRECISIONS,
        help="with --fast int8: the vision tower's precision; auto = bf16 on CPUs with native bf16 (AVX512-BF16, "
        "AMX), else fp32; int8 is fastest for large batches and least exact (docs/performance.md) (default: auto)",
    )
    describe.add_argument(
        "--full-vocabulary",
        action="store_true",
        help="with --fast int8: score all tokens, not only the checkpoint's caption_vocabulary.json",
    )
    describe.add_argument(
        "--no-drafts",
        action="store_true",
        help="decode one token per pass: do not check the checkpoint's caption_drafts.json guesses (a single image)",
    )
    describe.add_argument(
        "--threads", type=int, help="torch CPU threads (default: one per core; fewer is faster on a busy machine)"
    )
    describe.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def precision(args: argparse.Namespace, device: torch.device) -> tuple[str, str]:
    """(dtype, fast mode): a GPU runs bf16/fp16 weights through `generate`; the CPU the fast path (`--fast`)."""
    if device.type == "cuda":
        if args.fast not in (None, "none"):
            raise ValueError(f"--fast {args.fast} is a CPU path; on {device} choose --dtype instead")
        return args.dtype or gpu_dtype(), "none"
    dtype = args.dtype or "float32"
    fast = args.fast or (DEFAULT_FAST if dtype == "float32" else "none")  # an explicit --dtype asks for plain weights
    for flag, given in (("--vision", args.vision not in ("auto", "fp32")), ("--full-vocabulary", args.full_vocabulary)):
        if given and fast != "int8":
            raise ValueError(f"{flag} applies to --fast int8 with --dtype float32 only")
    return dtype, fast


@dataclass
class Job:
    """What a run has to do, decided before any model loads."""

    device: torch.device
    dtype: str
    fast: str
    results: Results | None  # None: JSON lines on stdout, not resumable
    rows: FileRows | Dataset  # `moda.catalogue_rows`: id, image
    todo: list[int]  # the rows without a description in `results`

    @property
    def setup(self) -> str:
        return f"{PartialState().num_processes} process(es), {self.device}, {self.dtype}" + (
            "" if self.fast == "none" else f", fast {self.fast}"
        )


def plan(args: argparse.Namespace, state: PartialState) -> Job:
    """Every check, in every process alike (none may wait at a barrier for one that stopped); ValueError if bad."""
    device = resolve_device(args.device, state.local_process_index)
    dtype, fast = precision(args, device)
    if args.out is None and state.num_processes > 1:
        raise ValueError("--out is needed with several processes: each writes its share there")
    results = Results(args.out) if args.out else None
    if results:
        results.check()
    state.wait_for_everyone()
    if results and args.overwrite and state.is_main_process:
        results.clear()
    state.wait_for_everyone()
    done = results.described() if results else set()
    rows = read_rows(args.images, args.id_column)
    todo = [index for index, key in enumerate(rows["id"]) if key not in done]
    state.wait_for_everyone()  # everyone has read the results before anyone appends to them
    return Job(device, dtype, fast, results, rows, todo)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for flag, value in (("--batch-size", args.batch_size), ("--max-new-tokens", args.max_new_tokens),
                        ("--num-beams", args.num_beams), ("--threads", args.threads)):  # fmt: skip
        if value is not None and value < 1:
            raise SystemExit(f"{flag} must be at least 1, got {value}")
    if args.seed is not None and not 0 <= args.seed < 2**32:
        raise SystemExit(f"--seed must be from 0 to 2**32 - 1, got {args.seed}")
    # PartialState joins the processes of `accelerate launch` (over gloo when told cpu=True, as moda.distill does).
    state = PartialState(
        cpu=args.device == "cpu" or parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()
    )
    try:
        job = plan(args, state)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    tally, started = Counter(), time.perf_counter()
    if job.todo:
        model, processor = load(args, job)
        started = time.perf_counter()
        try:
            describe_todo(model, processor, job, args, state, tally)
        except KeyboardInterrupt:
            kept = f"kept in {job.results.parts}; run the same command again to go on" if job.results else "printed"
            print(f"interrupted: {tally.total()} rows of process {state.process_index} {kept}", file=sys.stderr)
            return 130
    state.wait_for_everyone()
    elapsed = time.perf_counter() - started
    tally = sum(gather_object([tally]), Counter())
    if not state.is_main_process:
        return 0
    written = job.results.merge(job.rows["id"]) if job.results else None
    report(tally, len(job.rows) - len(job.todo), elapsed, job.setup)
    if job.results:
        print(f"{written} rows in {job.results.out}", file=sys.stderr)
    return 1 if job.todo and not tally[DESCRIBED] else 0


DESCRIBED = "described"  # the tally's key for described rows; every other key is a failure reason


def load(args: argparse.Namespace, job: Job):
    """The model and processor, set up for `job.device`; a checkpoint that cannot load is a SystemExit."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    reuse_freed_memory()  # as train_hf.py does: large short-lived tensors reuse freed memory (cpu_memory.py)
    try:
        return load_model(args.model, job.dtype, job.fast, args.full_vocabulary, args.vision,
                          drafts=not args.no_drafts, device=job.device)  # fmt: skip
    except (OSError, ValueError) as error:
        raise SystemExit(f"--model {args.model}: {error}") from None


def describe_todo(model, processor, job: Job, args: argparse.Namespace, state: PartialState, tally: Counter) -> None:
    """Describes this process's share of `job.todo`, writing (and counting in `tally`) a batch at a time. Only the
    generation options given on the command line go to `generate`: the checkpoint's generation config does the rest."""
    given = {"max_new_tokens": args.max_new_tokens, "num_beams": args.num_beams}
    options = {name: value for name, value in given.items() if value is not None}
    with state.split_between_processes(grid_batches(job.todo, args.batch_size)) as mine:
        write = job.results.journal(state.process_index).write if job.results else print_rows
        progress = not args.no_progress and state.is_main_process
        for described in describe_share(model, processor, job.rows, mine, progress, args.seed,
                                        fast=job.fast != "none", prompt=args.prompt, **options):  # fmt: skip
            write(described)
            tally.update(failure_reason(row) if "error" in row else DESCRIBED for row in described)


def grid_batches(todo: list[int], batch_size: int) -> list[tuple[int, list[int]]]:
    """(k, rows): the rows of `todo` in batch k of the whole input (rows k*B to k*B+B-1). A resumed run, or one split
    between processes, puts every row in the batch an uninterrupted run puts it in, which sampling needs to write
    the same text (a batch's samples depend on all its rows)."""
    return [(k, list(rows)) for k, rows in groupby(todo, key=lambda index: index // batch_size)]


def describe_share(model, processor, rows, batches: list[tuple[int, list[int]]], progress: bool, seed: int | None,
                   **options):  # fmt: skip
    """Yields the results of `batches` (`grid_batches`) one batch at a time (`describe_batch`), with a progress bar;
    batch k seeded with `seed` + k when there is a seed."""
    with tqdm(total=sum(len(indices) for _, indices in batches), desc="describing", unit="image",
              disable=not progress) as bar:  # fmt: skip
        for k, indices in batches:
            if seed is not None:
                from transformers import set_seed  # it lives in trainer_utils, which imports peft: only when seeded

                set_seed((seed + k) % 2**32)
            batch = rows[indices]
            yield describe_batch(model, processor, batch["id"], batch["image"], **options)
            bar.update(len(indices))


def print_rows(rows: list[dict]) -> None:
    """Without --out: JSON lines on stdout, as they come."""
    sys.stdout.write(json_lines(rows))
    sys.stdout.flush()


def report(tally: Counter, skipped: int, elapsed: float, where: str) -> None:
    """The summary on stderr: rows described, skipped (already in the output) and failed (by reason); speed."""
    failures = [(reason, count) for reason, count in tally.most_common() if reason != DESCRIBED]
    failed = sum(count for _, count in failures)
    reasons = "".join(f"\n  {count} x {reason}" for reason, count in failures)
    print(f"described {tally[DESCRIBED]}, skipped {skipped} (already done), failed {failed}{reasons}", file=sys.stderr)
    if tally:
        speed = tally.total() / elapsed
        print(f"{tally.total()} images in {elapsed:.1f} s: {speed:.2f} images/s ({where})", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
