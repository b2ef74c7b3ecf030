"""The results file of `moda describe --out`: journals that survive a kill, merged in catalogue order, by id."""

import csv
import json

import pyarrow.parquet as pq
import pytest

from moda.results import Results


def described(key: str, text: str = "A red dress.") -> dict:
    return {"id": key, "image": f"{key}.jpg", "description": text}


def failed(key: str) -> dict:
    return {"id": key, "image": f"{key}.jpg", "error": f"{key}.jpg: no such image file: {key}.jpg"}


def test_a_torn_last_line_is_not_a_row_and_is_cut_before_the_next_batch(tmp_path):
    results = Results(tmp_path / "out.jsonl")
    results.journal(0).write([described("a"), described("b")])
    with open(results.parts / "rank0.jsonl", "ab") as file:
        file.write(b'{"id": "c", "description": "A bl' + "é".encode()[:1])  # cut inside a character
    assert results.described() == {"a", "b"}
    results.journal(0).write([described("c")])
    lines = (results.parts / "rank0.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["a", "b", "c"]


def test_merge_writes_each_id_once_in_catalogue_order_and_a_description_beats_an_error(tmp_path):
    results = Results(tmp_path / "out.jsonl")
    results.journal(0).write([failed("b"), described("a")])
    results.merge(["a", "b"])
    assert not results.parts.exists()
    results.journal(0).write([described("b", "fixed")])
    results.journal(1).write([failed("b")])  # a later process that failed where the first succeeded
    results.journal(2).write([described("c")])
    assert results.merge(["c", "b", "a"]) == 3
    rows = [json.loads(line) for line in results.out.read_text().splitlines()]
    assert rows == [described("c"), described("b", "fixed"), described("a")]


def test_ids_no_longer_in_the_catalogue_are_kept_after_the_others(tmp_path):
    results = Results(tmp_path / "out.jsonl")
    results.journal(0).write([described("old"), described("a")])
    results.merge(["a"])
    assert [json.loads(line)["id"] for line in results.out.read_text().splitlines()] == ["a", "old"]


@pytest.mark.parametrize("name", ["out.csv", "out.Parquet", "out.JSONL"])
def test_every_format_reads_back_what_it_wrote(tmp_path, name):
    results = Results(tmp_path / name)
    rows = [described("a"), failed("b"), described("c", "")]
    results.journal(0).write(rows)
    results.merge(["a", "b", "c"])
    assert Results(tmp_path / name).read() == {row["id"]: row for row in rows}
    assert Results(tmp_path / name).described() == {"a", "c"}  # an empty description is still one


def test_csv_and_parquet_have_one_column_per_field(tmp_path):
    for name in ("out.csv", "out.parquet"):
        results = Results(tmp_path / name)
        results.journal(0).write([described("a"), failed("b")])
        results.merge(["a", "b"])
    with open(tmp_path / "out.csv", newline="") as file:
        assert list(csv.DictReader(file))[1] == {"id": "b", "image": "b.jpg", "description": "", **failed("b")}
    assert pq.read_table(tmp_path / "out.parquet").to_pylist()[1] == {"description": None, **failed("b")}


def test_a_file_that_is_not_results_is_refused_and_kept(tmp_path):
    for name, content in (("notes.jsonl", '{"text": "my notes"}\n'), ("notes.csv", "sku,colour\n1,red\n"),
                          ("catalogue.csv", "id,image,Colour\n1,a.jpg,red\n"),
                          ("notes.parquet", "not parquet at all")):  # fmt: skip
        (tmp_path / name).write_text(content)
        with pytest.raises(ValueError, match="not a `moda describe` results file"):
            Results(tmp_path / name).described()
        assert (tmp_path / name).read_text() == content


def test_overwrite_forgets_out_and_journals(tmp_path):
    results = Results(tmp_path / "out.jsonl")
    results.journal(0).write([described("a")])
    results.merge(["a"])
    results.journal(0).write([described("b")])
    results.clear()
    assert results.described() == set() and not results.out.exists() and not results.parts.exists()


@pytest.mark.parametrize("name, message", [("out.txt", "unknown format '.txt'"), ("out", "no format suffix")])
def test_unknown_suffixes_are_refused(tmp_path, name, message):
    with pytest.raises(ValueError, match=message):
        Results(tmp_path / name)
