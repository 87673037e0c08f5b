"""Timing for the benchmarks: interleaved rounds, percentiles, table rows.

The compared things are timed round-robin, so a noisy neighbour on a shared machine slows all of them
alike, and every figure is printed next to a reference measured in the same rounds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 2, budget_s: float | None = None,
                min_repeats: int = 5) -> dict[str, np.ndarray]:
    """Time each function `repeats` times, round-robin (rotating the order), in milliseconds; with `budget_s`,
    stop once that many seconds have passed and at least `min_repeats` rounds are in (busy machines).
    The same timing loop the encoder uses to choose its query path at start."""
    from zsdemo.query.select import time_interleaved

    times = time_interleaved(fns, repeats, warmup=warmup, budget_s=budget_s, min_repeats=min_repeats)
    return {name: np.asarray(t) for name, t in times.items()}


def timed_each(fn: Callable[[Any], Any], items: Iterable[Any], budget_s: float | None = None,
               min_items: int = 20) -> tuple[np.ndarray, list[Any]]:
    """Call `fn(item)` for each item, one after another: (milliseconds per call, results). With `budget_s`,
    stop once that many seconds have passed and at least `min_items` calls are in."""
    started = time.perf_counter()
    times, results = [], []
    for item in items:
        t0 = time.perf_counter()
        results.append(fn(item))
        times.append((time.perf_counter() - t0) * 1000.0)
        if budget_s is not None and len(times) >= min_items and time.perf_counter() - started > budget_s:
            break
    return np.asarray(times), results


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
