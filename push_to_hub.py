"""Publish MODA: stage the model repo (weights, config, code, processor, model card) and its Gradio Space, check
that the staged model loads and generates in a clean process, then upload both.

    python push_to_hub.py outputs/demo --repo-id user/moda --space-id user/moda-space
    python push_to_hub.py outputs/demo --repo-id user/moda --space-id user/moda-space --dry-run staged/

Only a MODA checkpoint whose every weight loads is published: another model's folder, or a MODA config beside
weights that do not fit it, is refused before anything is staged. The card's results and loss curve come from the
folder itself (train_hf.py's metrics.json and loss_curve.png, or a Trainer ``checkpoint-N``'s trainer_state.json).

``--dry-run DIR`` writes ``DIR/model`` and ``DIR/space``, checks the model folder and stops: what lies there is
exactly what would be uploaded. The token comes from ``HF_TOKEN`` or the ``hf auth login`` cache and is never
printed.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData, SpaceCard
from transformers.utils import logging

from moda.clean_process import check_loads_in_clean_process
from moda.loss_curve import plot_loss_curve
from modeling_moda import MODAConfig, MODAForConditionalGeneration
from modeling_moda.caption_drafts import DRAFTS_FILE
from modeling_moda.caption_vocabulary import VOCABULARY_FILE
from modeling_moda.quantized_weights import WEIGHTS_FILE
from processing import MODAProcessor

logger = logging.get_logger("moda.push_to_hub")

REPO_ROOT = Path(__file__).resolve().parent
SPACE_SOURCE = REPO_ROOT / "space"
SPACE_FILES = ("app.py", "requirements.txt", "README.md")
# The seed's backbones, named in the card when the checkpoint's config does not name Hub backbones itself.
SEED_BASE_MODELS = {"vision": "patrickjohncyh/fashion-clip", "text": "facebook/opt-125m"}
# Trainer bookkeeping that is not a score of the model.
NOT_SCORES = ("runtime", "samples_per_second", "steps_per_second", "epoch", "step", "total_flos")
SCORE_SECTIONS = ("test", "validation", "eval", "results")
BATCH_KEY = re.compile(r"images_per_s_batch(\d+)$")
# What `benchmarks/inference.py --json` writes, used for the card's CPU latency table unless --benchmark says.
DEFAULT_BENCHMARKS = REPO_ROOT / "benchmarks" / "results"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def trainer_log(checkpoint: Path) -> list[dict]:
    """The loss and evaluation entries of a Trainer checkpoint's own `trainer_state.json` (none elsewhere)."""
    path = checkpoint / "trainer_state.json"
    history = json.loads(path.read_text()).get("log_history", []) if path.is_file() else []
    return [entry for entry in history if "loss" in entry or "eval_loss" in entry]


def read_metrics(checkpoint: Path) -> dict[str, dict[str, float]]:
    """The checkpoint's own results as `{section: {name: number}}`, read from files inside the folder only: the
    files beside a Trainer `checkpoint-N/` describe the run's final model, not that checkpoint.

    train_hf.py's metrics.json has sections (`rows`, `train`, `validation`, `test`, `holdout`); a flat file of
    Trainer metrics (`eval_bleu`, `train_loss` ...) becomes the one section `results`. A `checkpoint-N/` without
    one gives its trainer_state.json's last train and evaluation logs, as of its step.
    """
    path = checkpoint / "metrics.json"
    if not path.is_file():
        history = trainer_log(checkpoint)
        latest = {
            "train": next((entry for entry in reversed(history) if "loss" in entry), {}),
            "validation": next((entry for entry in reversed(history) if "eval_loss" in entry), {}),
        }
        return {section: numbers for section, numbers in latest.items() if numbers}
    raw = json.loads(path.read_text())
    sections = {"results": {key: value for key, value in raw.items() if is_number(value)}}
    for key, value in raw.items():
        if isinstance(value, dict):
            sections[key] = {name: number for name, number in value.items() if is_number(number)}
    return {section: numbers for section, numbers in sections.items() if numbers}


