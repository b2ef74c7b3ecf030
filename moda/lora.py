"""The LoRA set-up MODA fine-tunes with: adapters on the language model's attention, the projector in full.

A plain `LoraConfig(target_modules=["q_proj", "v_proj"])` would also adapt the CLIP tower's attention (its layers
use the same names) and leave the projector untrained, so the targets are anchored under `language_model.`.
The task type is CAUSAL_LM, so that a saved adapter loads with `AutoPeftModelForCausalLM` through the base
checkpoint's `auto_map` (its remote code): without a task type peft would import the base class by its module
name, which for remote code is a cache path peft refuses (and that a fresh process cannot import).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from peft import LoraConfig

DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "out_proj")


def lora_config(
    r: int = 8, alpha: int = 16, dropout: float = 0.0, target_modules: Sequence[str] = DEFAULT_TARGET_MODULES
) -> LoraConfig:
    """A `peft.LoraConfig` for MODA: `target_modules` of the LM only, `modules_to_save=["projector"]`, task type
    CAUSAL_LM. `dropout` defaults to peft's own 0: on a CPU each of the 48 adapted layers draws its own mask every
    step, and at 0.05 that was a tenth of a bf16 LoRA step (`python benchmarks/train.py --profile`); OPT's own
    dropout still applies."""
    from peft import LoraConfig

    names = "|".join(name.strip() for name in target_modules)
    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=rf".*language_model\..*\.({names})",
        modules_to_save=["projector"],
        task_type="CAUSAL_LM",
    )
