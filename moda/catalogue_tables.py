"""A catalogue's rows as a `datasets.Dataset` of (id, image): tables, Kaggle-layout and `save_to_disk` folders, Hub
datasets (`moda.catalogue_rows` says how each is read; plain image files never come here)."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import datasets
from datasets import Dataset, Features, Image, Value
from huggingface_hub.utils import HFValidationError, validate_repo_id

from processing.data import IMAGE_COLUMNS, ImageFinder, cell_text

from .catalogue_rows import KAGGLE_CSV

ID_COLUMNS = ("ProductId", "id")
ROW_FEATURES = Features({"id": Value("string"), "image": Image(decode=False)})


def catalogue_rows(source: str, id_column: str | None) -> Dataset:
    """The rows of one catalogue; raises ValueError naming a source that cannot be read."""
    path = Path(source)
    if path.is_file():
        return _table_rows(path, id_column)
    if (path / KAGGLE_CSV).is_file():
        return _table_rows(path / KAGGLE_CSV, id_column)
    if path.is_dir():
        return _dataset_rows(datasets.load_from_disk(str(path)), source, id_column)
    try:
        validate_repo_id(source)
    except HFValidationError:
        raise ValueError(f"{source}: no such file or folder") from None
    try:
        loaded = datasets.load_dataset(source)
    except Exception as error:  # offline, unknown id, gated: `datasets` raises many kinds; all mean "cannot load"
        raise ValueError(f"{source}: no such file or folder, and no Hub dataset by that id could be loaded ({error})")
    return _dataset_rows(loaded, source, id_column)


def _table_rows(table: Path, id_column: str | None) -> Dataset:
    """Cells are kept as written (a ProductId "00123" stays "00123", where the pandas reader behind
    `datasets.load_dataset("csv")` would make it 123 and the results would no longer join)."""
    records = _read_table(table)
    if not records:
        raise ValueError(f"{table} has no rows")
    columns = list(dict.fromkeys(name for record in records for name in record))
    image_column = next((name for name in IMAGE_COLUMNS if name in columns), None)
    if image_column is None:
        raise ValueError(f"{table} has no image column (one of {', '.join(IMAGE_COLUMNS)}); columns: {columns}")
    id_column = _id_column(columns, id_column, table) or image_column
    find_image = ImageFinder(table.parent)
    images = [cell_text(record.get(image_column)) for record in records]
    # a missing file keeps its path, so that its row fails with "no such image file" and names it
    paths = [str(find_image(image) or find_image.root / image) if image else None for image in images]
    ids = [cell_text(record.get(id_column)) for record in records]
    return Dataset.from_dict({"id": ids, "image": paths}, features=ROW_FEATURES)


def _read_table(table: Path) -> list[dict]:
    with open(table, newline="", encoding="utf-8-sig") as file:  # -sig: spreadsheet programs start CSVs with a BOM
        if table.suffix.lower() == ".csv":
            return list(csv.DictReader(file))
        records = []
        for number, line in enumerate(file, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise ValueError(f"{table} line {number}: not JSON ({error}); expected one object per line")
                if not isinstance(records[-1], dict):
                    raise ValueError(f"{table} line {number}: expected a JSON object, got {line.strip()[:40]}")
        return records


def _dataset_rows(dataset: Dataset | datasets.DatasetDict, source: str, id_column: str | None) -> Dataset:
    if isinstance(dataset, datasets.DatasetDict):  # the splits, one after another, as processing.data pools them
        dataset = datasets.concatenate_datasets(list(dataset.values()))
    features = dataset.features
    image_column = next((name for name, feature in features.items() if isinstance(feature, Image)), None)
    image_column = image_column or next((name for name in IMAGE_COLUMNS if name in features), None)
    if image_column is None:
        raise ValueError(f"{source} has no image column (an Image feature or one of {', '.join(IMAGE_COLUMNS)})")
    id_column = _id_column(dataset.column_names, id_column, source)
    ids = [cell_text(value) for value in dataset[id_column]] if id_column else list(map(str, range(len(dataset))))
    images = dataset.select_columns([image_column]).cast_column(image_column, Image(decode=False))
    if image_column != "image":
        images = images.rename_column(image_column, "image")
    return images.add_column("id", ids).select_columns(["id", "image"])


def _id_column(columns: Sequence[str], given: str | None, source) -> str | None:
    if given is not None and given not in columns:
        raise ValueError(f"{source} has no column {given!r} (--id-column); its columns: {list(columns)}")
    return given or next((name for name in ID_COLUMNS if name in columns), None)
