"""Writes the files `moda describe`'s CPU fast path reads beside a model: `caption_vocabulary.json` and
`caption_drafts.json`, both read off the captions the model was trained on, and `cpu_fast_weights.safetensors`, its
int8 decoder and bf16 vision tower made ahead of time (`modeling_moda/quantized_weights.py`).

train_hf.py writes them itself. A model fine-tuned by any other script needs them written once afterwards:

    python -m moda.fast_path_files --model outputs/my-moda --captions train.jsonl

`--captions` is a text file with one caption a line, or any training source `train_hf.py --dataset` reads (a
catalogue folder, a CSV/JSONL, an imagefolder, a `save_to_disk` folder or a Hub dataset id): its `description`
column. Without the files the fast path still works, only slower: the int8 LM head scores the whole vocabulary, no
drafts are checked, and every start quantizes the model again.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from transformers import AutoTokenizer

from modeling_moda.caption_drafts import build_caption_drafter, save_caption_drafter
from modeling_moda import MODAForConditionalGeneration
from modeling_moda.caption_vocabulary import build_caption_vocabulary, save_caption_vocabulary
from modeling_moda.quantized_weights import save_quantized_weights


def write_fast_path_files(model_dir: str | os.PathLike, captions: Iterable[str], tokenizer=None) -> list[Path]:
    """Writes `caption_vocabulary.json` and `caption_drafts.json` into `model_dir` from the training `captions`,
    tokenized by `tokenizer` (default: the one saved in `model_dir`), and the int8/bf16 weights of the model saved
    there; returns their paths."""
    if not Path(model_dir).is_dir():
        raise ValueError(f"{model_dir} is not a folder: the fast-path files go beside a saved model")
    captions = [caption for caption in captions if caption and caption.strip()]
    if not captions:
        raise ValueError("no captions: the fast-path files are read off the captions the model was trained on")
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return [
        save_caption_vocabulary(build_caption_vocabulary(tokenizer, captions), model_dir),
        save_caption_drafter(build_caption_drafter(tokenizer, captions), model_dir),
        save_quantized_weights(MODAForConditionalGeneration.from_pretrained(model_dir), model_dir),
    ]


def read_captions(source: str | os.PathLike) -> list[str]:
    """The captions of a `.txt` file (one a line) or of any source `processing.data.load_fashion_dataset` reads."""
    if Path(source).suffix.lower() == ".txt":
        return Path(source).read_text(encoding="utf-8").splitlines()
    from processing.data import load_fashion_dataset

    return load_fashion_dataset(source)["description"]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m moda.fast_path_files", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="the saved model folder (the files are written into it)")
    parser.add_argument(
        "--captions", required=True, help="the training captions: a .txt (one a line) or a train_hf.py --dataset"
    )
    args = parser.parse_args(argv)
    try:
        paths = write_fast_path_files(args.model, read_captions(args.captions))
    except (ValueError, OSError) as error:
        raise SystemExit(f"moda.fast_path_files: {error}") from error
    print("wrote", ", ".join(str(path) for path in paths))


if __name__ == "__main__":
    main()