def evaluation_scores(metrics: dict[str, dict[str, float]]) -> tuple[str | None, dict[str, float]]:
    """The held-out scores for the model index: (split, {bleu, rougeL, loss, ...}), Trainer bookkeeping dropped.

    The test split is preferred over validation; in a flat file only `eval_*` / `test_*` entries count.
    """
    for section in SCORE_SECTIONS:
        scores = {}
        for key, value in metrics.get(section, {}).items():
            prefix, _, rest = key.partition("_")
            if section == "results" and prefix not in ("eval", "test"):
                continue
            name = rest if prefix in ("eval", "test") else key
            if name and not name.endswith(NOT_SCORES):
                scores[name] = value
        if scores:
            return (None if section == "results" else section), scores
    return None, {}


def hub_metric_ids(scores: dict[str, float]) -> list[str]:
    """The `evaluate` metric ids behind the score names, for the card's `metrics:` field."""
    kinds = ("bleu", "rouge")
    return sorted({next((k for k in kinds if k in name), "accuracy") for name in scores if name != "loss"})


def benchmark_table(path: Path) -> str:
    """The latency table of a `benchmarks/inference.py --json` report (what the card shows as CPU latency)."""
    report = json.loads(path.read_text())
    results, machine = report["results"], report.get("machine", {})
    batches = sorted({int(found[1]) for result in results.values() for found in map(BATCH_KEY.match, result) if found})
    headers = ["variant", "1 image (s)", *(f"images/s, batch {batch}" for batch in batches), "peak memory (MB)"]
    lines = [f"| {' | '.join(headers)} |", "|" + "---|" * len(headers)]
    for name, result in results.items():
        throughput = [f"{result[f'images_per_s_batch{batch}']:.2f}" for batch in batches]
        cells = [name, f"{result['latency_s']:.3f}", *throughput, f"{result['peak_memory_mb']:.0f}"]
        lines.append(f"| {' | '.join(cells)} |")
    where = f"{machine.get('cpu', 'CPU')}, {machine.get('torch_threads', '?')} threads"
    return (
        f"Real-size MODA, {report.get('new_tokens', '?')} new tokens, greedy; {where}. "
        f"Measured with `{report.get('command', 'python benchmarks/inference.py')}`.\n\n" + "\n".join(lines)
    )


def base_models(model: MODAForConditionalGeneration) -> list[str]:
    """The Hub backbones the checkpoint was built from, or the seed's FashionCLIP and OPT-125M."""
    names = []
    for part, config in (("vision", model.config.vision_config), ("text", model.config.text_config)):
        name = getattr(config, "_name_or_path", "") or ""
        names.append(name if HUB_ID.match(name) and not Path(name).exists() else SEED_BASE_MODELS[part])
    return names


@dataclass
class CardInputs:
    """What the model card says, gathered from the checkpoint, its run folder and the command line."""

    repo_id: str
    license: str
    num_parameters: int
    base_models: list[str]
    datasets: list[str] = field(default_factory=list)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    loss_curve: str | None = None
    benchmarks: list[str] = field(default_factory=list)
    space_id: str | None = None


def card_metadata(inputs: CardInputs) -> ModelCardData:
    split, scores = evaluation_scores(inputs.metrics)
    dataset = inputs.datasets[0] if inputs.datasets else "custom"
    return ModelCardData(
        library_name="transformers",
        pipeline_tag="image-text-to-text",
        base_model=inputs.base_models,
        datasets=inputs.datasets or None,
        metrics=hub_metric_ids(scores) or None,
        license=inputs.license,
        language=["en"],
        tags=["moda", "fashion", "image-captioning", "vision-language", "custom_code"],
        model_name=inputs.repo_id.split("/")[-1],
        eval_results=[
            EvalResult(
                task_type="image-text-to-text",
                dataset_type=dataset,
                dataset_name=f"{dataset} ({split or 'held-out'} split)",
                dataset_split=split,
                metric_type=name,
                metric_value=value,
            )
            for name, value in sorted(scores.items())
        ]
        or None,
    )


