"""Describing images in batches with a loaded MODA: what `moda describe`, train_hf.py and the benchmarks share.

`load_model` loads a checkpoint onto a device; `describe_images` describes loaded images; `describe_batch` describes
catalogue rows (`moda.catalogue_rows`), where an unreadable image becomes an `error` row and never stops the run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from huggingface_hub.utils import HFValidationError, validate_repo_id
from PIL import Image
from transformers import PretrainedConfig
from transformers.utils import logging

from modeling_moda import MODAForConditionalGeneration
from modeling_moda.fast_inference import MODES
from processing import MODAProcessor
from processing.image_cells import open_image

logger = logging.get_logger("moda.describe")


def resolve_device(name: str = "auto", process_index: int = 0) -> torch.device:
    """`auto`: a GPU when PyTorch sees one, else the CPU; `cuda`: this process's GPU (`process_index` is its local
    rank under `accelerate launch`); `cuda:N`; `cpu`. Asking for a GPU that is not there is a ValueError."""
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise ValueError(f"--device {name}: PyTorch sees no CUDA GPU here (torch {torch.__version__}, {built}); "
                         "use --device cpu, or auto to take a GPU only when there is one")
    index = int(name.partition(":")[2] or process_index)
    if index >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: no GPU {index} in this process ({torch.cuda.device_count()} visible)")
    return torch.device("cuda", index)


def gpu_dtype() -> str:
    """bf16 where the GPU computes in it natively (Ampere and later), else fp16: half the memory and time of fp32."""
    return "bfloat16" if torch.cuda.is_bf16_supported(including_emulation=False) else "float16"


@torch.inference_mode()
def describe_images(
    model,
    processor,
    images: Sequence[Image.Image],
    batch_size: int = 8,
    fast: bool = False,
    prompt: str | None = None,
    **generate_kwargs,
) -> list[str]:
    """Descriptions for already-loaded images, generated `batch_size` at a time (left padding keeps batches exact).

    `fast=True` decodes through `model.generate_fast` (the same tokens as `generate`, less time per token, see
    `MODAForConditionalGeneration.generate_fast`); otherwise `model.generate`. A `prompt` is a text the model
    continues after each image (what `processor(text=...)` does); the descriptions start with it.
    """
    descriptions: list[str] = []
    for start in range(0, len(images), batch_size):
        batch = list(images[start : start + batch_size])
        text = [prompt] * len(batch) if prompt else None
        inputs = processor(images=batch, text=text, return_tensors="pt").to(model.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        generate = model.generate_fast if fast else model.generate
        generated = generate(**inputs, **generate_kwargs)
        descriptions.extend(processor.batch_decode(generated, skip_special_tokens=True))
    return descriptions


def describe_batch(
    model, processor, ids: Sequence[str], images: Sequence[Any], fast: bool = False, prompt: str | None = None,
    **generate_kwargs,
) -> list[dict]:
    """One result per row, in order: `{"id", "image", "description"}`, or `{"id", "image", "error"}` when the row's
    image (a path, or a `datasets.Image(decode=False)` cell) cannot be read. All readable images are one batch."""
    results, loaded = {}, []
    for key, cell in zip(ids, images):
        path = cell.get("path") if isinstance(cell, dict) else cell
        try:
            loaded.append((key, path, open_image(cell)))
        except ValueError as error:
            logger.warning(f"skipping {key}: {error}")
            results[key] = {"id": key, "image": path, "error": str(error)}
    if loaded:
        texts = describe_images(model, processor, [image for *_, image in loaded], len(loaded), fast, prompt,
                                **generate_kwargs)  # fmt: skip
        for (key, path, _), text in zip(loaded, texts):
            results[key] = {"id": key, "image": path, "description": text}
    return [results[key] for key in ids]


def failure_reason(row: dict) -> str:
    """A failed row's error without the row's own names, so that rows can be counted by reason: "no such image
    file: <image>", "cannot read <image> as an image"."""
    error = row["error"]
    if row.get("image"):
        error = error.replace(row["image"], "<image>").removeprefix("<image>: ")
    return error.split(" (")[0]


# int8 is the fastest CPU path measured (benchmarks/inference.py); "none" keeps the checkpoint's fp32 numerics.
DEFAULT_FAST = "int8"


def load_model(
    path: str,
    dtype: str = "float32",
    fast: str = "none",
    full_vocabulary: bool = False,
    vision: str = "auto",
    drafts: bool = True,
    device: str | torch.device = "cpu",
):
    """Model + processor from a local folder or hub id, with this package's MODA code (never the folder's: no
    remote code runs, and a checkpoint saved by any MODA version loads the same way), on `device`.

    `fast` is a mode of `MODAForConditionalGeneration.optimize_for_cpu` ("int8", "bf16" or "none"), applied
    with `vision`, `full_vocabulary` and `drafts`; it needs `device="cpu"`. A path that holds no MODA checkpoint
    is a ValueError that says so (OSError when a folder or Hub repo has no config.json).
    """
    if fast not in MODES:
        raise ValueError(f"fast must be one of {MODES}, got {fast!r}")
    if fast == "int8" and dtype != "float32":
        raise ValueError(f"fast='int8' quantizes float32 weights; got dtype={dtype!r}")
    if fast != "none" and torch.device(device).type != "cpu":
        raise ValueError(f"fast={fast!r} is a CPU path; on {device} load with fast='none' and a dtype")
    check_moda_checkpoint(path)
    model = MODAForConditionalGeneration.from_pretrained(path, dtype=getattr(torch, dtype)).to(device).eval()
    if fast != "none":
        model = model.optimize_for_cpu(fast, vision, full_vocabulary, drafts)
    processor = MODAProcessor.from_pretrained(path)
    return model, processor


def check_moda_checkpoint(path: str) -> None:
    """Clear errors for the usual wrong `path`s, before transformers' own (about repo ids, or an AttributeError)."""
    if not Path(path).is_dir():
        try:
            validate_repo_id(path)
        except HFValidationError:
            raise ValueError(f"{path}: no such folder (nor a Hub model id)") from None
    model_type = PretrainedConfig.get_config_dict(path)[0].get("model_type")
    if model_type != "moda":
        raise ValueError(f"{path} holds a {model_type!r} model, not MODA (its config.json needs model_type 'moda')")
