"""train_hf.py end to end on a tiny catalogue: outputs, feature cache, LoRA, resume, 2 processes as one group."""

import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel, AutoProcessor, CLIPVisionModelWithProjection

import train_hf
import train_probe
from moda.demo.catalog import make_catalog
from modeling_moda.caption_drafts import load_caption_drafter
from modeling_moda.caption_vocabulary import build_caption_vocabulary, load_caption_vocabulary
from processing.data import load_fashion_dataset, open_image
from processing.feature_cache import cached_embeds

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory) -> Path:
    return make_catalog(tmp_path_factory.mktemp("train_catalogue"), 40, seed=2, image_size=32).parent


def _args(catalogue, backbones, output_dir, *extra) -> list[str]:
    vision, text = backbones
    return [
        "--dataset", str(catalogue), "--vision_model", str(vision), "--text_model", str(text),
        "--output_dir", str(output_dir), "--projector_hidden_size", "32", "--per_device_train_batch_size", "8",
        "--gradient_accumulation_steps", "1", "--num_train_epochs", "1", "--generation_max_new_tokens", "8",
        "--dataloader_pin_memory", "false", "--learning_rate", "5e-3", "--seed", "0", *extra,
    ]


def _samples(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "samples.jsonl").read_text().splitlines()]


def _describe(model, processor, samples: list[dict]) -> list[str]:
    inputs = processor(images=[open_image(sample["image"]) for sample in samples])
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    return processor.batch_decode(generated)