def card_body(inputs: CardInputs) -> str:
    repo_id, name = inputs.repo_id, inputs.repo_id.split("/")[-1]
    backbones = ", ".join(f"[{model}](https://huggingface.co/{model})" for model in inputs.base_models)
    sections = [
        f"# {name}: MODA, the Multimodal Object Description Assistant",
        textwrap.dedent(
            f"""\
            MODA writes a short description of the fashion item in a product photo, e.g.
            *"A navy blue men's striped polo shirt, ideal for casual wear."*

            It is a small vision-language model ({inputs.num_parameters / 1e6:.2f}M parameters) that runs well on
            a laptop CPU: a frozen CLIP vision tower (FashionCLIP, ViT-B/32) turns the photo into one pooled
            embedding, a two-layer MLP projector maps it into the token space of an OPT decoder, and the decoder
            writes the description. Built from: {backbones}."""
        ),
        "## How to use",
        textwrap.dedent(
            f"""\
            MODA's code ships in this repository, so loading needs `trust_remote_code=True` and no install
            beyond `transformers`, `torch` and `pillow`:

            ```python
            from PIL import Image
            from transformers import AutoModel, AutoProcessor

            model = AutoModel.from_pretrained("{repo_id}", trust_remote_code=True)
            processor = AutoProcessor.from_pretrained("{repo_id}", trust_remote_code=True)

            inputs = processor(images=[Image.open("shirt.jpg"), Image.open("shoe.png")], return_tensors="pt")
            ids = model.generate(**inputs, max_new_tokens=32)  # batched; num_beams / do_sample work too
            print(processor.batch_decode(ids, skip_special_tokens=True))
            ```

            With the pipeline:

            ```python
            from transformers import pipeline

            describe = pipeline("image-text-to-text", model="{repo_id}", trust_remote_code=True)
            describe(images="shirt.jpg", text="")[0]["generated_text"]
            ```

            Batches are padded on the left, so a batch gives the same descriptions as one photo at a time."""
        ),
    ]
    if inputs.space_id:
        sections.append(f"Try it in the Space: [{inputs.space_id}](https://huggingface.co/spaces/{inputs.space_id}).")
    sections += [
        "## Training",
        textwrap.dedent(
            """\
            The vision tower stays frozen; the projector and the decoder are trained with next-token
            cross-entropy on the description tokens only (the image slot, BOS and padding carry label -100),
            with `transformers.Trainer`. The descriptions are distilled without labelled data: Phi-3 Vision
            describes each catalogue photo of the Kaggle *fashion-images* set, Phi-3 Instruct rewrites the answer
            into one sentence, and answers that contradict the catalogue metadata or copy text from the image are
            filtered out."""
        ),
    ]
    if inputs.loss_curve:
        sections.append(f"![Training and evaluation loss]({inputs.loss_curve})")
    if inputs.metrics:
        rows = "\n".join(
            f"| {section} | {name} | {value:.4g} |"
            for section, numbers in inputs.metrics.items()
            for name, value in sorted(numbers.items())
        )
        sections += ["## Results of the training run", f"| split | metric | value |\n|---|---|---|\n{rows}"]
    if inputs.benchmarks:
        sections += ["## CPU latency", *inputs.benchmarks]
    sections += [
        "## Limitations",
        textwrap.dedent(
            """\
            - One item per photo, product-catalogue style (plain background). Photos of people, outfits or street
              scenes get a description of one item at best.
            - English only; descriptions are short and name gender, colour, type, pattern and usage. Attributes the
              catalogue does not hold (fabric, brand, size) are not learned, and similar colours can be confused.
            - The training descriptions come from a teacher model: its mistakes are learned too.
            - Not meant for decisions about people. The OPT decoder carries its own licence terms."""
        ),
    ]
    return "\n\n".join(sections) + "\n"


def build_model_card(inputs: CardInputs) -> ModelCard:
    return ModelCard(f"---\n{card_metadata(inputs).to_yaml()}\n---\n\n{card_body(inputs)}")


