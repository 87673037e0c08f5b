"""Sketch query benchmark: every query path against the stock open_clip fp32 encoder, in one run, on this machine.

    python bench/query.py                                  # the app's model (random init), 10k gallery
    python bench/query.py --quick --model zsdemo-tiny-vit  # smoke run (seconds)
    python bench/query.py --trained-tiny                   # + cosines on a photo-pretrained tiny backbone
    python bench/query.py --compile --openvino             # + torch.compile and OpenVINO (slow to build)

What it prints, each figure beside the CPU it was measured on (model and AVX2/AVX-512/VNNI/bf16 flags):
1. the image encoder on one image: stock open_clip fp32 (the reference), the prompted fp32 encoder, and
   every candidate query path (zsdemo.query: torch int8 / bf16, ONNX Runtime fp32 / int8 with signed
   and unsigned weights, optionally OpenVINO and torch.compile), all interleaved round by round: p50, p95,
   ratio to stock, and cosine to the prompted fp32 encoder (min over drawn sketches; a path is acceptable
   only at >= 0.99);
2. what `auto` picks here (zsdemo.query.select.select_query_path) and how long choosing takes at load, with
   the ONNX export (first load) and with the cached files (every later load);
3. with --trained-tiny: each path's cosine on the tiny ViT pretrained CLIP-style on synthetic photos
   (train/pretrain_tiny.py), because random weights quantise unusually well;
4. end to end: what the page sends after a stroke (the canvas's strokes JSON, 448x448, 4 to 8 strokes) ->
   SearchEngine.search_sketch -> ranked hits over a 10k-photo gallery, for fp32 and the chosen path,
   interleaved with the stock encoder; the breakdown of the chosen path (strokes_to_image, clean_sketch,
   transform, encode, search);
5. as its LAST line, the verdict, machine-readable:
   `query_p50_ratio=0.31 cosine_min=0.9991 path=onnx-int8 cpu=AVX2 target=0.33 met=yes`
   (query_p50_ratio: end-to-end p50 of the chosen path / stock fp32 encoder p50 in the same rounds).
With `--pretrained none` the backbone is the real architecture at random init: speeds are real; cosines
are indicative only (see 3). Settings are resolved like the app's (zsdemo.config.resolve_serve_config, via
bench.settings): flag > ZSDEMO_* environment > random init (this benchmark's default) > the app's defaults.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import functools
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench.machine import machine_info, machine_line
from bench.settings import bench_config
from bench.synthetic import PAGE_CANVAS, stroke_json, synthetic_gallery
from bench.timing import interleaved, p50, p95, row
from zsdemo.config import MIN_QUERY_COSINE
from zsdemo.model.encoder import EncoderConfig, SketchPhotoEncoder, create_clip
from zsdemo.model.preprocess import clean_sketch, strokes_to_image
from zsdemo.model.prompts import PromptedViT, PromptSpec
from zsdemo.query.onnx_paths import (
    OnnxQueryModel,
    export_onnx,
    onnx_cache_key,
    onnxruntime_available,
    ort_session,
    quantize_onnx,
)
from zsdemo.query.paths import canonical_path, make_query_model
from zsdemo.query.probes import probe_sketches
from zsdemo.query.select import select_query_path
from zsdemo.search.engine import SearchEngine

log = logging.getLogger("bench.query")
TARGET_RATIO = 0.33  # end-to-end sketch query p50 must be at most this x the stock fp32 encoder p50
STOCK = "stock open_clip fp32"
Path_ = Callable[[torch.Tensor], torch.Tensor]


# ---- candidate paths ---------------------------------------------------------------------------------
def onnx_variants(prompted: PromptedViT, folder: Path) -> dict[str, OnnxQueryModel]:
    """ONNX Runtime fp32 and int8 with signed and with unsigned weights (auto keeps the first that passes)."""
    key = onnx_cache_key(prompted)
    fp32_file = folder / f"{key}-fp32.onnx"
    if not fp32_file.is_file():
        export_onnx(prompted, fp32_file)
    out = {"onnx-fp32": OnnxQueryModel(ort_session(fp32_file), prompted, "onnx-fp32", fp32_file)}
    for weights in ("s8", "u8"):
        file = folder / f"{key}-int8{weights}.onnx"
        if not file.is_file():
            quantize_onnx(fp32_file, file, weights)
        out[f"onnx-int8 ({weights} weights)"] = OnnxQueryModel(ort_session(file), prompted, "onnx-int8", file, weights)
    return out


def openvino_paths(onnx_model: OnnxQueryModel) -> tuple[dict[str, Path_], str]:
    """OpenVINO on the exported fp32 and the ORT-int8 ONNX files (measured only; not a dependency)."""
    try:
        import openvino as ov
    except ImportError:
        return {}, "openvino not installed (pip install openvino to measure it)"
    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": torch.get_num_threads(), "PERFORMANCE_HINT": "LATENCY"}
    out: dict[str, Path_] = {}
    files = {"openvino fp32": onnx_model.file}
    s8 = onnx_model.file.with_name(onnx_model.file.name.replace("-fp32", "-int8s8"))
    if s8.is_file():
        files["openvino (ORT int8 graph)"] = s8
    for name, file in files.items():
        compiled = core.compile_model(str(file), "CPU", config)
        request = compiled.create_infer_request()

        def run(x: torch.Tensor, request: Any = request) -> torch.Tensor:
            arr = x.numpy()
            outs = [torch.from_numpy(np.asarray(list(request.infer({0: arr[i:i + 1]}).values())[0]).copy())
                    for i in range(arr.shape[0])]
            return torch.cat(outs)

        out[name] = run
    return out, f"openvino {ov.__version__}"


def compiled_path(prompted: PromptedViT, x: torch.Tensor) -> tuple[Path_, float]:
    """torch.compile (inductor) of the fp32 prompted sketch forward; returns the path and its compile time."""
    import torch._dynamo  # noqa: F401

    fn = torch.compile(lambda images: prompted(images, "sketch"), dynamic=False)
    started = time.perf_counter()
    with torch.inference_mode():
        fn(x)
    return fn, time.perf_counter() - started


# ---- trained tiny backbone ---------------------------------------------------------------------------
def trained_tiny_cosines(steps: int, folder: Path, n_sketches: int = 8,
                         weights: Path | None = None) -> dict[str, float]:
    """Each query path's min cosine to fp32 on the tiny ViT pretrained on photos (train/pretrain_tiny.py),
    with 3 random prompts: `weights` (a file pretrain_tiny.py wrote), or pretrained here for `steps` steps and
    cached in `folder`."""
    weights = weights or folder / f"tiny-pretrained-{steps}.safetensors"
    if not weights.is_file():
        from train.pretrain_tiny import pretrain

        started = time.perf_counter()
        tmp = weights.with_name(f".{weights.name}.{os.getpid()}.tmp.safetensors")
        result = pretrain(tmp, steps=steps, photos_per_class=200)
        os.replace(tmp, weights)
        print(f"   pretrained the tiny backbone: {steps} steps in {time.perf_counter() - started:.0f} s, held-out "
              f"zero-shot accuracy {result.get('heldout_acc', float('nan')):.2f}")
    clip = create_clip("zsdemo-tiny-vit", str(weights))
    prompted = PromptedViT(clip.visual, PromptSpec(n_prompts=3), generator=torch.Generator().manual_seed(0)).eval()
    encoder = SketchPhotoEncoder(EncoderConfig(model="zsdemo-tiny-vit", pretrained=str(weights), query_precision="fp32"),
                                 clip, prompted)
    return path_cosines(prompted, sketch_batch(encoder, n_sketches), folder)


def path_cosines(prompted: PromptedViT, sketches: torch.Tensor, folder: Path) -> dict[str, float]:
    models: dict[str, Any] = {p: make_query_model(prompted, p) for p in ("int8", "bf16")}
    if onnxruntime_available():
        models.update(onnx_variants(prompted, folder))
    with torch.inference_mode():
        ref = prompted(sketches, "sketch")
        return {name: float(F.cosine_similarity(m(sketches, "sketch").float(), ref).min()) for name, m in models.items()}


def path_label(name: str) -> str:
    """Row label -> query path name: 'int8 (torch)' -> 'int8', 'onnx-int8 (u8 weights)' -> 'onnx-int8'."""
    return name.split(" (")[0]


def sketch_strokes(seed: int, n_strokes: int = 6) -> str:
    """A sketch as the page sends it: the canvas's strokes JSON (bench.synthetic.stroke_json)."""
    return stroke_json(seed, n_strokes)


