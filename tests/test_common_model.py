"""MODA held to the behaviours transformers' common model and generation tests check (ModelTesterMixin,
GenerationTesterMixin, as tests/models/llava/ runs them), written as MODA's own tests on a tiny random MODA.

Each test names the common test it stands for; docs/transformers.md lists them, and the ones that do not apply.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import CompileConfig, DynamicCache, StaticCache

from modeling_moda import MODAConfig, MODAForConditionalGeneration
from modeling_moda.modeling_moda import MODAModel

IMAGE_TOKEN_ID, BOS, PAD, VOCAB = 98, 2, 1, 99


class MODAModelTester:
    """A tiny MODA config and a left-padded batch of inputs, as LLaVA's ModelTester builds them."""

    batch_size = 3
    text_length = 5  # tokens after the image placeholder and BOS in the longest row
    num_layers = 2
    num_heads = 4
    hidden_size = 32
    image_size = 30

    def get_config(self, **overrides) -> MODAConfig:
        return MODAConfig(
            vision_config={
                "model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
                "num_attention_heads": 4, "image_size": self.image_size, "patch_size": 6, "projection_dim": 16,
            },
            text_config={
                "model_type": "opt", "vocab_size": VOCAB, "hidden_size": self.hidden_size, "ffn_dim": 37,
                "num_hidden_layers": self.num_layers, "num_attention_heads": self.num_heads,
                "word_embed_proj_dim": self.hidden_size, "max_position_embeddings": 64, "bos_token_id": BOS,
                "eos_token_id": BOS, "pad_token_id": PAD, "dropout": 0.0,
            },
            projector_hidden_size=24,
            image_token_id=IMAGE_TOKEN_ID,
            **overrides,
        )

    def prepare_inputs(self, seed: int = 0, batch_size: int | None = None) -> dict[str, torch.Tensor]:
        """Rows of `<image>`, BOS and 3..5 text tokens, left-padded; random pixels."""
        generator = torch.Generator().manual_seed(seed)
        batch_size = batch_size or self.batch_size
        lengths = [self.text_length - row % 3 for row in range(batch_size)]
        longest = 2 + max(lengths)
        input_ids = torch.full((batch_size, longest), PAD)
        attention_mask = torch.zeros_like(input_ids)
        for row, length in enumerate(lengths):
            text = torch.randint(3, IMAGE_TOKEN_ID, (length,), generator=generator)
            input_ids[row, longest - length - 2 :] = torch.cat([torch.tensor([IMAGE_TOKEN_ID, BOS]), text])
            attention_mask[row, longest - length - 2 :] = 1
        pixel_values = torch.randn(batch_size, 3, self.image_size, self.image_size, generator=generator)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values}


def make_model(seed: int = 0, **config_overrides) -> MODAForConditionalGeneration:
    """A random tiny MODA with weights wide enough that its tokens depend on its inputs."""
    torch.manual_seed(seed)
    model = MODAForConditionalGeneration(TESTER.get_config(**config_overrides)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim > 1:
                parameter.normal_(0, 2.0 / parameter.shape[-1] ** 0.5)
    model.generation_config.eos_token_id = None  # every row runs the full length, so every step is compared
    return model


TESTER = MODAModelTester()
GENERATE = {"max_new_tokens": 5, "do_sample": False}


@pytest.fixture(scope="module")
def model() -> MODAForConditionalGeneration:
    return make_model()


@pytest.fixture
def inputs() -> dict[str, torch.Tensor]:
    return TESTER.prepare_inputs()


def real_rows(inputs: dict, row: int) -> dict:
    """Row `row` of a left-padded batch on its own, without its padding."""
    keep = inputs["attention_mask"][row].bool()
    return {
        "input_ids": inputs["input_ids"][row : row + 1, keep],
        "attention_mask": inputs["attention_mask"][row : row + 1, keep],
        "pixel_values": inputs["pixel_values"][row : row + 1],
    }


# --- ModelTesterMixin ------------------------------------------------------------------------------------------------


SAVING_RECORDS = ("_name_or_path", "architectures", "dtype")  # what saving writes down besides the settings


def settings(config) -> dict:
    """A config's values, without the records saving adds (where it was loaded from, class names, dtype)."""
    values = {key: value for key, value in config.to_dict().items() if key not in SAVING_RECORDS}
    for name in ("vision_config", "text_config"):
        values[name] = {key: value for key, value in values[name].items() if key not in SAVING_RECORDS}
    return values


def test_save_load(model, inputs, tmp_path):  # test_save_load, test_load_save_without_tied_weights
    model.save_pretrained(tmp_path)
    loaded = MODAForConditionalGeneration.from_pretrained(tmp_path)
    assert settings(loaded.config) == settings(model.config)
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, rtol=0, atol=0, msg=name)
    assert loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits)


def test_hidden_states_output(model, inputs):  # test_hidden_states_output
    with torch.no_grad():
        outputs = model(**inputs, output_hidden_states=True)
    assert len(outputs.hidden_states) == TESTER.num_layers + 1
    assert all(state.shape == (*inputs["input_ids"].shape, TESTER.hidden_size) for state in outputs.hidden_states)


