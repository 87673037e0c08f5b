"""Turn whatever a user gives us into clean RGB images, and clean images into model tensors.

One policy, used by the app, the gallery indexer and training alike:
- photos: EXIF orientation applied, flattened onto white, RGB; the model transform then resizes the
  shorter side to the model's input size (bicubic) and centre-crops (CLIP's own eval transform);
- sketches: flattened onto white, inverted if drawn light-on-dark, cropped to the ink with a margin
  and padded to a white square, so the same drawing gives the same embedding wherever it sits on
  the canvas and whatever the canvas size.
Bump PREPROCESS_VERSION whenever the output of these functions changes: it is part of the gallery
cache fingerprint, so stale caches get rebuilt.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError

from zsdemo.errors import EmptySketchError, ImageError, ZsdemoError
from zsdemo.limits import DEFAULT_STROKE_LIMITS, StrokeLimits, parse_strokes

log = logging.getLogger(__name__)

# Not bumped for the size limits below: an image within them gives exactly the output it gave before (only
# sketches whose ink box is over MAX_SKETCH_SIDE are shrunk first, and sketches are not part of any cache).
PREPROCESS_VERSION = "1"

PHOTO_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")


@dataclass(frozen=True)
class ImageLimits:
    """Refuse inputs that would take too much memory or time to decode or transform (decompression bombs).

    Every dimension is bounded, not only the pixel count: CLIP's transform resizes the short side to the model's
    input size, so a 39,000,000 x 1 image (39 MP, under the pixel limit) asks for a resize to billions of pixels.
    With the aspect ratio bounded, the resize target of any accepted image is at most `max_aspect` times the
    model's input size on its long side."""

    max_pixels: int = 40_000_000  # ~ 7700 x 5200; a 40 MP photo decodes to ~120 MB of RGB
    max_file_bytes: int = 50 * 1024 * 1024
    max_side: int = 12_000  # a 12000 x 3000 panorama passes; nothing longer is a photo anyone searches
    max_aspect: float = 20.0  # long side / short side


# The ink box of a sketch is shrunk to this long side before it is padded to a square: the model sees 224 px,
# and the padded square of a sketch with ink at two far corners would otherwise be the image's long side squared.
MAX_SKETCH_SIDE = 1024


@dataclass(frozen=True)
class SketchPolicy:
    ink_threshold: int = 200  # grey level below which a pixel counts as ink (0 = black)
    min_ink_pixels: int = 12  # fewer than this many ink pixels = an empty canvas
    min_ink_fraction: float = 5e-5  # ... or fewer than this fraction of the canvas
    margin: float = 0.08  # white margin around the ink, as a fraction of the ink box's long side


DEFAULT_LIMITS = ImageLimits()
DEFAULT_SKETCH_POLICY = SketchPolicy()


def _read_limited(stream: Any, limit: int) -> bytes:
    """Read a file-like object, refusing it as soon as it passes `limit` bytes."""
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise ImageError(f"The image is over the {limit / 2**20:.0f} MB limit. Use a smaller file.")
    return data


def open_image(source: str | os.PathLike | bytes | io.IOBase, limits: ImageLimits = DEFAULT_LIMITS,
               display_name: str | None = None) -> Image.Image:
    """Open an image file safely: size limits checked before decoding, EXIF orientation applied.

    Returns a fully loaded PIL image (any mode). Raises ImageError with a readable message, which names
    the file as `display_name` (default: its base name; pass "the image" for server-side temp files).
    """
    name = display_name or "the image"
    try:
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            name = display_name or path.name
            if not path.is_file():
                raise ImageError(f"{name}: file not found.")
            if path.stat().st_size > limits.max_file_bytes:
                raise ImageError(
                    f"{name} is {path.stat().st_size / 2**20:.0f} MB; the limit is "
                    f"{limits.max_file_bytes / 2**20:.0f} MB. Use a smaller file."
                )
            fp: Any = path
        elif isinstance(source, bytes):
            if len(source) > limits.max_file_bytes:
                raise ImageError(f"{name} is over the {limits.max_file_bytes / 2**20:.0f} MB limit. Use a smaller file.")
            fp = io.BytesIO(source)
        else:
            fp = io.BytesIO(_read_limited(source, limits.max_file_bytes))
        with warnings.catch_warnings():
            # We check the pixel count ourselves below, with a clearer message than PIL's warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(fp) as im:
                check_pixels(im.size, limits, name)
                im.seek(0)  # animated GIF/WebP: the first frame
                im.load()
                image = ImageOps.exif_transpose(im) or im
                if image is im:
                    image = im.copy()
        return image
    except ZsdemoError:
        raise
    except Image.DecompressionBombError:
        raise ImageError(f"{name} is too large to decode safely. Resize it first.") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageError(f"{name} is not a readable image ({type(exc).__name__}).") from None
    except Exception as exc:  # OverflowError, MemoryError, RecursionError, a decoder's own bug: the same refusal
        raise _refusal(name, exc) from None


