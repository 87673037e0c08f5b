"""Torch datasets: training items (sketch, positive, negative and patch-shuffled views) built from sampler
tuples, and evaluation image lists in a fixed order.

Unreadable or empty images do not stop a run: training draws a replacement from the same class (counted
and logged as `skipped_loads`), evaluation leaves the file out of the queries or the gallery (listed in
eval.json under `skipped_files`).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from train.splits import DataError, Part
from train.transforms import apply_box, augment, patch_shuffle, random_box
from zsdemo.errors import EmptySketchError, ZsdemoError
from zsdemo.model.preprocess import (
    DEFAULT_SKETCH_POLICY,
    Transform,
    clean_sketch,
    flatten_to_rgb,
    load_photo,
    open_image,
)

log = logging.getLogger(__name__)

# What a corrupt, truncated, empty or blank image file raises when it is read.
LOAD_ERRORS = (ZsdemoError, OSError, ValueError, SyntaxError, EOFError)


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
