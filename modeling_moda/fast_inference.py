"""Faster MODA inference on CPU, applied to a loaded model: int8 dynamic quantization or bf16 weights, and an LM
head shortlisted to the tokens the model was trained to write.

    model = AutoModel.from_pretrained("path/to/moda", trust_remote_code=True).optimize_for_cpu("int8")
    ids = model.generate_fast(**inputs)   # or model.generate(...) as usual

`MODAForConditionalGeneration.optimize_for_cpu` is the documented entry point: it reads the checkpoint's caption
vocabulary and drafts and calls `apply_cpu_fast_path` here.

Why int8: decoding one description at batch 1 is memory-bound; every new token reads all of OPT-125M's weights
(500 MB in fp32, 125 MB in int8), and the tied 50272x768 LM head alone is a third of them. `quantize_dynamic`
stores the decoder's and the head's nn.Linear weights as int8, one scale per output row, and quantizes activations
on the fly. A shortlisted head (below) stays fp32: it is small, and it is where near-tied tokens are decided
(where bf16 is native, the lean loop screens it in bf16 first and rescores the few rows left in fp32).
The vision tower runs once per image, in fp32, bf16 or int8 (`vision`); the projector (two
layers, once per image) always stays fp32. bf16 halves the weights instead; it pays only on CPUs with native
bf16 (AVX512-BF16 or AMX), which `cpu_has_native_bf16` reports. A `vocabulary` (the training captions' token
ids, `caption_vocabulary.py`) shrinks the head from 50272 rows to those tokens (`restrict_vocabulary`).

int8 quantizes activations with one scale per tensor, so a description can depend on the other images in its
batch, and greedy text can differ from fp32 after a near-tied token; mode="none" keeps outputs exact.
The result is for inference only: quantized layers cannot be trained or saved with `save_pretrained`.
`modeling_moda.py` imports this module, so `save_pretrained` copies it into checkpoints and Hub repos.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import torch
from torch import nn
from transformers.utils import logging

from .quantized_weights import DynamicInt8Linear, int8_linear, load_quantized_weights

logger = logging.get_logger(__name__)

MODES = ("int8", "bf16", "none")
# Rows of a screened shortlist head rescored in fp32 at most (`ShortlistHead.screened_argmax`)
SCREEN_CANDIDATES = 32
# The vision tower's precision under mode="int8"; "auto" is bf16 where the CPU computes bf16 natively, else fp32.
VISION_PRECISIONS = ("auto", "fp32", "bf16", "int8")


def cpu_has_native_bf16() -> bool:
    """True when PyTorch's CPU kernels can use bf16 instructions (AVX512-BF16 or AMX), not emulate them."""
    capability = torch.backends.cpu.get_cpu_capability()
    return capability in {"AVX512_BF16", "AMX"} or torch.ops.mkldnn._is_mkldnn_bf16_supported()


def untie_lm_head(model: nn.Module) -> nn.Module:
    """Gives the LM head its own copy of the input embedding, so the head can be quantized alone.

    The head and the token embedding share one tensor; quantizing the head in place would otherwise replace the
    embedding too. `tie_word_embeddings` is switched off so that no later `tie_weights()` re-ties them.
    """
    language_model = model.language_model
    head = language_model.get_output_embeddings()
    if head.weight.data_ptr() == language_model.get_input_embeddings().weight.data_ptr():
        head.weight = nn.Parameter(head.weight.detach().clone(), requires_grad=False)
    stop_tying(model)
    return model


def stop_tying(model: nn.Module) -> None:
    """Switches `tie_word_embeddings` off, so that no later `tie_weights()` puts the embedding back as the head."""
    for config in {id(c): c for c in (model.config.text_config, model.language_model.config)}.values():
        config.tie_word_embeddings = False


