"""Real dataset layouts (miniature trees with the public copies' folder and file naming), the data check
command, and unreadable files in training and evaluation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_helpers import CONFIGS, ROOT, make_miniature, run_env

from train import check_data
from train.config import load_config
from train.datasets import ImageListDataset, TripletDataset
from train.layouts import LAYOUTS
from train.samplers import CategoryBatchSampler
from train.splits import SPLITS, build_split, split_from_config
from train.transforms import eval_transform

# (layout preset, the shipped config it goes with, fine-grained?)
CASES = [
    ("sketchy_ext", "sketchy_category", False),
    ("sketchy_ext_sake", "sketchy_category", False),
    ("sketchy_fg", "sketchy_fine_grained", True),
    ("sketchy_fg_sake", "sketchy_fine_grained", True),
    ("tuberlin_sake", "tuberlin_category", False),
    ("tuberlin_sempcyc", "tuberlin_category", False),
    ("quickdraw", "quickdraw_category", False),
]


@pytest.fixture(scope="module")
def minis(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mini")
    return {layout: make_miniature(root / layout, layout) for layout, _, _ in CASES}


@pytest.mark.parametrize("layout, config, fine", CASES, ids=[c[0] for c in CASES])
def test_each_preset_loads_its_miniature_copy(minis, layout, config, fine):
    cfg = load_config(CONFIGS / f"{config}.yaml", [f"data_root={minis[layout]}", f"layout={layout}"])
    assert (cfg.sketch_dir, tuple(cfg.photo_dir)) == (LAYOUTS[layout].sketch_dir, LAYOUTS[layout].photo_dirs)
    split = split_from_config(cfg, check_sampler=False)
    n_unseen = len(SPLITS[cfg.split])
    n_folders = len(LAYOUTS[layout].photo_dirs)
    assert len(split.test.classes) == n_unseen and len(split.train.classes) == 3
    assert len(split.test.sketches) == 2 * n_unseen
    assert len(split.test.photos) == 2 * n_folders * n_unseen  # every photo folder counted
    if fine:
        for s, pair in zip(split.test.sketches, split.test.sketch_pairs, strict=True):
            assert split.test.photos[pair].stem == s.stem.rsplit("-", 1)[0]


def test_sketchy_ext_default_gallery_is_the_union_of_both_photo_folders(minis):
    """The standard 12,553-photo gallery: original Sketchy photos + the extension, not the extension alone."""
    cfg = load_config(CONFIGS / "sketchy_category.yaml", [f"data_root={minis['sketchy_ext']}"])
    assert cfg.layout == "sketchy_ext" and cfg.photo_dir == ["photo/tx_000000000000", "extended_photo"]
    split = split_from_config(cfg, check_sampler=False)
    folders = {p.parent.parent.name for p in split.test.photos}
    assert folders == {"tx_000000000000", "extended_photo"}
    per_class = [len(x) for x in split.test.photos_by_class()]
    assert per_class == [4] * 21  # 2 original + 2 extended in every unseen class
    only_ext = split_from_config(load_config(CONFIGS / "sketchy_category.yaml",
                                             [f"data_root={minis['sketchy_ext']}", "photo_dir=extended_photo"]), False)
    assert len(only_ext.test.photos) == len(split.test.photos) // 2


def test_presets_and_explicit_keys_precedence(tmp_path):
    base = CONFIGS / "sketchy_category.yaml"
    assert load_config(base, ["layout=sketchy_ext_sake"]).sketch_dir == "256x256/sketch/tx_000000000000_ready"
    assert load_config(base, ["layout=sketchy_ext_sake", "sketch_dir=mine"]).sketch_dir == "mine"
    assert load_config(base, ["lr_preset=authors"]).lr_prompt == pytest.approx(1e-4, rel=1e-9)
    assert load_config(base, ["lr_preset=authors"]).lr_layernorm == pytest.approx(1e-6, rel=1e-9)
    assert load_config(base, ["lr_preset=authors", "lr_layernorm=1e-5"]).lr_layernorm == pytest.approx(1e-5, rel=1e-9)
    with pytest.raises(ValueError, match="Unknown layout"):
        load_config(base, ["layout=nope"])
    cfg = load_config(base, ["layout=tuberlin_sempcyc"])
    cfg.dump(tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg  # the dumped run config reloads to the same folders


def test_sketch_and_photo_class_spellings_may_differ(tmp_path):
    root = make_miniature(tmp_path, "tuberlin_sempcyc")
    (root / "images" / "bottle_opener").rename(root / "images" / "bottle opener")  # one folder spelled differently
    split = build_split(root, "sketches", ["images"], SPLITS["tuberlin"])
    assert "bottle_opener" in split.test.classes and len(split.test.photos) == 60


def test_check_data_reports_counts_and_differences(minis, capsys):
    rc = check_data.main(["--config", str(CONFIGS / "quickdraw_category.yaml"), f"data_root={minis['quickdraw']}"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "| unseen | 30 | 60 | 60 | images: 60 |" in out and "| seen | 3 | 6 | 6 | images: 6 |" in out
    assert "unseen sketches: found 60, the standard quickdraw test set has 92,291" in out
    assert "unseen photos: found 60, the standard quickdraw test set has 54,151" in out
    assert "unseen classes: found" not in out  # 30 classes: as standard
    rc = check_data.main(["--config", str(CONFIGS / "sketchy_fine_grained.yaml"), f"data_root={minis['sketchy_fg']}"])
    assert rc == 0 and "the standard sketchy_fg test set has 2,100" in capsys.readouterr().out


def test_check_data_matches_standard_counts_exactly(tmp_path, monkeypatch, capsys):
    """A copy with the standard counts is reported as matching (standard counts scaled down for speed)."""
    from train.layouts import STANDARD_COUNTS, StandardCounts

    root = make_miniature(tmp_path, "tuberlin_sake")
    monkeypatch.setitem(STANDARD_COUNTS, "tuberlin", StandardCounts(30, 60, 60, 3))
    rc = check_data.main(["--config", str(CONFIGS / "tuberlin_category.yaml"), f"data_root={root}"])
    assert rc == 0 and "Matches the standard tuberlin split" in capsys.readouterr().out


def test_check_data_fails_clearly_on_a_wrong_layout(minis, capsys):
    rc = check_data.main(["--config", str(CONFIGS / "tuberlin_category.yaml"), f"data_root={minis['tuberlin_sempcyc']}"])
    err = capsys.readouterr().err
    assert rc == 2 and "png_ready does not exist" in err
    assert "Layouts whose folders exist under" in err and "tuberlin_sempcyc" in err.rsplit("exist under", 1)[1]


@pytest.mark.parametrize("how", ["script", "module"])
def test_check_data_runs_as_a_script_and_as_a_module(minis, how):
    entry = [str(ROOT / "train" / "check_data.py")] if how == "script" else ["-m", "train.check_data"]
    proc = subprocess.run([sys.executable, *entry, "--config", str(CONFIGS / "sketchy_fine_grained.yaml"),
                           f"data_root={minis['sketchy_fg']}"], cwd=ROOT, env=run_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| unseen | 21 | 42 | 42 | photo/tx_000000000000: 42 |" in proc.stdout


def test_check_data_read_counts_unreadable_files(tmp_path, capsys):
    root = make_miniature(tmp_path, "quickdraw")
    bad = sorted((root / "sketches" / "cow").iterdir())[0]
    bad.write_bytes(b"")  # an empty file, as in real QuickDraw dumps
    rc = check_data.main(["--config", str(CONFIGS / "quickdraw_category.yaml"), f"data_root={root}", "--read"])
    assert rc == 0 and "1 unreadable or blank image(s)" in capsys.readouterr().out


# ---- one bad file must not kill a run ------------------------------------------------------------
def test_training_items_replace_unreadable_files(tmp_path, tiny_encoder):
    root = make_miniature(tmp_path, "quickdraw", sketches_per_class=3, photos_per_folder=3)
    split = build_split(root, "sketches", ["images"], SPLITS["quickdraw"])
    part = split.train
    bad_sketch, bad_photo = part.sketches[0], part.photos[part.photos_by_class()[0][0]]
    bad_sketch.write_bytes(b"")
    bad_photo.write_bytes(b"not a jpeg")
    ds = TripletDataset(part, eval_transform(tiny_encoder.clip), augment_images=True)
    plan = CategoryBatchSampler(part, batch_size=3, seed=0).plan()
    items = [item for batch in plan for item in batch]
    outs = [ds[item] for item in items]  # nothing raises
    assert sum(o["skipped"] for o in outs) >= 1
    for item, out in zip(items, outs, strict=True):
        assert out["label"] == part.sketch_labels[item[0]]  # a replacement keeps the class
        assert out["index"] != 0  # the bad sketch never comes back


def test_eval_leaves_unreadable_files_out_and_reports_them(tmp_path, tiny_encoder):
    from accelerate import Accelerator

    from train.eval import eval_loaders, evaluate

    root = make_miniature(tmp_path, "quickdraw")
    split = build_split(root, "sketches", ["images"], SPLITS["quickdraw"])
    split.test.sketches[3].write_bytes(b"")
    split.test.photos[5].write_bytes(b"\x89PNG broken")
    cfg = load_config(None, ["metric_convention=sake"])
    s_dl, p_dl, queries = eval_loaders(split.test, eval_transform(tiny_encoder.clip), 16, 0)
    result = evaluate(Accelerator(cpu=True), tiny_encoder.prompted, split.test, s_dl, p_dl, queries, cfg)
    assert result["n_queries"] == 59 and result["n_gallery"] == 59
    assert result["skipped_files"]["sketch"] == 1 and result["skipped_files"]["photo"] == 1
    assert str(split.test.photos[5]) in result["skipped_files"]["files"]
    image, index, ok = ImageListDataset([split.test.sketches[3]], "sketch", eval_transform(tiny_encoder.clip))[0]
    assert ok == 0 and index == 0 and image.shape == (3, 64, 64) and torch.count_nonzero(image) == 0
