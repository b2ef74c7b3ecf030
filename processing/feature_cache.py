"""Frozen-feature cache: run the frozen vision tower once per image, not once per image per epoch.

While the vision tower is frozen and images are not augmented, its output for an image never changes. The seed
recomputed FashionCLIP every epoch; here `add_image_embeds` stores ``model.get_image_embeds`` as an
``image_embeds`` column with `datasets.map`. Its fingerprint is the dataset's plus a hash of the vision weights and
image preprocessing, so datasets' cache files are reused across runs and invalidated when either changes.
"""

from __future__ import annotations

import hashlib
import json

import datasets
import numpy as np
import torch

from .data import open_image
from .processing_moda import MODAProcessor


def vision_fingerprint(model, processor: MODAProcessor) -> str:
    """Hash of everything that determines an image's embedding: vision weights, feature kind, preprocessing."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.vision_tower.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to(torch.float32).cpu().numpy().tobytes())
    digest.update(model.config.image_features.encode())
    digest.update(json.dumps(processor.image_processor.to_dict(), sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


@torch.inference_mode()
def _embed_batch(batch: dict, model, processor: MODAProcessor) -> dict:
    images = [open_image(value) for value in batch["image"]]
    pixel_values = processor.image_processor(images, return_tensors="pt")["pixel_values"].to(model.device)
    embeds = model.get_image_embeds(pixel_values).to(torch.float32).cpu().numpy()
    return {"image_embeds": list(embeds)}


def add_image_embeds(
    dataset: datasets.Dataset | datasets.DatasetDict, model, processor: MODAProcessor, batch_size: int = 64
) -> datasets.Dataset | datasets.DatasetDict:
    """Adds an ``image_embeds`` column (num_image_tokens x vision_feature_size, float32) to every split."""
    if isinstance(dataset, datasets.DatasetDict):
        return datasets.DatasetDict(
            {name: add_image_embeds(split, model, processor, batch_size) for name, split in dataset.items()}
        )
    model_key = vision_fingerprint(model, processor)
    shape = (model.config.num_image_tokens, model.config.vision_feature_size)
    features = dataset.features.copy()
    features["image_embeds"] = datasets.Array2D(shape=shape, dtype="float32")
    return dataset.map(
        _embed_batch,
        batched=True,
        batch_size=batch_size,
        fn_kwargs={"model": model, "processor": processor},
        features=features,
        new_fingerprint=hashlib.sha256(f"{dataset._fingerprint}-{model_key}".encode()).hexdigest()[:16],
        desc="Caching image embeddings",
    )


def cached_embeds(rows: dict) -> torch.Tensor:
    """The ``image_embeds`` of a batch of rows (as `Dataset.__getitem__(slice)` returns them), as a float tensor."""
    return torch.from_numpy(np.asarray(rows["image_embeds"], dtype=np.float32))


__all__ = ["add_image_embeds", "cached_embeds", "vision_fingerprint"]
