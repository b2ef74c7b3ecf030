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

The steps that read the images (`drop_unusable`'s check, the feature cache) cache their results in `datasets` cache
files, one block of rows at a time (`map_images`), keyed on each image's `image_stamp` (path, size and modification
time; embedded bytes by their hash): datasets' own fingerprint covers the catalogue table, not the files its paths
name. A photo replaced or corrupted in place is read again, with its block; unchanged blocks are read back.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from datasets.fingerprint import Hasher
from transformers.utils import logging

from moda.metrics.fashion_attributes.fashion_vocabulary import gender_possessive, product_noun

from .image_cells import open_image
from .processing_moda import IMAGE_SUFFIXES, MODAProcessor

logger = logging.get_logger(__name__)

IMAGE_COLUMNS = ("image", "Image", "image_path", "file_name", "path")
TEXT_COLUMNS = ("description", "caption", "text")
METADATA_COLUMNS = ("Colour", "ProductType", "Gender", "Usage")
# The Kaggle fashion-images CSV: what the demo catalogue writes and distillation reads.
KAGGLE_COLUMNS = (
    "ProductId", "Gender", "Category", "SubCategory", "ProductType", "Colour", "Usage", "ProductTitle", "Image",
    "ImageURL",
)  # fmt: skip
# Rows per cached block of image work: replacing one photo re-reads (and re-embeds) this many rows, not all of them.
IMAGE_BLOCK_ROWS = 4096


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
        dataset = dataset.map(_fill_description, desc="Captions from metadata")
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


def _fill_description(row: dict) -> dict:
    """The row's own description, else one built from its metadata; without a ProductType it stays empty, and
    `drop_unusable` drops and counts the row (an empty trailing CSV row must not stop a run)."""
    description = cell_text(row.get("description"))
    if not description and cell_text(row.get("ProductType")):
        description = caption_from_metadata(row)
    return {"description": description}


def image_stamp(cell: dict | None) -> str:
    """What identifies an ``image`` cell's picture without decoding it: embedded bytes by their hash, a file by its
    path, size and modification time (a missing file by its path)."""
    if not cell:
        return ""
    if cell.get("bytes"):
        return hashlib.sha256(cell["bytes"]).hexdigest()
    path = cell.get("path") or ""
    try:
        status = os.stat(path)
    except OSError:
        return f"{path}|missing"
    return f"{path}|{status.st_size}|{status.st_mtime_ns}"


def map_images(
    dataset: datasets.Dataset,
    function: Callable,
    features: datasets.Features,
    desc: str,
    key: str = "",
    block_rows: int = IMAGE_BLOCK_ROWS,
    **map_kwargs: Any,
) -> datasets.Dataset:
    """`function`'s `features` for every row of `dataset`, from its ``image`` cell(s), in the rows' order.

    Runs `Dataset.map` one block of `block_rows` rows at a time, each block's cache file named by the function, `key`
    (whatever else the result depends on, e.g. the vision weights) and the block's image stamps; `map_kwargs` go to
    `Dataset.map` (batched=True passes a list of cells).
    """
    blocks = []
    for start in range(0, len(dataset), block_rows):
        block = dataset.select_columns("image").select(range(start, min(start + block_rows, len(dataset))))
        stamps = [image_stamp(cell) for cell in block["image"]]
        blocks.append(
            block.map(
                function,
                input_columns="image",
                remove_columns="image",
                features=features,
                new_fingerprint=Hasher.hash([function, key, stamps]),
                desc=f"{desc} (rows {start + 1}-{start + len(block)} of {len(dataset)})",
                **map_kwargs,
            )
        )
    return datasets.concatenate_datasets(blocks)


def _image_problem(cell: dict | None) -> dict:
    """Why a row's image cannot be trained on ("" if it can): checked once, up front, so no epoch meets a bad one."""
    if cell is None or not (cell.get("path") or cell.get("bytes")):
        return {"problem": "no image"}
    try:
        open_image(cell)
    except ValueError:
        return {"problem": "missing or unreadable image"}
    return {"problem": ""}


