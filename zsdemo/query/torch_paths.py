"""Query paths in torch: int8 (dynamic quantisation, attention projections included) and bf16 copies."""

from __future__ import annotations

import copy
import types
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from zsdemo.model.prompts import PromptedViT


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


def torch_int8(prompted: PromptedViT) -> nn.Module:
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


def torch_bf16(prompted: PromptedViT) -> QueryModel:
    """A copy whose weights are bfloat16 (prompts and LayerNorm overrides included): inputs cast to bf16, outputs
    back to float32 (stored bf16 weights, not autocast, which re-casts every weight on every call)."""
    model = copy.deepcopy(prompted).to(torch.bfloat16).eval()
    return QueryModel(model, "bf16", torch.bfloat16).eval()
