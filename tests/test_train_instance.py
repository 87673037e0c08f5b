"""Opt-in instance-aware pretraining of the tiny backbone: the two views share geometry, differ in colour."""

from __future__ import annotations

import torch

from train.pretrain_tiny import MODEL, instance_nce, instance_pool, pretrain
from train.synthetic import SHAPES
from zsdemo.model.encoder import create_clip


def test_instance_views_differ_in_colour_and_nce_prefers_the_true_pair():
    model = create_clip(MODEL, "none").eval()
    from train.transforms import eval_transform

    a, b, labels = instance_pool(SHAPES[:2], 3, 0, eval_transform(model))
    assert a.shape == b.shape and labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert not torch.allclose(a, b)
    torch.manual_seed(0)
    loss = instance_nce(model, a, b)
    assert torch.isfinite(loss) and float(loss) > 0


def test_instance_weight_runs_and_records_the_objective(tmp_path):
    torch.set_num_threads(1)
    r = pretrain(tmp_path / "w.safetensors", steps=3, photos_per_class=4, batch_size=8, shapes=SHAPES[:3],
                 instance_weight=1.0)
    assert len(r["losses"]) == 3 and all(loss == loss for loss in r["losses"])
    from safetensors import safe_open

    with safe_open(str(tmp_path / "w.safetensors"), framework="pt") as f:
        assert "instance InfoNCE" in f.metadata()["objective"]
