"""A photo gallery cached on disk: thumbnails, embeddings, an Annoy index and a manifest.

Layout of a cache folder:
    CURRENT                 name of the live generation (replaced atomically, last)
    gen-<id>/manifest.json  model fingerprint, sources, one entry per photo (path, size, mtime_ns)
    gen-<id>/embeddings.npy (N, D) float32, L2-normalised, rows aligned with the manifest
    gen-<id>/index.ann      Annoy index over the same rows
    thumbs/<key>.jpg        thumbnails (content-addressed by path, size and mtime)
    uploads/                photos added through the app (a gallery source like any other)
A build writes a whole new generation and only then switches CURRENT, so an interrupted build
leaves the previous cache (or none) in place, never a half-written one.
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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from zsdemo.errors import CacheError, ImageError
from zsdemo.index import METRIC, AnnoySearcher, IndexConfig, build_annoy, exact_search
from zsdemo.preprocess import PHOTO_EXTENSIONS, load_photo, make_thumbnail, open_image

log = logging.getLogger(__name__)

CACHE_VERSION = 1
THUMB_SIZE = 256
ProgressFn = Callable[[int, int, str], None]  # (done, total, message)


class PhotoEncoder(Protocol):
    """What the gallery needs from an encoder (zsdemo.encoder.SketchPhotoEncoder)."""

    embed_dim: int

    def fingerprint(self) -> str: ...
    def describe(self) -> dict[str, Any]: ...
    def encode_photos(self, photos: list[Image.Image]) -> np.ndarray: ...


@dataclass(frozen=True)
class Hit:
    name: str  # path relative to its gallery source folder
    photo: Path  # the original photo file
    thumbnail: Path  # thumbnail inside the cache folder
    score: float  # cosine similarity


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


class Gallery:
    """One loaded generation of a gallery cache. Immutable: updates return a new Gallery."""

    def __init__(self, cache_dir: Path, manifest: dict[str, Any], embeddings: np.ndarray, index_cfg: IndexConfig) -> None:
        self.cache_dir = cache_dir
        self.manifest = manifest
        self.embeddings = embeddings
        self.index_cfg = index_cfg
        self.entries: list[dict[str, Any]] = manifest["entries"]
        self.sources = [Path(s) for s in manifest["sources"]]
        self.generation_dir = cache_dir / manifest["generation"]
        self._annoy: AnnoySearcher | None = None
        if len(self.entries) >= index_cfg.annoy_threshold:
            self._annoy = AnnoySearcher(self.generation_dir / "index.ann", embeddings.shape[1], index_cfg)

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
        return Hit(name=entry["name"], photo=Path(entry["path"]), thumbnail=self.thumbs_dir / entry["thumb"], score=score)

    def info(self) -> dict[str, Any]:
        return {
            "cache_dir": str(self.cache_dir),
            "photos": len(self),
            "sources": [str(s) for s in self.sources],
            "search_backend": self.backend,
            "fingerprint": self.manifest["fingerprint"],
            "encoder": self.manifest["encoder"],
            "built": self.manifest["built"],
        }

    # ---- loading --------------------------------------------------------------------------
    @classmethod
    def open(cls, cache_dir: Path, encoder: PhotoEncoder, index_cfg: IndexConfig | None = None) -> Gallery:
        """Load the live generation; CacheError if missing, incomplete, corrupt or made for another model."""
        cache_dir = Path(cache_dir)
        manifest, embeddings = read_generation(cache_dir)
        if manifest["fingerprint"] != encoder.fingerprint():
            raise CacheError(
                f"The cache in {cache_dir} was built for another model or prompts "
                f"({manifest['encoder'].get('model')}, prompts {manifest['encoder'].get('prompts')}); "
                "it is stale and must be rebuilt (`python -m zsdemo index ...`)."
            )
        if embeddings.shape[1] != encoder.embed_dim:
            raise CacheError(f"The cache in {cache_dir} holds {embeddings.shape[1]}-d embeddings; the model makes "
                             f"{encoder.embed_dim}-d ones. Rebuild it.")
        return cls(cache_dir, manifest, embeddings, index_cfg or IndexConfig())

    # ---- building -------------------------------------------------------------------------
    @classmethod
    def build(cls, sources: list[Path], cache_dir: Path, encoder: PhotoEncoder,
              progress: ProgressFn | None = None, index_cfg: IndexConfig | None = None) -> tuple[Gallery, BuildReport]:
        """Index the photos under `sources` into `cache_dir`, encoding only new or changed files."""
        started = time.perf_counter()
        index_cfg = index_cfg or IndexConfig()
        cache_dir = Path(cache_dir).resolve()
        cache_dir.mkdir(parents=True, exist_ok=True)
        (cache_dir / "thumbs").mkdir(exist_ok=True)
        uploads = cache_dir / "uploads"
        all_sources = [Path(s).resolve() for s in sources]
        if uploads.is_dir() and uploads not in all_sources:
            all_sources.append(uploads)
        files = scan_photos(all_sources, exclude=cache_dir)

        previous: dict[str, tuple[dict[str, Any], np.ndarray]] = {}
        old_manifest = None
        with contextlib.suppress(CacheError):
            old_manifest, old_emb = read_generation(cache_dir)
            if old_manifest["fingerprint"] == encoder.fingerprint() and old_emb.shape[1] == encoder.embed_dim:
                previous = {e["path"]: (e, old_emb[i]) for i, e in enumerate(old_manifest["entries"])}
            else:
                log.info("Cache in %s is stale (other model or prompts): rebuilding.", cache_dir)

        report = BuildReport()
        entries: list[dict[str, Any]] = []
        vectors: list[np.ndarray] = []
        todo: list[tuple[Path, str, os.stat_result]] = []
        for path, name in files:
            try:
                stat = path.stat()
            except OSError as exc:
                report.skipped.append((str(path), f"cannot stat: {exc}"))
                continue
            old = previous.get(str(path))
            if old and old[0]["size"] == stat.st_size and old[0]["mtime_ns"] == stat.st_mtime_ns \
                    and (cache_dir / "thumbs" / old[0]["thumb"]).is_file():
                entries.append({**old[0], "name": name})
                vectors.append(old[1])
                report.reused += 1
            else:
                todo.append((path, name, stat))
        report.removed = len(set(previous) - {str(p) for p, _ in files})

        total = len(todo)
        if progress:
            progress(0, total, f"Indexing {total} new photos ({report.reused} cached)")
        batch_size = max(1, getattr(getattr(encoder, "cfg", None), "batch_size", 32))
        for start in range(0, total, batch_size):
            chunk = todo[start:start + batch_size]
            images, kept = [], []
            for path, name, stat in chunk:
                try:
                    image = load_photo(open_image(path))
                except ImageError as exc:
                    report.skipped.append((str(path), str(exc)))
                    continue
                key = _thumb_key(path, stat.st_size, stat.st_mtime_ns)
                thumb_path = cache_dir / "thumbs" / f"{key}.jpg"
                if not thumb_path.is_file():
                    tmp = thumb_path.with_name(f".{key}.{uuid.uuid4().hex[:6]}.tmp.jpg")
                    make_thumbnail(image, THUMB_SIZE).save(tmp, "JPEG", quality=88)
                    os.replace(tmp, thumb_path)
                images.append(image)
                kept.append({"name": name, "path": str(path), "size": stat.st_size,
                             "mtime_ns": stat.st_mtime_ns, "thumb": f"{key}.jpg"})
            if images:
                vectors.extend(encoder.encode_photos(images))
                entries.extend(kept)
                report.added += len(kept)
            if progress:
                progress(min(start + batch_size, total), total, f"Indexed {min(start + batch_size, total)}/{total}")

        report.total = len(entries)
        unchanged = (old_manifest is not None and previous and report.added == 0 and report.removed == 0
                     and [str(s) for s in all_sources] == old_manifest["sources"])
        if unchanged:
            gallery = cls.open(cache_dir, encoder, index_cfg)
        else:
            order = sorted(range(len(entries)), key=lambda i: entries[i]["name"])
            entries = [entries[i] for i in order]
            matrix = np.stack([vectors[i] for i in order]).astype(np.float32) if entries \
                else np.zeros((0, encoder.embed_dim), np.float32)
            manifest = write_generation(cache_dir, entries, matrix, all_sources, encoder, index_cfg)
            gallery = cls(cache_dir, manifest, matrix, index_cfg)
            _collect_garbage(cache_dir, manifest)
        report.seconds = time.perf_counter() - started
        log.info("%s", report.summary())
        return gallery, report

    def add_photos(self, files: list[Path], encoder: PhotoEncoder,
                   progress: ProgressFn | None = None) -> tuple[Gallery, BuildReport]:
        """Copy readable images into uploads/ and index them. Unreadable files are reported, not copied."""
        self.uploads_dir.mkdir(parents=True, exist_ok=True)
        rejected: list[tuple[str, str]] = []
        for file in files:
            file = Path(file)
            try:
                open_image(file)
            except ImageError as exc:
                rejected.append((file.name, str(exc)))
                continue
            digest = hashlib.sha1(file.read_bytes()).hexdigest()[:10]
            suffix = file.suffix.lower() if file.suffix.lower() in PHOTO_EXTENSIONS else ".png"
            target = self.uploads_dir / f"{file.stem[:60]}-{digest}{suffix}"
            if not target.exists():
                tmp = target.with_name(f".{target.name}.tmp")
                shutil.copyfile(file, tmp)
                os.replace(tmp, target)
        sources = [s for s in self.sources if s != self.uploads_dir.resolve()]
        gallery, report = Gallery.build(sources, self.cache_dir, encoder, progress, self.index_cfg)
        report.skipped = rejected + report.skipped
        return gallery, report


# ---- generations on disk --------------------------------------------------------------------
def read_generation(cache_dir: Path) -> tuple[dict[str, Any], np.ndarray]:
    """The live generation's manifest and embeddings, fully validated; CacheError otherwise."""
    pointer = cache_dir / "CURRENT"
    if not pointer.is_file():
        raise CacheError(f"No gallery cache in {cache_dir}. Build one with `python -m zsdemo index PHOTO_DIR --cache {cache_dir}`.")
    try:
        generation = cache_dir / pointer.read_text().strip()
        manifest = json.loads((generation / "manifest.json").read_text())
        embeddings = np.load(generation / "embeddings.npy", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CacheError(f"The gallery cache in {cache_dir} is damaged ({type(exc).__name__}: {exc}); rebuild it.") from None
    if manifest.get("version") != CACHE_VERSION or not manifest.get("complete"):
        raise CacheError(f"The gallery cache in {cache_dir} is from another version or incomplete; rebuild it.")
    if embeddings.ndim != 2 or embeddings.shape[0] != len(manifest["entries"]) or embeddings.dtype != np.float32:
        raise CacheError(f"The gallery cache in {cache_dir} is inconsistent (embeddings {embeddings.shape} for "
                         f"{len(manifest['entries'])} photos); rebuild it.")
    if not (generation / "index.ann").is_file():
        raise CacheError(f"The gallery cache in {cache_dir} has no index file; rebuild it.")
    return manifest, embeddings


def write_generation(cache_dir: Path, entries: list[dict[str, Any]], embeddings: np.ndarray, sources: list[Path],
                     encoder: PhotoEncoder, index_cfg: IndexConfig) -> dict[str, Any]:
    """Write a complete new generation, then switch CURRENT to it (the only step a reader can see)."""
    name = f"gen-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    generation = cache_dir / name
    generation.mkdir()
    np.save(generation / "embeddings.npy", embeddings)
    if len(entries):
        build_annoy(embeddings, generation / "index.ann", index_cfg)
    else:
        (generation / "index.ann").write_bytes(b"")
    manifest = {
        "version": CACHE_VERSION,
        "complete": True,
        "generation": name,
        "fingerprint": encoder.fingerprint(),
        "encoder": encoder.describe(),
        "sources": [str(s) for s in sources],
        "dim": int(embeddings.shape[1]),
        "metric": METRIC,
        "n_trees": index_cfg.n_trees,
        "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "entries": entries,
    }
    _write_atomic(generation / "manifest.json", json.dumps(manifest, indent=1).encode())
    for path in (generation / "embeddings.npy", generation / "index.ann", generation / "manifest.json"):
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    _write_atomic(cache_dir / "CURRENT", name.encode())
    return manifest


def _collect_garbage(cache_dir: Path, manifest: dict[str, Any]) -> None:
    """Remove old generations, half-written ones and unreferenced thumbnails."""
    for child in cache_dir.glob("gen-*"):
        if child.name != manifest["generation"]:
            shutil.rmtree(child, ignore_errors=True)
    used = {e["thumb"] for e in manifest["entries"]}
    for thumb in (cache_dir / "thumbs").iterdir():
        if thumb.name not in used:
            thumb.unlink(missing_ok=True)
