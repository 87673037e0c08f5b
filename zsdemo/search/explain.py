"""Why a photo matched: a similarity map between the sketch embedding and the photo's patch tokens.

The photo goes through the photo branch of the prompted ViT exactly as when it was indexed; its patch
tokens (the outputs at the patch positions of the last block) get ln_post and the projection, as the
[CLS] token does, and each is compared with the sketch embedding by cosine similarity. The grid of
cosines is scaled to the part of the photo the model saw (CLIP's transform resizes the short side and
centre-crops: the cropped-away margins stay uncoloured) and laid over the photo as a colour map.

This is a similarity map, not a segmentation: patch tokens of a ViT mix information from the whole image,
so a warm patch means "this token's embedding points the way the sketch's does", no more.

`similarity_grid` and `overlay` are pure functions on arrays (unit-tested with hand-made tokens);
`photo_patch_tokens` runs the model.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from zsdemo.model.encoder import SketchPhotoEncoder
from zsdemo.model.prompts import PromptedViT

log = logging.getLogger(__name__)

CAPTION = ("Warm = image patches whose embedding is most similar to your sketch (cosine {lo:.2f} → {hi:.2f} on this "
           "photo; the [CLS] score is {score:.3f}). A similarity map, not a segmentation{margins}.")

# A perceptual "inferno"-like ramp (dark purple -> red -> yellow), 5 anchor colours interpolated.
_RAMP = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float32)


@dataclass
class Explanation:
    image: Image.Image  # the photo with the map over it, at the photo's size
    caption: str
    grid: np.ndarray  # (gh, gw) cosines, row-major as the patches lie in the image
    crop_box: tuple[int, int, int, int]  # the region of the photo the model saw (left, top, right, bottom)
    seconds: float


# ---- pure part --------------------------------------------------------------------------------
def similarity_grid(patch_tokens: np.ndarray | torch.Tensor, query: np.ndarray | torch.Tensor,
                    grid: tuple[int, int] | None = None) -> np.ndarray:
    """Cosine of every patch token (N, D) with the query vector (D,), shaped (gh, gw). A square grid is assumed
    when `grid` is not given."""
    tokens = torch.as_tensor(np.asarray(patch_tokens, dtype=np.float32))
    q = torch.as_tensor(np.asarray(query, dtype=np.float32)).reshape(1, -1)
    if tokens.ndim != 2 or tokens.shape[1] != q.shape[1]:
        raise ValueError(f"patch tokens {tuple(tokens.shape)} do not match a query of dimension {q.shape[1]}")
    if grid is None:
        side = int(round(tokens.shape[0] ** 0.5))
        grid = (side, side)
    if grid[0] * grid[1] != tokens.shape[0]:
        raise ValueError(f"{tokens.shape[0]} patch tokens do not fill a {grid[0]}x{grid[1]} grid")
    cos = F.cosine_similarity(tokens, q.expand_as(tokens), dim=1)
    return cos.reshape(grid).numpy().astype(np.float32)


def model_view_box(photo_size: tuple[int, int], resize_mode: str | None = "shortest") -> tuple[int, int, int, int]:
    """Where the model's input square lies on the photo (left, top, right, bottom), in photo pixels.

    "shortest" (CLIP's default: resize the short side, centre-crop) -> the centred square inside the photo;
    "squash" -> the whole photo; "longest" (resize the long side, pad) -> a square larger than the photo, centred
    on it (negative left/top: the grid's padding lies outside the photo)."""
    w, h = photo_size
    if resize_mode == "squash":
        return 0, 0, w, h
    side = max(w, h) if resize_mode == "longest" else min(w, h)
    left, top = int(round((w - side) / 2.0)), int(round((h - side) / 2.0))
    return left, top, left + side, top + side


def colour_map(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (any shape) -> uint8 RGB (shape + (3,)) on the ramp."""
    v = np.clip(values, 0.0, 1.0) * (len(_RAMP) - 1)
    low = np.floor(v).astype(int).clip(0, len(_RAMP) - 2)
    frac = (v - low)[..., None]
    return (_RAMP[low] * (1 - frac) + _RAMP[low + 1] * frac).round().astype(np.uint8)


def overlay(photo: Image.Image, grid: np.ndarray, box: tuple[int, int, int, int] | None = None,
            alpha: float = 0.55) -> Image.Image:
    """The photo with `grid` (scaled to its own min..max) as a colour map over `box` (default: the centred
    square the model saw; see model_view_box). Photo pixels outside the box are dimmed and left uncoloured.
    Same size as `photo`."""
    photo = photo.convert("RGB")
    box = box or model_view_box(photo.size)
    grid = np.asarray(grid, dtype=np.float32)
    lo, hi = float(grid.min()), float(grid.max())
    scaled = (grid - lo) / (hi - lo) if hi > lo else np.zeros_like(grid)
    width, height = max(box[2] - box[0], 1), max(box[3] - box[1], 1)
    # bilinear upsampling of the patch grid over the model's view of the photo
    heat = Image.fromarray((scaled * 255).round().astype(np.uint8), "L").resize((width, height),
                                                                                 Image.Resampling.BILINEAR)
    coloured = Image.fromarray(colour_map(np.asarray(heat, dtype=np.float32) / 255.0), "RGB")
    visible = (max(box[0], 0), max(box[1], 0), min(box[2], photo.width), min(box[3], photo.height))
    coloured = coloured.crop((visible[0] - box[0], visible[1] - box[1], visible[2] - box[0], visible[3] - box[1]))
    out = Image.blend(photo, Image.new("RGB", photo.size, (128, 128, 128)), 0.5)  # dim the cropped-away margins
    out.paste(Image.blend(photo.crop(visible), coloured, alpha), visible[:2])
    return out


# ---- running the model ------------------------------------------------------------------------
def resize_mode_of(encoder: SketchPhotoEncoder) -> str:
    """How the encoder's transform fits a photo into its square input (open_clip preprocess config)."""
    import open_clip

    try:
        return str(open_clip.get_model_preprocess_cfg(encoder.clip).get("resize_mode") or "shortest")
    except Exception:  # an encoder stand-in without a CLIP model: CLIP's default
        return "shortest"


@torch.inference_mode()
def photo_patch_tokens(prompted: PromptedViT, images: torch.Tensor,
                       modality: str = "photo") -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised images (B,3,H,W) -> (L2-normalised [CLS] embeddings (B, D), patch tokens (B, N, D)), through
    the branch `modality` uses (the shared prompt for a fine-grained checkpoint). The [CLS] output equals
    `prompted(images, modality)`."""
    return prompted.forward_with_tokens(images, modality)


def explain_photo(encoder: SketchPhotoEncoder, photo: Image.Image, sketch_vector: np.ndarray,
                  max_side: int | None = None) -> Explanation:
    """The similarity map of `photo` (PIL) for a sketch embedding, over the photo (optionally shrunk so its long
    side is at most `max_side`; the map is computed on the model's own view either way)."""
    started = time.perf_counter()
    photo = photo.convert("RGB")
    tensor = encoder.transform(photo).unsqueeze(0).to(encoder.cfg.device)
    cls, tokens = photo_patch_tokens(encoder.prompted, tensor)
    grid = similarity_grid(tokens[0].cpu().numpy(), sketch_vector)
    score = float(cls[0].cpu().numpy() @ np.asarray(sketch_vector, dtype=np.float32))
    shown = photo
    if max_side and max(photo.size) > max_side:
        shown = photo.copy()
        shown.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    box = model_view_box(shown.size, resize_mode_of(encoder))
    image = overlay(shown, grid, box)
    cropped = box[0] > 0 or box[1] > 0 or box[2] < shown.width or box[3] < shown.height
    margins = "; the dimmed margins were cropped away before encoding" if cropped else ""
    caption = CAPTION.format(lo=float(grid.min()), hi=float(grid.max()), score=score, margins=margins)
    seconds = time.perf_counter() - started
    log.debug("explained a %dx%d photo in %.1f ms", photo.width, photo.height, seconds * 1000)
    return Explanation(image=image, caption=caption, grid=grid, crop_box=box, seconds=seconds)


__all__ = ["Explanation", "colour_map", "explain_photo", "model_view_box", "overlay", "photo_patch_tokens",
           "similarity_grid"]
