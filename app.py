"""Sketch-to-photo search demo: draw (or upload) a sketch, get matching photos as you draw.

Run `python app.py` (starter gallery, OpenAI CLIP ViT-B/32) or see `python app.py --help`. Every
option also reads an environment variable (zsdemo/config.py lists them), so a Hugging Face Space is
configured without code changes (docs/SPACES.md).

This file is only the page: layout, rendering and thin adapters around `zsdemo.serve.service.SearchService`,
which does the work (model, gallery, search, uploads) and is tested without a server.

The canvas is a small HTML/JS component of our own (`gr.HTML`): it draws on the first stroke with mouse,
pen or touch, and after each stroke sends the strokes themselves (a few KB of JSON) instead of a PNG;
the server draws them. Gradio's Sketchpad exported and uploaded the whole canvas before every search,
which cost more than the search itself (README, "What was measured").

Modes: with `--prompts CATEGORY.safetensors --fine-grained-prompts FG.safetensors` the page has a switch
(`#zs-mode`: "Find this kind of thing" / "Find this exact one") that re-runs the current sketch; `/search`
takes the mode as its last parameter (default: the first mode). Clicking a result shows the photo with the
similarity map of the sketch to its patches (zsdemo.search.explain); `/explain` returns the same image.
"""

from __future__ import annotations

import argparse
import html
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from zsdemo.config import ServeConfig, resolve_hub_file, resolve_serve_config
from zsdemo.errors import ZsdemoError
from zsdemo.limits import Gate, RateLimiter, Redactor, UploadPolicy, UploadQuota, neutralise
from zsdemo.model.preprocess import PHOTO_EXTENSIONS, is_strokes_value
from zsdemo.serve.service import (
    CATEGORY,
    FINE_GRAINED,
    MODE_FLAGS,
    SearchOutcome,
    SearchService,
    check_prompt_kind,
    served_modes,
)
from zsdemo.serve.weblog import quiet_dropped_connections

log = logging.getLogger("zsdemo.app")

CANVAS_SIZE = 448
SHOWN_PHOTO_SIDE = 384  # a clicked photo smaller than this is enlarged on the page, so its map can be read
BRUSH_SIZE = 4
EMPTY_HINT = "✏️ Draw something (or upload a sketch): results appear after each stroke."

# ---------------------------------------------------------------------------------------------
# The canvas: strokes in, JSON value out. `props.value = ...` makes Gradio fire .change once.
# ---------------------------------------------------------------------------------------------
CANVAS_HTML = f"""
<div class="zs-pad">
  <canvas width="{CANVAS_SIZE}" height="{CANVAS_SIZE}" aria-label="sketch canvas: draw here"></canvas>
  <div class="zs-pad-tools">
    <button type="button" data-act="undo">↶ Undo</button>
    <button type="button" data-act="clear">✕ Clear</button>
    <span class="zs-pad-hint">Draw with mouse, pen or finger.</span>
  </div>
</div>
"""
CANVAS_CSS = """
.zs-pad canvas {width: 100%; max-width: 448px; aspect-ratio: 1 / 1; background: #fff; border: 1px solid #bbb;
  border-radius: 6px; touch-action: none; cursor: crosshair; display: block;}
.zs-pad-tools {display: flex; gap: .5em; align-items: center; margin-top: .4em;}
.zs-pad-tools button {padding: .2em .8em; border: 1px solid #bbb; border-radius: 6px; background: #f6f6f6;}
.zs-pad-hint {color: #777; font-size: .9em;}
"""
CANVAS_JS = f"""
const canvas = element.querySelector('canvas');
const ctx = canvas.getContext('2d');
const BRUSH = {BRUSH_SIZE};
let strokes = [];
let current = null;
function point(e) {{
  const r = canvas.getBoundingClientRect();
  return [Math.round((e.clientX - r.left) * canvas.width / r.width),
          Math.round((e.clientY - r.top) * canvas.height / r.height)];
}}
function paint() {{
  ctx.fillStyle = '#fff'; ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.strokeStyle = '#000'; ctx.fillStyle = '#000'; ctx.lineWidth = BRUSH; ctx.lineCap = 'round'; ctx.lineJoin = 'round';
  for (const s of strokes) {{
    ctx.beginPath(); ctx.moveTo(s[0], s[1]);
    for (let i = 2; i < s.length; i += 2) ctx.lineTo(s[i], s[i + 1]);
    if (s.length === 2) ctx.arc(s[0], s[1], BRUSH / 2, 0, 2 * Math.PI);
    ctx.stroke();
  }}
}}
function send() {{
  props.value = JSON.stringify({{width: canvas.width, height: canvas.height, brush: BRUSH, strokes: strokes}});
}}
paint();
canvas.addEventListener('pointerdown', (e) => {{
  e.preventDefault(); canvas.setPointerCapture(e.pointerId);
  current = point(e); strokes.push(current); paint();
}});
canvas.addEventListener('pointermove', (e) => {{
  if (!current) return;
  const events = e.getCoalescedEvents ? e.getCoalescedEvents() : [e];
  for (const ev of events) {{ const p = point(ev); current.push(p[0], p[1]); }}
  const n = current.length;
  ctx.beginPath(); ctx.moveTo(current[Math.max(0, n - 2 * events.length - 2)], current[Math.max(1, n - 2 * events.length - 1)]);
  for (let i = Math.max(0, n - 2 * events.length); i < n; i += 2) ctx.lineTo(current[i], current[i + 1]);
  ctx.stroke();
}});
function finish() {{ if (!current) return; current = null; paint(); send(); }}
canvas.addEventListener('pointerup', finish);
canvas.addEventListener('pointercancel', finish);
element.querySelector('[data-act=undo]').addEventListener('click', () => {{ strokes.pop(); paint(); send(); }});
element.querySelector('[data-act=clear]').addEventListener('click', () => {{ strokes = []; paint(); send(); }});
canvas.dataset.ready = 'true';  // strokes are heard from here on (tests and benchmarks wait for it)
"""

