"""Frozen-feature cache: run the frozen vision tower once per image, not once per image per epoch.

While the vision tower is frozen and images are not augmented, its output for an image never changes. The seed
recomputed FashionCLIP every epoch; here `add_image_embeds` stores ``model.get_image_embeds`` as an
``image_embeds`` column, computed with `processing.data.map_images`: datasets cache files, one per block of rows,
named by the rows' image files (path, size, modification time) and a hash of the vision weights and image
preprocessing. A second run reads them back; a replaced photo re-embeds its block, new weights everything.
"""

from __future__ import annotations

import hashlib
import json

import datasets
import numpy as np
import torch

from .data import IMAGE_BLOCK_ROWS, map_images, open_image
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
def _embed_batch(images: list[dict], model, processor: MODAProcessor) -> dict:
    pixel_values = processor.image_processor([open_image(image) for image in images], return_tensors="pt")
    embeds = model.get_image_embeds(pixel_values["pixel_values"].to(model.device)).to(torch.float32).cpu().numpy()
    return {"image_embeds": list(embeds)}


def add_image_embeds(
    dataset: datasets.Dataset | datasets.DatasetDict,
    model,
    processor: MODAProcessor,
    batch_size: int = 64,
    block_rows: int = IMAGE_BLOCK_ROWS,
) -> datasets.Dataset | datasets.DatasetDict:
    """Adds an ``image_embeds`` column (num_image_tokens x vision_feature_size, float32) to every split; each
    `block_rows` rows share a cache file (`processing.data.map_images`)."""
    if isinstance(dataset, datasets.DatasetDict):
        return datasets.DatasetDict(
            {
                name: add_image_embeds(split, model, processor, batch_size, block_rows)
                for name, split in dataset.items()
            }
        )
    shape = (model.config.num_image_tokens, model.config.vision_feature_size)
    embeds = map_images(
        dataset,
        _embed_batch,
        datasets.Features(image_embeds=datasets.Array2D(shape=shape, dtype="float32")),
        "Caching image embeddings",
        key=vision_fingerprint(model, processor),
        block_rows=block_rows,
        batched=True,
        batch_size=batch_size,
        fn_kwargs={"model": model, "processor": processor},
    )
    # A split is a view (an indices mapping) of its catalogue: written out once (and cached) so that the embeddings
    # join it column by column; concatenate_datasets would otherwise rewrite the embeddings as well.
    return datasets.concatenate_datasets([dataset.flatten_indices(), embeds], axis=1)


def cached_embeds(rows: dict) -> torch.Tensor:
    """The ``image_embeds`` of a batch of rows (as `Dataset.__getitem__(slice)` returns them), as a float tensor."""
    return torch.from_numpy(np.asarray(rows["image_embeds"], dtype=np.float32))


__all__ = ["add_image_embeds", "cached_embeds", "vision_fingerprint"]
