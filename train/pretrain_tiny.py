"""A stand-in for CLIP pretraining at tiny scale: train the whole `zsdemo-tiny-vit` on synthetic PHOTOS.

    python train/pretrain_tiny.py OUT.safetensors [--steps 3000] [--seed 1] [--photos-per-class 1000]

Both towers train from random init with a CLIP-style image-text objective: every photo's embedding is
scored against the text embeddings of "a photo of a {shape}" for all pretraining shapes (logit_scale
learned, as in CLIP), symmetric cross-entropy over image->text and text->image directions. No sketch is
ever seen, so the sketch->photo domain gap is left for the prompts to bridge. As for real CLIP, whose
web photos cover the Sketchy/TU-Berlin "unseen" classes, the pretraining photos cover every synthetic
shape by default (`--exclude` drops some); they are drawn with their own seed, so no image is shared
with the prompt-learning data (which uses seed 0).

The result is a state dict of the whole open_clip model; it loads through the engine's local-weights
path: `create_clip("zsdemo-tiny-vit", OUT)`, `--pretrained OUT`, or `pretrained=OUT` in a train config.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import logging
import math
import random
import time
from collections.abc import Sequence
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from train.config import TEXT_TEMPLATE
from train.synthetic import SHAPES, _instance, render_photo
from train.transforms import augment, eval_transform
from zsdemo.model.encoder import create_clip

log = logging.getLogger("train.pretrain_tiny")
MODEL = "zsdemo-tiny-vit"


def photo_pool(shapes: Sequence[str], per_class: int, seed: int, transform: Any,
               size: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, H, W) photos after a light random crop/flip and the engine's eval transform, and their labels."""
    rng = random.Random(seed)
    images, labels = [], []
    for label, shape in enumerate(shapes):
        for _ in range(per_class):
            photo = render_photo(shape, _instance(rng), size, rng)
            images.append(transform(augment(photo, rng, scale=(0.7, 1.0))))
            labels.append(label)
    return torch.stack(images), torch.tensor(labels)


