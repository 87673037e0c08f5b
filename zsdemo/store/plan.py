"""What a build would do to a cache: the photo files under its sources compared with its manifest."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zsdemo.errors import CacheError
from zsdemo.model.preprocess import PHOTO_EXTENSIONS
from zsdemo.store.layout import PendingPhoto, PhotoEntry, SkippedFile


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
