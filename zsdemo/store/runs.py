"""Resumable encoding runs: the photos a build must encode, in fixed shards written as they are finished."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from zsdemo.config import DEFAULT_BATCH_SIZE
from zsdemo.errors import ImageError
from zsdemo.model.preprocess import load_photo, make_thumbnail, open_image
from zsdemo.store.layout import (
    RUN_PREFIX,
    THUMB_SIZE,
    PendingPhoto,
    PhotoEncoder,
    PhotoEntry,
    ProgressFn,
    SkippedFile,
    thumb_key,
    write_atomic,
)

log = logging.getLogger(__name__)

MAX_SHARD = 1024  # photos per shard at most: what a killed run can lose, and what one shard holds in RAM


EncodeBatchFn = Callable[[list[Any]], np.ndarray]


def default_shard_size(n: int) -> int:
    """About 64 shards per run (so a resume loses little and ranks stay balanced), 16 to MAX_SHARD photos each.
    Depends on the photo count only, so a run resumed with another number of processes finds its shards."""
    return min(MAX_SHARD, max(16, math.ceil(n / 64)))


def decode_pending(pending: PendingPhoto, thumbs_dir: Path) -> tuple[Image.Image, PhotoEntry] | SkippedFile:
    """Open one photo and make its thumbnail (content-addressed, written atomically; safe in any process).
    Anything wrong with the photo itself (preprocess turns every decoding error into ImageError) skips it;
    failing to write into the cache is the cache's problem and raises."""
    key = thumb_key(pending.path, pending.size, pending.mtime_ns)
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
        write_atomic(run_dir / "plan.json", json.dumps(plan).encode())
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
        write_atomic(self.dir / f"shard-{shard:05d}.json", json.dumps(
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
        filler = _ShardFiller(self, rank)
        batch: list[tuple[int, Any, PhotoEntry]] = []
        total = total or len(self.photos)

        def flush() -> None:
            nonlocal done
            if batch:
                filler.add_batch(batch, _encode_each_or_skip(encode_batch, batch))
                done += len(batch)
                batch.clear()
                if progress:
                    progress(done, total, f"Indexed {done}/{total}")

        for index, item in items:
            if isinstance(item, SkippedFile):
                filler.add(index, item)
                continue
            data, entry = item
            batch.append((index, data, entry))
            if len(batch) >= batch_size:
                flush()
        flush()
        filler.settle_all()  # shards whose photos were all unreadable

    def encoded_log(self) -> list[str]:
        path = self.dir / "encoded.log"
        return path.read_text().splitlines() if path.is_file() else []


class _ShardFiller:
    """The shards of a run being filled: each photo's vector (or reason to skip it) is put in its shard, and a
    shard is written the moment every one of its photos is accounted for."""

    def __init__(self, run: EncodeRun, rank: int) -> None:
        self.run, self.rank = run, rank
        self.filling: dict[int, dict[str, Any]] = {}

    def _slot(self, shard: int) -> dict[str, Any]:
        if shard not in self.filling:
            self.filling[shard] = {"left": len(self.run.shard_photos(shard)), "rows": {}, "entries": {}, "skipped": []}
        return self.filling[shard]

    def add(self, index: int, item: np.ndarray | SkippedFile, entry: PhotoEntry | None = None,
            settle: bool = True) -> int:
        """Account for photo `index` of the run (its vector and entry, or why it was skipped); its shard."""
        shard = index // self.run.shard_size
        state = self._slot(shard)
        if isinstance(item, SkippedFile):
            state["skipped"].append(item)
        else:
            state["rows"][index], state["entries"][index] = item, entry
        state["left"] -= 1  # photos waiting in a batch are still counted in "left"
        if settle:
            self._settle(shard)
        return shard

    def add_batch(self, batch: list[tuple[int, Any, PhotoEntry]], vectors: list[np.ndarray | SkippedFile]) -> None:
        touched = {self.add(index, vector, entry, settle=False)
                   for (index, _, entry), vector in zip(batch, vectors, strict=True)}
        for shard in sorted(touched):
            self._settle(shard)

    def _settle(self, shard: int) -> None:
        state = self.filling[shard]
        if state["left"] == 0:
            order = sorted(state["entries"])
            rows = np.stack([state["rows"][i] for i in order]) if order else np.zeros((0, self.run.dim), np.float32)
            self.run.write_shard(shard, rows, [state["entries"][i] for i in order], state["skipped"], self.rank)
            del self.filling[shard]

    def settle_all(self) -> None:
        for shard in sorted(self.filling):
            self._settle(shard)


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
    batch_size = max(1, getattr(getattr(encoder, "cfg", None), "batch_size", DEFAULT_BATCH_SIZE))

    def items() -> Iterator[tuple[int, Any]]:
        for shard in todo:
            for offset, pending in enumerate(run.shard_photos(shard)):
                decoded = decode_pending(pending, thumbs)
                yield shard * run.shard_size + offset, decoded

    already = len(run.photos) - sum(len(run.shard_photos(s)) for s in todo)
    run.encode(items(), lambda images: encoder.encode_photos(images), batch_size, progress=progress,
               total=len(run.photos), done=already)
