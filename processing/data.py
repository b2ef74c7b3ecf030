"""Training data for MODA: load a catalogue as a `datasets.Dataset`, drop unusable rows, split it, batch it.

Every source ends up with the same columns: ``image`` (`datasets.Image(decode=False)`: a path or bytes, opened
only when needed), ``description`` and whatever catalogue columns it had (Colour, ProductType, Gender, Usage...).

Sources (`load_fashion_dataset`):
- the Kaggle layout: a folder with ``fashion.csv`` (images found relative to it, or by file name anywhere below it;
  the caption comes from a ``description`` column or is built from the catalogue columns);
- a CSV / JSONL file of image paths + descriptions (paths relative to the file);
- an ``imagefolder`` with ``metadata.csv`` / ``metadata.jsonl``;
- a `save_to_disk` folder (e.g. `moda.distill`'s output);
- a Hub dataset id.
"""

from __future__ import annotations

import io
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from PIL import Image
from transformers.utils import logging

from moda.metrics.fashion_attributes.fashion_vocabulary import gender_possessive, product_noun

from .processing_moda import IMAGE_SUFFIXES, MODAProcessor, load_rgb_image

logger = logging.get_logger(__name__)

IMAGE_COLUMNS = ("image", "Image", "image_path", "file_name", "path")
TEXT_COLUMNS = ("description", "caption", "text")
METADATA_COLUMNS = ("Colour", "ProductType", "Gender", "Usage")
# The Kaggle fashion-images CSV: what the demo catalogue writes and distillation reads.
KAGGLE_COLUMNS = (
    "ProductId", "Gender", "Category", "SubCategory", "ProductType", "Colour", "Usage", "ProductTitle", "Image",
    "ImageURL",
)  # fmt: skip


def load_fashion_dataset(source: str | Path, max_samples: int | None = None) -> datasets.Dataset:
    """Loads any supported source (see the module docstring) with ``image`` and ``description`` columns."""
    path = Path(source)
    if path.is_dir() and (path / "fashion.csv").is_file():
        dataset = _load_table(path / "fashion.csv")
    elif path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file()):
        dataset = _flatten(datasets.load_from_disk(str(path)))
    elif path.is_dir() and any((path / name).is_file() for name in ("metadata.csv", "metadata.jsonl")):
        dataset = _flatten(datasets.load_dataset("imagefolder", data_dir=str(path)))
    elif path.is_file() and path.suffix.lower() in (".csv", ".json", ".jsonl"):
        dataset = _load_table(path)
    elif path.exists():
        raise ValueError(
            f"{source}: expected a folder with fashion.csv, a save_to_disk folder, an imagefolder with "
            "metadata.csv/.jsonl, or a .csv/.jsonl file"
        )
    else:
        dataset = _flatten(datasets.load_dataset(str(source)))  # a Hub dataset id
    dataset = _standard_columns(dataset, str(source))
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    return dataset


def _flatten(loaded: datasets.Dataset | datasets.DatasetDict) -> datasets.Dataset:
    """MODA makes its own seeded split, so a source's splits are pooled first."""
    if isinstance(loaded, datasets.DatasetDict):
        return datasets.concatenate_datasets(list(loaded.values()))
    return loaded


def _load_table(table: Path) -> datasets.Dataset:
    """A CSV/JSONL of image paths; relative paths are resolved against the table's folder (or found by name)."""
    builder = "csv" if table.suffix.lower() == ".csv" else "json"
    dataset = datasets.load_dataset(builder, data_files=str(table), split="train")
    image_column = next((name for name in IMAGE_COLUMNS if name in dataset.column_names), None)
    if image_column is None:
        raise ValueError(f"{table} has no image column (one of {IMAGE_COLUMNS})")
    return dataset.map(
        _resolve_image_path,
        fn_kwargs={"column": image_column, "find_image": ImageFinder(table.parent)},
        desc="Resolving image paths",
    )


