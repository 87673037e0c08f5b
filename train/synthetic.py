"""Procedural sketch/photo dataset with instance pairing, written in the Sketchy folder layout.

    python -m train.synthetic OUT [--photos-per-class 12] [--sketches-per-photo 2] [--size 96] [--seed 0]

writes OUT/photo/<class>/<class>_<i>.jpg and OUT/sketch/<class>/<class>_<i>-<n>.png: the sketch
`<photo-stem>-<n>.png` belongs to the photo `<photo-stem>.jpg`, as in Sketchy. A "photo" is a filled,
coloured shape on a noisy coloured background; its sketches are black outlines of the same instance
(same position, scale, rotation, aspect and an instance-specific inner mark) with small stroke jitter.
"""

from __future__ import annotations

import argparse
import logging
import math
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

log = logging.getLogger(__name__)

SHAPES = ("circle", "square", "triangle", "star", "cross", "arrow", "heart", "hexagon", "crescent", "diamond")
SYNTHETIC_UNSEEN = ("hexagon", "crescent", "diamond")


def _outline(shape: str, n: int = 48) -> list[tuple[float, float]]:
    """Unit-size outline (radius about 1) of a shape as a closed polygon."""
    if shape == "circle":
        return [(math.cos(2 * math.pi * i / n), math.sin(2 * math.pi * i / n)) for i in range(n)]
    if shape == "square":
        return [(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)]
    if shape == "triangle":
        return [(0.0, -1.0), (0.9, 0.75), (-0.9, 0.75)]
    if shape == "star":
        return [((1.0 if i % 2 == 0 else 0.42) * math.cos(math.pi * i / 5 - math.pi / 2),
                 (1.0 if i % 2 == 0 else 0.42) * math.sin(math.pi * i / 5 - math.pi / 2)) for i in range(10)]
    if shape == "cross":
        a, b = 0.3, 0.95
        return [(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b), (-a, b), (-a, a), (-b, a), (-b, -a), (-a, -a)]
    if shape == "arrow":
        return [(-0.9, -0.25), (0.2, -0.25), (0.2, -0.65), (0.95, 0.0), (0.2, 0.65), (0.2, 0.25), (-0.9, 0.25)]
    if shape == "heart":
        pts = []
        for i in range(n):
            t = 2 * math.pi * i / n
            pts.append((16 * math.sin(t) ** 3 / 17, -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)) / 17))
        return pts
    if shape == "hexagon":
        return [(math.cos(math.pi * i / 3), math.sin(math.pi * i / 3)) for i in range(6)]
    if shape == "crescent":
        outer = [(math.cos(t), math.sin(t)) for t in np.linspace(-0.8 * math.pi, 0.8 * math.pi, n // 2)]
        inner = [(0.45 + 0.75 * math.cos(t), 0.75 * math.sin(t)) for t in np.linspace(0.75 * math.pi, -0.75 * math.pi, n // 2)]
        return outer + inner
    if shape == "diamond":
        return [(0.0, -1.0), (0.6, 0.0), (0.0, 1.0), (-0.6, 0.0)]
    raise ValueError(f"unknown shape {shape!r}")


def _instance(rng: random.Random) -> dict[str, float]:
    return {"cx": rng.uniform(0.4, 0.6), "cy": rng.uniform(0.4, 0.6), "scale": rng.uniform(0.25, 0.38),
            "angle": rng.uniform(0, 2 * math.pi), "aspect": rng.uniform(0.7, 1.3),
            "mark_angle": rng.uniform(0, 2 * math.pi), "mark_r": rng.uniform(0.0, 0.45)}


def _place(points: list[tuple[float, float]], inst: dict[str, float], size: int,
           jitter: float = 0.0, rng: random.Random | None = None) -> list[tuple[float, float]]:
    cos, sin = math.cos(inst["angle"]), math.sin(inst["angle"])
    out = []
    for x, y in points:
        x *= inst["aspect"]
        if jitter and rng is not None:
            x, y = x + rng.gauss(0, jitter), y + rng.gauss(0, jitter)
        xr, yr = x * cos - y * sin, x * sin + y * cos
        out.append(((inst["cx"] + inst["scale"] * xr) * size, (inst["cy"] + inst["scale"] * yr) * size))
    return out


def _mark(inst: dict[str, float], size: int) -> tuple[float, float, float]:
    r = inst["mark_r"] * inst["scale"] * size
    return (inst["cx"] * size + r * math.cos(inst["mark_angle"]), inst["cy"] * size + r * math.sin(inst["mark_angle"]),
            max(2.0, 0.08 * size))


def render_photo(shape: str, inst: dict[str, float], size: int, rng: random.Random) -> Image.Image:
    nprng = np.random.default_rng(rng.getrandbits(32))
    bg = np.array([rng.randint(90, 230) for _ in range(3)], dtype=np.float32)
    ramp = np.linspace(-25, 25, size, dtype=np.float32)[None, :, None]
    arr = np.clip(bg + ramp + nprng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(arr, "RGB")
    draw = ImageDraw.Draw(image)
    fill = tuple(int(c) for c in (255 - bg + np.array([rng.randint(-40, 40) for _ in range(3)])).clip(0, 255))
    edge = tuple(int(c * 0.35) for c in fill)
    draw.polygon(_place(_outline(shape), inst, size), fill=fill, outline=edge, width=max(1, size // 48))
    x, y, r = _mark(inst, size)
    draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(255 - c for c in fill))
    return image


def render_sketch(shape: str, inst: dict[str, float], size: int, rng: random.Random) -> Image.Image:
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    points = _place(_outline(shape), inst, size, jitter=0.03, rng=rng)
    draw.line(points + points[:1], fill="black", width=max(1, size // 40), joint="curve")
    x, y, r = _mark(inst, size)
    draw.ellipse((x - r, y - r, x + r, y + r), outline="black", width=max(1, size // 64))
    return image


def sketch_strokes(shape: str, inst: dict[str, float], size: int, rng: random.Random,
                   n_outline: int = 3) -> list[list[tuple[float, float]]]:
    """The sketch of an instance as ordered strokes (polylines in pixels): the outline cut into n_outline
    consecutive pieces, then the inner mark as a closed loop; the order in which a person would draw it."""
    points = _place(_outline(shape), inst, size, jitter=0.03, rng=rng)
    closed = points + points[:1]
    cuts = [round(i * (len(closed) - 1) / n_outline) for i in range(n_outline + 1)]
    strokes = [closed[cuts[i]:cuts[i + 1] + 1] for i in range(n_outline)]
    x, y, r = _mark(inst, size)
    strokes.append([(x + r * math.cos(2 * math.pi * i / 16), y + r * math.sin(2 * math.pi * i / 16)) for i in range(17)])
    return strokes


def render_strokes(strokes: list[list[tuple[float, float]]], size: int, n: int | None = None,
                   mark_last: bool = True) -> Image.Image:
    """The canvas after the first n strokes (all when None): black lines on white, as render_sketch draws them
    (outline at width size // 40; with mark_last, the last stroke - sketch_strokes' inner mark - at size // 64)."""
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    for i, stroke in enumerate(strokes[:n]):
        thin = mark_last and i == len(strokes) - 1
        width = max(1, size // (64 if thin else 40))
        if len(stroke) == 1:  # a tap (QuickDraw has them): a dot, which a one-point line would not draw
            (x, y), r = stroke[0], width / 2
            draw.ellipse((x - r, y - r, x + r, y + r), fill="black")
            continue
        draw.line(stroke, fill="black", width=width, joint="curve")
    return image


def _draws(shapes: tuple[str, ...], photos_per_class: int, sketches_per_photo: int, size: int, seed: int):
    """generate's random draws in order: (shape, stem, instance, photo, sketches) per photo."""
    rng = random.Random(seed)
    for shape in shapes:
        for i in range(photos_per_class):
            inst = _instance(rng)
            photo = render_photo(shape, inst, size, rng)
            sketches = [render_sketch(shape, inst, size, rng) for _ in range(sketches_per_photo)]
            yield shape, f"{shape}_{i:03d}", inst, photo, sketches


def generate(out: str | Path, shapes: tuple[str, ...] = SHAPES, photos_per_class: int = 12,
             sketches_per_photo: int = 2, size: int = 96, seed: int = 0) -> Path:
    """Write the dataset; returns its root. Deterministic for a given seed."""
    root = Path(out)
    for shape, stem, _, photo, sketches in _draws(shapes, photos_per_class, sketches_per_photo, size, seed):
        (root / "photo" / shape).mkdir(parents=True, exist_ok=True)
        (root / "sketch" / shape).mkdir(parents=True, exist_ok=True)
        photo.save(root / "photo" / shape / f"{stem}.jpg", quality=92)
        for n, sketch in enumerate(sketches, 1):
            sketch.save(root / "sketch" / shape / f"{stem}-{n}.png")
    log.info("wrote %d classes x %d photos (x %d sketches) to %s", len(shapes), photos_per_class, sketches_per_photo, root)
    return root


def dataset_instances(root: str | Path, seed: int = 0) -> tuple[dict[str, tuple[str, dict[str, float]]], int]:
    """(stem -> (shape, instance), image size) of a dataset that `generate` wrote, by replaying its draws.

    The counts and size are read from the folders; the replayed sketches must equal the files on disk
    (PNG, lossless), else ValueError (another seed or generator)."""
    root = Path(root)
    shapes = tuple(s for s in SHAPES if (root / "photo" / s).is_dir())
    if not shapes:
        raise ValueError(f"{root} holds no train.synthetic photo folders")
    photos = len(list((root / "photo" / shapes[0]).glob("*.jpg")))
    sketch_files = sorted((root / "sketch" / shapes[0]).glob("*.png"))
    size = Image.open(sketch_files[0]).size[0]
    out: dict[str, tuple[str, dict[str, float]]] = {}
    for shape, stem, inst, _, sketches in _draws(shapes, photos, len(sketch_files) // photos, size, seed):
        if not out and not np.array_equal(np.asarray(sketches[0]), np.asarray(Image.open(root / "sketch" / shape / f"{stem}-1.png").convert("RGB"))):
            raise ValueError(f"{root} was not written by train.synthetic.generate with seed {seed}")
        out[stem] = (shape, inst)
    return out, size


def strokes_of(sketch: Path, instances: dict[str, tuple[str, dict[str, float]]], size: int) -> list[list[tuple[float, float]]]:
    """Stroke-ordered version of a synthetic sketch file `<stem>-<n>.png`: its instance drawn by sketch_strokes
    (own jitter, seeded by the file name)."""
    shape, inst = instances[sketch.stem.rpartition("-")[0]]
    return sketch_strokes(shape, inst, size, random.Random(sketch.stem))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--photos-per-class", type=int, default=12)
    parser.add_argument("--sketches-per-photo", type=int, default=2)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    generate(args.out, photos_per_class=args.photos_per_class, sketches_per_photo=args.sketches_per_photo,
             size=args.size, seed=args.seed)


if __name__ == "__main__":
    main()
