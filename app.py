"""Sketch-to-photo search demo: draw (or upload) a sketch, get matching photos as you draw.

Run `python app.py` (starter gallery, OpenAI CLIP ViT-B/32) or see `python app.py --help`.
Every option also reads an environment variable, so a Hugging Face Space is configured
without code changes (see docs/SPACES.md):

    ZSDEMO_GALLERY   photo folders (os.pathsep-separated) or hf://datasets/OWNER/NAME[@REV][/SUBDIR]
    ZSDEMO_CACHE     cache folder for thumbnails, embeddings and the index
    ZSDEMO_PROMPTS   learned-prompt checkpoint: a .safetensors file or hf://[datasets/]OWNER/NAME[@REV]/FILE
    ZSDEMO_MODEL, ZSDEMO_PRETRAINED   open_clip backbone and weights (tag, file, or "none")
    GRADIO_SERVER_NAME, GRADIO_SERVER_PORT, ZSDEMO_SHARE   where to listen

Layout of this file: configuration -> `Backend` (engine, background indexing, the callbacks as
plain methods, testable without a server) -> `build_demo` (the Gradio page) -> `main`.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from zsdemo.errors import CacheError, EmptySketchError, ZsdemoError
from zsdemo.preprocess import PHOTO_EXTENSIONS, load_photo

log = logging.getLogger("zsdemo.app")

DEFAULT_CACHE_ROOT = Path("gallery_cache")
CANVAS_SIZE = 448
LARGE_PHOTO_SIDE = 1280
BRUSH_HINT = ("**First pick the brush** (the pen icon left of the canvas), then draw. Pen size and eraser sit "
              "beside it; undo and clear are at the top right. Results update after every stroke.")
EMPTY_HINT = "✏️ Draw something (pick the brush first) or upload a sketch: results appear after each stroke."


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------
@dataclass
class AppConfig:
    """Everything `main` needs. `galleries` empty = the starter gallery of bundled photos."""

    galleries: list[str] = field(default_factory=list)
    cache: str | None = None
    model: str | None = None
    pretrained: str | None = None
    prompts: str | None = None
    host: str | None = None
    port: int | None = None
    share: bool = False
    default_k: int = 12
    max_k: int = 48
    max_upload_mb: int = 25
    max_photos_per_upload: int = 500
    queue_size: int = 32
    concurrency: int = 2


def _env_list(name: str) -> list[str]:
    raw = os.environ.get(name, "")
    return [part for part in raw.split(os.pathsep) if part.strip()]


def _env_int(name: str, default: int | None) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else default


def parse_args(argv: Sequence[str] | None = None) -> AppConfig:
    """Command line over environment variables over defaults."""
    p = argparse.ArgumentParser(description="Sketch-to-photo search demo (Gradio).")
    p.add_argument("--gallery", action="append", default=None, metavar="DIR",
                   help="photo folder to search (repeatable), or hf://datasets/OWNER/NAME[@REV][/SUBDIR]. "
                        "Default: $ZSDEMO_GALLERY, else the starter gallery.")
    p.add_argument("--cache", default=os.environ.get("ZSDEMO_CACHE"),
                   help="cache folder (thumbnails, embeddings, index). Default: gallery_cache/<gallery name>.")
    p.add_argument("--prompts", default=os.environ.get("ZSDEMO_PROMPTS"),
                   help="learned-prompt checkpoint (.safetensors from train/fit.py) or hf://OWNER/NAME[@REV]/FILE.")
    p.add_argument("--model", default=os.environ.get("ZSDEMO_MODEL"), help="open_clip model (default ViT-B-32-quickgelu).")
    p.add_argument("--pretrained", default=os.environ.get("ZSDEMO_PRETRAINED"),
                   help="weights: open_clip tag (default openai), a weights file, or 'none' (random, for tests).")
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME"), help="address to listen on (default 127.0.0.1).")
    p.add_argument("--port", type=int, default=_env_int("GRADIO_SERVER_PORT", None), help="port (default: first free from 7860).")
    p.add_argument("--share", action="store_true", default=os.environ.get("ZSDEMO_SHARE", "").lower() in ("1", "true", "yes"),
                   help="also open a temporary public gradio.live link.")
    p.add_argument("--max-upload-mb", type=int, default=_env_int("ZSDEMO_MAX_UPLOAD_MB", 25),
                   help="uploads above this size are refused (default 25).")
    p.add_argument("--queue-size", type=int, default=_env_int("ZSDEMO_QUEUE_SIZE", 32),
                   help="requests waiting beyond this are refused with 'queue full'.")
    p.add_argument("--concurrency", type=int, default=_env_int("ZSDEMO_CONCURRENCY", 2),
                   help="searches run at the same time (one per CPU core is a good start).")
    a = p.parse_args(argv)
    return AppConfig(galleries=a.gallery if a.gallery is not None else _env_list("ZSDEMO_GALLERY"),
                     cache=a.cache, model=a.model, pretrained=a.pretrained, prompts=a.prompts, host=a.host,
                     port=a.port, share=a.share, max_upload_mb=a.max_upload_mb, queue_size=a.queue_size,
                     concurrency=a.concurrency)


# ---------------------------------------------------------------------------------------------
# Hugging Face Hub locations (hf://...), resolved to local paths
# ---------------------------------------------------------------------------------------------
def parse_hub_spec(spec: str) -> tuple[str, str, str | None, str]:
    """'hf://[datasets/|spaces/]OWNER/NAME[@REV][/PATH]' -> (repo_type, repo_id, revision, path)."""
    rest = spec.removeprefix("hf://")
    repo_type = "model"
    for prefix, kind in (("datasets/", "dataset"), ("spaces/", "space"), ("models/", "model")):
        if rest.startswith(prefix):
            repo_type, rest = kind, rest[len(prefix):]
    parts = rest.split("/")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise ZsdemoError(f"{spec!r} is not a hub location: use hf://[datasets/]OWNER/NAME[@REVISION][/PATH].")
    name, _, revision = parts[1].partition("@")
    return repo_type, f"{parts[0]}/{name}", revision or None, "/".join(parts[2:])


def resolve_hub_file(spec: str) -> str:
    """A local file path for `spec`; hf:// locations are downloaded into the Hugging Face cache."""
    if not spec.startswith("hf://"):
        return spec
    import huggingface_hub

    repo_type, repo_id, revision, path = parse_hub_spec(spec)
    if not path:
        raise ZsdemoError(f"{spec!r} names a repository, not a file: add the file name, e.g. {spec}/prompts.safetensors.")
    try:
        return huggingface_hub.hf_hub_download(repo_id, path, repo_type=repo_type, revision=revision)
    except Exception as exc:
        raise ZsdemoError(f"Could not fetch {spec} from the Hugging Face Hub ({type(exc).__name__}: {str(exc)[:200]}). "
                          "Check the name and your network, or download it and pass a local path.") from None


