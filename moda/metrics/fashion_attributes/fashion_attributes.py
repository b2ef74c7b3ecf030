"""Fashion-attribute truth: which catalogue attributes a description names rightly, and which it contradicts.

BLEU and ROUGE reward wording; a shopper cares whether a red dress is called red and a dress, and that nothing the
description says is false. Each prediction is checked against its catalogue row, attribute by attribute: Colour,
ProductType, Pattern, Gender and Usage. Per attribute, over the rows that have a value for it:

- ``<attribute>_accuracy``: the description names the right value;
- ``<attribute>_contradiction_rate``: it names another value of that attribute (an attribute it does not state
  contradicts nothing);
- ``<attribute>_stated_rate``: it names any value of that attribute.

A row with an empty (or absent) value is skipped for that attribute: the Kaggle catalogue has no Pattern column,
so its Pattern scores are None. Over all rows: ``colour_and_type_accuracy`` (both right),
``contradiction_free_rate`` (no attribute contradicted) and ``contradiction_rate`` (its complement).

Matching is case-insensitive, reads hyphens as spaces and accepts a plural ending ("T-shirts" is Tshirts, "dresses"
is Dresses). Mentions are found longest phrase first and a matched span is taken, so "navy blue" is one colour (not
also "blue"), "t-shirt" is not also a "shirt"; product types are matched first, so the "sports" of "sports shoes"
is no Sports usage. Naming a second value is a contradiction (a Navy Blue item called "blue" is wrong, and a red
dress called "red and black" is right and contradicted). The vocabulary is fashion_vocabulary.py's plus every value
seen in the references, so real Kaggle colours and product types work too (matched as their lower-cased names).
"""

import re
from collections.abc import Iterable

import datasets
import evaluate

from .fashion_vocabulary import (
    ATTRIBUTES,
    COLOURS,
    GENDER_WORDS,
    PATTERNS,
    PRODUCT_TYPES,
    USAGE_PHRASES,
    product_noun,
)

_DESCRIPTION = """Scores descriptions against catalogue rows. References are dicts with the keys Colour,
ProductType, Pattern, Gender and Usage (an empty or absent value skips that attribute for that row). Returns, per
attribute (colour, product_type, pattern, gender, usage), as fractions of the rows with a value for it:
`<attribute>_accuracy` (the description names the right value), `<attribute>_contradiction_rate` (it names another
value) and `<attribute>_stated_rate` (it names any value); None where no row has a value. Over all rows:
`colour_and_type_accuracy` (both right), `contradiction_free_rate` (no attribute contradicted) and
`contradiction_rate` (1 - contradiction_free_rate)."""

Span = tuple[int, int]


def _normalised(text: str) -> str:
    """Lower case, hyphens as spaces, single spaces: "Polka-Dot  T-shirt" -> "polka dot t shirt"."""
    return re.sub(r"[\s-]+", " ", text.lower()).strip()


def _catalogue_terms() -> dict[str, dict[str, str]]:
    """Phrase -> attribute value, per attribute, from the fashion vocabulary."""
    spellings = {
        "ProductType": PRODUCT_TYPES,
        "Colour": COLOURS,
        "Pattern": PATTERNS,
        "Gender": GENDER_WORDS,
        "Usage": USAGE_PHRASES,
    }
    return {
        attribute: {
            _normalised(phrase): value for value, phrases in spellings[attribute].items() for phrase in (value, *phrases)
        }
        for attribute in ATTRIBUTES
    }


def _completed(references: Iterable[dict[str, str | None]]) -> list[dict[str, str | None]]:
    """References with every attribute key: `datasets` cannot encode a dict that lacks one of its features."""
    return [{**dict.fromkeys(ATTRIBUTES, ""), **reference} for reference in references]


def _value(reference: dict[str, str | None], attribute: str) -> str:
    return (reference.get(attribute) or "").strip()


