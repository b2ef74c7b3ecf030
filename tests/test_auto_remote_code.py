"""A saved MODA folder is self-contained: Auto classes, remote code, pipeline, safetensors only."""

import json
import os
import subprocess

import torch
from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor, pipeline

from modeling_moda import MODAForConditionalGeneration
from processing import MODAProcessor
from moda.clean_process import clean_command

# Runs after push_to_hub's import blocker, in an interpreter that cannot import this repository.
GENERATE_TOKEN_IDS = """
try:
    import modeling_moda
    sys.exit("modeling_moda was importable")
except ImportError:
    pass

import json
from PIL import Image
from transformers import AutoModel, AutoProcessor

folder, *image_paths = sys.argv[1:]
model = AutoModel.from_pretrained(folder, trust_remote_code=True)
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
inputs = processor(images=[Image.open(path) for path in image_paths])
ids = model.generate(**inputs, max_new_tokens=12, do_sample=False)
print(json.dumps({"model": type(model).__name__, "processor": type(processor).__name__, "ids": ids.tolist()}))
"""


def test_saved_folder_holds_safetensors_and_code(tiny_checkpoint):
    names = {path.name for path in tiny_checkpoint.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "processor_config.json",
            "configuration_moda.py", "modeling_moda.py", "processing_moda.py"} <= names
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in names)
    auto_map = json.loads((tiny_checkpoint / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModel"] == auto_map["AutoModelForImageTextToText"] == "modeling_moda.MODAForConditionalGeneration"
    assert not any("--" in target for target in auto_map.values()), "auto_map must stay local for offline loading"
    processor_map = json.loads((tiny_checkpoint / "processor_config.json").read_text())["auto_map"]
    assert processor_map["AutoProcessor"] == "processing_moda.MODAProcessor"


def test_clean_process_loads_with_remote_code_and_generates_identically(tiny_checkpoint, tiny_model, tiny_processor,
                                                                         photos, tmp_path):
    image_paths = []
    for index, photo in enumerate(photos):
        image_paths.append(tmp_path / f"photo{index}.png")
        photo.save(image_paths[-1])
    # a fresh module cache: no copy of the code from an earlier run can satisfy the load
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    command = clean_command(GENERATE_TOKEN_IDS, tiny_checkpoint, *image_paths)
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert (loaded["model"], loaded["processor"]) == ("MODAForConditionalGeneration", "MODAProcessor")

    expected = tiny_model.generate(**tiny_processor(images=photos), max_new_tokens=12, do_sample=False)
    assert loaded["ids"] == expected.tolist()


def test_auto_classes_in_process(tiny_checkpoint, tiny_model, photos):
    model = AutoModel.from_pretrained(tiny_checkpoint)
    assert isinstance(model, MODAForConditionalGeneration)
    assert isinstance(AutoModelForImageTextToText.from_pretrained(tiny_checkpoint), MODAForConditionalGeneration)
    assert isinstance(AutoProcessor.from_pretrained(tiny_checkpoint), MODAProcessor)
    for name, tensor in tiny_model.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor, msg=name)
    assert model.generation_config.max_new_tokens == 32


def test_pipeline_returns_the_generated_description(tiny_checkpoint, tiny_model, tiny_processor, photos):
    describe = pipeline("image-text-to-text", model=str(tiny_checkpoint))
    outputs = describe(images=photos[:2], text=["", ""])
    expected = tiny_processor.batch_decode(tiny_model.generate(**tiny_processor(images=photos[:2]), do_sample=False))
    assert [output["generated_text"] for output in outputs] == expected