PAGE_CSS = """
.zs-banner {padding: .6em 1em; border-radius: 8px; background: #fff7e0; border: 1px solid #f0c36d;}
.zs-banner + .zs-banner {margin-top: .4em;}
.zs-banner progress {vertical-align: middle; width: 14em;}
.zs-error {background: #ffecec; border-color: #e88;}
"""


# ---------------------------------------------------------------------------------------------
# Configuration: flags over environment over defaults (zsdemo.config)
# ---------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> ServeConfig:
    p = argparse.ArgumentParser(description="Sketch-to-photo search demo (Gradio). Every flag has an environment "
                                            "variable (ZSDEMO_*, GRADIO_SERVER_NAME/PORT): see docs/SPACES.md.")
    p.add_argument("--gallery", dest="galleries", action="append", metavar="DIR",
                   help="photo folder to search (repeatable), or hf://datasets/OWNER/NAME[@REV][/SUBDIR]. Default: "
                        "the folders recorded in --cache, else the starter photos.")
    p.add_argument("--cache", help="cache folder (thumbnails, embeddings, index). Default: gallery_cache/<gallery name>.")
    p.add_argument("--prompts", help="category-level prompt checkpoint (.safetensors from train/fit.py, setting: category) or "
                                     "hf://OWNER/NAME[@REV]/FILE: the \"Find this kind of thing\" mode.")
    p.add_argument("--fine-grained-prompts", help="fine-grained prompt checkpoint (setting: fine_grained, one shared "
                                                  "prompt) or hf://...: the \"Find this exact one\" mode. With both, the "
                                                  "page has a switch; the two share one backbone in memory.")
    p.add_argument("--model", help="open_clip model (default ViT-B-32-quickgelu).")
    p.add_argument("--pretrained", help="weights: open_clip tag (default openai), a weights file, or 'none' (random, for tests).")
    p.add_argument("--query-precision", help="how sketch queries run: auto (default: fastest path that matches fp32 on "
                                             "this CPU), fp32, int8, bf16.")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1).")
    p.add_argument("--port", type=int, help="port (default: first free from 7860).")
    p.add_argument("--share", action="store_true", default=None, help="also open a temporary public gradio.live link.")
    p.add_argument("--max-upload-mb", type=int, help="uploads above this size are refused (default 25).")
    p.add_argument("--queue-size", type=int, help="requests waiting beyond this are refused with 'queue full' (default 32).")
    p.add_argument("--concurrency", type=int, help="searches run at the same time (default 2: one per CPU core).")
    p.add_argument("--allow-uploads", action="store_true", default=None,
                   help="let visitors add photos even when the app is public (ZSDEMO_ALLOW_UPLOADS=1); quotas apply.")
    args = p.parse_args(argv)
    if args.allow_uploads:  # the flag wins over the environment, as every flag does
        os.environ["ZSDEMO_ALLOW_UPLOADS"] = "1"
    return resolve_serve_config(vars(args))


