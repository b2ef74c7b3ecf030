"""The demo's FashionCLIP stand-in: the tiny vision tower is trained in place on its own synthetic catalogue."""

import csv
import json

import torch
from transformers import CLIPModel

from modeling_moda import MODAForConditionalGeneration
from moda.demo.backbones import save_tiny_backbones
from moda.demo.catalog import make_catalog
from moda.demo.vision_pretraining import REPORT_NAME, pretrain_vision_tower

from conftest import FASHION_TEXTS


def test_pretraining_updates_the_saved_tower_and_reports_accuracy(tmp_path):
    vision_dir, text_dir = save_tiny_backbones(tmp_path, FASHION_TEXTS)
    before = CLIPModel.from_pretrained(vision_dir).vision_model.state_dict()

    holdout = "Pattern=Solid;Colour=Red,ProductType=Dresses"
    report = pretrain_vision_tower(vision_dir, n_items=160, epochs=2, batch_size=32, holdout=holdout)

    after = CLIPModel.from_pretrained(vision_dir).vision_model.state_dict()
    assert any(not torch.equal(before[name], after[name]) for name in before)
    assert json.loads((vision_dir / REPORT_NAME).read_text()) == report
    for target in ("product_type", "colour", "pattern"):
        assert 0.0 <= report[f"{target}_accuracy"] <= 1.0, target
    # the same catalogue drawn again: the held-out combinations are all that is missing
    with make_catalog(tmp_path / "same", 160, seed=1, image_size=32).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    kept = [row for row in rows if row["Pattern"] != "Solid" and (row["Colour"], row["ProductType"]) != ("Red", "Dresses")]
    assert 0 < report["items"] == len(kept) < len(rows)
    model = MODAForConditionalGeneration.from_backbones(vision_dir, text_dir)
    torch.testing.assert_close(model.vision_tower.vision_model.state_dict()["post_layernorm.weight"],
                               after["post_layernorm.weight"])
