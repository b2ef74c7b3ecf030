"""greedy_generate writes the tokens model.generate writes: images alone, padded text prompts, EOS, int8, patches."""

import copy

import pytest
import torch
from conftest import make_photo, sharpen

from modeling_moda import MODAConfig, MODAForConditionalGeneration
from modeling_moda.fast_inference import apply_cpu_fast_path
from modeling_moda.greedy_decoding import greedy_generate, supports_greedy_generate

NEW_TOKENS = 12


def reference_and_lean(model, inputs: dict, max_new_tokens: int = NEW_TOKENS) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.inference_mode():
        reference = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
    return reference, greedy_generate(model, **inputs, max_new_tokens=max_new_tokens)


@pytest.fixture(scope="module")
def photos8():
    return [make_photo(seed) for seed in range(8)]


@pytest.fixture
def no_eos_model(tiny_model):
    """The tiny model without EOS, so every description runs the full length and every step is compared."""
    model = copy.deepcopy(tiny_model)
    model.generation_config.eos_token_id = None
    return model


def test_same_tokens_as_generate_for_a_batch_of_images(no_eos_model, tiny_processor, photos8):
    reference, lean = reference_and_lean(no_eos_model, tiny_processor(images=photos8))
    assert lean.shape == reference.shape == (8, 2 + NEW_TOKENS)
    assert torch.equal(lean, reference)
    assert len({tuple(row) for row in lean[:, 2:].tolist()}) > 1, "the photos should get different descriptions"


def test_same_tokens_with_left_padded_text_prompts(no_eos_model, tiny_processor, photos8):
    prompts = ["", "A red", "Black casual shoes for", "A", "", "Green sports", "A pink women's blouse", "A white"]
    inputs = tiny_processor(images=photos8, text=prompts)
    assert not inputs["attention_mask"].all(), "the prompts should need padding"
    reference, lean = reference_and_lean(no_eos_model, inputs)
    assert torch.equal(lean, reference)


def test_stops_at_eos_and_pads_finished_rows_like_generate(tiny_model, tiny_processor, photos8):
    model = copy.deepcopy(tiny_model)
    inputs = tiny_processor(images=photos8)
    with torch.inference_mode():
        free_running = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
    # Make a token that some (not all) rows write early the EOS, so rows finish at different steps.
    model.generation_config.eos_token_id = int(free_running[0, 4])
    reference, lean = reference_and_lean(model, inputs)
    assert torch.equal(lean, reference)
    assert (lean == model.generation_config.pad_token_id).any(), "some row should have finished early"


def test_same_tokens_on_the_int8_model(no_eos_model, tiny_processor, photos8):
    fast = apply_cpu_fast_path(copy.deepcopy(no_eos_model), "int8")
    reference, lean = reference_and_lean(fast, tiny_processor(images=photos8[:1]))
    assert torch.equal(lean, reference)


def test_same_tokens_with_patch_features_and_image_embeds(tiny_backbones, tiny_processor, photos8):
    model = MODAForConditionalGeneration.from_backbones(*tiny_backbones, image_features="patches")
    model = sharpen(model).eval()
    model.generation_config.eos_token_id = None
    processor = copy.deepcopy(tiny_processor)
    processor.num_image_tokens = model.config.num_image_tokens
    inputs = processor(images=photos8[:3])
    with torch.inference_mode():
        image_embeds = model.get_image_embeds(inputs.pop("pixel_values"))
    reference, lean = reference_and_lean(model, {**inputs, "image_embeds": image_embeds})
    assert torch.equal(lean, reference)


def test_other_language_models_are_refused(tiny_model, tiny_processor, photos8):
    assert supports_greedy_generate(tiny_model)
    config = MODAConfig(
        vision_config=tiny_model.config.vision_config.to_dict(),
        text_config={
            "model_type": "gpt2", "n_embd": 32, "n_layer": 1, "n_head": 2,
            "vocab_size": tiny_model.config.text_config.vocab_size,
        },
        image_token_id=tiny_model.config.image_token_id,
    )
    other = MODAForConditionalGeneration(config).eval()
    assert not supports_greedy_generate(other)
    with pytest.raises(ValueError, match="gpt2.*model.generate"):
        greedy_generate(other, **tiny_processor(images=photos8[:1]))


def test_a_length_is_required(no_eos_model, tiny_processor, photos8):
    no_eos_model.generation_config.max_new_tokens = None
    with pytest.raises(ValueError, match="max_new_tokens"):
        greedy_generate(no_eos_model, **tiny_processor(images=photos8[:1]))
    with pytest.raises(ValueError, match="max_new_tokens"):
        greedy_generate(no_eos_model, **tiny_processor(images=photos8[:1]), max_new_tokens=-2)
