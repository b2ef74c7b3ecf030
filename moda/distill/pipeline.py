"""Data-free distillation: the Phi-3 Vision -> Phi-3 Instruct pipeline that writes MODA's training data.

Step 1 shows each catalogue image to a vision-language model with Prompt I (the seed's text, verbatim). Step 2 gives
that description and the item's catalogue metadata to a text model with Prompt II, which keeps what the metadata
supports and drops text read off the image. The refined descriptions, paired with their images and metadata, become
a `datasets` folder (`OUT/dataset`) that `train_hf.py` reads as is.

Every record is appended to a JSONL journal per step and process as soon as its batch ends (flushed and fsynced):
a crash loses at most the batch in flight, and a re-run does only what is missing, plus the items that failed
(`--no_retry_failed` skips those). One item never stops a run: a broken image, an answer with no description or a
teacher that raises on one item is that item's failure, recorded with its reason. The guard's flagged descriptions are
left out of the dataset unless `--keep_flagged`; `OUT/left_out.jsonl` says, per item, why it is not in the dataset.

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
import shutil
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
SCRIPTED = "scripted"  # the name, or name prefix, of a teacher that is a script rather than a model
LEFT_OUT_AT = (*STEPS, "guard", "dataset")  # where an item can leave the pipeline, in order


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
    retry_failed: bool = field(
        default=True, metadata={"help": "Try the items that failed in earlier runs again (`--no_retry_failed`: don't)."}
    )
    keep_flagged: bool = field(
        default=False, metadata={"help": "Keep the descriptions the guard flags, with their flags, in the dataset."}
    )
    max_new_tokens: int = field(default=128)
    limit: int | None = field(default=None, metadata={"help": "Only the first N catalogue rows."})
    dry_run: bool = field(default=False, metadata={"help": "Print the prompts of the first items; load no model."})
    push_to_hub: str | None = field(default=None, metadata={"help": "Dataset repo id to upload OUT/dataset to."})
    private: bool = field(default=False)

    def __post_init__(self):
        for name, minimum in {"batch_size": 1, "retries": 0, "max_new_tokens": 1, "limit": 1}.items():
            value = getattr(self, name)
            if value is not None and value < minimum:
                raise ValueError(f"--{name} must be {minimum} or more, got {value}")
        if not Path(self.catalog).is_file():
            raise ValueError(f"--catalog {self.catalog}: no such file")
        if self.images is not None and not Path(self.images).is_dir():
            raise ValueError(f"--images {self.images}: no such folder")
        if self.backend.startswith(f"{SCRIPTED}:"):
            if not Path(self.backend.removeprefix(f"{SCRIPTED}:")).is_file():
                raise ValueError(f"--backend {self.backend}: no such answers file")
        elif self.backend != "transformers":
            raise ValueError(f"--backend must be `transformers` or `scripted:<answers.json>`, not {self.backend!r}")


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
    """The catalogue rows as strings; raises ValueError when a column is missing or a ProductId repeats.

    A short row's missing cells read as "" and the cells past the header are dropped (csv gives None and a list),
    so the item goes on with what it has: at worst its image is not found, which is that item's failure."""
    with open(path, newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        missing = [column for column in KAGGLE_COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path} lacks catalogue column(s) {', '.join(missing)}; expected {KAGGLE_COLUMNS}")
        rows = [{column: value or "" for column, value in row.items() if column is not None} for row in reader]
    ids = Counter(row["ProductId"] for row in rows)
    if repeated := [product_id for product_id, count in ids.items() if count > 1]:
        raise ValueError(f"{path}: ProductId must be unique, repeated: {repeated[:5]}")
    return rows[:limit]


# --------------------------------------------------------------------------------------------------------- backends
class Backend(Protocol):
    """A teacher model: one answer per prompt. `ids` name the items (scripted answers are keyed by them); an
    `attempt` above 0 is a retry, where real models sample rather than repeat their greedy answer. `name` (a model id,
    or `scripted...`) is recorded with each answer, so the dataset card names only the teachers that answered."""

    name: str

    def generate(
        self, prompts: list[str], images: list[PILImage.Image] | None, *, ids: list[str], attempt: int
    ) -> list[str]: ...


class ScriptedBackend:
    """Answers from a script instead of a model, for tests and demos.

    `answers` is a callable `(prompt, image, item_id, attempt) -> str`, or a mapping from item id (`"*"` for any
    other item) to an answer or to a list of answers, one per attempt (the last one repeats). An item with no
    answer raises KeyError, as a teacher that breaks on one item would."""

    def __init__(self, answers: Callable[..., str] | Mapping[str, str | list[str]], name: str = SCRIPTED):
        self.answers, self.name = answers, name

    @classmethod
    def from_file(cls, path: str | os.PathLike, step: str) -> "ScriptedBackend":
        """`path` holds `{"step1": {...}, "step2": {...}}`, each a mapping as described above."""
        try:
            script = json.loads(Path(path).read_text(encoding="utf-8"))
            return cls(script[step], name=f"{SCRIPTED}:{Path(path).name}")
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path} is not a script of answers per step ({step!r}: {error!r})") from error

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

    def __init__(self, name: str, tokenizer, model: torch.nn.Module, device: torch.device, max_new_tokens: int):
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.name, self.tokenizer, self.model, self.device = name, tokenizer, model, device
        self.max_new_tokens = max_new_tokens

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
        super().__init__(model_id, self.processor.tokenizer, model.to(device).eval(), device, max_new_tokens)
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
        super().__init__(model_id, tokenizer, model.to(device).eval(), device, max_new_tokens)

    def generate(self, prompts, images, *, ids, attempt):
        return self._generate(self.tokenizer(prompts, return_tensors="pt", padding=True).to(self.device), attempt)


