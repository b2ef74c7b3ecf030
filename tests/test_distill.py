import csv
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from datasets import Image, load_from_disk

from moda.demo.backbones import train_bpe_tokenizer
from moda.demo.catalog import make_catalog
from moda.distill import pipeline as distill
from moda.distill.guard import DescriptionGuard
from moda.distill.pipeline import DistillArguments, ScriptedBackend, dataset_card, prompt_i, prompt_ii, read_catalog
from processing.data import ImageFinder

REPO = Path(__file__).resolve().parents[1]
SEED = REPO.parent / "shared" / "seeds" / "000_47619fac80627e17.txt"
GOOD = '{"description": "A plain item for everyday wear."}'
TSHIRT = {"Gender": "Men", "Category": "Apparel", "SubCategory": "Topwear", "ProductType": "Tshirts",
            "Colour": "Red", "Usage": "Casual"}  # fmt: skip


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Path:
    return make_catalog(tmp_path_factory.mktemp("catalog"), n=6, seed=0, image_size=32)


def run(catalog: Path, out: Path, step1, step2, **options) -> dict:
    """One pipeline run with scripted teachers; `step1`/`step2` are whatever ScriptedBackend takes."""
    args = DistillArguments(catalog=str(catalog), out=str(out), batch_size=2, **options)
    return distill.distill(args, {"step1": lambda: ScriptedBackend(step1), "step2": lambda: ScriptedBackend(step2)})


def logged(answers, log: list, stop_after: int | None = None):
    """Scripted answers that log each item asked and raise KeyboardInterrupt (Ctrl-C) after `stop_after` answers."""
    backend = ScriptedBackend(answers)

    def answer(prompt, image, item_id, attempt):
        log.append(item_id)
        if stop_after is not None and len(log) > stop_after:
            raise KeyboardInterrupt
        return backend.generate([prompt], [image], ids=[item_id], attempt=attempt)[0]

    return answer


def journal_ids(out: Path, step: str) -> list[str]:
    return [json.loads(line)["ProductId"] for path in out.glob(f"{step}.rank*.jsonl") for line in path.open()]


def copy_catalog(catalog: Path, to: Path) -> tuple[Path, dict[str, Path]]:
    """A copy of the catalogue to break and mend, and its image file per ProductId."""
    shutil.copytree(catalog.parent, to)
    return to / catalog.name, {item["ProductId"]: to / item["Image"] for item in read_catalog(catalog)}


