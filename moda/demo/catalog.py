"""The bundled demo catalogue: procedurally drawn fashion items in the Kaggle "fashion-images" layout.

MODA is trained on the Kaggle fashion-images catalogue, which cannot be downloaded here. This module draws a
stand-in with the same CSV columns (plus ``Pattern``), so every pipeline (training, distillation, metrics, the
Space) runs end to end offline and in tests. Each product type has its own silhouette, each colour a distinct RGB
value and each pattern (plain, striped, checked, polka-dot) a texture coarse enough to read at 64 pixels; position,
scale, rotation, background and noise vary so that the task is not trivial.

A caption states only what the drawing shows: colour, pattern and product type ("A red striped dress."). Gender and
usage stay in their columns, as in the Kaggle catalogue, but no drawing shows them, so no caption claims them: a
model trained on captions that did would learn to guess.

    python -m moda.demo.catalog --out data/demo --n 300 --seed 0

writes ``data/demo/fashion.csv`` with the columns ``CSV_COLUMNS`` and the images under
``data/demo/images/<Category>/<Gender>/<ProductId>.jpg``. The ``Image`` column holds that path *relative to the
CSV's folder* (the Kaggle set holds a bare file name there), so a loader opens ``csv_path.parent / row["Image"]``.
"""

from __future__ import annotations

import argparse
import csv
import logging
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm.auto import tqdm

from processing.data import KAGGLE_COLUMNS

from ..metrics.fashion_attributes.fashion_vocabulary import COLOURS as VOCABULARY_COLOURS
from ..metrics.fashion_attributes.fashion_vocabulary import GENDER_WORDS
from ..metrics.fashion_attributes.fashion_vocabulary import PATTERNS as VOCABULARY_PATTERNS
from ..metrics.fashion_attributes.fashion_vocabulary import pattern_word, product_noun


logger = logging.getLogger(__name__)

CSV_NAME = "fashion.csv"
CSV_COLUMNS = (*KAGGLE_COLUMNS, "Pattern", "description")

Point = tuple[float, float]
# A silhouette draws the item's body (filled with the fabric) and its details (drawn in a darker or lighter shade)
# into two masks, in coordinates scaled by the side length.
Silhouette = Callable[[ImageDraw.ImageDraw, ImageDraw.ImageDraw, int], None]


@dataclass(frozen=True)
class Colour:
    """A Kaggle colour name and the RGB it is painted with (values kept far apart so a tiny model can tell them)."""

    name: str
    rgb: tuple[int, int, int]


@dataclass(frozen=True)
class ProductType:
    """A Kaggle product type, its place in the Kaggle hierarchy and how it is drawn and paired."""

    name: str
    category: str
    sub_category: str
    draw: Silhouette
    genders: tuple[str, ...]
    usages: tuple[str, ...]
    is_pair: bool = False

    @property
    def noun(self) -> str:
        return product_noun(self.name)


_PAINT = {
    "Black": (25, 25, 25),
    "White": (245, 245, 245),
    "Grey": (128, 128, 128),
    "Blue": (40, 110, 235),
    "Navy Blue": (20, 30, 95),
    "Teal": (0, 128, 128),
    "Green": (40, 160, 50),
    "Yellow": (245, 215, 30),
    "Orange": (245, 125, 20),
    "Red": (210, 25, 30),
    "Pink": (245, 140, 195),
    "Purple": (125, 45, 165),
    "Brown": (115, 70, 30),
    "Beige": (220, 200, 155),
}
COLOURS: tuple[Colour, ...] = tuple(Colour(name, rgb) for name, rgb in _PAINT.items() if name in VOCABULARY_COLOURS)

PATTERNS: tuple[str, ...] = tuple(VOCABULARY_PATTERNS)


def _scaled(points: Sequence[Point], side: int) -> list[Point]:
    return [(x * side, y * side) for x, y in points]


def _box(x0: float, y0: float, x1: float, y1: float, side: int) -> list[float]:
    return [x0 * side, y0 * side, x1 * side, y1 * side]


