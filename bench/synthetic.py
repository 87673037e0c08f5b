"""Made-up inputs for the benchmarks: embedding-like vectors, drawn sketches (the page's strokes JSON, or a
picture), generated photos, and galleries enlarged with synthetic vectors.

No model and no download: the vectors mimic CLIP image embeddings closely enough that nearest-neighbour
search is neither trivially easy nor unrepresentatively hard, and the sketches are what the page sends.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from zsdemo.limits import BRUSH_SIZE, CANVAS_SIZE

# The page's canvas (zsdemo.limits): what its JavaScript sends after each stroke.
PAGE_CANVAS = CANVAS_SIZE
PAGE_BRUSH = BRUSH_SIZE


# ---- embedding-like vectors -------------------------------------------------------------------------
class ClusteredEmbeddings:
    """Unit vectors shaped like image embeddings, drawn from one fixed distribution per (n, dim, seed).

    Plain clusters make nearest-neighbour search too easy (every method gets recall 1.0), and uniform
    random vectors unrepresentatively hard, so this mimics CLIP embeddings: a power-law spectrum (low
    intrinsic dimension), coarse clusters with fine sub-clusters, and a shared direction (mean pairwise
    cosine ~0.35, top-10 neighbours at cosine ~0.93). `draw` takes its own generator, so chunks of a large
    gallery and held-out queries are independent draws from the same distribution.
    """

    def __init__(self, n: int, dim: int, seed: int) -> None:
        self.dim = dim
        self.rng = np.random.default_rng(seed)
        self.scale = (np.arange(1, dim + 1) ** -0.75).astype(np.float32)
        self.basis = np.linalg.qr(self.rng.standard_normal((dim, dim)))[0].astype(np.float32)
        common = self.rng.standard_normal(dim).astype(np.float32)
        self.common = common / np.linalg.norm(common)
        n_coarse, self.n_fine = max(10, n // 1000), max(50, n // 20)
        coarse = self.gaussian(self.rng, n_coarse)
        self.fine = coarse[self.rng.integers(0, n_coarse, self.n_fine)] + 0.6 * self.gaussian(self.rng, self.n_fine)

    def gaussian(self, rng: np.random.Generator, m: int) -> np.ndarray:
        return (rng.standard_normal((m, self.dim), dtype=np.float32) * self.scale) @ self.basis

    def draw(self, m: int, rng: np.random.Generator | None = None) -> np.ndarray:
        rng = self.rng if rng is None else rng
        x = self.fine[rng.integers(0, self.n_fine, m)] + 0.5 * self.gaussian(rng, m)
        x = x / np.linalg.norm(x, axis=1, keepdims=True) + 0.7 * self.common
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def synthetic_embeddings(n: int, dim: int, seed: int, n_queries: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(gallery (n, dim), queries (n_queries, dim)), float32 unit vectors (ClusteredEmbeddings); the queries
    come from the same distribution and are not in the gallery."""
    recipe = ClusteredEmbeddings(n, dim, seed)
    return recipe.draw(n), recipe.draw(n_queries)


def write_npy(path: Path, n: int, dim: int, chunks: Iterable[np.ndarray]) -> None:
    """Write an (n, dim) float32 .npy file from row chunks, never holding the whole matrix."""
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": "<f4", "fortran_order": False, "shape": (n, dim)})
        written = 0
        for chunk in chunks:
            np.ascontiguousarray(chunk, dtype="<f4").tofile(handle)
            written += chunk.shape[0]
    if written != n:
        raise ValueError(f"{path}: wrote {written} rows, expected {n}")


def write_vectors(path: Path, n: int, dim: int, seed: int, n_queries: int, chunk: int = 65_536) -> np.ndarray:
    """Write (n, dim) ClusteredEmbeddings to `path` (.npy) in chunks (each from a generator of its own, so
    memory stays at one chunk); return (n_queries, dim) held-out queries from the same distribution."""
    recipe = ClusteredEmbeddings(n, dim, seed)
    chunks = (recipe.draw(min(chunk, n - start), np.random.default_rng([seed, i]))
              for i, start in enumerate(range(0, n, chunk)))
    write_npy(path, n, dim, chunks)
    return recipe.draw(n_queries, np.random.default_rng([seed, 10**6]))


