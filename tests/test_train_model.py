"""What trains and what stays frozen; the Accelerate-facing wrapper; export into the engine's format."""

from __future__ import annotations

import pytest
import torch

from train.losses import category_losses, fine_grained_losses
from train.model import build_model, class_text_embeddings, count_trainable, export_prompts, spec_for
from zsdemo.model.encoder import EncoderConfig, SketchPhotoEncoder


@pytest.mark.parametrize("setting, expected", [("category", 84_480), ("fine_grained", 42_240)])
def test_vit_b32_trainable_count_and_frozen_after_step(setting, expected):
    clip, model = build_model("ViT-B-32-quickgelu", "none", spec_for(setting))
    assert count_trainable(model) == expected
    # category: 2 x (3 x 768) prompts + 2 x 52 x 768 LayerNorm; fine-grained: one shared set
    assert count_trainable(clip) == 0
    frozen_before = {n: p.detach().clone() for n, p in clip.named_parameters()}
    learned_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    g = torch.Generator().manual_seed(0)
    images = [torch.randn(2, 3, 224, 224, generator=g) for _ in range(3)]
    text = torch.nn.functional.normalize(torch.randn(3, 512, generator=g), dim=-1)
    labels = torch.tensor([0, 1])
    if setting == "category":
        out = model(*images)
        loss = category_losses(*out, labels, torch.tensor([2, 2]), text, 100.0)["loss"]
    else:
        out = model(*images, *(x.flip(-1) for x in images))
        loss = fine_grained_losses(*out[:3], torch.tensor([0, 0]), *out[3:], text, 100.0, n_classes=1)["loss"]
    loss.backward()
    optimizer.step()
    for name, value in clip.named_parameters():
        assert torch.equal(value, frozen_before[name]), f"{name} changed"
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, learned_before[n])]
    assert len(changed) == len(learned_before)  # every prompt and LayerNorm tensor moved


def test_step_model_routes_branches_and_saves_only_learned(tiny_encoder):
    clip, model = build_model("zsdemo-tiny-vit", "none", spec_for("category"), seed=1)
    g = torch.Generator().manual_seed(0)
    s, p, n = (torch.randn(3, 3, 64, 64, generator=g) for _ in range(3))
    es, ep, en = model(s, p, n)
    # explicit tolerances: batched vs unbatched matmuls differ by ~1e-7 on AVX2 CPUs (AMD EPYC)
    assert torch.allclose(es, model.prompted(s, "sketch"), rtol=1e-4, atol=1e-5)
    assert torch.allclose(ep, model.prompted(p, "photo"), rtol=1e-4, atol=1e-5)
    assert (model.prompted(s, "photo") - es).abs().max() > 1e-2  # the branches really differ
    state = model.state_dict()
    assert set(state) == set(model.trainable_names()) and len(state) == 2 + 2 * 2 * 6  # 6 LayerNorms in 2 layers
    _, other = build_model("zsdemo-tiny-vit", "none", spec_for("category"), seed=2)
    other.load_state_dict(state)
    assert torch.allclose(other(s, p, n)[0], es, rtol=1e-4, atol=1e-5)
    with pytest.raises(KeyError):
        other.load_state_dict({k: v for k, v in list(state.items())[1:]})


def test_text_embeddings_are_normalised_per_class(tiny_encoder):
    feats = class_text_embeddings(tiny_encoder.clip, "zsdemo-tiny-vit", ["star", "hot_air_balloon"])
    assert feats.shape == (2, 32) and torch.allclose(feats.norm(dim=-1), torch.ones(2), rtol=0, atol=1e-5)
    expected = tiny_encoder.encode_text(["a photo of a hot air balloon"])
    assert torch.allclose(feats[1], torch.from_numpy(expected[0]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("setting", ["category", "fine_grained"])
def test_exported_prompts_load_unchanged_in_engine(tmp_path, setting):
    clip, model = build_model("zsdemo-tiny-vit", "none", spec_for(setting), seed=5)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    path = export_prompts(tmp_path / "p.safetensors", model.prompted, "zsdemo-tiny-vit", "none", {"step": 3, "run": "t"})
    encoder = SketchPhotoEncoder.load(EncoderConfig(model="zsdemo-tiny-vit", pretrained="none", prompts=str(path)))
    assert encoder.prompted.spec == spec_for(setting)
    x = torch.randn(2, 3, 64, 64)
    for modality in ("sketch", "photo"):
        assert torch.allclose(encoder.encode_tensor(x, modality), model.prompted.eval()(x, modality), rtol=1e-4, atol=1e-5)


def test_prompts_and_layernorms_can_fit_a_batch():
    """Gradients reach the learned tensors through the frozen ViT: one fixed batch is fitted (triplet -> ~0)."""
    _, model = build_model("zsdemo-tiny-vit", "none", spec_for("category"), seed=0)
    g = torch.Generator().manual_seed(0)
    s, p, n = (torch.randn(8, 3, 64, 64, generator=g) for _ in range(3))
    optimizer = torch.optim.Adam([q for q in model.parameters() if q.requires_grad], lr=1e-2)
    from train.losses import triplet_loss

    first = None
    for _ in range(60):
        loss = triplet_loss(*model(s, p, n), margin=0.3)
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert first > 0.2 and loss.item() < 0.05
