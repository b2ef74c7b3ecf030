"""MODA: a frozen image encoder, a non-linear projector and a causal language model.

    pixel_values (B, 3, 224, 224)
      -> vision_tower (CLIP ViT-B/32 + visual projection)   -> image_embeds (B, 1, 512)
      -> projector (Linear 512->3072, GELU, Linear 3072->768) -> image features (B, 1, 768)
      -> written over the `<image>` placeholder embeddings of input_ids
      -> language_model (OPT-125M)                           -> logits (B, T, 50272)

This file is copied next to ``model.safetensors`` by ``save_pretrained``, with the files it imports relatively
(``configuration_moda.py``, and the CPU fast path: ``fast_inference.py``, ``greedy_decoding.py``,
``quantized_weights.py``, ``caption_vocabulary.py``, ``caption_drafts.py``); they import only transformers and torch,
so a saved folder loads with ``trust_remote_code=True`` and no install, and its fast path is the model's own methods
(``optimize_for_cpu``, ``generate_fast``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    CLIPVisionModelWithProjection,
    GenerationConfig,
    GenerationMixin,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache
from transformers.generation.candidate_generator import CandidateGenerator, PromptLookupCandidateGenerator
from transformers.generation.utils import GenerateOutput
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    MultimodalBaseModelOutputWithPast,
    MultimodalCausalLMOutputWithPast,
)
from transformers.utils import is_torchdynamo_compiling, logging, torch_compilable_check
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import can_return_tuple

from .caption_drafts import CaptionDraftCandidateGenerator, CaptionDrafter, load_caption_drafter
from .caption_vocabulary import load_caption_vocabulary
from .configuration_moda import MODAConfig
from .fast_inference import apply_cpu_fast_path
from .greedy_decoding import LEAN_INPUTS, greedy_generate, lean_generation_config

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
    _can_compile_fullgraph = True  # forward traces without graph breaks (tests/test_common_model.py)


@dataclass
class MODACausalLMOutputWithPast(MultimodalCausalLMOutputWithPast):
    """`MultimodalCausalLMOutputWithPast`; `image_outputs.pooler_output` holds the projected image features."""

    @property
    def image_hidden_states(self) -> torch.FloatTensor | None:
        """The projected image features written over the placeholders (B, num_image_tokens, hidden_size), as
        LLaVA's output names them."""
        return None if self.image_outputs is None else self.image_outputs.pooler_output


class MODAModel(nn.Module):
    """MODA without its LM head, what `model.base_model` returns (as LLaVA's `LlavaModel`): image features written
    over the placeholders, run through the language model's body; returns its hidden states.

    It holds the very modules of the `MODAForConditionalGeneration` it comes from, so it adds no weights and the
    checkpoint layout (`vision_tower.`, `projector.`, `language_model.`) stays the one every MODA was saved with.
    """

    _tp_plan = _pp_plan = None  # what transformers reads off a base model

    def __init__(self, model: MODAForConditionalGeneration):
        super().__init__()
        self.config = model.config
        self.vision_tower = model.vision_tower
        self.projector = model.projector
        self.language_model = model.language_model.base_model  # OPTModel for OPTForCausalLM: no head
        object.__setattr__(self, "owner", model)  # not a submodule: the head model is not part of its body

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def get_image_features(self, **kwargs) -> BaseModelOutputWithPooling:
        return self.owner.get_image_features(**kwargs)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_embeds: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        **kwargs,
    ) -> MultimodalBaseModelOutputWithPast:
        owner = self.owner
        inputs_embeds, image_outputs = owner.embed_inputs(input_ids, pixel_values, image_embeds, inputs_embeds, cache)
        outputs = self.language_model(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids, cache=cache, **kwargs
        )
        return MultimodalBaseModelOutputWithPast(**outputs, image_outputs=image_outputs)


