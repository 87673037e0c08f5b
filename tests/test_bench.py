"""Smoke test of `python -m zsdemo bench --quick` with the tiny model (no timed assertions)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from conftest import TINY_MODEL
from zsdemo import bench
from zsdemo.encoder import EncoderConfig, SketchPhotoEncoder, create_clip
from zsdemo.precision import LinearSelfAttention, cls_only_last_block, linearize_attention
from zsdemo.preprocess import clean_sketch
from zsdemo.prompts import PromptedViT, PromptSpec


def test_quick_bench_runs_and_reports_every_section(capsys):
    results = bench.run_benchmarks(model=TINY_MODEL, pretrained="none", quick=True, gallery_size=300, repeats=2)
    out = capsys.readouterr().out
    for heading in ("machine:", "image encoder", "end to end", "nearest neighbours", "gallery indexing"):
        assert heading in out
    assert out.strip().splitlines()[-1].startswith("e2e p50 = ")
    assert out.strip().endswith(("PASS", "FAIL"))
    assert set(results["e2e"]) == {"fp32", "bf16", "int8"}
    assert results["machine"]["cores"] >= 1
    for name, figures in results["encoder"].items():
        assert figures["p50_ms"] > 0, name
        assert -1.0 <= figures["cosine"] <= 1.0 + 1e-5
    assert results["encoder"]["prompted fp32 (K=3)"]["cosine"] == pytest.approx(1.0, abs=1e-6)
    ann = results["ann"][2_000]
    assert all(0.0 <= v["recall"] <= 1.0 for v in ann["annoy"].values())
    assert results["indexing"]["photos_per_s"] > 0


def test_canvas_value_is_a_sketchpad_dict_with_ink():
    value = bench.sketchpad_value(0, size=200)
    assert value["background"] is None and value["composite"].shape == (200, 200, 3)
    assert clean_sketch(value).width > 10


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


def test_query_path_falls_back_to_fp32_when_too_far_from_it(monkeypatch):
    import zsdemo.encoder as encoder_module

    monkeypatch.setattr(encoder_module, "MIN_QUERY_COSINE", 1.5)  # impossible: every reduced path fails the check
    encoder = SketchPhotoEncoder.load(EncoderConfig(model=TINY_MODEL, pretrained="none", query_precision="int8"))
    assert encoder.query_model("int8") is encoder.prompted
    sketch = [bench.draw_canvas(1, size=160)]
    images = torch.stack([encoder.transform(clean_sketch(s)) for s in sketch])
    assert np.array_equal(encoder.encode_sketches(sketch), encoder.prompted(images, "sketch").detach().numpy())


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
    from zsdemo.index import exact_search

    vectors, queries = bench.synthetic_embeddings(3000, 64, seed=5, n_queries=5)
    for q in queries:
        ids, scores = exact_search(vectors, q, 10)  # float32, C-contiguous: scored with torch
        ids64, scores64 = exact_search(vectors.astype(np.float64), q, 10)  # other dtypes: numpy
        assert list(ids) == list(ids64) == list(np.argsort(-(vectors.astype(np.float64) @ q), kind="stable")[:10])
        assert np.allclose(scores, scores64, atol=1e-5) and scores.dtype == np.float32
