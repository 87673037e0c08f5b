"""Annoy against the exact-search oracle, on a real index file."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from zsdemo.store.index import (
    DEFAULT_SEARCH_K,
    SEARCH_K_LADDER,
    AnnoySearcher,
    IndexConfig,
    _as_tensor,
    build_annoy,
    choose_backend,
    estimate_exact_ms,
    exact_search,
    exact_search_many,
    exact_us_per_row,
    iter_row_chunks,
    probe_queries,
    recall_at_k,
    tune_search_k,
)


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


def test_default_search_k_is_tuned_and_never_below_annoys_default(tmp_path):
    """Annoy's own default search_k (n_trees * k) misses neighbours: the searcher never goes below it, uses the
    gallery's tuned value when there is one, and an explicit config value over both."""
    emb = clustered(2000)
    cfg = IndexConfig(n_trees=10)
    build_annoy(emb, tmp_path / "i.ann", cfg)
    assert AnnoySearcher(tmp_path / "i.ann", 64, cfg).search_k == DEFAULT_SEARCH_K >= cfg.n_trees * 100
    assert AnnoySearcher(tmp_path / "i.ann", 64, cfg, search_k=3000).search_k == 3000
    assert AnnoySearcher(tmp_path / "i.ann", 64, replace(cfg, search_k=777), search_k=3000).search_k == 777


# ---- memory-mapped matrices, streamed builds ---------------------------------------------------------------
def test_exact_search_on_a_read_only_memory_map_matches_and_does_not_copy(tmp_path):
    emb = clustered(4000)
    np.save(tmp_path / "e.npy", emb)
    mapped = np.load(tmp_path / "e.npy", mmap_mode="r")
    assert not mapped.flags.writeable
    q = clustered(1, seed=5)[0]
    ids, scores = exact_search(mapped, q, 10)
    ref_ids, ref_scores = exact_search(emb, q, 10)
    assert list(ids) == list(ref_ids) and np.allclose(scores, ref_scores, atol=1e-6)
    # the torch view shares the map's memory: no copy of the matrix is made
    assert _as_tensor(mapped).data_ptr() == mapped.ctypes.data


def test_streamed_chunks_and_many_query_oracle(tmp_path):
    emb = clustered(1000)
    np.save(tmp_path / "e.npy", emb)
    chunks = list(iter_row_chunks(tmp_path / "e.npy", chunk_rows=300))
    assert [c.shape[0] for c in chunks] == [300, 300, 300, 100]
    assert np.array_equal(np.concatenate(chunks), emb)
    queries = clustered(7, seed=9)
    truth = exact_search_many(tmp_path / "e.npy", queries, 10, chunk_rows=128)
    for q, t in zip(queries, truth, strict=True):
        assert list(t) == list(exact_search(emb, q, 10)[0])


def test_annoy_on_disk_build_from_a_file_equals_one_from_memory(tmp_path):
    emb = clustered(1500)
    np.save(tmp_path / "e.npy", emb)
    cfg = IndexConfig(n_trees=8, search_k=4000)
    build_annoy(tmp_path / "e.npy", tmp_path / "file.ann", cfg)
    build_annoy(emb, tmp_path / "mem.ann", cfg)
    # (not byte-identical: Annoy builds trees on several threads) - same items, same vectors, same quality
    from_file, from_memory = (AnnoySearcher(tmp_path / name, 64, cfg) for name in ("file.ann", "mem.ann"))
    assert len(from_file) == len(from_memory) == 1500
    assert np.allclose(from_file.index.get_item_vector(1234), emb[1234], atol=1e-6)
    queries = probe_queries(emb, 30, seed=4)
    truth = exact_search_many(emb, queries, 10)
    assert recall_at_k(from_file, queries, truth, 4000) >= 0.9 and recall_at_k(from_memory, queries, truth, 4000) >= 0.9
    assert not list(tmp_path.glob(".*.tmp")), "no temporary file left behind"


def test_tune_search_k_reaches_the_target_recall(tmp_path):
    emb = clustered(5000, clusters=200)
    np.save(tmp_path / "e.npy", emb)
    cfg = IndexConfig(n_trees=5)
    build_annoy(tmp_path / "e.npy", tmp_path / "i.ann", cfg)
    searcher = AnnoySearcher(tmp_path / "i.ann", 64, cfg)
    search_k, recall = tune_search_k(searcher, tmp_path / "e.npy", target=0.95, n_queries=40)
    assert recall >= 0.95 and search_k in SEARCH_K_LADDER
    # held-out queries confirm it: recall measured independently of the tuning queries
    queries = probe_queries(emb, 40, seed=123)
    truth = exact_search_many(emb, queries, 10)
    assert recall_at_k(searcher, queries, truth, search_k) >= 0.9
    smaller = [s for s in SEARCH_K_LADDER if s < search_k]
    if smaller:  # the smallest search_k that reaches the target: the one below it does not
        assert recall_at_k(searcher, probe_queries(tmp_path / "e.npy", 40, 0), exact_search_many(
            emb, probe_queries(tmp_path / "e.npy", 40, 0), 10), smaller[-1]) < 0.95


# ---- the index is chosen by a latency budget -------------------------------------------------------------
@pytest.mark.parametrize(("us_per_row", "n", "expected"), [
    (0.32, 100_000, "hnsw"),  # AVX2 EPYC: 32 ms for 100k exceeds a 5 ms budget
    (0.32, 15_000, "exact"),  # below min_annoy_items: always exact
    (0.32, 20_000, "hnsw"),  # 6.4 ms > 5 ms
    (0.07, 50_000, "exact"),  # AVX-512 Xeon: 3.5 ms, within budget
    (0.07, 100_000, "hnsw"),  # 7 ms
])
def test_backend_is_chosen_by_the_latency_budget(us_per_row, n, expected):
    assert choose_backend(n, 512, IndexConfig(), us_per_row=us_per_row) == expected
    assert estimate_exact_ms(n, 512, us_per_row) == pytest.approx(n * us_per_row / 1000)


