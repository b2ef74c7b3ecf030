"""The fashion words MODA knows: colours, product types, patterns, genders and usages, each written once.

The demo catalogue draws and captions items with these words, the distillation guard checks descriptions against
them and the fashion_attributes metric scores them. The file lives beside the metric because `evaluate.load` copies
a metric's relative imports with it and nothing else: a standalone metric can import no other package.
Keys are the Kaggle catalogue's values; the tuples are the lower-case phrases a description may use for them.
The metric matches a phrase case-insensitively, with hyphens read as spaces ("polka-dot" is "polka dot") and an
optional plural ending ("stripes", "dresses"), so each list holds one spelling per word, not its variants.
"""

from __future__ import annotations

# The catalogue columns these words describe -> the name their scores carry, in the order a matcher should look for
# them: product types first, so that the "sports" of "sports shoes" is no Sports usage, nor "casual shoes" Casual.
ATTRIBUTES: dict[str, str] = {
    "ProductType": "product_type", "Colour": "colour", "Pattern": "pattern", "Gender": "gender", "Usage": "usage",
}  # fmt: skip

# Kaggle colour names -> other spellings. The first 14 are the ones the demo catalogue paints.
COLOURS: dict[str, tuple[str, ...]] = {
    "Black": (),
    "White": (),
    "Grey": ("gray",),
    "Blue": (),
    "Navy Blue": (),
    "Teal": (),
    "Green": (),
    "Yellow": (),
    "Orange": (),
    "Red": (),
    "Pink": (),
    "Purple": (),
    "Brown": (),
    "Beige": (),
    "Silver": (),
    "Gold": ("golden",),
    "Maroon": (),
    "Olive": (),
    "Cream": (),
    "Charcoal": (),
    "Khaki": (),
    "Peach": (),
    "Magenta": (),
    "Lavender": (),
    "Mustard": (),
    "Rust": (),
    "Turquoise Blue": ("turquoise",),
    "Burgundy": (),
    "Tan": (),
    "Copper": (),
    "Bronze": (),
    "Mauve": (),
    "Coral": (),
    "Violet": (),
    "Indigo": (),
}

# Kaggle product types -> (the noun captions use, other spellings). A matcher also accepts a spelling plus "s" or
# "es" ("dresses", "t-shirts"); singulars of plural nouns are listed because "shorts" must not shrink to "short".
PRODUCT_TYPES: dict[str, tuple[str, ...]] = {
    "Tshirts": ("t-shirt", "tshirt", "tee"),
    "Shirts": ("shirt",),
    "Tops": ("top",),
    "Jackets": ("jacket",),
    "Dresses": ("dress",),
    "Jeans": ("jeans",),
    "Shorts": ("shorts",),
    "Skirts": ("skirt",),
    "Casual Shoes": ("casual shoes", "casual shoe"),
    "Sports Shoes": ("sports shoes", "sports shoe", "sport shoe"),
    "Heels": ("heels", "heel"),
    "Flip Flops": ("flip flops", "flip flop"),
    "Sandals": ("sandals", "sandal"),
}

# Fabric patterns (the demo catalogue's Pattern column) -> (the word captions use, other spellings).
PATTERNS: dict[str, tuple[str, ...]] = {
    "Solid": ("plain", "solid"),
    "Striped": ("striped", "stripe"),
    "Checked": ("checked", "check", "checkered", "plaid"),
    "Polka-dot": ("polka-dot", "dotted", "spotted"),
}

GENDER_WORDS: dict[str, tuple[str, ...]] = {
    "Men": ("men", "man", "male", "gent", "gentleman", "gentlemen"),
    "Women": ("women", "woman", "female", "ladies", "lady"),
    "Boys": ("boys", "boy"),
    "Girls": ("girls", "girl"),
}
_GENDER_POSSESSIVE = {"Men": "men's", "Women": "women's", "Boys": "boys'", "Girls": "girls'", "Unisex": "unisex"}

USAGE_PHRASES: dict[str, tuple[str, ...]] = {
    "Casual": ("casual wear", "everyday wear"),
    "Formal": ("formal occasions", "the office"),
    "Sports": ("sports", "workouts"),
    "Ethnic": ("festive occasions", "ethnic wear"),
    "Party": ("parties", "a night out"),
}


def product_noun(product_type: str) -> str:
    """The lower-case noun phrase captions use for a product type ("Tshirts" -> "t-shirt").

    Unknown Kaggle product types fall back to their lower-cased name, so metrics work on the real catalogue too.
    """
    known = PRODUCT_TYPES.get(product_type)
    return known[0] if known else product_type.lower()


def pattern_word(pattern: str) -> str:
    """The word captions use for a pattern ("Solid" -> "plain")."""
    return PATTERNS[pattern][0]


def gender_possessive(gender: str) -> str:
    """The word a caption puts before the noun: "men's", "girls'", "unisex" (not "girls's" or "unisex's").

    Other values take "'s", or only the apostrophe when they end in "s".
    """
    known = _GENDER_POSSESSIVE.get(gender.strip().capitalize())
    if known:
        return known
    word = gender.strip().lower()
    return f"{word}'" if word.endswith("s") else f"{word}'s"