def sketch_batch(encoder: SketchPhotoEncoder, n: int) -> torch.Tensor:
    return torch.stack([encoder.transform(clean_sketch(sketch_strokes(100 + i))) for i in range(n)])


def probe_images(encoder: SketchPhotoEncoder, n: int = 4) -> torch.Tensor:
    """The encoder's own probe sketches (what it checks a query path on at load), through its transform."""
    return torch.stack([encoder.transform(im) for im in probe_sketches(n, encoder.image_size)])


# ---- the benchmark -----------------------------------------------------------------------------------
@dataclass
class Bench:
    """What the sections of one run share."""

    encoder: SketchPhotoEncoder
    info: dict[str, Any]
    folder: Path
    repeats: int
    budget_s: float
    n_cos: int
    results: dict[str, Any]
    x1: torch.Tensor = field(init=False)
    sketches: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        size = self.encoder.image_size
        self.x1 = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
        self.sketches = sketch_batch(self.encoder, self.n_cos)

    @property
    def where(self) -> str:
        return f"[{self.info['cpu']}, {self.info['cpu_label']}]"


def load_encoder(model: str, pretrained: str, prompts: str | None) -> SketchPhotoEncoder:
    """The fp32 encoder (K=3 prompts; deterministic random ones without a checkpoint: the ONNX cache key
    depends on them)."""
    cfg = EncoderConfig(model=model, pretrained=pretrained, prompts=prompts, query_precision="fp32",
                        spec=PromptSpec(n_prompts=3))
    encoder = SketchPhotoEncoder.load(cfg)
    if prompts is None:
        with torch.no_grad():
            g = torch.Generator().manual_seed(0)
            for p in encoder.prompted.prompts.values():
                p.copy_(torch.randn(p.shape, generator=g))
    return encoder


