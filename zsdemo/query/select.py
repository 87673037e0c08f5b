"""Choosing the sketch query path: an explicit step, run once per machine and remembered.

`select_query_path` builds the candidates that make sense on this CPU, rejects any below MIN_QUERY_COSINE
on the probe sketches, times the rest against fp32 (interleaved) and keeps the fastest. `choose_query_path`
wraps it with a record on disk (next to the exported ONNX files): the choice is keyed by the CPU's
features, the encoder (fingerprint and learned prompts) and the runtime versions, so a later start on the
same machine builds only the path it chose before (checking its cosine again) instead of timing them all.
`prepare_query_path` switches an encoder to the chosen path; until then it answers in fp32.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from zsdemo.config import AUTO, MIN_QUERY_COSINE, QUERY_PATHS, canonical_path
from zsdemo.model.encoder import SketchPhotoEncoder
from zsdemo.model.prompts import PromptedViT
from zsdemo.query.cpu import cpu_features, cpu_label
from zsdemo.query.onnx_paths import (
    ONNX_RECIPE,
    digest_tensors,
    onnx_cache_key,
    onnxruntime_available,
    query_cache_dir,
)
from zsdemo.query.paths import make_query_model
from zsdemo.query.probes import default_probe_images, encoder_probe_images, min_cosine

log = logging.getLogger(__name__)

AUTO_MIN_PARAMS = 5_000_000  # auto keeps fp32 for smaller image towers (test models: fp32 takes a few ms)
CHOICES_FILE = "choices.json"  # in the query cache folder: key -> the path chosen on this machine
BuildFn = Callable[[str], nn.Module]


@dataclass
class Candidate:
    """One query path as measured at load."""

    name: str
    ms: float | None = None  # p50 of the interleaved timing on one probe sketch
    cosine: float | None = None  # min cosine to fp32 over the probe sketches
    ok: bool = False  # built, and cosine >= MIN_QUERY_COSINE
    note: str = ""
    build_s: float = 0.0


@dataclass
class Selection:
    """The query path in use and how it was chosen (the report goes to the log and the page)."""

    path: str
    model: nn.Module
    requested: str
    candidates: dict[str, Candidate] = field(default_factory=dict)
    cpu: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    note: str = ""

    @property
    def report(self) -> dict[str, Any]:
        chosen = self.candidates.get(self.path, Candidate(self.path))
        fp32 = self.candidates.get("fp32", Candidate("fp32"))
        out = {
            "path": self.path,
            "requested": self.requested,
            "ms": chosen.ms,
            "cosine": 1.0 if self.path == "fp32" else chosen.cosine,
            "fp32_ms": fp32.ms,
            "variant": getattr(self.model, "variant", "") or "",
            "cpu": cpu_label(self.cpu) if self.cpu else "",
            "cpu_features": self.cpu,
            "seconds": round(self.seconds, 2),
            "note": self.note,
            "candidates": {name: asdict(c) for name, c in self.candidates.items()},
        }
        out["summary"] = summarize(out)
        return out


def summarize(report: dict[str, Any]) -> str:
    """'onnx-int8 (31 ms, cos 0.9993; fp32 95 ms; AVX2)' for the page and the log."""
    bits = []
    if report.get("ms") is not None:
        bits.append(f"{report['ms']:.0f} ms")
    if report.get("cosine") is not None and report.get("path") != "fp32":
        bits.append(f"cos {report['cosine']:.4f}")
    if report.get("fp32_ms") is not None and report.get("path") != "fp32":
        bits.append(f"fp32 {report['fp32_ms']:.0f} ms")
    if report.get("cpu"):
        bits.append(str(report["cpu"]))
    text = report["path"] + (f" ({'; '.join(bits)})" if bits else "")
    return text + (f" - {report['note']}" if report.get("note") else "")


def time_interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1,
                     budget_s: float | None = None, min_repeats: int = 3) -> dict[str, list[float]]:
    """Milliseconds per call, round-robin with a rotating order (a noisy neighbour slows every path alike);
    stops after `budget_s` seconds once `min_repeats` rounds are in."""
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
            t0 = time.perf_counter()
            fns[name]()
            times[name].append((time.perf_counter() - t0) * 1000.0)
    return times


def auto_candidates(features: dict[str, Any], device: str = "cpu") -> tuple[list[str], dict[str, str]]:
    """The paths worth trying on this machine, and why the others are skipped."""
    skipped: dict[str, str] = {}
    if torch.device(device).type != "cpu":
        return [], {name: f"CPU-only path (device {device})" for name in QUERY_PATHS if name != "fp32"}
    names = ["int8"]
    if features.get("native_bf16"):
        names.append("bf16")
    else:
        skipped["bf16"] = "no native bf16 on this CPU (emulated bf16 is several times slower than fp32)"
    if onnxruntime_available():
        names += ["onnx-int8", "onnx-fp32"]
    else:
        skipped["onnx-int8"] = skipped["onnx-fp32"] = "onnxruntime is not installed"
    return names, skipped


def _names_to_try(prompted: PromptedViT, requested: str, features: dict[str, Any], device: str,
                  builders: dict[str, Callable[[], nn.Module]] | None, candidates: Sequence[str] | None,
                  min_params: int, table: dict[str, Candidate]) -> tuple[list[str], str]:
    """The paths to build for `requested`, and a note when the request is narrowed (skipped paths go in `table`)."""
    if requested != AUTO:
        if requested == "fp32":
            return [], ""
        if torch.device(device).type != "cpu" and requested != "bf16":
            return [], f"{requested} runs on the CPU only"
        return [requested], ""
    names, skipped = auto_candidates(features, device)
    if candidates is not None:
        names, skipped = list(candidates), {}
    names += [n for n in (builders or {}) if n not in names and candidates is None]
    for name, why in skipped.items():
        table[name] = Candidate(name, note=f"skipped: {why}")
    n_params = sum(p.numel() for p in prompted.visual.parameters())
    if names and n_params < min_params:
        return [], f"small model ({n_params:,} parameters): fp32, no other path tried"
    return names, ""


def _build_and_check(name: str, build: BuildFn, prompted: PromptedViT,
                     probe_images: torch.Tensor) -> tuple[Candidate, nn.Module | None]:
    """Build one path and measure its cosine to fp32 on the probes; the model only when it is acceptable."""
    t0 = time.perf_counter()
    try:
        model = build(name)
    except Exception as exc:  # a missing runtime, a torch without torch.ao, an export failure
        log.warning("query path %s is unavailable here (%s: %s)", name, type(exc).__name__, str(exc)[:300])
        return Candidate(name, note=f"unavailable: {type(exc).__name__}: {str(exc)[:200]}",
                         build_s=time.perf_counter() - t0), None
    cos = min_cosine(model, prompted, probe_images)
    ok = bool(np.isfinite(cos) and cos >= MIN_QUERY_COSINE)
    variant = getattr(model, "variant", "")
    note = (f"{variant} weights" if variant else "") + \
        ("" if ok else f"{'; ' if variant else ''}rejected: cosine < {MIN_QUERY_COSINE}")
    return Candidate(name, cosine=cos, ok=ok, build_s=time.perf_counter() - t0, note=note), model if ok else None


def _time_models(models: dict[str, nn.Module], one: torch.Tensor, table: dict[str, Candidate], repeats: int,
                 budget_s: float) -> None:
    """p50 milliseconds of each model on one probe sketch, interleaved, into `table`."""
    fns = {name: (lambda m=m: m(one, "sketch")) for name, m in models.items()}
    with torch.inference_mode():
        times = time_interleaved(fns, repeats, warmup=0, budget_s=budget_s, min_repeats=2)  # warmed by the check
    for name, t in times.items():
        table[name].ms = float(np.median(t))


def _path_builder(prompted: PromptedViT, folder: Path, fingerprint: str | None, probe_images: torch.Tensor | None,
                  builders: dict[str, Callable[[], nn.Module]] | None, variant: str | None = None) -> BuildFn:
    key_cache: list[str] = []

    def build(name: str) -> nn.Module:
        if builders and name in builders:
            return builders[name]()
        if name.startswith("onnx-"):
            if not key_cache:
                key_cache.append(onnx_cache_key(prompted, fingerprint))
            return make_query_model(prompted, name, cache_dir=folder, key=key_cache[0], probe_images=probe_images,
                                    variant=variant)
        return make_query_model(prompted, name)

    return build


def select_query_path(prompted: PromptedViT, requested: str = AUTO, *, probe_images: torch.Tensor | None = None,
                      device: str = "cpu", cache_dir: str | os.PathLike[str] | None = None,
                      fingerprint: str | None = None, budget_s: float = 4.0, repeats: int = 7,
                      min_params: int | None = None,
                      builders: dict[str, Callable[[], nn.Module]] | None = None,
                      candidates: Sequence[str] | None = None) -> Selection:
    """Build, check and time the query path(s) for `requested` ("auto" or one path) and return the choice.

    auto: every candidate that makes sense here (auto_candidates, or `candidates`) is built, rejected below
    MIN_QUERY_COSINE on the probe sketches, and the accepted ones are timed against fp32 (interleaved, one
    sketch, about `budget_s` seconds); the fastest wins. For image towers under `min_params` parameters
    (default AUTO_MIN_PARAMS: test models, whose fp32 query takes a few ms) auto keeps fp32 without building anything. An explicit
    path is built and checked the same way and replaced by fp32 (with a warning) when it fails the check.
    `builders` adds or replaces path builders (name -> () -> model), for tests and experiments.
    """
    started = time.perf_counter()
    requested_name = canonical_path(requested)
    features = cpu_features()
    model_device = next(prompted.parameters()).device
    probe_images = (default_probe_images(prompted) if probe_images is None else probe_images).to(model_device)
    folder = Path(cache_dir) if cache_dir is not None else query_cache_dir()
    build = _path_builder(prompted, folder, fingerprint, probe_images, builders)
    table: dict[str, Candidate] = {"fp32": Candidate("fp32", cosine=1.0, ok=True)}
    models: dict[str, nn.Module] = {"fp32": prompted}
    names, note = _names_to_try(prompted, requested_name, features, device, builders, candidates,
                                AUTO_MIN_PARAMS if min_params is None else min_params, table)
    for name in names:
        table[name], model = _build_and_check(name, build, prompted, probe_images)
        if model is not None:
            models[name] = model
    _time_models(models, probe_images[:1], table, repeats, budget_s)
    if requested_name == AUTO:
        path = min(models, key=lambda n: (table[n].ms if table[n].ms is not None else float("inf"), n != "fp32"))
    elif requested_name in models:
        path = requested_name
    else:
        path = "fp32"
        if requested_name != "fp32" and not note:
            note = f"{requested_name} failed the probe check: fp32 used"
            log.warning("query_precision=%s: %s; sketch queries use fp32.", requested_name,
                        table.get(requested_name, Candidate(requested_name)).note or "unavailable")
    selection = Selection(path=path, model=models[path], requested=requested_name, candidates=table,
                          cpu=features, seconds=time.perf_counter() - started, note=note)
    _log_selection(selection)
    return selection


def _log_selection(selection: Selection) -> None:
    log.info("sketch query path: %s (requested %s; chose in %.1f s); candidates: %s", selection.report["summary"],
             selection.requested, selection.seconds,
             "; ".join(f"{c.name} {c.ms:.1f} ms cos {c.cosine:.4f}" if c.ms is not None and c.cosine is not None
                       else f"{c.name} {c.note}" for c in selection.candidates.values()))


# ---- the choice, remembered per machine --------------------------------------------------------------
def choice_key(prompted: PromptedViT, requested: str, fingerprint: str | None, features: dict[str, Any]) -> str:
    """What a remembered choice depends on: the encoder (fingerprint: weights, prompts spec, preprocessing; and
    the learned prompts themselves), the request, this CPU's features, threads and the runtime versions."""
    runtime = ""
    if onnxruntime_available():
        import onnxruntime

        runtime = onnxruntime.__version__
    parts = {"encoder": fingerprint or digest_tensors(dict(prompted.visual.state_dict())),
             "prompts": digest_tensors(prompted.learned_state()), "requested": requested, "cpu": features,
             "threads": torch.get_num_threads(), "torch": torch.__version__, "onnxruntime": runtime,
             "recipe": ONNX_RECIPE}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def read_choices(folder: Path | None = None) -> dict[str, dict[str, Any]]:
    """Every remembered choice in `folder` (default: the query cache): key -> record; {} when none or unreadable."""
    path = (folder or query_cache_dir()) / CHOICES_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _remember(folder: Path, key: str, selection: Selection) -> None:
    """Add one choice to the record, atomically (two processes choosing at once: one of them wins, whole)."""
    choices = read_choices(folder)
    choices[key] = {"path": selection.path, "variant": selection.report["variant"], "requested": selection.requested,
                    "cpu": cpu_label(selection.cpu),
                    "ms": selection.report["ms"], "fp32_ms": selection.report["fp32_ms"],
                    "chose_in_s": round(selection.seconds, 2), "when": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    with contextlib.suppress(OSError):
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{CHOICES_FILE}.{uuid.uuid4().hex[:6]}.tmp"
        tmp.write_text(json.dumps(choices, indent=1))
        os.replace(tmp, folder / CHOICES_FILE)


def choose_query_path(prompted: PromptedViT, requested: str = AUTO, *, probe_images: torch.Tensor | None = None,
                      device: str = "cpu", cache_dir: str | os.PathLike[str] | None = None,
                      fingerprint: str | None = None, choose: bool = True, check: bool = True) -> Selection:
    """`select_query_path`, remembered. With `requested` "auto", a choice made before on this machine for the same
    encoder is rebuilt from its cached files (and, `check`, its cosine checked on the probes again) without timing
    the other candidates. With none remembered, the choice is made and written down (`choose`), or fp32 is used
    (`choose=False`: a one-off command never pays for a choice)."""
    requested_name = canonical_path(requested)
    folder = Path(cache_dir) if cache_dir is not None else query_cache_dir()
    if requested_name != AUTO or torch.device(device).type != "cpu":
        return select_query_path(prompted, requested_name, probe_images=probe_images, device=device,
                                 cache_dir=folder, fingerprint=fingerprint)
    key = choice_key(prompted, requested_name, fingerprint, cpu_features())
    known = read_choices(folder).get(key)
    if known and known.get("path") in QUERY_PATHS:
        remembered = _recall(prompted, known, probe_images, device, folder, fingerprint, check)
        if remembered is not None:
            return remembered
    if not choose:
        return select_query_path(prompted, "fp32", probe_images=probe_images, device=device, cache_dir=folder)
    selection = select_query_path(prompted, AUTO, probe_images=probe_images, device=device, cache_dir=folder,
                                  fingerprint=fingerprint)
    if len([c for c in selection.candidates.values() if c.ms is not None]) > 1:
        _remember(folder, key, selection)
    return selection


def _recall(prompted: PromptedViT, known: dict[str, Any], probe_images: torch.Tensor | None, device: str,
            folder: Path, fingerprint: str | None, check: bool) -> Selection | None:
    """The remembered path, rebuilt; None when it no longer passes its check (or cannot be built) here."""
    note = f"chosen on this machine before (in {known.get('chose_in_s', '?')} s); remembered"
    if not check:
        started = time.perf_counter()
        try:
            model = _path_builder(prompted, folder, fingerprint, probe_images, None, known.get("variant"))(known["path"])
        except Exception as exc:
            log.warning("the remembered query path %s cannot be built here (%s): fp32", known["path"], exc)
            return None
        candidate = Candidate(known["path"], ms=known.get("ms"), ok=True, note="remembered, not re-checked")
        return Selection(path=known["path"], model=model, requested=AUTO, cpu=cpu_features(),
                         candidates={known["path"]: candidate}, seconds=time.perf_counter() - started, note=note)
    selection = select_query_path(prompted, known["path"], probe_images=probe_images, device=device, cache_dir=folder,
                                  fingerprint=fingerprint, repeats=3, budget_s=1.0)
    if selection.path != known["path"]:
        log.warning("the remembered query path %s no longer passes its check here: choosing again", known["path"])
        return None
    selection.requested, selection.note = AUTO, note
    return selection


def prepare_query_path(encoder: SketchPhotoEncoder, requested: str | None = None,
                       cache_dir: str | os.PathLike[str] | None = None, choose: bool = True,
                       check: bool = True) -> Selection:
    """Choose (or recall) the sketch query path for `encoder` (`requested`, default its configured precision) and
    switch the encoder to it (`choose`, `check`: see choose_query_path). Until this returns, the encoder answers
    sketch queries in fp32."""
    selection = choose_query_path(encoder.prompted, requested or encoder.cfg.query_precision,
                                  probe_images=encoder_probe_images(encoder), device=encoder.cfg.device,
                                  cache_dir=cache_dir, fingerprint=encoder.fingerprint(), choose=choose, check=check)
    encoder.use_query_path(selection.path, selection.model, selection.report)
    return selection
