"""A photo gallery cached on disk: thumbnails, embeddings, an optional Annoy index and a manifest.

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
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from filelock import FileLock, Timeout
from PIL import Image

from zsdemo.errors import CacheError, ImageError
from zsdemo.model.preprocess import PHOTO_EXTENSIONS, load_photo, make_thumbnail, open_image
from zsdemo.store.index import (
    INDEX_FILES,
    METRIC,
    AnnoySearcher,
    HnswSearcher,
    IndexConfig,
    build_index,
    choose_backend,
    estimate_exact_ms,
    exact_search,
    iter_row_chunks,
    measure_p50_ms,
    open_searcher,
    probe_queries,
    significant,
    tune_ef,
    tune_search_k,
)

log = logging.getLogger(__name__)

CACHE_VERSION = 2
THUMB_SIZE = 256
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
    renamed: list[tuple[str, str]] = field(default_factory=list)  # uploads stored under a safe name: (given, stored)

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


# ---- resumable encoding runs ------------------------------------------------------------------------
RUN_PREFIX = "build-"
MAX_SHARD = 1024  # photos per shard at most: what a killed run can lose, and what one shard holds in RAM
EncodeBatchFn = Callable[[list[Any]], np.ndarray]


def default_shard_size(n: int) -> int:
    """About 64 shards per run (so a resume loses little and ranks stay balanced), 16 to MAX_SHARD photos each.
    Depends on the photo count only, so a run resumed with another number of processes finds its shards."""
    return min(MAX_SHARD, max(16, math.ceil(n / 64)))


def _decode_pending(pending: PendingPhoto, thumbs_dir: Path) -> tuple[Image.Image, PhotoEntry] | SkippedFile:
    """Open one photo and make its thumbnail (content-addressed, written atomically; safe in any process).
    Anything wrong with the photo itself (preprocess turns every decoding error into ImageError) skips it;
    failing to write into the cache is the cache's problem and raises."""
    key = _thumb_key(pending.path, pending.size, pending.mtime_ns)
    thumb_path = thumbs_dir / f"{key}.jpg"
    try:
        image = load_photo(open_image(pending.path))
        thumb = None if thumb_path.is_file() else make_thumbnail(image, THUMB_SIZE)
    except ImageError as exc:
        return SkippedFile(str(pending.path), str(exc), pending.size, pending.mtime_ns)
    if thumb is not None:
        tmp = thumb_path.with_name(f".{key}.{uuid.uuid4().hex[:6]}.tmp.jpg")
        thumb.save(tmp, "JPEG", quality=88)
        os.replace(tmp, thumb_path)
    return image, PhotoEntry(pending.name, str(pending.path), pending.size, pending.mtime_ns, f"{key}.jpg")


