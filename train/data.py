"""Datasets, zero-shot class splits, deterministic batch samplers and image augmentation for training.

Folder layout read by every loader (the real datasets and `train.synthetic` alike):

    <data_root>/<sketch_dir>/<class>/<name>.(png|jpg|...)
    <data_root>/<photo_dir>/<class>/<name>.(jpg|png|...)

Typical settings (see train/configs): Sketchy-ext `sketch/tx_000000000000` + `extended_photo`
(category-level) or `photo/tx_000000000000` (fine-grained, paired); TU-Berlin-ext `png_ready` +
`ImageResized_ready`; QuickDraw-ext `sketch` + `photo`. Fine-grained pairing (Sketchy): the sketch
`<photo-stem>-<n>.png` belongs to the photo `<photo-stem>.jpg` of the same class.

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

from zsdemo.errors import ZsdemoError
from zsdemo.preprocess import PHOTO_EXTENSIONS, Transform, clean_sketch, load_photo

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = tuple(sorted(set(PHOTO_EXTENSIONS) | {".png", ".jpg", ".jpeg"}))

# Unseen (test) classes of the standard zero-shot splits (DESIGN.md §3).
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


def _scan(root: Path, kind: str) -> dict[str, list[Path]]:
    if not root.is_dir():
        raise DataError(f"The {kind} folder {root} does not exist. Check data_root and {kind}_dir in the config "
                        f"(expected {root}/<class>/<images>).")
    classes = {d.name: _list_images(d) for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")}
    if not classes:
        raise DataError(f"The {kind} folder {root} has no class sub-folders (expected {root}/<class>/<images>).")
    empty = [name for name, files in classes.items() if not files]
    if empty:
        raise DataError(f"{len(empty)} {kind} class folder(s) in {root} contain no images: {', '.join(empty[:10])}.")
    return classes


def pair_stem(sketch: Path) -> str:
    """Sketchy naming: `<photo-stem>-<n>.png` -> `<photo-stem>`."""
    stem, sep, suffix = sketch.stem.rpartition("-")
    return stem if sep and suffix.isdigit() else sketch.stem


def build_split(data_root: str | Path, sketch_dir: str, photo_dir: str, unseen: Sequence[str],
                paired: bool = False, expected_counts: tuple[int, int] | None = None) -> Split:
    """Read the folder layout, check it, and split it into seen (train) and unseen (test) classes.

    Raises DataError naming the problem: missing folders, empty classes, classes present for one
    modality only, unseen classes not on disk, and (when `paired`) sketches without their photo.
    """
    root = Path(data_root)
    if not root.is_dir():
        raise DataError(f"data_root {root} does not exist.")
    sketches, photos = _scan(root / sketch_dir, "sketch"), _scan(root / photo_dir, "photo")
    only_s, only_p = sorted(set(sketches) - set(photos)), sorted(set(photos) - set(sketches))
    if only_s or only_p:
        raise DataError(f"Sketch and photo classes differ: only sketches for {only_s[:10]}, only photos for {only_p[:10]} "
                        f"({root / sketch_dir} vs {root / photo_dir}).")
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
            stems = {}
            for p in photos[name]:
                stems[p.stem] = len(part.photos)
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


def split_from_config(cfg: Any) -> Split:
    if cfg.split == "custom":
        unseen, expected = list(cfg.unseen_classes), None
    elif cfg.split in SPLITS:
        unseen, expected = list(SPLITS[cfg.split]), EXPECTED_COUNTS[cfg.split]
    else:
        raise DataError(f"Unknown split {cfg.split!r}: use one of {sorted(SPLITS)} or 'custom' with unseen_classes.")
    split = build_split(cfg.data_root, cfg.sketch_dir, cfg.photo_dir, unseen,
                        paired=cfg.setting == "fine_grained", expected_counts=expected)
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
def load_sketch(path: Path) -> Image.Image:
    return clean_sketch(path)


class TripletDataset(Dataset):
    """Items are sampler tuples; returns a dict of tensors (and patch-shuffled views in the fine-grained setting)."""

    def __init__(self, part: Part, transform: Transform, augment_images: bool = True,
                 fine_grained: bool = False, grid: int = 2) -> None:
        self.part, self.transform, self.augment_images = part, transform, augment_images
        self.fine_grained, self.grid = fine_grained, grid

    def __len__(self) -> int:
        return len(self.part.sketches)

    def _image(self, image: Image.Image, rng: random.Random, flip: bool | None) -> torch.Tensor:
        if self.augment_images:
            image = augment(image, rng, flip)
        return self.transform(image)

    def __getitem__(self, item: tuple) -> dict[str, Any]:
        s, pos, neg, aug_seed = item[:4]
        rng = random.Random(aug_seed)
        flip = rng.random() < 0.5 if self.fine_grained else None  # a fine-grained pair flips together
        part = self.part
        out: dict[str, Any] = {
            "sketch": self._image(load_sketch(part.sketches[s]), rng, flip),
            "positive": self._image(load_photo(part.photos[pos]), rng, flip),
            "negative": self._image(load_photo(part.photos[neg]), rng, flip),
            "label": part.sketch_labels[s],
            "negative_label": part.photo_labels[neg],
            "index": s,
        }
        if self.fine_grained:
            perm1, perm2 = item[4], item[5]
            out["ps_sketch"] = patch_shuffle(out["sketch"], perm1, self.grid)
            out["ps_positive"] = patch_shuffle(out["positive"], perm1, self.grid)
            out["ps_negative"] = patch_shuffle(out["positive"], perm2, self.grid)
        return out


class ImageListDataset(Dataset):
    """Eval images in a fixed order: returns (tensor, index) so gathered results can be checked for duplicates."""

    def __init__(self, paths: Sequence[Path], modality: str, transform: Transform) -> None:
        self.paths, self.modality, self.transform = list(paths), modality, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path = self.paths[i]
        image = load_sketch(path) if self.modality == "sketch" else load_photo(path)
        return self.transform(image), i
