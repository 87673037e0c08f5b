"""Search and indexing benchmark: exact vs Annoy nearest neighbours (recall, latency) and the gallery
indexing rate against the raw encoder throughput, measured in this run on this machine.

    python bench/search.py                 # 10k and 100k items; 96 photos indexed with the app's model (random init)
    python bench/search.py --quick --model zsdemo-tiny-vit

Every figure is printed beside the CPU it was measured on. The sketch query path is measured by
bench/query.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import logging
import tempfile
import time
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from bench.machine import machine_info, machine_line
from bench.settings import bench_config
from bench.synthetic import photo_files, synthetic_embeddings
from bench.timing import interleaved, p50, row
from zsdemo.config import DEFAULT_MODEL
from zsdemo.model.encoder import EncoderConfig, SketchPhotoEncoder
from zsdemo.store.build import build_gallery
from zsdemo.store.index import AnnoySearcher, IndexConfig, build_annoy, exact_search


def run(model: str = DEFAULT_MODEL, pretrained: str = "none", quick: bool = False, repeats: int = 30) -> dict[str, Any]:
    """Run both sections, print the figures, return them."""
    annoy_sizes = [2_000] if quick else [10_000, 100_000]
    n_queries = 20 if quick else 200
    n_photos = 16 if quick else 96
    batch = 8 if quick else 32
    results: dict[str, Any] = {"model": model, "pretrained": pretrained, "quick": quick}
    info = machine_info()
    results["machine"] = info
    print(f"== bench/search.py: {model} (pretrained={pretrained}){' [quick]' if quick else ''}")
    print(machine_line(info))
    encoder = SketchPhotoEncoder.load(EncoderConfig(model=model, pretrained=pretrained, query_precision="fp32"))
    size = encoder.image_size

    print(f"\n-- nearest neighbours [{info['cpu']}, {info['cpu_label']}], 512-d synthetic embedding-like unit vectors, {n_queries} queries, k=10 "
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


    with tempfile.TemporaryDirectory(prefix="zsdemo-idx-") as tmp:
        photos = Path(tmp) / "photos"
        photo_files(photos, n_photos)
        xb = torch.randn(batch, 3, size, size)

        def raw_runs() -> np.ndarray:
            return interleaved({"raw": lambda: encoder.encode_tensor(xb, "photo")}, max(2, repeats // 10), warmup=1)["raw"]

        before = raw_runs()  # raw throughput measured on both sides of the build (the machine may be shared)
        _, report = build_gallery([photos], Path(tmp) / "cache", encoder)
        build_rate = report.added / report.seconds
        raw_rate = batch / (p50(np.concatenate([before, raw_runs()])) / 1000)
    results["indexing"] = {"photos_per_s": build_rate, "raw_images_per_s": raw_rate, "ratio": build_rate / raw_rate}
    print(f"\n-- gallery indexing: build_gallery on {n_photos} generated 640x480 JPEGs: {build_rate:.1f} photos/s; "
          f"raw encode_tensor fp32 on a batch of {batch}: {raw_rate:.1f} images/s; "
          f"indexing runs at {build_rate / raw_rate:.2f} x the raw encoder throughput")

    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description="exact vs Annoy search, and the gallery indexing rate")
    parser.add_argument("--model", help="open_clip model (default: the app's, zsdemo.config; ZSDEMO_MODEL)")
    parser.add_argument("--pretrained", help="weights (default: none, random init; ZSDEMO_PRETRAINED)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cfg = bench_config({"model": args.model, "pretrained": args.pretrained})
    return run(cfg.model, cfg.pretrained, args.quick, args.repeats)


if __name__ == "__main__":
    main()
