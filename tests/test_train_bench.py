"""train/bench.py's fine-grained learning check, at smoke-test size (the real figures are in train/BENCH.md)."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_fine_grained_check_rows_and_loss_sizes(tmp_path):
    from train.bench import LOSS_TERMS, fine_grained_check

    r = fine_grained_check(tmp_path, "none", taus=[1.0, 0.1], seeds=[0], overrides=["max_steps=3"])
    frozen, *trained = r["rows"]
    assert frozen["delta_tau"] is None and [row["delta_tau"] for row in trained] == [1.0, 0.1]
    for row in r["rows"]:
        assert 0.0 <= row["unseen Acc@1"] <= row["unseen Acc@5"] <= 100.0
        assert row["unseen Acc@1"] <= row["category Acc@1"]  # the class-only gallery is a subset of the unseen one
    for row in trained:
        assert all(row[f"mean grad_{k}"] >= 0 for k in LOSS_TERMS)
    # the temperature is what makes L_delta pull: same data, same seed, tau 0.1 vs 1
    assert trained[1]["mean grad_delta"] > 10 * trained[0]["mean grad_delta"]
