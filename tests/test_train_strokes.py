"""Stroke-ordered synthetic sketches: partial renderings grow monotonically to the full sketch."""

from __future__ import annotations

import random

import numpy as np

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
