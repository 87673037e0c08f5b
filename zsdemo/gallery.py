"""A photo gallery cached on disk: thumbnails, embeddings, an optional Annoy index and a manifest.

Layout of a cache folder:
    CURRENT                 name of the live generation (replaced atomically, last)
    .lock                   held by the one process building into this cache (see `cache_lock`)
    gen-<id>/manifest.json  model fingerprint, sources, one entry per photo (path, size, mtime_ns),
                            and the files that could not be read (so they are not retried until they change)
    gen-<id>/embeddings.npy (N, D) float32, L2-normalised, rows aligned with the manifest
    gen-<id>/index.ann      Annoy index over the same rows, only for galleries searched with Annoy
    thumbs/<key>.jpg        thumbnails (content-addressed by path, size and mtime)
    uploads/                photos added through the app (a gallery source like any other)
A build writes a whole new generation and only then switches CURRENT, so an interrupted build
leaves the previous cache (or none) in place, never a half-written one. Builds into one cache are
serialised by a file lock, so two builders (the CLI and the app, say) never delete each other's work.
A rebuild without folders reuses the folders recorded in the manifest: a user's gallery is never
silently replaced.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from filelock import FileLock, Timeout
from PIL import Image

from zsdemo.errors import CacheError, ImageError
from zsdemo.index import METRIC, AnnoySearcher, IndexConfig, build_annoy, exact_search
from zsdemo.preprocess import PHOTO_EXTENSIONS, load_photo, make_thumbnail, open_image

log = logging.getLogger(__name__)

CACHE_VERSION = 2
THUMB_SIZE = 256
ProgressFn = Callable[[int, int, str], None]  # (done, total, message)
WaitFn = Callable[[str], None]  # told once when another process holds the cache's build lock


class PhotoEncoder(Protocol):
    """What the gallery needs from an encoder (zsdemo.encoder.SketchPhotoEncoder)."""

    embed_dim: int

    def fingerprint(self) -> str: ...
    def describe(self) -> dict[str, Any]: ...
    def encode_photos(self, photos: list[Image.Image]) -> np.ndarray: ...


@dataclass(frozen=True)
class PhotoEntry:
    """One indexed photo: a row of the embeddings matrix."""

    name: str  # path relative to its gallery source folder (what the page shows)
    path: str  # absolute path of the original photo
    size: int
    mtime_ns: int
    thumb: str  # file name inside thumbs/


@dataclass(frozen=True)
class SkippedFile:
    """A photo file that could not be indexed, remembered until it changes."""

    path: str
    reason: str
    size: int = -1
    mtime_ns: int = -1


@dataclass(frozen=True)
class PendingPhoto:
    path: Path
    name: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Hit:
    name: str  # path relative to its gallery source folder
    photo: Path  # the original photo file
    thumbnail: Path  # thumbnail inside the cache folder
    score: float  # cosine similarity


@dataclass
class UpdatePlan:
    """What a build would do to a cache: computed by `plan_update`, used by `Gallery.build` and `info`."""

    sources: list[Path]
    reuse: list[tuple[PhotoEntry, int]] = field(default_factory=list)  # (entry, row in the old embeddings)
    encode: list[PendingPhoto] = field(default_factory=list)  # new or changed files
    remove: list[str] = field(default_factory=list)  # indexed files that are gone
    skip: list[SkippedFile] = field(default_factory=list)  # unreadable before and unchanged since
    stale_model: bool = False  # the cache was built for another model, weights or prompts
    sources_changed: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.encode or self.remove or self.stale_model or self.sources_changed)


@dataclass
class BuildReport:
    total: int = 0
    added: int = 0
    removed: int = 0
    reused: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    seconds: float = 0.0

    def summary(self) -> str:
        text = (f"{self.total} photos indexed ({self.added} new, {self.reused} reused, {self.removed} removed) "
                f"in {self.seconds:.1f} s")
        if self.skipped:
            text += f"; {len(self.skipped)} skipped:\n" + "\n".join(f"  {p}: {why}" for p, why in self.skipped)
        return text


def scan_photos(sources: Iterable[Path], exclude: Path | None = None) -> list[tuple[Path, str]]:
    """Every photo file under the sources (recursive, sorted), as (absolute path, display name)."""
    found: dict[Path, str] = {}
    for source in sources:
        source = Path(source).resolve()
        if not source.is_dir():
            raise CacheError(f"Gallery folder {source} does not exist or is not a folder.")
        for root, dirs, files in os.walk(source):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (exclude is None or Path(root, d) != exclude))
            for name in sorted(files):
                if name.lower().endswith(PHOTO_EXTENSIONS) and not name.startswith("."):
                    path = Path(root, name)
                    found.setdefault(path, path.relative_to(source).as_posix())
    return sorted(found.items(), key=lambda item: item[1])


def _thumb_key(path: Path, size: int, mtime_ns: int) -> str:
    return hashlib.sha1(f"{path}:{size}:{mtime_ns}".encode()).hexdigest()[:20]


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@contextlib.contextmanager
def cache_lock(cache_dir: Path, on_wait: WaitFn | None = None, timeout: float | None = None) -> Iterator[None]:
    """Hold the cache's build lock. Another holder makes us wait (saying so once through `on_wait`);
    `timeout` seconds of waiting give a CacheError instead."""
    lock = FileLock(str(Path(cache_dir) / ".lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        message = f"Another indexing run is using the cache {cache_dir}; waiting for it to finish…"
        log.warning("%s", message)
        if on_wait is not None:
            on_wait(message)
        try:
            lock.acquire(timeout=-1 if timeout is None else timeout)
        except Timeout:
            raise CacheError(f"The cache {cache_dir} is still being built by another process after {timeout:.0f} s; "
                             "try again when it has finished.") from None
    try:
        yield
    finally:
        lock.release()


def is_new_cache(cache_dir: Path) -> bool:
    """True when `cache_dir` holds no gallery at all (no generation, no uploaded photos)."""
    cache_dir = Path(cache_dir)
    return not ((cache_dir / "CURRENT").exists() or any(cache_dir.glob("gen-*"))
                or any((cache_dir / "uploads").glob("*")))


def recorded_sources(cache_dir: Path) -> list[Path] | None:
    """The photo folders a cache was built from, read from its manifest even when the cache is stale or
    damaged (newest readable generation first); None when no manifest says."""
    cache_dir = Path(cache_dir)
    candidates: list[Path] = []
    with contextlib.suppress(OSError):
        candidates.append(cache_dir / (cache_dir / "CURRENT").read_text().strip() / "manifest.json")
    candidates += sorted(cache_dir.glob("gen-*/manifest.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for candidate in candidates:
        try:
            sources = json.loads(candidate.read_text())["sources"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if isinstance(sources, list) and sources:
            return [Path(s) for s in sources]
    uploads = cache_dir / "uploads"
    return [uploads.resolve()] if any(uploads.glob("*")) else None


def _entries_from(manifest: dict[str, Any]) -> list[PhotoEntry]:
    return [PhotoEntry(**e) for e in manifest["entries"]]


def plan_update(sources: list[Path], cache_dir: Path, fingerprint: str, embed_dim: int | None = None,
                manifest: dict[str, Any] | None = None) -> UpdatePlan:
    """Compare the photos under `sources` with a cache's manifest: what to reuse, encode, remove, skip."""
    cache_dir = Path(cache_dir).resolve()
    plan = UpdatePlan(sources=[Path(s).resolve() for s in sources])
    uploads = cache_dir / "uploads"
    if uploads.is_dir() and uploads not in plan.sources:
        plan.sources.append(uploads)
    files = scan_photos(plan.sources, exclude=cache_dir)

    previous: dict[str, tuple[PhotoEntry, int]] = {}
    known_bad: dict[str, SkippedFile] = {}
    if manifest is not None:
        plan.stale_model = manifest["fingerprint"] != fingerprint or (embed_dim is not None and manifest["dim"] != embed_dim)
        plan.sources_changed = [str(s) for s in plan.sources] != manifest["sources"]
        if not plan.stale_model:
            previous = {e.path: (e, row) for row, e in enumerate(_entries_from(manifest))}
            known_bad = {s["path"]: SkippedFile(**s) for s in manifest.get("skipped", [])}
    else:
        plan.sources_changed = True

    seen: set[str] = set()
    for path, name in files:
        key = str(path)
        seen.add(key)
        try:
            stat = path.stat()
        except OSError as exc:
            plan.skip.append(SkippedFile(key, f"cannot read file information: {exc.strerror or exc}"))
            continue
        old = previous.get(key)
        if old and (old[0].size, old[0].mtime_ns) == (stat.st_size, stat.st_mtime_ns) \
                and (cache_dir / "thumbs" / old[0].thumb).is_file():
            plan.reuse.append((PhotoEntry(name, key, old[0].size, old[0].mtime_ns, old[0].thumb), old[1]))
            continue
        bad = known_bad.get(key)
        if bad and (bad.size, bad.mtime_ns) == (stat.st_size, stat.st_mtime_ns):
            plan.skip.append(bad)
            continue
        plan.encode.append(PendingPhoto(path, name, stat.st_size, stat.st_mtime_ns))
    plan.remove = sorted(set(previous) - seen)
    return plan


