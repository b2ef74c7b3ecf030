"""A saved MODA folder is self-contained: Auto classes, remote code, pipeline, safetensors only."""

import json
import os
import shutil
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
    # a fresh module cache: no cached copy of the code can satisfy the load
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


# The doors, through the saved folder's own code: config after loading, image checks, the forward and
# generate contract, the chat template and the pipeline, and generate_fast under the folder's generation config.
TRANSFORMERS_DOORS = """
import json
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline

folder, image_path = sys.argv[1:]
model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True)
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
photo = Image.open(image_path)
inputs = processor(images=photo, text="A red")
report = {"module": type(model).__module__, "base_model": type(model.base_model).__name__}
report["vision_trainable"] = any(p.requires_grad for p in model.vision_tower.parameters())
try:
    model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], max_new_tokens=2)
except ValueError as error:
    report["no_image"] = str(error)
report["tuple"] = isinstance(model(**inputs, return_dict=False), tuple)
greedy = dict(max_new_tokens=6, do_sample=False)
report["generate"] = model.generate(**inputs, **greedy).tolist()
report["generate_fast"] = model.generate_fast(**inputs, **greedy).tolist()
report["assisted"] = model.generate(**inputs, **greedy, assistant_model=model).tolist()
report["static"] = model.generate(**inputs, **greedy, cache_implementation="static").tolist()
first = model.generate(**inputs, max_new_tokens=3, do_sample=False, return_dict_in_generate=True)
mask = torch.nn.functional.pad(inputs["attention_mask"], (0, 3), value=1)
report["continued"] = model.generate(
    input_ids=first.sequences, attention_mask=mask, cache=first.past_key_values, max_new_tokens=3, do_sample=False
).tolist()
messages = [{"role": "user", "content": [{"type": "image", "path": image_path}, {"type": "text", "text": "A red"}]}]
chat = processor.apply_chat_template(messages, tokenize=True, return_dict=True, add_generation_prompt=True)
report["chat_ids"] = chat["input_ids"].tolist()
report["pipeline"] = pipeline("image-text-to-text", model=model, processor=processor)(
    text=messages, max_new_tokens=6)[0]["generated_text"][-1]["content"]
report["decoded"] = processor.batch_decode(report["generate"])[0]
print(json.dumps(report))
"""


def test_clean_process_gets_the_transformers_doors_from_the_folder(tiny_checkpoint, tiny_processor, photos, tmp_path):
    folder = tmp_path / "penalised"
    shutil.copytree(tiny_checkpoint, folder)
    settings = json.loads((folder / "generation_config.json").read_text())
    (folder / "generation_config.json").write_text(json.dumps({**settings, "repetition_penalty": 1.5}))
    photos[0].save(tmp_path / "photo.png")
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    command = clean_command(TRANSFORMERS_DOORS, folder, tmp_path / "photo.png")
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])

    assert report["module"].startswith("transformers_modules.") and report["base_model"] == "MODAModel"
    assert report["vision_trainable"] is False
    assert "placeholders but no image" in report["no_image"]
    assert report["tuple"] is True
    # the folder's repetition penalty reaches every door, generate_fast included
    assert report["generate_fast"] == report["generate"] == report["assisted"] == report["static"]
    unpenalised = MODAForConditionalGeneration.from_pretrained(tiny_checkpoint)
    inputs = tiny_processor(images=photos[0], text="A red")
    expected = unpenalised.generate(**inputs, max_new_tokens=6, do_sample=False, repetition_penalty=1.5)
    assert report["generate"] == expected.tolist()
    assert report["generate"] != unpenalised.generate(**inputs, max_new_tokens=6, do_sample=False).tolist()
    assert report["continued"] == report["generate"]
    assert report["chat_ids"] == tiny_processor(images=photos[0], text="A red")["input_ids"].tolist()
    assert "A red" + report["pipeline"] == report["decoded"]