def candidate_calls(b: Bench, openvino: bool, compile_: bool) -> tuple[dict[str, Path_], dict[str, str]]:
    """Every candidate query path as a callable on a batch, and notes about the ones skipped or slow."""
    prompted = b.encoder.prompted
    paths: dict[str, Any] = {"fp32 (prompted)": prompted}
    notes: dict[str, str] = {}
    for name in ("int8", "bf16"):
        paths[f"{name} (torch)"] = make_query_model(prompted, name)
    if not b.info["features"]["native_bf16"]:
        notes["bf16 (torch)"] = "no native bf16: auto skips it"
    if onnxruntime_available():
        t0 = time.perf_counter()
        paths.update(onnx_variants(prompted, b.folder))
        b.results["onnx_build_s"] = time.perf_counter() - t0
    else:
        notes["onnx"] = "onnxruntime not installed"
    calls: dict[str, Path_] = {name: functools.partial(lambda m, x: m(x, "sketch"), m) for name, m in paths.items()}
    if openvino and "onnx-fp32" in paths:
        ov_calls, notes["openvino"] = openvino_paths(paths["onnx-fp32"])
        calls.update(ov_calls)
    if compile_:
        try:
            fn, compile_s = compiled_path(prompted, b.x1)
            calls["torch.compile fp32"] = fn
            notes["torch.compile fp32"] = f"compile {compile_s:.0f} s"
        except Exception as exc:  # inductor needs a C++ compiler
            notes["torch.compile fp32"] = f"failed: {type(exc).__name__}: {str(exc)[:120]}"
    return calls, notes