class Gallery:
    """One loaded generation of a gallery cache. Immutable: updates return a new Gallery."""

    def __init__(self, cache_dir: Path, manifest: dict[str, Any], embeddings: np.ndarray, index_cfg: IndexConfig) -> None:
        self.cache_dir = cache_dir
        self.manifest = manifest
        self.embeddings = embeddings
        self.index_cfg = index_cfg
        self.entries: list[PhotoEntry] = _entries_from(manifest)
        self.skipped: list[SkippedFile] = [SkippedFile(**s) for s in manifest.get("skipped", [])]
        self.sources = [Path(s) for s in manifest["sources"]]
        self.generation_dir = cache_dir / manifest["generation"]
        self._annoy: AnnoySearcher | None = None
        index_file = self.generation_dir / "index.ann"
        if len(self.entries) >= index_cfg.annoy_threshold:
            if not index_file.is_file():  # built when the gallery was small, or with another threshold
                build_annoy(embeddings, index_file, index_cfg)
            self._annoy = AnnoySearcher(index_file, embeddings.shape[1], index_cfg)

    thumbs_dir = property(lambda self: self.cache_dir / "thumbs")
    uploads_dir = property(lambda self: self.cache_dir / "uploads")

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def backend(self) -> str:
        return "annoy" if self._annoy is not None else "exact"

    def search(self, query: np.ndarray, k: int = 10) -> list[Hit]:
        """Top-k photos for an L2-normalised query vector."""
        if len(self.entries) == 0 or k <= 0:
            return []
        if self._annoy is not None:
            ids, scores = self._annoy.search(query, k)
        else:
            ids, scores = exact_search(self.embeddings, query, k)
        return [self._hit(int(i), float(s)) for i, s in zip(ids, scores, strict=True)]

    def _hit(self, row: int, score: float) -> Hit:
        entry = self.entries[row]
        return Hit(name=entry.name, photo=Path(entry.path), thumbnail=self.thumbs_dir / entry.thumb, score=score)

    def info(self) -> dict[str, Any]:
        return {
            "cache_dir": str(self.cache_dir),
            "photos": len(self),
            "sources": [str(s) for s in self.sources],
            "search_backend": self.backend,
            "fingerprint": self.manifest["fingerprint"],
            "encoder": self.manifest["encoder"],
            "built": self.manifest["built"],
            "skipped": len(self.skipped),
        }

    # ---- loading --------------------------------------------------------------------------
    @classmethod
    def open(cls, cache_dir: Path, encoder: PhotoEncoder, index_cfg: IndexConfig | None = None) -> Gallery:
        """Load the live generation; CacheError if missing, incomplete, corrupt or made for another model."""
        cache_dir = Path(cache_dir).resolve()
        manifest, embeddings = read_generation(cache_dir)
        if manifest["fingerprint"] != encoder.fingerprint():
            raise CacheError(
                f"The cache in {cache_dir} was built for another model or prompts "
                f"({manifest['encoder'].get('model')}, prompts {manifest['encoder'].get('prompts')}); "
                f"it is stale. Rebuild it from its own photo folders with `python -m zsdemo index --cache {cache_dir}`."
            )
        if embeddings.shape[1] != encoder.embed_dim:
            raise CacheError(f"The cache in {cache_dir} holds {embeddings.shape[1]}-d embeddings; the model makes "
                             f"{encoder.embed_dim}-d ones. Rebuild it with `python -m zsdemo index --cache {cache_dir}`.")
        return cls(cache_dir, manifest, embeddings, index_cfg or IndexConfig())

    # ---- building -------------------------------------------------------------------------
    @classmethod
    def build(cls, sources: list[Path] | None, cache_dir: Path, encoder: PhotoEncoder,
              progress: ProgressFn | None = None, index_cfg: IndexConfig | None = None,
              on_wait: WaitFn | None = None) -> tuple[Gallery, BuildReport]:
        """Index the photos under `sources` into `cache_dir`, encoding only new or changed files.

        `sources=None` rebuilds from the folders recorded in the cache (CacheError if it records none).
        A folder holding no photos at all is refused (CacheError), and leaves no cache folder behind.
        """
        started = time.perf_counter()
        index_cfg = index_cfg or IndexConfig()
        cache_dir = Path(cache_dir).expanduser().resolve()
        if sources is None:
            sources = recorded_sources(cache_dir)
            if not sources:
                raise CacheError(f"The cache {cache_dir} does not record which photo folders it was built from; "
                                 f"name them: `python -m zsdemo index PHOTO_DIR... --cache {cache_dir}`.")
        # Check the folders before creating anything, so a refused build leaves nothing behind.
        if not scan_photos(sources, exclude=cache_dir) and not any((cache_dir / "uploads").glob("*")):
            folders = ", ".join(str(Path(s).resolve()) for s in sources)
            raise CacheError(f"No photos in {folders} ({', '.join(PHOTO_EXTENSIONS)} files, searched recursively). "
                             "Add photos there or point to another folder.")
        created = not cache_dir.exists()
        cache_dir.mkdir(parents=True, exist_ok=True)
        try:
            with cache_lock(cache_dir, on_wait):
                gallery, report = cls._build_locked(list(sources), cache_dir, encoder, progress, index_cfg)
        except BaseException:
            if created and not (cache_dir / "CURRENT").exists():
                shutil.rmtree(cache_dir, ignore_errors=True)
            raise
        report.seconds = time.perf_counter() - started
        log.info("%s", report.summary())
        return gallery, report

    @classmethod
    def _build_locked(cls, sources: list[Path], cache_dir: Path, encoder: PhotoEncoder, progress: ProgressFn | None,
                      index_cfg: IndexConfig) -> tuple[Gallery, BuildReport]:
        (cache_dir / "thumbs").mkdir(exist_ok=True)
        old_manifest, old_emb = None, None
        try:
            old_manifest, old_emb = read_generation(cache_dir)
        except CacheError as exc:
            if (cache_dir / "CURRENT").exists():
                log.warning("Rebuilding %s: %s", cache_dir, exc)
        plan = plan_update(sources, cache_dir, encoder.fingerprint(), encoder.embed_dim, old_manifest)
        if plan.stale_model:
            log.info("Cache in %s is stale (other model, weights or prompts): re-encoding its photos.", cache_dir)
        report = BuildReport(reused=len(plan.reuse), removed=len(plan.remove),
                             skipped=[(s.path, s.reason) for s in plan.skip])
        if old_manifest is not None and not plan.changed:
            report.total = len(plan.reuse)
            return cls(cache_dir, old_manifest, old_emb, index_cfg), report

        entries = [entry for entry, _ in plan.reuse]
        vectors: list[np.ndarray] = [old_emb[row] for _, row in plan.reuse] if old_emb is not None else []
        skipped = list(plan.skip)
        total = len(plan.encode)
        if progress:
            progress(0, total, f"Indexing {total} new photos ({report.reused} cached)")
        batch_size = max(1, getattr(getattr(encoder, "cfg", None), "batch_size", 32))
        for start in range(0, total, batch_size):
            images, kept = [], []
            for pending in plan.encode[start:start + batch_size]:
                try:
                    image = load_photo(open_image(pending.path))
                except ImageError as exc:
                    skipped.append(SkippedFile(str(pending.path), str(exc), pending.size, pending.mtime_ns))
                    continue
                key = _thumb_key(pending.path, pending.size, pending.mtime_ns)
                thumb_path = cache_dir / "thumbs" / f"{key}.jpg"
                if not thumb_path.is_file():
                    tmp = thumb_path.with_name(f".{key}.{uuid.uuid4().hex[:6]}.tmp.jpg")
                    make_thumbnail(image, THUMB_SIZE).save(tmp, "JPEG", quality=88)
                    os.replace(tmp, thumb_path)
                images.append(image)
                kept.append(PhotoEntry(pending.name, str(pending.path), pending.size, pending.mtime_ns, f"{key}.jpg"))
            if images:
                vectors.extend(encoder.encode_photos(images))
                entries.extend(kept)
                report.added += len(kept)
            if progress:
                done = min(start + batch_size, total)
                progress(done, total, f"Indexed {done}/{total}")
        report.skipped = [(s.path, s.reason) for s in skipped]
        report.total = len(entries)
        if not entries:
            raise CacheError(f"None of the {len(skipped)} photo files could be read, so there is nothing to search:\n"
                             + "\n".join(f"  {s.path}: {s.reason}" for s in skipped[:10]))
        order = sorted(range(len(entries)), key=lambda i: entries[i].name)
        matrix = np.stack([vectors[i] for i in order]).astype(np.float32)
        manifest = write_generation(cache_dir, [entries[i] for i in order], matrix, plan.sources, encoder, index_cfg,
                                    skipped)
        _collect_garbage(cache_dir, manifest)
        return cls(cache_dir, manifest, matrix, index_cfg), report

    @classmethod
    def create(cls, cache_dir: Path, entries: list[PhotoEntry], embeddings: np.ndarray, sources: list[Path],
               encoder: PhotoEncoder, index_cfg: IndexConfig | None = None) -> Gallery:
        """A gallery from entries and embeddings made elsewhere (benchmarks, tests, imports); written as a
        generation like any build. The entries' thumbnails must already be in `cache_dir/thumbs`."""
        cache_dir = Path(cache_dir).expanduser().resolve()
        if len(entries) != len(embeddings):
            raise ValueError(f"{len(entries)} entries for {len(embeddings)} embeddings")
        index_cfg = index_cfg or IndexConfig()
        (cache_dir / "thumbs").mkdir(parents=True, exist_ok=True)
        with cache_lock(cache_dir):
            manifest = write_generation(cache_dir, entries, np.asarray(embeddings, np.float32),
                                        [Path(s) for s in sources], encoder, index_cfg, [])
            _collect_garbage(cache_dir, manifest)
        return cls(cache_dir, manifest, np.asarray(embeddings, np.float32), index_cfg)

    def add_photos(self, files: list[Path], encoder: PhotoEncoder, progress: ProgressFn | None = None,
                   on_wait: WaitFn | None = None) -> tuple[Gallery, BuildReport]:
        """Copy readable images into uploads/ and index them. Unreadable files are reported, not copied."""
        self.uploads_dir.mkdir(parents=True, exist_ok=True)
        rejected: list[tuple[str, str]] = []
        for file in files:
            file = Path(file)
            try:
                open_image(file, display_name=file.name)
            except ImageError as exc:
                rejected.append((file.name, str(exc)))
                continue
            digest = hashlib.sha1(file.read_bytes()).hexdigest()[:10]
            suffix = file.suffix.lower() if file.suffix.lower() in PHOTO_EXTENSIONS else ".png"
            target = self.uploads_dir / f"{file.stem[:60]}-{digest}{suffix}"
            if not target.exists():
                tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:6]}.tmp")
                shutil.copyfile(file, tmp)
                os.replace(tmp, target)
        sources = [s for s in self.sources if s != self.uploads_dir.resolve()]
        gallery, report = Gallery.build(sources, self.cache_dir, encoder, progress, self.index_cfg, on_wait)
        report.skipped = rejected + report.skipped
        return gallery, report


