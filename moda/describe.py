"""Describing images in batches with a loaded MODA: what `moda describe`, train_hf.py and the benchmarks share.

One result per image. An unreadable image is reported (as an `error` row) and skipped; it never stops the run.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch
from PIL import Image
from tqdm.auto import tqdm
from transformers.utils import logging

from modeling_moda import MODAForConditionalGeneration
from modeling_moda.fast_inference import MODES
from processing import MODAProcessor
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
    fast: bool = False,
    **generate_kwargs,
) -> list[str]:
    """Descriptions for already-loaded images, generated `batch_size` at a time (left padding keeps batches exact).

    `fast=True` decodes through `model.generate_fast` (the same tokens as `generate`, less time per token, see
    `MODAForConditionalGeneration.generate_fast`); otherwise `model.generate`.
    """
    descriptions: list[str] = []
    for start in range(0, len(images), batch_size):
        inputs = processor(images=list(images[start : start + batch_size]), return_tensors="pt").to(model.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        generate = model.generate_fast if fast else model.generate
        generated = generate(**inputs, **generate_kwargs)
        descriptions.extend(processor.batch_decode(generated, skip_special_tokens=True))
    return descriptions


def describe_files(
    model, processor, paths: Sequence[Path], batch_size: int = 8, progress: bool = True, fast: bool = False,
    **generate_kwargs,
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
            texts = describe_images(model, processor, images, batch_size, fast, **generate_kwargs)
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
DEFAULT_FAST = "int8"


def load_model(
    path: str,
    dtype: str = "float32",
    fast: str = "none",
    full_vocabulary: bool = False,
    vision: str = "auto",
    drafts: bool = True,
):
    """Model + processor from a local folder or hub id, with this package's MODA code (never the folder's: no
    remote code runs, and a checkpoint saved by any MODA version loads the same way).

    `fast` is a mode of `MODAForConditionalGeneration.optimize_for_cpu` ("int8", "bf16" or "none"), applied
    with `vision`, `full_vocabulary` and `drafts`.
    """
    if fast not in MODES:
        raise ValueError(f"fast must be one of {MODES}, got {fast!r}")
    if fast == "int8" and dtype != "float32":
        raise ValueError(f"fast='int8' quantizes float32 weights; got dtype={dtype!r}")
    model = MODAForConditionalGeneration.from_pretrained(path, dtype=getattr(torch, dtype)).eval()
    if fast != "none":
        model = model.optimize_for_cpu(fast, vision, full_vocabulary, drafts)
    processor = MODAProcessor.from_pretrained(path)
    return model, processor