# ---------------------------------------------------------------------------------------------
# Public-facing safety: server paths out of messages, lenient API inputs, one log line per client mistake
# ---------------------------------------------------------------------------------------------
_redact = Redactor({"the app folder": Path(__file__).resolve().parent, "the working folder": Path.cwd(),
                    "~": Path.home()})


def redactor_for(config: ServeConfig) -> Redactor:
    """Replaces the cache folder, the app's folder, the working folder and the home folder in page text."""
    return Redactor({"the cache folder": config.cache_dir, "the app folder": Path(__file__).resolve().parent,
                     "the working folder": Path.cwd(), "~": Path.home()})


def unchecked(component: Any) -> Any:
    """`component` (a Slider, a Radio) passing its value to the handler unchecked, so the handler's own check
    (zsdemo.limits, the service) answers a bad API value with a readable message instead of Gradio's bounds
    error and its traceback in the log. Set on the instance: a subclass of a Gradio component would make Gradio
    write a .pyi stub beside this file at import."""
    component.preprocess = lambda payload: payload
    return component


class _QuietClientErrors:
    """Stands in for the `traceback` module inside Gradio's request handlers: a client's mistake that Gradio
    refuses itself (a refused file path, a component's bounds error) is logged as one line, not ~25; everything
    else still prints its full traceback."""

    def __getattr__(self, name: str) -> Any:
        return getattr(traceback, name)

    @staticmethod
    def print_exc(*args: Any, **kwargs: Any) -> None:
        from gradio.exceptions import Error, InvalidPathError

        exc = sys.exc_info()[1]
        if isinstance(exc, (Error, InvalidPathError)):
            log.info("request refused: %s: %s", type(exc).__name__, str(exc)[:200])
        else:
            traceback.print_exc(*args, **kwargs)


def quiet_client_errors() -> None:
    import gradio.queueing
    import gradio.routes
    import gradio.utils

    for module in (gradio.routes, gradio.queueing, gradio.utils):
        if getattr(module, "traceback", None) is traceback:
            module.traceback = _QuietClientErrors()  # type: ignore[attr-defined]


def client_key(request: gr.Request | None) -> str | None:
    """Who sent a request, for rate limits: the first forwarded address (a Space's proxy sets it), else the peer."""
    if request is None:
        return None
    forwarded = (request.headers.get("x-forwarded-for") or "").split(",")[0].strip()
    host = getattr(getattr(request, "client", None), "host", None)
    return forwarded or host or getattr(request, "session_hash", None)


def _weights_name(pretrained: Any) -> str:
    text = str(pretrained)
    return Path(text).name if os.sep in text or text.endswith((".safetensors", ".bin", ".pt", ".pth")) else text


# ---------------------------------------------------------------------------------------------
# Rendering what the service says
# ---------------------------------------------------------------------------------------------
def banner_html(service: SearchService) -> str:
    """Startup progress or failure: the first mode's, then (once it is ready) any other mode's."""
    s = service.status
    redact = redactor_for(service.config)
    if s.phase == "error":
        return f"<div class='zs-banner zs-error'>⚠️ {html.escape(redact(s.message)).replace(chr(10), '<br>')}</div>"
    if s.phase != "ready":
        return _progress_banner(s.message, s.done, s.total)
    parts = []
    for name in service.modes[1:]:
        mode = service.mode(name)
        m = mode.status
        if m.phase == "error":
            parts.append(f"<div class='zs-banner zs-error'>⚠️ “{html.escape(mode.label)}” is not available: "
                         f"{html.escape(redact(m.message))}</div>")
        elif m.phase != "ready":
            parts.append(_progress_banner(f"Preparing “{mode.label}” (the other mode works now): {m.message}",
                                          m.done, m.total))
    return "".join(parts)


def _progress_banner(message: str, done: int, total: int) -> str:
    pct = f" {100 * done // total}%" if total else ""
    bar = f"<progress value='{done}' max='{total}'></progress>{pct}" if total else "<progress></progress>"
    return f"<div class='zs-banner'>⏳ {html.escape(message)} {bar}</div>"


