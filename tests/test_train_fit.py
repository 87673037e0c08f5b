"""End-to-end training runs on synthetic data with the tiny model: in-process, 2 CPU ranks, kill and resume."""

from __future__ import annotations

import json
import math
import shutil
import signal
import subprocess
import time
from pathlib import Path

import open_clip
import pytest
import torch
from safetensors import safe_open
from train_helpers import CRASH_EXIT, TINY, TINY_FG, fit_cmd, read_jsonl, torchrun_cmd
from train_helpers import run_env as env

from train.splits import DataError
from train.synthetic import generate
from zsdemo.model.encoder import EncoderConfig, SketchPhotoEncoder
from zsdemo.model.prompts import read_checkpoint


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("fitdata"), photos_per_class=12, sketches_per_photo=2, size=64)


def load_prompts(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path).state


def test_fit_in_process_category(tmp_path, synth, monkeypatch, capsys):
    from train import fit

    calls = []
    original = open_clip.CLIP.encode_text
    monkeypatch.setattr(open_clip.CLIP, "encode_text", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    out = tmp_path / "run"
    result = fit.main(["--config", str(TINY), f"data_root={synth}", f"out_dir={out}", "max_steps=6",
                       "checkpoint_every=3", "log_every=2", "eval_every=3", "progress=false"])
    assert len(calls) == 1  # class text embeddings: once per run, not per step
    printed = capsys.readouterr().out
    assert f"prompts written to {out / 'prompts.safetensors'}" in printed
    assert f"serve them: python app.py --prompts {out / 'prompts.safetensors'} --model zsdemo-tiny-vit" in printed
    records = read_jsonl(out / "metrics.jsonl")
    train_records = [r for r in records if "loss" in r]
    assert [r["step"] for r in train_records] == [2, 4, 6]
    assert {"triplet", "cls_sketch", "cls_photo", "lr", "samples_per_s"} <= set(train_records[0])
    assert [r["step"] for r in records if "eval" in r] == [3, 6]
    assert set(result["metrics"]) == {"mAP@all", "mAP@200", "P@100", "P@200"} and result["convention"] == "sake"
    assert (out / "config.yaml").is_file() and (out / "step_3" / "trainer_state.json").is_file()
    assert json.loads((out / "step_6" / "trainer_state.json").read_text())["step"] == 6
    assert (out / "prompts" / "step_3.safetensors").is_file()
    assert "Ours (paper)" not in (out / "eval.md").read_text()  # synthetic benchmark: no paper row to sit beside
    enc = SketchPhotoEncoder.load(EncoderConfig(model="zsdemo-tiny-vit", pretrained="none", prompts=str(out / "prompts.safetensors")))
    assert enc.prompted.spec.shared is False and enc.prompted.spec.layernorm is True
    ckpt = read_checkpoint(out / "prompts.safetensors")
    assert ckpt.meta["step"] == "6" and json.loads(ckpt.meta["metrics"]) == pytest.approx(result["metrics"], abs=1e-6)


def test_fit_fails_on_bad_data_before_building_model(tmp_path, monkeypatch):
    from train import fit

    built = []
    monkeypatch.setattr(fit, "build_model", lambda *a, **k: built.append(1))
    with pytest.raises(DataError, match="does not exist"):
        fit.main(["--config", str(TINY), f"data_root={tmp_path / 'nope'}", "generate_synthetic=false", f"out_dir={tmp_path / 'o'}"])
    assert not built


def test_eval_cli_baseline_and_prompts(tmp_path, synth, capsys):
    from train import eval as evaluate_cli
    from train import fit

    out = tmp_path / "run"
    fit.main(["--config", str(TINY_FG), f"data_root={synth}", f"out_dir={out}", "max_steps=2", "progress=false"])
    base = evaluate_cli.main(["--config", str(TINY_FG), f"data_root={synth}", f"out_dir={out}", "--prompts", "none"])
    text = capsys.readouterr().out
    assert "frozen CLIP, no prompts" in text and "gallery: all unseen-class photos" in text
    trained = evaluate_cli.main(["--config", str(TINY_FG), f"data_root={synth}", "--prompts", str(out / "prompts.safetensors"),
                                 "--output", str(tmp_path / "e.json"), "fg_gallery=category"])
    assert set(base["metrics"]) == {"Acc@1", "Acc@5", "Acc@10"} and trained["gallery"] == "photos of the sketch's class"
    assert json.loads((tmp_path / "e.json").read_text())["metrics"] == trained["metrics"]
    # the in-training evaluation and the CLI agree on the same prompts
    assert json.loads((out / "eval.json").read_text())["metrics_category_gallery"] == pytest.approx(trained["metrics"], abs=1e-6)


def test_fresh_run_into_a_used_out_dir_is_refused(tmp_path, synth):
    from train import fit

    out = tmp_path / "run"
    base = ["--config", str(TINY), f"data_root={synth}", f"out_dir={out}", "checkpoint_every=1", "keep_checkpoints=0",
            "progress=false", "log_every=1"]
    fit.main([*base, "max_steps=2"])
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(SystemExit, match=r"--resume.*overwrite=true"):
        fit.main([*base, "max_steps=1", "seed=5"])  # another run, same folder
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # the first run's checkpoints, metrics and prompts are untouched
    fit.main([*base, "max_steps=1", "seed=5", "overwrite=true"])
    assert not (out / "step_2").exists() and (out / "step_1" / "trainer_state.json").is_file()
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl") if "loss" in r] == [1]
    stranger = tmp_path / "not_a_run"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="does not look like a run folder"):
        fit.main([*base, f"out_dir={stranger}", "overwrite=true"])
    assert (stranger / "notes.txt").read_text() == "mine"


