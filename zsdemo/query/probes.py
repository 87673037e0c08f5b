"""Built-in probe sketches, and the check that a query path stays close to fp32 on them."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import nn

from zsdemo.model.encoder import SketchPhotoEncoder
from zsdemo.model.prompts import PromptedViT


def probe_sketches(n: int, size: int) -> list[Image.Image]:
    """Deterministic line drawings (black on white) used to check a reduced-precision query path."""
    images = []
    for i in range(n):
        image = Image.new("RGB", (size, size), "white")
        draw = ImageDraw.Draw(image)
        a, b, w = size // 8 + 3 * i, size - size // 8 - 5 * i, max(2, size // 40)
        draw.ellipse((a, a + 2 * i, b, b), outline="black", width=w)
        draw.line((a, b, b - 4 * i, a), fill="black", width=w)
        if i % 2:
            draw.rectangle((size // 3, size // 3, 2 * size // 3, size // 2 + 3 * i), outline="black", width=w)
        images.append(image)
    return images


def image_hw(prompted: PromptedViT) -> tuple[int, int]:
    size = getattr(prompted.visual, "image_size", 224)
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def default_probe_images(prompted: PromptedViT, n: int = 4) -> torch.Tensor:
    """Probe sketches normalised with CLIP's mean/std (when the caller has no transform at hand)."""
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    h, _ = image_hw(prompted)
    mean, std = torch.tensor(OPENAI_DATASET_MEAN)[:, None, None], torch.tensor(OPENAI_DATASET_STD)[:, None, None]
    images = [torch.from_numpy(np.asarray(im, np.float32) / 255.0).permute(2, 0, 1) for im in probe_sketches(n, h)]
    return (torch.stack(images) - mean) / std


@torch.inference_mode()
def min_cosine(model: nn.Module, reference: nn.Module, images: torch.Tensor) -> float:
    """Min over `images` of the cosine between `model`'s and `reference`'s sketch embeddings."""
    return float(F.cosine_similarity(model(images, "sketch").float(), reference(images, "sketch").float()).min())


def encoder_probe_images(encoder: SketchPhotoEncoder, n: int = 4) -> torch.Tensor:
    """The probe sketches through `encoder`'s own transform: what its query paths are checked on."""
    return torch.stack([encoder.transform(im) for im in probe_sketches(n, encoder.image_size)])
