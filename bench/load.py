"""Many users at once against the launched app, with a light raw-HTTP client (no gradio_client, no browser).

    python bench/load.py                       # 10k photos, the app's model (random init): 8 users x 50 strokes
    python bench/load.py --indexing            # also: 200 photos uploaded and indexed while 2 users search
    python bench/load.py --quick               # smoke run: tiny model, 500 photos, 2 users x 4 strokes, 8 photos
    python bench/load.py --url http://127.0.0.1:7860/ --pid 1234   # an app already running (RSS from /proc/1234)

What it does:
1. Builds a gallery cache like bench/browser.py (the starter photos indexed for real, enlarged with the
   public `create_gallery` to `--photos` entries) and starts `python app.py` on 127.0.0.1 as a separate process.
2. Each simulated user sends what the page sends (drawn strokes: one POST /gradio_api/run/predict, since the
   canvas's search skips Gradio's queue; queued events: POST /gradio_api/queue/join, then the server-sent events
   of /gradio_api/queue/data until `process_completed`; bench.client.QueueClient) with httpx in a thread of its
   own, as a person of its own (an X-Forwarded-For address each, as a Space's proxy sets it): the client's CPU use
   stays small beside the app's. A user draws one
   sketch stroke by stroke: request k carries the user's own first k strokes (the canvas's JSON), and the
   next stroke is sent `--think` seconds (+-50%, random) after the previous results arrived: a user who
   draws while waiting is collapsed by the page (trigger_mode "always_last") into one search at a time.
3. Single user first (`--single` strokes, after a warm-up): the reference p50. Then `--users` users x
   `--strokes` strokes at once: errors, p50/p95 latency, throughput and the app's RSS (VmRSS of its process)
   at each quarter of the requests.
4. `--indexing`: photos are uploaded (/gradio_api/upload) and added through the app's /add_photos endpoint
   while `--index-users` users search; query latency while idle (same users, same duration, just before)
   vs while the upload is being indexed.
5. Last line, machine-readable:
     users=8 p95_over_single_p50=... rss_growth_pct=... errors=0 met=yes|no cpu=...
   target: p95 (8 users) <= 3x the single-user p50, RSS growth from the first quarter to the end < 5%, 0 errors.
Benchmarks, not tests: nothing is asserted; tests/test_bench_app.py only smoke-runs `--quick`.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import os
import random
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench.client import QueueClient, start_app, stop_app, wait_app_ready, wait_query_path
from bench.machine import cpu_model, rss_mb, verdict_cpu
from bench.settings import bench_config
from bench.synthetic import app_gallery, photo_files, stroke_json

TARGET_P95_OVER_SINGLE = 3.0
TARGET_RSS_GROWTH_PCT = 5.0


@dataclass
class Record:
    user: int
    started: float  # perf_counter
    seconds: float
    ok: bool
    error: str = ""
    server_run: float = float("nan")  # process_starts -> process_completed, as the client saw it
    function: float = float("nan")  # Gradio's own measure of the function


@dataclass
class Phase:
    records: list[Record] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    rss: list[tuple[int, float]] = field(default_factory=list)  # (requests done, MiB)

    def add(self, record: Record) -> int:
        with self.lock:
            self.records.append(record)
            return len(self.records)


def search_once(client: QueueClient, fn: int, user: int, stroke: int, session: str) -> Record:
    started = time.perf_counter()
    try:
        result = client.call(fn, client.inputs("search", sketch=stroke_json(1000 + user, stroke)), session)
        out = result["output"]
        if not out or not out[0] or " best of " not in str(out[2]):
            raise RuntimeError(f"no results: {str(out)[:200]}")
        times = dict((m, t) for t, m in result["messages"])
        run = times.get("process_completed", float("nan")) - times.get("process_starts", float("nan"))
        return Record(user, started, result["seconds"], True, server_run=run, function=float(result["duration"] or "nan"))
    except Exception as exc:  # noqa: BLE001 - every failure is counted and reported
        return Record(user, started, time.perf_counter() - started, False, f"{type(exc).__name__}: {exc}"[:300])


def user_headers(user: int) -> dict[str, str]:
    """Each simulated user is a person of their own, as a Space's proxy reports them (the app's per-client rate and
    slot limits key on the first X-Forwarded-For address): without it, every user here would be 127.0.0.1."""
    return {"X-Forwarded-For": f"10.8.{user // 250}.{user % 250 + 1}"}


def user_loop(url: str, fn: int, user: int, strokes: int, think: float, phase: Phase, stop: threading.Event,
              on_done: Any = None, first_stroke: int = 1) -> None:
    rng = random.Random(user)
    client = QueueClient(url, headers=user_headers(user))
    session = f"loaduser{user:03d}{rng.randrange(10**6):06d}"
    try:
        for k in range(first_stroke, first_stroke + strokes):
            if stop.is_set():
                break
            done = phase.add(search_once(client, fn, user, k, session))
            if on_done is not None:
                on_done(done)
            if think > 0:
                stop.wait(think * rng.uniform(0.5, 1.5))
    finally:
        client.close()


def run_users(url: str, fn: int, users: int, strokes: int, think: float, pid: int | None,
              stop_when: threading.Event | None = None, user_base: int = 0) -> tuple[Phase, float]:
    """`users` threads x `strokes` searches; RSS sampled at each quarter of the requests. (phase, wall seconds)."""
    phase = Phase()
    total = users * strokes
    quarters = {max(1, round(total * q / 4)) for q in (1, 2, 3, 4)}

    def on_done(done: int) -> None:
        if pid is not None and done in quarters:
            phase.rss.append((done, rss_mb(pid)))

    stop = stop_when or threading.Event()
    threads = [threading.Thread(target=user_loop, args=(url, fn, user_base + u, strokes, think, phase, stop, on_done),
                                daemon=True) for u in range(users)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=3600)
    return phase, time.perf_counter() - started


def ms(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) * 1000 if values else float("nan")


def summary(records: list[Record]) -> str:
    ok = [r.seconds for r in records if r.ok]
    runs = [r.server_run for r in records if r.ok and r.server_run == r.server_run]
    fns = [r.function for r in records if r.ok and r.function == r.function]
    return (f"{len(records)} requests, {len(records) - len(ok)} errors; latency p50 {ms(ok, 50):.0f} ms, p95 "
            f"{ms(ok, 95):.0f} ms, max {ms(ok, 100):.0f} ms; server run p50 {ms(runs, 50):.0f} ms; function p50 "
            f"{ms(fns, 50):.0f} ms")


def indexing_run(url: str, fn: int, args: argparse.Namespace, work: Path, pid: int | None) -> dict[str, Any]:
    """Query latency of `--index-users` users while idle, then while `--index-photos` photos are indexed."""
    photos = work / "upload-photos"
    photo_files(photos, args.index_photos)
    client = QueueClient(url)
    try:
        files = client.upload(sorted(photos.glob("*.jpg")))
        # idle reference: the same users, for a fixed number of strokes each
        idle, idle_wall = run_users(url, fn, args.index_users, args.index_idle_strokes, args.think, pid, user_base=100)
        print(f"  idle ({args.index_users} users, {idle_wall:.1f} s): {summary(idle.records)}", flush=True)
        stop = threading.Event()
        during = Phase()
        add_result: dict[str, Any] = {}

        def add() -> None:
            started = time.perf_counter()
            try:
                data = client.inputs("add_photos", files=files)
                add_result["out"] = client.call(client.fn_index("add_photos"), data)["output"]
            except Exception as exc:  # noqa: BLE001
                add_result["error"] = f"{type(exc).__name__}: {exc}"
            add_result["seconds"] = time.perf_counter() - started
            add_result["ended"] = time.perf_counter()
            stop.set()

        adder = threading.Thread(target=add, daemon=True)
        add_started = time.perf_counter()
        adder.start()
        threads = [threading.Thread(target=user_loop, args=(url, fn, 200 + u, 10_000, args.think, during, stop),
                                    daemon=True) for u in range(args.index_users)]
        for t in threads:
            t.start()
        adder.join(timeout=3600)
        stop.set()
        for t in threads:
            t.join(timeout=600)
        ended = add_result.get("ended", time.perf_counter())
        inside = [r for r in during.records if r.started >= add_started and r.started + r.seconds <= ended]
        print(f"  indexing {args.index_photos} photos took {add_result.get('seconds', float('nan')):.1f} s: "
              f"{add_result.get('error') or str((add_result.get('out') or ['?'])[0]).splitlines()[0][:120]}")
        print(f"  during indexing ({args.index_users} users): {summary(inside)}", flush=True)
        idle_ok = [r.seconds for r in idle.records if r.ok]
        during_ok = [r.seconds for r in inside if r.ok]
        return {"idle_p50": ms(idle_ok, 50), "idle_p95": ms(idle_ok, 95), "during_p50": ms(during_ok, 50),
                "during_p95": ms(during_ok, 95), "during_n": len(inside), "errors": sum(not r.ok for r in inside)
                + sum(not r.ok for r in idle.records) + (1 if "error" in add_result else 0),
                "index_seconds": add_result.get("seconds")}
    finally:
        client.close()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--photos", type=int, default=10_000, help="gallery size (default 10000)")
    p.add_argument("--users", type=int, default=8)
    p.add_argument("--strokes", type=int, default=50, help="strokes per user (default 50)")
    p.add_argument("--single", type=int, default=20, help="strokes of the single-user reference (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="searches before measuring (default 3)")
    p.add_argument("--think", type=float, default=1.0,
                   help="mean seconds between a user's results and their next stroke (default 1.0; 0 = flat out)")
    p.add_argument("--indexing", action="store_true", help="also measure searches while photos are being indexed")
    p.add_argument("--index-photos", type=int, default=200)
    p.add_argument("--index-users", type=int, default=2)
    p.add_argument("--index-idle-strokes", type=int, default=15, help="strokes per user of the idle reference")
    p.add_argument("--model", help="open_clip model (default: the app's, zsdemo.config; ZSDEMO_MODEL)")
    p.add_argument("--pretrained", help="weights (default: none, random init; ZSDEMO_PRETRAINED)")
    p.add_argument("--app-arg", action="append", default=[], help="extra argument for app.py (repeatable)")
    p.add_argument("--url", help="load an app that is already running (skips building and starting one)")
    p.add_argument("--pid", type=int, help="with --url: the app's process id, for its RSS")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: tiny model, 500 photos, 2 users x 4 strokes, indexing of 8 photos")
    p.add_argument("--keep", action="store_true", help="keep the work folder (cache, app log)")
    args = p.parse_args(argv)
    cfg = bench_config({"model": args.model, "pretrained": args.pretrained})
    args.model, args.pretrained = cfg.model, cfg.pretrained
    if args.quick:
        args.model, args.photos, args.users, args.strokes, args.single = "zsdemo-tiny-vit", min(args.photos, 500), 2, 4, 4
        args.warmup, args.think, args.index_photos, args.index_users, args.index_idle_strokes = 1, 0.1, 8, 1, 3
        args.indexing = True
    return args


def launch(args: argparse.Namespace, work: Path) -> tuple[Any, str, int | None]:
    """The app to load: (process or None, url, pid): one started here on a fresh gallery, or --url/--pid."""
    if args.url:
        return None, args.url, args.pid
    from zsdemo.model.encoder import EncoderConfig, SketchPhotoEncoder

    started = time.perf_counter()
    encoder = SketchPhotoEncoder.load(EncoderConfig(model=args.model, pretrained=args.pretrained))
    gallery = app_gallery(work / "cache", encoder, args.photos)
    print(f"gallery: {len(gallery)} photos ({gallery.backend} search), built in "
          f"{time.perf_counter() - started:.1f} s", flush=True)
    del encoder, gallery
    proc, url = start_app(work / "cache", args.model, args.pretrained, work / "app.log", *args.app_arg)
    return proc, url, proc.pid


def wait_settled(work: Path, proc: Any) -> None:
    """The app started here: wait until its sketch query path is chosen, so that every phase runs on it."""
    if proc is None:
        return
    said = wait_query_path(work / "app.log")
    print(f"query path: {said.split(': ', 1)[-1] if said else 'not reported (measuring anyway)'}", flush=True)


def measure(args: argparse.Namespace, work: Path, proc: Any, url: str, pid: int | None) -> dict[str, Any]:
    """Warm up, then the single-user reference, the users at once, and (--indexing) searches while indexing."""
    client = wait_app_ready(url, proc)
    wait_settled(work, proc)
    fn = client.fn_index("search")
    for i in range(args.warmup):
        search_once(client, fn, 999, i + 1, "warmup")
    client.close()
    rss0 = rss_mb(pid) if pid else float("nan")
    print(f"app ready at {url} (pid {pid}, RSS {rss0:.0f} MiB after warm-up)\n", flush=True)
    single, single_wall = run_users(url, fn, 1, args.single, args.think, pid, user_base=50)
    print(f"1 user x {args.single} strokes ({single_wall:.1f} s): {summary(single.records)}", flush=True)
    many, wall = run_users(url, fn, args.users, args.strokes, args.think, pid)
    ok = [r.seconds for r in many.records if r.ok]
    print(f"{args.users} users x {args.strokes} strokes ({wall:.1f} s): {summary(many.records)}")
    print(f"throughput {len(ok) / wall:.2f} searches/s (think time {args.think:.2f} s mean per user)")
    print("app RSS: " + ", ".join(f"{done} req {mb:.0f} MiB" for done, mb in [(0, rss0), *many.rss]))
    errors = [r.error for r in many.records if not r.ok]
    for e in sorted(set(errors))[:5]:
        print(f"  error x{errors.count(e)}: {e}")
    indexing = indexing_run(url, fn, args, work, pid) if args.indexing else None
    return {"single": single, "many": many, "wall": wall, "ok": ok, "errors": errors, "indexing": indexing}


def report(args: argparse.Namespace, m: dict[str, Any]) -> None:
    """The summary and the verdict line (last)."""
    single, many, ok, wall, indexing = m["single"], m["many"], m["ok"], m["wall"], m["indexing"]
    load = os.getloadavg()
    single_p50 = ms([r.seconds for r in single.records if r.ok], 50)
    p95 = ms(ok, 95)
    ratio = p95 / single_p50
    base = many.rss[0][1] if many.rss else float("nan")
    growth = 100.0 * (many.rss[-1][1] - base) / base if many.rss else float("nan")
    n_errors = len(m["errors"]) + sum(not r.ok for r in single.records)
    print(f"\nmachine: {cpu_model()}, {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
          "(shared machine)")
    print(f"single-user p50 {single_p50:.0f} ms; {args.users} users p50 {ms(ok, 50):.0f} ms, p95 {p95:.0f} ms "
          f"({ratio:.2f}x the single-user p50; target <= {TARGET_P95_OVER_SINGLE:.0f}x); RSS growth from the first "
          f"quarter to the end {growth:+.1f}% (target < {TARGET_RSS_GROWTH_PCT:.0f}%)")
    extra = ""
    if indexing is not None:
        print(f"searches while indexing {args.index_photos} photos ({indexing['during_n']} searches, "
              f"{indexing['index_seconds'] or float('nan'):.1f} s): p50 {indexing['during_p50']:.0f} ms, p95 "
              f"{indexing['during_p95']:.0f} ms; idle: p50 {indexing['idle_p50']:.0f} ms, p95 {indexing['idle_p95']:.0f} ms")
        n_errors += indexing["errors"]
        extra = (f" indexing_p50_ms={indexing['during_p50']:.0f} idle_p50_ms={indexing['idle_p50']:.0f} "
                 f"indexing_over_idle_p50={indexing['during_p50'] / indexing['idle_p50']:.2f}")
    met = ratio <= TARGET_P95_OVER_SINGLE and growth < TARGET_RSS_GROWTH_PCT and n_errors == 0
    print(f"users={args.users} p95_over_single_p50={ratio:.2f} single_p50_ms={single_p50:.0f} p95_ms={p95:.0f} "
          f"throughput={len(ok) / wall:.2f} rss_growth_pct={growth:.1f} errors={n_errors}{extra} load1={load[0]:.1f} "
          f"threads={os.environ.get('OMP_NUM_THREADS', 'default')} "
          f"met={'yes' if met else 'no'} cpu={verdict_cpu()}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="zsdemo-load-"))
    proc = None
    try:
        proc, url, pid = launch(args, work)
        measured = measure(args, work, proc, url, pid)
    finally:
        stop_app(proc)
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    report(args, measured)
    return 0


if __name__ == "__main__":
    sys.exit(main())