class ShortlistHead(nn.Module):
    """An LM head that scores only `token_ids`; every other token gets the lowest logit, so it is never chosen.

    Logits keep the full vocabulary's width, so `generate`, the processor and every logits processor work as
    before; only the matrix product shrinks (50272 rows to a few thousand). With `screen`, `best_tokens` (the lean
    loop's argmax) first scores the rows with a bf16 copy and rescores in fp32 only the few rows that bf16 cannot
    rule out: the fp32 head's argmax, from half the bytes (benchmarks/inference.py's "cli-fp32-head" row).
    """

    def __init__(self, head: nn.Linear, token_ids: Sequence[int], screen: bool = False):
        super().__init__()
        ids = torch.tensor(sorted(set(token_ids)), dtype=torch.long)
        if len(ids) == 0 or ids[0] < 0 or ids[-1] >= head.out_features:
            raise ValueError(f"token ids must be a non-empty subset of 0..{head.out_features - 1}")
        self.vocab_size = head.out_features
        self.register_buffer("token_ids", ids, persistent=False)
        self.shortlist = nn.Linear(head.in_features, len(ids), bias=head.bias is not None)
        self.shortlist.to(head.weight.dtype)
        with torch.no_grad():
            self.shortlist.weight.copy_(head.weight[ids])
            if head.bias is not None:
                self.shortlist.bias.copy_(head.bias[ids])
        weight = self.shortlist.weight.detach()
        self.register_buffer("screen_weight", weight.to(torch.bfloat16) if screen else None, persistent=False)
        self.register_buffer("row_norms", weight.float().norm(dim=1) if screen else None, persistent=False)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        scores = self.shortlist(hidden_states)
        logits = scores.new_full((*scores.shape[:-1], self.vocab_size), torch.finfo(scores.dtype).min)
        return logits.index_copy_(-1, self.token_ids, scores)

    def best_tokens(self, hidden_states: torch.Tensor) -> torch.LongTensor:
        """The argmax token of every position, scored on the shortlist's rows only (ties: the lowest id)."""
        flat = hidden_states.reshape(-1, hidden_states.shape[-1])
        if self.screen_weight is None:
            return self.token_ids[self.shortlist(flat).argmax(-1)].view(hidden_states.shape[:-1])
        return self.token_ids[self.screened_argmax(flat)].view(hidden_states.shape[:-1])

    def screen_bounds(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """bf16 logits of the shortlist's rows for each row of `flat`, and how far each may be from its fp32 logit.

        Rounding to bf16 moves a weight or an activation by at most 2^-8 of itself, so a bf16 logit is off by at
        most (2^-7 + 2^-16) |w| |x| (Cauchy-Schwarz), plus the fp32 accumulation's n 2^-24 of that and 2^-8 of
        itself (the rounding of the bf16 output).
        """
        rough = nn.functional.linear(flat.to(torch.bfloat16), self.screen_weight).float()
        relative = 2**-7 + 2**-16 + flat.shape[-1] * 2**-24
        return rough, relative * flat.float().norm(dim=-1, keepdim=True) * self.row_norms + 2**-8 * rough.abs()

    def screened_argmax(self, flat: torch.Tensor) -> torch.LongTensor:
        """The fp32 shortlist's argmax row for each row of `flat`, reading its weights in bf16: every row whose
        upper bound reaches the best lower bound may win, and those (at most `SCREEN_CANDIDATES`, else every row
        is scored in fp32) are rescored in fp32."""
        rough, slack = self.screen_bounds(flat)
        best_lower = (rough - slack).max(-1, keepdim=True).values
        count = min(SCREEN_CANDIDATES, len(self.token_ids))
        if int((rough + slack >= best_lower).sum(-1).max()) > count:  # too close to call in bf16
            return self.shortlist(flat).argmax(-1)
        candidates = (rough + slack).topk(count, sorted=False).indices.sort(-1).values  # ascending: ties go low
        exact = torch.bmm(self.shortlist.weight[candidates], flat.unsqueeze(-1)).squeeze(-1)
        if self.shortlist.bias is not None:
            exact = exact + self.shortlist.bias[candidates]
        return candidates.gather(-1, exact.argmax(-1, keepdim=True)).squeeze(-1)


def eos_token_ids(generation_config) -> list[int]:
    """The generation config's EOS ids as a list: it may hold none, one id or several."""
    eos = generation_config.eos_token_id
    return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)


def restrict_vocabulary(model: nn.Module, token_ids: Sequence[int], screen: bool = False) -> nn.Module:
    """Makes `model` write only `token_ids` (plus EOS): a `ShortlistHead` replaces the LM head, in place.

    For a model fine-tuned on captions, `token_ids` are the tokens of its training captions
    (`caption_vocabulary.py`); it never puts a higher score on any other token, so greedy descriptions
    stay the same while each step reads a tenth of the head. `screen`: see `ShortlistHead`.
    """
    eos = eos_token_ids(model.generation_config)
    language_model = model.language_model
    head = ShortlistHead(language_model.get_output_embeddings(), [*token_ids, *eos], screen=screen)
    language_model.set_output_embeddings(head)
    stop_tying(model)
    return model


def quantize_linear_int8(module: nn.Module) -> nn.Module:
    """`torch.ao` dynamic int8 quantization of every nn.Linear in `module`, in place, one scale per output row.

    Per-row scales keep rows of small norm precise, where one scale per matrix would round them coarsely: on the
    demo model they kept more descriptions equal to fp32 (README, Performance) at the same speed.
    """
    per_row = {nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig}
    with warnings.catch_warnings():  # torch.ao prints a torchao migration notice on every call
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(module, per_row, dtype=torch.qint8, inplace=True)


