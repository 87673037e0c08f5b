"""Synthetic data, folder loaders, zero-shot splits, samplers, patch shuffling and the config loader."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from train.config import load_config, parse_overrides
from train.datasets import TripletDataset
from train.samplers import CategoryBatchSampler, FineGrainedBatchSampler
from train.splits import DataError, build_split, pair_stem, split_from_config
from train.synthetic import SHAPES, SYNTHETIC_UNSEEN, generate
from train.transforms import eval_transform, patch_shuffle

UNSEEN = list(SYNTHETIC_UNSEEN)


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("synth"), photos_per_class=6, sketches_per_photo=2, size=64)


def copy_data(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "data"
    shutil.copytree(src, dst)
    return dst


def test_synthetic_layout_and_pairing(synth):
    split = build_split(synth, "sketch", "photo", UNSEEN, paired=True)
    assert sorted(split.test.classes) == sorted(UNSEEN)
    assert len(split.train.classes) == len(SHAPES) - len(UNSEEN)
    assert len(split.train.sketches) == 7 * 6 * 2 and len(split.train.photos) == 7 * 6
    for s, pair, label in zip(split.test.sketches, split.test.sketch_pairs, split.test.sketch_labels, strict=True):
        photo = split.test.photos[pair]
        assert photo.stem == s.stem.rsplit("-", 1)[0] and photo.parent.name == s.parent.name
        assert split.test.photo_labels[pair] == label


def test_synthetic_is_deterministic(tmp_path):
    a, b = generate(tmp_path / "a", shapes=("star",), photos_per_class=2, size=48), generate(tmp_path / "b", shapes=("star",), photos_per_class=2, size=48)
    for f in sorted((a / "sketch" / "star").iterdir()):
        assert f.read_bytes() == (b / "sketch" / "star" / f.name).read_bytes()


def test_pair_stem_sketchy_names():
    assert pair_stem(Path("n02691156_10151-3.png")) == "n02691156_10151"
    assert pair_stem(Path("hot-air_balloon.png")) == "hot-air_balloon"


def test_class_names_match_across_spellings(tmp_path, synth):
    data = copy_data(synth, tmp_path)
    for kind in ("sketch", "photo"):
        (data / kind / "crescent").rename(data / kind / "Crescent_Moon")
    split = build_split(data, "sketch", "photo", ["hexagon", "crescent moon", "diamond"])
    assert "Crescent_Moon" in split.test.classes


@pytest.mark.parametrize("breakage, message", [
    ("no_sketch_dir", "sketch folder"),
    ("empty_class", "contain no images: star"),
    ("photo_only_class", "only photos for ['zebra']"),
    ("unknown_unseen", "not folders"),
    ("unpaired", "no paired photo"),
])
def test_clear_errors_before_training(tmp_path, synth, breakage, message):
    data = copy_data(synth, tmp_path)
    unseen = list(UNSEEN)
    if breakage == "no_sketch_dir":
        shutil.rmtree(data / "sketch")
    elif breakage == "empty_class":
        for f in (data / "sketch" / "star").iterdir():
            f.unlink()
    elif breakage == "photo_only_class":
        (data / "photo" / "zebra").mkdir()
        shutil.copy(next((data / "photo" / "star").iterdir()), data / "photo" / "zebra" / "z.jpg")
    elif breakage == "unknown_unseen":
        unseen.append("unicorn")
    elif breakage == "unpaired":
        (data / "photo" / "star" / "star_002.jpg").unlink()
    with pytest.raises(DataError, match=message.replace("[", r"\[").replace("]", r"\]")) as info:
        build_split(data, "sketch", "photo", unseen, paired=True)
    if breakage == "unpaired":
        assert "star/star_002-1.png" in str(info.value)


def test_sampler_checks_run_before_training(synth):
    cfg = load_config(None, {"data_root": str(synth), "split": "custom", "unseen_classes": UNSEEN,
                             "setting": "fine_grained", "batch_size": 64, "instances_per_class": 4})
    with pytest.raises(DataError, match="needs 16 classes"):
        split_from_config(cfg)


def test_category_sampler_triplets_and_determinism(synth):
    part = build_split(synth, "sketch", "photo", UNSEEN).train
    sampler = CategoryBatchSampler(part, batch_size=8, seed=3)
    plan = sampler.plan()
    assert len(plan) == len(sampler) == len(part.sketches) // 8
    for batch in plan:
        for s, pos, neg, _ in batch:
            assert part.photo_labels[pos] == part.sketch_labels[s] != part.photo_labels[neg]
    assert sampler.plan() == plan
    sampler.set_epoch(1)
    assert sampler.plan() != plan
    assert sorted(s for b in plan for s, *_ in b) == sorted(set(s for b in plan for s, *_ in b))  # no repeats in an epoch


def test_fine_grained_sampler_blocks(synth):
    part = build_split(synth, "sketch", "photo", UNSEEN, paired=True).train
    sampler = FineGrainedBatchSampler(part, p_classes=3, q_instances=4, seed=0, grid=2)
    for batch in sampler.plan():
        assert len(batch) == 12
        labels = [part.sketch_labels[item[0]] for item in batch]
        blocks = [labels[i:i + 4] for i in range(0, 12, 4)]
        assert all(len(set(b)) == 1 for b in blocks) and len({b[0] for b in blocks}) == 3
        for s, pos, neg, _, perm1, perm2 in batch:
            assert pos == part.sketch_pairs[s]
            assert neg != pos and part.photo_labels[neg] == part.sketch_labels[s]
            assert perm1 != perm2 and sorted(perm1) == sorted(perm2) == [0, 1, 2, 3]


def test_patch_shuffle_known_layout():
    image = torch.arange(16.0).reshape(1, 4, 4)  # cells: 0 = top-left, 1 = top-right, 2 = bottom-left, 3 = bottom-right
    out = patch_shuffle(image, (3, 2, 1, 0), grid=2)
    assert torch.equal(out[0, :2, :2], image[0, 2:, 2:]) and torch.equal(out[0, :2, 2:], image[0, 2:, :2])
    assert torch.equal(out[0, 2:, :2], image[0, :2, 2:]) and torch.equal(out[0, 2:, 2:], image[0, :2, :2])
    assert torch.equal(patch_shuffle(image, (0, 1, 2, 3), 2), image)
    batch = torch.randn(2, 3, 8, 8)
    perm = (2, 0, 3, 1)
    inverse = tuple(perm.index(i) for i in range(4))
    assert torch.equal(patch_shuffle(patch_shuffle(batch, perm, 2), inverse, 2), batch)
    with pytest.raises(ValueError):
        patch_shuffle(torch.zeros(3, 5, 5), perm, 2)


def test_triplet_dataset_items(synth, tiny_encoder):
    part = build_split(synth, "sketch", "photo", UNSEEN, paired=True).train
    transform = eval_transform(tiny_encoder.clip)
    sampler = FineGrainedBatchSampler(part, p_classes=2, q_instances=2, seed=0)
    item = sampler.plan()[0][0]
    ds = TripletDataset(part, transform, augment_images=True, fine_grained=True)
    out = ds[item]
    assert out["sketch"].shape == (3, 64, 64)
    assert torch.equal(out["ps_positive"], patch_shuffle(out["positive"], item[4], 2))
    assert torch.equal(out["ps_negative"], patch_shuffle(out["positive"], item[5], 2))
    again = ds[item]
    assert all(torch.equal(out[k], again[k]) for k in ("sketch", "positive", "negative"))  # seeded augmentation
    plain = TripletDataset(part, transform, augment_images=False)[item[:4]]
    assert torch.equal(plain["sketch"], tiny_encoder.sketch_tensor(part.sketches[item[0]]))  # same preprocessing as the engine


def test_config_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"batch_size": 32, "lr_prompt": 1e-4, "unseen_classes": ["a", "b"]}))
    cfg = load_config(path, ["--batch-size", "8", "lr_prompt=0.5", "--augment", "false", "--tensorboard"])
    assert (cfg.batch_size, cfg.lr_prompt, cfg.augment, cfg.tensorboard) == (8, 0.5, False, True)
    assert cfg.unseen_classes == ["a", "b"]
    assert load_config(None, ["unseen_classes=x,y z"]).unseen_classes == ["x", "y z"]
    with pytest.raises(ValueError, match="Unknown config keys"):
        load_config(path, ["--bogus", "1"])
    with pytest.raises(ValueError, match="expected int"):
        load_config(path, ["--batch_size", "many"])
    assert parse_overrides(["--a=1", "b=2", "--flag"]) == {"a": "1", "b": "2", "flag": "true"}
    cfg.dump(tmp_path / "out" / "config.yaml")
    assert load_config(tmp_path / "out" / "config.yaml") == cfg


def test_shipped_configs_carry_paper_defaults():
    root = Path(__file__).resolve().parents[1] / "train" / "configs"
    expected = {"sketchy_category": ("category", "sketchy", "sketchy"), "tuberlin_category": ("category", "tuberlin", "tuberlin"),
                "quickdraw_category": ("category", "quickdraw", "quickdraw"),
                "sketchy_fine_grained": ("fine_grained", "sketchy", "sketchy_fg")}
    for name, (setting, split, bench) in expected.items():
        cfg = load_config(root / f"{name}.yaml")
        assert (cfg.setting, cfg.split, cfg.benchmark) == (setting, split, bench)
        assert (cfg.lr_prompt, cfg.batch_size, cfg.epochs, cfg.margin, cfg.cls_weight) == (1e-5, 64, 60, 0.3, 0.5)
        assert (cfg.model, cfg.pretrained, cfg.n_prompts, cfg.layernorm) == ("ViT-B-32-quickgelu", "openai", 3, True)
        if setting == "fine_grained":
            assert (cfg.delta_weight, cfg.ps_weight, cfg.ps_grid, cfg.p_classes * cfg.instances_per_class) == (0.1, 1.0, 2, 64)
    for tiny in ("tiny", "tiny_fine_grained"):
        assert load_config(root / f"{tiny}.yaml").model == "zsdemo-tiny-vit"


def _marked_pair(folder: Path, stem: str, sketch_size: int, photo_size: int) -> tuple[Path, Path]:
    """A sketch and its photo with a marker in the same relative spot (top-left quadrant), different pixel sizes."""
    from PIL import Image, ImageDraw

    (folder / "sketch" / "cls").mkdir(parents=True, exist_ok=True)
    (folder / "photo" / "cls").mkdir(parents=True, exist_ok=True)
    sketch = Image.new("RGB", (sketch_size, sketch_size), "white")
    s = sketch_size
    ImageDraw.Draw(sketch).rectangle((0.1 * s, 0.12 * s, 0.3 * s, 0.32 * s), fill="black")
    photo = Image.new("RGB", (photo_size, photo_size), (128, 128, 128))
    p = photo_size
    ImageDraw.Draw(photo).rectangle((0.1 * p, 0.12 * p, 0.3 * p, 0.32 * p), fill=(255, 0, 0))
    sketch_path, photo_path = folder / "sketch" / "cls" / f"{stem}-1.png", folder / "photo" / "cls" / f"{stem}.jpg"
    sketch.save(sketch_path)
    photo.save(photo_path, quality=95)
    return sketch_path, photo_path


def _quadrant(values: torch.Tensor) -> int:
    """Index (0 TL, 1 TR, 2 BL, 3 BR) of the quadrant with the largest sum of a (H, W) map."""
    h, w = values.shape
    sums = [values[:h // 2, :w // 2].sum(), values[:h // 2, w // 2:].sum(), values[h // 2:, :w // 2].sum(),
            values[h // 2:, w // 2:].sum()]
    return int(torch.stack(sums).argmax())


def test_fine_grained_pair_quadrants_align(tmp_path, tiny_encoder):
    """Patch shuffle assumes sketch cell i shows the part that photo cell i shows: one crop box and one flip
    for the pair, and no ink crop (which would re-centre the drawing and break the correspondence)."""
    from train.splits import Part

    sketch, photo = _marked_pair(tmp_path, "a", sketch_size=128, photo_size=96)
    _, other = _marked_pair(tmp_path, "b", sketch_size=128, photo_size=96)
    part = Part(classes=["cls"], sketches=[sketch], sketch_labels=[0], sketch_pairs=[0], photos=[photo, other],
                photo_labels=[0, 0])
    ds = TripletDataset(part, eval_transform(tiny_encoder.clip), augment_images=True, fine_grained=True)
    assert ds.sketch_mode == "none"
    quadrants = set()
    for seed in range(12):
        out = ds[(0, 0, 1, seed, (3, 2, 1, 0), (1, 0, 3, 2))]
        ink = -out["sketch"].mean(0)  # dark ink = low values after normalisation
        red = out["positive"][0] - out["positive"][1]
        assert _quadrant(ink) == _quadrant(red)
        assert _quadrant(-out["ps_sketch"].mean(0)) == _quadrant(out["ps_positive"][0] - out["ps_positive"][1])
        quadrants.add(_quadrant(red))
    assert quadrants == {0, 1}  # flips happened (top-left <-> top-right), and the pair flipped together
    # the category-level path ink-crops the sketch: the marker fills the frame and the quadrant is lost
    category = TripletDataset(part, eval_transform(tiny_encoder.clip), augment_images=False)
    assert category.sketch_mode == "ink"
    dark = (category[(0, 0, 1, 0)]["sketch"].mean(0) < 0).float().mean()
    assert dark > 0.4


def test_plain_sketch_inverts_and_rejects_blank(tmp_path):
    from PIL import Image, ImageDraw

    from train.datasets import plain_sketch
    from zsdemo.errors import EmptySketchError

    board = Image.new("L", (40, 30), 0)
    ImageDraw.Draw(board).line((5, 5, 30, 20), fill=255, width=3)
    board.save(tmp_path / "dark.png")
    out = plain_sketch(tmp_path / "dark.png")
    assert out.size == (40, 30) and out.getpixel((0, 0)) == (255, 255, 255)  # whole canvas kept, ink on paper
    Image.new("L", (40, 30), 255).save(tmp_path / "blank.png")
    with pytest.raises(EmptySketchError):
        plain_sketch(tmp_path / "blank.png")