def _stroke(side: int) -> int:
    return max(1, round(side * 0.015))


def _draw_tshirt(body: ImageDraw.ImageDraw, details: ImageDraw.ImageDraw, side: int) -> None:
    outline = [(0.30, 0.15), (0.42, 0.12), (0.46, 0.17), (0.54, 0.17), (0.58, 0.12), (0.70, 0.15), (0.88, 0.30),
               (0.80, 0.40), (0.70, 0.34), (0.70, 0.88), (0.30, 0.88), (0.30, 0.34), (0.20, 0.40), (0.12, 0.30)]
    body.polygon(_scaled(outline, side), fill=255)
    details.line(_scaled([(0.42, 0.12), (0.50, 0.21), (0.58, 0.12)], side), fill=255, width=_stroke(side))


def _draw_shirt(body: ImageDraw.ImageDraw, details: ImageDraw.ImageDraw, side: int) -> None:
    outline = [(0.32, 0.14), (0.42, 0.11), (0.50, 0.20), (0.58, 0.11), (0.68, 0.14), (0.86, 0.62), (0.78, 0.65),
               (0.67, 0.36), (0.67, 0.90), (0.33, 0.90), (0.33, 0.36), (0.22, 0.65), (0.14, 0.62)]
    body.polygon(_scaled(outline, side), fill=255)
    details.polygon(_scaled([(0.42, 0.11), (0.50, 0.20), (0.44, 0.26)], side), fill=255)
    details.polygon(_scaled([(0.58, 0.11), (0.50, 0.20), (0.56, 0.26)], side), fill=255)
    details.line(_scaled([(0.50, 0.20), (0.50, 0.90)], side), fill=255, width=_stroke(side))
    for y in (0.35, 0.50, 0.65, 0.80):
        details.ellipse(_box(0.525, y - 0.015, 0.555, y + 0.015, side), fill=255)


def _draw_top(body: ImageDraw.ImageDraw, details: ImageDraw.ImageDraw, side: int) -> None:
    outline = [(0.34, 0.14), (0.40, 0.14), (0.44, 0.30), (0.56, 0.30), (0.60, 0.14), (0.66, 0.14), (0.68, 0.36),
               (0.74, 0.72), (0.26, 0.72), (0.32, 0.36)]
    body.polygon(_scaled(outline, side), fill=255)
    details.line(_scaled([(0.28, 0.62), (0.72, 0.62)], side), fill=255, width=_stroke(side))


def _draw_jacket(body: ImageDraw.ImageDraw, details: ImageDraw.ImageDraw, side: int) -> None:
    outline = [(0.28, 0.20), (0.72, 0.20), (0.92, 0.72), (0.80, 0.76), (0.72, 0.44), (0.72, 0.92), (0.28, 0.92),
               (0.28, 0.44), (0.20, 0.76), (0.08, 0.72)]
    body.polygon(_scaled(outline, side), fill=255)
    body.ellipse(_box(0.36, 0.04, 0.64, 0.30, side), fill=255)
    details.line(_scaled([(0.50, 0.24), (0.50, 0.92)], side), fill=255, width=2 * _stroke(side))
    details.rectangle(_box(0.33, 0.62, 0.44, 0.74, side), fill=255)
    details.rectangle(_box(0.56, 0.62, 0.67, 0.74, side), fill=255)


def _draw_dress(body: ImageDraw.ImageDraw, details: ImageDraw.ImageDraw, side: int) -> None:
    outline = [(0.40, 0.08), (0.44, 0.08), (0.46, 0.22), (0.54, 0.22), (0.56, 0.08), (0.60, 0.08), (0.62, 0.30),
               (0.58, 0.44), (0.86, 0.94), (0.14, 0.94), (0.42, 0.44), (0.38, 0.30)]
    body.polygon(_scaled(outline, side), fill=255)
    details.line(_scaled([(0.42, 0.44), (0.58, 0.44)], side), fill=255, width=2 * _stroke(side))


