"""`moda describe`: batched, one row per image or catalogue row, resumable, survives unreadable files."""

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest
import torch
from conftest import count_draft_calls
from PIL import Image

import modeling_moda.modeling_moda
from moda import cli, describe
from moda.cli import main
from moda.demo.catalog import make_catalog
from moda.describe import resolve_device


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
                           (["--batch-size", "0"], "--batch-size"), (["--threads", "0"], "--threads"),
                           (["--seed", "-1"], "--seed must be from 0"), (["--seed", str(2**32)], "--seed must be"),
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


# ------------------------------------------------------------------------------------------------ catalogues
REPO = Path(__file__).resolve().parents[1]
FP32 = ["--fast", "none", "--max-new-tokens", "6", "--no-progress"]  # exactly transformers' generate


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory) -> Path:
    """40 demo items (fashion.csv + 32-pixel JPEGs), the Kaggle layout."""
    return make_catalog(tmp_path_factory.mktemp("catalogue"), n=40, seed=0, image_size=32).parent


def catalogue_ids(catalogue: Path) -> list[str]:
    with open(catalogue / "fashion.csv", newline="") as handle:
        return [row["ProductId"] for row in csv.DictReader(handle)]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, catalogue, tiny_checkpoint) -> Path:
    """The catalogue described in one uninterrupted fp32 run."""
    out = tmp_path_factory.mktemp("reference") / "results.jsonl"
    assert main(["describe", str(catalogue), "--model", str(tiny_checkpoint), "--out", str(out), *FP32]) == 0
    return out


def test_a_catalogue_keeps_its_ids_and_describes_as_generate(reference, catalogue, tiny_model, tiny_processor):
    rows = read_jsonl(reference)
    assert [row["id"] for row in rows] == catalogue_ids(catalogue)
    images = [Image.open(row["image"]) for row in rows[:5]]
    expected = tiny_processor.batch_decode(
        tiny_model.generate(**tiny_processor(images=images), max_new_tokens=6, do_sample=False))
    assert [row["description"] for row in rows[:5]] == expected


