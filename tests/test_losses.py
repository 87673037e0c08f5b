"""Loss terms on small hand-made tensors with known values, and their gradients."""

from __future__ import annotations

import math

import pytest
import torch

from train.losses import (
    category_losses,
    classification_loss,
    cosine_distance,
    delta_loss,
    fine_grained_losses,
    term_gradient_norms,
    term_weights,
    triplet_loss,
)


def unit(theta: float) -> list[float]:
    return [math.cos(theta), math.sin(theta)]


def test_cosine_distance_known_values():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    b = torch.tensor([[0.0, 3.0], [-1.0, 0.0], [5.0, 0.0]])
    assert torch.allclose(cosine_distance(a, b), torch.tensor([1.0, 2.0, 0.0]), rtol=0, atol=1e-6)


def test_triplet_loss_values_and_gradient():
    anchor = torch.tensor([[1.0, 0.0], [1.0, 0.0]], requires_grad=True)
    pos = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    neg = torch.tensor([[0.0, 1.0], unit(math.pi / 3)], requires_grad=True)
    # row 0: 0.3 + 0 - 1 < 0 -> 0 (satisfied); row 1: 0.3 + 1 - 0.5 = 0.8
    loss = triplet_loss(anchor, pos, neg, margin=0.3)
    assert loss.item() == pytest.approx(0.4, abs=1e-6)
    loss.backward()
    assert torch.count_nonzero(pos.grad[0]) == 0 and torch.count_nonzero(neg.grad[0]) == 0  # inactive triplet
    assert pos.grad[1].abs().sum() > 0 and neg.grad[1].abs().sum() > 0
    # moving the violating positive towards the anchor lowers the loss: gradient points away from the anchor
    assert pos.grad[1, 0] < 0


def test_triplet_margin_matters():
    a, p, n = torch.tensor([unit(0)]), torch.tensor([unit(math.pi / 3)]), torch.tensor([unit(math.pi / 2)])
    # d(a,p) = 0.5, d(a,n) = 1.0 -> max(0, m - 0.5)
    assert triplet_loss(a, p, n, 0.3).item() == pytest.approx(0.0, abs=1e-7)
    assert triplet_loss(a, p, n, 0.8).item() == pytest.approx(0.3, abs=1e-6)


