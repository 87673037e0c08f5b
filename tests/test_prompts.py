"""The prompt wrapper: identity without prompts, what trains, checkpoint round trip and mismatch errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from zsdemo.errors import CheckpointError
from zsdemo.model.encoder import EncoderConfig, SketchPhotoEncoder, create_clip
from zsdemo.model.prompts import PromptedViT, PromptSpec, read_checkpoint, save_checkpoint

TINY = "zsdemo-tiny-vit"


@pytest.fixture()
def tiny_clip():
    return create_clip(TINY, "none")


def test_no_prompts_is_exactly_the_stock_encoder(tiny_clip):
    x = torch.randn(3, 3, 64, 64)
    prompted = PromptedViT(tiny_clip.visual, PromptSpec(n_prompts=0))
    with torch.no_grad():
        stock = F.normalize(tiny_clip.encode_image(x), dim=-1)
        ours = prompted(x, "sketch")
    assert torch.equal(stock, ours)


def test_no_prompts_is_exactly_the_stock_vit_b32():
    clip = create_clip("ViT-B-32-quickgelu", "none")
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(F.normalize(clip.visual(x), dim=-1), PromptedViT(clip.visual, PromptSpec(0))(x, "photo"))


@pytest.mark.parametrize("deep", [False, True])
def test_prompts_change_the_embedding_and_are_per_branch(tiny_clip, deep):
    prompted = PromptedViT(tiny_clip.visual, PromptSpec(n_prompts=3, deep=deep), generator=torch.Generator().manual_seed(1))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        sketch, photo = prompted(x, "sketch"), prompted(x, "photo")
        stock = F.normalize(tiny_clip.visual(x), dim=-1)
    assert not torch.allclose(sketch, photo)
    assert not torch.allclose(sketch, stock)
    assert torch.allclose(sketch.norm(dim=-1), torch.ones(2))
    assert prompted.prompts["sketch"].shape == (2 if deep else 1, 3, 64)


def test_gradients_reach_only_prompts_and_layernorms(tiny_clip):
    prompted = PromptedViT(tiny_clip.visual, PromptSpec(n_prompts=3, layernorm=True))
    x = torch.randn(2, 3, 64, 64)
    (prompted(x, "sketch") * torch.randn(2, 32)).sum().backward()
    trainable = {n for n, p in prompted.named_parameters() if p.requires_grad}
    with_grad = {n for n, p in prompted.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert all(n.startswith(("prompts.", "layernorms.")) for n in trainable)
    # the sketch branch got gradients; the photo branch and the frozen backbone did not
    assert "prompts.sketch" in with_grad and any(n.startswith("layernorms.sketch.") for n in with_grad)
    assert not any(".photo" in n or n.startswith("visual.") for n in with_grad)


def test_vit_b32_trainable_parameter_counts():
    clip = create_clip("ViT-B-32-quickgelu", "none")
    count = lambda spec: sum(p.numel() for p in PromptedViT(clip.visual, spec).parameters() if p.requires_grad)  # noqa: E731
    assert count(PromptSpec(3, shared=False, layernorm=True)) == 2 * (3 * 768 + 52 * 768) == 84_480
    assert count(PromptSpec(3, shared=True, layernorm=True)) == 3 * 768 + 52 * 768 == 42_240
    assert count(PromptSpec(3, shared=False, layernorm=False)) == 2 * 3 * 768


def test_layernorm_override_uses_branch_parameters(tiny_clip):
    prompted = PromptedViT(tiny_clip.visual, PromptSpec(n_prompts=0, layernorm=True))
    backbone_ln = tiny_clip.visual.ln_post.weight.detach().clone()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = prompted(x, "sketch")
        assert torch.allclose(before, prompted(x, "photo"))  # copies of the same LayerNorms
        prompted.layernorms["sketch"]["ln_post__weight"].mul_(-1.0).add_(0.5)
        assert not torch.allclose(prompted(x, "sketch"), before)
        assert torch.allclose(prompted(x, "photo"), before)
    assert torch.equal(tiny_clip.visual.ln_post.weight, backbone_ln)  # the backbone's own LayerNorm is untouched


def test_checkpoint_round_trip_through_the_encoder(tmp_path, tiny_clip):
    spec = PromptSpec(n_prompts=3, deep=True, shared=True, layernorm=True)
    trained = PromptedViT(tiny_clip.visual, spec, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        trained.layernorms["shared"]["ln_pre__bias"].add_(0.1)
    path = save_checkpoint(tmp_path / "p.safetensors", trained, TINY, "none", "1")
    ckpt = read_checkpoint(path)
    assert ckpt.spec == spec and ckpt.meta["model"] == TINY
    encoder = SketchPhotoEncoder.load(EncoderConfig(model=TINY, pretrained="none", prompts=str(path)))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(encoder.prompted(x, "photo"), trained(x, "photo"), atol=1e-6)
    assert encoder.prompts_sha256 == ckpt.sha256
    plain = SketchPhotoEncoder.load(EncoderConfig(model=TINY, pretrained="none"))
    assert plain.fingerprint() != encoder.fingerprint()


def test_checkpoint_for_another_backbone_is_refused(tmp_path):
    clip = create_clip("ViT-B-32-quickgelu", "none")
    path = save_checkpoint(tmp_path / "b32.safetensors", PromptedViT(clip.visual, PromptSpec(3)), "ViT-B-32-quickgelu",
                           "openai", "1")
    with pytest.raises(CheckpointError, match="trained for backbone 'ViT-B-32-quickgelu'"):
        SketchPhotoEncoder.load(EncoderConfig(model=TINY, pretrained="none", prompts=str(path)))


def test_checkpoint_with_wrong_shapes_is_refused(tmp_path, tiny_clip):
    path = save_checkpoint(tmp_path / "p.safetensors", PromptedViT(tiny_clip.visual, PromptSpec(3)), TINY, "none", "1")
    other = PromptedViT(tiny_clip.visual, PromptSpec(3))
    state = read_checkpoint(path).state
    state["prompts.sketch"] = torch.zeros(1, 4, 64)
    with pytest.raises(CheckpointError, match="shape"):
        other.load_learned_state(state)


@pytest.mark.parametrize("content", [b"", b"garbage" * 10, b"\x08\x00\x00\x00\x00\x00\x00\x00{}"])
def test_corrupt_or_foreign_checkpoint_files(tmp_path, content):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "missing.safetensors")