def _draw_jeans(body: ImageDraw.ImageDraw, details: ImageDraw.ImageDraw, side: int) -> None:
    outline = [(0.30, 0.06), (0.70, 0.06), (0.75, 0.94), (0.56, 0.94), (0.50, 0.36), (0.44, 0.94), (0.25, 0.94)]
    body.polygon(_scaled(outline, side), fill=255)
    details.line(_scaled([(0.30, 0.12), (0.70, 0.12)], side), fill=255, width=_stroke(side))
    details.line(_scaled([(0.50, 0.12), (0.50, 0.30)], side), fill=255, width=_stroke(side))
    details.arc(_box(0.26, 0.04, 0.44, 0.24, side), start=0, end=90, fill=255, width=_stroke(side))
    details.arc(_box(0.56, 0.04, 0.74, 0.24, side), start=90, end=180, fill=255, width=_stroke(side))


def _draw_shorts(body: ImageDraw.ImageDraw, details: ImageDraw.ImageDraw, side: int) -> None:
    outline = [(0.26, 0.26), (0.74, 0.26), (0.82, 0.72), (0.56, 0.74), (0.50, 0.48), (0.44, 0.74), (0.18, 0.72)]
    body.polygon(_scaled(outline, side), fill=255)
    details.line(_scaled([(0.26, 0.32), (0.74, 0.32)], side), fill=255, width=2 * _stroke(side))


def _draw_skirt(body: ImageDraw.ImageDraw, details: ImageDraw.ImageDraw, side: int) -> None:
    body.polygon(_scaled([(0.36, 0.18), (0.64, 0.18), (0.86, 0.82), (0.14, 0.82)], side), fill=255)
    details.rectangle(_box(0.36, 0.18, 0.64, 0.24, side), fill=255)
    for top_x, bottom_x in ((0.43, 0.36), (0.50, 0.50), (0.57, 0.64)):
        details.line(_scaled([(top_x, 0.24), (bottom_x, 0.82)], side), fill=255, width=_stroke(side))


def _draw_casual_shoe(body: ImageDraw.ImageDraw, details: ImageDraw.ImageDraw, side: int) -> None:
    outline = [(0.12, 0.56), (0.16, 0.44), (0.38, 0.42), (0.56, 0.50), (0.80, 0.53), (0.90, 0.60), (0.90, 0.70),
               (0.12, 0.70)]
    body.polygon(_scaled(outline, side), fill=255)
    details.line(_scaled([(0.12, 0.66), (0.90, 0.66)], side), fill=255, width=_stroke(side))
    details.line(_scaled([(0.18, 0.46), (0.38, 0.46)], side), fill=255, width=_stroke(side))


def _draw_sports_shoe(body: ImageDraw.ImageDraw, details: ImageDraw.ImageDraw, side: int) -> None:
    outline = [(0.12, 0.64), (0.14, 0.30), (0.32, 0.26), (0.42, 0.40), (0.70, 0.47), (0.88, 0.56), (0.92, 0.80),
               (0.10, 0.80)]
    body.polygon(_scaled(outline, side), fill=255)
    details.rectangle(_box(0.10, 0.70, 0.92, 0.80, side), fill=255)
    details.line(_scaled([(0.22, 0.62), (0.50, 0.50), (0.80, 0.62)], side), fill=255, width=2 * _stroke(side))
    for x in (0.40, 0.48, 0.56):
        details.line(_scaled([(x, 0.40), (x + 0.06, 0.48)], side), fill=255, width=_stroke(side))


def _draw_heel(body: ImageDraw.ImageDraw, details: ImageDraw.ImageDraw, side: int) -> None:
    # a pump: an upper deep enough to show its pattern, an arched sole and a stiletto heel
    sole = [(0.14, 0.60), (0.27, 0.62), (0.34, 0.62), (0.56, 0.74), (0.92, 0.72)]
    outline = [(0.12, 0.30), (0.30, 0.38), (0.52, 0.46), (0.76, 0.50), (0.90, 0.58), (0.92, 0.72), (0.56, 0.74),
               (0.34, 0.62), (0.27, 0.62), (0.25, 0.90), (0.19, 0.90), (0.14, 0.60)]
    body.polygon(_scaled(outline, side), fill=255)
    details.line(_scaled(sole, side), fill=255, width=_stroke(side))