@pytest.mark.slow
def test_a_killed_run_resumes_each_row_once_and_overwrite_starts_again(
    tmp_path, catalogue, tiny_checkpoint, reference, capsys
):
    """SIGKILL part-way, a line torn by the kill, a re-run: every row once, as one uninterrupted run wrote it."""
    out = tmp_path / "results.jsonl"
    journal = tmp_path / "results.jsonl.parts" / "rank0.jsonl"
    argv = ["describe", str(catalogue), "--model", str(tiny_checkpoint), "--out", str(out), "--batch-size", "4", *FP32]
    slow_batches = (  # the CLI with a pause per batch, so that the kill lands part-way
        "import sys, time; import moda.describe as d; describe = d.describe_images; "
        "d.describe_images = lambda *a, **k: time.sleep(0.4) or describe(*a, **k); "
        "from moda.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    with open(tmp_path / "stderr.txt", "w") as stderr:
        process = subprocess.Popen([sys.executable, "-c", slow_batches, *argv], cwd=REPO, stderr=stderr)
    deadline = time.monotonic() + 120
    while not (journal.exists() and len(journal.read_text().splitlines()) >= 8) and process.poll() is None:
        assert time.monotonic() < deadline, "the run wrote no two batches in 120 s"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, (tmp_path / "stderr.txt").read_text()[-3000:]
    kept = len(journal.read_text().splitlines())
    assert 8 <= kept < 40 and not out.exists()
    with open(journal, "a") as handle:
        handle.write('{"id": "100')  # what a kill in the middle of a write leaves

    assert main(argv) == 0
    assert f"described {40 - kept}, skipped {kept} (already done)" in capsys.readouterr().err
    assert out.read_text() == reference.read_text() and not journal.parent.exists()

    stale = read_jsonl(out)
    stale[0]["description"] = "stale"
    out.write_text("".join(json.dumps(row) + "\n" for row in stale))
    assert main(argv) == 0 and read_jsonl(out)[0]["description"] == "stale"  # done rows are kept
    assert main([*argv, "--overwrite"]) == 0
    assert "described 40, skipped 0" in capsys.readouterr().err and out.read_text() == reference.read_text()


def test_ctrl_c_keeps_the_finished_batches(tmp_path, catalogue, tiny_checkpoint, reference, monkeypatch, capsys):
    calls = []
    describe_images = describe.describe_images

    def interrupted_after_two_batches(*args, **kwargs):
        calls.append(1)
        if len(calls) > 2:
            raise KeyboardInterrupt
        return describe_images(*args, **kwargs)

    monkeypatch.setattr(describe, "describe_images", interrupted_after_two_batches)
    out = tmp_path / "results.csv"
    argv = ["describe", str(catalogue), "--model", str(tiny_checkpoint), "--out", str(out), "--batch-size", "5", *FP32]
    assert main(argv) == 130
    assert "interrupted: 10 rows" in capsys.readouterr().err
    monkeypatch.setattr(describe, "describe_images", describe_images)
    assert main(argv) == 0 and "described 30, skipped 10" in capsys.readouterr().err
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [{"id": row["id"], "description": row["description"]} for row in rows] == [
        {"id": row["id"], "description": row["description"]} for row in read_jsonl(reference)
    ]


@pytest.fixture(scope="module")
def sampling_checkpoint(tmp_path_factory, tiny_checkpoint) -> Path:
    """The tiny checkpoint, its generation_config.json asking for sampling."""
    path = shutil.copytree(tiny_checkpoint, tmp_path_factory.mktemp("sampling") / "checkpoint")
    config = path / "generation_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "do_sample": True, "temperature": 1.5}))
    return path


def test_a_seeded_run_samples_the_same_text_resumed(tmp_path, catalogue, sampling_checkpoint, capsys):
    """--seed N seeds batch k of the catalogue (rows 5k to 5k+4) with N+k. A run resumed with 3 rows done still
    describes rows 5 on in the batches of an uninterrupted run, so it samples the same text; another seed samples
    other text."""
    argv = ["describe", str(catalogue), "--model", str(sampling_checkpoint), "--batch-size", "5", *FP32]

    def run(out: Path, seed: int) -> list[dict]:
        assert main([*argv, "--out", str(out), "--seed", str(seed)]) == 0
        return read_jsonl(out)

    whole = run(tmp_path / "whole.jsonl", 3)
    resumed = tmp_path / "resumed.jsonl"
    (tmp_path / "resumed.jsonl.parts").mkdir()
    (tmp_path / "resumed.jsonl.parts" / "rank0.jsonl").write_text("".join(json.dumps(row) + "\n" for row in whole[:3]))
    capsys.readouterr()
    assert run(resumed, 3)[5:] == whole[5:]
    assert "described 37, skipped 3" in capsys.readouterr().err
    other = run(tmp_path / "other.jsonl", 4)
    assert [row["description"] for row in other] != [row["description"] for row in whole]


@pytest.mark.slow
def test_accelerate_launch_splits_the_rows_between_two_processes(tmp_path, catalogue, tiny_checkpoint, reference):
    """Two CPU processes (torchrun via `accelerate launch --multi_gpu`, joined over gloo), resuming 6 rows that a
    past run's second process had journaled: the same file as one process writes."""
    out = tmp_path / "results.jsonl"
    (tmp_path / "results.jsonl.parts").mkdir()
    (tmp_path / "results.jsonl.parts" / "rank1.jsonl").write_text("".join(reference.read_text().splitlines(True)[-6:]))
    command = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "moda.cli", "describe", str(catalogue),
               "--model", str(tiny_checkpoint), "--out", str(out), "--device", "cpu", "--dtype", "float32",
               *FP32]  # fmt: skip
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("described 34, skipped 6 (already done), failed 0") == 1  # the main process reports
    assert "2 process(es), cpu" in result.stderr
    assert out.read_text() == reference.read_text()


def test_describes_a_saved_dataset_with_embedded_images(tmp_path, tiny_checkpoint, tiny_model, tiny_processor, photos):
    saved = tmp_path / "dataset"
    encoded = []
    for photo in photos:
        buffer = io.BytesIO()
        photo.save(buffer, format="PNG")
        encoded.append({"bytes": buffer.getvalue(), "path": None})
    features = datasets.Features({"picture": datasets.Image(), "ProductId": datasets.Value("int64")})
    datasets.Dataset.from_dict({"picture": encoded, "ProductId": [7, 8, 9, 10]}, features=features).save_to_disk(saved)
    out = tmp_path / "results.parquet"
    assert main(["describe", str(saved), "--model", str(tiny_checkpoint), "--out", str(out), *FP32]) == 0
    rows = pq.read_table(out).to_pylist()
    expected = tiny_processor.batch_decode(tiny_model.generate(**tiny_processor(images=photos), max_new_tokens=6))
    assert [row["id"] for row in rows] == ["7", "8", "9", "10"]
    assert [row["description"] for row in rows] == expected


