"""Two modes, one backbone: resident memory with one vs two prompt sets, and the cost of "why this photo".

    python bench/modes.py                                   # the app's model (zsdemo.config), random init (no download)
    python bench/modes.py --model zsdemo-tiny-vit --reps 5  # smoke run

Memory: each configuration is loaded in a fresh process and its VmRSS read from /proc/self/status once the
encoders (and their query paths) are built: one mode; two modes on one backbone (`with_prompts`, what
app.py does); and, for reference, two independent encoders (two copies of CLIP, what the app avoids).
The prompt checkpoints are random ones of the two kinds (category: sketch + photo prompts; fine-grained:
one shared prompt), written to a temporary folder; their size does not depend on training.

Explanation: the similarity map for one 640x480 photo (photo branch to patch tokens, cosine with the sketch
embedding, overlay) and, separately, the sketch embedding it needs, timed on this CPU (median of --reps).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import json
import logging
import subprocess
import tempfile
import time
from typing import Any

import numpy as np

from bench.machine import machine_info, machine_line
from bench.settings import bench_config

log = logging.getLogger("bench.modes")


def vm_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def write_checkpoints(model: str, folder: Path) -> tuple[Path, Path]:
    """Random prompt checkpoints of both kinds for `model` (random backbone, never downloaded)."""
    import torch

    from zsdemo.model.encoder import create_clip
    from zsdemo.model.preprocess import PREPROCESS_VERSION
    from zsdemo.model.prompts import PromptedViT, PromptSpec, save_checkpoint

    visual = create_clip(model, "none").visual
    paths = []
    for name, shared in (("category", False), ("fine_grained", True)):
        prompted = PromptedViT(visual, PromptSpec(n_prompts=3, shared=shared, layernorm=True),
                               generator=torch.Generator().manual_seed(0))
        paths.append(save_checkpoint(folder / f"{name}.safetensors", prompted, model, "none", PREPROCESS_VERSION))
    return paths[0], paths[1]


def child(args: argparse.Namespace) -> None:
    """Runs in a fresh process: load one configuration, print {"rss_mb": ...} (and the explain timings)."""
    import torch

    from zsdemo.model.encoder import EncoderConfig, SketchPhotoEncoder

    if args.threads:
        torch.set_num_threads(args.threads)
    base = vm_rss_mb()
    cfg = EncoderConfig(model=args.model, pretrained="none", prompts=args.category, query_precision=args.precision)
    first = SketchPhotoEncoder.load(cfg)
    encoders = [first]
    if args.config == "two-shared":
        encoders.append(first.with_prompts(args.fine_grained))
    elif args.config == "two-copies":
        encoders.append(SketchPhotoEncoder.load(EncoderConfig(model=args.model, pretrained="none",
                                                              prompts=args.fine_grained,
                                                              query_precision=args.precision)))
    from PIL import Image

    probe = Image.new("RGB", (64, 64), "white")
    for enc in encoders:  # touch every path once, as a served app does
        enc.encode_photos([probe])
    out: dict[str, Any] = {"config": args.config, "rss_mb": round(vm_rss_mb(), 1), "python_rss_mb": round(base, 1),
                           "backbone_params_m": round(sum(p.numel() for p in first.clip.parameters()) / 1e6, 1),
                           "distinct_backbones": len({id(e.clip) for e in encoders}),
                           "query_paths": [e.query_path for e in encoders]}
    if args.config == "two-shared" and args.reps:
        out["explain"] = time_explain(encoders[1], args.reps)
    print(json.dumps(out))


def time_explain(encoder: Any, reps: int) -> dict[str, float]:
    from bench.synthetic import stroke_json
    from zsdemo.model.preprocess import clean_sketch
    from zsdemo.search.explain import explain_photo

    rng = np.random.default_rng(0)
    from PIL import Image, ImageDraw

    photo = Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))
    ImageDraw.Draw(photo).ellipse((100, 150, 260, 310), fill="black")
    sketch = clean_sketch(stroke_json(0, 6))  # what the page sends after 6 strokes
    sketch_ms, explain_ms, photo_ms = [], [], []
    for _ in range(reps + 1):  # interleaved, so a noisy neighbour slows all three alike
        t0 = time.perf_counter()
        vector = encoder.encode_clean_sketches([sketch])[0]
        t1 = time.perf_counter()
        result = explain_photo(encoder, photo, vector, max_side=1280)
        t2 = time.perf_counter()
        encoder.encode_photos([photo])  # reference: indexing one photo (one forward pass, no map)
        t3 = time.perf_counter()
        sketch_ms.append((t1 - t0) * 1000)
        explain_ms.append((t2 - t1) * 1000)
        photo_ms.append((t3 - t2) * 1000)
    assert result.image.size == photo.size
    sketch_ms, explain_ms, photo_ms = sketch_ms[1:], explain_ms[1:], photo_ms[1:]  # the first call warms up
    return {"map_p50_ms": round(float(np.median(explain_ms)), 1), "map_min_ms": round(min(explain_ms), 1),
            "sketch_p50_ms": round(float(np.median(sketch_ms)), 1),
            "photo_encode_p50_ms": round(float(np.median(photo_ms)), 1), "photo_encode_min_ms": round(min(photo_ms), 1),
            "map_over_photo_encode_p50": round(float(np.median(np.divide(explain_ms, photo_ms))), 2),
            "total_p50_ms": round(float(np.median(np.add(sketch_ms, explain_ms))), 1), "reps": reps}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="open_clip model (default: the app's, zsdemo.config; ZSDEMO_MODEL)")
    p.add_argument("--precision", default="fp32", help="query path of each encoder (fp32: isolates the backbone)")
    p.add_argument("--reps", type=int, default=10, help="timed explanations (0 = skip)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--json", action="store_true", help="print only the JSON result")
    p.add_argument("--explain-only", action="store_true", help="skip the memory comparison (one process)")
    p.add_argument("--child", choices=["one", "two-shared", "two-copies"], dest="config", help=argparse.SUPPRESS)
    p.add_argument("--category", help=argparse.SUPPRESS)
    p.add_argument("--fine-grained", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.config:
        child(args)
        return {}
    args.model = bench_config({"model": args.model}).model
    logging.basicConfig(level=logging.WARNING)
    results: dict[str, Any] = {"machine": machine_info(), "model": args.model, "precision": args.precision}
    with tempfile.TemporaryDirectory() as tmp:
        category, fine = write_checkpoints(args.model, Path(tmp))
        for config in ("two-shared",) if args.explain_only else ("one", "two-shared", "two-copies"):
            cmd = [sys.executable, __file__, "--child", config, "--model", args.model, "--precision", args.precision,
                   "--category", str(category), "--fine-grained", str(fine), "--reps", str(args.reps),
                   "--threads", str(args.threads)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(f"{config} failed:\n{done.stderr[-2000:]}")
            results[config] = json.loads(done.stdout.strip().splitlines()[-1])
    if args.explain_only:
        results["one"] = results["two-copies"] = {"rss_mb": float("nan"), "backbone_params_m": float("nan")}
    one, two, copies = results["one"]["rss_mb"], results["two-shared"]["rss_mb"], results["two-copies"]["rss_mb"]
    results["verdict"] = {"rss_one_mode_mb": one, "rss_two_modes_mb": two, "rss_two_copies_mb": copies,
                          "second_mode_costs_mb": round(two - one, 1), "a_second_copy_would_cost_mb": round(copies - one, 1),
                          "explain": results["two-shared"].get("explain")}
    if args.json:
        print(json.dumps(results, indent=2))
        return results
    print(machine_line(results["machine"]))
    print(f"model {args.model} (random init), query path {args.precision}, "
          f"backbone {results['one']['backbone_params_m']}M parameters")
    print(f"RSS one mode:                     {one:8.1f} MB")
    print(f"RSS two modes, one backbone:      {two:8.1f} MB  (+{two - one:.1f} MB)")
    print(f"RSS two independent encoders:     {copies:8.1f} MB  (+{copies - one:.1f} MB; what sharing avoids)")
    ex = results["two-shared"].get("explain")
    if ex:
        print(f"why-this-photo map, 640x480 photo: p50 {ex['map_p50_ms']} ms (min {ex['map_min_ms']} ms); "
              f"the sketch embedding it needs: p50 {ex['sketch_p50_ms']} ms; together {ex['total_p50_ms']} ms "
              f"({ex['reps']} reps)")
        print(f"reference, encoding one photo for the index: p50 {ex['photo_encode_p50_ms']} ms (min "
              f"{ex['photo_encode_min_ms']} ms); map / photo encode, per rep p50: {ex['map_over_photo_encode_p50']}x")
    print(json.dumps(results["verdict"]))
    return results


if __name__ == "__main__":
    main()