def info_markdown(service: SearchService) -> str:
    d = service.describe()
    if "model" not in d:
        if d["phase"] == "error":
            return "**Model:** not loaded: startup failed (see the message above)."
        return "**Model:** loading…"
    warn = " ⚠️ **random weights: results are meaningless (test mode)**" if d["random_weights"] else ""
    if len(d["modes"]) > 1:
        prompts = " · ".join(f"{m['label']}: {_prompts_text(m)}" for m in d["modes"])
    else:
        prompts = _prompts_text(d)
    query = f" · sketch queries: `{d['query_path']}`" if d.get("query_path") else ""
    if "photos" in d:
        skipped = f" ({d['skipped']} unreadable files skipped)" if d.get("skipped") else ""
        gallery = f"{d['photos']} photos, {d['search_backend']} search{skipped}"
    else:
        gallery = "not available" if d["phase"] == "error" else "being prepared"
    return (f"**Backbone:** `{d['model']}` · weights `{_weights_name(d['pretrained'])}`{query}{warn}  \n**Prompts:** {prompts}  \n"
            f"**Gallery:** {gallery}")


def _prompts_text(d: dict[str, Any]) -> str:
    if d.get("prompts"):
        return f"`{Path(str(d['prompts'])).name}` (sha256 {str(d.get('prompts_sha256'))[:12]}, {d.get('spec')})"
    if d.get("phase") not in (None, "ready") and "spec" not in d:
        return "being loaded"
    return "none (plain CLIP, no learned prompts)"


GalleryItems = list[tuple[str, str]]
SearchView = tuple[GalleryItems, Image.Image | None, str, list[dict[str, Any]], Any]


PREVIEW_SIDE = 224  # the model's input size: a larger preview shows nothing more and costs time per stroke


def small_preview(image: Image.Image | None) -> Image.Image | None:
    """The model's view of the sketch, at the model's own size (encoded and sent after every stroke)."""
    if image is None:
        return None
    image = image.copy()
    image.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE), Image.Resampling.BILINEAR)
    return image


def render_search(outcome: SearchOutcome, sketch: Any, mode: str | None = None) -> SearchView:
    """(results gallery, model's view, status line, hits state, sketch state). `mode`: the mode searched."""
    if outcome.kind == "empty":
        return [], None, EMPTY_HINT, [], sketch
    if outcome.kind != "ok":
        icon = "⏳" if outcome.kind == "not_ready" and "Still" in outcome.message else "⚠️"
        return [], None, f"{icon} {_redact(outcome.message)}", [], sketch
    items = [(str(hit.thumbnail), f"{hit.score:.3f} · {neutralise(hit.name)}") for hit in outcome.hits]
    hits = [{"name": hit.name, "photo": str(hit.photo), "thumbnail": str(hit.thumbnail), "score": hit.score,
             "mode": mode} for hit in outcome.hits]
    return items, small_preview(outcome.preview), f"{outcome.message} Click a result to see why it matched.", hits, sketch


