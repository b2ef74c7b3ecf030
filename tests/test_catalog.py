"""The demo catalogue: Kaggle layout, images, determinism, variety, and captions that state what the drawing shows."""

import csv
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from moda.demo.catalog import (
    COLOURS,
    CSV_COLUMNS,
    PATTERNS,
    PRODUCT_TYPES,
    _fabric,
    catalogue_items,
    draw_item,
    main,
    make_catalog,
    pattern_word,
    product_noun,
)


def _read_rows(csv_path: Path) -> list[dict[str, str]]:
    with csv_path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _all_bytes(folder: Path) -> dict[str, bytes]:
    files = sorted(path for path in folder.rglob("*") if path.is_file())
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in files}


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, str]]]:
    out_dir = tmp_path_factory.mktemp("catalogue")
    csv_path = main(["--out", str(out_dir), "--n", "300", "--seed", "3", "--image-size", "64"])
    return csv_path, _read_rows(csv_path)


def test_cli_writes_kaggle_columns_and_n_rows(catalogue):
    csv_path, rows = catalogue
    with csv_path.open(newline="", encoding="utf-8") as handle:
        header = next(csv.reader(handle))
    assert tuple(header) == CSV_COLUMNS
    assert len(rows) == 300
    assert len({row["ProductId"] for row in rows}) == 300


def test_images_exist_are_rgb_and_sized(catalogue):
    csv_path, rows = catalogue
    for row in rows[:40]:
        image_path = csv_path.parent / row["Image"]
        assert image_path.parent.parts[-2:] == (row["Category"], row["Gender"])
        with Image.open(image_path) as image:
            assert image.mode == "RGB"
            assert image.size == (64, 64)


def test_images_default_to_clip_size(tmp_path):
    for row in _read_rows(make_catalog(tmp_path, n=3, seed=0)):
        with Image.open(tmp_path / row["Image"]) as image:
            assert image.size == (224, 224)


def test_catalogue_is_varied(catalogue):
    _, rows = catalogue
    assert len({row["ProductType"] for row in rows}) >= 10
    assert {row["Category"] for row in rows} == {"Apparel", "Footwear"}
    for category in ("Apparel", "Footwear"):
        assert len({row["ProductType"] for row in rows if row["Category"] == category}) >= 4
    assert len({row["Colour"] for row in rows}) >= 12
    assert {row["Pattern"] for row in rows} == set(PATTERNS)
    assert {row["Gender"] for row in rows} <= {"Men", "Women", "Boys", "Girls"}
    assert len({row["description"] for row in rows}) > 250


def test_every_description_names_colour_pattern_and_product(catalogue):
    _, rows = catalogue
    for row in rows:
        description = row["description"].lower()
        assert row["Colour"].lower() in description, row
        assert pattern_word(row["Pattern"]) in description, row
        assert product_noun(row["ProductType"]) in description, row


def _runs(line: np.ndarray) -> list[int]:
    """Lengths of the runs of True in a row of pixels, cut at the edges."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], line.astype(int), [0]])))
    return [int(end - start) for start, end in zip(edges[::2], edges[1::2]) if start > 0 and end < len(line)]


@pytest.mark.parametrize("seed", range(6))
def test_each_pattern_has_its_own_geometry_at_the_towers_side(seed):
    """At 64 pixels (the demo tower's input, 8-pixel patches) stripes vary along one axis only, checks along both
    with half the cloth shaded, dots a fifth to a third; bands and squares are at least half a patch wide."""
    rgb = (200, 60, 40)
    shaded = {
        pattern: (np.asarray(_fabric(64, rgb, pattern, random.Random(seed))) != rgb).any(-1) for pattern in PATTERNS
    }
    assert not shaded["Solid"].any()
    stripes = shaded["Striped"]
    vertical, horizontal = (stripes == stripes[:1]).all(), (stripes == stripes[:, :1]).all()
    assert vertical != horizontal and 0.4 < stripes.mean() < 0.6
    checks = shaded["Checked"]
    assert not (checks == checks[:1]).all() and not (checks == checks[:, :1]).all() and 0.45 < checks.mean() < 0.6
    assert 0.1 < shaded["Polka-dot"].mean() < 0.36
    for pattern in ("Striped", "Checked"):
        lines = shaded[pattern].T if pattern == "Striped" and horizontal else shaded[pattern]
        assert min(run for line in lines for run in _runs(line)) >= 4, pattern


def test_every_product_type_has_its_own_silhouette():
    """No two silhouettes overlap for more than three quarters of their joint area (at 64 pixels, before the
    per-item scale and rotation): the caption names the type, so the drawing must show it."""
    masks = {}
    for product_type in PRODUCT_TYPES:
        body, details = Image.new("L", (64, 64)), Image.new("L", (64, 64))
        product_type.draw(ImageDraw.Draw(body), ImageDraw.Draw(details), 64)
        masks[product_type.name] = np.asarray(body) > 0
    for index, (name, mask) in enumerate(masks.items()):
        for other, other_mask in list(masks.items())[index + 1 :]:
            assert (mask & other_mask).sum() < 0.75 * (mask | other_mask).sum(), (name, other)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    first = _all_bytes(make_catalog(tmp_path / "a", n=12, seed=7).parent)
    again = _all_bytes(make_catalog(tmp_path / "b", n=12, seed=7).parent)
    other = _all_bytes(make_catalog(tmp_path / "c", n=12, seed=8).parent)
    assert first == again
    assert first["fashion.csv"] != other["fashion.csv"]
    shared_images = set(first) & set(other) - {"fashion.csv"}
    assert all(first[name] != other[name] for name in shared_images)


@pytest.mark.parametrize("product_type", PRODUCT_TYPES[::4], ids=lambda product_type: product_type.name)
def test_an_items_seed_fixes_its_pose_whatever_its_colour_and_pattern(product_type):
    """The vision pretraining pairs each item with itself in plain grey: the seed alone places the silhouette, so
    the two drawings differ exactly where the item is, and the backdrop (of the same shade behind
    colours as light as each other) and noise are the same pixels."""
    colours = {colour.name: colour for colour in COLOURS}
    grey = np.asarray(draw_item(product_type, colours["Grey"], "Solid", 64, seed=11), dtype=int)
    changed = {
        pattern: (np.abs(np.asarray(draw_item(product_type, colours["Red"], pattern, 64, seed=11)) - grey) > 40).any(-1)
        for pattern in ("Solid", "Striped", "Checked")
    }
    assert 0.1 < changed["Solid"].mean() < 0.9
    for pattern in ("Striped", "Checked"):
        assert (changed[pattern] == changed["Solid"]).mean() > 0.97, pattern
    other_pose = np.asarray(draw_item(product_type, colours["Red"], "Solid", 64, seed=12), dtype=int)
    assert ((np.abs(other_pose - grey) > 40).any(-1) != changed["Solid"]).mean() > 0.05


def test_catalogue_items_are_the_rows_of_the_catalogue_of_that_seed(catalogue):
    csv_path, rows = catalogue
    items = list(catalogue_items(len(rows), seed=3))
    assert [(item.product_type.name, item.colour.name, item.pattern, item.description) for item in items] == [
        (row["ProductType"], row["Colour"], row["Pattern"], row["description"]) for row in rows
    ]


def test_product_noun_is_singular_lower_case_and_falls_back():
    assert product_noun("Tshirts") == "t-shirt"
    assert product_noun("Dresses") == "dress"
    assert product_noun("Casual Shoes") == "casual shoes"
    assert product_noun("Kurtas") == "kurtas"
