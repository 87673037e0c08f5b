"""Retrieval metrics with explicit conventions (numbers from different conventions are not comparable).

- "sake" (default; SAKE/TVT, the convention of the ZS-SBIR tables the paper copies): rank the whole
  gallery by cosine similarity; AP@k = VOC-interpolated average precision over the top k with recall
  denominator min(k, R), R = number of relevant gallery items; mAP@all = the same over the full ranking.
- "torchmetrics": AP@k = mean precision at the hits inside the top k (denominator = hits in top k),
  not interpolated; AP@all is then scikit-learn's average precision.
P@k = hits in the top k / k under both. Same ranking, both conventions: one hit at rank 1 of the top 4
with R = 4 gives AP@4 = 0.25 (sake) but 1.0 (torchmetrics). The authors' released evaluator is neither
(it samples one photo per query). Fine-grained Acc@k: rank of the one paired photo, in a named gallery.

Ties (`ties`): gallery items whose similarity to the query equals (within TIE_EPS) must not be ordered in
the query's favour, or a collapsed, constant embedding scores perfectly.
- "random" (default): ties in a uniformly random order. Fine-grained Acc@k is the exact expectation over
  those orders (pair tied with t others behind b better ones: P(rank <= k) = clip(k - b, 0, t + 1) / (t + 1)),
  so a constant embedding scores k / N, chance. Category-level rankings use one seeded random order.
- "pessimistic": relevant items (the paired photo) after every item tied with them.
- "optimistic": relevant items first (what rank = 1 + strictly-better gives); only to reproduce old figures.

Averaging (`average`, category-level): "query" = mean over all queries (each sketch counts once);
"class" = mean over classes of the per-class mean (some SAKE-derived evaluators); they differ when classes
have unequal numbers of sketches.
"""

from __future__ import annotations

import numpy as np
import torch

CONVENTIONS = ("sake", "torchmetrics")
TIES = ("random", "pessimistic", "optimistic")
AVERAGES = ("query", "class")
# Similarities closer than this count as tied, so that float noise in a matrix product (different kernels
# for different columns) cannot decide the order of what is the same embedding. Similarities are computed in
# float64 from the (float32) features: the noise is then ~1e-15 and the tolerance can stay tiny, so distinct
# float32 embeddings are practically never merged into a tie.
TIE_EPS = 1e-9


