"""Load a saved MODA folder in a fresh interpreter that cannot import this project: what a Hub user would run.

A checkpoint's code must stand alone (`trust_remote_code=True` with nothing installed). Here that is checked, not
assumed: `push_to_hub.py` refuses to publish a folder that fails it, and the tests load checkpoints through it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Top-level names of this project: the clean loader refuses to import them.
PROJECT_MODULES = ("modeling_moda", "processing", "moda", "train_hf", "push_to_hub")
# In a checkout the project's folder is taken off sys.path too; an installed package is only blocked by name.
HIDDEN_PATH = str(PROJECT_ROOT) if (PROJECT_ROOT / "setup.cfg").is_file() else ""

# Runs first in the clean process: the repository is neither on sys.path nor importable by any finder (an
# editable install included), so only the staged folder's own code can make the model load.
BLOCK_PROJECT = """
import importlib.abc, os, sys
REPO = {repo!r} and os.path.realpath({repo!r})
sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.getcwd()) != REPO]

class BlockProject(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {blocked}:
            raise ModuleNotFoundError(f"{{name}} is blocked: a published MODA must not need the repository", name=name)
        return None

sys.meta_path.insert(0, BlockProject())
""".format(repo=HIDDEN_PATH, blocked=PROJECT_MODULES)

LOAD_AND_GENERATE = """
import json
from PIL import Image
from transformers import AutoModel, AutoProcessor
model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(sys.argv[1], trust_remote_code=True)
inputs = processor(images=Image.new("RGB", (64, 48), (150, 40, 60)), return_tensors="pt")
ids = model.generate(**inputs, max_new_tokens=8, do_sample=False)
print(json.dumps(processor.batch_decode(ids)[0]))
"""


def clean_command(code: str, *args: str | Path) -> list[str]:
    """The command that runs `code` (with `args` in sys.argv[1:]) in an isolated interpreter (`-I`: no
    PYTHONPATH, no script folder on sys.path) that cannot import this repository."""
    return [sys.executable, "-I", "-c", BLOCK_PROJECT + code, *map(str, args)]


def check_loads_in_clean_process(folder: str | Path, timeout: float = 300) -> str:
    """Loads `folder` with AutoModel/AutoProcessor (trust_remote_code) in a fresh interpreter that cannot import
    this repository, generates once, and returns the text; raises RuntimeError with the child's stderr otherwise.

    The child runs in an empty folder, offline, with its own remote-code module cache, so nothing but the
    folder's files can satisfy the load.
    """
    folder = Path(folder).resolve()
    with tempfile.TemporaryDirectory(prefix="moda-clean-") as scratch:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(Path(scratch) / "modules")}
        command = clean_command(LOAD_AND_GENERATE, folder)
        result = subprocess.run(command, cwd=scratch, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{folder} does not load in a clean process:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])
