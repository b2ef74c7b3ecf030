"""MODAForConditionalGeneration: forward, loss masking, image-embedding path, generation, backbones, training."""

import copy

import pytest
import torch
from torch.nn import functional as F
from transformers import CLIPModel, SiglipConfig, SiglipModel

from conftest import FASHION_TEXTS, make_photo
from modeling_moda import MODAForConditionalGeneration


def test_loss_covers_only_description_tokens(tiny_model, tiny_processor, photos):
    batch = tiny_processor(images=photos[:2], text=["A red dress.", "Black casual shoes for men."], return_labels=True)
    with torch.no_grad():
        output = tiny_model(**batch)
    logits, labels = output.logits[:, :-1], batch["labels"][:, 1:]
    description = labels != -100
    expected = F.cross_entropy(logits[description], labels[description])
    torch.testing.assert_close(output.loss, expected)

    # image, BOS and pad positions carry no target, and the EOS that ends each description does
    first_text = (batch["attention_mask"].cumsum(1) == tiny_processor.num_image_tokens + 2).float().argmax(1)
    for row, start in enumerate(first_text):
        assert (batch["labels"][row, :start] == -100).all()
        assert batch["labels"][row, -1] == tiny_processor.tokenizer.eos_token_id


def test_image_position_never_gets_a_target(tiny_model, tiny_processor, photos):
    batch = tiny_processor(images=photos[:1], text=["A red dress."], return_labels=True)
    leaked = batch["labels"].clone()
    leaked[batch["input_ids"] == tiny_processor.image_token_id] = 5
    with torch.no_grad():
        assert tiny_model(**batch).loss == tiny_model(**{**batch, "labels": leaked}).loss


def test_precomputed_image_embeds_equal_pixel_path(tiny_model, tiny_processor, photos):
    batch = tiny_processor(images=photos, text=["A", "A red", "", "Black casual shoes"])
    with torch.no_grad():
        from_pixels = tiny_model(**batch).logits
        embeds = tiny_model.get_image_embeds(batch["pixel_values"])
        without_pixels = {k: v for k, v in batch.items() if k != "pixel_values"}
        from_embeds = tiny_model(**without_pixels, image_embeds=embeds).logits
    assert embeds.shape == (4, 1, tiny_model.config.vision_feature_size)
    torch.testing.assert_close(from_pixels, from_embeds)


def test_image_changes_the_prediction(tiny_model, tiny_processor, photos):
    with torch.no_grad():
        logits = tiny_model(**tiny_processor(images=photos)).logits[:, -1]
    assert not torch.allclose(logits[0], logits[1])


def test_mismatched_placeholders_raise(tiny_model, tiny_processor, photos):
    batch = tiny_processor(images=photos[:2])
    with pytest.raises(ValueError, match="<image> placeholders"):
        tiny_model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"][:1])
    with pytest.raises(ValueError, match="either pixel_values or image_embeds"):
        tiny_model(**batch, image_embeds=torch.zeros(2, 1, tiny_model.config.vision_feature_size))


def generate_text(model, processor, images, texts, **kwargs) -> list[list[int]]:
    """The new tokens of each sequence, up to EOS (ids, not text: random models emit undecodable bytes)."""
    inputs = processor(images=images, text=texts)
    ids = model.generate(**inputs, max_new_tokens=12, **kwargs)[:, inputs["input_ids"].shape[1]:].tolist()
    eos = processor.tokenizer.eos_token_id
    return [row[: row.index(eos)] if eos in row else row for row in ids]


def test_batched_greedy_equals_one_at_a_time(tiny_model, tiny_processor, photos):
    prompts = ["", "A", "A red striped", "Black casual shoes for"]  # different lengths: real left padding
    batched = generate_text(tiny_model, tiny_processor, photos, prompts, do_sample=False)
    single = [generate_text(tiny_model, tiny_processor, [p], [t], do_sample=False)[0] for p, t in zip(photos, prompts)]
    assert batched == single
    unprompted = generate_text(tiny_model, tiny_processor, photos, None, do_sample=False)
    assert len(set(map(tuple, unprompted))) > 1, "different photos should give different descriptions"


