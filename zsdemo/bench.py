"""`python -m zsdemo bench`: latency, recall and throughput figures, measured in this run on this machine.

Every latency is reported next to a reference measured in the same run (the stock open_clip fp32 image
encoder on one 224x224 image), and timings of the things being compared are *interleaved* round by
round, so a noisy neighbour slows both sides alike. With `pretrained="none"` the backbone is the real
architecture at random init (seed 0): speeds are real, retrieval quality and quantisation error are only
indicative (real CLIP weights may quantise worse; that is why each reduced-precision path prints its
cosine to fp32 and counts as acceptable only at >= 0.99).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import platform
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from zsdemo.encoder import EncoderConfig, SketchPhotoEncoder
from zsdemo.engine import SearchEngine
from zsdemo.gallery import Gallery, write_generation
from zsdemo.index import AnnoySearcher, IndexConfig, build_annoy, exact_search
from zsdemo.precision import QUERY_PRECISIONS
from zsdemo.preprocess import clean_sketch
from zsdemo.prompts import PromptSpec

TARGET_RATIO = 0.60  # end-to-end sketch query p50 must be at most this x the stock fp32 encoder latency
MIN_COSINE = 0.99  # a reduced-precision path is acceptable only at this cosine to fp32 (min over sketches)
CANVAS = 800  # Gradio Sketchpad composite size used for the end-to-end queries


# ---- helpers ---------------------------------------------------------------------------------
def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkldnn_bf16": bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)()),
        "quantized_engine": torch.backends.quantized.engine,
        "load_avg_1m": round(load[0], 2),
    }


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 2) -> dict[str, np.ndarray]:
    """Time each function `repeats` times, round-robin (rotating the order), in milliseconds."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            fns[name]()
            times[name].append((time.perf_counter() - start) * 1000.0)
    return {name: np.asarray(t) for name, t in times.items()}


def p50(t: np.ndarray) -> float:
    return float(np.percentile(t, 50))


def p95(t: np.ndarray) -> float:
    return float(np.percentile(t, 95))


def draw_canvas(seed: int, size: int = CANVAS) -> np.ndarray:
    """A Sketchpad-like composite: black strokes on white, HxWx3 uint8."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 7))):
        x0, y0, x1, y1 = (int(v) for v in rng.integers(size // 8, size - size // 8, 4))
        kind = int(rng.integers(0, 3))
        box = (min(x0, x1), min(y0, y1), max(x0, x1) + 10, max(y0, y1) + 10)
        if kind == 0:
            draw.line((x0, y0, x1, y1), fill="black", width=int(rng.integers(4, 12)))
        elif kind == 1:
            draw.ellipse(box, outline="black", width=int(rng.integers(4, 12)))
        else:
            draw.rectangle(box, outline="black", width=int(rng.integers(4, 12)))
    return np.asarray(image).copy()


def sketchpad_value(seed: int, size: int = CANVAS) -> dict[str, Any]:
    composite = draw_canvas(seed, size)
    layer = np.dstack([composite, np.full(composite.shape[:2], 255, np.uint8)])
    return {"background": None, "layers": [layer], "composite": composite}


def synthetic_embeddings(n: int, dim: int, seed: int, n_queries: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors shaped like image embeddings: (gallery (n, dim), queries (n_queries, dim)), float32.

    Plain clusters make nearest-neighbour search too easy (every method gets recall 1.0), so this mimics
    CLIP embeddings more closely: a power-law spectrum (low intrinsic dimension), coarse clusters with fine
    sub-clusters, and a shared direction (mean pairwise cosine ~0.35, top-10 neighbours at cosine ~0.93).
    Queries come from the same distribution and are not in the gallery.
    """
    rng = np.random.default_rng(seed)
    scale = (np.arange(1, dim + 1) ** -0.75).astype(np.float32)
    basis = np.linalg.qr(rng.standard_normal((dim, dim)))[0].astype(np.float32)

    def gaussian(m: int) -> np.ndarray:
        return (rng.standard_normal((m, dim)).astype(np.float32) * scale) @ basis

    common = rng.standard_normal(dim).astype(np.float32)
    common /= np.linalg.norm(common)
    n_coarse, n_fine = max(10, n // 1000), max(50, n // 20)
    coarse = gaussian(n_coarse)
    fine = coarse[rng.integers(0, n_coarse, n_fine)] + 0.6 * gaussian(n_fine)

    def draw(m: int) -> np.ndarray:
        x = fine[rng.integers(0, n_fine, m)] + 0.5 * gaussian(m)
        x = x / np.linalg.norm(x, axis=1, keepdims=True) + 0.7 * common
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    return draw(n), draw(n_queries)


def fake_gallery(cache_dir: Path, encoder: SketchPhotoEncoder, n: int, index_cfg: IndexConfig) -> Gallery:
    """A real gallery cache on disk with `n` synthetic normalised embeddings (no photos are encoded)."""
    vectors, _ = synthetic_embeddings(n, encoder.embed_dim, seed=1)
    source = cache_dir / "photos"
    source.mkdir(parents=True, exist_ok=True)
    entries = [{"name": f"img{i:06d}.jpg", "path": str(source / f"img{i:06d}.jpg"), "size": 1000 + i,
                "mtime_ns": 0, "thumb": f"t{i:06d}.jpg"} for i in range(n)]
    write_generation(cache_dir, entries, vectors, [source], encoder, index_cfg)
    return Gallery.open(cache_dir, encoder, index_cfg)


def photo_files(folder: Path, n: int) -> None:
    rng = np.random.default_rng(2)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:480, 0:640]
    for i in range(n):
        a, b, c = rng.uniform(0.2, 1.0, 3)
        img = np.stack([(xx * a) % 256, (yy * b) % 256, ((xx + yy) * c) % 256], -1).astype(np.uint8)
        Image.fromarray(img).save(folder / f"photo{i:04d}.jpg", quality=90)


