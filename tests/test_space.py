"""The Gradio Space (space/app.py), served as on a Space: a subprocess that cannot import this repository, with
the tiny checkpoint as MODA_MODEL, called through gradio_client."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image
from transformers import set_seed

from conftest import count_draft_calls, make_photo
from moda.clean_process import clean_command
from moda.describe import describe_images, load_model
from modeling_moda import MODAForConditionalGeneration
from processing import MODAProcessor
from processing.processing_moda import load_rgb_image
from push_to_hub import REPO_ROOT, stage_space

pytestmark = pytest.mark.slow

APP = REPO_ROOT / "space" / "app.py"
RUN_APP = "import runpy; runpy.run_path(sys.argv[1], run_name='__main__')"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def serve_space(checkpoint: Path, workdir: Path, fast: str | None = None, timeout: float = 180) -> Iterator[str]:
    """Runs `MODA_MODEL=checkpoint python space/app.py` (with `MODA_FAST=fast` unless None) on a free localhost
    port; yields its URL."""
    port = free_port()
    env = {
        **{name: value for name, value in os.environ.items() if name != "MODA_FAST"},
        **({} if fast is None else {"MODA_FAST": fast}),
        "MODA_MODEL": str(checkpoint),
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "HF_HUB_OFFLINE": "1",
    }
    log = open(workdir / "app.log", "w")
    process = subprocess.Popen(clean_command(RUN_APP, APP), cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the Space exited with {process.returncode}:\n{(workdir / 'app.log').read_text()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url, timeout=5).is_success:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"the Space did not answer within {timeout} s")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture(scope="module")
def space_url(tiny_checkpoint, tmp_path_factory) -> Iterator[str]:
    """The Space in fp32 (`MODA_FAST=none`), whose answers must be exactly `generate`'s."""
    with serve_space(tiny_checkpoint, tmp_path_factory.mktemp("space"), fast="none") as url:
        yield url


@pytest.fixture(scope="module")
def client(space_url) -> Client:
    return Client(space_url, verbose=False)