def test_final_eval_uses_every_query_logs_loss_sizes_and_survives_bad_files(tmp_path, synth):
    from train import fit

    data = tmp_path / "data"
    shutil.copytree(synth, data)
    for bad in sorted((data / "sketch" / "star").iterdir())[::2]:  # half of a seen class's sketches: empty files
        bad.write_bytes(b"")
    (data / "photo" / "hexagon" / "hexagon_003.jpg").write_bytes(b"\xff\xd8 truncated")  # an unseen photo
    out = tmp_path / "run"
    fit.main(["--config", str(TINY), f"data_root={data}", f"out_dir={out}", "max_steps=6", "eval_every=2",
              "eval_max_queries=10", "log_every=2", "checkpoint_every=6", "progress=false"])
    records = read_jsonl(out / "metrics.jsonl")
    evals = [r for r in records if "eval" in r]
    assert [(r["step"], r["n_queries"], r["final"]) for r in evals] == [(2, 10, False), (4, 10, False), (6, 72, True)]
    final = json.loads((out / "eval.json").read_text())
    assert final["n_queries"] == 72 and final["queries"] == "all" and final["n_gallery"] == 35
    assert final["skipped_files"]["photo"] == 1 and final["skipped_files"]["files"][0].endswith("hexagon_003.jpg")
    train = [r for r in records if "loss" in r]
    assert final["train_skipped_loads"] == train[-1]["skipped_loads"] > 0
    for r in train:
        assert r["weighted_cls_sketch"] == pytest.approx(0.5 * r["cls_sketch"], rel=1e-6)
        # the hinge pulls exactly when some triplet is inside the margin
        assert (r["grad_triplet"] > 0) == (r["triplet"] > 0) and r["grad_cls_sketch"] > 0 and r["grad_cls_photo"] > 0
    assert 0 < train[0]["drift_prompts.sketch"] < train[-1]["drift_prompts.sketch"]
    scale = next(r["prompt_scale"] for r in records if r["step"] == 0 and "prompt_scale" in r)
    assert scale["token_norm_median"] > 0 and set(scale["ratio"]) == {"sketch", "photo"}


def test_eval_cli_refuses_prompts_for_another_backbone(tmp_path, synth):
    from train import eval as evaluate_cli
    from train.model import build_model, export_prompts, spec_for
    from zsdemo.errors import CheckpointError

    _, model = build_model("zsdemo-tiny-vit", "none", spec_for("category"))
    path = export_prompts(tmp_path / "p.safetensors", model.prompted, "ViT-B-32-quickgelu", "openai")
    with pytest.raises(CheckpointError, match="trained for backbone 'ViT-B-32-quickgelu'"):
        evaluate_cli.main(["--config", str(TINY), f"data_root={synth}", "--prompts", str(path),
                           "--output", str(tmp_path / "e.json")])
    assert not (tmp_path / "e.json").exists()


def test_checkpoint_check_catches_a_frozen_backbone_copy(tmp_path):
    from safetensors.torch import save_file

    from train.fit import check_checkpoint_contents

    learned = ["prompted.prompts.sketch", "prompted.layernorms.sketch.ln_pre__weight"]
    save_file({k: torch.zeros(2) for k in learned}, str(tmp_path / "model.safetensors"))
    check_checkpoint_contents(tmp_path, learned)
    save_file({k: torch.zeros(2) for k in [*learned, "prompted.visual.conv1.weight"]}, str(tmp_path / "model.safetensors"))
    with pytest.raises(RuntimeError, match=r"unexpected: \['prompted.visual.conv1.weight'\]"):
        check_checkpoint_contents(tmp_path, learned)


