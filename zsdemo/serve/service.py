"""The search service under the page, without any Gradio: start, status, search, explain, add photos.

`app.py` renders the typed outcomes this returns (zsdemo.serve.outcomes). Startup (loading the model,
opening or building the gallery cache) runs on a background thread so a page can be up at once and
show progress; every failure ends up in `status` with a readable message, never as an exception.
Searches work as soon as the gallery is ready, in fp32; the faster sketch query path (zsdemo.query.select)
is prepared after that, in the background, and used from the moment it is ready.

Modes: one app answers "photos of this kind of thing" (category-level prompts, `--prompts`) and "this exact
one" (fine-grained prompts, one shared prompt for sketch and photo, `--fine-grained-prompts`). Both prompt
sets wrap the one frozen backbone in memory (`SketchPhotoEncoder.with_prompts`); each mode has its own gallery
embeddings (the first mode in `cache_dir`, the others in `cache_dir/mode-<name>`), built in that order in
the background. With no prompt file the one mode is "plain" CLIP (zsdemo.serve.modes).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from zsdemo.config import ServeConfig, is_random_weights, resolve_hub_file
from zsdemo.errors import CacheError, EmptySketchError, ZsdemoError
from zsdemo.limits import neutralise, read_k, read_mode, read_text, read_text_weight
from zsdemo.model.preprocess import PHOTO_EXTENSIONS
from zsdemo.serve.describe import describe_service, not_ready_message
from zsdemo.serve.explaining import Explainer, find_photo, large_photo
from zsdemo.serve.indexing import index_gently
from zsdemo.serve.modes import CATEGORY, FINE_GRAINED, PLAIN, Mode, Status, check_prompt_kind, served_modes
from zsdemo.serve.outcomes import AddOutcome, ExplainOutcome, SearchOutcome
from zsdemo.store.build import build_gallery
from zsdemo.store.gallery import Gallery
from zsdemo.store.layout import Hit, is_new_cache
from zsdemo.store.sources import gallery_sources
from zsdemo.store.uploads import add_photos

log = logging.getLogger(__name__)

__all__ = ["SearchService", "THUMB_NAME", "find_thumbnail", "thumbnail_folders"]

# A thumbnail's file name: content-addressed (zsdemo.store.layout.thumb_key), so it names no folder of the server
THUMB_NAME = re.compile(r"[A-Za-z0-9_-]{1,100}\.jpg")


def thumbnail_folders(config: ServeConfig) -> list[Path]:
    """The folders whose files the page may show: every served mode's thumbnails (the first mode's in the cache, the
    others in cache/mode-<name>), known from the configuration alone, before anything is loaded."""
    cache = Path(config.cache_dir).resolve()
    return [(cache if i == 0 else cache / f"mode-{name}") / "thumbs" for i, name in enumerate(served_modes(config))]


def find_thumbnail(folders: Sequence[Path], name: Any) -> Path | None:
    """The thumbnail called `name` (a hit's `thumbnail.name`) in `folders`, or None: only a bare content-addressed
    file name is looked up, and only there, so no other file of the server can be asked for."""
    if not isinstance(name, str) or not THUMB_NAME.fullmatch(name):
        return None
    for folder in folders:
        path = folder / name
        if path.is_file():
            return path
    return None


class SearchService:
    """Owns the encoders, galleries and search engines of the modes served from one cache.

    Pass `encoder` to reuse an already loaded one for the first mode (tests); otherwise it is loaded from
    `config` in `prepare()`, which `start()` runs on a background thread. `encoder`, `engine` and `status` are
    the first mode's; the others are prepared after it, on the same backbone (see the module docstring).
    """

    def __init__(self, config: ServeConfig, encoder: Any | None = None) -> None:
        self.config = config
        self.cache_dir = config.cache_dir
        names = served_modes(config)
        given = {CATEGORY: config.prompts, FINE_GRAINED: config.fine_grained_prompts, PLAIN: None}
        self._modes = {name: Mode(name, given[name], self.cache_dir if i == 0 else self.cache_dir / f"mode-{name}")
                       for i, name in enumerate(names)}
        self._first = self._modes[names[0]]
        self._first.encoder = encoder
        self.query_paths_ready = threading.Event()  # set once every mode's sketch query path is prepared
        self._write_lock = threading.Lock()  # one writer (startup build or photo upload) per process
        self._ready = threading.Event()
        self._all_ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._explainer = Explainer()

    # the first mode's encoder, engine and status (what a one-mode app has always had)
    encoder = property(lambda self: self._first.encoder, lambda self, value: setattr(self._first, "encoder", value))
    engine = property(lambda self: self._first.engine, lambda self, value: setattr(self._first, "engine", value))
    status = property(lambda self: self._first.status, lambda self, value: setattr(self._first, "status", value))

    @property
    def modes(self) -> list[str]:
        """The modes served, default first: ["category", "fine_grained"], one of them, or ["plain"]."""
        return list(self._modes)

    def mode(self, name: str | None = None) -> Mode:
        """A served mode by name or label (None = the default); ZsdemoError naming the served ones otherwise."""
        if not name:
            return self._first
        for mode in self._modes.values():
            if name in (mode.name, mode.label) or name.replace("-", "_").replace(" ", "_") == mode.name:
                return mode
        served = ", ".join(f"{m.name!r} ({m.label})" for m in self._modes.values())
        raise ZsdemoError(f"Unknown mode {neutralise(str(name)[:60])!r}: this app serves {served}.")

    @property
    def settled(self) -> bool:
        """Every mode is ready or failed (no background work left)."""
        return all(m.status.settled for m in self._modes.values())

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

    def _set(self, phase: str, message: str, done: int = 0, total: int = 0, mode: Mode | None = None) -> None:
        (mode or self._first).status = Status(phase, message, done, total)

    def _progress(self, done: int, total: int, message: str) -> None:
        self._set("indexing", message or "Indexing photos", done, total)

    def _waiting(self, message: str) -> None:
        self._set("waiting", message)

    def prepare(self) -> None:
        """Blocking version of `start`: never raises; failures end up in `status` (and the log). The first mode is
        served as soon as it is ready; the others are prepared after it, one by one."""
        try:
            with self._write_lock:
                for mode in self._modes.values():  # a checkpoint given to the wrong flag: refuse before loading
                    if mode.prompts:
                        check_prompt_kind(resolve_hub_file(mode.prompts), mode.name)
                if self.encoder is None:
                    downloads = "" if is_random_weights(self.config.pretrained) else \
                        " (the first start may download weights)"
                    self._set("loading", f"Loading the model{downloads}…")
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
        for mode in list(self._modes.values())[1:]:
            if self.status.phase == "error":
                self._set("error", f"Not prepared: the first mode failed ({self.status.message})", mode=mode)
                continue
            self._prepare_mode(mode)
        self._all_ready.set()
        self._prepare_query_paths()

    def _prepare_query_paths(self) -> None:
        """Switch each mode's encoder from fp32 to the query path chosen for this machine (remembered after the first
        start; zsdemo.query.select). Searches keep working meanwhile; a failure keeps fp32 and is logged."""
        from zsdemo.query.select import prepare_query_path

        try:
            for mode in self._modes.values():
                if mode.encoder is not None and hasattr(mode.encoder, "use_query_path"):
                    try:
                        selection = prepare_query_path(mode.encoder)
                        log.info("Mode %s answers sketches on %s", mode.name, selection.report["summary"])
                    except Exception:
                        log.exception("Preparing the sketch query path of mode %s failed; it stays on fp32", mode.name)
        finally:
            self.query_paths_ready.set()

    def _prepare_mode(self, mode: Mode) -> None:
        """A further mode: its prompts on the first mode's backbone, its gallery from the same photo folders."""
        try:
            with self._write_lock:
                self._set("loading", f"Loading the prompts of “{mode.label}”…", mode=mode)
                prompts = resolve_hub_file(mode.prompts) if mode.prompts else None
                mode.encoder = self.encoder.with_prompts(prompts)
                self._serve(self._build_mode_gallery(mode), mode)
        except ZsdemoError as exc:
            log.error("Mode %s failed: %s", mode.name, exc)
            self._set("error", str(exc), mode=mode)
        except Exception as exc:
            log.exception("Mode %s failed", mode.name)
            self._set("error", f"{type(exc).__name__}: {exc}", mode=mode)

    def _build_mode_gallery(self, mode: Mode) -> Gallery:
        """The first mode's photos (its folders and uploads), embedded with this mode's prompts (cached)."""
        def progress(done: int, total: int, message: str) -> None:
            self._set("indexing", f"“{mode.label}”: {message or 'indexing photos'}", done, total, mode=mode)

        def waiting(message: str) -> None:
            self._set("waiting", message, mode=mode)

        progress(0, 0, "indexing photos (an up-to-date cache is reused)")
        sources = list(self.engine.gallery.sources)
        gallery, report = build_gallery(sources, mode.cache_dir, mode.encoder, progress=progress, on_wait=waiting)
        log.info("Gallery of mode %s ready: %s", mode.name, report.summary())
        return gallery

    def wait_all(self, timeout: float | None = None) -> bool:
        """Wait until every mode is ready or failed; True when all are ready."""
        self._all_ready.wait(timeout)
        return all(m.engine is not None and m.status.phase == "ready" for m in self._modes.values())

    def _load_encoder(self) -> Any:
        from zsdemo.model.encoder import EncoderConfig, SketchPhotoEncoder

        prompts = resolve_hub_file(self._first.prompts) if self._first.prompts else None
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
        gallery, report = build_gallery(sources, self.cache_dir, self.encoder, progress=self._progress,
                                        on_wait=self._waiting)
        log.info("Gallery ready: %s", report.summary())
        return gallery

    def _serve(self, gallery: Gallery, mode: Mode | None = None) -> None:
        from zsdemo.search.engine import SearchEngine

        mode = mode or self._first
        if mode.engine is None:
            mode.engine = SearchEngine(mode.encoder, gallery)
        else:
            mode.engine.gallery = gallery  # readers keep the Gallery object they took
        if len(gallery) == 0:
            self._set("error", f"The gallery in {gallery.cache_dir} holds no photos. Add photos below, or start "
                               "with --gallery PHOTO_DIR.", mode=mode)
        else:
            self._set("ready", f"Ready: {len(gallery)} photos.", len(gallery), len(gallery), mode=mode)
            log.info("Mode %s serves %d photos", mode.name, len(gallery))

    def thumbnail_folders(self) -> list[Path]:
        """The folders whose files the page may show (every mode's thumbnails), known before any gallery is open."""
        return [mode.cache_dir.resolve() / "thumbs" for mode in self._modes.values()]

    def thumbnail_file(self, name: Any) -> Path | None:
        """The thumbnail called `name` (a hit's `thumbnail.name`) in this app's thumbnail folders, or None."""
        return find_thumbnail(self.thumbnail_folders(), name)

    # ---- what is loaded ----------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """The model, prompts, query path and gallery, for the page's info line (zsdemo.serve.describe)."""
        return describe_service(list(self._modes.values()))

    def not_ready_message(self, mode: Mode | None = None) -> str:
        return not_ready_message(mode or self._first, self._first)

    # ---- search ------------------------------------------------------------------------------
    def search(self, sketch: Any, k: int | None = None, text: str | None = None,
               text_weight: float | None = None, mode: str | None = None) -> SearchOutcome:
        """A sketch in any accepted form -> ranked hits, or a readable reason why not. Never raises for bad input.
        `mode` names a served mode (see `modes`); None = the first."""
        try:  # every parameter checked before any work (zsdemo.limits); a bad one is a readable refusal
            k = read_k(k, self.config.default_k, self.config.max_k)
            text, text_weight = read_text(text), read_text_weight(text_weight)
            served = self.mode(read_mode(mode))
        except ZsdemoError as exc:
            log.info("search refused: %s", exc)
            return SearchOutcome("error", str(exc))
        if served.engine is None or served.status.phase == "error":
            return SearchOutcome("not_ready", self.not_ready_message(served), retry=served.status.phase != "error")
        try:
            result = served.engine.search_sketch(sketch, k=k, text=text, text_weight=float(text_weight or 0.0),
                                                 display_name="the sketch")
        except EmptySketchError as exc:
            return SearchOutcome("empty", str(exc))
        except ZsdemoError as exc:
            return SearchOutcome("error", str(exc))
        gallery_size = len(served.engine.gallery)
        refined = f" · text “{text}” at weight {float(text_weight or 0):.2f}" if text and text_weight else ""
        label = served.label if len(self._modes) > 1 else None
        shown = f" ({label})" if label else ""
        message = f"{len(result.hits)} best of {gallery_size} photos in {result.seconds * 1000:.0f} ms{refined}{shown}."
        return SearchOutcome("ok", message, result.hits, result.preview, result.seconds, mode_label=label)

    # ---- why this photo ----------------------------------------------------------------------
    def find_photo(self, name: str, mode: str | None = None) -> Hit | None:
        """The gallery photo called `name` (as hits name them) in a mode's gallery, or None. Only gallery photos:
        a name never becomes an arbitrary server path."""
        return find_photo(self.mode(mode), name)

    def explain(self, photo: Hit | str, sketch: Any, mode: str | None = None) -> ExplainOutcome:
        """The similarity map between `sketch` and the patches of a gallery photo (a hit, or a photo name as hits
        give it), in `mode`, laid over the photo at its size (long side at most LARGE_PHOTO_SIDE)."""
        try:
            served = self.mode(read_mode(mode))
        except ZsdemoError as exc:
            log.info("explain refused: %s", exc)
            return ExplainOutcome("error", str(exc))
        if served.engine is None or served.status.phase == "error":
            return ExplainOutcome("not_ready", self.not_ready_message(served))
        return self._explainer.explain(served, photo, sketch)

    def photo(self, hit: Hit) -> Image.Image:
        """The photo of a hit, large (paths come from the gallery, never from the browser)."""
        return large_photo(hit)

    # ---- add photos --------------------------------------------------------------------------
    def _index_gently(self, work: Callable[[], Any]) -> Any:
        return index_gently(work, self.config.index_threads)

    def add_photos(self, files: Sequence[str | Path] | None,
                   progress: Callable[[int, int, str], None] | None = None) -> AddOutcome:
        """Copy uploaded photos into the cache's uploads folder and index them (every mode's gallery)."""
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
        skipped += [(p.name, "a file this app serves (a thumbnail or gallery photo), not an upload")
                    for p in paths if self.is_served_file(p)]
        paths = [p for p in paths if p.suffix.lower() in PHOTO_EXTENSIONS and not self.is_served_file(p)]
        if not paths:
            return AddOutcome(True, f"Added 0 photos; the gallery now has {len(self.engine.gallery)}.", 0, skipped)
        try:
            report = self._index_uploads(paths, progress)
        except ZsdemoError as exc:
            return AddOutcome(False, str(exc), skipped=skipped)
        skipped += [(neutralise(Path(name).name), why) for name, why in report.skipped]
        renamed = "".join(f" {neutralise(given)!r} was stored as {stored!r}." for given, stored in report.renamed[:10])
        return AddOutcome(True, f"Added {report.added} photo{'s' if report.added != 1 else ''}; the gallery now has "
                                f"{len(self.engine.gallery)}.{renamed}", report.added, skipped)

    def _index_uploads(self, paths: list[Path], progress: Callable[[int, int, str], None] | None) -> Any:
        """Add `paths` to the first mode's gallery, then re-index the other modes from the same folders."""
        with self._write_lock:
            started = time.perf_counter()
            gallery, report = self._index_gently(
                lambda: add_photos(self.engine.gallery, paths, self.encoder, progress=progress))
            self._serve(gallery)
            log.info("Added photos in %.1f s: %s", time.perf_counter() - started, report.summary())
            for mode in list(self._modes.values())[1:]:
                if mode.engine is None:
                    continue  # still being prepared: its build reads the first gallery's folders
                try:
                    self._serve(self._index_gently(lambda mode=mode: self._build_mode_gallery(mode)), mode)
                except ZsdemoError as exc:
                    log.error("Mode %s did not take the new photos: %s", mode.name, exc)
                    self._set("error", str(exc), mode=mode)
        return report

    def is_served_file(self, path: str | Path) -> bool:
        """True for a file inside this app's cache (thumbnails, uploads) or gallery folders: what the app serves
        must never come back in as if a visitor had uploaded it."""
        try:
            resolved = Path(path).resolve()
        except (OSError, RuntimeError, ValueError):
            return True
        roots = [Path(self.cache_dir).resolve()]
        if self.engine is not None:
            roots += [Path(s).resolve() for s in self.engine.gallery.sources]
        return any(resolved.is_relative_to(root) for root in roots)
