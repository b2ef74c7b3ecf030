"""What `moda describe` describes, read as rows of (id, image): image files and folders, or one catalogue.

Every source becomes a `datasets.Dataset` with two columns: ``id`` (text: results are resumed by it and joined
back to the catalogue on it) and ``image`` (`datasets.Image(decode=False)`: a path or bytes, opened one batch at a
time, never all at once).

- image files and folders (searched recursively): the id is the file's path;
- a Kaggle-layout folder (``fashion.csv`` + images below it), or a ``.csv`` / ``.jsonl`` table with an image column
  (one of `processing.data.IMAGE_COLUMNS`): images are found as `processing.data.ImageFinder` finds them, relative
  to the table's folder; the id is the ``ProductId`` (or ``id``) cell, else the image cell as written;
- a `save_to_disk` folder or a Hub dataset id: the id is the ``ProductId`` (or ``id``) cell, else the row number.

`id_column` (`--id-column`) names another id column. Ids must be unique: a repeated id could not be resumed.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import datasets
from datasets import Dataset, Features, Image, Value
from huggingface_hub.utils import HFValidationError, validate_repo_id

from processing.data import IMAGE_COLUMNS, ImageFinder, cell_text
from processing.processing_moda import IMAGE_SUFFIXES

ID_COLUMNS = ("ProductId", "id")
TABLE_SUFFIXES = (".csv", ".jsonl", ".json")
KAGGLE_CSV = "fashion.csv"
ROW_FEATURES = Features({"id": Value("string"), "image": Image(decode=False)})


def find_images(paths: Iterable[str | Path]) -> list[Path]:
    """Expands folders (recursively, image suffixes only) and keeps files in the order given."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()))
        else:
            found.append(path)
    return found


def read_rows(sources: Sequence[str], id_column: str | None = None) -> Dataset:
    """The rows of `sources` (see the module docstring), in order; raises ValueError naming a bad source."""
    catalogues = [source for source in sources if is_catalogue(source)]
    if not catalogues:
        if id_column is not None:
            raise ValueError("--id-column applies to a catalogue (a table, a dataset); image files are named by path")
        paths = [str(path) for path in find_images(sources)]
        if not paths:
            raise ValueError(f"no images found in {' '.join(sources)}")
        rows = Dataset.from_dict({"id": paths, "image": paths}, features=ROW_FEATURES)
    elif len(sources) > 1:
        raise ValueError(f"describe one catalogue at a time, without other inputs: {catalogues[0]} came with others")
    else:
        rows = _catalogue_rows(sources[0], id_column)
    check_ids(rows["id"], sources[0] if catalogues else "the images given")
    return rows


def is_catalogue(source: str) -> bool:
    """A table, a Kaggle-layout or `save_to_disk` folder, or (a path that does not exist and does not end like an
    image file) a Hub dataset id."""
    path = Path(source)
    if path.is_file():
        return path.suffix.lower() in TABLE_SUFFIXES
    if path.is_dir():
        return any((path / name).is_file() for name in (KAGGLE_CSV, "state.json", "dataset_dict.json"))
    return path.suffix.lower() not in IMAGE_SUFFIXES


def _catalogue_rows(source: str, id_column: str | None) -> Dataset:
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


def check_ids(ids: Sequence[str], source: str) -> None:
    """Every row needs an id of its own: results are found again by id when a run resumes."""
    empty = [number for number, value in enumerate(ids, 1) if not value]
    if empty:
        raise ValueError(f"{source}: row(s) {empty[:5]} have an empty id; every row needs one (--id-column)")
    repeated = [value for value, count in Counter(ids).items() if count > 1]
    if repeated:
        raise ValueError(
            f"{source}: ids must be unique (results are resumed by id), repeated: {repeated[:5]}; "
            "--id-column names a column of unique ids"
        )