def torchrun(config: Path, data: Path, out: Path, *extra: str, crash_after: int = 0) -> subprocess.CompletedProcess:
    return subprocess.run(torchrun_cmd(config, data, out, *extra, crash_after=crash_after), env={**env(), "ACCELERATE_USE_CPU": "1"},
                          capture_output=True, text=True, timeout=240)


@pytest.mark.slow
def test_two_process_cpu_run_and_resume(tmp_path, synth):
    out = tmp_path / "ddp"
    common = ["max_steps=6", "eval_every=3", "checkpoint_every=3", "eval_batch_size=16"]
    proc = torchrun(TINY, synth, out, *common)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "step_6" / "random_states_1.pkl").is_file()  # rank 1 existed and saved its RNG state
    # the Accelerate checkpoint holds the 26 learned tensors of the tiny model (2 prompts + 2 branches x 6
    # LayerNorms x weight/bias), not the frozen backbone: a wrapper that bypassed StepModel.state_dict would
    with safe_open(str(out / "step_6" / "model.safetensors"), framework="pt") as handle:
        keys = set(handle.keys())
    assert len(keys) == 26 and all(k.startswith(("prompted.prompts.", "prompted.layernorms.")) for k in keys)
    assert not any("visual.transformer" in k or "conv1" in k for k in keys)
    ranks = json.loads((out / "ranks.json").read_text())
    assert ranks == {"world_size": 2, "identical": True, "max_abs_diff": 0.0}
    evals = [r for r in read_jsonl(out / "metrics.jsonl") if "eval" in r]
    assert [r["step"] for r in evals] == [3, 6]
    for r in evals:  # 72 unseen sketches, 36 photos, padded across ranks in batches of 16; gathered without duplicates
        assert r["gather"]["sketch"] == {"gathered": 72, "unique": 72, "expected": 72}
        assert r["gather"]["photo"] == {"gathered": 36, "unique": 36, "expected": 36}
    per_step = [r for r in read_jsonl(out / "metrics.jsonl") if "loss" in r]
    assert all(r["samples_per_s"] > 0 for r in per_step)
    enc = SketchPhotoEncoder.load(EncoderConfig(model="zsdemo-tiny-vit", pretrained="none", prompts=str(out / "prompts.safetensors")))
    assert enc.prompted.spec.n_prompts == 3
    # 2 ranks: 10 batches an epoch -> 5 per rank; crash after step 3 (mid-epoch), resume across the epoch boundary
    resumed = tmp_path / "ddp_resumed"
    crash = torchrun(TINY, synth, resumed, *common, crash_after=3)
    assert crash.returncode != 0 and (resumed / "step_3" / "trainer_state.json").is_file()
    done = torchrun(TINY, synth, resumed, *common, "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = load_prompts(out / "prompts.safetensors"), load_prompts(resumed / "prompts.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"run ended (rc {proc.returncode}) before {path} appeared: {proc.stderr.read()[-2000:]}")
        if time.time() > deadline:
            raise AssertionError(f"{path} did not appear")
        time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.parametrize("config", [TINY, TINY_FG], ids=["category", "fine_grained"])