def _draw_flip_flops(body: ImageDraw.ImageDraw, details: ImageDraw.ImageDraw, side: int) -> None:
    for left in (0.14, 0.54):
        body.ellipse(_box(left, 0.10, left + 0.32, 0.90, side), fill=255)
        centre = left + 0.16
        strap = [(left + 0.03, 0.50), (centre, 0.24), (left + 0.29, 0.50)]
        details.line(_scaled(strap, side), fill=255, width=2 * _stroke(side))


def _draw_sandal(body: ImageDraw.ImageDraw, details: ImageDraw.ImageDraw, side: int) -> None:
    # a pair seen from above, like the flip flops, but slim soles under two wide straps that stand out on both
    # sides: one sole with straps across reads as a t-shirt's body and sleeves
    for sole_left in (0.14, 0.64):
        body.rounded_rectangle(_box(sole_left, 0.08, sole_left + 0.22, 0.92, side), radius=0.09 * side, fill=255)
        for top in (0.24, 0.54):
            strap = _box(sole_left - 0.07, top, sole_left + 0.29, top + 0.13, side)
            body.rectangle(strap, fill=255)
            details.rectangle(strap, outline=255, width=_stroke(side))


ANY_GENDER = tuple(GENDER_WORDS)
WOMENSWEAR = ("Women", "Girls")
_DRESSY = ("Casual", "Formal", "Party", "Ethnic")
# name, Category, SubCategory, silhouette, genders, usages (Kaggle-like pairings).
PRODUCT_TYPES: tuple[ProductType, ...] = (
    ProductType("Tshirts", "Apparel", "Topwear", _draw_tshirt, ANY_GENDER, ("Casual", "Sports")),
    ProductType("Shirts", "Apparel", "Topwear", _draw_shirt, ("Men", "Women", "Boys"), _DRESSY),
    ProductType("Tops", "Apparel", "Topwear", _draw_top, WOMENSWEAR, _DRESSY),
    ProductType("Jackets", "Apparel", "Topwear", _draw_jacket, ANY_GENDER, ("Casual", "Sports", "Formal")),
    ProductType("Dresses", "Apparel", "Dress", _draw_dress, WOMENSWEAR, ("Casual", "Party", "Ethnic")),
    ProductType("Jeans", "Apparel", "Bottomwear", _draw_jeans, ANY_GENDER, ("Casual", "Party"),
                is_pair=True),
    ProductType("Shorts", "Apparel", "Bottomwear", _draw_shorts, ANY_GENDER, ("Casual", "Sports"),
                is_pair=True),
    ProductType("Skirts", "Apparel", "Bottomwear", _draw_skirt, WOMENSWEAR, ("Casual", "Formal", "Party")),
    ProductType("Casual Shoes", "Footwear", "Shoes", _draw_casual_shoe, ANY_GENDER,
                ("Casual", "Formal"), is_pair=True),
    ProductType("Sports Shoes", "Footwear", "Shoes", _draw_sports_shoe, ANY_GENDER, ("Sports",),
                is_pair=True),
    ProductType("Heels", "Footwear", "Shoes", _draw_heel, ("Women",), ("Party", "Formal"), is_pair=True),
    ProductType("Flip Flops", "Footwear", "Flip Flops", _draw_flip_flops, ANY_GENDER, ("Casual",),
                is_pair=True),
    ProductType("Sandals", "Footwear", "Sandal", _draw_sandal, ANY_GENDER, ("Casual", "Ethnic"),
                is_pair=True),
)

_BRANDS = ("Modaline", "Urban Thread", "Northloom", "Velvetta", "Kestrel", "Marigold & Co")


