"""The offline `evaluate` modules: they load without the Hub and score what they claim to."""

import csv
import os
import shutil
import socket
import subprocess

import evaluate
import pytest

from moda.clean_process import clean_command
from moda.demo.catalog import make_catalog
from moda.metrics import METRICS_DIR, load_metric


def _row(colour: str, product_type: str, gender: str = "Women", usage: str = "Party") -> dict[str, str]:
    return {"Colour": colour, "ProductType": product_type, "Gender": gender, "Usage": usage}


@pytest.fixture(scope="module")
def bleu():
    return load_metric("bleu")


@pytest.fixture(scope="module")
def rouge():
    return load_metric("rouge")


@pytest.fixture(scope="module")
def attributes():
    return load_metric("fashion_attributes")


def test_metrics_load_through_evaluate_with_no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access attempted")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    for name in ("bleu", "rouge", "fashion_attributes"):
        assert isinstance(evaluate.load(str(METRICS_DIR / name)), evaluate.Metric), name
        assert isinstance(load_metric(name), evaluate.Metric), name


SCORE_STANDALONE = """
import evaluate
metric = evaluate.load(sys.argv[1])
print(metric.compute(predictions=["A red dress for women."], references=[
    {"Colour": "Red", "ProductType": "Dresses", "Gender": "Women", "Usage": "Party"}])["colour_and_type_accuracy"])
"""


def test_fashion_attributes_loads_where_the_project_cannot_be_imported(tmp_path):
    """`evaluate.load(<folder>)` from outside the repository, in a process that cannot import its packages."""
    folder = shutil.copytree(METRICS_DIR / "fashion_attributes", tmp_path / "elsewhere" / "fashion_attributes")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(
        clean_command(SCORE_STANDALONE, folder), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout.strip().splitlines()[-1]) == 1.0


def test_bleu_is_one_for_identical_and_near_zero_for_unrelated(bleu):
    captions = ["A red women's striped dress, perfect for parties.", "Navy blue checked shirt for men."]
    assert bleu.compute(predictions=captions, references=captions)["bleu"] == pytest.approx(1.0)
    unrelated = bleu.compute(predictions=["The cat sleeps on a warm sofa today."], references=[captions[0]])
    assert unrelated["bleu"] < 0.1


def test_bleu_uses_the_best_of_several_references_and_penalises_short_output(bleu):
    prediction = "Navy blue checked shirt for men, ideal for casual wear."
    one = bleu.compute(predictions=[prediction], references=[["A green skirt for girls."]])
    several = bleu.compute(predictions=[prediction], references=[["A green skirt for girls.", prediction]])
    assert several["bleu"] > one["bleu"]
    short = bleu.compute(predictions=["Navy blue checked shirt"], references=[prediction])
    assert short["brevity_penalty"] < 1.0


def test_rouge_l_rewards_shared_subsequences(rouge):
    reference = "a red striped dress for women"
    same = rouge.compute(predictions=[reference], references=[reference])
    close = rouge.compute(predictions=["a red dress for women"], references=[reference])
    far = rouge.compute(predictions=["blue jeans"], references=[reference])
    assert same["rougeL"] == pytest.approx(1.0)
    assert far["rougeL"] < close["rougeL"] < 1.0
    assert set(same) == {"rouge1", "rouge2", "rougeL"}


_RED_DRESS = _row("Red", "Dresses")
_NAVY_SHIRT = _row("Navy Blue", "Shirts", "Men", "Casual")
_OFF_WHITE_KURTA = _row("Off White", "Kurtas", "Men", "Ethnic")
ATTRIBUTE_CASES = {
    "right caption": ("A red women's striped dress, perfect for parties.", _RED_DRESS,
                      {"colour_and_type_accuracy": 1.0, "gender_accuracy": 1.0, "usage_accuracy": 1.0,
                       "contradiction_rate": 0.0}),
    "wrong colour": ("A green dress for women.", _RED_DRESS,
                     {"colour_accuracy": 0.0, "product_type_accuracy": 1.0, "colour_contradiction_rate": 1.0}),
    "extra colour": ("A red and black dress for women.", _RED_DRESS,
                     {"colour_accuracy": 1.0, "colour_contradiction_rate": 1.0, "contradiction_rate": 1.0}),
    "navy blue is one colour": ("Navy blue checked shirt for men, ideal for casual wear.", _NAVY_SHIRT,
                                {"colour_accuracy": 1.0, "contradiction_rate": 0.0}),
    "blue is not navy blue": ("Blue checked shirt for men.", _NAVY_SHIRT,
                              {"colour_accuracy": 0.0, "colour_contradiction_rate": 1.0}),
    "t-shirt is not also a shirt": ("A white t-shirt for boys.", _row("White", "Tshirts", "Boys", "Casual"),
                                    {"product_type_accuracy": 1.0, "product_type_contradiction_rate": 0.0}),
    "sports shoes are no sports usage": ("Black sports shoes for men.", _row("Black", "Sports Shoes", "Men", "Sports"),
                                         {"product_type_accuracy": 1.0, "usage_accuracy": 0.0}),
    "unknown Kaggle values": ("An off white kurta for men.", _OFF_WHITE_KURTA,
                              {"colour_and_type_accuracy": 1.0, "contradiction_rate": 0.0}),
    "unknown Kaggle values, wrong": ("A white kurta for women.", _OFF_WHITE_KURTA,
                                     {"colour_accuracy": 0.0, "gender_contradiction_rate": 1.0}),
}


@pytest.mark.parametrize("case", ATTRIBUTE_CASES)
def test_attribute_scores(attributes, case):
    prediction, reference, expected = ATTRIBUTE_CASES[case]
    scores = attributes.compute(predictions=[prediction], references=[reference])
    assert {key: scores[key] for key in expected} == expected


def test_catalogue_descriptions_name_their_attributes_without_contradiction(attributes, tmp_path):
    with make_catalog(tmp_path, n=60, seed=1, image_size=32).open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    scores = attributes.compute(
        predictions=[row["description"] for row in rows],
        references=[{key: row[key] for key in ("Colour", "ProductType", "Gender", "Usage")} for row in rows],
    )
    for key in ("colour_accuracy", "product_type_accuracy", "usage_accuracy"):
        assert scores[key] == 1.0, key
    assert scores["gender_accuracy"] > 0.5
    assert scores["contradiction_rate"] == 0.0
