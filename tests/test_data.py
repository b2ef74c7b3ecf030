"""Training data: every source layout, bad-row handling, seeded splits and the collator."""

import csv
import json
import logging
import shutil
from pathlib import Path

import datasets
import pytest
import torch
from PIL import Image

from moda.demo.catalog import make_catalog
from processing.data import MODACollator, caption_from_metadata, drop_unusable, load_fashion_dataset, split_dataset
from processing.feature_cache import add_image_embeds


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory) -> Path:
    return make_catalog(tmp_path_factory.mktemp("catalogue"), 40, seed=1, image_size=32).parent


def _rows(csv_path: Path) -> list[dict]:
    with csv_path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _write_csv(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_kaggle_layout_bare_names_and_captions_from_metadata(catalogue, tmp_path):
    """Kaggle's CSV holds bare file names in nested folders and may lack descriptions."""
    rows = _rows(catalogue / "fashion.csv")
    for row in rows:
        row["Image"] = Path(row["Image"]).name
        row["description"] = ""
    folder = tmp_path / "kaggle"
    for row, original in zip(rows, _rows(catalogue / "fashion.csv")):
        target = folder / "Apparel" / "Images" / "images_with_product_ids" / row["Image"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((catalogue / original["Image"]).read_bytes())
    _write_csv(folder / "fashion.csv", rows)

    dataset = drop_unusable(load_fashion_dataset(folder))
    assert len(dataset) == 40
    first = dataset[0]
    assert Path(first["image"]["path"]).is_file()
    assert first["Colour"].lower() in first["description"] and "made for" in first["description"]


def test_captions_from_metadata_leave_out_empty_cells(catalogue, tmp_path):
    """pandas reads an empty fashion.csv cell as NaN (`datasets` then gives None): no caption may say "nan"/"none"."""
    image = str(catalogue / _rows(catalogue / "fashion.csv")[0]["Image"])
    cases = [  # (Colour, Gender, ProductType, Usage), the caption
        (("", "Women", "Dresses", "Party"), "A women's dress, made for party wear."),
        (("Navy Blue", "Men", "Shirts", ""), "A navy blue men's shirt."),
        (("Red", "", "Tshirts", "Casual"), "A red t-shirt, made for casual wear."),
        (("", "", "Tops", ""), "A top."),
        (("Pink", "Girls", "Tops", ""), "A pink girls' top."),
        (("White", "Unisex", "Tshirts", "Casual"), "A white unisex t-shirt, made for casual wear."),
    ]
    rows = [
        {"Image": image, "description": "", **dict(zip(("Colour", "Gender", "ProductType", "Usage"), cells))}
        for cells, _ in cases
    ]
    _write_csv(tmp_path / "kaggle" / "fashion.csv", rows)
    assert load_fashion_dataset(tmp_path / "kaggle")["description"] == [caption for _, caption in cases]
    nan_row = {"Colour": float("nan"), "Gender": None, "ProductType": "Dresses", "Usage": " "}  # e.g. from JSONL
    assert caption_from_metadata(nan_row) == "A dress."
    with pytest.raises(ValueError, match="row 3 has no description and no ProductType"):
        caption_from_metadata({**nan_row, "ProductType": ""}, "row 3")  # a caption that names no item teaches nothing


def test_rows_without_description_or_product_type_are_dropped_and_counted(catalogue, tmp_path, caplog):
    """A row with neither (an empty trailing CSV row, say) is one more unusable row, not the end of the run."""
    rows = _rows(catalogue / "fashion.csv")[:6]
    rows[1].update(description="", ProductType="")
    rows.append(dict.fromkeys(rows[0], ""))
    for row in rows:
        row["Image"] = str(catalogue / row["Image"]) if row["Image"] else ""
    _write_csv(tmp_path / "kaggle" / "fashion.csv", rows)

    with caplog.at_level(logging.WARNING):
        dataset = drop_unusable(load_fashion_dataset(tmp_path / "kaggle"))
    assert dataset["description"] == [row["description"] for index, row in enumerate(rows[:6]) if index != 1]
    assert "Skipping 2 of 7 rows: 2 no description and no ProductType" in caplog.text


def test_duplicate_product_ids_are_dropped_after_the_first_usable_row(catalogue, tmp_path, caplog):
    """The same product twice could land in both train and test: later copies are dropped and counted."""
    rows = _rows(catalogue / "fashion.csv")[:5]
    for row in rows:
        row["Image"] = str(catalogue / row["Image"])
    unusable_copy = {**rows[3], "Image": str(tmp_path / "missing.jpg"), "description": "an unusable first copy"}
    rows = [unusable_copy, *rows, {**rows[0], "description": "a second copy"}, {**rows[3], "description": "a third"}]
    _write_csv(tmp_path / "duplicates.csv", rows)

    with caplog.at_level(logging.WARNING):
        dataset = drop_unusable(load_fashion_dataset(tmp_path / "duplicates.csv"))
    assert dataset["description"] == [row["description"] for row in rows[1:6]]
    assert "Skipping 3 of 8 rows: 2 duplicate ProductId, 1 missing or unreadable image" in caplog.text


def test_csv_jsonl_imagefolder_and_save_to_disk_sources(catalogue, tmp_path):
    rows = _rows(catalogue / "fashion.csv")[:6]
    pairs = [{"image_path": str(catalogue / row["Image"]), "caption": row["description"]} for row in rows]
    _write_csv(tmp_path / "pairs.csv", pairs)
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(pair) for pair in pairs))

    folder = tmp_path / "imagefolder"
    folder.mkdir()
    for index, row in enumerate(rows):
        (folder / f"{index}.jpg").write_bytes((catalogue / row["Image"]).read_bytes())
    (folder / "metadata.jsonl").write_text(
        "\n".join(json.dumps({"file_name": f"{i}.jpg", "description": row["description"]}) for i, row in enumerate(rows))
    )

    saved = tmp_path / "saved"
    datasets.Dataset.from_dict(
        {"image": [str(catalogue / row["Image"]) for row in rows], "description": [r["description"] for r in rows],
         "Colour": [row["Colour"] for row in rows]}
    ).cast_column("image", datasets.Image()).save_to_disk(str(saved))

    for source in (tmp_path / "pairs.csv", tmp_path / "pairs.jsonl", folder, saved):
        dataset = drop_unusable(load_fashion_dataset(source))
        assert len(dataset) == 6, source
        assert sorted(dataset["description"]) == sorted(row["description"] for row in rows), source


