"""Nearest-neighbour search over L2-normalised embeddings: exact (torch/numpy) and approximate (HNSW via
Voyager, or Annoy).

Exact search is the oracle and the default for small galleries. Which one a gallery uses is decided by
a latency budget, measured on the machine that builds it (`choose_backend`): exact search streams the
whole matrix per query, so its cost is linear in the gallery size and set by memory bandwidth. Once it
would exceed `IndexConfig.latency_budget_ms`, an approximate index takes over: `IndexConfig.approximate`,
HNSW by default. The approximate index is tuned per gallery at build time for recall@10 >= `target_recall`
against exact search (`tune_search_k` for Annoy's `search_k`, `tune_ef` for HNSW's `ef`), its latency at
that setting is measured on probe queries, and all of it is recorded in the manifest.

Why HNSW by default: on 512-d CLIP-like vectors Annoy needs a very large `search_k` for recall@10 >= 0.95
(its trees were made for fewer dimensions), so past a few hundred thousand rows it costs about as much as
the exact search it replaces; an HNSW graph reaches the same recall visiting a few thousand vectors.
What Annoy does well, and what it is kept for: its index is a memory-mapped file, so every process serving
a cache shares one copy of it through the OS page cache, and its on-disk build needs almost no anonymous
memory. An HNSW index (Voyager) is loaded into each process's own memory. Choose Annoy
(`IndexConfig(approximate="annoy")`) where several processes serve one large cache on little RAM; it is
also the fallback when Voyager is not installed.

Everything here works on memory-mapped embeddings (`np.load(..., mmap_mode="r")`): nothing copies the
whole matrix; both indexes are fed from the .npy file in chunks and written under a temporary name, then
renamed, so an index file exists only when complete.
"""

from __future__ import annotations

import functools
import logging
import os
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from annoy import AnnoyIndex

log = logging.getLogger(__name__)