def _check(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, not {value!r}")


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


def rank_gallery(queries: torch.Tensor, gallery: torch.Tensor, relevant: torch.Tensor | None = None,
                 ties: str = "random", seed: int = 0) -> torch.Tensor:
    """Gallery indices sorted by descending cosine similarity, ties (within TIE_EPS) broken per `ties`.

    relevant: (N, G) booleans, needed for "pessimistic" / "optimistic" (relevant items last / first among ties).
    """
    _check("ties", ties, TIES)
    sims = queries.double() @ gallery.double().T
    n, g = sims.shape
    if ties == "random":
        gen = torch.Generator().manual_seed(seed)
        secondary = torch.argsort(torch.rand(n, g, generator=gen), dim=1)
    else:
        if relevant is None:
            raise ValueError(f"ties={ties!r} needs the relevance matrix")
        # pessimistic: non-relevant first among ties (a stable sort on 0/1 puts False before True)
        secondary = torch.sort(relevant.to(torch.int8) if ties == "pessimistic" else (~relevant).to(torch.int8),
                               dim=1, stable=True).indices
    # sort by the tie-break key first, then (stably) by similarity rounded to the tie grid
    key = torch.round(sims / TIE_EPS).to(torch.int64).gather(1, secondary)
    order = torch.sort(key, dim=1, descending=True, stable=True).indices
    return secondary.gather(1, order)


def average_rows(values: np.ndarray, labels: np.ndarray, average: str = "query") -> float:
    """Mean of per-query values: over queries, or over classes of each class's mean. NaN rows are left out."""
    _check("average", average, AVERAGES)
    values = np.asarray(values, dtype=np.float64)
    keep = ~np.isnan(values)
    values, labels = values[keep], np.asarray(labels)[keep]
    if not len(values):
        return float("nan")
    if average == "query":
        return float(values.mean())
    return float(np.mean([values[labels == c].mean() for c in np.unique(labels)]))


def category_metrics(query_feats: torch.Tensor, query_labels: torch.Tensor, gallery_feats: torch.Tensor,
                     gallery_labels: torch.Tensor, convention: str = "sake", chunk: int = 256,
                     ties: str = "random", average: str = "query", ks: tuple[int, ...] = (200,),
                     ps: tuple[int, ...] = (100, 200)) -> dict[str, float]:
    """mAP@all, mAP@k (k in ks), P@k (k in ps) of sketch queries against the whole photo gallery.

    ties: how equal similarities are ordered (module docstring); average: "query" or "class" mean.
    """
    _check("average", average, AVERAGES)
    gallery_labels = gallery_labels.cpu()
    counts = torch.bincount(gallery_labels, minlength=int(max(gallery_labels.max(), query_labels.max())) + 1)
    rows: dict[str, list[np.ndarray]] = {"mAP@all": [], **{f"mAP@{k}": [] for k in ks}, **{f"P@{k}": [] for k in ps}}
    for start in range(0, len(query_feats), chunk):
        q = query_feats[start:start + chunk]
        ql = query_labels[start:start + chunk].cpu()
        relevant = gallery_labels[None, :] == ql[:, None]
        order = rank_gallery(q.cpu(), gallery_feats.cpu(), relevant, ties, seed=start).cpu()
        rel = relevant.gather(1, order).numpy()
        n_rel = counts[ql].numpy()
        rows["mAP@all"].append(average_precision(rel, n_rel, None, convention))
        for k in ks:
            rows[f"mAP@{k}"].append(average_precision(rel, n_rel, k, convention))
        for k in ps:
            rows[f"P@{k}"].append(precision_at_k(rel, k))
    labels = query_labels.cpu().numpy()
    return {key: average_rows(np.concatenate(parts), labels, average) for key, parts in rows.items()}


def paired_ranks(sims: torch.Tensor, pairs: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row of sims (N, G): (b, t) = number of candidates strictly more similar than the paired one,
    and number of OTHER candidates tied with it (within TIE_EPS); mask (N, G) limits the candidates."""
    true = sims.gather(1, pairs[:, None].long())
    better = sims > true + TIE_EPS
    tied = (sims - true).abs() <= TIE_EPS
    tied.scatter_(1, pairs[:, None].long(), False)
    if mask is not None:
        better &= mask
        tied &= mask
    return better.sum(1), tied.sum(1)


def hit_probability(better: torch.Tensor, tied: torch.Tensor, k: int, ties: str = "random") -> torch.Tensor:
    """P(paired item in the top k) given b strictly better and t tied competitors, per `ties`."""
    _check("ties", ties, TIES)
    b, t = better.double(), tied.double()
    if ties == "optimistic":
        return (b + 1 <= k).double()
    if ties == "pessimistic":
        return (b + t + 1 <= k).double()
    return torch.minimum((k - b).clamp(min=0), t + 1) / (t + 1)


def expected_rank(better: torch.Tensor, tied: torch.Tensor, ties: str = "random") -> torch.Tensor:
    """Rank of the paired item (1 = first): b + 1 (optimistic), b + t + 1 (pessimistic), b + 1 + t / 2 (random, the mean)."""
    _check("ties", ties, TIES)
    b, t = better.double(), tied.double()
    return b + 1 + {"optimistic": 0.0, "pessimistic": 1.0, "random": 0.5}[ties] * t


def fine_grained_accuracy(query_feats: torch.Tensor, query_pairs: torch.Tensor, query_labels: torch.Tensor,
                          gallery_feats: torch.Tensor, gallery_labels: torch.Tensor, gallery: str = "unseen",
                          ks: tuple[int, ...] = (1, 5, 10), ties: str = "random") -> dict[str, float]:
    """Acc@k = share of sketches whose paired photo ranks in the top k (a fraction, mean over queries).

    gallery "unseen": all photos of the unseen classes; "category": only the photos of the sketch's class.
    ties: photos as similar as the paired one (module docstring); "random" gives the exact expectation.
    """
    sims = query_feats.double() @ gallery_feats.double().T
    mask = None
    if gallery == "category":
        mask = gallery_labels[None, :] == query_labels[:, None]
    elif gallery != "unseen":
        raise ValueError(f"gallery must be 'unseen' or 'category', not {gallery!r}")
    better, tied = paired_ranks(sims, query_pairs, mask)
    return {f"Acc@{k}": float(hit_probability(better, tied, k, ties).mean()) for k in ks}


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
