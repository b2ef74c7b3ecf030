"""The results file of `moda describe --out`, which a run completes rather than rewrites.

OUT holds one row per catalogue row, ``{"id", "image", "description"}`` or ``{"id", "image", "error"}``, in
catalogue order, as JSON lines, CSV or Parquet (by OUT's suffix, in any case). While a run works, each process
appends every finished batch to its own journal, ``OUT.parts/rank<N>.jsonl``, flushed and fsynced: a crash, a kill
or Ctrl-C loses at most the batch in flight. At the end the main process merges OUT and the journals into a new OUT,
written beside it and renamed over it (OUT is never half-written), and removes ``OUT.parts``.

A re-run reads OUT and the journals, skips every id that has a description and describes the rest, failed rows
included (an image fixed since gets its description).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path


FORMATS = (".jsonl", ".csv", ".parquet")
COLUMNS = ("id", "image", "description", "error")


def output_format(out: Path) -> str:
    """OUT's format, from its suffix in any case; an unknown suffix is a ValueError."""
    suffix = out.suffix.lower()
    if suffix not in FORMATS:
        problem = f"unknown format {out.suffix!r}" if out.suffix else "no format suffix"
        raise ValueError(f"--out {out}: {problem}; end it with {', '.join(FORMATS)}")
    return suffix


def json_lines(rows: Iterable[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


class Journal:
    """One process's journal: result rows appended a batch at a time, each batch flushed and fsynced."""

    def __init__(self, path: Path):
        path.parent.mkdir(exist_ok=True)
        _cut_torn_line(path)  # so that the next batch starts on a line of its own
        self.path = path

    def write(self, rows: Sequence[dict]) -> None:
        with open(self.path, "a", encoding="utf-8") as file:
            file.write(json_lines(rows))
            file.flush()
            os.fsync(file.fileno())


class Results:
    """OUT and its journals (see the module docstring)."""

    def __init__(self, out: Path):
        self.out = Path(out)
        if self.out.is_dir():
            raise ValueError(f"--out {self.out} is a folder; give a file name such as {self.out / 'results.jsonl'}")
        self.format = output_format(self.out)
        self.parts = self.out.with_name(self.out.name + ".parts")

    def check(self) -> None:
        """Raises ValueError, before any model loads, when OUT cannot be written there."""
        if not self.out.parent.is_dir():
            raise ValueError(f"--out: folder {self.out.parent} does not exist")
        try:
            tempfile.TemporaryFile(dir=self.out.parent).close()
        except OSError as error:
            raise ValueError(f"--out {self.out}: cannot write in {self.out.parent} ({error.strerror})") from None

    def clear(self) -> None:
        """`--overwrite`: forget every result so far."""
        self.out.unlink(missing_ok=True)
        shutil.rmtree(self.parts, ignore_errors=True)

    def journal(self, process_index: int) -> Journal:
        return Journal(self.parts / f"rank{process_index}.jsonl")

    def read(self) -> dict[str, dict]:
        """Every result so far, by id: OUT's rows, then the journals'. A description is never replaced by an error
        (a later run may have failed where an earlier one succeeded); otherwise the later row wins."""
        results: dict[str, dict] = {}
        journals = sorted(self.parts.glob("rank*.jsonl"))
        for row in [*self._read_out(), *(row for path in journals for row in _read_journal(path))]:
            if "description" in row or "description" not in results.get(row["id"], {}):
                results[row["id"]] = row
        return results

    def described(self) -> set[str]:
        """The ids done; raises ValueError when OUT exists and is not a results file (it is never overwritten)."""
        return {key for key, row in self.read().items() if "description" in row}

    def merge(self, order: Sequence[str]) -> int:
        """Writes every result to OUT, the ids of `order` first and in that order (then any others OUT held), and
        removes the journals; returns the number of rows written."""
        results = self.read()
        rows = [results.pop(key) for key in order if key in results] + list(results.values())
        temporary = self.out.with_name(f".{self.out.name}.tmp")
        if self.format == ".parquet":
            write_parquet(rows, temporary)
        else:
            with open(temporary, "w", newline="", encoding="utf-8") as file:
                if self.format == ".csv":
                    writer = csv.DictWriter(file, COLUMNS, lineterminator="\n")
                    writer.writeheader()
                    writer.writerows(rows)
                else:
                    file.write(json_lines(rows))
                file.flush()
                os.fsync(file.fileno())
        os.replace(temporary, self.out)
        shutil.rmtree(self.parts, ignore_errors=True)
        return len(rows)

    def _read_out(self) -> list[dict]:
        if not self.out.is_file():
            return []
        not_results = f"--out {self.out} exists and is not a `moda describe` results file"
        choose = "choose another --out, or --overwrite to replace it"
        try:
            if self.format == ".parquet":
                rows = read_parquet(self.out)
            elif self.format == ".csv":
                with open(self.out, newline="", encoding="utf-8") as file:
                    rows = list(csv.DictReader(file))
            else:
                rows = [json.loads(line) for line in self.out.read_text(encoding="utf-8").splitlines() if line]
        except (OSError, ValueError) as error:
            raise ValueError(f"{not_results} ({error}); {choose}") from None
        # only these columns, so that a catalogue with an id column (perhaps the input itself) is never taken for one
        if not all(isinstance(row, dict) and row.get("id") and row.keys() <= set(COLUMNS) for row in rows):
            raise ValueError(f"{not_results} (rows of {', '.join(COLUMNS)}); {choose}")
        return [_clean(row) for row in rows]


# pyarrow is imported only for parquet results: at the top it would add about 0.4 s to every `moda describe` start
def write_parquet(rows: list[dict], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema([(name, pa.string()) for name in COLUMNS])), path)


def read_parquet(path: Path) -> list[dict]:
    """The rows of a parquet file; a file pyarrow cannot read is a ValueError."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except pa.ArrowException as error:
        raise ValueError(str(error)) from None


def _clean(row: dict) -> dict:
    """A row as `moda describe` writes it: a non-empty error, else a description (which may be ""). CSV writes a
    missing cell as "" and Parquet as null."""
    cleaned = {name: str(row[name]) for name in ("id", "image") if row.get(name) not in (None, "")}
    if row.get("error"):
        return {**cleaned, "error": str(row["error"])}
    return {**cleaned, "description": str(row.get("description") or "")}


def _read_journal(path: Path) -> Iterator[dict]:
    """The rows of a journal; a last line without its newline was cut short by a kill and is not a row."""
    lines = path.read_bytes().split(b"\n")[:-1]  # bytes: a cut line may end inside a character
    for number, line in enumerate(lines, 1):
        try:
            yield _clean(json.loads(line))
        except (ValueError, AttributeError) as error:  # not JSON, not UTF-8, not an object
            raise ValueError(f"{path} line {number} is not a result row ({error}); delete that line to go on")


def _cut_torn_line(path: Path) -> None:
    if not path.is_file():
        return
    content = path.read_bytes()
    if content and not content.endswith(b"\n"):
        with open(path, "r+b") as file:
            file.truncate(content.rfind(b"\n") + 1)