class ImageFinder:
    """Finds a catalogue's image: relative to the catalogue's folder, as given, then by file name anywhere below
    the folder (Kaggle's CSV holds bare file names of images nested in category/gender folders). The index of
    names is built once, on the first miss."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._by_name: dict[str, Path] | None = None

    def __call__(self, image: str) -> Path | None:
        for candidate in (self.root / image, Path(image), self.root / Path(image).name):
            if candidate.is_file():
                return candidate.resolve()
        if self._by_name is None:
            self._by_name = {
                path.name: path.resolve() for path in self.root.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES
            }
        return self._by_name.get(Path(image).name)


def _resolve_image_path(row: dict, column: str, find_image: ImageFinder) -> dict:
    value = row[column]
    if value is None or not str(value).strip():
        return {"image_file": None}
    found = find_image(str(value))  # a missing file keeps its path, so that drop_unusable reports it
    return {"image_file": str(found or find_image.root / str(value))}


def _standard_columns(dataset: datasets.Dataset, source: str) -> datasets.Dataset:
    """Renames the image and text columns to ``image`` / ``description`` and stops images decoding eagerly."""
    image_column = "image_file" if "image_file" in dataset.column_names else None
    image_column = image_column or next((name for name in IMAGE_COLUMNS if name in dataset.column_names), None)
    if image_column is None:
        raise ValueError(f"{source} has no image column (one of {IMAGE_COLUMNS})")
    if image_column == "image_file" and "Image" in dataset.column_names:
        dataset = dataset.remove_columns("Image")  # the raw CSV value; image_file is its resolved path
    if image_column != "image":
        dataset = dataset.remove_columns([c for c in ("image",) if c in dataset.column_names])
        dataset = dataset.rename_column(image_column, "image")
    dataset = dataset.cast_column("image", datasets.Image(decode=False))

    text_column = next((name for name in TEXT_COLUMNS if name in dataset.column_names), None)
    if text_column is None and not set(METADATA_COLUMNS) <= set(dataset.column_names):
        raise ValueError(f"{source} has neither a description column ({TEXT_COLUMNS}) nor {METADATA_COLUMNS}")
    if text_column is not None and text_column != "description":
        dataset = dataset.rename_column(text_column, "description")
    if set(METADATA_COLUMNS) <= set(dataset.column_names):
        dataset = dataset.map(
            _fill_description, with_indices=True, fn_kwargs={"source": source}, desc="Captions from metadata"
        )
    return dataset


def cell_text(value: Any) -> str:
    """A catalogue cell as stripped text, "" when empty: pandas reads an empty cell as NaN and `datasets` as None,
    and neither may reach a caption or a prompt as "nan" or "None"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def caption_from_metadata(row: dict, where: str = "a row") -> str:
    """A plain caption for Kaggle rows that have no description: "A red women's dress, made for casual wear."

    An empty Colour, Gender or Usage is left out ("A dress, made for casual wear.", "A red dress."); an empty
    ProductType raises ValueError naming `where`, since a caption that names no item would teach nothing.
    """
    colour, product_type, gender, usage = (cell_text(row.get(name)) for name in METADATA_COLUMNS)
    if not product_type:
        raise ValueError(f"{where} has no description and no ProductType to build one from")
    words = ("A", colour.lower(), gender_possessive(gender) if gender else "", product_noun(product_type))
    caption = " ".join(word for word in words if word)
    return f"{caption}, made for {usage.lower()} wear." if usage else f"{caption}."


def _fill_description(row: dict, index: int, source: str) -> dict:
    """The row's own description, else one built from its metadata; `source` and the 1-based row name it in errors."""
    description = cell_text(row.get("description")) or caption_from_metadata(row, f"{source} row {index + 1}")
    return {"description": description}


def open_image(value: Any) -> Image.Image:
    """Opens an ``image`` cell (path/bytes dict, path or PIL image) as RGB, or raises ValueError."""
    if value is None:
        raise ValueError("row has no image")
    if isinstance(value, dict):
        if value.get("bytes"):
            try:
                return load_rgb_image(Image.open(io.BytesIO(value["bytes"])), name=value.get("path") or "image")
            except OSError as error:
                raise ValueError(f"cannot decode image bytes ({error})") from error
        value = value.get("path")
        if not value:
            raise ValueError("row has no image")
    return load_rgb_image(value, name=str(value) if not isinstance(value, Image.Image) else "image")


def _problem(row: dict) -> dict:
    """Why a row cannot be trained on ("" if it can): checked once, up front, so no epoch meets a bad image."""
    if row["description"] is None or not str(row["description"]).strip():
        return {"problem": "empty description"}
    if row["image"] is None or not (row["image"].get("path") or row["image"].get("bytes")):
        return {"problem": "no image"}
    try:
        open_image(row["image"])
    except ValueError:
        return {"problem": "missing or unreadable image"}
    return {"problem": ""}


