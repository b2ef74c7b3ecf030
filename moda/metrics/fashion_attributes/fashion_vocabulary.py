"""The fashion words MODA knows: colours, product types, patterns, genders and usages, each written once.

The demo catalogue draws and captions items with these words, the distillation guard checks descriptions against
them and the fashion_attributes metric scores them. The file lives beside the metric because `evaluate.load` copies
a metric's relative imports with it and nothing else: a standalone metric can import no other package.
Keys are the Kaggle catalogue's values; the tuples are the lower-case phrases a description may use for them.
"""

from __future__ import annotations

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

# Kaggle product types -> (the noun captions use, other spellings).
PRODUCT_TYPES: dict[str, tuple[str, ...]] = {
    "Tshirts": ("t-shirt", "tshirt", "t shirt", "tee"),
    "Shirts": ("shirt",),
    "Tops": ("top",),
    "Jackets": ("jacket",),
    "Dresses": ("dress",),
    "Jeans": ("jeans",),
    "Shorts": ("shorts",),
    "Skirts": ("skirt",),
    "Casual Shoes": ("casual shoes",),
    "Sports Shoes": ("sports shoes",),
    "Heels": ("heels",),
    "Flip Flops": ("flip flops", "flip-flops"),
    "Sandals": ("sandals",),
}

# Fabric patterns -> (the word captions use, other spellings).
PATTERNS: dict[str, tuple[str, ...]] = {
    "Solid": ("plain", "solid"),
    "Striped": ("striped", "stripes", "stripe"),
    "Checked": ("checked", "checks", "check", "plaid"),
    "Polka-dot": ("polka-dot", "polka dot", "polka-dots", "polka dots", "dotted"),
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