def test_attention_outputs(inputs):  # test_attention_outputs
    model = make_model()
    model.set_attn_implementation("eager")
    with torch.no_grad():
        outputs = model(**inputs, output_attentions=True)
    batch, length = inputs["input_ids"].shape
    assert len(outputs.attentions) == TESTER.num_layers
    assert all(attention.shape == (batch, TESTER.num_heads, length, length) for attention in outputs.attentions)
    torch.testing.assert_close(outputs.attentions[0].sum(-1), torch.ones(batch, TESTER.num_heads, length))


def test_image_outputs(model, inputs):  # the VLM outputs' image_outputs (LlavaCausalLMOutputWithPast)
    with torch.no_grad():
        outputs = model(**inputs)
        features = model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
    assert outputs.image_outputs.pooler_output.shape == (TESTER.batch_size, 1, TESTER.hidden_size)
    torch.testing.assert_close(outputs.image_hidden_states, features)
    patches = (TESTER.image_size // 6) ** 2 + 1
    assert outputs.image_outputs.last_hidden_state.shape == (TESTER.batch_size, patches, 32)


def test_return_dict_false(model, inputs):  # test_model_outputs_equivalence
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    with torch.no_grad():
        as_dict = model(**inputs, labels=labels)
        as_tuple = model(**inputs, labels=labels, return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], as_dict.loss)
    torch.testing.assert_close(as_tuple[1], as_dict.logits)


# test_left_padding_compatibility, test_batching_equivalence
def test_left_padding_matches_unpadded_rows(model, inputs):
    with torch.no_grad():
        batched = model(**inputs).logits[:, -1]
        for row in range(TESTER.batch_size):
            torch.testing.assert_close(batched[row], model(**real_rows(inputs, row)).logits[0, -1])


def test_logits_to_keep(model, inputs):  # test_forward_with_logits_to_keep
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs, logits_to_keep=1).logits, model(**inputs).logits[:, -1:])


def test_eager_matches_sdpa(inputs):  # test_eager_matches_sdpa_inference
    sdpa, eager = make_model(), make_model()
    eager.set_attn_implementation("eager")
    real = inputs["attention_mask"].bool()  # padding positions attend to nothing: their outputs mean nothing
    with torch.no_grad():
        torch.testing.assert_close(eager(**inputs).logits[real], sdpa(**inputs).logits[real], rtol=1e-4, atol=1e-4)


def test_base_model_is_the_body_without_the_head(model, inputs):  # test_model_base_model_prefix
    body = model.base_model
    assert isinstance(body, MODAModel) and body is not model
    body_weights = {id(parameter) for parameter in body.parameters()}
    assert body_weights <= {id(parameter) for parameter in model.parameters()}
    assert id(model.get_input_embeddings().weight) in body_weights  # tied to the head, but part of the body
    assert not any(name.startswith("lm_head") for name, _ in body.named_parameters())
    with torch.no_grad():
        hidden = body(**inputs).last_hidden_state
        torch.testing.assert_close(model.get_output_embeddings()(hidden), model(**inputs).logits)
    assert model.get_decoder() is model.language_model.get_decoder()


def test_resize_tokens_embeddings(model, inputs):  # test_resize_tokens_embeddings
    resized = copy.deepcopy(model)
    resized.resize_token_embeddings(VOCAB + 9, pad_to_multiple_of=8)
    assert resized.get_input_embeddings().num_embeddings == VOCAB + 13
    assert resized.config.text_config.vocab_size == VOCAB + 13
    assert resized.get_output_embeddings().weight is resized.get_input_embeddings().weight
    with torch.no_grad():
        logits = resized(**inputs).logits
        assert logits.shape[-1] == VOCAB + 13
        torch.testing.assert_close(resized.get_input_embeddings().weight[:VOCAB], model.get_input_embeddings().weight)
    with pytest.raises(ValueError, match=f"would drop the <image> token \\(id {IMAGE_TOKEN_ID}\\)"):
        resized.resize_token_embeddings(IMAGE_TOKEN_ID)


def test_gradient_checkpointing_gives_the_same_gradients(inputs):  # test_training_gradient_checkpointing
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    gradients = []
    for checkpointing in (False, True):
        model = make_model().train()
        if checkpointing:
            model.activation_checkpointing_enable()
        model(**inputs, labels=labels).loss.backward()
        gradients.append({name: p.grad for name, p in model.named_parameters() if p.grad is not None})
    assert gradients[0].keys() == gradients[1].keys() and gradients[0]
    for name, gradient in gradients[0].items():
        torch.testing.assert_close(gradients[1][name], gradient, msg=name)


def test_training_step(inputs):  # test_training
    model = make_model().train()
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    vision_before = copy.deepcopy(model.vision_tower.state_dict())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(4):
        loss = model(**inputs, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    for name, tensor in model.vision_tower.state_dict().items():
        assert torch.equal(tensor, vision_before[name]), f"{name} of the frozen vision tower changed"


def test_shift_labels_give_the_labels_loss(model, inputs):  # the loss's `shift_labels` (transformers' loss utils)
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    shifted = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs, shift_labels=shifted).loss, model(**inputs, labels=labels).loss)


