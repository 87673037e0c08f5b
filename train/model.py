"""The trainable wrapper around the engine's PromptedViT, frozen text class embeddings, and prompt export."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import open_clip
import torch
from torch import nn

from train.config import DEFAULTS
from zsdemo.model.encoder import create_clip
from zsdemo.model.preprocess import PREPROCESS_VERSION
from zsdemo.model.prompts import PromptedViT, PromptSpec, save_checkpoint

log = logging.getLogger(__name__)


def spec_for(setting: str, n_prompts: int = DEFAULTS.n_prompts, deep: bool = DEFAULTS.deep,
             layernorm: bool = DEFAULTS.layernorm) -> PromptSpec:
    """Category-level: separate sketch/photo prompts (and LayerNorms); fine-grained: one shared set."""
    return PromptSpec(n_prompts=n_prompts, deep=deep, shared=setting == "fine_grained", layernorm=layernorm)


class StepModel(nn.Module):
    """All images of a step in, all embeddings out, in ONE forward (so DDP sees each parameter used once per step).

    Category setting: sketches through the sketch branch, positives+negatives through the photo branch.
    Fine-grained (shared prompt): everything, patch-shuffled views included, in one batched call.
    Its state_dict holds only the learned tensors, so Accelerate checkpoints stay small (no frozen CLIP copy).
    """

    def __init__(self, prompted: PromptedViT) -> None:
        super().__init__()
        self.prompted = prompted

    def forward(self, sketch: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                ps_sketch: torch.Tensor | None = None, ps_positive: torch.Tensor | None = None,
                ps_negative: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        n = sketch.shape[0]
        if self.prompted.spec.shared:
            views = [sketch, positive, negative] + [v for v in (ps_sketch, ps_positive, ps_negative) if v is not None]
            return tuple(self.prompted(torch.cat(views), "sketch").split(n))
        s = self.prompted(sketch, "sketch")
        p = self.prompted(torch.cat([positive, negative]), "photo")
        return (s, *p.split(n))

    def trainable_names(self) -> list[str]:
        return [name for name, p in self.named_parameters() if p.requires_grad]

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:  # type: ignore[override]
        full = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", args[1] if len(args) > 1 else "")
        keep = {prefix + n for n in self.trainable_names()}
        return type(full)((k, v) for k, v in full.items() if k in keep)

    def load_state_dict(self, state_dict: dict[str, torch.Tensor], strict: bool = True, assign: bool = False):  # type: ignore[override]
        keep = set(self.trainable_names())
        if strict and set(state_dict) != keep:
            raise KeyError(f"learned-state mismatch: missing {sorted(keep - set(state_dict))[:4]}, "
                           f"unexpected {sorted(set(state_dict) - keep)[:4]}")
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        result.missing_keys[:] = [k for k in result.missing_keys if k in keep]  # frozen CLIP weights are not saved
        return result


def build_model(model_name: str, pretrained: str, spec: PromptSpec, seed: int = 0) -> tuple[nn.Module, StepModel]:
    """(frozen CLIP, trainable StepModel). Prompt init is seeded, so every rank starts identical."""
    clip = create_clip(model_name, pretrained)
    for p in clip.parameters():
        p.requires_grad_(False)
    prompted = PromptedViT(clip.visual, spec, generator=torch.Generator().manual_seed(seed))
    return clip, StepModel(prompted)


def prompt_drift(prompted: PromptedViT, initial: dict[str, torch.Tensor]) -> dict[str, float]:
    """||v - v0|| / ||v0|| per prompt branch: how far training has moved the prompts from their init."""
    return {f"prompts.{branch}": float((p.detach() - initial[branch]).norm() / initial[branch].norm().clamp_min(1e-12))
            for branch, p in prompted.prompts.items()}


@torch.no_grad()
def prompt_scale_report(prompted: PromptedViT, images: torch.Tensor) -> dict[str, Any]:
    """Mean prompt-token norm per branch against the median norm of the real tokens after ln_pre, where the
    prompts join them (our insertion point). A ratio far from 1 with real weights means the prompts start
    off-scale: they would dominate attention, or be ignored."""
    tokens = prompted.embed_tokens(images.to(next(prompted.parameters()).device))
    token_norm = float(tokens.float().norm(dim=-1).median())
    prompt_norm = {b: float(p.detach()[0].float().norm(dim=-1).mean()) for b, p in prompted.prompts.items()}
    return {"prompt_norm": prompt_norm, "token_norm_median": token_norm,
            "ratio": {b: v / max(token_norm, 1e-12) for b, v in prompt_norm.items()}}


def count_trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


@torch.no_grad()
def class_text_embeddings(clip: nn.Module, model_name: str, class_names: list[str],
                          template: str = DEFAULTS.text_template, batch_size: int = 256) -> torch.Tensor:
    """Frozen text embeddings of the seen classes, L2-normalised, (C, D). Computed once per run."""
    tokenizer = open_clip.get_tokenizer(model_name)
    texts = [template.format(name.replace("_", " ")) for name in class_names]
    out = [clip.encode_text(tokenizer(texts[i:i + batch_size]), normalize=True).float()
           for i in range(0, len(texts), batch_size)]
    return torch.cat(out)


def export_prompts(path: str | Path, prompted: PromptedViT, model_name: str, pretrained: str,
                   extra: dict[str, Any] | None = None) -> Path:
    """Write the engine's prompt checkpoint (loads unchanged in the app and `zsdemo index --prompts`)."""
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (extra or {}).items()}
    return save_checkpoint(path, prompted, model_name, pretrained, PREPROCESS_VERSION, extra=meta)