def backend_factories(args: DistillArguments, device: torch.device) -> dict[str, Callable[[], Backend]]:
    """Per step, a function that builds its backend: models load only when a step has work left."""
    if args.backend.startswith(f"{SCRIPTED}:"):
        path = args.backend.removeprefix(f"{SCRIPTED}:")
        return {step: (lambda step=step: ScriptedBackend.from_file(path, step)) for step in STEPS}
    options = {"trust_remote_code": args.trust_remote_code, "max_new_tokens": args.max_new_tokens}
    return {
        "step1": lambda: VisionBackend(args.vision_model, device, **options),
        "step2": lambda: TextBackend(args.text_model, device, **options),
    }


# ---------------------------------------------------------------------------------------------------------- journal
def journal_path(out: Path, step: str, rank: int) -> Path:
    return out / f"{step}.rank{rank}.jsonl"


def read_journal(out: Path, step: str) -> dict[str, dict]:
    """The latest record of every item of a step, across the shards of all processes (past runs may have used more).

    An item tried again has a record of a higher `round`, possibly in another process's shard. A line cut short by a
    kill is not a record: it is skipped here and its item done again. Lines are split as bytes, on newlines only:
    JSON escapes those inside strings, while `str.splitlines` would also split at U+2028 and its kin."""
    records = {}
    for path in sorted(out.glob(f"{step}.rank*.jsonl")):
        for line in path.read_bytes().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            known = records.get(record["ProductId"])
            if known is None or record["round"] >= known["round"]:
                records[record["ProductId"]] = record
    return records


