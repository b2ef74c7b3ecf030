"""Train MODA with `Trainer`: the seed's recipe by default, a self-contained CPU demo with ``--demo``.

    python train_hf.py --demo --output_dir outputs/demo                      # bundled catalogue, tiny MODA, CPU
    python train_hf.py --dataset data/fashion --vision_model patrickjohncyh/fashion-clip \\
        --text_model facebook/opt-125m --output_dir outputs/moda                # the seed's recipe
    accelerate launch --multi_gpu --num_processes 2 train_hf.py ...            # data-parallel (docs/training.md):
                                                                               # 2 GPUs, or 2 CPU processes (gloo)

The seed's recipe: AdamW lr 1e-3, StepLR (every 2 epochs x 0.8), 20 epochs, batch 32 x 8 accumulation steps,
vision tower frozen, projector + LM trained. Fixed here: targets end with the real EOS (not a literal "<\\s>"),
batches pad with the pad id (1, not 0) and the loss skips image/BOS/pad positions, the loss is normalised over
the accumulated tokens (Trainer's num_items_in_batch), the split is seeded with a separate test split, and the
frozen vision tower runs once per image (feature cache), not every epoch.

Writes to --output_dir: checkpoints (resumable), the final model + processor (`AutoModel.from_pretrained(dir,
trust_remote_code=True)`), loss_curve.png, metrics.json and samples.jsonl.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import torch
from accelerate.utils import get_int_from_env
from tqdm.auto import tqdm
from transformers import (
    HfArgumentParser,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils import logging

import modeling_moda  # noqa: F401  (registers the "moda" Auto classes)
from moda.cpu_memory import reuse_freed_memory
from moda.demo.goals import check_goals, report_goals
from moda.fast_path_files import write_fast_path_files
from moda.lora import DEFAULT_TARGET_MODULES, lora_config
from moda.loss_curve import plot_loss_curve
from moda.metrics.fashion_attributes.fashion_vocabulary import ATTRIBUTES as FASHION_ATTRIBUTES
from modeling_moda import MODAConfig, MODAForConditionalGeneration
from modeling_moda.fast_inference import cpu_has_native_bf16
from processing import MODAProcessor
from processing.data import (
    METADATA_COLUMNS,
    MODACollator,
    cell_text,
    combination_matches,
    drop_unusable,
    load_fashion_dataset,
    open_image,
    parse_holdout,
    split_dataset,
)
from processing.feature_cache import add_image_embeds, cached_embeds

logger = logging.get_logger("moda.train")


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "an existing MODA (folder or Hub id) to fine-tune, with its processor; --vision_model, "
                  "--text_model, --image_features and --projector_hidden_size are then ignored"},
    )
    vision_model: str = field(
        default="patrickjohncyh/fashion-clip", metadata={"help": "CLIP checkpoint (hub id or folder) for the tower"}
    )
    text_model: str = field(default="facebook/opt-125m", metadata={"help": "causal LM (hub id or folder)"})
    image_features: str = field(default="pooled", metadata={"help": "'pooled' (1 image token) or 'patches'"})
    freeze_vision: bool = field(default=True, metadata={"help": "keep the vision tower frozen (the seed's recipe)"})
    projector_hidden_size: int = field(default=3072, metadata={"help": "projector width (the seed's 3072)"})
    lora: bool = field(default=False, metadata={"help": "train LoRA adapters on the LM (projector fully trained)"})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout (peft's default 0; see moda/lora.py)"})
    lora_target_modules: str = field(
        default=",".join(DEFAULT_TARGET_MODULES), metadata={"help": "comma-separated LM module names for LoRA"}
    )
    merge_lora: bool = field(default=False, metadata={"help": "save the LoRA-merged full model, not the adapter"})
    word_dropout: float | None = field(
        default=None,
        metadata={"help": "while training, zero each description token's input embedding with this probability "
                  "(MODAConfig.word_dropout); default: the checkpoint's, 0 for a new MODA"},
    )

    def __post_init__(self):
        if self.word_dropout is not None and not 0 <= self.word_dropout < 1:
            raise ValueError(f"--word_dropout must be a probability in [0, 1), got {self.word_dropout}")


@dataclass
class DataArguments:
    dataset: str | None = field(
        default=None,
        metadata={"help": "Kaggle folder (fashion.csv), CSV/JSONL, imagefolder, save_to_disk folder or Hub id"},
    )
    demo: bool = field(default=False, metadata={"help": "generate the bundled catalogue and train a tiny MODA"})
    demo_items: int = field(default=4800, metadata={"help": "catalogue items generated for --demo"})
    demo_image_size: int = field(default=64, metadata={"help": "catalogue image side for --demo"})
    validation_size: float = field(default=0.1, metadata={"help": "fraction for validation (loss every epoch)"})
    test_size: float = field(default=0.1, metadata={"help": "fraction for the final test (never used to select)"})
    holdout: str | None = field(
        default=None, metadata={"help": "attribute combinations kept out of training, e.g. 'Colour=Red,ProductType=Dresses'"}
    )
    max_samples: int | None = field(default=None, metadata={"help": "use only the first N rows (quick runs)"})
    max_length: int | None = field(default=64, metadata={"help": "description tokens kept per row (EOS included)"})
    cache_image_embeds: bool = field(
        default=True, metadata={"help": "compute frozen image embeddings once (off when the tower trains)"}
    )
    embed_batch_size: int = field(default=64, metadata={"help": "batch size for the feature cache"})
    generation_max_new_tokens: int = field(default=40, metadata={"help": "max tokens for the test descriptions"})
    generation_batch_size: int = field(default=64, metadata={"help": "batch size for the test descriptions"})
    num_samples: int = field(default=20, metadata={"help": "test descriptions written to samples.jsonl"})


@dataclass
class MODATrainingArguments(TrainingArguments):
    """TrainingArguments whose defaults are the seed's recipe, plus its StepLR schedule."""

    learning_rate: float = field(default=1e-3, metadata={"help": "AdamW learning rate (the seed's 1e-3)"})
    num_train_epochs: float = field(default=20.0, metadata={"help": "epochs (the seed's 20)"})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "batch size (the seed's 32)"})
    per_device_eval_batch_size: int = field(default=32, metadata={"help": "validation batch size"})
    gradient_accumulation_steps: int = field(default=8, metadata={"help": "accumulation steps (the seed's 8)"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (torch's AdamW default)"})
    lr_step_epochs: float = field(
        default=2.0, metadata={"help": "StepLR: multiply the lr by lr_step_gamma every this many epochs; 0 = use lr_scheduler_type"}
    )
    lr_step_gamma: float = field(default=0.8, metadata={"help": "StepLR decay factor"})
    eval_strategy: str = field(default="epoch", metadata={"help": "validation loss every epoch"})
    save_strategy: str = field(default="epoch", metadata={"help": "checkpoint every epoch"})
    logging_strategy: str = field(default="epoch", metadata={"help": "train loss every epoch"})
    save_total_limit: int | None = field(default=2, metadata={"help": "checkpoints kept"})
    remove_unused_columns: bool = field(default=False, metadata={"help": "the collator needs image/description"})
    dataloader_num_workers: int = field(default=0, metadata={"help": "dataloader worker processes"})
    bf16: bool | None = field(
        default=None,
        metadata={"help": "bf16 mixed precision; default: on where it runs natively (a bf16 GPU, or a CPU with "
                  "AVX512-BF16 or AMX), off where it would be emulated"},
    )

    def __post_init__(self):
        accelerator = torch.accelerator.current_accelerator()
        if launched_processes() > 1 and (accelerator is None or accelerator.type == "mps"):
            # accelerate joins the launched processes of a machine without a GPU (over gloo) only in a CPU-only run;
            # otherwise each would train alone as "process 0 of 1" (MPS has no process-group backend)
            self.use_cpu = True
        if self.bf16 is None:  # the fastest safe choice for this machine
            on_gpu = torch.cuda.is_available() and not self.use_cpu
            self.bf16 = not self.fp16 and (torch.cuda.is_bf16_supported() if on_gpu else cpu_has_native_bf16())
            # transformers takes bf16 on a CPU only when told that the run is CPU-only
            self.use_cpu = self.use_cpu or (self.bf16 and not on_gpu)
        super().__post_init__()

    @contextlib.contextmanager
    def main_process_first(self, local: bool = True, desc: str = "work"):
        """The main process first, then each other machine's main process (local=True), then the rest: files on a
        disk that machines share (output folder, datasets cache) and on a machine's own disk are each built once."""
        with super().main_process_first(local=False, desc=desc), super().main_process_first(local=local, desc=desc):
            yield


def launched_processes() -> int:
    """How many processes the launcher started (torchrun and `accelerate launch` set WORLD_SIZE, mpirun the rest)."""
    return get_int_from_env(["WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"], 1)


def check_process_group(training_args: TrainingArguments) -> None:
    """Logs this process's place in the group; launched processes that did not join one are an error."""
    launched, joined = launched_processes(), training_args.world_size
    if joined < launched:
        raise SystemExit(
            f"{launched} processes were launched but they did not join one process group (this one is process "
            f"{training_args.process_index} of {joined}), so each would train alone on all the data. Pass "
            "--use_cpu true to join them on the CPU (gloo), or --ddp_backend for this machine's accelerator "
            "(docs/training.md)"
        )
    per_process = training_args.train_batch_size * training_args.gradient_accumulation_steps
    backend = training_args.distributed_state.backend or "no"
    logger.warning(
        f"process {training_args.process_index} of {joined} ({backend} process group, {training_args.device}): "
        f"{per_process} rows of each {per_process * joined}-row optimizer step"
    )


DEMO_HOLDOUT = (
    "Colour=Red,ProductType=Dresses;Colour=Blue,ProductType=Jeans;Colour=Yellow,ProductType=Sports Shoes;"
    "Colour=Black,ProductType=Tshirts;Pattern=Checked,ProductType=Skirts"
)
# --demo: what the tiny model on the bundled catalogue needs (each is still overridable on the command line).
DEMO_DEFAULTS = {
    "projector_hidden_size": 256,
    "word_dropout": 0.25,  # the captioner reads the type off the image, not off the colour or pattern word before it
    "learning_rate": 2e-3,
    "num_train_epochs": 12,
    "per_device_train_batch_size": 32,
    "gradient_accumulation_steps": 1,
    "lr_step_epochs": 3.0,
    "lr_step_gamma": 0.6,
    "warmup_steps": 30,
    "max_length": 40,
    "save_total_limit": 1,
    "bf16": False,  # tiny matrices, and the same demo metrics on every machine
    # whole attribute combinations that neither the tower nor MODA ever sees: scored apart, as new items
    "holdout": DEMO_HOLDOUT,
}
DEMO_SIZES = {
    "image_size": 64,  # the catalogue's side: stripes, checks and dots blur away at 32 pixels
    "patch_size": 8,
    "vision_hidden": 64,
    "vision_layers": 3,
    "projection_dim": 64,
    "text_hidden": 96,
    "text_layers": 2,
    "heads": 4,
    "vocab_size": 400,
}


class SaveAtEpochEnd(TrainerCallback):
    """Saves a step checkpoint that falls on an epoch's last step at the end of that epoch, after its logging and
    evaluation. Trainer saves it before them, so a run resumed from it would skip that evaluation and loss log and
    restore the random state from before the evaluation (whose dataloader draws from torch's generator): its dropout
    would differ from the uninterrupted run's from the next step on (docs/training.md, "Resuming")."""

    def __init__(self):
        self.deferred = False

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if control.should_save and float(state.epoch).is_integer():
            control.should_save, self.deferred = False, True

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if self.deferred:
            control.should_save, self.deferred = True, False


class MODATrainer(Trainer):
    """Trainer with the seed's StepLR schedule (stepped per optimizer update, so it resumes exactly) and step
    checkpoints at an epoch's end saved after that epoch's evaluation (`SaveAtEpochEnd`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_callback(SaveAtEpochEnd)

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        if self.args.lr_step_epochs <= 0 or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        batches = math.ceil(len(self.train_dataset) / (self.args.per_device_train_batch_size * self.args.world_size))
        updates_per_epoch = max(1, batches // self.args.gradient_accumulation_steps)
        step_size = max(1, round(self.args.lr_step_epochs * updates_per_epoch))
        warmup = self.args.get_warmup_steps(num_training_steps)
        gamma = self.args.lr_step_gamma

        def factor(step: int) -> float:
            return min(1.0, (step + 1) / warmup) * gamma ** (step // step_size) if warmup else gamma ** (step // step_size)

        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer, factor)
        self._created_lr_scheduler = True
        return self.lr_scheduler


def parse_args(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, MODATrainingArguments]:
    """The three argument dataclasses; with --demo, DEMO_DEFAULTS replace the defaults (explicit flags still win).

    A first pass parses --demo as a bool, so that every spelling HfArgumentParser accepts (`--demo`, `--demo=true`,
    `--demo true`, `--demo=false`) decides it, not just the literal token "--demo"; it has no --help of its own, so
    `--demo --help` still lists the demo defaults.
    """
    parser = HfArgumentParser((ModelArguments, DataArguments, MODATrainingArguments))
    argv = sys.argv[1:] if argv is None else argv
    if HfArgumentParser(DataArguments, add_help=False).parse_known_args(argv)[0].demo:
        parser.set_defaults(**DEMO_DEFAULTS)
    return parser.parse_args_into_dataclasses(args=argv)


def prepare_demo(data_args: DataArguments, model_args: ModelArguments, output_dir: Path) -> None:
    """Draws the bundled catalogue and saves tiny backbones: a BPE tokenizer trained on its captions, a random OPT,
    and a CLIP vision tower pretrained on a separate synthetic catalogue (the stand-in for FashionCLIP)."""
    from moda.demo.backbones import TinySizes, save_tiny_backbones
    from moda.demo.catalog import make_catalog
    from moda.demo.vision_pretraining import REPORT_NAME, pretrain_vision_tower

    catalogue = output_dir / "catalog"
    if not (catalogue / "fashion.csv").is_file():
        make_catalog(catalogue, data_args.demo_items, seed=0, image_size=data_args.demo_image_size)
    backbones = output_dir / "backbones"
    if not (backbones / "text" / "tokenizer.json").is_file():
        descriptions = load_fashion_dataset(catalogue)["description"]
        save_tiny_backbones(backbones, descriptions, TinySizes(**DEMO_SIZES))
        (backbones / "vision" / REPORT_NAME).unlink(missing_ok=True)  # the tower is random again: pretrain it anew
    if not (backbones / "vision" / REPORT_NAME).is_file():
        pretrain_vision_tower(backbones / "vision", seed=1, holdout=data_args.holdout)  # the demo's data is seed 0
    data_args.dataset = str(catalogue)
    model_args.vision_model, model_args.text_model = str(backbones / "vision"), str(backbones / "text")


def build_model(model_args: ModelArguments) -> tuple[MODAForConditionalGeneration, MODAProcessor]:
    """The MODA of --model_name_or_path with its processor, or a new one from --vision_model and --text_model; its
    vision tower trains only with --freeze_vision false (from_pretrained alone leaves every weight trainable)."""
    if model_args.model_name_or_path:
        model, processor = load_moda(model_args.model_name_or_path)
        model.config.freeze_vision = model_args.freeze_vision
    else:
        model = MODAForConditionalGeneration.from_backbones(
            model_args.vision_model,
            model_args.text_model,
            image_features=model_args.image_features,
            freeze_vision=model_args.freeze_vision,
            projector_hidden_size=model_args.projector_hidden_size,
        )
        processor = MODAProcessor.from_backbones(
            model_args.vision_model, model_args.text_model, num_image_tokens=model.config.num_image_tokens
        )
    model.vision_tower.requires_grad_(not model_args.freeze_vision)
    if model_args.word_dropout is not None:
        model.config.word_dropout = model_args.word_dropout
    return model, processor


def load_moda(name_or_path: str) -> tuple[MODAForConditionalGeneration, MODAProcessor]:
    """A saved MODA and its processor, every weight from the checkpoint; ValueError for another model's checkpoint
    (whose weights would load into a random MODA without a word)."""
    model_type = MODAConfig.get_config_dict(name_or_path)[0].get("model_type")
    if model_type != MODAConfig.model_type:
        raise ValueError(
            f"--model_name_or_path {name_or_path} is a {model_type!r} checkpoint, not a MODA: pass a saved MODA, "
            "or build a new one with --vision_model and --text_model"
        )
    model, loading = MODAForConditionalGeneration.from_pretrained(name_or_path, output_loading_info=True)
    if loading["missing_keys"]:
        missing = sorted(loading["missing_keys"])
        raise ValueError(f"--model_name_or_path {name_or_path} lacks {len(missing)} MODA weights, e.g. {missing[:3]}")
    return model, MODAProcessor.from_pretrained(name_or_path)


def add_lora(model: MODAForConditionalGeneration, model_args: ModelArguments):
    """LoRA on the LM's attention projections; the projector is trained in full (saved with the adapter)."""
    from peft import get_peft_model

    config = lora_config(
        model_args.lora_r, model_args.lora_alpha, model_args.lora_dropout, model_args.lora_target_modules.split(",")
    )
    return get_peft_model(model, config)


def prepare_data(
    data_args: DataArguments, training_args: MODATrainingArguments, model, processor, use_cache: bool
) -> datasets.DatasetDict:
    """Load, drop bad rows, split, and (with a frozen tower) cache image embeddings; main process first."""
    with training_args.main_process_first(desc="dataset preparation"):
        dataset = drop_unusable(load_fashion_dataset(data_args.dataset, data_args.max_samples))
        splits = split_dataset(
            dataset, data_args.validation_size, data_args.test_size, training_args.seed, data_args.holdout
        )
        if use_cache:
            splits = add_image_embeds(splits, model, processor, data_args.embed_batch_size)
            splits = splits.with_format("numpy", columns=["image_embeds"], output_all_columns=True)
    logger.warning(", ".join(f"{name}: {len(split)} rows" for name, split in splits.items()))
    return splits


@torch.inference_mode()
def generate_descriptions(model, processor, dataset: datasets.Dataset, data_args: DataArguments) -> list[str]:
    """Greedy descriptions for every row, from cached embeddings when present (the tower then never runs)."""
    model.eval()
    descriptions = []
    for start in tqdm(range(0, len(dataset), data_args.generation_batch_size), desc="Describing test images"):
        rows = dataset[start : start + data_args.generation_batch_size]
        if "image_embeds" in rows:
            inputs = processor(text=[""] * len(rows["description"]))
            inputs["image_embeds"] = cached_embeds(rows)
        else:
            inputs = processor(images=[open_image(value) for value in rows["image"]])
        generated = model.generate(
            **inputs.to(model.device), max_new_tokens=data_args.generation_max_new_tokens, do_sample=False
        )
        descriptions.extend(processor.batch_decode(generated, skip_special_tokens=True))
    return descriptions


def score_descriptions(predictions: list[str], dataset: datasets.Dataset) -> dict[str, float | None]:
    """BLEU, ROUGE-L and, for the catalogue attribute columns the dataset has, fashion-attribute truth."""
    from moda.metrics import load_metric

    references = dataset["description"]
    scores = {
        "bleu": load_metric("bleu").compute(predictions=predictions, references=references)["bleu"],
        "rougeL": load_metric("rouge").compute(predictions=predictions, references=references)["rougeL"],
    }
    columns = {name: dataset[name] for name in FASHION_ATTRIBUTES if name in dataset.column_names}
    if columns:
        attribute_refs = [{name: cell_text(cells[i]) for name, cells in columns.items()} for i in range(len(dataset))]
        scores.update(load_metric("fashion_attributes").compute(predictions=predictions, references=attribute_refs))
    return scores


def score_combinations(predictions: list[str], dataset: datasets.Dataset, holdout: str) -> dict[str, dict]:
    """`score_descriptions` for each held-out combination's rows on their own (with their count), so that one
    combination's misses do not hide behind another's hits."""
    scores = {}
    for combination in parse_holdout(holdout):
        rows = [row for row, matches in enumerate(combination_matches(dataset, combination)) if matches]
        name = ",".join(f"{column}={value}" for column, value in combination.items())
        scores[name] = {"rows": len(rows), **score_descriptions([predictions[i] for i in rows], dataset.select(rows))}
    return scores


def save_final(trainer: Trainer, model, processor, model_args: ModelArguments, output_dir: Path):
    """Saves model + processor (a LoRA run: its adapter, or with --merge_lora the merged model); returns the model."""
    if model_args.lora and model_args.merge_lora:
        model = model.merge_and_unload()
        if trainer.is_world_process_zero():
            model.save_pretrained(output_dir)
    else:
        trainer.save_model(str(output_dir))
    if trainer.is_world_process_zero():
        processor.save_pretrained(output_dir)
        # the published folder holds no pickle: Trainer's training_args.bin becomes readable JSON
        (output_dir / "training_args.bin").unlink(missing_ok=True)
        (output_dir / "training_args.json").write_text(trainer.args.to_json_string())
    return model


def main(argv: list[str] | None = None) -> dict:
    started = time.monotonic()
    model_args, data_args, training_args = parse_args(argv)
    check_process_group(training_args)
    output_dir = Path(training_args.output_dir)
    set_seed(training_args.seed)
    if training_args.device.type == "cpu" and reuse_freed_memory():
        logger.info("CPU training: freed memory is kept for reuse (moda/cpu_memory.py)")
    if data_args.demo:
        threads_chosen = "OMP_NUM_THREADS" in os.environ
        if not threads_chosen:  # the tower's pretraining steps (64 images each) gain from a second core
            torch.set_num_threads(min(2, os.cpu_count() or 1))
        with training_args.main_process_first(desc="demo catalogue"):
            prepare_demo(data_args, model_args, output_dir)
        if not threads_chosen:
            # MODA's demo matrices are tiny: extra intra-op threads only add synchronisation, and on a busy
            # 2-core machine OpenMP spin-waiting made a step ~20x slower than one thread.
            torch.set_num_threads(1)
    if data_args.dataset is None:
        raise ValueError("pass --dataset (a catalogue folder, file or Hub id) or --demo")

    last_checkpoint = training_args.resume_from_checkpoint
    if last_checkpoint is None and output_dir.is_dir():
        last_checkpoint = get_last_checkpoint(str(output_dir))
        if last_checkpoint:
            logger.warning(f"Resuming from {last_checkpoint} (found in --output_dir)")

    model, processor = build_model(model_args)
    use_cache = data_args.cache_image_embeds and model_args.freeze_vision
    if data_args.cache_image_embeds and not use_cache:
        logger.warning("The vision tower trains, so its embeddings change: image embedding cache disabled")
    splits = prepare_data(data_args, training_args, model, processor, use_cache)

    if model_args.lora:
        if training_args.process_index == 0:
            model.save_pretrained(output_dir / "base_model")  # what the adapter applies to
            processor.save_pretrained(output_dir / "base_model")
        model = add_lora(model, model_args)
        model.peft_config["default"].base_model_name_or_path = str((output_dir / "base_model").resolve())
        model.print_trainable_parameters()

    trainer = MODATrainer(
        model=model,
        args=training_args,
        train_dataset=splits["train"],
        eval_dataset=splits["validation"],
        data_collator=MODACollator(processor, data_args.max_length),
        processing_class=processor,
    )
    train_result = trainer.train(resume_from_checkpoint=last_checkpoint)
    metrics = {
        "rows": {name: len(split) for name, split in splits.items()},
        "train": train_result.metrics,
        "validation": trainer.evaluate(),
        "test": trainer.evaluate(splits["test"], metric_key_prefix="test"),
    }
    model = save_final(trainer, model, processor, model_args, output_dir)
    if trainer.is_world_process_zero():
        write_fast_path_files(output_dir, splits["train"]["description"], processor.tokenizer)
        for name in ("test", "holdout"):
            if name in splits and len(splits[name]):
                predictions = generate_descriptions(model, processor, splits[name], data_args)
                metrics.setdefault(name, {}).update(score_descriptions(predictions, splits[name]))
                if name == "holdout":
                    metrics["holdout_combinations"] = score_combinations(predictions, splits[name], data_args.holdout)
                if name == "test":
                    write_samples(predictions, splits[name], data_args.num_samples, output_dir / "samples.jsonl")
        metrics["run"] = {"seconds": time.monotonic() - started}
        if data_args.demo:
            metrics["goals"] = check_goals(metrics)
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
        plot_loss_curve(trainer.state.log_history, output_dir / "loss_curve.png")
        report(metrics, output_dir)
    return metrics


def write_samples(predictions: list[str], dataset: datasets.Dataset, count: int, path: Path) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for index, prediction in enumerate(predictions[:count]):
            source = dataset[index]
            row = {"image": (source["image"] or {}).get("path")}
            row.update({name: source[name] for name in METADATA_COLUMNS if name in dataset.column_names})
            row.update(reference=source["description"], generated=prediction)
            handle.write(json.dumps(row) + "\n")


SCORED_SPLITS = {
    "test": "test items (new items of the combinations trained on)",
    "holdout": "items of the held-out combinations (attribute combinations never seen in training)",
}


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def report(metrics: dict, output_dir: Path) -> None:
    """Prints the test scores and, per fashion attribute and scored split, how often the descriptions name it
    right, contradict it, or state it at all."""
    test = metrics["test"]
    print(f"test loss {test['test_loss']:.4f}  BLEU {test['bleu']:.3f}  ROUGE-L {test['rougeL']:.3f}")
    for split, name in SCORED_SPLITS.items():
        scores = metrics.get(split, {})
        if "colour_and_type_accuracy" not in scores:
            continue
        print(f"Descriptions of {metrics['rows'][split]} {name}:")
        print(f"  {'attribute':14}{'named right':>12}{'contradicted':>14}{'stated':>9}")
        for column, prefix in FASHION_ATTRIBUTES.items():
            rates = (_percent(scores[f"{prefix}_{key}"]) for key in ("accuracy", "contradiction_rate", "stated_rate"))
            print(f"  {column:14}" + "".join(f"{rate:>{width}}" for rate, width in zip(rates, (12, 14, 9))))
        print(
            f"  colour + type named right: {_percent(scores['colour_and_type_accuracy'])}, "
            f"contradict nothing: {_percent(scores['contradiction_free_rate'])}"
        )
        if split == "holdout" and metrics.get("holdout_combinations"):
            report_combinations(metrics["holdout_combinations"])
    if "goals" in metrics:
        report_goals(metrics["goals"])
    outputs = (
        "model, processor, caption_vocabulary.json, caption_drafts.json, cpu_fast_weights.safetensors, metrics.json, "
        "loss_curve.png and samples.jsonl"
    )
    print(f"{outputs} are in {output_dir}")


COMBINATION_COLUMNS = {
    "colour": "colour_accuracy",
    "type": "product_type_accuracy",
    "pattern": "pattern_accuracy",
    "colour + type": "colour_and_type_accuracy",
    "contradict nothing": "contradiction_free_rate",
}


def report_combinations(combinations: dict[str, dict]) -> None:
    """One line per held-out combination: its item count and how often its descriptions name each value right."""
    name_width = max(len(name) for name in combinations) + 2
    widths = {title: max(len(title), len("100.0%")) + 2 for title in COMBINATION_COLUMNS}
    print(f"  {'held-out combination':{name_width}}{'items':>6}" + "".join(f"{t:>{w}}" for t, w in widths.items()))
    for name, scores in combinations.items():
        rates = "".join(f"{_percent(scores.get(key)):>{widths[title]}}" for title, key in COMBINATION_COLUMNS.items())
        print(f"  {name:{name_width}}{scores['rows']:>6}{rates}")


if __name__ == "__main__":
    main()
