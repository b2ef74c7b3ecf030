"""What `moda describe` describes, read as rows of (id, image): image files and folders, or one catalogue.

Every source becomes rows with two columns: ``id`` (text: results are resumed by it and joined back to the
catalogue on it) and ``image`` (a path, or for a catalogue a `datasets.Image(decode=False)` cell: opened one batch
at a time, never all at once). Image files become `FileRows`; a catalogue a `datasets.Dataset`
(`moda.catalogue_tables`).

- image files and folders (searched recursively): the id is the file's path;
- a Kaggle-layout folder (``fashion.csv`` + images below it), or a ``.csv`` / ``.jsonl`` table with an image column
  (one of `processing.data.IMAGE_COLUMNS`): images are found as `processing.data.ImageFinder` finds them, relative
  to the table's folder; the id is the ``ProductId`` (or ``id``) cell, else the image cell as written;
- a `save_to_disk` folder or a Hub dataset id: the id is the ``ProductId`` (or ``id``) cell, else the row number.

`id_column` (`--id-column`) names another id column. Ids must be unique: a repeated id could not be resumed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from processing.processing_moda import IMAGE_SUFFIXES

if TYPE_CHECKING:
    from datasets import Dataset

TABLE_SUFFIXES = (".csv", ".jsonl", ".json")
KAGGLE_CSV = "fashion.csv"


@dataclass
class FileRows:
    """Image files as rows, read the way a `datasets.Dataset` of (id, image) is read (`rows["id"]`, `rows[i]`,
    `rows[[i, j]]`, `len(rows)`); the id and the image are the path. Plain files never import `datasets`: describing
    one photo should not wait for it (benchmarks/cold_start.py)."""

    paths: list[str]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: str | int | list[int]) -> list[str] | dict:
        if key in ("id", "image"):
            return list(self.paths)
        if isinstance(key, int):
            return {"id": self.paths[key], "image": self.paths[key]}
        picked = [self.paths[index] for index in key]
        return {"id": picked, "image": picked}


def find_images(paths: Iterable[str | Path]) -> list[Path]:
    """Expands folders (recursively, image suffixes only) and keeps files in the order given."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()))
        else:
            found.append(path)
    return found


def read_rows(sources: Sequence[str], id_column: str | None = None) -> FileRows | Dataset:
    """The rows of `sources` (see the module docstring), in order; raises ValueError naming a bad source."""
    catalogues = [source for source in sources if is_catalogue(source)]
    if not catalogues:
        if id_column is not None:
            raise ValueError("--id-column applies to a catalogue (a table, a dataset); image files are named by path")
        paths = [str(path) for path in find_images(sources)]
        if not paths:
            raise ValueError(f"no images found in {' '.join(sources)}")
        rows = FileRows(paths)
    elif len(sources) > 1:
        raise ValueError(f"describe one catalogue at a time, without other inputs: {catalogues[0]} came with others")
    else:
        from .catalogue_tables import catalogue_rows  # imports datasets: only a catalogue needs it

        rows = catalogue_rows(sources[0], id_column)
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
