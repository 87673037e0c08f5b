"""Scale benchmark: exact search, Annoy and HNSW (Voyager) side by side on 100k and 1M embedding-like
vectors, and real indexing throughput on 1 vs 2 processes.

    python bench/scale.py                                # vectors at 100k and 1M, then indexing throughput
    python bench/scale.py --sizes 100000 --section vectors
    python bench/scale.py --section indexing --photos 96

Vectors (bench.synthetic.write_vectors: 512-d unit vectors clustered like CLIP embeddings, written to disk
in chunks; `--queries` held-out queries from the same distribution; their exact top-10 is the truth).
Each index is measured in a child process of its own, with the library's code (zsdemo.store.index):
  build  - build_hnsw / build_annoy with `--build-threads` threads: seconds, peak RSS (ru_maxrss; sampled
           anonymous and file-backed peaks) against the embeddings' bytes.
  tune   - the library's tuning on its probe queries (tune_ef / tune_search_k, target recall@10 0.95 plus its margin): the
           setting a gallery built by write_generation would serve with.
  query  - one thread per query, k=10: p50/p95 ms and recall@10 against exact search on the held-out
           queries, at the tuned setting and over a sweep of settings.
Exact search is the same child without a build (torch, 1 thread, over the memory-mapped .npy).
Annoy gets fewer trees at 1M (`--annoy-trees-large`) and a time limit (`--annoy-timeout`): its on-disk
build is the slowest of the three, and the point of the run is the side-by-side at 1M.

Indexing: `python -m zsdemo index` (the model resolved like the app's: zsdemo.config) at random init on
generated photos: 1 process with 1 and 2 torch threads, and 2 processes (torchrun, gloo, 1 thread each).

Every figure is printed beside the CPU it was measured on; the last line is machine-readable:
    scale_verdict={"targets": ..., "sizes": {"1000000": {"hnsw": {"p50_ms": ..., "pass": true}, ...}}, ...}
against the targets p50 <= 5 ms at recall@10 >= 0.95, build <= 15 min, build peak RSS <= 2x embeddings.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import json
import os
import resource
import shutil
import subprocess
import tempfile
import time
from typing import Any

import numpy as np

from bench.machine import PeakSampler, gib, load_average, peak_rss, proc_status, reset_peak_rss, thread_settings

REPO = Path(__file__).resolve().parents[1]
DIM = 512  # CLIP ViT-B image embeddings
K = 10
TARGETS = {"p50_ms": 5.0, "recall_at_10": 0.95, "build_s": 15 * 60.0, "build_rss_ratio": 2.0}
HNSW_SWEEP = (10, 16, 24, 32, 48, 64, 96, 128, 192, 256)
ANNOY_SWEEP = (2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000)


# ---- child process: one backend ---------------------------------------------------------------------
def cpu_seconds() -> float:
    """User + system CPU time of this process so far (on a shared machine, wall time alone overstates work)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def build_variant(vectors: Path, path: Path, cfg: Any, storage: str, chunk_rows: int) -> None:
    """An HNSW index with another Voyager storage type (E4M3, Float8) or another number of rows per
    add_items call: the library's build_hnsw with only that changed (it stores Float32 and feeds
    CHUNK_ROWS rows a call), for the memory investigation."""
    from voyager import Index, Space, StorageDataType

    from zsdemo.store.index import iter_row_chunks, source_rows

    n, row = source_rows(vectors), 0
    index = Index(Space.InnerProduct, num_dimensions=DIM, M=cfg.hnsw_m, ef_construction=cfg.hnsw_ef_construction,
                  random_seed=cfg.seed + 1, max_elements=n, storage_data_type=getattr(StorageDataType, storage))
    for chunk in iter_row_chunks(vectors, chunk_rows):
        index.add_items(chunk, ids=list(range(row, row + chunk.shape[0])), num_threads=cfg.build_threads)
        row += chunk.shape[0]
    index.save(str(path))


