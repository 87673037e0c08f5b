"""Training throughput and a learning check.

    python train/bench.py                       # ViT-B/32 (random init) at batch 64 on this machine + tiny learning check
    python train/bench.py --precision bf16      # bf16 autocast (default on CUDA)
    python train/bench.py --skip-learning --steps 2
    python train/bench.py --fg-check            # fine-grained check with pass criteria; last line fg_check=pass|fail {...}
    python train/bench.py --ps-diagnosis CONFIG --diag-overrides pretrained=F data_root=D --diag-prompts step0 RUN/prompts.safetensors
    python train/bench.py --drawing-check CONFIG --diag-overrides ... --diag-prompts ...  [--drawing-ndjson DIR]

Throughput: one category-level training step (64 sketches + 64 positives + 64 negatives through the
prompted ViT, triplet + classification losses, backward, Adam) on random tensors, so data loading is
not counted. "ours" uses text class embeddings computed once per run; "naive" re-encodes the class
texts ("a photo of a {class}", 104 Sketchy seen classes) with the frozen text encoder every step.
Steps of the two alternate, so machine noise hits both alike; the ratio is the figure to compare.

Learning check: first a stand-in for CLIP pretraining (train/pretrain_tiny.py: the whole tiny CLIP
trained on synthetic photos only, no sketches), or `--pretrained-tiny FILE` to reuse one; then the tiny
synthetic prompt-learning run (train/configs/tiny.yaml, epochs=60 by default) on that backbone -> unseen-class mAP@all of the
frozen pretrained backbone (no prompts: the baseline row), of the untrained prompts (step 0) and after
training, side by side, plus the same on the seen (training) classes, and the frozen random-init
backbone for reference. All rows use the same data and train/eval.py's `evaluate`. Synthetic shapes
and a 2-layer ViT say nothing about retrieval quality with real CLIP weights.

Fine-grained check (--fg-check): an instance-aware tiny backbone, then arms (a) prompts at step 0, (b) trained
on true pairs, (c) trained with the seen pairs shuffled within class, (d) triplet + CE only, x seeds; the rule
is `fg_verdict`, the criteria the FG_* constants.

Diagnostics on saved runs (frozen backbone vs prompt files): --ps-diagnosis (why the patch-shuffle loss sits at its
margin: shuffled vs unshuffled embeddings, the loss's d+ / d- per grid) and --drawing-check (retrieval while
drawing: mAP@200 or Acc@k at 25/50/75/100 % of the strokes, m@A / m@B).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import contextlib
import json
import logging
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from typing import Any

import open_clip
import torch

from train.config import TEXT_TEMPLATE
from train.losses import category_losses
from train.model import build_model, spec_for
from train.runtime import set_cpu_threads
from zsdemo.config import DEFAULT_MODEL

log = logging.getLogger("train.bench")
PRETRAIN_STEPS = 3000
# 600 prompt steps instead of tiny.yaml's 120 (why: train/BENCH.md, learning check)
LEARNING_OVERRIDES = ("epochs=60",)


def throughput(model_name: str, batch_size: int, steps: int, n_classes: int, precision: str, device: str) -> dict[str, Any]:
    clip, step_model = build_model(model_name, "none", spec_for("category"))
    clip.to(device)
    step_model.to(device).train()
    size = int(clip.visual.image_size[0] if isinstance(clip.visual.image_size, tuple) else clip.visual.image_size)
    optimizer = torch.optim.Adam([p for p in step_model.parameters() if p.requires_grad], lr=1e-5)
    tokens = open_clip.get_tokenizer(model_name)([TEXT_TEMPLATE.format(f"class{i}") for i in range(n_classes)]).to(device)
    with torch.no_grad():
        text_once = clip.encode_text(tokens, normalize=True).float()
    g = torch.Generator().manual_seed(0)
    images = [torch.randn(batch_size, 3, size, size, generator=g).to(device) for _ in range(3)]
    labels = torch.randint(0, n_classes, (batch_size,), generator=g).to(device)
    neg_labels = (labels + 1) % n_classes
    autocast = (torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16) if precision == "bf16"
                else contextlib.nullcontext())

    def step(naive: bool) -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        with autocast:
            text = clip.encode_text(tokens, normalize=True).float() if naive else text_once
            out = step_model(*images)
            loss = category_losses(*out, labels, neg_labels, text, 100.0)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    step(False)  # warm-up
    ours, naive = [], []
    for _ in range(steps):
        ours.append(step(False))
        naive.append(step(True))
    text_s = []
    for _ in range(3):  # the text encoding alone, as the naive step runs it (grad mode, frozen weights)
        start = time.perf_counter()
        with autocast:
            clip.encode_text(tokens, normalize=True)
        text_s.append(time.perf_counter() - start)
    # minimum over repeats: the least disturbed measurement on a shared machine (medians are reported too)
    t_ours, t_naive = min(ours), min(naive)
    return {"model": model_name, "weights": "random init", "device": device, "precision": precision,
            "batch_size": batch_size, "images_per_step": 3 * batch_size, "text_classes": n_classes, "steps": steps,
            "threads": torch.get_num_threads(), "step_s_ours": ours, "step_s_naive": naive,
            "samples_per_s_ours": batch_size / t_ours, "samples_per_s_naive": batch_size / t_naive,
            "speedup_vs_naive": t_naive / t_ours, "text_encode_s": text_s,
            "speedup_vs_naive_median": statistics.median(naive) / statistics.median(ours),
            "speedup_from_text_cost": (t_ours + min(text_s)) / t_ours}


def learning_check(out_dir: Path, overrides: list[str], pretrained: str) -> dict[str, Any]:
    from accelerate import Accelerator

    from train import fit
    from train.config import load_config
    from train.eval import eval_loaders, evaluate
    from train.splits import split_from_config
    from train.transforms import eval_transform

    config = Path(__file__).resolve().parent / "configs" / "tiny.yaml"
    args = [f"out_dir={out_dir}", "progress=false", f"pretrained={pretrained}", *overrides]
    cfg = load_config(config, args)
    start = time.perf_counter()
    fit.main(["--config", str(config), *args])
    train_s = time.perf_counter() - start
    accelerator = Accelerator()
    split = split_from_config(cfg)
    from zsdemo.model.prompts import read_checkpoint

    ckpt = read_checkpoint(out_dir / "prompts.safetensors")
    rows: dict[str, dict[str, float]] = {}
    frozen = spec_for(cfg.setting, n_prompts=0, layernorm=False)
    models = {"frozen random-init backbone, no prompts (reference)": ("none", frozen, None),
              "frozen pretrained backbone, no prompts (baseline)": (cfg.pretrained, frozen, None),
              "prompts at step 0 (untrained)": (cfg.pretrained, ckpt.spec, None),
              f"prompts after {ckpt.meta.get('step')} steps": (cfg.pretrained, ckpt.spec, ckpt.state)}
    for label, (weights, spec, state) in models.items():
        clip, step_model = build_model(cfg.model, weights, spec, seed=cfg.seed)
        if state is not None:
            step_model.prompted.load_learned_state(state)
        transform = eval_transform(clip)
        for part_name, part in (("unseen", split.test), ("seen", split.train)):
            s_dl, p_dl, queries = eval_loaders(part, transform, cfg.eval_batch_size, 0)
            result = evaluate(accelerator, step_model.prompted, part, s_dl, p_dl, queries, cfg)
            rows.setdefault(label, {})[f"{part_name} mAP@all"] = result["metrics"]["mAP@all"]
    losses = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in losses if "loss" in r]
    return {"config": str(config), "overrides": overrides, "pretrained": pretrained, "train_seconds": train_s, "rows": rows,
            "train_loss_first": losses[0], "train_loss_last": losses[-1]}


LOSS_TERMS = ("hard_triplet", "cls_sketch", "cls_photo", "delta", "patch_shuffle")


def fine_grained_check(out_root: Path, pretrained: str, taus: list[float], seeds: list[int],
                       overrides: list[str]) -> dict[str, Any]:
    """Fine-grained learning check: Acc@1/5 of the paired photo on the UNSEEN synthetic classes, for the frozen
    pretrained backbone without prompts and for prompts trained (train/configs/tiny_fine_grained.yaml) with each
    delta_tau and seed. Both galleries: all unseen photos (36) and the sketch's own class (12).
    Also the mean size of every loss term and of its gradient on the embeddings over each run."""
    from accelerate import Accelerator

    from train import fit
    from train.config import load_config
    from train.eval import eval_loaders, evaluate
    from train.splits import split_from_config
    from train.synthetic import generate
    from train.transforms import eval_transform
    from zsdemo.model.prompts import read_checkpoint

    config = Path(__file__).resolve().parent / "configs" / "tiny_fine_grained.yaml"
    base = [f"pretrained={pretrained}", "progress=false", "log_every=1", f"data_root={out_root / 'data'}", *overrides]
    cfg = load_config(config, base)
    if not Path(cfg.data_root).exists():
        generate(cfg.data_root, seed=0)  # the data tiny_fine_grained.yaml would generate (seed 0)
    split = split_from_config(cfg)
    accelerator = Accelerator()

    def acc(spec: Any, state: dict[str, torch.Tensor] | None) -> dict[str, float]:
        clip, step_model = build_model(cfg.model, cfg.pretrained, spec, seed=cfg.seed)
        if state is not None:
            step_model.prompted.load_learned_state(state)
        s_dl, p_dl, queries = eval_loaders(split.test, eval_transform(clip), cfg.eval_batch_size, 0, 0, cfg.sketch_mode)
        result = evaluate(accelerator, step_model.prompted, split.test, s_dl, p_dl, queries, cfg)
        return {f"{g} {k}": result[f"metrics_{g}_gallery"][k] for g in ("unseen", "category") for k in ("Acc@1", "Acc@5")}

    rows: list[dict[str, Any]] = [{"model": "frozen pretrained backbone, no prompts", "delta_tau": None, "seed": None,
                                   **acc(spec_for("fine_grained", n_prompts=0, layernorm=False), None)}]
    for tau in taus:
        for seed in seeds:
            out = out_root / f"tau{tau}_seed{seed}"
            start = time.perf_counter()
            fit.main(["--config", str(config), *base, f"out_dir={out}", f"seed={seed}", f"delta_tau={tau}"])
            seconds = time.perf_counter() - start
            ckpt = read_checkpoint(out / "prompts.safetensors")
            records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
            train = [r for r in records if "loss" in r]
            sizes = {f"mean {k}": statistics.fmean(r[k] for r in train) for k in LOSS_TERMS}
            sizes.update({f"mean grad_{k}": statistics.fmean(r[f"grad_{k}"] for r in train) for k in LOSS_TERMS})
            rows.append({"model": f"prompts after {ckpt.meta.get('step')} steps", "delta_tau": tau, "seed": seed,
                         "train_seconds": seconds, **acc(ckpt.spec, ckpt.state), **sizes})
    return {"config": str(config), "overrides": overrides, "pretrained": pretrained, "rows": rows}


def print_fine_grained(r: dict[str, Any]) -> None:
    print(f"\n## Fine-grained learning check (tiny pretrained ViT, synthetic instance pairs; "
          f"{' '.join(r['overrides']) or 'tiny_fine_grained.yaml as is'})")
    print("| model | delta_tau | seed | unseen-gallery Acc@1 | Acc@5 | category-gallery Acc@1 | Acc@5 |\n|---|---|---|---|---|---|---|")
    for row in r["rows"]:
        print(f"| {row['model']} | {row['delta_tau'] if row['delta_tau'] is not None else '-'} | "
              f"{row['seed'] if row['seed'] is not None else '-'} | {row['unseen Acc@1']:.1f} | {row['unseen Acc@5']:.1f} | "
              f"{row['category Acc@1']:.1f} | {row['category Acc@5']:.1f} |")
    print("\nloss terms over the run (mean value; mean norm of the weighted term's gradient on the embeddings):")
    print("| delta_tau | seed | " + " | ".join(LOSS_TERMS) + " |\n|---|---|" + "---|" * len(LOSS_TERMS))
    for row in r["rows"][1:]:
        cells = [f"{row[f'mean {k}']:.4f} / {row[f'mean grad_{k}']:.2e}" for k in LOSS_TERMS]
        print(f"| {row['delta_tau']} | {row['seed']} | " + " | ".join(cells) + " |")


# ---- the fine-grained learning check that can pass or fail (issue 17 item 1) -----------------------------
FG_ARMS = ("step0", "trained", "shuffled", "tri_ce")
FG_ARM_LABELS = {"step0": "(a) prompts at step 0", "trained": "(b) trained on true pairs",
                 "shuffled": "(c) trained, pairs shuffled within class", "tri_ce": "(d) triplet + CE only"}
# training overrides per trained arm (the shuffled arm trains on a copy of the data whose seen pairs are shuffled)
FG_ARM_OVERRIDES = {"trained": (), "shuffled": (), "tri_ce": ("delta_weight=0", "ps_weight=0")}
FG_GATE = (20.0, 60.0)  # frozen-backbone unseen Acc@1 (%): room to gain and to lose
FG_MIN_GAIN_EVERY_SEED = 0.0  # (b) - (a) > this in every seed
FG_MIN_GAIN_MEAN = 5.0  # mean of (b) - (a) >= this
FG_MIN_CONTROL_GAP = 10.0  # (b) - (c) >= this in every seed
# 20 photos x 3 sketches per shape: 180 unseen queries (3 shapes) against a 60-photo unseen gallery
FG_DATA = {"photos_per_class": 20, "sketches_per_photo": 3, "size": 96, "seed": 0}
FG_PRETRAIN = {"steps": 1500, "photos_per_class": 300, "instance_weight": 1.0}
FG_STEPS = 400


def fg_verdict(frozen_acc1: float, arms: dict[str, list[float]]) -> dict[str, Any]:
    """The pass/fail rule on unseen Acc@1 (%), one value per seed for each arm of FG_ARMS.

    Passes when the frozen backbone is inside FG_GATE, (b) - (a) > 0 in every seed and >= +5 on average,
    and (b) - (c) >= +10 in every seed. Returns the verdict, the differences and the reasons it failed."""
    gain = [b - a for a, b in zip(arms["step0"], arms["trained"], strict=True)]
    gap = [b - c for b, c in zip(arms["trained"], arms["shuffled"], strict=True)]
    reasons = []
    if not FG_GATE[0] <= frozen_acc1 <= FG_GATE[1]:
        reasons.append(f"gate: frozen backbone unseen Acc@1 {frozen_acc1:.1f} outside {FG_GATE[0]:.0f}-{FG_GATE[1]:.0f}")
    if not all(g > FG_MIN_GAIN_EVERY_SEED for g in gain):
        reasons.append(f"(b)-(a) not > {FG_MIN_GAIN_EVERY_SEED:g} in every seed: {[round(g, 1) for g in gain]}")
    if statistics.fmean(gain) < FG_MIN_GAIN_MEAN:
        reasons.append(f"mean (b)-(a) {statistics.fmean(gain):.1f} < {FG_MIN_GAIN_MEAN:g}")
    if not all(g >= FG_MIN_CONTROL_GAP for g in gap):
        reasons.append(f"(b)-(c) not >= {FG_MIN_CONTROL_GAP:g} in every seed: {[round(g, 1) for g in gap]}")
    return {"passed": not reasons, "reasons": reasons, "gain_per_seed": gain, "gain_mean": statistics.fmean(gain),
            "control_gap_per_seed": gap, "control_gap_mean": statistics.fmean(gap)}


def shuffle_pairs_within_class(src: Path, dst: Path, classes: list[str], seed: int) -> Path:
    """A copy of a synthetic dataset where, in each of `classes`, photo files are renamed along a random cycle:
    every sketch then names another photo of its class as its pair (no true pair is left)."""
    shutil.copytree(src, dst)
    rng = random.Random(seed)
    for name in classes:
        folder = dst / "photo" / name
        files = sorted(folder.iterdir())
        order = files[:]
        rng.shuffle(order)
        temp = [f.with_name(f"tmp_{i}{f.suffix}") for i, f in enumerate(order)]
        for f, t in zip(order, temp, strict=True):
            f.rename(t)
        for i, t in enumerate(temp):  # photo order[i] takes the name of order[i + 1]: a cycle, no fixed point
            t.rename(order[(i + 1) % len(order)])
    return dst


def fg_data(true_root: Path, shuffled_root: Path, cfg: Any, data: dict[str, int]) -> Any:
    """Write the check's synthetic data (FG_DATA) and its copy with the seen classes' pairs shuffled; the split."""
    from train.splits import split_from_config
    from train.synthetic import generate

    if not true_root.exists():
        generate(true_root, photos_per_class=data["photos_per_class"], sketches_per_photo=data["sketches_per_photo"],
                 size=data["size"], seed=data["seed"])
    split = split_from_config(cfg)
    if not shuffled_root.exists():
        shuffle_pairs_within_class(true_root, shuffled_root, split.train.classes, seed=12345)
    return split


def _fg_train_cmd(config: Path, data_root: Path, out: Path, pretrained: str, seed: int, steps: int,
                  extra: tuple[str, ...]) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve().parent / "fit.py"), "--config", str(config),
            f"pretrained={pretrained}", f"data_root={data_root}", f"out_dir={out}", f"seed={seed}",
            f"max_steps={steps}", f"checkpoint_every={steps}", "keep_checkpoints=1", "progress=false",
            "generate_synthetic=false", "log_every=10", *extra]


def fg_train_runs(config: Path, out_root: Path, pretrained: str, seeds: list[int], steps: int, jobs: int,
                  overrides: tuple[str, ...]) -> tuple[dict[tuple[str, int], float], float]:
    """Train every (arm, seed) of the trained arms with train/fit.py, each in its own process with
    OMP_NUM_THREADS=1, `jobs` at a time. Returns the seconds of each run and the wall time of all."""
    from concurrent.futures import ThreadPoolExecutor

    runs = [(arm, seed) for arm in FG_ARMS[1:] for seed in seeds]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    env.pop("ACCELERATE_USE_CPU", None)

    def train(run: tuple[str, int]) -> float:
        arm, seed = run
        root = out_root / ("data_shuffled" if arm == "shuffled" else "data")
        cmd = _fg_train_cmd(config, root, out_root / f"{arm}_seed{seed}", pretrained, seed, steps,
                            (*overrides, *FG_ARM_OVERRIDES[arm]))
        start = time.perf_counter()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"training run {arm} seed {seed} failed:\n{done.stderr[-3000:]}")
        return time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        seconds = dict(zip(runs, pool.map(train, runs), strict=True))
    return seconds, time.perf_counter() - start


def fg_check(out_root: Path, pretrained: str, seeds: list[int], steps: int = FG_STEPS, jobs: int = 2,
             overrides: tuple[str, ...] = (), data: dict[str, int] | None = None) -> dict[str, Any]:
    """Arms x seeds on train/configs/tiny_fine_grained.yaml over a bigger synthetic set (FG_DATA), each
    training run in its own process with one torch thread (`jobs` at a time); every model is evaluated here
    on the same unseen queries and gallery (train/eval.py's `evaluate`). Returns rows, per-arm Acc@1 lists
    and fg_verdict's result."""
    from accelerate import Accelerator

    from train.config import load_config
    from train.eval import eval_loaders, evaluate
    from train.transforms import eval_transform
    from zsdemo.model.prompts import read_checkpoint

    config = Path(__file__).resolve().parent / "configs" / "tiny_fine_grained.yaml"
    data = {**FG_DATA, **(data or {})}
    true_root, shuffled_root = out_root / "data", out_root / "data_shuffled"
    cfg = load_config(config, [f"pretrained={pretrained}", f"data_root={true_root}", *overrides])
    split = fg_data(true_root, shuffled_root, cfg, data)
    accelerator = Accelerator(cpu=True)

    def acc(spec: Any, state: dict[str, torch.Tensor] | None, seed: int) -> dict[str, float]:
        clip, step_model = build_model(cfg.model, cfg.pretrained, spec, seed=seed)
        if state is not None:
            step_model.prompted.load_learned_state(state)
        s_dl, p_dl, queries = eval_loaders(split.test, eval_transform(clip), cfg.eval_batch_size, 0, 0, cfg.sketch_mode)
        result = evaluate(accelerator, step_model.prompted, split.test, s_dl, p_dl, queries, cfg)
        return {"queries": result["n_queries"], **{f"{g} {k}": result[f"metrics_{g}_gallery"][k]
                                                     for g in ("unseen", "category") for k in ("Acc@1", "Acc@5")}}

    frozen = acc(spec_for("fine_grained", n_prompts=0, layernorm=False), None, cfg.seed)
    seconds, train_wall = fg_train_runs(config, out_root, pretrained, seeds, steps, jobs, overrides)
    ckpt_spec = spec_for("fine_grained", cfg.n_prompts, cfg.deep, cfg.layernorm)
    rows: list[dict[str, Any]] = [{"arm": "frozen", "seed": None, **frozen}]
    for seed in seeds:
        rows.append({"arm": "step0", "seed": seed, **acc(ckpt_spec, None, seed)})
        for arm in FG_ARMS[1:]:
            out = out_root / f"{arm}_seed{seed}"
            ckpt = read_checkpoint(out / "prompts.safetensors")
            records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
            last = [r for r in records if "loss" in r][-1]
            rows.append({"arm": arm, "seed": seed, "train_seconds": seconds[(arm, seed)],
                         "last_hard_triplet": last["hard_triplet"], "last_patch_shuffle": last["patch_shuffle"],
                         **acc(ckpt.spec, ckpt.state, seed)})
    arms = {arm: [r["unseen Acc@1"] for r in rows if r["arm"] == arm] for arm in FG_ARMS}
    return {"config": str(config), "pretrained": pretrained, "steps": steps, "seeds": seeds, "data": data,
            "overrides": list(overrides), "train_wall_seconds": train_wall, "rows": rows, "arms": arms,
            "frozen_acc1": frozen["unseen Acc@1"], "verdict": fg_verdict(frozen["unseen Acc@1"], arms)}


def fg_last_line(r: dict[str, Any]) -> str:
    """`fg_check=pass|fail` and the figures as JSON: the machine-readable last line."""
    v = r["verdict"]
    means = {arm: round(statistics.fmean(values), 2) for arm, values in r["arms"].items()}
    figures = {"frozen": round(r["frozen_acc1"], 2), **means, "per_seed": {k: [round(x, 2) for x in vs] for k, vs in r["arms"].items()},
               "gain_mean": round(v["gain_mean"], 2), "control_gap_per_seed": [round(x, 2) for x in v["control_gap_per_seed"]],
               "seeds": len(r["seeds"]), "queries": r["rows"][0]["queries"], "steps": r["steps"], "reasons": v["reasons"]}
    return f"fg_check={'pass' if v['passed'] else 'fail'} {json.dumps(figures)}"


def print_fg_check(r: dict[str, Any]) -> None:
    print(f"\n## Fine-grained learning check (instance-aware tiny backbone {r['pretrained']}; {r['steps']} prompt steps; "
          f"{' '.join(r['overrides']) or 'tiny_fine_grained.yaml as is'}; {r['rows'][0]['queries']} unseen queries; "
          f"training wall {r['train_wall_seconds']:.0f} s)")
    print("| arm | seed | unseen-gallery Acc@1 | Acc@5 | own-class Acc@1 | last hard triplet | last patch shuffle |")
    print("|---|---|---|---|---|---|---|")
    for row in r["rows"]:
        label = FG_ARM_LABELS.get(row["arm"], "frozen backbone, no prompts (gate)")
        tri = f"{row['last_hard_triplet']:.3f}" if "last_hard_triplet" in row else "-"
        ps = f"{row['last_patch_shuffle']:.3f}" if "last_patch_shuffle" in row else "-"
        print(f"| {label} | {row['seed'] if row['seed'] is not None else '-'} | {row['unseen Acc@1']:.1f} | "
              f"{row['unseen Acc@5']:.1f} | {row['category Acc@1']:.1f} | {tri} | {ps} |")
    v = r["verdict"]
    print(f"\n(b)-(a) per seed {[round(g, 1) for g in v['gain_per_seed']]} (mean {v['gain_mean']:.1f}); "
          f"(b)-(c) per seed {[round(g, 1) for g in v['control_gap_per_seed']]}")
    for reason in v["reasons"]:
        print(f"FAIL: {reason}")


# ---- diagnostics on saved runs: the patch-shuffle loss, retrieval while drawing (issue 17 items 3 and 4) ----
def _models_for(cfg: Any, prompts: list[str]) -> dict[str, tuple[Any, dict[str, torch.Tensor] | None]]:
    """The frozen backbone (no prompts) and each prompt file ("step0": untrained prompts), as (spec, state) by label."""
    from zsdemo.model.prompts import read_checkpoint

    models: dict[str, tuple[Any, dict[str, torch.Tensor] | None]] = {
        "frozen backbone, no prompts": (spec_for(cfg.setting, n_prompts=0, layernorm=False), None)}
    for path in prompts:
        if path == "step0":  # the config's prompts at initialisation (seed = cfg.seed)
            models[f"prompts at step 0 (seed {cfg.seed})"] = (spec_for(cfg.setting, cfg.n_prompts, cfg.deep, cfg.layernorm), None)
            continue
        ckpt = read_checkpoint(path)
        models[f"prompts {Path(path).parent.name}/{Path(path).name} (step {ckpt.meta.get('step')})"] = (ckpt.spec, ckpt.state)
    return models


def _ps_stats(embed: Any, s: torch.Tensor, p: torch.Tensor, grid: int, margin: float) -> dict[str, float]:
    """The patch-shuffle triplet on (sketch, paired photo) image batches: both shuffled by perm1 (positive) and the
    photo by another perm2 (negative), as train/datasets.py draws them."""
    from train.losses import cosine_distance
    from train.transforms import draw_permutation, patch_shuffle

    rng = random.Random(0)
    perm1 = [draw_permutation(rng, grid) for _ in range(len(s))]
    perm2 = [draw_permutation(rng, grid, exclude=q) for q in perm1]
    shuffle = lambda x, perms: torch.stack([patch_shuffle(x[i], perms[i], grid) for i in range(len(x))])  # noqa: E731
    e_p, e_sp, e_pp = embed(p, "photo"), embed(shuffle(s, perm1), "sketch"), embed(shuffle(p, perm1), "photo")
    e_pn, e_s = embed(shuffle(p, perm2), "photo"), embed(s, "sketch")
    d_pos, d_neg = cosine_distance(e_sp, e_pp), cosine_distance(e_sp, e_pn)
    cos = lambda a, b: float((a * b).sum(-1).mean())  # noqa: E731 (embeddings are L2-normalised)
    return {f"g{grid} cos(photo, shuffled photo)": cos(e_p, e_pp), f"g{grid} cos(sketch, shuffled sketch)": cos(e_s, e_sp),
            f"g{grid} cos(photo perm1, photo perm2)": cos(e_pp, e_pn), f"g{grid} d+": float(d_pos.mean()),
            f"g{grid} d-": float(d_neg.mean()), f"g{grid} d- - d+ (sd)": float((d_neg - d_pos).std()),
            f"g{grid} L_ps": float(torch.relu(margin + d_pos - d_neg).mean()),
            f"g{grid} active": float((margin + d_pos - d_neg > 0).double().mean())}


def _ps_row(cfg: Any, label: str, spec: Any, state: dict[str, torch.Tensor] | None, part: Any, picks: list[int],
            grids: tuple[int, ...]) -> dict[str, Any]:
    """ps_diagnosis for one model: hard-triplet distances and _ps_stats per grid on the picked seen pairs."""
    from train.datasets import load_sketch
    from train.losses import cosine_distance
    from train.transforms import eval_transform
    from zsdemo.model.preprocess import load_photo

    clip, step_model = build_model(cfg.model, cfg.pretrained, spec, seed=cfg.seed)
    if state is not None:
        step_model.prompted.load_learned_state(state)
    prompted, transform = step_model.prompted.eval(), eval_transform(clip)
    by_class = part.photos_by_class()
    pairs = [part.sketch_pairs[i] for i in picks]
    same = [by_class[part.sketch_labels[i]] for i in picks]
    negs = [c[(c.index(q) + 1) % len(c)] for c, q in zip(same, pairs, strict=True)]  # the next photo of the class
    s = torch.stack([transform(load_sketch(part.sketches[i], "none")) for i in picks])
    p, neg = (torch.stack([transform(load_photo(part.photos[j])) for j in js]) for js in (pairs, negs))

    def embed(x: torch.Tensor, modality: str) -> torch.Tensor:
        return prompted(x, modality).float()

    with torch.no_grad():
        d_pos, d_neg = cosine_distance(embed(s, "sketch"), embed(p, "photo")), cosine_distance(embed(s, "sketch"), embed(neg, "photo"))
        row = {"model": label, "image_size": int(s.shape[-1]), "d(s, p+)": float(d_pos.mean()), "d(s, p-)": float(d_neg.mean()),
               "hard triplet": float(torch.relu(cfg.margin + d_pos - d_neg).mean())}
        for grid in grids:
            row.update(_ps_stats(embed, s, p, grid, cfg.ps_margin))
    return row


def ps_diagnosis(config: Path, overrides: list[str], prompts: list[str], grids: tuple[int, ...] = (2, 4),
                 n: int = 210) -> dict[str, Any]:
    """Why L_ps sits at its margin: on n seen (training) pairs without augmentation, for the frozen backbone and each
    prompt file, cosines between shuffled and unshuffled embeddings, the patch-shuffle triplet's d+ / d- / loss per
    grid, and the hard triplet's own d(s, p+), d(s, p-) (p- = the next photo of the same class)."""
    from train.config import load_config
    from train.splits import split_from_config

    cfg = load_config(config, overrides)
    part = split_from_config(cfg, check_sampler=False).train
    picks = [int(i * len(part.sketches) / n) for i in range(min(n, len(part.sketches)))]
    rows = [_ps_row(cfg, label, spec, state, part, picks, grids) for label, (spec, state) in _models_for(cfg, prompts).items()]
    sizes = [row.pop("image_size") for row in rows]
    return {"config": str(config), "overrides": overrides, "pairs": len(picks), "image_size": sizes[0],
            "ps_margin": cfg.ps_margin, "grids": list(grids), "rows": rows}


def drawing_check(config: Path, overrides: list[str], prompts: list[str], work: Path, ndjson_dir: str = "",
                  limit: int = 0) -> dict[str, Any]:
    """Retrieval while drawing: the unseen sketches redrawn stroke by stroke at 25/50/75/100 % of their strokes, for
    the frozen backbone and each prompt file; category-level mAP@200 / P@200 per fraction, fine-grained Acc@1/5 per
    fraction and m@A / m@B (train/eval.py). Sketches: train.synthetic data (strokes_of), or with ndjson_dir the
    QuickDraw drawings of the unseen classes (`<ndjson_dir>/<class>.ndjson`, first `limit` per class; category-level)
    against the config's unseen photos."""
    from accelerate import Accelerator

    from train.config import load_config
    from train.eval import DRAW_FRACTIONS, drawing_parts, evaluate_while_drawing
    from train.splits import ndjson_part, split_from_config
    from train.synthetic import dataset_instances, strokes_of
    from train.transforms import eval_transform

    cfg = load_config(config, overrides)
    part = split_from_config(cfg, check_sampler=False).test
    if ndjson_dir:
        part, drawings = ndjson_part(part, ndjson_dir, limit)
        steps = drawing_parts(part, drawings.__getitem__, 256, work, thin_last=False)  # QuickDraw's 256 x 256 canvas
    else:
        instances, size = dataset_instances(cfg.data_root)
        steps = drawing_parts(part, lambda path: strokes_of(path, instances, size), size, work)
    accelerator = Accelerator(cpu=True)
    rows = []
    for label, (spec, state) in _models_for(cfg, prompts).items():
        clip, step_model = build_model(cfg.model, cfg.pretrained, spec, seed=cfg.seed)
        if state is not None:
            step_model.prompted.load_learned_state(state)
        rows.append({"model": label, **evaluate_while_drawing(accelerator, step_model.prompted, steps, eval_transform(clip), cfg)})
    return {"config": str(config), "overrides": overrides, "setting": cfg.setting, "fractions": list(DRAW_FRACTIONS), "rows": rows}


def print_diagnostics(ps: dict[str, Any] | None, draw: dict[str, Any] | None) -> None:
    if ps:
        print(f"\n## Patch-shuffle diagnosis ({ps['pairs']} seen pairs, {ps['image_size']} px, ps_margin {ps['ps_margin']})")
        for row in ps["rows"]:
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}))
    if draw:
        keys = ("mAP@200", "P@200") if draw["setting"] == "category" else ("Acc@1", "Acc@5")
        print(f"\n## Retrieval while drawing ({draw['setting']}; strokes drawn: {', '.join(f'{f:.0%}' for f in draw['fractions'])})")
        extra = "" if draw["setting"] == "category" else " m@A | m@B |"
        print("| model | " + " | ".join(f"{k} at {f:.0%}" for k in keys for f in draw["fractions"]) + f" |{extra}")
        print("|---|" + "---|" * (len(keys) * len(draw["fractions"]) + (2 if extra else 0)))
        for row in draw["rows"]:
            cells = [f"{v:.3f}" if draw["setting"] == "category" else f"{v:.1f}" for k in keys for v in row[k]]
            tail = "" if draw["setting"] == "category" else f" {row['m@A']:.3f} | {row['m@B']:.3f} |"
            print(f"| {row['model']} | " + " | ".join(cells) + f" |{tail}")