def append_records(path: Path, records: list[dict]) -> None:
    """Append, flush and fsync one batch. A torn last line left by a kill is cut off first, so the new records
    start on a line of their own. Lines are ASCII (JSON escapes the rest), so a tear never splits a character."""
    if path.exists() and path.stat().st_size and not path.read_bytes().endswith(b"\n"):
        with open(path, "r+b") as file:
            content = file.read()
            file.truncate(content.rfind(b"\n") + 1)
    with open(path, "a", encoding="ascii") as file:
        file.writelines(json.dumps(record) + "\n" for record in records)
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
    step: str,
    tasks: Iterator[Task],
    total: int,
    backend: Backend,
    path: Path,
    journal: Mapping[str, dict],
    *,
    batch_size: int,
    retries: int,
) -> None:
    """Ask `backend` for every task, batch by batch; an answer without a description is asked again up to
    `retries` times, then recorded as failed with its reason. Each batch is journaled before the next starts, each
    record one `round` past the item's record in `journal` (the step's records so far)."""
    progress = tqdm(total=total, desc=step, disable=not PartialState().is_local_main_process)
    for batch in _batches(tasks, batch_size):
        records = {task.product_id: _record(task, journal.get(task.product_id)) for task in batch}
        pending = [task for task in batch if task.failure is None]
        for attempt in range(retries + 1):
            if not pending:
                break
            still_pending = []
            for task, answer in zip(pending, _ask(backend, step, pending, attempt), strict=True):
                record = records[task.product_id]
                record["teacher"] = backend.name
                if isinstance(answer, Exception):  # a teacher that breaks on an item breaks again: no retry
                    record["reason"] = f"teacher error: {type(answer).__name__}: {answer}"
                    continue
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


def _ask(backend: Backend, step: str, tasks: list[Task], attempt: int) -> list[str | Exception]:
    """The teacher's answer per task. When a batch raises, its tasks are asked one by one, so that only the item the
    teacher breaks on fails, with the error as its answer."""
    try:
        return backend.generate(
            [task.prompt for task in tasks],
            [task.image for task in tasks] if step == "step1" else None,
            ids=[task.product_id for task in tasks],
            attempt=attempt,
        )
    except Exception as error:  # noqa: BLE001 - whatever one item does to the teacher is that item's failure
        if len(tasks) > 1:
            return [answer for task in tasks for answer in _ask(backend, step, [task], attempt)]
        logger.warning(f"{step}: the teacher failed on item {tasks[0].product_id}: {error!r}")
        return [error]


def _record(task: Task, previous: dict | None) -> dict:
    return {
        "ProductId": task.product_id, "round": previous["round"] + 1 if previous else 1, "status": "failed",
        "description": None, "raw": [], "reason": task.failure, "teacher": None,
    }  # fmt: skip


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
        yield _image_task(item, find_image)


def _image_task(item: dict[str, str], find_image: ImageFinder) -> Task:
    try:
        path = find_image(item["Image"])
        if path is None:
            return Task(item["ProductId"], failure=f"image not found: {item['Image']}")
        return Task(item["ProductId"], prompt_i(), load_rgb_image(path, name=item["Image"]))
    except Exception as error:  # noqa: BLE001 - truncated, not an image, a decompression bomb: this item only
        return Task(item["ProductId"], failure=f"unreadable image: {error}")


def step2_tasks(items: list[dict[str, str]], step1: Mapping[str, dict]) -> Iterator[Task]:
    for item in items:
        yield Task(item["ProductId"], prompt_ii(step1[item["ProductId"]]["description"], item))


def _to_do(record: dict | None, retry_failed: bool) -> bool:
    return record is None or (retry_failed and record["status"] != "ok")


