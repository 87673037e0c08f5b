"""A starter gallery of real photographs that ship inside installed packages, so the demo works offline."""

from __future__ import annotations

import importlib.util
import logging
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

# (package, file inside it) -> name in the starter folder. Photographs only: no charts, logos or scans.
STARTER_FILES = {
    ("skimage", "data/astronaut.png"): "astronaut.png",
    ("skimage", "data/camera.png"): "cameraman.png",
    ("skimage", "data/chelsea.png"): "cat-chelsea.png",
    ("skimage", "data/coffee.png"): "coffee-cup.png",
    ("skimage", "data/coins.png"): "coins.png",
    ("skimage", "data/horse.png"): "horse-silhouette.png",
    ("skimage", "data/moon.png"): "moon-surface.png",
    ("skimage", "data/rocket.jpg"): "rocket.jpg",
    ("skimage", "data/motorcycle_left.png"): "motorcycle.png",
    ("skimage", "data/hubble_deep_field.jpg"): "hubble-deep-field.jpg",
    ("skimage", "data/brick.png"): "brick-wall.png",
    ("skimage", "data/grass.png"): "grass.png",
    ("skimage", "data/gravel.png"): "gravel.png",
    ("skimage", "data/clock_motion.png"): "clock.png",
    ("gradio", "media_assets/images/bus.png"): "bus.png",
    ("gradio", "media_assets/images/cheetah.jpg"): "cheetah.jpg",
    ("gradio", "media_assets/images/lion.jpg"): "lion.jpg",
    ("gradio", "media_assets/images/tower.jpg"): "tower.jpg",
    ("gradio", "test_data/cheetah2.jpg"): "cheetah-2.jpg",
}


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def starter_photos_dir(root: Path = Path("gallery_cache")) -> Path:
    """Copy the bundled photos into `root/starter_photos` (once) and return that folder."""
    target = Path(root) / "starter_photos"
    target.mkdir(parents=True, exist_ok=True)
    for (package, relative), name in STARTER_FILES.items():
        destination = target / name
        if destination.exists():
            continue
        base = _package_dir(package)
        source = base / relative if base else None
        if source is None or not source.is_file():
            log.warning("Starter photo %s/%s is not installed; skipping it.", package, relative)
            continue
        tmp = destination.with_name(f".{name}.tmp")
        shutil.copyfile(source, tmp)
        tmp.replace(destination)
    return target