def test_kv_cache_does_not_change_greedy_output(tiny_model, tiny_processor, photos):
    with_cache = generate_text(tiny_model, tiny_processor, photos, None, do_sample=False, use_cache=True)
    without_cache = generate_text(tiny_model, tiny_processor, photos, None, do_sample=False, use_cache=False)
    assert with_cache == without_cache


def test_beam_search_and_sampling_run(tiny_model, tiny_processor, photos):
    inputs = tiny_processor(images=photos[:2])
    beams = tiny_model.generate(**inputs, max_new_tokens=6, num_beams=3, num_return_sequences=2)
    assert beams.shape[0] == 4
    torch.manual_seed(0)
    sampled = tiny_model.generate(**inputs, max_new_tokens=6, do_sample=True, temperature=0.8, top_k=20)
    assert sampled.shape[0] == 2 and sampled.shape[1] <= inputs["input_ids"].shape[1] + 6


def test_generation_stops_at_eos(tiny_model, tiny_processor, photos):
    eos = tiny_processor.tokenizer.eos_token_id
    with torch.no_grad():
        bias = torch.zeros(tiny_model.config.text_config.vocab_size)
        bias[eos] = 1e4

        def force_eos(module, args, output):
            return output + bias

        handle = tiny_model.language_model.lm_head.register_forward_hook(force_eos)
        try:
            ids = tiny_model.generate(**tiny_processor(images=photos[:2]), max_new_tokens=10)
        finally:
            handle.remove()
    prompt_length = tiny_processor(images=photos[:1])["input_ids"].shape[1]
    assert ids.shape[1] == prompt_length + 1 and (ids[:, -1] == eos).all()


def test_lm_head_is_tied_to_input_embeddings(tiny_model):
    assert tiny_model.get_output_embeddings().weight is tiny_model.get_input_embeddings().weight


def test_training_step_updates_projector_and_lm_not_vision(tiny_backbones, tiny_processor, photos):
    model = MODAForConditionalGeneration.from_backbones(*tiny_backbones).train()
    model.activation_checkpointing_enable()
    batch = tiny_processor(images=photos, text=FASHION_TEXTS[:4], return_labels=True)
    model(**batch).loss.backward()
    assert all(p.grad is None for p in model.vision_tower.parameters())
    assert all(p.grad is not None for p in model.projector.parameters())
    assert model.get_input_embeddings().weight.grad is not None


def test_word_dropout_zeroes_description_tokens_only_while_training(tiny_backbones, tiny_processor, photos):
    model = MODAForConditionalGeneration.from_backbones(*tiny_backbones)
    model.config.word_dropout = 0.5
    decoder_inputs = []
    model.get_decoder().register_forward_pre_hook(
        lambda module, args, kwargs: decoder_inputs.append(kwargs["inputs_embeds"].detach()), with_kwargs=True
    )
    batch = tiny_processor(images=photos * 8, text=FASHION_TEXTS[:4] * 8, return_labels=True)
    unlabelled = {name: value for name, value in batch.items() if name != "labels"}
    model(**unlabelled)
    kept = decoder_inputs[-1]

    def dropped_rows(**inputs) -> torch.Tensor:
        model(**inputs)
        seen = decoder_inputs[-1]
        changed = (seen != kept[:, : seen.shape[1]]).any(-1)
        assert (seen[changed] == 0).all()  # a dropped token's embedding is zeroed, nothing else changes
        return changed

    model.train()
    dropped = dropped_rows(**batch)
    labelled = (batch["labels"] != -100)[:, : dropped.shape[1]]  # training skips a last position that predicts nothing
    assert not dropped[~labelled].any()  # image, BOS and pad positions are kept
    assert 0.35 < dropped[labelled].float().mean() < 0.65
    assert not torch.equal(dropped, dropped_rows(**batch))  # drawn anew at every step
    assert not dropped_rows(**unlabelled).any()  # no labels, no training targets: nothing is dropped
    model.eval()
    assert not dropped_rows(**batch).any()


