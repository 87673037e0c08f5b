"""Scale benchmark: galleries of 100k and 1M embedding-like vectors on one machine, and real indexing
throughput on 1 vs 2 processes.

    python bench/scale.py                           # vectors at 100k and 1M, then indexing throughput
    python bench/scale.py --sizes 100000 --section vectors
    python bench/scale.py --section indexing --photos 96

Per gallery size (synthetic 512-d unit vectors shaped like CLIP embeddings: power-law spectrum, coarse
clusters with fine sub-clusters, a shared direction; generated in chunks straight to disk):
  build    - in a child process, through zsdemo.store.gallery.write_generation (the code a real build runs):
             wall time, Annoy build time, peak RSS (ru_maxrss and sampled anonymous/file-backed peaks),
             bytes on disk; the index choice (latency budget) and the tuned search_k are the library's own.
  serve    - a child process opens the cache like the app (Gallery.open): startup time and RSS; query p50/p95
             and recall@10 against exact search on held-out queries; a sweep of search_k.
  second   - a second process opens and queries the same cache while the first one is alive: its RSS,
             split into anonymous (its own) and file-backed (page cache, shared) pages, and its PSS.
Indexing: `python -m zsdemo index` with ViT-B-32-quickgelu at random init (the real architecture and speed)
on generated photos: 1 process with 1 and 2 torch threads, and 2 processes (torchrun, gloo, 1 thread each).

Every figure is printed beside the CPU it was measured on; machine-readable `VERDICT` lines come last.
The machine is shared with other work: figures carry that noise (load average printed).
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
import threading
import time
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DIM = 512


# ---- synthetic embedding-like vectors, streamed to disk ---------------------------------------------
def write_vectors(path: Path, n: int, seed: int, n_queries: int, chunk: int = 65_536) -> np.ndarray:
    """Write (n, DIM) float32 unit vectors to `path` (.npy) in chunks; return (n_queries, DIM) held-out
    queries from the same distribution (same recipe as bench.common.synthetic_embeddings, chunked)."""
    from zsdemo.store.gallery import _write_npy

    rng = np.random.default_rng(seed)
    scale = (np.arange(1, DIM + 1) ** -0.75).astype(np.float32)
    basis = np.linalg.qr(rng.standard_normal((DIM, DIM)))[0].astype(np.float32)

    def gaussian(r: np.random.Generator, m: int) -> np.ndarray:
        return (r.standard_normal((m, DIM), dtype=np.float32) * scale) @ basis

    common = rng.standard_normal(DIM).astype(np.float32)
    common /= np.linalg.norm(common)
    n_coarse, n_fine = max(10, n // 1000), max(50, n // 20)
    coarse = gaussian(rng, n_coarse)
    fine = coarse[rng.integers(0, n_coarse, n_fine)] + 0.6 * gaussian(rng, n_fine)

    def draw(r: np.random.Generator, m: int) -> np.ndarray:
        x = fine[r.integers(0, n_fine, m)] + 0.5 * gaussian(r, m)
        x = x / np.linalg.norm(x, axis=1, keepdims=True) + 0.7 * common
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    chunks = (draw(np.random.default_rng([seed, i]), min(chunk, n - start))
              for i, start in enumerate(range(0, n, chunk)))
    _write_npy(path, n, DIM, chunks)
    return draw(np.random.default_rng([seed, 10**6]), n_queries)


class StubEncoder:
    """What write_generation needs from an encoder, for vectors made without a model."""

    embed_dim = DIM

    def fingerprint(self) -> str:
        return "bench-scale-synthetic"

    def describe(self) -> dict[str, Any]:
        return {"model": "synthetic", "pretrained": "none", "prompts": None, "embed_dim": DIM}


def fake_entries(n: int) -> list[Any]:
    from zsdemo.store.gallery import PhotoEntry

    return [PhotoEntry(f"dept-{i // 10_000:03d}/img_{i:07d}.jpg", f"/data/photos/dept-{i // 10_000:03d}/img_{i:07d}.jpg",
                       250_000 + i, 1_700_000_000_000_000_000 + i, f"{i:020x}.jpg") for i in range(n)]


# ---- memory sampling ----------------------------------------------------------------------------------
def proc_status() -> dict[str, int]:
    """VmRSS / RssAnon / RssFile of this process in bytes, and Pss from smaps_rollup."""
    out: dict[str, int] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
            out[key] = int(value.split()[0]) * 1024
    try:
        for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                out["Pss"] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return out


class PeakSampler:
    """Samples proc_status every 50 ms in a thread; .peak holds the maximum of each field."""

    def __init__(self) -> None:
        self.peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, value in proc_status().items():
                self.peak[key] = max(self.peak.get(key, 0), value)
            self._stop.wait(0.05)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def max_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ---- child processes ------------------------------------------------------------------------------------
def child_build(vectors: Path, cache: Path, n_trees: int) -> dict[str, Any]:
    from zsdemo.store.gallery import cache_lock, write_generation
    from zsdemo.store.index import IndexConfig, iter_row_chunks

    baseline = proc_status()
    entries = fake_entries(np.load(vectors, mmap_mode="r").shape[0])
    after_entries = proc_status()
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "thumbs").mkdir(exist_ok=True)
    started = time.perf_counter()
    with PeakSampler() as sampler, cache_lock(cache):
        manifest = write_generation(cache, entries, iter_row_chunks(vectors), [Path("/data/photos")], StubEncoder(),
                                    IndexConfig(n_trees=n_trees), [])
    seconds = time.perf_counter() - started
    keys = ("index", "n_trees", "search_k", "tuned_recall_at_10", "exact_ms_estimate", "annoy_build_s")
    return {"build_s": seconds, "ru_maxrss": max_rss(), "peak": sampler.peak, "baseline": baseline,
            "after_entries": after_entries, **{k: manifest.get(k) for k in keys}}


def child_serve(cache: Path, queries: Path, truth: Path, sweep: bool, hold: float) -> dict[str, Any]:
    baseline = proc_status()
    started = time.perf_counter()
    from zsdemo.store.gallery import Gallery
    from zsdemo.store.index import exact_search

    imported = time.perf_counter()
    before_open = proc_status()
    gallery = Gallery.open(cache, StubEncoder())
    opened = time.perf_counter()
    after_open = proc_status()
    q = np.load(queries)
    ids_truth = np.load(truth)
    latencies, hits = [], 0
    for _ in range(2):  # first pass warms the page cache; the second is timed
        latencies, hits = [], 0
        for query, want in zip(q, ids_truth, strict=True):
            t0 = time.perf_counter()
            found = gallery.search(query, 10)
            latencies.append((time.perf_counter() - t0) * 1000)
            hits += len(set(_rows(gallery, found)) & set(want.tolist()))
    result: dict[str, Any] = {
        "import_s": imported - started, "open_s": opened - imported, "backend": gallery.backend,
        "p50_ms": float(np.percentile(latencies, 50)), "p95_ms": float(np.percentile(latencies, 95)),
        "recall_at_10": hits / (10 * len(q)), "baseline": baseline, "before_open": before_open,
        "after_open": after_open, "after_queries": proc_status(),
        "search_k": getattr(gallery._annoy, "search_k", None),
    }
    if sweep and gallery._annoy is not None:
        result["sweep"] = []
        for search_k in (2_000, 5_000, 10_000, 20_000, 50_000, 100_000):
            lat, hit = [], 0
            for query, want in zip(q, ids_truth, strict=True):
                t0 = time.perf_counter()
                ids, _ = gallery._annoy.search(query, 10, search_k)
                lat.append((time.perf_counter() - t0) * 1000)
                hit += len(set(ids.tolist()) & set(want.tolist()))
            result["sweep"].append({"search_k": search_k, "p50_ms": float(np.percentile(lat, 50)),
                                    "p95_ms": float(np.percentile(lat, 95)), "recall_at_10": hit / (10 * len(q))})
    if sweep:  # exact search on the same memory map, for the crossover
        lat = []
        for query in q[:20]:
            t0 = time.perf_counter()
            exact_search(gallery.embeddings, query, 10)
            lat.append((time.perf_counter() - t0) * 1000)
        result["exact_p50_ms"] = float(np.percentile(lat, 50))
        result["after_exact"] = proc_status()
    if hold:
        print(json.dumps(result), flush=True)
        time.sleep(hold)
    return result


_ROW_CACHE: dict[int, dict[str, int]] = {}


def _rows(gallery: Any, hits: list[Any]) -> list[int]:
    """Row numbers of hits (entries are unique by path)."""
    key = id(gallery)
    if key not in _ROW_CACHE:
        _ROW_CACHE[key] = {e.path: i for i, e in enumerate(gallery.entries)}
    return [_ROW_CACHE[key][str(h.photo)] for h in hits]


def run_child(*args: str, timeout: float = 7200) -> dict[str, Any]:
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", *args], capture_output=True,
                         text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO)})
    if out.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def gib(b: float) -> str:
    return f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.0f} MiB"


# ---- sections -------------------------------------------------------------------------------------------
def bench_vectors(n: int, work: Path, n_trees: int, n_queries: int, verdicts: list[str], machine: str) -> dict[str, Any]:
    from zsdemo.store.index import exact_search_many

    print(f"\n== {n:,} x {DIM} vectors [{machine}]", flush=True)
    vectors = work / f"vectors-{n}.npy"
    t0 = time.perf_counter()
    queries = write_vectors(vectors, n, seed=3, n_queries=n_queries)
    np.save(work / "queries.npy", queries)
    truth = exact_search_many(vectors, queries, 10)
    np.save(work / "truth.npy", truth)
    print(f"generated in {time.perf_counter() - t0:.0f} s; exact truth for {n_queries} held-out queries", flush=True)
    cache = work / f"cache-{n}"
    build = run_child("build", str(vectors), str(cache), str(n_trees))
    vectors.unlink()
    emb_bytes = n * DIM * 4
    disk = du(cache)
    gen = next(cache.glob("gen-*"))
    files = {p.name: p.stat().st_size for p in gen.iterdir()}
    print(f"build: {build['build_s']:.0f} s (Annoy {build.get('annoy_build_s')} s, {build['n_trees']} trees), "
          f"index={build['index']} (exact estimate {build.get('exact_ms_estimate')} ms), search_k={build['search_k']} "
          f"(tuned recall@10 {build['tuned_recall_at_10']})")
    print(f"build peak RSS {gib(build['ru_maxrss'])} (anon peak {gib(build['peak'].get('RssAnon', 0))}, file-backed peak "
          f"{gib(build['peak'].get('RssFile', 0))}); before: interpreter+imports {gib(build['baseline']['VmRSS'])}, "
          f"+1 entry list {gib(build['after_entries']['VmRSS'])}; embeddings {gib(emb_bytes)}")
    print(f"on disk: {gib(disk)} ({', '.join(f'{k} {gib(v)}' for k, v in sorted(files.items()))})", flush=True)

    first = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", "serve", str(cache),
                              str(work / "queries.npy"), str(work / "truth.npy"), "1", "600"],
                             stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    serve = json.loads(first.stdout.readline())
    second = run_child("serve", str(cache), str(work / "queries.npy"), str(work / "truth.npy"), "0", "0")
    first.kill()
    first.wait()
    print(f"serve: open {serve['open_s']:.2f} s (imports {serve['import_s']:.1f} s), backend {serve['backend']}, "
          f"search_k {serve['search_k']}: p50 {serve['p50_ms']:.2f} ms, p95 {serve['p95_ms']:.2f} ms, "
          f"recall@10 {serve['recall_at_10']:.3f} ({n_queries} held-out queries)")
    for key in ("before_open", "after_open", "after_queries"):
        s = serve[key]
        print(f"  first process {key:14s} RSS {gib(s['VmRSS'])} (anon {gib(s['RssAnon'])}, file {gib(s['RssFile'])}, "
              f"PSS {gib(s.get('Pss', 0))})")
    if "after_exact" in serve:
        s = serve["after_exact"]
        print(f"  exact search on the memory map: p50 {serve['exact_p50_ms']:.1f} ms; RSS after {gib(s['VmRSS'])} "
              f"(anon {gib(s['RssAnon'])}, file {gib(s['RssFile'])})")
    for row in serve.get("sweep", []):
        print(f"  search_k {row['search_k']:>7,}: p50 {row['p50_ms']:6.2f} ms  p95 {row['p95_ms']:6.2f} ms  "
              f"recall@10 {row['recall_at_10']:.3f}")
    s2, b2 = second["after_queries"], second["before_open"]
    print(f"second process (first still serving): open {second['open_s']:.2f} s; RSS {gib(s2['VmRSS'])} = anon "
          f"{gib(s2['RssAnon'])} + file-backed {gib(s2['RssFile'])} (shared page cache); PSS {gib(s2.get('Pss', 0))}; "
          f"growth over its pre-open RSS {gib(s2['VmRSS'] - b2['VmRSS'])} (anon {gib(s2['RssAnon'] - b2['RssAnon'])})",
          flush=True)
    growth = build["ru_maxrss"] - build["baseline"]["VmRSS"]
    verdicts += [
        f"VERDICT n={n} build_s={build['build_s']:.1f} build_peak_rss={build['ru_maxrss']} "
        f"build_peak_rss_over_baseline={growth} embedding_bytes={emb_bytes} "
        f"rss_ratio={build['ru_maxrss'] / emb_bytes:.2f} rss_growth_ratio={growth / emb_bytes:.2f} "
        f"target_rss<=1.5x={'met' if build['ru_maxrss'] <= 1.5 * emb_bytes else 'not met'}",
        f"VERDICT n={n} disk_bytes={disk} index={serve['backend']} search_k={serve['search_k']} "
        f"p50_ms={serve['p50_ms']:.2f} p95_ms={serve['p95_ms']:.2f} recall_at_10={serve['recall_at_10']:.3f} "
        f"open_s={serve['open_s']:.2f}"
        + (f" target_1M_p50<=5ms_recall>=0.95={'met' if serve['p50_ms'] <= 5 and serve['recall_at_10'] >= 0.95 else 'not met'}"
           if n >= 1_000_000 else ""),
        f"VERDICT n={n} second_process_rss={s2['VmRSS']} anon={s2['RssAnon']} file={s2['RssFile']} pss={s2.get('Pss', 0)}",
    ]
    shutil.rmtree(cache, ignore_errors=True)
    return {"build": build, "serve": serve, "second": second, "disk": disk, "files": files}


def bench_indexing(work: Path, n_photos: int, model: str, verdicts: list[str], machine: str) -> dict[str, Any]:
    from bench.common import photo_files

    photos = work / "photos"
    photo_files(photos, n_photos)
    print(f"\n== indexing {n_photos} generated 640x480 photos with {model} (random init) [{machine}]", flush=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "ZSDEMO_MODEL": model, "ZSDEMO_PRETRAINED": "none",
           "HF_HUB_OFFLINE": "1"}
    runs = {
        "1 process, 1 thread": ([sys.executable, "-m", "zsdemo", "index"], {"OMP_NUM_THREADS": "1"}),
        "1 process, 2 threads": ([sys.executable, "-m", "zsdemo", "index"], {"OMP_NUM_THREADS": "2"}),
        "2 processes (torchrun), 1 thread each": (
            [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "zsdemo", "index"],
            {"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}),
    }
    results: dict[str, float] = {}
    for label, (command, extra) in runs.items():
        cache = work / f"cache-{len(results)}"
        out = subprocess.run([*command, str(photos), "--cache", str(cache), "--workers", "1"], cwd=work,
                             env={**env, **extra}, capture_output=True, text=True, timeout=3600)
        if out.returncode != 0:
            print(f"{label}: FAILED\n{out.stderr[-2000:]}")
            continue
        rate = [line for line in (out.stdout + out.stderr).splitlines() if "photos/s" in line]
        value = float(rate[-1].split("photos/s")[0].split()[-1]) if rate else float("nan")
        results[label] = value
        print(f"{label}: {value:.2f} photos/s (encoding phase, wall clock)", flush=True)
        shutil.rmtree(cache, ignore_errors=True)
    one = results.get("1 process, 1 thread", float("nan"))
    two_threads = results.get("1 process, 2 threads", float("nan"))
    two = results.get("2 processes (torchrun), 1 thread each", float("nan"))
    verdicts.append(f"VERDICT indexing model={model} photos={n_photos} rank1_thread1={one:.2f} rank1_threads2="
                    f"{two_threads:.2f} ranks2={two:.2f} speedup_vs_1thread={two / one:.2f} "
                    f"speedup_vs_2threads={two / two_threads:.2f} "
                    f"target>=1.6x={'met' if two / one >= 1.6 else 'not met'}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--section", choices=["all", "vectors", "indexing"], default="all")
    parser.add_argument("--n-trees", type=int, default=None, help="Annoy trees (default: IndexConfig's)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--photos", type=int, default=96)
    parser.add_argument("--model", default="ViT-B-32-quickgelu")
    parser.add_argument("--work", help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "build":
            print(json.dumps(child_build(Path(rest[0]), Path(rest[1]), int(rest[2]))))
        else:
            print(json.dumps(child_serve(Path(rest[0]), Path(rest[1]), Path(rest[2]), rest[3] == "1", float(rest[4]))))
        return

    from bench.common import machine_info, machine_line
    from zsdemo.store.index import IndexConfig

    info = machine_info()
    machine = f"{info['cpu']}, {info['cpu_label']}, {info['cores']} cores"
    print(machine_line(info))
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    print("\n".join(line for line in lscpu.splitlines() if line.startswith(("Model name", "CPU(s)", "Flags")))[:400])
    n_trees = args.n_trees or IndexConfig().n_trees
    verdicts: list[str] = []
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="zsdemo-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if args.section in ("all", "vectors"):
            for n in args.sizes:
                bench_vectors(n, work, n_trees, args.queries, verdicts, machine)
        if args.section in ("all", "indexing"):
            bench_indexing(work, args.photos, args.model, verdicts, machine)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\n-- verdicts [{machine}; load average {os.getloadavg()[0]:.1f}]")
    for line in verdicts:
        print(line)


if __name__ == "__main__":
    main()
