"""The similarity map behind "why this photo": hand-made tokens, the crop geometry, and the model's patch tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import TINY_MODEL
from zsdemo.model.prompts import PromptedViT, PromptSpec
from zsdemo.search.explain import (
    colour_map,
    explain_photo,
    model_view_box,
    overlay,
    photo_patch_tokens,
    similarity_grid,
)


def hand_made_tokens(hot: tuple[int, int], side: int = 7, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """side*side patch tokens orthogonal-ish to the query, except the one at `hot`, which is the query itself."""
    rng = np.random.default_rng(seed)
    query = np.zeros(dim, np.float32)
    query[0] = 1.0
    tokens = rng.normal(size=(side * side, dim)).astype(np.float32)
    tokens[:, 0] = 0.05 * rng.normal(size=side * side)  # almost no component along the query
    tokens[hot[0] * side + hot[1]] = query * 3.0  # scale does not matter to a cosine
    return tokens, query


def hot_centre(image: Image.Image, reference: Image.Image) -> tuple[float, float]:
    """Centre of mass (x, y) of the brightest-coloured pixels of an overlay of a uniform grey photo."""
    diff = np.asarray(image, np.float32) - np.asarray(reference, np.float32)
    warmth = diff[..., 0] + diff[..., 1]  # red + green: the yellow end of the ramp
    mask = warmth >= 0.5 * warmth.max()
    ys, xs = np.nonzero(mask)
    return float(xs.mean()), float(ys.mean())


@pytest.mark.parametrize("hot", [(0, 0), (3, 5), (6, 1)])
def test_the_matching_patch_is_the_hot_one(hot):
    tokens, query = hand_made_tokens(hot)
    grid = similarity_grid(tokens, query)
    assert grid.shape == (7, 7)
    assert np.unravel_index(int(grid.argmax()), grid.shape) == hot
    assert grid[hot] == pytest.approx(1.0, abs=1e-6) and np.delete(grid.ravel(), hot[0] * 7 + hot[1]).max() < 0.5


def test_moving_the_match_moves_the_hot_region_over_the_photo():
    photo = Image.new("RGB", (210, 140), (128, 128, 128))  # landscape: the model saw the centred 140x140 square
    box = model_view_box(photo.size)
    assert box == (35, 0, 175, 140)
    centres = {}
    for hot in [(1, 1), (5, 5)]:
        tokens, query = hand_made_tokens(hot)
        image = overlay(photo, similarity_grid(tokens, query), box)
        assert image.size == photo.size
        centres[hot] = hot_centre(image, photo)
    cell = 140 / 7
    for (row, col), (x, y) in centres.items():  # the hot pixels sit over that patch of the cropped square
        assert abs(x - (35 + (col + 0.5) * cell)) < cell and abs(y - (row + 0.5) * cell) < cell
    assert centres[(5, 5)][0] - centres[(1, 1)][0] > 3 * cell


def test_cropped_away_margins_are_not_coloured():
    photo = Image.new("RGB", (300, 100), (200, 30, 30))
    tokens, query = hand_made_tokens((3, 3))
    image = np.asarray(overlay(photo, similarity_grid(tokens, query)), np.int32)
    dimmed = (np.array([200, 30, 30]) + 128) // 2
    for x in (0, 50, 99, 201, 299):  # outside the centred 100x100 square
        assert np.abs(image[:, x] - dimmed).max() <= 1, x
    assert np.abs(image[:, 150] - dimmed).max() > 20  # inside: coloured


def test_model_view_box_per_resize_mode():
    assert model_view_box((100, 300)) == (0, 100, 100, 200)
    assert model_view_box((100, 300), "squash") == (0, 0, 100, 300)
    assert model_view_box((100, 300), "longest") == (-100, 0, 200, 300)
    tokens, query = hand_made_tokens((0, 6))
    assert overlay(Image.new("RGB", (100, 300)), similarity_grid(tokens, query),
                   model_view_box((100, 300), "longest")).size == (100, 300)


def test_colour_map_runs_dark_to_bright():
    ramp = colour_map(np.linspace(0, 1, 11))
    assert ramp.shape == (11, 3) and ramp.dtype == np.uint8
    brightness = ramp.astype(int).sum(axis=1)
    assert brightness[0] < 20 and brightness[-1] > 600 and brightness[-1] == brightness.max()


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="do not match"):
        similarity_grid(np.zeros((49, 8)), np.zeros(4))
    with pytest.raises(ValueError, match="do not fill"):
        similarity_grid(np.zeros((10, 8)), np.ones(8), grid=(3, 3))


@pytest.mark.parametrize("spec", [PromptSpec(n_prompts=0), PromptSpec(n_prompts=3, layernorm=True),
                                  PromptSpec(n_prompts=2, shared=True, layernorm=True, deep=True)])
def test_patch_tokens_come_from_the_branch_the_photos_were_indexed_with(spec):
    """Its [CLS] output is exactly the photo embedding; the patch tokens share its projection (same dimension)."""
    from zsdemo.model.encoder import create_clip

    clip = create_clip(TINY_MODEL, "none")
    prompted = PromptedViT(clip.visual, spec, generator=torch.Generator().manual_seed(1)).eval()
    if spec.layernorm:  # make the branch LayerNorms differ from the backbone's, so a missed override shows
        with torch.no_grad():
            for params in prompted.layernorms.values():
                for p in params.values():
                    p.add_(0.3)
    images = torch.randn(2, 3, 64, 64)
    cls, tokens = photo_patch_tokens(prompted, images)
    with torch.no_grad():
        expected = prompted(images, "photo")
    assert torch.allclose(cls, expected, atol=1e-5)
    assert tokens.shape == (2, 16, expected.shape[1])  # 64 px / 16 px patches = 4x4


def test_explain_photo_on_the_tiny_encoder(tiny_encoder):
    photo = Image.new("RGB", (96, 64), "white")
    photo.paste((0, 0, 0), (10, 10, 40, 40))
    sketch = tiny_encoder.encode_photos([photo])[0]
    result = explain_photo(tiny_encoder, photo, sketch)
    assert result.image.size == photo.size and result.grid.shape == (4, 4)
    assert result.crop_box == (16, 0, 80, 64)
    assert "not a segmentation" in result.caption and "cropped away" in result.caption
    assert "[CLS] score is 1.000" in result.caption  # the photo's own embedding as the query
    assert result.seconds < 5
    shrunk = explain_photo(tiny_encoder, photo, sketch, max_side=48)
    assert shrunk.image.size == (48, 32)