@pytest.mark.parametrize("num_items_in_batch", [None, 40])
def test_loss_only_path_equals_full_logits(tiny_backbones, tiny_processor, photos, num_items_in_batch):
    model = MODAForConditionalGeneration.from_backbones(*tiny_backbones)  # eval mode: no dropout in either path
    batch = tiny_processor(images=photos, text=FASHION_TEXTS[:4], return_labels=True)  # padded: captions differ
    decoder_lengths, head_rows = [], []
    hooks = [
        model.get_decoder().layers[0].register_forward_hook(
            lambda module, args, output: decoder_lengths.append(args[0].shape[1])
        ),
        model.get_output_embeddings().register_forward_hook(
            lambda module, args, output: head_rows.append(args[0].shape[:-1].numel())
        ),
    ]

    def loss_and_gradients(skip_logits: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        output = model(**batch, num_items_in_batch=num_items_in_batch, skip_logits=skip_logits)
        output.loss.backward()
        gradients = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        model.zero_grad(set_to_none=True)
        return output, gradients

    try:
        loss_only, loss_only_gradients = loss_and_gradients(skip_logits=True)
        full, full_gradients = loss_and_gradients(skip_logits=False)
    finally:
        for hook in hooks:
            hook.remove()
    assert loss_only.logits is None and full.logits is not None
    rows, length = batch["input_ids"].shape
    targets = int((batch["labels"][:, 1:] != -100).sum())
    assert decoder_lengths == [length - 1, length]
    assert head_rows == [targets, rows * length] and targets < rows * (length - 3)
    torch.testing.assert_close(loss_only.loss, full.loss)
    assert len(loss_only_gradients) == len(full_gradients) > 0
    for loss_only_gradient, full_gradient in zip(loss_only_gradients, full_gradients):
        torch.testing.assert_close(loss_only_gradient, full_gradient)


def test_training_with_labels_computes_only_the_loss(tiny_model, tiny_processor, photos):
    batch = tiny_processor(images=photos[:2], text=FASHION_TEXTS[:2], return_labels=True)
    try:
        tiny_model.train()
        with torch.no_grad():
            assert tiny_model(**batch).logits is None
            assert tiny_model(**batch, skip_logits=False).logits is not None
            assert tiny_model(**{k: v for k, v in batch.items() if k != "labels"}).logits is not None
    finally:
        tiny_model.eval()
    with pytest.raises(ValueError, match="needs labels"):
        tiny_model(**tiny_processor(images=photos[:1]), skip_logits=True)
    not_opt = copy.deepcopy(tiny_model)
    not_opt.config.text_config.model_type = "gemma2"  # its logits are soft-capped: the head alone is not them
    with pytest.raises(ValueError, match="needs an OPT language model"):
        not_opt(**batch, skip_logits=True)
    not_opt.train()
    assert not_opt(**batch).logits is not None  # the default falls back to the full logits


def test_from_backbones_keeps_pretrained_weights(tiny_backbones, tiny_model):
    vision_dir, _ = tiny_backbones
    clip = CLIPModel.from_pretrained(vision_dir).eval()
    model = MODAForConditionalGeneration.from_backbones(*tiny_backbones)
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = clip.get_image_features(pixel_values=pixel_values)
        expected = getattr(expected, "pooler_output", expected)
        torch.testing.assert_close(model.get_image_embeds(pixel_values)[:, 0], expected)


def test_siglip_vision_backbone_and_patch_features(tmp_path, tiny_backbones, tiny_processor):
    siglip = SiglipModel(SiglipConfig(
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "vocab_size": 64},
    ))
    siglip.save_pretrained(tmp_path)
    model = MODAForConditionalGeneration.from_backbones(tmp_path, tiny_backbones[1], image_features="patches")
    assert model.config.num_image_tokens == 16
    processor = type(tiny_processor)(tiny_processor.image_processor, tiny_processor.tokenizer, num_image_tokens=16)
    ids = model.generate(**processor(images=[make_photo(1), make_photo(2)]), max_new_tokens=4)
    assert ids.shape[0] == 2