def _refusal(name: str, exc: BaseException) -> ImageError:
    log.info("refused %s: %s", name, type(exc).__name__)
    return ImageError(f"{name} could not be processed ({type(exc).__name__}); it may be damaged or too large. "
                      "Try another image.")


@contextlib.contextmanager
def image_guard(name: str = "the image") -> Iterator[None]:
    """Whatever goes wrong while decoding, transforming or encoding one image (OverflowError from a resize,
    MemoryError, RecursionError, ...) becomes the same readable ImageError. ZsdemoErrors pass unchanged;
    KeyboardInterrupt and SystemExit are not caught."""
    try:
        yield
    except ZsdemoError:
        raise
    except Exception as exc:
        raise _refusal(name, exc) from None


def check_pixels(size: tuple[int, int], limits: ImageLimits = DEFAULT_LIMITS, name: str = "the image") -> None:
    """ImageError when an image of `size` (width, height) is empty, or over the side, aspect-ratio or pixel limit."""
    width, height = int(size[0]), int(size[1])
    if width < 1 or height < 1:
        raise ImageError(f"{name} is {width}x{height} pixels: there is nothing in it.")
    if max(width, height) > limits.max_side:
        raise ImageError(f"{name} is {width}x{height} pixels; the limit is {limits.max_side} pixels a side. "
                         "Resize it first.")
    if max(width, height) / min(width, height) > limits.max_aspect:
        raise ImageError(f"{name} is {width}x{height} pixels: too long and thin (the limit is "
                         f"{limits.max_aspect:g}:1). Crop it first.")
    if width * height > limits.max_pixels:
        raise ImageError(
            f"{name} is {width}x{height} pixels ({width * height / 1e6:.0f} MP); the limit is "
            f"{limits.max_pixels / 1e6:.0f} MP. Resize it first."
        )