def test_classification_loss_known_values_and_gradient():
    feats = torch.tensor([[1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0])
    loss = classification_loss(feats, text, labels, logit_scale=10.0)
    # row 0: logits (10, 0), label 0 -> log(1 + e^-10); row 1: logits (0, 10), label 0 -> 10 + log(1 + e^-10)
    expected = (math.log1p(math.exp(-10)) + 10 + math.log1p(math.exp(-10))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert feats.grad.abs().sum() > 0


def _delta_batch(thetas: list[float]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Anchor (1,0), negative = anchor (d=0), positive at angle theta: delta = 1 - cos(theta)."""
    n = len(thetas)
    theta = torch.tensor(thetas, requires_grad=True)
    anchor = torch.tensor([[1.0, 0.0]]).repeat(n, 1)
    pos = torch.stack([theta.cos(), theta.sin()], 1)
    return anchor, pos, anchor.clone(), theta


def test_delta_loss_hand_computed():
    # class A: deltas (0, 0) -> D_A = (1/2, 1/2); class B: deltas (1, 0) -> D_B = (e/(1+e), 1/(1+e))
    anchor, pos, neg, theta = _delta_batch([0.0, 0.0, math.pi / 2, 0.0])
    loss = delta_loss(anchor, pos, neg, n_classes=2, tau=1.0, form="paired")  # the formula as printed
    b = [math.e / (1 + math.e), 1 / (1 + math.e)]
    kl_ab = sum(0.5 * math.log(0.5 / q) for q in b)
    kl_ba = sum(q * math.log(q / 0.5) for q in b)
    assert loss.item() == pytest.approx((kl_ab + kl_ba) / 2, rel=1e-5)
    loss.backward()
    assert theta.grad[2].abs() > 0  # gradient reaches the triplet that makes B non-uniform


def test_delta_loss_defaults_are_the_training_config():
    from train.config import DEFAULTS

    anchor, pos, neg, _ = _delta_batch([0.0, 0.6, 0.3, 0.0, 0.2, 0.5])
    explicit = delta_loss(anchor, pos, neg, 2, DEFAULTS.delta_tau, DEFAULTS.delta_form)
    assert delta_loss(anchor, pos, neg, 2).item() == pytest.approx(explicit.item(), rel=1e-7)


def test_delta_loss_zero_when_distributions_match_and_for_one_class():
    anchor, pos, neg, _ = _delta_batch([0.3, 1.0, 0.3, 1.0, 0.3, 1.0])
    assert delta_loss(anchor, pos, neg, n_classes=3).item() == pytest.approx(0.0, abs=1e-7)
    anchor, pos, neg, _ = _delta_batch([0.3, 1.0])
    assert delta_loss(anchor, pos, neg, n_classes=1).item() == 0.0
    with pytest.raises(ValueError):
        delta_loss(anchor, pos, neg, n_classes=3)


def test_category_total_is_weighted_sum():
    g = torch.Generator().manual_seed(0)
    s, p, n, text = (torch.nn.functional.normalize(torch.randn(k, 8, generator=g), dim=-1) for k in (4, 4, 4, 3))
    labels, neg_labels = torch.tensor([0, 1, 2, 0]), torch.tensor([1, 2, 0, 1])
    out = category_losses(s, p, n, labels, neg_labels, text, 100.0, margin=0.3, cls_weight=0.5)
    assert out["loss"].item() == pytest.approx((out["triplet"] + 0.5 * (out["cls_sketch"] + out["cls_photo"])).item(), rel=1e-6)
    expected_photo = classification_loss(torch.cat([p, n]), text, torch.cat([labels, neg_labels]), 100.0)
    assert out["cls_photo"].item() == pytest.approx(expected_photo.item(), rel=1e-6)


def test_fine_grained_total_is_weighted_sum_and_all_terms_carry_gradient():
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(4, 8, generator=g, requires_grad=True) for _ in range(6)]
    text = torch.randn(2, 8, generator=g)
    labels = torch.tensor([0, 0, 1, 1])
    out = fine_grained_losses(*views[:3], labels, *views[3:], text, 100.0, n_classes=2, margin=0.3,
                              cls_weight=0.5, delta_weight=0.1, ps_weight=1.0, ps_margin=0.3)
    total = out["hard_triplet"] + 0.5 * (out["cls_sketch"] + out["cls_photo"]) + 0.1 * out["delta"] + 1.0 * out["patch_shuffle"]
    assert out["loss"].item() == pytest.approx(total.item(), rel=1e-6)
    out["loss"].backward()
    for v in views:
        assert v.grad is not None and v.grad.abs().sum() > 0


def test_delta_temperature_sharpens_small_deltas():
    """Cosine deltas of about +-0.2 give a nearly flat softmax at tau = 1; KL grows about as 1 / tau^2."""
    anchor, pos, neg, _ = _delta_batch([0.0, 0.6, 0.3, 0.0, 0.2, 0.5])  # deltas 0 .. 0.17
    flat = delta_loss(anchor, pos, neg, n_classes=2, tau=1.0).item()
    sharp = delta_loss(anchor, pos, neg, n_classes=2, tau=0.1).item()
    assert 0 < flat < 1e-2 and 30 < sharp / flat < 200  # measured 0.0048 vs 0.53
    # tau is a plain rescaling of delta: tau = 0.5 on delta equals tau = 1 on 2 * delta (hand-computed test above)
    anchor, pos, neg, _ = _delta_batch([0.0, 0.0, math.acos(0.5), 0.0])  # deltas (0, 0), (0.5, 0)
    b = [math.e / (1 + math.e), 1 / (1 + math.e)]
    expected = (sum(0.5 * math.log(0.5 / q) for q in b) + sum(q * math.log(q / 0.5) for q in b)) / 2
    assert delta_loss(anchor, pos, neg, n_classes=2, tau=0.5).item() == pytest.approx(expected, rel=1e-5)


def test_term_gradient_norms_measure_each_weighted_term():
    g = torch.Generator().manual_seed(2)
    views = tuple(torch.randn(8, 16, generator=g, requires_grad=True) for _ in range(6))
    text = torch.randn(2, 16, generator=g)
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    out = fine_grained_losses(*views[:3], labels, *views[3:], text, 100.0, n_classes=2, delta_tau=0.1)
    weights = term_weights("fine_grained", cls_weight=0.5, delta_weight=0.1, ps_weight=0.0)
    sizes = term_gradient_norms(out, weights, views)
    assert set(sizes) == {"hard_triplet", "cls_sketch", "cls_photo", "delta", "patch_shuffle"}
    assert sizes["patch_shuffle"] == 0.0 and sizes["delta"] > 0 and sizes["hard_triplet"] > 0
    manual = torch.autograd.grad(0.1 * out["delta"], views[:3], retain_graph=True)
    assert sizes["delta"] == pytest.approx(float(torch.sqrt(sum((m ** 2).sum() for m in manual))), rel=1e-5)
    out["loss"].backward()  # the graph is still there for the real backward
    assert views[0].grad is not None
    assert set(term_weights("category")) == {"triplet", "cls_sketch", "cls_photo"}


def _delta_triplets(seed: int, p: int = 3, q: int = 4, dim: int = 8):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(p * q, dim, generator=g) for _ in range(3)]


def test_sorted_delta_is_invariant_to_triplet_order_within_a_class():
    from train.losses import delta_loss

    a, p, n = _delta_triplets(0)
    perm = torch.cat([torch.randperm(4, generator=torch.Generator().manual_seed(c)) + 4 * c for c in range(3)])
    assert not torch.equal(perm, torch.arange(12))
    sorted_ = delta_loss(a, p, n, 3, 0.1, "sorted")
    assert float(delta_loss(a[perm], p[perm], n[perm], 3, 0.1, "sorted")) == pytest.approx(float(sorted_), rel=1e-5)
    # the printed ("paired") form changes with the order: that is what the sorted form removes
    paired = delta_loss(a, p, n, 3, 0.1, "paired")
    assert abs(float(delta_loss(a[perm], p[perm], n[perm], 3, 0.1, "paired")) - float(paired)) > 1e-4
    assert float(sorted_) >= 0 and float(paired) >= 0


def test_both_delta_forms_hand_computed_and_carry_gradient():
    from train.losses import delta_loss

    # two classes, Q = 2; anchors equal positives (d+ = 0), negatives chosen so delta = -d(s, n)
    s = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    neg = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # d(s, n) = 1, 0 | 0, 1
    delta = torch.tensor([[-1.0, 0.0], [0.0, -1.0]])
    d = torch.softmax(delta, 1)
    kl01 = float((d[0] * (d[0].log() - d[1].log())).sum())
    kl10 = float((d[1] * (d[1].log() - d[0].log())).sum())
    assert float(delta_loss(s, s, neg, 2, 1.0, "paired")) == pytest.approx((kl01 + kl10) / 2, abs=1e-6)
    assert float(delta_loss(s, s, neg, 2, 1.0, "sorted")) == pytest.approx(0.0, abs=1e-7)  # same shape once sorted
    for form in ("paired", "sorted"):
        a, p, n = (t.requires_grad_() for t in _delta_triplets(1))
        delta_loss(a, p, n, 3, 0.1, form).backward()
        assert float(a.grad.norm()) > 0
    with pytest.raises(ValueError):
        delta_loss(s, s, neg, 2, 1.0, "shuffled")