def section_paths(b: Bench, openvino: bool, compile_: bool) -> dict[str, float]:
    """1. every candidate path on one image, interleaved with the stock encoder; returns the cosines."""
    calls, notes = candidate_calls(b, openvino, compile_)
    stock = b.encoder.clip.visual
    with torch.inference_mode():
        fns: dict[str, Callable[[], Any]] = {STOCK: lambda: stock(b.x1)}
        fns.update({name: functools.partial(f, b.x1) for name, f in calls.items()})
        lat = interleaved(fns, b.repeats, warmup=1, budget_s=b.budget_s)
        ref = b.encoder.prompted(b.sketches, "sketch")
        cosines = {name: float(F.cosine_similarity(f(b.sketches).float(), ref).min()) for name, f in calls.items()}
    stock_ms = p50(lat[STOCK])
    b.results["stock_ms"] = stock_ms
    b.results["paths"] = {name: {"p50_ms": p50(t), "p95_ms": p95(t), "min_ms": float(t.min()),
                                 "ratio": p50(t) / stock_ms, "min_ratio": float(t.min() / lat[STOCK].min()),
                                 "cosine": cosines.get(name)} for name, t in lat.items()}
    size = b.encoder.image_size
    print(f"\n-- image encoder, one {size}x{size} image, {len(lat[STOCK])} interleaved rounds {b.where} "
          f"(cosine: min over {b.n_cos} drawn sketches vs prompted fp32; acceptable >= {MIN_QUERY_COSINE})")
    widths = (30, 10, 10, 10, 10, 10, 44)
    print(row("path", "p50 ms", "p95 ms", "min ms", "x stock", "min/min", "cosine / verdict", widths=widths))
    for name, t in lat.items():
        cos = cosines.get(name)
        verdict = "reference" if cos is None else f"{cos:.5f} " + ("ok" if cos >= MIN_QUERY_COSINE else "REJECT")
        if name in notes:
            verdict += f" ({notes[name]})"
        figures = b.results["paths"][name]
        print(row(name, p50(t), p95(t), figures["min_ms"], figures["ratio"], figures["min_ratio"], verdict, widths=widths))
    print("(x stock: p50 / stock p50 in the same rounds; min/min: fastest run / fastest stock run, the least disturbed "
          "by other processes)")
    for key in ("onnx", "openvino"):
        if key in notes:
            print(f"   {key}: {notes[key]}")
    if "onnx_build_s" in b.results:
        print(f"   ONNX files (export + two int8 quantisations, or reused from --cache-dir) and sessions: "
              f"{b.results['onnx_build_s']:.1f} s")
    return cosines


def section_auto(b: Bench, query_precision: str) -> Any:
    """2. what `query_precision` picks here, and how long choosing takes (first load, then cached files)."""
    prompted, probe = b.encoder.prompted, probe_images(b.encoder)
    with tempfile.TemporaryDirectory(prefix="zsdemo-auto-") as fresh:
        first = select_query_path(prompted, query_precision, probe_images=probe, cache_dir=fresh,
                                  fingerprint=b.encoder.fingerprint())
        again = select_query_path(prompted, query_precision, probe_images=probe, cache_dir=fresh,
                                  fingerprint=b.encoder.fingerprint())
    b.results["selection"] = again.report
    b.results["startup_s"] = {"first_load": first.seconds, "cached": again.seconds}
    print(f"\n-- query_precision={query_precision} picks here: {again.report['summary']}")
    print(f"   choosing took {first.seconds:.1f} s on a first load (ONNX export) and {again.seconds:.1f} s with the "
          f"cached files; candidates: " + "; ".join(
              f"{c['name']} {c['ms']:.1f} ms cos {c['cosine']:.4f}" if c["ms"] is not None
              else f"{c['name']}: {c['note'] or 'not timed'}" for c in again.report["candidates"].values()))
    if first.path != again.path:
        print(f"   (the first load picked {first.path}: the paths are close on this machine)")
    return again