def test_bad_rows_are_skipped_with_counts(catalogue, tmp_path, caplog):
    rows = _rows(catalogue / "fashion.csv")[:8]
    for row in rows:
        row["Image"] = str(catalogue / row["Image"])
    (tmp_path / "corrupt.jpg").write_bytes(b"not a jpeg")
    rows[0]["Image"] = str(tmp_path / "missing.jpg")
    rows[1]["Image"] = str(tmp_path / "corrupt.jpg")
    rows[2]["Image"] = ""
    rows[3]["description"] = "   "
    for row in rows:
        row.pop("Colour")  # no metadata caption fallback: an empty description stays empty
    csv_path = _write_csv(tmp_path / "bad.csv", rows)

    with caplog.at_level(logging.WARNING):
        dataset = drop_unusable(load_fashion_dataset(csv_path))
    assert len(dataset) == 4
    assert "Skipping 4 of 8 rows" in caplog.text and "2 missing or unreadable image" in caplog.text

    _write_csv(tmp_path / "all_bad.csv", rows[:3])
    with pytest.raises(ValueError, match="no usable rows"):
        drop_unusable(load_fashion_dataset(tmp_path / "all_bad.csv"))


def test_split_is_seeded_disjoint_and_holds_out_combinations(catalogue):
    dataset = load_fashion_dataset(catalogue)
    colour, product_type = dataset[0]["Colour"], dataset[0]["ProductType"]
    splits = split_dataset(dataset, 0.2, 0.2, seed=3, holdout=f"Colour={colour},ProductType={product_type}")
    again = split_dataset(dataset, 0.2, 0.2, seed=3, holdout=f"Colour={colour},ProductType={product_type}")
    ids = {name: set(split["ProductId"]) for name, split in splits.items()}
    assert {name: set(split["ProductId"]) for name, split in again.items()} == ids
    assert sum(map(len, ids.values())) == len(dataset)
    assert not (ids["train"] & ids["validation"] or ids["train"] & ids["test"] or ids["validation"] & ids["test"])
    assert len(ids["holdout"]) >= 1
    for name in ("train", "validation", "test"):
        split = splits[name]
        assert not any(c == colour and t == product_type for c, t in zip(split["Colour"], split["ProductType"]))
    assert split_dataset(dataset, 0.2, 0.2, seed=4)["test"]["ProductId"] != splits["test"]["ProductId"]


