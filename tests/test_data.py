"""Training data: every source layout, bad-row handling, seeded splits, the collator and the feature cache."""

import csv
import json
import logging
from pathlib import Path

import datasets
import pytest
import torch

from modeling_moda import MODAForConditionalGeneration
from processing import MODAProcessor
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

    rows[2]["ProductType"] = ""  # required: without it the caption would name no item
    _write_csv(tmp_path / "no_type" / "fashion.csv", rows)
    with pytest.raises(ValueError, match="no_type row 3 has no description and no ProductType"):
        load_fashion_dataset(tmp_path / "no_type")


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


def test_feature_cache_is_reused_and_follows_the_weights(tiny_backbones, catalogue):
    model = MODAForConditionalGeneration.from_backbones(*tiny_backbones)
    processor = MODAProcessor.from_backbones(*tiny_backbones)
    dataset = load_fashion_dataset(catalogue).select(range(10))
    calls = []
    hook = model.vision_tower.register_forward_hook(lambda *args: calls.append(1))
    try:
        first = add_image_embeds(dataset, model, processor, batch_size=4)
        assert len(calls) == 3
        second = add_image_embeds(dataset, model, processor, batch_size=4)
        assert len(calls) == 3  # read back from datasets' cache file
        assert second["image_embeds"] == first["image_embeds"]
        with torch.no_grad():
            model.vision_tower.visual_projection.weight.mul_(2)
        add_image_embeds(dataset, model, processor, batch_size=4)
        assert len(calls) == 6  # new weights, new fingerprint
    finally:
        hook.remove()


@pytest.mark.parametrize("validation_size, test_size", [(0.1, 1.0), (0.1, 0.0), (0.5, 0.5), (-0.1, 0.2)])
def test_impossible_split_sizes_are_refused(validation_size, test_size):
    dataset = datasets.Dataset.from_dict({"description": ["a", "b", "c", "d"]})
    with pytest.raises(ValueError, match="must each be in"):
        split_dataset(dataset, validation_size, test_size)