class MODAForConditionalGeneration(MODAPreTrainedModel, GenerationMixin):
    """Describes an image: image features are spliced into the token sequence of a causal LM.

    Training: ``forward(pixel_values or image_embeds, input_ids, attention_mask, labels)``; the loss covers only
    positions whose label is not -100 (the processor masks image, BOS and pad positions).
    Inference: ``generate(pixel_values=..., input_ids=..., attention_mask=...)`` with any decoding strategy, or
    ``generate_fast`` (the same arguments and tokens, a leaner loop where it applies).
    """

    main_input_name = "input_ids"

    def __init__(self, config: MODAConfig):
        super().__init__(config)
        self.vision_tower = build_vision_tower(config.vision_config)
        self.projector = MODAProjector(config)
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.post_init()
        self.freeze_vision_tower()
        # MODA writes one sentence: this budget is the default for generate, the pipeline, the CLI and the Space
        self.generation_config.max_new_tokens = DEFAULT_MAX_NEW_TOKENS
        self.caption_drafter: CaptionDrafter | None = None  # set by optimize_for_cpu, read by generate_fast

    @classmethod
    def from_pretrained(cls, *args, **kwargs) -> MODAForConditionalGeneration | tuple:
        """`PreTrainedModel.from_pretrained`, then `config.freeze_vision` again: loading replaces every parameter
        with a fresh trainable one, which would let a Trainer run on a saved MODA train its vision tower."""
        loaded = super().from_pretrained(*args, **kwargs)
        if isinstance(loaded, tuple):  # output_loading_info=True: (model, loading_info)
            return loaded[0].freeze_vision_tower(), *loaded[1:]
        return loaded.freeze_vision_tower()

    def freeze_vision_tower(self) -> MODAForConditionalGeneration:
        """Applies `config.freeze_vision`: the vision tower gets no gradients (the original recipe trains only the
        projector and the language model)."""
        if self.config.freeze_vision:
            self.vision_tower.requires_grad_(False)
        return self

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

    @property
    def base_model(self) -> MODAModel:
        """The body without the LM head (`MODAModel`, sharing this model's modules), as in LLaVA."""
        return MODAModel(self)

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

    def resize_token_embeddings(
        self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None, mean_resizing: bool = True
    ) -> nn.Embedding:
        """`PreTrainedModel.resize_token_embeddings`, refusing a size that would drop the `<image>` token."""
        size = new_num_tokens
        if size is not None and pad_to_multiple_of:
            size = -(-size // pad_to_multiple_of) * pad_to_multiple_of
        if size is not None and size <= self.config.image_token_id:
            raise ValueError(
                f"resize_token_embeddings({new_num_tokens}) would drop the <image> token (id "
                f"{self.config.image_token_id}): keep at least {self.config.image_token_id + 1} embeddings"
            )
        return super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)

    def get_image_embeds(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Frozen-encoder output, before the projector: (B, num_image_tokens, vision_feature_size).

        This is what a training feature cache stores and what ``forward(image_embeds=...)`` accepts.
        """
        return self.image_embeds_of(self.vision_tower(pixel_values=pixel_values.to(self.vision_tower.dtype)))

    def image_embeds_of(self, vision_outputs) -> torch.Tensor:
        """The vision tower's outputs as `get_image_embeds` gives them: every patch, or the pooled embedding."""
        if self.config.image_features == "patches":
            return vision_outputs.last_hidden_state
        pooled = getattr(vision_outputs, "image_embeds", None)
        return (vision_outputs.pooler_output if pooled is None else pooled).unsqueeze(1)

    def get_image_features(
        self, pixel_values: torch.FloatTensor | None = None, image_embeds: torch.FloatTensor | None = None
    ) -> BaseModelOutputWithPooling:
        """What replaces the placeholders, for images given as pixels or as `get_image_embeds` output.

        `pooler_output`: the projected features (B, num_image_tokens, LM hidden size); `last_hidden_state`: the
        vision tower's (pixels only).
        """
        if (pixel_values is None) == (image_embeds is None):
            raise ValueError("pass exactly one of pixel_values or image_embeds")
        last_hidden_state = None
        if pixel_values is not None:
            vision_outputs = self.vision_tower(pixel_values=pixel_values.to(self.vision_tower.dtype))
            last_hidden_state, image_embeds = vision_outputs.last_hidden_state, self.image_embeds_of(vision_outputs)
        features = self.projector(image_embeds.to(self.projector.linear_1.weight.dtype))
        return BaseModelOutputWithPooling(last_hidden_state=last_hidden_state, pooler_output=features)

    def get_placeholder_mask(
        self, input_ids: torch.LongTensor | None, inputs_embeds: torch.FloatTensor
    ) -> torch.BoolTensor:
        """Where the `<image>` placeholders are (B, T): read off input_ids, or off the embeddings without them."""
        if input_ids is not None:
            return input_ids == self.config.image_token_id
        image_token = torch.tensor(self.config.image_token_id, device=inputs_embeds.device)
        return (inputs_embeds == self.get_input_embeddings()(image_token)).all(-1)

    def embed_inputs(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_embeds: torch.FloatTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        cache: Cache | None = None,
    ) -> tuple[torch.FloatTensor, BaseModelOutputWithPooling | None]:
        """The language model's input sequence: token embeddings with image features over the placeholders, and
        the image encoder's outputs (None without images).

        Images and placeholders must match: one image's `num_image_tokens` placeholders per image, and no
        placeholder without an image where a sequence starts (`cache` empty).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if pixel_values is not None and image_embeds is not None:
            raise ValueError("pass either pixel_values or image_embeds, not both")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        placeholders = self.get_placeholder_mask(input_ids, inputs_embeds)

        if pixel_values is None and image_embeds is None:
            # checked where a sequence starts (later passes may hold a generated <image>), and not while compiling,
            # where a data-dependent branch would break the graph
            starts = not is_torchdynamo_compiling() and (cache is None or cache.get_seq_length() == 0)
            if starts and placeholders.any():
                raise ValueError(
                    f"the inputs hold {int(placeholders.sum())} <image> placeholders but no image: pass "
                    "pixel_values (MODAProcessor(images=...)) or image_embeds. A pipeline reads a lone string as "
                    "text: pass images=... or a chat message with an image"
                )
            return inputs_embeds, None

        image_outputs = self.get_image_features(pixel_values=pixel_values, image_embeds=image_embeds)
        features = image_outputs.pooler_output
        torch_compilable_check(
            placeholders.sum() == features.shape[0] * features.shape[1],
            lambda: f"the inputs hold {int(placeholders.sum())} <image> placeholders but the images give "
            f"{features.shape[0] * features.shape[1]} features ({features.shape[0]} images x {features.shape[1]} "
            "tokens); build inputs with MODAProcessor so that each sequence has exactly one image's placeholders",
        )
        inputs_embeds = inputs_embeds.masked_scatter(placeholders.unsqueeze(-1), features.to(inputs_embeds.dtype))
        return inputs_embeds, image_outputs

    @staticmethod
    def next_token_labels(
        placeholders: torch.BoolTensor, labels: torch.LongTensor | None, shift_labels: torch.LongTensor | None
    ) -> torch.LongTensor:
        """The target of each position, i.e. the label of the next one (transformers' `shift_labels`); a position
        followed by a placeholder gets none (-100), whatever its label said."""
        if shift_labels is None:
            shift_labels = nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
        next_is_image = nn.functional.pad(placeholders[:, 1:], (0, 1), value=False)
        return shift_labels.masked_fill(next_is_image, -100)

    def drop_words(self, inputs_embeds: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Word dropout (Bowman et al., 2016): zeroes each labelled token's input embedding with probability
        `config.word_dropout`. A captioner that never read "checked" before "skirt" otherwise learns that the word
        after "checked" is never "skirt", and writes "checked shirt" under a checked skirt."""
        is_labelled = nn.functional.pad(targets[:, :-1] != -100, (1, 0), value=False)  # position t is position t-1's target
        dropped = is_labelled & (torch.rand(is_labelled.shape, device=targets.device) < self.config.word_dropout)
        return inputs_embeds.masked_fill(dropped.unsqueeze(-1), 0.0)

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_embeds: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        skip_logits: bool | None = None,
        **kwargs,
    ) -> MODACausalLMOutputWithPast:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`, *optional*):
            Images, as prepared by `MODAProcessor`.
        image_embeds (`torch.FloatTensor` of shape `(batch_size, num_image_tokens, vision_feature_size)`):
            Precomputed `get_image_embeds` output, used instead of `pixel_values` (e.g. from a feature cache).
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Next-token targets aligned with `input_ids`; -100 positions are ignored. Image positions are
            always ignored. `shift_labels` (already shifted, as transformers' loss takes them) may be passed instead.
        skip_logits (`bool`, *optional*):
            Compute only the loss, from the LM head at labelled positions, and return `logits=None`; the decoder
            skips the last position when it has no target (hidden states and cache then stop one short). The default
            (None) does so while training with labels, where nothing reads the logits. The loss and gradients are
            the same.
        """
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        shift_labels = kwargs.pop("shift_labels", None)
        token_embeds = inputs_embeds  # where placeholders are found without input_ids, before images overwrite them
        inputs_embeds, image_outputs = self.embed_inputs(input_ids, pixel_values, image_embeds, inputs_embeds, cache)
        targets = None
        if labels is not None or shift_labels is not None:
            targets = self.next_token_labels(self.get_placeholder_mask(input_ids, token_embeds), labels, shift_labels)
            if self.training and self.config.word_dropout:
                inputs_embeds = self.drop_words(inputs_embeds, targets)
        if skip_logits is None:
            skip_logits = self.training and targets is not None and supports_labelled_head(self.config.text_config)
        language_inputs = {"attention_mask": attention_mask, "position_ids": position_ids, "cache": cache,
                           "use_cache": use_cache, **kwargs}

        if skip_logits:
            if targets is None:
                raise ValueError("skip_logits=True computes only the loss, so it needs labels")
            if not supports_labelled_head(self.config.text_config):
                model_type = self.config.text_config.model_type
                raise ValueError(f"skip_logits=True needs an OPT language model, not {model_type}")
            if not targets[:, -1].ne(-100).any():  # nothing to predict after the last position: leave it out
                inputs_embeds, targets = inputs_embeds[:, :-1], targets[:, :-1]
                for name in ("attention_mask", "position_ids"):
                    if language_inputs[name] is not None:
                        language_inputs[name] = language_inputs[name][:, : inputs_embeds.shape[1]]
            outputs = self.get_decoder()(inputs_embeds=inputs_embeds, **language_inputs)
            # the LM head's vocabulary-wide products, the largest of a step, only where a next token is labelled:
            # image, BOS and pad positions are skipped rather than computed and ignored
            labelled = targets != -100
            logits = None
            loss = self.loss_function(
                logits=self.get_output_embeddings()(outputs.last_hidden_state[labelled]),
                labels=None,
                shift_labels=targets[labelled],
                vocab_size=self.config.text_config.vocab_size,
                num_items_in_batch=num_items_in_batch,
            )
        else:
            outputs = self.language_model(inputs_embeds=inputs_embeds, logits_to_keep=logits_to_keep, **language_inputs)
            logits = outputs.logits
            loss = None
            if targets is not None:
                loss = self.loss_function(
                    logits=logits,
                    labels=None,
                    shift_labels=targets,
                    vocab_size=self.config.text_config.vocab_size,
                    num_items_in_batch=num_items_in_batch,
                )
        return MODACausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_outputs=image_outputs,
        )

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_embeds: torch.FloatTensor | None = None,
        **kwargs,
    ) -> dict:
        """Image inputs go with the pass that starts the sequences (empty cache), where the placeholders are, in
        whichever `generate` call makes it: an assistant model's first draft included. Later passes, and a
        continuation from a returned cache, read the image from the cache."""
        model_inputs = super().prepare_inputs_for_generation(
            input_ids, cache=cache, inputs_embeds=inputs_embeds, **kwargs
        )
        if cache is None or cache.get_seq_length() == 0:
            model_inputs.update(
                {name: value for name, value in (("pixel_values", pixel_values), ("image_embeds", image_embeds))
                 if value is not None}
            )
        return model_inputs

    def _get_candidate_generator(self, generation_config: GenerationConfig, **kwargs) -> CandidateGenerator:
        """Prompt lookup (`generate(..., prompt_lookup_num_tokens=N)`) drafts from the training captions' table when
        `optimize_for_cpu` loaded one (`caption_drafter`), from the prompt otherwise; every other candidate
        generator is transformers' own. The library decides first, so its checks and precedence hold."""
        generator = super()._get_candidate_generator(generation_config=generation_config, **kwargs)
        if self.caption_drafter is None or not isinstance(generator, PromptLookupCandidateGenerator):
            return generator
        return CaptionDraftCandidateGenerator(
            self.caption_drafter,
            num_output_tokens=generation_config.prompt_lookup_num_tokens,
            max_length=generation_config.max_length,
            vocab_size=self.config.text_config.vocab_size,
            eos_token_id=generation_config._eos_token_tensor,
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
        (`name_or_path`: a folder or a Hub repo), and so is `cpu_fast_weights.safetensors` when it is there: the int8
        decoder and bf16 tower made ahead of time (`quantized_weights.py`), a faster start with less memory.
        """
        source = self.name_or_path  # "" for a model built in memory: it has no checkpoint files
        vocabulary = load_caption_vocabulary(source) if source and mode == "int8" and not full_vocabulary else None
        apply_cpu_fast_path(self, mode, vision, vocabulary, checkpoint=source or None)
        self.caption_drafter = load_caption_drafter(source) if source and drafts and mode != "none" else None
        missing = [name for name, wanted, found in (
            ("caption_vocabulary.json", source and mode == "int8" and not full_vocabulary, vocabulary),
            ("caption_drafts.json", source and drafts and mode != "none", self.caption_drafter),
        ) if wanted and found is None]  # fmt: skip
        if missing:
            logger.warning_once(
                f"{source} has no {' or '.join(missing)}: the CPU fast path runs without it (slower). Write them "
                f"from the training captions: python -m moda.fast_path_files --model {source} --captions CAPTIONS"
            )
        return self

    def generate_fast(
        self, inputs: torch.LongTensor | None = None, generation_config: GenerationConfig | None = None, **kwargs
    ) -> torch.LongTensor | GenerateOutput:
        """`generate(inputs, generation_config, **kwargs)`, through MODA's lean greedy loop where it gives the same
        tokens: the generation config resolved as `generate` resolves it (this model's `generation_config` with
        `kwargs` over it) is plain greedy decoding with only length and special-token settings, the inputs are
        MODA's (`input_ids`, `attention_mask`, `pixel_values` or `image_embeds`) and the decoder is OPT's. Then a
        single image also gets the caption drafts of `optimize_for_cpu`. Anything else is `generate` itself."""
        if inputs is not None:
            kwargs = {"input_ids": inputs, **kwargs}
        resolved = lean_generation_config(self, generation_config, kwargs)
        if resolved is None:
            return self.generate(generation_config=generation_config, **kwargs)
        inputs = {name: kwargs[name] for name in LEAN_INPUTS if name in kwargs}
        drafter = self.caption_drafter if len(inputs["input_ids"]) == 1 else None
        return greedy_generate(self, **inputs, generation_config=resolved, drafter=drafter)


__all__ = [
    "MODACausalLMOutputWithPast", "MODAForConditionalGeneration", "MODAModel", "MODAPreTrainedModel", "MODAProjector"
]