# --- the config after loading, and what a transformers user meets first -----------------------------------------------


def test_from_pretrained_keeps_the_vision_tower_frozen(tiny_checkpoint):
    model = MODAForConditionalGeneration.from_pretrained(tiny_checkpoint)
    assert not any(parameter.requires_grad for parameter in model.vision_tower.parameters())
    assert all(parameter.requires_grad for parameter in model.projector.parameters())
    unfrozen = MODAForConditionalGeneration.from_pretrained(tiny_checkpoint, freeze_vision=False)
    assert all(parameter.requires_grad for parameter in unfrozen.vision_tower.parameters())


def test_placeholders_without_an_image_are_an_error(tiny_model, tiny_processor, photos):
    inputs = tiny_processor(images=photos[:2])
    text_only = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
    with pytest.raises(ValueError, match="2 <image> placeholders but no image: pass pixel_values"):
        tiny_model.generate(**text_only, max_new_tokens=3)
    with pytest.raises(ValueError, match="placeholders but no image"):
        tiny_model(**text_only)
    with pytest.raises(ValueError, match="placeholders but no image"):
        tiny_model(inputs_embeds=tiny_model.get_input_embeddings()(inputs["input_ids"]))


def test_an_image_without_placeholders_is_an_error(tiny_model, tiny_processor, photos):
    tokenizer = tiny_processor.tokenizer
    text = tokenizer(["A red dress"], return_tensors="pt")  # the tokenizer alone writes no <image>
    with pytest.raises(ValueError, match="0 <image> placeholders but the images give 1 features"):
        tiny_model.generate(**text, pixel_values=tiny_processor(images=photos[0])["pixel_values"], max_new_tokens=3)


def test_inputs_embeds_with_pixel_values_equal_input_ids(tiny_model, tiny_processor, photos):
    batch = tiny_processor(images=photos[:2], text=["A red", "Black casual shoes"])
    embeds = tiny_model.get_input_embeddings()(batch["input_ids"])
    with torch.no_grad():
        from_ids = tiny_model(**batch).logits
        from_embeds = tiny_model(
            inputs_embeds=embeds, attention_mask=batch["attention_mask"], pixel_values=batch["pixel_values"]
        ).logits
    torch.testing.assert_close(from_embeds, from_ids)


def test_shift_labels_give_the_labels_loss_and_never_target_the_image(tiny_model, tiny_processor, photos):
    batch = tiny_processor(images=photos[:2], text=FASHION_TEXTS[:2], return_labels=True)
    shifted = torch.nn.functional.pad(batch["labels"][:, 1:], (0, 1), value=-100)
    image_position = (batch["input_ids"] == tiny_processor.image_token_id).int().argmax(1)
    row = int(image_position.argmax())
    assert image_position[row] > 0, "the shorter description's row is padded: a position comes before its image"
    leaked = shifted.clone()
    leaked[row, image_position[row] - 1] = tiny_processor.image_token_id  # "predict the image token"
    without_labels = {key: value for key, value in batch.items() if key != "labels"}
    with torch.no_grad():
        from_labels = tiny_model(**batch).loss
        torch.testing.assert_close(tiny_model(**without_labels, shift_labels=shifted).loss, from_labels)
        torch.testing.assert_close(tiny_model(**without_labels, shift_labels=leaked).loss, from_labels)


# --- peft -------------------------------------------------------------------------------------------------------------


