"""The query path: sketch -> clean image -> embedding (+ optional text) -> gallery search -> hits."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from zsdemo.model.encoder import SketchPhotoEncoder
from zsdemo.model.preprocess import clean_sketch, load_photo
from zsdemo.store.gallery import Gallery
from zsdemo.store.layout import Hit


@dataclass
class SearchResult:
    hits: list[Hit]
    preview: Image.Image  # the cleaned sketch, as the model sees it (before resizing)
    seconds: float


def blend(sketch_vec: np.ndarray, text_vec: np.ndarray | None, weight: float) -> np.ndarray:
    """(1 - w) * sketch + w * text, re-normalised; exactly the sketch vector when w == 0 or no text."""
    if text_vec is None or weight <= 0:
        return sketch_vec
    mixed = (1.0 - weight) * sketch_vec + weight * text_vec
    return (mixed / max(float(np.linalg.norm(mixed)), 1e-12)).astype(np.float32)


class SearchEngine:
    def __init__(self, encoder: SketchPhotoEncoder, gallery: Gallery) -> None:
        self.encoder = encoder
        self.gallery = gallery  # replaced wholesale after an update; readers keep the object they took
        self._text_cache: dict[str, np.ndarray] = {}

    def text_vector(self, text: str) -> np.ndarray:
        text = text.strip()
        if text not in self._text_cache:
            if len(self._text_cache) > 256:
                self._text_cache.clear()
            self._text_cache[text] = self.encoder.encode_text([text])[0]
        return self._text_cache[text]

    def sketch_vector(self, sketch: Any, display_name: str | None = None) -> tuple[Image.Image, np.ndarray]:
        """A sketch in any accepted form -> (the cleaned image the model sees, its embedding)."""
        preview = clean_sketch(sketch, display_name=display_name)
        return preview, self.encoder.encode_clean_sketches([preview])[0]

    def search_sketch(self, sketch: Any, k: int = 12, text: str | None = None, text_weight: float = 0.0,
                      display_name: str | None = None) -> SearchResult:
        """Raises EmptySketchError / ImageError (user-readable; files named `display_name`) for unusable input."""
        started = time.perf_counter()
        preview, vector = self.sketch_vector(sketch, display_name)
        if text and text.strip() and text_weight > 0:
            vector = blend(vector, self.text_vector(text), text_weight)
        gallery = self.gallery
        hits = gallery.search(vector, k)
        return SearchResult(hits=hits, preview=preview, seconds=time.perf_counter() - started)

    def search_photo(self, photo: Any, k: int = 12) -> SearchResult:
        started = time.perf_counter()
        preview = load_photo(photo)
        vector = self.encoder.encode_photos([preview])[0]
        return SearchResult(hits=self.gallery.search(vector, k), preview=preview, seconds=time.perf_counter() - started)
