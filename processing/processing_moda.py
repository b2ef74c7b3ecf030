"""MODAProcessor: turns photos and descriptions into MODA's inputs, and generated ids back into text.

A sequence is ``[pad ...] <image> x num_image_tokens, BOS, prompt or description tokens [, EOS]``, padded on
the left so that batched generation continues every sequence from its last real token.

This file is copied next to the saved processor by ``save_pretrained``; it imports only transformers, tokenizers,
PIL, numpy and torch, so a saved folder loads with ``trust_remote_code=True`` and no install.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from tokenizers import AddedToken
from transformers import AutoImageProcessor, AutoTokenizer, BatchFeature, ProcessorMixin

IMAGE_TOKEN = "<image>"  # also in modeling_moda.py: each Hub code file must stand alone
MAX_IMAGE_SIDE = 4096  # larger photos are shrunk first: the encoder sees 224 px anyway
IGNORE_INDEX = -100
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}  # what folder searches pick up

ImageLike = Image.Image | np.ndarray | str | os.PathLike


def load_rgb_image(image: ImageLike, name: str = "image") -> Image.Image:
    """Opens any photo MODA may meet (path, array, any PIL mode) as an 8-bit RGB image, or raises ValueError.

    Transparent images are laid on white (product shots usually are); 16-bit and float images are rescaled.
    """
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise ValueError(f"{name}: no such image file: {path}")
        try:
            with Image.open(path) as opened:
                opened.draft("RGB", (MAX_IMAGE_SIDE, MAX_IMAGE_SIDE))  # JPEGs decode straight at a smaller scale
                opened.load()
                image = opened.copy()
        except Image.DecompressionBombError as error:
            raise ValueError(f"{name}: {path} has too many pixels to decode safely ({error})") from error
        except (UnidentifiedImageError, OSError, SyntaxError) as error:
            raise ValueError(f"{name}: cannot read {path} as an image ({error})") from error
    elif isinstance(image, np.ndarray):
        image = _array_to_image(image, name)
    elif not isinstance(image, Image.Image):
        raise ValueError(f"{name}: expected a PIL image, a numpy array or a file path, got {type(image).__name__}")

    if image.width < 1 or image.height < 1:
        raise ValueError(f"{name}: image has no pixels ({image.width}x{image.height})")
    image = ImageOps.exif_transpose(image)
    if max(image.size) > MAX_IMAGE_SIDE:
        image.thumbnail((MAX_IMAGE_SIDE, MAX_IMAGE_SIDE))
    return _to_rgb(image)


def _array_to_image(array: np.ndarray, name: str) -> Image.Image:
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # channels-first -> channels-last
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ValueError(f"{name}: expected an HxW, HxWx3 or HxWx4 array, got shape {array.shape}")
    if array.dtype != np.uint8:
        array = _rescale_to_uint8(array.astype(np.float64))
    return Image.fromarray(array)


def _rescale_to_uint8(values: np.ndarray) -> np.ndarray:
    """Maps [0, 1] floats or any wider integer range onto 0..255."""
    if not np.isfinite(values).all():
        raise ValueError("image contains NaN or infinite values")
    top = 1.0 if values.max(initial=0) <= 1.0 else values.max()
    return np.clip(values / top * 255.0, 0, 255).round().astype(np.uint8)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        return Image.fromarray(_rescale_to_uint8(np.asarray(image, dtype=np.float64))).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def add_image_token(tokenizer) -> int:
    """Adds the `<image>` placeholder as a special token (if missing) and returns its id."""
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)], special_tokens=True)
    return tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)


class MODAProcessor(ProcessorMixin):
    r"""
    CLIP image processor + the LM's tokenizer (OPT's GPT-2 BPE: BOS = EOS = `</s>` id 2, pad `<pad>` id 1).

    Args:
        image_processor: resizes and normalizes photos (`CLIPImageProcessor`; the PIL one without torchvision).
        tokenizer: the language model's tokenizer; `<image>` is added to it as a special token if missing.
        num_image_tokens (`int`, defaults to 1): `<image>` placeholders per image; must equal the model
            config's `num_image_tokens` (1 for pooled features, 50 for CLIP B/32 patches).
    """

    # The loader every MODA entry point opens photos with (`load_rgb_image`), reachable from remote code too.
    load_image = staticmethod(load_rgb_image)

    def __init__(self, image_processor=None, tokenizer=None, num_image_tokens: int = 1, chat_template=None, **kwargs):
        if tokenizer is None or image_processor is None:
            raise ValueError("MODAProcessor needs both an image_processor and a tokenizer")
        if num_image_tokens < 1:
            raise ValueError(f"num_image_tokens must be at least 1, got {num_image_tokens}")
        self.num_image_tokens = num_image_tokens
        self.image_token = IMAGE_TOKEN
        self.image_token_id = add_image_token(tokenizer)
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; MODA pads batches on the left with it")
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    @classmethod
    def from_backbones(
        cls, vision: str | os.PathLike, text: str | os.PathLike, num_image_tokens: int = 1
    ) -> MODAProcessor:
        """The processor matching `MODAForConditionalGeneration.from_backbones(vision, text)`."""
        return cls(
            image_processor=AutoImageProcessor.from_pretrained(vision),
            tokenizer=AutoTokenizer.from_pretrained(text),
            num_image_tokens=num_image_tokens,
        )

    def __call__(
        self,
        images: ImageLike | Sequence[ImageLike] | None = None,
        text: str | Sequence[str] | None = None,
        return_tensors: str | None = "pt",
        add_eos: bool = False,
        return_labels: bool = False,
        max_length: int | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        """Prepares a batch: one image per sequence, followed by a prompt (generation) or a description (training).

        Args:
            images: one photo or a list (PIL images, arrays or file paths).
            text: one text per image; `None` means an empty prompt, i.e. "describe this item".
            add_eos: end each text with EOS (what training targets need).
            return_labels: also return `labels`: the text and EOS tokens, -100 on image, BOS and pad positions.
                Implies `add_eos`, and every text must be a non-empty description.
            max_length: cut each text to this many tokens (EOS included).
        """
        images, texts = self._pair_inputs(images, text)
        add_eos = add_eos or return_labels
        if return_labels:
            empty = [index for index, description in enumerate(texts) if not description.strip()]
            if empty:
                raise ValueError(f"descriptions at positions {empty} are empty; a training target needs text")

        sequences, targets = [], []
        for description in texts:
            prompt_ids, text_ids = self._tokenize(description, add_eos, max_length)
            sequences.append(prompt_ids + text_ids)
            targets.append([IGNORE_INDEX] * len(prompt_ids) + text_ids)

        data = self._pad_left(sequences, targets if return_labels else None)
        if images is not None:
            data["pixel_values"] = self.image_processor(images, return_tensors="pt")["pixel_values"]
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _pair_inputs(self, images, text) -> tuple[list[Image.Image] | None, list[str]]:
        if images is None and text is None:
            raise ValueError("MODAProcessor needs images, text, or both")
        if images is not None:
            single = isinstance(images, (Image.Image, np.ndarray, str, os.PathLike))
            images = [images] if single else list(images)
            if not images:
                raise ValueError("images is an empty list")
            images = [load_rgb_image(image, name=f"image {index}") for index, image in enumerate(images)]
        if text is None:
            texts = [""] * len(images)
        elif isinstance(text, str):
            texts = [text]
        else:
            texts = list(text)
            if not all(isinstance(item, str) for item in texts):
                raise ValueError("text must be a string or a list of strings")
        if images is not None and len(texts) != len(images):
            raise ValueError(f"got {len(images)} images but {len(texts)} texts; pass one text per image")
        return images, texts

    def _tokenize(self, text: str, add_eos: bool, max_length: int | None) -> tuple[list[int], list[int]]:
        """Returns (placeholder + BOS ids, text ids [+ EOS])."""
        tokenizer = self.tokenizer
        prompt_ids = [self.image_token_id] * self.num_image_tokens
        if tokenizer.bos_token_id is not None:
            prompt_ids.append(tokenizer.bos_token_id)
        text_ids = tokenizer(text.strip(), add_special_tokens=False)["input_ids"] if text.strip() else []
        if max_length is not None:
            text_ids = text_ids[: max(max_length - int(add_eos), 0)]
        if add_eos:
            text_ids.append(tokenizer.eos_token_id)
        return prompt_ids, text_ids

    def _pad_left(self, sequences: list[list[int]], targets: list[list[int]] | None) -> dict[str, torch.Tensor]:
        longest = max(len(sequence) for sequence in sequences)
        pads = [longest - len(sequence) for sequence in sequences]
        pad_id = self.tokenizer.pad_token_id
        data = {
            "input_ids": torch.tensor([[pad_id] * pad + seq for pad, seq in zip(pads, sequences)]),
            "attention_mask": torch.tensor([[0] * pad + [1] * len(seq) for pad, seq in zip(pads, sequences)]),
        }
        if targets is not None:
            data["labels"] = torch.tensor([[IGNORE_INDEX] * pad + tgt for pad, tgt in zip(pads, targets)])
        return data

    def batch_decode(self, sequences, skip_special_tokens: bool = True, **kwargs) -> list[str]:
        """Clean descriptions: placeholders, BOS/EOS and pads removed, whitespace stripped."""
        texts = self.tokenizer.batch_decode(sequences, skip_special_tokens=skip_special_tokens, **kwargs)
        return [text.strip() for text in texts]

    def decode(self, sequence, skip_special_tokens: bool = True, **kwargs) -> str:
        return self.batch_decode([sequence], skip_special_tokens=skip_special_tokens, **kwargs)[0]

    def post_process_image_text_to_text(self, generated_outputs, skip_special_tokens: bool = True, **kwargs):
        return self.batch_decode(generated_outputs, skip_special_tokens=skip_special_tokens, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values"]


__all__ = ["MODAProcessor", "load_rgb_image"]