def test_lora_config_adapts_the_language_model_and_trains_the_projector(tiny_checkpoint):
    from peft import LoraConfig, get_peft_model

    from moda.lora import lora_config

    def trainable(config) -> list[str]:
        model = get_peft_model(MODAForConditionalGeneration.from_pretrained(tiny_checkpoint), config)
        return [name for name, parameter in model.named_parameters() if parameter.requires_grad]

    plain = trainable(LoraConfig(target_modules=["q_proj", "v_proj"]))  # CLIP's attention has the same names
    assert any("vision_tower" in name for name in plain) and not any("projector" in name for name in plain)
    moda = trainable(lora_config())
    assert not any("vision_tower" in name for name in moda) and any("projector" in name for name in moda)


def trained_adapter(checkpoint, folder):
    """A LoRA adapter of `moda.lora.lora_config` on the MODA at `checkpoint`, its B matrices drawn at random (as
    trained ones, they change the text), saved to `folder`; returned in eval mode."""
    from peft import get_peft_model

    from moda.lora import lora_config

    adapted = get_peft_model(MODAForConditionalGeneration.from_pretrained(checkpoint), lora_config())
    with torch.no_grad():
        for name, parameter in adapted.named_parameters():
            if "lora_B" in name:
                parameter.normal_()
    adapted.save_pretrained(folder)
    return adapted.eval()  # get_peft_model leaves the model training: LoRA dropout on


def test_auto_peft_model_loads_a_moda_adapter(tiny_checkpoint, tiny_processor, photos, tmp_path):
    from peft import AutoPeftModel, AutoPeftModelForCausalLM, PeftModel

    adapted = trained_adapter(tiny_checkpoint, tmp_path)
    inputs = tiny_processor(images=photos[:2])
    expected = adapted.generate(**inputs, max_new_tokens=6, do_sample=False)
    loaded = AutoPeftModelForCausalLM.from_pretrained(tmp_path)
    assert torch.equal(loaded.generate(**inputs, max_new_tokens=6, do_sample=False), expected)
    base = MODAForConditionalGeneration.from_pretrained(tiny_checkpoint)
    assert not torch.equal(base.generate(**inputs, max_new_tokens=6, do_sample=False), expected)
    reloaded = PeftModel.from_pretrained(base, tmp_path)
    assert torch.equal(reloaded.generate(**inputs, max_new_tokens=6, do_sample=False), expected)
    with pytest.raises(ValueError, match="AutoPeftModelForCausalLM"):  # peft's own message for a task type
        AutoPeftModel.from_pretrained(tmp_path)


LOAD_ADAPTER = """
import json, torch
from peft import AutoPeftModelForCausalLM
from transformers import AutoProcessor
model = AutoPeftModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(model.peft_config["default"].base_model_name_or_path, trust_remote_code=True)
with torch.inference_mode():
    ids = model.generate(**processor(images=sys.argv[2:], return_tensors="pt"), max_new_tokens=6, do_sample=False)
print(json.dumps(ids.tolist()))
"""


def test_an_adapter_loads_with_only_the_checkpoints_code(tiny_checkpoint, tiny_processor, photos, tmp_path):
    """AutoPeftModelForCausalLM(adapter, trust_remote_code=True) in a process that cannot import this repository:
    the base model comes from the checkpoint's own code (its auto_map), and the text is the adapter's."""
    import json
    import os
    import subprocess

    from moda.clean_process import clean_command

    adapted = trained_adapter(tiny_checkpoint, tmp_path / "adapter")
    paths = [tmp_path / f"photo{index}.png" for index in range(2)]
    for photo, path in zip(photos, paths):
        photo.save(path)
    with torch.inference_mode():
        expected = adapted.generate(**tiny_processor(images=photos[:2]), max_new_tokens=6, do_sample=False)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(clean_command(LOAD_ADAPTER, tmp_path / "adapter", *paths), cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == expected.tolist()
