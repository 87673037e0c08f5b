"""Retrieval metrics against hand-computed rankings, the SAKE reference code and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from train.metrics import (
    average_precision,
    average_rows,
    category_metrics,
    fine_grained_accuracy,
    markdown_table,
    precision_at_k,
    rank_gallery,
)


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
    scores = (q.double() @ gal.double().T).numpy()  # the metrics rank float64 similarities
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


# ---- ties and averaging -----------------------------------------------------------------------
def test_constant_embedding_scores_chance_not_perfect():
    # a collapsed encoder: every sketch and photo has the same embedding
    n_g, n_q = 12, 6
    gallery = torch.nn.functional.normalize(torch.ones(n_g, 8), dim=-1)
    queries = torch.nn.functional.normalize(torch.ones(n_q, 8), dim=-1)
    g_labels = torch.arange(n_g) // 4  # 3 classes of 4
    pairs = torch.tensor([0, 3, 5, 6, 9, 11])
    q_labels = g_labels[pairs]
    random_ = fine_grained_accuracy(queries, pairs, q_labels, gallery, g_labels, "unseen", ks=(1, 5), ties="random")
    assert random_["Acc@1"] == pytest.approx(1 / n_g, abs=1e-9) and random_["Acc@5"] == pytest.approx(5 / n_g, abs=1e-9)
    category = fine_grained_accuracy(queries, pairs, q_labels, gallery, g_labels, "category", ks=(1,), ties="random")
    assert category["Acc@1"] == pytest.approx(1 / 4, abs=1e-9)  # chance in the own-class gallery of 4
    pessimistic = fine_grained_accuracy(queries, pairs, q_labels, gallery, g_labels, "unseen", ks=(1, 12), ties="pessimistic")
    assert pessimistic == {"Acc@1": 0.0, "Acc@12": 1.0}
    # the old rule (rank = 1 + strictly better) gave the collapsed encoder 100 %
    assert fine_grained_accuracy(queries, pairs, q_labels, gallery, g_labels, ks=(1,), ties="optimistic")["Acc@1"] == 1.0


def test_near_ties_from_float_noise_count_as_ties():
    from train.metrics import TIE_EPS, hit_probability, paired_ranks

    sims = torch.tensor([[0.5, 0.5 + TIE_EPS / 10, 0.5 - TIE_EPS / 10, 0.5 + 10 * TIE_EPS, 0.1]], dtype=torch.float64)
    better, tied = paired_ranks(sims, torch.tensor([0]))
    assert better.tolist() == [1] and tied.tolist() == [2]
    assert float(hit_probability(better, tied, 2)[0]) == pytest.approx(1 / 3)  # position 2, 3 or 4, uniformly


def test_category_metrics_constant_embedding_is_not_perfect():
    # gallery sorted by class, as the datasets list it: a stable sort on ties used to rank class 0 first for everyone
    g_labels = torch.arange(300) // 100
    q_labels = torch.arange(30) // 10
    gallery = torch.nn.functional.normalize(torch.ones(300, 4), dim=-1)
    queries = torch.nn.functional.normalize(torch.ones(30, 4), dim=-1)
    pess = category_metrics(queries, q_labels, gallery, g_labels, ties="pessimistic")
    opt = category_metrics(queries, q_labels, gallery, g_labels, ties="optimistic")
    rnd = category_metrics(queries, q_labels, gallery, g_labels, ties="random")
    assert opt["P@100"] == pytest.approx(1.0) and opt["mAP@all"] == pytest.approx(1.0)
    # every one of the 200 other-class photos ahead of the 100 relevant ones
    assert pess["P@200"] == 0.0
    assert pess["mAP@all"] == pytest.approx(1 / 3, abs=1e-9)  # VOC interpolation: max later precision, 100 / 300
    tm = category_metrics(queries, q_labels, gallery, g_labels, convention="torchmetrics", ties="pessimistic")
    assert tm["mAP@all"] == pytest.approx(np.mean([i / (200 + i) for i in range(1, 101)]), abs=1e-9)
    assert rnd["P@100"] == pytest.approx(1 / 3, abs=0.03)  # one random order per chunk: chance up to sampling noise
    assert abs(rnd["mAP@all"] - 1 / 3) < 0.05


def test_rank_gallery_pessimistic_puts_relevant_after_ties():
    gallery = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    q = torch.tensor([[1.0, 0.0]])
    relevant = torch.tensor([[True, False, False, False]])
    assert rank_gallery(q, gallery, relevant, "pessimistic").tolist() == [[1, 3, 0, 2]]
    assert rank_gallery(q, gallery, relevant, "optimistic").tolist() == [[0, 1, 3, 2]]
    assert sorted(rank_gallery(q, gallery, None, "random")[0, :3].tolist()) == [0, 1, 3]


def test_averaging_per_query_vs_per_class():
    values = np.array([1.0, 1.0, 1.0, 0.0])
    labels = np.array([0, 0, 0, 1])
    assert average_rows(values, labels, "query") == pytest.approx(0.75)
    assert average_rows(values, labels, "class") == pytest.approx(0.5)
    # through category_metrics: 3 queries of class 0 answered perfectly, 1 of class 1 worst possible
    gallery = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    g_labels = torch.tensor([0, 1])
    queries = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    q_labels = torch.tensor([0, 0, 0, 1])
    by_query = category_metrics(queries, q_labels, gallery, g_labels, ks=(1,), ps=(1,), average="query")
    by_class = category_metrics(queries, q_labels, gallery, g_labels, ks=(1,), ps=(1,), average="class")
    assert by_query["P@1"] == pytest.approx(0.75) and by_class["P@1"] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        average_rows(values, labels, "median")


def test_tables_name_averaging_and_ties():
    from train.config import load_config
    from train.eval import table_for

    cfg = load_config(None, ["benchmark=sketchy", "metric_average=class", "metric_ties=pessimistic"])
    result = {"setting": "category", "convention": "sake", "gallery": "all", "n_queries": 2, "n_gallery": 3,
              "average": cfg.metric_average, "ties": cfg.metric_ties,
              "metrics": {"mAP@all": 0.1, "mAP@200": 0.1, "P@100": 0.1, "P@200": 0.1}}
    table = table_for(result, cfg, "run")
    assert "average=class" in table and "ties=pessimistic" in table
    with pytest.raises(ValueError):
        load_config(None, ["metric_ties=lucky"])
