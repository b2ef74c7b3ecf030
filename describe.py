"""`moda describe`: batched descriptions for image files and folders, written as JSONL or CSV.

    moda describe photos/ shoe.jpg --model ./moda-checkpoint --batch-size 8 --out results.jsonl

One output line per image. An unreadable image is reported (on stderr and as an `error` line) and skipped;
it never stops the run.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch
from PIL import Image
from tqdm.auto import tqdm
from transformers import AutoModel, AutoProcessor
from transformers.utils import logging

import modeling_moda  # noqa: F401  (registers the "moda" Auto classes)
import processing  # noqa: F401  (registers MODAProcessor with AutoProcessor)
from modeling_moda.cpu_memory import reuse_freed_memory
from modeling_moda.fast_inference import optimize_for_cpu
from modeling_moda.greedy_decoding import Drafter, generate_fast
from processing.caption_drafts import load_caption_drafter
from processing.caption_vocabulary import load_caption_vocabulary
from processing.processing_moda import IMAGE_SUFFIXES, load_rgb_image

logger = logging.get_logger("moda.describe")


def find_images(paths: Iterable[str | Path]) -> list[Path]:
    """Expands folders (recursively, image suffixes only) and keeps files in the order given."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()))
        else:
            found.append(path)
    return found


@torch.inference_mode()
def describe_images(
    model,
    processor,
    images: Sequence[Image.Image],
    batch_size: int = 8,
    lean: bool = False,
    drafter: Drafter | None = None,
    **generate_kwargs,
) -> list[str]:
    """Descriptions for already-loaded images, generated `batch_size` at a time (left padding keeps batches exact).

    `lean=True` decodes through `generate_fast`: greedily in `greedy_generate`'s loop (same tokens, less time per
    token) wherever it applies, an OPT decoder, no beams, no sampling, checking a `drafter`'s guesses
    (`processing.caption_drafts`) for a batch of one image; anything else goes through `model.generate`.
    """
    descriptions: list[str] = []
    for start in range(0, len(images), batch_size):
        inputs = processor(images=list(images[start : start + batch_size]), return_tensors="pt").to(model.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        if lean:
            generated = generate_fast(model, inputs, drafter, **generate_kwargs)
        else:
            generated = model.generate(**inputs, **generate_kwargs)
        descriptions.extend(processor.batch_decode(generated, skip_special_tokens=True))
    return descriptions


def describe_files(
    model, processor, paths: Sequence[Path], batch_size: int = 8, progress: bool = True, lean: bool = False,
    drafter: Drafter | None = None, **generate_kwargs,
) -> Iterator[dict]:
    """Yields `{"image", "description"}` or `{"image", "error"}` per file, in order, reading a batch at a time."""
    with tqdm(total=len(paths), desc="describing", unit="image", disable=not progress) as bar:
        for start in range(0, len(paths), batch_size):
            batch = paths[start : start + batch_size]
            loaded, results = [], {}
            for path in batch:
                try:
                    loaded.append((path, load_rgb_image(path, name=str(path))))
                except ValueError as error:
                    logger.warning(f"skipping {path}: {error}")
                    results[path] = {"image": str(path), "error": str(error)}
            images = [image for _, image in loaded]
            texts = describe_images(model, processor, images, batch_size, lean, drafter, **generate_kwargs)
            for (path, _), text in zip(loaded, texts):
                results[path] = {"image": str(path), "description": text}
            yield from (results[path] for path in batch)
            bar.update(len(batch))


def write_results(rows: Iterable[dict], out: Path | None) -> tuple[int, int]:
    """Streams rows to JSONL (default, stdout when `out` is None) or CSV (by suffix); returns (described, failed)."""
    described = failed = 0
    handle = sys.stdout if out is None else open(out, "w", newline="", encoding="utf-8")
    try:
        writer = csv.DictWriter(handle, ["image", "description", "error"]) if out and out.suffix == ".csv" else None
        if writer:
            writer.writeheader()
        for row in rows:
            described += "description" in row
            failed += "error" in row
            if writer:
                writer.writerow(row)
            else:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            handle.flush()
    finally:
        if out is not None:
            handle.close()
    return described, failed


# int8 is the fastest CPU path measured (benchmarks/inference.py); "none" keeps the checkpoint's fp32 numerics.
FAST_MODES = ("int8", "bf16", "none")
DEFAULT_FAST = "int8"


def load_model(
    path: str, dtype: str = "float32", fast: str = "none", full_vocabulary: bool = False, quantize_vision: bool = False
):
    """Model + processor from a local folder or hub id (MODA code comes from this package or the folder).

    `fast="int8"` quantizes the decoder and LM head (see `modeling_moda.fast_inference`), whose rows shrink to
    the checkpoint's caption vocabulary when it has one (unless `full_vocabulary`), and with `quantize_vision` the
    vision tower's too; `fast="bf16"` loads bf16 weights. Both are CPU inference paths.
    """
    if fast not in FAST_MODES:
        raise ValueError(f"fast must be one of {FAST_MODES}, got {fast!r}")
    if fast == "int8" and dtype != "float32":
        raise ValueError(f"fast='int8' quantizes float32 weights; got dtype={dtype!r}")
    model = AutoModel.from_pretrained(
        path, dtype=torch.bfloat16 if fast == "bf16" else getattr(torch, dtype), trust_remote_code=True
    ).eval()
    if fast == "int8":
        vocabulary = None if full_vocabulary else load_caption_vocabulary(path)
        model = optimize_for_cpu(model, "int8", quantize_vision, vocabulary)
    processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
    return model, processor


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
        choices=FAST_MODES,
        help=f"CPU speed-up: int8 (int8 decoder, caption vocabulary, lean greedy loop: fastest), bf16 weights, or "
        f"none (exactly transformers' fp32 generate) (default: {DEFAULT_FAST})",
    )
    describe.add_argument(
        "--quantize-vision",
        action="store_true",
        help="with --fast int8: also quantize the vision tower (faster batches; see README, Performance)",
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
    for flag, given in (("--quantize-vision", args.quantize_vision), ("--full-vocabulary", args.full_vocabulary)):
        if given and fast != "int8":
            raise SystemExit(f"{flag} applies to --fast int8 with --dtype float32 only")
    reuse_freed_memory()  # as train_hf.py does: large short-lived tensors reuse freed memory (cpu_memory.py)
    model, processor = load_model(args.model, args.dtype, fast, args.full_vocabulary, args.quantize_vision)
    rows = describe_files(
        model,
        processor,
        paths,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        lean=fast != "none",  # --fast none: exactly transformers' generate
        drafter=None if args.no_drafts or fast == "none" else load_caption_drafter(args.model),
        max_new_tokens=args.max_new_tokens,
        num_beams=args.num_beams,
        do_sample=False,
    )
    described, failed = write_results(rows, args.out)
    print(f"described {described} images, skipped {failed} unreadable", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