def fuse_attention_projections(decoder: nn.Module) -> None:
    """Gives each int8 attention layer a `qkv_proj` beside its own three (their rows stacked), which
    `greedy_decoding` calls once where it would call three small matmuls (benchmarks/inference.py's "cli-unfused"
    row measures what it saves).

    Exact: int8 weights have one scale per row and activations one scale per call, read off the same input, so
    every output row is the one its own projection writes.
    """
    for attention in list(decoder.modules()):  # every module with int8 q/k/v projections (OPT's attention)
        projections = [getattr(attention, name, None) for name in ("q_proj", "k_proj", "v_proj")]
        if not all(isinstance(projection, DynamicInt8Linear) for projection in projections):
            continue
        weights, biases = [projection.weight() for projection in projections], [p.bias() for p in projections]
        attention.qkv_proj = int8_linear(
            torch.cat([weight.int_repr() for weight in weights]),
            torch.cat([weight.q_per_channel_scales() for weight in weights]),
            torch.cat([weight.q_per_channel_zero_points() for weight in weights]),
            None if any(bias is None for bias in biases) else torch.cat(biases).detach(),
        )


def vision_precision(vision: str) -> str:
    """`vision` with "auto" resolved: bf16 runs the tower about 3x faster than fp32 on AVX512-BF16/AMX CPUs and
    slower where bf16 is emulated (docs/performance.md)."""
    if vision not in VISION_PRECISIONS:
        raise ValueError(f"vision must be one of {VISION_PRECISIONS}, got {vision!r}")
    if vision == "auto":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    return vision


def apply_cpu_fast_path(
    model: nn.Module,
    mode: str = "int8",
    vision: str = "fp32",
    vocabulary: Sequence[int] | None = None,
    checkpoint: str | None = None,
    fuse_projections: bool = True,
    screen_head: bool | None = None,
) -> nn.Module:
    """Returns `model` (changed in place, eval mode, no grads) set up for fast CPU inference.

    Args:
        model: a `MODAForConditionalGeneration` in fp32, e.g. from `from_pretrained`.
        mode: `"int8"` (decoder and LM head int8, a shortlisted head fp32; the fastest on CPUs without native
            bf16), `"bf16"` (all weights bf16; same as `from_pretrained(..., dtype=torch.bfloat16)`), or `"none"`
            (unchanged fp32).
        vision: the vision tower's precision in int8 mode (`VISION_PRECISIONS`): "fp32" (exact image
            embedding), "bf16" (fast where bf16 is native), "int8" (its linear layers quantized: fastest for large
            batches, least precise) or "auto" (`vision_precision`).
        vocabulary: token ids the model may write (its training captions' tokens); the LM head then scores only
            these (`restrict_vocabulary`). None scores the whole vocabulary.
        checkpoint: where `model` was loaded from: its int8 decoder and bf16 tower are read from its
            `quantized_weights.WEIGHTS_FILE` when it has one that matches, instead of being made here.
        fuse_projections: in int8 mode, also stack each attention's q/k/v projections for the lean greedy loop
            (`fuse_attention_projections`; off only to measure what it saves).
        screen_head: in int8 mode with a `vocabulary`, let the lean loop screen the shortlisted head in bf16
            (`ShortlistHead`; same tokens). None: where the CPU has native bf16 (`cpu_has_native_bf16`).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode != "int8" and vision not in ("auto", "fp32"):
        raise ValueError(f"vision={vision!r} applies to mode='int8' only")
    vision = vision_precision(vision) if mode == "int8" else "fp32"
    if model.device.type != "cpu":
        raise ValueError(f"the CPU fast path needs a model on the CPU, got {model.device}")
    if model.dtype != torch.float32 and mode != "none":
        raise ValueError(f"the CPU fast path starts from float32 weights, got {model.dtype}")
    model.eval().requires_grad_(False)
    if vocabulary is not None:
        screen = mode == "int8" and (cpu_has_native_bf16() if screen_head is None else screen_head)
        restrict_vocabulary(model, vocabulary, screen)
    if mode == "bf16":
        if not cpu_has_native_bf16():
            logger.warning("this CPU has no native bf16: bf16 matmuls are emulated and may be slower than fp32")
        return model.to(torch.bfloat16)
    if mode == "int8":
        loaded = load_quantized_weights(model, checkpoint, vision) if checkpoint else []
        # quantize_dynamic passes over layers that are int8 already: only what was not loaded is quantized here
        if vocabulary is None:
            untie_lm_head(model)
            model.language_model = quantize_linear_int8(model.language_model)
        else:  # the shortlisted head is small and decides between near-tied caption tokens: it stays fp32
            quantize_linear_int8(model.language_model.get_decoder())
        if fuse_projections:
            fuse_attention_projections(model.language_model.get_decoder())
        if vision == "int8":
            model.vision_tower = quantize_linear_int8(model.vision_tower)
        elif vision == "bf16" and "vision" not in loaded:
            model.vision_tower.to(torch.bfloat16)  # get_image_embeds casts pixels to the tower's dtype
    return model


__all__ = [
    "MODES", "ShortlistHead", "VISION_PRECISIONS", "apply_cpu_fast_path", "cpu_has_native_bf16",
    "fuse_attention_projections", "restrict_vocabulary", "untie_lm_head", "vision_precision",
]
