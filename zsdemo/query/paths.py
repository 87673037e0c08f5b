"""The sketch query paths: every way of running the prompted encoder on a sketch.

Gallery photos are always encoded in fp32 (so caches never depend on the query path); only sketch queries
use a reduced-precision or exported copy of the prompted encoder:

- fp32: the prompted encoder itself (bit-identical to stock open_clip when there are no prompts);
- int8 (alias torch-int8): torch dynamic int8 on every linear layer incl. the attention projections;
- bf16 (alias torch-bf16): bf16 weights; fast only on CPUs with native bf16 (AVX512-BF16 / AMX);
- onnx-fp32 / onnx-int8: the same prompted forward (modality fixed to "sketch") exported to ONNX and run by
  ONNX Runtime, in fp32 or with ORT dynamic int8 quantisation (files cached on disk, zsdemo.query.onnx_paths).
On a CPU without VNNI, ORT's int8 kernels saturate with signed 8-bit weights, so onnx-int8 quantises the
weights to unsigned 8 bits when the signed variant fails the probe check. Which path a machine uses is
chosen by zsdemo.query.select; `python bench/query.py` measures them all.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from zsdemo.config import canonical_path
from zsdemo.errors import ZsdemoError
from zsdemo.model.prompts import PromptedViT
from zsdemo.query.onnx_paths import onnx_cache_key, onnx_query_model, query_cache_dir
from zsdemo.query.torch_paths import torch_bf16, torch_int8


def make_query_model(prompted: PromptedViT, precision: str, *, cache_dir: str | os.PathLike[str] | None = None,
                     key: str | None = None, probe_images: torch.Tensor | None = None,
                     variant: str | None = None) -> nn.Module:
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
        return torch_bf16(prompted)
    if name == "int8":
        return torch_int8(prompted)
    if name in ("onnx-fp32", "onnx-int8"):
        folder = Path(cache_dir) if cache_dir is not None else query_cache_dir()
        return onnx_query_model(prompted, name, folder, key or onnx_cache_key(prompted), probe_images, variant)
    raise ZsdemoError(f"query_precision {precision!r} names no single path (auto is resolved by select_query_path).")
