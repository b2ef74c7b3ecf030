"""What `pip install .` puts in site-packages, and checkpoints saved by earlier MODA versions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import make_photo
from moda.clean_process import clean_command
from modeling_moda import MODAForConditionalGeneration
from processing import MODAProcessor

REPO_ROOT = Path(__file__).resolve().parents[1]
DESIGN_PACKAGES = {"modeling_moda", "processing"}


@pytest.mark.slow
def test_install_adds_only_the_design_packages_and_moda_names(tmp_path):
    """Besides modeling_moda/ and processing/, every installed top-level name starts with `moda`."""
    target = tmp_path / "site-packages"
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target",
               str(target), str(REPO_ROOT)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    names = {path.name for path in target.iterdir()} - {"bin"}  # bin/: the `moda` console script
    assert DESIGN_PACKAGES <= names
    assert {"moda"} <= names
    assert all(name in DESIGN_PACKAGES or name.startswith("moda") for name in names), sorted(names)
    # the standalone metric modules and the distillation prompts are installed with the package
    assert (target / "moda" / "metrics" / "fashion_attributes" / "fashion_vocabulary.py").is_file()
    assert (target / "moda" / "distill" / "prompts" / "prompt_i.txt").is_file()


def expected_greedy(checkpoint: Path) -> tuple[list[Path], torch.Tensor, int]:
    saved = json.loads((checkpoint / "expected_greedy.json").read_text())
    return sorted(checkpoint.glob("photo_*.png")), torch.tensor(saved["greedy_ids"]), saved["max_new_tokens"]


def test_checkpoint_from_before_the_layout_generates_its_greedy_text(checkpoint_before_layout):
    """Loaded with today's classes, an old checkpoint writes the ids it wrote when it was saved."""
    photos, ids, max_new_tokens = expected_greedy(checkpoint_before_layout)
    model = MODAForConditionalGeneration.from_pretrained(checkpoint_before_layout).eval()
    processor = MODAProcessor.from_pretrained(checkpoint_before_layout)
    inputs = processor(images=[processor.load_image(path) for path in photos])
    generated = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    assert torch.equal(generated, ids)


OWN_CODE_GREEDY = """
import json
from PIL import Image
from transformers import AutoModel, AutoProcessor
model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(sys.argv[1], trust_remote_code=True)
inputs = processor(images=[Image.open(path).convert("RGB") for path in sys.argv[3:]], return_tensors="pt")
print(json.dumps(model.generate(**inputs, max_new_tokens=int(sys.argv[2]), do_sample=False).tolist()))
"""


@pytest.mark.slow
def test_checkpoint_from_before_the_layout_still_runs_its_own_code(checkpoint_before_layout, tmp_path):
    """With trust_remote_code and nothing of this project importable, the old folder's own code loads."""
    photos, ids, max_new_tokens = expected_greedy(checkpoint_before_layout)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    command = clean_command(OWN_CODE_GREEDY, checkpoint_before_layout, max_new_tokens, *photos)
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == ids.tolist()


def test_fast_path_runs_on_an_old_checkpoint_through_todays_classes(checkpoint_before_layout):
    """The CLI loads with the installed classes, so the fast path methods exist for old checkpoints too, and read
    their caption vocabulary and drafts."""
    model = MODAForConditionalGeneration.from_pretrained(checkpoint_before_layout).eval().optimize_for_cpu("int8")
    assert type(model.language_model.get_output_embeddings()).__name__ == "ShortlistHead"
    assert model.caption_drafter is not None
    processor = MODAProcessor.from_pretrained(checkpoint_before_layout)
    inputs = processor(images=[make_photo(0)])
    prompt_length = inputs["input_ids"].shape[1]
    assert prompt_length < model.generate_fast(**inputs, max_new_tokens=4).shape[1] <= prompt_length + 4
