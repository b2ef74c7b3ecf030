"""MODA: a frozen image encoder, a non-linear projector and a causal language model.

    pixel_values (B, 3, 224, 224)
      -> vision_tower (CLIP ViT-B/32 + visual projection)   -> image_embeds (B, 1, 512)
      -> projector (Linear 512->3072, GELU, Linear 3072->768) -> image features (B, 1, 768)
      -> written over the `<image>` placeholder embeddings of input_ids
      -> language_model (OPT-125M)                           -> logits (B, T, 50272)

This file is copied next to ``model.safetensors`` by ``save_pretrained``, with the files it imports relatively
(``configuration_moda.py``, and the CPU fast path: ``fast_inference.py``, ``greedy_decoding.py``,
``caption_vocabulary.py``, ``caption_drafts.py``); they import only transformers and torch, so a saved folder
loads with ``trust_remote_code=True`` and no install, and its fast path is the model's own methods
(``optimize_for_cpu``, ``generate_fast``).
"""

from __future__ import annotations

import os

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    CLIPVisionModelWithProjection,
    GenerationMixin,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers.activations import ACT2FN
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.utils import logging

from .caption_drafts import CaptionDrafter, load_caption_drafter
from .caption_vocabulary import load_caption_vocabulary
from .configuration_moda import MODAConfig
from .fast_inference import apply_cpu_fast_path
from .greedy_decoding import generate_fast

logger = logging.get_logger(__name__)

IMAGE_TOKEN = "<image>"  # also in processing_moda.py: each Hub code file must stand alone
DEFAULT_MAX_NEW_TOKENS = 32


class MODAProjector(nn.Module):
    """Widens the image feature, then narrows it to the LM width (the seed's non-linear projection)."""

    def __init__(self, config: MODAConfig):
        super().__init__()
        self.linear_1 = nn.Linear(config.vision_feature_size, config.projector_hidden_size)
        self.act = ACT2FN[config.projector_hidden_act]
        self.linear_2 = nn.Linear(config.projector_hidden_size, config.text_config.hidden_size)

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(image_embeds)))


def build_vision_tower(vision_config) -> PreTrainedModel:
    """CLIP needs its visual projection for the pooled 512-d embedding; other towers pool on their own."""
    if vision_config.model_type == "clip_vision_model":
        return CLIPVisionModelWithProjection._from_config(vision_config)
    return AutoModel.from_config(vision_config)


def load_vision_backbone(vision: str | os.PathLike) -> PreTrainedModel:
    """Loads a dual-encoder (CLIPModel, SiglipModel...) or vision-only checkpoint; its text tower is ignored."""
    if AutoConfig.from_pretrained(vision).model_type == "clip_vision_model":
        return CLIPVisionModelWithProjection.from_pretrained(vision)
    return AutoModel.from_pretrained(vision)


def vision_tower_config(backbone_config) -> PreTrainedConfig:
    """The vision sub-config of a backbone; CLIP keeps its projection width on the parent config."""
    vision_config = getattr(backbone_config, "vision_config", backbone_config)
    if hasattr(backbone_config, "vision_config") and hasattr(backbone_config, "projection_dim"):
        vision_config.projection_dim = backbone_config.projection_dim
    return vision_config


def supports_labelled_head(text_config: PreTrainedConfig) -> bool:
    """OPT's logits are exactly its LM head applied to the decoder output; other LMs may scale or cap them."""
    return text_config.model_type == "opt"