def drop_unusable(dataset: datasets.Dataset) -> datasets.Dataset:
    """Removes rows with an empty description or a missing/corrupt image, warning with counts per reason."""
    checked = dataset.map(_problem, desc="Checking images and descriptions")
    counts = Counter(problem for problem in checked["problem"] if problem)
    if counts:
        details = ", ".join(f"{count} {reason}" for reason, count in counts.most_common())
        logger.warning(f"Skipping {sum(counts.values())} of {len(dataset)} rows: {details}")
    kept = checked.filter(lambda problem: problem == "", input_columns="problem", desc="Dropping unusable rows")
    if len(kept) == 0:
        raise ValueError(f"no usable rows left out of {len(dataset)} ({dict(counts)}); check the image paths")
    return kept.remove_columns("problem")


def parse_holdout(spec: str | None) -> list[dict[str, str]]:
    """``"Colour=Red,ProductType=Dresses;Colour=Blue,ProductType=Jeans"`` -> one dict per held-out combination."""
    if not spec:
        return []
    combinations = []
    for group in spec.split(";"):
        pairs = [item.split("=", 1) for item in group.split(",") if item.strip()]
        if not pairs or any(len(pair) != 2 for pair in pairs):
            raise ValueError(f"holdout {group!r}: expected Column=Value pairs joined by commas")
        combinations.append({key.strip(): value.strip() for key, value in pairs})
    return combinations


def _mark_held(row: dict, combinations: list[dict[str, str]]) -> dict:
    return {"_held": any(all(str(row[key]) == value for key, value in c.items()) for c in combinations)}


def split_dataset(
    dataset: datasets.Dataset,
    validation_size: float = 0.1,
    test_size: float = 0.1,
    seed: int = 42,
    holdout: str | None = None,
) -> datasets.DatasetDict:
    """Seeded train / validation / test split; the test split is only scored at the end, never used to pick a model.

    ``holdout`` (see `parse_holdout`) moves every row of the given attribute combinations (e.g. every red dress)
    into a separate ``holdout`` split that training never sees: a test of generalization to new combinations.
    """
    splits = {}
    combinations = parse_holdout(holdout)
    if combinations:
        missing = {key for combination in combinations for key in combination} - set(dataset.column_names)
        if missing:
            raise ValueError(f"holdout names columns the dataset lacks: {sorted(missing)}")
        is_held = dataset.map(_mark_held, fn_kwargs={"combinations": combinations}, desc="Marking held-out rows")
        splits["holdout"] = is_held.filter(lambda held: held, input_columns="_held").remove_columns("_held")
        dataset = is_held.filter(lambda held: not held, input_columns="_held").remove_columns("_held")
        logger.warning(f"Holding out {len(splits['holdout'])} rows of {combinations} for the generalization test")
    if not (0 < validation_size < 1 and 0 < test_size < 1 and validation_size + test_size < 1):
        raise ValueError(
            f"validation_size ({validation_size}) and test_size ({test_size}) must each be in (0, 1) and sum below 1"
        )
    if len(dataset) < 3:
        raise ValueError(f"need at least 3 rows to split into train/validation/test, got {len(dataset)}")
    first = dataset.train_test_split(test_size=test_size, seed=seed)
    second = first["train"].train_test_split(test_size=validation_size / (1 - test_size), seed=seed)
    return datasets.DatasetDict(train=second["train"], validation=second["test"], test=first["test"], **splits)


@dataclass
class MODACollator:
    """Builds a training batch with the processor (EOS appended, loss only on description tokens).

    `max_length` counts description tokens (EOS included); the processor's own `max_length` counts the whole
    sequence, image placeholders and BOS too. Rows carrying cached ``image_embeds`` skip the images entirely: the
    vision tower does not run.
    """

    processor: MODAProcessor
    max_length: int | None = None

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        texts = [row["description"] for row in rows]
        length = None if self.max_length is None else self.processor.prefix_length + self.max_length
        if "image_embeds" in rows[0]:
            batch = self.processor(text=texts, return_labels=True, max_length=length)
            batch["image_embeds"] = stack_embeds(rows)
        else:
            images = [open_image(row["image"]) for row in rows]
            batch = self.processor(images=images, text=texts, return_labels=True, max_length=length)
        return dict(batch)


def stack_embeds(rows: list[dict[str, Any]]) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(row["image_embeds"], dtype=np.float32) for row in rows]))


__all__ = [
    "MODACollator",
    "caption_from_metadata",
    "cell_text",
    "drop_unusable",
    "load_fashion_dataset",
    "open_image",
    "parse_holdout",
    "split_dataset",
]
