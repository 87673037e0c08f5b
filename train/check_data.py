"""Check a dataset copy against a train config without building a model.

    python train/check_data.py --config train/configs/sketchy_category.yaml data_root=/data/Sketchy
    python train/check_data.py --config train/configs/tuberlin_category.yaml data_root=/data/TU-Berlin layout=tuberlin_sempcyc
    python train/check_data.py --config ... --read        # also open every image and count unreadable ones

Prints, per split (seen = training classes, unseen = test classes), the classes, sketches and photos
found (photos per photo folder too), compares the unseen split with the standard test set of the
benchmark (train/layouts.py) and says where a count differs. Exit status 0 when the layout loads
(count differences are reported, not fatal: your copy may be a deliberate variant), 2 with a message
naming the problem when it does not.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import logging
from typing import Any

from train.config import TrainConfig, load_config
from train.datasets import LOAD_ERRORS, load_sketch
from train.layouts import LAYOUTS, STANDARD_COUNTS, StandardCounts
from train.splits import DataError, Part, Split, check_trainable, split_from_config
from zsdemo.model.preprocess import load_photo

log = logging.getLogger("train.check_data")


def standard_for(cfg: TrainConfig) -> tuple[str, StandardCounts] | None:
    """The standard test set this config's split is compared with (None for custom splits)."""
    if cfg.split == "custom":
        return None
    key = "sketchy_fg" if cfg.split == "sketchy" and cfg.setting == "fine_grained" else cfg.split
    return (key, STANDARD_COUNTS[key]) if key in STANDARD_COUNTS else None


def photo_folder_counts(part: Part, data_root: str, photo_dirs: list[str]) -> dict[str, int]:
    counts = dict.fromkeys(photo_dirs, 0)
    roots = [(d, (Path(data_root) / d).resolve()) for d in photo_dirs]
    for photo in part.photos:
        resolved = photo.resolve()
        for name, root in roots:
            if root in resolved.parents:
                counts[name] += 1
                break
    return counts


def read_all(part: Part, sketch_mode: str) -> list[str]:
    """Open every image as training would; the unreadable or blank ones."""
    bad = []
    for kind, paths in (("sketch", part.sketches), ("photo", part.photos)):
        for path in paths:
            try:
                load_sketch(path, sketch_mode) if kind == "sketch" else load_photo(path)
            except LOAD_ERRORS as exc:
                bad.append(f"{path} ({type(exc).__name__}: {exc})")
    return bad


def check(cfg: TrainConfig, read: bool = False) -> dict[str, Any]:
    """Load the splits (raises DataError when the layout does not load) and compare with the standard counts."""
    split: Split = split_from_config(cfg, check_sampler=False)  # the sampler check is reported as a note
    report: dict[str, Any] = {"data_root": cfg.data_root, "layout": cfg.layout or "(none)", "sketch_dir": cfg.sketch_dir,
                              "photo_dir": list(cfg.photo_dir), "splits": {}, "differences": [], "notes": []}
    for name, part in (("seen", split.train), ("unseen", split.test)):
        report["splits"][name] = {"classes": len(part.classes), "sketches": len(part.sketches), "photos": len(part.photos),
                                  "photos_per_folder": photo_folder_counts(part, cfg.data_root, list(cfg.photo_dir))}
    standard = standard_for(cfg)
    if standard:
        key, counts = standard
        report["standard"] = key
        found = report["splits"]["unseen"]
        for field, want in (("classes", counts.unseen_classes), ("sketches", counts.sketches), ("photos", counts.photos)):
            if found[field] != want:
                report["differences"].append(f"unseen {field}: found {found[field]:,}, the standard {key} test set has {want:,}")
        if report["splits"]["seen"]["classes"] != counts.seen_classes:
            report["differences"].append(f"seen classes: found {report['splits']['seen']['classes']}, "
                                         f"the standard split has {counts.seen_classes}")
    k = 200 if cfg.benchmark in ("sketchy", "quickdraw") else 100 if cfg.benchmark == "tuberlin" else 0
    if k and cfg.setting == "category":
        short = [(c, n) for c, n in zip(split.test.classes, map(len, split.test.photos_by_class()), strict=True) if n < k]
        if short:
            report["notes"].append(f"{len(short)} unseen class(es) have fewer than {k} photos, which caps P@{k}: "
                                   + ", ".join(f"{c} ({n})" for c, n in short[:10]))
    try:
        check_trainable(split.train, cfg)
    except DataError as exc:
        report["notes"].append(f"training would stop: {exc}")
    if read:
        bad = read_all(split.train, cfg.sketch_mode) + read_all(split.test, cfg.sketch_mode)
        report["unreadable"] = bad
        if bad:
            report["notes"].append(f"{len(bad)} unreadable or blank image(s); runs skip them (first: {bad[0]})")
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = [f"data_root {report['data_root']}, layout {report['layout']}: sketches {report['sketch_dir']}, "
             f"photos {' + '.join(report['photo_dir'])}", "", "| split | classes | sketches | photos | photos per folder |",
             "|---|---|---|---|---|"]
    for name, s in report["splits"].items():
        per = ", ".join(f"{d}: {n:,}" for d, n in s["photos_per_folder"].items())
        lines.append(f"| {name} | {s['classes']} | {s['sketches']:,} | {s['photos']:,} | {per} |")
    lines.append("")
    if "standard" in report:
        if report["differences"]:
            lines.append(f"Differs from the standard {report['standard']} split:")
            lines += [f"- {d}" for d in report["differences"]]
        else:
            lines.append(f"Matches the standard {report['standard']} split (classes, sketches, photos).")
    else:
        lines.append("Custom split: no standard counts to compare with.")
    lines += [f"Note: {n}" for n in report["notes"]]
    return "\n".join(lines)


def matching_layouts(data_root: str | Path) -> list[str]:
    """Presets whose sketch and photo folders all exist under data_root."""
    root = Path(data_root)
    return [name for name, lay in LAYOUTS.items()
            if (root / lay.sketch_dir).is_dir() and all((root / d).is_dir() for d in lay.photo_dirs)]


def layouts_help(data_root: str | Path | None = None) -> str:
    text = "Known layouts (layout=NAME):\n" + "\n".join(
        f"  {name}: sketches {lay.sketch_dir}, photos {' + '.join(lay.photo_dirs)}  [{lay.copy}]" for name, lay in LAYOUTS.items())
    if data_root is not None:
        found = matching_layouts(data_root)
        text += (f"\nLayouts whose folders exist under {data_root}: {', '.join(found)}" if found
                 else f"\nNo known layout's folders exist under {data_root}: check data_root, or set sketch_dir/photo_dir.")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Load a dataset's splits as a train config sees them; compare with the standard counts.")
    parser.add_argument("--config", required=True)
    parser.add_argument("--read", action="store_true", help="open every image and count the unreadable or blank ones")
    args, rest = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cfg = None
    try:
        cfg = load_config(args.config, rest)
        report = check(cfg, read=args.read)
    except (DataError, ValueError, FileNotFoundError) as exc:
        print(f"check_data: the data does not load: {exc}\n\n{layouts_help(cfg.data_root if cfg else None)}", file=sys.stderr)
        return 2
    print(format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
