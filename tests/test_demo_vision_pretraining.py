"""The demo's FashionCLIP stand-in: the tiny vision tower is trained in place on its own synthetic catalogue."""

import csv
import json

import torch
from transformers import CLIPModel

from modeling_moda import MODAForConditionalGeneration
from moda.demo.backbones import save_tiny_backbones
from moda.demo.catalog import make_catalog
from moda.demo.vision_pretraining import REPORT_NAME, augment, load_labelled_pixels, pretrain_vision_tower

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
        assert 0.0 <= report[f"holdout_{target}_accuracy"] <= 1.0, target  # on the items it never learnt from
    # the same catalogue drawn again: the held-out combinations are all that is missing
    with make_catalog(tmp_path / "same", 160, seed=1, image_size=32).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    red_dress = {"Colour": "Red", "ProductType": "Dresses"}
    kept = [row for row in rows if row["Pattern"] != "Solid" and {k: row[k] for k in red_dress} != red_dress]
    assert 0 < report["items"] == len(kept) < len(rows) == report["items"] + report["holdout_items"]
    model = MODAForConditionalGeneration.from_backbones(vision_dir, text_dir)
    torch.testing.assert_close(model.vision_tower.vision_model.state_dict()["post_layernorm.weight"],
                               after["post_layernorm.weight"])


def test_augment_mirrors_and_shifts_each_image_within_bounds():
    pixels = torch.zeros(200, 3, 13, 13)
    pixels[:, :, 6, 3] = 1.0  # one bright pixel, left of centre; mirrored, it is at column 9
    augmented = augment(pixels, max_shift=2)
    assert augmented.shape == pixels.shape
    assert torch.equal(augmented.sum(dim=(1, 2, 3)), pixels.sum(dim=(1, 2, 3)))  # moved, never lost or doubled
    where = [divmod(int(image[0].argmax()), 13) for image in augmented]
    assert all(abs(y - 6) <= 2 and (abs(x - 3) <= 2 or abs(x - 9) <= 2) for y, x in where)
    assert {x < 6 for _, x in where} == {True, False}  # some mirrored, some not
    assert len(set(where)) > 10  # shifted image by image, not one shift per batch


def test_each_item_is_paired_with_itself_in_plain_grey_unless_that_is_held_out(tmp_path):
    vision_dir, _ = save_tiny_backbones(tmp_path, FASHION_TEXTS)
    grey_plain_skirt = {"Colour": "Grey", "Pattern": "Solid", "ProductType": "Skirts"}
    red_dress = {"Colour": "Red", "ProductType": "Dresses"}
    holdout = "Colour=Red,ProductType=Dresses;Colour=Grey,Pattern=Solid,ProductType=Skirts"
    drawn, held = load_labelled_pixels(vision_dir, 400, seed=1, holdout=holdout)

    def matches(row: dict, combination: dict) -> bool:
        return all(row[key] == value for key, value in combination.items())

    assert held.rows and all(matches(row, red_dress) or matches(row, grey_plain_skirt) for row in held.rows)
    assert not any(matches(row, red_dress) or matches(row, grey_plain_skirt) for row in drawn.rows)
    kinds = set()
    for pixels, neutral, has_neutral, row in zip(drawn.pixels, drawn.neutral_pixels, drawn.has_neutral, drawn.rows):
        if row["ProductType"] == "Skirts":  # its plain grey view would show a held-out item: none is drawn
            kinds.add("skirt")
            assert not has_neutral
        elif row["Colour"] == "Grey" and row["Pattern"] == "Solid":  # already plain grey: its own view
            kinds.add("grey")
            assert has_neutral and torch.equal(pixels, neutral)
        else:
            kinds.add("other")
            assert has_neutral and (pixels - neutral).abs().amax() > 0.5
    assert kinds == {"skirt", "grey", "other"}