def test_outputs_and_remote_code_checkpoint(catalogue, tiny_backbones, tmp_path):
    out = tmp_path / "run"
    metrics = train_hf.main(_args(catalogue, tiny_backbones, out, "--num_train_epochs", "2"))
    for name in ("loss_curve.png", "metrics.json", "samples.jsonl", "model.safetensors", "modeling_moda.py",
                 "training_args.json"):
        assert (out / name).is_file(), name
    assert not list(out.glob("*.bin")), "the final folder holds safetensors and JSON only"
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["rows"] == {"train": 32, "validation": 4, "test": 4}
    for key in ("test_loss", "bleu", "rougeL", "colour_and_type_accuracy", "contradiction_rate"):
        assert key in saved["test"], key
    assert "eval_loss" in saved["validation"] and saved["test"]["bleu"] == metrics["test"]["bleu"]
    assert saved["run"]["seconds"] > 0 and "goals" not in saved  # only the demo has goals

    model = AutoModel.from_pretrained(out, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(out, trust_remote_code=True)
    samples = _samples(out)
    assert _describe(model, processor, samples) == [sample["generated"] for sample in samples]

    # the tokens of the training captions, for `moda describe --fast int8`'s LM head shortlist
    vocabulary = load_caption_vocabulary(out)
    captions = list(load_fashion_dataset(catalogue)["description"])
    every_caption = build_caption_vocabulary(processor.tokenizer, captions)
    assert processor.tokenizer.eos_token_id in vocabulary
    assert set(vocabulary) <= set(every_caption) and len(vocabulary) > len(every_caption) / 2
    # and the guesses `moda describe` checks several at a time: after BOS, a caption's usual first token
    drafter = load_caption_drafter(out)
    first_tokens = {ids[0] for ids in processor.tokenizer(captions, add_special_tokens=False)["input_ids"]}
    assert drafter.draft([processor.tokenizer.bos_token_id], 1)[0] in first_tokens


def test_model_name_or_path_fine_tunes_a_saved_moda_with_its_frozen_tower(catalogue, tiny_backbones, tiny_checkpoint,
                                                                           tmp_path):
    """The checkpoint's weights and processor are the start (the backbone flags are ignored); the tower runs every
    step (no cache) and still does not change, the projector and LM do."""
    out = tmp_path / "fine_tuned"
    train_hf.main(_args(catalogue, tiny_backbones, out, "--model_name_or_path", str(tiny_checkpoint), "--max_steps",
                        "2", "--cache_image_embeds", "false"))
    start = AutoModel.from_pretrained(tiny_checkpoint, trust_remote_code=True).state_dict()
    tuned = AutoModel.from_pretrained(out, trust_remote_code=True)
    assert tuned.projector.linear_1.weight.shape == start["projector.linear_1.weight"].shape  # not the flag's 32
    for name, weight in tuned.state_dict().items():
        if name.startswith("vision_tower."):
            assert torch.equal(weight, start[name]), name
    assert not torch.equal(tuned.projector.linear_1.weight, start["projector.linear_1.weight"])
    embeddings = start["language_model.model.decoder.embed_tokens.weight"]
    assert not torch.equal(tuned.get_input_embeddings().weight, embeddings)
    processor = AutoProcessor.from_pretrained(out, trust_remote_code=True)
    assert processor.tokenizer.get_vocab() == AutoProcessor.from_pretrained(tiny_checkpoint).tokenizer.get_vocab()
    assert load_caption_vocabulary(out) and load_caption_drafter(out)  # the fast path's files of the new captions


@pytest.mark.parametrize("freeze", [True, False])
def test_model_name_or_path_tower_trains_only_when_not_frozen(tiny_checkpoint, freeze):
    """from_pretrained alone leaves the tower trainable whatever config.freeze_vision says: --freeze_vision decides."""
    model_args = train_hf.ModelArguments(model_name_or_path=str(tiny_checkpoint), freeze_vision=freeze)
    model, _ = train_hf.build_model(model_args)
    assert {parameter.requires_grad for parameter in model.vision_tower.parameters()} == {not freeze}
    assert all(parameter.requires_grad for parameter in model.projector.parameters())
    assert model.config.freeze_vision is freeze


def test_model_name_or_path_refuses_another_models_checkpoint_and_missing_weights(tiny_backbones, tiny_checkpoint,
                                                                                  tmp_path):
    """Either would otherwise fine-tune randomly initialised weights without a word."""
    with pytest.raises(ValueError, match="'opt' checkpoint, not a MODA"):
        train_hf.build_model(train_hf.ModelArguments(model_name_or_path=str(tiny_backbones[1])))
    partial = shutil.copytree(tiny_checkpoint, tmp_path / "partial")
    weights = load_file(partial / "model.safetensors")
    save_file({name: weight for name, weight in weights.items() if not name.startswith("projector.")},
              partial / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="lacks 4 MODA weights"):
        train_hf.build_model(train_hf.ModelArguments(model_name_or_path=str(partial)))


def test_cache_means_no_vision_forward_after_caching(catalogue, tiny_backbones, tmp_path, monkeypatch):
    calls = {"preparing": 0, "training": 0}
    phase = {"now": "preparing"}

    def count(module, args, output):
        if isinstance(module, CLIPVisionModelWithProjection):
            calls[phase["now"]] += 1

    original_train = train_hf.MODATrainer.train

    def train(self, *args, **kwargs):
        phase["now"] = "training"  # stays so through evaluation and test generation
        return original_train(self, *args, **kwargs)

    monkeypatch.setattr(train_hf.MODATrainer, "train", train)
    handle = torch.nn.modules.module.register_module_forward_hook(count)
    try:
        fresh = make_catalog(tmp_path / "fresh", 20, seed=5, image_size=32).parent
        train_hf.main(_args(fresh, tiny_backbones, tmp_path / "cached", "--num_train_epochs", "3"))
        assert calls["preparing"] == 3 and calls["training"] == 0  # 16 + 2 + 2 rows: one batch per split

        phase["now"] = "preparing"
        train_hf.main(_args(fresh, tiny_backbones, tmp_path / "again", "--num_train_epochs", "2"))
        assert calls["preparing"] == 3 and calls["training"] == 0  # the cache files of the first run are reused

        phase["now"] = "preparing"
        train_hf.main(_args(catalogue, tiny_backbones, tmp_path / "uncached", "--cache_image_embeds", "false"))
        assert calls["training"] >= 5  # 4 training batches + validation + test: the hook does see the tower
    finally:
        handle.remove()


def test_lora_trains_few_lm_parameters_and_reloads(catalogue, tiny_backbones, tmp_path):
    out = tmp_path / "lora"
    train_hf.main(_args(catalogue, tiny_backbones, out, "--lora", "--lora_r", "2", "--learning_rate", "2e-2"))
    base = AutoModel.from_pretrained(out / "base_model", trust_remote_code=True)
    lm_parameters = base.language_model.num_parameters()
    model = PeftModel.from_pretrained(base, out)
    lora = sum(p.numel() for name, p in model.named_parameters() if "lora_" in name)
    assert 0 < lora < 0.1 * lm_parameters
    trained_projector = model.base_model.model.projector.modules_to_save["default"].linear_1.weight
    assert not torch.equal(trained_projector, base.projector.original_module.linear_1.weight)

    processor = AutoProcessor.from_pretrained(out, trust_remote_code=True)
    samples = _samples(out)
    assert _describe(model.eval(), processor, samples) == [sample["generated"] for sample in samples]

    merged_out = tmp_path / "merged"
    train_hf.main(_args(catalogue, tiny_backbones, merged_out, "--lora", "--lora_r", "2", "--merge_lora"))
    merged = AutoModel.from_pretrained(merged_out, trust_remote_code=True)
    assert not any("lora_" in name for name, _ in merged.named_parameters())
    samples = _samples(merged_out)
    assert _describe(merged, processor, samples) == [sample["generated"] for sample in samples]


def test_resume_continues_from_last_checkpoint(catalogue, tiny_backbones, tmp_path, monkeypatch):
    out = tmp_path / "resume"
    steps = ["--save_strategy", "steps", "--save_steps", "2", "--eval_strategy", "no", "--logging_steps", "1",
             "--logging_strategy", "steps"]
    train_hf.main(_args(catalogue, tiny_backbones, out, "--max_steps", "2", *steps))
    assert (out / "checkpoint-2").is_dir()

    taken = []
    original_step = train_hf.MODATrainer.training_step
    monkeypatch.setattr(
        train_hf.MODATrainer, "training_step", lambda self, *a, **k: taken.append(1) or original_step(self, *a, **k)
    )
    train_hf.main(_args(catalogue, tiny_backbones, out, "--max_steps", "5", *steps))  # finds checkpoint-2 itself
    assert len(taken) == 3
    state = json.loads((out / "checkpoint-5" / "trainer_state.json").read_text())
    assert state["global_step"] == 5
    assert [entry["step"] for entry in state["log_history"] if "loss" in entry] == [1, 2, 3, 4, 5]


def test_resume_from_a_step_checkpoint_at_an_epoch_end_is_exact(catalogue, tiny_backbones, tmp_path):
    """save_steps = steps per epoch (32 training rows / 8): the checkpoint must hold that epoch's evaluation and the
    random state after it, so that the resumed run logs and trains exactly as the uninterrupted one."""
    steps = ["--max_steps", "5", "--save_strategy", "steps", "--save_steps", "4", "--eval_strategy", "epoch",
             "--logging_strategy", "steps", "--logging_steps", "1"]
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    train_hf.main(_args(catalogue, tiny_backbones, whole, *steps))
    shutil.copytree(whole / "checkpoint-4", resumed / "checkpoint-4")  # as if the run had stopped after it
    train_hf.main(_args(catalogue, tiny_backbones, resumed, *steps))

    def history(output_dir: Path) -> list[tuple[int, str, float]]:
        log = json.loads((output_dir / "checkpoint-5" / "trainer_state.json").read_text())["log_history"]
        return [(entry["step"], key, entry[key]) for entry in log for key in ("loss", "eval_loss") if key in entry]

    expected = history(whole)
    assert [(step, key) for step, key, _ in expected] == [
        (1, "loss"), (2, "loss"), (3, "loss"), (4, "loss"), (4, "eval_loss"), (5, "loss")
    ]
    assert [(step, key) for step, key, _ in history(resumed)] == [(step, key) for step, key, _ in expected]
    assert [value for *_, value in history(resumed)] == pytest.approx([value for *_, value in expected], abs=1e-6)
    whole_model, resumed_model = (AutoModel.from_pretrained(out, trust_remote_code=True) for out in (whole, resumed))
    for (name, trained), resumed_weight in zip(whole_model.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.allclose(trained, resumed_weight, atol=1e-6), name


def test_the_next_run_reads_changed_images_again(tiny_backbones, tmp_path, monkeypatch):
    """A photo replaced between two runs gets a new cached embedding (only its split is embedded again); a photo
    corrupted between two runs is dropped, not trusted."""
    catalogue = make_catalog(tmp_path / "catalogue", 20, seed=6, image_size=32).parent
    runs = []  # per run: its splits and how many vision tower forwards preparing them took
    prepare_data = train_hf.prepare_data

    def prepare_and_count(data_args, training_args, model, processor, use_cache):
        forwards = []
        hook = model.vision_tower.register_forward_hook(lambda *args: forwards.append(1))
        splits = prepare_data(data_args, training_args, model, processor, use_cache)
        hook.remove()
        runs.append((splits, len(forwards)))
        return splits

    monkeypatch.setattr(train_hf, "prepare_data", prepare_and_count)
    train_hf.main(_args(catalogue, tiny_backbones, tmp_path / "first", "--max_steps", "1"))
    first, forwards = runs[-1]
    assert forwards == 3  # 16 + 2 + 2 rows: one batch per split
    replaced, replacement = (Path(first["train"][index]["image"]["path"]) for index in (0, 1))
    replaced.write_bytes(replacement.read_bytes())

    train_hf.main(_args(catalogue, tiny_backbones, tmp_path / "second", "--max_steps", "1"))
    second, forwards = runs[-1]
    assert forwards == 1  # the training split again; validation and test from the cache
    embeds = {name: (cached_embeds(first[name][:]), cached_embeds(second[name][:])) for name in first}
    assert torch.equal(embeds["train"][1][0], embeds["train"][0][1])  # row 0 now shows row 1's item
    assert not torch.equal(embeds["train"][1][0], embeds["train"][0][0])
    assert torch.equal(embeds["train"][1][1:], embeds["train"][0][1:])
    assert all(torch.equal(*embeds[name]) for name in ("validation", "test"))

    replacement.write_bytes(replacement.read_bytes()[:100])  # a truncated JPEG
    metrics = train_hf.main(_args(catalogue, tiny_backbones, tmp_path / "third", "--max_steps", "1"))
    assert sum(metrics["rows"].values()) == 19


def test_a_holdout_that_matches_no_row_stops_before_training(catalogue, tiny_backbones, tmp_path):
    colour = load_fashion_dataset(catalogue)[0]["Colour"]
    with pytest.raises(ValueError) as raised:
        train_hf.main(_args(catalogue, tiny_backbones, tmp_path / "typo", "--holdout", f"Colour={colour.lower()}"))
    assert f"holdout 'Colour={colour.lower()}' matches no row" in str(raised.value)
    assert f"did you mean {colour!r}?" in str(raised.value)


def _without_dropout(backbones, folder: Path) -> tuple[Path, Path]:
    """The tiny backbones with the LM's dropout off: runs with other process counts then draw no other masks."""
    vision, text = backbones
    shutil.copytree(text, folder)
    config = AutoConfig.from_pretrained(folder)
    config.dropout = 0.0
    config.save_pretrained(folder)
    return vision, folder


def _logged_losses(output_dir: Path) -> list[float]:
    state = json.loads((output_dir / "checkpoint-2" / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


def test_documented_cpu_command_trains_two_processes_as_one_group(tiny_backbones, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` on a CPU-only machine (docs/training.md): both processes
    join one gloo group, each trains on its half of every step's rows, the main process alone builds the feature
    cache and writes the outputs, and the losses are a 1-process run's at the same global batch (8 = 4 x 2)."""
    catalogue = make_catalog(tmp_path / "catalogue", 20, seed=7, image_size=32).parent  # new: nothing cached yet
    backbones = _without_dropout(tiny_backbones, tmp_path / "text")
    steps = ["--max_steps", "2", "--save_strategy", "steps", "--save_steps", "2", "--eval_strategy", "no",
             "--logging_strategy", "steps", "--logging_steps", "1", "--bf16", "false"]  # fmt: skip
    records, two = tmp_path / "records", tmp_path / "two"
    records.mkdir()
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               str(REPO / "tests" / "train_probe.py"), str(records),
               *_args(catalogue, backbones, two, "--per_device_train_batch_size", "4", *steps)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in (0, 1):
        assert f"process {rank} of 2 (gloo process group, cpu" in result.stderr
    main, other = (json.loads((records / f"rank{rank}.json").read_text()) for rank in (0, 1))

    one = tmp_path / "one"
    single = train_probe.run(_args(catalogue, backbones, one, *steps))  # 8 rows a step in one process
    assert len(single["steps"]) == len(main["steps"]) == len(other["steps"]) == 2
    for rows, main_rows, other_rows in zip(single["steps"], main["steps"], other["steps"]):
        assert len(rows) == 8 and len(main_rows) == len(other_rows) == 4
        assert not set(main_rows) & set(other_rows) and set(main_rows) | set(other_rows) == set(rows)

    assert main["vision_forwards"] == 3 and other["vision_forwards"] == 0  # one batch per split, on the main only
    assert "bleu" in main["metrics"]["test"] and "bleu" not in other["metrics"]["test"]  # the outputs: main only
    assert json.loads((two / "metrics.json").read_text())["test"]["bleu"] == main["metrics"]["test"]["bleu"]

    assert _logged_losses(two) == pytest.approx(_logged_losses(one), rel=1e-5)
    weights, single_weights = load_file(two / "model.safetensors"), load_file(one / "model.safetensors")
    # a step on other rows would move weights by about the learning rate (5e-3)
    assert max((weights[name] - single_weights[name]).abs().max().item() for name in weights) < 1e-3


def test_machines_sharing_a_disk_prepare_data_one_after_the_other(tmp_path, monkeypatch):
    """Each machine's main process goes first on its own disk, but on a shared one only after the main process:
    the second machine then reuses the feature cache instead of building the same files at the same time.
    Two threads play the main processes of two machines; a thread barrier stands in for the process group's."""
    barrier = threading.Barrier(2, timeout=60)
    monkeypatch.setattr(torch.distributed, "barrier", barrier.wait)
    machines = [train_hf.MODATrainingArguments(output_dir=str(tmp_path), bf16=False) for _ in range(2)]
    for rank, args in enumerate(machines):
        args.distributed_state = SimpleNamespace(
            num_processes=2, process_index=rank, is_main_process=rank == 0, is_local_main_process=True
        )
    log = []

    def prepare(rank: int) -> None:
        with machines[rank].main_process_first(desc="feature cache"):
            log.append(f"start {rank}")
            time.sleep(0.5)  # a machine entering now, not after the main process, would log its start here
            log.append(f"end {rank}")

    threads = [threading.Thread(target=prepare, args=(rank,)) for rank in (1, 0)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert log == ["start 0", "end 0", "start 1", "end 1"]


def test_launched_processes_that_do_not_join_are_an_error(monkeypatch, tmp_path):
    """Launched processes that each train alone as "process 0 of 1" stop with a message instead."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    # a machine with a GPU that accelerate forms no process group with
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda: torch.device("cuda"))
    with pytest.raises(SystemExit, match="2 processes were launched but they did not join one process group"):
        train_hf.main(["--dataset", str(tmp_path), "--output_dir", str(tmp_path / "out"), "--bf16", "false"])


def _settings(parsed: tuple, names) -> dict:
    """The parsed values of `names`, whichever argument dataclass holds each."""
    return {name: next(getattr(args, name) for args in parsed if hasattr(args, name)) for name in names}


@pytest.mark.parametrize(
    "flag, demo",
    [(["--demo"], True), (["--demo=true"], True), (["--demo", "true"], True), (["--demo=false"], False),
     (["--demo", "false"], False)],
)  # fmt: skip
def test_demo_defaults_follow_the_demo_value_however_it_is_spelled(flag, demo, tmp_path):
    """HfArgumentParser accepts `--demo=true` for a bool: it must switch on the demo defaults like `--demo` does."""

    def parse(*extra: str) -> tuple:
        return train_hf.parse_args([*extra, "--output_dir", str(tmp_path), "--num_train_epochs", "3"])

    parsed = parse(*flag)
    defaults = train_hf.DEMO_DEFAULTS if demo else _settings(parse(), train_hf.DEMO_DEFAULTS)
    assert parsed[1].demo is demo
    # the explicit --num_train_epochs beats the demo default
    assert _settings(parsed, train_hf.DEMO_DEFAULTS) == {**defaults, "num_train_epochs": 3}


@pytest.mark.parametrize(
    "native, extra, expected",
    [(False, [], False), (True, [], True), (True, ["--bf16", "false"], False), (True, ["--demo"], False)],
)
def test_bf16_by_default_only_where_the_cpu_computes_it_natively(native, extra, expected, monkeypatch, tmp_path):
    monkeypatch.setattr(train_hf, "cpu_has_native_bf16", lambda: native)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    training_args = train_hf.parse_args([*extra, "--output_dir", str(tmp_path)])[2]
    assert training_args.bf16 is expected
    assert training_args.use_cpu is expected  # transformers accepts bf16 without a GPU only for a CPU-only run


def test_bf16_autocast_training_on_cpu(catalogue, tiny_backbones, tmp_path, monkeypatch):
    """What the default turns on for a CPU with AMX: training runs under bf16 autocast and saves fp32 weights."""
    training_dtypes = set()
    build_model = train_hf.build_model

    def build_and_watch(model_args):
        model, processor = build_model(model_args)
        model.projector.register_forward_hook(
            lambda module, args, output: training_dtypes.add(output.dtype) if module.training else None
        )
        return model, processor

    monkeypatch.setattr(train_hf, "build_model", build_and_watch)
    out = tmp_path / "bf16"
    metrics = train_hf.main(_args(catalogue, tiny_backbones, out, "--bf16", "true", "--use_cpu", "true"))
    assert training_dtypes == {torch.bfloat16}
    assert math.isfinite(metrics["validation"]["eval_loss"])
    model = AutoModel.from_pretrained(out, trust_remote_code=True)
    assert {parameter.dtype for parameter in model.parameters()} == {torch.float32}


@pytest.fixture
def stub_tower_pretraining(monkeypatch) -> list[Path]:
    """The demo tower's real pretraining takes minutes: this one leaves the tower random, writes the report that
    marks it done and records the folders it was asked to pretrain."""
    from moda.demo import vision_pretraining

    pretrained = []

    def pretrain(vision_dir, seed, holdout):
        pretrained.append(vision_dir)
        (vision_dir / vision_pretraining.REPORT_NAME).write_text("{}")

    monkeypatch.setattr(vision_pretraining, "pretrain_vision_tower", pretrain)
    return pretrained


def test_rebuilt_demo_backbones_get_their_tower_pretrained_again(tmp_path, stub_tower_pretraining):
    """prepare_demo reuses what a run left behind, but new backbones bring a random tower: its pretraining report
    must not let that tower through unpretrained."""
    pretrained = stub_tower_pretraining
    model_args, data_args, _ = train_hf.parse_args(["--demo", "--demo_items", "60", "--output_dir", str(tmp_path)])
    for _ in range(2):  # the second run finds everything in place
        train_hf.prepare_demo(data_args, model_args, tmp_path)
    assert len(pretrained) == 1
    shutil.rmtree(tmp_path / "backbones" / "text")
    train_hf.prepare_demo(data_args, model_args, tmp_path)
    assert len(pretrained) == 2
    assert (tmp_path / "backbones" / "text" / "tokenizer.json").is_file()


def test_word_dropout_reaches_the_models_config_and_must_be_a_probability(tiny_backbones, tmp_path):
    vision, text = map(str, tiny_backbones)
    model_args = train_hf.parse_args(
        ["--vision_model", vision, "--text_model", text, "--word_dropout", "0.3", "--output_dir", str(tmp_path)]
    )[0]
    model, _ = train_hf.build_model(model_args)
    assert model.config.word_dropout == 0.3
    assert train_hf.parse_args(["--demo", "--output_dir", str(tmp_path)])[0].word_dropout == train_hf.DEMO_DEFAULTS["word_dropout"] > 0
    with pytest.raises(ValueError, match=r"--word_dropout must be a probability in \[0, 1\), got 1.5"):
        train_hf.parse_args(["--word_dropout", "1.5", "--output_dir", str(tmp_path)])


def test_each_held_out_combination_is_scored_and_printed_on_its_own(catalogue, tiny_backbones, tmp_path, capsys):
    rows = load_fashion_dataset(catalogue)
    first, second = rows[0], rows[1]
    holdout = f"Colour={first['Colour']};ProductType={second['ProductType']}"
    metrics = train_hf.main(_args(catalogue, tiny_backbones, tmp_path / "out", "--holdout", holdout))
    combinations = metrics["holdout_combinations"]
    assert list(combinations) == [f"Colour={first['Colour']}", f"ProductType={second['ProductType']}"]
    colour_rows = sum(row["Colour"] == first["Colour"] for row in rows)
    assert combinations[f"Colour={first['Colour']}"]["rows"] == colour_rows
    for scores in combinations.values():
        assert 0 <= scores["colour_accuracy"] <= 1 and 0 <= scores["contradiction_free_rate"] <= 1
    # a row of both combinations counts in each, and every held-out row in at least one
    assert max(c["rows"] for c in combinations.values()) <= metrics["rows"]["holdout"] <= sum(
        c["rows"] for c in combinations.values()
    )
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["holdout_combinations"] == json.loads(json.dumps(combinations))
    printed = capsys.readouterr().out
    assert all(any(line.lstrip().startswith(name) for line in printed.splitlines()) for name in combinations)


def test_a_demo_run_checks_its_own_goals_and_says_so(tmp_path, stub_tower_pretraining, capsys):
    """`--demo` ends with the verdict on each of the demo's goals, printed and saved; other runs only time themselves."""
    from moda.demo.catalog import catalogue_items
    from moda.demo.goals import DEMO_GOALS

    first_colour = next(catalogue_items(1, seed=0)).colour.name
    metrics = train_hf.main(
        ["--demo", "--demo_items", "80", "--output_dir", str(tmp_path), "--num_train_epochs", "1",
         "--holdout", f"Colour={first_colour}", "--generation_max_new_tokens", "8", "--dataloader_pin_memory", "false"]
    )  # fmt: skip
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert [goal["goal"] for goal in saved["goals"]] == [goal.name for goal in DEMO_GOALS]
    run_time = next(goal for goal in saved["goals"] if goal["goal"] == DEMO_GOALS[-1].name)
    assert run_time["value"] == saved["run"]["seconds"] > 0 and run_time["met"] == (run_time["value"] <= 600)
    test_colour = next(goal for goal in saved["goals"] if goal["goal"] == DEMO_GOALS[0].name)
    assert test_colour["value"] == metrics["test"]["colour_accuracy"]
    assert "Against the demo's goals:" in capsys.readouterr().out
