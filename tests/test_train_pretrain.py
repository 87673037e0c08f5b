"""train/pretrain_tiny.py (CLIP stand-in on synthetic photos) and the --resume config check in train/fit.py."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import TINY

from train.pretrain_tiny import pretrain
from train.synthetic import generate
from zsdemo.model.encoder import EncoderConfig, SketchPhotoEncoder, create_clip


def test_pretrained_file_loads_through_the_engine_and_differs_from_random(tmp_path):
    out = tmp_path / "tiny_pretrained.safetensors"
    result = pretrain(out, steps=3, photos_per_class=4, batch_size=8)
    assert result["path"] == out and out.is_file()
    saved = load_file(str(out))
    loaded = create_clip("zsdemo-tiny-vit", str(out)).state_dict()
    random = create_clip("zsdemo-tiny-vit", "none").state_dict()
    assert set(saved) == set(loaded)  # the whole CLIP model, both towers
    for name in ("visual.conv1.weight", "visual.proj", "text_projection"):
        assert torch.equal(loaded[name], saved[name])
        assert (loaded[name] - random[name]).abs().max() > 1e-3
    enc = SketchPhotoEncoder.load(EncoderConfig(model="zsdemo-tiny-vit", pretrained=str(out), query_precision="fp32"))
    assert torch.equal(enc.clip.visual.conv1.weight, saved["visual.conv1.weight"])


def test_pretraining_reduces_the_loss():
    losses = pretrain(None, steps=150, photos_per_class=16, batch_size=32)["losses"]
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last < first - 0.2, (first, last)


def test_resume_refuses_a_different_model_or_prompt_spec(tmp_path):
    from train import fit

    data = generate(tmp_path / "data", photos_per_class=4, sketches_per_photo=1, size=64)
    out = tmp_path / "run"
    base = ["--config", str(TINY), f"data_root={data}", f"out_dir={out}", "max_steps=1", "checkpoint_every=1",
            "progress=false", "batch_size=4"]
    fit.main(base)
    with pytest.raises(SystemExit, match=r"n_prompts: checkpoint 3, now 4"):
        fit.main([*base, "--resume", "n_prompts=4", "max_steps=2"])
    with pytest.raises(SystemExit, match=r"pretrained: checkpoint 'none'"):
        fit.main([*base, "--resume", f"pretrained={tmp_path / 'other.safetensors'}", "max_steps=2"])
    fit.main([*base, "--resume", "max_steps=2"])  # same spec: resumes
    assert (out / "step_2" / "trainer_state.json").is_file()
