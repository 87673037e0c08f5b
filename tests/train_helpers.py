"""Helpers shared by the train tests (tests/test_train_*.py): miniature copies of the public datasets in
their real folder and file naming, and the command lines and environment of the end-to-end runs
(train/fit.py itself, or tests/train_crash.py: fit.py that exits hard after a given checkpoint).

The miniature trees hold every unseen class of the split (so the built-in splits load) plus a few seen
classes, with tiny images: a sketch is black strokes on white, a photo a coloured square on a flat
background. They reproduce names, nesting and extensions, not image content.
"""

from __future__ import annotations

import json
import os
import random
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from train.layouts import LAYOUTS
from train.splits import SPLITS

ROOT = Path(__file__).resolve().parents[1]  # the repository
CONFIGS = ROOT / "train" / "configs"
TINY = CONFIGS / "tiny.yaml"
TINY_FG = CONFIGS / "tiny_fine_grained.yaml"

# Seen classes spelled as the copies spell them (Sketchy: "hot-air_balloon", "car_(sedan)"; TU-Berlin/SAKE:
# spaces; sem-pcyc: underscores)
SEEN = {"sketchy": ("airplane", "hot-air_balloon", "car_(sedan)"),
        "tuberlin": ("alarm clock", "airplane", "flying saucer"),
        "quickdraw": ("airplane", "hot_air_balloon", "alarm_clock")}


def tiny_sketch(seed: int, size: int = 24) -> Image.Image:
    rng = random.Random(seed)
    image = Image.new("L", (size, size), 255)
    draw = ImageDraw.Draw(image)
    draw.line([(rng.randint(1, 8), rng.randint(1, 8)), (rng.randint(14, size - 2), rng.randint(14, size - 2))], fill=0, width=2)
    return image


def tiny_photo(seed: int, size: int = 24) -> Image.Image:
    rng = random.Random(seed)
    image = Image.new("RGB", (size, size), tuple(rng.randint(0, 255) for _ in range(3)))
    ImageDraw.Draw(image).rectangle((6, 6, 17, 17), fill=tuple(rng.randint(0, 255) for _ in range(3)))
    return image


def _spell(name: str, style: str) -> str:
    """A class name as a copy spells its folder: "space" (TU-Berlin/SAKE), "underscore" (sem-pcyc, QuickDraw),
    "sketchy" (Sketchy's own: underscores, hyphens kept)."""
    if style == "space":
        return name.replace("_", " ")
    return name.replace(" ", "_")


def make_miniature(root: str | Path, layout: str, sketches_per_class: int = 2, photos_per_folder: int = 2,
                   seen: Sequence[str] | None = None) -> Path:
    """Write a miniature copy of `layout` (a train.layouts preset) under root; returns the data_root.

    Sketchy layouts pair sketches with the first photo folder's photos (`n0...._<i>-<n>.png` <->
    `n0...._<i>.jpg`); extended folders hold other ImageNet-style names. TU-Berlin-SAKE photos are `.JPEG`.
    """
    lay = LAYOUTS[layout]
    dataset = "sketchy" if layout.startswith("sketchy") else "tuberlin" if layout.startswith("tuberlin") else "quickdraw"
    style = "space" if layout == "tuberlin_sake" else "sketchy" if dataset == "sketchy" else "underscore"
    photo_ext = ".JPEG" if layout == "tuberlin_sake" else ".jpg"
    data_root = Path(root) / {"sketchy": "Sketchy", "tuberlin": "TU-Berlin", "quickdraw": "QuickDraw"}[dataset]
    classes = list(SPLITS[dataset]) + list(seen if seen is not None else SEEN[dataset])
    seed = 0
    for c, name in enumerate(classes):
        folder = _spell(name, style)
        wnid = f"n{c:08d}"
        for f, photo_dir in enumerate(lay.photo_dirs):
            d = data_root / photo_dir / folder
            d.mkdir(parents=True, exist_ok=True)
            for i in range(photos_per_folder):
                stem = f"{wnid}_{i + 1}" if f == 0 else f"{wnid}_{1000 + 100 * f + i}"
                seed += 1
                tiny_photo(seed).save(d / f"{stem}{photo_ext}", format="JPEG")
        d = data_root / lay.sketch_dir / folder
        d.mkdir(parents=True, exist_ok=True)
        for i in range(sketches_per_class):
            seed += 1
            if dataset == "sketchy":  # <photo-stem>-<n>.png
                name_ = f"{wnid}_{i % photos_per_folder + 1}-{i // photos_per_folder + 1}.png"
            else:
                name_ = f"{seed}.png"
            tiny_sketch(seed).save(d / name_)
    return data_root


# ---- end-to-end runs ---------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_env() -> dict[str, str]:
    """Subprocess environment: offline, one thread, no inherited CPU flag."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    env.pop("ACCELERATE_USE_CPU", None)
    return env


CRASH_EXIT = 3  # tests/train_crash.py's exit status


def fit_cmd(config: Path, data: Path, out: Path, *extra: str, crash_after: int = 0) -> list[str]:
    """train/fit.py's command line; crash_after=N runs it through tests/train_crash.py, which exits hard
    (status CRASH_EXIT) right after the checkpoint at step N."""
    script = [str(ROOT / "tests" / "train_crash.py"), "--crash-after-step", str(crash_after)] if crash_after else \
        [str(ROOT / "train" / "fit.py")]
    return [sys.executable, *script, "--config", str(config), f"data_root={data}", f"out_dir={out}", "progress=false", *extra]


def torchrun_cmd(config: Path, data: Path, out: Path, *extra: str, nproc: int = 2, crash_after: int = 0) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
            str(free_port()), *fit_cmd(config, data, out, *extra, crash_after=crash_after)[1:]]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]
