"""Why a photo matched a sketch: the photo looked up by name in a mode's gallery (never a server path), the
sketch's embedding (kept for the last few sketches, so clicking through one sketch's results encodes it once),
and the similarity map over the photo at thumbnail scale."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np
from PIL import Image

from zsdemo.errors import EmptySketchError, ZsdemoError
from zsdemo.limits import neutralise
from zsdemo.model.preprocess import load_photo
from zsdemo.serve.modes import Mode
from zsdemo.serve.outcomes import ExplainOutcome
from zsdemo.store.layout import Hit

log = logging.getLogger(__name__)

# The largest image the app sends of a gallery photo (a clicked result, /explain): thumbnail-scale, so the page
# and the API never hand out the originals.
LARGE_PHOTO_SIDE = 512
KEPT_SKETCHES = 16


def find_photo(mode: Mode, name: str) -> Hit | None:
    """The photo called `name` (as hits name them) in the mode's gallery, or None."""
    if mode.engine is None:
        return None
    gallery = mode.engine.gallery
    if mode.names is None or mode.names[0] is not gallery:
        mode.names = (gallery, {entry.name: row for row, entry in enumerate(gallery.entries)})
    row = mode.names[1].get(name)
    return None if row is None else gallery.hit(row, 0.0)


def large_photo(hit: Hit) -> Image.Image:
    """The photo of a hit at most LARGE_PHOTO_SIDE a side."""
    photo = load_photo(hit.photo)
    photo.thumbnail((LARGE_PHOTO_SIDE, LARGE_PHOTO_SIDE), Image.Resampling.LANCZOS)
    return photo


class Explainer:
    """Similarity maps for a ready mode, with the recent sketches' embeddings kept (thread-safe)."""

    def __init__(self) -> None:
        self._vectors: dict[tuple[str, str], np.ndarray] = {}  # (mode, sketch text) -> embedding
        self._lock = threading.Lock()

    def _sketch_vector(self, mode: Mode, sketch: Any) -> np.ndarray:
        key = (mode.name, sketch) if isinstance(sketch, str) else None
        with self._lock:
            if key is not None and key in self._vectors:
                return self._vectors[key]
        _, vector = mode.engine.sketch_vector(sketch, display_name="the sketch")
        if key is not None:
            with self._lock:
                if len(self._vectors) >= KEPT_SKETCHES:
                    self._vectors.pop(next(iter(self._vectors)))
                self._vectors[key] = vector
        return vector

    def explain(self, mode: Mode, photo: Hit | str, sketch: Any) -> ExplainOutcome:
        """The map of `sketch` over `photo` (a hit, or a photo name) in a ready `mode`."""
        from zsdemo.search.explain import explain_photo

        hit = find_photo(mode, photo) if isinstance(photo, str) else photo
        if hit is None:
            return ExplainOutcome("error", f"No photo called {neutralise(str(photo)[:200])!r} in the gallery.")
        started = time.perf_counter()
        try:
            vector = self._sketch_vector(mode, sketch)
            result = explain_photo(mode.encoder, load_photo(hit.photo), vector, max_side=LARGE_PHOTO_SIDE)
        except EmptySketchError as exc:
            return ExplainOutcome("empty", str(exc))
        except ZsdemoError as exc:
            return ExplainOutcome("error", str(exc))
        seconds = time.perf_counter() - started
        log.info("Explained %s (%s) in %.0f ms", hit.name, mode.name, seconds * 1000)
        return ExplainOutcome("ok", f"{result.caption} ({seconds * 1000:.0f} ms)", result.image, seconds)