# --- GenerationTesterMixin -------------------------------------------------------------------------------------------


def test_greedy_sample_and_beam_generate(model, inputs):  # test_greedy/sample/beam_search_generate(_dict_output)
    prompt = inputs["input_ids"].shape[1]
    greedy = model.generate(**inputs, **GENERATE, return_dict_in_generate=True, output_scores=True)
    assert greedy.sequences.shape == (TESTER.batch_size, prompt + 5) and len(greedy.scores) == 5
    assert torch.equal(greedy.sequences[:, prompt], greedy.scores[0].argmax(-1))
    samples = []
    for _ in range(2):
        torch.manual_seed(7)
        samples.append(model.generate(**inputs, max_new_tokens=5, do_sample=True, top_k=10))
    assert torch.equal(*samples)
    beams = model.generate(**inputs, max_new_tokens=5, num_beams=3, num_return_sequences=2)
    assert beams.shape == (2 * TESTER.batch_size, prompt + 5)


def test_generate_is_the_forward_argmax(model, inputs):  # test_greedy_generate: what generate reads off forward
    sequences = model.generate(**inputs, **GENERATE)
    mask = torch.nn.functional.pad(inputs["attention_mask"], (0, 5), value=1)
    with torch.no_grad():
        logits = model(input_ids=sequences, attention_mask=mask, pixel_values=inputs["pixel_values"]).logits
    prompt = inputs["input_ids"].shape[1]
    assert torch.equal(logits[:, prompt - 1 : -1].argmax(-1), sequences[:, prompt:])


@pytest.mark.parametrize("assistant", ["same", "random"])
def test_assisted_decoding_matches_greedy_search(model, inputs, assistant):  # the common test of that name
    single = real_rows(inputs, 0)  # assisted decoding takes one row
    helper = model if assistant == "same" else make_model(seed=1)
    helper.generation_config.num_assistant_tokens = 2
    helper.generation_config.num_assistant_tokens_schedule = "constant"
    assisted = model.generate(**single, **GENERATE, assistant_model=helper)
    assert torch.equal(assisted, model.generate(**single, **GENERATE))


def test_prompt_lookup_decoding_matches_greedy_search(model, inputs):  # the common test of that name
    single = real_rows(inputs, 1)
    looked_up = model.generate(**single, **GENERATE, prompt_lookup_num_tokens=2)
    assert torch.equal(looked_up, model.generate(**single, **GENERATE))


def test_generate_with_static_cache(model, inputs):  # test_generate_with_static_cache
    static = model.generate(**inputs, **GENERATE, cache_implementation="static", return_dict_in_generate=True)
    assert isinstance(static.past_key_values, StaticCache)
    assert torch.equal(static.sequences, model.generate(**inputs, **GENERATE))


def test_generate_continue_from_past_key_values(model, inputs):  # test_generate_continue_from_past_key_values
    options = {"do_sample": False, "return_dict_in_generate": True}
    whole = model.generate(**inputs, max_new_tokens=4, **options)
    first = model.generate(**inputs, max_new_tokens=3, **options)
    assert isinstance(first.past_key_values, DynamicCache)
    mask = torch.nn.functional.pad(inputs["attention_mask"], (0, 3), value=1)
    # the image is in the cache: it may be passed again (as LLaVA users do) or left out
    for images in ({"pixel_values": inputs["pixel_values"]}, {}):
        cache = copy.deepcopy(first.past_key_values)
        rest = model.generate(
            input_ids=first.sequences, attention_mask=mask, cache=cache, max_new_tokens=1, **options, **images
        )
        assert torch.equal(rest.sequences, whole.sequences)


def test_generate_from_inputs_embeds(model, inputs):  # test_generate_from_inputs_embeds
    embeds = model.get_input_embeddings()(inputs["input_ids"])
    from_embeds = model.generate(
        inputs_embeds=embeds, attention_mask=inputs["attention_mask"], pixel_values=inputs["pixel_values"], **GENERATE
    )
    from_ids = model.generate(**inputs, **GENERATE)
    assert torch.equal(from_embeds, from_ids[:, inputs["input_ids"].shape[1] :])


def test_generate_compile_model_forward_fullgraph(model, inputs):  # test_generate_compile_model_forward_fullgraph
    torch.compiler.reset()
    compiled = torch.compile(model.forward, fullgraph=True, backend="eager")  # any graph break is an error
    with torch.no_grad():
        torch.testing.assert_close(compiled(**inputs).logits, model(**inputs).logits)
    config = CompileConfig(fullgraph=True, dynamic=False, backend="eager")
    config._compile_all_devices = True  # generate compiles on accelerators only, unless told
    eager = model.generate(**inputs, **GENERATE)
    static = model.generate(**inputs, **GENERATE, cache_implementation="static", compile_config=config)
    assert hasattr(model, "_compiled_call") and torch.equal(static, eager)
