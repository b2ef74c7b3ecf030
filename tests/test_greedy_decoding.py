"""greedy_generate writes the tokens model.generate writes: images alone, padded text prompts, EOS, int8, patches."""

import copy

import pytest
import torch
from conftest import make_photo, sharpen
from transformers import GenerationConfig

import modeling_moda.modeling_moda
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


# --- generate_fast: the generation config resolved as generate resolves it --------------------------------------------


@pytest.fixture
def lean_calls(monkeypatch) -> list[dict]:
    """Records every call generate_fast makes to the lean loop."""
    calls = []
    lean = modeling_moda.modeling_moda.greedy_generate

    def recording(*args, **kwargs):
        calls.append(kwargs)
        return lean(*args, **kwargs)

    monkeypatch.setattr(modeling_moda.modeling_moda, "greedy_generate", recording)
    return calls


def test_generate_fast_takes_the_lean_loop_for_plain_greedy(no_eos_model, tiny_processor, photos8, lean_calls):
    inputs = tiny_processor(images=photos8[:3])
    fast = no_eos_model.generate_fast(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False, num_beams=1)
    assert len(lean_calls) == 1
    with torch.inference_mode():
        assert torch.equal(fast, no_eos_model.generate(**inputs, max_new_tokens=NEW_TOKENS))
    positional = no_eos_model.generate_fast(inputs.pop("input_ids"), **inputs, max_new_tokens=NEW_TOKENS)
    assert len(lean_calls) == 2 and torch.equal(positional, fast)


@pytest.mark.parametrize(
    "settings, changes_the_text",
    [
        ({"repetition_penalty": 1.5}, True),
        ({"no_repeat_ngram_size": 2}, True),
        ({"do_sample": True, "top_k": 5}, True),
        ({"num_beams": 3}, True),
        ({"min_new_tokens": 4}, False),  # without EOS every description is long enough already
        ({"suppress_tokens": [5, 6]}, False),  # tokens the tiny model may not write anyway
    ],
    ids=["repetition_penalty", "no_repeat_ngram", "sampling", "beams", "min_new_tokens", "suppress_tokens"],
)
def test_checkpoint_generation_config_sends_generate_fast_to_generate(
    tiny_model, tiny_processor, photos8, tmp_path, lean_calls, settings, changes_the_text
):
    """What generation_config.json asks for, generate_fast does too: anything but plain greedy goes to generate."""
    model = copy.deepcopy(tiny_model)
    model.generation_config.update(**settings, eos_token_id=None, max_new_tokens=NEW_TOKENS)
    model.save_pretrained(tmp_path)
    loaded = MODAForConditionalGeneration.from_pretrained(tmp_path)
    assert loaded.generation_config.to_diff_dict().items() >= settings.items()
    inputs = tiny_processor(images=photos8[:2])
    torch.manual_seed(0)
    fast = loaded.generate_fast(**inputs)
    torch.manual_seed(0)
    with torch.inference_mode():
        assert torch.equal(fast, loaded.generate(**inputs))
    assert lean_calls == []
    plain = greedy_generate(loaded, **inputs, generation_config=GenerationConfig(max_new_tokens=NEW_TOKENS))
    assert torch.equal(fast, plain) != changes_the_text


def test_call_arguments_beyond_plain_greedy_go_to_generate(no_eos_model, tiny_processor, photos8, lean_calls):
    inputs = tiny_processor(images=photos8[:2])
    returned = no_eos_model.generate_fast(**inputs, max_new_tokens=4, return_dict_in_generate=True, output_scores=True)
    assert len(returned.scores) == 4
    assert no_eos_model.generate_fast(**inputs, max_new_tokens=4, use_cache=False).shape == (2, 6)
    embeds = no_eos_model.get_input_embeddings()(inputs["input_ids"])
    from_embeds = no_eos_model.generate_fast(
        inputs_embeds=embeds, attention_mask=inputs["attention_mask"], pixel_values=inputs["pixel_values"],
        max_new_tokens=4,
    )
    assert from_embeds.shape == (2, 4)
    assert lean_calls == []


def test_generate_fast_pads_finished_rows_as_generate_does_without_a_pad_token(tiny_model, tiny_processor, photos8):
    model = copy.deepcopy(tiny_model)
    inputs = tiny_processor(images=photos8)
    with torch.inference_mode():
        free_running = model.generate(**inputs, max_new_tokens=NEW_TOKENS)
    model.generation_config.eos_token_id = [int(free_running[0, 4]), int(free_running[1, 3])]
    model.generation_config.pad_token_id = None  # generate pads with the first EOS
    with torch.inference_mode():
        reference = model.generate(**inputs, max_new_tokens=NEW_TOKENS)
    assert torch.equal(model.generate_fast(**inputs, max_new_tokens=NEW_TOKENS), reference)
