"""A photo gallery cached on disk: thumbnails, embeddings, an optional approximate index and a manifest.

Layout of a cache folder:
    CURRENT                 name of the live generation (replaced atomically, last)
    .lock                   held by the one process building into this cache (see `cache_lock`)
    gen-<id>/manifest.json  model fingerprint, sources, one entry per photo (path, size, mtime_ns),
                            and the files that could not be read (so they are not retried until they change)
    gen-<id>/embeddings.npy (N, D) float32, L2-normalised, rows aligned with the manifest; written in
                            chunks and opened memory-mapped (processes serving one cache share its pages)
    gen-<id>/index.voy      HNSW index (Voyager) or index.ann, Annoy (on-disk build), over the same rows, only
                            for galleries searched approximately (exact, HNSW or Annoy is chosen by a
                            latency budget measured on the building machine, zsdemo.store.index)
    build-<plan>/           a resumable encoding run (see `EncodeRun`): plan.json, then one shard-<i>.npy +
                            shard-<i>.json per finished shard, written as they are made; removed once merged
    thumbs/<key>.jpg        thumbnails (content-addressed by path, size and mtime)
    uploads/                photos added through the app (a gallery source like any other)
A build writes a whole new generation and only then switches CURRENT, so an interrupted build
leaves the previous cache (or none) in place, never a half-written one; the shards it finished are kept,
and the next build of the same photos (any number of processes, see zsdemo.store.distributed) encodes only
the rest. Builds into one cache are
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
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from filelock import FileLock, Timeout
from PIL import Image

from zsdemo.errors import CacheError
from zsdemo.store.index import INDEX_FILES

log = logging.getLogger(__name__)

CACHE_VERSION = 2


THUMB_SIZE = 256
RUN_PREFIX = "build-"  # a resumable encoding run's folder (zsdemo.store.runs)
ProgressFn = Callable[[int, int, str], None]  # (done, total, message)
WaitFn = Callable[[str], None]  # told once when another process holds the cache's build lock


class PhotoEncoder(Protocol):
    """What the gallery needs from an encoder (zsdemo.model.encoder.SketchPhotoEncoder)."""

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


def thumb_key(path: Path, size: int, mtime_ns: int) -> str:
    return hashlib.sha1(f"{path}:{size}:{mtime_ns}".encode()).hexdigest()[:20]


def write_atomic(path: Path, data: bytes) -> None:
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


class EntryView(Sequence[PhotoEntry]):
    """The manifest's entries as PhotoEntry objects, made on access: a served gallery keeps one copy of
    its entries (the manifest's), not two - at a million photos each copy is hundreds of MB."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self._rows = rows

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [PhotoEntry(**row) for row in self._rows[index]]
        return PhotoEntry(**self._rows[index])


def open_matrix(generation: Path) -> np.ndarray:
    """A generation's embeddings as a read-only memory map (no rows are read until searched)."""
    return np.load(generation / "embeddings.npy", mmap_mode="r", allow_pickle=False)


def read_generation(cache_dir: Path) -> tuple[dict[str, Any], np.ndarray]:
    """The live generation's manifest and (memory-mapped) embeddings, validated; CacheError otherwise."""
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
            embeddings = open_matrix(generation)
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
    if embeddings.ndim != 2 or embeddings.shape[0] != len(manifest["entries"]) or embeddings.dtype != np.float32 \
            or not embeddings.flags.c_contiguous:
        raise CacheError(f"The gallery cache in {cache_dir} is inconsistent (embeddings {embeddings.shape} for "
                         f"{len(manifest['entries'])} photos); rebuild it with `python -m zsdemo index --cache {cache_dir}`.")
    if manifest.get("index") in INDEX_FILES and not (generation / INDEX_FILES[manifest["index"]]).is_file():
        raise CacheError(f"The gallery cache in {cache_dir} has lost its index file; rebuild it with "
                         f"`python -m zsdemo index --cache {cache_dir}`.")
    return manifest, embeddings
