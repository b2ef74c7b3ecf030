"""Fashion-attribute consistency: does a caption name the item's catalogue attributes, and does it contradict them?

BLEU and ROUGE reward wording; a shopper cares whether a red dress is called red and a dress. Each prediction is
checked against its catalogue row (Colour, ProductType, Gender, Usage).

Mentions are found longest phrase first and a matched span is taken, so "navy blue" is one colour (not also
"blue"), "t-shirt" is not also a "shirt", and the "sports" of "sports shoes" is not also the Sports usage.
Product types are matched before colours, colours before genders, genders before usages. Any mention of another
value of the same attribute is a contradiction (a Navy Blue item called "blue" is wrong and contradicted).
The vocabulary is fashion_vocabulary.py's plus every value seen in the references, so real
Kaggle colours and product types work too (matched as their lower-cased names).
"""

import re
from collections.abc import Iterable

import datasets
import evaluate

from .fashion_vocabulary import COLOURS, GENDER_WORDS, PRODUCT_TYPES, USAGE_PHRASES, product_noun


ATTRIBUTES = ("ProductType", "Colour", "Gender", "Usage")
CONTRADICTION_ATTRIBUTES = ("ProductType", "Colour", "Gender")
_OUTPUT_PREFIX = {"ProductType": "product_type", "Colour": "colour", "Gender": "gender", "Usage": "usage"}

_DESCRIPTION = """Scores captions against catalogue rows. References are dicts with the keys Colour, ProductType,
Gender and Usage (empty strings are skipped for that attribute). Returns, as fractions of predictions:
`colour_accuracy`, `product_type_accuracy`, `gender_accuracy`, `usage_accuracy` (the caption names the right value),
`colour_and_type_accuracy` (both right), `colour_contradiction_rate`, `product_type_contradiction_rate`,
`gender_contradiction_rate` (the caption names another value) and `contradiction_rate` (any of those three)."""

Span = tuple[int, int]


def _catalogue_terms() -> dict[str, dict[str, str]]:
    """Phrase -> attribute value, per attribute, from the demo catalogue's vocabulary."""
    terms: dict[str, dict[str, str]] = {attribute: {} for attribute in ATTRIBUTES}
    for product_type, phrases in PRODUCT_TYPES.items():
        for phrase in (*phrases, product_type.lower()):
            terms["ProductType"][phrase] = product_type
    for colour, aliases in COLOURS.items():
        for phrase in (colour.lower(), *aliases):
            terms["Colour"][phrase] = colour
    for gender, words in GENDER_WORDS.items():
        for word in words:
            terms["Gender"][word] = gender
    for usage, phrases in USAGE_PHRASES.items():
        for phrase in (usage.lower(), *phrases):
            terms["Usage"][phrase] = usage
    return terms


def _vocabulary(references: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    """The catalogue's terms plus the references' own values, so unknown Kaggle values are still recognised."""
    terms = _catalogue_terms()
    for reference in references:
        for attribute in ATTRIBUTES:
            value = reference[attribute]
            if value:
                spoken = product_noun(value) if attribute == "ProductType" else value.lower()
                # A naive singular lets "kurta" match an unknown Kaggle "Kurtas"; "(?:s|es)?" covers plurals.
                for phrase in (spoken, value.lower(), re.sub(r"(?<!s)s$", "", spoken)):
                    terms[attribute].setdefault(phrase, value)
    return terms


def _mentions(text: str, terms: dict[str, str], taken: list[Span]) -> set[str]:
    """Values whose phrases occur in ``text`` outside the already ``taken`` spans; matched spans are added to it."""
    found = set()
    for phrase in sorted(terms, key=len, reverse=True):
        # Optional plural ending: "dress" also matches "dresses", "girl" matches "girls".
        pattern = r"\b" + re.escape(phrase) + r"(?:s|es)?\b"
        for match in re.finditer(pattern, text):
            if all(match.end() <= start or match.start() >= end for start, end in taken):
                taken.append(match.span())
                found.add(terms[phrase])
    return found


def _fraction(flags: Iterable[bool]) -> float:
    flags = list(flags)
    return sum(flags) / len(flags) if flags else 0.0


class FashionAttributes(evaluate.Metric):
    """Attribute accuracy and contradiction rates of captions against catalogue metadata."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="MODA fashion-attribute consistency (this repository).",
            inputs_description="predictions: list of str; references: list of dicts with Colour, ProductType, "
            "Gender and Usage.",
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": {attribute: datasets.Value("string") for attribute in ATTRIBUTES},
                }
            ),
        )

    def _compute(self, predictions: list[str], references: list[dict[str, str]]) -> dict[str, float]:
        terms = _vocabulary(references)
        named: dict[str, list[bool]] = {attribute: [] for attribute in ATTRIBUTES}
        contradicted: dict[str, list[bool]] = {attribute: [] for attribute in CONTRADICTION_ATTRIBUTES}
        colour_and_type, any_contradiction = [], []
        for prediction, reference in zip(predictions, references):
            taken: list[Span] = []
            text = prediction.lower()
            right, wrong = {}, {}
            for attribute in ATTRIBUTES:
                mentioned = _mentions(text, terms[attribute], taken)
                value = reference[attribute]
                right[attribute] = value in mentioned
                wrong[attribute] = bool(mentioned - {value})
                if value:
                    named[attribute].append(right[attribute])
                    if attribute in contradicted:
                        contradicted[attribute].append(wrong[attribute])
            colour_and_type.append(right["Colour"] and right["ProductType"])
            any_contradiction.append(any(wrong[attribute] for attribute in CONTRADICTION_ATTRIBUTES))

        scores = {f"{_OUTPUT_PREFIX[attribute]}_accuracy": _fraction(named[attribute]) for attribute in ATTRIBUTES}
        scores["colour_and_type_accuracy"] = _fraction(colour_and_type)
        for attribute, flags in contradicted.items():
            scores[f"{_OUTPUT_PREFIX[attribute]}_contradiction_rate"] = _fraction(flags)
        scores["contradiction_rate"] = _fraction(any_contradiction)
        return scores
