"""Data-free distillation: the Phi-3 Vision -> Phi-3 Instruct pipeline that writes MODA's training data.

Step 1 shows each catalogue image to a vision-language model with Prompt I (the seed's text, verbatim). Step 2 gives
that description and the item's catalogue metadata to a text model with Prompt II, which keeps what the metadata
supports and drops text read off the image. The refined descriptions, paired with their images and metadata, become
a `datasets` folder (`OUT/dataset`) that `train_hf.py` reads as is.

Every record is appended to a JSONL journal per step and process as soon as its batch ends (flushed and fsynced):
a crash loses at most the batch in flight, and a re-run does only what is missing.

    python -m moda.distill --catalog fashion.csv --images DIR --out OUT
    accelerate launch --num_processes 4 -m moda.distill --catalog fashion.csv --images DIR --out OUT
    accelerate launch --multi_gpu --num_processes 2 -m moda.distill ...   # several CPU processes, no GPU
    python -m moda.distill --catalog fashion.csv --out OUT --backend scripted:answers.json
"""

import csv
import functools
import gc
import json
import os
import string
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env
from datasets import Dataset, Features, Image, Sequence, Value, load_from_disk
from huggingface_hub import DatasetCard, DatasetCardData
from PIL import Image as PILImage
from tqdm.auto import tqdm
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    HfArgumentParser,
)
from transformers.utils import logging

from processing.data import KAGGLE_COLUMNS, ImageFinder, cell_text
from processing.processing_moda import load_rgb_image

from .answers import AnswerError, parse_description
from .guard import DescriptionGuard

logger = logging.get_logger(__name__)

PROMPTS = Path(__file__).parent / "prompts"
# Prompt II placeholder -> catalogue column; the guard checks descriptions against the same fields.
METADATA = {
    "gender": "Gender", "category": "Category", "subcategory": "SubCategory", "product_type": "ProductType",
    "colour": "Colour", "usage": "Usage",
}  # fmt: skip
OUTPUT_COLUMNS = ("image", "description", "raw_step1", "raw_step2", "flags")
PHI3_IMAGE_TAG = "<|image_1|>"
STEPS = ("step1", "step2")


