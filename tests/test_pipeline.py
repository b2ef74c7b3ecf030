"""Every door to MODA writes the same text for the same checkpoint: model.generate, model.generate_fast, the
image-text-to-text pipeline, the Space's /describe and `moda describe`, whatever its generation_config.json asks for."""

import base64
import io
import json

import pytest
import torch
from transformers import pipeline, set_seed

from conftest import make_photo
from moda.cli import main
from moda.describe import load_model
from modeling_moda import MODAForConditionalGeneration
from processing import MODAProcessor
from test_space import APP, load_app

NEW_TOKENS = 8
SEED = 3
# What a checkpoint's generation_config.json may ask for; every door must follow it.
SETTINGS = {
    "greedy": {},
    "beams": {"num_beams": 3},
    "sampling": {"do_sample": True, "top_k": 20, "temperature": 0.9},
    "repetition_penalty": {"repetition_penalty": 1.5},
}


@pytest.fixture(scope="module")
def describe(tiny_checkpoint):
    return pipeline("image-text-to-text", model=str(tiny_checkpoint))


@pytest.fixture(scope="module", params=list(SETTINGS))
def configured_checkpoint(request, tmp_path_factory, tiny_model, tiny_processor):
    """The tiny model saved with one entry of SETTINGS in its generation_config.json."""
    folder = tmp_path_factory.mktemp(request.param)
    tiny_model.save_pretrained(folder)
    tiny_processor.save_pretrained(folder)
    saved = json.loads((folder / "generation_config.json").read_text())
    saved.update(SETTINGS[request.param], max_new_tokens=NEW_TOKENS)
    (folder / "generation_config.json").write_text(json.dumps(saved))
    return folder


def seeded(call, *args, **kwargs):
    set_seed(SEED)
    return call(*args, **kwargs)


def space_describes(checkpoint, path) -> str:
    """The Space's /describe (fp32 generate) with the settings its UI starts with, called as Gradio calls it."""
    app = load_app(APP.parent)
    demo = app.build_demo(app.Describer(str(checkpoint), "none"))
    endpoint = next(function for function in demo.fns.values() if function.api_name == "describe")
    shown = [component.value for component in endpoint.inputs[1:]]  # the sliders and the seed box, untouched
    assert shown[-1] == 0
    shown[-1] = SEED
    description, _ = endpoint.fn({"path": str(path), "orig_name": path.name}, *shown)
    return description


def cli_describes(checkpoint, path, out, *flags: str) -> str:
    """`moda describe PATH --seed SEED FLAGS` for one image: no generation option given."""
    assert main(["describe", str(path), "--model", str(checkpoint), "--seed", str(SEED), "--out", str(out),
                 "--overwrite", "--no-progress", *flags]) == 0  # fmt: skip
    return json.loads(out.read_text())["description"]


def test_every_door_writes_the_same_text(configured_checkpoint, tmp_path):
    model = MODAForConditionalGeneration.from_pretrained(configured_checkpoint)
    processor = MODAProcessor.from_pretrained(configured_checkpoint)
    describe = pipeline("image-text-to-text", model=model, processor=processor)
    out = tmp_path / "results.jsonl"
    for seed, prompt in ((0, ""), (1, "A red")):
        photo = make_photo(seed)
        photo.save(path := tmp_path / f"photo{seed}.png")
        inputs = processor(images=photo, text=prompt)
        with torch.inference_mode():
            generated = processor.batch_decode(seeded(model.generate, **inputs))
            fast = processor.batch_decode(seeded(model.generate_fast, **inputs))
        piped = seeded(describe, images=photo, text=prompt)[0]["generated_text"]
        assert fast == generated
        assert piped.strip() == generated[0]
        assert cli_describes(configured_checkpoint, path, out, "--fast", "none", "--prompt", prompt) == generated[0]
        if not prompt:  # the Space takes no prompt
            assert space_describes(configured_checkpoint, path) == generated[0]


def test_the_cli_fast_path_keeps_the_checkpoints_settings(configured_checkpoint, tmp_path):
    """`moda describe`'s default (int8) writes what int8 `generate` writes with the checkpoint's settings."""
    model, processor = load_model(str(configured_checkpoint), fast="int8", drafts=False)
    make_photo(0).save(path := tmp_path / "photo.png")
    with torch.inference_mode():
        (expected,) = processor.batch_decode(seeded(model.generate, **processor(images=make_photo(0))))
    assert cli_describes(configured_checkpoint, path, tmp_path / "results.jsonl", "--no-drafts") == expected


def test_chat_messages_are_moda_prompts(describe, tiny_model, tiny_processor):
    photo = make_photo(2)
    messages = [{"role": "user", "content": [{"type": "image", "image": photo}, {"type": "text", "text": "A red"}]}]
    assert tiny_processor.apply_chat_template(messages) == f"<image>{tiny_processor.tokenizer.bos_token}A red"
    chat_inputs = tiny_processor.apply_chat_template(
        messages, tokenize=True, return_dict=True, add_generation_prompt=True
    )
    inputs = tiny_processor(images=photo, text="A red")
    assert chat_inputs.keys() == inputs.keys() and all(torch.equal(chat_inputs[k], inputs[k]) for k in inputs)

    reply = describe(text=messages, max_new_tokens=NEW_TOKENS)[0]["generated_text"][-1]
    with torch.inference_mode():
        expected = tiny_processor.batch_decode(tiny_model.generate(**inputs, max_new_tokens=NEW_TOKENS))[0]
    assert reply["role"] == "assistant"
    assert "A red" + reply["content"] == expected


def test_chat_images_may_be_paths_and_base64(describe, tiny_processor, tmp_path):
    photo = make_photo(3)
    photo.save(tmp_path / "photo.png")
    buffer = io.BytesIO()
    photo.save(buffer, format="PNG")
    data_uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    replies = [
        describe(text=[{"role": "user", "content": [{"type": "image", **source}]}], max_new_tokens=NEW_TOKENS)
        for source in ({"path": str(tmp_path / "photo.png")}, {"url": data_uri}, {"image": photo})
    ]
    answers = [reply[0]["generated_text"][-1] for reply in replies]
    assert answers[0] == answers[1] == answers[2]


def test_a_lone_path_is_a_clear_error(describe, tmp_path):
    path = str(tmp_path / "photo.jpg")
    make_photo(4).save(path)
    with pytest.raises(ValueError, match="reads a lone string as text: pass images="):
        describe(path)
    with pytest.raises(ValueError, match="reads a lone string as text"):
        describe(images=path)  # transformers' pipeline takes a string alone for a text prompt, however passed
    described = describe(images=path, text="", max_new_tokens=NEW_TOKENS)
    assert "photo.jpg" not in described[0]["generated_text"]
    with pytest.raises(ValueError, match="must provide text"):  # the pipeline's own rule: text or a chat
        describe(images=make_photo(4))


def test_conversations_other_than_one_description_are_refused(describe):
    photo = make_photo(5)
    with pytest.raises(Exception, match="user and assistant messages, not system"):
        describe(text=[{"role": "system", "content": "Be terse."},
                       {"role": "user", "content": [{"type": "image", "image": photo}]}])
    two_images = [{"role": "user", "content": [{"type": "image", "image": photo}, {"type": "image", "image": photo}]}]
    with pytest.raises(ValueError, match="2 images; MODA describes one image a sequence"):
        describe(text=two_images)
