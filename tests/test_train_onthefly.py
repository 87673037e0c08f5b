"""Retrieval while drawing: m@A / m@B (Bhunia et al., CVPR 2020) against a hand-worked episode."""

from __future__ import annotations

import pytest
import torch

from train.eval import episode_ranks, on_the_fly_metrics


def test_hand_worked_episode():
    # gallery of 5 photos (one-hot), the sketch pairs photo 0; three drawing steps
    gallery = torch.eye(5)
    steps = [torch.tensor([[0.1, 0.5, 0.3, 0.0, 0.0]]),   # pair ranks 3rd (photos 1, 2 ahead)
             torch.tensor([[0.4, 0.5, 0.0, 0.0, 0.0]]),   # 2nd
             torch.tensor([[0.9, 0.1, 0.0, 0.0, 0.0]])]   # 1st
    better, tied = episode_ranks(steps, gallery, torch.tensor([0]))
    assert better.tolist() == [[2, 1, 0]] and tied.tolist() == [[0, 0, 0]]
    m = on_the_fly_metrics(better, tied, gallery_size=5)
    # percentiles (5 - rank) / 4 = 0.5, 0.75, 1.0 ; 1 / rank = 1/3, 1/2, 1
    assert m["m@A"] == pytest.approx((0.5 + 0.75 + 1.0) / 3, abs=1e-12)
    assert m["m@B"] == pytest.approx((1 / 3 + 1 / 2 + 1) / 3, abs=1e-12)
    assert m["episodes"] == 1 and m["steps"] == 3


def test_blank_canvas_ties_score_chance_not_first():
    # an empty first step: every photo equally similar to the sketch
    gallery = torch.eye(4)
    steps = [torch.zeros(1, 4)]
    better, tied = episode_ranks(steps, gallery, torch.tensor([2]))
    rnd = on_the_fly_metrics(better, tied, 4, "random")
    assert rnd["m@A"] == pytest.approx(0.5, abs=1e-12)  # mean rank 2.5 of 4
    assert rnd["m@B"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4, abs=1e-12)
    assert on_the_fly_metrics(better, tied, 4, "pessimistic")["m@B"] == pytest.approx(0.25)
    assert on_the_fly_metrics(better, tied, 4, "optimistic")["m@A"] == pytest.approx(1.0)