def resolve_hub_folder(spec: str) -> Path:
    """A local folder for `spec`; hf:// dataset locations are snapshot-downloaded (cached, so cheap on restart)."""
    if not spec.startswith("hf://"):
        return Path(spec).expanduser()
    import huggingface_hub

    repo_type, repo_id, revision, path = parse_hub_spec(spec)
    patterns = [f"{path.rstrip('/')}/**"] if path else None
    try:
        local = huggingface_hub.snapshot_download(repo_id, repo_type=repo_type, revision=revision, allow_patterns=patterns)
    except Exception as exc:
        raise ZsdemoError(f"Could not fetch {spec} from the Hugging Face Hub ({type(exc).__name__}: {str(exc)[:200]}). "
                          "Check the name and your network, or download it and pass --gallery with a local folder.") from None
    return Path(local) / path if path else Path(local)


def default_cache_dir(galleries: Sequence[str]) -> Path:
    if not galleries:
        return DEFAULT_CACHE_ROOT / "starter"
    first = galleries[0].rstrip("/").split("/")[-1] or "gallery"
    digest = hashlib.sha256("\n".join(galleries).encode()).hexdigest()[:8]
    return DEFAULT_CACHE_ROOT / f"{first}-{digest}"


# ---------------------------------------------------------------------------------------------
# Backend: the engine, startup indexing in the background, and the callbacks
# ---------------------------------------------------------------------------------------------
@dataclass
class Status:
    phase: str = "starting"  # starting | loading | indexing | ready | error
    message: str = "Starting…"
    done: int = 0
    total: int = 0


GalleryItems = list[tuple[str, str]]


