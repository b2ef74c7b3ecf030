import json
import os
import subprocess
from pathlib import Path

import pytest
from datasets import Image, load_from_disk

from moda.distill import pipeline as distill
from moda.demo.catalog import make_catalog
from moda.demo.backbones import train_bpe_tokenizer
from moda.distill.pipeline import DistillArguments, ScriptedBackend, prompt_i, prompt_ii, read_catalog
from moda.distill.guard import DescriptionGuard
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
    assert summary["step1"] == {"done": 5, "retried": 3, "failed": 1, "reasons": {"no JSON object": 1}}
    assert summary["step2"] == {"done": 4, "retried": 1, "failed": 1, "reasons": {"empty answer": 1}}
    assert json.loads((tmp_path / "summary.json").read_text()) == summary

    dataset = load_from_disk(str(tmp_path / "dataset"))
    assert sorted(dataset["ProductId"]) == sorted(ids[:2] + ids[4:])
    assert run(catalog, tmp_path, logged(step1, asked := []), logged(step2, asked)) == summary and not asked


def test_missing_image_is_recorded_not_fatal(catalog, tmp_path):
    text = catalog.read_text().splitlines()
    broken = tmp_path / "fashion.csv"
    broken.write_text("\n".join(text[:2] + [text[2].replace(".jpg", "_gone.jpg")]) + "\n")
    summary = run(broken, tmp_path / "out", {"*": GOOD}, {"*": GOOD}, images=str(catalog.parent))
    assert summary["step1"]["failed"] == 1
    assert list(summary["step1"]["reasons"])[0].startswith("image not found: ")
    assert summary["dataset"]["rows"] == 1


# ---------------------------------------------------------------------------------------------------- outputs
def test_outputs_have_the_training_columns(catalog, tmp_path):
    ocr = '{"description": "A plain item with \\"JUST DO IT\\" printed."}'
    run(catalog, tmp_path, {"*": GOOD}, {"*": ocr}, limit=3)
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
    records = distill.read_journal(tmp_path / "a", "step1").values()
    assert all(len(record["raw"]) == 2 and record["reason"] for record in records)

    args.out = str(tmp_path / "b")
    real_step2 = distill.backend_factories(args, distill.PartialState().device)["step2"]
    summary = distill.distill(args, {"step1": lambda: ScriptedBackend({"*": GOOD}), "step2": real_step2})
    assert summary["step1"]["done"] == 3 and summary["step2"]["failed"] == 3
    assert all(len(record["raw"]) == 2 for record in distill.read_journal(tmp_path / "b", "step2").values())


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
