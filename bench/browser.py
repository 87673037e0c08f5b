"""Stroke-to-results in a real browser: Chromium (Playwright) draws on the launched app's canvas, per stroke.

    python bench/browser.py                         # 10k-photo gallery, ViT-B/32 (random init), 12 strokes
    python bench/browser.py --quick                 # smoke run: tiny model, 500 photos, 3 strokes
    python bench/browser.py --url http://127.0.0.1:7860/ --strokes 20   # an app that is already running

What it does:
1. Builds a gallery cache: the starter photos (real images) indexed for real, enlarged with the public
   `create_gallery` to `--photos` entries (synthetic embeddings; every entry has a thumbnail file of its own,
   so new results make the browser load new thumbnails, as with a real gallery).
2. Starts `python app.py --cache DIR --model M --pretrained none` as a separate process on 127.0.0.1.
3. Opens the page in Debian's Chromium (headless, same flags as tests/test_browser.py) with an init script
   that timestamps, in the page's own clock (performance.now):
     - pointer up (a capturing `pointerup` listener on the document),
     - the search's request being sent and answered (a `fetch` wrapper): the canvas's own server function
       (POST /gradio_api/component_server, the page's way now), an unqueued event (POST /gradio_api/run/predict,
       `--variant gradio-event`) or a queued one (POST /gradio_api/queue/join, then its event stream),
     - every server-sent event of /gradio_api/queue/data as it arrives (the wrapper tees the stream):
       `estimation` (queued), `process_starts` (a worker took it), `process_completed` (with Gradio's own
       measure of the function's duration),
     - the status line `#zs-status` changing to the new "N best of M photos in X ms" (a MutationObserver),
     - results loaded: every `#zs-results img` of the new results `complete` (checked each animation frame),
     - results on screen: the browser's own presentation time of each of those thumbnails (Element Timing's
       `renderTime`: the frame showing it was presented, after raster); the stroke-to-results time ends there.
4. Draws `--strokes` mouse strokes, one at a time at a human pace (each after the previous results are painted
   plus `--pause` seconds), after `--warmup` strokes that are not counted.
5. Prints one row per stroke, the p50 of every segment, the engine's own p50 (the "in X ms" of the app's
   status line: the same strokes, measured inside the app) and, as the LAST line, the verdict:
     browser_over_engine_p50=1.7 overhead_ms=... stroke_to_results_p50_ms=... engine_p50_ms=... cpu=... met=yes|no
   with the page's overhead (stroke-to-results p50 minus the engine's p50, same strokes) beside the ratio
   (targets: stroke-to-results p50 <= 2x the engine's own p50; overhead <= 25 ms a stroke).
Benchmarks, not tests: nothing is asserted; tests/test_bench_app.py only smoke-runs `--quick`.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import json
import os
import re
import shutil
import statistics
import tempfile
import time
from typing import Any

from bench.client import start_app, stop_app, wait_app_ready, wait_query_path
from bench.machine import cpu_model, rss_mb, verdict_cpu
from bench.settings import bench_config
from bench.synthetic import app_gallery

CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
TARGET_RATIO = 2.0
TARGET_OVERHEAD_MS = 25.0  # what the page may add a stroke: stroke-to-results p50 minus the engine's p50 (issue 18)

# Runs in the page before Gradio's own scripts. Only observes: the page's behaviour is unchanged.
INSTRUMENT_JS = r"""
(() => {
  const Z = window.__zs = {ups: [], joins: [], msgs: [], paints: [], shown: []};
  document.addEventListener('pointerup', () => Z.ups.push(performance.now()), true);
  // The browser's own paint time of each result thumbnail (Element Timing: renderTime, when the frame showing it was
  // presented): every image added under #zs-results is marked before it can paint.
  new MutationObserver(records => {
    for (const r of records) for (const n of r.addedNodes) {
      const imgs = n.nodeType === 1 ? (n.matches('#zs-results img') ? [n] : n.querySelectorAll('#zs-results img')) : [];
      for (const img of imgs) img.setAttribute('elementtiming', 'zs-result');
    }
  }).observe(document, {childList: true, subtree: true});
  new PerformanceObserver(list => {
    for (const e of list.getEntries()) {
      if (e.identifier === 'zs-result') Z.shown.push({t: e.renderTime || e.loadTime, name: String(e.url).split('/').pop()});
    }
  }).observe({type: 'element', buffered: true});
  const origFetch = window.fetch.bind(window);
  function parseSSE(stream) {
    const reader = stream.getReader(); const dec = new TextDecoder(); let buf = '';
    (async () => {
      for (;;) {
        let r; try { r = await reader.read(); } catch (e) { return; }
        if (r.done) return;
        const t = performance.now(); buf += dec.decode(r.value, {stream: true});
        let i;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const chunk = buf.slice(0, i); buf = buf.slice(i + 2);
          for (const line of chunk.split('\n')) {
            if (!line.startsWith('data:')) continue;
            try {
              const m = JSON.parse(line.slice(5));
              Z.msgs.push({t, msg: m.msg, event_id: m.event_id || null,
                           duration: m.output && typeof m.output.duration === 'number' ? m.output.duration : null});
              if (m.msg === 'process_completed' && m.success) Z.expectPaint(m, t);
            } catch (e) {}
          }
        }
      }
    })();
  }
  // One POST whose response is the result (no queue): `pick` reads (function, strokes value) from the request body,
  // `result` (output, seconds the server says it took) from the response.
  Z.direct = async function(input, init, kind, pick, result) {
    let fn = null, strokes = null;
    try {
      const [f, v] = pick(JSON.parse(init && init.body));
      fn = f;
      if (typeof v === 'string' && v.startsWith('{')) strokes = JSON.parse(v).strokes.length;
    } catch (e) {}
    const rec = {sent: performance.now(), fn, strokes, headers: null, acked: null, event_id: kind + '-' + Z.joins.length,
                 direct: true};
    Z.joins.push(rec);
    const resp = await origFetch(input, init);
    rec.headers = performance.now();
    // Timestamped when the page's own read of the body resolves: a clone() would tee the body, and the page would
    // only be watched from when the clone's copy is read (measured: ~20 ms later than the page's own).
    const ownJson = resp.json.bind(resp);
    resp.json = async () => {
      const j = await ownJson();
      rec.acked = performance.now();
      const [output, duration] = result(j);
      const m = {msg: 'process_completed', event_id: rec.event_id, output, success: true};
      Z.msgs.push({t: rec.acked, msg: m.msg, event_id: m.event_id, duration});
      Z.expectPaint(m, rec.acked);
      return j;
    };
    return resp;
  };
  window.fetch = async function(input, init) {
    const url = typeof input === 'string' ? input : (input && input.url) || String(input);
    if (url.includes('/queue/join')) {
      let fn = null, strokes = null;
      try {
        const body = JSON.parse(init && init.body);
        fn = body.fn_index;
        const v = body.data && body.data[0];
        if (typeof v === 'string' && v.startsWith('{')) strokes = JSON.parse(v).strokes.length;
      } catch (e) {}
      const rec = {sent: performance.now(), fn, strokes, headers: null, acked: null, event_id: null};
      Z.joins.push(rec);
      const resp = await origFetch(input, init);
      rec.headers = performance.now();
      resp.clone().json().then(j => { rec.acked = performance.now(); rec.event_id = j.event_id; }).catch(() => {});
      return resp;
    }
    if (url.includes('/run/predict')) {  // an event with queue=False: one POST, the result in its response
      return Z.direct(input, init, 'direct', body => [body.fn_index, body.data && body.data[0]],
                      j => [j, typeof j.duration === 'number' ? j.duration : null]);
    }
    if (url.includes('/component_server')) {  // the canvas's own server function: one POST, the view in its response
      return Z.direct(input, init, 'server', body => [body.fn_name, body.data && body.data.sketch],
                      j => [{data: [j]}, typeof j.handler_ms === 'number' ? j.handler_ms / 1000 : null]);
    }
    if (url.includes('/queue/data')) {
      const resp = await origFetch(input, init);
      if (!resp.body) return resp;
      const [mine, theirs] = resp.body.tee();
      parseSSE(mine);
      return new Response(theirs, {status: resp.status, statusText: resp.statusText, headers: resp.headers});
    }
    return origFetch(input, init);
  };
  // Results painted: from the result event on, each animation frame checks whether the page shows that
  // result (its status line, and its thumbnails, all loaded); identical results count as shown at once.
  // A result is a results view (an object, or its JSON as a component's value: {status, items: [{src}]}) or
  // Gradio's (gallery, preview, status) outputs.
  function asView(v) {
    if (v && typeof v === 'object' && !Array.isArray(v) && 'items' in v) return v;
    if (typeof v === 'string' && v.startsWith('{')) { try { const j = JSON.parse(v); if (j && j.items) return j; } catch (e) {} }
    return null;
  }
  function expectPaint(m, t) {
    const data = (m.output && m.output.data) || [];
    const view = data.map(asView).find(v => v);
    const status = view ? view.status : data.find(v => typeof v === 'string' && / best of /.test(v));
    if (!status || !/ best of /.test(status)) return;
    const key = (status.match(/\d+ best of \d+ photos in \d+ ms/) || [status])[0];
    const gallery = view ? view.items.map(it => ({url: it.src})) : (data.find(v => Array.isArray(v)) || []);
    const names = gallery.map(g => String((g.image || g).url || (g.image || g).path || '').split('/').pop());
    const e = {event_id: m.event_id, t, key, names, status_t: null};
    const check = () => {
      const el = document.querySelector('#zs-status');
      if (e.status_t === null && el && el.textContent.includes(key)) e.status_t = performance.now();
      const imgs = Array.from(document.querySelectorAll('#zs-results img'));
      const shown = imgs.map(i => (i.currentSrc || i.src).split('/').pop());
      if (e.status_t !== null && shown.join('|') === names.join('|') && imgs.every(i => i.complete && i.naturalWidth > 0)) {
        const loaded = performance.now();
        // `loaded` is seen inside a frame's rAF callback: the main thread paints that frame right after the callbacks,
        // and a message posted from here arrives after that paint; `framed` is the next frame's start. The results
        // are on screen later still (raster and present): the thumbnails' Element Timing, which the verdict uses.
        const channel = new MessageChannel();
        channel.port1.onmessage = () => { e.after_paint = performance.now(); };
        channel.port2.postMessage(null);
        e.loaded = loaded;
        requestAnimationFrame(() => { e.framed = performance.now(); Z.paints.push(e); });
        return;
      }
      if (performance.now() - t < 60000) requestAnimationFrame(check);
    };
    requestAnimationFrame(check);
  }
  Z.expectPaint = expectPaint;
})();
"""


VARIANTS = {
    "as-is": "app.py unchanged: the canvas searches through its own server function (one POST a stroke) and renders "
             "the results view itself",
    "gradio-event": "strokes searched by a Gradio event of the canvas (.change, queue=False: one POST /run/predict, "
                    "Gradio's pre- and post-processing, the view as the results component's value), as before",
    "value-at-once": "the canvas sets its value (Gradio's .change: re-render and a request) as soon as the results "
                     "are shown, in the frame that paints them, as before",
}


def replaced(text: str, old: str, new: str) -> str:
    """`text` with `old` replaced by `new`; a variant whose patch no longer applies stops instead of timing as-is."""
    if old not in text:
        raise SystemExit(f"--variant: {old!r} is no longer in the page's script; update the variant")
    return text.replace(old, new)


def serve_variant(variant: str, app_argv: list[str]) -> None:
    """Run app.main(app_argv) with the experimental change `variant` patched in (app.py is not edited)."""
    import app

    if variant == "gradio-event":
        page_file, wire = app.page_file, app.wire

        def canvas_sets_its_value(name: str) -> str:
            text = page_file(name)
            return replaced(text, "search(JSON.stringify(", "(props.value = JSON.stringify(") if name == "canvas.js" else text

        def wire_stroke_event(c: Any, page: Any) -> None:
            wire(c, page)
            c.sketch.change(page.page_rerun, [c.sketch, *c.settings], c.search_outputs, queue=False,
                            trigger_mode="always_last", show_progress="hidden", api_visibility="private")

        app.page_file, app.wire = canvas_sets_its_value, wire_stroke_event
    if variant == "value-at-once":
        page_file = app.page_file

        def canvas_sets_its_value_at_once(name: str) -> str:
            text = page_file(name)
            return replaced(text, "remember(sketch);", "props.value = sketch;") if name == "canvas.js" else text

        app.page_file = canvas_sets_its_value_at_once
    app.main(app_argv)


def pct(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


class Canvas:
    def __init__(self, page: Any) -> None:
        box = page.locator("#zs-sketch canvas").first.bounding_box()
        if box is None:
            raise SystemExit("the canvas is not visible")
        self.page, self.side, self.x0, self.y0 = page, min(box["width"], box["height"]), box["x"], box["y"]

    def stroke(self, points: list[tuple[float, float]], steps: int = 8) -> None:
        mouse = self.page.mouse
        mouse.move(self.x0 + points[0][0] * self.side, self.y0 + points[0][1] * self.side)
        mouse.down()
        for x, y in points[1:]:
            mouse.move(self.x0 + x * self.side, self.y0 + y * self.side, steps=steps)
        mouse.up()


def stroke_points(i: int) -> list[tuple[float, float]]:
    """A varied, deterministic stroke inside the canvas."""
    import math

    a = 0.9 * i
    cx, cy = 0.5 + 0.3 * math.cos(a), 0.5 + 0.3 * math.sin(1.3 * a)
    return [(min(0.95, max(0.05, cx + 0.18 * math.cos(a + t))), min(0.95, max(0.05, cy + 0.18 * math.sin(a + 1.7 * t))))
            for t in (0.0, 0.8, 1.6, 2.4)]


def presented(shown: list[dict[str, Any]], paint: dict[str, Any]) -> float:
    """When the browser presented the last of a result's thumbnails (Element Timing, after the result arrived)."""
    times = []
    for name in paint["names"]:
        after = [e["t"] for e in shown if e["name"] == name and e["t"] >= paint["t"]]
        if not after:
            return float("nan")
        times.append(min(after))
    return max(times) if times else float("nan")


