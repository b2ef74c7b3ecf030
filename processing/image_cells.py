"""Opening a catalogue's ``image`` cell, whatever form `datasets` or a table gave it.

Apart from `processing.data` because `moda describe` opens cells too and must not import `datasets` to do it
(benchmarks/cold_start.py).
"""

from __future__ import annotations

import io
from typing import Any

from PIL import Image

from .processing_moda import load_rgb_image


def open_image(value: Any) -> Image.Image:
    """Opens an ``image`` cell (path/bytes dict, path or PIL image) as RGB, or raises ValueError."""
    if value is None:
        raise ValueError("row has no image")
    if isinstance(value, dict):
        if value.get("bytes"):
            try:
                return load_rgb_image(Image.open(io.BytesIO(value["bytes"])), name=value.get("path") or "image")
            except OSError as error:
                raise ValueError(f"cannot decode image bytes ({error})") from error
        value = value.get("path")
        if not value:
            raise ValueError("row has no image")
    return load_rgb_image(value, name=str(value) if not isinstance(value, Image.Image) else "image")