def drop_unusable(dataset: datasets.Dataset, block_rows: int = IMAGE_BLOCK_ROWS) -> datasets.Dataset:
    """Removes the rows that cannot be trained on, warning with counts per reason: an empty description (with the
    catalogue columns: no description and no ProductType to build one from), a missing or corrupt image, and a
    ProductId that an earlier usable row already has (the same product twice could land in both train and test)."""
    if len(dataset) == 0:
        raise ValueError("the dataset has no rows")
    with_metadata = set(METADATA_COLUMNS) <= set(dataset.column_names)
    no_description = "no description and no ProductType" if with_metadata else "empty description"
    features = datasets.Features(problem=datasets.Value("string"))
    image_problems = map_images(dataset, _image_problem, features, "Checking images", block_rows=block_rows)
    problems = [
        image_problem if cell_text(description) else no_description
        for description, image_problem in zip(dataset["description"], image_problems["problem"])
    ]
    if "ProductId" in dataset.column_names:
        seen = set()
        for index, product_id in enumerate(map(cell_text, dataset["ProductId"])):
            if problems[index] or not product_id:
                continue
            if product_id in seen:
                problems[index] = "duplicate ProductId"
            seen.add(product_id)
    counts = Counter(problem for problem in problems if problem)
    if counts:
        details = ", ".join(f"{count} {reason}" for reason, count in counts.most_common())
        logger.warning(f"Skipping {sum(counts.values())} of {len(dataset)} rows: {details}")
    kept = [index for index, problem in enumerate(problems) if not problem]
    if not kept:
        raise ValueError(f"no usable rows left out of {len(dataset)} ({dict(counts)}); check the image paths")
    return dataset.select(kept)


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


def _column_values(dataset: datasets.Dataset, combination: dict[str, str]) -> dict[str, list[str]]:
    return {key: [cell_text(cell) for cell in dataset[key]] for key in combination}


def combination_matches(dataset: datasets.Dataset, combination: dict[str, str]) -> list[bool]:
    """Whether each row has every value of `combination` (one dict of `parse_holdout`), cells read as `cell_text`."""
    values = _column_values(dataset, combination)
    return [all(values[key][row] == value for key, value in combination.items()) for row in range(len(dataset))]


def _held_out(dataset: datasets.Dataset, combinations: list[dict[str, str]]) -> list[bool]:
    """Whether each row matches one of `combinations`; one that matches no row (a misspelt value, say) is an error."""
    held = [False] * len(dataset)
    for combination in combinations:
        matches = combination_matches(dataset, combination)
        if not any(matches):
            raise _holdout_error(combination, _column_values(dataset, combination))
        held = [before or now for before, now in zip(held, matches)]
    return held


def _holdout_error(combination: dict[str, str], values: dict[str, list[str]], shown: int = 40) -> ValueError:
    """Names each value of `combination` that no row has, with the nearest spelling and the values that exist."""
    problems = []
    for key, value in combination.items():
        existing = sorted(set(values[key]) - {""})
        if value not in existing:
            nearest = difflib.get_close_matches(value, existing, n=1)
            hint = f" (did you mean {nearest[0]!r}?)" if nearest else ""
            listed = ", ".join(existing[:shown]) + (f", ... ({len(existing)} in all)" if len(existing) > shown else "")
            problems.append(f"{key} has no value {value!r}{hint}; its values are {listed}")
    spec = ",".join(f"{key}={value}" for key, value in combination.items())
    return ValueError(f"holdout {spec!r} matches no row: {'; '.join(problems) or 'no row has all of these values'}")


def split_dataset(
    dataset: datasets.Dataset,
    validation_size: float = 0.1,
    test_size: float = 0.1,
    seed: int = 42,
    holdout: str | None = None,
) -> datasets.DatasetDict:
    """Seeded train / validation / test split; the test split is only scored at the end, never used to pick a model.

    ``holdout`` (see `parse_holdout`) moves every row of the given attribute combinations (e.g. every red dress)
    into a separate ``holdout`` split that training never sees: a test of generalization to new combinations. A
    combination that matches no row is a ValueError naming the values that exist.
    """
    splits = {}
    combinations = parse_holdout(holdout)
    if combinations:
        missing = {key for combination in combinations for key in combination} - set(dataset.column_names)
        if missing:
            raise ValueError(f"holdout names columns the dataset lacks: {sorted(missing)}")
        held = _held_out(dataset, combinations)
        splits["holdout"] = dataset.select([row for row, is_held in enumerate(held) if is_held])
        dataset = dataset.select([row for row, is_held in enumerate(held) if not is_held])
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
    "combination_matches",
    "drop_unusable",
    "image_stamp",
    "load_fashion_dataset",
    "map_images",
    "open_image",
    "parse_holdout",
    "split_dataset",
]
