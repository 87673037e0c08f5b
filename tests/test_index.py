"""Annoy against the exact-search oracle, on a real index file."""

from __future__ import annotations

import numpy as np
import pytest

from zsdemo.index import AnnoySearcher, IndexConfig, build_annoy, exact_search


def clustered(n: int, dim: int = 64, clusters: int = 20, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + 0.5 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_exact_search_matches_a_full_sort():
    emb = clustered(500)
    q = emb[17]
    ids, scores = exact_search(emb, q, 10)
    full = np.argsort(-(emb @ q), kind="stable")[:10]
    assert ids[0] == 17 and scores[0] == pytest.approx(1.0, abs=1e-5)
    assert list(ids) == list(full)
    assert np.all(np.diff(scores) <= 0)


def test_exact_search_edge_cases():
    emb = clustered(5)
    assert len(exact_search(emb, emb[0], 50)[0]) == 5
    assert len(exact_search(emb[:0], emb[0], 3)[0]) == 0


def test_annoy_recall_and_scores_against_exact(tmp_path):
    emb = clustered(3000)
    cfg = IndexConfig(n_trees=20, search_k=5000)
    build_annoy(emb, tmp_path / "i.ann", cfg)
    searcher = AnnoySearcher(tmp_path / "i.ann", emb.shape[1], cfg)
    assert len(searcher) == 3000
    rng = np.random.default_rng(1)
    recalls = []
    for qi in rng.choice(3000, 40, replace=False):
        q = emb[qi]
        a_ids, a_scores = searcher.search(q, 10)
        e_ids, _ = exact_search(emb, q, 10)
        recalls.append(len(set(a_ids) & set(e_ids)) / 10)
        # Annoy's angular distance converts back to the exact cosine
        assert np.allclose(a_scores, emb[a_ids] @ q, atol=1e-4)
    assert np.mean(recalls) >= 0.9


def test_default_search_k_matters(tmp_path):
    """Annoy's own default search_k (n_trees * k) misses neighbours; ours must not be below it."""
    cfg = IndexConfig()
    assert cfg.search_k >= cfg.n_trees * 100