def section_trained_tiny(b: Bench, steps: int, weights: Path | None) -> None:
    """3. each path's cosine on a trained tiny backbone, beside the same backbone at random init."""
    what = f"weights {weights}" if weights else f"{steps} steps"
    print(f"\n-- cosine to fp32 on a TRAINED backbone: zsdemo-tiny-vit pretrained CLIP-style on synthetic photos "
          f"({what}, train/pretrain_tiny.py), K=3 prompts, {b.n_cos} sketches {b.where}")
    trained = trained_tiny_cosines(steps, b.folder.parent / "trained", b.n_cos, weights)
    random_encoder = SketchPhotoEncoder.load(EncoderConfig(model="zsdemo-tiny-vit", pretrained="none",
                                                           query_precision="fp32"))
    random_prompted = PromptedViT(create_clip("zsdemo-tiny-vit", "none").visual, PromptSpec(n_prompts=3),
                                  generator=torch.Generator().manual_seed(0)).eval()
    tiny_random = path_cosines(random_prompted, sketch_batch(random_encoder, b.n_cos), b.folder.parent / "tiny-random")
    b.results["trained_tiny"], b.results["tiny_random"] = trained, tiny_random
    print(row("path", "trained", "random", "", "", widths=(30, 10, 10, 2, 2)))
    for name in trained:
        print(row(name, f"{trained[name]:.5f}", f"{tiny_random.get(name, float('nan')):.5f}", "", "",
                  widths=(30, 10, 10, 2, 2)))


class QueryPathEncoder:
    """The benchmark's encoder with `model` as its sketch query path: the same weights, transform and photo
    encoder, and no second load or path selection. SearchEngine calls encode_clean_sketches; the rest is
    the wrapped encoder's."""

    def __init__(self, encoder: SketchPhotoEncoder, model: Any, path: str) -> None:
        self.encoder, self.model, self.query_path = encoder, model, path

    def encode_clean_sketches(self, sketches: list[Any]) -> np.ndarray:
        images = torch.stack([self.encoder.transform(s) for s in sketches]).to(self.encoder.cfg.device)
        with torch.inference_mode():
            return self.model(images, "sketch").float().cpu().numpy()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.encoder, name)


def e2e_rounds(b: Bench, gallery: Any, models: dict[str, Any]) -> dict[str, np.ndarray]:
    """Strokes JSON -> SearchEngine.search_sketch(k=12) for each path, interleaved with the stock encoder."""
    engines = {p: SearchEngine(QueryPathEncoder(b.encoder, m, p), gallery) for p, m in models.items()}
    canvases = [sketch_strokes(200 + i, 4 + i % 5) for i in range(8)]  # 4 to 8 strokes, as after each stroke
    counter = dict.fromkeys(models, 0)

    def query(p: str) -> None:
        counter[p] += 1
        result = engines[p].search_sketch(canvases[counter[p] % len(canvases)], k=12)
        assert len(result.hits) == min(12, len(gallery))

    stock = b.encoder.clip.visual
    fns: dict[str, Callable[[], Any]] = {"stock": lambda: stock(b.x1)}
    fns.update({p: functools.partial(query, p) for p in models})
    with torch.inference_mode():
        return interleaved(fns, max(b.repeats, 10), budget_s=b.budget_s, min_repeats=8)


def e2e_breakdown(b: Bench, gallery: Any, model: Any, chosen: str) -> dict[str, float]:
    """p50 of each step of the chosen path's query: draw the strokes, clean, transform, encode, search."""
    strokes = sketch_strokes(200, 6)
    drawing = strokes_to_image(strokes)
    preview = clean_sketch(drawing)
    tensor = b.encoder.transform(preview)[None]
    with torch.inference_mode():
        vector = model(tensor, "sketch")[0].float().numpy()
        parts = interleaved({
            f"strokes_to_image ({PAGE_CANVAS}x{PAGE_CANVAS} canvas JSON)": lambda: strokes_to_image(strokes),
            "clean_sketch (the drawing)": lambda: clean_sketch(drawing),
            "transform (resize, normalise)": lambda: b.encoder.transform(preview),
            f"encode ({chosen})": lambda: model(tensor, "sketch"),
            f"gallery search ({gallery.backend}, {len(gallery)})": lambda: gallery.search(vector, 12),
        }, max(b.repeats, 10), budget_s=b.budget_s / 2)
    return {name: p50(t) for name, t in parts.items()}