def test_prompt_is_continued(tmp_path, tiny_checkpoint, tiny_model, tiny_processor, photos):
    paths = write_photos(tmp_path / "photos", photos)
    out = tmp_path / "results.jsonl"
    argv = ["describe", *map(str, paths), "--model", str(tiny_checkpoint), "--out", str(out), "--prompt", "A red"]
    assert main([*argv, *FP32]) == 0
    inputs = tiny_processor(images=photos, text=["A red"] * len(photos))
    expected = tiny_processor.batch_decode(tiny_model.generate(**inputs, max_new_tokens=6, do_sample=False))
    descriptions = [row["description"] for row in read_jsonl(out)]
    assert descriptions == expected and all(text.startswith("A red") for text in descriptions)


# ------------------------------------------------------------------------------------------ devices, errors
def test_device_cuda_is_a_clear_error_without_a_gpu_and_auto_falls_back(tmp_path, tiny_checkpoint, photos, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    paths = write_photos(tmp_path / "photos", photos[:2])
    argv = ["describe", *map(str, paths), "--model", str(tiny_checkpoint), "--out", str(tmp_path / "r.jsonl")]
    for device in ("cuda", "cuda:1"):
        with pytest.raises(SystemExit, match=f"--device {device}: PyTorch sees no CUDA GPU"):
            main([*argv, "--device", device])
    with pytest.raises(SystemExit):
        main([*argv, "--device", "gpu"])  # argparse: not a device name
    assert "expected auto, cpu, cuda or cuda:N" in capsys.readouterr().err
    assert main([*argv, "--device", "auto", "--no-progress"]) == 0
    assert "1 process(es), cpu, float32, fast int8" in capsys.readouterr().err


def test_gpus_are_chosen_per_process_in_bf16_or_fp16(monkeypatch):
    """What --device resolves to on a machine with two GPUs (no GPU is used)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto", process_index=1) == torch.device("cuda", 1)
    assert resolve_device("cuda:0", process_index=1) == torch.device("cuda", 0)
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="no GPU 2"):
        resolve_device("cuda:2")
    args = cli.build_parser().parse_args(["describe", "x.jpg", "--model", "m"])
    for supported, dtype in ((True, "bfloat16"), (False, "float16")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation, native=supported: native)
        assert cli.precision(args, torch.device("cuda", 0)) == (dtype, "none")
    args.fast = "int8"
    with pytest.raises(ValueError, match="--fast int8 is a CPU path"):
        cli.precision(args, torch.device("cuda", 0))


def test_model_errors_are_messages(tmp_path, tiny_backbones, photos):
    """A missing folder, a folder of another model and one without a config: one line each, no traceback."""
    paths = write_photos(tmp_path / "photos", photos[:1])
    (tmp_path / "empty").mkdir()
    for model, message in ((tmp_path / "missing", "no such folder"), (tiny_backbones[1], "'opt' model, not MODA"),
                           (tmp_path / "empty", "config.json")):  # fmt: skip
        with pytest.raises(SystemExit, match=f"--model {model}: .*{message}"):
            main(["describe", str(paths[0]), "--model", str(model), "--out", str(tmp_path / "r.jsonl")])


def test_bad_out_stops_before_loading_the_model(tmp_path, photos):
    """--model names no checkpoint: each --out error must come first."""
    paths = write_photos(tmp_path / "photos", photos[:1])
    not_results = tmp_path / "notes.jsonl"
    not_results.write_text("my own notes\n")
    for out, message in ((tmp_path, "is a folder"), (tmp_path / "r.txt", "unknown format '.txt'"),
                         (Path("/sys/moda-results.jsonl"), "cannot write in /sys"),
                         (not_results, "not a `moda describe` results file")):  # fmt: skip
        with pytest.raises(SystemExit, match=message):
            main(["describe", str(paths[0]), "--model", str(tmp_path / "no-model"), "--out", str(out)])
    assert not_results.read_text() == "my own notes\n"


def test_out_suffix_is_case_insensitive(tmp_path, tiny_checkpoint, photos):
    paths = write_photos(tmp_path / "photos", photos[:2])
    out = tmp_path / "results.CSV"
    assert main(["describe", *map(str, paths), "--model", str(tiny_checkpoint), "--out", str(out), *FP32]) == 0
    with open(out, newline="") as handle:
        assert [row["id"] for row in csv.DictReader(handle)] == list(map(str, paths))


def test_exit_status_is_1_when_no_image_could_be_described(tmp_path, tiny_checkpoint, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    argv = ["describe", str(broken), str(tmp_path / "gone.png"), "--model", str(tiny_checkpoint), "--no-progress"]
    assert main(argv) == 1
    summary = capsys.readouterr().err
    assert "described 0, skipped 0 (already done), failed 2" in summary
    assert "1 x cannot read <image> as an image" in summary and "1 x no such image file: <image>" in summary