def with_precision(encoder: SketchPhotoEncoder, precision: str) -> SketchPhotoEncoder:
    """The same weights, another query precision (no reload)."""
    return SketchPhotoEncoder(replace(encoder.cfg, query_precision=precision), encoder.clip, encoder.prompted,
                              encoder.prompts_sha256)


def int8_linear_only(encoder: SketchPhotoEncoder) -> torch.nn.Module:
    """The plain recipe (quantize_dynamic on nn.Linear only; attention projections stay fp32), for comparison."""
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_dynamic(copy.deepcopy(encoder.prompted), {torch.nn.Linear}, dtype=torch.qint8)


def _sketch_call(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x, "sketch")


def row(*cells: Any, widths: tuple[int, ...] = (34, 12, 12, 12, 30)) -> str:
    out = []
    for cell, width in zip(cells, widths, strict=False):
        text = f"{cell:.2f}" if isinstance(cell, float) else str(cell)
        out.append(text.ljust(width) if not out else text.rjust(width))
    return " ".join(out)


# ---- the benchmark -----------------------------------------------------------------------------
def run_benchmarks(model: str = "ViT-B-32-quickgelu", pretrained: str = "none", quick: bool = False,
                   gallery_size: int = 10_000, repeats: int = 30) -> dict[str, Any]:
    """Run every benchmark, print a report, return the figures (a dict) for tests and notebooks."""
    started = time.perf_counter()
    if quick:
        gallery_size = min(gallery_size, 2_000)
        repeats = min(repeats, 5)
    annoy_sizes = [2_000] if quick else [10_000, 100_000]
    n_queries = 20 if quick else 200
    n_photos = 16 if quick else 96
    n_cos = 3 if quick else 8
    batch = 8 if quick else 32
    results: dict[str, Any] = {"quick": quick, "model": model, "pretrained": pretrained}

    info = machine_info()
    results["machine"] = info
    print(f"== zsdemo bench: {model} (pretrained={pretrained}){' [quick]' if quick else ''}")
    print(f"machine: {info['cpu']}; {info['cores']} cores; torch {info['torch']} with {info['torch_threads']} threads; "
          f"cpu capability {info['cpu_capability']}; mkldnn bf16 {info['mkldnn_bf16']}; quantized engine "
          f"{info['quantized_engine']}; load average (1 min) at start {info['load_avg_1m']}")
    if info["load_avg_1m"] > 0.5 * (info["cores"] or 1):
        print(f"NOTE: the machine is busy (load {info['load_avg_1m']} on {info['cores']} cores): other processes compete "
              "with torch's threads, so absolute times are inflated and noisy; ratios are interleaved to compensate.")

    default_precision = EncoderConfig().query_precision
    cfg = EncoderConfig(model=model, pretrained=pretrained, query_precision="fp32", spec=PromptSpec(n_prompts=3))
    encoder = SketchPhotoEncoder.load(cfg)
    stock = encoder.clip.visual
    size = encoder.image_size
    torch.manual_seed(0)
    x1 = torch.randn(1, 3, size, size)

    # -- 1. stock vs prompted, and every precision path, one image -----------------------------
    encoders = {p: with_precision(encoder, p) for p in QUERY_PRECISIONS}
    paths: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "prompted fp32 (K=3)": lambda x: encoder.prompted(x, "sketch"),
    }

    def autocast_path(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return encoder.prompted(x, "sketch").float()

    int8_lin = int8_linear_only(encoder)
    paths["bf16 autocast"] = autocast_path
    paths["int8 dynamic, nn.Linear only"] = lambda x: int8_lin(x, "sketch")
    for p in ("bf16", "int8"):
        paths[f"{p} (query_precision={p})"] = functools.partial(_sketch_call, encoders[p].query_model(p))

    with torch.inference_mode():
        fns: dict[str, Callable[[], Any]] = {"stock open_clip fp32": lambda: stock(x1)}
        fns.update({name: functools.partial(f, x1) for name, f in paths.items()})
        lat = interleaved(fns, repeats * 2 if quick else repeats)
        sketches = torch.stack([encoder.transform(clean_sketch(draw_canvas(100 + i))) for i in range(n_cos)])
        ref = encoder.prompted(sketches, "sketch")
        cosines = {name: float(torch.nn.functional.cosine_similarity(f(sketches).float(), ref).min())
                   for name, f in paths.items()}
    stock_ms = p50(lat["stock open_clip fp32"])
    results["stock_ms"] = stock_ms
    results["encoder"] = {name: {"p50_ms": p50(t), "ratio": p50(t) / stock_ms, "cosine": cosines.get(name, 1.0)}
                          for name, t in lat.items()}
    print(f"\n-- image encoder, one {size}x{size} image, {len(next(iter(lat.values())))} interleaved runs each "
          f"(cosine: min over {n_cos} sketches vs prompted fp32)")
    print(row("path", "p50 ms", "p95 ms", "x stock", "cosine / verdict"))
    for name, t in lat.items():
        cos = cosines.get(name)
        verdict = "reference" if cos is None else (f"{cos:.5f} " + ("ok" if cos >= MIN_COSINE else "REJECT (<0.99)"))
        if name == "prompted fp32 (K=3)":
            ratio = p50(t) / stock_ms
            verdict = f"{cos:.5f} (prompt overhead {'ok' if ratio <= 1.05 else 'OVER 1.05'})"
        print(row(name, p50(t), p95(t), p50(t) / stock_ms, verdict))

    # the same comparison with one torch thread: shows how much of the time is thread synchronisation
    # (which is what explodes when other processes compete for the cores)
    threads = torch.get_num_threads()
    query_default = encoders[default_precision].query_model(default_precision)
    try:
        torch.set_num_threads(1)
        with torch.inference_mode():
            lat1 = interleaved({"stock": lambda: stock(x1), "default": lambda: query_default(x1, "sketch")},
                               max(4, repeats // 2))
    finally:
        torch.set_num_threads(threads)
    results["one_thread"] = {"stock_ms": p50(lat1["stock"]), "default_ms": p50(lat1["default"])}
    print(f"with torch.set_num_threads(1): stock fp32 {p50(lat1['stock']):.1f} ms, {default_precision} (default) "
          f"{p50(lat1['default']):.1f} ms = {p50(lat1['default']) / p50(lat1['stock']):.2f} x (vs {threads} threads above)")

    # -- 2. end to end: Sketchpad value -> SearchEngine.search_sketch -> hits ----------------------
    with tempfile.TemporaryDirectory(prefix="zsdemo-bench-") as tmp:
        tmp_dir = Path(tmp)
        t0 = time.perf_counter()
        gallery = fake_gallery(tmp_dir / "cache", encoder, gallery_size, IndexConfig())
        cache_s = time.perf_counter() - t0
        canvases = [sketchpad_value(200 + i) for i in range(8)]
        engines = {p: SearchEngine(encoders[p], gallery) for p in QUERY_PRECISIONS}
        counter = {p: 0 for p in QUERY_PRECISIONS}

        def query(p: str) -> None:
            counter[p] += 1
            result = engines[p].search_sketch(canvases[counter[p] % len(canvases)], k=12)
            assert len(result.hits) == min(12, gallery_size)

        e2e_fns: dict[str, Callable[[], Any]] = {"stock": lambda: stock(x1)}
        e2e_fns.update({p: functools.partial(query, p) for p in QUERY_PRECISIONS})
        with torch.inference_mode():
            e2e = interleaved(e2e_fns, max(repeats, 10))
        stock_times = e2e.pop("stock")
        e2e_stock = p50(stock_times)

        # where the time of the default path goes
        enc_d = encoders[default_precision]
        canvas = canvases[0]
        preview = clean_sketch(canvas)
        tensor = enc_d.transform(preview)[None]
        vector = enc_d.encode_tensor(tensor, "sketch", default_precision)[0].numpy()
        parts = interleaved({
            "clean_sketch (800x800 canvas)": lambda: clean_sketch(canvas),
            "transform (resize, normalise)": lambda: enc_d.transform(preview),
            f"encode ({default_precision})": lambda: enc_d.encode_tensor(tensor, "sketch", default_precision),
            f"gallery search ({gallery.backend}, {len(gallery)})": lambda: gallery.search(vector, 12),
        }, max(repeats, 10))

    results["e2e"] = {p: {"p50_ms": p50(t), "p95_ms": p95(t), "ratio": p50(t) / e2e_stock,
                          "paired_ratio": float(np.median(t / stock_times))} for p, t in e2e.items()}
    results["e2e_stock_ms"] = e2e_stock
    print(f"\n-- end to end: {CANVAS}x{CANVAS} Sketchpad value -> SearchEngine.search_sketch(k=12) over a "
          f"{gallery_size}-photo cache ({gallery.backend} search; cache written in {cache_s:.1f} s), "
          f"interleaved with the stock encoder (p50 {e2e_stock:.1f} ms in this section)")
    print(row("query_precision", "p50 ms", "p95 ms", "p50/stock", "per-round ratio; min/min; cosine",
              widths=(34, 12, 12, 12, 34)))
    for p, t in e2e.items():
        cos = results["encoder"].get(f"{p} (query_precision={p})", {"cosine": 1.0})["cosine"]
        results["e2e"][p]["min_ratio"] = float(t.min() / stock_times.min())
        print(row(p + (" (default)" if p == default_precision else ""), p50(t), p95(t), p50(t) / e2e_stock,
                  f"{results['e2e'][p]['paired_ratio']:.2f}; {results['e2e'][p]['min_ratio']:.2f}; {cos:.5f}",
                  widths=(34, 12, 12, 12, 34)))
    print("(per-round ratio: median over rounds of query time / stock time in the same round; min/min: fastest "
          "query / fastest stock run, the least disturbed by other processes)")
    print(f"breakdown of the default path ({default_precision}), p50:")
    for name, t in parts.items():
        print(f"   {name:<40} {p50(t):7.2f} ms")
    results["breakdown_ms"] = {name: p50(t) for name, t in parts.items()}

    # -- 3. Annoy vs exact ----------------------------------------------------------------------
    print(f"\n-- nearest neighbours, 512-d synthetic embedding-like unit vectors, {n_queries} queries, k=10 "
          f"(IndexConfig defaults: n_trees={IndexConfig().n_trees}, search_k={IndexConfig().search_k}, "
          f"annoy_threshold={IndexConfig().annoy_threshold})")
    print(row("items / index", "build s", "ms/query", "recall@10", "", widths=(34, 12, 12, 12, 2)))
    results["ann"] = {}
    search_ks = [2_000, 5_000, 10_000, 20_000, 40_000]
    exact_sizes = sorted({*annoy_sizes, *([] if quick else [25_000, 50_000])})
    all_data, queries = synthetic_embeddings(max(exact_sizes), 512, seed=3, n_queries=n_queries)
    results["exact_ms"] = {}
    for n in exact_sizes:
        data = all_data[:n]
        exact_search(data, queries[0], 10)  # warm
        t0 = time.perf_counter()
        for q in queries:
            exact_search(data, q, 10)
        results["exact_ms"][n] = (time.perf_counter() - t0) * 1000 / n_queries
        print(row(f"{n:,} exact (exact_search)", "-", results["exact_ms"][n], 1.0, "", widths=(34, 12, 12, 12, 2)))
    for n in annoy_sizes:
        data = all_data[:n]
        truth = [set(exact_search(data, q, 10)[0].tolist()) for q in queries]
        entry: dict[str, Any] = {"exact_ms": results["exact_ms"][n], "annoy": {}}
        for n_trees in ([10, 25] if quick else [25, 50]):
            icfg = IndexConfig(n_trees=n_trees)
            with tempfile.TemporaryDirectory(prefix="zsdemo-ann-") as tmp:
                t0 = time.perf_counter()
                build_annoy(data, Path(tmp) / "i.ann", icfg)
                build_s = time.perf_counter() - t0
                for search_k in search_ks:
                    searcher = AnnoySearcher(Path(tmp) / "i.ann", 512, replace(icfg, search_k=search_k))
                    t0 = time.perf_counter()
                    found = [searcher.search(q, 10)[0] for q in queries]
                    ms = (time.perf_counter() - t0) * 1000 / n_queries
                    recall = float(np.mean([len(truth[i] & set(f.tolist())) / 10 for i, f in enumerate(found)]))
                    entry["annoy"][(n_trees, search_k)] = {"build_s": build_s, "ms": ms, "recall": recall}
                    print(row(f"{n:,} annoy trees={n_trees} search_k={search_k}", build_s, ms, recall, "",
                              widths=(34, 12, 12, 12, 2)))
                    searcher.index.unload()
        results["ann"][n] = entry

    # -- 4. indexing rate vs raw encoder throughput ---------------------------------------------------
    with tempfile.TemporaryDirectory(prefix="zsdemo-idx-") as tmp:
        photos = Path(tmp) / "photos"
        photo_files(photos, n_photos)
        xb = torch.randn(batch, 3, size, size)

        def raw_runs() -> np.ndarray:
            return interleaved({"raw": lambda: encoder.encode_tensor(xb, "photo")}, max(2, repeats // 10), warmup=1)["raw"]

        before = raw_runs()  # raw throughput measured on both sides of the build (the machine may be shared)
        _, report = Gallery.build([photos], Path(tmp) / "cache", encoder)
        build_rate = report.added / report.seconds
        raw_rate = batch / (p50(np.concatenate([before, raw_runs()])) / 1000)
    results["indexing"] = {"photos_per_s": build_rate, "raw_images_per_s": raw_rate, "ratio": build_rate / raw_rate}
    print(f"\n-- gallery indexing: Gallery.build on {n_photos} generated 640x480 JPEGs: {build_rate:.1f} photos/s; "
          f"raw encode_tensor fp32 on a batch of {batch}: {raw_rate:.1f} images/s; "
          f"indexing runs at {build_rate / raw_rate:.2f} x the raw encoder throughput")

    # -- verdict ----------------------------------------------------------------------------------------
    d = results["e2e"][default_precision]
    cos_default = results["encoder"].get(f"{default_precision} (query_precision={default_precision})",
                                         {"cosine": 1.0})["cosine"]
    passed = d["ratio"] <= TARGET_RATIO and cos_default >= MIN_COSINE
    results["passed"] = passed
    verdict = (f"e2e p50 = {d['p50_ms']:.1f} ms = {d['ratio']:.2f} x stock fp32 ({e2e_stock:.1f} ms) "
               f"(target <= {TARGET_RATIO:.2f}; query_precision={default_precision}, cosine {cos_default:.4f}): "
               f"{'PASS' if passed else 'FAIL'}")
    results["verdict"] = verdict
    print(f"\n(total bench time {time.perf_counter() - started:.0f} s; load average (1 min) now "
          f"{machine_info()['load_avg_1m']})")
    if not passed:
        limits = ", ".join(f"{name} {ms:.1f} ms" for name, ms in results["breakdown_ms"].items())
        print(f"what limits it: {limits}")
    print(verdict)
    return results
