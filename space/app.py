"""MODA Space: describe fashion items from photos, one at a time (upload, paste or an example) or in batches.

    MODA_MODEL=path/to/checkpoint python app.py     # MODA_FAST=none for fp32 generate

The model comes from the ``MODA_MODEL`` variable (a Hub id or a local folder) or, when it is unset, from the
first ``models:`` entry of this Space's README. MODA's code is loaded from the model repo with
``trust_remote_code=True``, so the Space needs only the packages in requirements.txt. That code runs in this
process: it is trusted for the model the Space was published for (the README's ``models:`` entry) and for a local
folder (the operator's own files); any other Hub repo needs ``MODA_TRUST_REMOTE_CODE=1``.

The generation settings start at the checkpoint's ``generation_config.json``, which gives every setting the UI
does not show; a temperature above 0 samples, seeded with the seed setting.
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import gradio as gr
import torch
from huggingface_hub import metadata_load
from PIL import Image
from transformers import AutoModel, AutoProcessor, GenerationConfig, set_seed
from transformers.image_utils import load_image
from transformers.utils import logging

logger = logging.get_logger("moda.space")

HERE = Path(__file__).resolve().parent
EXAMPLES = sorted(str(path) for path in (HERE / "examples").glob("*.jpg"))
MAX_FILE_SIZE = "10mb"  # refused at upload time, before the app reads anything
MAX_BATCH = 16
# generate() keeps the CPU cores busy: running more requests at once only makes each one slower.
CONCURRENCY_LIMIT = 2
UNREADABLE = "is not an image MODA can read. Upload a JPEG, PNG or WebP photo."
TOO_LARGE = "has too many pixels for an image MODA can read."
# Set to 1 to run a MODA_MODEL Hub repo other than the one the Space was published for (its code runs here).
TRUST_REMOTE_CODE = "MODA_TRUST_REMOTE_CODE"


def published_model() -> str | None:
    """The model repo this Space was published for: the first `models:` entry of its README (push_to_hub.py
    writes it)."""
    readme = HERE / "README.md"
    models = (metadata_load(readme) or {}).get("models") if readme.is_file() else None
    return models[0] if models else None


def model_id() -> str:
    """`MODA_MODEL`, else the published model. Loading runs the model repo's code, so a Hub repo other than the
    published one needs `MODA_TRUST_REMOTE_CODE=1`: SystemExit otherwise."""
    published = published_model()
    chosen = os.environ.get("MODA_MODEL") or published
    if not chosen:
        raise SystemExit("Set MODA_MODEL to a MODA checkpoint folder or Hub id (e.g. MODA_MODEL=user/moda).")
    if chosen != published and not Path(chosen).is_dir() and os.environ.get(TRUST_REMOTE_CODE) != "1":
        raise SystemExit(
            f"MODA_MODEL={chosen} is not the model this Space was published for ({published or 'none'}) nor a "
            f"local folder. Loading it runs that Hub repo's Python code: set {TRUST_REMOTE_CODE}=1 if you trust it."
        )
    return chosen


@dataclass(frozen=True)
class Setting:
    """A generation setting: the slider (or number box) the UI shows, and the same limits for API calls, which
    skip the UI."""

    name: str  # the endpoint's argument
    label: str
    minimum: float
    maximum: float
    default: float
    step: float
    box: bool = False  # a number box rather than a slider (for a range too wide to slide through)

    def component(self) -> gr.Slider | gr.Number:
        if self.box:
            return gr.Number(self.default, label=self.label, minimum=self.minimum, maximum=self.maximum, precision=0)
        return gr.Slider(self.minimum, self.maximum, value=self.default, step=self.step, label=self.label)

    def check(self, value: object) -> float:
        """`value` if the slider could have sent it (a number within its limits, whole when it steps by whole
        numbers), else gr.Error naming the setting and its limits."""
        whole = float(self.step).is_integer()
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not (number and self.minimum <= value <= self.maximum and (not whole or float(value).is_integer())):
            kind = "a whole number" if whole else "a number"
            raise gr.Error(
                f"{self.name} must be {kind} from {self.minimum} to {self.maximum}, got {value!r}.",
                print_exception=False,
            )
        return value


SETTINGS = (
    Setting("max_new_tokens", "Max new tokens", minimum=1, maximum=64, default=32, step=1),
    Setting("num_beams", "Beams", minimum=1, maximum=5, default=1, step=1),
    Setting("temperature", "Sampling temperature (0 = greedy)", minimum=0.0, maximum=1.5, default=0.0, step=0.05),
    Setting("seed", "Seed (sampling)", minimum=0, maximum=2**32 - 1, default=0, step=1, box=True),
)


def checkpoint_settings(config: GenerationConfig) -> tuple[Setting, ...]:
    """SETTINGS with the checkpoint's generation config as their defaults (a slider's range stretched to reach
    it), so that a request that changes no setting generates what `model.generate(**inputs)` generates."""
    temperature = (1.0 if config.temperature is None else config.temperature) if config.do_sample else 0.0
    wanted = {"max_new_tokens": config.max_new_tokens, "num_beams": config.num_beams, "temperature": temperature}
    settings = []
    for setting in SETTINGS:
        default = setting.default if wanted.get(setting.name) is None else wanted[setting.name]
        settings.append(dataclasses.replace(setting, default=default, maximum=max(setting.maximum, default)))
    return tuple(settings)


def checked_settings(settings: tuple[Setting, ...], *values: object) -> tuple[float, ...]:
    """An endpoint's generation settings, each within its slider's limits (gr.Error otherwise)."""
    return tuple(setting.check(value) for setting, value in zip(settings, values, strict=True))


class Describer:
    """A loaded MODA: photos in, descriptions out.

    Images are opened with the processor's `load_image` (`load_rgb_image`, from the checkpoint's own code), the
    loader every MODA entry point uses: any mode, EXIF rotation, transparency on white, 16-bit and huge photos
    handled the same way.

    `fast="int8"` (the default, `MODA_FAST`) runs `moda describe`'s CPU default through the model's own methods
    (`optimize_for_cpu`, `generate_fast`): int8 decoder, LM head limited to the caption vocabulary, and greedy
    requests through the lean loop, which checks the caption drafts for a single photo. `fast="none"` runs fp32
    `generate`, exactly.
    """

    def __init__(self, path: str, fast: str = "int8"):
        self.model = AutoModel.from_pretrained(path, trust_remote_code=True).eval()
        self.processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
        # older checkpoints' processors predate `load_image`: transformers' loader is the fallback
        self.load_rgb_image: Callable[..., Image.Image] = getattr(self.processor, "load_image", None) or (
            lambda image, name: load_image(image)
        )
        self.generate: Callable[..., torch.LongTensor] = self.model.generate
        if fast != "none" and not hasattr(self.model, "optimize_for_cpu"):
            logger.warning("this checkpoint's code predates MODA's CPU fast path methods: fp32 generate")
        elif fast != "none":
            self.model.optimize_for_cpu(fast)  # raises ValueError for an unknown mode
            self.generate = self.model.generate_fast
        self.settings = checkpoint_settings(self.model.generation_config)
        # a seed reproduces a sample only if no other request draws from torch's generator in between
        self.sampling = threading.Lock()

    def open(self, path: str, name: str) -> Image.Image:
        """The photo as RGB, or ValueError with a message fit for the user (the server path stays in the log)."""
        try:
            return self.load_rgb_image(path, name=name)
        except (ValueError, Image.DecompressionBombError) as error:
            logger.warning(f"rejected upload {name}: {error}")
            # newer processor code wraps Pillow's DecompressionBombError in a ValueError; older code raised it bare
            too_large = Image.DecompressionBombError in (type(error), type(error.__cause__))
            reason = TOO_LARGE if too_large else UNREADABLE
            raise ValueError(f"{name} {reason}") from error

    @torch.inference_mode()
    def __call__(
        self, images: list[Image.Image], max_new_tokens: float, num_beams: float, temperature: float, seed: float = 0
    ) -> list[str]:
        """One batched `generate` (left padding keeps each result equal to a one-image call); greedy at 0 °, else
        sampling seeded with `seed` (`transformers.set_seed`, as `moda describe --seed` seeds its first batch).
        The checkpoint's generation config gives every other option (top_k, repetition_penalty, ...)."""
        inputs = self.processor(images=images, return_tensors="pt")
        options = {"max_new_tokens": int(max_new_tokens), "num_beams": int(num_beams), "do_sample": temperature > 0}
        if temperature == 0:
            generated = self.generate(**inputs, **options)
        else:
            with self.sampling:
                set_seed(int(seed))
                generated = self.generate(**inputs, **options, temperature=float(temperature))
        return self.processor.batch_decode(generated, skip_special_tokens=True)


