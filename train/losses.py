"""Loss terms of Sain et al. (CVPR 2023), on L2-normalised features; d(a, b) = 1 - cos(a, b).

Category-level:  L = L_tri + cls_weight * (L_cls(sketch) + L_cls(photo))
Fine-grained:    L = L_hard_tri + cls_weight * (L_cls(sketch) + L_cls(photo)) + delta_weight * L_delta + ps_weight * L_ps
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from train.config import DEFAULTS

# Every default comes from the training config (train/config.py: DEFAULTS); fit.py always passes the config's values.

def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise 1 - cos(a_i, b_i) for (N, D) tensors (normalised here, so unnormalised input is fine)."""
    return 1.0 - (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1)


def triplet_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                 margin: float = DEFAULTS.margin) -> torch.Tensor:
    """mean_i max(0, margin + d(a_i, p_i) - d(a_i, n_i))."""
    return F.relu(margin + cosine_distance(anchor, positive) - cosine_distance(anchor, negative)).mean()


def classification_loss(features: torch.Tensor, text_features: torch.Tensor, labels: torch.Tensor,
                        logit_scale: float | torch.Tensor) -> torch.Tensor:
    """Cross-entropy of softmax(logit_scale * cos(f, t_c)) over the seen classes' text embeddings."""
    logits = logit_scale * F.normalize(features, dim=-1) @ F.normalize(text_features, dim=-1).T
    return F.cross_entropy(logits, labels)


DELTA_FORMS = ("paired", "sorted")


def delta_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, n_classes: int,
               tau: float = DEFAULTS.delta_tau, form: str = DEFAULTS.delta_form) -> torch.Tensor:
    """L_delta: uniform relative separation across categories.

    The batch holds n_classes contiguous blocks of Q triplets. For block c, D_c = softmax over its Q
    triplets of delta / tau, delta = d(s, p+) - d(s, p-). L = mean over ordered pairs i != j of KL(D_i || D_j).
    Gradients flow through both arguments of each KL (the paper does not say; our choice).
    tau = 1 is the formula as printed (the default is the training config's delta_tau); cosine deltas span only about +-0.2, where that softmax is nearly
    flat (KL and its gradient scale roughly with 1 / tau^2), hence the temperature.

    form "paired" (as printed): the q-th triplet of class i is compared with the q-th of class j, so the value
    depends on the order of the triplets inside each block, which the sampler draws arbitrarily.
    form "sorted": each block's deltas are sorted before the softmax, so KL compares the distributions'
    shapes (quantile by quantile) and is invariant to the order of triplets within a class.
    """
    if form not in DELTA_FORMS:
        raise ValueError(f"delta form must be one of {DELTA_FORMS}, not {form!r}")
    delta = cosine_distance(anchor, positive) - cosine_distance(anchor, negative)
    if delta.numel() % n_classes:
        raise ValueError(f"batch of {delta.numel()} triplets is not {n_classes} equal class blocks")
    if n_classes < 2:
        return delta.sum() * 0.0
    blocks = delta.view(n_classes, -1)
    if form == "sorted":
        blocks = torch.sort(blocks, dim=1).values  # differentiable: gradients follow the sorted positions
    log_d = F.log_softmax(blocks / tau, dim=1)  # (P, Q)
    d = log_d.exp()
    # kl[i, j] = sum_q D_i[q] (log D_i[q] - log D_j[q])
    kl = (d * log_d).sum(1, keepdim=True) - d @ log_d.T
    off_diagonal = ~torch.eye(n_classes, dtype=torch.bool, device=kl.device)
    return kl[off_diagonal].mean()


def category_losses(sketch: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, labels: torch.Tensor,
                    negative_labels: torch.Tensor, text_features: torch.Tensor, logit_scale: float,
                    margin: float = DEFAULTS.margin, cls_weight: float = DEFAULTS.cls_weight) -> dict[str, torch.Tensor]:
    """Category-level objective. Classification covers the sketches and all photos (positives and negatives)."""
    tri = triplet_loss(sketch, positive, negative, margin)
    cls_s = classification_loss(sketch, text_features, labels, logit_scale)
    cls_p = classification_loss(torch.cat([positive, negative]), text_features, torch.cat([labels, negative_labels]), logit_scale)
    return {"loss": tri + cls_weight * (cls_s + cls_p), "triplet": tri, "cls_sketch": cls_s, "cls_photo": cls_p}


def fine_grained_losses(sketch: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, labels: torch.Tensor,
                        ps_sketch: torch.Tensor, ps_positive: torch.Tensor, ps_negative: torch.Tensor,
                        text_features: torch.Tensor, logit_scale: float, n_classes: int,
                        margin: float = DEFAULTS.margin, cls_weight: float = DEFAULTS.cls_weight,
                        delta_weight: float = DEFAULTS.delta_weight, ps_weight: float = DEFAULTS.ps_weight,
                        ps_margin: float = DEFAULTS.ps_margin, delta_tau: float = DEFAULTS.delta_tau,
                        delta_form: str = DEFAULTS.delta_form) -> dict[str, torch.Tensor]:
    """Fine-grained objective. `negative` is another photo of the anchor's class (hard triplet);
    the patch-shuffle negative is the paired photo under a different permutation."""
    tri = triplet_loss(sketch, positive, negative, margin)
    cls_s = classification_loss(sketch, text_features, labels, logit_scale)
    cls_p = classification_loss(torch.cat([positive, negative]), text_features, torch.cat([labels, labels]), logit_scale)
    dl = delta_loss(sketch, positive, negative, n_classes, delta_tau, delta_form)
    ps = triplet_loss(ps_sketch, ps_positive, ps_negative, ps_margin)
    total = tri + cls_weight * (cls_s + cls_p) + delta_weight * dl + ps_weight * ps
    return {"loss": total, "hard_triplet": tri, "cls_sketch": cls_s, "cls_photo": cls_p, "delta": dl, "patch_shuffle": ps}


def term_weights(setting: str, cls_weight: float = DEFAULTS.cls_weight, delta_weight: float = DEFAULTS.delta_weight,
                 ps_weight: float = DEFAULTS.ps_weight) -> dict[str, float]:
    """Weight of each loss term in the total (the keys of category_losses / fine_grained_losses)."""
    if setting == "category":
        return {"triplet": 1.0, "cls_sketch": cls_weight, "cls_photo": cls_weight}
    return {"hard_triplet": 1.0, "cls_sketch": cls_weight, "cls_photo": cls_weight, "delta": delta_weight,
            "patch_shuffle": ps_weight}


def term_gradient_norms(losses: dict[str, torch.Tensor], weights: dict[str, float],
                        embeddings: tuple[torch.Tensor, ...]) -> dict[str, float]:
    """||d(weight * term) / d(embeddings)|| for each term: how hard each term pulls on the features.

    Only the loss graph is differentiated (the embeddings are the backbone's outputs), so this costs
    microseconds, not a backward pass through the ViT; the graph is kept for the real backward.
    """
    inputs = [e for e in embeddings if e.requires_grad]
    out: dict[str, float] = {}
    for name, weight in weights.items():
        term = losses[name]
        if not term.requires_grad:
            out[name] = 0.0
            continue
        grads = torch.autograd.grad(weight * term, inputs, retain_graph=True, allow_unused=True)
        out[name] = float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None) or torch.zeros(())))
    return out
