"""What `moda describe` reads: image files and folders, or one catalogue, as rows of (id, image)."""

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
from PIL import Image

from moda import catalogue_tables
from moda.catalogue_rows import read_rows
from moda.demo.catalog import make_catalog
from processing.data import open_image


@pytest.fixture(scope="module")
def kaggle(tmp_path_factory) -> Path:
    return make_catalog(tmp_path_factory.mktemp("kaggle"), n=5, seed=1, image_size=32).parent


def kaggle_rows(kaggle: Path) -> list[dict]:
    with open(kaggle / "fashion.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_kaggle_folder_rows_are_product_ids_with_their_images(kaggle):
    rows = read_rows([str(kaggle)])
    expected = kaggle_rows(kaggle)
    assert rows["id"] == [row["ProductId"] for row in expected]
    assert [cell["path"] for cell in rows["image"]] == [str((kaggle / row["Image"]).resolve()) for row in expected]
    assert open_image(rows[0]["image"]).size == (32, 32)


def test_a_table_keeps_its_cells_as_written_and_finds_bare_file_names(kaggle, tmp_path):
    """ProductIds with leading zeros stay text; a bare file name is found below the table's folder (Kaggle's CSV)."""
    table = kaggle / "bare.jsonl"
    names = [Path(row["Image"]).name for row in kaggle_rows(kaggle)]
    table.write_text("".join(json.dumps({"id": f"00{index}", "file_name": name}) + "\n" for index, name in
                             enumerate(names)) + "\n")  # fmt: skip
    rows = read_rows([str(table)])
    assert rows["id"] == [f"00{index}" for index in range(len(names))]
    assert all(Path(cell["path"]).is_file() for cell in rows["image"])


def test_without_an_id_column_the_image_cell_names_the_row(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "items.csv").write_text("image,colour\na.png,red\nmissing.png,blue\n")
    rows = read_rows([str(tmp_path / "items.csv")])
    assert rows["id"] == ["a.png", "missing.png"]
    with pytest.raises(ValueError, match="no such image file"):
        open_image(rows[1]["image"])  # kept, so that its row fails with a reason


def test_saved_datasets_are_named_by_product_id_or_row_number(tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    photo = {"bytes": buffer.getvalue(), "path": None}
    features = datasets.Features({"picture": datasets.Image(), "ProductId": datasets.Value("int64")})
    named = datasets.Dataset.from_dict({"picture": [photo, photo], "ProductId": [3, 4]}, features=features)
    datasets.DatasetDict(train=named, test=named.map(lambda row: {"ProductId": row["ProductId"] + 2})).save_to_disk(
        tmp_path / "named"
    )
    rows = read_rows([str(tmp_path / "named")])
    assert rows["id"] == ["3", "4", "5", "6"] and open_image(rows[3]["image"]).size == (8, 8)
    named.remove_columns("ProductId").save_to_disk(tmp_path / "unnamed")
    assert read_rows([str(tmp_path / "unnamed")])["id"] == ["0", "1"]


def test_a_hub_dataset_id_is_loaded_with_datasets(monkeypatch, tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    hub = datasets.Dataset.from_dict({"image": [str(tmp_path / "a.png")], "id": ["sku-1"]})
    monkeypatch.setattr(catalogue_tables.datasets, "load_dataset", lambda name: hub if name == "shop/catalogue" else 0)
    rows = read_rows(["shop/catalogue"])
    assert rows["id"] == ["sku-1"] and open_image(rows[0]["image"]).size == (8, 8)


def test_files_and_folders_are_named_by_path(tmp_path):
    (tmp_path / "photos" / "deeper").mkdir(parents=True)
    for name in ("photos/b.jpg", "photos/deeper/a.png", "loose.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    (tmp_path / "photos" / "notes.txt").write_text("not an image")
    rows = read_rows([str(tmp_path / "loose.png"), str(tmp_path / "photos"), str(tmp_path / "gone.jpg")])
    assert rows["id"] == [str(tmp_path / name) for name in ("loose.png", "photos/b.jpg", "photos/deeper/a.png",
                                                            "gone.jpg")]  # fmt: skip


@pytest.mark.parametrize(
    "sources, id_column, message",
    [
        (["{kaggle}", "{kaggle}/images"], None, "one catalogue at a time"),
        (["{kaggle}"], "SKU", "no column 'SKU'"),
        (["{kaggle}"], "Gender", "ids must be unique"),
        (["{kaggle}/images"], "ProductId", "--id-column applies to a catalogue"),
        (["{kaggle}/no/such/folder"], None, "no such file or folder"),
        (["{kaggle}/empty"], None, "no images found"),
    ],
)
def test_bad_sources_are_clear_errors(kaggle, sources, id_column, message):
    (kaggle / "empty").mkdir(exist_ok=True)
    with pytest.raises(ValueError, match=message):
        read_rows([source.format(kaggle=kaggle) for source in sources], id_column)


def test_tables_need_an_image_column_and_ids(tmp_path):
    (tmp_path / "no_image.csv").write_text("ProductId,colour\n1,red\n")
    (tmp_path / "no_id.csv").write_text("ProductId,image\n1,a.png\n,b.png\n")
    (tmp_path / "array.json").write_text('[{"image": "a.png"}]\n')
    for table, message in (("no_image.csv", "no image column"), ("no_id.csv", r"row\(s\) \[2\] have an empty id"),
                           ("array.json", "expected a JSON object")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            read_rows([str(tmp_path / table)])


def test_describing_image_files_imports_only_what_it_needs(tiny_checkpoint, tmp_path):
    """A cold `moda describe photo.jpg` pays only for what it needs (benchmarks/cold_start.py): no `datasets`,
    no peft (transformers' `set_seed` would bring it), no pyarrow (parquet results only)."""
    photo = tmp_path / "photo.png"
    Image.new("RGB", (16, 16), "red").save(photo)
    script = (
        "import sys\nfrom moda.cli import main\n"
        f"status = main(['describe', {str(photo)!r}, '--model', {str(tiny_checkpoint)!r}, '--max-new-tokens', '3'])\n"
        "assert status == 0, status\nprint(sorted({'datasets', 'peft', 'pyarrow'} & set(sys.modules)))"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    *rows, imported = run.stdout.strip().splitlines()
    assert json.loads(rows[0])["id"] == str(photo) and "description" in json.loads(rows[0])
    assert imported == "[]"
