"""moda.fast_path_files: the fast path's files for a model trained outside train_hf.py, from any caption source."""

import json
import shutil

import pytest
from conftest import FASHION_TEXTS, make_photo

from moda.describe import load_model
from moda.demo.catalog import make_catalog
from moda.fast_path_files import main, write_fast_path_files
from modeling_moda.caption_vocabulary import build_caption_vocabulary, load_caption_vocabulary
from modeling_moda.fast_inference import ShortlistHead
from processing.data import load_fashion_dataset


@pytest.fixture
def trained_elsewhere(tiny_checkpoint, tmp_path):
    """A saved MODA without the fast path's files, as a user's own Trainer script leaves it."""
    return shutil.copytree(tiny_checkpoint, tmp_path / "model")


def test_written_files_switch_on_the_shortlist_and_the_drafts(trained_elsewhere, tiny_processor, caplog):
    before, _ = load_model(str(trained_elsewhere), fast="int8")
    assert not isinstance(before.language_model.get_output_embeddings(), ShortlistHead)
    assert before.caption_drafter is None
    # without the files the fast path says so, and how to write them
    assert "no caption_vocabulary.json or caption_drafts.json" in caplog.text
    assert "python -m moda.fast_path_files" in caplog.text

    captions = FASHION_TEXTS[:4]
    write_fast_path_files(trained_elsewhere, ["", *captions, "   "])  # blank lines are no captions
    assert load_caption_vocabulary(trained_elsewhere) == build_caption_vocabulary(tiny_processor.tokenizer, captions)
    after, _ = load_model(str(trained_elsewhere), fast="int8")
    assert isinstance(after.language_model.get_output_embeddings(), ShortlistHead)
    first_word = tiny_processor.tokenizer(captions[0], add_special_tokens=False)["input_ids"][0]
    assert after.caption_drafter.draft([tiny_processor.tokenizer.bos_token_id], 1) == [first_word]


def test_cli_reads_a_text_file(trained_elsewhere, tmp_path, tiny_processor, capsys):
    captions = tmp_path / "captions.txt"
    captions.write_text("\n".join(FASHION_TEXTS[:6]) + "\n")
    main(["--model", str(trained_elsewhere), "--captions", str(captions)])
    assert "caption_drafts.json" in capsys.readouterr().out
    assert load_caption_vocabulary(trained_elsewhere) == build_caption_vocabulary(
        tiny_processor.tokenizer, FASHION_TEXTS[:6]
    )


def test_cli_reads_a_training_jsonl_and_a_catalogue(trained_elsewhere, tmp_path, tiny_processor):
    rows = [{"image": f"{index}.png", "description": text} for index, text in enumerate(FASHION_TEXTS[:3])]
    for index in range(3):
        make_photo(index).save(tmp_path / f"{index}.png")
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    main(["--model", str(trained_elsewhere), "--captions", str(tmp_path / "data.jsonl")])
    assert load_caption_vocabulary(trained_elsewhere) == build_caption_vocabulary(
        tiny_processor.tokenizer, FASHION_TEXTS[:3]
    )

    catalogue = make_catalog(tmp_path / "catalogue", 6, seed=0, image_size=32).parent
    main(["--model", str(trained_elsewhere), "--captions", str(catalogue)])
    descriptions = load_fashion_dataset(catalogue)["description"]
    assert load_caption_vocabulary(trained_elsewhere) == build_caption_vocabulary(
        tiny_processor.tokenizer, descriptions
    )


@pytest.mark.parametrize(
    "model, captions, message",
    [
        ("missing", "captions.txt", "is not a folder"),
        ("model", "empty.txt", "no captions"),
        ("model", "absent.txt", "absent.txt"),
    ],
)
def test_cli_errors_name_the_problem(trained_elsewhere, tmp_path, model, captions, message):
    (tmp_path / "captions.txt").write_text(FASHION_TEXTS[0] + "\n")
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(SystemExit, match=message):
        main(["--model", str(tmp_path / model), "--captions", str(tmp_path / captions)])
    assert not (trained_elsewhere / "caption_vocabulary.json").exists()