def collect(z: dict[str, Any], fn_search: int, first: int) -> list[dict[str, float]]:
    """Per counted stroke: the page's timestamps (ms) turned into segments."""
    # the requests that carry a sketch (the canvas's server function, or an event of the canvas) and got results
    joins = [j for j in z["joins"] if j["fn"] in (fn_search, "stroke_search") or j["strokes"] is not None]
    painted = {p["event_id"]: p for p in z["paints"]}
    rows = []
    for i in range(first, len(z["ups"])):
        up = z["ups"][i]
        join = next((j for j in joins if j["sent"] >= up and j["event_id"] in painted), None)
        if join is None:
            continue
        paint = painted[join["event_id"]]
        msgs = [m for m in z["msgs"] if m["event_id"] == join["event_id"]]

        def at(kind: str, msgs: list[dict[str, Any]] = msgs) -> float | None:
            return next((m["t"] for m in msgs if m["msg"] == kind), None)

        starts, done = at("process_starts"), at("process_completed")
        duration = next((m["duration"] for m in msgs if m["msg"] == "process_completed"), None)
        engine = re.search(r" in (\d+) ms", paint["key"])
        if join.get("direct") and done is not None:  # queue=False: no queue, the response is the result
            starts = join["acked"] = join["sent"]
        if starts is None or done is None or join["acked"] is None or engine is None:
            continue
        fn_ms = 1000.0 * duration if duration is not None else float("nan")
        shown = presented(z["shown"], paint)
        timed = shown == shown
        if not timed:  # a browser without Element Timing: the next frame after the one that had them all
            shown = paint["framed"]
        rows.append({
            "stroke": i, "strokes_sent": join["strokes"], "element_timing": timed,
            "up_to_join_sent": join["sent"] - up,
            "join_round_trip": join["acked"] - join["sent"],
            "queue_wait": starts - join["acked"],
            "server_run": done - starts,
            "function": fn_ms,
            "engine": float(engine.group(1)),
            "done_to_status": paint["status_t"] - done,
            "status_to_painted": paint["loaded"] - paint["status_t"],
            "to_presented": shown - paint["loaded"],
            "total": shown - up,
            "total_after_paint": paint.get("after_paint", float("nan")) - up,
            "total_next_frame": paint["framed"] - up,
        })
    return rows


