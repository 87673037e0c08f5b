"""Learn visual prompts (and LayerNorm affine parameters) on a frozen CLIP ViT for zero-shot SBIR.

    accelerate launch train/fit.py --config train/configs/sketchy_category.yaml [--key value | key=value ...]
    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 train/fit.py --config train/configs/tiny.yaml   # 2 CPU ranks
    python train/fit.py --config train/configs/tiny.yaml --resume                                      # continue

Checkpoints go to <out_dir>/step_N (Accelerate state with the learned tensors only, trainer_state.json,
and the prompt file); --resume continues from the newest complete one. The engine's prompt file is
exported at every evaluation and at the end (<out_dir>/prompts.safetensors). A fresh run refuses an
out_dir that already holds files (use --resume, a new out_dir, or overwrite=true). The run ends with an
evaluation on every unseen sketch (eval.json), whatever eval_max_queries thins in-training evaluations to,
and prints where the prompts are and the app command that serves them.

Read top to bottom: setup (parse_args, start_accelerator, load_data, build_run, resume_or_start), one
training step (compute_losses, train_step, log_step, train), evaluate and export (evaluate_and_export),
save (save_checkpoint, finish); `main` calls them in that order.
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
import re
import shlex
import shutil
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from train.config import ConfigError, TrainConfig, load_config
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
from train.runtime import local_processes, set_cpu_threads
from train.samplers import CategoryBatchSampler, FineGrainedBatchSampler
from train.splits import Split, split_from_config
from train.transforms import eval_transform
from zsdemo.config import DEFAULT_MODEL, DEFAULT_PRETRAINED

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


# ---- setup --------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> TrainConfig:
    """`--config FILE` plus overrides -> TrainConfig; a bad file or key ends the run with a one-line message."""
    argv = list(sys.argv[1:] if argv is None else argv)
    config_path = None
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise SystemExit("fit.py: --config needs a file, e.g. --config train/configs/tiny.yaml")
        config_path = argv[i + 1]
        del argv[i:i + 2]
    try:
        cfg = load_config(config_path, argv)
    except ConfigError as exc:
        raise SystemExit(f"fit.py: {exc}") from None
    if cfg.tensorboard and not any(importlib.util.find_spec(m) for m in ("tensorboard", "tensorboardX")):
        raise SystemExit("tensorboard=true needs the tensorboard package: pip install tensorboard")
    return cfg


def start_accelerator(cfg: TrainConfig) -> Accelerator:
    """Accelerator, logging, seed and CPU threads; then the out_dir checks (every rank decides before any writes)."""
    out_dir = Path(cfg.out_dir)
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision or None, gradient_accumulation_steps=cfg.grad_accum,
                              log_with="tensorboard" if cfg.tensorboard else None, project_dir=str(out_dir))
    main_proc = accelerator.is_main_process
    logging.basicConfig(level=logging.INFO if main_proc else logging.WARNING,
                        format=f"%(asctime)s [rank {accelerator.process_index}] %(levelname)s %(name)s: %(message)s")
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    set_seed(cfg.seed)
    threads = set_cpu_threads(accelerator.device.type, local_processes(accelerator.num_processes))
    log.info("%d process(es), device %s, mixed precision %s, grad accumulation %d%s",
             accelerator.num_processes, accelerator.device, accelerator.mixed_precision, cfg.grad_accum,
             f", {threads} torch thread(s) per process" if threads else "")
    if cfg.resume and latest_checkpoint(out_dir) is not None:
        check_resume_config(out_dir, cfg)  # before anything is built or loaded
    clear = check_out_dir(out_dir, cfg)
    accelerator.wait_for_everyone()
    if clear and main_proc:
        log.warning("overwrite=true: deleting the previous run in %s", out_dir)
        shutil.rmtree(out_dir)
    accelerator.wait_for_everyone()
    return accelerator


def load_data(cfg: TrainConfig, accelerator: Accelerator) -> Split:
    """The split, before any model is built: a wrong folder fails here."""
    if cfg.generate_synthetic and not Path(cfg.data_root).exists():
        with accelerator.main_process_first():
            if accelerator.is_main_process:
                from train.synthetic import generate

                generate(cfg.data_root, seed=cfg.seed)
    return split_from_config(cfg)


@dataclass
class Run:
    """Everything the loop needs, built once by `build_run`; `state` is what a checkpoint records."""

    cfg: TrainConfig
    accelerator: Accelerator
    split: Split
    step_model: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    sampler: Any
    train_ds: TripletDataset
    train_dl: Any
    eval_dl: tuple[Any, Any, list[int]]  # all queries: sketch loader, photo loader, query indices
    sub_eval_dl: tuple[Any, list[int]]  # the in-training subset (eval_max_queries)
    text_features: torch.Tensor
    logit_scale: float
    weights: dict[str, float]
    prompts_v0: dict[str, torch.Tensor]
    learned_names: list[str]
    total_steps: int
    state: dict[str, int] = field(default_factory=lambda: {"step": 0, "epoch": 0, "batch_in_epoch": 0})
    skipped_loads: torch.Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.long))

    @property
    def out_dir(self) -> Path:
        return Path(self.cfg.out_dir)

    @property
    def prompted(self) -> Any:
        return self.accelerator.unwrap_model(self.step_model).prompted

    @property
    def per_step(self) -> int:
        return self.cfg.batch_size * self.cfg.grad_accum * self.accelerator.num_processes

    def log_json(self, record: dict[str, Any]) -> None:
        if self.accelerator.is_main_process:
            with (self.out_dir / "metrics.jsonl").open("a") as fh:
                fh.write(json.dumps(record) + "\n")


def build_run(cfg: TrainConfig, accelerator: Accelerator, split: Split) -> Run:
    """Frozen CLIP + prompts, text class embeddings (once), optimiser, samplers and loaders, all prepared."""
    fine = cfg.setting == "fine_grained"
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
    step_model, optimizer, train_dl, s_dl, p_dl = accelerator.prepare(step_model, optimizer, train_dl, s_dl, p_dl)
    sub_eval = (accelerator.prepare(sub[0]), sub[2]) if len(sub[2]) < len(queries) else (s_dl, queries)
    accelerator.register_for_checkpointing(scheduler)
    unwrapped = accelerator.unwrap_model(step_model)
    steps_per_epoch = math.ceil(len(train_dl) / cfg.grad_accum)
    run = Run(cfg=cfg, accelerator=accelerator, split=split, step_model=step_model, optimizer=optimizer,
              scheduler=scheduler, sampler=sampler, train_ds=train_ds, train_dl=train_dl, eval_dl=(s_dl, p_dl, queries),
              sub_eval_dl=sub_eval, text_features=text_features, logit_scale=logit_scale,
              weights=term_weights(cfg.setting, cfg.cls_weight, cfg.delta_weight, cfg.ps_weight),
              prompts_v0={k: v.detach().clone() for k, v in unwrapped.prompted.prompts.items()},
              learned_names=unwrapped.trainable_names(), total_steps=cfg.max_steps or cfg.epochs * steps_per_epoch)
    log.info("%d optimiser steps (%d per epoch), %d triplets per step across processes",
             run.total_steps, steps_per_epoch, run.per_step)
    return run


def resume_or_start(run: Run) -> None:
    """--resume: restore the newest complete checkpoint. Then the run's config.yaml, trackers, and (fresh
    runs) the step-0 prompt-scale record."""
    cfg, accelerator = run.cfg, run.accelerator
    if cfg.resume:
        ckpt = latest_checkpoint(run.out_dir)
        if ckpt is None:
            log.warning("--resume: no complete step_N checkpoint in %s; starting from scratch", run.out_dir)
        else:
            accelerator.load_state(str(ckpt))
            run.state = json.loads((ckpt / STATE_FILE).read_text())
            log.info("resumed from %s: step %d, epoch %d, batch %d of the epoch",
                     ckpt, run.state["step"], run.state["epoch"], run.state["batch_in_epoch"])
    if accelerator.is_main_process:
        cfg.dump(run.out_dir / "config.yaml")
    if cfg.tensorboard:
        accelerator.init_trackers(cfg.name, config={k: v for k, v in cfg.to_dict().items() if not isinstance(v, list)})
    if run.state["step"] == 0 and accelerator.is_main_process:
        # are the prompts on the scale of the tokens they join? (after ln_pre; matters with real weights)
        items = run.sampler.plan()[0][:8]
        probe = torch.stack([run.train_ds[item]["sketch"] for item in items]).to(accelerator.device)
        scale = prompt_scale_report(run.prompted, probe)
        log.info("step 0: prompt token norm %s vs median token norm after ln_pre %.3f (ratio %s)",
                 {k: round(v, 3) for k, v in scale["prompt_norm"].items()}, scale["token_norm_median"],
                 {k: round(v, 3) for k, v in scale["ratio"].items()})
        run.log_json({"step": 0, "prompt_scale": scale})


# ---- one training step ----------------------------------------------------------------------------
def compute_losses(run: Run, batch: dict[str, Any]) -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor, ...]]:
    """Every image of the batch through ONE forward, then the setting's loss terms."""
    cfg = run.cfg
    if cfg.setting == "fine_grained":
        emb = run.step_model(batch["sketch"], batch["positive"], batch["negative"],
                             batch["ps_sketch"], batch["ps_positive"], batch["ps_negative"])
        losses = fine_grained_losses(*emb[:3], batch["label"], *emb[3:], run.text_features, run.logit_scale,
                                     cfg.p_classes, cfg.margin, cfg.cls_weight, cfg.delta_weight,
                                     cfg.ps_weight, cfg.ps_margin, cfg.delta_tau, cfg.delta_form)
    else:
        emb = run.step_model(batch["sketch"], batch["positive"], batch["negative"])
        losses = category_losses(*emb, batch["label"], batch["negative_label"], run.text_features, run.logit_scale,
                                 cfg.margin, cfg.cls_weight)
    return losses, emb