def load_tiny_log_every() -> int:
    from train.config import load_config

    return load_config(Path(__file__).resolve().parent / "configs" / "tiny.yaml").log_every


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Training throughput (ours vs naive text re-encoding) and a learning check.")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3, help="timed steps of each kind (after one warm-up step)")
    parser.add_argument("--classes", type=int, default=104, help="text classes (Sketchy-ext seen classes)")
    parser.add_argument("--precision", default="", help="fp32 | bf16 (default: bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-learning", action="store_true")
    parser.add_argument("--learning-overrides", nargs="*", default=list(LEARNING_OVERRIDES),
                        help="key=value overrides of train/configs/tiny.yaml (default: %(default)s)")
    parser.add_argument("--pretrained-tiny", default="", help="reuse this train/pretrain_tiny.py output instead of pretraining")
    parser.add_argument("--pretrain-steps", type=int, default=PRETRAIN_STEPS)
    parser.add_argument("--fine-grained", action="store_true",
                        help="run the fine-grained learning check (Acc@1 frozen vs trained, per delta_tau and seed)")
    parser.add_argument("--delta-taus", type=float, nargs="*", default=[1.0, 0.1])
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--fg-overrides", nargs="*", default=["epochs=30"],
                        help="key=value overrides of train/configs/tiny_fine_grained.yaml (default: %(default)s)")
    parser.add_argument("--fg-check", action="store_true",
                        help="the fine-grained check that passes or fails: arms (a)-(d) x seeds on an instance-aware "
                             "tiny backbone, run alone; last line fg_check=pass|fail {figures}")
    parser.add_argument("--fg-steps", type=int, default=FG_STEPS, help="prompt-training steps per run of --fg-check")
    parser.add_argument("--fg-check-overrides", nargs="*", default=[],
                        help="key=value overrides of train/configs/tiny_fine_grained.yaml for every --fg-check run")
    parser.add_argument("--jobs", type=int, default=2, help="--fg-check training processes at a time (1 thread each)")
    parser.add_argument("--ps-diagnosis", default="", metavar="CONFIG",
                        help="patch-shuffle diagnosis on this config's seen pairs (with --diag-overrides, --diag-prompts)")
    parser.add_argument("--drawing-check", default="", metavar="CONFIG",
                        help="retrieval while drawing on this config's unseen synthetic sketches (frozen vs --diag-prompts)")
    parser.add_argument("--drawing-ndjson", default="", metavar="DIR",
                        help="--drawing-check on QuickDraw drawings: DIR/<class>.ndjson for each unseen class (category)")
    parser.add_argument("--drawing-limit", type=int, default=0, help="drawings per class read from each .ndjson (0 = all)")
    parser.add_argument("--diag-overrides", nargs="*", default=[], help="key=value overrides for the two diagnostics")
    parser.add_argument("--diag-prompts", nargs="*", default=[],
                        help="prompt files compared with the frozen backbone; 'step0' = the config's untrained prompts")
    parser.add_argument("--output", default="", help="write the results as JSON here")
    return parser.parse_args(argv)


