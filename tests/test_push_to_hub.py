"""push_to_hub.py: staging (model folder, card, Space), the clean-process load check, and the Hub calls (fake API)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gradio
import pytest
from huggingface_hub import ModelCard, SpaceCard
from PIL import Image

import push_to_hub
from moda.clean_process import check_loads_in_clean_process
from modeling_moda import MODAForConditionalGeneration
from modeling_moda.quantized_weights import save_quantized_weights
from push_to_hub import CardInputs, build_model_card, evaluation_scores, read_metrics, upload

MODEL_FILES = {
    "README.md",
    "caption_drafts.json",
    "caption_drafts.py",
    "caption_vocabulary.json",
    "caption_vocabulary.py",
    "chat_template.jinja",
    "config.json",
    "configuration_moda.py",
    "cpu_fast_weights.safetensors",
    "fast_inference.py",
    "generation_config.json",
    "greedy_decoding.py",
    "loss_curve.png",
    "model.safetensors",
    "modeling_moda.py",
    "processing_moda.py",
    "processor_config.json",
    "quantized_weights.py",
    "tokenizer.json",
    "tokenizer_config.json",
}
# As train_hf.py writes it.
METRICS = {
    "rows": {"train": 240, "validation": 30, "test": 30},
    "train": {"train_loss": 1.75, "train_runtime": 20.0, "epoch": 3.0},
    "validation": {"eval_loss": 1.6, "eval_runtime": 1.0, "epoch": 3.0},
    "test": {"test_loss": 1.5, "test_runtime": 1.0, "bleu": 0.25, "rougeL": 0.5, "colour_accuracy": 0.75},
}
# As benchmarks/inference.py --json writes it.
BENCHMARK = {
    "command": "python benchmarks/inference.py --json bench.json",
    "machine": {"device": "cpu", "cpu": "Test CPU", "torch_threads": 2},
    "new_tokens": 32,
    "results": {
        "baseline": {"latency_s": 0.81, "images_per_s_batch8": 3.9, "peak_memory_mb": 1250, "same_as_baseline": "8/8"},
        "int8": {"latency_s": 0.42, "images_per_s_batch8": 7.5, "peak_memory_mb": 900, "same_as_baseline": "8/8"},
    },
}


# As Trainer writes it into checkpoint-10/: losses logged every 5 steps, evaluated every 5.
TRAINER_STATE = {
    "global_step": 10,
    "log_history": [
        {"loss": 3.0, "grad_norm": 1.5, "learning_rate": 0.001, "epoch": 0.5, "step": 5},
        {"eval_loss": 2.9, "eval_runtime": 1.0, "epoch": 0.5, "step": 5},
        {"loss": 2.5, "grad_norm": 1.25, "learning_rate": 0.001, "epoch": 1.0, "step": 10},
        {"eval_loss": 2.4, "eval_runtime": 1.0, "epoch": 1.0, "step": 10},
    ],
}


@pytest.fixture(scope="module")
def run_folder(tiny_checkpoint, tmp_path_factory) -> Path:
    """A train_hf.py output folder: the final model beside the run's files (metrics, curve, samples, caption
    vocabulary and drafts, a benchmark), and an intermediate checkpoint-10/ with Trainer leftovers."""
    run = shutil.copytree(tiny_checkpoint, tmp_path_factory.mktemp("run") / "run")
    (run / "caption_vocabulary.json").write_text(json.dumps({"token_ids": [2, 5, 7]}))
    (run / "caption_drafts.json").write_text(json.dumps({"context_tokens": 1, "next_token": [[2, 5], [5, 7]]}))
    save_quantized_weights(MODAForConditionalGeneration.from_pretrained(run), run)
    (run / "metrics.json").write_text(json.dumps(METRICS))
    (run / "samples.jsonl").write_text("{}\n")
    (run / "training_args.json").write_text("{}")
    Image.new("RGB", (8, 8), "white").save(run / "loss_curve.png")
    (run / "inference_cpu.json").write_text(json.dumps(BENCHMARK))
    checkpoint = shutil.copytree(tiny_checkpoint, run / "checkpoint-10")
    (checkpoint / "optimizer.pt").write_bytes(b"optimizer state: never uploaded")
    (checkpoint / "trainer_state.json").write_text(json.dumps(TRAINER_STATE))
    return run


@pytest.fixture(scope="module")
def staged(run_folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("staged") / "out"
    args = [str(run_folder), "--repo-id", "u/moda", "--space-id", "u/moda-space", "--dataset", "u/moda-descriptions"]
    assert push_to_hub.main([*args, "--benchmark", str(run_folder / "inference_cpu.json"), "--dry-run", str(out)]) == 0
    return out


def test_dry_run_stages_exactly_the_model_repo_and_the_space(staged):
    assert {path.name for path in (staged / "model").iterdir()} == MODEL_FILES
    config = json.loads((staged / "model" / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_moda.MODAForConditionalGeneration"
    assert "auto_map" in json.loads((staged / "model" / "processor_config.json").read_text())

    space = staged / "space"
    assert {path.name for path in space.iterdir()} == {"README.md", "app.py", "requirements.txt", "examples"}
    assert (space / "app.py").read_text() == (push_to_hub.SPACE_SOURCE / "app.py").read_text()
    assert len(list((space / "examples").glob("*.jpg"))) >= 3
    metadata = SpaceCard.load(space / "README.md").data
    assert (metadata.sdk, metadata.sdk_version, metadata.models) == ("gradio", gradio.__version__, ["u/moda"])
    assert f"gradio=={gradio.__version__}" in (space / "requirements.txt").read_text().split()


def test_card_metadata_parses_with_huggingface_hub(staged):
    card = ModelCard.load(staged / "model" / "README.md")
    data = card.data
    assert (data.library_name, data.pipeline_tag, data.license) == ("transformers", "image-text-to-text", "mit")
    assert data.base_model == ["patrickjohncyh/fashion-clip", "facebook/opt-125m"]
    assert data.datasets == ["u/moda-descriptions"]
    assert data.metrics == ["accuracy", "bleu", "rouge"]
    scores = {result.metric_type: result.metric_value for result in data.eval_results}
    assert scores == {"bleu": 0.25, "rougeL": 0.5, "colour_accuracy": 0.75, "loss": 1.5}  # test split, no runtime
    assert {result.dataset_split for result in data.eval_results} == {"test"}
    assert 'AutoModel.from_pretrained("u/moda", trust_remote_code=True)' in card.text
    assert 'pipeline("image-text-to-text", model="u/moda"' in card.text
    assert "![Training and evaluation loss](loss_curve.png)" in card.text
    assert "## CPU latency" in card.text and "Test CPU, 2 threads" in card.text
    assert "| variant | 1 image (s) | images/s, batch 8 | peak memory (MB) |" in card.text
    assert "| int8 | 0.420 | 7.50 | 900 |" in card.text
    assert "| train | train_loss | 1.75 |" in card.text and "| rows | train | 240 |" in card.text
    assert "## Limitations" in card.text


def test_card_without_run_files_has_no_results_sections():
    inputs = CardInputs(repo_id="u/moda", license="apache-2.0", num_parameters=217_024_512, base_models=["a/b"])
    card = ModelCard(str(build_model_card(inputs)))
    assert card.data.eval_results is None and card.data.metrics is None and card.data.license == "apache-2.0"
    assert "217.02M parameters" in card.text
    assert "loss_curve" not in card.text and "## CPU latency" not in card.text and "## Results" not in card.text


def test_metrics_sections_and_flat_trainer_files(tmp_path):
    checkpoint = tmp_path / "checkpoint-1"
    checkpoint.mkdir()
    (checkpoint / "metrics.json").write_text(json.dumps({"validation": {"eval_bleu": 0.1, "note": "x"}, "ok": True}))
    assert read_metrics(checkpoint) == {"validation": {"eval_bleu": 0.1}}
    assert evaluation_scores(read_metrics(checkpoint)) == ("validation", {"bleu": 0.1})

    flat = {"eval_bleu": 0.3, "eval_runtime": 2.0, "train_loss": 1.0, "epoch": 1}
    (checkpoint / "metrics.json").write_text(json.dumps(flat))
    assert read_metrics(checkpoint) == {"results": flat}
    assert evaluation_scores(read_metrics(checkpoint)) == (None, {"bleu": 0.3})


def test_intermediate_checkpoint_card_has_its_own_results_not_the_final_models(run_folder, tmp_path):
    """checkpoint-10/ sits beside the final model's metrics.json and loss_curve.png: its card reports its own
    trainer_state.json (the logs up to step 10) and draws its own curve."""
    out = push_to_hub.stage_model(run_folder / "checkpoint-10", tmp_path / "model", "u/moda", benchmarks=[])
    assert {"optimizer.pt", "trainer_state.json", "caption_vocabulary.json"}.isdisjoint(p.name for p in out.iterdir())
    card = ModelCard.load(out / "README.md")
    assert [(result.metric_type, result.metric_value, result.dataset_split) for result in card.data.eval_results] == [
        ("loss", 2.4, "validation")
    ]
    assert "| train | loss | 2.5 |" in card.text and "| validation | step | 10 |" in card.text
    assert "| test |" not in card.text and "| rows |" not in card.text  # the final model's results
    assert "![Training and evaluation loss](loss_curve.png)" in card.text
    curve = Image.open(out / "loss_curve.png")
    assert curve.format == "PNG" and curve.size != Image.open(run_folder / "loss_curve.png").size


def test_staged_model_loads_in_a_clean_process_and_generates_like_the_original(staged, tiny_model, tiny_processor):
    text = check_loads_in_clean_process(staged / "model")
    image = Image.new("RGB", (64, 48), (150, 40, 60))  # the image the clean process describes
    ids = tiny_model.generate(**tiny_processor(images=image, return_tensors="pt"), max_new_tokens=8, do_sample=False)
    assert text == tiny_processor.batch_decode(ids)[0]


def test_clean_process_cannot_import_the_repository(tiny_checkpoint, tmp_path):
    """A folder whose code imports the project fails the check, even though the project is importable here."""
    broken = shutil.copytree(tiny_checkpoint, tmp_path / "broken")
    code = broken / "modeling_moda.py"
    code.write_text("import processing  # an absolute project import: breaks on the Hub\n" + code.read_text())
    with pytest.raises(RuntimeError, match="processing is blocked"):
        check_loads_in_clean_process(broken)


class FakeHubApi:
    """Records the calls `upload` makes, and what each uploaded folder held at that moment."""

    def __init__(self):
        self.calls: list[tuple[str, tuple, dict]] = []
        self.uploaded: dict[str, set[str]] = {}

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", (repo_id,), kwargs))

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        self.calls.append(("upload_folder", (repo_id,), kwargs))
        self.uploaded[repo_id] = {path.name for path in Path(folder_path).iterdir()}

    def add_space_variable(self, repo_id, key, value, **kwargs):
        self.calls.append(("add_space_variable", (repo_id, key, value), kwargs))


def test_upload_creates_repos_then_uploads_model_and_space(staged):
    api = FakeHubApi()
    urls = upload(api, staged / "model", "u/moda", True, staged / "space", "u/moda-space")
    assert urls == ["https://huggingface.co/u/moda", "https://huggingface.co/spaces/u/moda-space"]
    assert [(name, args) for name, args, _ in api.calls] == [
        ("create_repo", ("u/moda",)),
        ("upload_folder", ("u/moda",)),
        ("create_repo", ("u/moda-space",)),
        ("add_space_variable", ("u/moda-space", "MODA_MODEL", "u/moda")),
        ("upload_folder", ("u/moda-space",)),
    ]
    model_repo, _, space_repo = api.calls[0][2], api.calls[1][2], api.calls[2][2]
    assert model_repo == {"repo_type": "model", "private": True, "exist_ok": True}
    assert space_repo["repo_type"] == "space" and space_repo["space_sdk"] == "gradio" and space_repo["private"]
    assert space_repo["space_variables"] == [{"key": "MODA_MODEL", "value": "u/moda"}]
    assert api.calls[4][2]["repo_type"] == "space"


def test_main_uploads_what_a_dry_run_stages(run_folder, staged, monkeypatch, capsys):
    monkeypatch.setattr(push_to_hub, "check_loads_in_clean_process", lambda folder: "checked")
    api = FakeHubApi()
    assert push_to_hub.main([str(run_folder), "--repo-id", "u/moda", "--space-id", "u/s"], api) == 0
    assert api.uploaded == {
        "u/moda": {path.name for path in (staged / "model").iterdir()},
        "u/s": {path.name for path in (staged / "space").iterdir()},
    }
    assert "uploaded https://huggingface.co/spaces/u/s" in capsys.readouterr().out


def test_model_only_upload_makes_no_space(staged):
    api = FakeHubApi()
    assert upload(api, staged / "model", "u/moda") == ["https://huggingface.co/u/moda"]
    assert [name for name, _, _ in api.calls] == ["create_repo", "upload_folder"]


def test_rejects_bad_arguments(run_folder, tmp_path):
    with pytest.raises(SystemExit, match="USER/NAME"):
        push_to_hub.main([str(run_folder), "--repo-id", "not a repo id"])
    with pytest.raises(SystemExit, match="not a MODA checkpoint"):
        push_to_hub.main([str(tmp_path), "--repo-id", "u/moda", "--dry-run", str(tmp_path / "out")])
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(SystemExit, match="LoRA adapter"):
        push_to_hub.main([str(tmp_path), "--repo-id", "u/moda", "--dry-run", str(tmp_path / "out")])
    (tmp_path / "full" / "model").mkdir(parents=True)
    (tmp_path / "full" / "model" / "old.txt").write_text("old")
    with pytest.raises(SystemExit, match="not empty"):
        push_to_hub.main([str(run_folder), "--repo-id", "u/m", "--dry-run", str(tmp_path / "full")])


def test_refuses_weights_that_are_not_the_moda_the_folder_claims(tiny_checkpoint, tiny_backbones, tmp_path):
    """Another model's folder, or a MODA config beside another model's weights, is refused before anything is
    staged (publishing either would upload an untrained MODA)."""
    opt = tiny_backbones[1]
    with pytest.raises(SystemExit, match="its config.json has model_type 'opt', not 'moda'"):
        push_to_hub.main([str(opt), "--repo-id", "u/moda", "--dry-run", str(tmp_path / "opt")])
    other_weights = shutil.copytree(tiny_checkpoint, tmp_path / "other_weights")
    shutil.copy(opt / "model.safetensors", other_weights / "model.safetensors")
    with pytest.raises(SystemExit, match=r"weights are not this MODA's: \d+ missing .*\d+ unexpected"):
        push_to_hub.main([str(other_weights), "--repo-id", "u/moda", "--dry-run", str(tmp_path / "mixed")])
    assert not (tmp_path / "opt").exists() and not (tmp_path / "mixed").exists()
