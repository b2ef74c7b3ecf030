"""Pretrains the demo's tiny CLIP vision tower: the offline stand-in for FashionCLIP's own pretraining.

The real MODA freezes FashionCLIP, which learnt fashion from some 800k product photos. The demo cannot download
it, and a random frozen tower keeps an item's colour but not its silhouette or its pattern: captioning on top of
one named the product type for about 19% of held-out items. So, before MODA is built, the tiny tower learns to
recognise product type, colour and pattern on a synthetic catalogue of its own, drawn at the tower's input size
with another seed than the demo's data (the captioning splits, test included, are never seen here), and without
the attribute combinations the demo holds out, so that those are new to every part of the demo. MODA then freezes
the tower, as it freezes FashionCLIP.
"""

from __future__ import annotations

import csv
import json
import tempfile
from pathlib import Path

import torch
from PIL import Image
from torch.nn import functional as F
from tqdm.auto import tqdm
from transformers import AutoImageProcessor, CLIPModel
from transformers.utils import logging

from moda.demo.catalog import make_catalog
from processing.data import parse_holdout

logger = logging.get_logger(__name__)

REPORT_NAME = "vision_pretraining.json"
# catalogue column -> name of its classification head and accuracy
TARGETS = {"ProductType": "product_type", "Colour": "colour", "Pattern": "pattern"}


def load_labelled_pixels(
    vision_dir: Path, n_items: int, seed: int, holdout: str | None = None
) -> tuple[torch.Tensor, list[dict]]:
    """Draws a catalogue at the tower's input size, drops the `holdout` combinations (see `parse_holdout`) and turns
    the other images into pixel values with the tower's own image processor."""
    processor = AutoImageProcessor.from_pretrained(vision_dir)
    image_size = processor.crop_size["height"]
    combinations = parse_holdout(holdout)
    with tempfile.TemporaryDirectory(prefix="moda-pretraining-") as scratch:
        csv_path = make_catalog(scratch, n_items, seed=seed, image_size=image_size)
        with open(csv_path, newline="") as handle:
            rows = [
                row for row in csv.DictReader(handle)
                if not any(all(row.get(key) == value for key, value in held.items()) for held in combinations)
            ]  # fmt: skip
        images = [Image.open(csv_path.parent / row["Image"]).convert("RGB") for row in rows]
        pixel_values = processor(images, return_tensors="pt")["pixel_values"]
    return pixel_values, rows


def augment(pixels: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Each image mirrored or not (items face either way in the catalogue) and shifted by up to `max_shift` pixels
    each way over its own edge colour: the tower otherwise learns its 10,000 drawings by heart."""
    mirrored = torch.rand(len(pixels), 1, 1, 1) < 0.5
    pixels = torch.where(mirrored, pixels.flip(-1), pixels)
    padded = F.pad(pixels, (max_shift,) * 4, mode="replicate")
    side = pixels.shape[-1]
    offsets = torch.randint(0, 2 * max_shift + 1, (len(pixels), 2)).tolist()
    return torch.stack([image[:, y : y + side, x : x + side] for image, (y, x) in zip(padded, offsets)])


def pretrain_vision_tower(
    vision_dir: str | Path,
    n_items: int = 12000,
    seed: int = 1,
    epochs: int = 20,
    batch_size: int = 32,
    learning_rate: float = 2e-3,
    max_shift: int = 6,
    holdout: str | None = None,
) -> dict:
    """Trains the CLIP checkpoint in `vision_dir` to classify product type, colour and pattern, saves it back in
    place, and returns (and writes to `vision_pretraining.json`) its accuracy on a tenth of the items kept aside.
    Items of the `holdout` combinations (train_hf.py's --holdout) are left out."""
    vision_dir = Path(vision_dir)
    pixel_values, rows = load_labelled_pixels(vision_dir, n_items, seed, holdout)
    label_sets = {name: sorted({row[column] for row in rows}) for column, name in TARGETS.items()}
    labels = {
        name: torch.tensor([values.index(row[column]) for row in rows])
        for (column, name), values in zip(TARGETS.items(), label_sets.values())
    }
    held_out = max(1, len(rows) // 10)
    train_items = len(rows) - held_out

    clip = CLIPModel.from_pretrained(vision_dir)
    tower = torch.nn.ModuleDict({"vision_model": clip.vision_model, "visual_projection": clip.visual_projection})
    heads = torch.nn.ModuleDict(
        {key: torch.nn.Linear(clip.config.projection_dim, len(names)) for key, names in label_sets.items()}
    )

    def logits(batch_pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        embeds = tower["visual_projection"](tower["vision_model"](pixel_values=batch_pixels).pooler_output)
        return {key: head(embeds) for key, head in heads.items()}

    parameters = [*tower.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=0.05)
    steps_per_epoch = train_items // batch_size
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, learning_rate, total_steps=epochs * steps_per_epoch)
    tower.train()
    for _ in tqdm(range(epochs), desc="pretraining the demo vision tower", unit="epoch"):
        order = torch.randperm(train_items)
        for step in range(steps_per_epoch):
            index = order[step * batch_size : (step + 1) * batch_size]
            outputs = logits(augment(pixel_values[index], max_shift))
            loss = sum(F.cross_entropy(outputs[key], labels[key][index]) for key in heads)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()

    tower.eval()
    with torch.no_grad():
        outputs = logits(pixel_values[train_items:])
    report = {
        f"{key}_accuracy": (outputs[key].argmax(-1) == labels[key][train_items:]).float().mean().item()
        for key in heads
    }
    report.update(items=len(rows), seed=seed, epochs=epochs, holdout=holdout)
    clip.save_pretrained(vision_dir)
    (vision_dir / REPORT_NAME).write_text(json.dumps(report, indent=2))
    logger.warning(f"demo vision tower pretrained: {report}")
    return report
