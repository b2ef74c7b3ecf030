"""`moda describe`: batched descriptions for image files and folders, written as JSONL or CSV.

    moda describe photos/ shoe.jpg --model ./moda-checkpoint --batch-size 8 --out results.jsonl

One output line per image. An unreadable image is reported (on stderr and as an `error` line) and skipped;
it never stops the run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import torch

from modeling_moda.fast_inference import MODES, VISION_PRECISIONS

from .cpu_memory import reuse_freed_memory
from .describe import DEFAULT_FAST, describe_files, find_images, load_model, write_results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moda", description="MODA: describe fashion items from photos")
    commands = parser.add_subparsers(dest="command", required=True)
    describe = commands.add_parser("describe", help="describe image files or folders of images")
    describe.add_argument("images", nargs="+", help="image files and/or folders (searched recursively)")
    describe.add_argument("--model", required=True, help="checkpoint folder or hub id")
    describe.add_argument("--batch-size", type=int, default=8)
    describe.add_argument("--max-new-tokens", type=int, default=32)
    describe.add_argument("--num-beams", type=int, default=1)
    describe.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    describe.add_argument(
        "--fast",
        default=DEFAULT_FAST,
        choices=MODES,
        help=f"CPU speed-up: int8 (int8 decoder, caption vocabulary, lean greedy loop: fastest), bf16 weights, or "
        f"none (exactly transformers' fp32 generate) (default: {DEFAULT_FAST})",
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
    describe.add_argument("--out", type=Path, help="results file: .jsonl (default format) or .csv; stdout if absent")
    describe.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for flag, value in (("--batch-size", args.batch_size), ("--max-new-tokens", args.max_new_tokens),
                        ("--num-beams", args.num_beams)):
        if value < 1:
            raise SystemExit(f"{flag} must be at least 1, got {value}")
    if args.out is not None and not args.out.parent.is_dir():
        raise SystemExit(f"--out: folder {args.out.parent} does not exist")
    paths = find_images(args.images)
    if not paths:
        raise SystemExit(f"no images found in {' '.join(args.images)}")
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit("--threads must be at least 1")
        torch.set_num_threads(args.threads)
    fast = "none" if args.dtype != "float32" else args.fast  # an explicit --dtype asks for plain weights
    for flag, given in (("--vision", args.vision not in ("auto", "fp32")), ("--full-vocabulary", args.full_vocabulary)):
        if given and fast != "int8":
            raise SystemExit(f"{flag} applies to --fast int8 with --dtype float32 only")
    reuse_freed_memory()  # as train_hf.py does: large short-lived tensors reuse freed memory (cpu_memory.py)
    model, processor = load_model(
        args.model, args.dtype, fast, args.full_vocabulary, args.vision, drafts=not args.no_drafts
    )
    rows = describe_files(
        model,
        processor,
        paths,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        fast=fast != "none",  # --fast none: exactly transformers' generate
        max_new_tokens=args.max_new_tokens,
        num_beams=args.num_beams,
        do_sample=False,
    )
    described, failed = write_results(rows, args.out)
    print(f"described {described} images, skipped {failed} unreadable", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
