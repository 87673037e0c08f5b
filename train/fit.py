"""Learn visual prompts (and LayerNorm affine parameters) on a frozen CLIP ViT for zero-shot SBIR.

    accelerate launch train/fit.py --config train/configs/sketchy_category.yaml [--key value | key=value ...]
    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 train/fit.py --config train/configs/tiny.yaml   # 2 CPU ranks
    python train/fit.py --config train/configs/tiny.yaml --resume                                      # continue

Checkpoints go to <out_dir>/step_N (Accelerate state with the learned tensors only, trainer_state.json,
and the prompt file); --resume continues from the newest complete one. The engine's prompt file is
exported at every evaluation and at the end (<out_dir>/prompts.safetensors). A fresh run refuses an
out_dir that already holds files (use --resume, a new out_dir, or overwrite=true). The run ends with an
evaluation on every unseen sketch (eval.json), whatever eval_max_queries thins in-training evaluations to.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import importlib.util
import json
import logging
import math
import os
import re
import shutil
import time
from typing import Any

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from train.config import TrainConfig, load_config
from train.datasets import TripletDataset
from train.eval import eval_loaders, evaluate, table_for
from train.losses import category_losses, fine_grained_losses, term_gradient_norms, term_weights
from train.model import (
    build_model,
    class_text_embeddings,
    count_trainable,
    export_prompts,
    prompt_drift,
    prompt_scale_report,
    spec_for,
)
from train.samplers import CategoryBatchSampler, FineGrainedBatchSampler
from train.splits import split_from_config
from train.transforms import eval_transform

log = logging.getLogger("train.fit")
STATE_FILE = "trainer_state.json"


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """Newest step_N folder that finished writing (has trainer_state.json)."""
    found = [(int(m.group(1)), p) for p in Path(out_dir).glob("step_*")
             if (m := re.fullmatch(r"step_(\d+)", p.name)) and (p / STATE_FILE).is_file()]
    return max(found)[1] if found else None


RESUME_KEYS = ("setting", "model", "pretrained", "n_prompts", "deep", "layernorm")


def check_resume_config(out_dir: Path, cfg: TrainConfig) -> None:
    """--resume: the run's saved config.yaml must name the same model, weights and prompt spec as `cfg`."""
    saved_file = out_dir / "config.yaml"
    if not saved_file.is_file():
        log.warning("--resume: %s is missing; cannot check that the model and prompt spec match", saved_file)
        return
    saved = yaml.safe_load(saved_file.read_text()) or {}
    diff = {k: (saved.get(k), getattr(cfg, k)) for k in RESUME_KEYS if saved.get(k) != getattr(cfg, k)}
    if diff:
        detail = "; ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in diff.items())
        raise SystemExit(f"--resume: {out_dir} was trained with a different model/weights/prompt spec ({detail}). "
                         "Use the same settings, or a new out_dir.")


def check_out_dir(out_dir: Path, cfg: TrainConfig) -> bool:
    """A fresh run must not write into another run's folder: appended metrics.jsonl, foreign step_N folders
    that pruning would mix with ours and that --resume would continue. Returns True when the folder must be
    cleared first (overwrite=true); raises SystemExit when it holds files and neither flag is given."""
    if cfg.resume or not out_dir.is_dir() or not any(out_dir.iterdir()):
        return False
    if not cfg.overwrite:
        raise SystemExit(f"{out_dir} already holds files from another run ({', '.join(sorted(p.name for p in out_dir.iterdir())[:6])}). "
                         "Continue it with --resume, pick a new out_dir (or name), or pass overwrite=true to delete it first.")
    if not ((out_dir / "config.yaml").is_file() or (out_dir / "metrics.jsonl").is_file() or any(out_dir.glob("step_*"))):
        raise SystemExit(f"overwrite=true: {out_dir} does not look like a run folder (no config.yaml, metrics.jsonl or "
                         "step_N): not deleting it. Pick another out_dir.")
    return True


