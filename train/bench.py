"""Training throughput and a learning check.

    python train/bench.py                       # ViT-B/32 (random init) at batch 64 on this machine + tiny learning check
    python train/bench.py --precision bf16      # bf16 autocast (default on CUDA)
    python train/bench.py --skip-learning --steps 2

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
import statistics
import tempfile
import time
from typing import Any

import open_clip
import torch

from train.losses import category_losses
from train.model import build_model, spec_for

log = logging.getLogger("train.bench")
PRETRAIN_STEPS = 3000
# 600 prompt steps instead of tiny.yaml's 120: seen-class mAP still rose from 120 to 300 to 600 (train/BENCH.md)
LEARNING_OVERRIDES = ("epochs=60",)


def throughput(model_name: str, batch_size: int, steps: int, n_classes: int, precision: str, device: str) -> dict[str, Any]:
    clip, step_model = build_model(model_name, "none", spec_for("category"))
    clip.to(device)
    step_model.to(device).train()
    size = int(clip.visual.image_size[0] if isinstance(clip.visual.image_size, tuple) else clip.visual.image_size)
    optimizer = torch.optim.Adam([p for p in step_model.parameters() if p.requires_grad], lr=1e-5)
    tokens = open_clip.get_tokenizer(model_name)([f"a photo of a class{i}" for i in range(n_classes)]).to(device)
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
    from train.splits import split_from_config
    from train.transforms import eval_transform
    from train.eval import eval_loaders, evaluate

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
    from train.splits import split_from_config
    from train.transforms import eval_transform
    from train.eval import eval_loaders, evaluate
    from train.synthetic import generate
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


def load_tiny_log_every() -> int:
    from train.config import load_config

    return load_config(Path(__file__).resolve().parent / "configs" / "tiny.yaml").log_every


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description="Training throughput (ours vs naive text re-encoding) and a learning check.")
    parser.add_argument("--model", default="ViT-B-32-quickgelu")
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
    parser.add_argument("--output", default="", help="write the results as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    precision = args.precision or ("bf16" if args.device.startswith("cuda") else "fp32")
    results: dict[str, Any] = {}
    if not args.skip_throughput:
        r = throughput(args.model, args.batch_size, args.steps, args.classes, precision, args.device)
        results["throughput"] = r
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
    if not args.skip_learning:
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
        results["learning"] = r
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
    if args.fine_grained:
        with tempfile.TemporaryDirectory() as tmp:
            weights = args.pretrained_tiny
            if not weights:
                from train.pretrain_tiny import pretrain

                weights = str(Path(tmp) / "tiny_pretrained.safetensors")
                pretrain(weights, steps=args.pretrain_steps)
            results["fine_grained"] = fine_grained_check(Path(tmp) / "fg", weights, args.delta_taus, args.seeds,
                                                         args.fg_overrides)
        print_fine_grained(results["fine_grained"])
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