SEGMENTS = [("up_to_join_sent", "pointer up -> join sent (page JS)"),
            ("join_round_trip", "join sent -> event id back (HTTP)"),
            ("queue_wait", "event id back -> worker starts (queue, SSE open)"),
            ("server_run", "worker starts -> result event in page"),
            ("function", "  of which the function (Gradio's measure; the handler's own for the server function)"),
            ("engine", "  of which the engine (status line)"),
            ("done_to_status", "result event -> status line updated"),
            ("status_to_painted", "status -> thumbnails loaded (img complete)"),
            ("to_presented", "thumbnails loaded -> on screen (Element Timing)"),
            ("total", "POINTER UP -> RESULTS ON SCREEN"),
            ("total_after_paint", "  the same, to the end of the main thread's paint of that frame"),
            ("total_next_frame", "  the same, to the next frame's start after it")]


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--photos", type=int, default=10_000, help="gallery size (default 10000)")
    p.add_argument("--strokes", type=int, default=12, help="strokes timed (default 12)")
    p.add_argument("--warmup", type=int, default=2, help="strokes drawn first and not counted (default 2)")
    p.add_argument("--pause", type=float, default=0.4, help="seconds between results painted and the next stroke")
    p.add_argument("--model", help="open_clip model (default: the app's, zsdemo.config; ZSDEMO_MODEL)")
    p.add_argument("--pretrained", help="weights (default: none, random init; ZSDEMO_PRETRAINED)")
    p.add_argument("--app-arg", action="append", default=[], help="extra argument for app.py (repeatable)")
    p.add_argument("--url", help="drive an app that is already running (skips building and starting one)")
    p.add_argument("--cache", type=Path, help="gallery cache folder to reuse (built there first if missing)")
    p.add_argument("--variant", default="as-is",
                   help="comma-separated: run app.py with an experimental change patched in at launch (app.py itself "
                        "is unchanged); with several, one app and one page each, strokes interleaved so all see the "
                        "same machine load; the verdict is the first's. "
                        + "; ".join(f"{k}: {v}" for k, v in VARIANTS.items()))
    p.add_argument("--quick", action="store_true", help="smoke run: tiny model, 500 photos, 3 strokes, 1 warm-up")
    p.add_argument("--json", type=Path, help="also write the rows and figures here")
    p.add_argument("--keep", action="store_true", help="keep the work folder (cache, app log)")
    args = p.parse_args(argv)
    cfg = bench_config({"model": args.model, "pretrained": args.pretrained})
    args.model, args.pretrained = cfg.model, cfg.pretrained
    variants = [v.strip() for v in args.variant.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        p.error(f"unknown --variant {unknown}; choose from {', '.join(VARIANTS)}")
    if args.quick:
        args.model, args.photos, args.strokes, args.warmup = "zsdemo-tiny-vit", min(args.photos, 500), 3, 1
    return args, (["as-is"] if args.url else variants)


def start_apps(args: argparse.Namespace, variants: list[str], work: Path, procs: list[Any]) -> list[tuple[str, str, Any]]:
    """One app per variant on one gallery cache (built first if missing): [(variant, url, process)]; each
    started process is appended to `procs` at once, so the caller stops it whatever happens next."""
    from zsdemo.model.encoder import EncoderConfig, SketchPhotoEncoder

    cache = args.cache or work / "cache"
    if not (cache / "CURRENT").is_file():
        started = time.perf_counter()
        encoder = SketchPhotoEncoder.load(EncoderConfig(model=args.model, pretrained=args.pretrained))
        gallery = app_gallery(cache, encoder, args.photos)
        print(f"gallery: {len(gallery)} photos ({gallery.backend} search), built in "
              f"{time.perf_counter() - started:.1f} s", flush=True)
        del encoder, gallery
    urls = []
    for variant in variants:
        launcher = None if variant == "as-is" else [sys.executable, __file__, "--serve-variant", variant]
        proc, url = start_app(cache, args.model, args.pretrained, work / f"app-{variant}.log", *args.app_arg,
                              launcher=launcher)
        procs.append(proc)
        urls.append((variant, url, proc))
    return urls


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve-variant"]:  # internal: the app process of --variant (the rest is app.py's arguments)
        serve_variant(argv[1], argv[2:])
        return 0
    args, variants = parse_args(argv)
    if not Path(CHROMIUM).is_file():
        raise SystemExit(f"chromium not found at {CHROMIUM}: apt-get install chromium (or set CHROMIUM_PATH)")
    work = Path(tempfile.mkdtemp(prefix="zsdemo-browser-"))
    procs: list[Any] = []
    try:
        urls = [(variants[0], args.url, None)] if args.url else start_apps(args, variants, work, procs)
        apps: list[tuple[str, str, int]] = []
        for variant, url, proc in urls:
            client = wait_app_ready(url, proc)
            if proc is not None:  # every stroke on the query path the app chose (fp32 until then, and slower)
                said = wait_query_path(work / f"app-{variant}.log")
                print(f"app ({variant}) query path: {said.split(': ', 1)[-1] if said else 'not reported'}", flush=True)
            apps.append((variant, url, client.fn_index("search")))
            client.close()
            print(f"app ({variant}: {VARIANTS[variant]}) ready at {url}"
                  + (f" (pid {proc.pid}, RSS {rss_mb(proc.pid):.0f} MiB)" if proc else ""), flush=True)
        results = drive(apps, args.strokes, args.warmup, args.pause)
    finally:
        for proc in procs:
            stop_app(proc)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work folder kept: {work}")
    return report(results, args)


def drive(apps: list[tuple[str, str, int]], strokes: int, warmup: int,
          pause: float) -> dict[str, tuple[list[dict[str, float]], dict]]:
    """One page per app; stroke i is drawn on every page in turn (rotating the order). {variant: (rows, raw)}."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            pages = []
            for _, url, _ in apps:
                page = browser.new_page(viewport={"width": 1280, "height": 1600})
                page.set_default_timeout(60_000)
                page.add_init_script(INSTRUMENT_JS)
                page.goto(url)
                page.wait_for_selector("#zs-sketch canvas[data-ready]")
                page.wait_for_timeout(500)
                pages.append((page, Canvas(page)))
            for i in range(warmup + strokes):
                order = list(range(len(pages)))
                order = order[i % len(order):] + order[:i % len(order)]
                for j in order:
                    page, canvas = pages[j]
                    page.bring_to_front()
                    painted = page.evaluate("window.__zs.paints.length")
                    canvas.stroke(stroke_points(i))
                    page.wait_for_function(f"window.__zs.paints.length > {painted}", timeout=120_000)
                    page.wait_for_timeout(int(1000 * pause))
            raws = [page.evaluate("window.__zs") for page, _ in pages]
        finally:
            browser.close()
    return {variant: (collect(raw, fn, warmup), raw) for (variant, _, fn), raw in zip(apps, raws, strict=True)}


def segment_table(rows: list[dict[str, float]]) -> dict[str, Any]:
    keys = ["up_to_join_sent", "join_round_trip", "queue_wait", "server_run", "function", "engine", "done_to_status",
            "status_to_painted", "total"]
    heads = ["up>join", "join rt", "queue", "server", "fn", "engine", "->status", "->imgs", "TOTAL"]
    print("stroke  " + " ".join(h.rjust(9) for h in heads) + "   (ms, page clock)")
    for r in rows:
        print(f"{r['stroke']:>6}  " + " ".join(f"{r[k]:9.1f}" for k in keys))
    print("\np50 per segment (ms):")
    figures: dict[str, Any] = {}
    for key, label in SEGMENTS:
        values = [r[key] for r in rows if r[key] == r[key]]
        figures[key] = {"p50": pct(values, 50), "p95": pct(values, 95)}
        print(f"  {label:<50} p50 {figures[key]['p50']:8.1f}   p95 {figures[key]['p95']:8.1f}")
    total, engine = figures["total"]["p50"], figures["engine"]["p50"]
    figures["overhead_median"] = statistics.median(r["total"] - r["engine"] for r in rows)
    figures["overhead"] = total - engine
    figures["ratio"] = total / max(engine, 1e-6)
    print(f"\nstroke-to-results p50 {total:.0f} ms; the engine's own p50 {engine:.0f} ms (same strokes, inside the app); "
          f"page overhead (p50 minus p50) {figures['overhead']:.0f} ms (target <= {TARGET_OVERHEAD_MS:.0f}), ratio "
          f"{figures['ratio']:.2f} (target <= {TARGET_RATIO:.0f}); median of the per-stroke overheads "
          f"{figures['overhead_median']:.0f} ms")
    print(f"on screen from Element Timing for {sum(bool(r['element_timing']) for r in rows)} of {len(rows)} strokes "
          "(the others: the next frame's start)")
    print(f"earlier marks of the same frame: the main thread's paint p50 {figures['total_after_paint']['p50']:.0f} ms "
          f"(overhead {figures['total_after_paint']['p50'] - engine:.0f} ms), the next frame's start p50 "
          f"{figures['total_next_frame']['p50']:.0f} ms (overhead {figures['total_next_frame']['p50'] - engine:.0f} ms)")
    return figures


def report(results: dict[str, tuple[list[dict[str, float]], dict]], args: argparse.Namespace) -> int:
    load = os.getloadavg()
    print(f"\nmachine: {cpu_model()}, {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
          "(shared machine: Chromium, the app and other jobs share these cores)")
    print(f"model {args.model} ({args.pretrained}), gallery {args.photos} photos, {args.strokes} strokes timed "
          f"(+{args.warmup} warm-up) per app, Chromium headless on the same machine")
    figures: dict[str, Any] = {}
    for variant, (rows, _) in results.items():
        print(f"\n== app: {variant} ({VARIANTS[variant]}), {len(rows)} complete stroke records")
        if rows:
            figures[variant] = segment_table(rows)
    if len(results) > 1:
        print("\ncomparison (interleaved strokes, same machine load): "
              + "; ".join(f"{v}: total p50 {f['total']['p50']:.0f} ms, engine p50 {f['engine']['p50']:.0f} ms, "
                          f"overhead {f['overhead_median']:.0f} ms, ratio {f['ratio']:.2f}" for v, f in figures.items()))
    first = next(iter(results))
    if args.json:
        args.json.write_text(json.dumps({"figures": figures, "load": load,
                                         "rows": {v: r for v, (r, _) in results.items()},
                                         "raw": {v: z for v, (_, z) in results.items()}}, indent=1))
    if first not in figures:
        print(f"browser_over_engine_p50=nan overhead_ms=nan stroke_to_results_p50_ms=nan engine_p50_ms=nan "
              f"cpu={verdict_cpu()} met=no")
        return 1
    f = figures[first]
    ratio_met, overhead_met = f["ratio"] <= TARGET_RATIO, f["overhead"] <= TARGET_OVERHEAD_MS
    print(f"browser_over_engine_p50={f['ratio']:.2f} overhead_ms={f['overhead']:.0f} "
          f"stroke_to_results_p50_ms={f['total']['p50']:.0f} engine_p50_ms={f['engine']['p50']:.0f} app={first} "
          f"load1={load[0]:.1f} threads={os.environ.get('OMP_NUM_THREADS', 'default')} cpu={verdict_cpu()} "
          f"ratio_met={'yes' if ratio_met else 'no'} overhead_met={'yes' if overhead_met else 'no'} "
          f"met={'yes' if ratio_met and overhead_met else 'no'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
