"""MODA configuration: a vision sub-config, a text sub-config and the projector between them.

The defaults describe the real MODA: FashionCLIP's vision tower (CLIP ViT-B/32 with its 512-d visual
projection) and OPT-125M. Any CLIP/SigLIP-style vision config and any causal-LM text config can be passed,
as config objects or plain dicts carrying a ``model_type``.

This file is copied next to ``config.json`` by ``save_pretrained`` and must import only transformers.
"""

from typing import Literal

from transformers import AutoConfig, PreTrainedConfig
from transformers.activations import ACT2FN
from transformers.configuration_utils import SubConfigSpec

# The seed's vision encoder: FashionCLIP = CLIP ViT-B/32, whose visual projection gives a 512-d embedding.
FASHION_CLIP_VISION_DEFAULTS = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "patch_size": 32,
    "image_size": 224,
    "projection_dim": 512,
}

# The seed's decoder: OPT-125M (GPT-2 BPE vocabulary padded to 50272, bos = eos = 2, pad = 1).
OPT_125M_DEFAULTS = {
    "vocab_size": 50272,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "ffn_dim": 3072,
    "num_attention_heads": 12,
    "word_embed_proj_dim": 768,
    "max_position_embeddings": 2048,
    "bos_token_id": 2,
    "eos_token_id": 2,
    "pad_token_id": 1,
}

# Written into every config so a saved folder (or Hub repo) loads with trust_remote_code and no install.
AUTO_MAP = {
    "AutoConfig": "configuration_moda.MODAConfig",
    "AutoModel": "modeling_moda.MODAForConditionalGeneration",
    "AutoModelForImageTextToText": "modeling_moda.MODAForConditionalGeneration",
    # as Gemma 3's: peft's AutoPeftModelForCausalLM loads a LoRA adapter's base model through this class
    "AutoModelForCausalLM": "modeling_moda.MODAForConditionalGeneration",
}

# Sizes the sub-models are built from, checked wherever a sub-config has them (a negative or fractional size would
# otherwise surface as a raw torch error when the model is built).
SUB_CONFIG_SIZES = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "ffn_dim",
    "word_embed_proj_dim",
    "num_hidden_layers",
    "num_attention_heads",
    "max_position_embeddings",
    "image_size",
    "patch_size",
    "projection_dim",
    "num_channels",
)

# id 50265 is the first free slot after OPT's 50265 real tokens (its embedding matrix has 50272 rows).
OPT_IMAGE_TOKEN_ID = 50265


def is_positive_int(value) -> bool:
    """A whole number above 0: an int, and not a bool (which Python counts as one)."""
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