def check_checkpoint_contents(ckpt: Path, expected: list[str]) -> None:
    """step_N must hold the learned tensors only: a wrapper that bypasses StepModel.state_dict (another DDP
    wrapper, another Accelerate version) would otherwise copy the frozen backbone (~350 MB for ViT-B/32)
    into every checkpoint without a word."""
    from safetensors import safe_open

    files = sorted(ckpt.glob("model*.safetensors")) + sorted(ckpt.glob("pytorch_model*.bin"))
    if not files:
        raise RuntimeError(f"{ckpt} holds no model weights file; Accelerate's checkpoint layout changed")
    keys: set[str] = set()
    for f in files:
        if f.suffix == ".safetensors":
            with safe_open(str(f), framework="pt") as handle:
                keys |= set(handle.keys())
        else:
            keys |= set(torch.load(f, map_location="cpu", weights_only=True))
    if keys != set(expected):
        raise RuntimeError(f"{ckpt} holds {len(keys)} model tensors, expected the {len(expected)} learned ones; "
                           f"unexpected: {sorted(keys - set(expected))[:5]}, missing: {sorted(set(expected) - keys)[:5]}")


def prune_checkpoints(out_dir: Path, keep: int) -> None:
    if keep <= 0:
        return
    steps = sorted((int(m.group(1)), p) for p in out_dir.glob("step_*") if (m := re.fullmatch(r"step_(\d+)", p.name)))
    for _, path in steps[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    config_path = None
    if "--config" in argv:
        i = argv.index("--config")
        config_path = argv[i + 1]
        del argv[i:i + 2]
    cfg: TrainConfig = load_config(config_path, argv)
    out_dir = Path(cfg.out_dir)
    if cfg.tensorboard and not any(importlib.util.find_spec(m) for m in ("tensorboard", "tensorboardX")):
        raise SystemExit("tensorboard=true needs the tensorboard package: pip install tensorboard")

    accelerator = Accelerator(mixed_precision=cfg.mixed_precision or None, gradient_accumulation_steps=cfg.grad_accum,
                              log_with="tensorboard" if cfg.tensorboard else None, project_dir=str(out_dir))
    main_proc = accelerator.is_main_process
    logging.basicConfig(level=logging.INFO if main_proc else logging.WARNING,
                        format=f"%(asctime)s [rank {accelerator.process_index}] %(levelname)s %(name)s: %(message)s")
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    set_seed(cfg.seed)
    log.info("%d process(es), device %s, mixed precision %s, grad accumulation %d",
             accelerator.num_processes, accelerator.device, accelerator.mixed_precision, cfg.grad_accum)

    if cfg.resume and latest_checkpoint(out_dir) is not None:
        check_resume_config(out_dir, cfg)  # before anything is built or loaded
    clear = check_out_dir(out_dir, cfg)  # every rank decides before any rank writes
    accelerator.wait_for_everyone()
    if clear and main_proc:
        log.warning("overwrite=true: deleting the previous run in %s", out_dir)
        shutil.rmtree(out_dir)
    accelerator.wait_for_everyone()

    # ---- data first: a wrong folder fails here, before any model is built -------------------------
    if cfg.generate_synthetic and not Path(cfg.data_root).exists():
        with accelerator.main_process_first():
            if main_proc:
                from train.synthetic import generate

                generate(cfg.data_root, seed=cfg.seed)
    split = split_from_config(cfg)
    fine = cfg.setting == "fine_grained"

    # ---- model: frozen CLIP + prompts; text class embeddings once ---------------------------------
    spec = spec_for(cfg.setting, cfg.n_prompts, cfg.deep, cfg.layernorm)
    clip, step_model = build_model(cfg.model, cfg.pretrained, spec, seed=cfg.seed)
    text_features = class_text_embeddings(clip, cfg.model, split.train.classes, cfg.text_template).to(accelerator.device)
    logit_scale = float(clip.logit_scale.exp())
    transform = eval_transform(clip)
    del clip.transformer, clip.token_embedding  # the text tower is not needed after this (memory)
    prompted = step_model.prompted
    log.info("trainable parameters: %d (prompts %s, LayerNorm %s); spec %s", count_trainable(step_model),
             sum(p.numel() for p in prompted.prompts.parameters()), sum(p.numel() for p in prompted.layernorms.parameters()), spec)
    groups = [{"params": list(prompted.prompts.parameters()), "lr": cfg.lr_prompt},
              {"params": list(prompted.layernorms.parameters()), "lr": cfg.lr_layernorm}]
    optimizer = torch.optim.Adam([g for g in groups if g["params"]], weight_decay=cfg.weight_decay)
    warmup = max(cfg.warmup_steps, 0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)

    if fine:
        sampler = FineGrainedBatchSampler(split.train, cfg.p_classes, cfg.instances_per_class, cfg.seed, cfg.ps_grid)
    else:
        sampler = CategoryBatchSampler(split.train, cfg.batch_size, cfg.seed)
    train_ds = TripletDataset(split.train, transform, cfg.augment, fine, cfg.ps_grid, cfg.sketch_mode)
    train_dl = DataLoader(train_ds, batch_sampler=sampler, num_workers=cfg.num_workers,
                          persistent_workers=cfg.num_workers > 0)
    # in-training evaluations may use a subset of the queries; the final one always uses all of them
    s_dl, p_dl, queries = eval_loaders(split.test, transform, cfg.eval_batch_size, cfg.num_workers, 0, cfg.sketch_mode)
    sub = eval_loaders(split.test, transform, cfg.eval_batch_size, cfg.num_workers, cfg.eval_max_queries, cfg.sketch_mode)
    subsampled = len(sub[2]) < len(queries)

    step_model, optimizer, train_dl, s_dl, p_dl = accelerator.prepare(step_model, optimizer, train_dl, s_dl, p_dl)
    sub_s_dl, sub_queries = (accelerator.prepare(sub[0]), sub[2]) if subsampled else (s_dl, queries)
    accelerator.register_for_checkpointing(scheduler)
    prompts_v0 = {k: v.detach().clone() for k, v in accelerator.unwrap_model(step_model).prompted.prompts.items()}
    weights = term_weights(cfg.setting, cfg.cls_weight, cfg.delta_weight, cfg.ps_weight)

    steps_per_epoch = math.ceil(len(train_dl) / cfg.grad_accum)
    total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
    state = {"step": 0, "epoch": 0, "batch_in_epoch": 0}
    if cfg.resume:
        ckpt = latest_checkpoint(out_dir)
        if ckpt is None:
            log.warning("--resume: no complete step_N checkpoint in %s; starting from scratch", out_dir)
        else:
            accelerator.load_state(str(ckpt))
            state = json.loads((ckpt / STATE_FILE).read_text())
            log.info("resumed from %s: step %d, epoch %d, batch %d of the epoch",
                     ckpt, state["step"], state["epoch"], state["batch_in_epoch"])
    if main_proc:
        cfg.dump(out_dir / "config.yaml")
    if cfg.tensorboard:
        accelerator.init_trackers(cfg.name, config={k: v for k, v in cfg.to_dict().items() if not isinstance(v, list)})
    metrics_file = out_dir / "metrics.jsonl"
    per_step = cfg.batch_size * cfg.grad_accum * accelerator.num_processes
    log.info("%d optimiser steps (%d per epoch), %d triplets per step across processes", total_steps, steps_per_epoch, per_step)

    def log_json(record: dict[str, Any]) -> None:
        if main_proc:
            with metrics_file.open("a") as fh:
                fh.write(json.dumps(record) + "\n")

    def run_eval(step: int, final: bool) -> dict[str, Any]:
        q_dl, q_idx = (s_dl, queries) if final else (sub_s_dl, sub_queries)
        result = evaluate(accelerator, accelerator.unwrap_model(step_model).prompted, split.test, q_dl, p_dl, q_idx, cfg)
        result["step"] = step
        result["queries"] = "all" if len(q_idx) == len(queries) else f"{len(q_idx)} of {len(queries)} (eval_max_queries)"
        if main_proc:
            extra = {"step": str(step), "run": cfg.name, "setting": cfg.setting, "metrics": result["metrics"]}
            path = export_prompts(out_dir / "prompts" / f"step_{step}.safetensors", accelerator.unwrap_model(step_model).prompted,
                                  cfg.model, cfg.pretrained, extra)
            shutil.copyfile(path, out_dir / "prompts.safetensors")
            (out_dir / f"eval_step_{step}.json").write_text(json.dumps(result, indent=2))
            log.info("eval at step %d: %s\n%s", step, result["metrics"], table_for(result, cfg, f"this run, step {step}"))
            log_json({"step": step, "eval": result["metrics"], "gather": result["gather"], "final": final,
                      "n_queries": result["n_queries"], "skipped_files": result["skipped_files"]})
        if cfg.tensorboard:
            accelerator.log({f"eval/{k}": v for k, v in result["metrics"].items()}, step=step)
        return result

    learned_names = accelerator.unwrap_model(step_model).trainable_names()

    def save(step: int) -> None:
        ckpt = out_dir / f"step_{step}"
        accelerator.save_state(str(ckpt))
        if main_proc:
            check_checkpoint_contents(ckpt, learned_names)
            export_prompts(ckpt / "prompts.safetensors", accelerator.unwrap_model(step_model).prompted, cfg.model,
                           cfg.pretrained, {"step": str(step), "run": cfg.name})
            (ckpt / STATE_FILE).write_text(json.dumps(state))  # written last: marks the checkpoint complete
            prune_checkpoints(out_dir, cfg.keep_checkpoints)
        accelerator.wait_for_everyone()

    # ---- the loop --------------------------------------------------------------------------------
    if state["step"] == 0 and main_proc:
        # are the prompts on the scale of the tokens they join? (after ln_pre; matters with real weights)
        items = sampler.plan()[0][:8]
        probe = torch.stack([train_ds[item]["sketch"] for item in items]).to(accelerator.device)
        scale = prompt_scale_report(accelerator.unwrap_model(step_model).prompted, probe)
        log.info("step 0: prompt token norm %s vs median token norm after ln_pre %.3f (ratio %s)",
                 {k: round(v, 3) for k, v in scale["prompt_norm"].items()}, scale["token_norm_median"],
                 {k: round(v, 3) for k, v in scale["ratio"].items()})
        log_json({"step": 0, "prompt_scale": scale})
    skipped_loads = torch.zeros((), dtype=torch.long)
    step_model.train()
    bar = tqdm(total=total_steps, initial=state["step"], disable=not (main_proc and cfg.progress), desc=cfg.name)
    t_last, n_last = time.perf_counter(), 0
    while state["step"] < total_steps:
        sampler.set_epoch(state["epoch"])
        train_dl.set_epoch(state["epoch"])
        loader = accelerator.skip_first_batches(train_dl, state["batch_in_epoch"]) if state["batch_in_epoch"] else train_dl
        for batch in loader:
            skipped_loads += int(batch["skipped"].sum())
            with accelerator.accumulate(step_model):
                if fine:
                    emb = step_model(batch["sketch"], batch["positive"], batch["negative"],
                                     batch["ps_sketch"], batch["ps_positive"], batch["ps_negative"])
                    losses = fine_grained_losses(*emb[:3], batch["label"], *emb[3:], text_features, logit_scale,
                                                 cfg.p_classes, cfg.margin, cfg.cls_weight, cfg.delta_weight,
                                                 cfg.ps_weight, cfg.ps_margin, cfg.delta_tau, cfg.delta_form)
                else:
                    emb = step_model(batch["sketch"], batch["positive"], batch["negative"])
                    losses = category_losses(*emb, batch["label"], batch["negative_label"], text_features, logit_scale,
                                             cfg.margin, cfg.cls_weight)
                will_log = accelerator.sync_gradients and ((state["step"] + 1) % cfg.log_every == 0
                                                            or state["step"] + 1 == total_steps)
                # each weighted term's pull on the embeddings: shows whether a term matters at all
                grads = term_gradient_norms(losses, weights, emb) if will_log else {}
                accelerator.backward(losses["loss"])
                if accelerator.sync_gradients and cfg.grad_clip > 0:
                    accelerator.clip_grad_norm_(step_model.parameters(), cfg.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            state["batch_in_epoch"] += 1
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            state["step"] += 1
            n_last += 1
            step = state["step"]
            bar.update(1)
            if step % cfg.log_every == 0 or step == total_steps:
                grad_values = [grads.get(k, float("nan")) for k in weights]
                packed = torch.tensor([*(float(v.detach()) for v in losses.values()), *grad_values],
                                      device=accelerator.device)
                reduced = accelerator.reduce(packed, "mean").cpu().tolist()
                terms = dict(zip(losses, reduced[:len(losses)], strict=True))
                weighted = {f"weighted_{k}": w * terms[k] for k, w in weights.items()}
                grad_terms = {f"grad_{k}": v for k, v in zip(weights, reduced[len(losses):], strict=True)}
                drift = prompt_drift(accelerator.unwrap_model(step_model).prompted, prompts_v0)
                skipped_total = int(accelerator.reduce(skipped_loads.to(accelerator.device), "sum"))
                elapsed = time.perf_counter() - t_last
                record = {"step": step, "epoch": state["epoch"], **terms, **weighted, **grad_terms,
                          **{f"drift_{k}": v for k, v in drift.items()}, "skipped_loads": skipped_total,
                          "lr": scheduler.get_last_lr()[0], "samples_per_s": n_last * per_step / max(elapsed, 1e-9)}
                log_json(record)
                bar.set_postfix(loss=f"{terms['loss']:.4f}", sps=f"{record['samples_per_s']:.1f}")
                if cfg.tensorboard:
                    accelerator.log({f"train/{k}": v for k, v in record.items() if k != "step"}, step=step)
                t_last, n_last = time.perf_counter(), 0
            if cfg.eval_every and step % cfg.eval_every == 0 and step != total_steps:
                run_eval(step, final=False)
            if step % cfg.checkpoint_every == 0 or step == total_steps:
                save(step)
                if cfg.stop_after_steps and step >= cfg.stop_after_steps:
                    log.warning("stop_after_steps=%d: exiting hard now (simulated crash)", cfg.stop_after_steps)
                    logging.shutdown()
                    os._exit(3)
            if step >= total_steps:
                break
        else:
            state["epoch"] += 1
            state["batch_in_epoch"] = 0
    bar.close()
    result = run_eval(state["step"], final=True)  # every query, also after a resume of a finished run
    skipped_total = int(accelerator.reduce(skipped_loads.to(accelerator.device), "sum"))
    if skipped_total:
        log.warning("training replaced %d unreadable image load(s) by other draws of the same class", skipped_total)
    accelerator.wait_for_everyone()
    # every rank must hold the same learned tensors (DDP keeps them in sync); check it, record it
    flat = torch.cat([p.detach().float().flatten() for p in accelerator.unwrap_model(step_model).parameters() if p.requires_grad])
    per_rank = accelerator.gather(flat[None].contiguous()).cpu()
    ranks = {"world_size": accelerator.num_processes, "identical": bool((per_rank == per_rank[0]).all()),
             "max_abs_diff": float((per_rank - per_rank[0]).abs().max())}
    if not ranks["identical"]:
        log.error("ranks disagree on the learned parameters: %s", ranks)
    if main_proc:
        (out_dir / "ranks.json").write_text(json.dumps(ranks))
        final = {"final_step": state["step"], "prompts": str(out_dir / "prompts.safetensors"), "ranks": ranks,
                 "train_skipped_loads": skipped_total, **result}
        (out_dir / "eval.json").write_text(json.dumps(final, indent=2))
        (out_dir / "eval.md").write_text(table_for(result, cfg, f"this run ({cfg.name}, step {state['step']})") + "\n")
        if cfg.push_to_hub:
            push_to_hub(cfg.push_to_hub, out_dir)
    accelerator.end_training()
    return result


def push_to_hub(repo: str, out_dir: Path) -> None:
    """Upload prompts.safetensors, config.yaml and eval results to a Hugging Face model repo."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo, exist_ok=True)
        for name in ("prompts.safetensors", "config.yaml", "eval.json", "eval.md"):
            if (out_dir / name).is_file():
                api.upload_file(path_or_fileobj=str(out_dir / name), path_in_repo=name, repo_id=repo)
        log.info("pushed %s to https://huggingface.co/%s", out_dir / "prompts.safetensors", repo)
    except Exception as exc:  # network, auth: the run itself succeeded, so do not fail it
        log.error("push to hub %s failed (%s: %s); the prompts are in %s", repo, type(exc).__name__, exc, out_dir)


if __name__ == "__main__":
    main()