@dataclass
class EncodeRun:
    """The photos a build must encode, split into fixed shards; each finished shard is a pair of files.

    The run folder is named after the plan (model fingerprint + the exact files to encode), so a build
    killed at any point (kill -9 of any process included) and started again with the same photos finds
    its finished shards and encodes only the others, whatever the number of processes. Shard i holds
    photos [i * shard_size, (i + 1) * shard_size) of `photos`; its .json (written last, atomically) is
    the marker that it is done.
    """

    dir: Path
    photos: list[PendingPhoto]
    shard_size: int
    dim: int

    @classmethod
    def prepare(cls, cache_dir: Path, photos: list[PendingPhoto], fingerprint: str, dim: int,
                shard_size: int | None = None) -> EncodeRun:
        """The run for these photos: resumed when its folder exists, else created (plan.json written)."""
        key = json.dumps([fingerprint, dim, [[str(p.path), p.name, p.size, p.mtime_ns] for p in photos]])
        run_dir = Path(cache_dir) / f"{RUN_PREFIX}{hashlib.sha256(key.encode()).hexdigest()[:16]}"
        if (run_dir / "plan.json").is_file():
            run = cls.load(run_dir)
            done = sum(run.is_done(i) for i in range(run.n_shards))
            log.info("Resuming %s: %d of %d shards already encoded", run_dir.name, done, run.n_shards)
            return run
        run_dir.mkdir(exist_ok=True)
        size = shard_size or default_shard_size(len(photos))
        plan = {"fingerprint": fingerprint, "dim": dim, "shard_size": size,
                "photos": [[str(p.path), p.name, p.size, p.mtime_ns] for p in photos]}
        _write_atomic(run_dir / "plan.json", json.dumps(plan).encode())
        return cls(run_dir, photos, size, dim)

    @classmethod
    def load(cls, run_dir: Path) -> EncodeRun:
        plan = json.loads((Path(run_dir) / "plan.json").read_text())
        photos = [PendingPhoto(Path(p), name, size, mtime) for p, name, size, mtime in plan["photos"]]
        return cls(Path(run_dir), photos, int(plan["shard_size"]), int(plan["dim"]))

    @property
    def n_shards(self) -> int:
        return math.ceil(len(self.photos) / self.shard_size)

    def shard_photos(self, shard: int) -> list[PendingPhoto]:
        return self.photos[shard * self.shard_size:(shard + 1) * self.shard_size]

    def is_done(self, shard: int) -> bool:
        return (self.dir / f"shard-{shard:05d}.json").is_file()

    def todo(self, rank: int = 0, world: int = 1) -> list[int]:
        """The unfinished shards of one process: shard i belongs to rank i % world. With more ranks than
        shards, some ranks get none (they only wait for the others)."""
        return [i for i in range(rank, self.n_shards, world) if not self.is_done(i)]

    def write_shard(self, shard: int, rows: np.ndarray, entries: list[PhotoEntry], skipped: list[SkippedFile],
                    rank: int = 0) -> None:
        rows = np.ascontiguousarray(rows, dtype=np.float32).reshape(len(entries), self.dim)
        tmp = self.dir / f".shard-{shard:05d}.{uuid.uuid4().hex[:6]}.tmp.npy"
        np.save(tmp, rows)
        os.replace(tmp, self.dir / f"shard-{shard:05d}.npy")
        _write_atomic(self.dir / f"shard-{shard:05d}.json", json.dumps(
            {"entries": [asdict(e) for e in entries], "skipped": [asdict(s) for s in skipped]}).encode())
        # one line per shard actually encoded by this run: how tests and users see what a resume saved
        with open(self.dir / "encoded.log", "a") as handle:
            handle.write(f"rank {rank} shard {shard} photos {len(entries)}\n")

    def read_shard(self, shard: int) -> tuple[list[PhotoEntry], list[SkippedFile], np.ndarray]:
        meta = json.loads((self.dir / f"shard-{shard:05d}.json").read_text())
        rows = np.load(self.dir / f"shard-{shard:05d}.npy", mmap_mode="r")
        return [PhotoEntry(**e) for e in meta["entries"]], [SkippedFile(**s) for s in meta["skipped"]], rows

    def encode(self, items: Iterable[tuple[int, Any]], encode_batch: EncodeBatchFn, batch_size: int,
               rank: int = 0, progress: ProgressFn | None = None, total: int | None = None, done: int = 0) -> None:
        """Encode a stream of decoded photos, in batches, into shards. `items` yields (photo index in the run,
        (image-or-tensor, PhotoEntry) or SkippedFile) in order, for whole shards; a shard is written as soon
        as all its photos are accounted for, so memory holds one batch and the shards being filled."""
        filling: dict[int, dict[str, Any]] = {}
        batch: list[tuple[int, Any, PhotoEntry]] = []

        def slot(shard: int) -> dict[str, Any]:
            if shard not in filling:
                filling[shard] = {"left": len(self.shard_photos(shard)), "rows": {}, "entries": {}, "skipped": []}
            return filling[shard]

        def settle(shard: int) -> None:
            state = filling[shard]
            if state["left"] == 0:
                order = sorted(state["entries"])
                rows = np.stack([state["rows"][i] for i in order]) if order else np.zeros((0, self.dim), np.float32)
                self.write_shard(shard, rows, [state["entries"][i] for i in order], state["skipped"], rank)
                del filling[shard]

        def flush() -> None:
            nonlocal done
            if not batch:
                return
            touched = set()
            for (index, _, entry), vector in zip(batch, _encode_each_or_skip(encode_batch, batch), strict=True):
                shard = index // self.shard_size
                state = slot(shard)
                if isinstance(vector, SkippedFile):
                    state["skipped"].append(vector)
                else:
                    state["rows"][index], state["entries"][index] = vector, entry
                state["left"] -= 1
                touched.add(shard)
            done += len(batch)
            batch.clear()
            for shard in sorted(touched):
                settle(shard)
            if progress:
                progress(done, total or len(self.photos), f"Indexed {done}/{total or len(self.photos)}")

        for index, item in items:
            if isinstance(item, SkippedFile):
                state = slot(index // self.shard_size)
                state["skipped"].append(item)
                state["left"] -= 1  # photos waiting in the batch are still counted in "left"
                if state["left"] == 0:
                    settle(index // self.shard_size)
                continue
            data, entry = item
            batch.append((index, data, entry))
            if len(batch) >= batch_size:
                flush()
        flush()
        for shard in sorted(filling):  # shards whose photos were all unreadable
            settle(shard)

    def encoded_log(self) -> list[str]:
        path = self.dir / "encoded.log"
        return path.read_text().splitlines() if path.is_file() else []


def _encode_each_or_skip(encode_batch: EncodeBatchFn,
                         batch: list[tuple[int, Any, PhotoEntry]]) -> list[np.ndarray | SkippedFile]:
    """One vector (or SkippedFile) per photo of `batch`. When the batch fails, its photos are encoded one by one
    so that one bad photo (a transform's ImageError, a non-finite embedding) is skipped and the rest kept. An
    error that is not an ImageError and that every photo of the batch hits is the encoder's, not a photo's: it
    is raised (the build fails and leaves the previous generation live) instead of marking every photo bad."""
    def skipped(entry: PhotoEntry, reason: str) -> SkippedFile:
        return SkippedFile(entry.path, reason, entry.size, entry.mtime_ns)

    def checked(vectors: np.ndarray, entries: list[PhotoEntry]) -> list[np.ndarray | SkippedFile]:
        vectors = np.asarray(vectors, np.float32).reshape(len(entries), -1)
        finite = np.isfinite(vectors).all(axis=1)
        return [vector if ok else skipped(entry, "could not be encoded (the model gave a non-finite embedding)")
                for vector, ok, entry in zip(vectors, finite, entries, strict=True)]

    try:
        return checked(encode_batch([data for _, data, _ in batch]), [entry for _, _, entry in batch])
    except Exception as exc:
        if len(batch) == 1 and not isinstance(exc, ImageError):
            raise
        first = exc
    out: list[np.ndarray | SkippedFile] = []
    others: list[Exception] = []
    for _, data, entry in batch:
        try:
            out += checked(encode_batch([data]), [entry])
        except ImageError as exc:
            out.append(skipped(entry, str(exc)))
        except Exception as exc:
            others.append(exc)
            out.append(skipped(entry, f"could not be encoded ({type(exc).__name__})"))
    if others and len(others) == len(batch):
        raise first
    for entry, item in zip((e for _, _, e in batch), out, strict=True):
        if isinstance(item, SkippedFile):
            log.warning("Skipped %s: %s", entry.name, item.reason)
    return out


RunnerFn = Callable[[EncodeRun, "PhotoEncoder", "ProgressFn | None"], None]


def encode_locally(run: EncodeRun, encoder: PhotoEncoder, progress: ProgressFn | None = None) -> None:
    """Encode a run's unfinished shards in this process (decode, thumbnail, encoder.encode_photos in batches)."""
    todo = run.todo()
    thumbs = run.dir.parent / "thumbs"
    batch_size = max(1, getattr(getattr(encoder, "cfg", None), "batch_size", 32))

    def items() -> Iterator[tuple[int, Any]]:
        for shard in todo:
            for offset, pending in enumerate(run.shard_photos(shard)):
                decoded = _decode_pending(pending, thumbs)
                yield shard * run.shard_size + offset, decoded

    already = len(run.photos) - sum(len(run.shard_photos(s)) for s in todo)
    run.encode(items(), lambda images: encoder.encode_photos(images), batch_size, progress=progress,
               total=len(run.photos), done=already)


class Gallery:
    """One loaded generation of a gallery cache. Immutable: updates return a new Gallery.

    `embeddings` is normally a read-only memory map of the generation's embeddings.npy: opening a gallery
    reads no rows, and processes serving the same cache share the pages."""

    def __init__(self, cache_dir: Path, manifest: dict[str, Any], embeddings: np.ndarray, index_cfg: IndexConfig) -> None:
        self.cache_dir = cache_dir
        self.manifest = manifest
        self.embeddings = embeddings
        self.index_cfg = index_cfg
        self.entries: Sequence[PhotoEntry] = EntryView(manifest["entries"])
        self.skipped: list[SkippedFile] = [SkippedFile(**s) for s in manifest.get("skipped", [])]
        self.sources = [Path(s) for s in manifest["sources"]]
        self.generation_dir = cache_dir / manifest["generation"]
        self._searcher: AnnoySearcher | HnswSearcher | None = None
        if index_cfg.annoy_threshold is not None:  # an explicit threshold overrides the choice recorded at build
            wanted = choose_backend(len(self.entries), int(manifest["dim"]), index_cfg)
        else:  # the builder measured exact search's cost on its machine; reopening must not re-decide by noise
            wanted = manifest.get("index", "exact")
        if wanted in INDEX_FILES and self.entries:
            index_file = self.generation_dir / INDEX_FILES[wanted]
            searcher_cfg, tuned = index_cfg, None
            if manifest.get("index") == wanted and index_file.is_file():  # built (and tuned) with the generation
                searcher_cfg = replace(index_cfg, n_trees=int(manifest.get("n_trees") or index_cfg.n_trees))
                tuned = manifest.get("search_k" if wanted == "annoy" else "ef")
            elif not index_file.is_file():  # built when the gallery was small, or with another threshold
                build_index(wanted, self._matrix_source(), index_file, index_cfg)
            self._searcher = open_searcher(wanted, index_file, int(manifest["dim"]), searcher_cfg, tuned)

    @property
    def _annoy(self) -> AnnoySearcher | None:
        return self._searcher if isinstance(self._searcher, AnnoySearcher) else None

    thumbs_dir = property(lambda self: self.cache_dir / "thumbs")
    uploads_dir = property(lambda self: self.cache_dir / "uploads")

    def _matrix_source(self) -> np.ndarray | Path:
        path = self.generation_dir / "embeddings.npy"
        return path if isinstance(self.embeddings, np.memmap) and path.is_file() else self.embeddings

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def backend(self) -> str:
        if self._searcher is None:
            return "exact"
        return "annoy" if isinstance(self._searcher, AnnoySearcher) else "hnsw"

    def search(self, query: np.ndarray, k: int = 10) -> list[Hit]:
        """Top-k photos for an L2-normalised query vector."""
        if len(self.entries) == 0 or k <= 0:
            return []
        if self._searcher is not None:
            ids, scores = self._searcher.search(query, k)
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
              on_wait: WaitFn | None = None, runner: RunnerFn | None = None,
              shard_size: int | None = None) -> tuple[Gallery, BuildReport]:
        """Index the photos under `sources` into `cache_dir`, encoding only new or changed files.

        `sources=None` rebuilds from the folders recorded in the cache (CacheError if it records none).
        A folder holding no photos at all is refused (CacheError), and leaves no cache folder behind.
        `runner` encodes the run's shards (default: in this process; zsdemo.store.distributed spreads them over
        processes); it is called under the cache lock, only when there is something to encode.
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
                try:
                    gallery, report = cls._build_locked(list(sources), cache_dir, encoder, progress, index_cfg,
                                                        runner or encode_locally, shard_size)
                except Exception as exc:
                    # A failed build leaves the previous generation live and nothing of its own behind; only
                    # an interruption (KeyboardInterrupt, kill -9), a lost process (`resumable`) or a run that
                    # already finished shards (a rank killed under a distributed build: the survivor sees only a
                    # communication error) keeps them for the next run, which resumes the same plan's folder.
                    if not getattr(exc, "resumable", False) and not _has_finished_shards(cache_dir):
                        _remove_unfinished(cache_dir)
                    raise
        except BaseException as exc:
            # A first build that fails leaves no cache folder, unless it was interrupted after encoding some
            # shards: those are kept for the next run to resume from.
            if created and not (cache_dir / "CURRENT").exists() \
                    and (isinstance(exc, CacheError) or not _has_finished_shards(cache_dir)):
                shutil.rmtree(cache_dir, ignore_errors=True)
            raise
        report.seconds = time.perf_counter() - started
        log.info("%s", report.summary())
        return gallery, report

    @classmethod
    def _build_locked(cls, sources: list[Path], cache_dir: Path, encoder: PhotoEncoder, progress: ProgressFn | None,
                      index_cfg: IndexConfig, runner: RunnerFn,
                      shard_size: int | None) -> tuple[Gallery, BuildReport]:
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

        # (entry, source, row): source -1 is the old generation's matrix, s >= 0 the run's shard s
        rows: list[tuple[PhotoEntry, int, int]] = [(entry, -1, row) for entry, row in plan.reuse]
        skipped = list(plan.skip)
        matrices: dict[int, np.ndarray] = {}
        if old_emb is not None:
            matrices[-1] = old_emb
        run = None
        if plan.encode:
            if progress:
                progress(0, len(plan.encode), f"Indexing {len(plan.encode)} new photos ({report.reused} cached)")
            run = EncodeRun.prepare(cache_dir, plan.encode, encoder.fingerprint(), encoder.embed_dim, shard_size)
            runner(run, encoder, progress)
            for shard in range(run.n_shards):
                if not run.is_done(shard):
                    lost = CacheError(f"Shard {shard} of {run.dir} was not encoded; run the build again to finish it.")
                    lost.resumable = True  # type: ignore[attr-defined]
                    raise lost
                entries, shard_skipped, matrix = run.read_shard(shard)
                rows += [(entry, shard, i) for i, entry in enumerate(entries)]
                skipped += shard_skipped
                matrices[shard] = matrix
                report.added += len(entries)
        report.skipped = [(s.path, s.reason) for s in skipped]
        report.total = len(rows)
        if not rows:
            raise CacheError(f"None of the {len(skipped)} photo files could be read, so there is nothing to search:\n"
                             + "\n".join(f"  {s.path}: {s.reason}" for s in skipped[:10]))
        rows.sort(key=lambda r: r[0].name)  # stable: same order as before (reused first among equal names)
        manifest = write_generation(cache_dir, [r[0] for r in rows], _gather_rows(rows, matrices, encoder.embed_dim),
                                    plan.sources, encoder, index_cfg, skipped)
        _collect_garbage(cache_dir, manifest)
        return cls(cache_dir, manifest, _open_matrix(cache_dir / manifest["generation"]), index_cfg), report

    @classmethod
    def create(cls, cache_dir: Path, entries: list[PhotoEntry], embeddings: np.ndarray, sources: list[Path],
               encoder: PhotoEncoder, index_cfg: IndexConfig | None = None) -> Gallery:
        """A gallery from entries and embeddings made elsewhere (benchmarks, tests, imports); written as a
        generation like any build. The entries' thumbnails must already be in `cache_dir/thumbs`.
        `embeddings` may be a memory map: it is streamed to the cache in chunks."""
        cache_dir = Path(cache_dir).expanduser().resolve()
        if len(entries) != len(embeddings):
            raise ValueError(f"{len(entries)} entries for {len(embeddings)} embeddings")
        index_cfg = index_cfg or IndexConfig()
        (cache_dir / "thumbs").mkdir(parents=True, exist_ok=True)
        with cache_lock(cache_dir):
            manifest = write_generation(cache_dir, entries, embeddings, [Path(s) for s in sources], encoder,
                                        index_cfg, [])
            _collect_garbage(cache_dir, manifest)
        return cls(cache_dir, manifest, _open_matrix(cache_dir / manifest["generation"]), index_cfg)

    def add_photos(self, files: list[Path], encoder: PhotoEncoder, progress: ProgressFn | None = None,
                   on_wait: WaitFn | None = None) -> tuple[Gallery, BuildReport]:
        """Copy readable images into uploads/ and index them. Unreadable files are reported, not copied; a copied
        photo that fails later (transform, encoding) is removed from uploads/ again and reported, and so is every
        photo of this call when the build fails, so one bad upload never blocks the next builds. Names are made
        safe to store and list (see zsdemo.limits.safe_stem); `report.renamed` lists (given, stored) names."""
        from zsdemo.limits import safe_stem

        self.uploads_dir.mkdir(parents=True, exist_ok=True)
        rejected: list[tuple[str, str]] = []
        renamed: list[tuple[str, str]] = []
        copied: dict[str, str] = {}  # stored path -> the name as given
        for file in files:
            file = Path(file)
            try:
                open_image(file, display_name=file.name)
            except ImageError as exc:
                rejected.append((file.name, str(exc)))
                continue
            digest = hashlib.sha1(file.read_bytes()).hexdigest()[:10]
            suffix = file.suffix.lower() if file.suffix.lower() in PHOTO_EXTENSIONS else ".png"
            stem = safe_stem(file.stem)
            target = self.uploads_dir / f"{stem}-{digest}{suffix}"
            if stem != file.stem:
                renamed.append((file.name, f"{stem}{suffix}"))
            if not target.exists():
                tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:6]}.tmp")
                shutil.copyfile(file, tmp)
                os.replace(tmp, target)
                copied[str(target.resolve())] = file.name
        sources = [s for s in self.sources if s != self.uploads_dir.resolve()]
        try:
            gallery, report = Gallery.build(sources, self.cache_dir, encoder, progress, self.index_cfg, on_wait)
        except BaseException:
            for path in copied:
                Path(path).unlink(missing_ok=True)
            raise
        failed = [(path, why) for path, why in report.skipped if path in copied]
        for path, _ in failed:
            Path(path).unlink(missing_ok=True)
        report.skipped = rejected + [(copied[path], why) for path, why in failed] + \
            [(path, why) for path, why in report.skipped if path not in copied]
        report.renamed = renamed
        return gallery, report


# ---- generations on disk --------------------------------------------------------------------
def _open_matrix(generation: Path) -> np.ndarray:
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
            embeddings = _open_matrix(generation)
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


def _gather_rows(rows: list[tuple[PhotoEntry, int, int]], matrices: dict[int, np.ndarray], dim: int,
                 chunk: int = 16_384) -> Iterator[np.ndarray]:
    """The merged matrix in chunks: row r comes from matrices[source][row]. Never more than one chunk in RAM."""
    for start in range(0, len(rows), chunk):
        part = rows[start:start + chunk]
        out = np.empty((len(part), dim), dtype=np.float32)
        sources = np.fromiter((s for _, s, _ in part), dtype=np.int64, count=len(part))
        indices = np.fromiter((i for _, _, i in part), dtype=np.int64, count=len(part))
        for source in np.unique(sources):
            mask = sources == source
            out[mask] = matrices[int(source)][indices[mask]]
        yield out


def _write_npy(path: Path, n: int, dim: int, chunks: Iterable[np.ndarray]) -> None:
    """Write an (n, dim) float32 .npy from row chunks, with plain writes (no memory map, no full copy)."""
    written = 0
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": "<f4", "fortran_order": False, "shape": (n, dim)})
        for part in chunks:
            part = np.ascontiguousarray(part, dtype=np.float32)
            if part.ndim != 2 or part.shape[1] != dim:
                raise ValueError(f"chunk of shape {part.shape} for a {dim}-d matrix")
            handle.write(part.tobytes())
            written += part.shape[0]
        handle.flush()
        os.fsync(handle.fileno())
    if written != n:
        raise ValueError(f"wrote {written} rows, expected {n}")


def write_generation(cache_dir: Path, entries: list[PhotoEntry], embeddings: np.ndarray | Iterable[np.ndarray],
                     sources: list[Path], encoder: PhotoEncoder, index_cfg: IndexConfig,
                     skipped: list[SkippedFile]) -> dict[str, Any]:
    """Write a complete new generation, then switch CURRENT to it (the only step a reader can see).
    `embeddings`: the (N, D) matrix, or its rows as an iterable of chunks (streamed to disk as they come).
    The index (exact or Annoy) is chosen by a latency budget measured here (zsdemo.store.index.choose_backend);
    Annoy's search_k is tuned on this gallery for the target recall. The caller holds the cache lock."""
    name = f"gen-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    generation = cache_dir / name
    generation.mkdir()
    dim = int(encoder.embed_dim)
    chunks = iter_row_chunks(embeddings) if isinstance(embeddings, np.ndarray) else embeddings
    if isinstance(embeddings, np.ndarray):
        dim = int(embeddings.shape[1])
    _write_npy(generation / "embeddings.npy", len(entries), dim, chunks)
    written = [generation / "manifest.json"]
    backend = choose_backend(len(entries), dim, index_cfg)
    index_info: dict[str, Any] = {"index": backend, "n_trees": 0}
    if index_cfg.annoy_threshold is None and len(entries) >= index_cfg.min_annoy_items:
        # significant figures, not decimals: on a fast CPU a small gallery's estimate is well under 0.001 ms
        index_info["exact_ms_estimate"] = significant(estimate_exact_ms(len(entries), dim))
        index_info["latency_budget_ms"] = index_cfg.latency_budget_ms
    if backend in INDEX_FILES:
        index_info.update(_build_and_tune(backend, generation, dim, index_cfg))
        written.append(generation / INDEX_FILES[backend])
    manifest = {
        "version": CACHE_VERSION,
        "complete": True,
        "generation": name,
        "fingerprint": encoder.fingerprint(),
        "encoder": encoder.describe(),
        "sources": [str(s) for s in sources],
        "dim": dim,
        "metric": METRIC,
        **index_info,
        "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "entries": [dict(e.__dict__) for e in entries],  # asdict() deep-copies: seconds at a million photos
        "skipped": [asdict(s) for s in skipped],
    }
    # one entry per line: readable, and compact enough at a million photos (indent=1 doubles the size)
    text = json.dumps({k: v for k, v in manifest.items() if k != "entries"}, indent=1)[:-2]
    text += ',\n "entries": [\n' + ",\n".join(json.dumps(e) for e in manifest["entries"]) + "\n ]\n}"
    _write_atomic(generation / "manifest.json", text.encode())
    for path in written:
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    _write_atomic(cache_dir / "CURRENT", name.encode())
    return manifest


def _remove_unfinished(cache_dir: Path) -> None:
    """Remove encoding runs and generations that CURRENT does not name (the caller holds the lock)."""
    try:
        live = (Path(cache_dir) / "CURRENT").read_text().strip()
    except OSError:
        live = None
    for child in [*Path(cache_dir).glob(f"{RUN_PREFIX}*"), *Path(cache_dir).glob("gen-*")]:
        if child.name != live:
            shutil.rmtree(child, ignore_errors=True)


def _build_and_tune(backend: str, generation: Path, dim: int, index_cfg: IndexConfig) -> dict[str, Any]:
    """Build the approximate index of a generation, tune its query setting for the target recall and
    measure its latency there: what the manifest records about it."""
    source = generation / "embeddings.npy"
    started = time.perf_counter()
    build_index(backend, source, generation / INDEX_FILES[backend], index_cfg)
    info: dict[str, Any] = {"index_build_s": round(time.perf_counter() - started, 2)}
    searcher = open_searcher(backend, generation / INDEX_FILES[backend], dim, index_cfg)
    try:
        if isinstance(searcher, AnnoySearcher):
            setting, recall = tune_search_k(searcher, source, index_cfg.target_recall)
            info.update(n_trees=index_cfg.n_trees, annoy_build_s=info["index_build_s"], search_k=setting)
        else:
            setting, recall = tune_ef(searcher, source, index_cfg.target_recall)
            info.update(hnsw_m=index_cfg.hnsw_m, hnsw_ef_construction=index_cfg.hnsw_ef_construction, ef=setting)
        searcher_at = replace(index_cfg, search_k=setting) if backend == "annoy" else replace(index_cfg, ef=setting)
        tuned = open_searcher(backend, generation / INDEX_FILES[backend], dim, searcher_at)
        info["measured_p50_ms"] = significant(measure_p50_ms(tuned, probe_queries(source, 100, seed=1)))
        tuned.unload()
    finally:
        searcher.unload()
    info["tuned_recall_at_10"] = round(recall, 4)
    log.info("%s index: %s %d for recall@10 %.3f, p50 %.3g ms (built in %.0f s)", backend, "search_k" if
             backend == "annoy" else "ef", setting, recall, info["measured_p50_ms"], info["index_build_s"])
    return info


def _has_finished_shards(cache_dir: Path) -> bool:
    return any(path.name.endswith(".json") for path in Path(cache_dir).glob(f"{RUN_PREFIX}*/shard-*.json"))


def _collect_garbage(cache_dir: Path, manifest: dict[str, Any]) -> None:
    """Remove old generations, half-written ones, finished or abandoned encoding runs and unreferenced
    thumbnails (the caller holds the lock, so no other build is in progress)."""
    for child in [*cache_dir.glob("gen-*"), *cache_dir.glob(f"{RUN_PREFIX}*")]:
        if child.name != manifest["generation"]:
            shutil.rmtree(child, ignore_errors=True)
    used = {e["thumb"] for e in manifest["entries"]}
    for thumb in (cache_dir / "thumbs").iterdir():
        if thumb.name not in used:
            thumb.unlink(missing_ok=True)