# ---------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------
def build_demo(service: SearchService) -> gr.Blocks:
    """The Blocks app around `service` (not launched; `main` and tests launch it)."""
    cfg = service.config
    served: set[Path] = set()

    def serve_thumbnails(gallery: Any) -> None:
        # Once per folder: Gradio appends to its list, and checks every result file against every entry.
        if Path(gallery.thumbs_dir) not in served:
            served.add(Path(gallery.thumbs_dir))
            gr.set_static_paths([gallery.thumbs_dir])

    service.on_gallery = serve_thumbnails
    if service.engine is not None:
        serve_thumbnails(service.engine.gallery)
    quiet_client_errors()
    redact = redactor_for(cfg)
    # Drawn strokes skip Gradio's queue (its join + event-stream round trips cost ~100 ms a stroke, measured by
    # bench/browser.py), so this gate is what keeps searches to `concurrency` at a time; a bounded number wait
    # (at most a few seconds), the rest hear "busy" at once. Uploaded sketches (a file decode each) have a gate of
    # their own, so they cannot take the drawn strokes' slots; explanations and photo uploads have their own
    # Gradio concurrency ids below.
    searching = Gate("search", cfg.concurrency, max_waiting=max(1, cfg.queue_size), wait_s=10.0)
    upload_searching = Gate("uploaded-sketch search", 1, max_waiting=max(1, cfg.queue_size // 4), wait_s=20.0)
    search_rate = RateLimiter("search", per_second=8.0, burst=40)
    upload_rate = RateLimiter("upload", per_second=0.2, burst=5)
    policy = UploadPolicy.resolve(cfg.host, cfg.share)
    quota = UploadQuota(policy)
    if policy.public:
        log.info("Public app (%s): adding photos is %s", policy.why_public, "on, with quotas" if policy.enabled
                 else "off (ZSDEMO_ALLOW_UPLOADS=1 turns it on)")

    modes = service.modes
    choices = [(service.mode(name).label, name) for name in modes]

    def run_search(sketch: Any, k: Any, text: Any, text_weight: Any, mode: Any, gate: Gate | None = None,
                   client: str | None = None) -> SearchView:
        try:
            search_rate.check(client)
            with (gate or searching).enter():
                outcome = service.search(sketch, k, text, text_weight, mode or None)
        except ZsdemoError as exc:  # busy or rate-limited: a readable answer, nothing queued
            outcome = SearchOutcome("error", str(exc))
        if outcome.kind == "ok" and len(modes) > 1:
            outcome.message = f"{outcome.message[:-1]} ({service.mode(mode).label})."
        return render_search(outcome, sketch, mode if isinstance(mode, str) and mode else modes[0])

    def search(sketch: str | None, k: float | None = None, text: str | None = None,
               text_weight: float | None = None, mode: str | None = None,
               request: gr.Request = None) -> SearchView:  # type: ignore[assignment]
        """The canvas endpoint: strokes JSON only (a string from the browser is never opened as a server path).
        `mode`: one of the served modes (category = this kind of thing, fine_grained = this exact one; plain)."""
        if sketch is not None and not isinstance(sketch, str):
            return [], None, "⚠️ /search takes the canvas's strokes as a JSON string.", [], None
        if not sketch or not sketch.strip():
            return [], None, EMPTY_HINT, [], None
        if not is_strokes_value(sketch):
            return ([], None, "⚠️ /search takes the canvas's strokes as JSON ({\"width\", \"height\", \"strokes\"}); "
                    "send a picture of a sketch to /search_upload instead.", [], None)
        return run_search(sketch, k, text, text_weight, mode, client=client_key(request))

    def search_upload(path: str | None, k: float | None = None, text: str | None = None,
                      text_weight: float | None = None, mode: str | None = None,
                      request: gr.Request = None) -> SearchView:  # type: ignore[assignment]
        if not path:
            return [], None, EMPTY_HINT, [], None
        if service.is_served_file(str(path)):
            return [], None, "⚠️ That file is one this app serves; upload a picture of a sketch instead.", [], None
        return run_search(str(path), k, text, text_weight, mode, upload_searching, client_key(request))

    def rerun(sketch: Any, k: float | None, text: str | None, weight: float | None, mode: str | None) -> SearchView:
        return run_search(sketch, k, text, weight, mode) if sketch else ([], None, EMPTY_HINT, [], None)

    def explained(outcome: Any, title: str, for_page: bool = False) -> tuple[Image.Image | None, str]:
        if outcome.kind != "ok":
            return None, f"{title}  \n⚠️ {redact(outcome.message)}"
        image = outcome.image
        if for_page and max(image.size) < SHOWN_PHOTO_SIDE:  # small photos: enlarged on the page (API: photo's size)
            scale = SHOWN_PHOTO_SIDE / max(image.size)
            image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
        return image, f"{title}  \n**Why this photo:** {outcome.message}"

    def show_photo(hits: list[dict[str, Any]], sketch: Any, evt: gr.SelectData) -> tuple[Image.Image | None, str]:
        """A click on a result: the photo with the similarity map of the sketch that found it."""
        index = evt.index if isinstance(evt.index, int) else None
        if index is None or not 0 <= index < len(hits):
            return None, ""
        hit = hits[index]
        from zsdemo.store.layout import Hit

        found = Hit(hit["name"], Path(hit["photo"]), Path(hit["thumbnail"]), hit["score"])
        title = f"**#{index + 1} · {hit['name']}** · similarity {hit['score']:.3f}"
        if len(modes) > 1:
            title += f" · {service.mode(hit.get('mode')).label}"
        if sketch:
            return explained(service.explain(found, sketch, hit.get("mode")), title, for_page=True)
        try:
            return service.photo(found), title
        except ZsdemoError as exc:
            return None, f"⚠️ {exc}"

    def explain(sketch: str | None, photo: str | None, mode: str | None = None) -> tuple[Image.Image | None, str]:
        """Why a photo matched: the canvas's strokes JSON, a photo's name as /search captions give it (after the
        " · "), and the mode. Returns the photo with the similarity map over it, and a caption."""
        if not isinstance(sketch, str) or not is_strokes_value(sketch):
            return None, "⚠️ /explain takes the canvas's strokes as JSON, as /search does."
        if not isinstance(photo, str) or len(photo) > 1000:
            return None, "⚠️ /explain takes a photo's name as /search captions give it."
        name = photo.split(" · ")[-1].strip()
        return explained(service.explain(name, sketch, mode or None), f"**{neutralise(name)[:200]}**")

    def add(files: list[str] | None, progress: gr.Progress = gr.Progress(),  # noqa: B008
            request: gr.Request = None) -> tuple[str, str]:  # type: ignore[assignment]
        def report(done: int, total: int, message: str) -> None:
            progress((done, total), desc=message or "Indexing")

        if not policy.enabled:
            return f"⚠️ {policy.off_message()}", info_markdown(service)
        paths = [str(f) for f in files or [] if isinstance(f, str)]
        try:
            upload_rate.check(client_key(request))
            nbytes = sum(os.path.getsize(f) for f in paths if os.path.isfile(f))
            quota.check(getattr(request, "session_hash", None), len(paths), nbytes, service.cache_dir / "uploads")
        except ZsdemoError as exc:
            log.info("add_photos refused: %s", exc)
            return f"⚠️ {exc}", info_markdown(service)
        outcome = service.add_photos(paths, report)
        if outcome.added:
            quota.record(getattr(request, "session_hash", None), outcome.added, nbytes)
        message = redact(outcome.message if outcome.ok else f"⚠️ {outcome.message}")
        if outcome.skipped:
            listed = "; ".join(f"{name}: {redact(why)}" for name, why in outcome.skipped[:10])
            message += f"  \n⚠️ Skipped {len(outcome.skipped)}: {listed}" + (" …" if len(outcome.skipped) > 10 else "")
        return message, info_markdown(service)

    def poll() -> tuple[str, str, gr.Timer]:
        return banner_html(service), info_markdown(service), gr.Timer(active=not service.settled)

    with gr.Blocks(title="Sketch search", delete_cache=(3600, 3600)) as demo:
        gr.Markdown("# ✏️ Sketch search\nDraw a rough sketch; the photos that match it appear as you draw.")
        banner = gr.HTML(banner_html(service), elem_id="zs-banner")
        mode = unchecked(gr.Radio(choices, value=modes[0], label="Search for", elem_id="zs-mode", visible=len(modes) > 1,
                        info="“This kind of thing”: photos of the same category. “This exact one”: the photo of "
                             "this very object (fine-grained)."))
        with gr.Row():
            with gr.Column(scale=3):
                with gr.Tabs():
                    with gr.Tab("Draw"):
                        sketch = gr.HTML("", html_template=CANVAS_HTML, css_template=CANVAS_CSS, js_on_load=CANVAS_JS,
                                         elem_id="zs-sketch", label="Sketch", apply_default_css=False)
                    with gr.Tab("Upload a sketch"):
                        upload = gr.File(label="Sketch image (black lines on white work best)", file_count="single",
                                         file_types=list(PHOTO_EXTENSIONS), type="filepath", elem_id="zs-upload")
                k = unchecked(gr.Slider(1, cfg.max_k, value=cfg.default_k, step=1, label="Number of results"))
                with gr.Accordion("Refine with text (optional)", open=False):
                    text = gr.Textbox(label="Text", placeholder="e.g. red  (press Enter)", max_length=200)
                    weight = unchecked(gr.Slider(0.0, 1.0, value=0.0, step=0.05, label="Text weight (0 = sketch only)"))
            with gr.Column(scale=1, min_width=220):
                preview = gr.Image(label="what the model sees", type="pil", format="jpeg", interactive=False,
                                   height=240, elem_id="zs-preview")
                status = gr.Markdown(EMPTY_HINT, elem_id="zs-status")
        gr.Markdown("**Results** (similarity · file); click one to see why it matched.")
        results = gr.Gallery(label="results", show_label=False, columns=6, height="auto", object_fit="cover",
                             allow_preview=False, elem_id="zs-results")
        with gr.Row():
            large = gr.Image(label="Why this photo: similarity to your sketch", type="pil", format="jpeg",
                             interactive=False, elem_id="zs-large")
            large_caption = gr.Markdown(elem_id="zs-why")
        with gr.Row(visible=False):  # inputs of the /explain API endpoint only
            explain_sketch = gr.Textbox(label="sketch")
            explain_photo = gr.Textbox(label="photo")
        with gr.Accordion("Add your own photos", open=False, visible=policy.enabled):
            photos = gr.File(label="Photos", file_count="multiple", file_types=list(PHOTO_EXTENSIONS), type="filepath")
            add_button = gr.Button("Add to the gallery")
            add_status = gr.Markdown(elem_id="zs-add-status")
        info = gr.Markdown(info_markdown(service), elem_id="zs-info")

        hits = gr.State([])
        current = gr.State(None)  # the last sketch searched (drawn or uploaded), for re-runs with new settings
        outputs = [results, preview, status, hits, current]
        search_kw: dict[str, Any] = {"show_progress": "hidden", "concurrency_id": "search",
                                     "concurrency_limit": cfg.concurrency}
        private = {**search_kw, "api_visibility": "private"}

        # Newest sketch wins: with trigger_mode="always_last", strokes made while a search runs collapse
        # into one follow-up search of the latest drawing.
        sketch.change(search, [sketch, k, text, weight, mode], outputs, api_name="search", trigger_mode="always_last",
                      show_progress="hidden", queue=False)
        upload.change(search_upload, [upload, k, text, weight, mode], outputs, api_name="search_upload",
                      trigger_mode="always_last", show_progress="hidden", concurrency_id="search_upload",
                      concurrency_limit=1)
        for trigger in (k.release, text.submit, weight.release, mode.change):
            trigger(rerun, [current, k, text, weight, mode], outputs, trigger_mode="always_last", **private)
        mode.change(lambda: (None, ""), None, [large, large_caption], api_visibility="private", queue=False)
        results.select(show_photo, [hits, current], [large, large_caption], api_visibility="private",
                       concurrency_id="search", concurrency_limit=cfg.concurrency)
        explain_photo.submit(explain, [explain_sketch, explain_photo, mode], [large, large_caption],
                             api_name="explain", concurrency_id="explain", concurrency_limit=1)
        add_button.click(add, photos, [add_status, info], api_name="add_photos", concurrency_limit=1,
                         concurrency_id="index").then(rerun, [current, k, text, weight, mode], outputs, **private)

        timer = gr.Timer(0.5, active=not service.settled)
        timer.tick(poll, None, [banner, info, timer], api_visibility="private", queue=False)
        demo.load(lambda: (banner_html(service), info_markdown(service)), None, [banner, info],
                  api_visibility="private", queue=False)
    demo.queue(default_concurrency_limit=cfg.concurrency, max_size=cfg.queue_size)
    return demo


def launch_kwargs(config: ServeConfig) -> dict[str, Any]:
    """Launch options shared by `main`, tests and benchmarks. No extra allowed_paths: thumbnails are
    served as static files; everything else returned to the page goes through Gradio's own cache."""
    return {"server_name": config.host or None, "server_port": config.port, "share": config.share,
            "max_file_size": f"{config.max_upload_mb}mb", "show_error": True, "css": PAGE_CSS,
            "footer_links": ["api", "gradio"]}


def check_prompt_flags(config: ServeConfig) -> None:
    """Refuse, before anything loads, a checkpoint given to the wrong flag (the message names the right one)."""
    for name, spec in ((CATEGORY, config.prompts), (FINE_GRAINED, config.fine_grained_prompts)):
        if spec:
            check_prompt_kind(resolve_hub_file(spec), name)
    log.info("Modes: %s (%s)", ", ".join(served_modes(config)),
             ", ".join(f"{flag} {spec}" for (flag, _), spec in ((MODE_FLAGS[CATEGORY], config.prompts),
                                                                 (MODE_FLAGS[FINE_GRAINED], config.fine_grained_prompts))
                       if spec) or "plain CLIP")


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_dropped_connections()
    try:
        config = parse_args(argv)
        check_prompt_flags(config)
    except ZsdemoError as exc:
        raise SystemExit(f"error: {exc}") from None
    service = SearchService(config)
    service.start()
    global demo
    demo = build_demo(service)
    demo.launch(**launch_kwargs(config))


if __name__ == "__main__":
    main()