def took(seconds: float, count: int) -> str:
    return f"Described {count} image{'s' * (count != 1)} in {seconds:.2f} s"


def build_demo(describer: Describer, title: str = "MODA") -> gr.Blocks:
    """The UI and its two API endpoints, `/describe` (one image) and `/describe_batch` (several files)."""

    # Both events run with preprocess=False: a bad upload reaches these functions (as the uploaded file's data)
    # instead of failing inside gr.Image with an opaque error, and every setting is checked here against its
    # slider, for API callers too. Gradio still checks each file is an upload.
    def describe(
        image: dict | None, max_new_tokens: float, num_beams: float, temperature: float, seed: float
    ) -> tuple[str, str]:
        settings = checked_settings(describer.settings, max_new_tokens, num_beams, temperature, seed)
        if not image or not image.get("path"):
            raise gr.Error("Upload, paste or pick a photo first.")
        try:
            photo = describer.open(image["path"], image.get("orig_name") or "The upload")
        except ValueError as error:
            raise gr.Error(str(error), print_exception=False) from error
        start = time.perf_counter()
        (text,) = describer([photo], *settings)
        return text, took(time.perf_counter() - start, 1)

    def describe_batch(
        files: list[dict] | None, max_new_tokens: float, num_beams: float, temperature: float, seed: float
    ) -> tuple[list[tuple[str, str]], list[list[str]], str]:
        settings = checked_settings(describer.settings, max_new_tokens, num_beams, temperature, seed)
        if not files:
            raise gr.Error("Upload one or more photos first.")
        if len(files) > MAX_BATCH:
            raise gr.Error(f"Up to {MAX_BATCH} photos at a time, got {len(files)}.")
        readable, rows = [], []
        for file in files:
            name = file.get("orig_name") or Path(file["path"]).name
            try:
                readable.append((file["path"], name, describer.open(file["path"], name)))
            except ValueError as error:
                gr.Warning(str(error))
                rows.append([name, f"skipped: {error}"])
        if not readable:
            raise gr.Error("None of the files is an image MODA can read.")
        start = time.perf_counter()
        texts = describer([photo for _, _, photo in readable], *settings)
        seconds = time.perf_counter() - start
        rows = [[name, text] for (_, name, _), text in zip(readable, texts)] + rows
        return [(path, text) for (path, _, _), text in zip(readable, texts)], rows, took(seconds, len(readable))

    with gr.Blocks(title=title) as demo:
        gr.Markdown(
            f"# {title}: fashion item descriptions\n"
            "Upload, paste or pick a product photo and MODA writes a one-sentence description. "
            "The *Batch* tab describes several photos in one pass. "
            f"Files up to {MAX_FILE_SIZE}; API: `/describe` and `/describe_batch` (see *Use via API* below)."
        )
        with gr.Accordion("Generation settings", open=False):
            with gr.Row():
                settings = [setting.component() for setting in describer.settings]

        with gr.Tab("One photo"):
            with gr.Row():
                image = gr.Image(
                    type="filepath",
                    sources=["upload", "clipboard"],
                    label="Photo",
                    buttons=["fullscreen"],
                    height=320,
                    elem_id="photo",
                )
                with gr.Column():
                    description = gr.Textbox(label="Description", lines=3, interactive=False, elem_id="description")
                    timing = gr.Markdown(label="time taken", elem_id="timing")
                    button = gr.Button("Describe", variant="primary", elem_id="describe")
            if EXAMPLES:
                gr.Examples(examples=EXAMPLES, inputs=image, label="Examples from the demo catalogue")
        button.click(
            describe,
            [image, *settings],
            [description, timing],
            api_name="describe",
            preprocess=False,
            concurrency_limit=CONCURRENCY_LIMIT,
            concurrency_id="generate",
        )

        with gr.Tab("Batch"):
            files = gr.File(file_count="multiple", file_types=["image"], label="Photos", elem_id="batch-files")
            batch_button = gr.Button("Describe all", variant="primary", elem_id="describe-batch")
            batch_timing = gr.Markdown(label="time taken", elem_id="batch-timing")
            gallery = gr.Gallery(label="Descriptions", columns=4, height="auto")
            table = gr.Dataframe(headers=["file", "description"], label="As a table", interactive=False)
        batch_button.click(
            describe_batch,
            [files, *settings],
            [gallery, table, batch_timing],
            api_name="describe_batch",
            preprocess=False,
            concurrency_limit=CONCURRENCY_LIMIT,
            concurrency_id="generate",
        )
    return demo


def main() -> None:
    path = model_id()
    logger.warning(f"loading MODA from {path}")
    demo = build_demo(Describer(path, os.environ.get("MODA_FAST", "int8")))
    # Host and port come from GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (set by Spaces; 127.0.0.1:7860 locally).
    demo.queue(max_size=64).launch(max_file_size=MAX_FILE_SIZE, show_error=True, theme=gr.themes.Soft())


if __name__ == "__main__":
    main()
