"""Retrieval metrics against hand-computed rankings, the SAKE reference code and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from train.metrics import average_precision, category_metrics, fine_grained_accuracy, markdown_table, precision_at_k


def sake_reference_ap(scores: np.ndarray, gt_labels: np.ndarray, inst_id: int, top: int | None) -> float:
    """SAKE's eval_AP_inner + VOCap (github.com/qliu24/SAKE, utils), transcribed loop by loop."""
    pos_flag = gt_labels == inst_id
    tot = scores.shape[0]
    tot_pos = np.sum(pos_flag)
    sort_idx = np.argsort(-scores, kind="stable")
    tp = pos_flag[sort_idx]
    fp = np.logical_not(tp)
    if top is not None:
        top = min(top, tot)
        tp, fp = tp[:top], fp[:top]
        tot_pos = min(top, tot_pos)
    fp, tp = np.cumsum(fp), np.cumsum(tp)
    rec, prec = tp / tot_pos, tp / (tp + fp)
    mrec = np.append(np.append(0, rec), 1)
    mpre = np.append(np.append(0, prec), 0)
    for ii in range(len(mpre) - 2, -1, -1):
        mpre[ii] = max(mpre[ii], mpre[ii + 1])
    msk = [i != j for i, j in zip(mrec[1:], mrec[0:-1], strict=True)]
    return float(np.sum((mrec[1:][msk] - mrec[0:-1][msk]) * mpre[1:][msk]))


def test_conventions_differ_025_vs_1():
    # one hit at rank 1 of the top 4, R = 4 relevant photos in the gallery
    rel = np.array([1, 0, 0, 0, 1, 1, 1], dtype=bool)
    assert average_precision(rel, 4, k=4, convention="sake")[0] == pytest.approx(0.25, abs=1e-9)
    assert average_precision(rel, 4, k=4, convention="torchmetrics")[0] == pytest.approx(1.0, abs=1e-9)


def test_hand_computed_rankings():
    # precisions at the hits 1, 2/3, 3/5 (already decreasing: interpolation changes nothing)
    rel = np.array([1, 0, 1, 0, 1], dtype=bool)
    expected = (1 + 2 / 3 + 3 / 5) / 3
    assert average_precision(rel, 3, convention="sake")[0] == pytest.approx(expected, abs=1e-9)
    assert average_precision(rel, 3, convention="torchmetrics")[0] == pytest.approx(expected, abs=1e-9)
    # interpolation matters: hits at ranks 2 and 3 -> precisions 1/2, 2/3; VOC takes max over later ranks
    rel = np.array([0, 1, 1], dtype=bool)
    assert average_precision(rel, 2, convention="sake")[0] == pytest.approx(2 / 3, abs=1e-9)
    assert average_precision(rel, 2, convention="torchmetrics")[0] == pytest.approx((1 / 2 + 2 / 3) / 2, abs=1e-9)
    # AP@3 with R = 10 > k: SAKE denominator min(3, 10) = 3, torchmetrics denominator = 2 hits
    rel = np.array([1, 0, 1, 1, 1], dtype=bool)
    assert average_precision(rel, 10, k=3, convention="sake")[0] == pytest.approx((1 + 2 / 3) / 3, abs=1e-9)
    assert average_precision(rel, 10, k=3, convention="torchmetrics")[0] == pytest.approx((1 + 2 / 3) / 2, abs=1e-9)
    # no hit in the top k
    rel = np.array([0, 0, 1], dtype=bool)
    assert average_precision(rel, 1, k=2, convention="sake")[0] == 0.0
    assert average_precision(rel, 1, k=2, convention="torchmetrics")[0] == 0.0
    assert precision_at_k(np.array([1, 0, 1, 1], dtype=bool), 2)[0] == pytest.approx(0.5, abs=1e-9)
    assert precision_at_k(np.array([1, 0, 1, 1], dtype=bool), 4)[0] == pytest.approx(0.75, abs=1e-9)


def _random_retrieval(seed: int, n_q: int = 40, n_g: int = 300, n_cls: int = 5, dim: int = 16):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_cls, dim, generator=g)
    ql, gl = torch.randint(0, n_cls, (n_q,), generator=g), torch.randint(0, n_cls, (n_g,), generator=g)
    q = torch.nn.functional.normalize(centres[ql] + 1.5 * torch.randn(n_q, dim, generator=g), dim=-1)
    gal = torch.nn.functional.normalize(centres[gl] + 1.5 * torch.randn(n_g, dim, generator=g), dim=-1)
    return q, ql, gal, gl


