"""Zero-shot class splits read from the dataset folders: which classes are seen (train) and unseen (test),
their sketches, photos and (fine-grained) sketch-photo pairs, checked before any model is built.

Folder layout read by every loader (the real datasets and `train.synthetic` alike):

    <data_root>/<sketch_dir>/<class>/<name>.(png|jpg|...)
    <data_root>/<photo_dir>/<class>/<name>.(jpg|png|...)      photo_dir: one folder, or several (union)

The layouts of the public copies are named presets in `train/layouts.py` (Sketchy-ext's standard gallery
is `photo/tx_000000000000` + `extended_photo`). Fine-grained pairing (Sketchy): the sketch
`<photo-stem>-<n>.png` belongs to the photo `<photo-stem>.jpg` of the same class.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zsdemo.errors import ZsdemoError
from zsdemo.model.preprocess import PHOTO_EXTENSIONS

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = tuple(sorted(set(PHOTO_EXTENSIONS) | {".png", ".jpg", ".jpeg"}))

# Unseen (test) classes of the standard zero-shot splits (Sketchy 104/21, TU-Berlin 220/30, QuickDraw 80/30).
SPLITS: dict[str, tuple[str, ...]] = {
    "sketchy": ("bat", "cabin", "cow", "dolphin", "door", "giraffe", "helicopter", "mouse", "pear", "raccoon",
                "rhinoceros", "saw", "scissors", "seagull", "skyscraper", "songbird", "sword", "tree",
                "wheelchair", "windmill", "window"),
    "tuberlin": ("banana", "bus", "tractor", "suitcase", "streetlight", "telephone", "bottle opener", "canoe", "fan",
                 "teacup", "penguin", "laptop", "shoe", "lighter", "hot air balloon", "pizza", "brain", "ant",
                 "t-shirt", "trombone", "windmill", "snowboard", "table", "rollerblades", "parachute",
                 "space shuttle", "bridge", "frying-pan", "bread", "horse"),
    "quickdraw": ("bat", "cow", "dolphin", "door", "giraffe", "helicopter", "mouse", "raccoon", "rhinoceros", "saw",
                  "scissors", "skyscraper", "tree", "windmill", "feather", "campfire", "palm tree", "fire_hydrant",
                  "bread", "beach", "megaphone", "cactus", "zebra", "tiger", "shark", "frog", "banana", "cake",
                  "hamburger", "fan"),
}
# Seen/unseen class counts of the benchmarks, checked when a built-in split is used.
EXPECTED_COUNTS = {"sketchy": (104, 21), "tuberlin": (220, 30), "quickdraw": (80, 30)}


class DataError(ZsdemoError):
    """The dataset on disk is not what the config says; raised before training starts."""


def normalise_class(name: str) -> str:
    """Folder names and split lists spell classes differently ("hot_air_balloon", "hot air balloon", "frying-pan")."""
    return " ".join(name.lower().replace("_", " ").replace("-", " ").split())


@dataclass
class Part:
    """The sketches and photos of some classes (seen or unseen). Labels index `classes`."""

    classes: list[str]
    sketches: list[Path] = field(default_factory=list)
    sketch_labels: list[int] = field(default_factory=list)
    sketch_pairs: list[int] = field(default_factory=list)  # index into photos, -1 when unpaired
    photos: list[Path] = field(default_factory=list)
    photo_labels: list[int] = field(default_factory=list)

    def photos_by_class(self) -> list[list[int]]:
        out: list[list[int]] = [[] for _ in self.classes]
        for i, label in enumerate(self.photo_labels):
            out[label].append(i)
        return out

    def sketches_by_class(self) -> list[list[int]]:
        out: list[list[int]] = [[] for _ in self.classes]
        for i, label in enumerate(self.sketch_labels):
            out[label].append(i)
        return out


@dataclass
class Split:
    train: Part  # seen classes
    test: Part  # unseen classes


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                  and not p.name.startswith("."))


def _scan(root: Path, kind: str, key: str) -> dict[str, list[Path]]:
    if not root.is_dir():
        raise DataError(f"The {kind} folder {root} does not exist. Check data_root, layout and {key} in the config "
                        f"(expected {root}/<class>/<images>; `python train/check_data.py` lists the layouts).")
    classes = {d.name: _list_images(d) for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")}
    if not classes:
        raise DataError(f"The {kind} folder {root} has no class sub-folders (expected {root}/<class>/<images>).")
    return classes


def _scan_photos(root: Path, photo_dirs: Sequence[str]) -> dict[str, list[Path]]:
    """Union of the photo folders, classes matched by normalised name (first folder's spelling kept)."""
    merged: dict[str, list[Path]] = {}
    spelling: dict[str, str] = {}
    for photo_dir in photo_dirs:
        for name, files in _scan(root / photo_dir, "photo", "photo_dir").items():
            folder = spelling.setdefault(normalise_class(name), name)
            merged.setdefault(folder, []).extend(files)
    return merged


def pair_stem(sketch: Path) -> str:
    """Sketchy naming: `<photo-stem>-<n>.png` -> `<photo-stem>`."""
    stem, sep, suffix = sketch.stem.rpartition("-")
    return stem if sep and suffix.isdigit() else sketch.stem


def build_split(data_root: str | Path, sketch_dir: str, photo_dir: str | Sequence[str], unseen: Sequence[str],
                paired: bool = False, expected_counts: tuple[int, int] | None = None) -> Split:
    """Read the folder layout, check it, and split it into seen (train) and unseen (test) classes.

    `photo_dir` may name several folders: each class's photos are the union of its folders (in the order
    given; for pairing, the first photo with a stem wins). Raises DataError naming the problem: missing
    folders, empty classes, classes present for one modality only, unseen classes not on disk, and (when
    `paired`) sketches without their photo.
    """
    root = Path(data_root)
    if not root.is_dir():
        raise DataError(f"data_root {root} does not exist.")
    photo_dirs = [photo_dir] if isinstance(photo_dir, str) else list(photo_dir)
    sketches, photo_folders = _scan(root / sketch_dir, "sketch", "sketch_dir"), _scan_photos(root, photo_dirs)
    photo_by_norm = {normalise_class(c): c for c in photo_folders}
    # photos keyed by the sketch folder's spelling, so one name stands for a class everywhere below
    photos = {c: photo_folders[photo_by_norm[normalise_class(c)]] for c in sketches if normalise_class(c) in photo_by_norm}
    only_s = sorted(c for c in sketches if c not in photos)
    sketch_norms = {normalise_class(c) for c in sketches}
    only_p = sorted(c for c in photo_folders if normalise_class(c) not in sketch_norms)
    where = f"{root / sketch_dir} vs {', '.join(str(root / d) for d in photo_dirs)}"
    if only_s or only_p:
        raise DataError(f"Sketch and photo classes differ: only sketches for {only_s[:10]}, only photos for {only_p[:10]} "
                        f"({where}).")
    empty = [f"{name} (sketches)" for name, files in sketches.items() if not files]
    empty += [f"{name} (photos)" for name, files in photos.items() if not files]
    if empty:
        raise DataError(f"{len(empty)} class folder(s) contain no images: {', '.join(empty[:10])} ({where}).")
    by_norm = {normalise_class(c): c for c in sketches}
    missing = [u for u in unseen if normalise_class(u) not in by_norm]
    if missing:
        raise DataError(f"{len(missing)} unseen class(es) of the split are not folders in {root / sketch_dir}: "
                        f"{', '.join(missing[:10])}.")
    unseen_folders = {by_norm[normalise_class(u)] for u in unseen}
    seen_classes = sorted(c for c in sketches if c not in unseen_folders)
    unseen_classes = sorted(unseen_folders)
    if not seen_classes:
        raise DataError("Every class is in the unseen split: nothing to train on.")
    if expected_counts and (len(seen_classes), len(unseen_classes)) != expected_counts:
        log.warning("Expected %d seen / %d unseen classes for this benchmark, found %d / %d in %s.",
                    *expected_counts, len(seen_classes), len(unseen_classes), root)
    unpaired: list[str] = []
    parts = [_make_part(classes, sketches, photos, unpaired if paired else None)
             for classes in (seen_classes, unseen_classes)]
    if unpaired:
        raise DataError(f"{len(unpaired)} sketch(es) have no paired photo (expected <photo-stem>-<n>.png beside "
                        f"<photo-stem>.jpg): {', '.join(unpaired[:10])}.")
    log.info("data: %d seen classes (%d sketches, %d photos), %d unseen classes (%d sketches, %d photos)",
             len(seen_classes), len(parts[0].sketches), len(parts[0].photos),
             len(unseen_classes), len(parts[1].sketches), len(parts[1].photos))
    return Split(train=parts[0], test=parts[1])


def _make_part(classes: list[str], sketches: dict[str, list[Path]], photos: dict[str, list[Path]],
               unpaired: list[str] | None) -> Part:
    """The Part of `classes`: photos, then sketches with their pair (index into photos, -1 when none; the
    first photo with a stem wins). Unpaired sketches are appended to `unpaired` when it is given."""
    part = Part(classes=list(classes))
    for label, name in enumerate(classes):
        stems: dict[str, int] = {}
        for p in photos[name]:
            stems.setdefault(p.stem, len(part.photos))
            part.photos.append(p)
            part.photo_labels.append(label)
        for s in sketches[name]:
            pair = stems.get(pair_stem(s), -1)
            if unpaired is not None and pair < 0:
                unpaired.append(f"{name}/{s.name}")
            part.sketches.append(s)
            part.sketch_labels.append(label)
            part.sketch_pairs.append(pair)
    return part


def split_from_config(cfg: Any, check_sampler: bool = True) -> Split:
    if cfg.split == "custom":
        unseen, expected = list(cfg.unseen_classes), None
    elif cfg.split in SPLITS:
        unseen, expected = list(SPLITS[cfg.split]), EXPECTED_COUNTS[cfg.split]
    else:
        raise DataError(f"Unknown split {cfg.split!r}: use one of {sorted(SPLITS)} or 'custom' with unseen_classes.")
    split = build_split(cfg.data_root, cfg.sketch_dir, list(cfg.photo_dir), unseen,
                        paired=cfg.setting == "fine_grained", expected_counts=expected)
    if check_sampler:
        check_trainable(split.train, cfg)
    return split


def check_trainable(part: Part, cfg: Any) -> None:
    """The samplers need photos to draw positives/negatives from; say so before training starts."""
    by_class = part.photos_by_class()
    if cfg.setting == "category":
        if len(part.classes) < 2:
            raise DataError("Category-level training needs at least 2 seen classes (negatives come from other classes).")
        if len(part.sketches) < cfg.batch_size:
            raise DataError(f"Only {len(part.sketches)} seen sketches for batch_size {cfg.batch_size}.")
        return
    q = cfg.instances_per_class
    usable = [c for c, s in enumerate(part.sketches_by_class()) if len(s) >= q and len(by_class[c]) >= 2]
    if len(usable) < cfg.p_classes:
        raise DataError(f"The fine-grained sampler needs {cfg.p_classes} classes with at least {q} sketches and 2 photos "
                        f"each; only {len(usable)} seen classes qualify. Lower batch_size or instances_per_class.")


Strokes = list[list[tuple[float, float]]]


def read_ndjson_strokes(path: str | Path, limit: int = 0, recognized_only: bool = True) -> list[tuple[str, Strokes]]:
    """QuickDraw's ndjson files (Google's `simplified/<class>.ndjson`, one drawing per line: {"word", "countrycode",
    "timestamp", "recognized", "key_id", "drawing": [[xs, ys], ...]}; the raw files add a third list of times)
    -> (key_id, strokes) in file order, i.e. in drawing order within each drawing. limit > 0 keeps the first limit."""
    import json

    out: list[tuple[str, Strokes]] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            item = json.loads(line)
            if recognized_only and not item.get("recognized", True):
                continue
            out.append((str(item["key_id"]), [list(zip(s[0], s[1], strict=True)) for s in item["drawing"]]))
            if limit and len(out) >= limit:
                break
    return out


def ndjson_part(photos: Part, stroke_dir: str | Path, limit: int = 0) -> tuple[Part, dict[Path, Strokes]]:
    """The drawings of photos' classes from `<stroke_dir>/<class>.ndjson` (file names matched ignoring case, `_`, `-`
    and spaces, like the folders), as a Part with photos' gallery. Its sketch paths `<stroke_dir>/<class>/<key_id>`
    are not files: they key the returned strokes (render them with train.eval.drawing_parts)."""
    root = Path(stroke_dir)
    files = {normalise_class(p.stem): p for p in sorted(root.glob("*.ndjson"))}
    missing = [c for c in photos.classes if normalise_class(c) not in files]
    if missing:
        raise DataError(f"{len(missing)} class(es) have no <class>.ndjson in {root}: {', '.join(missing[:10])}.")
    part = Part(classes=list(photos.classes), photos=list(photos.photos), photo_labels=list(photos.photo_labels))
    strokes: dict[Path, Strokes] = {}
    for label, name in enumerate(photos.classes):
        for key, drawing in read_ndjson_strokes(files[normalise_class(name)], limit):
            path = root / name / key
            strokes[path] = drawing
            part.sketches.append(path)
            part.sketch_labels.append(label)
            part.sketch_pairs.append(-1)
    return part, strokes
