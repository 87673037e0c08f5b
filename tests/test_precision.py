"""The sketch query path registry and its selection at load (zsdemo.query.precision), with the tiny model."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import zsdemo.query.onnx_paths as onnx_paths
import zsdemo.query.select as select
from conftest import TINY_MODEL
from zsdemo.config import MIN_QUERY_COSINE, canonical_path
from zsdemo.errors import ZsdemoError
from zsdemo.model.encoder import EncoderConfig, SketchPhotoEncoder, create_clip
from zsdemo.model.prompts import PromptedViT, PromptSpec
from zsdemo.query.cpu import cpu_features
from zsdemo.query.onnx_paths import onnx_cache_key, onnxruntime_available
from zsdemo.query.paths import make_query_model
from zsdemo.query.probes import default_probe_images
from zsdemo.query.select import (
    auto_candidates,
    choose_query_path,
    prepare_query_path,
    read_choices,
    select_query_path,
    summarize,
)

needs_ort = pytest.mark.skipif(not onnxruntime_available(), reason="onnxruntime not installed")


def tiny_prompted(spec: PromptSpec | None = None, seed: int = 1) -> PromptedViT:
    return PromptedViT(create_clip(TINY_MODEL, "none").visual, spec or PromptSpec(3), generator=torch.Generator().manual_seed(seed)).eval()


class Broken(torch.nn.Module):
    """Instant and wrong: unit vectors unrelated to the image."""

    def forward(self, images: torch.Tensor, modality: str) -> torch.Tensor:
        return F.normalize(torch.randn(images.shape[0], 32, generator=torch.Generator().manual_seed(3)), dim=-1)


class Slow(torch.nn.Module):
    """Exact but slow: the fp32 model plus 30 ms."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, modality: str) -> torch.Tensor:
        time.sleep(0.03)
        return self.model(images, modality)