def test_kill_and_resume_matches_uninterrupted(tmp_path, synth, config):
    # 168 seen sketches / batch 16 = 10 batches an epoch: the interruptions fall mid-epoch, the runs cross epochs
    common = ["max_steps=14", "checkpoint_every=2", "keep_checkpoints=0", "augment=true", "log_every=1"]
    ref = subprocess.run(fit_cmd(config, synth, tmp_path / "ref", *common), env=env(), capture_output=True, text=True, timeout=240)
    assert ref.returncode == 0, ref.stderr[-3000:]
    out = tmp_path / "resumed"
    # 1) simulated crash: hard exit right after the step-6 checkpoint
    crash = subprocess.run(fit_cmd(config, synth, out, *common, crash_after=6), env=env(), capture_output=True, text=True, timeout=240)
    assert crash.returncode == CRASH_EXIT, crash.stderr[-3000:]
    assert not (out / "prompts.safetensors").exists() and (out / "step_6" / "trainer_state.json").is_file()
    assert json.loads((out / "step_6" / "trainer_state.json").read_text()) == {"step": 6, "epoch": 0, "batch_in_epoch": 6}
    # 2) resume, then SIGKILL once step 10 is on disk (wherever the run is by then), leaving maybe a partial folder
    proc = subprocess.Popen(fit_cmd(config, synth, out, *common, "--resume"), env=env(), stderr=subprocess.PIPE, text=True)
    wait_for(out / "step_10" / "trainer_state.json", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL and not (out / "prompts.safetensors").exists()
    for partial in out.glob("step_*"):
        if not (partial / "trainer_state.json").exists():
            shutil.rmtree(partial)  # what a kill mid-save leaves behind is ignored by --resume anyway
    # 3) resume to the end
    done = subprocess.run(fit_cmd(config, synth, out, *common, "--resume"), env=env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stderr
    a, b = load_prompts(tmp_path / "ref" / "prompts.safetensors"), load_prompts(out / "prompts.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # the per-step losses after the resume are the uninterrupted run's losses
    ref_loss = {r["step"]: r["loss"] for r in read_jsonl(tmp_path / "ref" / "metrics.jsonl") if "loss" in r}
    res_loss = {r["step"]: r["loss"] for r in read_jsonl(out / "metrics.jsonl") if "loss" in r}
    assert all(res_loss[s] == ref_loss[s] for s in res_loss)
    logged = [r["step"] for r in read_jsonl(out / "metrics.jsonl") if "loss" in r]
    assert sorted(set(logged)) == list(range(1, 15)) and logged[:6] == [1, 2, 3, 4, 5, 6]
    assert logged.count(3) == 1 and logged.count(7) == 1  # resumed from checkpoints, never retrained from scratch
    assert json.loads((out / "step_14" / "trainer_state.json").read_text())["epoch"] == 1


@pytest.mark.slow
def test_bf16_and_gradient_accumulation(tmp_path, synth):
    out = tmp_path / "acc"
    proc = subprocess.run(fit_cmd(TINY, synth, out, "max_steps=3", "grad_accum=2", "mixed_precision=bf16", "log_every=1"),
                          env=env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "mixed precision bf16, grad accumulation 2" in proc.stderr
    assert json.loads((out / "step_3" / "trainer_state.json").read_text()) == {"step": 3, "epoch": 0, "batch_in_epoch": 6}
    records = [r for r in read_jsonl(out / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in records] == [1, 2, 3] and all(math.isfinite(r["loss"]) for r in records)
    assert read_checkpoint(out / "prompts.safetensors").state["prompts.sketch"].dtype == torch.float32


def test_serve_command_names_the_setting_flag_and_a_non_default_backbone(tmp_path):
    from train.config import load_config
    from train.fit import serve_command

    out = tmp_path / "run"
    assert serve_command(load_config(TINY, [f"out_dir={out}"])) == \
        f"python app.py --prompts {out / 'prompts.safetensors'} --model zsdemo-tiny-vit --pretrained none"
    assert serve_command(load_config(TINY_FG, [f"out_dir={out}"])).startswith(
        f"python app.py --fine-grained-prompts {out / 'prompts.safetensors'} --model zsdemo-tiny-vit")
    default = load_config(None, [f"out_dir={out}"])  # ViT-B/32, OpenAI weights: the app's own defaults
    assert serve_command(default) == f"python app.py --prompts {out / 'prompts.safetensors'}"


@pytest.mark.parametrize("args, message", [
    (["--config", "no/such.yaml"], r"^fit.py: config file no/such.yaml not found"),
    (["--config", str(TINY), "lr_prmpt=0.1"], r"^fit.py: Unknown config keys: 'lr_prmpt' \(did you mean 'lr_prompt'\?\)"),
    (["--config", str(TINY), "batch_size=many"], r"^fit.py: batch_size: expected int, got 'many'$"),
])
def test_config_mistakes_end_the_run_with_one_line(args, message):
    from train import fit

    with pytest.raises(SystemExit, match=message) as exc:
        fit.main(args)
    assert "\n" not in str(exc.value.code)


def test_cpu_threads_follow_omp_num_threads_or_split_the_cores(monkeypatch):
    import os

    from train.runtime import set_cpu_threads

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert set_cpu_threads("cpu", 1) == 1 and torch.get_num_threads() == 1
        monkeypatch.delenv("OMP_NUM_THREADS")
        monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))  # an idle machine: the cores are shared
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
        expected = 2
        assert set_cpu_threads("cpu", 2) == expected == torch.get_num_threads()
        assert set_cpu_threads("cuda", 2) == 0 and torch.get_num_threads() == expected  # a GPU run is left alone
    finally:
        torch.set_num_threads(before)
