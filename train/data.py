"""Datasets, zero-shot class splits, deterministic batch samplers and image augmentation for training.

Folder layout read by every loader (the real datasets and `train.synthetic` alike):

    <data_root>/<sketch_dir>/<class>/<name>.(png|jpg|...)
    <data_root>/<photo_dir>/<class>/<name>.(jpg|png|...)      photo_dir: one folder, or several (union)

The layouts of the public copies are named presets in `train/layouts.py` (Sketchy-ext's standard gallery
is `photo/tx_000000000000` + `extended_photo`: 12,553 unseen photos). Fine-grained pairing (Sketchy): the
sketch `<photo-stem>-<n>.png` belongs to the photo `<photo-stem>.jpg` of the same class.

Unreadable or empty images do not stop a run: training draws a replacement from the same class (counted
and logged as `skipped_loads`), evaluation leaves the file out of the queries or the gallery (listed in
eval.json under `skipped_files`).

Determinism: a sampler draws each epoch's plan (which sketch, positive, negative, permutations and
augmentation seed) from (seed, epoch) only, so a resumed run sees exactly the batches an
uninterrupted run would, whatever the number of data-loader workers.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from zsdemo.errors import EmptySketchError, ZsdemoError
from zsdemo.model.preprocess import (
    DEFAULT_SKETCH_POLICY,
    PHOTO_EXTENSIONS,
    Transform,
    clean_sketch,
    flatten_to_rgb,
    load_photo,
    open_image,
)

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
# What a corrupt, truncated, empty or blank image file raises when it is read.
LOAD_ERRORS = (ZsdemoError, OSError, ValueError, SyntaxError, EOFError)


class DataError(ZsdemoError):
    """The dataset on disk is not what the config says; raised before training starts."""


def normalise_class(name: str) -> str:
    """Folder names and split lists spell classes differently ("hot_air_balloon", "hot air balloon", "frying-pan")."""
    return " ".join(name.lower().replace("_", " ").replace("-", " ").split())


def class_text(name: str) -> str:
    """Class folder name -> words for the text prompt."""
    return name.replace("_", " ").strip()


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
    parts = []
    unpaired: list[str] = []
    for classes in (seen_classes, unseen_classes):
        part = Part(classes=list(classes))
        for label, name in enumerate(classes):
            stems: dict[str, int] = {}
            for p in photos[name]:
                stems.setdefault(p.stem, len(part.photos))
                part.photos.append(p)
                part.photo_labels.append(label)
            for s in sketches[name]:
                pair = stems.get(pair_stem(s), -1)
                if paired and pair < 0:
                    unpaired.append(f"{name}/{s.name}")
                part.sketches.append(s)
                part.sketch_labels.append(label)
                part.sketch_pairs.append(pair)
        parts.append(part)
    if unpaired:
        raise DataError(f"{len(unpaired)} sketch(es) have no paired photo (expected <photo-stem>-<n>.png beside "
                        f"<photo-stem>.jpg): {', '.join(unpaired[:10])}.")
    log.info("data: %d seen classes (%d sketches, %d photos), %d unseen classes (%d sketches, %d photos)",
             len(seen_classes), len(parts[0].sketches), len(parts[0].photos),
             len(unseen_classes), len(parts[1].sketches), len(parts[1].photos))
    return Split(train=parts[0], test=parts[1])


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


# ---- transforms ------------------------------------------------------------------------------
def eval_transform(clip: torch.nn.Module) -> Transform:
    """The engine's eval transform (same call as SketchPhotoEncoder.transform)."""
    pp = open_clip.get_model_preprocess_cfg(clip)
    size = int(pp["size"] if isinstance(pp["size"], int) else pp["size"][0])
    return open_clip.image_transform(size, is_train=False, mean=pp.get("mean"), std=pp.get("std"),
                                     interpolation=pp.get("interpolation"), resize_mode=pp.get("resize_mode"))


