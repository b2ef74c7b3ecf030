"""cpu_fast_weights.safetensors: the fast path's int8 decoder and bf16 tower, made ahead of time, give the model
that quantizing at load gives, and a file that no longer matches its checkpoint is never used."""

import shutil

import pytest
import torch
from conftest import make_photo
from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

from modeling_moda import MODAForConditionalGeneration
from modeling_moda.quantized_weights import WEIGHTS_FILE, load_quantized_weights
from processing import MODAProcessor


def fast_model(folder, vision: str = "bf16") -> MODAForConditionalGeneration:
    return MODAForConditionalGeneration.from_pretrained(folder).optimize_for_cpu("int8", vision=vision)


def descriptions(model, processor) -> list[str]:
    inputs = processor(images=[make_photo(seed) for seed in range(3)])
    with torch.inference_mode():
        return processor.batch_decode(model.generate_fast(**inputs, max_new_tokens=8))


def int8_layers(model) -> dict[str, torch.Tensor]:
    decoder = model.language_model.get_decoder()
    return {name: module.weight() for name, module in decoder.named_modules() if isinstance(module, DynamicInt8Linear)}


@pytest.fixture
def without_file(fast_checkpoint, tmp_path):
    """The fast checkpoint without its int8/bf16 weights: optimize_for_cpu quantizes at load."""
    folder = shutil.copytree(fast_checkpoint, tmp_path / "quantized_at_load")
    (folder / WEIGHTS_FILE).unlink()
    return folder


def test_loaded_weights_are_the_ones_quantizing_makes(fast_checkpoint, without_file):
    model = MODAForConditionalGeneration.from_pretrained(fast_checkpoint)
    assert load_quantized_weights(model, fast_checkpoint, "bf16") == ["decoder", "vision"]
    assert (
        load_quantized_weights(MODAForConditionalGeneration.from_pretrained(without_file), without_file, "bf16") == []
    )

    loaded, made = fast_model(fast_checkpoint), fast_model(without_file)
    loaded_layers, made_layers = int8_layers(loaded), int8_layers(made)
    assert loaded_layers.keys() == made_layers.keys() and loaded_layers
    for name, weight in loaded_layers.items():
        assert torch.equal(weight.int_repr(), made_layers[name].int_repr()), name
        assert torch.equal(weight.q_per_channel_scales(), made_layers[name].q_per_channel_scales()), name
    assert loaded.vision_tower.dtype == torch.bfloat16
    for (name, value), (_, expected) in zip(loaded.vision_tower.state_dict().items(),
                                            made.vision_tower.state_dict().items()):  # fmt: skip
        assert torch.equal(value, expected), name
    processor = MODAProcessor.from_pretrained(fast_checkpoint)
    assert descriptions(loaded, processor) == descriptions(made, processor)


def test_fp32_vision_takes_only_the_decoder(fast_checkpoint):
    model = MODAForConditionalGeneration.from_pretrained(fast_checkpoint)
    assert load_quantized_weights(model, fast_checkpoint, "fp32") == ["decoder"]
    assert fast_model(fast_checkpoint, vision="fp32").vision_tower.dtype == torch.float32


@pytest.mark.parametrize(
    "changed", ["language_model.model.decoder.layers.0.fc1.weight", "vision_tower.vision_model.post_layernorm.bias"]
)
def test_a_file_that_no_longer_matches_is_ignored(fast_checkpoint, tmp_path, caplog, changed):
    """A model trained further (here: one tensor changed everywhere) keeps its old file until it is rewritten."""
    folder = tmp_path / "trained_further"
    model = MODAForConditionalGeneration.from_pretrained(fast_checkpoint)
    with torch.no_grad():
        tensor = model.get_parameter(changed)
        tensor.add_(torch.randn_like(tensor) * (tensor.abs().max() + 1))
    model.save_pretrained(folder)
    MODAProcessor.from_pretrained(fast_checkpoint).save_pretrained(folder)
    shutil.copy(fast_checkpoint / WEIGHTS_FILE, folder / WEIGHTS_FILE)

    loaded = load_quantized_weights(MODAForConditionalGeneration.from_pretrained(folder), folder, "bf16")
    assert loaded == (["decoder"] if changed.startswith("vision_tower") else [])
    if not loaded:
        assert "does not match the weights" in caplog.text and "moda.fast_path_files" in caplog.text

    with_stale_file = fast_model(folder)
    (folder / WEIGHTS_FILE).unlink()
    quantized_at_load = fast_model(folder)
    processor = MODAProcessor.from_pretrained(folder)
    assert descriptions(with_stale_file, processor) == descriptions(quantized_at_load, processor)
    expected = quantized_at_load.state_dict()
    for name, value in with_stale_file.state_dict().items():
        if isinstance(value, torch.Tensor) and not value.is_quantized:
            assert torch.equal(value, expected[name]), name
    stale_layers, fresh_layers = int8_layers(with_stale_file), int8_layers(quantized_at_load)
    assert all(torch.equal(weight.int_repr(), fresh_layers[name].int_repr()) for name, weight in stale_layers.items())