class MODAConfig(PreTrainedConfig):
    r"""
    Configuration of [`MODAForConditionalGeneration`].

    Args:
        vision_config (`dict` or `PreTrainedConfig`, *optional*):
            Image encoder config; defaults to FashionCLIP's CLIP ViT-B/32 vision tower.
        text_config (`dict` or `PreTrainedConfig`, *optional*):
            Causal language model config; defaults to OPT-125M.
        projector_hidden_size (`int`, *optional*, defaults to 3072):
            Width of the projector's hidden layer: image feature -> this width -> LM width. The only free
            size of the projector; its input and output follow the sub-configs.
        projector_hidden_act (`str`, *optional*, defaults to `"gelu"`):
            Activation between the projector's two linear layers.
        image_features (`"pooled"` or `"patches"`, *optional*, defaults to `"pooled"`):
            `"pooled"`: the one pooled, projected embedding (512-d for FashionCLIP) as a single image token,
            as in the original MODA. `"patches"`: every patch token of the last hidden layer.
        freeze_vision (`bool`, *optional*, defaults to `True`):
            Keep the vision tower frozen (the original recipe trains only the projector and the LM).
        image_token_id (`int`, *optional*, defaults to 50265):
            Token id of the `<image>` placeholder that the processor writes where image features go.
        word_dropout (`float`, *optional*, defaults to 0.0):
            While training, the probability that a description token's input embedding is zeroed (its target is
            kept), so that the next word is read off the image rather than guessed from the words before it.

    Example:

    ```python
    >>> from modeling_moda import MODAConfig, MODAForConditionalGeneration
    >>> model = MODAForConditionalGeneration(MODAConfig())  # real-size MODA, random weights
    ```
    """

    model_type = "moda"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(
            config_class=AutoConfig, model_type="clip_vision_model", init_kwargs=FASHION_CLIP_VISION_DEFAULTS
        ),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="opt", init_kwargs=OPT_125M_DEFAULTS),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    projector_hidden_size: int = 3072
    projector_hidden_act: str = "gelu"
    image_features: Literal["pooled", "patches"] = "pooled"
    freeze_vision: bool = True
    image_token_id: int = OPT_IMAGE_TOKEN_ID
    tie_word_embeddings: bool = True
    word_dropout: float = 0.0

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self._check_values()
        self.tie_word_embeddings = getattr(self.text_config, "tie_word_embeddings", self.tie_word_embeddings)
        self.auto_map = {**AUTO_MAP, **(getattr(self, "auto_map", None) or {})}

    def _check_values(self) -> None:
        """Raises ValueError naming the field for a value the model could not be built or run with, so a bad
        config.json fails when it is read, not with a raw error deep inside the model."""
        if self.image_features not in ("pooled", "patches"):
            raise ValueError(f"image_features must be 'pooled' or 'patches', got {self.image_features!r}")
        if self.projector_hidden_act not in ACT2FN:
            raise ValueError(
                f"projector_hidden_act must be one of transformers' activations ({', '.join(sorted(ACT2FN))}), "
                f"got {self.projector_hidden_act!r}"
            )
        for name, config in (("vision_config", self.vision_config), ("text_config", self.text_config)):
            for size in SUB_CONFIG_SIZES:
                value = getattr(config, size, None)
                if value is not None and not is_positive_int(value):
                    raise ValueError(f"{name}.{size} must be a positive integer, got {value!r}")
        if isinstance(self.word_dropout, bool) or not isinstance(self.word_dropout, (int, float)) or not (
            0 <= self.word_dropout < 1
        ):
            raise ValueError(f"word_dropout must be a probability in [0, 1), got {self.word_dropout!r}")
        if not is_positive_int(self.projector_hidden_size):
            raise ValueError(f"projector_hidden_size must be a positive integer, got {self.projector_hidden_size!r}")
        vocab_size = self.text_config.vocab_size
        if isinstance(self.image_token_id, bool) or not isinstance(self.image_token_id, int):
            raise ValueError(f"image_token_id must be an integer token id, got {self.image_token_id!r}")
        if not 0 <= self.image_token_id < vocab_size:
            raise ValueError(
                f"image_token_id {self.image_token_id} is outside the text model's vocabulary (vocab_size {vocab_size})"
            )
        for special in ("pad", "bos", "eos"):
            ids = getattr(self.text_config, f"{special}_token_id", None)
            if self.image_token_id in (ids if isinstance(ids, list) else [ids]):
                raise ValueError(
                    f"image_token_id {self.image_token_id} is the text model's {special}_token_id: the image "
                    "placeholder needs a token id of its own"
                )

    @property
    def vision_feature_size(self) -> int:
        """Width of one image feature entering the projector."""
        if self.image_features == "pooled":
            return getattr(self.vision_config, "projection_dim", None) or self.vision_config.hidden_size
        return self.vision_config.hidden_size

    @property
    def num_image_tokens(self) -> int:
        """How many `<image>` placeholders one image takes in the token sequence."""
        if self.image_features == "pooled":
            return 1
        patches = (self.vision_config.image_size // self.vision_config.patch_size) ** 2
        has_class_token = self.vision_config.model_type.startswith("clip")
        return patches + int(has_class_token)


__all__ = ["MODAConfig"]