def write_catalog(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_bomb(path: Path) -> None:
    """A valid PNG declaring 20000 x 20000 pixels (PIL refuses over 2 x MAX_IMAGE_PIXELS), 50 KB on disk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    side = 20000
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit grey
    pixels = zlib.compress(bytes(side // 8 + 1) * side, 9)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))


def fates(out: Path) -> dict[str, str]:
    """Where each item ended: `dataset`, or the step that left it out and the reason's kind; asserts that no item
    is in both, or twice in either."""
    listed = [(product_id, "dataset") for product_id in load_from_disk(str(out / "dataset"))["ProductId"]]
    for line in (out / "left_out.jsonl").open():
        entry = json.loads(line)
        listed.append((entry["ProductId"], f"{entry['step']}: {entry['reason'].split(':')[0]}"))
    assert len({product_id for product_id, _ in listed}) == len(listed)
    return dict(listed)


# -------------------------------------------------------------------------------------------------------- prompts
def test_prompt_i_is_the_seeds_text():
    sent = prompt_i()
    assert sent == (REPO / "moda" / "distill" / "prompts" / "prompt_i.txt").read_text()
    assert sent.startswith("<|user|>\n\n<|image_1|>\n") and sent.endswith("<|end|>\n<|assistant|>\n")
    if not SEED.exists():
        pytest.skip("shared seed folder absent")
    seed = SEED.read_text(encoding="utf-8")
    start = seed.index("```html\n", seed.index("### 1. Analyzing the Image with Phi-3 Vision")) + len("```html\n")
    assert sent == seed[start : seed.index("\n```", start)] + "\n"


def test_prompt_ii_carries_description_and_metadata(catalog):
    item = read_catalog(catalog)[0]
    prompt = prompt_ii("A red shirt with 'LOGO' print.", item)
    assert prompt.startswith("<|user|>\n") and prompt.endswith("<|end|>\n<|assistant|>\n")
    assert "A red shirt with 'LOGO' print." in prompt
    for column in distill.METADATA.values():
        assert f": {item[column]}\n" in prompt
    assert "$" not in prompt


def test_prompt_ii_leaves_out_empty_metadata(tmp_path):
    """An empty fashion.csv cell (or a short row, which csv reads as None) must not reach the teacher as a value."""
    (tmp_path / "fashion.csv").write_text(
        ",".join(distill.KAGGLE_COLUMNS) + "\n1,Men,Apparel,Topwear,Tshirts,,Casual,Tee,1.jpg,u\n2,Men,Apparel\n"
    )
    blank_colour, short_row = read_catalog(tmp_path / "fashion.csv")
    prompt = prompt_ii("A red shirt.", blank_colour)
    assert "- Gender: Men\n" in prompt and "- Usage: Casual\n" in prompt and "- Colour:" not in prompt
    prompt = prompt_ii("A red shirt.", short_row)
    assert "- Category: Apparel\n\nRewrite" in prompt and "None" not in prompt


# ------------------------------------------------------------------------------------------------------ catalogue
def test_missing_columns_raise(tmp_path):
    (tmp_path / "fashion.csv").write_text("ProductId,Image\n1,a.jpg\n")
    with pytest.raises(ValueError, match="Colour"):
        read_catalog(tmp_path / "fashion.csv")


def test_images_are_found_by_name_anywhere_below(catalog, tmp_path):
    item = read_catalog(catalog)[0]
    finder = ImageFinder(catalog.parent)
    nested = catalog.parent / item["Image"]
    assert finder(item["Image"]) == nested.resolve()
    assert finder(nested.name) == nested.resolve()  # Kaggle's bare file name, file nested in folders
    assert finder("nope.jpg") is None


# --------------------------------------------------------------------------------------------------------- guard
@pytest.mark.parametrize(
    ("description", "kinds"),
    [
        ("A navy blue women's top with lace trim, ideal for casual wear.", []),
        ('A navy blue women\'s top with "JUST DO IT" printed.', ["quoted_text", "all_caps"]),
        ("A navy blue women's top by Zara.", ["brand_like"]),
        ("A navy blue women's top, size 42.", ["digits"]),
        ("A red women's top.", ["colour_conflict"]),
        ("A navy blue men's top.", ["gender_conflict"]),
        ("A navy blue women's t-shirt.", ["product_type_conflict"]),
    ],
)
def test_guard_flags_ocr_and_contradictions(description, kinds):
    metadata = {"Gender": "Women", "Category": "Apparel", "SubCategory": "Topwear", "ProductType": "Tops",
                "Colour": "Navy Blue", "Usage": "Casual"}  # fmt: skip
    flags = DescriptionGuard(["Tops", "Tshirts", "Jeans"]).flags(description, metadata)
    assert [flag.split(":")[0] for flag in flags] == kinds


# ----------------------------------------------------------------------------------------------- resume, retries
def test_interrupted_run_resumes_with_every_item_once(catalog, tmp_path):
    ids = [item["ProductId"] for item in read_catalog(catalog)]
    step1 = {
        ids[0]: ["no JSON here", GOOD],
        ids[1]: ["", '{"description": "broken', "```json\n{'description': 'A plain item.',}\n```"],
        ids[2]: "I cannot see an item.",
        "*": GOOD,
    }
    step2 = {ids[3]: "", "*": GOOD}
    asked = []
    with pytest.raises(KeyboardInterrupt):  # batch 1 takes 5 answers (retries), batch 2 is cut in its 2nd
        run(catalog, tmp_path, logged(step1, asked, stop_after=6), logged(step2, []))
    assert journal_ids(tmp_path, "step1") == ids[:2]
    with open(tmp_path / "step1.rank0.jsonl", "a") as file:
        file.write('{"ProductId": "' + ids[2])  # a line torn by a kill

    asked1, asked2 = [], []
    summary = run(catalog, tmp_path, logged(step1, asked1), logged(step2, asked2))
    assert set(asked1) == set(ids[2:]) and asked1.count(ids[2]) == 3  # finished items are not asked again
    assert sorted(journal_ids(tmp_path, "step1")) == sorted(ids)
    assert sorted(journal_ids(tmp_path, "step2")) == sorted(ids[:2] + ids[3:])
    records = distill.read_journal(tmp_path, "step1")
    assert records[ids[1]]["raw"][-1].startswith("```json") and records[ids[1]]["description"] == "A plain item."
    assert records[ids[2]]["status"] == "failed" and records[ids[2]]["reason"] == "no JSON object"
    assert len(records[ids[2]]["raw"]) == 3
    assert summary["step1"] == {
        "done": 5, "retried": 3, "failed": 1, "reasons": {"no JSON object": 1}, "teachers": {"scripted": 6}
    }  # fmt: skip
    assert summary["step2"] == {
        "done": 4, "retried": 1, "failed": 1, "reasons": {"empty answer": 1}, "teachers": {"scripted": 5}
    }  # fmt: skip
    assert json.loads((tmp_path / "summary.json").read_text()) == summary

    dataset = load_from_disk(str(tmp_path / "dataset"))
    assert sorted(dataset["ProductId"]) == sorted(ids[:2] + ids[4:])
    asked = []
    assert run(catalog, tmp_path, logged(step1, asked), logged(step2, asked), retry_failed=False) == summary
    assert not asked
    run(catalog, tmp_path, logged(step1, asked), logged(step2, asked))  # by default, the failed items again
    assert sorted(asked) == sorted([ids[2]] * 3 + [ids[3]] * 3)


def test_missing_image_is_recorded_not_fatal(catalog, tmp_path):
    text = catalog.read_text().splitlines()
    broken = tmp_path / "fashion.csv"
    broken.write_text("\n".join(text[:2] + [text[2].replace(".jpg", "_gone.jpg")]) + "\n")
    summary = run(broken, tmp_path / "out", {"*": GOOD}, {"*": GOOD}, images=str(catalog.parent))
    assert summary["step1"]["failed"] == 1
    assert summary["step1"]["reasons"] == {"image not found": 1}
    assert summary["dataset"] == {"rows": 1, "left_out": {"step1": 1}}
    [entry] = [json.loads(line) for line in (tmp_path / "out" / "left_out.jsonl").open()]
    assert entry["step"] == "step1" and entry["reason"].endswith("_gone.jpg")


def test_one_bad_item_never_stops_the_run(catalog, tmp_path):
    """A bomb, a corrupt file, an answer that broke the parser and a teacher that raises on one item: each fails
    alone, with its reason, and the rest of its batch goes on."""
    csv_path, images = copy_catalog(catalog, tmp_path / "catalog")
    ids = list(images)
    write_bomb(images[ids[0]])
    images[ids[1]].write_bytes(b"\xff\xd8\xff not a JPEG")

    def step1(prompt, image, item_id, attempt):
        if item_id == ids[3]:
            raise RuntimeError("CUDA error: device-side assert triggered")
        return '{{"description": "A plain item."}}' if item_id == ids[2] else GOOD

    summary = run(csv_path, tmp_path / "out", step1, {"*": GOOD})
    assert summary["step1"]["reasons"] == {"unreadable image": 2, "teacher error": 1}
    assert summary["step1"]["done"] == 3 and summary["dataset"]["rows"] == 3
    records = distill.read_journal(tmp_path / "out", "step1")
    assert "too many pixels" in records[ids[0]]["reason"] and records[ids[0]]["teacher"] is None
    assert records[ids[3]]["reason"] == "teacher error: RuntimeError: CUDA error: device-side assert triggered"
    assert records[ids[2]]["description"] == "A plain item."
    assert fates(tmp_path / "out") == {
        ids[0]: "step1: unreadable image", ids[1]: "step1: unreadable image", ids[2]: "dataset",
        ids[3]: "step1: teacher error", ids[4]: "dataset", ids[5]: "dataset",
    }  # fmt: skip


def test_catalogue_rows_with_missing_or_extra_cells(catalog, tmp_path):
    """csv reads a short row's missing cells as None and extra cells under the key None: neither may stop a run."""
    rows = read_catalog(catalog)[:3]
    order = ["ProductId", "Image", *[column for column in rows[0] if column not in ("ProductId", "Image")]]
    lines = [",".join(order)] + [",".join(row[column] for column in order) for row in rows]
    lines[1] = ",".join(lines[1].split(",")[:4])  # Colour, Usage ... missing
    lines[2] += ",an extra cell"
    (tmp_path / "fashion.csv").write_text("\n".join(lines) + "\n")
    summary = run(tmp_path / "fashion.csv", tmp_path / "out", {"*": GOOD}, {"*": GOOD}, images=str(catalog.parent))
    dataset = load_from_disk(str(tmp_path / "out" / "dataset"))
    assert summary["dataset"]["rows"] == 3 and dataset[0]["Colour"] == "" and dataset[0]["Image"] == rows[0]["Image"]


def test_failed_items_are_tried_again_once_fixed(catalog, tmp_path):
    """A missing image and a teacher that answered badly: fixed, a plain re-run completes both, though the failed
    records sit in another process's shard."""
    csv_path, images = copy_catalog(catalog, tmp_path / "catalog")
    ids = list(images)
    image = images[ids[0]].read_bytes()
    images[ids[0]].unlink()
    out = tmp_path / "out"
    summary = run(csv_path, out, {ids[1]: "no JSON", "*": GOOD}, {"*": GOOD}, retries=0)
    assert summary["step1"]["reasons"] == {"image not found": 1, "no JSON object": 1}
    (out / "step1.rank0.jsonl").rename(out / "step1.rank1.jsonl")  # as if a second process had done them

    images[ids[0]].write_bytes(image)
    asked = []
    summary = run(csv_path, out, logged({"*": GOOD}, asked), {"*": GOOD}, retries=0)
    assert sorted(asked) == sorted(ids[:2])
    assert summary["step1"]["failed"] == 0 and summary["dataset"]["rows"] == 6
    records = distill.read_journal(out, "step1")
    assert records[ids[0]]["round"] == 2 and records[ids[2]]["round"] == 1


def test_answer_with_a_line_separator_is_done_once(catalog, tmp_path):
    """U+2028 inside an answer is no line break of the journal: the item stays done."""
    summary = run(catalog, tmp_path, {"*": '{"description": "A plain item.\u2028"}'}, {"*": GOOD}, limit=2)
    assert summary["step1"]["done"] == 2
    asked = []
    run(catalog, tmp_path, logged({"*": GOOD}, asked), logged({"*": GOOD}, asked), limit=2)
    assert not asked


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--retries", "-1"], "--retries must be 0 or more, got -1"),
        (["--batch_size", "0"], "--batch_size must be 1 or more, got 0"),
        (["--max_new_tokens", "0"], "--max_new_tokens must be 1 or more"),
        (["--limit", "0"], "--limit must be 1 or more"),
        (["--backend", "gpt"], "--backend must be `transformers` or `scripted:<answers.json>`"),
        (["--backend", "scripted:nowhere.json"], "no such answers file"),
        (["--images", "nowhere"], "--images nowhere: no such folder"),
    ],
)
def test_bad_arguments_are_refused(catalog, tmp_path, capsys, option, message):
    with pytest.raises(SystemExit) as exit:
        distill.main(["--catalog", str(catalog), "--out", str(tmp_path / "out"), *option])
    assert exit.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_unusable_files_end_the_cli_with_a_message(catalog, tmp_path):
    (tmp_path / "fashion.csv").write_text("ProductId,Image\n1,a.jpg\n")
    with pytest.raises(SystemExit, match="lacks catalogue column"):
        distill.main(["--catalog", str(tmp_path / "fashion.csv"), "--out", str(tmp_path / "out")])
    (tmp_path / "answers.json").write_text('{"step2": {}}')
    answers = f"scripted:{tmp_path / 'answers.json'}"
    with pytest.raises(SystemExit, match="not a script of answers per step"):
        distill.main(["--catalog", str(catalog), "--out", str(tmp_path / "out"), "--backend", answers])