def cpu_benchmarks() -> list[Path]:
    """The CPU inference reports in benchmarks/results/ (the card's default latency tables)."""
    reports = sorted(DEFAULT_BENCHMARKS.glob("inference*.json"))
    return [path for path in reports if json.loads(path.read_text()).get("machine", {}).get("device") == "cpu"]


def load_checkpoint(checkpoint: Path) -> MODAForConditionalGeneration:
    """The MODA in `checkpoint`, every weight loaded from it; ValueError for anything else (another model's folder,
    a LoRA adapter, weights that do not fit the config), before anything is staged."""
    if (checkpoint / "adapter_config.json").is_file():
        raise ValueError(f"{checkpoint} holds a LoRA adapter: publish a merged model (train_hf.py --merge_lora)")
    if not (checkpoint / "config.json").is_file():
        raise ValueError(f"{checkpoint} is not a MODA checkpoint folder (no config.json)")
    model_type = json.loads((checkpoint / "config.json").read_text()).get("model_type")
    if model_type != MODAConfig.model_type:
        raise ValueError(
            f"{checkpoint} is not a MODA checkpoint: its config.json has model_type {model_type!r}, not 'moda'"
        )
    model, loading = MODAForConditionalGeneration.from_pretrained(checkpoint, output_loading_info=True)
    if loading["missing_keys"] or loading["unexpected_keys"]:
        missing, unexpected = sorted(loading["missing_keys"]), sorted(loading["unexpected_keys"])
        raise ValueError(
            f"{checkpoint}'s weights are not this MODA's: {len(missing)} missing {missing[:3]}, {len(unexpected)} "
            f"unexpected {unexpected[:3]}. Publishing it would upload untrained weights."
        )
    return model


def stage_model(
    checkpoint: Path,
    out: Path,
    repo_id: str,
    license: str = "mit",
    datasets: Sequence[str] = (),
    base_model: Sequence[str] = (),
    space_id: str | None = None,
    benchmarks: Sequence[Path] | None = None,
) -> Path:
    """Writes into `out` exactly the files of the model repo: re-saved with this repository's code (so the
    config's `auto_map` and the code files are current), processor, generation config, caption vocabulary and
    drafts, card and loss curve.
    Optimizer state, RNG and other Trainer files in the checkpoint are left behind."""
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty; stage into a new folder")
    model = load_checkpoint(checkpoint)
    model.save_pretrained(out)
    MODAProcessor.from_pretrained(checkpoint).save_pretrained(out)
    # what `moda describe --fast int8` shortlists the LM head to, the guesses it checks several at a time and the
    # int8/bf16 weights it starts from
    for name in (VOCABULARY_FILE, DRAFTS_FILE, WEIGHTS_FILE):
        if (checkpoint / name).is_file():
            shutil.copy(checkpoint / name, out / name)

    inputs = CardInputs(
        repo_id=repo_id,
        license=license,
        num_parameters=model.num_parameters(),
        base_models=list(base_model) or base_models(model),
        datasets=list(datasets),
        metrics=read_metrics(checkpoint),
        space_id=space_id,
    )
    if (checkpoint / "loss_curve.png").is_file():
        shutil.copy(checkpoint / "loss_curve.png", out / "loss_curve.png")
    elif history := trainer_log(checkpoint):  # a checkpoint-N: its own curve, up to its step
        plot_loss_curve(history, out / "loss_curve.png")
    inputs.loss_curve = "loss_curve.png" if (out / "loss_curve.png").is_file() else None
    inputs.benchmarks = [benchmark_table(path) for path in (cpu_benchmarks() if benchmarks is None else benchmarks)]
    build_model_card(inputs).save(out / "README.md")
    return out


def stage_space(out: Path, model_repo_id: str) -> Path:
    """Copies `space/` into `out`, its README pointing at the model repo (the app's default model)."""
    out.mkdir(parents=True, exist_ok=True)
    for name in SPACE_FILES:
        shutil.copy(SPACE_SOURCE / name, out / name)
    shutil.copytree(SPACE_SOURCE / "examples", out / "examples", dirs_exist_ok=True)
    card = SpaceCard.load(out / "README.md")
    card.data.models = [model_repo_id]
    card.save(out / "README.md")
    return out


