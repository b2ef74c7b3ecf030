"""`moda describe`: batched, one line per image, survives unreadable files."""

import csv
import json

import pytest

from conftest import count_draft_calls
import modeling_moda.modeling_moda
from moda import cli
from moda.cli import main


def write_photos(folder, photos):
    folder.mkdir()
    paths = []
    for index, photo in enumerate(photos):
        paths.append(folder / f"item{index}.png")
        photo.save(paths[-1])
    return paths


def test_describes_a_folder_and_skips_a_corrupt_file(tmp_path, tiny_checkpoint, tiny_model, tiny_processor, photos):
    paths = write_photos(tmp_path / "photos", photos)
    corrupt = tmp_path / "photos" / "item1b.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    out = tmp_path / "results.jsonl"

    assert main(["describe", str(tmp_path / "photos"), "--model", str(tiny_checkpoint), "--batch-size", "3",
                 "--out", str(out), "--no-progress", "--max-new-tokens", "10", "--fast", "none"]) == 0

    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["image"] for row in rows] == sorted(map(str, [*paths, corrupt]))
    errors = [row for row in rows if "error" in row]
    assert [row["image"] for row in errors] == [str(corrupt)] and "cannot read" in errors[0]["error"]

    expected = tiny_processor.batch_decode(
        tiny_model.generate(**tiny_processor(images=photos), max_new_tokens=10, do_sample=False))
    described = {row["image"]: row["description"] for row in rows if "description" in row}
    assert [described[str(path)] for path in paths] == expected


def test_csv_output_and_explicit_files(tmp_path, tiny_checkpoint, photos):
    paths = write_photos(tmp_path / "photos", photos[:2])
    missing = tmp_path / "photos" / "gone.jpg"
    out = tmp_path / "results.csv"
    main(["describe", str(paths[1]), str(missing), str(paths[0]), "--model", str(tiny_checkpoint),
          "--out", str(out), "--no-progress"])
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["image"] for row in rows] == [str(paths[1]), str(missing), str(paths[0])]
    assert rows[1]["error"].startswith(f"{missing}: no such image file") and not rows[1]["description"]
    assert rows[0]["description"] and not rows[0]["error"]


def test_bad_flags_stop_before_loading_the_model(tmp_path, photos):
    paths = write_photos(tmp_path / "photos", photos[:1])
    for flags, message in ((["--max-new-tokens", "0"], "--max-new-tokens"), (["--num-beams", "-1"], "--num-beams"),
                           (["--out", str(tmp_path / "missing" / "r.jsonl")], "does not exist"),
                           (["--fast", "none", "--vision", "int8"], "--vision applies to --fast int8"),
                           (["--dtype", "bfloat16", "--full-vocabulary"], "--full-vocabulary applies")):
        with pytest.raises(SystemExit, match=message):
            main(["describe", str(paths[0]), "--model", str(tmp_path / "no-model"), *flags])


def test_default_fast_path_writes_what_int8_generate_writes(tmp_path, tiny_checkpoint, photos, monkeypatch):
    """The CLI's default (int8, lean greedy loop) describes exactly as `generate` on the same int8 model."""
    loaded = {}

    def remember(*args, **kwargs):
        loaded["model"], loaded["processor"] = load_model(*args, **kwargs)
        return loaded["model"], loaded["processor"]

    load_model = cli.load_model
    monkeypatch.setattr(cli, "load_model", remember)
    paths = write_photos(tmp_path / "photos", photos)
    out = tmp_path / "results.jsonl"
    assert main(["describe", str(tmp_path / "photos"), "--model", str(tiny_checkpoint), "--out", str(out),
                 "--no-progress", "--max-new-tokens", "10", "--vision", "int8"]) == 0
    model, processor = loaded["model"], loaded["processor"]
    assert "quantized" in type(model.vision_tower.vision_model.encoder.layers[0].mlp.fc1).__module__
    expected = processor.batch_decode(model.generate(**processor(images=photos), max_new_tokens=10, do_sample=False))
    rows = {row["image"]: row["description"] for row in map(json.loads, out.read_text().splitlines())}
    assert [rows[str(path)] for path in paths] == expected


def test_single_image_checks_the_checkpoints_caption_drafts(tmp_path, fast_checkpoint, photos, monkeypatch):
    """One image: the CLI hands caption_drafts.json to the lean loop, and `--no-drafts` does not.

    The texts are not compared: on int8 weights a pass's guesses share its activation scale, so drafts can flip a
    near-tied token of this tiny model (README, Performance); tests/test_caption_drafts.py checks that drafts change
    nothing on fp32 weights."""
    checkpoint = fast_checkpoint
    calls = []
    code = modeling_moda.modeling_moda
    load_caption_drafter = code.load_caption_drafter
    monkeypatch.setattr(code, "load_caption_drafter", lambda path: count_draft_calls(load_caption_drafter(path), calls))
    [path] = write_photos(tmp_path / "photos", photos[:1])
    descriptions = []
    for flags in ([], ["--no-drafts"]):
        out = tmp_path / f"results{len(descriptions)}.jsonl"
        arguments = ["describe", str(path), "--model", str(checkpoint), "--out", str(out), "--no-progress", *flags]
        assert main(arguments) == 0
        descriptions.append(json.loads(out.read_text())["description"])
        assert bool(calls) == (not flags), "drafts are checked unless --no-drafts"
        calls.clear()
    assert all(description.strip() for description in descriptions)
