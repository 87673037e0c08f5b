"""Sketch-to-photo search demo: draw (or upload) a sketch, get matching photos as you draw.

Run `python app.py` (starter gallery, OpenAI CLIP ViT-B/32) or see `python app.py --help`. Every
option also reads an environment variable (zsdemo/config.py lists them), so a Hugging Face Space is
configured without code changes (docs/SPACES.md).

This file is only the page, in three parts: `Page` (the handlers: input checks, rate limits and gates around
`zsdemo.serve.service.SearchService`, which does the work and is tested without a server, then rendering its
typed outcomes), `layout` (components only) and `wire` (events only). Settings resolve as in the CLI: flag >
environment > the cache's manifest > default, so `python app.py --cache DIR` serves a cache as it was built.

The canvas is a small HTML/JS component of our own (`gr.HTML`; its template, CSS and JavaScript are files in
zsdemo/serve/page/, with the page's CSS): it draws on the first stroke with mouse, pen or touch, and after each
stroke sends the strokes themselves (a few KB of JSON) instead of a PNG; the server draws them. Gradio's
Sketchpad exported and uploaded the whole canvas before every search, which cost more than the search itself
(README, "What was measured"). The canvas asks for results through its own server function (one POST a stroke,
none of Gradio's event handling) and the results view (another gr.HTML: the model's view, the status line, the
thumbnails from the app's own route) renders them; /search and /search_upload give API clients the same searches.
A sketch drawn while the gallery is still being prepared is searched again by the start-up timer when it is ready.

Modes: with `--prompts CATEGORY.safetensors --fine-grained-prompts FG.safetensors` the page has a switch
(`#zs-mode`: "Find this kind of thing" / "Find this exact one") that re-runs the current sketch; `/search`
takes the mode as its last parameter (default: the first mode). Clicking a result shows the photo with the
similarity map of the sketch to its patches (zsdemo.search.explain); `/explain` returns the same image.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import itertools
import json
import logging
import os
import re
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from zsdemo.config import ServeConfig, is_random_weights, resolve_hub_file
from zsdemo.errors import ZsdemoError
from zsdemo.limits import (
    BRUSH_SIZE,
    CANVAS_SIZE,
    DEFAULT_STROKE_LIMITS,
    ClientSlots,
    Gate,
    RateLimiter,
    Redactor,
    UploadPolicy,
    UploadQuota,
    neutralise,
)
from zsdemo.model.preprocess import PHOTO_EXTENSIONS, is_strokes_value
from zsdemo.serve.modes import CATEGORY, FINE_GRAINED, MODE_FLAGS, check_prompt_kind, served_modes
from zsdemo.serve.outcomes import SearchOutcome
from zsdemo.serve.service import SearchService, find_thumbnail, thumbnail_folders
from zsdemo.serve.weblog import quiet_dropped_connections
from zsdemo.store.sources import resolve_for_cache

log = logging.getLogger("zsdemo.app")

SHOWN_PHOTO_SIDE = 384  # a clicked photo smaller than this is enlarged on the page, so its map can be read
EMPTY_HINT = "✏️ Draw something (or upload a sketch): results appear after each stroke."

# ---------------------------------------------------------------------------------------------
# The page's own files: the canvas (HTML template, CSS, JavaScript) and the page's CSS, in zsdemo/serve/page/
# ---------------------------------------------------------------------------------------------
PAGE_FILES = resources.files("zsdemo.serve") / "page"


def page_file(name: str) -> str:
    return (PAGE_FILES / name).read_text(encoding="utf-8")


def canvas_settings() -> dict[str, int]:
    """What the canvas's template and script read from `props`: its size, brush, and the server's point limit."""
    return {"side": CANVAS_SIZE, "brush": BRUSH_SIZE, "max_points": DEFAULT_STROKE_LIMITS.max_points}


# ---------------------------------------------------------------------------------------------
# Configuration: flag > environment > the cache's manifest > default (zsdemo.config, as the CLI)
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
    flags = vars(args)  # an existing cache is served as it was built: its model, weights and prompts, unless told otherwise
    return resolve_for_cache(flags)


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
        return f"<div class='zs-banner zs-error'>⚠️ {message_html(redact(s.message))}</div>"
    if s.phase != "ready":
        return _progress_banner(s.message, s.done, s.total)
    parts = []
    for name in service.modes[1:]:
        mode = service.mode(name)
        m = mode.status
        if m.phase == "error":
            parts.append(f"<div class='zs-banner zs-error'>⚠️ “{html.escape(mode.label)}” is not available: "
                         f"{message_html(redact(m.message))}</div>")
        elif m.phase != "ready":
            parts.append(_progress_banner(f"Preparing “{mode.label}” (the other mode works now): {m.message}",
                                          m.done, m.total))
    return "".join(parts)


# A server-side location in a message (an absolute or ~ path), except the placeholders advice uses (/path/to/...)
_SERVER_PATH = re.compile(r"(?<![\w.:/])(?:~|/(?!path/))[\w.@+-]*(?:/[\w.@+-]+)+/?")


def message_html(text: str) -> str:
    """A service message for the page: escaped, `code` spans as code, line breaks kept, and any server path that the
    Redactor did not name replaced by "a folder on the server" (a page may be public)."""
    text = html.escape(_SERVER_PATH.sub("a folder on the server", text))
    text = re.sub(r"`([^`\n]+)`", r"<code>\1</code>", text).replace("`", "")
    return text.replace("\n", "<br>")


def _progress_banner(message: str, done: int, total: int) -> str:
    pct = f" {100 * done // total}%" if total else ""
    bar = f"<progress value='{done}' max='{total}'></progress>{pct}" if total else "<progress></progress>"
    return f"<div class='zs-banner'>⏳ {html.escape(message)} {bar}</div>"


def warning_html(service: SearchService) -> str:
    """The warning at the top of the page: random weights make every ranking meaningless."""
    d = service.describe()
    if not (d.get("random_weights") if "random_weights" in d else is_random_weights(service.config.pretrained)):
        return ""
    return ("<div class='zs-warn' role='alert'>⚠️ Random backbone weights (<code>--pretrained none</code>): the "
            "results are meaningless. This mode is for tests and speed measurements.</div>")


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
        return (f"`{Path(str(d['prompts'])).name}` ({spec_words(d.get('spec'))}; "
                f"sha256 {str(d.get('prompts_sha256'))[:12]})")
    if d.get("phase") not in (None, "ready") and "spec" not in d:
        return "being loaded"
    return "none (plain CLIP, no learned prompts)"


def spec_words(spec: Any) -> str:
    """A prompt checkpoint's shape (PromptSpec's fields) in words, for the info line."""
    if not isinstance(spec, dict):
        return "learned prompts"
    n = spec.get("n_prompts")
    parts = [f"{n} learned prompt token{'' if n == 1 else 's'}" if isinstance(n, int) else "learned prompt tokens",
             "in every layer" if spec.get("deep") else "at the input layer",
             "one prompt shared by sketch and photo" if spec.get("shared") else "separate sketch and photo prompts"]
    if spec.get("layernorm"):
        parts.append("tuned LayerNorms")
    return ", ".join(parts)


GalleryItems = list[tuple[str, str]]
SearchView = tuple[GalleryItems, Image.Image | None, str, list[dict[str, Any]], Any]
# what the page's search events output: a SearchView and whether the sketch waits for the gallery (SearchOutcome.retry)
PageView = tuple[GalleryItems, Image.Image | None, str, list[dict[str, Any]], Any, bool]


PREVIEW_SIDE = 224  # the model's input size: a larger preview shows nothing more and costs time per stroke


def small_preview(image: Image.Image | None) -> Image.Image | None:
    """The model's view of the sketch, at the model's own size (encoded and sent after every stroke)."""
    if image is None:
        return None
    image = image.copy()
    image.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE), Image.Resampling.BILINEAR)
    return image


THUMB_ROUTE = "/zs/thumbs"  # thumbnails by their content-addressed file name only (`thumbnail_routes`)


def root_url(request: gr.Request | None) -> str:
    """The app's public address as the browser sees it (a Space's proxy included), for the thumbnails' URLs: Gradio
    keeps an http(s) URL as it is, where a file path would be served through its file route (which shows the path)."""
    if request is None:
        return ""
    from gradio.route_utils import get_root_url

    inner = getattr(request, "request", None) or request
    try:
        path = str(inner.url.path)
        route = path[path.find("/gradio_api/"):] if "/gradio_api/" in path else path
        return get_root_url(request=inner, route_path=route, root_path=None)
    except Exception:  # noqa: BLE001 - a request without a usable URL: the thumbnails' URLs are relative then
        log.debug("no root URL for this request", exc_info=True)
        return ""


def thumbnail_url(hit: Any, root: str = "") -> str:
    """Where the page loads a hit's thumbnail: its file name under THUMB_ROUTE (no server folder in it)."""
    return f"{root}{THUMB_ROUTE}/{Path(hit.thumbnail).name}"


