"""Retrieval while drawing: m@A / m@B (Bhunia et al., CVPR 2020) against a hand-worked episode."""

from __future__ import annotations

import pytest
import torch

from train.eval import episode_ranks, on_the_fly_metrics


def test_hand_worked_episode():
    # gallery of 5 photos (one-hot), the sketch pairs photo 0; three drawing steps
    gallery = torch.eye(5)
    steps = [torch.tensor([[0.1, 0.5, 0.3, 0.0, 0.0]]),   # pair ranks 3rd (photos 1, 2 ahead)
             torch.tensor([[0.4, 0.5, 0.0, 0.0, 0.0]]),   # 2nd
             torch.tensor([[0.9, 0.1, 0.0, 0.0, 0.0]])]   # 1st
    better, tied = episode_ranks(steps, gallery, torch.tensor([0]))
    assert better.tolist() == [[2, 1, 0]] and tied.tolist() == [[0, 0, 0]]
    m = on_the_fly_metrics(better, tied, gallery_size=5)
    # percentiles (5 - rank) / 4 = 0.5, 0.75, 1.0 ; 1 / rank = 1/3, 1/2, 1
    assert m["m@A"] == pytest.approx((0.5 + 0.75 + 1.0) / 3, abs=1e-12)
    assert m["m@B"] == pytest.approx((1 / 3 + 1 / 2 + 1) / 3, abs=1e-12)
    assert m["episodes"] == 1 and m["steps"] == 3


def test_blank_canvas_ties_score_chance_not_first():
    # an empty first step: every photo equally similar to the sketch
    gallery = torch.eye(4)
    steps = [torch.zeros(1, 4)]
    better, tied = episode_ranks(steps, gallery, torch.tensor([2]))
    rnd = on_the_fly_metrics(better, tied, 4, "random")
    assert rnd["m@A"] == pytest.approx(0.5, abs=1e-12)  # mean rank 2.5 of 4
    assert rnd["m@B"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4, abs=1e-12)
    assert on_the_fly_metrics(better, tied, 4, "pessimistic")["m@B"] == pytest.approx(0.25)
    assert on_the_fly_metrics(better, tied, 4, "optimistic")["m@A"] == pytest.approx(1.0)


def _frozen_tiny(setting, root):
    from train.config import load_config
    from train.model import build_model, spec_for

    name = "tiny.yaml" if setting == "category" else "tiny_fine_grained.yaml"
    cfg = load_config(f"train/configs/{name}", [f"data_root={root}", "generate_synthetic=false"])
    clip, step_model = build_model(cfg.model, "none", spec_for(cfg.setting, n_prompts=0, layernorm=False))
    return cfg, clip, step_model.prompted


@pytest.mark.parametrize("setting", ["category", "fine_grained"])
def test_retrieval_while_drawing_on_stroke_rendered_sketches(tmp_path, setting):
    import numpy as np
    from accelerate import Accelerator
    from PIL import Image

    from train.eval import drawing_parts, evaluate_while_drawing
    from train.splits import split_from_config
    from train.synthetic import dataset_instances, generate, strokes_of
    from train.transforms import eval_transform

    root = generate(tmp_path / "d", photos_per_class=2, sketches_per_photo=1, size=64)
    cfg, clip, prompted = _frozen_tiny(setting, root)
    part = split_from_config(cfg, check_sampler=False).test
    instances, size = dataset_instances(root)
    steps = drawing_parts(part, lambda p: strokes_of(p, instances, size), size, tmp_path / "draw")
    assert len(steps) == 4 and all(s.sketch_pairs == part.sketch_pairs for s in steps)
    ink = [int((np.asarray(Image.open(s.sketches[0]).convert("L")) < 128).sum()) for s in steps]
    assert all(a < b for a, b in zip(ink[:-1], ink[1:], strict=True))  # 1, 2, 3, 4 of the 4 strokes
    out = evaluate_while_drawing(Accelerator(cpu=True), prompted, steps, eval_transform(clip), cfg)
    assert out["n_queries"] == 6 and out["n_gallery"] == 6
    if setting == "category":
        assert len(out["mAP@200"]) == 4 and all(0 < v <= 1 for v in out["mAP@200"])
    else:
        assert out["steps"] == 4 and out["episodes"] == 6 and 0 <= out["m@A"] <= 1 and 1 / 6 <= out["m@B"] <= 1
        assert len(out["Acc@1"]) == 4 and all(0 <= a <= b <= 100 for a, b in zip(out["Acc@1"], out["Acc@5"], strict=True))


def _ndjson_line(word, key, drawing, recognized=True):
    import json

    return json.dumps({"word": word, "countrycode": "DE", "timestamp": "2017-03-01 20:41:36.70725 UTC",
                       "recognized": recognized, "key_id": key, "drawing": drawing}) + "\n"


def test_quickdraw_ndjson_strokes_in_drawing_order(tmp_path):
    from pathlib import Path

    from train.splits import DataError, Part, ndjson_part, read_ndjson_strokes

    f = tmp_path / "palm tree.ndjson"  # Google's file names keep the class's spaces
    f.write_text(_ndjson_line("palm tree", "5201136883597312", [[[10, 20, 30], [5, 5, 9]], [[0, 255], [128, 128]]])
                 + _ndjson_line("palm tree", "6", [[[1, 2], [3, 4]]], recognized=False)
                 + _ndjson_line("palm tree", "7", [[[1, 2], [3, 4], [0, 17]]]))  # raw files add times
    got = read_ndjson_strokes(f)
    assert [k for k, _ in got] == ["5201136883597312", "7"]  # unrecognised drawings left out
    assert got[0][1] == [[(10, 5), (20, 5), (30, 9)], [(0, 128), (255, 128)]] and got[1][1] == [[(1, 3), (2, 4)]]
    assert len(read_ndjson_strokes(f, limit=1)) == 1 and len(read_ndjson_strokes(f, recognized_only=False)) == 3
    photos = Part(classes=["palm_tree"], photos=[Path("p.jpg")], photo_labels=[0])
    part, strokes = ndjson_part(photos, tmp_path)
    assert part.sketch_labels == [0, 0] and part.photos == [Path("p.jpg")] and part.sketch_pairs == [-1, -1]
    assert strokes[part.sketches[0]] == got[0][1] and part.sketches[0].parent.name == "palm_tree"
    with pytest.raises(DataError, match="cabin"):
        ndjson_part(Part(classes=["palm_tree", "cabin"]), tmp_path)


def test_drawing_check_on_quickdraw_drawings(tmp_path):
    from pathlib import Path

    from train.bench import drawing_check
    from train.synthetic import generate

    root = generate(tmp_path / "d", photos_per_class=2, sketches_per_photo=1, size=64)
    nd = tmp_path / "ndjson"
    nd.mkdir()
    for name in ("hexagon", "crescent", "diamond"):
        lines = [_ndjson_line(name, str(i), [[[40, 200], [40 + 30 * i, 60]], [[60, 60], [30, 220]], [[90, 180], [200, 90]]])
                 for i in range(3)]
        (nd / f"{name.capitalize()}.ndjson").write_text("".join(lines))
    r = drawing_check(Path("train/configs/tiny.yaml"), [f"data_root={root}", "generate_synthetic=false"], [],
                      tmp_path / "w", str(nd), limit=2)
    row = r["rows"][0]
    assert r["setting"] == "category" and row["n_queries"] == 6 and row["n_gallery"] == 6 and len(row["mAP@200"]) == 4