def test_explicit_threshold_and_budget_override_the_estimate():
    assert choose_backend(50, 512, IndexConfig(annoy_threshold=10), us_per_row=0.0) == "annoy"
    assert choose_backend(10**6, 512, IndexConfig(annoy_threshold=10**7), us_per_row=10.0) == "exact"
    assert choose_backend(100_000, 512, IndexConfig(latency_budget_ms=50), us_per_row=0.32) == "exact"


def test_exact_cost_is_measured_on_this_machine():
    us = exact_us_per_row(512)
    assert 0.001 < us < 50, us  # a real measurement, cached for the process
    assert exact_us_per_row(512) == us


# ---- HNSW (Voyager) ----------------------------------------------------------------------------------------
def test_hnsw_recall_and_scores_against_exact(tmp_path):
    from zsdemo.store.index import HnswSearcher, build_hnsw, tune_ef

    emb = clustered(3000, clusters=100)
    np.save(tmp_path / "e.npy", emb)
    cfg = IndexConfig(build_threads=1)
    build_hnsw(tmp_path / "e.npy", tmp_path / "i.voy", cfg)
    assert not list(tmp_path.glob(".*.tmp")), "no temporary file left behind"
    searcher = HnswSearcher(tmp_path / "i.voy", cfg)
    assert len(searcher) == 3000
    ef, tuned = tune_ef(searcher, tmp_path / "e.npy", target=0.95, n_queries=40)
    assert tuned >= 0.95
    queries = probe_queries(emb, 40, seed=7)  # held-out queries, not the tuning ones
    truth = exact_search_many(emb, queries, 10)
    assert recall_at_k(searcher, queries, truth, ef) >= 0.9
    ids, scores = searcher.search(queries[0], 10)
    assert np.allclose(scores, emb[ids] @ queries[0], atol=1e-4), "distances convert back to the exact cosine"
    assert len(searcher.search(queries[0], 5000)[0]) == 3000


def test_an_extended_hnsw_index_finds_old_and_new_rows_like_exact_search(tmp_path):
    from zsdemo.store.index import HnswSearcher, build_hnsw, extend_hnsw

    emb = clustered(3000, clusters=100)
    np.save(tmp_path / "old.npy", emb[:2400])
    np.save(tmp_path / "new.npy", emb)
    cfg = IndexConfig(build_threads=1)
    build_hnsw(tmp_path / "old.npy", tmp_path / "old.voy", cfg)
    assert extend_hnsw(tmp_path / "old.voy", tmp_path / "new.npy", tmp_path / "new.voy", cfg) == 600
    assert not list(tmp_path.glob(".*.tmp")), "no temporary file left behind"
    assert len(HnswSearcher(tmp_path / "old.voy", cfg)) == 2400, "the previous index is left as it was"
    extended = HnswSearcher(tmp_path / "new.voy", cfg)
    assert len(extended) == 3000
    queries = probe_queries(emb, 60, seed=7)
    truth = exact_search_many(emb, queries, 10)
    assert recall_at_k(extended, queries, truth, 64) >= 0.95
    for row in (0, 2399, 2400, 2999):  # old rows and new rows keep their ids
        assert extended.search(emb[row], 1)[0][0] == row


def test_an_hnsw_index_that_does_not_prefix_the_matrix_is_not_extended(tmp_path):
    from zsdemo.store.index import build_hnsw, extend_hnsw

    emb = clustered(600, clusters=10)
    np.save(tmp_path / "old.npy", emb[:500])
    build_hnsw(tmp_path / "old.npy", tmp_path / "old.voy", IndexConfig(build_threads=1))
    shuffled = emb[np.random.default_rng(0).permutation(600)]
    np.save(tmp_path / "shuffled.npy", shuffled)
    with pytest.raises(ValueError, match="differ"):
        extend_hnsw(tmp_path / "old.voy", tmp_path / "shuffled.npy", tmp_path / "x.voy", IndexConfig(build_threads=1))
    np.save(tmp_path / "new.npy", emb)
    with pytest.raises(ValueError, match="efConstruction"):
        extend_hnsw(tmp_path / "old.voy", tmp_path / "new.npy", tmp_path / "x.voy", IndexConfig(hnsw_m=8))
    np.save(tmp_path / "fewer.npy", emb[:400])
    with pytest.raises(ValueError, match="prefix"):
        extend_hnsw(tmp_path / "old.voy", tmp_path / "fewer.npy", tmp_path / "x.voy", IndexConfig(build_threads=1))
    assert not (tmp_path / "x.voy").exists() and not list(tmp_path.glob(".*.tmp"))


def test_past_the_budget_hnsw_is_the_default_and_annoy_stays_selectable(monkeypatch):
    import zsdemo.store.index as index_module

    assert choose_backend(100_000, 512, IndexConfig(), us_per_row=0.32) == "hnsw"
    assert choose_backend(100_000, 512, IndexConfig(approximate="annoy"), us_per_row=0.32) == "annoy"
    monkeypatch.setattr(index_module, "hnsw_available", lambda: False)
    assert choose_backend(100_000, 512, IndexConfig(), us_per_row=0.32) == "annoy", "falls back without voyager"
    with pytest.raises(ValueError):
        choose_backend(100_000, 512, IndexConfig(approximate="faiss"), us_per_row=0.32)


def test_significant_figures_never_round_a_real_measurement_to_zero():
    from zsdemo.store.index import significant

    assert significant(0.00070049) == 0.0007 and significant(123.456) == 123.0 and significant(0.0) == 0.0
