"""Image transforms for training: the engine's eval transform, seeded augmentation (independent per image,
or one crop box and flip shared by a fine-grained pair) and the patch shuffle of the fine-grained loss."""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import open_clip
import torch
from PIL import Image, ImageOps

from zsdemo.model.preprocess import Transform


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