# ---------------------------------------------------------------------------------------------------------- outputs
def build_outputs(
    out: Path, items: list[dict[str, str]], find_image: ImageFinder, *, keep_flagged: bool = False
) -> dict:
    """Merge the shards into `OUT/dataset` and `OUT/descriptions.jsonl` (in catalogue order, the items whose two
    steps succeeded and, unless `keep_flagged`, whose description the guard did not flag), list every other item
    with its reason in `OUT/left_out.jsonl`, and return the summary. Catalogue columns named like an output column
    get a `catalog_` prefix (the demo catalogue has its own `description`). Each output replaces its last version
    only once written whole, so a run killed here leaves the previous outputs, and a re-run writes them anew."""
    journals = {step: read_journal(out, step) for step in STEPS}
    guard = DescriptionGuard({item["ProductType"] for item in items})
    rename = {column: f"catalog_{column}" if column in OUTPUT_COLUMNS else column for column in items[0]}
    rows, lines, left_out, flag_kinds = [], [], [], Counter()
    checked = flagged = 0
    for item in items:
        product_id = item["ProductId"]
        if failure := _failure(journals, product_id):
            left_out.append({"ProductId": product_id, "step": failure[0], "reason": failure[1]})
            continue
        refined = journals["step2"][product_id]
        flags = guard.flags(refined["description"], {column: item[column] for column in METADATA.values()})
        checked += 1
        flagged += bool(flags)
        flag_kinds.update(_kind(flag) for flag in flags)
        if flags and not keep_flagged:
            left_out.append({"ProductId": product_id, "step": "guard", "reason": "; ".join(flags)})
            continue
        path = find_image(item["Image"])
        if path is None:  # there at Step 1, gone since
            left_out.append({"ProductId": product_id, "step": "dataset", "reason": f"image not found: {item['Image']}"})
            continue
        rows.append(
            {
                "image": {"bytes": path.read_bytes(), "path": path.name},
                "description": refined["description"],
                **{rename[column]: value for column, value in item.items()},
                "raw_step1": journals["step1"][product_id]["raw"][-1],
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
    dataset = Dataset.from_dict({name: [row[name] for row in rows] for name in features}, features=features)
    _write_whole(out / "dataset", lambda path: dataset.save_to_disk(str(path)))
    _write_whole(out / "descriptions.jsonl", lambda path: _write_jsonl(path, lines))
    _write_whole(out / "left_out.jsonl", lambda path: _write_jsonl(path, left_out))
    summary = {step: _step_summary(journals[step]) for step in STEPS}
    summary["guard"] = {"checked": checked, "flagged": flagged, "flags": dict(flag_kinds), "keep_flagged": keep_flagged}
    where = Counter(entry["step"] for entry in left_out)
    summary["dataset"] = {"rows": len(rows), "left_out": {step: where[step] for step in LEFT_OUT_AT if where[step]}}
    _write_whole(out / "summary.json", lambda path: path.write_text(json.dumps(summary, indent=2) + "\n", "utf-8"))
    return summary


def _failure(journals: Mapping[str, Mapping[str, dict]], product_id: str) -> tuple[str, str] | None:
    """The first step that has no successful record of the item, and why."""
    for step in STEPS:
        record = journals[step].get(product_id)
        if record is None or record["status"] != "ok":
            return step, record["reason"] if record else "not done"
    return None


def _kind(text: str) -> str:
    """`image not found: a.jpg` -> `image not found`, `all_caps: NIKE` -> `all_caps`."""
    return text.split(":", 1)[0]


def _write_jsonl(path: Path, lines: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as file:
        file.writelines(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)


def _write_whole(path: Path, write: Callable[[Path], object]) -> None:
    """`write` a file or folder beside `path`, then move it into place."""
    partial = path.with_name(path.name + ".partial")
    if partial.is_dir():
        shutil.rmtree(partial)
    write(partial)
    if path.is_dir():
        shutil.rmtree(path)
    os.replace(partial, path)


def _step_summary(records: Mapping[str, dict]) -> dict:
    failed = [record for record in records.values() if record["status"] != "ok"]
    return {
        "done": len(records) - len(failed),
        "retried": sum(len(record["raw"]) > 1 for record in records.values()),
        "failed": len(failed),
        "reasons": dict(Counter(_kind(record["reason"]) for record in failed)),
        "teachers": dict(Counter(record["teacher"] for record in records.values() if record["teacher"])),
    }


def summary_table(summary: Mapping) -> str:
    """The table printed at the end of a run: counts per step, failure reasons, the guard, what the dataset holds."""
    lines = [f"{'step':<8}{'done':>8}{'retried':>9}{'failed':>8}"]
    for step in STEPS:
        lines.append(f"{step:<8}" + "".join(f"{n:>{width}}" for n, width in zip(_counts(summary[step]), (8, 9, 8))))
        lines += [f"  {step} failed: {reason} x{count}" for reason, count in summary[step]["reasons"].items()]
    guard, dataset = summary["guard"], summary["dataset"]
    line = f"guard: {guard['flagged']} of {guard['checked']} descriptions flagged"
    if guard["flagged"]:
        fate = "kept with their flags" if guard["keep_flagged"] else "left out (--keep_flagged keeps them)"
        line += f" ({', '.join(f'{kind} {count}' for kind, count in guard['flags'].items())}), {fate}"
    lines.append(line)
    left_out = ", ".join(f"{where} {count}" for where, count in dataset["left_out"].items())
    lines.append(f"dataset: {dataset['rows']} rows" + (f"; left out: {left_out} (see left_out.jsonl)" * bool(left_out)))
    if any(summary[step]["failed"] for step in STEPS):
        lines.append("the failed items are tried again by the next run of this command")
    return "\n".join(lines)


def _counts(step_summary: Mapping) -> tuple[int, int, int]:
    return step_summary["done"], step_summary["retried"], step_summary["failed"]


# -------------------------------------------------------------------------------------------------------------- Hub
SCRIPTED_NOTE = """
**Scripted answers.** The teachers named `scripted` are scripts that stand in for a model in tests and demos: no
model wrote those answers.
"""


def dataset_card(summary: Mapping, repo_id: str) -> DatasetCard:
    """A card saying what this run did: the teachers that answered, how many items each step kept, what the guard
    flagged and whether those rows were left out."""
    data = DatasetCardData(
        language="en", task_categories=["image-to-text"], tags=["fashion", "synthetic", "distillation", "moda"]
    )
    guard = summary["guard"]
    flags = ", ".join(f"{kind}: {count}" for kind, count in guard["flags"].items())
    flagged = f"{guard['flagged']} of the {guard['checked']} refined descriptions" + (f" ({flags})" * bool(flags))
    if guard["keep_flagged"]:
        guard_text = f"{flagged} were flagged and kept: `dataset.filter(lambda row: not row['flags'])` drops them."
    else:
        guard_text = f"{flagged} were flagged and left out of the dataset, so every row's `flags` is empty."
    scripted = any(name.startswith(SCRIPTED) for step in STEPS for name in summary[step]["teachers"])
    scripted_text = SCRIPTED_NOTE if scripted else ""
    teachers = {step: _teachers(summary[step]) for step in STEPS}
    content = f"""---
{data.to_yaml()}
---

# {repo_id}

Short descriptions of fashion items, written for training MODA (FashionCLIP -> MLP projector -> OPT-125M). They
were distilled without human labels:

- Step 1 showed each catalogue image, with Prompt I, to {teachers["step1"]}.
- Step 2 gave that description and the item's catalogue metadata, with Prompt II, to {teachers["step2"]}. Prompt II
  asks to keep what the metadata supports and to drop text read off the image.
{scripted_text}
| step | done | retried | failed |
|------|------|---------|--------|
| 1: image -> description | {" | ".join(map(str, _counts(summary["step1"])))} |
| 2: description + metadata -> refined | {" | ".join(map(str, _counts(summary["step2"])))} |

A guard then checked the refined descriptions for text read off the image (quoted text, all-caps words, brand-like
tokens, digits) and for a colour, gender or product type other than the metadata's. {guard_text}
The dataset has {summary["dataset"]["rows"]} rows.

## Columns
- `image`, `description`: the training pair.
- the catalogue's columns (ProductId, Gender, Category, SubCategory, ProductType, Colour, Usage, ...).
- `raw_step1`, `raw_step2`: the teachers' raw answers, for provenance.
- `flags`: what the guard found in `description`, each as `kind: detail`.

## Prompt II

```
{read_prompt("prompt_ii.txt")}```

The images keep the license of the catalogue they come from.
"""
    return DatasetCard(content)


def _teachers(step_summary: Mapping) -> str:
    """The teachers that answered in a step, with how many items each answered."""
    teachers = step_summary["teachers"]
    if not teachers:
        return "no teacher (no item reached this step)"
    return ", ".join(f"`{name}` ({count} item{'s' * (count != 1)})" for name, count in teachers.items())


def push_to_hub(out: str | os.PathLike, repo_id: str, *, private: bool = False, token: str | None = None) -> None:
    """Upload `OUT/dataset` (as Parquet, via `Dataset.push_to_hub`) and its card."""
    out = Path(out)
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    load_from_disk(str(out / "dataset")).push_to_hub(repo_id, private=private, token=token)
    dataset_card(summary, repo_id).push_to_hub(repo_id, token=token, repo_type="dataset")


# ------------------------------------------------------------------------------------------------------------- main
def distill(args: DistillArguments, backends: Mapping[str, Callable[[], Backend]] | None = None) -> dict | None:
    """Run both steps on this process's share of the items still to do, then (main process) build the outputs.
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
        journal = step1 if step == "step1" else read_journal(out, step)
        todo = [
            item
            for item in items
            if _to_do(journal.get(item["ProductId"]), args.retry_failed)
            and (step == "step1" or step1.get(item["ProductId"], {}).get("status") == "ok")
        ]
        state.wait_for_everyone()  # everyone has read the journals before anyone appends
        with state.split_between_processes(todo) as mine:
            if mine:
                logger.info(f"{step}: {len(mine)} of {len(items)} items to do on process {state.process_index}")
                tasks = step1_tasks(mine, find_image) if step == "step1" else step2_tasks(mine, step1)
                backend = backends[step]()
                run_step(
                    step, tasks, len(mine), backend, journal_path(out, step, state.process_index), journal,
                    batch_size=args.batch_size, retries=args.retries,
                )  # fmt: skip
                del backend  # free the vision model before the text model loads
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
        state.wait_for_everyone()
    if not state.is_main_process:
        return None
    return build_outputs(out, items, find_image, keep_flagged=args.keep_flagged)


def dry_run(args: DistillArguments, count: int = 2) -> None:
    """Print what the teachers would be asked for the first items, with a placeholder Step-1 description."""
    find_image = ImageFinder(args.images or Path(args.catalog).parent)
    for item in read_catalog(args.catalog, min(count, args.limit or count)):
        print(f"=== {item['ProductId']}  image: {find_image(item['Image']) or 'NOT FOUND ' + item['Image']}")
        print(f"--- Step 1 prompt\n{prompt_i()}")
        print(f"--- Step 2 prompt\n{prompt_ii('<Step-1 description>', item)}")


def main(argv: list[str] | None = None) -> None:
    parser = HfArgumentParser(DistillArguments)
    try:
        (args,) = parser.parse_args_into_dataclasses(argv)
    except ValueError as error:  # DistillArguments refuses a bad value
        parser.error(str(error))
    try:
        if args.dry_run:
            dry_run(args)
            return
        summary = distill(args)
    except ValueError as error:  # a catalogue or answers file the tool cannot use
        raise SystemExit(f"moda.distill: error: {error}") from error
    if summary is None:
        return
    print(summary_table(summary))
    print(f"outputs in {Path(args.out).resolve()}: dataset/, descriptions.jsonl, left_out.jsonl, summary.json")
    if args.push_to_hub:
        push_to_hub(args.out, args.push_to_hub, private=args.private)


if __name__ == "__main__":
    logging.set_verbosity_info()
    main(sys.argv[1:])