# ---------------------------------------------------------------------------------------------------------- guard acts
def test_guard_leaves_flagged_descriptions_out_unless_kept(catalog, tmp_path):
    """Refined answers that contradict the metadata or quote text off the image stay out of the default dataset,
    counted per flag kind; `--keep_flagged` keeps them, flags and all, without asking the teachers again."""
    rows = read_catalog(catalog)
    rows[0]["Colour"] = "Red"
    csv_path = write_catalog(tmp_path / "fashion.csv", rows)
    ids = [row["ProductId"] for row in rows]
    step2 = {
        ids[0]: '{"description": "A green item for everyday wear."}',
        ids[1]: '{"description": "A plain item with \\"JUST DO IT\\" printed on it."}',
        "*": GOOD,
    }
    out = tmp_path / "out"
    summary = run(csv_path, out, {"*": GOOD}, step2, images=str(catalog.parent))
    flags = {"colour_conflict": 1, "quoted_text": 1, "all_caps": 1}
    assert summary["guard"] == {"checked": 6, "flagged": 2, "flags": flags, "keep_flagged": False}
    assert summary["dataset"] == {"rows": 4, "left_out": {"guard": 2}}
    assert fates(out) == {ids[0]: "guard: colour_conflict", ids[1]: "guard: quoted_text"} | dict.fromkeys(
        ids[2:], "dataset"
    )
    dataset = load_from_disk(str(out / "dataset"))
    assert all(row_flags == [] for row_flags in dataset["flags"])
    assert sum(1 for _ in (out / "descriptions.jsonl").open()) == 4
    card = dataset_card(summary, "someone/descriptions").text
    flagged = "2 of the 6 refined descriptions (colour_conflict: 1, quoted_text: 1, all_caps: 1) were flagged"
    assert f"{flagged} and left out" in " ".join(card.split())
    assert "The dataset has 4 rows." in card

    asked = []
    summary = run(csv_path, out, logged({"*": GOOD}, asked), logged(step2, asked), images=str(catalog.parent),
                  keep_flagged=True)  # fmt: skip
    assert not asked and summary["dataset"] == {"rows": 6, "left_out": {}} and summary["guard"]["keep_flagged"]
    dataset = load_from_disk(str(out / "dataset"))
    kinds = {row["ProductId"]: [flag.split(":")[0] for flag in row["flags"]] for row in dataset}
    assert kinds == {ids[0]: ["colour_conflict"], ids[1]: ["quoted_text", "all_caps"]} | {key: [] for key in ids[2:]}
    assert "were flagged and kept" in dataset_card(summary, "someone/descriptions").text


