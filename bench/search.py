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

WIDTHS = (34, 12, 12, 12, 2)


def exact_rows(all_data: np.ndarray, queries: np.ndarray, sizes: list[int]) -> dict[int, float]:
    """Mean ms per exact query at each gallery size."""
    out = {}
    for n in sizes:
        data = all_data[:n]
        exact_search(data, queries[0], 10)  # warm
        t0 = time.perf_counter()
        for q in queries:
            exact_search(data, q, 10)
        out[n] = (time.perf_counter() - t0) * 1000 / len(queries)
        print(row(f"{n:,} exact (exact_search)", "-", out[n], 1.0, "", widths=WIDTHS))
    return out


def annoy_rows(data: np.ndarray, queries: np.ndarray, trees: list[int], search_ks: list[int]) -> dict[Any, Any]:
    """Annoy at each (n_trees, search_k): build seconds, mean ms per query, recall@10 against exact search."""
    n = len(data)
    truth = [set(exact_search(data, q, 10)[0].tolist()) for q in queries]
    out: dict[Any, Any] = {}
    for n_trees in trees:
        icfg = IndexConfig(n_trees=n_trees)
        with tempfile.TemporaryDirectory(prefix="zsdemo-ann-") as tmp:
            t0 = time.perf_counter()
            build_annoy(data, Path(tmp) / "i.ann", icfg)
            build_s = time.perf_counter() - t0
            for search_k in search_ks:
                searcher = AnnoySearcher(Path(tmp) / "i.ann", data.shape[1], replace(icfg, search_k=search_k))
                t0 = time.perf_counter()
                found = [searcher.search(q, 10)[0] for q in queries]
                ms = (time.perf_counter() - t0) * 1000 / len(queries)
                recall = float(np.mean([len(truth[i] & set(f.tolist())) / 10 for i, f in enumerate(found)]))
                out[(n_trees, search_k)] = {"build_s": build_s, "ms": ms, "recall": recall}
                print(row(f"{n:,} annoy trees={n_trees} search_k={search_k}", build_s, ms, recall, "", widths=WIDTHS))
                searcher.unload()
    return out


def section_ann(results: dict[str, Any], info: dict[str, Any], quick: bool) -> None:
    annoy_sizes = [2_000] if quick else [10_000, 100_000]
    n_queries = 20 if quick else 200
    cfg = IndexConfig()
    print(f"\n-- nearest neighbours [{info['cpu']}, {info['cpu_label']}], 512-d synthetic embedding-like unit vectors, "
          f"{n_queries} queries, k=10 (IndexConfig defaults: n_trees={cfg.n_trees}, search_k={cfg.search_k}, "
          f"annoy_threshold={cfg.annoy_threshold})")
    print(row("items / index", "build s", "ms/query", "recall@10", "", widths=WIDTHS))
    exact_sizes = sorted({*annoy_sizes, *([] if quick else [25_000, 50_000])})
    all_data, queries = synthetic_embeddings(max(exact_sizes), 512, seed=3, n_queries=n_queries)
    results["exact_ms"] = exact_rows(all_data, queries, exact_sizes)
    results["ann"] = {}
    for n in annoy_sizes:
        annoy = annoy_rows(all_data[:n], queries, [10, 25] if quick else [25, 50], [2_000, 5_000, 10_000, 20_000, 40_000])
        results["ann"][n] = {"exact_ms": results["exact_ms"][n], "annoy": annoy}


def section_indexing(results: dict[str, Any], encoder: SketchPhotoEncoder, quick: bool, repeats: int) -> None:
    """The library's gallery build on generated photos, against the raw encoder throughput around it."""
    n_photos, batch, size = (16, 8, encoder.image_size) if quick else (96, 32, encoder.image_size)
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


def run(model: str = DEFAULT_MODEL, pretrained: str = "none", quick: bool = False, repeats: int = 30) -> dict[str, Any]:
    """Run both sections, print the figures, return them."""
    info = machine_info()
    results: dict[str, Any] = {"model": model, "pretrained": pretrained, "quick": quick, "machine": info}
    print(f"== bench/search.py: {model} (pretrained={pretrained}){' [quick]' if quick else ''}")
    print(machine_line(info))
    encoder = SketchPhotoEncoder.load(EncoderConfig(model=model, pretrained=pretrained, query_precision="fp32"))
    section_ann(results, info, quick)
    section_indexing(results, encoder, quick, repeats)
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
