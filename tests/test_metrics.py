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
from moda.metrics.fashion_attributes.fashion_vocabulary import ATTRIBUTES


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


_RED_DRESS = {"Colour": "Red", "ProductType": "Dresses", "Pattern": "Striped", "Gender": "Women", "Usage": "Party"}
# Per attribute: a description of the red striped women's party dress that names it right, names a wrong value,
# leaves it out, and names the right value next to a wrong one.
DESCRIPTIONS = {
    "Colour": {"right": "A red dress.", "wrong": "A green dress.", "missing": "A dress.",
               "contradicting": "A red and black dress."},
    "ProductType": {"right": "A red dress.", "wrong": "A red skirt.", "missing": "Something red.",
                    "contradicting": "A red dress with a jacket."},
    "Pattern": {"right": "A striped dress.", "wrong": "A checked dress.", "missing": "A dress.",
                "contradicting": "A striped polka-dot dress."},
    "Gender": {"right": "A dress for women.", "wrong": "A dress for men.", "missing": "A dress.",
               "contradicting": "A dress for women and girls."},
    "Usage": {"right": "A dress for parties.", "wrong": "A dress for the office.", "missing": "A dress.",
              "contradicting": "A dress for parties and workouts."},
}  # fmt: skip
EXPECTED = {  # (named right, contradicted, stated)
    "right": (1.0, 0.0, 1.0), "wrong": (0.0, 1.0, 1.0), "missing": (0.0, 0.0, 0.0), "contradicting": (1.0, 1.0, 1.0),
}  # fmt: skip


@pytest.mark.parametrize("attribute", DESCRIPTIONS)
@pytest.mark.parametrize("case", EXPECTED)
def test_each_attribute_right_wrong_missing_and_contradicted(attributes, attribute, case):
    description = DESCRIPTIONS[attribute][case]
    scores = attributes.compute(predictions=[description], references=[_RED_DRESS])
    prefix = ATTRIBUTES[attribute]
    rates = tuple(scores[f"{prefix}_{key}"] for key in ("accuracy", "contradiction_rate", "stated_rate"))
    assert rates == EXPECTED[case], description
    assert scores["contradiction_free_rate"] == 1.0 - EXPECTED[case][1]
    assert scores["contradiction_rate"] == EXPECTED[case][1]


_NAVY_SHIRT = _row("Navy Blue", "Shirts", "Men", "Casual")
_OFF_WHITE_KURTA = _row("Off White", "Kurtas", "Men", "Ethnic")
ATTRIBUTE_CASES = {
    "hyphen and plural": ("Two T-shirts in polka dots.", {**_row("White", "Tshirts"), "Pattern": "Polka-dot"},
                          {"product_type_accuracy": 1.0, "pattern_accuracy": 1.0, "contradiction_rate": 0.0}),
    "no hyphen": ("A tshirt with stripes.", {**_row("White", "Tshirts"), "Pattern": "Striped"},
                  {"product_type_accuracy": 1.0, "pattern_accuracy": 1.0, "contradiction_rate": 0.0}),
    "plural of a catalogue value": ("Red dresses.", _row("Red", "Dresses"),
                                    {"product_type_accuracy": 1.0, "contradiction_rate": 0.0}),
    "singular of a plural noun": ("A pink flip-flop and a sandal.", _row("Pink", "Flip Flops"),
                                  {"product_type_accuracy": 1.0, "product_type_contradiction_rate": 1.0}),
    "navy blue is one colour": ("Navy blue checked shirt for men, ideal for casual wear.", _NAVY_SHIRT,
                                {"colour_accuracy": 1.0, "contradiction_rate": 0.0}),
    "blue is not navy blue": ("Blue checked shirt for men.", _NAVY_SHIRT,
                              {"colour_accuracy": 0.0, "colour_contradiction_rate": 1.0}),
    "t-shirt is not also a shirt": ("A white t-shirt for boys.", _row("White", "Tshirts", "Boys", "Casual"),
                                    {"product_type_accuracy": 1.0, "product_type_contradiction_rate": 0.0}),
    "sports shoes are no sports usage": ("Black sports shoes.", _row("Black", "Sports Shoes", "Men", "Casual"),
                                         {"product_type_accuracy": 1.0, "usage_stated_rate": 0.0}),
    "casual shoes are no casual usage": ("Black casual shoes.", _row("Black", "Casual Shoes", "Men", "Formal"),
                                         {"product_type_accuracy": 1.0, "usage_contradiction_rate": 0.0}),
    "unknown Kaggle values": ("An off white kurta for men.", _OFF_WHITE_KURTA,
                              {"colour_and_type_accuracy": 1.0, "contradiction_rate": 0.0}),
    "unknown Kaggle values, wrong": ("A white kurta for women.", _OFF_WHITE_KURTA,
                                     {"colour_accuracy": 0.0, "gender_contradiction_rate": 1.0}),
    "no Pattern column: pattern skipped": ("A checked red dress.", _row("Red", "Dresses"),
                                           {"pattern_accuracy": None, "pattern_contradiction_rate": None,
                                            "contradiction_free_rate": 1.0}),
    "empty value: nothing to contradict": ("A red dress for men.", _row("Red", "Dresses", gender=""),
                                           {"gender_accuracy": None, "contradiction_free_rate": 1.0}),
}  # fmt: skip


@pytest.mark.parametrize("case", ATTRIBUTE_CASES)
def test_attribute_scores(attributes, case):
    prediction, reference, expected = ATTRIBUTE_CASES[case]
    scores = attributes.compute(predictions=[prediction], references=[reference])
    assert {key: scores[key] for key in expected} == expected


def test_rates_are_fractions_of_the_rows_with_a_value(attributes):
    scores = attributes.compute(
        predictions=["A red striped dress.", "A blue plain dress for men.", "A red dress."],
        references=[_RED_DRESS, {**_RED_DRESS, "Pattern": "Solid", "Colour": "Blue"}, {**_RED_DRESS, "Pattern": ""}],
    )
    assert scores["pattern_accuracy"] == 1.0 and scores["pattern_stated_rate"] == 1.0  # the third row has none
    assert scores["gender_contradiction_rate"] == pytest.approx(1 / 3)
    assert scores["colour_and_type_accuracy"] == 1.0
    assert scores["contradiction_free_rate"] == pytest.approx(2 / 3)


def test_catalogue_descriptions_state_colour_pattern_and_type_and_nothing_else(attributes, tmp_path):
    with make_catalog(tmp_path, n=60, seed=1, image_size=32).open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    scores = attributes.compute(
        predictions=[row["description"] for row in rows],
        references=[{key: row[key] for key in ATTRIBUTES} for row in rows],
    )
    for prefix in ("colour", "product_type", "pattern"):
        assert scores[f"{prefix}_accuracy"] == 1.0, prefix
    for prefix in ("gender", "usage"):  # no drawing shows them
        assert scores[f"{prefix}_stated_rate"] == 0.0, prefix
    assert scores["contradiction_free_rate"] == 1.0


def test_references_may_leave_out_attributes(attributes):
    attributes.add(prediction="A red dress for women.", reference={"Colour": "Red", "ProductType": "Dresses"})
    scores = attributes.compute()
    assert scores["colour_and_type_accuracy"] == 1.0
    assert scores["gender_accuracy"] is None and scores["pattern_stated_rate"] is None
