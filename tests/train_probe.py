"""train_hf.py's main as one launched process runs it, plus a record of what this process did (tests/test_train.py).

    accelerate launch --multi_gpu --num_processes 2 tests/train_probe.py RECORD_DIR <train_hf.py arguments>

writes RECORD_DIR/rank{RANK}.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch
from transformers import CLIPVisionModelWithProjection

import train_hf


def run(argv: list[str]) -> dict:
    """`train_hf.main(argv)`'s metrics, the rows of each training step (digests of their cached image embeddings)
    and how often the vision tower ran."""
    record = {"steps": [], "vision_forwards": 0}

    def count(module, args, output):
        if isinstance(module, CLIPVisionModelWithProjection):
            record["vision_forwards"] += 1

    original_step = train_hf.MODATrainer.training_step

    def training_step(self, model, inputs, *args, **kwargs):
        rows = inputs["image_embeds"].cpu().numpy()
        record["steps"].append([hashlib.sha1(row.tobytes()).hexdigest() for row in rows])
        return original_step(self, model, inputs, *args, **kwargs)

    train_hf.MODATrainer.training_step = training_step
    handle = torch.nn.modules.module.register_module_forward_hook(count)
    try:
        record["metrics"] = train_hf.main(argv)
    finally:
        handle.remove()
        train_hf.MODATrainer.training_step = original_step
    return record


if __name__ == "__main__":
    record_dir, argv = Path(sys.argv[1]), sys.argv[2:]
    record = run(argv)
    (record_dir / f"rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps(record, default=float))
