"""One training config: a dataclass loaded from YAML, overridden from the command line, dumped to the run folder."""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from zsdemo.config import DEFAULT_MODEL, DEFAULT_PRETRAINED

# The text prompt of the class-text embeddings (training CE and the tiny backbone's pretraining).
TEXT_TEMPLATE = "a photo of a {}"


class ConfigError(ValueError):
    """A config file or key that cannot be used; the message is one line, meant for the person who typed it."""


# The settings that take one of a few words, and those words.
CHOICES: dict[str, tuple[str, ...]] = {
    "setting": ("category", "fine_grained"),
    "metric_convention": ("sake", "torchmetrics"),
    "metric_ties": ("random", "pessimistic", "optimistic"),
    "metric_average": ("query", "class"),
    "fg_gallery": ("unseen", "category"),
    "sketch_crop": ("auto", "ink", "none"),
    "delta_form": ("paired", "sorted"),
}


@dataclass
class TrainConfig:
    # ---- run ----------------------------------------------------------------------------
    name: str = "run"
    out_dir: str = "runs/run"
    seed: int = 0
    # ---- data ---------------------------------------------------------------------------
    setting: str = "category"  # category | fine_grained
    data_root: str = "data/Sketchy"
    # Folder layout: a named preset (train/layouts.py: sketchy_ext, sketchy_ext_sake, sketchy_fg, sketchy_fg_sake,
    # tuberlin_sake, tuberlin_sempcyc, quickdraw) fills sketch_dir/photo_dir; explicit keys override it.
    layout: str = ""
    sketch_dir: str = "sketch"  # <data_root>/<sketch_dir>/<class>/<files>
    # <data_root>/<photo_dir>/<class>/<files>; a list of folders = the union of their photos per class
    # (Sketchy-ext's standard gallery is the original Sketchy photos plus the extended ones)
    photo_dir: list[str] = field(default_factory=lambda: ["photo"])
    split: str = "sketchy"  # built-in unseen-class list (sketchy | tuberlin | quickdraw) or "custom"
    unseen_classes: list[str] = field(default_factory=list)  # used when split == "custom"
    generate_synthetic: bool = False  # write train.synthetic data to data_root first if it does not exist
    benchmark: str = "sketchy"  # which Table 1 column to print beside: sketchy | tuberlin | quickdraw | sketchy_fg
    num_workers: int = 2
    augment: bool = True  # light train-time augmentation (random resized crop 0.8-1, horizontal flip)
    # Sketch geometry: "ink" = the engine's clean_sketch (crop to the ink, pad to a square: what the app does);
    # "none" = the whole canvas, framed exactly like a photo, so a Sketchy sketch stays aligned with its photo;
    # "auto" = ink for category-level, none for fine-grained (the patch-shuffle loss needs aligned pairs).
    sketch_crop: str = "auto"
    # ---- model --------------------------------------------------------------------------
    model: str = DEFAULT_MODEL
    pretrained: str = DEFAULT_PRETRAINED
    n_prompts: int = 3
    deep: bool = False
    layernorm: bool = True
    text_template: str = TEXT_TEMPLATE
    # ---- optimisation -------------------------------------------------------------------
    batch_size: int = 64  # triplets per process per micro-batch
    epochs: int = 60
    max_steps: int = 0  # optimiser steps; 0 = epochs * steps per epoch
    # lr_preset: "paper" = 1e-5 for prompts and LayerNorms (the paper); "authors" = 1e-4 prompts, 1e-6 LayerNorm
    # (the authors' released code). Explicit lr_prompt / lr_layernorm override the preset.
    lr_preset: str = ""
    lr_prompt: float = 1e-5
    lr_layernorm: float = 1e-5
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: float = 0.0  # 0 = off
    grad_accum: int = 1
    mixed_precision: str = ""  # "" = take it from the Accelerate config / launcher; no | bf16 | fp16
    # ---- losses -------------------------------------------------------------------------
    margin: float = 0.3
    cls_weight: float = 0.5
    delta_weight: float = 0.1  # fine-grained only
    # L_delta softmax temperature: softmax(delta / delta_tau). Cosine deltas span about +-0.2, so tau = 1 (the
    # paper's formula taken literally) gives an almost flat softmax and a near-zero gradient; see train/BENCH.md.
    delta_tau: float = 0.1
    # L_delta pairing: sorted (deltas sorted within each class first: order-invariant; the default, chosen in
    # train/BENCH.md) | paired (the q-th triplet of class i against the q-th of class j, as printed; depends on
    # the sampler's order). See train/losses.py.
    delta_form: str = "sorted"
    ps_weight: float = 1.0  # fine-grained only
    ps_margin: float = 0.3  # not published; our choice
    ps_grid: int = 2
    classes_per_batch: int = 0  # P for the fine-grained sampler; 0 = batch_size // instances_per_class
    instances_per_class: int = 4  # Q
    # ---- evaluation, checkpoints, logging -----------------------------------------------
    eval_every: int = 0  # optimiser steps; 0 = only at the end
    eval_batch_size: int = 128
    # In-training evaluations only (every eval_every steps): use this many evenly spaced queries, 0 = all.
    # The final evaluation at the end of a run (eval.json) and train/eval.py always use every unseen sketch.
    eval_max_queries: int = 0
    metric_convention: str = "sake"  # sake | torchmetrics
    # Equal similarities: random (expected value over tie orders; a constant embedding scores chance) |
    # pessimistic (the relevant / paired photo after everything tied with it) | optimistic (old behaviour)
    metric_ties: str = "random"
    metric_average: str = "query"  # category-level mAP / P@k: mean over queries | class (mean of per-class means)
    fg_gallery: str = "unseen"  # fine-grained Acc@k gallery: unseen (all unseen photos) | category
    checkpoint_every: int = 500  # optimiser steps
    keep_checkpoints: int = 3  # newest step_N folders kept; 0 = all
    log_every: int = 10
    tensorboard: bool = False
    progress: bool = True
    resume: bool = False
    overwrite: bool = False  # a fresh run into a non-empty out_dir deletes that run folder first (else it refuses)
    push_to_hub: str = ""

    def validate(self) -> None:
        for name, allowed in CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                options = ", ".join(f"'{a}'" for a in allowed[:-1]) + f" or '{allowed[-1]}'"
                raise ConfigError(f"{name} must be {options}, not {value!r}")
        if self.setting == "fine_grained" and self.batch_size % self.instances_per_class:
            raise ConfigError(f"batch_size {self.batch_size} must be a multiple of instances_per_class "
                              f"{self.instances_per_class} (P classes x Q instances)")
        if self.grad_accum < 1 or self.batch_size < 2:
            raise ConfigError("grad_accum must be >= 1 and batch_size >= 2")
        if self.delta_tau <= 0:
            raise ConfigError(f"delta_tau must be > 0, not {self.delta_tau}")
        if not self.photo_dir:
            raise ConfigError("photo_dir needs at least one folder")
        if self.resume and self.overwrite:
            raise ConfigError("resume and overwrite contradict each other: pick one")

    @property
    def sketch_mode(self) -> str:
        """The resolved sketch_crop: 'ink' or 'none'."""
        if self.sketch_crop != "auto":
            return self.sketch_crop
        return "none" if self.setting == "fine_grained" else "ink"

    @property
    def p_classes(self) -> int:
        return self.classes_per_batch or self.batch_size // self.instances_per_class

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def dump(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def _field_types() -> dict[str, Any]:
    hints = typing.get_type_hints(TrainConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(TrainConfig)}


def _coerce(name: str, value: Any, kind: Any) -> Any:
    origin = typing.get_origin(kind)
    if origin in (list, typing.List):  # noqa: UP006
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()] if not value.startswith("[") else json.loads(value)
        return [str(v) for v in value]
    if origin in (typing.Union, types.UnionType):
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}: expected true/false, got {value!r}")
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected {kind.__name__}, got {value!r}") from None