def render_search(outcome: SearchOutcome, sketch: Any, mode: str | None = None, root: str = "") -> SearchView:
    """(results gallery, model's view, status line, hits state, sketch state). `mode`: the mode searched; `root`: the
    app's address (`root_url`). The hits state keeps names and modes only: a click asks the service for the photo."""
    if outcome.kind == "empty":
        return [], None, EMPTY_HINT, [], sketch
    if outcome.kind != "ok":
        icon = "⏳" if outcome.retry else "⚠️"
        return [], None, f"{icon} {_redact(outcome.message)}", [], sketch
    items = [(thumbnail_url(hit, root), f"{hit.score:.3f} · {neutralise(hit.name)}") for hit in outcome.hits]
    hits = [{"name": hit.name, "score": hit.score, "mode": mode} for hit in outcome.hits]
    return items, small_preview(outcome.preview), f"{outcome.message} Click a result to see why it matched.", hits, sketch


# ---------------------------------------------------------------------------------------------
# The page's handlers: input checks, rate limits and gates around the service, then rendering
# ---------------------------------------------------------------------------------------------
def empty_view(message: str = EMPTY_HINT) -> PageView:
    return [], None, message, [], None, False


def preview_data_url(image: Image.Image | None) -> str | None:
    """The model's view of the sketch as a data URL (a few KB of JPEG): no file written, no request to fetch it."""
    if image is None:
        return None
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


