"""Faster MODA inference on CPU, applied to a loaded model: int8 dynamic quantization or bf16 weights.

    model = AutoModel.from_pretrained("path/to/moda", trust_remote_code=True)
    model = optimize_for_cpu(model, mode="int8")  # then model.generate(...) as usual

Why int8: decoding one description at batch 1 is memory-bound; every new token reads all of OPT-125M's weights
(500 MB in fp32, 125 MB in int8), and the tied 50272x768 LM head alone is a third of them. `quantize_dynamic`
stores the decoder's and the head's nn.Linear weights as int8 and quantizes activations on the fly.
The vision tower runs once per image and stays in fp32 unless `quantize_vision=True`; the projector (two
layers, once per image) always stays fp32. bf16 halves the weights instead; it pays only on CPUs with native
bf16 (AVX512-BF16 or AMX), which `cpu_has_native_bf16` reports.

int8 quantizes activations with one scale per tensor, so a description can depend on the other images in its
batch, and greedy text can differ from fp32 after a near-tied token; mode="fp32" keeps outputs exact.
The result is for inference only: quantized layers cannot be trained or saved with `save_pretrained`.
This module is not imported by `modeling_moda.py`, so it is not copied into saved checkpoints or Hub repos.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from transformers.utils import logging

logger = logging.get_logger(__name__)

MODES = ("int8", "bf16", "fp32")


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
    for config in {id(c): c for c in (model.config.text_config, language_model.config)}.values():
        config.tie_word_embeddings = False
    return model


def quantize_linear_int8(module: nn.Module) -> nn.Module:
    """`torch.ao` dynamic int8 quantization of every nn.Linear in `module`, in place."""
    with warnings.catch_warnings():  # torch.ao prints a torchao migration notice on every call
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(module, {nn.Linear}, dtype=torch.qint8, inplace=True)


def optimize_for_cpu(model: nn.Module, mode: str = "int8", quantize_vision: bool = False) -> nn.Module:
    """Returns `model` (changed in place, eval mode, no grads) set up for fast CPU inference.

    Args:
        model: a `MODAForConditionalGeneration` in fp32, e.g. from `from_pretrained`.
        mode: `"int8"` (decoder and LM head int8, the fastest on CPUs without native bf16), `"bf16"` (all weights
            bf16; same as `from_pretrained(..., dtype=torch.bfloat16)`), or `"fp32"` (unchanged).
        quantize_vision: also quantize the vision tower's linear layers (int8 mode only); faster for large
            batches, at some cost to the image embedding's precision.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if quantize_vision and mode != "int8":
        raise ValueError("quantize_vision applies to mode='int8' only")
    if model.device.type != "cpu":
        raise ValueError(f"optimize_for_cpu needs a model on the CPU, got {model.device}")
    if model.dtype != torch.float32 and mode != "fp32":
        raise ValueError(f"optimize_for_cpu starts from float32 weights, got {model.dtype}")
    model.eval().requires_grad_(False)
    if mode == "bf16":
        if not cpu_has_native_bf16():
            logger.warning("this CPU has no native bf16: bf16 matmuls are emulated and may be slower than fp32")
        return model.to(torch.bfloat16)
    if mode == "int8":
        model.language_model = quantize_linear_int8(untie_lm_head(model).language_model)
        if quantize_vision:
            model.vision_tower = quantize_linear_int8(model.vision_tower)
    return model


__all__ = ["MODES", "cpu_has_native_bf16", "optimize_for_cpu", "untie_lm_head"]