def section_e2e(b: Bench, selection: Any, gallery_size: int) -> None:
    """4. end to end, on the strokes the page sends, for fp32 and the chosen path."""
    chosen = selection.path
    models = {"fp32": b.encoder.prompted}
    if chosen != "fp32":
        models[chosen] = selection.model
    with tempfile.TemporaryDirectory(prefix="zsdemo-e2e-") as tmp:
        t0 = time.perf_counter()
        gallery = synthetic_gallery(Path(tmp) / "cache", b.encoder, gallery_size)
        cache_s = time.perf_counter() - t0
        e2e = e2e_rounds(b, gallery, models)
        b.results["breakdown_ms"] = e2e_breakdown(b, gallery, models[chosen], chosen)
        backend, n = gallery.backend, len(gallery)
    stock_t = e2e.pop("stock")
    e2e_stock = p50(stock_t)
    b.results["e2e"] = {p: {"p50_ms": p50(t), "p95_ms": p95(t), "ratio": p50(t) / e2e_stock,
                            "paired_ratio": float(np.median(t / stock_t)), "min_ratio": float(t.min() / stock_t.min())}
                        for p, t in e2e.items()}
    b.results["e2e_stock_ms"] = e2e_stock
    print(f"\n-- end to end: the page's strokes JSON ({PAGE_CANVAS}x{PAGE_CANVAS} canvas, 4-8 strokes) -> "
          f"SearchEngine.search_sketch(k=12) over a {n}-photo gallery ({backend} search; built in {cache_s:.1f} s), "
          f"interleaved with the stock encoder (p50 {e2e_stock:.1f} ms in these rounds) {b.where}")
    widths = (30, 10, 10, 10, 10, 10)
    print(row("query path", "p50 ms", "p95 ms", "p50/stock", "per-round", "min/min", widths=widths))
    for p, t in e2e.items():
        e = b.results["e2e"][p]
        print(row(p + (" (chosen)" if p == chosen else ""), p50(t), p95(t), e["ratio"], e["paired_ratio"],
                  e["min_ratio"], widths=widths))
    print(f"breakdown of the chosen path ({chosen}), p50:")
    for name, ms in b.results["breakdown_ms"].items():
        print(f"   {name:<44} {ms:7.2f} ms")


def chosen_cosine(cosines: dict[str, float], selection: Any) -> float:
    """The chosen path's min cosine among the section-1 rows of that path (and weight variant)."""
    chosen, variant = selection.path, selection.report["variant"]
    if chosen == "fp32":
        return 1.0
    return min((c for name, c in cosines.items() if c is not None and path_label(name) == canonical_path(chosen)
                and (not variant or f"({variant} weights)" in name)),
               default=float(selection.report["cosine"] or 0.0))


def verdict(b: Bench, cosines: dict[str, float], selection: Any, started: float) -> str:
    """5. the machine-readable verdict (printed last)."""
    chosen = selection.path
    ratio = b.results["e2e"][chosen]["ratio"]
    cos_chosen = chosen_cosine(cosines, selection)
    met = ratio <= TARGET_RATIO and cos_chosen >= MIN_QUERY_COSINE
    b.results.update(ratio=ratio, cosine_min=cos_chosen, path=chosen, met=met)
    load_now = machine_info()["load_avg_1m"]
    print(f"\n(total bench time {time.perf_counter() - started:.0f} s; load average (1 min) now {load_now})")
    if not met:
        print("what limits it: " + ", ".join(f"{n} {ms:.1f} ms" for n, ms in b.results["breakdown_ms"].items()))
    if max(b.info["load_avg_1m"], load_now) > 0.5 * (b.info["cores"] or 1):
        print(f"(busy machine: the least-disturbed end-to-end ratio, fastest query / fastest stock run, was "
              f"{b.results['e2e'][chosen]['min_ratio']:.2f})")
    line = (f"query_p50_ratio={ratio:.2f} cosine_min={cos_chosen:.4f} path={chosen} "
            f"cpu={b.info['cpu_label'].split('+')[0]} target={TARGET_RATIO:.2f} met={'yes' if met else 'no'}")
    b.results["verdict"] = line
    return line


