"""Load an open_clip backbone (clear errors when weights are missing) and encode sketches and photos."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import socket
import urllib.parse
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import huggingface_hub
import numpy as np
import open_clip
import torch
from PIL import Image

from zsdemo.config import (
    AUTO,
    DEFAULT_BATCH_SIZE,
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED,
    ServeConfig,
    canonical_path,
    is_random_weights,
)
from zsdemo.errors import WeightsUnavailableError, ZsdemoError
from zsdemo.model.preprocess import PREPROCESS_VERSION, Transform, clean_sketch, guarded, load_photo
from zsdemo.model.prompts import PromptCheckpoint, PromptedViT, PromptSpec, check_compatible, read_checkpoint

log = logging.getLogger(__name__)

# A 2-layer, 64-wide ViT for tests and smoke runs: `--model zsdemo-tiny-vit --pretrained none`.
open_clip.add_model_config(Path(__file__).parent / "configs")

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


@dataclass
class EncoderConfig:
    """Which backbone, which weights, which prompts, and how to run the query path.

    Every field can come from the environment (ZSDEMO_MODEL, ZSDEMO_PRETRAINED, ZSDEMO_PROMPTS,
    ZSDEMO_QUERY_PRECISION) so a Hugging Face Space is configured without code changes.

    query_precision (sketch queries only; gallery photos are always encoded in fp32, so caches do not
    depend on it) names the sketch query path to prepare: "auto" (the default) measures the paths that make
    sense on this CPU once per machine and keeps the fastest close enough to fp32, or a named path (fp32,
    int8, bf16, onnx-fp32, onnx-int8). A loaded encoder answers in fp32 until a path is prepared for it
    (zsdemo.query.select.prepare_query_path, which calls `use_query_path`).
    """

    model: str = DEFAULT_MODEL
    pretrained: str = DEFAULT_PRETRAINED  # open_clip tag, a local weights file, or "none" for random weights
    prompts: str | None = None  # prompt checkpoint (.safetensors) from train/fit.py
    query_precision: str = AUTO  # auto | fp32 | int8 | bf16 | onnx-fp32 | onnx-int8: sketch queries only (see above)
    batch_size: int = DEFAULT_BATCH_SIZE
    device: str = "cpu"
    spec: PromptSpec = field(default_factory=lambda: PromptSpec(n_prompts=0))  # used when no checkpoint is given

    @classmethod
    def from_serve(cls, serve: ServeConfig, prompts: str | None = None, **overrides: Any) -> EncoderConfig:
        """The encoder part of a resolved ServeConfig; `prompts` is a local file (hf:// already resolved)."""
        return cls(model=serve.model, pretrained=serve.pretrained, prompts=prompts,
                   query_precision=serve.query_precision, **overrides)


def _weights_help(model_name: str, tag: str) -> str:
    cfg = open_clip.get_pretrained_cfg(model_name, tag) or {}
    repo = cfg.get("hf_hub", "").rstrip("/")
    hub_cache = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub")
    steps = [
        f"Could not load the '{tag}' weights for {model_name}: they are not in the Hugging Face cache "
        f"({hub_cache}) and could not be downloaded.",
        "Do one of these:",
    ]
    if repo:
        steps.append(f"  - on a machine with internet: `{hub_download_command()} {repo} open_clip_model.safetensors` "
                     "(then copy the cache, or set HF_HOME to it);")
    steps += [
        "  - point to a weights file you have: --pretrained /path/to/open_clip_model.safetensors "
        "(or ZSDEMO_PRETRAINED=/path/...);",
        "  - for testing only, random weights: --pretrained none (results will be meaningless).",
    ]
    return "\n".join(steps)


def hub_download_command() -> str:
    """The download command that the installed huggingface_hub ships (`hf` replaced `huggingface-cli`)."""
    scripts = {ep.name for ep in importlib.metadata.entry_points(group="console_scripts")
               if ep.value.startswith("huggingface_hub")}
    return "hf download" if "hf" in scripts or "huggingface-cli" not in scripts else "huggingface-cli download"


def pretrained_identity(pretrained: str) -> str:
    """A stable string naming the weights, for cache fingerprints."""
    if is_random_weights(pretrained):
        return "random-seed0"
    path = Path(pretrained)
    if path.is_file():
        stat = path.stat()
        return f"file:{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    return f"tag:{pretrained}"


def create_clip(model_name: str, pretrained: str) -> torch.nn.Module:
    """open_clip model in eval mode, or a WeightsUnavailableError telling the user what to do."""
    if model_name not in open_clip.list_models():
        raise ZsdemoError(f"Unknown open_clip model {model_name!r}. Try ViT-B-32-quickgelu (with --pretrained openai).")
    if is_random_weights(pretrained):
        log.warning("!!! RANDOM WEIGHTS: %s is randomly initialised (seed 0); search results are meaningless. "
                    "Use only for tests and speed measurements. !!!", model_name)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = open_clip.create_model(model_name, pretrained=None)
        return model.eval()
    looks_like_path = pretrained.endswith(WEIGHT_SUFFIXES) or os.sep in pretrained
    if looks_like_path:
        if not Path(pretrained).is_file():
            raise WeightsUnavailableError(f"Weights file {pretrained} not found. Pass an existing "
                                          ".safetensors/.bin file with --pretrained (or ZSDEMO_PRETRAINED).")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                model = open_clip.create_model(model_name, pretrained=pretrained)
        except Exception as exc:
            raise WeightsUnavailableError(
                f"{pretrained} does not hold weights for {model_name} ({type(exc).__name__}: {str(exc)[:300]})."
            ) from None
        return model.eval()
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    if pretrained not in tags:
        raise WeightsUnavailableError(f"{model_name} has no pretrained tag {pretrained!r}. Known tags: "
                                      f"{', '.join(tags) or 'none'}; or pass a weights file.")
    cached = cached_weights(model_name, pretrained)
    if cached is None and (huggingface_hub.constants.HF_HUB_OFFLINE or not hub_reachable()):
        raise WeightsUnavailableError(_weights_help(model_name, pretrained))
    try:
        model = open_clip.create_model(model_name, pretrained=str(cached) if cached else pretrained)
    except Exception as exc:
        log.debug("weights load failed", exc_info=exc)
        raise WeightsUnavailableError(_weights_help(model_name, pretrained)) from None
    return model.eval()


def cached_weights(model_name: str, tag: str) -> Path | None:
    """The tag's weights file if it is already in the Hugging Face cache (no network)."""
    repo = (open_clip.get_pretrained_cfg(model_name, tag) or {}).get("hf_hub", "").rstrip("/")
    if not repo:
        return None
    for filename in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        found = huggingface_hub.try_to_load_from_cache(repo, filename)
        if isinstance(found, str):
            return Path(found)
    return None


def hub_reachable(timeout: float = 3.0) -> bool:
    """Fail fast offline instead of sitting through the hub client's retries (most of a minute)."""
    host = urllib.parse.urlparse(huggingface_hub.constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def compute_fingerprint(model: str, pretrained: str, prompts_sha256: str | None, spec: PromptSpec,
                        image_size: int) -> str:
    key = {
        "model": model,
        "weights": pretrained_identity(pretrained),
        "prompts": prompts_sha256,
        "spec": spec.__dict__,
        "preprocess": PREPROCESS_VERSION,
        "image_size": image_size,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def fingerprint_without_loading(cfg: EncoderConfig) -> str:
    """The fingerprint an encoder built from `cfg` would have, without loading any weights."""
    ckpt = read_checkpoint(cfg.prompts) if cfg.prompts else None
    model_cfg = open_clip.get_model_config(cfg.model)
    if model_cfg is None:
        raise ZsdemoError(f"Unknown open_clip model {cfg.model!r}.")
    size = model_cfg["vision_cfg"]["image_size"]
    size = int(size if isinstance(size, int) else size[0])
    return compute_fingerprint(cfg.model, cfg.pretrained, ckpt.sha256 if ckpt else None,
                               ckpt.spec if ckpt else cfg.spec, size)


def _prompted_for(clip: torch.nn.Module, cfg: EncoderConfig, ckpt: PromptCheckpoint | None) -> PromptedViT:
    """A PromptedViT around `clip.visual` (wrapped, frozen, never copied) with the checkpoint's prompts loaded."""
    prompted = PromptedViT(clip.visual, ckpt.spec if ckpt else cfg.spec)
    if ckpt:
        check_compatible(ckpt, cfg.model, prompted.width, prompted.n_layers)
        prompted.load_learned_state(ckpt.state)
        if ckpt.meta.get("pretrained") != cfg.pretrained:
            log.warning("Prompts in %s were trained on %r weights; the backbone loaded %r.",
                        ckpt.path.name, ckpt.meta.get("pretrained"), cfg.pretrained)
        log.info("Loaded prompts from %s (%s)", ckpt.path, ckpt.spec)
    return prompted.to(cfg.device)


def batched(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class SketchPhotoEncoder:
    """CLIP image encoder with learned prompts: sketches and photos in, L2-normalised float32 vectors out."""

    def __init__(self, cfg: EncoderConfig, clip: torch.nn.Module, prompted: PromptedViT,
                 prompts_sha256: str | None = None) -> None:
        self.cfg = cfg
        self.clip = clip
        self.prompted = prompted.eval()
        self.prompts_sha256 = prompts_sha256
        pp = open_clip.get_model_preprocess_cfg(clip)
        self.image_size = int(pp["size"] if isinstance(pp["size"], int) else pp["size"][0])
        # Guarded: whatever the transform raises for one image (an OverflowError from a resize, a MemoryError) is
        # the same readable ImageError as an unreadable file, on every path (queries, galleries, the CLI).
        self.transform: Transform = guarded(open_clip.image_transform(
            self.image_size, is_train=False, mean=pp.get("mean"), std=pp.get("std"),
            interpolation=pp.get("interpolation"), resize_mode=pp.get("resize_mode")))
        self.embed_dim = int(clip.visual.output_dim)
        canonical_path(cfg.query_precision)  # an unknown name is refused at load, not at the first query
        self._query_model: torch.nn.Module = self.prompted
        self.query_path = "fp32"  # the path sketch queries use now, e.g. "onnx-int8" once prepared
        self.query_report: dict[str, Any] = {"path": "fp32", "summary": "fp32", "cosine": 1.0}
        self.query_cosine = 1.0  # min cosine to fp32 on the probe sketches
        self._tokenizer: Any = None

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def load(cls, cfg: EncoderConfig) -> SketchPhotoEncoder:
        ckpt = read_checkpoint(cfg.prompts) if cfg.prompts else None
        clip = create_clip(cfg.model, cfg.pretrained).to(cfg.device)
        return cls(cfg, clip, _prompted_for(clip, cfg, ckpt), ckpt.sha256 if ckpt else None)

    def with_prompts(self, prompts: str | None, spec: PromptSpec | None = None) -> SketchPhotoEncoder:
        """Another encoder on this one's backbone: the same `clip` module (not a copy, so one set of CLIP weights in
        memory serves both), with the prompts of checkpoint `prompts` (or none: `spec`, default plain CLIP). Its
        query path is chosen anew (a reduced-precision query path is a per-encoder, sketch-side copy)."""
        cfg = replace(self.cfg, prompts=prompts, spec=spec or PromptSpec(n_prompts=0))
        ckpt = read_checkpoint(prompts) if prompts else None
        return type(self)(cfg, self.clip, _prompted_for(self.clip, cfg, ckpt), ckpt.sha256 if ckpt else None)

    def use_query_path(self, path: str, model: torch.nn.Module, report: dict[str, Any]) -> None:
        """Answer sketch queries with `model` (path `path`, as chosen and checked by zsdemo.query.select)."""
        self.query_report = report
        self.query_cosine = float(report.get("cosine") or 1.0)
        self.query_path, self._query_model = path, model  # last: a query in flight sees the old or the new pair

    def query_model(self, precision: str) -> torch.nn.Module:
        """The model that encodes at `precision`: (images, modality) -> (B, D). "fp32" is the prompted encoder; the
        configured precision (e.g. "auto"), "auto" and the prepared path's name give the model in use."""
        name = canonical_path(precision)
        if name == "fp32":
            return self.prompted
        if precision == self.cfg.query_precision or name in (AUTO, self.query_path):
            return self._query_model
        raise ZsdemoError(f"The {name} query path is not prepared for this encoder (it uses {self.query_path}).")

    # ---- identity -----------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """What is loaded, for the UI, `info` and cache manifests."""
        return {
            "model": self.cfg.model,
            "pretrained": str(Path(self.cfg.pretrained).resolve()) if Path(self.cfg.pretrained).is_file()
            else self.cfg.pretrained,
            "prompts": str(Path(self.cfg.prompts).resolve()) if self.cfg.prompts else None,
            "prompts_sha256": self.prompts_sha256,
            "spec": self.prompted.spec.__dict__,
            "preprocess_version": PREPROCESS_VERSION,
            "image_size": self.image_size,
            "embed_dim": self.embed_dim,
        }

    def fingerprint(self) -> str:
        """Changes whenever photo embeddings would change: backbone, weights, prompts, preprocessing."""
        return compute_fingerprint(self.cfg.model, self.cfg.pretrained, self.prompts_sha256, self.prompted.spec,
                                   self.image_size)

    # ---- encoding -----------------------------------------------------------------------
    @torch.inference_mode()
    def encode_tensor(self, images: torch.Tensor, modality: str, precision: str = "fp32") -> torch.Tensor:
        """Normalised image batch -> (B, D) L2-normalised float32 embeddings."""
        images = images.to(self.cfg.device)
        return self.query_model(precision)(images, modality)

    def _encode(self, images: Sequence[Image.Image], modality: str, precision: str) -> np.ndarray:
        out = [self.encode_tensor(torch.stack([self.transform(im) for im in chunk]), modality, precision)
               for chunk in batched(images, self.cfg.batch_size)]
        if not out:
            return np.zeros((0, self.embed_dim), dtype=np.float32)
        return torch.cat(out).cpu().numpy().astype(np.float32)

    def sketch_tensor(self, sketch: Any) -> torch.Tensor:
        return self.transform(clean_sketch(sketch))

    def encode_sketches(self, sketches: Sequence[Any]) -> np.ndarray:
        """Sketches in any accepted form (see preprocess.sketch_to_image) -> (N, D). Uses query_precision."""
        return self.encode_clean_sketches([clean_sketch(s) for s in sketches])

    def encode_clean_sketches(self, sketches: Sequence[Image.Image]) -> np.ndarray:
        """Sketches already passed through preprocess.clean_sketch -> (N, D)."""
        return self._encode(sketches, "sketch", self.cfg.query_precision)

    def encode_photos(self, photos: Sequence[Image.Image | str | os.PathLike]) -> np.ndarray:
        """Photos (PIL images or files) -> (N, D), always fp32 so gallery caches are precision-independent."""
        return self._encode([load_photo(p) for p in photos], "photo", "fp32")

    @torch.inference_mode()
    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        if self._tokenizer is None:  # building it reads the BPE vocabulary: once per encoder
            self._tokenizer = open_clip.get_tokenizer(self.cfg.model)
        feats = self.clip.encode_text(self._tokenizer(list(texts)).to(self.cfg.device), normalize=True)
        return feats.float().cpu().numpy()