@pytest.mark.parametrize("seed", [0, 1])
def test_against_sklearn_and_sake_reference(seed):
    q, ql, gal, gl = _random_retrieval(seed)
    scores = (q @ gal.T).numpy().astype(np.float64)
    sk = np.mean([average_precision_score(gl.numpy() == ql[i].item(), scores[i]) for i in range(len(q))])
    sake_all = np.mean([sake_reference_ap(scores[i], gl.numpy(), ql[i].item(), None) for i in range(len(q))])
    sake_200 = np.mean([sake_reference_ap(scores[i], gl.numpy(), ql[i].item(), 200) for i in range(len(q))])
    p100 = np.mean([(gl.numpy()[np.argsort(-scores[i], kind="stable")[:100]] == ql[i].item()).mean() for i in range(len(q))])
    tm = category_metrics(q, ql, gal, gl, convention="torchmetrics", chunk=7)
    sake = category_metrics(q, ql, gal, gl, convention="sake", chunk=7)
    assert tm["mAP@all"] == pytest.approx(sk, abs=1e-6)  # non-interpolated AP on the full ranking = scikit-learn
    assert sake["mAP@all"] == pytest.approx(sake_all, abs=1e-6)
    assert sake["mAP@200"] == pytest.approx(sake_200, abs=1e-6)
    assert sake["P@100"] == pytest.approx(p100, abs=1e-9) and tm["P@100"] == pytest.approx(p100, abs=1e-9)
    assert sake["mAP@all"] >= tm["mAP@all"] - 1e-9  # interpolation never lowers AP
    assert 0.25 < sk < 0.95  # neither trivial nor perfect


def test_fine_grained_accuracy_galleries():
    # 2 queries; gallery of 4 photos (classes 0,0,1,1). Query 0 pairs photo 1, query 1 pairs photo 2.
    gallery = torch.eye(4)
    g_labels = torch.tensor([0, 0, 1, 1])
    queries = torch.tensor([[0.9, 0.5, 0.0, 0.0],   # photo 0 beats its pair (photo 1): rank 2 in both galleries
                            [0.0, 0.0, 0.5, 0.0]])  # pair photo 2 ranks first
    queries[1, 0] = 0.7  # ...except photo 0 (other class) beats it in the unseen gallery
    pairs, q_labels = torch.tensor([1, 2]), torch.tensor([0, 1])
    unseen = fine_grained_accuracy(queries, pairs, q_labels, gallery, g_labels, "unseen", ks=(1, 2))
    category = fine_grained_accuracy(queries, pairs, q_labels, gallery, g_labels, "category", ks=(1, 2))
    assert unseen == {"Acc@1": 0.0, "Acc@2": 1.0}
    assert category == {"Acc@1": 0.5, "Acc@2": 1.0}


def test_markdown_table_sits_beside_paper_numbers():
    table = markdown_table("sketchy", {"this run": {"mAP@200": 0.5, "P@200": 0.6, "mAP@all": 0.4}})
    assert "| this run | 0.500 | 0.600 |" in table and "| Ours (paper) | 0.723 | 0.725 |" in table
    fg = markdown_table("sketchy_fg", {"run": {"Acc@1": 12.5, "Acc@5": 40.0}})
    assert "| Ours (paper) | 28.68 | 62.34 |" in fg


def test_fine_grained_table_shows_both_galleries_and_names_the_compared_one():
    from train.config import load_config
    from train.eval import table_for

    result = {"setting": "fine_grained", "n_queries": 10, "n_gallery": 40,
              "metrics_unseen_gallery": {"Acc@1": 10.0, "Acc@5": 30.0, "Acc@10": 40.0},
              "metrics_category_gallery": {"Acc@1": 20.0, "Acc@5": 60.0, "Acc@10": 80.0}}
    cfg = load_config(None, ["setting=fine_grained", "benchmark=sketchy_fg"])
    table = table_for(result, cfg, "run")
    assert "| run, gallery: all unseen-class photos | 10.00 | 30.00 |" in table
    assert "| run, gallery: photos of the sketch's class | 20.00 | 60.00 |" in table
    assert "| Ours (paper) | 28.68 | 62.34 |" in table and "fg_gallery=unseen" in table
    assert "fg_gallery=category" in table_for(result, load_config(None, ["setting=fine_grained", "fg_gallery=category"]), "run")