class Memo(torch.nn.Module):
    """Exact and fast after the first call: remembers the fp32 answer per input."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.seen = model, {}

    def forward(self, images: torch.Tensor, modality: str) -> torch.Tensor:
        key = images.numpy().tobytes()
        if key not in self.seen:
            self.seen[key] = self.model(images, modality)
        return self.seen[key]


def test_auto_never_picks_a_path_below_the_cosine_floor():
    prompted = tiny_prompted()
    chosen = select_query_path(prompted, "auto", builders={"broken": Broken}, candidates=["broken"], min_params=0, budget_s=0.2)
    assert chosen.path == "fp32" and chosen.model is prompted
    broken = chosen.candidates["broken"]
    assert not broken.ok and broken.cosine < MIN_QUERY_COSINE and "rejected" in broken.note
    assert chosen.report["cosine"] == 1.0


def test_auto_picks_the_fastest_acceptable_path():
    prompted = tiny_prompted()
    chosen = select_query_path(prompted, "auto", builders={"slow": lambda: Slow(prompted), "memo": lambda: Memo(prompted),
                                                           "broken": Broken},
                               candidates=["slow", "memo", "broken"], min_params=0)
    assert chosen.path == "memo"
    table = chosen.candidates
    assert table["slow"].ok and table["memo"].ok and not table["broken"].ok
    assert table["slow"].ms > table["memo"].ms
    report = chosen.report
    assert report["path"] == "memo" and report["requested"] == "auto" and report["ms"] == table["memo"].ms
    assert "memo" in report["summary"] and report["summary"] == summarize(report)


def test_auto_keeps_fp32_for_tiny_models_without_building_anything():
    chosen = select_query_path(tiny_prompted(), "auto", builders={"memo": lambda: pytest.fail("built")})
    assert chosen.path == "fp32" and "small model" in chosen.note


def test_bf16_is_a_candidate_only_with_native_bf16():
    names, skipped = auto_candidates({"native_bf16": False})
    assert "bf16" not in names and "native bf16" in skipped["bf16"]
    names, skipped = auto_candidates({"native_bf16": True})
    assert "bf16" in names and "bf16" not in skipped
    names, skipped = auto_candidates({"native_bf16": True}, device="cuda")
    assert names == [] and set(skipped) >= {"int8", "bf16"}


def test_auto_reports_skipped_bf16_on_a_cpu_without_it(monkeypatch):
    features = {**cpu_features(), "native_bf16": False}
    monkeypatch.setattr(select, "cpu_features", lambda: features)
    chosen = select_query_path(tiny_prompted(), "auto", min_params=0, budget_s=0.5,
                               builders={"onnx-int8": Broken, "onnx-fp32": Broken})
    assert chosen.candidates["bf16"].ms is None and "skipped" in chosen.candidates["bf16"].note
    assert chosen.path != "bf16"


@pytest.mark.parametrize("name, expected", [("int8", "int8"), ("torch-int8", "int8"), ("bf16", "bf16"),
                                            ("torch-bf16", "bf16"), ("fp32", "fp32")])
def test_explicit_choices_are_honoured(name, expected):
    prompted = tiny_prompted()
    chosen = select_query_path(prompted, name, budget_s=0.2)
    assert chosen.path == expected and chosen.requested == expected
    assert (chosen.model is prompted) == (expected == "fp32")
    assert chosen.candidates[expected].ms is not None


def test_explicit_choice_below_the_floor_falls_back_to_fp32():
    prompted = tiny_prompted()
    chosen = select_query_path(prompted, "int8", builders={"int8": Broken}, budget_s=0.2)
    assert chosen.path == "fp32" and chosen.model is prompted and "fp32 used" in chosen.note


def test_unknown_precision_is_a_clear_error():
    with pytest.raises(ZsdemoError, match="query_precision must be one of"):
        canonical_path("int4")
    with pytest.raises(ZsdemoError):
        SketchPhotoEncoder.load(EncoderConfig(model=TINY_MODEL, pretrained="none", query_precision="fp8"))


def test_encoder_answers_in_fp32_until_a_path_is_prepared_then_exposes_it(tmp_path):
    encoder = SketchPhotoEncoder.load(EncoderConfig(model=TINY_MODEL, pretrained="none"))
    assert encoder.cfg.query_precision == "auto"
    assert encoder.query_path == "fp32" and encoder.query_model("auto") is encoder.prompted  # nothing chosen yet
    prepare_query_path(encoder, cache_dir=tmp_path)
    assert encoder.query_path == "fp32"  # tiny model: auto keeps fp32
    report = encoder.query_report
    assert report["path"] == encoder.query_path and isinstance(report["summary"], str) and report["cpu"]
    assert encoder.query_model("auto") is encoder.query_model(encoder.query_path)
    int8 = SketchPhotoEncoder.load(EncoderConfig(model=TINY_MODEL, pretrained="none", query_precision="torch-int8"))
    assert int8.query_path == "fp32"
    prepare_query_path(int8, cache_dir=tmp_path)
    assert int8.query_path == "int8" and int8.query_cosine >= MIN_QUERY_COSINE
    assert int8.query_model("fp32") is int8.prompted and int8.query_model("int8") is not int8.prompted
    with pytest.raises(ZsdemoError, match="not prepared"):
        int8.query_model("bf16")


def test_an_auto_choice_is_remembered_per_machine_and_reused_without_timing_again(tmp_path, monkeypatch):
    prompted = tiny_prompted(PromptSpec(3))
    first = choose_query_path(prompted, "auto", cache_dir=tmp_path)  # tiny model: nothing timed, nothing kept
    assert first.path == "fp32" and read_choices(tmp_path) == {}
    monkeypatch.setattr(select, "AUTO_MIN_PARAMS", 0)
    monkeypatch.setattr(select, "auto_candidates", lambda features, device: (["int8"], {}))
    one_off = choose_query_path(prompted, "auto", cache_dir=tmp_path, choose=False)  # a CLI query: no choice made
    assert one_off.path == "fp32" and read_choices(tmp_path) == {}
    chosen = choose_query_path(prompted, "auto", cache_dir=tmp_path)
    [record] = read_choices(tmp_path).values()
    assert record["path"] == chosen.path and record["requested"] == "auto" and record["cpu"]

    timed: list[str] = []
    original = select.time_interleaved
    monkeypatch.setattr(select, "time_interleaved", lambda fns, *a, **k: timed.extend(fns) or original(fns, *a, **k))
    again = choose_query_path(prompted, "auto", cache_dir=tmp_path)
    assert again.path == chosen.path and "remembered" in again.note and again.requested == "auto"
    assert set(timed) <= {"fp32", chosen.path}, "only the remembered path is built again"
    timed.clear()
    trusted = choose_query_path(prompted, "auto", cache_dir=tmp_path, choose=False, check=False)
    assert trusted.path == chosen.path and "remembered" in trusted.note and timed == [], "reused without timing"
    # another encoder (other prompts) on the same machine is not given this machine's choice for the first one
    other = tiny_prompted(PromptSpec(2))
    choose_query_path(other, "auto", cache_dir=tmp_path)
    assert len(read_choices(tmp_path)) == 2


@needs_ort
@pytest.mark.parametrize("spec", [PromptSpec(0), PromptSpec(3), PromptSpec(3, deep=True, layernorm=True),
                                  PromptSpec(2, shared=True, layernorm=True)])
def test_onnx_paths_match_fp32(tmp_path, spec):
    prompted = tiny_prompted(spec)
    if spec.layernorm:  # LayerNorm overrides that differ from the backbone's, so a lost override shows
        with torch.no_grad():
            for value in prompted.layernorms[spec.branch_for("sketch")].values():
                value.mul_(1.3).add_(0.05)
    images = default_probe_images(prompted)
    for name, floor in (("onnx-fp32", 0.9999), ("onnx-int8", MIN_QUERY_COSINE)):
        model = make_query_model(prompted, name, cache_dir=tmp_path, probe_images=images)
        with torch.inference_mode():
            got, ref = model(images, "sketch"), prompted(images, "sketch")
            assert torch.equal(model(images, "photo"), prompted(images, "photo"))  # photos stay fp32
        assert got.shape == ref.shape and got.dtype == torch.float32
        assert np.allclose(got.norm(dim=1).numpy(), 1.0, atol=1e-4)
        assert float(F.cosine_similarity(got, ref).min()) >= floor, name


@needs_ort
def test_exported_onnx_files_are_cached_and_reused(tmp_path, monkeypatch):
    prompted = tiny_prompted()
    first = make_query_model(prompted, "onnx-int8", cache_dir=tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    key = onnx_cache_key(prompted)
    assert f"{key}-fp32.onnx" in files and first.file.name in files and first.file.parent == tmp_path
    assert not [name for name in files if ".tmp" in name]  # atomic writes leave nothing behind

    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(onnx_paths, "export_onnx", no_export)
    monkeypatch.setattr(onnx_paths, "quantize_onnx", no_export)
    again = make_query_model(prompted, "onnx-int8", cache_dir=tmp_path)
    assert again.file == first.file
    images = default_probe_images(prompted)
    with torch.inference_mode():
        assert torch.allclose(again(images, "sketch"), first(images, "sketch"))
    # other prompts, other files (prompts without a checkpoint are random per load)
    assert onnx_cache_key(tiny_prompted(seed=2)) != key


@needs_ort
def test_auto_with_onnx_candidates_reports_every_candidate(tmp_path):
    prompted = tiny_prompted()
    chosen = select_query_path(prompted, "auto", cache_dir=tmp_path, min_params=0, budget_s=1.0)
    assert set(chosen.candidates) >= {"fp32", "int8", "onnx-int8", "onnx-fp32", "bf16"}
    assert chosen.candidates[chosen.path].ok
    for candidate in chosen.candidates.values():
        if candidate.ok:
            assert candidate.cosine >= MIN_QUERY_COSINE and candidate.ms is not None and candidate.ms > 0
    assert any(tmp_path.iterdir())
