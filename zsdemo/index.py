"""Nearest-neighbour search over L2-normalised embeddings: exact (numpy) and approximate (Annoy).

Exact search is the oracle and the default for small galleries: on 2 CPU cores it costs a few
milliseconds up to ~100k x 512 and is always right. Annoy (angular metric; cos = 1 - d^2 / 2) takes
over above `IndexConfig.annoy_threshold`, where its sub-linear query time starts to pay. The
threshold and search_k are set from `python -m zsdemo bench` (see README, "What was measured").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from annoy import AnnoyIndex

METRIC = "angular"


@dataclass(frozen=True)
class IndexConfig:
    n_trees: int = 50
    search_k: int = 20_000  # nodes inspected per query; Annoy's default (n_trees * k) gives poor recall
    annoy_threshold: int = 100_000  # galleries at least this big are searched with Annoy
    seed: int = 0


def exact_search(embeddings: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k rows of `embeddings` by cosine similarity to `query` (both L2-normalised): (ids, scores)."""
    n = embeddings.shape[0]
    k = min(k, n)
    if k <= 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    query = np.ascontiguousarray(query, dtype=np.float32)
    if embeddings.dtype == np.float32 and embeddings.flags.c_contiguous and embeddings.flags.writeable:
        # torch, not numpy, for the product: numpy's OpenBLAS keeps its own worker threads spinning after each
        # call, and they fight torch's OpenMP threads for the same 2 cores. Measured (`python -m zsdemo bench`
        # breakdown, 2 cores): a 10k-row numpy search between encoder calls doubled the encoder's latency.
        scores = torch.mv(torch.from_numpy(embeddings), torch.from_numpy(query)).numpy()
    else:
        scores = embeddings @ query
    top = np.argpartition(-scores, k - 1)[:k] if k < n else np.arange(n)
    order = top[np.argsort(-scores[top], kind="stable")]
    return order.astype(np.int64), scores[order].astype(np.float32)


def build_annoy(embeddings: np.ndarray, path: Path, cfg: IndexConfig) -> None:
    """Build an Annoy index over the rows of `embeddings` and save it to `path`."""
    index = AnnoyIndex(embeddings.shape[1], METRIC)
    index.set_seed(cfg.seed)
    for i, vector in enumerate(embeddings):
        index.add_item(i, vector)
    index.build(cfg.n_trees, n_jobs=-1)
    index.save(str(path))
    index.unload()


class AnnoySearcher:
    """A saved Annoy index, memory-mapped; queries are thread-safe (Annoy releases the GIL, read-only)."""

    def __init__(self, path: Path, dim: int, cfg: IndexConfig) -> None:
        self.cfg = cfg
        self.index = AnnoyIndex(dim, METRIC)
        self.index.load(str(path))

    def __len__(self) -> int:
        return self.index.get_n_items()

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        ids, dists = self.index.get_nns_by_vector(query.tolist(), k, search_k=max(self.cfg.search_k, k * self.cfg.n_trees),
                                                  include_distances=True)
        dists = np.asarray(dists, dtype=np.float32)
        return np.asarray(ids, dtype=np.int64), 1.0 - dists * dists / 2.0