def instance_pool(shapes: Sequence[str], per_class: int, seed: int, transform: Any,
                  size: int = 96) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Like photo_pool, plus a second rendering of every instance: same geometry (shape, position, scale,
    rotation, aspect, mark) and the same crop/flip, other background and fill colours. Returns (A, B, labels)."""
    rng = random.Random(seed)
    views_a, views_b, labels = [], [], []
    for label, shape in enumerate(shapes):
        for _ in range(per_class):
            inst = _instance(rng)
            photo_a, photo_b = render_photo(shape, inst, size, rng), render_photo(shape, inst, size, rng)
            state = rng.getstate()  # one crop box and flip for both views: only the colours differ
            views_a.append(transform(augment(photo_a, rng, scale=(0.7, 1.0))))
            rng.setstate(state)
            views_b.append(transform(augment(photo_b, rng, scale=(0.7, 1.0))))
            labels.append(label)
    return torch.stack(views_a), torch.stack(views_b), torch.tensor(labels)


def instance_nce(model: torch.nn.Module, view_a: torch.Tensor, view_b: torch.Tensor,
                 temperature: float = 0.1) -> torch.Tensor:
    """Symmetric InfoNCE: each photo's other rendering is its positive, the batch's other instances negatives."""
    a = model.encode_image(view_a, normalize=True)
    b = model.encode_image(view_b, normalize=True)
    logits = a @ b.T / temperature
    target = torch.arange(len(a), device=a.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def clip_loss(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
              tokens: torch.Tensor) -> torch.Tensor:
    """Symmetric CE between image embeddings and the class-text embeddings (text->image: mean over each class's images)."""
    img = model.encode_image(images, normalize=True)
    txt = model.encode_text(tokens, normalize=True)
    logits = model.logit_scale.exp() * img @ txt.T  # (B, C)
    loss_i = F.cross_entropy(logits, labels)
    present = labels.unique()
    # text -> image: each present class should pick out its own images among the batch
    log_p = logits.T[present].log_softmax(dim=1)  # (C', B)
    mask = (labels[None, :] == present[:, None]).float()
    loss_t = -(log_p * mask).sum(1).div(mask.sum(1)).mean()
    return (loss_i + loss_t) / 2


def pretrain(out: str | Path | None, steps: int = 3000, seed: int = 1, photos_per_class: int = 1000,
             batch_size: int = 64, lr: float = 2e-3, shapes: Sequence[str] = SHAPES,
             instance_weight: float = 0.0) -> dict[str, Any]:
    """Train the tiny CLIP on photos; write its state dict to `out` (.safetensors) when given.

    instance_weight > 0 (opt-in) adds instance_weight x instance_nce between two renderings of each photo
    instance that differ only in colours: the embedding must then keep instance geometry, which the class-text
    loss alone teaches it to discard. Still photos only, no sketch.

    Returns {"path", "losses" (one per step), "train_acc" (final, on the pool), "heldout_acc" (on 50 fresh photos
    per shape), "seconds"}.
    """
    start = time.perf_counter()
    torch.manual_seed(seed)
    model = create_clip(MODEL, "none").train()
    transform = eval_transform(model)
    if instance_weight > 0:
        images, images_b, labels = instance_pool(shapes, photos_per_class, seed, transform)
    else:
        images, labels = photo_pool(shapes, photos_per_class, seed, transform)
        images_b = None
    tokens = open_clip.get_tokenizer(MODEL)([TEXT_TEMPLATE.format(s) for s in shapes])
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    g = torch.Generator().manual_seed(seed)
    losses = []
    for step in range(steps):
        idx = torch.randint(0, len(images), (batch_size,), generator=g)
        batch = images[idx]
        flip = torch.rand(batch_size, generator=g) < 0.5
        batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
        loss = clip_loss(model, batch, labels[idx], tokens)
        if images_b is not None:
            batch_b = torch.where(flip[:, None, None, None], images_b[idx].flip(-1), images_b[idx])
            loss = loss + instance_weight * instance_nce(model, batch, batch_b)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        if (step + 1) % 50 == 0:
            log.info("step %d/%d loss %.4f", step + 1, steps, sum(losses[-50:]) / 50)
    model.eval()
    acc = zero_shot_accuracy(model, images, labels, tokens)
    held_images, held_labels = photo_pool(shapes, 50, seed + 10_000, transform)  # fresh photos, never trained on
    held_acc = zero_shot_accuracy(model, held_images, held_labels, tokens)
    path = None
    if out is not None:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
                  metadata={"model": MODEL, "steps": str(steps), "seed": str(seed), "shapes": ",".join(shapes),
                            "objective": "CLIP-style photo/class-text contrastive, photos only"
                            + (f" + {instance_weight} x instance InfoNCE (colour-changed renderings)" if instance_weight > 0 else "")})
    seconds = time.perf_counter() - start
    log.info("pretrained %s: %d steps, final loss %.4f, zero-shot photo accuracy: training pool %.3f, held-out %.3f; "
             "%.0f s -> %s", MODEL, steps, sum(losses[-20:]) / min(20, len(losses)), acc, held_acc, seconds, path)
    return {"path": path, "losses": losses, "train_acc": acc, "heldout_acc": held_acc, "seconds": seconds}


@torch.no_grad()
def zero_shot_accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, tokens: torch.Tensor) -> float:
    """Fraction of photos whose nearest class text is their own class."""
    txt = model.encode_text(tokens, normalize=True)
    pred = torch.cat([(model.encode_image(b, normalize=True) @ txt.T).argmax(1) for b in images.split(256)])
    return float((pred == labels).float().mean())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description="Pretrain the tiny open_clip model on synthetic photos (CLIP stand-in).")
    parser.add_argument("out", help="output .safetensors file")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--photos-per-class", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--instance-weight", type=float, default=0.0,
                        help="opt-in: weight of the instance InfoNCE term between colour-changed renderings (0 = off)")
    parser.add_argument("--exclude", nargs="*", default=[], help="shapes left out of pretraining")
    args = parser.parse_args(argv)
    if not args.out.endswith(".safetensors"):
        parser.error("OUT must end in .safetensors (the engine loads weights files by suffix)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    shapes = [s for s in SHAPES if s not in set(args.exclude)]
    return pretrain(args.out, args.steps, args.seed, args.photos_per_class, lr=args.lr, shapes=shapes,
                    instance_weight=args.instance_weight)


if __name__ == "__main__":
    main()
