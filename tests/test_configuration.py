"""MODAConfig: defaults are the real MODA, sub-configs accept dicts, serialization round-trips, bad values fail."""

import json

import pytest
import torch
from transformers import AutoConfig, CLIPVisionConfig, OPTConfig, SiglipVisionConfig

from modeling_moda import MODAConfig, MODAForConditionalGeneration

TINY_VISION = {"model_type": "clip_vision_model", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
               "num_attention_heads": 2, "image_size": 32, "patch_size": 8, "projection_dim": 8}
TINY_TEXT = {"model_type": "opt", "vocab_size": 64, "hidden_size": 16, "word_embed_proj_dim": 16, "ffn_dim": 32,
             "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 64}


def test_defaults_describe_fashion_clip_and_opt_125m():
    config = MODAConfig()
    assert isinstance(config.vision_config, CLIPVisionConfig)
    assert (config.vision_config.hidden_size, config.vision_config.num_hidden_layers) == (768, 12)
    assert (config.vision_config.patch_size, config.vision_config.image_size) == (32, 224)
    assert config.vision_feature_size == 512 and config.num_image_tokens == 1
    assert isinstance(config.text_config, OPTConfig) and config.text_config.vocab_size == 50272
    assert (config.text_config.pad_token_id, config.text_config.eos_token_id) == (1, 2)


def test_real_size_parameter_count_is_217m():
    with torch.device("meta"):
        model = MODAForConditionalGeneration(MODAConfig())
    counts = {name: sum(p.numel() for p in getattr(model, name).parameters())
              for name in ("vision_tower", "projector", "language_model")}
    assert model.num_parameters() == sum(counts.values())
    assert round(counts["vision_tower"] / 1e6, 2) == 87.85
    assert round(counts["projector"] / 1e6, 2) == 3.94
    assert round(counts["language_model"] / 1e6, 2) == 125.24
    assert round(model.num_parameters() / 1e6) == 217


def test_dict_sub_configs_build_a_working_tiny_model():
    config = MODAConfig(vision_config=TINY_VISION, text_config=TINY_TEXT, image_token_id=60, projector_hidden_size=24)
    model = MODAForConditionalGeneration(config)
    assert model.projector.linear_1.in_features == 8 and model.projector.linear_1.out_features == 24
    assert model.projector.linear_2.out_features == 16
    input_ids = torch.tensor([[60, 2, 10, 11]])
    logits = model(input_ids=input_ids, pixel_values=torch.randn(1, 3, 32, 32)).logits
    assert logits.shape == (1, 4, 64)


def test_round_trip_through_json(tmp_path):
    config = MODAConfig(vision_config=TINY_VISION, text_config=TINY_TEXT, image_token_id=60, image_features="patches")
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, MODAConfig)
    assert loaded.to_diff_dict() == config.to_diff_dict()
    assert loaded.auto_map["AutoModel"] == "modeling_moda.MODAForConditionalGeneration"


def test_patch_features_count_class_token_for_clip_only():
    clip = MODAConfig(vision_config=TINY_VISION, text_config=TINY_TEXT, image_token_id=60, image_features="patches")
    assert clip.num_image_tokens == 17 and clip.vision_feature_size == 16
    siglip = MODAConfig(
        vision_config=SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, image_size=32, patch_size=8),
        text_config=TINY_TEXT, image_token_id=60, image_features="patches")
    assert siglip.num_image_tokens == 16


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"image_features": "mean"}, "image_features"),
        ({"projector_hidden_size": 0}, "projector_hidden_size must be a positive integer"),
        ({"projector_hidden_size": 24.5}, "projector_hidden_size must be a positive integer, got 24.5"),
        ({"projector_hidden_size": "24"}, "projector_hidden_size must be a positive integer, got '24'"),
        ({"projector_hidden_act": "gleu"}, "projector_hidden_act must be one of .*got 'gleu'"),
        ({"word_dropout": 1.0}, r"word_dropout must be a probability in \[0, 1\), got 1.0"),
        ({"word_dropout": True}, "word_dropout must be a probability"),
        ({"image_token_id": 64}, "image_token_id 64 is outside"),
        ({"image_token_id": "60"}, "image_token_id must be an integer token id, got '60'"),
        ({"image_token_id": 1}, "image_token_id 1 is the text model's pad_token_id"),
        ({"image_token_id": 2}, "image_token_id 2 is the text model's bos_token_id"),
        ({"text_config": {**TINY_TEXT, "hidden_size": -16}}, "text_config.hidden_size must be a positive integer"),
        ({"text_config": {**TINY_TEXT, "eos_token_id": 60}}, "image_token_id 60 is the text model's eos_token_id"),
        ({"vision_config": {**TINY_VISION, "patch_size": 0}}, "vision_config.patch_size must be a positive integer"),
    ],
)
def test_bad_values_fail_when_the_config_is_made_naming_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MODAConfig(**{"vision_config": TINY_VISION, "text_config": TINY_TEXT, "image_token_id": 60, **kwargs})


def test_bad_config_json_fails_when_read(tmp_path):
    MODAConfig(vision_config=TINY_VISION, text_config=TINY_TEXT, image_token_id=60).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "image_token_id": 1}))
    with pytest.raises(ValueError, match="image_token_id 1 is the text model's pad_token_id"):
        AutoConfig.from_pretrained(tmp_path)


def test_config_json_saved_before_the_layout_still_loads(checkpoint_before_layout):
    config = AutoConfig.from_pretrained(checkpoint_before_layout)
    assert isinstance(config, MODAConfig)
    assert (config.image_token_id, config.projector_hidden_size, config.text_config.vocab_size) == (300, 3072, 308)