def train_step(run: Run, batch: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Forward, backward and (on the last micro-batch of an accumulation) the optimiser step.

    Returns the loss terms and, on steps that will be logged, each weighted term's gradient norm on the
    embeddings (how hard each term actually pulls)."""
    accelerator, state = run.accelerator, run.state
    run.skipped_loads += int(batch["skipped"].sum())
    with accelerator.accumulate(run.step_model):
        losses, emb = compute_losses(run, batch)
        next_step = state["step"] + 1
        will_log = accelerator.sync_gradients and (next_step % run.cfg.log_every == 0 or next_step == run.total_steps)
        grads = term_gradient_norms(losses, run.weights, emb) if will_log else {}
        accelerator.backward(losses["loss"])
        if accelerator.sync_gradients and run.cfg.grad_clip > 0:
            accelerator.clip_grad_norm_(run.step_model.parameters(), run.cfg.grad_clip)
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
    state["batch_in_epoch"] += 1
    return losses, grads


def log_step(run: Run, losses: dict[str, torch.Tensor], grads: dict[str, float], steps: int,
             elapsed: float) -> dict[str, Any]:
    """One metrics.jsonl record: loss terms, weighted terms and their gradient norms (mean over ranks), prompt
    drift, skipped loads, lr and samples/s over the `steps` steps since the last record."""
    accelerator, weights = run.accelerator, run.weights
    grad_values = [grads.get(k, float("nan")) for k in weights]
    packed = torch.tensor([*(float(v.detach()) for v in losses.values()), *grad_values], device=accelerator.device)
    reduced = accelerator.reduce(packed, "mean").cpu().tolist()
    terms = dict(zip(losses, reduced[:len(losses)], strict=True))
    record = {"step": run.state["step"], "epoch": run.state["epoch"], **terms,
              **{f"weighted_{k}": w * terms[k] for k, w in weights.items()},
              **{f"grad_{k}": v for k, v in zip(weights, reduced[len(losses):], strict=True)},
              **{f"drift_{k}": v for k, v in prompt_drift(run.prompted, run.prompts_v0).items()},
              "skipped_loads": int(accelerator.reduce(run.skipped_loads.to(accelerator.device), "sum")),
              "lr": run.scheduler.get_last_lr()[0], "samples_per_s": steps * run.per_step / max(elapsed, 1e-9)}
    run.log_json(record)
    if run.cfg.tensorboard:
        accelerator.log({f"train/{k}": v for k, v in record.items() if k != "step"}, step=record["step"])
    return record


def train(run: Run) -> None:
    """The loop: epochs of the sampler's plan (re-entered at the saved batch after a resume), logging,
    in-training evaluations and checkpoints."""
    cfg, accelerator, state = run.cfg, run.accelerator, run.state
    run.step_model.train()
    bar = tqdm(total=run.total_steps, initial=state["step"], disable=not (accelerator.is_main_process and cfg.progress),
               desc=cfg.name)
    t_last, n_last = time.perf_counter(), 0
    while state["step"] < run.total_steps:
        run.sampler.set_epoch(state["epoch"])
        run.train_dl.set_epoch(state["epoch"])
        skip = state["batch_in_epoch"]
        for batch in accelerator.skip_first_batches(run.train_dl, skip) if skip else run.train_dl:
            losses, grads = train_step(run, batch)
            if not accelerator.sync_gradients:
                continue
            run.scheduler.step()
            state["step"] += 1
            n_last += 1
            step = state["step"]
            bar.update(1)
            if step % cfg.log_every == 0 or step == run.total_steps:
                record = log_step(run, losses, grads, n_last, time.perf_counter() - t_last)
                bar.set_postfix(loss=f"{record['loss']:.4f}", sps=f"{record['samples_per_s']:.1f}")
                t_last, n_last = time.perf_counter(), 0
            if cfg.eval_every and step % cfg.eval_every == 0 and step != run.total_steps:
                evaluate_and_export(run, step, final=False)
            if step % cfg.checkpoint_every == 0 or step == run.total_steps:
                save_checkpoint(run, step)
            if step >= run.total_steps:
                break
        else:
            state["epoch"] += 1
            state["batch_in_epoch"] = 0
    bar.close()


# ---- evaluate and export, save ------------------------------------------------------------------
def evaluate_and_export(run: Run, step: int, final: bool) -> dict[str, Any]:
    """Evaluate on the unseen classes (every query when `final`, else the eval_max_queries subset) and export
    the prompts: prompts/step_N.safetensors and prompts.safetensors, eval_step_N.json, a metrics record."""
    cfg, accelerator = run.cfg, run.accelerator
    s_dl, p_dl, queries = run.eval_dl
    q_dl, q_idx = (s_dl, queries) if final else run.sub_eval_dl
    result = evaluate(accelerator, run.prompted, run.split.test, q_dl, p_dl, q_idx, cfg)
    result["step"] = step
    result["queries"] = "all" if len(q_idx) == len(queries) else f"{len(q_idx)} of {len(queries)} (eval_max_queries)"
    if accelerator.is_main_process:
        extra = {"step": str(step), "run": cfg.name, "setting": cfg.setting, "metrics": result["metrics"]}
        path = export_prompts(run.out_dir / "prompts" / f"step_{step}.safetensors", run.prompted, cfg.model,
                              cfg.pretrained, extra)
        shutil.copyfile(path, run.out_dir / "prompts.safetensors")
        (run.out_dir / f"eval_step_{step}.json").write_text(json.dumps(result, indent=2))
        log.info("eval at step %d: %s\n%s", step, result["metrics"], table_for(result, cfg, f"this run, step {step}"))
        run.log_json({"step": step, "eval": result["metrics"], "gather": result["gather"], "final": final,
                      "n_queries": result["n_queries"], "skipped_files": result["skipped_files"]})
    if cfg.tensorboard:
        accelerator.log({f"eval/{k}": v for k, v in result["metrics"].items()}, step=step)
    return result


def save_checkpoint(run: Run, step: int) -> None:
    """step_N/: Accelerate state (learned tensors only, checked), the prompt file, and trainer_state.json last."""
    ckpt = run.out_dir / f"step_{step}"
    run.accelerator.save_state(str(ckpt))
    if run.accelerator.is_main_process:
        check_checkpoint_contents(ckpt, run.learned_names)
        export_prompts(ckpt / "prompts.safetensors", run.prompted, run.cfg.model, run.cfg.pretrained,
                       {"step": str(step), "run": run.cfg.name})
        (ckpt / STATE_FILE).write_text(json.dumps(run.state))  # written last: marks the checkpoint complete
        prune_checkpoints(run.out_dir, run.cfg.keep_checkpoints)
    run.accelerator.wait_for_everyone()


def finish(run: Run, result: dict[str, Any]) -> None:
    """Check that every rank holds the same learned tensors; write ranks.json, eval.json, eval.md; push; say
    where the prompts are and how to serve them."""
    cfg, accelerator = run.cfg, run.accelerator
    skipped_total = int(accelerator.reduce(run.skipped_loads.to(accelerator.device), "sum"))
    if skipped_total:
        log.warning("training replaced %d unreadable image load(s) by other draws of the same class", skipped_total)
    accelerator.wait_for_everyone()
    flat = torch.cat([p.detach().float().flatten() for p in accelerator.unwrap_model(run.step_model).parameters()
                      if p.requires_grad])
    per_rank = accelerator.gather(flat[None].contiguous()).cpu()
    ranks = {"world_size": accelerator.num_processes, "identical": bool((per_rank == per_rank[0]).all()),
             "max_abs_diff": float((per_rank - per_rank[0]).abs().max())}
    if not ranks["identical"]:
        log.error("ranks disagree on the learned parameters: %s", ranks)
    if accelerator.is_main_process:
        out_dir = run.out_dir
        (out_dir / "ranks.json").write_text(json.dumps(ranks))
        final = {"final_step": run.state["step"], "prompts": str(out_dir / "prompts.safetensors"), "ranks": ranks,
                 "train_skipped_loads": skipped_total, **result}
        (out_dir / "eval.json").write_text(json.dumps(final, indent=2))
        (out_dir / "eval.md").write_text(table_for(result, cfg, f"this run ({cfg.name}, step {run.state['step']})") + "\n")
        if cfg.push_to_hub:
            push_to_hub(cfg.push_to_hub, out_dir)
        print(f"prompts written to {out_dir / 'prompts.safetensors'}\nserve them: {serve_command(cfg)}", flush=True)
    accelerator.end_training()


def serve_command(cfg: TrainConfig) -> str:
    """The app command line that serves this run's prompts (the flag for its setting, its backbone and weights)."""
    flag = "--fine-grained-prompts" if cfg.setting == "fine_grained" else "--prompts"
    parts = ["python", "app.py", flag, shlex.quote(str(Path(cfg.out_dir) / "prompts.safetensors"))]
    if cfg.model != DEFAULT_MODEL:
        parts += ["--model", shlex.quote(cfg.model)]
    if cfg.pretrained != DEFAULT_PRETRAINED:
        parts += ["--pretrained", shlex.quote(cfg.pretrained)]
    return " ".join(parts)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg = parse_args(argv)
    accelerator = start_accelerator(cfg)
    split = load_data(cfg, accelerator)
    run = build_run(cfg, accelerator, split)
    resume_or_start(run)
    train(run)
    result = evaluate_and_export(run, run.state["step"], final=True)  # every query, also after resuming a finished run
    finish(run, result)
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