METRIC = "angular"
DEFAULT_SEARCH_K = 20_000  # used when a gallery has no tuned value (Annoy's own default, n_trees * k, is poor)
DEFAULT_EF = 64  # used when an HNSW gallery has no tuned value
EF_LADDER = (10, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
BACKENDS = ("exact", "annoy", "hnsw")
SEARCH_K_LADDER = (1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000)
CHUNK_ROWS = 65_536  # rows per chunk when streaming a matrix from disk (128 MiB at 512-d float32)
HNSW_ADD_ROWS = 8_192  # rows per Voyager add_items call: its build buffers grow with the call's size


@dataclass(frozen=True)
class IndexConfig:
    n_trees: int = 50
    search_k: int | None = None  # None: the gallery's tuned value (manifest), else DEFAULT_SEARCH_K
    annoy_threshold: int | None = None  # set: galleries at least this big use Annoy; None: latency budget
    latency_budget_ms: float = 5.0  # exact search is kept while its estimated cost per query stays below this
    min_annoy_items: int = 20_000  # below this, exact search always (Annoy is no faster there, measured)
    target_recall: float = 0.95  # recall@10 the tuned index must reach for real queries
    # the probe queries (perturbed gallery rows) are easier than real ones: tuning aims this much higher
    tune_margin: float = 0.03
    seed: int = 0
    approximate: str = "hnsw"  # the index used past the budget: "hnsw" (Voyager) or "annoy"
    hnsw_m: int = 16  # HNSW graph degree (links per node on the upper layers, 2x on the base layer)
    hnsw_ef_construction: int = 100  # candidates kept while inserting (build time against graph quality)
    ef: int | None = None  # HNSW query candidates; None: the gallery's tuned value (manifest), else DEFAULT_EF
    build_threads: int = -1  # threads for building either index; -1: all cores


# ---- exact search -------------------------------------------------------------------------------
def _as_tensor(array: np.ndarray) -> torch.Tensor:
    """A zero-copy torch view of a C-contiguous float32 array, read-only ones (np.load mmap_mode="r") too.
    torch warns that it cannot protect a read-only buffer from writes; nothing here writes to it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


def exact_search(embeddings: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k rows of `embeddings` by cosine similarity to `query` (both L2-normalised): (ids, scores)."""
    n = embeddings.shape[0]
    k = min(k, n)
    if k <= 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    query = np.ascontiguousarray(query, dtype=np.float32)
    if embeddings.dtype == np.float32 and embeddings.flags.c_contiguous:
        # torch, not numpy, for the product: numpy's OpenBLAS keeps its own worker threads spinning after each
        # call, and they fight torch's OpenMP threads for the same 2 cores. Measured (the old in-package bench's
        # breakdown, 2 cores): a 10k-row numpy search between encoder calls doubled the encoder's latency.
        # Read-only memory maps go through the same zero-copy view (no copy of the matrix).
        scores = torch.mv(_as_tensor(embeddings), torch.from_numpy(query)).numpy()
    else:
        scores = embeddings @ query
    top = np.argpartition(-scores, k - 1)[:k] if k < n else np.arange(n)
    order = top[np.argsort(-scores[top], kind="stable")]
    return order.astype(np.int64), scores[order].astype(np.float32)


def iter_row_chunks(source: np.ndarray | Path, chunk_rows: int = CHUNK_ROWS) -> Iterator[np.ndarray]:
    """The rows of a matrix in chunks. A .npy path is read with plain file reads, not a memory map, so a
    pass over a large file leaves neither anonymous nor mapped pages behind in this process."""
    if isinstance(source, np.ndarray):
        for start in range(0, source.shape[0], chunk_rows):
            yield np.ascontiguousarray(source[start:start + chunk_rows], dtype=np.float32)
        return
    with open(source, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(handle)
        if fortran or dtype != np.float32 or len(shape) != 2:
            raise ValueError(f"{source}: expected a C-order float32 matrix, found {dtype} {shape}")
        n, dim = shape
        for start in range(0, n, chunk_rows):
            count = min(chunk_rows, n - start)
            yield np.fromfile(handle, dtype=np.float32, count=count * dim).reshape(count, dim)


def exact_search_many(source: np.ndarray | Path, queries: np.ndarray, k: int,
                      chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
    """Exact top-k ids for many queries in one streaming pass over the matrix (recall oracle): (Q, k)."""
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    best_scores = torch.full((q.shape[0], 0), -2.0)
    best_ids = torch.zeros((q.shape[0], 0), dtype=torch.int64)
    offset = 0
    for chunk in iter_row_chunks(source, chunk_rows):
        scores = q @ _as_tensor(chunk).T
        ids = torch.arange(offset, offset + chunk.shape[0]).expand(q.shape[0], -1)
        best_scores = torch.cat([best_scores, scores], 1)
        best_ids = torch.cat([best_ids, ids], 1)
        top = torch.topk(best_scores, min(k, best_scores.shape[1]), dim=1)
        best_scores, best_ids = top.values, torch.gather(best_ids, 1, top.indices)
        offset += chunk.shape[0]
    return best_ids.numpy()


# ---- choosing the index ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def exact_us_per_row(dim: int) -> float:
    """Measured cost of exact search on this machine, in microseconds per gallery row (min of repeats on a
    64 MiB matrix, larger than the CPU caches, so it is memory-bound like a real gallery). Cached per process."""
    rows = (64 << 20) // (4 * dim)
    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((rows, dim), dtype=np.float32)
    query = matrix[0].copy()
    exact_search(matrix, query, 10)  # warm up
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        exact_search(matrix, query, 10)
        best = min(best, time.perf_counter() - started)
    return best * 1e6 / rows


def estimate_exact_ms(n: int, dim: int, us_per_row: float | None = None) -> float:
    """Estimated exact-search latency for a gallery of `n` rows (linear in n: one pass over the matrix)."""
    return n * (exact_us_per_row(dim) if us_per_row is None else us_per_row) / 1000.0


def hnsw_available() -> bool:
    """Whether Voyager (the HNSW library) is importable here."""
    try:
        import voyager  # noqa: F401
    except ImportError:
        return False
    return True


def approximate_backend(cfg: IndexConfig) -> str:
    """The approximate index a gallery past the budget gets: `cfg.approximate`, or Annoy when HNSW is asked
    for but Voyager is missing (with a warning)."""
    if cfg.approximate not in ("hnsw", "annoy"):
        raise ValueError(f"unknown approximate index {cfg.approximate!r}: use 'hnsw' or 'annoy'")
    if cfg.approximate == "hnsw" and not hnsw_available():
        log.warning("voyager is not installed: large galleries fall back to Annoy (pip install voyager)")
        return "annoy"
    return cfg.approximate


def choose_backend(n: int, dim: int, cfg: IndexConfig, us_per_row: float | None = None) -> str:
    """'exact', 'hnsw' or 'annoy' for a gallery of `n` rows: an explicit `annoy_threshold` decides alone
    (Annoy at or above it); otherwise exact search while its estimated cost per query stays within the
    latency budget (or the gallery is under `min_annoy_items`), the approximate index past it."""
    if cfg.annoy_threshold is not None:
        return "annoy" if n >= cfg.annoy_threshold else "exact"
    if n < cfg.min_annoy_items:
        return "exact"
    if estimate_exact_ms(n, dim, us_per_row) <= cfg.latency_budget_ms:
        return "exact"
    return approximate_backend(cfg)


def significant(value: float, digits: int = 3) -> float:
    """`value` rounded to `digits` significant figures (a tiny but real measurement never becomes 0)."""
    return float(f"{value:.{digits}g}")


# ---- Annoy ------------------------------------------------------------------------------------------
def build_annoy(embeddings: np.ndarray | Path, path: Path, cfg: IndexConfig) -> None:
    """Build an Annoy index over the rows of `embeddings` (an array or a .npy file) at `path`.

    Annoy's on-disk build writes the index into the file as it goes instead of building it in RAM and
    saving a copy; the rows are fed from the file in chunks. The file appears under its name only when
    complete (built under a temporary name, then renamed)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    index: AnnoyIndex | None = None
    try:
        for chunk in iter_row_chunks(embeddings):
            if index is None:
                index = AnnoyIndex(chunk.shape[1], METRIC)
                index.set_seed(cfg.seed)
                index.on_disk_build(str(tmp))
                row = 0
            for vector in chunk:
                index.add_item(row, vector.tolist())  # a list of floats converts faster than numpy scalars
                row += 1
        if index is None:
            raise ValueError("cannot build an Annoy index over no rows")
        index.build(cfg.n_trees, n_jobs=cfg.build_threads)
        index.unload()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class AnnoySearcher:
    """A saved Annoy index, memory-mapped (processes serving the same file share its pages through the OS
    page cache); queries are thread-safe (Annoy releases the GIL, read-only)."""

    def __init__(self, path: Path, dim: int, cfg: IndexConfig, search_k: int | None = None) -> None:
        self.cfg = cfg
        # explicit config > the gallery's tuned value > the default
        self.search_k = cfg.search_k or search_k or DEFAULT_SEARCH_K
        self.index = AnnoyIndex(dim, METRIC)
        self.index.load(str(path))

    def __len__(self) -> int:
        return self.index.get_n_items()

    def search(self, query: np.ndarray, k: int, search_k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        ids, dists = self.index.get_nns_by_vector(np.asarray(query, np.float32).tolist(), k,
                                                  search_k=max(search_k or self.search_k, k * self.cfg.n_trees),
                                                  include_distances=True)
        dists = np.asarray(dists, dtype=np.float32)
        return np.asarray(ids, dtype=np.int64), 1.0 - dists * dists / 2.0

    def unload(self) -> None:
        self.index.unload()


def probe_queries(source: np.ndarray | Path, n_queries: int, seed: int = 0, cosine: float = 0.8) -> np.ndarray:
    """Queries near the gallery but not in it: random rows pushed off by Gaussian noise to about `cosine`
    similarity with their source row (what a photo query or a good sketch looks like)."""
    n = source.shape[0] if isinstance(source, np.ndarray) else np.load(source, mmap_mode="r").shape[0]
    rng = np.random.default_rng(seed)
    wanted = set(rng.choice(n, size=min(n_queries, n), replace=False).tolist())
    rows, offset = [], 0
    for chunk in iter_row_chunks(source):
        rows += [chunk[i - offset] for i in sorted(wanted) if offset <= i < offset + chunk.shape[0]]
        offset += chunk.shape[0]
    base = np.stack(rows)
    dim = base.shape[1]
    sigma = np.tan(np.arccos(cosine)) / np.sqrt(dim)
    q = base + sigma * rng.standard_normal(base.shape).astype(np.float32)
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def recall_at_k(searcher: AnnoySearcher | HnswSearcher, queries: np.ndarray, truth: np.ndarray, search_k: int,
                k: int = 10) -> float:
    """recall@k against `truth` at one setting (Annoy's search_k, or HNSW's ef)."""
    hits = 0
    for q, t in zip(queries, truth, strict=True):
        hits += len(set(searcher.search(q, k, search_k)[0].tolist()) & set(t.tolist()))
    return hits / (k * len(queries))


def tune_search_k(searcher: AnnoySearcher, source: np.ndarray | Path, target: float = 0.95, n_queries: int = 100,
                  k: int = 10, seed: int = 0) -> tuple[int, float]:
    """The smallest search_k on SEARCH_K_LADDER whose recall@k against exact search reaches `target` on
    probe queries: (search_k, recall). When none does, the largest tried, with a warning."""
    n = len(searcher)
    queries = probe_queries(source, n_queries, seed)
    truth = exact_search_many(source, queries, k)
    ladder = [s for s in SEARCH_K_LADDER if s < n * searcher.cfg.n_trees] or [SEARCH_K_LADDER[0]]
    recall = 0.0
    for search_k in ladder:
        recall = recall_at_k(searcher, queries, truth, search_k, k)
        if recall >= target:
            return search_k, recall
    log.warning("Annoy reaches recall@%d %.3f at most (search_k=%d); more trees would help", k, recall, ladder[-1])
    return ladder[-1], recall


def measure_p50_ms(searcher: AnnoySearcher | HnswSearcher, queries: np.ndarray, k: int = 10) -> float:
    """Median latency of one query (one thread) on this machine, in milliseconds, after one warm-up pass."""
    for q in queries[:10]:
        searcher.search(q, k)
    latencies = []
    for q in queries:
        started = time.perf_counter()
        searcher.search(q, k)
        latencies.append(time.perf_counter() - started)
    return float(np.median(latencies)) * 1000.0


# ---- HNSW (Voyager) ---------------------------------------------------------------------------------
def build_hnsw(embeddings: np.ndarray | Path, path: Path, cfg: IndexConfig) -> None:
    """Build an HNSW index (Voyager, inner product on L2-normalised rows) over `embeddings` (an array or a
    .npy file) and save it at `path`. Row i gets id i. The graph is built in memory (about the matrix's size
    plus 8 * hnsw_m bytes a row), sized for all rows up front so it never reallocates; the rows are fed
    from the file in chunks. Written under a temporary name, then renamed."""
    from voyager import Index, Space, StorageDataType

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    n = source_rows(embeddings)
    if n == 0:
        raise ValueError("cannot build an HNSW index over no rows")
    index: Any = None
    try:
        row = 0
        for chunk in iter_row_chunks(embeddings, HNSW_ADD_ROWS):
            if index is None:
                index = Index(Space.InnerProduct, num_dimensions=int(chunk.shape[1]), M=cfg.hnsw_m,
                              ef_construction=cfg.hnsw_ef_construction, random_seed=cfg.seed + 1, max_elements=n,
                              storage_data_type=StorageDataType.Float32)
            index.add_items(chunk, ids=list(range(row, row + chunk.shape[0])), num_threads=cfg.build_threads)
            row += chunk.shape[0]
        index.save(str(tmp))
        del index
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def extend_hnsw(base: Path, embeddings: Path, path: Path, cfg: IndexConfig) -> int:
    """Write at `path` the HNSW index `base` extended by the rows of `embeddings` past the ones it holds: the
    rows it holds must be the matrix's first rows, unchanged (the builder keeps them first, in their order).
    HNSW is built by insertion anyway, so the graph is what a full build inserting the new rows last makes,
    at the cost of the new rows only. Returns how many rows were added. ValueError when `base` does not fit
    (other dimension, graph degree or efConstruction, more rows than the matrix); the caller builds afresh."""
    from voyager import Index

    path = Path(path)
    n = source_rows(embeddings)
    index: Any = Index.load(str(base))
    start = int(index.num_elements)
    if (int(index.M), int(index.ef_construction)) != (cfg.hnsw_m, cfg.hnsw_ef_construction):
        raise ValueError(f"index built with M {index.M}, efConstruction {index.ef_construction}; "
                         f"this build asks for {cfg.hnsw_m}, {cfg.hnsw_ef_construction}")
    matrix = np.load(embeddings, mmap_mode="r")
    if int(index.num_dimensions) != int(matrix.shape[1]) or not 0 < start <= n:
        raise ValueError(f"index of {start} {index.num_dimensions}-d rows does not prefix this {n}-row matrix")
    if sorted(index.ids) != list(range(start)):
        raise ValueError("index ids are not the rows 0..n-1")
    sample = np.unique(np.linspace(0, start - 1, 16).astype(np.int64))
    if not np.allclose(np.asarray(index.get_vectors(sample.tolist())), matrix[sample], atol=1e-5):
        raise ValueError("the index's rows differ from the matrix's first rows")
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        index.resize(n)
        for row in range(start, n, HNSW_ADD_ROWS):  # only the new rows are read: a writable copy of each chunk
            end = min(n, row + HNSW_ADD_ROWS)
            index.add_items(np.array(matrix[row:end], dtype=np.float32), ids=list(range(row, end)),
                            num_threads=cfg.build_threads)
        index.save(str(tmp))
        del index, matrix
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return n - start


def source_rows(source: np.ndarray | Path) -> int:
    """Number of rows of a matrix or a .npy file (reads only the header)."""
    return int(source.shape[0]) if isinstance(source, np.ndarray) else int(np.load(source, mmap_mode="r").shape[0])


class HnswSearcher:
    """A saved HNSW index (Voyager), loaded into this process's memory. Queries from several threads at once
    are safe (read-only; Voyager releases the GIL while searching)."""

    def __init__(self, path: Path, cfg: IndexConfig, ef: int | None = None) -> None:
        from voyager import Index

        self.cfg = cfg
        # explicit config > the gallery's tuned value > the default
        self.ef = cfg.ef or ef or DEFAULT_EF
        self.index = Index.load(str(path))

    def __len__(self) -> int:
        return int(self.index.num_elements)

    def search(self, query: np.ndarray, k: int, ef: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, len(self))
        if k <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        ids, dists = self.index.query(np.ascontiguousarray(query, dtype=np.float32), k=k, num_threads=1,
                                      query_ef=max(ef or self.ef, k))
        return ids.astype(np.int64), (1.0 - dists).astype(np.float32)  # inner-product distance is 1 - cos

    def unload(self) -> None:
        self.index = None


def tune_ef(searcher: HnswSearcher, source: np.ndarray | Path, target: float = 0.95, n_queries: int = 100,
            k: int = 10, seed: int = 0) -> tuple[int, float]:
    """The smallest ef on EF_LADDER whose recall@k against exact search reaches `target` on probe queries:
    (ef, recall). When none does, the largest, with a warning (a larger hnsw_ef_construction or hnsw_m helps)."""
    queries = probe_queries(source, n_queries, seed)
    truth = exact_search_many(source, queries, k)
    recall = 0.0
    for ef in [e for e in EF_LADDER if e >= k] or [k]:
        recall = recall_at_k(searcher, queries, truth, ef, k)
        if recall >= target:
            return ef, recall
    log.warning("HNSW reaches recall@%d %.3f at most (ef=%d)", k, recall, EF_LADDER[-1])
    return EF_LADDER[-1], recall


def open_searcher(backend: str, path: Path, dim: int, cfg: IndexConfig,
                  tuned: int | None = None) -> AnnoySearcher | HnswSearcher:
    """The searcher for a saved index of `backend` ('annoy' or 'hnsw'), with its tuned setting."""
    if backend == "annoy":
        return AnnoySearcher(path, dim, cfg, tuned)
    if backend == "hnsw":
        return HnswSearcher(path, cfg, tuned)
    raise ValueError(f"no index file for backend {backend!r}")


def build_index(backend: str, embeddings: np.ndarray | Path, path: Path, cfg: IndexConfig) -> None:
    """Build the index file of `backend` ('annoy' or 'hnsw')."""
    (build_annoy if backend == "annoy" else build_hnsw)(embeddings, path, cfg)


INDEX_FILES = {"annoy": "index.ann", "hnsw": "index.voy"}