def _vocabulary(references: list[dict[str, str | None]]) -> dict[str, dict[str, str]]:
    """The catalogue's terms plus the references' own values, so unknown Kaggle values are still recognised."""
    terms = _catalogue_terms()
    for reference in references:
        for attribute in ATTRIBUTES:
            value = _value(reference, attribute)
            if value:
                spoken = product_noun(value) if attribute == "ProductType" else value
                # A naive singular lets "kurta" match an unknown Kaggle "Kurtas".
                for phrase in (spoken, value, re.sub(r"(?<!s)s$", "", spoken)):
                    if _normalised(phrase):
                        terms[attribute].setdefault(_normalised(phrase), value)
    return terms


def _mentions(text: str, terms: dict[str, str], taken: list[Span]) -> set[str]:
    """Values whose phrases occur in ``text`` outside the already ``taken`` spans; matched spans are added to it."""
    found = set()
    for phrase in sorted(terms, key=len, reverse=True):
        # Optional plural ending: "dress" also matches "dresses", "stripe" matches "stripes".
        for match in re.finditer(r"\b" + re.escape(phrase) + r"(?:s|es)?\b", text):
            if all(match.end() <= start or match.start() >= end for start, end in taken):
                taken.append(match.span())
                found.add(terms[phrase])
    return found


def _fraction(flags: Iterable[bool]) -> float | None:
    flags = list(flags)
    return sum(flags) / len(flags) if flags else None


class FashionAttributes(evaluate.Metric):
    """Per-attribute accuracy and contradiction rates of descriptions against catalogue metadata."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="MODA fashion-attribute consistency (this repository).",
            inputs_description="predictions: list of str; references: list of dicts with Colour, ProductType, "
            "Pattern, Gender and Usage (any may be empty or absent).",
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": {attribute: datasets.Value("string") for attribute in ATTRIBUTES},
                }
            ),
        )

    def add_batch(self, *, predictions=None, references=None, **kwargs) -> None:
        """As `evaluate.Metric.add_batch`; a reference may lack attributes (the Kaggle catalogue has no Pattern)."""
        references = None if references is None else _completed(references)
        super().add_batch(predictions=predictions, references=references, **kwargs)

    def add(self, *, prediction=None, reference=None, **kwargs) -> None:
        """As `evaluate.Metric.add`; the reference may lack attributes."""
        reference = None if reference is None else _completed([reference])[0]
        super().add(prediction=prediction, reference=reference, **kwargs)

    def _compute(self, predictions: list[str], references: list[dict[str, str | None]]) -> dict[str, float | None]:
        terms = _vocabulary(references)
        flags: dict[str, dict[str, list[bool]]] = {
            attribute: {"accuracy": [], "contradiction_rate": [], "stated_rate": []} for attribute in ATTRIBUTES
        }
        colour_and_type, contradiction_free = [], []
        for prediction, reference in zip(predictions, references):
            taken: list[Span] = []
            text = _normalised(prediction)
            right, wrong = set(), set()
            for attribute in ATTRIBUTES:  # in the vocabulary's matching order
                mentioned = _mentions(text, terms[attribute], taken)
                value = _value(reference, attribute)
                if not value:
                    continue
                if value in mentioned:
                    right.add(attribute)
                if mentioned - {value}:
                    wrong.add(attribute)
                flags[attribute]["accuracy"].append(attribute in right)
                flags[attribute]["contradiction_rate"].append(attribute in wrong)
                flags[attribute]["stated_rate"].append(bool(mentioned))
            colour_and_type.append({"Colour", "ProductType"} <= right)
            contradiction_free.append(not wrong)

        scores = {
            f"{ATTRIBUTES[attribute]}_{name}": _fraction(values)
            for attribute, named in flags.items()
            for name, values in named.items()
        }
        scores["colour_and_type_accuracy"] = _fraction(colour_and_type)
        free = scores["contradiction_free_rate"] = _fraction(contradiction_free)
        scores["contradiction_rate"] = None if free is None else 1 - free
        return scores