_VIEWS = itertools.count()  # a number per view sent through Gradio, so an equal view still re-renders the page


def results_view(view: PageView) -> dict[str, Any]:
    """What the results view (zsdemo/serve/page/results.js) shows: the status line, the model's view and the results
    (thumbnail URL, caption, and the name, mode and score a click sends back). No server path in any of it."""
    items, preview, status, hits = view[:4]
    return {"status": status, "preview": preview_data_url(preview),
            "items": [{"src": src, "caption": caption, "name": hit["name"], "mode": hit["mode"],
                       "score": round(float(hit["score"]), 4)} for (src, caption), hit in zip(items, hits, strict=True)]}


def page_outputs(view: PageView) -> tuple[str, Any, bool]:
    """A search's answer for the page's Gradio events: (the results view's value, the sketch, whether it waits)."""
    return json.dumps({**results_view(view), "n": next(_VIEWS)}, ensure_ascii=False), view[4], view[5]


class Page:
    """What the page's events call, for one service. Drawn strokes skip Gradio's queue and events (the canvas's server
    function, `stroke`; Gradio's round trips and processing cost more than the search, measured by bench/browser.py),
    so the `searching` gate (and `per_client`, a fair share per client) is what keeps searches to
    `concurrency` at a time; a bounded number wait (at most a few seconds), the rest hear "busy" at once. Uploaded
    sketches (a file decode each) have a gate of their own, so they cannot take the drawn strokes' slots;
    explanations and photo uploads have their own Gradio concurrency ids (see `wire`)."""

    def __init__(self, service: SearchService) -> None:
        cfg = service.config
        self.service, self.modes, self.redact = service, service.modes, redactor_for(cfg)
        self.searching = Gate("search", cfg.concurrency, max_waiting=max(1, cfg.queue_size), wait_s=10.0)
        self.per_client = ClientSlots(max(1, cfg.concurrency // 2))  # one client never holds every search slot
        self.upload_searching = Gate("uploaded-sketch search", 1, max_waiting=max(1, cfg.queue_size // 4), wait_s=20.0)
        self.search_rate = RateLimiter("search", per_second=8.0, burst=40)
        self.upload_rate = RateLimiter("upload", per_second=0.2, burst=5)
        self.policy = UploadPolicy.resolve(cfg.host, cfg.share)
        self.quota = UploadQuota(self.policy)
        if self.policy.public:
            log.info("Public app (%s): adding photos is %s", self.policy.why_public,
                     "on, with quotas" if self.policy.enabled else "off (ZSDEMO_ALLOW_UPLOADS=1 turns it on)")

    # ---- search ------------------------------------------------------------------------------
    def run_search(self, sketch: Any, k: Any, text: Any, text_weight: Any, mode: Any, gate: Gate | None = None,
                   request: gr.Request | None = None) -> PageView:
        client = client_key(request)
        try:
            self.search_rate.check(client)
            with self.per_client.enter(client if gate is None else None), (gate or self.searching).enter():
                outcome = self.service.search(sketch, k, text, text_weight, mode or None)
        except ZsdemoError as exc:  # busy or rate-limited: a readable answer, nothing queued
            outcome = SearchOutcome("error", str(exc))
        view = render_search(outcome, sketch, mode if isinstance(mode, str) and mode else self.modes[0],
                             root_url(request))
        return (*view, outcome.kind == "not_ready" and outcome.retry)

    def search(self, sketch: str | None, k: float | None = None, text: str | None = None,
               text_weight: float | None = None, mode: str | None = None,
               request: gr.Request = None) -> PageView:  # type: ignore[assignment]
        """The canvas endpoint: strokes JSON only (a string from the browser is never opened as a server path).
        `mode`: one of the served modes (category = this kind of thing, fine_grained = this exact one; plain)."""
        if sketch is not None and not isinstance(sketch, str):
            return empty_view("⚠️ /search takes the canvas's strokes as a JSON string.")
        if not sketch or not sketch.strip():
            return empty_view()
        if not is_strokes_value(sketch):
            return empty_view("⚠️ /search takes the canvas's strokes as JSON ({\"width\", \"height\", \"strokes\"}); "
                              "send a picture of a sketch to /search_upload instead.")
        return self.run_search(sketch, k, text, text_weight, mode, request=request)

    def search_upload(self, path: str | None, k: float | None = None, text: str | None = None,
                      text_weight: float | None = None, mode: str | None = None,
                      request: gr.Request = None) -> PageView:  # type: ignore[assignment]
        if not path:
            return empty_view()
        if self.service.is_served_file(str(path)):
            return empty_view("⚠️ That file is one this app serves; upload a picture of a sketch instead.")
        return self.run_search(str(path), k, text, text_weight, mode, self.upload_searching, request)

    def rerun(self, sketch: Any, k: float | None, text: str | None, weight: float | None,
              mode: str | None, request: gr.Request = None) -> PageView:  # type: ignore[assignment]
        return self.run_search(sketch, k, text, weight, mode, request=request) if sketch else empty_view()

    # ---- what the endpoints and the page's events return -------------------------------------------
    def api_search(self, sketch: str | None, k: float | None = None, text: str | None = None,
                   text_weight: float | None = None, mode: str | None = None,
                   request: gr.Request = None) -> tuple[Any, ...]:  # type: ignore[assignment]
        """/search: (results gallery, the model's view, status line)."""
        return self.search(sketch, k, text, text_weight, mode, request)[:3]

    def api_search_upload(self, path: str | None, k: float | None = None, text: str | None = None,
                          text_weight: float | None = None, mode: str | None = None,
                          request: gr.Request = None) -> tuple[Any, ...]:  # type: ignore[assignment]
        """/search_upload: (results gallery, the model's view, status line)."""
        return self.search_upload(path, k, text, text_weight, mode, request)[:3]

    def stroke(self, data: Any, request: gr.Request | None = None) -> dict[str, Any]:
        """The canvas's own search (its server function, one POST a stroke, no Gradio event): {sketch, k, text,
        text_weight, mode, mode_label} from the page -> the results view. Every value is checked as /search's are."""
        started = time.perf_counter()
        if not isinstance(data, dict):
            return results_view(empty_view("⚠️ The canvas sends its strokes with the search settings."))
        mode = data.get("mode")
        if mode not in self.modes and isinstance(data.get("mode_label"), str):
            mode = next((name for name in self.modes if self.service.mode(name).label == data["mode_label"]), mode)
        view = results_view(self.search(data.get("sketch"), data.get("k"), data.get("text"), data.get("text_weight"),
                                        mode if isinstance(mode, str) else None, request))
        return {**view, "handler_ms": round(1000 * (time.perf_counter() - started), 1)}  # bench/browser.py reads it

    def remember(self, sketch: Any, mode: str | None) -> tuple[Any, bool]:
        """The canvas's value after its search: kept as the current sketch (re-runs, why this photo), and whether it
        waits for its mode's gallery (the start-up timer re-runs it then)."""
        if not isinstance(sketch, str) or not is_strokes_value(sketch):
            return None, False
        try:
            phase = self.service.mode(mode if mode in self.modes else None).status.phase
        except ZsdemoError:
            return sketch, False
        return sketch, phase not in ("ready", "error")

    def page_rerun(self, sketch: Any, k: float | None, text: str | None, weight: float | None, mode: str | None,
                   request: gr.Request = None) -> tuple[Any, ...]:  # type: ignore[assignment]
        return page_outputs(self.rerun(sketch, k, text, weight, mode, request))

    def page_upload(self, path: str | None, k: float | None, text: str | None, weight: float | None,
                    mode: str | None, request: gr.Request = None) -> tuple[Any, ...]:  # type: ignore[assignment]
        return page_outputs(self.search_upload(path, k, text, weight, mode, request))

    # ---- start-up: progress, and the sketch drawn before the gallery was ready ----------------------
    def ready_modes(self) -> list[str]:
        return [name for name in self.modes if self.service.mode(name).engine is not None
                and self.service.mode(name).status.phase == "ready"]

    def poll(self, sketch: Any, k: float | None, text: str | None, weight: float | None, mode: str | None,
             waiting: bool | None, was_settled: bool | None,
             request: gr.Request = None) -> tuple[Any, ...]:  # type: ignore[assignment]
        """The start-up timer: banner, warning and info line; and the sketch that heard "still preparing" (`waiting`)
        is searched again as soon as its mode is ready, without a stroke. The timer stops on the second settled
        tick, so a sketch whose answer crossed the first one on the wire is still re-run."""
        settled = self.service.settled
        page = (banner_html(self.service), warning_html(self.service), info_markdown(self.service),
                gr.Timer(active=not (settled and was_settled)), settled)
        wanted = mode if mode in self.modes else self.modes[0]
        if sketch and waiting and wanted in self.ready_modes():
            return (*page, *self.page_rerun(sketch, k, text, weight, mode, request))
        return (*page, *(gr.skip() for _ in range(3)))

    def refresh(self) -> tuple[str, str, str]:
        return banner_html(self.service), warning_html(self.service), info_markdown(self.service)

    # ---- why this photo ----------------------------------------------------------------------
    def explained(self, outcome: Any, title: str, for_page: bool = False) -> tuple[Image.Image | None, str]:
        if outcome.kind != "ok":
            return None, f"{title}  \n⚠️ {self.redact(outcome.message)}"
        image = outcome.image
        if for_page and max(image.size) < SHOWN_PHOTO_SIDE:  # small photos: enlarged on the page (API: photo's size)
            scale = SHOWN_PHOTO_SIDE / max(image.size)
            image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
        return image, f"{title}  \n**Why this photo:** {outcome.message}"

    def show_photo(self, sketch: Any, evt: gr.SelectData) -> tuple[Any, ...]:
        """A click on a result (its name, mode and score, from the results view): the photo with the similarity map of
        the sketch that found it (the area appears). The photo is looked up by name: no path comes from the page."""
        clicked = evt.value if isinstance(evt.value, dict) else {}
        name, mode, index = clicked.get("name"), clicked.get("mode"), evt.index
        if not isinstance(name, str) or not isinstance(index, int) or len(name) > 1000:
            return None, "", gr.Row(visible=False)
        try:
            found = self.service.find_photo(name, mode if isinstance(mode, str) else None)
            label = self.service.mode(mode if isinstance(mode, str) else None).label
            score = float(clicked.get("score") or 0.0)
        except (ZsdemoError, TypeError, ValueError) as exc:
            return None, f"⚠️ {self.redact(str(exc))}", gr.Row(visible=True)
        title = f"**#{index + 1} · {neutralise(name)}** · similarity {score:.3f}"
        if found is None:
            return None, f"{title}  \n⚠️ This photo is no longer in the gallery; draw again.", gr.Row(visible=True)
        if len(self.modes) > 1:
            title += f" · {label}"
        if sketch:
            return *self.explained(self.service.explain(found, sketch, mode), title, for_page=True), \
                gr.Row(visible=True)
        try:
            return self.service.photo(found), title, gr.Row(visible=True)
        except ZsdemoError as exc:
            return None, f"⚠️ {exc}", gr.Row(visible=True)

    def explain(self, sketch: str | None, photo: str | None, mode: str | None = None) -> tuple[Image.Image | None, str]:
        """Why a photo matched: the canvas's strokes JSON, a photo's name as /search captions give it (after the
        " · "), and the mode. Returns the photo with the similarity map over it, and a caption."""
        if not isinstance(sketch, str) or not is_strokes_value(sketch):
            return None, "⚠️ /explain takes the canvas's strokes as JSON, as /search does."
        if not isinstance(photo, str) or len(photo) > 1000:
            return None, "⚠️ /explain takes a photo's name as /search captions give it."
        name = photo.split(" · ")[-1].strip()
        return self.explained(self.service.explain(name, sketch, mode or None), f"**{neutralise(name)[:200]}**")

    # ---- add photos --------------------------------------------------------------------------
    def add(self, files: list[str] | None, progress: gr.Progress = gr.Progress(),  # noqa: B008
            request: gr.Request = None) -> tuple[str, str]:  # type: ignore[assignment]
        def report(done: int, total: int, message: str) -> None:
            progress((done, total), desc=message or "Indexing")

        if not self.policy.enabled:
            return f"⚠️ {self.policy.off_message()}", info_markdown(self.service)
        paths = [str(f) for f in files or [] if isinstance(f, str)]
        session = getattr(request, "session_hash", None)
        try:
            self.upload_rate.check(client_key(request))
            nbytes = sum(os.path.getsize(f) for f in paths if os.path.isfile(f))
            self.quota.check(session, len(paths), nbytes, self.service.cache_dir / "uploads")
        except ZsdemoError as exc:
            log.info("add_photos refused: %s", exc)
            return f"⚠️ {exc}", info_markdown(self.service)
        outcome = self.service.add_photos(paths, report)
        if outcome.added:
            self.quota.record(session, outcome.added, nbytes)
        return self.added_message(outcome), info_markdown(self.service)

    def added_message(self, outcome: Any) -> str:
        message = self.redact(outcome.message if outcome.ok else f"⚠️ {outcome.message}")
        if outcome.skipped:
            listed = "; ".join(f"{name}: {self.redact(why)}" for name, why in outcome.skipped[:10])
            message += f"  \n⚠️ Skipped {len(outcome.skipped)}: {listed}" + (" …" if len(outcome.skipped) > 10 else "")
        return message


# ---------------------------------------------------------------------------------------------
# The page's layout (components only) and wiring (events only)
# ---------------------------------------------------------------------------------------------
@dataclass
class Controls:
    """The page's components, by role (see `layout`)."""

    banner: Any = None
    warning: Any = None
    mode: Any = None
    sketch: Any = None
    upload: Any = None
    k: Any = None
    text: Any = None
    weight: Any = None
    preview: Any = None
    status: Any = None
    results: Any = None
    why_box: Any = None
    large: Any = None
    large_caption: Any = None
    explain_sketch: Any = None
    explain_photo: Any = None
    photos: Any = None
    add_button: Any = None
    add_status: Any = None
    info: Any = None
    view: Any = None
    api_search: Any = None
    api_upload: Any = None
    current: Any = None
    waiting: Any = None
    settled: Any = None
    timer: Any = None

    @property
    def settings(self) -> list[Any]:
        return [self.k, self.text, self.weight, self.mode]

    @property
    def api_outputs(self) -> list[Any]:
        """What /search and /search_upload return (hidden on the page; the results view shows the same)."""
        return [self.results, self.preview, self.status]

    @property
    def search_outputs(self) -> list[Any]:
        """What the page's own search events update: the results view, and the sketch states."""
        return [self.view, self.current, self.waiting]


def layout_header(c: Controls, page: Page) -> None:
    service = page.service
    gr.Markdown("# ✏️ Sketch search\nDraw a rough sketch; the photos that match it appear as you draw.")
    c.warning = gr.HTML(warning_html(service), elem_id="zs-warning")
    c.banner = gr.HTML(banner_html(service), elem_id="zs-banner")
    choices = [(service.mode(name).label, name) for name in page.modes]
    c.mode = unchecked(gr.Radio(choices, value=page.modes[0], label="Search for", elem_id="zs-mode",
                                visible=len(page.modes) > 1,
                                info="“This kind of thing”: photos of the same category. “This exact one”: the photo "
                                     "of this very object (fine-grained)."))


def layout_drawing(c: Controls, page: Page) -> None:
    """The left column: the canvas (or an upload), and the search settings."""
    cfg = page.service.config
    with gr.Tabs():
        with gr.Tab("Draw"):
            def stroke_search(data: Any, request: gr.Request = None) -> dict[str, Any]:  # type: ignore[assignment]
                return page.stroke(data, request)

            c.sketch = gr.HTML("", html_template=page_file("canvas.html"), css_template=page_file("canvas.css"),
                               js_on_load=page_file("canvas.js"), elem_id="zs-sketch", label="Sketch",
                               apply_default_css=False, server_functions=[stroke_search], **canvas_settings())
        with gr.Tab("Upload a sketch"):
            c.upload = gr.File(label="Sketch image (black lines on white work best)", file_count="single",
                               file_types=list(PHOTO_EXTENSIONS), type="filepath", elem_id="zs-upload")
    c.k = unchecked(gr.Slider(1, cfg.max_k, value=cfg.default_k, step=1, label="Number of results", elem_id="zs-k"))
    with gr.Accordion("Refine with text (optional)", open=False):
        c.text = gr.Textbox(label="Text", placeholder="e.g. red  (press Enter)", max_length=200, elem_id="zs-text")
        c.weight = unchecked(gr.Slider(0.0, 1.0, value=0.0, step=0.05, label="Text weight (0 = sketch only)",
                                       elem_id="zs-weight"))


def layout_results(c: Controls) -> None:
    """The right column (below the canvas on a phone): the results view (the model's view, the status line and the
    results: zsdemo/serve/page/results.*), and "why this photo" once one is clicked. The API's outputs are hidden."""
    c.view = gr.HTML(json.dumps(results_view(empty_view())), html_template=page_file("results.html"),
                     css_template=page_file("results.css"), js_on_load=page_file("results.js"), elem_id="zs-view",
                     apply_default_css=False)
    with gr.Row(visible=False, equal_height=False, elem_id="zs-why-box") as c.why_box:  # side by side, or stacked
        with gr.Column(scale=3, min_width=260):
            c.large = gr.Image(label="Why this photo: similarity to your sketch", show_label=False, type="pil",
                               format="jpeg", interactive=False, elem_id="zs-large", buttons=["fullscreen"])
        with gr.Column(scale=2, min_width=220):
            c.large_caption = gr.Markdown(elem_id="zs-why", min_height=0)
    with gr.Row(visible=False):  # outputs of the /search and /search_upload API endpoints only
        c.results = gr.Gallery(label="results", show_label=False)
        c.preview = gr.Image(label="what the model sees", type="pil", format="jpeg")
        c.status = gr.Markdown(EMPTY_HINT)
        c.api_search = gr.Button("search")
        c.api_upload = gr.Button("search_upload")


def layout_footer(c: Controls, page: Page) -> None:
    with gr.Row(visible=False):  # inputs of the /explain API endpoint only
        c.explain_sketch = gr.Textbox(label="sketch")
        c.explain_photo = gr.Textbox(label="photo")
    with gr.Accordion("Add your own photos", open=False, visible=page.policy.enabled):
        c.photos = gr.File(label="Photos", file_count="multiple", file_types=list(PHOTO_EXTENSIONS), type="filepath")
        c.add_button = gr.Button("Add to the gallery")
        c.add_status = gr.Markdown(elem_id="zs-add-status")
    c.info = gr.Markdown(info_markdown(page.service), elem_id="zs-info")


def layout(page: Page) -> Controls:
    c = Controls()
    layout_header(c, page)
    with gr.Row(equal_height=False):
        with gr.Column(scale=0, min_width=CANVAS_SIZE + 24, elem_id="zs-draw-column"):
            layout_drawing(c, page)
        with gr.Column(scale=1, min_width=280, elem_id="zs-results-column"):
            layout_results(c)
    layout_footer(c, page)
    c.current = gr.State(None)  # the last sketch searched (drawn or uploaded), for re-runs with new settings
    c.waiting = gr.State(False)  # the last sketch heard "still preparing": the start-up timer re-runs it when ready
    c.settled = gr.State(False)  # the service was settled at the timer's last tick
    c.timer = gr.Timer(0.5, active=not page.service.settled)
    return c


SHOW_WHY_JS = "() => document.querySelector('#zs-why-box')?.scrollIntoView({behavior: 'smooth', block: 'nearest'})"


def wire(c: Controls, page: Page) -> None:
    """Drawn strokes are searched by the canvas itself (its server function `stroke_search`: one POST, no Gradio
    event; newest stroke wins in canvas.js) and shown by the results view; the canvas's value then only tells the
    page the current sketch. /search and /search_upload are the same searches for API clients (hidden triggers)."""
    concurrency = page.service.config.concurrency
    private = {"show_progress": "hidden", "concurrency_id": "search", "concurrency_limit": concurrency,
               "api_visibility": "private"}
    c.api_search.click(page.api_search, [c.sketch, *c.settings], c.api_outputs, api_name="search",
                       trigger_mode="always_last", show_progress="hidden", queue=False)
    c.api_upload.click(page.api_search_upload, [c.upload, *c.settings], c.api_outputs, api_name="search_upload",
                       show_progress="hidden", concurrency_id="search_upload", concurrency_limit=1)
    c.sketch.change(page.remember, [c.sketch, c.mode], [c.current, c.waiting], api_visibility="private", queue=False,
                    show_progress="hidden", trigger_mode="always_last")
    c.upload.change(page.page_upload, [c.upload, *c.settings], c.search_outputs, trigger_mode="always_last",
                    show_progress="hidden", concurrency_id="search_upload", concurrency_limit=1,
                    api_visibility="private")
    for trigger in (c.k.release, c.text.submit, c.weight.release, c.mode.change):
        trigger(page.page_rerun, [c.current, *c.settings], c.search_outputs, trigger_mode="always_last", **private)
    why = [c.large, c.large_caption, c.why_box]
    c.mode.change(lambda: (None, "", gr.Row(visible=False)), None, why, api_visibility="private", queue=False)
    c.view.select(page.show_photo, [c.current], why, api_visibility="private", concurrency_id="search",
                  concurrency_limit=concurrency).then(None, js=SHOW_WHY_JS, api_visibility="private", queue=False)
    c.explain_photo.submit(page.explain, [c.explain_sketch, c.explain_photo, c.mode], [c.large, c.large_caption],
                           api_name="explain", concurrency_id="explain", concurrency_limit=1)
    c.add_button.click(page.add, c.photos, [c.add_status, c.info], api_name="add_photos", concurrency_limit=1,
                       concurrency_id="index").then(page.page_rerun, [c.current, *c.settings], c.search_outputs,
                                                    **private)
    c.timer.tick(page.poll, [c.current, *c.settings, c.waiting, c.settled],
                 [c.banner, c.warning, c.info, c.timer, c.settled, *c.search_outputs], api_visibility="private",
                 queue=False)


# ---------------------------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------------------------
def build_demo(service: SearchService) -> gr.Blocks:
    """The Blocks app around `service` (not launched; `main` and tests launch it)."""
    quiet_client_errors()
    page = Page(service)
    with gr.Blocks(title="Sketch search", delete_cache=(3600, 3600)) as demo:
        controls = layout(page)
        wire(controls, page)
        demo.load(page.refresh, None, [controls.banner, controls.warning, controls.info], api_visibility="private",
                  queue=False)
    demo.queue(default_concurrency_limit=service.config.concurrency, max_size=service.config.queue_size)
    return demo


# A thumbnail's URL (THUMB_ROUTE/<file name>), also as gradio_client asks for it: through Gradio's file route
# (`/gradio_api/file=<the URL>`), which would otherwise fetch it over the network and refuse the app's own address
_THUMB_REQUEST = re.compile(r"(?:/gradio_api/file=https?://[^/]+)?(?:/[\w.~-]+)*?" + re.escape(THUMB_ROUTE) + r"/([^/]*)")


class ThumbnailFiles:
    """ASGI middleware answering GET THUMB_ROUTE/<file name>: the results' thumbnails, looked up by their content-
    addressed file name in the thumbnail folders only (zsdemo.serve.service.find_thumbnail), so their URLs carry no
    server folder. A browser may keep them (a name never changes content), so repeated results cost no request."""

    def __init__(self, app: Any, folders: list[Path]) -> None:
        self.app, self.folders = app, folders

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        match = _THUMB_REQUEST.fullmatch(scope.get("path", "")) if scope["type"] == "http" else None
        if match is None or scope.get("method") not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        from starlette.responses import FileResponse, PlainTextResponse

        path = find_thumbnail(self.folders, match.group(1))
        response = PlainTextResponse("No such thumbnail.", status_code=404) if path is None else FileResponse(
            path, media_type="image/jpeg", headers={"Cache-Control": "public, max-age=86400, immutable"})
        await response(scope, receive, send)


def thumbnail_middleware(config: ServeConfig) -> Any:
    from starlette.middleware import Middleware

    return Middleware(ThumbnailFiles, folders=thumbnail_folders(config))


def launch_kwargs(config: ServeConfig) -> dict[str, Any]:
    """Launch options shared by `main`, tests and benchmarks. No extra allowed_paths and no static paths: thumbnails
    come from THUMB_ROUTE (`ThumbnailFiles`, a middleware of the app itself); everything else returned to the page goes
    through Gradio's own cache."""
    return {"server_name": config.host or None, "server_port": config.port, "share": config.share,
            "max_file_size": f"{config.max_upload_mb}mb", "show_error": True, "css": page_file("page.css"),
            "footer_links": ["api", "gradio"], "app_kwargs": {"middleware": [thumbnail_middleware(config)]}}


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
