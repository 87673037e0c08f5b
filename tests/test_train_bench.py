"""train/bench.py's fine-grained learning checks: the pass/fail rule, and smoke-test-size runs (the real figures
are in train/BENCH.md)."""

from __future__ import annotations

import json

import pytest

from train.bench import FG_ARMS, fg_last_line, fg_verdict, shuffle_pairs_within_class
from train.synthetic import generate


@pytest.mark.slow
def test_fine_grained_check_rows_and_loss_sizes(tmp_path):
    from train.bench import LOSS_TERMS, fine_grained_check

    r = fine_grained_check(tmp_path, "none", taus=[1.0, 0.1], seeds=[0], overrides=["max_steps=3"])
    frozen, *trained = r["rows"]
    assert frozen["delta_tau"] is None and [row["delta_tau"] for row in trained] == [1.0, 0.1]
    for row in r["rows"]:
        assert 0.0 <= row["unseen Acc@1"] <= row["unseen Acc@5"] <= 100.0
        assert row["unseen Acc@1"] <= row["category Acc@1"]  # the class-only gallery is a subset of the unseen one
    for row in trained:  # a term pulls on the embeddings exactly when it is non-zero
        assert all((row[f"mean grad_{k}"] > 0) == (row[f"mean {k}"] > 0) for k in LOSS_TERMS)
    # the temperature is what makes L_delta pull: same data, same seed, tau 0.1 vs 1
    assert trained[1]["mean grad_delta"] > 10 * trained[0]["mean grad_delta"]


def arms(step0, trained, shuffled, tri_ce=(50.0, 50.0, 50.0)):
    return {"step0": list(step0), "trained": list(trained), "shuffled": list(shuffled), "tri_ce": list(tri_ce)}


def test_fg_verdict_passes_only_when_every_criterion_holds():
    good = arms(step0=(40, 42, 41), trained=(50, 47, 49), shuffled=(30, 35, 38))  # gains 10, 5, 8; gaps 20, 12, 11
    v = fg_verdict(35.0, good)
    assert v["passed"] and v["reasons"] == [] and v["gain_mean"] == pytest.approx(23 / 3)
    assert v["control_gap_per_seed"] == [20, 12, 11]
    # the gate: the frozen backbone must leave room both ways
    assert not fg_verdict(19.9, good)["passed"] and not fg_verdict(60.1, good)["passed"]
    assert fg_verdict(20.0, good)["passed"] and fg_verdict(60.0, good)["passed"]
    # one seed without a gain fails, even with a large mean gain
    v = fg_verdict(35.0, arms(step0=(40, 42, 41), trained=(60, 42, 60), shuffled=(30, 30, 30)))
    assert not v["passed"] and any("every seed" in r for r in v["reasons"])
    # gains in every seed but under +5 on average fail
    v = fg_verdict(35.0, arms(step0=(40, 40, 40), trained=(44, 44, 44), shuffled=(30, 30, 30)))
    assert not v["passed"] and v["reasons"] == ["mean (b)-(a) 4.0 < 5"]
    # the shuffled-pairs control within 10 points of the trained arm in one seed fails
    v = fg_verdict(35.0, arms(step0=(40, 40, 40), trained=(50, 50, 50), shuffled=(30, 41, 30)))
    assert not v["passed"] and len(v["reasons"]) == 1 and "(b)-(c)" in v["reasons"][0]


def test_fg_last_line_is_the_verdict_and_json_figures():
    r = {"arms": arms(step0=(40, 42, 41), trained=(50, 47, 49), shuffled=(30, 35, 38)), "frozen_acc1": 35.0,
         "seeds": [0, 1, 2], "rows": [{"queries": 180}], "steps": 400}
    r["verdict"] = fg_verdict(r["frozen_acc1"], r["arms"])
    verdict, figures = fg_last_line(r).split(" ", 1)
    assert verdict == "fg_check=pass"
    figures = json.loads(figures)
    assert figures["trained"] == pytest.approx(146 / 3, abs=0.01) and figures["queries"] == 180
    assert set(FG_ARMS) <= set(figures) and figures["per_seed"]["shuffled"] == [30, 35, 38]


def test_shuffled_pairs_keep_the_class_and_lose_every_true_pair(tmp_path):
    from train.splits import build_split

    root = generate(tmp_path / "d", shapes=("circle", "square", "star"), photos_per_class=4, sketches_per_photo=1, size=32)
    shuffled = shuffle_pairs_within_class(root, tmp_path / "s", ["circle", "square"], seed=0)
    true = build_split(root, "sketch", "photo", ["star"], paired=True).train
    mixed = build_split(shuffled, "sketch", "photo", ["star"], paired=True).train
    assert len(mixed.sketches) == len(true.sketches) == 8
    for i in range(len(true.sketches)):
        a, b = true.photos[true.sketch_pairs[i]], mixed.photos[mixed.sketch_pairs[i]]
        assert true.sketch_labels[i] == mixed.sketch_labels[i]
        assert a.read_bytes() != b.read_bytes()  # another photo of the same class now bears the paired name
        assert {p.read_bytes() for p in true.photos if p.parent.name == a.parent.name} == \
            {p.read_bytes() for p in mixed.photos if p.parent.name == a.parent.name}
    # the unseen class is untouched
    star = sorted((root / "photo" / "star").iterdir())
    assert [p.read_bytes() for p in star] == [(shuffled / "photo" / "star" / p.name).read_bytes() for p in star]


@pytest.mark.slow
def test_fg_check_smoke(tmp_path):
    from train.bench import fg_check

    r = fg_check(tmp_path, "none", seeds=[0], steps=2, jobs=2,
                 data={"photos_per_class": 4, "sketches_per_photo": 2, "size": 64})
    assert [row["arm"] for row in r["rows"]] == ["frozen", *FG_ARMS]
    assert r["rows"][0]["queries"] == 24 and set(r["arms"]) == set(FG_ARMS)
    assert all(0.0 <= row["unseen Acc@1"] <= row["unseen Acc@5"] <= 100.0 for row in r["rows"])
    assert fg_last_line(r).startswith(("fg_check=pass ", "fg_check=fail "))


def test_ps_diagnosis_and_drawing_check_smoke(tmp_path):
    from pathlib import Path

    from train.bench import drawing_check, ps_diagnosis

    root = generate(tmp_path / "d", photos_per_class=2, sketches_per_photo=2, size=64)
    config = Path("train/configs/tiny_fine_grained.yaml")
    over = [f"data_root={root}", "generate_synthetic=false"]
    ps = ps_diagnosis(config, over, ["step0"], grids=(2, 4), n=6)
    assert ps["pairs"] == 6 and ps["image_size"] == 64 and [r["model"] for r in ps["rows"]][1].startswith("prompts at step 0")
    for row in ps["rows"]:
        for g in (2, 4):  # the hinge: L_ps >= margin + d+ - d- on average, and = it when every triplet is active
            assert row[f"g{g} L_ps"] >= ps["ps_margin"] + row[f"g{g} d+"] - row[f"g{g} d-"] - 1e-6
            assert 0 <= row[f"g{g} active"] <= 1 and -1 <= row[f"g{g} cos(photo, shuffled photo)"] <= 1
    draw = drawing_check(config, over, [], tmp_path / "w")
    assert draw["fractions"] == [0.25, 0.5, 0.75, 1.0] and len(draw["rows"]) == 1
    assert len(draw["rows"][0]["Acc@1"]) == 4 and 0 <= draw["rows"][0]["m@A"] <= 1