def augment(image: Image.Image, rng: random.Random, flip: bool | None = None,
            scale: tuple[float, float] = (0.8, 1.0)) -> Image.Image:
    """Light, seeded augmentation on a cleaned image: random crop of 80-100% of the area (aspect 3/4-4/3)
    and a horizontal flip. The eval transform (resize + centre crop + normalise) is applied after it."""
    w, h = image.size
    area = rng.uniform(*scale) * w * h
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    cw, ch = min(w, round((area * aspect) ** 0.5)), min(h, round((area / aspect) ** 0.5))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    image = image.crop((x, y, x + cw, y + ch))
    if flip if flip is not None else rng.random() < 0.5:
        image = ImageOps.mirror(image)
    return image


Box = tuple[float, float, float, float]


def random_box(rng: random.Random, scale: tuple[float, float] = (0.8, 1.0)) -> Box:
    """A crop box in relative coordinates (x0, y0, x1, y1 in [0, 1]): 80-100 % of the area, aspect 3/4-4/3."""
    area = rng.uniform(*scale)
    aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
    w, h = min(1.0, (area * aspect) ** 0.5), min(1.0, (area / aspect) ** 0.5)
    x, y = rng.uniform(0.0, 1.0 - w), rng.uniform(0.0, 1.0 - h)
    return (x, y, x + w, y + h)


def apply_box(image: Image.Image, box: Box | None, flip: bool) -> Image.Image:
    """Crop `image` to a relative box and flip it: the same call on a sketch and its photo keeps them aligned
    whatever their pixel sizes (Sketchy pairs are drawn over the same 256x256 frame)."""
    if box is not None:
        w, h = image.size
        image = image.crop((round(box[0] * w), round(box[1] * h), round(box[2] * w), round(box[3] * h)))
    return ImageOps.mirror(image) if flip else image


