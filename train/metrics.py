"""Retrieval metrics with explicit conventions (numbers from different conventions are not comparable).

- "sake" (default; SAKE/TVT, the convention of the ZS-SBIR tables the paper copies): rank the whole
  gallery by cosine similarity; AP@k = VOC-interpolated average precision over the top k with recall
  denominator min(k, R), R = number of relevant gallery items; mAP@all = the same over the full ranking.
- "torchmetrics": AP@k = mean precision at the hits inside the top k (denominator = hits in top k),
  not interpolated; AP@all is then scikit-learn's average precision.
P@k = hits in the top k / k under both. Same ranking, both conventions: one hit at rank 1 of the top 4
with R = 4 gives AP@4 = 0.25 (sake) but 1.0 (torchmetrics). The authors' released evaluator is neither
(it samples one photo per query). Fine-grained Acc@k: rank of the one paired photo, in a named gallery.
"""

from __future__ import annotations

import numpy as np
import torch

CONVENTIONS = ("sake", "torchmetrics")


def average_precision(relevance: np.ndarray, n_relevant: np.ndarray | int, k: int | None = None,
                      convention: str = "sake") -> np.ndarray:
    """AP@k for ranked relevance rows.

    relevance: (N, G) or (G,) booleans in rank order (best first); n_relevant: R per row (all relevant
    items in the gallery, not only those ranked); k: cut-off, None = full ranking.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, not {convention!r}")
    rel = np.atleast_2d(np.asarray(relevance, dtype=bool))
    if k is not None:
        rel = rel[:, :k]
    n_rel = np.broadcast_to(np.asarray(n_relevant, dtype=np.float64), (rel.shape[0],))
    hits = np.cumsum(rel, axis=1, dtype=np.float64)
    precision = hits / np.arange(1, rel.shape[1] + 1, dtype=np.float64)
    if convention == "sake":
        interpolated = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
        denominator = n_rel if k is None else np.minimum(float(k), n_rel)
        with np.errstate(invalid="ignore", divide="ignore"):
            ap = (interpolated * rel).sum(1) / denominator
        return np.where(denominator > 0, ap, np.nan)
    denominator = hits[:, -1] if k is not None else n_rel
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (precision * rel).sum(1) / denominator
    return np.where(denominator > 0, ap, 0.0)


def precision_at_k(relevance: np.ndarray, k: int) -> np.ndarray:
    rel = np.atleast_2d(np.asarray(relevance, dtype=bool))
    return rel[:, :k].sum(1) / float(k)


def rank_gallery(queries: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
    """Gallery indices sorted by descending cosine similarity (stable: ties keep gallery order)."""
    sims = queries.float() @ gallery.float().T
    return torch.sort(sims, dim=1, descending=True, stable=True).indices


def category_metrics(query_feats: torch.Tensor, query_labels: torch.Tensor, gallery_feats: torch.Tensor,
                     gallery_labels: torch.Tensor, convention: str = "sake", chunk: int = 256) -> dict[str, float]:
    """mAP@all, mAP@200, P@100, P@200 of sketch queries against the whole photo gallery."""
    gallery_labels = gallery_labels.cpu()
    counts = torch.bincount(gallery_labels, minlength=int(max(gallery_labels.max(), query_labels.max())) + 1)
    sums = {"mAP@all": 0.0, "mAP@200": 0.0, "P@100": 0.0, "P@200": 0.0}
    for start in range(0, len(query_feats), chunk):
        q = query_feats[start:start + chunk]
        ql = query_labels[start:start + chunk].cpu()
        order = rank_gallery(q, gallery_feats).cpu()
        rel = (gallery_labels[order] == ql[:, None]).numpy()
        n_rel = counts[ql].numpy()
        sums["mAP@all"] += float(np.nansum(average_precision(rel, n_rel, None, convention)))
        sums["mAP@200"] += float(np.nansum(average_precision(rel, n_rel, 200, convention)))
        sums["P@100"] += float(precision_at_k(rel, 100).sum())
        sums["P@200"] += float(precision_at_k(rel, 200).sum())
    return {key: value / len(query_feats) for key, value in sums.items()}


def fine_grained_accuracy(query_feats: torch.Tensor, query_pairs: torch.Tensor, query_labels: torch.Tensor,
                          gallery_feats: torch.Tensor, gallery_labels: torch.Tensor, gallery: str = "unseen",
                          ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Acc@k = share of sketches whose paired photo ranks in the top k.

    gallery "unseen": all photos of the unseen classes; "category": only the photos of the sketch's class.
    Rank = 1 + number of gallery photos strictly more similar than the paired one.
    """
    sims = query_feats.float() @ gallery_feats.float().T
    true = sims.gather(1, query_pairs[:, None].long())
    better = sims > true
    if gallery == "category":
        better &= gallery_labels[None, :] == query_labels[:, None]
    elif gallery != "unseen":
        raise ValueError(f"gallery must be 'unseen' or 'category', not {gallery!r}")
    rank = better.sum(1) + 1
    return {f"Acc@{k}": float((rank <= k).float().mean()) for k in ks}


# Paper Table 1 (Sain et al., CVPR 2023), as printed; category-level figures are mAP / P, fine-grained Acc in %.
PAPER_TABLE1: dict[str, dict[str, dict[str, float]]] = {
    "sketchy": {"Ours (paper)": {"mAP@200": 0.723, "P@200": 0.725}, "B-IP (paper)": {"mAP@200": 0.691, "P@200": 0.711},
                "B-Deep (paper)": {"mAP@200": 0.702, "P@200": 0.718}},
    "tuberlin": {"Ours (paper)": {"mAP@all": 0.651, "P@100": 0.732}, "B-IP (paper)": {"mAP@all": 0.628, "P@100": 0.702}},
    "quickdraw": {"Ours (paper)": {"mAP@all": 0.202, "P@200": 0.388}, "B-IP (paper)": {"mAP@all": 0.182, "P@200": 0.361}},
    "sketchy_fg": {"Ours (paper)": {"Acc@1": 28.68, "Acc@5": 62.34}, "B-FG-IP (paper)": {"Acc@1": 26.69, "Acc@5": 56.08}},
}
BENCHMARK_COLUMNS = {"sketchy": ("mAP@200", "P@200"), "tuberlin": ("mAP@all", "P@100"),
                     "quickdraw": ("mAP@all", "P@200"), "sketchy_fg": ("Acc@1", "Acc@5")}


def markdown_table(benchmark: str, rows: dict[str, dict[str, float]], note: str = "") -> str:
    """Our rows beside the paper's Table 1 rows for the same benchmark (fine-grained figures in %)."""
    columns = BENCHMARK_COLUMNS.get(benchmark) or tuple(next(iter(rows.values())).keys())
    all_rows = {**rows, **PAPER_TABLE1.get(benchmark, {})}
    lines = [f"| method | {' | '.join(columns)} |", "|---|" + "---|" * len(columns)]
    for name, values in all_rows.items():
        cells = [f"{values[c]:.3f}" if c in values and not c.startswith("Acc") else
                 (f"{values[c]:.2f}" if c in values else "-") for c in columns]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    if note:
        lines.append("")
        lines.append(note)
    return "\n".join(lines)