# ---- sketches -----------------------------------------------------------------------------------------
def stroke_json(seed: int, n_strokes: int, size: int = PAGE_CANVAS, brush: int = PAGE_BRUSH) -> str:
    """What the page's canvas sends after its `n_strokes`-th stroke: the strokes so far, as JSON
    ({"width", "height", "brush", "strokes": [[x0, y0, x1, y1, ...], ...]}, canvas pixels)."""
    rng = np.random.default_rng(seed)
    strokes = []
    for _ in range(n_strokes):
        n = int(rng.integers(3, 8))
        anchor = rng.integers(size // 8, size - size // 8, 2)
        points = np.clip(anchor + np.cumsum(rng.integers(-60, 61, (n, 2)), axis=0), 4, size - 4)
        strokes.append([int(v) for v in points.reshape(-1)])
    return json.dumps({"width": size, "height": size, "brush": brush, "strokes": strokes})


def draw_canvas(seed: int, size: int = PAGE_CANVAS) -> np.ndarray:
    """A drawn sketch as a picture (an uploaded sketch): black shapes on white, HxWx3 uint8."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 7))):
        x0, y0, x1, y1 = (int(v) for v in rng.integers(size // 8, size - size // 8, 4))
        kind = int(rng.integers(0, 3))
        box = (min(x0, x1), min(y0, y1), max(x0, x1) + 10, max(y0, y1) + 10)
        if kind == 0:
            draw.line((x0, y0, x1, y1), fill="black", width=int(rng.integers(4, 12)))
        elif kind == 1:
            draw.ellipse(box, outline="black", width=int(rng.integers(4, 12)))
        else:
            draw.rectangle(box, outline="black", width=int(rng.integers(4, 12)))
    return np.asarray(image).copy()


# ---- photos and galleries -----------------------------------------------------------------------------
def photo_files(folder: Path, n: int) -> None:
    """`n` generated 640x480 JPEG photos (colour gradients), for building real galleries."""
    rng = np.random.default_rng(2)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:480, 0:640]
    for i in range(n):
        a, b, c = rng.uniform(0.2, 1.0, 3)
        img = np.stack([(xx * a) % 256, (yy * b) % 256, ((xx + yy) * c) % 256], -1).astype(np.uint8)
        Image.fromarray(img).save(folder / f"photo{i:04d}.jpg", quality=90)


def _build_real(photos: Path, cache_dir: Path, encoder: Any) -> Any:
    """The photos in `photos` indexed for real into `cache_dir` (the library's build)."""
    from zsdemo.store.build import build_gallery

    gallery, _ = build_gallery([photos], cache_dir, encoder)
    return gallery


def _linked_thumb(thumbs: Path, base: str, i: int) -> str:
    """A thumbnail file of its own for synthetic entry `i` (a hard link to `base`, so no disk space)."""
    thumb = f"bench-{i:06d}-{base}"
    if not (thumbs / thumb).exists():
        try:
            os.link(thumbs / base, thumbs / thumb)
        except OSError:
            shutil.copyfile(thumbs / base, thumbs / thumb)
    return thumb


def enlarged_gallery(real: Any, cache_dir: Path, encoder: Any, n: int, own_thumbs: bool = False,
                     index_cfg: Any = None) -> Any:
    """`real` enlarged to `n` entries with the public create_gallery: the extra entries reuse the real ones'
    photos with synthetic embedding-like vectors; with `own_thumbs`, each gets a thumbnail file of its own
    (so a browser loads new thumbnails for new results, as for a real gallery, instead of hitting its cache)."""
    from zsdemo.store.build import create_gallery
    from zsdemo.store.index import IndexConfig

    extra = max(0, n - len(real))
    vectors, _ = synthetic_embeddings(extra, real.embeddings.shape[1], seed=1)
    entries = list(real.entries)
    for i in range(extra):
        base = real.entries[i % len(real.entries)]
        changes = {"name": f"synthetic/{i:06d}-{base.name}"}
        if own_thumbs:
            changes["thumb"] = _linked_thumb(cache_dir / "thumbs", base.thumb, i)
        entries.append(dataclasses.replace(base, **changes))
    matrix = np.concatenate([np.asarray(real.embeddings), vectors]).astype(np.float32)
    return create_gallery(cache_dir, entries, matrix, list(real.sources), encoder, index_cfg or IndexConfig())


def synthetic_gallery(cache_dir: Path, encoder: Any, n: int, n_real: int = 8, index_cfg: Any = None) -> Any:
    """A gallery of `n` photos: `n_real` generated photos indexed for real, the rest synthetic vectors."""
    photos = cache_dir.parent / f"{cache_dir.name}-photos"
    photo_files(photos, n_real)
    return enlarged_gallery(_build_real(photos, cache_dir, encoder), cache_dir, encoder, n, index_cfg=index_cfg)


def app_gallery(cache_dir: Path, encoder: Any, n: int, photos_dir: Path | None = None) -> Any:
    """A gallery cache of `n` photos for a launched app: the starter photos (real images, or `photos_dir`)
    indexed for real, enlarged to `n` entries with thumbnails of their own."""
    from zsdemo.store.starter import starter_photos_dir

    photos = photos_dir or starter_photos_dir(cache_dir.parent)
    return enlarged_gallery(_build_real(photos, cache_dir, encoder), cache_dir, encoder, n, own_thumbs=True)
