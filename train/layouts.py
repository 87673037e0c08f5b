"""Folder layouts of the public dataset copies, and the standard test-set sizes of the zero-shot benchmarks.

A layout names the sketch folder and the photo folder(s) under `data_root`; every loader then reads
`<data_root>/<folder>/<class>/<image>`. Class folders are matched to the split lists and across the
sketch and photo folders ignoring case, `_`, `-` and spaces ("hot-air_balloon", "hot air balloon").
With several photo folders, a class's photos are the union of its folders' photos.

Standard test sets (the file lists of SAKE and ZSE-SBIR, which the ZS-SBIR tables use):

| benchmark | unseen classes | query sketches | gallery photos |
|---|---|---|---|
| Sketchy-ext, 104/21 split | 21 | 12,694 | 12,553 = 2,100 original Sketchy photos + 10,453 extended |
| TU-Berlin-ext, 220/30 split | 30 | 2,400 | 27,989 |
| QuickDraw-ext, 80/30 split | 30 | 92,291 | 54,151 |

With Sketchy-ext's union gallery every unseen class has at least 200 relevant photos, so P@200 and
mAP@200 are not capped; the extended folder alone (10,453 photos) leaves skyscraper with 161.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Layout:
    sketch_dir: str
    photo_dirs: tuple[str, ...]
    copy: str  # which public copy leaves this layout on disk
    data_root_hint: str  # the folder to pass as data_root


LAYOUTS: dict[str, Layout] = {
    # Sketchy + Sketchy extension as the Doodle2Search / sem-pcyc download scripts leave it.
    "sketchy_ext": Layout("sketch/tx_000000000000", ("photo/tx_000000000000", "extended_photo"),
                          "Doodle2Search / sem-pcyc download scripts", "Sketchy"),
    # SAKE's zip (its *_ready folders).
    "sketchy_ext_sake": Layout("256x256/sketch/tx_000000000000_ready",
                               ("256x256/photo/tx_000000000000_ready", "EXTEND_image_sketchy_ready"),
                               "SAKE (dataset/Sketchy after its preparation scripts)", "Sketchy"),
    # Fine-grained: the original, instance-paired Sketchy photos only (<photo-stem>-<n>.png <-> <photo-stem>.jpg).
    "sketchy_fg": Layout("sketch/tx_000000000000", ("photo/tx_000000000000",),
                         "Doodle2Search / sem-pcyc download scripts, or the Sketchy 'rendered_256x256' zip", "Sketchy"),
    "sketchy_fg_sake": Layout("256x256/sketch/tx_000000000000_ready", ("256x256/photo/tx_000000000000_ready",),
                              "SAKE (dataset/Sketchy)", "Sketchy"),
    # TU-Berlin-ext: SAKE's folders (class names with spaces, photos *.JPEG) ...
    "tuberlin_sake": Layout("png_ready", ("ImageResized_ready",), "SAKE (dataset/TU-Berlin)", "TU-Berlin"),
    # ... and sem-pcyc's copy (class names with underscores).
    "tuberlin_sempcyc": Layout("sketches", ("images",), "sem-pcyc / Doodle2Search download scripts", "TU-Berlin"),
    # QuickDraw-ext (Doodle2Search): note `sketches`, plural.
    "quickdraw": Layout("sketches", ("images",), "Doodle2Search QuickDraw-Extended", "QuickDraw"),
}


@dataclass(frozen=True)
class StandardCounts:
    unseen_classes: int
    sketches: int
    photos: int
    seen_classes: int


# Unseen test-set sizes of the standard splits, by split name (train.splits.SPLITS).
STANDARD_COUNTS: dict[str, StandardCounts] = {
    "sketchy": StandardCounts(21, 12_694, 12_553, 104),
    "tuberlin": StandardCounts(30, 2_400, 27_989, 220),
    "quickdraw": StandardCounts(30, 92_291, 54_151, 80),
    # Fine-grained Sketchy: the same unseen sketches, against the 2,100 original (paired) photos of the 21 classes.
    "sketchy_fg": StandardCounts(21, 12_694, 2_100, 104),
}
