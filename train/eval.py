"""Zero-shot evaluation on the unseen classes: category-level mAP/P@k or fine-grained Acc@k.

    python train/eval.py --config train/configs/sketchy_category.yaml --prompts runs/x/prompts.safetensors
    python train/eval.py --config train/configs/sketchy_category.yaml --prompts none     # frozen CLIP baseline

Encodes every unseen sketch and the full unseen photo gallery once (sharded across processes when
launched with accelerate/torchrun; gathered without duplicates), then ranks the whole gallery.
Always every query (`eval_max_queries` only thins in-training evaluations). Unreadable files are left
out and listed under `skipped_files`. Prompts made for another backbone are refused.
Writes a JSON file and prints a Markdown table beside the paper's Table 1 numbers.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import json
import logging
from typing import Any

import torch
from torch.utils.data import DataLoader

from train.config import ConfigError, TrainConfig, load_config
from train.datasets import ImageListDataset
from train.metrics import category_metrics, fine_grained_accuracy, markdown_table
from train.splits import Part, split_from_config
from train.transforms import eval_transform

log = logging.getLogger(__name__)


def eval_loaders(part: Part, transform: Any, batch_size: int, num_workers: int,
                 max_queries: int = 0, sketch_mode: str = "ink") -> tuple[DataLoader, DataLoader, list[int]]:
    """Sketch-query and photo-gallery loaders (fixed order). max_queries > 0 keeps an evenly spaced subset."""
    queries = list(range(len(part.sketches)))
    if 0 < max_queries < len(queries):
        step = len(queries) / max_queries
        queries = [int(i * step) for i in range(max_queries)]
    sketches = ImageListDataset([part.sketches[i] for i in queries], "sketch", transform, sketch_mode)
    photos = ImageListDataset(part.photos, "photo", transform)
    make = lambda ds: DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers)  # noqa: E731
    return make(sketches), make(photos), queries


@torch.no_grad()
def encode(accelerator: Any, prompted: torch.nn.Module, loader: DataLoader,
           modality: str) -> tuple[torch.Tensor, torch.Tensor, dict[str, int]]:
    """Encode a (prepared, possibly sharded) loader; gather across ranks.

    Returns features and a readable-file mask in dataset order, and the gather counts.
    """
    was_training = prompted.training
    prompted.eval()
    feats, idx, oks = [], [], []
    for images, index, ok in loader:
        with accelerator.autocast():
            f = prompted(images, modality).float()
        f, index, ok = accelerator.gather_for_metrics((f.contiguous(), index.contiguous(), ok.contiguous()))
        feats.append(f.cpu())
        idx.append(index.cpu())
        oks.append(ok.cpu())
    prompted.train(was_training)
    feats_t, idx_t, ok_t = torch.cat(feats), torch.cat(idx), torch.cat(oks)
    n = len(loader.dataset)
    stats = {"gathered": int(len(idx_t)), "unique": int(idx_t.unique().numel()), "expected": n}
    if stats["gathered"] != n or stats["unique"] != n:
        raise RuntimeError(f"gathered {stats['gathered']} {modality} features ({stats['unique']} unique), expected {n}")
    out = torch.empty_like(feats_t)
    out[idx_t] = feats_t
    mask = torch.empty(n, dtype=torch.bool)
    mask[idx_t] = ok_t.bool()
    return out, mask, stats


def evaluate(accelerator: Any, prompted: torch.nn.Module, part: Part, sketch_loader: DataLoader,
             photo_loader: DataLoader, queries: list[int], cfg: TrainConfig) -> dict[str, Any]:
    """Metrics dict (category: mAP@all, mAP@200, P@100, P@200; fine-grained: Acc@1/5/10 in %, both galleries).

    Unreadable sketches are left out of the queries and unreadable photos out of the gallery (and, in the
    fine-grained setting, sketches whose paired photo is unreadable); `skipped_files` lists them.
    """
    q_feats, q_ok, q_stats = encode(accelerator, prompted, sketch_loader, "sketch")
    g_feats, g_ok, g_stats = encode(accelerator, prompted, photo_loader, "photo")
    q_labels = torch.tensor([part.sketch_labels[i] for i in queries])
    g_labels = torch.tensor(part.photo_labels)
    skipped = {"sketch": [str(part.sketches[queries[i]]) for i in torch.nonzero(~q_ok).flatten().tolist()],
               "photo": [str(part.photos[i]) for i in torch.nonzero(~g_ok).flatten().tolist()]}
    pairs = torch.tensor([part.sketch_pairs[i] for i in queries])
    if cfg.setting == "fine_grained":
        q_ok = q_ok & g_ok[pairs.clamp(min=0)] & (pairs >= 0)
        new_index = torch.cumsum(g_ok.long(), 0) - 1  # gallery position after dropping unreadable photos
        pairs = new_index[pairs.clamp(min=0)]
    q_feats, q_labels, pairs = q_feats[q_ok], q_labels[q_ok], pairs[q_ok]
    g_feats, g_labels = g_feats[g_ok], g_labels[g_ok]
    if skipped["sketch"] or skipped["photo"]:
        log.warning("evaluation left out %d unreadable sketch(es) and %d unreadable photo(s): %s",
                    len(skipped["sketch"]), len(skipped["photo"]), (skipped["sketch"] + skipped["photo"])[:5])
    result: dict[str, Any] = {"setting": cfg.setting, "n_queries": int(q_ok.sum()), "n_gallery": int(g_ok.sum()),
                              "n_classes": len(part.classes), "gather": {"sketch": q_stats, "photo": g_stats},
                              "skipped_files": {"sketch": len(skipped["sketch"]), "photo": len(skipped["photo"]),
                                                "files": (skipped["sketch"] + skipped["photo"])[:100]}}
    result["ties"] = cfg.metric_ties
    if cfg.setting == "category":
        result["convention"] = cfg.metric_convention
        result["average"] = cfg.metric_average
        result["gallery"] = "all unseen-class photos"
        result["metrics"] = category_metrics(q_feats, q_labels, g_feats, g_labels, cfg.metric_convention,
                                             ties=cfg.metric_ties, average=cfg.metric_average)
    else:
        result["average"] = "query"  # one paired photo per sketch: Acc@k is a mean over sketches
        for gallery in ("unseen", "category"):
            acc = fine_grained_accuracy(q_feats, pairs, q_labels, g_feats, g_labels, gallery, ties=cfg.metric_ties)
            result[f"metrics_{gallery}_gallery"] = {k: 100 * v for k, v in acc.items()}
        result["gallery"] = FG_GALLERY_NAMES[cfg.fg_gallery]
        result["metrics"] = result[f"metrics_{cfg.fg_gallery}_gallery"]
    return result


def episode_ranks(step_feats: list[torch.Tensor], gallery_feats: torch.Tensor, pairs: torch.Tensor,
                  ties: str = "random") -> tuple[torch.Tensor, torch.Tensor]:
    """Retrieval while drawing: (better, tied) counts of the paired photo after each drawing step.

    step_feats[t]: (N, D) embeddings of the N sketches rendered after step t (strokes 1..t+1, or a fraction of
    them). Returns two (N, T) tensors: photos strictly more similar than the pair, and photos tied with it.
    """
    from train.metrics import paired_ranks

    out = [paired_ranks(f.double() @ gallery_feats.double().T, pairs) for f in step_feats]
    return torch.stack([b for b, _ in out], 1), torch.stack([t for _, t in out], 1)


def on_the_fly_metrics(better: torch.Tensor, tied: torch.Tensor, gallery_size: int,
                       ties: str = "random") -> dict[str, float]:
    """m@A and m@B of Bhunia et al. (CVPR 2020) over drawing episodes (rows) of T steps (columns).

    m@A: mean over the episode (and over episodes) of the paired photo's ranking percentile
    (G - rank) / (G - 1) (1 = first, 0 = last); m@B: mean of 1 / rank. Ties per `ties` (train/metrics.py):
    "random" takes the exact expectation over tie orders (for m@B, E[1/rank], not 1/E[rank]).
    """
    from train.metrics import TIES, _check, expected_rank

    _check("ties", ties, TIES)
    b, t = better.double(), tied.double()
    rank = expected_rank(better, tied, ties)
    percentile = (gallery_size - rank) / max(gallery_size - 1, 1)
    # random ties: rank uniform on b+1 .. b+t+1, so E[1/rank] = (H(b+t+1) - H(b)) / (t+1), H(n) = digamma(n+1) + const
    inv = (torch.digamma(b + t + 2) - torch.digamma(b + 1)) / (t + 1) if ties == "random" else 1.0 / rank
    return {"m@A": float(percentile.mean()), "m@B": float(inv.mean()), "episodes": int(better.shape[0]),
            "steps": int(better.shape[1])}


DRAW_FRACTIONS = (0.25, 0.5, 0.75, 1.0)


def drawing_parts(part: Part, strokes: Any, size: int, out_dir: str | Path,
                  fractions: tuple[float, ...] = DRAW_FRACTIONS, thin_last: bool = True) -> list[Part]:
    """Sketches as they are being drawn: for each fraction f, every sketch of `part` rendered after the first
    ceil(f * T) of its T strokes (at least one), written to out_dir/<f>/<class>/<name>.png.

    strokes(path) -> the sketch's ordered strokes in pixels of a size x size canvas (train.synthetic.strokes_of;
    thin_last: its last stroke, the synthetic inner mark, drawn thinner; False for real drawings, e.g.
    train.splits.ndjson_part). Returns one Part per fraction with the same classes, photos, labels and pairs as
    `part`: only the sketch files differ."""
    import math

    from train.synthetic import render_strokes

    parts = []
    for f in fractions:
        paths = []
        for path in part.sketches:
            path = Path(path)
            lines = strokes(path)
            target = Path(out_dir) / f"{f:g}" / path.parent.name / f"{path.stem}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            render_strokes(lines, size, max(1, math.ceil(f * len(lines) - 1e-9)), thin_last).save(target)
            paths.append(target)
        parts.append(Part(classes=part.classes, sketches=paths, sketch_labels=part.sketch_labels,
                          sketch_pairs=part.sketch_pairs, photos=part.photos, photo_labels=part.photo_labels))
    return parts


def evaluate_while_drawing(accelerator: Any, prompted: torch.nn.Module, step_parts: list[Part], transform: Any,
                           cfg: TrainConfig) -> dict[str, Any]:
    """Retrieval after each drawing step (step_parts from drawing_parts, all sharing one gallery).

    Category-level: mAP@200 and P@200 per step (cfg's convention, ties, averaging). Fine-grained: the paired
    photo among all unseen photos: Acc@1 / Acc@5 (%) per step and m@A / m@B over the episode (on_the_fly_metrics)."""
    part = step_parts[0]
    _, p_dl, _ = eval_loaders(part, transform, cfg.eval_batch_size, 0, 0, cfg.sketch_mode)
    g_feats, g_ok, _ = encode(accelerator, prompted, p_dl, "photo")
    steps = []
    for step in step_parts:
        s_dl, _, _ = eval_loaders(step, transform, cfg.eval_batch_size, 0, 0, cfg.sketch_mode)
        q_feats, q_ok, _ = encode(accelerator, prompted, s_dl, "sketch")
        if not (bool(q_ok.all()) and bool(g_ok.all())):
            raise ValueError("evaluate_while_drawing needs every sketch and photo readable")
        steps.append(q_feats)
    labels, g_labels = torch.tensor(part.sketch_labels), torch.tensor(part.photo_labels)
    out: dict[str, Any] = {"setting": cfg.setting, "n_queries": len(labels), "n_gallery": len(g_labels), "ties": cfg.metric_ties}
    if cfg.setting == "category":
        per_step = [category_metrics(q, labels, g_feats, g_labels, cfg.metric_convention, ties=cfg.metric_ties,
                                     average=cfg.metric_average, ks=(200,), ps=(200,)) for q in steps]
        out.update(convention=cfg.metric_convention, average=cfg.metric_average,
                   **{k: [m[k] for m in per_step] for k in ("mAP@200", "P@200")})
        return out
    from train.metrics import hit_probability

    better, tied = episode_ranks(steps, g_feats, torch.tensor(part.sketch_pairs), cfg.metric_ties)
    out.update(on_the_fly_metrics(better, tied, len(g_labels), cfg.metric_ties))
    for k in (1, 5):
        out[f"Acc@{k}"] = [100 * float(hit_probability(better[:, t], tied[:, t], k, cfg.metric_ties).mean())
                           for t in range(better.shape[1])]
    return out


FG_GALLERY_NAMES = {"unseen": "all unseen-class photos", "category": "photos of the sketch's class"}
AVERAGE_NAMES = {"query": "mean over queries", "class": "mean over classes of per-class means"}
TIE_NAMES = {"random": "ties in random order (expected value)", "pessimistic": "ties counted against the query",
             "optimistic": "ties counted FOR the query (reproduces old figures only)"}


def protocol_note(result: dict[str, Any]) -> str:
    """The averaging and tie rule a table was computed with (printed under every table)."""
    average = result.get("average", "query")
    ties = result.get("ties", "random")
    return f"Averaging: {AVERAGE_NAMES.get(average, average)} (average={average}); {TIE_NAMES.get(ties, ties)} (ties={ties})."


def table_for(result: dict[str, Any], cfg: TrainConfig, label: str) -> str:
    skipped = result.get("skipped_files", {})
    skip_note = (f" Unreadable files left out: {skipped['sketch']} sketch(es), {skipped['photo']} photo(s)."
                 if skipped.get("sketch") or skipped.get("photo") else "")
    if cfg.setting == "category":
        note = (f"Convention: {result['convention']} (AP@k denominator "
                f"{'min(k, R), VOC-interpolated' if result['convention'] == 'sake' else 'hits in top k, not interpolated'}); "
                f"gallery: {result['gallery']}; {result['n_queries']} queries x {result['n_gallery']} photos. "
                f"{protocol_note(result)}")
        return markdown_table(cfg.benchmark, {label: result["metrics"]}, note + skip_note)
    # both fine-grained galleries, the one compared with the paper's row named
    rows = {f"{label}, gallery: {FG_GALLERY_NAMES[g]}": result[f"metrics_{g}_gallery"] for g in ("unseen", "category")}
    note = (f"Acc@k in %; {result['n_queries']} queries, {result['n_gallery']} unseen photos. The paper does not name "
            f"its gallery (its pre-release code ranked the paired photo among all unseen-class photos); the row "
            f"compared with it here is fg_gallery={cfg.fg_gallery} ({FG_GALLERY_NAMES[cfg.fg_gallery]}), which "
            f"`metrics` in the JSON holds. {protocol_note(result)}")
    return markdown_table(cfg.benchmark, rows, note + skip_note)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import argparse

    from accelerate import Accelerator

    from train.model import build_model, spec_for
    from zsdemo.model.prompts import check_compatible, read_checkpoint

    parser = argparse.ArgumentParser(description="Evaluate prompts (or frozen CLIP) on the unseen classes.")
    parser.add_argument("--config", required=True)
    parser.add_argument("--prompts", default="none", help="prompt checkpoint (.safetensors), or 'none' for frozen CLIP")
    parser.add_argument("--output", default="", help="JSON result file (default: beside the prompts, or eval_baseline.json)")
    args, rest = parser.parse_known_args(argv)
    try:
        cfg = load_config(args.config, rest)
    except ConfigError as exc:
        raise SystemExit(f"eval.py: {exc}") from None
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision or None)
    logging.basicConfig(level=logging.INFO if accelerator.is_main_process else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    split = split_from_config(cfg)
    baseline = args.prompts.lower() in ("none", "")
    if baseline:
        spec = spec_for(cfg.setting, n_prompts=0, layernorm=False)
        clip, step_model = build_model(cfg.model, cfg.pretrained, spec)
        label = f"frozen CLIP, no prompts ({cfg.model}/{cfg.pretrained})"
    else:
        ckpt = read_checkpoint(args.prompts)
        clip, step_model = build_model(cfg.model, cfg.pretrained, ckpt.spec)
        # as the engine does: prompts made for another backbone are refused, other weights only warned about
        check_compatible(ckpt, cfg.model, step_model.prompted.width, step_model.prompted.n_layers)
        if ckpt.meta.get("pretrained") != cfg.pretrained:
            log.warning("Prompts in %s were trained on %r weights; evaluating them on %r.", args.prompts,
                        ckpt.meta.get("pretrained"), cfg.pretrained)
        step_model.prompted.load_learned_state(ckpt.state)
        label = f"prompts {Path(args.prompts).name} ({cfg.model}/{cfg.pretrained})"
    prompted = step_model.prompted.to(accelerator.device)
    if cfg.eval_max_queries:
        log.info("eval_max_queries=%d applies to in-training evaluations only; this evaluation uses every query",
                 cfg.eval_max_queries)
    s_dl, p_dl, queries = eval_loaders(split.test, eval_transform(clip), cfg.eval_batch_size, cfg.num_workers,
                                       0, cfg.sketch_mode)
    s_dl, p_dl = accelerator.prepare(s_dl, p_dl)
    result = evaluate(accelerator, prompted, split.test, s_dl, p_dl, queries, cfg)
    result.update({"label": label, "prompts": None if baseline else str(args.prompts), "model": cfg.model,
                   "pretrained": cfg.pretrained, "benchmark": cfg.benchmark})
    if accelerator.is_main_process:
        output = Path(args.output or (Path(args.prompts).with_suffix(".eval.json") if not baseline
                                      else Path(cfg.out_dir) / "eval_baseline.json"))
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(result, indent=2))
        print(table_for(result, cfg, label))
        print(f"\nwrote {output}")
    accelerator.end_training()
    return result


if __name__ == "__main__":
    main()