def test_collator_targets_and_cached_path_match(tiny_model, tiny_processor, catalogue):
    splits = split_dataset(load_fashion_dataset(catalogue), 0.2, 0.2, seed=0)
    rows = [splits["train"][index] for index in range(3)]
    batch = MODACollator(tiny_processor)(rows)
    tokenizer = tiny_processor.tokenizer
    for ids, labels, row in zip(batch["input_ids"], batch["labels"], rows):
        kept = labels[labels != -100]
        assert kept[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(kept[:-1]).strip() == row["description"]
        assert set(labels[ids == tokenizer.pad_token_id].tolist()) <= {-100}
    assert (batch["input_ids"][:, 0] == 1).any()  # left padding with OPT's pad id 1, not 0

    cached = add_image_embeds(splits["train"].select(range(3)), tiny_model, tiny_processor, batch_size=2)
    cached_batch = MODACollator(tiny_processor)([cached[index] for index in range(3)])
    assert "pixel_values" not in cached_batch
    with torch.no_grad():
        assert torch.allclose(tiny_model(**batch).loss, tiny_model(**cached_batch).loss, atol=1e-5)


def test_the_usable_rows_check_reads_changed_images_again(catalogue, tmp_path, monkeypatch, caplog):
    """The check's cache follows the image files, block by block: a photo corrupted in place is dropped, not
    trusted, and only its block of rows is opened again."""
    folder = shutil.copytree(catalogue, tmp_path / "catalogue")
    assert len(drop_unusable(load_fashion_dataset(folder), block_rows=8)) == 40

    opened = []
    image_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *args, **kwargs: opened.append(args[0]) or image_open(*args, **kwargs))
    assert len(drop_unusable(load_fashion_dataset(folder), block_rows=8)) == 40
    assert opened == []  # nothing changed: every block comes from the cache

    corrupted = folder / _rows(folder / "fashion.csv")[10]["Image"]
    corrupted.write_bytes(b"not a jpeg any more")
    with caplog.at_level(logging.WARNING):
        dataset = drop_unusable(load_fashion_dataset(folder), block_rows=8)
    assert len(dataset) == 39 and str(corrupted) not in [cell["path"] for cell in dataset["image"]]
    assert "Skipping 1 of 40 rows: 1 missing or unreadable image" in caplog.text
    assert len(opened) == 8  # rows 8-15, the corrupted photo's block


def test_holdout_that_matches_no_row_names_the_values_that_exist(catalogue):
    dataset = load_fashion_dataset(catalogue)
    colour, product_type = dataset[0]["Colour"], dataset[0]["ProductType"]
    colours = sorted(set(dataset["Colour"]))
    with pytest.raises(ValueError, match=f"holdout 'Colour={colour.lower()}' matches no row") as raised:
        split_dataset(dataset, holdout=f"ProductType={product_type};Colour={colour.lower()}")
    assert f"did you mean {colour!r}?" in str(raised.value) and ", ".join(colours) in str(raised.value)

    absent = next(c for c in colours if (c, product_type) not in set(zip(dataset["Colour"], dataset["ProductType"])))
    with pytest.raises(ValueError, match="no row has all of these values"):
        split_dataset(dataset, holdout=f"Colour={absent},ProductType={product_type}")


@pytest.mark.parametrize("validation_size, test_size", [(0.1, 1.0), (0.1, 0.0), (0.5, 0.5), (-0.1, 0.2)])
def test_impossible_split_sizes_are_refused(validation_size, test_size):
    dataset = datasets.Dataset.from_dict({"description": ["a", "b", "c", "d"]})
    with pytest.raises(ValueError, match="must each be in"):
        split_dataset(dataset, validation_size, test_size)