def parse_overrides(argv: list[str]) -> dict[str, str]:
    """`--key value`, `--key=value`, `key=value` and bare `--flag` (= true); dashes and underscores alike."""
    out: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--"):
            key = arg[2:]
            if "=" in key:
                key, value = key.split("=", 1)
            elif i + 1 < len(argv) and not argv[i + 1].startswith("--") and "=" not in argv[i + 1]:
                value = argv[i + 1]
                i += 1
            else:
                value = "true"
        elif "=" in arg:
            key, value = arg.split("=", 1)
        else:
            raise ConfigError(f"Cannot parse argument {arg!r}: use --key value or key=value")
        out[key.replace("-", "_")] = value
        i += 1
    return out


LR_PRESETS: dict[str, dict[str, float]] = {
    "paper": {"lr_prompt": 1e-5, "lr_layernorm": 1e-5},  # Sain et al. 2023, section on implementation
    "authors": {"lr_prompt": 1e-4, "lr_layernorm": 1e-6},  # the authors' released training script
}


def _preset_values(values: dict[str, Any]) -> dict[str, Any]:
    """The keys that the presets named in `values` (layout, lr_preset) stand for."""
    from train.layouts import LAYOUTS

    out: dict[str, Any] = {}
    layout = values.get("layout")
    if layout:
        if layout not in LAYOUTS:
            raise ConfigError(f"Unknown layout {layout!r}; known layouts: {sorted(LAYOUTS)}")
        out.update(sketch_dir=LAYOUTS[layout].sketch_dir, photo_dir=list(LAYOUTS[layout].photo_dirs))
    preset = values.get("lr_preset")
    if preset:
        if preset not in LR_PRESETS:
            raise ConfigError(f"Unknown lr_preset {preset!r}; known: {sorted(LR_PRESETS)}")
        out.update(LR_PRESETS[preset])
    return out


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | list[str] | None = None) -> TrainConfig:
    """YAML file (optional) -> TrainConfig, then overrides (a dict, or CLI tokens). Unknown keys are errors.

    Presets (`layout`, `lr_preset`) expand into the keys they stand for. Precedence, lowest first: the YAML's
    presets, the YAML's explicit keys, the overrides' presets, the overrides' explicit keys. So
    `layout=sketchy_ext_sake` on the command line replaces the folders of a YAML file, and
    `photo_dir=extended_photo` on the command line beats any layout.
    """
    types_ = _field_types()
    values: dict[str, Any] = {}
    if path is not None:
        if not Path(path).is_file():
            raise ConfigError(f"config file {path} not found (the shipped configs are in train/configs/)")
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of config keys")
        values.update(_preset_values(loaded))
        values.update(loaded)
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    overrides = dict(overrides or {})
    values.update(_preset_values(overrides))
    values.update(overrides)
    unknown = sorted(set(values) - set(types_))
    if unknown:
        hints = [f"{k!r}" + (f" (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(k, types_, 1)) else "")
                 for k in unknown]
        raise ConfigError(f"Unknown config keys: {', '.join(hints)}; the keys are the fields of TrainConfig in train/config.py")
    cfg = TrainConfig(**{k: _coerce(k, v, types_[k]) for k, v in values.items()})
    cfg.validate()
    return cfg


DEFAULTS = TrainConfig()  # the one place the training defaults live; function defaults elsewhere refer to it