def _shade(rgb: tuple[int, int, int], strength: float = 0.5) -> tuple[int, int, int]:
    """A darker shade for light colours, a lighter one for dark colours, `strength` of the way to black or white:
    patterns keep the colour recognisable, and details drawn stronger than the pattern stay apart from it."""
    luminance = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    if luminance > 140:
        return tuple(round(channel * (1 - strength)) for channel in rgb)
    return tuple(round(channel + (255 - channel) * strength) for channel in rgb)


FABRIC_STREAM = 0x5EED  # seed offset of the fabric's random stream
DETAIL_STRENGTH = 0.8  # collars, buttons, soles and outlines: well beyond the pattern's 0.5


def _fabric(side: int, rgb: tuple[int, int, int], pattern: str, rng: random.Random) -> Image.Image:
    """A square of cloth in the item's colour, with the pattern drawn in a shade of the same colour.

    Each pattern has its own geometry and share of the cloth: stripes half, in one direction; checks half, as a
    checkerboard; polka dots a fifth, as small round dots. Its period (8 to 12 pixels at 64) keeps them apart at the
    side the demo's vision tower sees."""
    fabric = Image.new("RGB", (side, side), rgb)
    draw = ImageDraw.Draw(fabric)
    shade = _shade(rgb)
    period = rng.randint(max(4, side // 8), max(6, side // 5))
    band = max(1, period // 2)
    if pattern == "Striped":
        vertical = rng.random() < 0.5
        for offset in range(0, side, period):
            box = [offset, 0, offset + band - 1, side] if vertical else [0, offset, side, offset + band - 1]
            draw.rectangle(box, fill=shade)
    elif pattern == "Checked":
        for row, y in enumerate(range(0, side, band)):
            for x in range((row % 2) * band, side, 2 * band):
                draw.rectangle([x, y, x + band - 1, y + band - 1], fill=shade)
    elif pattern == "Polka-dot":
        radius = period / 4
        for row, y in enumerate(range(0, side + period, period)):
            for x in range((row % 2) * period // 2, side + period, period):
                draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=shade)
    return fabric


def _background(side: int, item_rgb: tuple[int, int, int], rng: random.Random) -> Image.Image:
    """A low-saturation backdrop, dark behind light items and light behind dark ones, so the silhouette stands out."""
    luminance = 0.299 * item_rgb[0] + 0.587 * item_rgb[1] + 0.114 * item_rgb[2]
    level = rng.randint(80, 130) if luminance > 180 else rng.randint(185, 240)
    tint = tuple(min(255, max(0, level + rng.randint(-12, 12))) for _ in range(3))
    return Image.new("RGB", (side, side), tint)


def draw_item(product_type: ProductType, colour: Colour, pattern: str, side: int, seed: int) -> Image.Image:
    """Draw one catalogue image; the same arguments always give the same pixels, and the same seed the same
    geometry and noise whatever the colour and pattern (the fabric draws from a random stream of its own)."""
    rng = random.Random(seed)
    rgb = tuple(min(255, max(0, channel + rng.randint(-8, 8))) for channel in colour.rgb)

    body_mask = Image.new("L", (side, side), 0)
    detail_mask = Image.new("L", (side, side), 0)
    product_type.draw(ImageDraw.Draw(body_mask), ImageDraw.Draw(detail_mask), side)
    edge_mask = body_mask.filter(ImageFilter.FIND_EDGES)

    item = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    item.paste(_fabric(side, rgb, pattern, random.Random(seed ^ FABRIC_STREAM)), (0, 0), body_mask)
    item.paste(_shade(rgb, DETAIL_STRENGTH), (0, 0, side, side), detail_mask)
    item.paste(_shade(rgb, DETAIL_STRENGTH), (0, 0, side, side), edge_mask)
    if rng.random() < 0.5:
        item = item.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    scaled_side = round(side * rng.uniform(0.7, 1.0))
    item = item.resize((scaled_side, scaled_side), Image.Resampling.BILINEAR)
    item = item.rotate(rng.uniform(-20, 20), resample=Image.Resampling.BILINEAR)

    image = _background(side, rgb, rng)
    image.paste(item, (rng.randint(0, side - scaled_side), rng.randint(0, side - scaled_side)), item)
    noise = np.random.default_rng(seed).standard_normal((side, side, 3), dtype=np.float32) * rng.uniform(3.0, 10.0)
    pixels = np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, mode="RGB")


def describe(product_type: ProductType, colour: str, pattern: str, rng: random.Random) -> str:
    """A short caption in one of several phrasings, stating what the drawing shows: colour, pattern, product type."""
    colour_words = colour.lower()
    noun = product_type.noun
    pattern_words = pattern_word(pattern)

    def article(word: str) -> str:
        if product_type.is_pair:
            return "A pair of"
        return "An" if word[0] in "aeiou" else "A"

    templates = (
        f"{article(colour_words)} {colour_words} {pattern_words} {noun}.",
        f"{colour_words.capitalize()} {noun} with a {pattern_words} look.",
        f"{pattern_words.capitalize()} {noun} in {colour_words}.",
        f"{article(noun)} {noun} in {pattern_words} {colour_words}.",
    )
    return rng.choice(templates)


@dataclass(frozen=True)
class Item:
    """One catalogue entry: its attributes, the seed of its image (`draw_item`), its brand and its caption."""

    product_type: ProductType
    colour: Colour
    pattern: str
    gender: str
    usage: str
    image_seed: int
    brand: str
    description: str


def catalogue_items(n: int, seed: int) -> Iterator[Item]:
    """The ``n`` items of the catalogue of ``seed``, in order: the same seed gives the same items."""
    rng = random.Random(seed)
    for _ in range(n):
        product_type = rng.choice(PRODUCT_TYPES)
        colour, pattern = rng.choice(COLOURS), rng.choice(PATTERNS)
        gender, usage = rng.choice(product_type.genders), rng.choice(product_type.usages)
        image_seed, brand = rng.getrandbits(32), rng.choice(_BRANDS)
        description = describe(product_type, colour.name, pattern, rng)
        yield Item(product_type, colour, pattern, gender, usage, image_seed, brand, description)


def make_catalog(out_dir: str | Path, n: int, seed: int = 0, image_size: int = 224) -> Path:
    """Write ``n`` items (CSV + JPEGs) under ``out_dir``; return the CSV path. The same seed gives the same bytes."""
    out_dir = Path(out_dir)
    rows = []
    items = tqdm(catalogue_items(n, seed), total=n, desc="Drawing catalogue", unit="item")
    for index, item in enumerate(items):
        product_type, colour, pattern, gender, usage = (
            item.product_type, item.colour, item.pattern, item.gender, item.usage
        )
        product_id = 10000 + index
        relative_image = Path("images") / product_type.category / gender / f"{product_id}.jpg"

        image_path = out_dir / relative_image
        image_path.parent.mkdir(parents=True, exist_ok=True)
        draw_item(product_type, colour, pattern, image_size, seed=item.image_seed).save(image_path, quality=90)

        pattern_title = "" if pattern == "Solid" else f" {pattern}"
        rows.append({
            "ProductId": product_id,
            "Gender": gender,
            "Category": product_type.category,
            "SubCategory": product_type.sub_category,
            "ProductType": product_type.name,
            "Colour": colour.name,
            "Usage": usage,
            "ProductTitle": f"{item.brand} {gender} {colour.name}{pattern_title} {product_type.noun.title()}",
            "Image": relative_image.as_posix(),
            "ImageURL": f"https://example.invalid/moda/{product_id}.jpg",
            "Pattern": pattern,
            "description": item.description,
        })

    csv_path = out_dir / CSV_NAME
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    logger.info("Wrote %d items to %s", n, csv_path)
    return csv_path


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for fashion.csv and images/")
    parser.add_argument("--n", type=int, default=300, help="number of items")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same bytes")
    parser.add_argument("--image-size", type=int, default=224, help="side of the square images in pixels")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return make_catalog(args.out, args.n, seed=args.seed, image_size=args.image_size)


if __name__ == "__main__":
    main()
