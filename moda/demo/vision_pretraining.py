"""Pretrains the demo's tiny CLIP vision tower: the offline stand-in for FashionCLIP's own pretraining.

The real MODA freezes FashionCLIP, which learnt fashion from some 800k product photos. The demo cannot download
it, and a random frozen tower keeps an item's colour but not its silhouette or its pattern: captioning on top of
one named the product type for about 19% of held-out items. So, before MODA is built, the tiny tower learns to
recognise product type, colour and pattern on a synthetic catalogue of its own, drawn at the tower's input size
with another seed than the demo's data (the captioning splits, test included, are never seen here), and without
the attribute combinations the demo holds out, so that those are new to every part of the demo. MODA then freezes
the tower, as it freezes FashionCLIP.

A type is a silhouette: colour and pattern say nothing about it. A tower that learns from the catalogue alone
learns otherwise from the combinations it never sees (no red item is a dress, no checked one a skirt), so each item
is also shown in plain grey, in the same pose, and its type logits are pulled to those of that view.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.nn import functional as F
from tqdm.auto import tqdm
from transformers import AutoImageProcessor, CLIPModel
from transformers.utils import logging

from moda.demo.catalog import COLOURS, catalogue_items, draw_item
from processing.data import parse_holdout

logger = logging.get_logger(__name__)

REPORT_NAME = "vision_pretraining.json"
# catalogue column -> name of its classification head and accuracy
TARGETS = {"ProductType": "product_type", "Colour": "colour", "Pattern": "pattern"}


# the view whose product type every item's must match: colour and pattern say nothing about the type
NEUTRAL_COLOUR, NEUTRAL_PATTERN = "Grey", "Solid"


@dataclass
class LabelledPixels:
    """Catalogue items as the tower's pixel values, with their catalogue values and, for an item to learn from whose
    plain grey version is not itself held out, that version (same silhouette, pose and noise)."""

    pixels: torch.Tensor
    neutral_pixels: torch.Tensor
    has_neutral: torch.Tensor  # False: `neutral_pixels` repeats the item and is not to be learnt from
    rows: list[dict[str, str]]


def load_labelled_pixels(
    vision_dir: Path, n_items: int, seed: int, holdout: str | None = None
) -> tuple[LabelledPixels, LabelledPixels]:
    """Draws a catalogue at the tower's input size, after the JPEG round trip the catalogue's files take, and splits
    it into the items to learn from and those of the `holdout` combinations (see `parse_holdout`)."""
    processor = AutoImageProcessor.from_pretrained(vision_dir)
    side = processor.crop_size["height"]
    combinations = parse_holdout(holdout)

    def is_held_out(row: dict[str, str]) -> bool:
        return any(all(row.get(key) == value for key, value in held.items()) for held in combinations)

    neutral = next(colour for colour in COLOURS if colour.name == NEUTRAL_COLOUR)
    drawn: dict[bool, list[tuple]] = {False: [], True: []}  # held out? -> (image, neutral image or None, row)
    for item in catalogue_items(n_items, seed):
        row = {"ProductType": item.product_type.name, "Colour": item.colour.name, "Pattern": item.pattern}
        image = _as_jpeg(draw_item(item.product_type, item.colour, item.pattern, side, item.image_seed))
        held_out = is_held_out(row)  # only scored: its grey view is never learnt from, so none is drawn
        neutral_row = {**row, "Colour": NEUTRAL_COLOUR, "Pattern": NEUTRAL_PATTERN}
        neutral_image = None if held_out or is_held_out(neutral_row) else _as_jpeg(
            draw_item(item.product_type, neutral, NEUTRAL_PATTERN, side, item.image_seed)
        )
        drawn[held_out].append((image, neutral_image, row))

    def labelled(items: list[tuple]) -> LabelledPixels:
        if not items:
            return LabelledPixels(torch.empty(0), torch.empty(0), torch.empty(0, dtype=torch.bool), [])
        images, neutral_images, rows = zip(*items)
        pixels = processor(list(images), return_tensors="pt")["pixel_values"]
        neutral_views = [image if view is None else view for image, view in zip(images, neutral_images)]
        neutral_pixels = processor(neutral_views, return_tensors="pt")["pixel_values"]
        has_neutral = torch.tensor([view is not None for view in neutral_images])
        return LabelledPixels(pixels, neutral_pixels, has_neutral, list(rows))

    return labelled(drawn[False]), labelled(drawn[True])


def _as_jpeg(image: Image.Image) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return Image.open(buffer).convert("RGB")


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
    epochs: int = 16,
    batch_size: int = 32,
    learning_rate: float = 2e-3,
    max_shift: int = 6,
    holdout: str | None = None,
    invariance_weight: float = 1.0,
) -> dict:
    """Trains the CLIP checkpoint in `vision_dir` to classify product type, colour and pattern, saves it back in
    place, and returns (and writes to `vision_pretraining.json`) its accuracy on a tenth of the items kept aside and
    on the items of the `holdout` combinations (train_hf.py's --holdout), which it never learns from.

    Each item is also seen in plain grey, in the same pose and mirrored and shifted alike, and its product-type
    logits are pulled towards those of the grey view, with weight `invariance_weight` (0: no pull, the grey views
    still teach the type)."""
    vision_dir = Path(vision_dir)
    drawn, held_out = load_labelled_pixels(vision_dir, n_items, seed, holdout)
    label_sets = {name: sorted({row[column] for row in drawn.rows}) for column, name in TARGETS.items()}
    labels = {
        name: torch.tensor([values.index(row[column]) for row in drawn.rows])
        for (column, name), values in zip(TARGETS.items(), label_sets.values())
    }
    kept_aside = max(1, len(drawn.rows) // 10)
    train_items = len(drawn.rows) - kept_aside

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
            # both views of an item get the same mirroring and shift, so that only colour and pattern differ
            views = augment(torch.cat([drawn.pixels[index], drawn.neutral_pixels[index]], dim=1), max_shift)
            outputs = logits(torch.cat([views[:, :3], views[:, 3:]]))
            item_outputs = {key: value[: len(index)] for key, value in outputs.items()}
            loss = sum(F.cross_entropy(item_outputs[key], labels[key][index]) for key in heads)
            types, neutral_types = outputs["product_type"].split(len(index))
            paired = drawn.has_neutral[index]
            if paired.any():
                loss = loss + F.cross_entropy(neutral_types[paired], labels["product_type"][index][paired])
                loss = loss + invariance_weight * F.mse_loss(types[paired], neutral_types[paired])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()

    tower.eval()
    report = {}
    with torch.no_grad():
        for prefix, pixels, rows in (("", drawn.pixels[train_items:], drawn.rows[train_items:]),
                                     ("holdout_", held_out.pixels, held_out.rows)):  # fmt: skip
            outputs = logits(pixels) if rows else {}
            for (column, key), values in zip(TARGETS.items(), label_sets.values()):
                known = [i for i, row in enumerate(rows) if row[column] in values]  # a value never learnt: skipped
                if known:
                    predicted = outputs[key][known].argmax(-1)
                    truth = torch.tensor([values.index(rows[i][column]) for i in known])
                    report[f"{prefix}{key}_accuracy"] = (predicted == truth).float().mean().item()
    report.update(items=len(drawn.rows), holdout_items=len(held_out.rows), seed=seed, epochs=epochs, holdout=holdout)
    clip.save_pretrained(vision_dir)
    (vision_dir / REPORT_NAME).write_text(json.dumps(report, indent=2))
    logger.warning(f"demo vision tower pretrained: {report}")
    return report