def build_child(backend: str, vectors: Path, work: Path, params: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Build `backend`'s index over `vectors` in this process: (searcher, build figures)."""
    import torch

    from zsdemo.store.index import CHUNK_ROWS, IndexConfig, build_annoy, build_hnsw, open_searcher

    torch.set_num_threads(params["build_threads"])
    cfg = IndexConfig(n_trees=params.get("n_trees", 50), hnsw_m=params.get("m", 16),
                      hnsw_ef_construction=params.get("ef_construction", 100), build_threads=params["build_threads"])
    path = work / f"index-{backend}-{os.getpid()}"
    hwm_reset = reset_peak_rss()  # the peak of the build, not of importing torch
    baseline = proc_status()
    cpu0 = cpu_seconds()
    started = time.perf_counter()
    with PeakSampler() as sampler:
        if backend == "annoy":
            build_annoy(vectors, path, cfg)
        elif params.get("storage", "Float32") != "Float32" or "chunk" in params:
            build_variant(vectors, path, cfg, params.get("storage", "Float32"), params.get("chunk", CHUNK_ROWS))
        else:
            build_hnsw(vectors, path, cfg)
    build = {"build_s": time.perf_counter() - started, "build_cpu_s": cpu_seconds() - cpu0,
             "build_peak_rss": peak_rss(), "baseline": baseline,
             "hwm_reset": hwm_reset,
             "peak": sampler.peak, "index_bytes": path.stat().st_size}
    t0 = time.perf_counter()
    searcher = open_searcher(backend, path, DIM, cfg)
    build["open_s"] = time.perf_counter() - t0
    build["after_open"] = proc_status()
    return searcher, build


def query_figures(search: Any, queries: np.ndarray, truth: np.ndarray, budget_s: float) -> dict[str, Any]:
    """One query at a time (after a warm-up pass over 20): p50/p95 ms and recall@10 against `truth`; stops
    after `budget_s` seconds (at least 20 queries), saying how many were run."""
    from bench.timing import p50, p95, timed_each

    for q in queries[:20]:
        search(q)
    times, found = timed_each(search, queries, budget_s=budget_s)
    hits = sum(len(set(np.asarray(ids).tolist()) & set(want.tolist())) for ids, want in zip(found, truth, strict=False))
    return {"p50_ms": p50(times), "p95_ms": p95(times), "recall_at_10": hits / (K * len(found)), "queries": len(found)}


def tune_and_sweep(backend: str, searcher: Any, vectors: Path, queries: np.ndarray, truth: np.ndarray,
                   budget_s: float) -> dict[str, Any]:
    """The library's tuned setting (its own probe queries), measured on the held-out queries, and a sweep."""
    from zsdemo.store.index import tune_ef, tune_search_k

    tune, ladder = (tune_search_k, ANNOY_SWEEP) if backend == "annoy" else (tune_ef, HNSW_SWEEP)
    t0 = time.perf_counter()
    from zsdemo.store.index import IndexConfig

    cfg = IndexConfig()  # the library's own tuning target: the recall wanted plus its margin for easy probes
    setting, probe_recall = tune(searcher, vectors, target=min(0.999, cfg.target_recall + cfg.tune_margin), k=K)
    out: dict[str, Any] = {"setting_name": "search_k" if backend == "annoy" else "ef", "tuned_setting": setting,
                           "tuned_probe_recall": probe_recall, "tune_s": time.perf_counter() - t0}
    out["tuned"] = query_figures(lambda q: searcher.search(q, K, setting)[0], queries, truth, budget_s)
    out["sweep"] = []
    for value in ladder:
        figures = query_figures(lambda q, v=value: searcher.search(q, K, v)[0], queries, truth, budget_s / 2)
        out["sweep"].append({"setting": value, **figures})
    return out


def exact_child(vectors: Path, queries: np.ndarray, truth: np.ndarray, budget_s: float) -> dict[str, Any]:
    import torch

    from zsdemo.store.index import exact_search

    torch.set_num_threads(1)
    matrix = np.load(vectors, mmap_mode="r")
    figures = query_figures(lambda q: exact_search(matrix, q, K)[0], queries, truth, budget_s)
    return {"build_s": 0.0, "build_peak_rss": 0, "tuned": figures, "sweep": [], "after_queries": proc_status()}


def extend_child(vectors: Path, work: Path, params: dict[str, Any], queries: np.ndarray, ef: int,
                 budget_s: float) -> dict[str, Any]:
    """What adding photos to a built gallery costs: the library's extend_hnsw grows the index just built by
    `extend_rows` new rows (near random gallery rows, like new photos of the same kinds), timed against the
    full build; then recall@10 of the grown index against exact search over all rows, at the tuned ef."""
    import torch

    from zsdemo.store.generation import write_npy
    from zsdemo.store.index import (
        IndexConfig,
        exact_search_many,
        extend_hnsw,
        iter_row_chunks,
        open_searcher,
        probe_queries,
        source_rows,
    )

    n, extra = source_rows(vectors), int(params["extend_rows"])
    grown = work / f"grown-{os.getpid()}.npy"
    new_rows = probe_queries(vectors, extra, seed=11)
    write_npy(grown, n + extra, DIM, [*iter_row_chunks(vectors), new_rows])
    cfg = IndexConfig(hnsw_m=params.get("m", 16), hnsw_ef_construction=params.get("ef_construction", 100),
                      build_threads=params["build_threads"])
    base = next(work.glob(f"index-hnsw-{os.getpid()}"))
    torch.set_num_threads(params["build_threads"])
    cpu0, started = cpu_seconds(), time.perf_counter()
    added = extend_hnsw(base, grown, work / f"index-hnsw-{os.getpid()}-grown", cfg)
    out = {"rows": added, "extend_s": time.perf_counter() - started, "extend_cpu_s": cpu_seconds() - cpu0}
    truth = exact_search_many(grown, queries, K)
    torch.set_num_threads(1)
    searcher = open_searcher("hnsw", work / f"index-hnsw-{os.getpid()}-grown", DIM, cfg)
    out.update(query_figures(lambda q: searcher.search(q, K, ef)[0], queries, truth, budget_s))
    searcher.unload()
    grown.unlink()
    return out


def child_main(backend: str, vectors: Path, work: Path, params: dict[str, Any]) -> dict[str, Any]:
    import torch

    queries, truth = np.load(work / "queries.npy"), np.load(work / "truth.npy")
    budget_s = params.get("budget_s", 120.0)
    if backend == "exact":
        return exact_child(vectors, queries, truth, budget_s)
    searcher, result = build_child(backend, vectors, work, params)
    torch.set_num_threads(1)  # one thread per query (and for the tuning's exact search: it is not timed)
    result.update(tune_and_sweep(backend, searcher, vectors, queries, truth, budget_s))
    result["after_queries"] = proc_status()
    if backend == "hnsw" and params.get("extend_rows"):
        searcher.unload()
        result["extend"] = extend_child(vectors, work, params, queries, result["tuned_setting"], budget_s)
    for path in work.glob(f"index-{backend}-{os.getpid()}*"):
        path.unlink()
    return result


def run_child(backend: str, vectors: Path, work: Path, params: dict[str, Any], timeout: float) -> dict[str, Any]:
    """child_main in a fresh process (so its peak RSS is the build's own); {'error': ...} on failure/timeout."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", backend, str(vectors), str(work), json.dumps(params)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        for path in work.glob(f"index-{backend}-*"):
            path.unlink(missing_ok=True)
        for path in work.glob(f".index-{backend}-*"):
            path.unlink(missing_ok=True)
        return {"error": f"did not finish within {timeout:.0f} s (killed)"}
    if out.returncode != 0:
        return {"error": f"child failed (exit {out.returncode}): {out.stderr.strip()[-1500:]}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- reporting ---------------------------------------------------------------------------------------
def judge(result: dict[str, Any], emb_bytes: int) -> dict[str, Any]:
    """The figures the verdict holds for one backend, and pass/fail against TARGETS."""
    if "error" in result:
        return {"error": result["error"], "pass": False}
    tuned = result["tuned"]
    peak = result["build_peak_rss"]
    growth = peak - result["baseline"]["VmRSS"] if peak else 0
    out = {"p50_ms": round(tuned["p50_ms"], 3), "p95_ms": round(tuned["p95_ms"], 3),
           "recall_at_10": round(tuned["recall_at_10"], 4), "queries": tuned["queries"],
           "setting": {result["setting_name"]: result["tuned_setting"]} if "setting_name" in result else None,
           "build_s": round(result["build_s"], 1), "build_cpu_s": round(result.get("build_cpu_s", 0.0), 1)}
    checks = {"latency": out["p50_ms"] <= TARGETS["p50_ms"] and out["recall_at_10"] >= TARGETS["recall_at_10"]}
    if peak:  # exact search builds nothing: only its latency is judged
        out.update(build_peak_rss_bytes=peak, build_rss_ratio=round(peak / emb_bytes, 3),
                   build_rss_growth_ratio=round(growth / emb_bytes, 3), index_bytes=result["index_bytes"])
        checks.update(build_time=out["build_s"] <= TARGETS["build_s"],
                      build_rss=out["build_rss_ratio"] <= TARGETS["build_rss_ratio"])
    best = [r for r in result["sweep"] if r["recall_at_10"] >= TARGETS["recall_at_10"]]
    if best:
        fastest = min(best, key=lambda r: r["p50_ms"])
        out["sweep_best"] = {"setting": fastest["setting"], "p50_ms": round(fastest["p50_ms"], 3),
                             "recall_at_10": round(fastest["recall_at_10"], 4)}
    if "extend" in result:
        e = result["extend"]
        out["grown"] = {"rows": e["rows"], "extend_s": round(e["extend_s"], 1), "p50_ms": round(e["p50_ms"], 3),
                        "recall_at_10": round(e["recall_at_10"], 4)}
        checks["grown_recall"] = e["recall_at_10"] >= TARGETS["recall_at_10"]
    return {**out, "checks": checks, "pass": all(checks.values())}


def print_backend(name: str, result: dict[str, Any], emb_bytes: int) -> None:
    if "error" in result:
        print(f"  {name:<6} {result['error']}", flush=True)
        return
    t = result["tuned"]
    setting = f"{result['setting_name']} {result['tuned_setting']} (tuned; probe recall " \
              f"{result['tuned_probe_recall']:.3f}, tuning {result['tune_s']:.0f} s)" if "setting_name" in result else "1 thread"
    print(f"  {name:<6} p50 {t['p50_ms']:8.3f} ms  p95 {t['p95_ms']:8.3f} ms  recall@10 {t['recall_at_10']:.4f} "
          f"({t['queries']} queries) at {setting}")
    if result["build_peak_rss"]:
        peak, base = result["build_peak_rss"], result["baseline"]["VmRSS"]
        what = "peak RSS (VmHWM during the build)" if result.get("hwm_reset") else "peak RSS (ru_maxrss, imports included)"
        print(f"         build {result['build_s']:.1f} s (CPU {result['build_cpu_s']:.0f} s); {what} {gib(peak)} = {peak / emb_bytes:.2f}x embeddings "
              f"(anon peak {gib(result['peak'].get('RssAnon', 0))}, file-backed peak "
              f"{gib(result['peak'].get('RssFile', 0))}; before the build {gib(base)}, growth "
              f"{(peak - base) / emb_bytes:.2f}x); index file {gib(result['index_bytes'])}; open {result['open_s']:.2f} s")
    if "extend" in result:
        e = result["extend"]
        print(f"         grown by {e['rows']:,} rows (extend_hnsw): {e['extend_s']:.1f} s (CPU {e['extend_cpu_s']:.0f} s) "
              f"against the {result['build_s']:.0f} s build; then p50 {e['p50_ms']:.3f} ms, recall@10 "
              f"{e['recall_at_10']:.4f} at ef {result['tuned_setting']} ({e['queries']} queries)")
    for r in result["sweep"]:
        print(f"         {result['setting_name']} {r['setting']:>7,}: p50 {r['p50_ms']:8.3f} ms  p95 {r['p95_ms']:8.3f} ms"
              f"  recall@10 {r['recall_at_10']:.4f} ({r['queries']} queries)")
    sys.stdout.flush()


# ---- sections -----------------------------------------------------------------------------------------
def prepare_vectors(n: int, work: Path, n_queries: int) -> Path:
    """The vectors on disk, the held-out queries and their exact top-10 (work/queries.npy, work/truth.npy)."""
    import torch

    from bench.synthetic import write_vectors
    from zsdemo.store.index import exact_search_many

    vectors = work / f"vectors-{n}.npy"
    t0 = time.perf_counter()
    queries = write_vectors(vectors, n, DIM, seed=3, n_queries=n_queries)
    generated = time.perf_counter() - t0
    np.save(work / "queries.npy", queries)
    t0 = time.perf_counter()
    np.save(work / "truth.npy", exact_search_many(vectors, queries, K))
    print(f"generated in {generated:.0f} s; exact top-{K} of {n_queries} held-out queries in "
          f"{time.perf_counter() - t0:.0f} s ({torch.get_num_threads()} torch threads)", flush=True)
    return vectors


def bench_vectors(n: int, work: Path, args: argparse.Namespace, machine: str) -> dict[str, Any]:
    print(f"\n== {n:,} x {DIM} vectors, k={K}, one thread per query, builds with {args.build_threads} threads "
          f"[{machine}; load average {load_average()[0]:.1f}]", flush=True)
    vectors = prepare_vectors(n, work, args.queries)
    emb_bytes = n * DIM * 4
    print(f"embeddings: {emb_bytes:,} bytes ({gib(emb_bytes)})")
    trees = args.annoy_trees_large if n >= args.large else args.annoy_trees
    base = {"build_threads": args.build_threads, "budget_s": args.query_budget_s}
    plan = [("hnsw", {**base, "m": args.hnsw_m, "ef_construction": args.hnsw_ef_construction,
                      "extend_rows": args.extend_rows}, args.hnsw_timeout),
            ("exact", base, args.hnsw_timeout),
            ("annoy", {**base, "n_trees": trees}, args.annoy_timeout)]
    verdict: dict[str, Any] = {}
    for backend, params, timeout in [step for step in plan if step[0] in args.backends]:
        label = f"annoy ({trees} trees)" if backend == "annoy" else backend
        result = run_child(backend, vectors, work, params, timeout)
        print_backend(label, result, emb_bytes)
        verdict[backend] = judge(result, emb_bytes)
    for spec in args.hnsw_variants if n <= args.variants_max_n else []:
        params = {**base, **variant_params(spec, args)}
        result = run_child("hnsw", vectors, work, params, args.hnsw_timeout)
        print_backend(f"hnsw variant {spec}", result, emb_bytes)
        verdict[f"hnsw[{spec}]"] = judge(result, emb_bytes)
    vectors.unlink()
    return verdict


def variant_params(spec: str, args: argparse.Namespace) -> dict[str, Any]:
    """'storage=E4M3,m=12' -> child params (unnamed settings keep the main run's)."""
    params: dict[str, Any] = {"m": args.hnsw_m, "ef_construction": args.hnsw_ef_construction}
    for part in spec.split(","):
        key, _, value = part.partition("=")
        params[key.strip()] = value.strip() if key.strip() == "storage" else int(value)
    return params


def index_rate(command: list[str], photos: Path, cache: Path, env: dict[str, str]) -> float | str:
    """photos/s of the encoding phase that `python -m zsdemo index` reports, or the failure's text."""
    out = subprocess.run([*command, str(photos), "--cache", str(cache), "--workers", "1"], cwd=cache.parent,
                         env=env, capture_output=True, text=True, timeout=3600)
    shutil.rmtree(cache, ignore_errors=True)
    if out.returncode != 0:
        return f"FAILED\n{out.stderr[-2000:]}"
    rate = [line for line in (out.stdout + out.stderr).splitlines() if "photos/s" in line]
    return float(rate[-1].split("photos/s")[0].split()[-1]) if rate else float("nan")


def bench_indexing(work: Path, n_photos: int, model: str, pretrained: str, machine: str) -> dict[str, Any]:
    from bench.synthetic import photo_files
    from zsdemo.config import ENVIRONMENT

    photos = work / "photos"
    photo_files(photos, n_photos)
    print(f"\n== indexing {n_photos} generated 640x480 photos with {model} (pretrained={pretrained}) [{machine}]",
          flush=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), ENVIRONMENT["model"]: model, ENVIRONMENT["pretrained"]: pretrained,
           "HF_HUB_OFFLINE": "1"}
    index = [sys.executable, "-m", "zsdemo", "index"]
    runs = {
        "rank1_thread1": ("1 process, 1 thread", index, {"OMP_NUM_THREADS": "1"}),
        "rank1_threads2": ("1 process, 2 threads", index, {"OMP_NUM_THREADS": "2"}),
        "ranks2": ("2 processes (torchrun), 1 thread each",
                   [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "zsdemo", "index"],
                   {"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}),
    }
    results: dict[str, Any] = {"model": model, "photos": n_photos}
    for key, (label, command, extra) in runs.items():
        rate = index_rate(command, photos, work / f"cache-{key}", {**env, **extra})
        print(f"{label}: {rate if isinstance(rate, str) else f'{rate:.2f} photos/s'} (encoding phase, wall clock)",
              flush=True)
        results[key] = rate if isinstance(rate, float) else None
    one, two = results.get("rank1_thread1") or float("nan"), results.get("ranks2") or float("nan")
    results["speedup_vs_1thread"] = round(two / one, 2) if one == one and two == two else None
    return results


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--backends", nargs="+", default=["hnsw", "exact", "annoy"], choices=["hnsw", "exact", "annoy"],
                        help="which to measure (default all three)")
    parser.add_argument("--section", choices=["all", "vectors", "indexing"], default="all")
    parser.add_argument("--queries", type=int, default=1000, help="held-out queries (recall@10 and latency)")
    parser.add_argument("--build-threads", type=int, default=2)
    parser.add_argument("--annoy-trees", type=int, default=None, help="Annoy trees (default: IndexConfig's)")
    parser.add_argument("--annoy-trees-large", type=int, default=20, help="Annoy trees at --large rows and above")
    parser.add_argument("--large", type=int, default=500_000)
    parser.add_argument("--annoy-timeout", type=float, default=2400.0, help="seconds before Annoy's child is killed")
    parser.add_argument("--hnsw-timeout", type=float, default=3600.0)
    parser.add_argument("--hnsw-m", type=int, default=None, help="default: IndexConfig's hnsw_m")
    parser.add_argument("--hnsw-ef-construction", type=int, default=None, help="default: IndexConfig's")
    parser.add_argument("--hnsw-variants", nargs="*", default=[],
                        help="extra HNSW builds to compare, e.g. storage=E4M3 m=8 chunk=8192 'storage=E4M3,m=24'")
    parser.add_argument("--extend-rows", type=int, default=1000,
                        help="rows the built HNSW index then grows by (what adding photos costs); 0: skip")
    parser.add_argument("--variants-max-n", type=int, default=100_000, help="variants only at sizes up to this")
    parser.add_argument("--query-budget-s", type=float, default=120.0,
                        help="seconds of queries per measured setting (at least 20 queries; the count is printed)")
    parser.add_argument("--photos", type=int, default=96)
    parser.add_argument("--model", default=None, help="indexing section (default: the app's, zsdemo.config)")
    parser.add_argument("--pretrained", default=None, help="indexing section (default: none, random init)")
    parser.add_argument("--work", help="scratch folder (default: a temporary one)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.child:
        backend, vectors, work, params = args.child
        print(json.dumps(child_main(backend, Path(vectors), Path(work), json.loads(params))))
        return
    from bench.machine import machine_info, machine_line
    from bench.settings import bench_config
    from zsdemo.store.index import IndexConfig

    defaults = IndexConfig()
    args.annoy_trees = args.annoy_trees or defaults.n_trees
    args.hnsw_m = args.hnsw_m or defaults.hnsw_m
    args.hnsw_ef_construction = args.hnsw_ef_construction or defaults.hnsw_ef_construction
    info = machine_info()
    machine = f"{info['cpu']}, {info['cpu_label']}, {info['cores']} cores"
    print(machine_line(info))
    print(f"threads: {thread_settings()}; queries 1 thread; builds {args.build_threads} threads")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="zsdemo-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    verdict: dict[str, Any] = {"targets": TARGETS, "cpu": info["cpu"], "cores": info["cores"],
                               "chosen": defaults.approximate, "sizes": {}}
    try:
        if args.section in ("all", "vectors"):
            for n in args.sizes:
                verdict["sizes"][str(n)] = bench_vectors(n, work, args, machine)
        if args.section in ("all", "indexing"):
            cfg = bench_config({"model": args.model, "pretrained": args.pretrained})
            verdict["indexing"] = bench_indexing(work, args.photos, cfg.model, cfg.pretrained, machine)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    largest = verdict["sizes"].get(str(max(args.sizes)), {}) if verdict["sizes"] else {}
    verdict["pass"] = bool(largest.get(defaults.approximate, {}).get("pass")) if largest else None
    verdict["load_avg_1m"] = round(load_average()[0], 2)
    print(f"\n-- verdict [{machine}; load average {verdict['load_avg_1m']}]")
    print("scale_verdict=" + json.dumps(verdict, separators=(",", ":")), flush=True)


if __name__ == "__main__":
    main()
