"""Sketch query benchmark: every query path against the stock open_clip fp32 encoder, in one run, on this machine.

    python bench/query.py                                  # ViT-B/32 (random init), 10k gallery
    python bench/query.py --quick --model zsdemo-tiny-vit  # smoke run (seconds)
    python bench/query.py --trained-tiny                   # + cosines on a photo-pretrained tiny backbone
    python bench/query.py --compile --openvino             # + torch.compile and OpenVINO (slow to build)

What it prints, each figure beside the CPU it was measured on (model and AVX2/AVX-512/VNNI/bf16 flags):
1. the image encoder on one image: stock open_clip fp32 (the reference), the prompted fp32 encoder, and
   every candidate query path (zsdemo.query.precision: torch int8 / bf16, ONNX Runtime fp32 / int8 with signed
   and unsigned weights, optionally OpenVINO and torch.compile), all interleaved round by round: p50, p95,
   ratio to stock, and cosine to the prompted fp32 encoder (min over drawn sketches; a path is acceptable
   only at >= 0.99);
2. what `auto` picks here (zsdemo.query.precision.select_query_path) and how long choosing takes at load, with
   the ONNX export (first load) and with the cached files (every later load);
3. with --trained-tiny: each path's cosine on the tiny ViT pretrained CLIP-style on synthetic photos
   (train/pretrain_tiny.py), because random weights quantise unusually well;
4. end to end: a Sketchpad canvas value -> SearchEngine.search_sketch -> ranked hits over a 10k-photo
   gallery, for fp32 and the chosen path, interleaved with the stock encoder; the breakdown of the chosen
   path (clean_sketch, transform, encode, search);
5. as its LAST line, the verdict, machine-readable:
   `query_p50_ratio=0.31 cosine_min=0.9991 path=onnx-int8 cpu=AVX2 target=0.33 met=yes`
   (query_p50_ratio: end-to-end p50 of the chosen path / stock fp32 encoder p50 in the same rounds).
With `--pretrained none` the backbone is the real architecture at random init: speeds are real; cosines
are indicative only (see 3). Settings follow the ZSDEMO_* environment like the app; flags override.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import copy
import functools
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench.common import (
    CANVAS,
    draw_canvas,
    interleaved,
    machine_info,
    machine_line,
    p50,
    p95,
    row,
    sketchpad_value,
    synthetic_gallery,
)
from zsdemo.model.encoder import EncoderConfig, SketchPhotoEncoder, create_clip
from zsdemo.model.preprocess import clean_sketch
from zsdemo.model.prompts import PromptedViT, PromptSpec
from zsdemo.query.precision import (
    MIN_QUERY_COSINE,
    OnnxQueryModel,
    canonical_path,
    export_onnx,
    make_query_model,
    onnx_cache_key,
    onnxruntime_available,
    ort_session,
    quantize_onnx,
    select_query_path,
)
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


def sketch_batch(encoder: SketchPhotoEncoder, n: int) -> torch.Tensor:
    return torch.stack([encoder.transform(clean_sketch(draw_canvas(100 + i))) for i in range(n)])


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


# ---- the benchmark -----------------------------------------------------------------------------------
def run(model: str, pretrained: str, prompts: str | None = None, query_precision: str = "auto", quick: bool = False,
        gallery_size: int = 10_000, repeats: int = 30, trained_tiny: bool = False, trained_steps: int = 600,
        openvino: bool = False, compile_: bool = False, cache_dir: Path | None = None,
        trained_weights: Path | None = None, budget_s: float = 120.0) -> dict[str, Any]:
    """Run the benchmark, print the report (verdict last), return the figures."""
    started = time.perf_counter()
    if quick:
        repeats = min(repeats, 6)
        gallery_size = min(gallery_size, 2_000)
    n_cos = 3 if quick else 8
    results: dict[str, Any] = {"model": model, "pretrained": pretrained, "prompts": prompts, "quick": quick}
    info = machine_info()
    results["machine"] = info
    cpu = info["cpu_label"]
    print(f"== bench/query.py: {model} (pretrained={pretrained}, prompts={prompts or 'K=3 random'}, "
          f"query_precision={query_precision}){' [quick]' if quick else ''}")
    print(machine_line(info))
    if info["load_avg_1m"] > 0.5 * (info["cores"] or 1):
        print(f"NOTE: the machine is busy (load {info['load_avg_1m']} on {info['cores']} cores): absolute times are "
              "inflated and noisy; every ratio below compares things timed in the same interleaved rounds.")

    spec = PromptSpec(n_prompts=3)
    cfg = EncoderConfig(model=model, pretrained=pretrained, prompts=prompts, query_precision="fp32", spec=spec)
    encoder = SketchPhotoEncoder.load(cfg)
    if prompts is None:
        with torch.no_grad():  # deterministic prompts: the ONNX cache key depends on them
            g = torch.Generator().manual_seed(0)
            for p in encoder.prompted.prompts.values():
                p.copy_(torch.randn(p.shape, generator=g))
    prompted, stock = encoder.prompted, encoder.clip.visual
    size = encoder.image_size
    x1 = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    sketches = sketch_batch(encoder, n_cos)
    tmp_root = tempfile.TemporaryDirectory(prefix="zsdemo-query-bench-")
    folder = Path(cache_dir) if cache_dir else Path(tmp_root.name) / "paths"

    # -- 1. every candidate path, one image ------------------------------------------------------------
    paths: dict[str, Any] = {"fp32 (prompted)": prompted}
    notes: dict[str, str] = {}
    for name in ("int8", "bf16"):
        paths[f"{name} (torch)"] = make_query_model(prompted, name)
    if not info["features"]["native_bf16"]:
        notes["bf16 (torch)"] = "no native bf16: auto skips it"
    if onnxruntime_available():
        t0 = time.perf_counter()
        paths.update(onnx_variants(prompted, folder))
        results["onnx_build_s"] = time.perf_counter() - t0
    else:
        notes["onnx"] = "onnxruntime not installed"
    calls: dict[str, Path_] = {name: functools.partial(lambda m, x: m(x, "sketch"), m) for name, m in paths.items()}
    if openvino and "onnx-fp32" in paths:
        ov_calls, ov_note = openvino_paths(paths["onnx-fp32"])
        calls.update(ov_calls)
        notes["openvino"] = ov_note
    if compile_:
        try:
            fn, compile_s = compiled_path(prompted, x1)
            calls["torch.compile fp32"] = fn
            notes["torch.compile fp32"] = f"compile {compile_s:.0f} s"
        except Exception as exc:  # inductor needs a C++ compiler
            notes["torch.compile fp32"] = f"failed: {type(exc).__name__}: {str(exc)[:120]}"
    with torch.inference_mode():
        fns: dict[str, Callable[[], Any]] = {STOCK: lambda: stock(x1)}
        fns.update({name: functools.partial(f, x1) for name, f in calls.items()})
        lat = interleaved(fns, repeats, warmup=1, budget_s=budget_s)
        ref = prompted(sketches, "sketch")
        cosines = {name: float(F.cosine_similarity(f(sketches).float(), ref).min()) for name, f in calls.items()}
    stock_ms = p50(lat[STOCK])
    results["stock_ms"] = stock_ms
    results["paths"] = {name: {"p50_ms": p50(t), "p95_ms": p95(t), "min_ms": float(t.min()), "ratio": p50(t) / stock_ms,
                               "min_ratio": float(t.min() / lat[STOCK].min()), "cosine": cosines.get(name)}
                        for name, t in lat.items()}
    print(f"\n-- image encoder, one {size}x{size} image, {len(lat[STOCK])} interleaved rounds [{info['cpu']}, {cpu}] "
          f"(cosine: min over {n_cos} drawn sketches vs prompted fp32; acceptable >= {MIN_QUERY_COSINE})")
    widths = (30, 10, 10, 10, 10, 10, 44)
    print(row("path", "p50 ms", "p95 ms", "min ms", "x stock", "min/min", "cosine / verdict", widths=widths))
    for name, t in lat.items():
        cos = cosines.get(name)
        verdict = "reference" if cos is None else f"{cos:.5f} " + ("ok" if cos >= MIN_QUERY_COSINE else "REJECT")
        if name in notes:
            verdict += f" ({notes[name]})"
        figures = results["paths"][name]
        print(row(name, p50(t), p95(t), figures["min_ms"], figures["ratio"], figures["min_ratio"], verdict, widths=widths))
    print("(x stock: p50 / stock p50 in the same rounds; min/min: fastest run / fastest stock run, the least disturbed "
          "by other processes)")
    for key in ("onnx", "openvino"):
        if key in notes:
            print(f"   {key}: {notes[key]}")
    if "onnx_build_s" in results:
        print(f"   ONNX files (export + two int8 quantisations, or reused from --cache-dir) and sessions: {results['onnx_build_s']:.1f} s")

    # -- 2. what auto picks here, and its cost at load -------------------------------------------------
    probe = encoder._probe_images()
    with tempfile.TemporaryDirectory(prefix="zsdemo-auto-") as fresh:
        first = select_query_path(prompted, query_precision, probe_images=probe, cache_dir=fresh,
                                  fingerprint=encoder.fingerprint())
        again = select_query_path(prompted, query_precision, probe_images=probe, cache_dir=fresh,
                                  fingerprint=encoder.fingerprint())
    chosen = again.path
    results["selection"] = again.report
    results["startup_s"] = {"first_load": first.seconds, "cached": again.seconds}
    print(f"\n-- query_precision={query_precision} picks here: {again.report['summary']}")
    print(f"   choosing took {first.seconds:.1f} s on a first load (ONNX export) and {again.seconds:.1f} s with the "
          f"cached files; candidates: " + "; ".join(
              f"{c['name']} {c['ms']:.1f} ms cos {c['cosine']:.4f}" if c["ms"] is not None
              else f"{c['name']}: {c['note'] or 'not timed'}" for c in again.report["candidates"].values()))
    if first.path != again.path:
        print(f"   (the first load picked {first.path}: the paths are close on this machine)")

    # -- 3. trained tiny backbone -------------------------------------------------------------------------
    if trained_tiny:
        what = f"weights {trained_weights}" if trained_weights else f"{trained_steps} steps"
        print(f"\n-- cosine to fp32 on a TRAINED backbone: zsdemo-tiny-vit pretrained CLIP-style on synthetic photos "
              f"({what}, train/pretrain_tiny.py), K=3 prompts, {n_cos} sketches [{cpu}]")
        trained = trained_tiny_cosines(trained_steps, folder.parent / "trained", n_cos, trained_weights)
        tiny_random = path_cosines(PromptedViT(create_clip("zsdemo-tiny-vit", "none").visual, spec,
                                               generator=torch.Generator().manual_seed(0)).eval(),
                                   sketch_batch(SketchPhotoEncoder.load(EncoderConfig(
                                       model="zsdemo-tiny-vit", pretrained="none", query_precision="fp32")), n_cos),
                                   folder.parent / "tiny-random")
        results["trained_tiny"] = trained
        results["tiny_random"] = tiny_random
        print(row("path", "trained", "random", "", "", widths=(30, 10, 10, 2, 2)))
        for name in trained:
            print(row(name, f"{trained[name]:.5f}", f"{tiny_random.get(name, float('nan')):.5f}", "", "",
                      widths=(30, 10, 10, 2, 2)))

    # -- 4. end to end -------------------------------------------------------------------------------------
    e2e_paths = ["fp32"] + ([chosen] if chosen != "fp32" else [])
    with tempfile.TemporaryDirectory(prefix="zsdemo-e2e-") as tmp:
        t0 = time.perf_counter()
        gallery = synthetic_gallery(Path(tmp) / "cache", encoder, gallery_size)
        cache_s = time.perf_counter() - t0
        engines = {}
        for p in e2e_paths:
            enc = copy.copy(encoder)  # same weights, another query path (no reload, no second selection)
            enc.cfg = replace(encoder.cfg, query_precision=p)
            enc._query_model = again.model if p == chosen else prompted
            enc.query_path, enc._other_query_models = p, {}
            engines[p] = SearchEngine(enc, gallery)
        canvases = [sketchpad_value(200 + i) for i in range(8)]
        counter = dict.fromkeys(e2e_paths, 0)

        def query(p: str) -> None:
            counter[p] += 1
            result = engines[p].search_sketch(canvases[counter[p] % len(canvases)], k=12)
            assert len(result.hits) == min(12, len(gallery))

        e2e_fns: dict[str, Callable[[], Any]] = {"stock": lambda: stock(x1)}
        e2e_fns.update({p: functools.partial(query, p) for p in e2e_paths})
        with torch.inference_mode():
            e2e = interleaved(e2e_fns, max(repeats, 10), budget_s=budget_s, min_repeats=8)
        stock_t = e2e.pop("stock")
        e2e_stock = p50(stock_t)
        enc_c = engines[chosen].encoder
        canvas = canvases[0]
        preview = clean_sketch(canvas)
        tensor = enc_c.transform(preview)[None]
        vector = enc_c.encode_tensor(tensor, "sketch", chosen)[0].numpy()
        with torch.inference_mode():
            parts = interleaved({
                f"clean_sketch ({CANVAS}x{CANVAS} canvas)": lambda: clean_sketch(canvas),
                "transform (resize, normalise)": lambda: enc_c.transform(preview),
                f"encode ({chosen})": lambda: enc_c.encode_tensor(tensor, "sketch", chosen),
                f"gallery search ({gallery.backend}, {len(gallery)})": lambda: gallery.search(vector, 12),
            }, max(repeats, 10), budget_s=budget_s / 2)
    results["e2e"] = {p: {"p50_ms": p50(t), "p95_ms": p95(t), "ratio": p50(t) / e2e_stock,
                          "paired_ratio": float(np.median(t / stock_t)), "min_ratio": float(t.min() / stock_t.min())}
                      for p, t in e2e.items()}
    results["e2e_stock_ms"] = e2e_stock
    results["breakdown_ms"] = {name: p50(t) for name, t in parts.items()}
    print(f"\n-- end to end: {CANVAS}x{CANVAS} Sketchpad value -> SearchEngine.search_sketch(k=12) over a "
          f"{len(gallery)}-photo gallery ({gallery.backend} search; built in {cache_s:.1f} s), interleaved with the "
          f"stock encoder (p50 {e2e_stock:.1f} ms in these rounds) [{info['cpu']}, {cpu}]")
    print(row("query path", "p50 ms", "p95 ms", "p50/stock", "per-round", "min/min", widths=(30, 10, 10, 10, 10, 10)))
    for p, t in e2e.items():
        e = results["e2e"][p]
        print(row(p + (" (chosen)" if p == chosen else ""), p50(t), p95(t), e["ratio"], e["paired_ratio"],
                  e["min_ratio"], widths=(30, 10, 10, 10, 10, 10)))
    print(f"breakdown of the chosen path ({chosen}), p50:")
    for name, ms in results["breakdown_ms"].items():
        print(f"   {name:<44} {ms:7.2f} ms")
    tmp_root.cleanup()

    # -- verdict (last line) ---------------------------------------------------------------------------------
    ratio = results["e2e"][chosen]["ratio"]
    variant = again.report["variant"]
    cos_chosen = 1.0 if chosen == "fp32" else min(
        (c for name, c in cosines.items() if c is not None and path_label(name) == canonical_path(chosen)
         and (not variant or f"({variant} weights)" in name)), default=float(again.report["cosine"] or 0.0))
    met = ratio <= TARGET_RATIO and cos_chosen >= MIN_QUERY_COSINE
    results.update(ratio=ratio, cosine_min=cos_chosen, path=chosen, met=met)
    print(f"\n(total bench time {time.perf_counter() - started:.0f} s; load average (1 min) now "
          f"{machine_info()['load_avg_1m']})")
    if not met:
        print("what limits it: " + ", ".join(f"{n} {ms:.1f} ms" for n, ms in results["breakdown_ms"].items()))
    if info["load_avg_1m"] > 0.5 * (info["cores"] or 1) or machine_info()["load_avg_1m"] > 0.5 * (info["cores"] or 1):
        print(f"(busy machine: the least-disturbed end-to-end ratio, fastest query / fastest stock run, was "
              f"{results['e2e'][chosen]['min_ratio']:.2f})")
    verdict = (f"query_p50_ratio={ratio:.2f} cosine_min={cos_chosen:.4f} path={chosen} cpu={cpu.split('+')[0]} "
               f"target={TARGET_RATIO:.2f} met={'yes' if met else 'no'}")
    results["verdict"] = verdict
    print(verdict, flush=True)
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=os.environ.get("ZSDEMO_MODEL") or "ViT-B-32-quickgelu")
    parser.add_argument("--pretrained", default=os.environ.get("ZSDEMO_PRETRAINED") or "none",
                        help="open_clip tag, weights file or 'none' (random init: real speed; default)")
    parser.add_argument("--prompts", default=os.environ.get("ZSDEMO_PROMPTS") or None, help="prompt checkpoint")
    parser.add_argument("--query-precision", default=os.environ.get("ZSDEMO_QUERY_PRECISION") or "auto",
                        help="path to benchmark end to end: auto (default) or a path name")
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
    prompts = args.prompts
    if prompts:
        from zsdemo.config import resolve_hub_file

        prompts = resolve_hub_file(prompts)
    return run(args.model, args.pretrained, prompts, args.query_precision, args.quick, args.gallery_size,
               args.repeats, args.trained_tiny, args.trained_steps, args.openvino, args.compile, args.cache_dir,
               args.trained_weights, args.budget_s)


if __name__ == "__main__":
    main()