def run_throughput(args: argparse.Namespace, precision: str) -> dict[str, Any]:
    r = throughput(args.model, args.batch_size, args.steps, args.classes, precision, args.device)
    print(f"\n## Training throughput: {r['model']} ({r['weights']}), batch {r['batch_size']} "
          f"({r['images_per_step']} images/step), {r['device']} {r['precision']}, {r['threads']} threads")
    print("| step | s/step (min) | s/step (median) | samples/s (min time) |\n|---|---|---|---|")
    print(f"| ours: text embeddings once per run | {min(r['step_s_ours']):.2f} | {statistics.median(r['step_s_ours']):.2f} "
          f"| {r['samples_per_s_ours']:.2f} |")
    print(f"| naive: re-encode {r['text_classes']} class texts every step | {min(r['step_s_naive']):.2f} "
          f"| {statistics.median(r['step_s_naive']):.2f} | {r['samples_per_s_naive']:.2f} |")
    print(f"\nspeed-up vs naive: {r['speedup_vs_naive']:.2f}x on min step times ({r['speedup_vs_naive_median']:.2f}x on medians); "
          f"text encoding alone {min(r['text_encode_s']):.2f} s -> {r['speedup_from_text_cost']:.2f}x expected. "
          "Samples = triplets; data loading not included.")
    return r