def test_card_of_a_scripted_run_names_no_model(catalog, tmp_path):
    summary = run(catalog, tmp_path, {"*": GOOD}, {"*": GOOD}, limit=2)
    card = dataset_card(summary, "someone/descriptions").text
    assert "Phi-3" not in card and "microsoft" not in card
    assert "to `scripted` (2 items)" in card and "no\nmodel wrote those answers" in card


# ---------------------------------------------------------------------------------------------------- outputs
def test_outputs_have_the_training_columns(catalog, tmp_path):
    ocr = '{"description": "A plain item with \\"JUST DO IT\\" printed."}'
    run(catalog, tmp_path, {"*": GOOD}, {"*": ocr}, limit=3, keep_flagged=True)
    dataset = load_from_disk(str(tmp_path / "dataset"))
    assert isinstance(dataset.features["image"], Image)
    expected = {"image", "description", "raw_step1", "raw_step2", "flags", "Gender", "Colour", "catalog_description"}
    assert expected <= set(dataset.column_names)
    row = dataset[0]
    assert row["image"].size == (32, 32) and row["description"] == 'A plain item with "JUST DO IT" printed.'
    assert row["raw_step2"] == ocr and row["raw_step1"] == GOOD
    assert [flag.split(":")[0] for flag in row["flags"]] == ["quoted_text", "all_caps"]
    lines = [json.loads(line) for line in (tmp_path / "descriptions.jsonl").open()]
    assert len(lines) == 3 and Path(lines[0]["image"]).is_absolute() and Path(lines[0]["image"]).is_file()
    assert lines[0]["metadata"]["ProductId"] == row["ProductId"]