def draw_permutation(rng: random.Random, grid: int, exclude: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """A random permutation of the grid cells, different from `exclude` when given."""
    while True:
        perm = list(range(grid * grid))
        rng.shuffle(perm)
        if tuple(perm) != exclude:
            return tuple(perm)


def patch_shuffle(images: torch.Tensor, perm: Sequence[int], grid: int) -> torch.Tensor:
    """Cut (..., C, H, W) images into a grid x grid layout of cells and rearrange them: output cell i = input cell perm[i].

    H and W must be divisible by grid (224/2, 64/2).
    """
    *lead, c, h, w = images.shape
    if h % grid or w % grid:
        raise ValueError(f"image size {h}x{w} is not divisible by grid {grid}")
    ph, pw = h // grid, w // grid
    cells = images.reshape(*lead, c, grid, ph, grid, pw).movedim(-2, -3)  # (..., C, gy, gx, ph, pw)
    cells = cells.reshape(*lead, c, grid * grid, ph, pw)
    cells = cells[..., list(perm), :, :]
    cells = cells.reshape(*lead, c, grid, grid, ph, pw).movedim(-3, -2)  # (..., C, gy, ph, gx, pw)
    return cells.reshape(*lead, c, h, w)


# ---- training samplers -------------------------------------------------------------------------
class _EpochBatchSampler:
    """Base: a list of batches (lists of item tuples) drawn from (seed, epoch). Use set_epoch before iterating."""

    def __init__(self, part: Part, batch_size: int, seed: int) -> None:
        self.part, self.batch_size, self.seed, self.epoch = part, batch_size, seed, 0
        self.photos_by_class = part.photos_by_class()
        self.n_batches = len(part.sketches) // batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def rng(self) -> random.Random:
        return random.Random(self.seed * 1_000_003 + self.epoch)

    def __len__(self) -> int:
        return self.n_batches

    def plan(self) -> list[list[tuple]]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[list[tuple]]:
        yield from self.plan()


class CategoryBatchSampler(_EpochBatchSampler):
    """Shuffled seen sketches; each with a random same-class positive and a random other-class negative photo.

    Items: (sketch, positive photo, negative photo, augmentation seed).
    """

    def plan(self) -> list[list[tuple]]:
        rng = self.rng()
        order = list(range(len(self.part.sketches)))
        rng.shuffle(order)
        n_classes = len(self.part.classes)
        batches = []
        for b in range(self.n_batches):
            batch = []
            for s in order[b * self.batch_size:(b + 1) * self.batch_size]:
                label = self.part.sketch_labels[s]
                pos = rng.choice(self.photos_by_class[label])
                other = rng.randrange(n_classes - 1)
                other += other >= label
                neg = rng.choice(self.photos_by_class[other])
                batch.append((s, pos, neg, rng.getrandbits(31)))
            batches.append(batch)
        return batches


class FineGrainedBatchSampler(_EpochBatchSampler):
    """P classes x Q sketches per batch, in P contiguous blocks of Q (the layout L_delta expects).

    Items: (sketch, its paired photo, another photo of the same class, augmentation seed, perm1, perm2).
    """

    def __init__(self, part: Part, p_classes: int, q_instances: int, seed: int, grid: int = 2) -> None:
        super().__init__(part, p_classes * q_instances, seed)
        self.p, self.q, self.grid = p_classes, q_instances, grid
        sketches_by_class = part.sketches_by_class()
        self.classes = [c for c, s in enumerate(sketches_by_class) if len(s) >= q_instances and len(self.photos_by_class[c]) >= 2]
        if len(self.classes) < p_classes:
            raise DataError(f"Need {p_classes} classes with >= {q_instances} sketches and >= 2 photos; have {len(self.classes)}.")
        self.sketches_by_class = sketches_by_class

    def plan(self) -> list[list[tuple]]:
        rng = self.rng()
        batches = []
        for _ in range(self.n_batches):
            batch = []
            for c in rng.sample(self.classes, self.p):
                for s in rng.sample(self.sketches_by_class[c], self.q):
                    pos = self.part.sketch_pairs[s]
                    neg = rng.choice([p for p in self.photos_by_class[c] if p != pos])
                    perm1 = draw_permutation(rng, self.grid)
                    perm2 = draw_permutation(rng, self.grid, exclude=perm1)
                    batch.append((s, pos, neg, rng.getrandbits(31), perm1, perm2))
            batches.append(batch)
        return batches


# ---- datasets ----------------------------------------------------------------------------------
def plain_sketch(path: str | Path) -> Image.Image:
    """A sketch as drawn on its whole canvas (no ink crop, no padding): the geometry of its paired photo.

    Ink on paper, RGB; light-on-dark drawings are inverted and blank canvases raise EmptySketchError,
    as in the engine's clean_sketch.
    """
    rgb = flatten_to_rgb(open_image(path))
    grey = np.asarray(rgb.convert("L"), dtype=np.uint8)
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    if np.median(border) < 128:
        grey = 255 - grey
        rgb = ImageOps.invert(rgb)
    policy = DEFAULT_SKETCH_POLICY
    if int((grey < policy.ink_threshold).sum()) < max(policy.min_ink_pixels, policy.min_ink_fraction * grey.size):
        raise EmptySketchError(f"{Path(path).name}: the sketch is blank.")
    return rgb


def load_sketch(path: Path, mode: str = "ink") -> Image.Image:
    """mode "ink": the engine's clean_sketch (what the app does to a query); "none": plain_sketch."""
    return clean_sketch(path) if mode == "ink" else plain_sketch(path)


class _BadFile(Exception):
    def __init__(self, role: str, path: Path, error: BaseException) -> None:
        super().__init__(f"{path}: {type(error).__name__}: {error}")
        self.role, self.path = role, path


class TripletDataset(Dataset):
    """Items are sampler tuples; returns a dict of tensors (and patch-shuffled views in the fine-grained setting).

    Fine-grained: the sketch and its paired photo (and the negative) share ONE geometric transform - the same
    relative crop box and the same flip - and the sketch keeps its whole canvas (`sketch_mode` "none"), so
    grid cell i of the sketch shows the same part as cell i of its photo, which the patch-shuffle loss assumes.
    Category-level: each image gets its own crop (ink-cropped sketches, as the app sees them).

    An unreadable or blank file is replaced by another draw from the same class (the item keeps its class,
    so the fine-grained P x Q blocks stay intact); `skipped` counts the replaced files.
    """

    max_tries = 20

    def __init__(self, part: Part, transform: Transform, augment_images: bool = True,
                 fine_grained: bool = False, grid: int = 2, sketch_mode: str | None = None) -> None:
        self.part, self.transform, self.augment_images = part, transform, augment_images
        self.fine_grained, self.grid = fine_grained, grid
        self.sketch_mode = sketch_mode or ("none" if fine_grained else "ink")
        self.photos_by_class = part.photos_by_class()
        self.sketches_by_class = part.sketches_by_class()

    def __len__(self) -> int:
        return len(self.part.sketches)

    def _read(self, role: str, path: Path) -> Image.Image:
        try:
            return load_sketch(path, self.sketch_mode) if role == "sketch" else load_photo(path)
        except LOAD_ERRORS as exc:
            raise _BadFile(role, path, exc) from None

    def _load(self, s: int, pos: int, neg: int, rng: random.Random) -> dict[str, Any]:
        part = self.part
        images = [self._read("sketch", part.sketches[s]), self._read("positive", part.photos[pos]),
                  self._read("negative", part.photos[neg])]
        if not self.augment_images:
            views = images
        elif self.fine_grained:
            box, flip = random_box(rng), rng.random() < 0.5  # one transform for the whole pair
            views = [apply_box(image, box, flip) for image in images]
        else:
            views = [augment(image, rng) for image in images]
        sketch, positive, negative = (self.transform(v) for v in views)
        return {"sketch": sketch, "positive": positive, "negative": negative, "label": part.sketch_labels[s],
                "negative_label": part.photo_labels[neg], "index": s}

    def _replace(self, bad: _BadFile, s: int, pos: int, neg: int, rng: random.Random) -> tuple[int, int, int]:
        part = self.part
        label = part.sketch_labels[s]
        if bad.role == "negative":
            return s, pos, rng.choice(self.photos_by_class[part.photo_labels[neg]])
        if bad.role == "positive" and not self.fine_grained:
            return s, rng.choice(self.photos_by_class[label]), neg
        # a bad sketch, or a bad paired photo: another sketch of the class (with its own pair when fine-grained)
        s = rng.choice(self.sketches_by_class[label])
        if self.fine_grained:
            pos = part.sketch_pairs[s]
            others = [p for p in self.photos_by_class[label] if p != pos]
            neg = rng.choice(others) if others else neg
        return s, pos, neg

    def __getitem__(self, item: tuple) -> dict[str, Any]:
        s, pos, neg, aug_seed = item[:4]
        rng = random.Random(aug_seed)
        skipped, last = 0, None
        for _ in range(self.max_tries):
            try:
                out = self._load(s, pos, neg, rng)
                break
            except _BadFile as bad:
                skipped, last = skipped + 1, bad.path
                log.warning("skipping unreadable %s image %s (%s); drawing another of the same class",
                            bad.role, bad.path, bad)
                s, pos, neg = self._replace(bad, s, pos, neg, rng)
        else:
            raise DataError(f"{self.max_tries} unreadable images in a row while loading one training item (last: "
                            f"{last}). Check the dataset with `python train/check_data.py --config ... --read`.")
        out["skipped"] = skipped
        if self.fine_grained:
            perm1, perm2 = item[4], item[5]
            out["ps_sketch"] = patch_shuffle(out["sketch"], perm1, self.grid)
            out["ps_positive"] = patch_shuffle(out["positive"], perm1, self.grid)
            out["ps_negative"] = patch_shuffle(out["positive"], perm2, self.grid)
        return out


class ImageListDataset(Dataset):
    """Eval images in a fixed order: returns (tensor, index, ok) so gathered results can be checked for
    duplicates, and unreadable files (ok = 0, a zero tensor) left out of the metrics instead of ending the run."""

    def __init__(self, paths: Sequence[Path], modality: str, transform: Transform, sketch_mode: str = "ink") -> None:
        self.paths, self.modality, self.transform = list(paths), modality, transform
        self.sketch_mode = sketch_mode
        self._shape: tuple[int, ...] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        path = self.paths[i]
        try:
            image = load_sketch(path, self.sketch_mode) if self.modality == "sketch" else load_photo(path)
        except LOAD_ERRORS as exc:
            log.warning("skipping unreadable %s %s (%s: %s)", self.modality, path, type(exc).__name__, exc)
            return torch.zeros(self._probe_shape()), i, 0
        return self.transform(image), i, 1

    def _probe_shape(self) -> tuple[int, ...]:
        if self._shape is None:  # the transform's output size, from a blank image
            self._shape = tuple(self.transform(Image.new("RGB", (32, 32), "white")).shape)
        return self._shape