def run_learning(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        pre: dict[str, Any] = {"seconds": 0.0}
        weights = args.pretrained_tiny
        if not weights:
            from train.pretrain_tiny import pretrain

            weights = str(Path(tmp) / "tiny_pretrained.safetensors")
            pre = pretrain(weights, steps=args.pretrain_steps)
        r = learning_check(Path(tmp) / "tiny", args.learning_overrides, weights)
    r["pretrain"] = {k: v for k, v in pre.items() if k in ("seconds", "train_acc", "heldout_acc")}
    if "losses" in pre:
        r["pretrain"].update(loss_first=pre["losses"][0], loss_last=sum(pre["losses"][-50:]) / 50, steps=len(pre["losses"]))
    source = (f"pretrained here: {r['pretrain']['steps']} steps in {pre['seconds']:.0f} s, photo zero-shot accuracy "
              f"{pre['train_acc']:.3f} on its pool, {pre['heldout_acc']:.3f} held out" if "steps" in r["pretrain"]
              else f"weights {weights}")
    print(f"\n## Learning check: tiny ViT pretrained on synthetic photos ({source}); "
          f"prompt learning {r['train_seconds']:.0f} s ({' '.join(r['overrides']) or 'tiny.yaml as is'})")
    print("| model | unseen mAP@all | seen mAP@all |\n|---|---|---|")
    for label, row in r["rows"].items():
        print(f"| {label} | {row['unseen mAP@all']:.3f} | {row['seen mAP@all']:.3f} |")
    print(f"\ntraining loss (logged every {load_tiny_log_every()} steps): first {r['train_loss_first']:.4f}, "
          f"last {r['train_loss_last']:.4f}")
    return r


def run_fine_grained(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        weights = args.pretrained_tiny
        if not weights:
            from train.pretrain_tiny import pretrain

            weights = str(Path(tmp) / "tiny_pretrained.safetensors")
            pretrain(weights, steps=args.pretrain_steps)
        r = fine_grained_check(Path(tmp) / "fg", weights, args.delta_taus, args.seeds, args.fg_overrides)
    print_fine_grained(r)
    return r


def run_fg_check(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        weights, pre = args.pretrained_tiny, {}
        if not weights:
            from train.pretrain_tiny import pretrain

            weights = str(Path(tmp) / "tiny_instance.safetensors")
            pre = pretrain(weights, **FG_PRETRAIN)
            print(f"instance-aware pretraining {FG_PRETRAIN}: {pre['seconds']:.0f} s, photo zero-shot accuracy "
                  f"{pre['train_acc']:.3f} on its pool, {pre['heldout_acc']:.3f} held out", flush=True)
        r = fg_check(Path(tmp) / "fgc", weights, args.seeds, args.fg_steps, args.jobs, tuple(args.fg_check_overrides))
    r["pretrain"] = {"recipe": FG_PRETRAIN if pre else "given", **{k: pre[k] for k in ("seconds", "train_acc", "heldout_acc") if k in pre}}
    print_fg_check(r)
    return r


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.fg_check or args.ps_diagnosis or args.drawing_check:  # run alone
        args.skip_throughput = args.skip_learning = True
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    set_cpu_threads(torch.device(args.device).type, 1)  # OMP_NUM_THREADS when set
    precision = args.precision or ("bf16" if args.device.startswith("cuda") else "fp32")
    results: dict[str, Any] = {}
    if not args.skip_throughput:
        results["throughput"] = run_throughput(args, precision)
    if not args.skip_learning:
        results["learning"] = run_learning(args)
    if args.fine_grained:
        results["fine_grained"] = run_fine_grained(args)
    if args.fg_check:
        results["fg_check"] = run_fg_check(args)
    if args.ps_diagnosis:
        results["ps_diagnosis"] = ps_diagnosis(Path(args.ps_diagnosis), args.diag_overrides, args.diag_prompts)
    if args.drawing_check:
        with tempfile.TemporaryDirectory() as tmp:
            results["drawing"] = drawing_check(Path(args.drawing_check), args.diag_overrides, args.diag_prompts, Path(tmp),
                                               args.drawing_ndjson, args.drawing_limit)
    print_diagnostics(results.get("ps_diagnosis"), results.get("drawing"))
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2, default=str))
    if args.fg_check:
        print(fg_last_line(results["fg_check"]), flush=True)
    return results


if __name__ == "__main__":
    main()
