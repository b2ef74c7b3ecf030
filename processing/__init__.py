"""Everything that turns raw data into MODA inputs; importing it registers MODAProcessor with AutoProcessor."""

from transformers import AutoProcessor

from modeling_moda import MODAConfig

from .processing_moda import MODAProcessor, load_rgb_image

AutoProcessor.register(MODAConfig, MODAProcessor, exist_ok=True)
# save_pretrained copies processing_moda.py next to processor_config.json, for trust_remote_code loading.
MODAProcessor.register_for_auto_class("AutoProcessor")

__all__ = ["MODAProcessor", "load_rgb_image"]
