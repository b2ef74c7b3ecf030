"""Shared fixtures: tiny MODA backbones, model, processor and a saved checkpoint, built once per session.

Nothing is downloaded: the backbones are random tiny CLIP/OPT models saved by `moda.demo.backbones`.
"""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.utils import logging

from modeling_moda import MODAForConditionalGeneration
from processing import MODAProcessor
from modeling_moda.caption_drafts import build_caption_drafter, save_caption_drafter
from modeling_moda.caption_vocabulary import build_caption_vocabulary, save_caption_vocabulary
from modeling_moda.quantized_weights import save_quantized_weights
from moda.demo.backbones import save_tiny_backbones

logging.set_verbosity_error()

FASHION_TEXTS = [
    "A red women's striped dress, perfect for parties.",
    "A navy blue men's checked shirt, ideal for casual wear.",
    "Black casual shoes for men, great for everyday use.",
    "A pink women's blouse with lace trim, perfect for formal occasions.",
    "Green sports shoes for boys, made for running.",
    "A white girls' polka dot skirt for summer days.",
] * 10


def sharpen(model: torch.nn.Module, seed: int = 0, gain: float = 2.0) -> torch.nn.Module:
    """Re-draws the weights wider than the 0.02 init so that random models react to their input.

    With the default init every image gets the same greedy tokens, and batch-equality tests would prove nothing.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim > 1:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * gain / parameter.shape[-1] ** 0.5)
    return model


@pytest.fixture(scope="session")
def tiny_backbones(tmp_path_factory) -> tuple[Path, Path]:
    torch.manual_seed(0)  # the same tiny weights every session, so measured agreement rates are reproducible
    return save_tiny_backbones(tmp_path_factory.mktemp("backbones"), FASHION_TEXTS)


@pytest.fixture(scope="session")
def tiny_processor(tiny_backbones) -> MODAProcessor:
    return MODAProcessor.from_backbones(*tiny_backbones)


@pytest.fixture(scope="session")
def tiny_model(tiny_backbones) -> MODAForConditionalGeneration:
    return sharpen(MODAForConditionalGeneration.from_backbones(*tiny_backbones)).eval()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_model, tiny_processor) -> Path:
    """A saved tiny MODA (model + processor + code files), as a user or the Hub would have it."""
    path = tmp_path_factory.mktemp("checkpoint")
    tiny_model.save_pretrained(path)
    tiny_processor.save_pretrained(path)
    return path


# What train_hf.py would have trained on: the fast path's caption vocabulary and drafts come from these. The tiny
# random model's own fp32 text uses other tokens too, so fast-path answers differ from fp32 `generate`.
FAST_PATH_CAPTIONS = [
    "A red dress for women, ideal for parties.",
    "A navy blue men's striped polo shirt, ideal for casual wear.",
]


@pytest.fixture(scope="session")
def checkpoint_before_layout(tmp_path_factory) -> Path:
    """A tiny checkpoint saved by MODA before its code moved to the current layout (code files of that time,
    caption vocabulary and drafts, three photos and `expected_greedy.json`: the ids it generated then)."""
    folder = tmp_path_factory.mktemp("before_layout")
    with tarfile.open(Path(__file__).parent / "fixtures" / "checkpoint_before_layout.tar.gz") as archive:
        archive.extractall(folder, filter="data")
    return folder / "checkpoint"


@pytest.fixture(scope="session")
def fast_checkpoint(tmp_path_factory, tiny_checkpoint, tiny_processor) -> Path:
    """The tiny checkpoint with the files train_hf.py writes for the fast path (caption vocabulary, drafts, int8 and
    bf16 weights)."""
    path = shutil.copytree(tiny_checkpoint, tmp_path_factory.mktemp("fast") / "checkpoint")
    tokenizer = tiny_processor.tokenizer
    save_caption_vocabulary(build_caption_vocabulary(tokenizer, FAST_PATH_CAPTIONS), path)
    save_caption_drafter(build_caption_drafter(tokenizer, FAST_PATH_CAPTIONS), path)
    save_quantized_weights(MODAForConditionalGeneration.from_pretrained(path), path)
    return path


def count_draft_calls(drafter, asked: list[int]):
    """`drafter`, whose every `draft` call appends the number of guesses asked for to `asked`."""
    draft = drafter.draft
    drafter.draft = lambda tokens, count: asked.append(count) or draft(tokens, count)
    return drafter


def make_photo(seed: int, size: tuple[int, int] = (48, 40)) -> Image.Image:
    """A distinct RGB test photo: a coloured block on a noisy background."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 60, (size[1], size[0], 3), dtype=np.uint8)
    colour = rng.integers(80, 256, 3, dtype=np.uint8)
    pixels[size[1] // 4 : 3 * size[1] // 4, size[0] // 4 : 3 * size[0] // 4] = colour
    return Image.fromarray(pixels)


GREEDY_TOKENS = 8  # new tokens of the fp32 reference descriptions below


@pytest.fixture(scope="session")
def photo_batch(tiny_processor):
    """24 distinct photos, processed: the batch the fast paths are compared on."""
    return tiny_processor(images=[make_photo(seed) for seed in range(24)])


@pytest.fixture(scope="session")
def fp32_tokens(tiny_model, photo_batch) -> torch.Tensor:
    """The tiny fp32 model's greedy descriptions of `photo_batch`: the reference every fast path is held to."""
    with torch.inference_mode():
        return tiny_model.generate(**photo_batch, max_new_tokens=GREEDY_TOKENS, do_sample=False)


@pytest.fixture
def photos() -> list[Image.Image]:
    return [make_photo(seed) for seed in range(4)]