# ---- generations on disk --------------------------------------------------------------------
def read_generation(cache_dir: Path) -> tuple[dict[str, Any], np.ndarray]:
    """The live generation's manifest and embeddings, fully validated; CacheError otherwise."""
    cache_dir = Path(cache_dir)
    pointer = cache_dir / "CURRENT"
    for attempt in range(3):  # a builder may switch CURRENT and remove the old generation while we read
        if not pointer.is_file():
            raise CacheError(f"No gallery cache in {cache_dir}. Build one with "
                             f"`python -m zsdemo index PHOTO_DIR --cache {cache_dir}`.")
        try:
            name = pointer.read_text().strip()
            generation = cache_dir / name
            manifest = json.loads((generation / "manifest.json").read_text())
            embeddings = np.load(generation / "embeddings.npy", allow_pickle=False)
            break
        except (OSError, ValueError) as exc:
            with contextlib.suppress(OSError):
                if attempt < 2 and pointer.read_text().strip() != name:
                    continue
            raise CacheError(f"The gallery cache in {cache_dir} is damaged ({type(exc).__name__}); rebuild it with "
                             f"`python -m zsdemo index --cache {cache_dir}`.") from None
    if manifest.get("version") != CACHE_VERSION or not manifest.get("complete"):
        raise CacheError(f"The gallery cache in {cache_dir} is from another version or incomplete; rebuild it with "
                         f"`python -m zsdemo index --cache {cache_dir}`.")
    if embeddings.ndim != 2 or embeddings.shape[0] != len(manifest["entries"]) or embeddings.dtype != np.float32:
        raise CacheError(f"The gallery cache in {cache_dir} is inconsistent (embeddings {embeddings.shape} for "
                         f"{len(manifest['entries'])} photos); rebuild it with `python -m zsdemo index --cache {cache_dir}`.")
    if manifest.get("index") == "annoy" and not (generation / "index.ann").is_file():
        raise CacheError(f"The gallery cache in {cache_dir} has lost its index file; rebuild it with "
                         f"`python -m zsdemo index --cache {cache_dir}`.")
    return manifest, embeddings


