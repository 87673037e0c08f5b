"""The sketch query path: every way of running the prompted encoder on one sketch, and the choice among them.

Gallery photos are always encoded in fp32 (so caches never depend on the query path); only sketch queries
use a reduced-precision or exported copy of the prompted encoder. The paths (QUERY_PATHS):

- fp32: the prompted encoder itself (bit-identical to stock open_clip when there are no prompts);
- int8 (alias torch-int8): torch dynamic int8 on every linear layer incl. the attention projections;
- bf16 (alias torch-bf16): bf16 weights; fast only on CPUs with native bf16 (AVX512-BF16 / AMX);
- onnx-fp32 / onnx-int8: the same prompted forward (modality fixed to "sketch") exported to ONNX and run by
  ONNX Runtime, in fp32 or with ORT dynamic int8 quantisation. The exported/quantised files are cached on
  disk (QUERY_CACHE_ENV, default ~/.cache/zsdemo/query-paths), keyed by the encoder fingerprint and a digest
  of the learned prompts, written atomically.

`auto` (the default) builds the candidates that make sense on this CPU (bf16 only with native bf16; ONNX
only when onnxruntime is installed), checks each one's cosine to fp32 on built-in probe sketches, times
them briefly (interleaved, on this machine) and keeps the fastest one whose cosine is >= MIN_QUERY_COSINE.
Nothing assumes a CPU family: on an AVX2-only CPU without VNNI, ORT's int8 kernels saturate with signed
8-bit weights (cosine ~0.98 measured), so onnx-int8 quantises the weights to unsigned 8 bits when the
signed variant fails the probe check. The choice, every candidate's time and cosine are logged and kept in
a report (`select_query_path`), shown on the page as `summarize(report)`.
`python bench/query.py` measures every path's latency and its cosine to fp32 in one run.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import os
import time
import types
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import nn

from zsdemo.errors import ZsdemoError
from zsdemo.model.prompts import PromptedViT, prompted_forward

log = logging.getLogger(__name__)

QUERY_PATHS = ("fp32", "int8", "bf16", "onnx-fp32", "onnx-int8")
ALIASES = {"torch-fp32": "fp32", "torch-int8": "int8", "torch-bf16": "bf16"}
AUTO = "auto"
QUERY_PRECISIONS = (AUTO, *QUERY_PATHS, *ALIASES)  # every accepted query_precision value
MIN_QUERY_COSINE = 0.99  # a reduced-precision query path is used only this close to fp32
QUERY_CACHE_ENV = "ZSDEMO_QUERY_CACHE"  # where exported ONNX files are kept (default ~/.cache/zsdemo/query-paths)
ONNX_RECIPE = "1"  # bump when the export or quantisation recipe changes (invalidates cached files)
AUTO_MIN_PARAMS = 5_000_000  # auto keeps fp32 for smaller image towers (test models: fp32 takes a few ms)


def canonical_path(precision: str) -> str:
    """'torch-int8' -> 'int8'; ZsdemoError for unknown names."""
    name = ALIASES.get(precision.strip().lower(), precision.strip().lower())
    if name != AUTO and name not in QUERY_PATHS:
        raise ZsdemoError(f"query_precision must be one of {', '.join(QUERY_PRECISIONS)}, not {precision!r}.")
    return name


# ---- what this CPU can do ----------------------------------------------------------------------
def cpu_flags() -> set[str]:
    """The CPU feature flags from /proc/cpuinfo (empty where there is none)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def cpu_features() -> dict[str, Any]:
    """What the query path cares about: SIMD level, int8 dot-product (VNNI) and native bf16 support."""
    flags = cpu_flags()
    capability = str(torch.backends.cpu.get_cpu_capability())
    mkldnn_bf16 = bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)())
    hw_bf16 = bool(flags & {"avx512_bf16", "amx_bf16"})
    return {
        "capability": capability,  # torch's dispatch level: DEFAULT / AVX2 / AVX512 / ...
        "avx2": "avx2" in flags or capability.startswith(("AVX2", "AVX512")),
        "avx512": any(f.startswith("avx512f") for f in flags) or capability.startswith("AVX512"),
        "vnni": bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"}),
        # bf16 only where the hardware has it; without /proc/cpuinfo, trust torch on an AVX-512 CPU
        "native_bf16": hw_bf16 or (not flags and mkldnn_bf16 and capability.startswith("AVX512")),
        "mkldnn_bf16": mkldnn_bf16,
    }