def run(model: str, pretrained: str, prompts: str | None = None, query_precision: str = "auto", quick: bool = False,
        gallery_size: int = 10_000, repeats: int = 30, trained_tiny: bool = False, trained_steps: int = 600,
        openvino: bool = False, compile_: bool = False, cache_dir: Path | None = None,
        trained_weights: Path | None = None, budget_s: float = 120.0) -> dict[str, Any]:
    """Run the benchmark, print the report (verdict last), return the figures."""
    started = time.perf_counter()
    if quick:
        repeats, gallery_size = min(repeats, 6), min(gallery_size, 2_000)
    info = machine_info()
    results: dict[str, Any] = {"model": model, "pretrained": pretrained, "prompts": prompts, "quick": quick,
                               "machine": info}
    print(f"== bench/query.py: {model} (pretrained={pretrained}, prompts={prompts or 'K=3 random'}, "
          f"query_precision={query_precision}){' [quick]' if quick else ''}")
    print(machine_line(info))
    if info["load_avg_1m"] > 0.5 * (info["cores"] or 1):
        print(f"NOTE: the machine is busy (load {info['load_avg_1m']} on {info['cores']} cores): absolute times are "
              "inflated and noisy; every ratio below compares things timed in the same interleaved rounds.")
    with tempfile.TemporaryDirectory(prefix="zsdemo-query-bench-") as tmp_root:
        folder = Path(cache_dir) if cache_dir else Path(tmp_root) / "paths"
        b = Bench(load_encoder(model, pretrained, prompts), info, folder, repeats, budget_s, 3 if quick else 8, results)
        cosines = section_paths(b, openvino, compile_)
        selection = section_auto(b, query_precision)
        if trained_tiny:
            section_trained_tiny(b, trained_steps, trained_weights)
        section_e2e(b, selection, gallery_size)
        line = verdict(b, cosines, selection, started)
    print(line, flush=True)
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="open_clip model (default: the app's, zsdemo.config; ZSDEMO_MODEL)")
    parser.add_argument("--pretrained", help="open_clip tag, weights file or 'none' (random init: real speed; the "
                        "default unless ZSDEMO_PRETRAINED is set)")
    parser.add_argument("--prompts", help="prompt checkpoint (ZSDEMO_PROMPTS)")
    parser.add_argument("--query-precision", help="path to benchmark end to end: auto (the app's default) or a path "
                        "name (ZSDEMO_QUERY_PRECISION)")
    parser.add_argument("--quick", action="store_true", help="fewer repeats, 2k gallery (smoke run)")
    parser.add_argument("--gallery-size", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--budget-s", type=float, default=120.0,
                        help="time limit of each timed section on a busy machine (at least 5 rounds are run)")
    parser.add_argument("--trained-tiny", action="store_true", help="also report cosines on a trained tiny backbone")
    parser.add_argument("--trained-steps", type=int, default=600, help="pretraining steps for --trained-tiny")
    parser.add_argument("--trained-weights", type=Path,
                        help="for --trained-tiny: a file train/pretrain_tiny.py already wrote (skips pretraining)")
    parser.add_argument("--openvino", action="store_true", help="also measure OpenVINO (if installed)")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile (minutes to compile)")
    parser.add_argument("--threads", type=int, help="torch and ONNX Runtime intra-op threads (default: torch's, "
                        "the cores); 1 gives contention-robust ratios on a busy shared machine")
    parser.add_argument("--cache-dir", type=Path, help="keep exported ONNX files here (default: a temp folder)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)  # ONNX Runtime sessions follow torch's thread count
    cfg = bench_config({"model": args.model, "pretrained": args.pretrained, "prompts": args.prompts,
                        "query_precision": args.query_precision})
    prompts = cfg.prompts
    if prompts:
        from zsdemo.config import resolve_hub_file

        prompts = resolve_hub_file(prompts)
    return run(cfg.model, cfg.pretrained, prompts, cfg.query_precision, args.quick, args.gallery_size,
               args.repeats, args.trained_tiny, args.trained_steps, args.openvino, args.compile, args.cache_dir,
               args.trained_weights, budget_s=args.budget_s)


if __name__ == "__main__":
    main()