class Backend:
    """Owns the search engine. The page's callbacks are plain methods here, so tests call them directly.

    Pass `encoder` to reuse an already loaded one (tests); otherwise it is loaded from `config` in
    `prepare()`, which `start()` runs on a background thread so the page is up at once.
    """

    def __init__(self, config: AppConfig, encoder: Any | None = None) -> None:
        self.config = config
        self.encoder = encoder
        self.engine: Any | None = None
        self.status = Status()
        self.cache_dir = Path(config.cache) if config.cache else default_cache_dir(config.galleries)
        self.sources: list[Path] = []
        self._index_lock = threading.Lock()  # one writer (startup build or photo upload) at a time
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- startup ---------------------------------------------------------------------------
    def start(self) -> None:
        """Load the model and open/build the gallery cache in a background thread."""
        self._thread = threading.Thread(target=self.prepare, name="zsdemo-index", daemon=True)
        self._thread.start()

    def wait_ready(self, timeout: float | None = None) -> bool:
        self._ready.wait(timeout)
        return self.ready

    @property
    def ready(self) -> bool:
        return self.engine is not None

    def _set(self, phase: str, message: str, done: int = 0, total: int = 0) -> None:
        self.status = Status(phase, message, done, total)

    def _progress(self, done: int, total: int, message: str) -> None:
        self._set("indexing", message or "Indexing photos", done, total)

    def prepare(self) -> None:
        """Blocking version of `start`: never raises, failures end up in `status` (and the log)."""
        from zsdemo.engine import SearchEngine
        from zsdemo.gallery import Gallery
        from zsdemo.starter import starter_photos_dir

        try:
            with self._index_lock:
                if self.encoder is None:
                    from zsdemo.encoder import EncoderConfig, SketchPhotoEncoder

                    self._set("loading", "Loading the model (first start may download weights)…")
                    prompts = resolve_hub_file(self.config.prompts) if self.config.prompts else None
                    cfg = EncoderConfig.from_env(model=self.config.model, pretrained=self.config.pretrained, prompts=prompts)
                    self.encoder = SketchPhotoEncoder.load(cfg)
                gallery = None
                if not self.config.galleries and self.config.cache:
                    try:  # a prebuilt cache given on its own
                        gallery = Gallery.open(self.cache_dir, self.encoder)
                    except CacheError as exc:
                        log.info("No usable cache in %s (%s); building the starter gallery there.", self.cache_dir, exc)
                if gallery is None:
                    if self.config.galleries:
                        self._set("loading", "Fetching the gallery…")
                        self.sources = [resolve_hub_folder(spec) for spec in self.config.galleries]
                        missing = [str(s) for s in self.sources if not s.is_dir()]
                        if missing:
                            raise ZsdemoError(f"Gallery folder not found: {', '.join(missing)}.")
                    else:
                        self._set("loading", "Writing the starter photos…")
                        self.sources = [starter_photos_dir(self.cache_dir.parent)]
                    self._set("indexing", "Indexing photos (an up-to-date cache is reused)…")
                    gallery, report = Gallery.build(self.sources, self.cache_dir, self.encoder, progress=self._progress)
                    log.info("Gallery ready: %s", report)
                self._serve(gallery)
                self.engine = SearchEngine(self.encoder, gallery)
                self._set("ready", f"Ready: {len(gallery)} photos.", len(gallery), len(gallery))
        except ZsdemoError as exc:
            log.error("Startup failed: %s", exc)
            self._set("error", str(exc))
        except Exception as exc:  # keep the page alive and say what happened; details go to the log
            log.exception("Startup failed")
            self._set("error", f"Startup failed: {type(exc).__name__}: {exc}")
        finally:
            self._ready.set()

    @staticmethod
    def _serve(gallery: Any) -> None:
        """Thumbnails are the only files served in place; large photos and previews go through Gradio's cache."""
        gr.set_static_paths([gallery.thumbs_dir])

    def attach(self, gallery: Any) -> None:
        """Use an already built gallery (tests, benchmark): no background work."""
        from zsdemo.engine import SearchEngine

        self._serve(gallery)
        self.sources = list(gallery.sources)
        self.engine = SearchEngine(self.encoder, gallery)
        self._set("ready", f"Ready: {len(gallery)} photos.", len(gallery), len(gallery))
        self._ready.set()

    # ---- what the page shows about the state ---------------------------------------------
    def banner_html(self) -> str:
        s = self.status
        if s.phase == "ready":
            return ""
        if s.phase == "error":
            return f"<div class='zs-banner zs-error'>⚠️ {html.escape(s.message).replace(chr(10), '<br>')}</div>"
        pct = f" {100 * s.done // s.total}%" if s.total else ""
        bar = f"<progress value='{s.done}' max='{s.total}'></progress>{pct}" if s.total else "<progress></progress>"
        return f"<div class='zs-banner'>⏳ {html.escape(s.message)} {bar}</div>"

    def info_markdown(self) -> str:
        if self.encoder is None:
            return "Model: loading…"
        d = self.encoder.describe()
        weights = d.get("pretrained")
        warn = " ⚠️ **random weights: results are meaningless (test mode)**" if str(weights).lower() in ("none", "random", "") else ""
        if d.get("prompts"):
            prompts = f"`{Path(str(d['prompts'])).name}` (sha256 {str(d.get('prompts_sha256'))[:12]}, {d.get('spec')})"
        else:
            prompts = "none (plain CLIP, no learned prompts)"
        size = f"{len(self.engine.gallery)} photos" if self.engine is not None else "being prepared"
        precision = getattr(getattr(self.encoder, "cfg", None), "query_precision", None)
        query = f" · sketch queries in {precision}" if precision else ""
        return f"**Backbone:** `{d.get('model')}` · weights `{weights}`{query}{warn}  \n**Prompts:** {prompts}  \n**Gallery:** {size}"

    def poll(self) -> tuple[str, str, gr.Timer]:
        """Timer callback while starting up: banner, info, and stop polling once settled."""
        settled = self.status.phase in ("ready", "error")
        return self.banner_html(), self.info_markdown(), gr.Timer(active=not settled)

    def _not_ready_message(self) -> str:
        if self.status.phase == "error":
            return f"⚠️ The gallery could not be prepared: {self.status.message}"
        progress = f" ({self.status.done}/{self.status.total})" if self.status.total else ""
        return f"⏳ Still preparing the gallery: {self.status.message}{progress}. Your sketch will work in a moment."

    # ---- callbacks -------------------------------------------------------------------------
    def search(self, sketch: Any, k: float | None = None, text: str | None = None, text_weight: float | None = None,
               ) -> tuple[GalleryItems, Image.Image | None, str, list[dict[str, Any]], Any]:
        """Sketch (Sketchpad dict, array, PIL or file path) -> (gallery items, model's view, status, hits, sketch)."""
        k = int(k or self.config.default_k)
        k = max(1, min(k, self.config.max_k))
        if self.engine is None:
            return [], None, self._not_ready_message(), [], sketch
        try:
            result = self.engine.search_sketch(sketch, k=k, text=(text or "").strip() or None,
                                               text_weight=float(text_weight or 0.0))
        except EmptySketchError:
            return [], None, EMPTY_HINT, [], sketch
        except ZsdemoError as exc:
            return [], None, f"⚠️ {exc}", [], sketch
        items = [(str(hit.thumbnail), f"{hit.score:.3f} · {hit.name}") for hit in result.hits]
        hits = [{"name": hit.name, "photo": str(hit.photo), "score": float(hit.score)} for hit in result.hits]
        refined = f" · text “{text.strip()}” at weight {float(text_weight):.2f}" if text and text.strip() and text_weight else ""
        status = (f"{len(items)} best of {len(self.engine.gallery)} photos in {result.seconds * 1000:.0f} ms{refined}. "
                  "Click a result to see the photo.")
        return items, result.preview, status, hits, sketch

    def search_upload(self, path: str | None, k: float | None = None, text: str | None = None,
                      text_weight: float | None = None) -> tuple[GalleryItems, Image.Image | None, str, list[dict[str, Any]], Any]:
        if not path:
            return [], None, EMPTY_HINT, [], None
        return self.search(str(path), k, text, text_weight)

    def rerun(self, sketch: Any, k: float | None, text: str | None, text_weight: float | None,
              ) -> tuple[GalleryItems, Image.Image | None, str, list[dict[str, Any]], Any]:
        """Same sketch, new settings (result count, text refinement)."""
        if sketch is None:
            return [], None, EMPTY_HINT, [], None
        return self.search(sketch, k, text, text_weight)

    def show_photo(self, hits: list[dict[str, Any]], index: int | None) -> tuple[Image.Image | None, str]:
        """The clicked result, large. Paths come from server-side state only, never from the browser."""
        if index is None or not 0 <= index < len(hits):
            return None, ""
        hit = hits[index]
        try:
            photo = load_photo(hit["photo"])
        except ZsdemoError as exc:
            return None, f"⚠️ {exc}"
        photo.thumbnail((LARGE_PHOTO_SIDE, LARGE_PHOTO_SIDE), Image.Resampling.LANCZOS)
        return photo, f"**#{index + 1} · {hit['name']}** · similarity {hit['score']:.3f}"

    def add_photos(self, files: Sequence[str] | None, progress: Callable[..., Any] | None = None) -> tuple[str, str]:
        """Copy uploaded photos into the cache's uploads folder and index them. Returns (status, info)."""
        paths = [Path(str(f)) for f in files or []]
        if not paths:
            return "Choose one or more photos first.", self.info_markdown()
        if self.engine is None:
            return self._not_ready_message(), self.info_markdown()
        if len(paths) > self.config.max_photos_per_upload:
            return (f"⚠️ {len(paths)} files at once is too many; add at most {self.config.max_photos_per_upload} per upload.",
                    self.info_markdown())
        wrong = [p.name for p in paths if p.suffix.lower() not in PHOTO_EXTENSIONS]
        paths = [p for p in paths if p.suffix.lower() in PHOTO_EXTENSIONS]

        def report(done: int, total: int, message: str) -> None:
            if progress is not None:
                progress((done, total), desc=f"Indexing {message}" if message else "Indexing")

        skipped: list[str] = [f"{name}: not a photo file ({', '.join(PHOTO_EXTENSIONS)})" for name in wrong]
        added = 0
        if paths:
            with self._index_lock:
                try:
                    gallery, rep = self.engine.gallery.add_photos(paths, self.encoder, progress=report)
                except ZsdemoError as exc:
                    return f"⚠️ {exc}", self.info_markdown()
                self._serve(gallery)
                self.engine.gallery = gallery
            added = rep.added
            skipped += [f"{Path(name).name}: {why}" for name, why in rep.skipped]
        msg = f"Added {added} photo{'s' if added != 1 else ''}; the gallery now has {len(self.engine.gallery)}."
        if skipped:
            msg = f"{msg}  \n⚠️ Skipped {len(skipped)}: " + "; ".join(skipped[:10]) + (" …" if len(skipped) > 10 else "")
        return msg, self.info_markdown()