def flatten_to_rgb(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Any PIL mode -> RGB. Transparent pixels become `background`; high bit depths are rescaled."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        if mode == "F" and arr.max() <= 1.0:
            peak = 1.0
        image = Image.fromarray(np.clip(arr / peak * 255.0, 0, 255).astype(np.uint8), "L")
        mode = "L"
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, background + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    if mode == "RGB":
        return image
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def load_photo(source: str | os.PathLike | bytes | Image.Image, limits: ImageLimits = DEFAULT_LIMITS) -> Image.Image:
    """A photo file or PIL image -> upright RGB PIL image."""
    if isinstance(source, Image.Image):
        check_pixels(source.size, limits, "the photo")
        image = source
    else:
        image = open_image(source, limits)
    with image_guard(Path(source).name if isinstance(source, (str, os.PathLike)) else "the photo"):
        return flatten_to_rgb(image)


def _array_to_image(arr: np.ndarray) -> Image.Image:
    arr = np.asarray(arr)
    if arr.size == 0:
        raise EmptySketchError("The sketch is empty: draw something first.")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype.kind == "f":
        scale = 255.0 if arr.max(initial=0.0) <= 1.0 else 1.0
        arr = np.clip(arr * scale, 0, 255).astype(np.uint8)
    elif arr.dtype == np.uint16:
        arr = (arr // 257).astype(np.uint8)
    elif arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        return Image.fromarray(arr, "L")
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        return Image.fromarray(arr, "RGB" if arr.shape[2] == 3 else "RGBA")
    raise ImageError(f"Unsupported image array shape {arr.shape}: expected HxW, HxWx3 or HxWx4.")


def is_strokes_value(value: Any) -> bool:
    """A canvas value made of strokes: a dict with 'strokes', or its JSON text."""
    if isinstance(value, dict):
        return "strokes" in value
    return isinstance(value, str) and value.lstrip().startswith("{")


def strokes_to_image(value: str | dict[str, Any], limits: StrokeLimits = DEFAULT_STROKE_LIMITS) -> Image.Image:
    """The page canvas's value -> black strokes on a white RGB image of the canvas's size.

    The value is `{"width": W, "height": H, "brush": B, "strokes": [[x0, y0, x1, y1, ...], ...]}` (or its
    JSON text), in canvas pixels. Sending strokes instead of a PNG keeps each request a few KB and lets the
    server draw them in well under a millisecond; malformed or oversized values raise ImageError
    (zsdemo.limits.parse_strokes holds the schema).
    """
    drawing = parse_strokes(value, limits)
    brush = drawing.brush
    image = Image.new("RGB", (drawing.width, drawing.height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for stroke in drawing.strokes:
        points = list(zip(stroke[0::2], stroke[1::2], strict=True))
        if not points:
            continue
        radius = brush / 2
        if len(points) > 1:
            draw.line(points, fill=(0, 0, 0), width=brush, joint="curve")
        for x, y in (points[0], points[-1]):  # round caps; a single tap is a dot
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=(0, 0, 0))
    return image


def sketch_to_image(value: Any, limits: ImageLimits = DEFAULT_LIMITS, display_name: str | None = None) -> Image.Image:
    """Accept the page canvas's strokes (JSON text or dict), a PIL image, an array or a path (an uploaded sketch, the
    CLI). Every kind obeys the same pixel limit as files."""
    if is_strokes_value(value):
        return strokes_to_image(value)
    if value is None:
        raise EmptySketchError("The canvas is empty: draw something.")
    if isinstance(value, Image.Image):
        check_pixels(value.size, limits, display_name or "the sketch")
        return value
    if isinstance(value, np.ndarray):
        if value.ndim >= 2 and value.size:  # an empty array is an empty canvas (_array_to_image says so)
            check_pixels((value.shape[1], value.shape[0]), limits, display_name or "the sketch")
        return _array_to_image(value)
    if isinstance(value, (str, os.PathLike, bytes)):
        return open_image(value, limits, display_name)
    raise ImageError(f"Cannot read a sketch from a {type(value).__name__}.")


def clean_sketch(value: Any, policy: SketchPolicy = DEFAULT_SKETCH_POLICY, display_name: str | None = None) -> Image.Image:
    """Any sketch input -> dark ink on white, cropped to the ink with a margin, padded to a square RGB image.

    Raises EmptySketchError when there is (almost) no ink.
    """
    image = sketch_to_image(value, display_name=display_name)
    with image_guard(display_name or "the sketch"):
        return _clean(image, policy)


def _clean(image: Image.Image, policy: SketchPolicy) -> Image.Image:
    rgb = flatten_to_rgb(image)
    grey = np.asarray(rgb.convert("L"), dtype=np.uint8)
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    if np.median(border) < 128:  # light strokes on a dark board: make it ink on paper
        grey = 255 - grey
        rgb = ImageOps.invert(rgb)
    ink = grey < policy.ink_threshold
    count = int(ink.sum())
    if count < max(policy.min_ink_pixels, policy.min_ink_fraction * grey.size):
        raise EmptySketchError("The canvas is empty: draw something.")
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    crop = rgb.crop((left, top, right, bottom))
    if max(crop.size) > MAX_SKETCH_SIDE:  # bound the padded square (see MAX_SKETCH_SIDE); BOX keeps thin lines dark
        scale = MAX_SKETCH_SIDE / max(crop.size)
        crop = crop.resize((max(1, round(crop.width * scale)), max(1, round(crop.height * scale))),
                           Image.Resampling.BOX)
    side = max(crop.size)
    side_with_margin = int(round(side * (1 + 2 * policy.margin))) + 2
    square = Image.new("RGB", (side_with_margin, side_with_margin), (255, 255, 255))
    square.paste(crop, ((side_with_margin - crop.width) // 2, (side_with_margin - crop.height) // 2))
    return square


def make_thumbnail(image: Image.Image, size: int = 256) -> Image.Image:
    """RGB thumbnail whose longer side is at most `size` pixels."""
    with image_guard("the photo"):
        thumb = flatten_to_rgb(image).copy()
        thumb.thumbnail((size, size), Image.Resampling.BICUBIC)
        return thumb


Transform = Callable[[Image.Image], torch.Tensor]


def stack(images: list[Image.Image], transform: Transform) -> torch.Tensor:
    """Clean RGB images -> a normalised batch tensor for the model."""
    return torch.stack([guarded(transform)(image) for image in images])


class _Guarded:
    """A transform whose failure on one image is an ImageError naming it (see `guarded`)."""

    def __init__(self, transform: Transform, name: str) -> None:
        self.__wrapped__ = transform
        self.name = name

    def __call__(self, image: Image.Image) -> torch.Tensor:
        with image_guard(self.name):
            return self.__wrapped__(image)


def guarded(transform: Transform, name: str = "the image") -> Transform:
    """`transform` whose failure on one image (OverflowError from a resize, MemoryError, ...) is an ImageError."""
    return transform if isinstance(transform, _Guarded) else _Guarded(transform, name)