def write_generation(cache_dir: Path, entries: list[PhotoEntry], embeddings: np.ndarray, sources: list[Path],
                     encoder: PhotoEncoder, index_cfg: IndexConfig, skipped: list[SkippedFile]) -> dict[str, Any]:
    """Write a complete new generation, then switch CURRENT to it (the only step a reader can see).
    The caller holds the cache lock."""
    name = f"gen-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    generation = cache_dir / name
    generation.mkdir()
    np.save(generation / "embeddings.npy", embeddings)
    written = [generation / "embeddings.npy", generation / "manifest.json"]
    use_annoy = len(entries) >= index_cfg.annoy_threshold
    if use_annoy:
        build_annoy(embeddings, generation / "index.ann", index_cfg)
        written.append(generation / "index.ann")
    manifest = {
        "version": CACHE_VERSION,
        "complete": True,
        "generation": name,
        "fingerprint": encoder.fingerprint(),
        "encoder": encoder.describe(),
        "sources": [str(s) for s in sources],
        "dim": int(embeddings.shape[1]),
        "metric": METRIC,
        "index": "annoy" if use_annoy else "exact",
        "n_trees": index_cfg.n_trees if use_annoy else 0,
        "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "entries": [asdict(e) for e in entries],
        "skipped": [asdict(s) for s in skipped],
    }
    _write_atomic(generation / "manifest.json", json.dumps(manifest, indent=1).encode())
    for path in written:
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    _write_atomic(cache_dir / "CURRENT", name.encode())
    return manifest


def _collect_garbage(cache_dir: Path, manifest: dict[str, Any]) -> None:
    """Remove old generations, half-written ones and unreferenced thumbnails (the caller holds the lock,
    so no other build is in progress)."""
    for child in cache_dir.glob("gen-*"):
        if child.name != manifest["generation"]:
            shutil.rmtree(child, ignore_errors=True)
    used = {e["thumb"] for e in manifest["entries"]}
    for thumb in (cache_dir / "thumbs").iterdir():
        if thumb.name not in used:
            thumb.unlink(missing_ok=True)