class HubApi(Protocol):
    """The part of `huggingface_hub.HfApi` that publishing uses (tests pass a fake)."""

    def create_repo(self, repo_id: str, **kwargs): ...

    def upload_folder(self, *, repo_id: str, folder_path: str | Path, **kwargs): ...

    def add_space_variable(self, repo_id: str, key: str, value: str, **kwargs): ...


def upload(
    api: HubApi,
    model_dir: Path,
    repo_id: str,
    private: bool = False,
    space_dir: Path | None = None,
    space_id: str | None = None,
) -> list[str]:
    """Creates (or reuses) the repos and uploads the staged folders; returns the URLs."""
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=model_dir, repo_type="model", commit_message="Upload MODA")
    urls = [f"https://huggingface.co/{repo_id}"]
    if space_dir is not None and space_id is not None:
        variable = {"key": "MODA_MODEL", "value": repo_id}
        api.create_repo(
            space_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True, space_variables=[variable]
        )
        api.add_space_variable(space_id, "MODA_MODEL", repo_id)  # create_repo leaves an existing Space's alone
        api.upload_folder(repo_id=space_id, folder_path=space_dir, repo_type="space", commit_message="Update MODA demo")
        urls.append(f"https://huggingface.co/spaces/{space_id}")
        if private:
            logger.warning(f"{repo_id} is private: add an HF_TOKEN secret with read access to {space_id}")
    return urls


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Stage, check and upload MODA and its Gradio Space to the Hub")
    parser.add_argument("checkpoint", type=Path, help="a saved MODA folder (save_pretrained or Trainer output)")
    parser.add_argument("--repo-id", required=True, help="model repo, USER/NAME")
    parser.add_argument("--space-id", help="also create/update this Gradio Space, USER/NAME")
    parser.add_argument("--private", action="store_true", help="create private repos")
    parser.add_argument("--dry-run", type=Path, metavar="DIR", help="write DIR/model and DIR/space, check, stop")
    parser.add_argument("--license", default="mit")
    parser.add_argument("--dataset", action="append", default=[], help="Hub dataset id for the card (repeatable)")
    parser.add_argument("--base-model", action="append", default=[], help="Hub id of a backbone (repeatable)")
    parser.add_argument(
        "--benchmark",
        action="append",
        type=Path,
        help="a `benchmarks/inference.py --json` report for the card (repeatable; default: the CPU reports in "
        "benchmarks/results/)",
    )
    return parser


def main(argv: Sequence[str] | None = None, api: HubApi | None = None) -> int:
    args = build_parser().parse_args(argv)
    for flag, repo in (("--repo-id", args.repo_id), ("--space-id", args.space_id)):
        if repo is not None and not HUB_ID.match(repo):
            raise SystemExit(f"{flag} must look like USER/NAME, got {repo!r}")
    with tempfile.TemporaryDirectory(prefix="moda-stage-") as scratch:
        root = args.dry_run or Path(scratch)
        try:
            model_dir = stage_model(
                args.checkpoint,
                root / "model",
                args.repo_id,
                license=args.license,
                datasets=args.dataset,
                base_model=args.base_model,
                space_id=args.space_id,
                benchmarks=args.benchmark,
            )
        except ValueError as error:
            raise SystemExit(f"push_to_hub.py: {error}") from error
        space_dir = stage_space(root / "space", args.repo_id) if args.space_id else None
        text = check_loads_in_clean_process(model_dir)
        print(f"staged {model_dir}: loads in a clean process and generates {text!r}")
        if args.dry_run:
            print(f"dry run: nothing uploaded; staged folders are in {args.dry_run}")
            return 0
        for url in upload(api or HfApi(), model_dir, args.repo_id, args.private, space_dir, args.space_id):
            print(f"uploaded {url}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