def test_output_trains_with_train_hf_without_conversion(catalog, tmp_path, tiny_backbones):
    """`train_hf.py --dataset OUT/dataset` trains on the pipeline's output as it is."""
    import train_hf
    from transformers import AutoModel

    refined = {row["ProductId"]: json.dumps({"description": row["description"]}) for row in read_catalog(catalog)}
    run(catalog, tmp_path / "distilled", {"*": GOOD}, refined)
    vision, text = tiny_backbones
    metrics = train_hf.main([
        "--dataset", str(tmp_path / "distilled" / "dataset"), "--vision_model", str(vision), "--text_model", str(text),
        "--output_dir", str(tmp_path / "run"), "--max_steps", "2", "--per_device_train_batch_size", "2",
        "--gradient_accumulation_steps", "1", "--projector_hidden_size", "16", "--generation_max_new_tokens", "4",
        "--dataloader_pin_memory", "false",
    ])
    assert sum(metrics["rows"].values()) == len(read_catalog(catalog))
    assert metrics["train"]["train_loss"] > 0
    AutoModel.from_pretrained(tmp_path / "run", trust_remote_code=True)


def test_push_to_hub_uploads_dataset_and_card(catalog, tmp_path, monkeypatch):
    run(catalog, tmp_path, {"*": GOOD}, {"*": GOOD}, limit=2)
    pushed = {}
    monkeypatch.setattr(
        "datasets.Dataset.push_to_hub", lambda self, repo_id, **kw: pushed.update(data=(repo_id, len(self)))
    )
    monkeypatch.setattr(
        "huggingface_hub.DatasetCard.push_to_hub", lambda self, repo_id, **kw: pushed.update(card=(repo_id, self, kw))
    )
    distill.push_to_hub(tmp_path, "someone/moda-descriptions")
    assert pushed["data"] == ("someone/moda-descriptions", 2)
    repo_id, card, options = pushed["card"]
    assert options["repo_type"] == "dataset"
    assert card.data.task_categories == ["image-to-text"]
    assert "| 2: description + metadata -> refined | 2 | 0 | 0 |" in card.text
    assert "Remove every piece of text read off the image" in card.text