class MODAPreTrainedModel(PreTrainedModel):
    config: MODAConfig
    config_class = MODAConfig
    base_model_prefix = "moda"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["CLIPEncoderLayer", "OPTDecoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True


class MODAForConditionalGeneration(MODAPreTrainedModel, GenerationMixin):
    """Describes an image: image features are spliced into the token sequence of a causal LM.

    Training: ``forward(pixel_values or image_embeds, input_ids, attention_mask, labels)``; the loss covers only
    positions whose label is not -100 (the processor masks image, BOS and pad positions).
    Inference: ``generate(pixel_values=..., input_ids=..., attention_mask=...)`` with any decoding strategy.
    """

    main_input_name = "input_ids"

    def __init__(self, config: MODAConfig):
        super().__init__(config)
        self.vision_tower = build_vision_tower(config.vision_config)
        self.projector = MODAProjector(config)
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        if config.freeze_vision:
            self.vision_tower.requires_grad_(False)
        self.post_init()
        # MODA writes one sentence: this budget is the default for generate, the pipeline, the CLI and the Space
        self.generation_config.max_new_tokens = DEFAULT_MAX_NEW_TOKENS
        self.caption_drafter: CaptionDrafter | None = None  # set by optimize_for_cpu, read by generate_fast

    @classmethod
    def from_backbones(
        cls,
        vision: str | os.PathLike,
        text: str | os.PathLike,
        **config_kwargs,
    ) -> MODAForConditionalGeneration:
        """Builds MODA from pretrained backbones: hub ids or local folders.

        ``vision`` is a CLIPModel checkpoint (e.g. "patrickjohncyh/fashion-clip"; its text tower is dropped) or a
        vision-only one; ``text`` is any causal LM (e.g. "facebook/opt-125m"). The projector starts random.
        The `<image>` placeholder takes the id that `MODAProcessor.from_backbones` gives it in the LM's tokenizer.
        """
        vision_backbone = load_vision_backbone(vision)
        language_model = AutoModelForCausalLM.from_pretrained(text)

        tokenizer = AutoTokenizer.from_pretrained(text)
        vocab = tokenizer.get_vocab()
        image_token_id = vocab.get(IMAGE_TOKEN, len(tokenizer))  # the id MODAProcessor gives it when it adds it
        if image_token_id >= language_model.get_input_embeddings().num_embeddings:
            language_model.resize_token_embeddings(image_token_id + 1, pad_to_multiple_of=8)

        config = MODAConfig(
            vision_config=vision_tower_config(vision_backbone.config),
            text_config=language_model.config,
            image_token_id=image_token_id,
            **config_kwargs,
        )
        model = cls(config)
        tower_state = model.vision_tower.state_dict()
        source = vision_backbone.state_dict()
        # a dual encoder nests its vision weights under "vision_model."; a vision-only model may not
        weights = {
            name: source.get(name, source.get(f"vision_model.{name}"))
            for name in tower_state
            if name in source or f"vision_model.{name}" in source
        }
        if missing := sorted(set(tower_state) - set(weights)):
            raise ValueError(f"{vision} lacks vision tower weights {missing[:5]} (+{max(len(missing) - 5, 0)} more)")
        model.vision_tower.load_state_dict(weights)
        model.language_model.load_state_dict(language_model.state_dict())
        return model.eval()  # like from_pretrained: dropout off until training asks for it

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        self.language_model.set_output_embeddings(new_embeddings)

    def get_decoder(self) -> nn.Module:
        return self.language_model.get_decoder()

    def get_image_embeds(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Frozen-encoder output, before the projector: (B, num_image_tokens, vision_feature_size).

        This is what a training feature cache stores and what ``forward(image_embeds=...)`` accepts.
        """
        pixel_values = pixel_values.to(self.vision_tower.dtype)
        outputs = self.vision_tower(pixel_values=pixel_values)
        if self.config.image_features == "patches":
            return outputs.last_hidden_state
        pooled = outputs.image_embeds if hasattr(outputs, "image_embeds") else outputs.pooler_output
        return pooled.unsqueeze(1)

    def merge_image_features(
        self, input_ids: torch.Tensor, inputs_embeds: torch.Tensor, image_embeds: torch.Tensor
    ) -> torch.Tensor:
        """Writes the projected image features over the `<image>` placeholder embeddings."""
        image_mask = input_ids == self.config.image_token_id
        image_features = self.projector(image_embeds.to(self.projector.linear_1.weight.dtype))
        expected = image_features.shape[0] * image_features.shape[1]
        if int(image_mask.sum()) != expected:
            raise ValueError(
                f"input_ids hold {int(image_mask.sum())} <image> tokens but the images give {expected} features "
                f"({image_features.shape[0]} images x {image_features.shape[1]} tokens); build inputs with "
                "MODAProcessor so that each sequence has exactly one image's placeholders"
            )
        image_features = image_features.to(inputs_embeds.dtype)
        return inputs_embeds.masked_scatter(image_mask.unsqueeze(-1), image_features)

    def embed_inputs(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_embeds: torch.FloatTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
    ) -> torch.FloatTensor:
        """The language model's input sequence: token embeddings with image features over the placeholders."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if pixel_values is not None and image_embeds is not None:
            raise ValueError("pass either pixel_values or image_embeds, not both")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)

        if pixel_values is not None:
            image_embeds = self.get_image_embeds(pixel_values)
        if image_embeds is not None:
            if input_ids is None:
                raise ValueError("image inputs need input_ids to locate the <image> placeholders")
            inputs_embeds = self.merge_image_features(input_ids, inputs_embeds, image_embeds)
        return inputs_embeds

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_embeds: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        skip_logits: bool | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`, *optional*):
            Images, as prepared by `MODAProcessor`.
        image_embeds (`torch.FloatTensor` of shape `(batch_size, num_image_tokens, vision_feature_size)`):
            Precomputed `get_image_embeds` output, used instead of `pixel_values` (e.g. from a feature cache).
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Next-token targets aligned with `input_ids`; -100 positions are ignored. Image positions are
            always ignored.
        skip_logits (`bool`, *optional*):
            Compute only the loss, from the LM head at labelled positions, and return `logits=None`; the decoder
            skips the last position (hidden states and cache then stop one short). The default (None) does so while
            training with labels, where nothing reads the logits. The loss and gradients are the same.
        """
        inputs_embeds = self.embed_inputs(input_ids, pixel_values, image_embeds, inputs_embeds)
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        if labels is not None and input_ids is not None:
            labels = labels.masked_fill(input_ids == self.config.image_token_id, -100)
        if skip_logits is None:
            skip_logits = self.training and labels is not None and supports_labelled_head(self.config.text_config)
        if skip_logits:
            if labels is None:
                raise ValueError("skip_logits=True computes only the loss, so it needs labels")
            if not supports_labelled_head(self.config.text_config):
                model_type = self.config.text_config.model_type
                raise ValueError(f"skip_logits=True needs an OPT language model, not {model_type}")
            # the last position predicts no label and no earlier one attends to it: the decoder leaves it out
            if attention_mask is not None:
                attention_mask = attention_mask[:, :-1]
            outputs = self.get_decoder()(inputs_embeds=inputs_embeds[:, :-1], attention_mask=attention_mask, **kwargs)
            # the LM head's vocabulary-wide products, the largest of a step, only where a next token is labelled:
            # image, BOS and pad positions are skipped rather than computed and ignored
            next_labels = labels[:, 1:]
            labelled = next_labels != -100
            loss = self.loss_function(
                logits=self.get_output_embeddings()(outputs.last_hidden_state[labelled]),
                labels=None,
                shift_labels=next_labels[labelled],
                vocab_size=self.config.text_config.vocab_size,
                num_items_in_batch=num_items_in_batch,
            )
            logits = None
        else:
            outputs = self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)
            logits = outputs.logits
            loss = None
            if labels is not None:
                loss = self.loss_function(
                    logits=logits,
                    labels=labels,
                    vocab_size=self.config.text_config.vocab_size,
                    num_items_in_batch=num_items_in_batch,
                )
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def optimize_for_cpu(
        self, mode: str = "int8", vision: str = "auto", full_vocabulary: bool = False, drafts: bool = True
    ) -> MODAForConditionalGeneration:
        """Sets this model up for fast CPU inference, in place, and returns it (inference only: no training, no
        `save_pretrained` afterwards).

        `mode="int8"` quantizes the decoder (`fast_inference.py`); its LM head then scores only the checkpoint's
        `caption_vocabulary.json` tokens unless `full_vocabulary` or the checkpoint has none (then it is int8
        too), and the vision tower runs at `vision` precision ("auto": bf16 on CPUs with native bf16, else fp32;
        "fp32", "bf16" or "int8"). `mode="bf16"` casts all weights to
        bf16; `"none"` changes nothing. With `drafts`, `generate_fast` checks the checkpoint's
        `caption_drafts.json` guesses for a single image. Both files are read from where this model was loaded
        (`name_or_path`: a folder or a Hub repo).
        """
        source = self.name_or_path  # "" for a model built in memory: it has no checkpoint files
        use_vocabulary = source and mode == "int8" and not full_vocabulary
        apply_cpu_fast_path(self, mode, vision, load_caption_vocabulary(source) if use_vocabulary else None)
        self.caption_drafter = load_caption_drafter(source) if source and drafts and mode != "none" else None
        return self

    def generate_fast(self, **kwargs) -> torch.LongTensor:
        """`generate(**kwargs)`, through MODA's lean greedy loop where it applies (greedy decoding of an OPT
        decoder with only a length set; the caption drafts of `optimize_for_cpu` for a single image): the same
        tokens as `generate`, with less time per token. Anything else goes to `generate` unchanged."""
        inputs = {name: kwargs.pop(name) for name in self.MODEL_INPUTS if name in kwargs}
        return generate_fast(self, inputs, self.caption_drafter, **kwargs)

    MODEL_INPUTS = ("input_ids", "attention_mask", "pixel_values", "image_embeds")

    def prepare_inputs_for_generation(self, *args, is_first_iteration: bool = False, **kwargs):
        """Image inputs are consumed by the first (prefill) step; later steps read them from the KV cache."""
        model_inputs = super().prepare_inputs_for_generation(*args, is_first_iteration=is_first_iteration, **kwargs)
        if not is_first_iteration and kwargs.get("use_cache", True):
            model_inputs.pop("image_embeds", None)
            model_inputs.pop("pixel_values", None)
        return model_inputs


__all__ = ["MODAForConditionalGeneration", "MODAPreTrainedModel", "MODAProjector"]