def cpu_label(features: dict[str, Any] | None = None) -> str:
    """'AVX2', 'AVX-512', 'AVX-512+BF16' ... for one-line reports."""
    f = features or cpu_features()
    label = "AVX-512" if f["avx512"] else "AVX2" if f["avx2"] else str(f["capability"])
    if f["vnni"]:
        label += "+VNNI"
    if f["native_bf16"]:
        label += "+BF16"
    return label


def probe_sketches(n: int, size: int) -> list[Image.Image]:
    """Deterministic line drawings (black on white) used to check a reduced-precision query path."""
    images = []
    for i in range(n):
        image = Image.new("RGB", (size, size), "white")
        draw = ImageDraw.Draw(image)
        a, b, w = size // 8 + 3 * i, size - size // 8 - 5 * i, max(2, size // 40)
        draw.ellipse((a, a + 2 * i, b, b), outline="black", width=w)
        draw.line((a, b, b - 4 * i, a), fill="black", width=w)
        if i % 2:
            draw.rectangle((size // 3, size // 3, 2 * size // 3, size // 2 + 3 * i), outline="black", width=w)
        images.append(image)
    return images


class LinearSelfAttention(nn.Module):
    """nn.MultiheadAttention (batch_first, no dropout) rebuilt from two plain nn.Linear layers + SDPA.

    Same function as the module it copies. It exists so that dynamic int8 quantisation reaches the
    attention projections: MHA keeps its q/k/v projection as a bare Parameter (`in_proj_weight`) and its
    output projection as a NonDynamicallyQuantizableLinear, both of which `quantize_dynamic` skips; left in
    fp32 they were about a third of the int8 encoder's time.
    """

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        if not mha.batch_first or mha.in_proj_weight is None or mha.bias_k is not None:
            raise ValueError("LinearSelfAttention copies batch_first MHA with a packed in_proj only.")
        self.num_heads = mha.num_heads
        dim = mha.embed_dim
        has_bias = mha.in_proj_bias is not None
        self.in_proj = nn.Linear(dim, 3 * dim, bias=has_bias)
        self.out_proj = nn.Linear(dim, dim, bias=mha.out_proj.bias is not None)
        with torch.no_grad():
            self.in_proj.weight.copy_(mha.in_proj_weight)
            if has_bias:
                self.in_proj.bias.copy_(mha.in_proj_bias)
            self.out_proj.weight.copy_(mha.out_proj.weight)
            if mha.out_proj.bias is not None:
                self.out_proj.bias.copy_(mha.out_proj.bias)

    def forward(self, query: torch.Tensor, key: torch.Tensor | None = None, value: torch.Tensor | None = None,
                need_weights: bool = False, attn_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        if (key is not None and key is not query) or (value is not None and value is not query):
            raise ValueError("LinearSelfAttention does self-attention only.")
        batch, length, dim = query.shape
        qkv = self.in_proj(query).view(batch, length, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            attn_mask = ~attn_mask  # MHA: True = masked out; SDPA: True = attend
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=attn_mask)
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, dim)), None


def _cls_only_block_forward(self: nn.Module, q_x: torch.Tensor, k_x: torch.Tensor | None = None,
                            v_x: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """ResidualAttentionBlock.forward that returns only the [CLS] row (B, 1, D): every token still serves
    as key and value, but the output projection and the MLP run on one row instead of 50+."""
    attn = self.attn
    batch, length, dim = q_x.shape
    h = self.ln_1(q_x)
    qkv = attn.in_proj(h).view(batch, length, 3, attn.num_heads, dim // attn.num_heads).permute(2, 0, 3, 1, 4)
    if attn_mask is not None:
        attn_mask = ~attn_mask[:1] if attn_mask.dtype == torch.bool else attn_mask[:1]
    out = F.scaled_dot_product_attention(qkv[0][:, :, :1], qkv[1], qkv[2], attn_mask=attn_mask)
    x = q_x[:, :1] + self.ls_1(attn.out_proj(out.transpose(1, 2).reshape(batch, 1, dim)))
    return x + self.ls_2(self.mlp(self.ln_2(x)))


def cls_only_last_block(visual: nn.Module) -> bool:
    """Make the last transformer block of a linearised open_clip ViT compute only the [CLS] output (in place).

    Exact for [CLS]-token pooling (the outputs of the other tokens after the last block are never used);
    returns False and changes nothing for other pooling types or block layouts.
    """
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if (not blocks or getattr(visual, "pool_type", None) != "tok" or getattr(visual, "attn_pool", None) is not None
            or getattr(visual, "final_ln_after_pool", False) or not isinstance(blocks[-1].attn, LinearSelfAttention)
            or hasattr(blocks[-1], "ln_1_kv")):
        return False
    blocks[-1].forward = types.MethodType(_cls_only_block_forward, blocks[-1])
    return True


def linearize_attention(module: nn.Module) -> nn.Module:
    """Replace every nn.MultiheadAttention under `module` (in place) with an equivalent LinearSelfAttention."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.MultiheadAttention):
            setattr(module, name, LinearSelfAttention(child))
        else:
            linearize_attention(child)
    return module


class QueryModel(nn.Module):
    """A reduced-precision copy of a PromptedViT: float32 images in, L2-normalised float32 embeddings out."""

    def __init__(self, model: nn.Module, precision: str, input_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.model = model
        self.precision = precision
        self.input_dtype = input_dtype

    def forward(self, images: torch.Tensor, modality: str) -> torch.Tensor:
        return self.model(images.to(self.input_dtype), modality).float()


def _torch_int8(prompted: PromptedViT) -> nn.Module:
    from torch.ao.quantization import quantize_dynamic

    model = linearize_attention(copy.deepcopy(prompted)).eval()
    cls_only_last_block(model.visual)
    engine = torch.backends.quantized.engine
    try:
        with warnings.catch_warnings():  # torch.ao deprecation notices; the kernels are current
            warnings.simplefilter("ignore")
            if "onednn" in torch.backends.quantized.supported_engines:
                torch.backends.quantized.engine = "onednn"  # packs for oneDNN (VNNI/AMX): faster there
            model = quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    finally:
        torch.backends.quantized.engine = engine
    return QueryModel(model, "int8").eval()


def make_query_model(prompted: PromptedViT, precision: str, *, cache_dir: str | os.PathLike[str] | None = None,
                     key: str | None = None, probe_images: torch.Tensor | None = None) -> nn.Module:
    """The model that encodes sketches on path `precision` (a name in QUERY_PATHS or ALIASES, not "auto").

    - fp32: `prompted` unchanged (never modified by building any other path);
    - bf16: a copy whose weights are bfloat16 (prompts and LayerNorm overrides included); inputs are cast
      to bf16 and outputs back to float32 (stored bf16 weights, not autocast, which re-casts every weight on
      every call). Fast on CPUs with AVX512-BF16/AMX; several times slower than fp32 without native bf16.
    - int8: a copy with every nn.Linear *and* the attention projections (see LinearSelfAttention)
      dynamically quantised to int8 by torch, whose last block computes only the [CLS] row.
    - onnx-fp32 / onnx-int8: an OnnxQueryModel (ONNX Runtime) of the same forward (see export_onnx); the
      files are cached under `cache_dir` (default: query_cache_dir()) by `key` (default: onnx_cache_key).
      onnx-int8 uses signed int8 weights, or unsigned ones when the signed model's cosine to fp32 on
      `probe_images` is below MIN_QUERY_COSINE (CPUs without VNNI saturate on signed weights).
    A path is acceptable only at cosine >= MIN_QUERY_COSINE to fp32: see select_query_path.
    """
    name = canonical_path(precision)
    if name == "fp32":
        return prompted
    if name == "bf16":
        model = copy.deepcopy(prompted).to(torch.bfloat16).eval()
        return QueryModel(model, name, torch.bfloat16).eval()
    if name == "int8":
        return _torch_int8(prompted)
    if name in ("onnx-fp32", "onnx-int8"):
        folder = Path(cache_dir) if cache_dir is not None else query_cache_dir()
        return onnx_query_model(prompted, name, folder, key or onnx_cache_key(prompted), probe_images)
    raise ZsdemoError(f"query_precision {precision!r} names no single path (auto is resolved by select_query_path).")


# ---- ONNX Runtime paths ---------------------------------------------------------------------------
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


def _digest_tensors(tensors: dict[str, torch.Tensor]) -> str:
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

    parts = [fingerprint or _digest_tensors(dict(prompted.visual.state_dict())),
             _digest_tensors(prompted.learned_state()), ONNX_RECIPE, torch.__version__, onnxruntime.__version__]
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


def _image_hw(prompted: PromptedViT) -> tuple[int, int]:
    size = getattr(prompted.visual, "image_size", 224)
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _atomic_target(path: Path) -> Path:
    return path.with_name(f".{path.stem}.{os.getpid()}.{time.monotonic_ns()}.tmp.onnx")


def export_onnx(prompted: PromptedViT, path: Path) -> Path:
    """Export the sketch branch of `prompted` (prompts after [CLS], after ln_pre; see prompts.prompted_forward)
    for one image (1, 3, H, W) -> (1, D) L2-normalised, written atomically. Attention is linearised and the
    last block computes [CLS] only (exact; see cls_only_last_block); a static shape lets ORT fold all shape
    arithmetic. torch's TorchScript exporter (dynamo=False): needs no onnxscript."""
    model = _SketchOnly(prompted).eval()
    dummy = torch.zeros(1, 3, *_image_hw(prompted))
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
    spinning between runs (measured on a busy 2-core machine: spinning doubled the p50 of the other side)."""
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


def default_probe_images(prompted: PromptedViT, n: int = 4) -> torch.Tensor:
    """Probe sketches normalised with CLIP's mean/std (when the caller has no transform at hand)."""
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    h, _ = _image_hw(prompted)
    mean, std = torch.tensor(OPENAI_DATASET_MEAN)[:, None, None], torch.tensor(OPENAI_DATASET_STD)[:, None, None]
    images = [torch.from_numpy(np.asarray(im, np.float32) / 255.0).permute(2, 0, 1) for im in probe_sketches(n, h)]
    return (torch.stack(images) - mean) / std


@torch.inference_mode()
def min_cosine(model: nn.Module, reference: nn.Module, images: torch.Tensor) -> float:
    """Min over `images` of the cosine between `model`'s and `reference`'s sketch embeddings."""
    return float(F.cosine_similarity(model(images, "sketch").float(), reference(images, "sketch").float()).min())


def onnx_query_model(prompted: PromptedViT, precision: str, folder: Path, key: str,
                     probe_images: torch.Tensor | None = None) -> OnnxQueryModel:
    """Export (or reuse) `folder/<key>-fp32.onnx`, quantise (or reuse) the int8 file, open an ORT session."""
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


# ---- choosing the path at load ------------------------------------------------------------------------
@dataclass
class Candidate:
    """One query path as measured at load."""

    name: str
    ms: float | None = None  # p50 of the interleaved timing on one probe sketch
    cosine: float | None = None  # min cosine to fp32 over the probe sketches
    ok: bool = False  # built, and cosine >= MIN_QUERY_COSINE
    note: str = ""
    build_s: float = 0.0


@dataclass
class Selection:
    """The query path in use and how it was chosen (the report goes to the log and the page)."""

    path: str
    model: nn.Module
    requested: str
    candidates: dict[str, Candidate] = field(default_factory=dict)
    cpu: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    note: str = ""

    @property
    def report(self) -> dict[str, Any]:
        chosen = self.candidates.get(self.path, Candidate(self.path))
        fp32 = self.candidates.get("fp32", Candidate("fp32"))
        out = {
            "path": self.path,
            "requested": self.requested,
            "ms": chosen.ms,
            "cosine": 1.0 if self.path == "fp32" else chosen.cosine,
            "fp32_ms": fp32.ms,
            "variant": getattr(self.model, "variant", "") or "",
            "cpu": cpu_label(self.cpu) if self.cpu else "",
            "cpu_features": self.cpu,
            "seconds": round(self.seconds, 2),
            "note": self.note,
            "candidates": {name: asdict(c) for name, c in self.candidates.items()},
        }
        out["summary"] = summarize(out)
        return out


def summarize(report: dict[str, Any]) -> str:
    """'onnx-int8 (31 ms, cos 0.9993; fp32 95 ms; AVX2)' for the page and the log."""
    bits = []
    if report.get("ms") is not None:
        bits.append(f"{report['ms']:.0f} ms")
    if report.get("cosine") is not None and report.get("path") != "fp32":
        bits.append(f"cos {report['cosine']:.4f}")
    if report.get("fp32_ms") is not None and report.get("path") != "fp32":
        bits.append(f"fp32 {report['fp32_ms']:.0f} ms")
    if report.get("cpu"):
        bits.append(str(report["cpu"]))
    text = report["path"] + (f" ({'; '.join(bits)})" if bits else "")
    return text + (f" - {report['note']}" if report.get("note") else "")


def time_interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1,
                     budget_s: float | None = None, min_repeats: int = 3) -> dict[str, list[float]]:
    """Milliseconds per call, round-robin with a rotating order (a noisy neighbour slows every path alike);
    stops after `budget_s` seconds once `min_repeats` rounds are in."""
    names = list(fns)
    started = time.perf_counter()
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        if budget_s is not None and r >= min_repeats and time.perf_counter() - started > budget_s:
            break
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            fns[name]()
            times[name].append((time.perf_counter() - t0) * 1000.0)
    return times


def auto_candidates(features: dict[str, Any], device: str = "cpu") -> tuple[list[str], dict[str, str]]:
    """The paths worth trying on this machine, and why the others are skipped."""
    skipped: dict[str, str] = {}
    if torch.device(device).type != "cpu":
        return [], {name: f"CPU-only path (device {device})" for name in QUERY_PATHS if name != "fp32"}
    names = ["int8"]
    if features.get("native_bf16"):
        names.append("bf16")
    else:
        skipped["bf16"] = "no native bf16 on this CPU (emulated bf16 is several times slower than fp32)"
    if onnxruntime_available():
        names += ["onnx-int8", "onnx-fp32"]
    else:
        skipped["onnx-int8"] = skipped["onnx-fp32"] = "onnxruntime is not installed"
    return names, skipped


def select_query_path(prompted: PromptedViT, requested: str = AUTO, *, probe_images: torch.Tensor | None = None,
                      device: str = "cpu", cache_dir: str | os.PathLike[str] | None = None,
                      fingerprint: str | None = None, budget_s: float = 4.0, repeats: int = 7,
                      min_params: int = AUTO_MIN_PARAMS,
                      builders: dict[str, Callable[[], nn.Module]] | None = None,
                      candidates: Sequence[str] | None = None) -> Selection:
    """Build, check and time the query path(s) for `requested` ("auto" or one path) and return the choice.

    auto: every candidate that makes sense here (auto_candidates, or `candidates`) is built, rejected below
    MIN_QUERY_COSINE on the probe sketches, and the accepted ones are timed against fp32 (interleaved, one
    sketch, about `budget_s` seconds); the fastest wins. For image towers under `min_params` parameters
    (test models, whose fp32 query takes a few ms) auto keeps fp32 without building anything. An explicit path is built and checked the same
    way and replaced by fp32 (with a warning) when it fails the check. `builders` adds or replaces path
    builders (name -> () -> model), for tests and experiments.
    """
    started = time.perf_counter()
    requested_name = canonical_path(requested)
    features = cpu_features()
    model_device = next(prompted.parameters()).device
    probe_images = (default_probe_images(prompted) if probe_images is None else probe_images).to(model_device)
    one = probe_images[:1]
    folder = Path(cache_dir) if cache_dir is not None else query_cache_dir()
    key_cache: list[str] = []

    def key() -> str:
        if not key_cache:
            key_cache.append(onnx_cache_key(prompted, fingerprint))
        return key_cache[0]

    def build(name: str) -> nn.Module:
        if builders and name in builders:
            return builders[name]()
        if name.startswith("onnx-"):
            return make_query_model(prompted, name, cache_dir=folder, key=key(), probe_images=probe_images)
        return make_query_model(prompted, name)

    table: dict[str, Candidate] = {"fp32": Candidate("fp32", cosine=1.0, ok=True)}
    models: dict[str, nn.Module] = {"fp32": prompted}
    note = ""
    if requested_name == AUTO:
        names, skipped = auto_candidates(features, device)
        if candidates is not None:
            names, skipped = list(candidates), {}
        names += [n for n in (builders or {}) if n not in names and candidates is None]
        for name, why in skipped.items():
            table[name] = Candidate(name, note=f"skipped: {why}")
        n_params = sum(p.numel() for p in prompted.visual.parameters())
        if names and n_params < min_params:
            note = f"small model ({n_params:,} parameters): fp32, no other path tried"
            names = []
    else:
        names = [] if requested_name == "fp32" else [requested_name]
        if names and torch.device(device).type != "cpu" and requested_name != "bf16":
            note = f"{requested_name} runs on the CPU only"
            names = []
    for name in names:
        t0 = time.perf_counter()
        try:
            model = build(name)
        except Exception as exc:  # a missing runtime, a torch without torch.ao, an export failure
            log.warning("query path %s is unavailable here (%s: %s)", name, type(exc).__name__, str(exc)[:300])
            table[name] = Candidate(name, note=f"unavailable: {type(exc).__name__}: {str(exc)[:200]}",
                                    build_s=time.perf_counter() - t0)
            continue
        cos = min_cosine(model, prompted, probe_images)
        ok = bool(np.isfinite(cos) and cos >= MIN_QUERY_COSINE)
        variant = getattr(model, "variant", "")
        table[name] = Candidate(name, cosine=cos, ok=ok, build_s=time.perf_counter() - t0,
                                note=(f"{variant} weights" if variant else "")
                                + ("" if ok else f"{'; ' if variant else ''}rejected: cosine < {MIN_QUERY_COSINE}"))
        if ok:
            models[name] = model
    timed = dict(models)
    fns = {name: (lambda m=m: m(one, "sketch")) for name, m in timed.items()}
    if len(fns) > 1 or table["fp32"].ms is None:
        with torch.inference_mode():
            times = time_interleaved(fns, repeats, warmup=0, budget_s=budget_s, min_repeats=2)  # warmed by the probe check
        for name, t in times.items():
            table[name].ms = float(np.median(t))
    if requested_name == AUTO:
        path = min(models, key=lambda n: (table[n].ms if table[n].ms is not None else float("inf"), n != "fp32"))
    elif requested_name in models:
        path = requested_name
    else:
        path = "fp32"
        if requested_name != "fp32" and not note:
            note = f"{requested_name} failed the probe check: fp32 used"
            log.warning("query_precision=%s: %s; sketch queries use fp32.", requested_name,
                        table.get(requested_name, Candidate(requested_name)).note or "unavailable")
    selection = Selection(path=path, model=models[path], requested=requested_name, candidates=table,
                          cpu=features, seconds=time.perf_counter() - started, note=note)
    report = selection.report
    log.info("sketch query path: %s (requested %s; chose in %.1f s); candidates: %s", report["summary"],
             requested_name, selection.seconds,
             "; ".join(f"{c.name} {c.ms:.1f} ms cos {c.cosine:.4f}" if c.ms is not None and c.cosine is not None
                       else f"{c.name} {c.note}" for c in table.values()))
    return selection
