"""MODAProcessor: turns photos and descriptions into MODA's inputs, and generated ids back into text.

A sequence is ``[pad ...] <image> x num_image_tokens, BOS, prompt or description tokens [, EOS]``, padded on
the left so that batched generation continues every sequence from its last real token. The processor writes it as
text and the tokenizer makes the ids; its chat template renders a conversation to the same layout.

This file is copied next to the saved processor by ``save_pretrained``; it imports only transformers, tokenizers,
PIL and numpy, so a saved folder loads with ``trust_remote_code=True`` and no install.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from tokenizers import AddedToken
from transformers import AutoImageProcessor, AutoTokenizer, BatchFeature, ProcessorMixin
from transformers.image_utils import load_image

IMAGE_TOKEN = "<image>"  # also in modeling_moda.py: each Hub code file must stand alone
MAX_IMAGE_SIDE = 4096  # larger photos are shrunk first: the encoder sees 224 px anyway
IGNORE_INDEX = -100
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}  # what folder searches pick up
CHANNELS = (1, 2, 3, 4)  # grey, grey + alpha, RGB, RGBA
BASE64_TEXT = re.compile(r"[A-Za-z0-9+/=\s]+")
BASE64_MIN_LENGTH = 64  # shorter strings are taken for file names, even when made only of base64 characters

ImageLike = Image.Image | np.ndarray | str | os.PathLike


def load_rgb_image(image: ImageLike, name: str = "image") -> Image.Image:
    """Opens any photo MODA may meet (path, URL, base64 string, array, any PIL mode) as an 8-bit RGB image, or raises
    ValueError.

    Local files are decoded defensively (JPEGs at a reduced scale, decompression bombs refused); URLs and base64
    strings (`data:image/...;base64,` or bare) go through transformers' `load_image`, as the pipeline's do.
    Transparent images are laid on white (product shots usually are); 16-bit and float images are rescaled.
    """
    if isinstance(image, (str, os.PathLike)):
        image = _open_image(image, name)
    elif isinstance(image, np.ndarray):
        image = _array_to_image(image, name)
    elif not isinstance(image, Image.Image):
        raise ValueError(
            f"{name}: expected a PIL image, a numpy array, a file path, a URL or a base64 string, got "
            f"{type(image).__name__}"
        )

    if image.width < 1 or image.height < 1:
        raise ValueError(f"{name}: image has no pixels ({image.width}x{image.height})")
    image = ImageOps.exif_transpose(image)
    if max(image.size) > MAX_IMAGE_SIDE:
        image.thumbnail((MAX_IMAGE_SIDE, MAX_IMAGE_SIDE))
    return _to_rgb(image)


def _open_image(source: str | os.PathLike, name: str) -> Image.Image:
    path = Path(source)
    if isinstance(source, str) and _is_remote_or_inline(source) and not _is_file(path):
        try:
            return load_image(source)
        except Exception as error:  # network, base64 and decoder libraries each raise their own types
            raise ValueError(f"{name}: cannot load {source[:80]!r}... as an image ({error})") from error
    if not _is_file(path):
        raise ValueError(f"{name}: no such image file: {path}")
    try:
        with Image.open(path) as opened:
            opened.draft("RGB", (MAX_IMAGE_SIDE, MAX_IMAGE_SIDE))  # JPEGs decode straight at a smaller scale
            opened.load()
            return opened.copy()
    except Image.DecompressionBombError as error:
        raise ValueError(f"{name}: {path} has too many pixels to decode safely ({error})") from error
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(f"{name}: cannot read {path} as an image ({error})") from error


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # e.g. a base64 string longer than a file name may be
        return False


def _is_remote_or_inline(source: str) -> bool:
    """A URL or a base64 image (a data URI, or a long run of base64 characters that no file name looks like)."""
    if source.startswith(("http://", "https://", "data:image/")):
        return True
    return len(source) >= BASE64_MIN_LENGTH and BASE64_TEXT.fullmatch(source) is not None


def _array_to_image(array: np.ndarray, name: str) -> Image.Image:
    """HxW, or HxWxC with C in 1..4 (grey, grey + alpha, RGB, RGBA); CxHxW only when the last axis cannot be the
    channels and the first can."""
    if array.ndim == 3 and array.shape[-1] not in CHANNELS and array.shape[0] in CHANNELS:
        array = np.moveaxis(array, 0, -1)  # channels-first -> channels-last
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in CHANNELS):
        raise ValueError(f"{name}: expected an HxW or HxWxC array (C = 1 to 4 channels), got shape {array.shape}")
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


# Renders a conversation as MODA's prompt: the image placeholder, BOS, then the messages' text, which MODA continues
# (it writes descriptions, it does not chat). The processor expands `<image>` to `num_image_tokens` placeholders.
CHAT_TEMPLATE = (
    "{%- set ns = namespace(images='', texts=[]) -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['user', 'assistant'] -%}"
    "{{- raise_exception('MODA continues a description: a conversation holds user and assistant messages, not '"
    " ~ message['role']) -}}"
    "{%- endif -%}"
    "{%- if message['content'] is string -%}"
    "{%- set ns.texts = ns.texts + [message['content'] | trim] -%}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{%- set ns.images = ns.images ~ '<image>' -%}"
    "{%- elif part['type'] == 'text' -%}{%- set ns.texts = ns.texts + [part['text'] | trim] -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{{- ns.images ~ bos_token ~ (ns.texts | select | join(' ')) -}}"
)

# Tokenizer arguments MODAProcessor honours; other TextKwargs (offsets, overflow, ...) have no meaning for its layout
TEXT_OPTIONS = {"padding", "truncation", "max_length", "pad_to_multiple_of", "padding_side", "add_special_tokens",
                "return_attention_mask"}


class MODAProcessor(ProcessorMixin):
    r"""
    CLIP image processor + the LM's tokenizer (OPT's GPT-2 BPE: BOS = EOS = `</s>` id 2, pad `<pad>` id 1).

    Args:
        image_processor: resizes and normalizes photos (`CLIPImageProcessor`; the PIL one without torchvision).
        tokenizer: the language model's tokenizer; `<image>` is added to it as a special token if missing.
        num_image_tokens (`int`, defaults to 1): `<image>` placeholders per image; must equal the model
            config's `num_image_tokens` (1 for pooled features, 50 for CLIP B/32 patches).
        chat_template (`str`, *optional*): defaults to MODA's (`CHAT_TEMPLATE`), saved as chat_template.jinja.
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
        super().__init__(image_processor, tokenizer, chat_template=chat_template or CHAT_TEMPLATE)

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
        images: ImageLike | Sequence[ImageLike] | Sequence[Sequence[ImageLike]] | None = None,
        text: str | Sequence[str] | None = None,
        return_tensors: str | None = "pt",
        add_eos: bool = False,
        return_labels: bool = False,
        videos: None = None,
        audio: None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        """Prepares a batch: one image per sequence, followed by a prompt (generation) or a description (training).

        Args:
            images: one photo or a list (PIL images, arrays, file paths, URLs or base64 strings); a list of
                one-image lists, as `apply_chat_template` passes them, is read the same way.
            text: one text per image, the start of the description MODA continues (`None`: an empty one, i.e.
                "describe this item"), laid out as `<image>` placeholders, BOS, text. A text that already holds
                `<image>` (e.g. `apply_chat_template`'s output) is a whole prompt: its `<image>` is the image's place.
            add_eos: end each text with EOS (what training targets need).
            return_labels: also return `labels`: the text and EOS tokens, -100 on image, BOS and pad positions.
                Implies `add_eos`, and every text must be a non-empty description.
            **kwargs: tokenizer arguments (`padding`, default longest; `truncation`; `max_length`, the whole
                sequence's length, which cuts descriptions unless `truncation=False` and keeps their EOS;
                `pad_to_multiple_of`; padding is always on the left) and the image processor's arguments.
            videos, audio: ProcessorMixin's other modalities, which `apply_chat_template` passes as None.
        """
        if videos is not None or audio is not None:
            raise ValueError("MODA reads images and text only, not videos or audio")
        text_options, image_options = self._split_options(kwargs)
        images, texts = self._pair_inputs(images, text)
        add_eos = add_eos or return_labels
        if return_labels:
            empty = [index for index, description in enumerate(texts) if not description.strip()]
            if empty:
                raise ValueError(f"descriptions at positions {empty} are empty; a training target needs text")

        prompts = [self._prompt(description, has_image=images is not None) for description in texts]
        sequences = self.tokenizer(prompts, add_special_tokens=False)["input_ids"]
        sequences = self._truncate(sequences, add_eos, text_options)
        if add_eos:
            sequences = [sequence + [self.tokenizer.eos_token_id] for sequence in sequences]
        padding = text_options.get("padding", True)
        data = self.tokenizer.pad(
            {"input_ids": sequences},
            padding=padding,
            max_length=text_options.get("max_length") if padding == "max_length" else None,
            pad_to_multiple_of=text_options.get("pad_to_multiple_of"),
            padding_side="left",
            return_attention_mask=True,
        )
        if return_labels:
            data["labels"] = [self._labels(row, mask) for row, mask in zip(data["input_ids"], data["attention_mask"])]
        if images is not None:
            data["pixel_values"] = self.image_processor(images, return_tensors="pt", **image_options)["pixel_values"]
        return BatchFeature(data=dict(data), tensor_type=return_tensors)

    def _split_options(self, kwargs: dict) -> tuple[dict, dict]:
        """The call's tokenizer and image-processor arguments (flat, or as `text_kwargs`/`images_kwargs`); an
        argument neither takes is an error, not silently dropped."""
        kwargs = dict(kwargs)
        text_options = {**kwargs.pop("text_kwargs", {}), **kwargs.pop("common_kwargs", {})}
        image_options = kwargs.pop("images_kwargs", {})
        image_names = set(getattr(getattr(self.image_processor, "valid_kwargs", None), "__annotations__", {}))
        for name, value in kwargs.items():
            if name in TEXT_OPTIONS:
                text_options[name] = value
            elif name in image_names and name != "return_tensors":
                image_options[name] = value
            else:
                raise ValueError(
                    f"MODAProcessor got an unknown argument {name!r}; it takes images, text, return_tensors, "
                    f"add_eos, return_labels, the tokenizer's {sorted(TEXT_OPTIONS)} and the image processor's "
                    f"{sorted(image_names - {'return_tensors'})}"
                )
        if text_options.get("padding_side", "left") != "left":
            raise ValueError("MODAProcessor pads on the left (batched generation continues each row's last token)")
        return text_options, image_options

    def _pair_inputs(self, images, text) -> tuple[list[Image.Image] | None, list[str]]:
        if images is None and text is None:
            raise ValueError("MODAProcessor needs images, text, or both")
        if images is not None:
            single = isinstance(images, (Image.Image, np.ndarray, str, os.PathLike))
            images = [images] if single else list(images)
            if not images:
                raise ValueError("images is an empty list")
            images = [self._one_image(image, index) for index, image in enumerate(images)]
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
        if images is not None:
            extra = [index for index, prompt in enumerate(texts) if prompt.count(IMAGE_TOKEN) > 1]
            if extra:
                raise ValueError(f"texts at positions {extra} hold several {IMAGE_TOKEN}: MODA reads one image a text")
        return images, texts

    @staticmethod
    def _one_image(image, index: int) -> Image.Image:
        """Sequence `index`'s image; a list around it (one conversation's images) must hold exactly one."""
        if isinstance(image, (list, tuple)):
            if len(image) != 1:
                raise ValueError(f"sequence {index} has {len(image)} images; MODA describes one image a sequence")
            image = image[0]
        return load_rgb_image(image, name=f"image {index}")

    def _prompt(self, text: str, has_image: bool) -> str:
        """MODA's layout as text, `<image>` expanded to `num_image_tokens` placeholders: the tokenizer makes the ids."""
        if IMAGE_TOKEN not in text:
            text = f"{IMAGE_TOKEN}{self.tokenizer.bos_token or ''}{text.strip()}"
        return text.replace(IMAGE_TOKEN, IMAGE_TOKEN * self.num_image_tokens)

    def _truncate(self, sequences: list[list[int]], add_eos: bool, text_options: dict) -> list[list[int]]:
        """Cuts rows to `max_length` (EOS, added after, included) unless `truncation=False`; never the image or BOS."""
        max_length, truncation = text_options.get("max_length"), text_options.get("truncation")
        if max_length is None or truncation in (False, "do_not_truncate"):
            return sequences
        keep = max_length - int(add_eos)
        if keep < self.prefix_length:
            raise ValueError(
                f"max_length={max_length} leaves no room for the {self.prefix_length} image and BOS tokens"
                f"{' and the EOS' if add_eos else ''} every sequence starts with"
            )
        return [sequence[:keep] for sequence in sequences]

    @property
    def prefix_length(self) -> int:
        """Tokens before a sequence's text: the image placeholders and BOS."""
        return self.num_image_tokens + int(self.tokenizer.bos_token_id is not None)

    def _labels(self, input_ids: list[int], attention_mask: list[int]) -> list[int]:
        """Training targets: the description and its EOS; pads, placeholders and what comes up to BOS get -100."""
        bos = self.tokenizer.bos_token_id
        start = next((index + 1 for index, token in enumerate(input_ids) if token == bos and attention_mask[index]), 0)
        return [
            IGNORE_INDEX if index < start or not real or token == self.image_token_id else token
            for index, (token, real) in enumerate(zip(input_ids, attention_mask))
        ]

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


__all__ = ["CHAT_TEMPLATE", "MODAProcessor", "load_rgb_image"]