@dataclass
class DistillArguments:
    """Command-line options of `python -m moda.distill`."""

    catalog: str = field(metadata={"help": "Kaggle fashion-images style fashion.csv."})
    out: str = field(metadata={"help": "Output folder: journals, dataset/, descriptions.jsonl, summary.json."})
    images: str | None = field(default=None, metadata={"help": "Image folder (default: the catalogue's folder)."})
    backend: str = field(
        default="transformers", metadata={"help": "`transformers`, or `scripted:<answers.json>` for tests and demos."}
    )
    vision_model: str = field(default="microsoft/Phi-3-vision-128k-instruct", metadata={"help": "Step-1 model."})
    text_model: str = field(default="microsoft/Phi-3-mini-4k-instruct", metadata={"help": "Step-2 model."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Needed by Phi-3 Vision's own code."})
    batch_size: int = field(default=1, metadata={"help": "Phi-3 Vision's processor cannot batch: keep 1 for it."})
    retries: int = field(default=2, metadata={"help": "Extra tries, sampled, for an answer without a description."})
    max_new_tokens: int = field(default=128)
    limit: int | None = field(default=None, metadata={"help": "Only the first N catalogue rows."})
    dry_run: bool = field(default=False, metadata={"help": "Print the prompts of the first items; load no model."})
    push_to_hub: str | None = field(default=None, metadata={"help": "Dataset repo id to upload OUT/dataset to."})
    private: bool = field(default=False)


# ---------------------------------------------------------------------------------------------------------- prompts
@functools.cache
def read_prompt(name: str) -> str:
    return (PROMPTS / name).read_text(encoding="utf-8")


def prompt_i() -> str:
    """Prompt I exactly as the seed published it (Phi-3 chat format, one image tag)."""
    return read_prompt("prompt_i.txt")


def prompt_ii(description: str, item: Mapping[str, str | None]) -> str:
    """Prompt II filled with the Step-1 description and the item's metadata.

    The line of an empty field is left out: the teacher is told the metadata is always right, so a blank
    "- Colour:" line would be read as a fact about the item.
    """
    metadata = {key: cell_text(item[column]) for key, column in METADATA.items()}
    empty = [f"${key}" for key, value in metadata.items() if not value]
    lines = read_prompt("prompt_ii.txt").splitlines(keepends=True)
    template = "".join(line for line in lines if not any(placeholder in line for placeholder in empty))
    return string.Template(template).substitute(description=description, **metadata)


# -------------------------------------------------------------------------------------------------------- catalogue
def read_catalog(path: str | os.PathLike, limit: int | None = None) -> list[dict[str, str]]:
    """The catalogue rows as strings; raises ValueError when a column is missing or a ProductId repeats."""
    with open(path, newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        missing = [column for column in KAGGLE_COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path} lacks catalogue column(s) {', '.join(missing)}; expected {KAGGLE_COLUMNS}")
        rows = [dict(row) for row in reader]
    ids = Counter(row["ProductId"] for row in rows)
    if repeated := [product_id for product_id, count in ids.items() if count > 1]:
        raise ValueError(f"{path}: ProductId must be unique, repeated: {repeated[:5]}")
    return rows[:limit]


# --------------------------------------------------------------------------------------------------------- backends
class Backend(Protocol):
    """A teacher model: one answer per prompt. `ids` name the items (scripted answers are keyed by them); an
    `attempt` above 0 is a retry, where real models sample rather than repeat their greedy answer."""

    def generate(
        self, prompts: list[str], images: list[PILImage.Image] | None, *, ids: list[str], attempt: int
    ) -> list[str]: ...


class ScriptedBackend:
    """Answers from a script instead of a model, for tests and demos.

    `answers` is a callable `(prompt, image, item_id, attempt) -> str`, or a mapping from item id (`"*"` for any
    other item) to an answer or to a list of answers, one per attempt (the last one repeats)."""

    def __init__(self, answers: Callable[..., str] | Mapping[str, str | list[str]]):
        self.answers = answers

    @classmethod
    def from_file(cls, path: str | os.PathLike, step: str) -> "ScriptedBackend":
        """`path` holds `{"step1": {...}, "step2": {...}}`, each a mapping as described above."""
        return cls(json.loads(Path(path).read_text(encoding="utf-8"))[step])

    def generate(self, prompts, images, *, ids, attempt):
        return [
            self._answer(prompt, image, item_id, attempt)
            for prompt, image, item_id in zip(prompts, images or [None] * len(prompts), ids)
        ]

    def _answer(self, prompt: str, image: PILImage.Image | None, item_id: str, attempt: int) -> str:
        if callable(self.answers):
            return self.answers(prompt, image, item_id, attempt)
        if item_id not in self.answers and "*" not in self.answers:
            raise KeyError(f"no scripted answer for item {item_id}")
        answer = self.answers.get(item_id, self.answers.get("*"))
        return answer[min(attempt, len(answer) - 1)] if isinstance(answer, list) else answer


class TransformersBackend:
    """What both real teachers share: bf16 on GPU (fp32 on CPU), left padding, greedy first try, sampled retries,
    and only the new tokens decoded."""

    def __init__(self, tokenizer, model: torch.nn.Module, device: torch.device, max_new_tokens: int):
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.tokenizer, self.model, self.device, self.max_new_tokens = tokenizer, model, device, max_new_tokens

    @staticmethod
    def dtype(device: torch.device) -> torch.dtype:
        return torch.bfloat16 if device.type == "cuda" else torch.float32

    @torch.inference_mode()
    def _generate(self, inputs, attempt: int) -> list[str]:
        sampling = {"do_sample": True, "temperature": 0.7, "top_p": 0.95} if attempt else {"do_sample": False}
        output = self.model.generate(
            **inputs, max_new_tokens=self.max_new_tokens, pad_token_id=self.tokenizer.pad_token_id, **sampling
        )
        return self.tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


class VisionBackend(TransformersBackend):
    """Step 1 with any image-text-to-text model (AutoProcessor + AutoModelForImageTextToText). Phi-3 Vision's
    remote code registers only AutoModelForCausalLM, so a model whose `auto_map` says so loads through that."""

    def __init__(self, model_id: str, device: torch.device, *, trust_remote_code: bool, max_new_tokens: int):
        self.processor = AutoProcessor.from_pretrained(model_id, trust_remote_code=trust_remote_code)
        auto_map = getattr(AutoConfig.from_pretrained(model_id, trust_remote_code=trust_remote_code), "auto_map", {})
        remote_causal_lm = "AutoModelForCausalLM" in auto_map and "AutoModelForImageTextToText" not in auto_map
        model_class = AutoModelForCausalLM if remote_causal_lm else AutoModelForImageTextToText
        model = model_class.from_pretrained(model_id, trust_remote_code=trust_remote_code, dtype=self.dtype(device))
        super().__init__(self.processor.tokenizer, model.to(device).eval(), device, max_new_tokens)
        # Native processors name their own image token (Llava: "<image>"); Phi-3 Vision's reads "<|image_1|>".
        self.image_token = getattr(self.processor, "image_token", None)

    def generate(self, prompts, images, *, ids, attempt):
        if self.image_token:
            prompts = [prompt.replace(PHI3_IMAGE_TAG, self.image_token) for prompt in prompts]
        # Phi-3 Vision's processor takes one prompt as a str (it cannot batch); the others take lists.
        text = prompts if len(prompts) > 1 else prompts[0]
        inputs = self.processor(text=text, images=images, return_tensors="pt", padding=True)
        return self._generate(inputs.to(self.device, dtype=self.dtype(self.device)), attempt)


class TextBackend(TransformersBackend):
    """Step 2 with any causal language model (AutoTokenizer + AutoModelForCausalLM)."""

    def __init__(self, model_id: str, device: torch.device, *, trust_remote_code: bool, max_new_tokens: int):
        tokenizer = AutoTokenizer.from_pretrained(model_id, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            model_id, trust_remote_code=trust_remote_code, dtype=self.dtype(device)
        )
        super().__init__(tokenizer, model.to(device).eval(), device, max_new_tokens)

    def generate(self, prompts, images, *, ids, attempt):
        return self._generate(self.tokenizer(prompts, return_tensors="pt", padding=True).to(self.device), attempt)


def backend_factories(args: DistillArguments, device: torch.device) -> dict[str, Callable[[], Backend]]:
    """Per step, a function that builds its backend: models load only when a step has work left."""
    if args.backend.startswith("scripted:"):
        path = args.backend.removeprefix("scripted:")
        return {step: (lambda step=step: ScriptedBackend.from_file(path, step)) for step in STEPS}
    if args.backend != "transformers":
        raise ValueError(f"--backend must be `transformers` or `scripted:<answers.json>`, not {args.backend!r}")
    options = {"trust_remote_code": args.trust_remote_code, "max_new_tokens": args.max_new_tokens}
    return {
        "step1": lambda: VisionBackend(args.vision_model, device, **options),
        "step2": lambda: TextBackend(args.text_model, device, **options),
    }


# ---------------------------------------------------------------------------------------------------------- journal
def journal_path(out: Path, step: str, rank: int) -> Path:
    return out / f"{step}.rank{rank}.jsonl"


def read_journal(out: Path, step: str) -> dict[str, dict]:
    """Every finished record of a step, across the shards of all processes (past runs may have used more).

    A line cut short by a kill is not a record: it is skipped here and its item done again."""
    records = {}
    for path in sorted(out.glob(f"{step}.rank*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            records[record["ProductId"]] = record
    return records


def append_records(path: Path, records: list[dict]) -> None:
    """Append, flush and fsync one batch. A torn last line left by a kill is cut off first, so the new records
    start on a line of their own."""
    if path.exists() and path.stat().st_size and not path.read_bytes().endswith(b"\n"):
        with open(path, "r+b") as file:
            content = file.read()
            file.truncate(content.rfind(b"\n") + 1)
    with open(path, "a", encoding="utf-8") as file:
        file.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
        file.flush()
        os.fsync(file.fileno())


# ------------------------------------------------------------------------------------------------------------ steps
@dataclass
class Task:
    """One item's request to a teacher; `failure` is set when there is nothing to ask (e.g. no image file)."""

    product_id: str
    prompt: str = ""
    image: PILImage.Image | None = None
    failure: str | None = None


def run_step(
    step: str, tasks: Iterator[Task], total: int, backend: Backend, path: Path, *, batch_size: int, retries: int
) -> None:
    """Ask `backend` for every task, batch by batch; an answer without a description is asked again up to
    `retries` times, then recorded as failed with its reason. Each batch is journaled before the next starts."""
    progress = tqdm(total=total, desc=step, disable=not PartialState().is_local_main_process)
    for batch in _batches(tasks, batch_size):
        records = {task.product_id: _record(task) for task in batch}
        pending = [task for task in batch if task.failure is None]
        for attempt in range(retries + 1):
            if not pending:
                break
            answers = backend.generate(
                [task.prompt for task in pending],
                [task.image for task in pending] if step == "step1" else None,
                ids=[task.product_id for task in pending],
                attempt=attempt,
            )
            still_pending = []
            for task, answer in zip(pending, answers, strict=True):
                record = records[task.product_id]
                record["raw"].append(answer)
                try:
                    record.update(status="ok", description=parse_description(answer), reason=None)
                except AnswerError as error:
                    record["reason"] = str(error)
                    still_pending.append(task)
            pending = still_pending
        append_records(path, list(records.values()))
        progress.update(len(batch))
    progress.close()


def _record(task: Task) -> dict:
    return {"ProductId": task.product_id, "status": "failed", "description": None, "raw": [], "reason": task.failure}


def _batches(tasks: Iterator[Task], size: int) -> Iterator[list[Task]]:
    batch = []
    for task in tasks:
        batch.append(task)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def step1_tasks(items: list[dict[str, str]], find_image: ImageFinder) -> Iterator[Task]:
    """Lazily, so only one batch of images is open at a time."""
    for item in items:
        path = find_image(item["Image"])
        if path is None:
            yield Task(item["ProductId"], failure=f"image not found: {item['Image']}")
            continue
        try:
            image = load_rgb_image(path, name=item["Image"])
        except ValueError as error:
            yield Task(item["ProductId"], failure=f"unreadable image: {error}")
            continue
        yield Task(item["ProductId"], prompt_i(), image)


def step2_tasks(items: list[dict[str, str]], step1: Mapping[str, dict]) -> Iterator[Task]:
    for item in items:
        yield Task(item["ProductId"], prompt_ii(step1[item["ProductId"]]["description"], item))


# ---------------------------------------------------------------------------------------------------------- outputs
def build_outputs(out: Path, items: list[dict[str, str]], find_image: ImageFinder) -> dict:
    """Merge the shards into `OUT/dataset` and `OUT/descriptions.jsonl` (items whose two steps succeeded, in
    catalogue order), and return the summary. Catalogue columns named like an output column get a `catalog_`
    prefix (the demo catalogue has its own `description`)."""
    journals = {step: read_journal(out, step) for step in STEPS}
    guard = DescriptionGuard({item["ProductType"] for item in items})
    rename = {column: f"catalog_{column}" if column in OUTPUT_COLUMNS else column for column in items[0]}
    rows, lines = [], []
    for item in items:
        refined = journals["step2"].get(item["ProductId"])
        if refined is None or refined["status"] != "ok":
            continue
        path = find_image(item["Image"])
        flags = guard.flags(refined["description"], {column: item[column] for column in METADATA.values()})
        rows.append(
            {
                "image": {"bytes": path.read_bytes(), "path": path.name},
                "description": refined["description"],
                **{rename[column]: value for column, value in item.items()},
                "raw_step1": journals["step1"][item["ProductId"]]["raw"][-1],
                "raw_step2": refined["raw"][-1],
                "flags": flags,
            }
        )
        lines.append({"image": str(path), "description": refined["description"], "metadata": item, "flags": flags})
    features = Features(
        {
            "image": Image(),
            "description": Value("string"),
            **{name: Value("string") for name in rename.values()},
            "raw_step1": Value("string"),
            "raw_step2": Value("string"),
            "flags": Sequence(Value("string")),
        }
    )
    columns = {name: [row[name] for row in rows] for name in features}
    Dataset.from_dict(columns, features=features).save_to_disk(str(out / "dataset"))
    with open(out / "descriptions.jsonl", "w", encoding="utf-8") as file:
        file.writelines(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
    summary = {step: _step_summary(journals[step]) for step in STEPS}
    summary["dataset"] = {
        "rows": len(rows),
        "flagged": sum(bool(row["flags"]) for row in rows),
        "flags": dict(Counter(flag.split(":")[0] for row in rows for flag in row["flags"])),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _step_summary(records: Mapping[str, dict]) -> dict:
    ok = [record for record in records.values() if record["status"] == "ok"]
    failed = [record for record in records.values() if record["status"] != "ok"]
    return {
        "done": len(ok),
        "retried": sum(len(record["raw"]) > 1 for record in records.values()),
        "failed": len(failed),
        "reasons": dict(Counter(record["reason"] for record in failed)),
    }


def summary_table(summary: Mapping) -> str:
    """The table printed at the end of a run: counts per step, failure reasons, dataset size and flags."""
    lines = [f"{'step':<8}{'done':>8}{'retried':>9}{'failed':>8}"]
    for step in STEPS:
        lines.append(f"{step:<8}" + "".join(f"{n:>{width}}" for n, width in zip(_counts(summary[step]), (8, 9, 8))))
        lines += [f"  {step} failed: {reason} x{count}" for reason, count in summary[step]["reasons"].items()]
    dataset = summary["dataset"]
    lines.append(f"dataset: {dataset['rows']} rows, {dataset['flagged']} flagged {dataset['flags'] or ''}".rstrip())
    return "\n".join(lines)


def _counts(step_summary: Mapping) -> tuple[int, int, int]:
    return step_summary["done"], step_summary["retried"], step_summary["failed"]


# -------------------------------------------------------------------------------------------------------------- Hub
def dataset_card(summary: Mapping, repo_id: str) -> DatasetCard:
    """A card saying how the descriptions were made and how many items each step kept, flags included."""
    data = DatasetCardData(
        language="en", task_categories=["image-to-text"], tags=["fashion", "synthetic", "distillation", "moda"]
    )
    flags = ", ".join(f"{kind}: {count}" for kind, count in summary["dataset"]["flags"].items()) or "none"
    content = f"""---
{data.to_yaml()}
---

# {repo_id}

Short descriptions of fashion items, written for training MODA (FashionCLIP -> MLP projector -> OPT-125M). They
were distilled without human labels: a vision-language model described each catalogue image with Prompt I (Step 1),
then a text model rewrote that description with the item's catalogue metadata using Prompt II (Step 2), dropping text
read off the image and claims that contradict the metadata.

| step | done | retried | failed |
|------|------|---------|--------|
| 1: image -> description | {" | ".join(map(str, _counts(summary["step1"])))} |
| 2: description + metadata -> refined | {" | ".join(map(str, _counts(summary["step2"])))} |

{summary['dataset']['rows']} rows; {summary['dataset']['flagged']} carry OCR or contradiction flags ({flags}).

## Columns
- `image`, `description`: the training pair.
- the catalogue's columns (ProductId, Gender, Category, SubCategory, ProductType, Colour, Usage, ...).
- `raw_step1`, `raw_step2`: the teachers' raw answers, for provenance.
- `flags`: what the guard found in `description` (quoted text, all-caps words, brand-like tokens, digits, or a
  colour / gender / product type other than the metadata's). Keep clean rows with
  `dataset.filter(lambda row: not row["flags"])`.

## Prompt II

```
{read_prompt('prompt_ii.txt')}```

The images keep the license of the catalogue they come from.
"""
    return DatasetCard(content)


def push_to_hub(out: str | os.PathLike, repo_id: str, *, private: bool = False, token: str | None = None) -> None:
    """Upload `OUT/dataset` (as Parquet, via `Dataset.push_to_hub`) and its card."""
    out = Path(out)
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    load_from_disk(str(out / "dataset")).push_to_hub(repo_id, private=private, token=token)
    dataset_card(summary, repo_id).push_to_hub(repo_id, token=token, repo_type="dataset")


# ------------------------------------------------------------------------------------------------------------- main
def distill(args: DistillArguments, backends: Mapping[str, Callable[[], Backend]] | None = None) -> dict | None:
    """Run both steps on this process's share of the unfinished items, then (main process) build the outputs.
    Returns the summary on the main process, None elsewhere."""
    # PartialState joins the processes of `accelerate launch --multi_gpu` / torchrun over gloo only when told
    # cpu=True; `accelerate launch --cpu` starts one process (several only through mpirun).
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    items = read_catalog(args.catalog, args.limit)
    if not items:
        raise ValueError(f"{args.catalog} has no rows")
    find_image = ImageFinder(args.images or Path(args.catalog).parent)
    backends = backends or backend_factories(args, state.device)
    for step in STEPS:
        step1 = read_journal(out, "step1")
        done = step1 if step == "step1" else read_journal(out, step)
        todo = [
            item
            for item in items
            if item["ProductId"] not in done
            and (step == "step1" or step1.get(item["ProductId"], {}).get("status") == "ok")
        ]
        state.wait_for_everyone()  # everyone has read the journals before anyone appends
        with state.split_between_processes(todo) as mine:
            if mine:
                logger.info(f"{step}: {len(mine)} of {len(items)} items to do on process {state.process_index}")
                tasks = step1_tasks(mine, find_image) if step == "step1" else step2_tasks(mine, step1)
                backend = backends[step]()
                run_step(
                    step, tasks, len(mine), backend, journal_path(out, step, state.process_index),
                    batch_size=args.batch_size, retries=args.retries,
                )  # fmt: skip
                del backend  # free the vision model before the text model loads
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
        state.wait_for_everyone()
    if not state.is_main_process:
        return None
    return build_outputs(out, items, find_image)


def dry_run(args: DistillArguments, count: int = 2) -> None:
    """Print what the teachers would be asked for the first items, with a placeholder Step-1 description."""
    find_image = ImageFinder(args.images or Path(args.catalog).parent)
    for item in read_catalog(args.catalog, min(count, args.limit or count)):
        print(f"=== {item['ProductId']}  image: {find_image(item['Image']) or 'NOT FOUND ' + item['Image']}")
        print(f"--- Step 1 prompt\n{prompt_i()}")
        print(f"--- Step 2 prompt\n{prompt_ii('<Step-1 description>', item)}")


def main(argv: list[str] | None = None) -> None:
    (args,) = HfArgumentParser(DistillArguments).parse_args_into_dataclasses(argv)
    if args.dry_run:
        dry_run(args)
        return
    summary = distill(args)
    if summary is None:
        return
    print(summary_table(summary))
    print(f"outputs in {Path(args.out).resolve()}: dataset/, descriptions.jsonl, summary.json")
    if args.push_to_hub:
        push_to_hub(args.out, args.push_to_hub, private=args.private)


if __name__ == "__main__":
    logging.set_verbosity_info()
    main(sys.argv[1:])
