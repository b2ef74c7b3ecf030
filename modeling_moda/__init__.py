"""MODA's model: config and model classes, registered with transformers' Auto classes under "moda"."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText

from .configuration_moda import MODAConfig
from .modeling_moda import MODAForConditionalGeneration, MODAPreTrainedModel, MODAProjector

AutoConfig.register("moda", MODAConfig, exist_ok=True)
AutoModel.register(MODAConfig, MODAForConditionalGeneration, exist_ok=True)
AutoModelForImageTextToText.register(MODAConfig, MODAForConditionalGeneration, exist_ok=True)
AutoModelForCausalLM.register(MODAConfig, MODAForConditionalGeneration, exist_ok=True)
# save_pretrained copies the code files next to the weights, so saved folders load with trust_remote_code.
MODAConfig.register_for_auto_class()
MODAForConditionalGeneration.register_for_auto_class("AutoModel")

__all__ = ["MODAConfig", "MODAForConditionalGeneration", "MODAPreTrainedModel", "MODAProjector"]
