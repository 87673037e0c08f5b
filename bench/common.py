"""Shared helpers of the benchmarks in bench/: machine facts, interleaved timing, percentiles, inputs.

Every figure a benchmark prints sits next to the machine it was measured on (CPU model and the SIMD/bf16
flags that decide which query path is fast) and next to a reference measured in the same run, with the
compared things timed round-robin so a noisy neighbour on a shared machine slows all of them alike.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CANVAS = 800  # Gradio Sketchpad composite size used for end-to-end queries


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """CPU model, SIMD level / VNNI / native bf16 (zsdemo.precision.cpu_features), cores, threads, load."""
    import torch

    from zsdemo.precision import cpu_features, cpu_label

    features = cpu_features()
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "cpu": cpu_model(),
        "cpu_label": cpu_label(features),
        "features": features,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_avg_1m": round(load[0], 2),
    }


def machine_line(info: dict[str, Any]) -> str:
    f = info["features"]
    return (f"machine: {info['cpu']} [{info['cpu_label']}: AVX2 {f['avx2']}, AVX-512 {f['avx512']}, VNNI {f['vnni']}, "
            f"native bf16 {f['native_bf16']}; torch capability {f['capability']}]; {info['cores']} cores; "
            f"torch {info['torch']} with {info['torch_threads']} threads; load average (1 min) {info['load_avg_1m']}")


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 2, budget_s: float | None = None,
                min_repeats: int = 5) -> dict[str, np.ndarray]:
    """Time each function `repeats` times, round-robin (rotating the order), in milliseconds; with `budget_s`,
    stop once that many seconds have passed and at least `min_repeats` rounds are in (busy machines)."""
    names = list(fns)
    started = time.perf_counter()
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        if budget_s is not None and r >= min_repeats and time.perf_counter() - started > budget_s:
            break
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            fns[name]()
            times[name].append((time.perf_counter() - start) * 1000.0)
    return {name: np.asarray(t) for name, t in times.items()}


def p50(t: np.ndarray) -> float:
    return float(np.percentile(t, 50))


def p95(t: np.ndarray) -> float:
    return float(np.percentile(t, 95))


def row(*cells: Any, widths: tuple[int, ...] = (34, 12, 12, 12, 30)) -> str:
    out = []
    for cell, width in zip(cells, widths, strict=False):
        text = f"{cell:.2f}" if isinstance(cell, float) else str(cell)
        out.append(text.ljust(width) if not out else text.rjust(width))
    return " ".join(out)


def draw_canvas(seed: int, size: int = CANVAS) -> np.ndarray:
    """A Sketchpad-like composite: black strokes on white, HxWx3 uint8."""
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


def sketchpad_value(seed: int, size: int = CANVAS) -> dict[str, Any]:
    """The value a gr.Sketchpad sends: {"background", "layers", "composite"}."""
    composite = draw_canvas(seed, size)
    layer = np.dstack([composite, np.full(composite.shape[:2], 255, np.uint8)])
    return {"background": None, "layers": [layer], "composite": composite}


def synthetic_embeddings(n: int, dim: int, seed: int, n_queries: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors shaped like image embeddings: (gallery (n, dim), queries (n_queries, dim)), float32.

    Plain clusters make nearest-neighbour search too easy (every method gets recall 1.0), so this mimics
    CLIP embeddings more closely: a power-law spectrum (low intrinsic dimension), coarse clusters with fine
    sub-clusters, and a shared direction (mean pairwise cosine ~0.35, top-10 neighbours at cosine ~0.93).
    Queries come from the same distribution and are not in the gallery.
    """
    rng = np.random.default_rng(seed)
    scale = (np.arange(1, dim + 1) ** -0.75).astype(np.float32)
    basis = np.linalg.qr(rng.standard_normal((dim, dim)))[0].astype(np.float32)

    def gaussian(m: int) -> np.ndarray:
        return (rng.standard_normal((m, dim)).astype(np.float32) * scale) @ basis

    common = rng.standard_normal(dim).astype(np.float32)
    common /= np.linalg.norm(common)
    n_coarse, n_fine = max(10, n // 1000), max(50, n // 20)
    coarse = gaussian(n_coarse)
    fine = coarse[rng.integers(0, n_coarse, n_fine)] + 0.6 * gaussian(n_fine)

    def draw(m: int) -> np.ndarray:
        x = fine[rng.integers(0, n_fine, m)] + 0.5 * gaussian(m)
        x = x / np.linalg.norm(x, axis=1, keepdims=True) + 0.7 * common
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    return draw(n), draw(n_queries)


def photo_files(folder: Path, n: int) -> None:
    """`n` generated 640x480 JPEG photos (colour gradients), for building real galleries."""
    rng = np.random.default_rng(2)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:480, 0:640]
    for i in range(n):
        a, b, c = rng.uniform(0.2, 1.0, 3)
        img = np.stack([(xx * a) % 256, (yy * b) % 256, ((xx + yy) * c) % 256], -1).astype(np.uint8)
        Image.fromarray(img).save(folder / f"photo{i:04d}.jpg", quality=90)


def synthetic_gallery(cache_dir: Path, encoder: Any, n: int, n_real: int = 8, index_cfg: Any = None) -> Any:
    """A gallery of `n` photos: `n_real` generated photos indexed for real (Gallery.build), the rest synthetic
    embedding-like vectors reusing the real entries' thumbnails, made with the public Gallery.create."""
    import dataclasses

    from zsdemo.gallery import Gallery
    from zsdemo.index import IndexConfig

    photos = cache_dir.parent / f"{cache_dir.name}-photos"
    photo_files(photos, n_real)
    real, _ = Gallery.build([photos], cache_dir, encoder)
    extra = max(0, n - len(real))
    vectors, _ = synthetic_embeddings(extra, real.embeddings.shape[1], seed=1)
    entries = list(real.entries)
    for i in range(extra):
        base = real.entries[i % len(real.entries)]
        name = f"synthetic/{i:06d}-{base.name if dataclasses.is_dataclass(base) else base['name']}"
        entries.append(dataclasses.replace(base, name=name) if dataclasses.is_dataclass(base) else {**base, "name": name})
    matrix = np.concatenate([real.embeddings, vectors]).astype(np.float32)
    return Gallery.create(cache_dir, entries, matrix, list(real.sources), encoder, index_cfg or IndexConfig())
