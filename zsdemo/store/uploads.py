"""Photos added to a served gallery: copied into the cache's uploads/ folder under safe names, then indexed."""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path

from zsdemo.errors import ImageError
from zsdemo.limits import safe_stem
from zsdemo.model.preprocess import PHOTO_EXTENSIONS, open_image
from zsdemo.store.build import BuildReport, build_gallery
from zsdemo.store.gallery import Gallery
from zsdemo.store.layout import PhotoEncoder, ProgressFn, WaitFn


def add_photos(gallery: Gallery, files: list[Path], encoder: PhotoEncoder, progress: ProgressFn | None = None,
               on_wait: WaitFn | None = None) -> tuple[Gallery, BuildReport]:
    """Copy readable images into uploads/ and index them. Unreadable files are reported, not copied; a copied
    photo that fails later (transform, encoding) is removed from uploads/ again and reported, and so is every
    photo of this call when the build fails, so one bad upload never blocks the next builds. Names are made
    safe to store and list (see zsdemo.limits.safe_stem); `report.renamed` lists (given, stored) names."""
    gallery.uploads_dir.mkdir(parents=True, exist_ok=True)
    rejected: list[tuple[str, str]] = []
    renamed: list[tuple[str, str]] = []
    copied: dict[str, str] = {}  # stored path -> the name as given
    for file in map(Path, files):
        try:
            open_image(file, display_name=file.name)
        except ImageError as exc:
            rejected.append((file.name, str(exc)))
            continue
        stored, safe_name = _store_upload(file, gallery.uploads_dir)
        if safe_name != file.name:
            renamed.append((file.name, safe_name))
        if stored is not None:
            copied[str(stored.resolve())] = file.name
    sources = [s for s in gallery.sources if s != gallery.uploads_dir.resolve()]
    try:
        updated, report = build_gallery(sources, gallery.cache_dir, encoder, progress, gallery.index_cfg, on_wait)
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
    return updated, report


def _store_upload(file: Path, uploads_dir: Path) -> tuple[Path | None, str]:
    """Copy one upload into `uploads_dir` atomically, named by a safe stem and its content's digest. Returns the
    stored path (None when the same photo is already there) and the name it is listed under."""
    digest = hashlib.sha1(file.read_bytes()).hexdigest()[:10]
    suffix = file.suffix.lower() if file.suffix.lower() in PHOTO_EXTENSIONS else ".png"
    stem = safe_stem(file.stem)
    target = uploads_dir / f"{stem}-{digest}{suffix}"
    shown = file.name if stem == file.stem else f"{stem}{suffix}"
    if target.exists():
        return None, shown
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:6]}.tmp")
    shutil.copyfile(file, tmp)
    os.replace(tmp, target)
    return target, shown