# ---------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------
CSS = """
.zs-banner {padding: .6em 1em; border-radius: 8px; background: #fff7e0; border: 1px solid #f0c36d;}
.zs-banner progress {vertical-align: middle; width: 14em;}
.zs-error {background: #ffecec; border-color: #e88;}
"""


def build_demo(backend: Backend) -> gr.Blocks:
    """The Blocks app around `backend` (not launched; `main` and tests launch it)."""
    cfg = backend.config
    with gr.Blocks(title="Sketch search", delete_cache=(3600, 3600)) as demo:
        gr.Markdown("# ✏️ Sketch search\nDraw a rough sketch; the photos that match it appear as you draw.")
        banner = gr.HTML(backend.banner_html(), elem_id="zs-banner")
        with gr.Row():
            with gr.Column(scale=3):
                gr.Markdown(BRUSH_HINT, elem_id="zs-hint")
                with gr.Tabs():
                    with gr.Tab("Draw"):
                        sketch = gr.Sketchpad(
                            label="Sketch", image_mode="RGB", type="numpy", canvas_size=(CANVAS_SIZE, CANVAS_SIZE),
                            brush=gr.Brush(colors=["#000000"], color_mode="fixed", default_size=4),
                            eraser=gr.Eraser(default_size=16), layers=False, transforms=(),
                            elem_id="zs-sketch", placeholder="Pick the brush (pen icon), then draw here")
                        clear = gr.Button("Clear the canvas", size="sm")
                    with gr.Tab("Upload a sketch"):
                        upload = gr.File(label="Sketch image (black lines on white work best)", file_count="single",
                                         file_types=list(PHOTO_EXTENSIONS), type="filepath", elem_id="zs-upload")
                k = gr.Slider(1, cfg.max_k, value=cfg.default_k, step=1, label="Number of results")
                with gr.Accordion("Refine with text (optional)", open=False):
                    text = gr.Textbox(label="Text", placeholder="e.g. red  (press Enter)", max_length=200)
                    weight = gr.Slider(0.0, 1.0, value=0.0, step=0.05, label="Text weight (0 = sketch only)")
            with gr.Column(scale=1, min_width=220):
                preview = gr.Image(label="what the model sees", type="pil", format="png", interactive=False,
                                   height=240, elem_id="zs-preview")
                status = gr.Markdown(EMPTY_HINT, label="status", elem_id="zs-status")
        gr.Markdown("**Results** (similarity · file); click one to see the photo.")
        results = gr.Gallery(label="results", show_label=False, columns=6, height="auto", object_fit="cover",
                             allow_preview=False, elem_id="zs-results")
        with gr.Row():
            large = gr.Image(label="Photo", type="pil", format="jpeg", interactive=False, elem_id="zs-large")
            large_caption = gr.Markdown()
        with gr.Accordion("Add your own photos", open=False):
            photos = gr.File(label="Photos", file_count="multiple", file_types=list(PHOTO_EXTENSIONS), type="filepath")
            add = gr.Button("Add to the gallery")
            add_status = gr.Markdown(label="status", elem_id="zs-add-status")
        info = gr.Markdown(backend.info_markdown(), label="info", elem_id="zs-info")

        hits = gr.State([])
        current = gr.State(None)  # the last sketch searched (drawn or uploaded), for re-runs with new settings
        outputs = [results, preview, status, hits, current]
        search_kw: dict[str, Any] = {"show_progress": "hidden", "concurrency_id": "search",
                                     "concurrency_limit": cfg.concurrency}
        private = {**search_kw, "api_visibility": "private"}

        # Newest sketch wins: .change defaults to trigger_mode="always_last" (one call per finished stroke,
        # strokes made during a search collapse into one follow-up call).
        sketch.change(backend.search, [sketch, k, text, weight], outputs, api_name="search",
                      trigger_mode="always_last", **search_kw)
        upload.change(backend.search_upload, [upload, k, text, weight], outputs, api_name="search_upload",
                      trigger_mode="always_last", **search_kw)
        for trigger in (k.release, text.submit, weight.release):
            trigger(backend.rerun, [current, k, text, weight], outputs, trigger_mode="always_last", **private)
        clear.click(lambda: (None, [], None, EMPTY_HINT, [], None), None, [sketch, *outputs],
                    api_visibility="private", queue=False)

        def on_select(hit_list: list[dict[str, Any]], evt: gr.SelectData) -> tuple[Image.Image | None, str]:
            return backend.show_photo(hit_list, evt.index)

        results.select(on_select, hits, [large, large_caption], api_visibility="private")

        def on_add(files: list[str] | None, progress: gr.Progress = gr.Progress()) -> tuple[str, str]:  # noqa: B008
            return backend.add_photos(files, progress)

        add.click(on_add, photos, [add_status, info], api_name="add_photos", concurrency_limit=1,
                  concurrency_id="index").then(backend.rerun, [current, k, text, weight], outputs, **private)

        timer = gr.Timer(0.5, active=not backend.ready)
        timer.tick(backend.poll, None, [banner, info, timer], api_visibility="private", queue=False)
        demo.load(lambda: (backend.banner_html(), backend.info_markdown()), None, [banner, info],
                  api_visibility="private", queue=False)
    demo.queue(default_concurrency_limit=cfg.concurrency, max_size=cfg.queue_size)
    return demo


def launch_kwargs(config: AppConfig) -> dict[str, Any]:
    """Launch options shared by `main`, tests and the benchmark. No extra allowed_paths: thumbnails are
    served as static files; everything else returned to the page goes through Gradio's own cache."""
    return {"server_name": config.host or None, "server_port": config.port, "share": config.share,
            "max_file_size": f"{config.max_upload_mb}mb", "show_error": True, "css": CSS,
            "footer_links": ["api", "gradio"]}


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = parse_args(argv)
    backend = Backend(config)
    backend.start()
    global demo
    demo = build_demo(backend)
    demo.launch(**launch_kwargs(config))


if __name__ == "__main__":
    main()
