"""The frozen-feature cache: reused across runs, invalidated by new vision weights and by changed image files."""

import shutil
from pathlib import Path

import pytest
import torch

from moda.demo.catalog import make_catalog
from modeling_moda import MODAForConditionalGeneration
from processing import MODAProcessor
from processing.data import load_fashion_dataset
from processing.feature_cache import add_image_embeds


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory) -> Path:
    return make_catalog(tmp_path_factory.mktemp("catalogue"), 12, seed=3, image_size=32).parent


@pytest.fixture
def model_and_processor(tiny_backbones):
    return MODAForConditionalGeneration.from_backbones(*tiny_backbones), MODAProcessor.from_backbones(*tiny_backbones)


def _count_embedded_images(model) -> list[int]:
    """The batch size of every vision tower forward, appended as it happens."""
    sizes = []
    model.vision_tower.register_forward_hook(
        lambda module, args, kwargs, output: sizes.append(len(kwargs["pixel_values"])), with_kwargs=True
    )
    return sizes


def test_feature_cache_is_reused_and_follows_the_weights(model_and_processor, catalogue):
    model, processor = model_and_processor
    dataset = load_fashion_dataset(catalogue).select(range(10))
    calls = []
    hook = model.vision_tower.register_forward_hook(lambda *args: calls.append(1))
    try:
        first = add_image_embeds(dataset, model, processor, batch_size=4)
        assert len(calls) == 3
        second = add_image_embeds(dataset, model, processor, batch_size=4)
        assert len(calls) == 3  # read back from datasets' cache file
        assert second["image_embeds"] == first["image_embeds"]
        with torch.no_grad():
            model.vision_tower.visual_projection.weight.mul_(2)
        add_image_embeds(dataset, model, processor, batch_size=4)
        assert len(calls) == 6  # new weights, new fingerprint
    finally:
        hook.remove()


def test_a_replaced_image_is_embedded_again_and_only_its_block(model_and_processor, catalogue, tmp_path):
    """Replacing a photo in place (same path, same catalogue) re-embeds its block of rows; the others are read back."""
    model, processor = model_and_processor
    folder = shutil.copytree(catalogue, tmp_path / "catalogue")
    dataset = load_fashion_dataset(folder)
    embedded = _count_embedded_images(model)
    first = add_image_embeds(dataset, model, processor, batch_size=2, block_rows=4)
    assert sum(embedded) == 12

    replaced, replacement = (Path(dataset[index]["image"]["path"]) for index in (5, 0))
    replaced.write_bytes(replacement.read_bytes())  # row 5 now shows row 0's item
    embedded.clear()
    second = add_image_embeds(load_fashion_dataset(folder), model, processor, batch_size=2, block_rows=4)
    assert embedded == [2, 2]  # rows 4-7 only
    assert second["image_embeds"][5] == first["image_embeds"][0] != first["image_embeds"][5]
    assert [row for index, row in enumerate(second["image_embeds"]) if index != 5] == [
        row for index, row in enumerate(first["image_embeds"]) if index != 5
    ]
    assert second["description"] == first["description"]

    embedded.clear()
    add_image_embeds(load_fashion_dataset(folder), model, processor, batch_size=2, block_rows=4)
    assert embedded == []  # nothing changed since: all from the cache
