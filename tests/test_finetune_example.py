"""examples/finetune_with_trainer.py: a user's own Trainer + LoRA script fine-tunes the tiny MODA and saves a model
that generates and carries the fast path's files."""

import importlib.util
import json
from pathlib import Path

import torch
from conftest import FASHION_TEXTS, make_photo
from transformers import AutoModel, AutoProcessor

from moda.clean_process import check_loads_in_clean_process
from modeling_moda.caption_drafts import load_caption_drafter
from modeling_moda.caption_vocabulary import build_caption_vocabulary, load_caption_vocabulary

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "finetune_with_trainer.py"


def load_example():
    spec = importlib.util.spec_from_file_location("finetune_with_trainer", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_fine_tunes_merges_and_writes_the_fast_path_files(tiny_checkpoint, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    descriptions = FASHION_TEXTS[:6]
    with (photos / "metadata.jsonl").open("w") as metadata:
        for index, description in enumerate(descriptions):
            make_photo(index).save(photos / f"{index}.png")
            metadata.write(json.dumps({"file_name": f"{index}.png", "description": description}) + "\n")
    out = tmp_path / "mine"
    load_example().main(["--model", str(tiny_checkpoint), "--data", str(photos), "--output_dir", str(out),
                         "--max_steps", "2"])

    start = AutoModel.from_pretrained(tiny_checkpoint, trust_remote_code=True)
    tuned = AutoModel.from_pretrained(out, trust_remote_code=True)
    assert not (out / "adapter_config.json").exists()  # merged: no peft needed to load it
    assert not any("lora_" in name for name, _ in tuned.named_parameters())
    assert not torch.equal(tuned.projector.linear_1.weight, start.projector.linear_1.weight)  # trained in full
    start_attention = start.language_model.model.decoder.layers[0].self_attn.q_proj.weight
    assert not torch.equal(tuned.language_model.model.decoder.layers[0].self_attn.q_proj.weight, start_attention)
    tower = start.vision_tower.state_dict()
    for name, weight in tuned.vision_tower.state_dict().items():
        assert torch.equal(weight, tower[name]), name  # LoRA leaves the tower alone

    check_loads_in_clean_process(out)  # RuntimeError unless the folder loads and generates with its own code alone

    processor = AutoProcessor.from_pretrained(out, trust_remote_code=True)
    assert load_caption_vocabulary(out) == build_caption_vocabulary(processor.tokenizer, descriptions)
    assert load_caption_drafter(out) is not None
