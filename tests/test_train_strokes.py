"""Stroke-ordered synthetic sketches: partial renderings grow monotonically to the full sketch."""

from __future__ import annotations

import random

import numpy as np
from PIL import Image

from train.synthetic import _instance, render_strokes, sketch_strokes


def test_partial_sketches_add_ink_stroke_by_stroke():
    rng = random.Random(0)
    inst = _instance(rng)
    strokes = sketch_strokes("star", inst, 96, rng)
    assert len(strokes) == 4  # three outline pieces, then the inner mark
    ink = [int((np.asarray(render_strokes(strokes, 96, n).convert("L")) < 128).sum()) for n in range(len(strokes) + 1)]
    assert ink[0] == 0 and all(a < b for a, b in zip(ink[:-1], ink[1:], strict=True))
    full = np.asarray(render_strokes(strokes, 96))
    assert np.array_equal(full, np.asarray(render_strokes(strokes, 96, len(strokes))))
    # consecutive outline pieces join: the end of one is the start of the next
    assert strokes[0][-1] == strokes[1][0] and strokes[1][-1] == strokes[2][0]


def test_dataset_instances_replay_the_generator_and_strokes_follow_the_file(tmp_path):
    from pathlib import Path

    import pytest

    from train.synthetic import dataset_instances, generate, render_sketch, strokes_of

    root = generate(tmp_path / "d", shapes=("circle", "star"), photos_per_class=2, sketches_per_photo=2, size=64, seed=3)
    instances, size = dataset_instances(root, seed=3)
    assert size == 64 and sorted(instances) == ["circle_000", "circle_001", "star_000", "star_001"]
    assert instances["star_001"][0] == "star"
    # the replayed instance is the one the file shows: its outline lies where the file has ink
    shape, inst = instances["star_001"]
    on_file = np.asarray(Image.open(root / "sketch" / "star" / "star_001-2.png").convert("L")) < 128
    redrawn = np.asarray(render_sketch(shape, inst, 64, random.Random(0)).convert("L")) < 128
    assert (on_file & redrawn).sum() > 0.3 * redrawn.sum()
    strokes = strokes_of(Path(root / "sketch" / "star" / "star_001-2.png"), instances, size)
    assert len(strokes) == 4 and strokes == strokes_of(Path("x/star_001-2.png"), instances, size)  # seeded by the name
    with pytest.raises(ValueError, match="seed"):
        dataset_instances(root, seed=4)


def test_last_stroke_is_drawn_as_thin_as_the_mark_of_render_sketch():
    rng = random.Random(1)
    strokes = sketch_strokes("circle", _instance(rng), 128, rng)
    ink = lambda img: int((np.asarray(img.convert("L")) < 128).sum())  # noqa: E731
    thin, thick = ink(render_strokes(strokes, 128)), ink(render_strokes(strokes, 128, mark_last=False))
    assert thin < thick  # mark at 128 // 64 = 2 px instead of 128 // 40 = 3 px


def test_a_one_point_stroke_is_drawn_as_a_dot():
    ink = int((np.asarray(render_strokes([[(10.0, 10.0)], [(1.0, 1.0), (50.0, 50.0)]], 64, 1, False).convert("L")) < 128).sum())
    assert ink > 0
