"""MODA Space: describe fashion items from photos, one at a time (upload, paste or an example) or in batches.

    MODA_MODEL=user/moda python app.py        # or a local checkpoint folder; MODA_FAST=none for fp32 generate

The model comes from the ``MODA_MODEL`` variable (a Hub id or a local folder) or, when it is unset, from the
first ``models:`` entry of this Space's README. MODA's code is loaded from the model repo with
``trust_remote_code=True``, so the Space needs only the packages in requirements.txt.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import gradio as gr
import torch
from huggingface_hub import metadata_load
from PIL import Image
from transformers import AutoModel, AutoProcessor
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


def model_id() -> str:
    """`MODA_MODEL`, else the model this Space's README links to."""
    if os.environ.get("MODA_MODEL"):
        return os.environ["MODA_MODEL"]
    readme = HERE / "README.md"
    models = (metadata_load(readme) or {}).get("models") if readme.is_file() else None
    if not models:
        raise SystemExit("Set MODA_MODEL to a MODA checkpoint folder or Hub id (e.g. MODA_MODEL=user/moda).")
    return models[0]


class Describer:
    """A loaded MODA: photos in, descriptions out.

    Images are opened with the processor's `load_image` (`load_rgb_image`, from the checkpoint's own code), the loader every MODA entry
    point uses: any mode, EXIF rotation, transparency on white, 16-bit and huge photos handled the same way.

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
        self, images: list[Image.Image], max_new_tokens: float, num_beams: float, temperature: float
    ) -> list[str]:
        """One batched `generate` (left padding keeps each result equal to a one-image call); greedy at 0 °."""
        inputs = self.processor(images=images, return_tensors="pt")
        options = {"max_new_tokens": int(max_new_tokens), "num_beams": int(num_beams), "do_sample": temperature > 0}
        if temperature > 0:
            options["temperature"] = float(temperature)
        generated = self.generate(**inputs, **options)
        return self.processor.batch_decode(generated, skip_special_tokens=True)


def took(seconds: float, count: int) -> str:
    return f"Described {count} image{'s' * (count != 1)} in {seconds:.2f} s"


def build_demo(describer: Describer, title: str = "MODA") -> gr.Blocks:
    """The UI and its two API endpoints, `/describe` (one image) and `/describe_batch` (several files)."""

    def describe(image: dict | None, max_new_tokens: float, num_beams: float, temperature: float) -> tuple[str, str]:
        # The event runs with preprocess=False, so a bad upload reaches this function (as the uploaded file's
        # data) instead of failing inside gr.Image with an opaque error; gradio still checks the path is an upload.
        if not image or not image.get("path"):
            raise gr.Error("Upload, paste or pick a photo first.")
        try:
            photo = describer.open(image["path"], image.get("orig_name") or "The upload")
        except ValueError as error:
            raise gr.Error(str(error), print_exception=False) from error
        start = time.perf_counter()
        (text,) = describer([photo], max_new_tokens, num_beams, temperature)
        return text, took(time.perf_counter() - start, 1)

    def describe_batch(
        files: list[str] | None, max_new_tokens: float, num_beams: float, temperature: float
    ) -> tuple[list[tuple[str, str]], list[list[str]], str]:
        if not files:
            raise gr.Error("Upload one or more photos first.")
        if len(files) > MAX_BATCH:
            raise gr.Error(f"Up to {MAX_BATCH} photos at a time, got {len(files)}.")
        readable, rows = [], []
        for path in files:
            try:
                readable.append((path, describer.open(path, Path(path).name)))
            except ValueError as error:
                gr.Warning(str(error))
                rows.append([Path(path).name, f"skipped: {error}"])
        if not readable:
            raise gr.Error("None of the files is an image MODA can read.")
        start = time.perf_counter()
        texts = describer([photo for _, photo in readable], max_new_tokens, num_beams, temperature)
        seconds = time.perf_counter() - start
        rows = [[Path(path).name, text] for (path, _), text in zip(readable, texts)] + rows
        return [(path, text) for (path, _), text in zip(readable, texts)], rows, took(seconds, len(readable))

    with gr.Blocks(title=title) as demo:
        gr.Markdown(
            f"# {title}: fashion item descriptions\n"
            "Upload, paste or pick a product photo and MODA writes a one-sentence description. "
            "The *Batch* tab describes several photos in one pass. "
            f"Files up to {MAX_FILE_SIZE}; API: `/describe` and `/describe_batch` (see *Use via API* below)."
        )
        with gr.Accordion("Generation settings", open=False):
            with gr.Row():
                max_new_tokens = gr.Slider(1, 64, value=32, step=1, label="Max new tokens")
                num_beams = gr.Slider(1, 5, value=1, step=1, label="Beams")
                temperature = gr.Slider(0.0, 1.5, value=0.0, step=0.05, label="Sampling temperature (0 = greedy)")
        settings = [max_new_tokens, num_beams, temperature]

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
