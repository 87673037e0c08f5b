"""Writing a generation: embeddings, index and manifest, switched live atomically; and cleaning up after."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from zsdemo.store.index import (
    INDEX_FILES,
    METRIC,
    AnnoySearcher,
    IndexConfig,
    build_index,
    choose_backend,
    estimate_exact_ms,
    extend_hnsw,
    iter_row_chunks,
    measure_p50_ms,
    open_searcher,
    probe_queries,
    significant,
    tune_ef,
    tune_search_k,
)
from zsdemo.store.layout import (
    CACHE_VERSION,
    RUN_PREFIX,
    PhotoEncoder,
    PhotoEntry,
    SkippedFile,
    cache_lock,
    write_atomic,
)

log = logging.getLogger(__name__)


def gather_rows(rows: list[tuple[PhotoEntry, int, int]], matrices: dict[int, np.ndarray], dim: int,
                 chunk: int = 16_384) -> Iterator[np.ndarray]:
    """The merged matrix in chunks: row r comes from matrices[source][row]. Never more than one chunk in RAM."""
    for start in range(0, len(rows), chunk):
        part = rows[start:start + chunk]
        out = np.empty((len(part), dim), dtype=np.float32)
        sources = np.fromiter((s for _, s, _ in part), dtype=np.int64, count=len(part))
        indices = np.fromiter((i for _, _, i in part), dtype=np.int64, count=len(part))
        for source in np.unique(sources):
            mask = sources == source
            out[mask] = matrices[int(source)][indices[mask]]
        yield out


def write_npy(path: Path, n: int, dim: int, chunks: Iterable[np.ndarray]) -> None:
    """Write an (n, dim) float32 .npy from row chunks, with plain writes (no memory map, no full copy)."""
    written = 0
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": "<f4", "fortran_order": False, "shape": (n, dim)})
        for part in chunks:
            part = np.ascontiguousarray(part, dtype=np.float32)
            if part.ndim != 2 or part.shape[1] != dim:
                raise ValueError(f"chunk of shape {part.shape} for a {dim}-d matrix")
            handle.write(part.tobytes())
            written += part.shape[0]
        handle.flush()
        os.fsync(handle.fileno())
    if written != n:
        raise ValueError(f"wrote {written} rows, expected {n}")


def write_generation(cache_dir: Path, entries: list[PhotoEntry], embeddings: np.ndarray | Iterable[np.ndarray],
                     sources: list[Path], encoder: PhotoEncoder, index_cfg: IndexConfig,
                     skipped: list[SkippedFile], extend_from: Path | None = None) -> dict[str, Any]:
    """Write a complete new generation, then switch CURRENT to it (the only step a reader can see).
    `embeddings`: the (N, D) matrix, or its rows as an iterable of chunks (streamed to disk as they come).
    `extend_from`: the previous generation's HNSW index, whose rows are this matrix's first rows: when this
    generation gets an HNSW index too, that one is extended by the new rows instead of built afresh.
    The index (exact, HNSW or Annoy) is chosen by a latency budget measured here (zsdemo.store.index.choose_backend);
    the approximate index's query setting (HNSW ef, Annoy search_k) is tuned on this gallery for the target recall. The caller holds the cache lock."""
    name = f"gen-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    generation = cache_dir / name
    generation.mkdir()
    dim = int(encoder.embed_dim)
    chunks = iter_row_chunks(embeddings) if isinstance(embeddings, np.ndarray) else embeddings
    if isinstance(embeddings, np.ndarray):
        dim = int(embeddings.shape[1])
    write_npy(generation / "embeddings.npy", len(entries), dim, chunks)
    written = [generation / "manifest.json"]
    backend = choose_backend(len(entries), dim, index_cfg)
    index_info: dict[str, Any] = {"index": backend, "n_trees": 0}
    if index_cfg.annoy_threshold is None and len(entries) >= index_cfg.min_annoy_items:
        # significant figures, not decimals: on a fast CPU a small gallery's estimate is well under 0.001 ms
        index_info["exact_ms_estimate"] = significant(estimate_exact_ms(len(entries), dim))
        index_info["latency_budget_ms"] = index_cfg.latency_budget_ms
    if backend in INDEX_FILES:
        index_info.update(_build_and_tune(backend, generation, dim, index_cfg, extend_from))
        written.append(generation / INDEX_FILES[backend])
    manifest = {
        "version": CACHE_VERSION,
        "complete": True,
        "generation": name,
        "fingerprint": encoder.fingerprint(),
        "encoder": encoder.describe(),
        "sources": [str(s) for s in sources],
        "dim": dim,
        "metric": METRIC,
        **index_info,
        "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "entries": [dict(e.__dict__) for e in entries],  # asdict() deep-copies: seconds at a million photos
        "skipped": [asdict(s) for s in skipped],
    }
    # one entry per line: readable, and compact enough at a million photos (indent=1 doubles the size)
    text = json.dumps({k: v for k, v in manifest.items() if k != "entries"}, indent=1)[:-2]
    text += ',\n "entries": [\n' + ",\n".join(json.dumps(e) for e in manifest["entries"]) + "\n ]\n}"
    write_atomic(generation / "manifest.json", text.encode())
    for path in written:
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    write_atomic(cache_dir / "CURRENT", name.encode())
    return manifest


