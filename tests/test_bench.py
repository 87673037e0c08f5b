"""Smoke runs of the benchmarks in bench/ with the tiny model (no timed assertions), and the helpers they use."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import query as query_bench
from bench import search as search_bench
from bench import synthetic as bench
from conftest import TINY_MODEL
from zsdemo.model.encoder import EncoderConfig, SketchPhotoEncoder, create_clip
from zsdemo.model.preprocess import clean_sketch
from zsdemo.model.prompts import PromptedViT, PromptSpec
from zsdemo.query.torch_paths import LinearSelfAttention, cls_only_last_block, linearize_attention

ROOT = Path(__file__).resolve().parents[1]


def test_query_benchmark_smoke_run_prints_every_section_and_the_verdict_last(tmp_path):
    """`python bench/query.py --quick` with the tiny model, as a script (figures are not asserted: a benchmark)."""
    env = {**os.environ, "ZSDEMO_QUERY_CACHE": str(tmp_path / "paths")}
    cmd = [sys.executable, str(ROOT / "bench" / "query.py"), "--quick", "--model", TINY_MODEL, "--pretrained", "none",
           "--gallery-size", "300", "--repeats", "2", "--cache-dir", str(tmp_path / "onnx")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    for heading in ("machine:", "AVX2", "image encoder", "stock open_clip fp32", "int8 (torch)", "picks here",
                    "end to end", "breakdown of the chosen path"):
        assert heading in out, heading
    last = out.strip().splitlines()[-1]
    fields = dict(part.split("=", 1) for part in last.split())
    assert set(fields) == {"query_p50_ratio", "cosine_min", "path", "cpu", "target", "met"}, last
    assert float(fields["query_p50_ratio"]) > 0 and fields["met"] in ("yes", "no") and fields["target"] == "0.33"
    assert 0.0 <= float(fields["cosine_min"]) <= 1.0001


def test_query_benchmark_results_in_process(tmp_path, capsys):
    results = query_bench.run(TINY_MODEL, "none", quick=True, gallery_size=200, repeats=2, cache_dir=tmp_path)
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1] == results["verdict"]
    assert results["paths"]["stock open_clip fp32"]["ratio"] == pytest.approx(1.0)
    for name, figures in results["paths"].items():
        assert figures["p50_ms"] > 0, name
        assert figures["cosine"] is None or -1.0 <= figures["cosine"] <= 1.0 + 1e-5
    assert results["paths"]["fp32 (prompted)"]["cosine"] == pytest.approx(1.0, abs=1e-6)
    assert results["path"] in results["e2e"] and results["e2e"][results["path"]]["p50_ms"] > 0
    assert results["selection"]["path"] == results["path"]


def test_search_benchmark_smoke_run(capsys):
    results = search_bench.run(TINY_MODEL, "none", quick=True, repeats=2)
    out = capsys.readouterr().out
    assert "nearest neighbours" in out and "gallery indexing" in out and "machine:" in out
    ann = results["ann"][2_000]
    assert all(0.0 <= v["recall"] <= 1.0 for v in ann["annoy"].values())
    assert results["indexing"]["photos_per_s"] > 0


def test_stroke_json_is_what_the_page_sends_and_draws_ink():
    import json

    from zsdemo.model.preprocess import is_strokes_value, strokes_to_image

    value = bench.stroke_json(0, 3, size=200)
    parsed = json.loads(value)
    assert is_strokes_value(value) and len(parsed["strokes"]) == 3
    assert (parsed["width"], parsed["height"], parsed["brush"]) == (200, 200, bench.PAGE_BRUSH)
    assert strokes_to_image(value).size == (200, 200)
    assert clean_sketch(value).width > 10
    assert (np.asarray(clean_sketch(value).convert("L")) < 128).any()  # ink, not a blank page


def test_write_vectors_streams_unit_vectors_to_a_npy_file(tmp_path):
    path = tmp_path / "v.npy"
    queries = bench.write_vectors(path, 1000, 32, seed=0, n_queries=5, chunk=300)
    matrix = np.load(path)
    assert matrix.shape == (1000, 32) and matrix.dtype == np.float32 and queries.shape == (5, 32)
    assert np.allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-5)
    again = tmp_path / "again.npy"
    bench.write_vectors(again, 1000, 32, seed=0, n_queries=5, chunk=300)
    assert np.array_equal(np.load(again), matrix)  # deterministic per seed


def test_synthetic_embeddings_are_unit_length_and_not_trivially_separable():
    vectors, queries = bench.synthetic_embeddings(500, 64, seed=0, n_queries=7)
    assert vectors.shape == (500, 64) and queries.shape == (7, 64) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.allclose(np.linalg.norm(queries, axis=1), 1.0, atol=1e-5)
    assert 0.1 < float((vectors[:100] @ vectors[:100].T).mean()) < 0.9


def test_linear_self_attention_matches_multihead_attention():
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(64, 4, batch_first=True).eval()
    x = torch.randn(2, 9, 64)
    with torch.inference_mode():
        expected = mha(x, x, x, need_weights=False)[0]
        got = LinearSelfAttention(mha)(x, x, x, need_weights=False)[0]
    assert torch.allclose(got, expected, atol=1e-5)
    holder = torch.nn.Sequential(torch.nn.Sequential(mha))
    assert isinstance(linearize_attention(holder)[0][0], LinearSelfAttention)


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_reduced_precision_query_paths_stay_close_to_fp32(precision):
    encoder = SketchPhotoEncoder.load(EncoderConfig(model=TINY_MODEL, pretrained="none", query_precision=precision))
    sketches = [bench.draw_canvas(i, size=160) for i in range(3)]
    fast = encoder.encode_sketches(sketches)
    images = torch.stack([encoder.transform(clean_sketch(s)) for s in sketches])
    exact = encoder.encode_tensor(images, "sketch", "fp32").numpy()
    assert fast.dtype == np.float32 and fast.shape == exact.shape
    assert np.allclose(np.linalg.norm(fast, axis=1), 1.0, atol=1e-4)
    assert (fast * exact).sum(axis=1).min() > 0.99
    # the fp32 model itself is never modified by building a reduced-precision copy
    assert isinstance(encoder.clip.visual.transformer.resblocks[0].attn, torch.nn.MultiheadAttention)
    assert encoder.clip.visual.conv1.weight.dtype == torch.float32


@pytest.mark.parametrize("spec", [PromptSpec(0), PromptSpec(3), PromptSpec(3, deep=True, shared=True, layernorm=True)])
def test_cls_only_last_block_is_exact_in_fp32(spec):
    clip = create_clip(TINY_MODEL, "none")
    prompted = PromptedViT(clip.visual, spec, generator=torch.Generator().manual_seed(1)).eval()
    if spec.layernorm:
        with torch.no_grad():
            prompted.layernorms["shared"]["transformer__resblocks__1__ln_2__weight"].mul_(1.5)
    fast = linearize_attention(copy.deepcopy(prompted))
    assert cls_only_last_block(fast.visual)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(fast(x, "sketch"), prompted(x, "sketch"), atol=1e-5)


def test_exact_search_torch_path_matches_numpy_sort():
    from zsdemo.store.index import exact_search

    vectors, queries = bench.synthetic_embeddings(3000, 64, seed=5, n_queries=5)
    for q in queries:
        ids, scores = exact_search(vectors, q, 10)  # float32, C-contiguous: scored with torch
        ids64, scores64 = exact_search(vectors.astype(np.float64), q, 10)  # other dtypes: numpy
        assert list(ids) == list(ids64) == list(np.argsort(-(vectors.astype(np.float64) @ q), kind="stable")[:10])
        assert np.allclose(scores, scores64, atol=1e-5) and scores.dtype == np.float32


def test_bench_settings_resolve_like_the_app_flag_over_environment_over_bench_default():
    from bench.settings import bench_config
    from zsdemo.config import DEFAULT_MODEL, DEFAULT_QUERY_PRECISION

    cfg = bench_config({"model": None, "pretrained": None}, environ={})
    assert (cfg.model, cfg.pretrained, cfg.query_precision) == (DEFAULT_MODEL, "none", DEFAULT_QUERY_PRECISION)
    env = {"ZSDEMO_MODEL": "from-env", "ZSDEMO_PRETRAINED": "openai"}
    assert (bench_config({}, environ=env).model, bench_config({}, environ=env).pretrained) == ("from-env", "openai")
    assert bench_config({"model": "from-flag"}, environ=env).model == "from-flag"


def test_scale_benchmark_smoke_run_ends_with_a_json_verdict(tmp_path):
    """`python bench/scale.py` on 3,000 vectors: exact, Annoy and HNSW side by side, verdict JSON last."""
    import json

    cmd = [sys.executable, str(ROOT / "bench" / "scale.py"), "--sizes", "3000", "--queries", "40", "--section",
           "vectors", "--query-budget-s", "1", "--work", str(tmp_path / "work")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("scale_verdict=")
    verdict = json.loads(last.removeprefix("scale_verdict="))
    assert set(verdict["targets"]) == {"p50_ms", "recall_at_10", "build_s", "build_rss_ratio"}
    sizes = verdict["sizes"]["3000"]
    assert {"exact", "annoy"} <= set(sizes) and isinstance(verdict["pass"], bool)
    assert sizes["exact"]["recall_at_10"] == pytest.approx(1.0)
    for name, figures in sizes.items():
        assert "error" in figures or (figures["p50_ms"] > 0 and 0.0 <= figures["recall_at_10"] <= 1.0), name
        assert isinstance(figures["pass"], bool)
    if "error" not in sizes["annoy"]:
        assert sizes["annoy"]["build_rss_ratio"] > 0 and set(sizes["annoy"]["checks"]) == {"latency", "build_time",
                                                                                          "build_rss"}
    grown = sizes["hnsw"]["grown"]  # the built HNSW index grown by new rows, as adding photos does
    assert grown["rows"] == 1000 and grown["extend_s"] >= 0 and 0.0 <= grown["recall_at_10"] <= 1.0
    assert "grown_recall" in sizes["hnsw"]["checks"]
