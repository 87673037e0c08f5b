"""Query paths in ONNX Runtime: the sketch branch exported once (cached on disk), run in fp32 or int8."""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from zsdemo.config import MIN_QUERY_COSINE
from zsdemo.model.prompts import PromptedViT, prompted_forward
from zsdemo.query.probes import default_probe_images, image_hw, min_cosine
from zsdemo.query.torch_paths import cls_only_last_block, linearize_attention

log = logging.getLogger(__name__)

QUERY_CACHE_ENV = "ZSDEMO_QUERY_CACHE"  # where exported ONNX files are kept (default ~/.cache/zsdemo/query-paths)
ONNX_RECIPE = "1"  # bump when the export or quantisation recipe changes (invalidates cached files)


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
        from onnxruntime.quantization import quantize_dynamic  # noqa: F401
    except Exception:  # not installed, or a broken build
        return False
    return True


def query_cache_dir() -> Path:
    """Where exported ONNX files live: $ZSDEMO_QUERY_CACHE, else ~/.cache/zsdemo/query-paths."""
    env = os.environ.get(QUERY_CACHE_ENV, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "zsdemo" / "query-paths"


def digest_tensors(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        value = tensors[name].detach().float().cpu().contiguous()
        h.update(name.encode())
        h.update(value.numpy().tobytes())
    return h.hexdigest()


def onnx_cache_key(prompted: PromptedViT, fingerprint: str | None = None) -> str:
    """Names the exported files: the encoder fingerprint (weights, prompts spec, preprocessing) plus a digest
    of the learned prompts themselves (prompts without a checkpoint are random per load) and the recipe.
    Without a fingerprint every backbone weight is hashed (about a second for ViT-B/32)."""
    import onnxruntime

    parts = [fingerprint or digest_tensors(dict(prompted.visual.state_dict())),
             digest_tensors(prompted.learned_state()), ONNX_RECIPE, torch.__version__, onnxruntime.__version__]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]


class _SketchOnly(nn.Module):
    """(images) -> L2-normalised sketch embeddings: PromptedViT.forward for modality "sketch" with the sketch
    branch baked in (its LayerNorm overrides copied into the modules, its prompts a constant), for export:
    torch.func.functional_call, which PromptedViT uses for LayerNorm overrides, cannot be traced."""

    def __init__(self, prompted: PromptedViT) -> None:
        super().__init__()
        branch = prompted.spec.branch_for("sketch")
        self.visual = copy.deepcopy(prompted.visual).float().cpu().eval()
        if branch in prompted.layernorms:
            with torch.no_grad():
                for key, value in prompted.layernorms[branch].items():
                    module_name, _, param = key.replace("__", ".").rpartition(".")
                    getattr(self.visual.get_submodule(module_name), param).copy_(value)
        prompt = prompted.prompts.get(branch)
        self.register_buffer("prompt", None if prompt is None else prompt.detach().float().cpu().clone())
        self.deep = prompted.spec.deep
        linearize_attention(self.visual)
        cls_only_last_block(self.visual)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(prompted_forward(self.visual, images, self.prompt, self.deep).float(), dim=-1)


def _atomic_target(path: Path) -> Path:
    return path.with_name(f".{path.stem}.{os.getpid()}.{time.monotonic_ns()}.tmp.onnx")


def export_onnx(prompted: PromptedViT, path: Path) -> Path:
    """Export the sketch branch of `prompted` (prompts after [CLS], after ln_pre; see prompts.prompted_forward)
    for one image (1, 3, H, W) -> (1, D) L2-normalised, written atomically. Attention is linearised and the
    last block computes [CLS] only (exact; see cls_only_last_block); a static shape lets ORT fold all shape
    arithmetic. torch's TorchScript exporter (dynamo=False): needs no onnxscript."""
    model = _SketchOnly(prompted).eval()
    dummy = torch.zeros(1, 3, *image_hw(prompted))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _atomic_target(path)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (dummy,), str(tmp), input_names=["images"],
                              output_names=["embeddings"], opset_version=17, dynamo=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


class _QuietRootLogger(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:  # ORT's quantiser logs advice to the root logger
        return record.levelno >= logging.ERROR


def quantize_onnx(src: Path, path: Path, weights: str) -> Path:
    """ORT dynamic int8 (per-tensor; MatMuls with a constant weight only, attention scores stay fp32),
    `weights` "s8" (QInt8) or "u8" (QUInt8), written atomically."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = _atomic_target(path)
    quiet = _QuietRootLogger()
    logging.getLogger().addFilter(quiet)
    try:
        quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8 if weights == "s8" else QuantType.QUInt8,
                         extra_options={"MatMulConstBOnly": True})
        os.replace(tmp, path)
    finally:
        logging.getLogger().removeFilter(quiet)
        tmp.unlink(missing_ok=True)
    return path


def ort_session(path: Path, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session: intra-op threads = torch's (the cores), no inter-op parallelism, and no
    spinning between runs (on a busy machine a spinning pool takes the cores the other side needs)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxQueryModel(nn.Module):
    """An ONNX Runtime session of the sketch branch: (images (B,3,H,W), "sketch") -> (B, D) float32.

    Photos (any other modality) go through `fallback`, the fp32 prompted model: the export fixes the modality."""

    def __init__(self, session: Any, fallback: nn.Module, precision: str, file: Path, variant: str = "") -> None:
        super().__init__()
        self.session = session
        self.fallback = fallback
        self.precision = precision
        self.file = file
        self.variant = variant  # "s8" / "u8" weights for onnx-int8
        self.input_name = session.get_inputs()[0].name

    def forward(self, images: torch.Tensor, modality: str) -> torch.Tensor:
        if modality != "sketch":
            return self.fallback(images, modality)
        array = images.detach().to("cpu", torch.float32).contiguous().numpy()
        out = [self.session.run(None, {self.input_name: array[i:i + 1]})[0] for i in range(array.shape[0])]
        return torch.from_numpy(np.concatenate(out).astype(np.float32, copy=False))


def onnx_query_model(prompted: PromptedViT, precision: str, folder: Path, key: str,
                     probe_images: torch.Tensor | None = None, variant: str | None = None) -> OnnxQueryModel:
    """Export (or reuse) `folder/<key>-fp32.onnx`, quantise (or reuse) the int8 file, open an ORT session.
    `variant` ("s8" / "u8", as chosen before) opens that int8 file without trying the other."""
    fp32_file = folder / f"{key}-fp32.onnx"
    if fp32_file.is_file():
        log.info("query path %s: reusing %s", precision, fp32_file)
    else:
        started = time.perf_counter()
        export_onnx(prompted, fp32_file)
        log.info("query path %s: exported %s in %.1f s", precision, fp32_file, time.perf_counter() - started)
    if precision == "onnx-fp32":
        return OnnxQueryModel(ort_session(fp32_file), prompted, precision, fp32_file).eval()
    probe_images = default_probe_images(prompted) if probe_images is None else probe_images
    best: OnnxQueryModel | None = None
    best_cos = -2.0
    if variant in ("s8", "u8"):
        file = folder / f"{key}-int8{variant}.onnx"
        if not file.is_file():
            quantize_onnx(fp32_file, file, variant)
        return OnnxQueryModel(ort_session(file), prompted, precision, file, variant).eval()
    for weights in ("s8", "u8"):
        file = folder / f"{key}-int8{weights}.onnx"
        if not file.is_file():
            started = time.perf_counter()
            quantize_onnx(fp32_file, file, weights)
            log.info("query path %s: quantised %s (%s weights) in %.1f s", precision, file, weights,
                     time.perf_counter() - started)
        model = OnnxQueryModel(ort_session(file), prompted, precision, file, weights).eval()
        cos = min_cosine(model, prompted, probe_images)
        log.info("query path %s with %s weights: cosine to fp32 %.5f", precision, weights, cos)
        if cos > best_cos:
            best, best_cos = model, cos
        if cos >= MIN_QUERY_COSINE:
            break
    assert best is not None
    return best