@pytest.fixture(scope="module")
def photo_files(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("photos")
    paths = [folder / f"photo_{seed}.png" for seed in range(3)]
    for seed, path in enumerate(paths):
        make_photo(seed).save(path)
    return paths


def generate(model, processor, paths: list[Path], **kwargs) -> list[str]:
    """What model.generate says for the files, one at a time."""
    return [
        processor.batch_decode(model.generate(**processor(images=str(path), return_tensors="pt"), **kwargs))[0]
        for path in paths
    ]


def huge_png(path: Path, side: int = 40_000) -> Path:
    """A valid PNG header announcing side x side pixels (a decompression bomb), a few bytes on disk."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    header = b"IHDR" + struct.pack(">II", side, side) + bytes(data[24:29])
    data[12:29], data[29:33] = header, struct.pack(">I", zlib.crc32(header))
    path.write_bytes(bytes(data))
    return path


def test_describe_matches_generate(client, tiny_model, tiny_processor, photo_files):
    expected = generate(tiny_model, tiny_processor, photo_files[:2], max_new_tokens=32)
    assert expected[0] != expected[1], "the fixture model should tell these photos apart"
    for path, text in zip(photo_files, expected):
        description, took = client.predict(handle_file(str(path)), 32, 1, 0.0, api_name="/describe")
        assert description == text
        assert took.startswith("Described 1 image in ")
        # settings left out are the checkpoint's generation config (max_new_tokens 32, greedy)
        assert client.predict(handle_file(str(path)), api_name="/describe")[0] == text


def test_sampling_is_seeded(client, tiny_model, tiny_processor, photo_files):
    """A temperature samples, seeded with the seed argument: the text `generate` samples after `set_seed`."""
    photo = handle_file(str(photo_files[0]))
    samples = {}
    for seed in (7, 8):
        set_seed(seed)
        (expected,) = generate(tiny_model, tiny_processor, photo_files[:1], max_new_tokens=8, do_sample=True,
                               temperature=1.5)  # fmt: skip
        samples[seed] = client.predict(photo, 8, 1, 1.5, seed, api_name="/describe")[0]
        assert samples[seed] == expected
    assert samples[7] != samples[8], "another seed, another sample"


def test_generation_settings_reach_generate(client, tiny_model, tiny_processor, photo_files):
    (expected,) = generate(tiny_model, tiny_processor, photo_files[:1], max_new_tokens=5, num_beams=3)
    description, _ = client.predict(handle_file(str(photo_files[0])), 5, 3, 0.0, api_name="/describe")
    assert description == expected


def test_batch_describes_good_files_and_reports_bad_ones(client, tiny_model, tiny_processor, photo_files, tmp_path):
    bad, not_an_image_name = tmp_path / "notes.png", tmp_path / "notes.txt"
    bad.write_text("not a photo")
    not_an_image_name.write_text("not a photo either")
    files = [handle_file(str(path)) for path in (photo_files[0], bad, not_an_image_name, photo_files[2])]
    gallery, table, took = client.predict(files, 32, 1, 0.0, api_name="/describe_batch")

    expected = generate(tiny_model, tiny_processor, [photo_files[0], photo_files[2]], max_new_tokens=32)
    assert [item["caption"] for item in gallery] == expected
    rows = {name: text for name, text in table["data"]}
    assert rows["photo_0.png"] == expected[0] and rows["photo_2.png"] == expected[1]
    assert rows["notes.png"].startswith("skipped: notes.png is not an image")
    assert rows["notes.txt"].startswith("skipped: notes.txt is not an image")
    assert took.startswith("Described 2 images in ")


def test_bad_uploads_give_errors_and_the_app_keeps_serving(client, tiny_model, tiny_processor, photo_files, tmp_path):
    text_file = tmp_path / "text.png"
    text_file.write_text("this is a text file")
    empty = tmp_path / "empty.jpg"
    empty.touch()
    for path, message in [
        (text_file, "text.png is not an image MODA can read"),
        (empty, "empty.jpg is not an image MODA can read"),
        (huge_png(tmp_path / "huge.png"), "huge.png has too many pixels"),
    ]:
        with pytest.raises(AppError, match=message):
            client.predict(handle_file(str(path)), 32, 1, 0.0, api_name="/describe")
    oversized = tmp_path / "oversized.jpg"
    oversized.write_bytes(b"\xff" * (10 * 1024 * 1024 + 1))
    with pytest.raises(ValueError, match="exceeds the maximum file size"):
        client.predict(handle_file(str(oversized)), 32, 1, 0.0, api_name="/describe")

    description, _ = client.predict(handle_file(str(photo_files[1])), 32, 1, 0.0, api_name="/describe")
    assert description == generate(tiny_model, tiny_processor, photo_files[1:2], max_new_tokens=32)[0]


def test_api_settings_outside_the_sliders_are_refused_naming_the_setting(client, photo_files, tiny_model,
                                                                         tiny_processor):
    """API calls skip the UI's sliders: both endpoints check every setting against them, with a clear error."""
    photo = handle_file(str(photo_files[0]))
    for endpoint, settings, message in [
        ("/describe", (200, 1, 0.0), "max_new_tokens must be a whole number from 1 to 64, got 200."),
        ("/describe", (100000, 1, 0.0), "max_new_tokens must be a whole number from 1 to 64, got 100000."),
        ("/describe", ("32", 1, 0.0), "max_new_tokens must be a whole number from 1 to 64, got '32'."),
        ("/describe", (32, 0, 0.0), "num_beams must be a whole number from 1 to 5, got 0."),
        ("/describe", (32, 2.5, 0.0), "num_beams must be a whole number from 1 to 5, got 2.5."),
        ("/describe", (32, 1, None), "temperature must be a number from 0.0 to 1.5, got None."),
        ("/describe_batch", (32, 200, 0.0), "num_beams must be a whole number from 1 to 5, got 200."),
        ("/describe_batch", (32, 1, -0.5), "temperature must be a number from 0.0 to 1.5, got -0.5."),
        ("/describe", (32, 1, 0.5, -1), "seed must be a whole number from 0 to 4294967295, got -1."),
        ("/describe_batch", (32, 1, 0.5, 0.5), "seed must be a whole number from 0 to 4294967295, got 0.5."),
    ]:
        with pytest.raises(AppError, match=re.escape(message)):
            client.predict([photo] if endpoint == "/describe_batch" else photo, *settings, api_name=endpoint)
    description, _ = client.predict(photo, 5.0, 2, 0.0, api_name="/describe")  # whole floats are whole numbers
    assert description == generate(tiny_model, tiny_processor, photo_files[:1], max_new_tokens=5, num_beams=2)[0]


def test_upload_limit_is_enforced_by_the_server(space_url, tmp_path):
    """max_file_size is checked by the server too, not only by well-behaved clients."""
    response = httpx.post(
        f"{space_url}gradio_api/upload", files={"files": ("big.jpg", b"\xff" * (10 * 1024 * 1024 + 1))}, timeout=60
    )
    assert response.status_code == 413


def load_app(folder: Path):
    spec = importlib.util.spec_from_file_location("moda_space_app", folder / "app.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as an import would: the app's dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def test_model_defaults_to_the_published_repo_and_other_hub_code_needs_consent(tmp_path, monkeypatch):
    """The published repo and local folders load; another Hub repo's code runs only with MODA_TRUST_REMOTE_CODE=1."""
    staged = load_app(stage_space(tmp_path / "space", "someone/moda"))
    monkeypatch.delenv("MODA_MODEL", raising=False)
    monkeypatch.delenv("MODA_TRUST_REMOTE_CODE", raising=False)
    assert staged.model_id() == "someone/moda"
    for trusted in ("someone/moda", str(tmp_path)):
        monkeypatch.setenv("MODA_MODEL", trusted)
        assert staged.model_id() == trusted
    monkeypatch.setenv("MODA_MODEL", "stranger/moda")
    with pytest.raises(SystemExit, match=r"not the model this Space was published for \(someone/moda\).*"
                                         r"MODA_TRUST_REMOTE_CODE=1"):
        staged.model_id()
    monkeypatch.setenv("MODA_TRUST_REMOTE_CODE", "1")
    assert staged.model_id() == "stranger/moda"

    monkeypatch.delenv("MODA_MODEL")
    with pytest.raises(SystemExit, match="Set MODA_MODEL"):
        load_app(APP.parent).model_id()  # the repository's own space/ names no model


def cli_default(checkpoint: Path, paths: list[Path]) -> tuple[list[str], list[str]]:
    """What `moda describe`'s default writes (int8, caption vocabulary, lean loop, drafts for a single image), one
    photo at a time and in one batch."""
    model, processor = load_model(str(checkpoint), fast="int8")
    images = [load_rgb_image(path) for path in paths]
    options = {"fast": True, "max_new_tokens": 32, "num_beams": 1, "do_sample": False}
    return (
        describe_images(model, processor, images, batch_size=1, **options),
        describe_images(model, processor, images, batch_size=len(images), **options),
    )


def test_default_space_writes_what_the_cli_default_writes(fast_checkpoint, tiny_model, tiny_processor, photo_files,
                                                          tmp_path):
    """Served as on a Space (the repository cannot be imported), the default runs the fast path from the
    checkpoint's own code, one photo and a batch alike."""
    single, batch = cli_default(fast_checkpoint, photo_files)
    assert single != generate(tiny_model, tiny_processor, photo_files, max_new_tokens=32)
    with serve_space(fast_checkpoint, tmp_path) as url:
        client = Client(url, verbose=False)
        assert [
            client.predict(handle_file(str(path)), 32, 1, 0.0, api_name="/describe")[0] for path in photo_files
        ] == single
        gallery, _, _ = client.predict(
            [handle_file(str(path)) for path in photo_files], 32, 1, 0.0, api_name="/describe_batch"
        )
        assert [item["caption"] for item in gallery] == batch


def test_describer_sets_up_the_cli_fast_path(fast_checkpoint, photo_files):
    """int8 layers, the caption vocabulary's head, drafts for single greedy photos only. (In this process the
    repository's MODA classes stand in for the checkpoint's code; the served test above runs the checkpoint's.)"""
    app = load_app(APP.parent)
    describer = app.Describer(str(fast_checkpoint))
    decoder_layer = describer.model.language_model.model.decoder.layers[0]
    assert "quantized" in type(decoder_layer.fc1).__module__
    assert type(describer.model.language_model.get_output_embeddings()).__name__ == "ShortlistHead"
    asked = []
    count_draft_calls(describer.model.caption_drafter, asked)
    photos = [describer.open(str(path), path.name) for path in photo_files]
    describer(photos[:1], 32, 1, 0.0)
    assert asked, "a single greedy photo checks the caption drafts"
    asked.clear()
    describer(photos, 32, 1, 0.0)
    describer(photos[:1], 8, 3, 0.0)  # beams: int8 generate
    assert not asked, "batches and beam search do not"

    exact = app.Describer(str(fast_checkpoint), "none")
    assert exact.generate == exact.model.generate
    assert "quantized" not in type(exact.model.language_model.model.decoder.layers[0].fc1).__module__
    with pytest.raises(ValueError, match="mode must be one of"):
        app.Describer(str(fast_checkpoint), "int4")


def test_space_falls_back_to_generate_for_checkpoint_code_without_the_fast_path(
    checkpoint_before_layout, photo_files, tmp_path
):
    """A checkpoint whose code predates the fast path methods still serves, with fp32 `generate` (served: in
    this process the repository's own MODA classes would stand in for the checkpoint's code)."""
    with serve_space(checkpoint_before_layout, tmp_path) as url:
        description, _ = Client(url, verbose=False).predict(
            handle_file(str(photo_files[0])), 32, 1, 0.0, api_name="/describe"
        )
    model = MODAForConditionalGeneration.from_pretrained(checkpoint_before_layout).eval()
    processor = MODAProcessor.from_pretrained(checkpoint_before_layout)
    assert description == generate(model, processor, photo_files[:1], max_new_tokens=32)[0]
    assert "predates MODA's CPU fast path" in (tmp_path / "app.log").read_text()
