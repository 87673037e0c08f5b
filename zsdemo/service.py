"""The search service under the page, without any Gradio: start, status, search, add photos.

`app.py` renders what this returns; the CLI shares `gallery_sources`. Startup (loading the model,
opening or building the gallery cache) runs on a background thread so a page can be up at once and
show progress; every failure ends up in `status` with a readable message, never as an exception.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from zsdemo.config import ServeConfig, is_random_weights, resolve_hub_file, resolve_hub_folder
from zsdemo.errors import CacheError, EmptySketchError, ZsdemoError
from zsdemo.gallery import BuildReport, Gallery, Hit, is_new_cache, recorded_sources
from zsdemo.preprocess import PHOTO_EXTENSIONS, load_photo

log = logging.getLogger(__name__)

LARGE_PHOTO_SIDE = 1280


def gallery_sources(cache_dir: Path, galleries: Sequence[str]) -> list[Path] | None:
    """The folders to index into `cache_dir`: the ones given; else None, meaning the folders recorded in
    the cache; else, for a brand-new cache only, the starter photos. Never silently swaps a user's gallery
    for the starter one."""
    if galleries:
        sources = [resolve_hub_folder(spec) for spec in galleries]
        missing = [str(s) for s in sources if not s.is_dir()]
        if missing:
            raise ZsdemoError(f"Gallery folder not found: {', '.join(missing)}.")
        return sources
    if recorded_sources(cache_dir):
        return None
    if is_new_cache(cache_dir):
        from zsdemo.starter import starter_photos_dir

        return [starter_photos_dir(Path(cache_dir).parent)]
    raise CacheError(f"The cache {cache_dir} does not record which photo folders it was built from; name them: "
                     f"`python -m zsdemo index PHOTO_DIR... --cache {cache_dir}`.")


@dataclass
class Status:
    phase: str = "starting"  # starting | loading | indexing | waiting | ready | error
    message: str = "Starting…"
    done: int = 0
    total: int = 0

    @property
    def settled(self) -> bool:
        return self.phase in ("ready", "error")


@dataclass
class SearchOutcome:
    """What a search gives the page: hits, or a message saying why there are none."""

    kind: str  # ok | empty | error | not_ready
    message: str
    hits: list[Hit] = field(default_factory=list)
    preview: Image.Image | None = None  # the cleaned sketch, as the model sees it
    seconds: float | None = None  # the engine's own time


@dataclass
class AddOutcome:
    ok: bool
    message: str
    added: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)


class SearchService:
    """Owns the encoder, the gallery and the search engine for one served cache.

    Pass `encoder` to reuse an already loaded one (tests); otherwise it is loaded from `config` in
    `prepare()`, which `start()` runs on a background thread.
    """

    def __init__(self, config: ServeConfig, encoder: Any | None = None) -> None:
        self.config = config
        self.encoder = encoder
        self.engine: Any | None = None
        self.status = Status()
        self.cache_dir = config.cache_dir
        self.on_gallery: Callable[[Gallery], None] | None = None  # told of every gallery served (static paths)
        self._write_lock = threading.Lock()  # one writer (startup build or photo upload) per process
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- startup ---------------------------------------------------------------------------
    def start(self) -> None:
        """Load the model and open/build the gallery cache in a background thread."""
        self._thread = threading.Thread(target=self.prepare, name="zsdemo-startup", daemon=True)
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

    def _waiting(self, message: str) -> None:
        self._set("waiting", message)

    def prepare(self) -> None:
        """Blocking version of `start`: never raises; failures end up in `status` (and the log)."""
        try:
            with self._write_lock:
                if self.encoder is None:
                    self._set("loading", "Loading the model (the first start may download weights)…")
                    self.encoder = self._load_encoder()
                gallery = self._open_or_build()
                self._serve(gallery)
        except ZsdemoError as exc:
            log.error("Startup failed: %s", exc)
            self._set("error", str(exc))
        except Exception as exc:  # keep the page alive and say what happened; details go to the log
            log.exception("Startup failed")
            self._set("error", f"Startup failed: {type(exc).__name__}: {exc}")
        finally:
            self._ready.set()

    def _load_encoder(self) -> Any:
        from zsdemo.encoder import EncoderConfig, SketchPhotoEncoder

        prompts = resolve_hub_file(self.config.prompts) if self.config.prompts else None
        return SketchPhotoEncoder.load(EncoderConfig.from_serve(self.config, prompts))

    def _open_or_build(self) -> Gallery:
        if not self.config.galleries:
            try:  # an existing, up-to-date cache opens without scanning its folders
                return Gallery.open(self.cache_dir, self.encoder)
            except CacheError as exc:
                if not is_new_cache(self.cache_dir):
                    log.warning("%s Rebuilding it from the photo folders it records.", exc)
        sources = gallery_sources(self.cache_dir, self.config.galleries)
        self._set("indexing", "Indexing photos (an up-to-date cache is reused)…")
        gallery, report = Gallery.build(sources, self.cache_dir, self.encoder, progress=self._progress,
                                        on_wait=self._waiting)
        log.info("Gallery ready: %s", report.summary())
        return gallery

    def attach(self, gallery: Gallery) -> None:
        """Serve an already built gallery (tests, benchmarks): no background work."""
        self._serve(gallery)
        self._ready.set()

    def _serve(self, gallery: Gallery) -> None:
        from zsdemo.engine import SearchEngine

        if self.on_gallery is not None:
            self.on_gallery(gallery)
        if self.engine is None:
            self.engine = SearchEngine(self.encoder, gallery)
        else:
            self.engine.gallery = gallery  # readers keep the Gallery object they took
        if len(gallery) == 0:
            self._set("error", f"The gallery in {gallery.cache_dir} holds no photos. Add photos below, or start "
                               "with --gallery PHOTO_DIR.")
        else:
            self._set("ready", f"Ready: {len(gallery)} photos.", len(gallery), len(gallery))

    # ---- what is loaded ----------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """The model, prompts, query path and gallery, for the page's info line. Honest in every phase."""
        info: dict[str, Any] = {"phase": self.status.phase, "status": self.status.message}
        if self.encoder is None:
            return info
        described = self.encoder.describe()
        info.update(model=described.get("model"), pretrained=described.get("pretrained"),
                    random_weights=is_random_weights(str(described.get("pretrained"))),
                    prompts=described.get("prompts"), prompts_sha256=described.get("prompts_sha256"),
                    spec=described.get("spec"), query_path=getattr(self.encoder, "query_path", None)
                    or getattr(getattr(self.encoder, "cfg", None), "query_precision", None),
                    query_report=getattr(self.encoder, "query_report", None))
        if self.engine is not None:
            gallery = self.engine.gallery
            info.update(photos=len(gallery), search_backend=gallery.backend, skipped=len(gallery.skipped))
        return info

    def not_ready_message(self) -> str:
        if self.status.phase == "error":
            return f"The gallery could not be prepared: {self.status.message}"
        progress = f" ({self.status.done}/{self.status.total})" if self.status.total else ""
        return f"Still preparing the gallery: {self.status.message}{progress}. Your sketch will work in a moment."

    # ---- search ------------------------------------------------------------------------------
    def search(self, sketch: Any, k: int | None = None, text: str | None = None,
               text_weight: float | None = None) -> SearchOutcome:
        """A sketch in any accepted form -> ranked hits, or a readable reason why not. Never raises for bad input."""
        k = max(1, min(int(k or self.config.default_k), self.config.max_k))
        if self.engine is None or self.status.phase == "error":
            return SearchOutcome("not_ready", self.not_ready_message())
        text = (text or "").strip() or None
        try:
            result = self.engine.search_sketch(sketch, k=k, text=text, text_weight=float(text_weight or 0.0),
                                               display_name="the sketch")
        except EmptySketchError as exc:
            return SearchOutcome("empty", str(exc))
        except ZsdemoError as exc:
            return SearchOutcome("error", str(exc))
        gallery_size = len(self.engine.gallery)
        refined = f" · text “{text}” at weight {float(text_weight or 0):.2f}" if text and text_weight else ""
        message = f"{len(result.hits)} best of {gallery_size} photos in {result.seconds * 1000:.0f} ms{refined}."
        return SearchOutcome("ok", message, result.hits, result.preview, result.seconds)

    def photo(self, hit: Hit) -> Image.Image:
        """The photo of a hit, large (paths come from the gallery, never from the browser)."""
        photo = load_photo(hit.photo)
        photo.thumbnail((LARGE_PHOTO_SIDE, LARGE_PHOTO_SIDE), Image.Resampling.LANCZOS)
        return photo

    # ---- add photos --------------------------------------------------------------------------
    def add_photos(self, files: Sequence[str | Path] | None,
                   progress: Callable[[int, int, str], None] | None = None) -> AddOutcome:
        """Copy uploaded photos into the cache's uploads folder and index them."""
        paths = [Path(str(f)) for f in files or []]
        if not paths:
            return AddOutcome(False, "Choose one or more photos first.")
        if self.engine is None:
            return AddOutcome(False, self.not_ready_message())
        if len(paths) > self.config.max_photos_per_upload:
            return AddOutcome(False, f"{len(paths)} files at once is too many; add at most "
                                     f"{self.config.max_photos_per_upload} per upload.")
        skipped = [(p.name, f"not a photo file ({', '.join(PHOTO_EXTENSIONS)})")
                   for p in paths if p.suffix.lower() not in PHOTO_EXTENSIONS]
        paths = [p for p in paths if p.suffix.lower() in PHOTO_EXTENSIONS]
        added = 0
        if paths:
            with self._write_lock:
                started = time.perf_counter()
                try:
                    gallery, report = self.engine.gallery.add_photos(paths, self.encoder, progress=progress)
                except ZsdemoError as exc:
                    return AddOutcome(False, str(exc), skipped=skipped)
                self._serve(gallery)
                log.info("Added photos in %.1f s: %s", time.perf_counter() - started, report.summary())
            added = report.added
            skipped += [(Path(name).name, why) for name, why in report.skipped]
        return AddOutcome(True, f"Added {added} photo{'s' if added != 1 else ''}; the gallery now has "
                                f"{len(self.engine.gallery)}.", added, skipped)


__all__ = ["AddOutcome", "BuildReport", "SearchOutcome", "SearchService", "Status", "gallery_sources"]