def test_dry_run_prints_prompts_and_loads_nothing(catalog, tmp_path, capsys):
    distill.main(["--catalog", str(catalog), "--out", str(tmp_path / "out"), "--dry-run", "--vision-model", "/nope"])
    printed = capsys.readouterr().out
    assert printed.count(prompt_i()) == 2 and "<Step-1 description>" in printed
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------- real transformers path
@pytest.fixture(scope="module")
def tiny_teachers(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny random Llava (CLIP vision + Llama text) with its processor, and a tiny OPT with its tokenizer."""
    from transformers import CLIPImageProcessorPil, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration
    from transformers import LlavaProcessor, OPTConfig, OPTForCausalLM

    root = tmp_path_factory.mktemp("teachers")
    tokenizer = train_bpe_tokenizer([prompt_i(), prompt_ii("A red shirt.", TSHIRT)] * 4)
    tokenizer.add_tokens(["<image>"], special_tokens=True)
    vision = LlavaConfig(
        vision_config={"model_type": "clip_vision_model", "hidden_size": 16, "intermediate_size": 32,
                       "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 32, "patch_size": 16},
        text_config=LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
    )  # fmt: skip
    LlavaForConditionalGeneration(vision).save_pretrained(root / "vision")
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    LlavaProcessor(image_processor, tokenizer, patch_size=16, vision_feature_select_strategy="default",
                   num_additional_image_tokens=1).save_pretrained(root / "vision")  # fmt: skip
    text = OPTConfig(vocab_size=len(tokenizer), hidden_size=16, word_embed_proj_dim=16, ffn_dim=32, num_hidden_layers=1,
                     num_attention_heads=2, max_position_embeddings=2048)  # fmt: skip
    OPTForCausalLM(text).save_pretrained(root / "text")
    tokenizer.save_pretrained(root / "text")
    return root / "vision", root / "text"


def test_transformers_teachers_run_end_to_end(catalog, tiny_teachers, tmp_path):
    vision, text = (str(path) for path in tiny_teachers)
    args = DistillArguments(catalog=str(catalog), out=str(tmp_path / "a"), vision_model=vision, text_model=text,
                            batch_size=2, retries=1, max_new_tokens=6, limit=3)  # fmt: skip
    summary = distill.distill(args)  # gibberish answers: every item fails, with its reason, after a retry
    assert summary["step1"]["failed"] == 3 and summary["step1"]["retried"] == 3 and summary["dataset"]["rows"] == 0
    assert summary["step1"]["teachers"] == {vision: 3} and summary["step2"]["teachers"] == {}
    records = distill.read_journal(tmp_path / "a", "step1").values()
    assert all(len(record["raw"]) == 2 and record["reason"] for record in records)

    args.out = str(tmp_path / "b")
    real_step2 = distill.backend_factories(args, distill.PartialState().device)["step2"]
    summary = distill.distill(args, {"step1": lambda: ScriptedBackend({"*": GOOD}), "step2": real_step2})
    assert summary["step1"]["done"] == 3 and summary["step2"]["failed"] == 3
    assert all(len(record["raw"]) == 2 for record in distill.read_journal(tmp_path / "b", "step2").values())
    assert summary["step1"]["teachers"] == {"scripted": 3} and summary["step2"]["teachers"] == {text: 3}
    card = dataset_card(summary, "someone/descriptions").text
    assert f"to `{text}` (3 items)" in card and vision not in card and "Phi-3" not in card


# ------------------------------------------------------------------------------------------------------- scale out
@pytest.mark.slow
def test_accelerate_launch_splits_items_between_processes(catalog, tmp_path):
    """Two CPU processes (torchrun via `accelerate launch --multi_gpu`, joined over gloo): ~20 s."""
    answers = tmp_path / "answers.json"
    answers.write_text(json.dumps({"step1": {"*": GOOD}, "step2": {"*": GOOD}}))
    command = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "moda.distill",
               "--catalog", str(catalog), "--out", str(tmp_path / "out"),
               "--backend", f"scripted:{answers}"]  # fmt: skip
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    shards = {path.name: len(path.read_text().splitlines()) for path in (tmp_path / "out").glob("step1.rank*.jsonl")}
    assert shards == {"step1.rank0.jsonl": 3, "step1.rank1.jsonl": 3}
    assert sorted(journal_ids(tmp_path / "out", "step2")) == sorted(item["ProductId"] for item in read_catalog(catalog))
    assert len(load_from_disk(str(tmp_path / "out" / "dataset"))) == 6
    assert "step1" in result.stdout and result.stdout.count("dataset: 6 rows") == 1  # the main process merges


# -------------------------------------------------------------------------------------------------- fault injection
KILLED_RUNS = """
import json, os, signal, sys, traceback

import datasets

from moda.distill import pipeline

countdown = 0  # SIGKILL the run at its countdown-th teacher call, journal write or dataset save


def killing(function, tear=False):
    def wrapper(*args, **kwargs):
        global countdown
        countdown -= 1
        if countdown == 0:
            if tear:  # as a kill in the middle of a write does: part of the batch on disk
                path, records = args
                text = "".join(json.dumps(record) + "\\n" for record in records)
                with open(path, "a") as file:
                    file.write(text[: len(text) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        return function(*args, **kwargs)

    return wrapper


pipeline.ScriptedBackend.generate = killing(pipeline.ScriptedBackend.generate)
pipeline.append_records = killing(pipeline.append_records, tear=True)
datasets.Dataset.save_to_disk = killing(datasets.Dataset.save_to_disk)
exit_codes = []
for kill_at in map(int, sys.argv[1].split(",")):
    pid = os.fork()  # each run a process of its own, as a re-run is, without importing torch again
    if pid == 0:
        countdown = kill_at
        try:
            pipeline.main(sys.argv[2:])
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    exit_codes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
print(json.dumps(exit_codes))
"""


@pytest.mark.slow
def test_fault_injection_kill_9_and_reruns(tmp_path):
    """Malformed answers of every kind, missing, corrupt and bomb images, a teacher that raises, and SIGKILLs at
    seeded random points: the re-runs end with every item in the dataset or left out with its reason, each once;
    fixing the causes, a re-run completes them. Three runs are killed, each a process forked from one that
    imported the pipeline once."""
    csv_path, images = copy_catalog(make_catalog(tmp_path / "drawn", n=12, seed=1, image_size=32), tmp_path / "c")
    ids = list(images)
    rows = read_catalog(csv_path)
    rows[10]["Colour"] = "Red"
    write_catalog(csv_path, rows)
    jpeg = images[ids[0]].read_bytes()
    images[ids[1]].unlink()
    images[ids[2]].write_bytes(jpeg[: len(jpeg) // 3])  # truncated
    write_bomb(images[ids[3]])
    green = '{"description": "A green item for everyday wear."}'
    quoting = '{"description": "A plain item with \\"JUST DO IT\\" printed on it."}'
    script = {
        "step1": {
            ids[0]: GOOD, ids[1]: GOOD, ids[2]: GOOD, ids[3]: GOOD,
            ids[4]: [None, "   \n"],
            ids[5]: '{{"description": "A plain item."}}',
            ids[6]: ["no JSON here", GOOD],
            ids[7]: ['{"description": "broken', "{description = red}"],
            ids[8]: ['{"caption": "A plain item."}', '{"description": "  "}'],
            ids[9]: GOOD, ids[10]: GOOD, ids[11]: GOOD,
        },
        "step2": {  # nothing for ids[6]: the scripted teacher raises KeyError on it
            ids[0]: GOOD, ids[5]: GOOD, ids[9]: ['{"description": ["red"]}', 5], ids[10]: green, ids[11]: quoting,
        },
    }  # fmt: skip
    answers = tmp_path / "answers.json"
    answers.write_text(json.dumps(script))
    out = tmp_path / "out"
    argv = ["--catalog", str(csv_path), "--out", str(out), "--backend", f"scripted:{answers}", "--batch_size", "2",
            "--retries", "1"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    # A first run has 24 events; with this seed the kills land in a journal write, a teacher call and the save.
    kill_at = ",".join(str(count) for count in random.Random(1).choices(range(1, 21), k=3))
    killed = subprocess.run([sys.executable, "-c", KILLED_RUNS, kill_at, *argv], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert killed.returncode == 0, killed.stderr[-3000:]
    exit_codes = json.loads(killed.stdout.splitlines()[-1])
    assert set(exit_codes) <= {0, -signal.SIGKILL} and -signal.SIGKILL in exit_codes, killed.stderr[-3000:]
    distill.main(argv)

    assert fates(out) == {
        ids[0]: "dataset", ids[1]: "step1: image not found", ids[2]: "step1: unreadable image",
        ids[3]: "step1: unreadable image", ids[4]: "step1: empty answer", ids[5]: "dataset",
        ids[6]: "step2: teacher error", ids[7]: "step1: malformed JSON", ids[8]: "step1: empty description",
        ids[9]: "step2: answer is not text", ids[10]: "guard: colour_conflict", ids[11]: "guard: quoted_text",
    }  # fmt: skip
    for step in distill.STEPS:  # a record per item and round: nothing written twice, torn lines left behind
        records = []
        for path in out.glob(f"{step}.rank*.jsonl"):
            for line in path.read_bytes().splitlines():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        assert len({(record["ProductId"], record["round"]) for record in records}) == len(records)

    for product_id in ids[1:4]:
        images[product_id].write_bytes(jpeg)
    fixed = {step: {product_id: GOOD for product_id in ids} for step in distill.STEPS}
    answers.write_text(json.dumps(fixed))
    distill.main(argv)
    expected = dict.fromkeys(ids, "dataset") | {ids[10]: "guard: colour_conflict", ids[11]: "guard: quoted_text"}
    assert fates(out) == expected
    distill.main([*argv, "--keep_flagged"])
    assert fates(out) == dict.fromkeys(ids, "dataset")
