"""Per-stroke round trip of the launched app, against the engine's own query latency, in one run.

    python bench/app_roundtrip.py                      # 10k-photo gallery, ViT-B/32 (random init), 60 strokes
    python bench/app_roundtrip.py --photos 2000 --rounds 20 --model zsdemo-tiny-vit   # quick smoke run
    python bench/app_roundtrip.py --url http://host:7860/ --rounds 30                  # an app already running

What it does:
1. Builds a real gallery cache from a few real photos (the starter photos) with the full backbone, then
   writes a synthetic generation of `--photos` entries into the same cache: the real entries plus
   random unit-vector embeddings that reuse the real thumbnails. The app loads it like any cache.
2. Starts `python app.py --cache DIR --model M --pretrained none` as a separate process on 127.0.0.1
   and waits until the gallery is ready.
3. Simulates drawing: sketch k has k strokes. Each stroke is uploaded through gradio_client to the
   `/search` endpoint exactly as the browser's Sketchpad does (composite PNG) and timed until the
   ranked results come back (JSON; and separately with the 12 thumbnails + preview downloaded).
4. Starts a reference server with the same Sketchpad endpoint and outputs but no model or search,
   so the framework's own share of the round trip is visible.
5. In this process, times the engine's `search_sketch` on the same sketches (same weights, same
   gallery, idle server; interleaved with the round trips so all see the same machine load), and prints the overhead ratio round trip / engine (p50).
6. Pairs each round trip with the engine time the app itself reported for that call (its status line,
   whole milliseconds): the most load-robust overhead figure on a shared machine.
All numbers are from this run on this machine; random weights make no difference to speed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def summary(values_s: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values_s]
    return {"p50_ms": percentile(ms, 50), "p95_ms": percentile(ms, 95), "mean_ms": statistics.fmean(ms), "n": len(ms)}


def drawing(n_sketches: int, size: int, seed: int = 0) -> list[Image.Image]:
    """A drawing that grows stroke by stroke: sketch i holds strokes 0..i."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    out = []
    for _ in range(n_sketches):
        points = [tuple(p) for p in rng.integers(size // 10, size - size // 10, (rng.integers(2, 6), 2)).tolist()]
        draw.line(points, fill="black", width=max(2, size // 100), joint="curve")
        out.append(image.copy())
    return out


def build_cache(cache: Path, photos_dir: Path, n_photos: int, model: str, pretrained: str) -> tuple[object, object]:
    """A real cache of the real photos, then a synthetic generation of n_photos entries in the same folder."""
    from zsdemo.encoder import EncoderConfig, SketchPhotoEncoder
    from zsdemo.gallery import Gallery, write_generation
    from zsdemo.index import IndexConfig

    encoder = SketchPhotoEncoder.load(EncoderConfig(model=model, pretrained=pretrained))
    started = time.perf_counter()
    real, report = Gallery.build([photos_dir], cache, encoder)
    print(f"real gallery: {len(real)} photos encoded in {report.seconds:.1f} s")
    entries = list(real.entries)
    rng = np.random.default_rng(0)
    extra = max(0, n_photos - len(entries))
    synthetic = rng.standard_normal((extra, real.embeddings.shape[1])).astype(np.float32)
    synthetic /= np.linalg.norm(synthetic, axis=1, keepdims=True)
    for i in range(extra):
        base = entries[i % len(real.entries)]
        entries.append({**base, "name": f"synthetic/{i:05d}-{base['name']}"})
    matrix = np.concatenate([real.embeddings, synthetic]).astype(np.float32)
    write_generation(cache, entries, matrix, list(real.sources), encoder, IndexConfig())
    gallery = Gallery.open(cache, encoder)
    print(f"synthetic gallery: {len(gallery)} photos ({gallery.backend} search), written in "
          f"{time.perf_counter() - started:.1f} s")
    return encoder, gallery


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(cache: Path, model: str, pretrained: str, log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, str(ROOT / "app.py"), "--cache", str(cache), "--model", model, "--pretrained", pretrained,
           "--host", "127.0.0.1", "--port", str(port)]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log_path.open("w"), stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}/"


def serve_floor(port: int, thumbs_dir: str, k: int) -> None:
    """Reference server: the same Sketchpad in, the same outputs out (12 static thumbnails, a PNG preview,
    a status), but no model and no search. Its round trip is what Gradio + gradio_client cost on their own."""
    import gradio as gr

    thumbs = sorted(Path(thumbs_dir).glob("*.jpg"))[:k]
    gr.set_static_paths([thumbs_dir])

    def search(sketch: dict, k: float, text: str, weight: float) -> tuple[list, Image.Image, str]:
        preview = Image.fromarray(sketch["composite"]).resize((224, 224))
        return [(str(t), f"0.000 · {t.name}") for t in thumbs], preview, "floor"

    with gr.Blocks() as demo:
        sketch = gr.Sketchpad(image_mode="RGB", type="numpy", canvas_size=(448, 448), layers=False)
        inputs = [sketch, gr.Slider(1, 48, value=12), gr.Textbox(), gr.Slider(0, 1, value=0)]
        outputs = [gr.Gallery(), gr.Image(type="pil", format="png"), gr.Markdown()]
        sketch.change(search, inputs, outputs, api_name="search", show_progress="hidden")
    demo.queue(default_concurrency_limit=2, max_size=32).launch(server_name="127.0.0.1", server_port=port, quiet=True)


def start_floor(thumbs_dir: Path, k: int, log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, __file__, "--serve-floor", str(port), "--floor-thumbs", str(thumbs_dir), "--k", str(k)]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log_path.open("w"), stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}/"


def connect(url: str, timeout: float = 180.0, proc: subprocess.Popen | None = None):
    from gradio_client import Client

    end = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"the app exited with code {proc.returncode}")
        try:
            return Client(url, verbose=False, download_files=False)
        except Exception:
            if time.monotonic() > end:
                raise
            time.sleep(1.0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--photos", type=int, default=10_000)
    p.add_argument("--rounds", type=int, default=60, help="strokes timed (after 3 warm-up strokes)")
    p.add_argument("--k", type=int, default=12)
    p.add_argument("--model", default="ViT-B-32-quickgelu")
    p.add_argument("--pretrained", default="none")
    p.add_argument("--canvas", type=int, default=448, help="canvas side in pixels (the app's is 448)")
    p.add_argument("--url", help="benchmark an app that is already running (skips building and starting one)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--serve-floor", type=int, help=argparse.SUPPRESS)  # internal: run the reference server
    p.add_argument("--floor-thumbs", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve_floor:
        serve_floor(args.serve_floor, args.floor_thumbs, args.k)
        return

    from gradio_client import Client, handle_file

    work = Path(tempfile.mkdtemp(prefix="zsdemo-bench-"))
    sketches = drawing(args.rounds + 3, args.canvas)
    files = []
    for i, sketch in enumerate(sketches):
        files.append(work / f"stroke-{i:03d}.png")
        sketch.save(files[-1])

    proc = floor_proc = None
    floor = None
    floor_s: list[float] = []
    encoder = gallery = None
    json_only: list[float] = []
    with_files: list[float] = []
    engine_s: list[float] = []
    server_engine_s: list[float] = []  # engine time inside the app for the same calls (from its status line)
    try:
        if args.url:
            url = args.url
        else:
            from zsdemo.starter import starter_photos_dir

            cache = work / "cache"
            encoder, gallery = build_cache(cache, starter_photos_dir(work), args.photos, args.model, args.pretrained)
            proc, url = start_app(cache, args.model, args.pretrained, work / "app.log")
            floor_proc, floor_url = start_floor(cache / "thumbs", args.k, work / "floor.log")
            floor = connect(floor_url, proc=floor_proc)
        client = connect(url, proc=proc)

        def stroke(path: Path, c: Client) -> tuple[float, float | None]:
            """(round trip seconds, engine seconds the server reported for this very call)."""
            started = time.perf_counter()
            results, _, status = c.predict({"background": None, "layers": [], "composite": handle_file(str(path))},
                                           args.k, "", 0.0, api_name="/search")
            elapsed = time.perf_counter() - started
            if not results:
                raise RuntimeError(f"no results: {status}")
            reported = re.search(r" in (\d+) ms", status)
            return elapsed, int(reported.group(1)) / 1000 if reported else None

        end = time.monotonic() + 300
        while True:  # the app loads the model and opens the cache in the background
            results, _, status = client.predict({"background": None, "layers": [], "composite": handle_file(str(files[0]))},
                                                args.k, "", 0.0, api_name="/search")
            if results:
                break
            if time.monotonic() > end:
                raise SystemExit(f"app not ready: {status}")
            time.sleep(1.0)
        print(f"app ready at {url}: {status}")

        downloading = Client(url, verbose=False, download_files=str(work / "downloads"))
        engine = None
        if encoder is not None:
            from zsdemo.engine import SearchEngine

            engine = SearchEngine(encoder, gallery)
        for path, sketch in zip(files[:3], sketches[:3], strict=True):  # warm-up
            stroke(path, client)
            stroke(path, downloading)
            if engine is not None:
                engine.search_sketch(np.asarray(sketch), k=args.k)
            if floor is not None:
                stroke(path, floor)
        # Interleaved, so the three series see the same machine load (these machines are shared and noisy).
        for path, sketch in zip(files[3:], sketches[3:], strict=True):
            elapsed, reported = stroke(path, client)
            json_only.append(elapsed)
            if reported is not None:
                server_engine_s.append(reported)
            with_files.append(stroke(path, downloading)[0])
            if engine is not None:
                started = time.perf_counter()
                engine.search_sketch(np.asarray(sketch), k=args.k)  # the same array type the app gets
                engine_s.append(time.perf_counter() - started)
            if floor is not None:
                floor_s.append(stroke(path, floor)[0])
    finally:
        for process in (proc, floor_proc):
            if process is not None:
                process.terminate()
                process.wait(timeout=30)

    import torch

    figures = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
                    "load_average_1m_at_end": os.getloadavg()[0]},
        "model": args.model, "pretrained": args.pretrained,
        "query_precision": getattr(getattr(encoder, "cfg", None), "query_precision", None), "gallery_photos": len(gallery) if gallery else None,
        "search_backend": getattr(gallery, "backend", None), "k": args.k, "canvas": args.canvas,
        "roundtrip_results_json": summary(json_only),
        "roundtrip_with_thumbnail_downloads": summary(with_files),
    }
    if server_engine_s and len(server_engine_s) == len(json_only):
        figures["engine_in_app_same_calls"] = summary(server_engine_s)
        figures["overhead_ratio_same_calls_median"] = statistics.median(
            r / max(e, 1e-3) for r, e in zip(json_only, server_engine_s, strict=True))
        figures["overhead_ms_same_calls_median"] = 1000 * statistics.median(
            r - e for r, e in zip(json_only, server_engine_s, strict=True))
    if engine_s:
        figures["engine_search_sketch"] = summary(engine_s)
        figures["overhead_ratio_p50"] = figures["roundtrip_results_json"]["p50_ms"] / figures["engine_search_sketch"]["p50_ms"]
        figures["overhead_ms_p50"] = figures["roundtrip_results_json"]["p50_ms"] - figures["engine_search_sketch"]["p50_ms"]
        if floor_s:
            figures["gradio_floor_roundtrip"] = summary(floor_s)
        figures["overhead_ratio_paired_median"] = statistics.median(r / e for r, e in zip(json_only, engine_s, strict=True))

    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
        figures["machine"]["cpu"] = cpu
    except (OSError, StopIteration):
        pass
    rt, rtf = figures["roundtrip_results_json"], figures["roundtrip_with_thumbnail_downloads"]
    print(f"\nmachine: {figures['machine']['cpu']}, {figures['machine']['cores']} cores, torch threads "
          f"{figures['machine']['torch_threads']}, load average {figures['machine']['load_average_1m_at_end']:.1f} "
          "(other jobs share these cores; compare the ratios)")
    print(f"model {args.model} ({args.pretrained}, query precision {figures['query_precision']}), gallery {figures['gallery_photos']} photos "
          f"({figures['search_backend']}), k={args.k}, canvas {args.canvas}px, {rt['n']} strokes")
    print(f"round trip, stroke -> ranked results (gradio_client):  p50 {rt['p50_ms']:.1f} ms  p95 {rt['p95_ms']:.1f} ms")
    print(f"round trip incl. downloading {args.k} thumbnails+preview: p50 {rtf['p50_ms']:.1f} ms  p95 {rtf['p95_ms']:.1f} ms")
    if engine_s:
        en = figures["engine_search_sketch"]
        print(f"engine search_sketch (bench process, interleaved):   p50 {en['p50_ms']:.1f} ms  p95 {en['p95_ms']:.1f} ms")
        print(f"overhead ratio (round trip p50 / engine p50): {figures['overhead_ratio_p50']:.2f}x "
              f"(+{figures['overhead_ms_p50']:.1f} ms); median of per-stroke ratios "
              f"{figures['overhead_ratio_paired_median']:.2f}x")
    if "engine_in_app_same_calls" in figures:
        ea = figures["engine_in_app_same_calls"]
        print(f"engine time inside the app, same calls (ms-rounded):  p50 {ea['p50_ms']:.1f} ms  p95 {ea['p95_ms']:.1f} ms")
        print(f"overhead per call, paired: median ratio {figures['overhead_ratio_same_calls_median']:.2f}x, "
              f"median +{figures['overhead_ms_same_calls_median']:.1f} ms")
    if floor_s:
        fl = figures["gradio_floor_roundtrip"]
        print(f"reference: same endpoint without model or search:    p50 {fl['p50_ms']:.1f} ms  p95 {fl['p95_ms']:.1f} ms "
              "(Gradio + gradio_client alone)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
