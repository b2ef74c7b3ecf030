"""The CPU fast path's int8 decoder and bf16 vision tower, saved beside a checkpoint as `cpu_fast_weights.safetensors`.

    python -m moda.fast_path_files --model outputs/my-moda --captions train.jsonl   # writes it (train_hf.py too)
    model.optimize_for_cpu()                                                       # then loads it, if it is there

Why: `optimize_for_cpu` otherwise quantizes the decoder and casts the tower at every start, which reads all 870 MB
of fp32 weights and keeps them resident: a cold `moda describe one.jpg` spent more time there than describing, and
its peak memory went past 1 GB (benchmarks/cold_start.py). With this file those fp32 pages are never read; the
int8 layers are rebuilt from the very tensors `quantize_dynamic` made, so the text is the same.

The file holds, per int8 linear layer of the decoder, its int8 weight, per-row scales and zero points and its bias;
per floating tensor of the vision tower, its bf16 copy. It is used only while it still matches the checkpoint:
every bias and norm, and the first and last row of every matrix, are checked against the fp32 weights (a few
pages), so a model trained further never runs on stale int8 weights.
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear
from transformers.utils import logging

from .caption_vocabulary import checkpoint_file

logger = logging.get_logger(__name__)

WEIGHTS_FILE = "cpu_fast_weights.safetensors"
DECODER = "language_model.decoder."  # key prefixes: which module of the model a tensor belongs to
VISION = "vision_tower."
INT8_PARTS = ("int8", "scales", "zero_points", "bias")  # "bias" only for layers that have one


def decoder_of(model: nn.Module) -> nn.Module:
    return model.language_model.get_decoder()


def int8_linear(
    int8: torch.Tensor, scales: torch.Tensor, zero_points: torch.Tensor, bias: torch.Tensor | None = None
) -> DynamicInt8Linear:
    """The dynamic int8 linear layer `quantize_dynamic` makes, from its int8 weight (out, in) and per-row scales."""
    with warnings.catch_warnings():  # torch.ao's quantized tensors carry a torchao migration notice
        warnings.simplefilter("ignore")
        weight = torch._make_per_channel_quantized_tensor(int8, scales, zero_points, 0)
    # built 1 x 1: the constructor packs a random weight of its size for fbgemm, which set_weight_bias packs anew
    linear = DynamicInt8Linear(1, 1, bias_=bias is not None, dtype=torch.qint8)
    linear.set_weight_bias(weight, bias)
    linear.out_features, linear.in_features = weight.shape
    return linear


def save_quantized_weights(model: nn.Module, folder: str | os.PathLike) -> Path:
    """Writes `WEIGHTS_FILE` into `folder` for `model` (fp32, as `from_pretrained` loads it); returns its path."""
    from .fast_inference import quantize_linear_int8  # fast_inference reads this module: imported when used

    tensors = {}
    quantized = quantize_linear_int8(copy.deepcopy(decoder_of(model)).float())
    for name, module in quantized.named_modules():
        if isinstance(module, DynamicInt8Linear):
            weight = module.weight()
            if weight.qscheme() != torch.per_channel_affine or weight.q_per_channel_axis() != 0:
                raise ValueError(f"{name}: expected int8 weights with one scale per output row")
            parts = (weight.int_repr(), weight.q_per_channel_scales(), weight.q_per_channel_zero_points(),
                     module.bias())  # fmt: skip
            tensors.update(
                {f"{DECODER}{name}.{part}": value for part, value in zip(INT8_PARTS, parts) if value is not None}
            )
    for name, value in model.vision_tower.state_dict().items():
        if value.is_floating_point():
            tensors[f"{VISION}{name}"] = value.to(torch.bfloat16)
    path = Path(folder) / WEIGHTS_FILE
    save_file({name: value.detach().contiguous() for name, value in tensors.items()}, str(path))
    return path


def int8_layer_matches(parts: dict[str, torch.Tensor], linear: nn.Module) -> bool:
    """Whether `parts` are `linear`'s weight quantized: the same bias, the sampled rows within half a step."""
    if not isinstance(linear, nn.Linear) or parts["int8"].shape != linear.weight.shape:
        return False
    if (linear.bias is None) != ("bias" not in parts) or (
        linear.bias is not None and not torch.equal(parts["bias"], linear.bias)
    ):
        return False
    rows = [0, -1]
    scales, zero_points = parts["scales"][rows].unsqueeze(-1), parts["zero_points"][rows].unsqueeze(-1)
    dequantized = (parts["int8"][rows].double() - zero_points) * scales
    return bool(((dequantized - linear.weight[rows].double()).abs() <= scales / 2 + 1e-7).all())


def bf16_copy_matches(saved: torch.Tensor, current: torch.Tensor) -> bool:
    """Whether `saved` is `current` in bf16: all of a vector, the first and last rows of a matrix."""
    if saved.shape != current.shape:
        return False
    if current.dim() > 1:
        saved, current = saved[[0, -1]], current[[0, -1]]
    return torch.equal(saved, current.to(torch.bfloat16))


def stale(path: Path, source: str | os.PathLike) -> list[str]:
    logger.warning_once(
        f"{path} does not match the weights of {source} (trained further since it was written?): it is ignored and "
        f"the model is quantized at load instead. Rewrite it: python -m moda.fast_path_files --model {source} ..."
    )
    return []


def load_quantized_weights(model: nn.Module, source: str | os.PathLike, vision: str) -> list[str]:
    """Puts the saved int8 decoder (and, for `vision="bf16"`, the bf16 tower) of `source` into `model`, in place,
    when the file is there and matches the model; returns what it loaded ("decoder", "vision"), else []."""
    path = checkpoint_file(source, WEIGHTS_FILE) if source else None
    if path is None:
        return []
    decoder, tower = decoder_of(model), model.vision_tower
    linears = {name for name, module in decoder.named_modules() if isinstance(module, nn.Linear)}
    with safe_open(str(path), framework="pt") as file:
        names = set(file.keys())
        layers = {name[len(DECODER) :].rsplit(".", 1)[0] for name in names if name.startswith(DECODER)}
        if layers != linears:
            return stale(path, source)
        int8 = {}
        for layer in sorted(layers):
            parts = {part: file.get_tensor(f"{DECODER}{layer}.{part}") for part in INT8_PARTS
                     if f"{DECODER}{layer}.{part}" in names}  # fmt: skip
            if not int8_layer_matches(parts, decoder.get_submodule(layer)):
                return stale(path, source)
            int8[layer] = parts
        tower_state = {}
        if vision == "bf16":
            current = {name: value for name, value in tower.state_dict().items() if value.is_floating_point()}
            if all(f"{VISION}{name}" in names for name in current):
                tower_state = {name: file.get_tensor(f"{VISION}{name}") for name in current}
            if not all(bf16_copy_matches(saved, current[name]) for name, saved in tower_state.items()):
                tower_state = {}
    for layer, parts in int8.items():
        parent, _, child = layer.rpartition(".")
        setattr(decoder.get_submodule(parent), child, int8_linear(**parts))
    if tower_state:
        tower.load_state_dict(tower_state, strict=False, assign=True)
    return ["decoder", *(["vision"] if tower_state else [])]


__all__ = ["DynamicInt8Linear", "WEIGHTS_FILE", "int8_linear", "load_quantized_weights", "save_quantized_weights"]
