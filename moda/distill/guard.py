"""Flag refined descriptions that still quote text off the image or contradict the catalogue metadata.

Prompt II asks the text model to drop OCR text and follow the metadata; small models do not always obey. The guard
rewrites nothing: it returns flags, and the pipeline leaves a flagged description out of the dataset (listed in
`left_out.jsonl`, counted per kind in the summary), or with `--keep_flagged` keeps it with its flags in column
`flags`. Each flag reads `kind: detail`, e.g. `all_caps: NIKE` or `colour_conflict: red`.
"""

import re
from collections.abc import Iterable, Mapping

from ..metrics.fashion_attributes.fashion_vocabulary import COLOURS as FASHION_COLOURS
from ..metrics.fashion_attributes.fashion_vocabulary import GENDER_WORDS

# Single words of the vocabulary's colours ("navy blue" -> navy, blue); other spellings map to its first word.
COLOURS = frozenset(word for name in FASHION_COLOURS for word in name.lower().split())
_COLOUR_ALIASES = {alias: name.lower().split()[0] for name, aliases in FASHION_COLOURS.items() for alias in aliases}
GENDERS = {word: gender.lower() for gender, words in GENDER_WORDS.items() for word in words}

_QUOTED = re.compile(r"[\"“”«»]|‘[^’]+’|(?<!\w)'[^']+'(?!\w)")
_ALL_CAPS = re.compile(r"\b[A-Z]{2,}\b")
_WORD = re.compile(r"[A-Za-z]+(?:[-'’][A-Za-z]+)*")
_INNER_CAPITAL = re.compile(r"[a-z][A-Z]")
_TRADEMARK = re.compile(r"[™®©]")


def _singular(word: str) -> str:
    """Crude English singular, applied to text and vocabulary alike, so `Tshirts` matches `t-shirt`."""
    if word.endswith(("sses", "ches", "shes", "xes")):
        return word[:-2]
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith("s") and not word.endswith("ss") and len(word) > 2:
        return word[:-1]
    return word


def normalise(text: str) -> list[str]:
    """Lower-case singular words; hyphens and apostrophes inside words are dropped (`men's` -> `men`)."""
    text = re.sub(r"(?<=\w)[-'’](?=\w)|(?<=s)[’']", "", text.lower())
    return [_singular(word) for word in re.findall(r"[a-z0-9]+", text)]


def _colours(words: Iterable[str]) -> set[str]:
    return {_COLOUR_ALIASES.get(word, word) for word in words} & COLOURS


def _phrase_in(phrase: list[str], text: str) -> bool:
    return bool(phrase) and f" {' '.join(phrase)} " in text


class DescriptionGuard:
    """Flags one description at a time; `product_types` is the catalogue's vocabulary of product types."""

    def __init__(self, product_types: Iterable[str]):
        self.product_types = {tuple(normalise(name)): name for name in product_types if normalise(name)}
        self.known_words = COLOURS | set(GENDERS) | {word for phrase in self.product_types for word in phrase}

    def flags(self, description: str, metadata: Mapping[str, str]) -> list[str]:
        """OCR flags (quoted text, all-caps words, brand-like tokens, digits), then contradictions of the metadata."""
        return self._ocr_flags(description, metadata) + self._contradictions(description, metadata)

    def _ocr_flags(self, description: str, metadata: Mapping[str, str]) -> list[str]:
        flags = []
        if _QUOTED.search(description):
            flags.append("quoted_text: " + " ".join(m.group(0) for m in _QUOTED.finditer(description)))
        if caps := _ALL_CAPS.findall(description):
            flags.append("all_caps: " + ", ".join(caps))
        known = set(normalise(" ".join(metadata.values()))) | self.known_words
        if brands := _brand_like(description, known):
            flags.append("brand_like: " + ", ".join(brands))
        if re.search(r"\d", description):
            flags.append("digits: " + ", ".join(re.findall(r"\S*\d\S*", description)))
        return flags

    def _contradictions(self, description: str, metadata: Mapping[str, str]) -> list[str]:
        """A description that names some colour / gender / product type, none of them the metadata's."""
        words = normalise(description)
        text = f" {' '.join(words)} "
        flags = []
        expected_colours = _colours(normalise(metadata.get("Colour", "")))
        named_colours = _colours(words)
        if expected_colours and named_colours and not named_colours & expected_colours:
            flags.append("colour_conflict: " + ", ".join(sorted(named_colours)))
        expected_genders = {GENDERS[w] for w in normalise(metadata.get("Gender", "")) if w in GENDERS}
        named_genders = {GENDERS[w] for w in words if w in GENDERS}
        if expected_genders and named_genders and not named_genders & expected_genders:
            flags.append("gender_conflict: " + ", ".join(sorted(named_genders)))
        expected_type = tuple(normalise(metadata.get("ProductType", "")))
        named_types = {phrase for phrase in self.product_types if _phrase_in(list(phrase), text)}
        if expected_type and named_types and expected_type not in named_types:
            flags.append("product_type_conflict: " + ", ".join(sorted(self.product_types[p] for p in named_types)))
        return flags


def _brand_like(description: str, known: set[str]) -> list[str]:
    """Words shaped like names: capitalised mid-sentence and unknown to the metadata, camelCase, or trademark signs."""
    brands = []
    for match in _WORD.finditer(description):
        word = match.group(0)
        if _ALL_CAPS.fullmatch(word):
            continue  # flagged as all_caps already
        capitalised = word[0].isupper() and not _starts_sentence(description, match.start())
        if _INNER_CAPITAL.search(word) or (capitalised and not set(normalise(word)) <= known):
            brands.append(word)
    return brands + _TRADEMARK.findall(description)


def _starts_sentence(text: str, position: int) -> bool:
    before = text[:position].rstrip()
    return not before or before[-1] in ".!?:;\"'“("
