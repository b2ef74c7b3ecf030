"""The README's picture: a few demo photos with the descriptions a trained MODA wrote for them.

A hand-written example caption can drift from what the model really says; this sheet is drawn from the model's own
greedy output, so rerunning it after training keeps the picture true.

    python -m moda.demo.gallery --model outputs/demo --images outputs/demo/catalog --count 6 \\
        --out docs/images/demo_gallery.png

Picks `--count` images from the folder (searched recursively, sorted by path, evenly spaced: the same images every
run), describes them in one batch (greedy fp32 `generate`) and writes one PNG: each photo scaled to `--tile`
pixels with its description wrapped beneath.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
BACKGROUND = (255, 255, 255)
TEXT_COLOUR = (30, 30, 30)
MARGIN = 12  # pixels around and between tiles
LINE_SPACING = 4


def find_images(folder: Path) -> list[Path]:
    """Every image file below `folder`, sorted by path."""
    return sorted(path for path in folder.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file())


def pick_evenly(paths: Sequence[Path], count: int) -> list[Path]:
    """`count` paths spread evenly over `paths` (the middle of each of `count` equal stretches)."""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    if len(paths) < count:
        raise ValueError(f"asked for {count} images, found {len(paths)}")
    return [paths[(2 * index + 1) * len(paths) // (2 * count)] for index in range(count)]


def describe(model_path: str, images: Sequence[Image.Image], max_new_tokens: int = 32) -> list[str]:
    """Greedy fp32 descriptions of `images`, in one batch, as `moda describe --fast none` writes them."""
    from moda.describe import describe_images, load_model

    model, processor = load_model(model_path, fast="none")
    texts = describe_images(model, processor, images, batch_size=len(images), max_new_tokens=max_new_tokens)
    return [text.strip() for text in texts]


def load_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled font at `size` pixels (Pillow >= 10.1); its small bitmap font on older Pillow."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def wrap(text: str, font, width: int) -> list[str]:
    """`text` broken into lines no wider than `width` pixels (a single longer word gets its own line)."""
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength
    lines: list[str] = []
    for word in text.split():
        if lines and measure(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]


def contact_sheet(
    images: Sequence[Image.Image], captions: Sequence[str], tile: int = 160, columns: int = 3, font_size: int = 14
) -> Image.Image:
    """One image: a grid of `tile`-pixel photos, each with its caption wrapped beneath it."""
    font = load_font(font_size)
    wrapped = [wrap(caption, font, tile) for caption in captions]
    line_height = font_size + LINE_SPACING
    text_height = max(len(lines) for lines in wrapped) * line_height
    columns = max(1, min(columns, len(images)))
    rows = math.ceil(len(images) / columns)
    cell_width, cell_height = tile + MARGIN, tile + MARGIN // 2 + text_height + MARGIN
    sheet = Image.new("RGB", (MARGIN + columns * cell_width, MARGIN + rows * cell_height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for index, (image, lines) in enumerate(zip(images, wrapped)):
        left = MARGIN + (index % columns) * cell_width
        top = MARGIN + (index // columns) * cell_height
        sheet.paste(image.convert("RGB").resize((tile, tile), Image.Resampling.BICUBIC), (left, top))
        for number, line in enumerate(lines):
            draw.text((left, top + tile + MARGIN // 2 + number * line_height), line, fill=TEXT_COLOUR, font=font)
    return sheet


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Draw demo photos with MODA's descriptions into one PNG")
    parser.add_argument("--model", required=True, help="a trained MODA folder or Hub id, e.g. outputs/demo")
    parser.add_argument("--images", required=True, type=Path, help="folder of photos (searched recursively)")
    parser.add_argument("--count", type=int, default=6, help="photos on the sheet")
    parser.add_argument("--out", required=True, type=Path, help="PNG to write, e.g. docs/images/demo_gallery.png")
    parser.add_argument("--tile", type=int, default=160, help="photo side in pixels")
    parser.add_argument("--columns", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    return parser


def main(argv: Sequence[str] | None = None) -> Path:
    args = build_parser().parse_args(argv)
    if not args.images.is_dir():
        raise SystemExit(f"--images: {args.images} is not a folder (run `make demo` first for outputs/demo)")
    try:
        paths = pick_evenly(find_images(args.images), args.count)
    except ValueError as error:
        raise SystemExit(f"--images {args.images}: {error}")
    images = []
    for path in paths:
        with Image.open(path) as image:
            images.append(image.convert("RGB"))
    captions = describe(args.model, images, args.max_new_tokens)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    contact_sheet(images, captions, tile=args.tile, columns=args.columns).save(args.out)
    for path, caption in zip(paths, captions):
        print(f"{path}: {caption}")
    print(f"wrote {args.out}")
    return args.out


if __name__ == "__main__":
    main()