def _build_and_tune(backend: str, generation: Path, dim: int, index_cfg: IndexConfig,
                    extend_from: Path | None = None) -> dict[str, Any]:
    """Build (or extend) the approximate index of a generation, tune its query setting for the target recall
    and measure its latency there: what the manifest records about it."""
    source = generation / "embeddings.npy"
    started = time.perf_counter()
    info: dict[str, Any] = {}
    added = _extend_previous(extend_from, source, generation / INDEX_FILES[backend], index_cfg) \
        if backend == "hnsw" and extend_from is not None else None
    if added is None:
        build_index(backend, source, generation / INDEX_FILES[backend], index_cfg)
    else:
        info["index_extended"] = {"from": extend_from.parent.name, "added_rows": added}
    info["index_build_s"] = round(time.perf_counter() - started, 2)
    searcher = open_searcher(backend, generation / INDEX_FILES[backend], dim, index_cfg)
    target = min(0.999, index_cfg.target_recall + index_cfg.tune_margin)
    try:
        if isinstance(searcher, AnnoySearcher):
            setting, recall = tune_search_k(searcher, source, target)
            info.update(n_trees=index_cfg.n_trees, annoy_build_s=info["index_build_s"], search_k=setting)
        else:
            setting, recall = tune_ef(searcher, source, target)
            info.update(hnsw_m=index_cfg.hnsw_m, hnsw_ef_construction=index_cfg.hnsw_ef_construction, ef=setting)
        searcher_at = replace(index_cfg, search_k=setting) if backend == "annoy" else replace(index_cfg, ef=setting)
        tuned = open_searcher(backend, generation / INDEX_FILES[backend], dim, searcher_at)
        info["measured_p50_ms"] = significant(measure_p50_ms(tuned, probe_queries(source, 100, seed=1)))
        tuned.unload()
    finally:
        searcher.unload()
    info["tuned_recall_at_10"] = round(recall, 4)
    log.info("%s index: %s %d for recall@10 %.3f, p50 %.3g ms (built in %.0f s)", backend, "search_k" if
             backend == "annoy" else "ef", setting, recall, info["measured_p50_ms"], info["index_build_s"])
    return info


def _extend_previous(base: Path, source: Path, path: Path, index_cfg: IndexConfig) -> int | None:
    """extend_hnsw, or None (with the reason in the log) when the previous index cannot be extended."""
    try:
        return extend_hnsw(base, source, path, index_cfg)
    except (ValueError, RuntimeError, OSError) as exc:
        log.warning("building the HNSW index afresh: the previous one cannot be extended (%s)", exc)
        return None


def remove_unfinished(cache_dir: Path) -> None:
    """Remove encoding runs and generations that CURRENT does not name (the caller holds the lock)."""
    try:
        live = (Path(cache_dir) / "CURRENT").read_text().strip()
    except OSError:
        live = None
    for child in [*Path(cache_dir).glob(f"{RUN_PREFIX}*"), *Path(cache_dir).glob("gen-*")]:
        if child.name != live:
            shutil.rmtree(child, ignore_errors=True)


def has_finished_shards(cache_dir: Path) -> bool:
    return any(path.name.endswith(".json") for path in Path(cache_dir).glob(f"{RUN_PREFIX}*/shard-*.json"))


def collect_garbage(cache_dir: Path, manifest: dict[str, Any]) -> None:
    """Remove old generations, half-written ones, finished or abandoned encoding runs and unreferenced
    thumbnails (the caller holds the lock, so no other build is in progress)."""
    for child in [*cache_dir.glob("gen-*"), *cache_dir.glob(f"{RUN_PREFIX}*")]:
        if child.name != manifest["generation"]:
            shutil.rmtree(child, ignore_errors=True)
    used = {e["thumb"] for e in manifest["entries"]}
    for thumb in (cache_dir / "thumbs").iterdir():
        if thumb.name not in used:
            thumb.unlink(missing_ok=True)


def ensure_index(cache_dir: Path, manifest: dict[str, Any], matrix: np.ndarray | Path, backend: str,
                 index_cfg: IndexConfig, locked: bool = False) -> Path:
    """The generation's index file for `backend`, built first when missing (a gallery built small, or opened with
    another threshold). Built under the cache's lock (`locked`: the caller holds it), into a temporary name, so
    a reader never sees half a file."""
    index_file = Path(cache_dir) / manifest["generation"] / INDEX_FILES[backend]
    if index_file.is_file():
        return index_file
    with contextlib.nullcontext() if locked else cache_lock(cache_dir):
        if not index_file.is_file():
            tmp = index_file.with_name(f".{index_file.name}.{uuid.uuid4().hex[:6]}.tmp")
            build_index(backend, matrix, tmp, index_cfg)
            os.replace(tmp, index_file)
    return index_file
