"""Visual prompt tuning on a frozen open_clip ViT, and the one prompt checkpoint format.

Placement (documented choice, stored in every checkpoint as `insert`): K prompt tokens go right
after [CLS], *after* ln_pre, with no positional embedding; their outputs are dropped before
ln_post. The authors' code appends them after the patch tokens before ln_pre; both are
position-free for the encoder, ours keeps the stock encoder bit-exact when K = 0 and lets the
prompts live on the same scale as normalised tokens.
Shallow: prompts enter once, before block 0. Deep (VPT-deep): fresh prompts before every block.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from zsdemo.errors import CheckpointError

CHECKPOINT_FORMAT = "zsdemo-prompts"
CHECKPOINT_VERSION = "1"
INSERT_POINT = "after_cls_post_ln_pre"


@dataclass(frozen=True)
class PromptSpec:
    """Shape of the learned part. Stored in every checkpoint."""

    n_prompts: int = 3
    deep: bool = False
    shared: bool = False  # one prompt for sketches and photos (fine-grained setting)
    layernorm: bool = False  # trainable LayerNorm affine parameters, one set per branch

    @property
    def branches(self) -> tuple[str, ...]:
        return ("shared",) if self.shared else ("sketch", "photo")

    def branch_for(self, modality: str) -> str:
        if modality not in ("sketch", "photo"):
            raise ValueError(f"modality must be 'sketch' or 'photo', not {modality!r}")
        return "shared" if self.shared else modality


def layernorm_names(visual: nn.Module) -> list[str]:
    return [name for name, module in visual.named_modules() if isinstance(module, nn.LayerNorm)]


def _safe(name: str) -> str:
    return name.replace(".", "__")


class PromptedViT(nn.Module):
    """A frozen open_clip VisionTransformer plus learnable prompts (and optional LayerNorms) per branch."""

    def __init__(self, visual: nn.Module, spec: PromptSpec, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.visual = visual
        self.spec = spec
        for param in self.visual.parameters():
            param.requires_grad_(False)
        self.width = int(visual.conv1.out_channels)
        self.n_layers = len(visual.transformer.resblocks)
        depth = self.n_layers if spec.deep else 1
        self.prompts = nn.ParameterDict()
        if spec.n_prompts > 0:
            for branch in spec.branches:
                init = torch.randn(depth, spec.n_prompts, self.width, generator=generator)
                self.prompts[branch] = nn.Parameter(init)
        self.layernorms = nn.ModuleDict()
        if spec.layernorm:
            for branch in spec.branches:
                params = nn.ParameterDict()
                for name in layernorm_names(visual):
                    module = visual.get_submodule(name)
                    params[_safe(f"{name}.weight")] = nn.Parameter(module.weight.detach().clone())
                    params[_safe(f"{name}.bias")] = nn.Parameter(module.bias.detach().clone())
                self.layernorms[branch] = params

    def forward(self, images: torch.Tensor, modality: str) -> torch.Tensor:
        """Images (B,3,H,W), normalised -> L2-normalised embeddings (B, D)."""
        pooled, _ = self._run(images, modality, with_tokens=False)
        return F.normalize(pooled.float(), dim=-1)

    def embed_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """The tokens after the patch embedding and ln_pre, where the prompts join them (B, 1 + N, width)."""
        return self.visual._embeds(images)  # noqa: SLF001 (open_clip's first piece of its forward)

    def forward_with_tokens(self, images: torch.Tensor, modality: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Images -> (L2-normalised embeddings (B, D), the patch tokens projected like them (B, N, D)): what a
        similarity map of a photo needs. The embeddings equal `forward`'s."""
        pooled, tokens = self._run(images, modality, with_tokens=True)
        return F.normalize(pooled.float(), dim=-1), tokens.float()

    def _run(self, images: torch.Tensor, modality: str, with_tokens: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        branch = self.spec.branch_for(modality)
        prompt = self.prompts.get(branch)
        runner = _PromptedRunner(self.visual, self.spec.deep, with_tokens)
        if branch in self.layernorms:
            overrides = {f"visual.{key.replace('__', '.')}": value for key, value in self.layernorms[branch].items()}
            return functional_call(runner, overrides, (images, prompt))
        return runner(images, prompt)

    # ---- checkpoint state -------------------------------------------------------------
    def learned_state(self) -> dict[str, torch.Tensor]:
        state = {f"prompts.{branch}": p.detach().float().cpu().contiguous() for branch, p in self.prompts.items()}
        for branch, params in self.layernorms.items():
            for key, value in params.items():
                state[f"layernorm.{branch}.{key}"] = value.detach().float().cpu().contiguous()
        return state

    def load_learned_state(self, state: dict[str, torch.Tensor]) -> None:
        expected = self.learned_state()
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        if missing or unexpected:
            raise CheckpointError(f"Prompt checkpoint tensors do not match: missing {missing[:4]}, unexpected {unexpected[:4]}.")
        for key, value in state.items():
            if tuple(value.shape) != tuple(expected[key].shape):
                raise CheckpointError(
                    f"Prompt checkpoint tensor {key} has shape {tuple(value.shape)}, the model needs "
                    f"{tuple(expected[key].shape)}."
                )
        with torch.no_grad():
            for branch, p in self.prompts.items():
                p.copy_(state[f"prompts.{branch}"])
            for branch, params in self.layernorms.items():
                for key, value in params.items():
                    value.copy_(state[f"layernorm.{branch}.{key}"])


class _PromptedRunner(nn.Module):
    """Thin module so functional_call can swap in per-branch LayerNorm parameters."""

    def __init__(self, visual: nn.Module, deep: bool, with_tokens: bool = False) -> None:
        super().__init__()
        self.visual = visual
        self.deep = deep
        self.with_tokens = with_tokens

    def forward(self, images: torch.Tensor, prompt: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        return prompted_tokens(self.visual, images, prompt, self.deep, self.with_tokens)


def prompted_tokens(visual: nn.Module, images: torch.Tensor, prompt: torch.Tensor | None, deep: bool,
                    with_tokens: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """open_clip VisionTransformer.forward with prompt tokens (identical to it when prompt is None): the pooled
    embedding and, `with_tokens`, the patch tokens through the same ln_post and projection.
    Uses open_clip's own `_embeds` / `_pool` (the pieces of its forward), so the prompted path follows it."""
    x = visual._embeds(images)  # noqa: SLF001 (open_clip's forward, in two pieces)
    if prompt is None:
        x = visual.transformer(x)
    else:
        batch, n_prompts = x.shape[0], prompt.shape[1]
        x = torch.cat([x[:, :1], prompt[0].to(x.dtype).expand(batch, -1, -1), x[:, 1:]], dim=1)
        for i, block in enumerate(visual.transformer.resblocks):
            if deep and i > 0:
                x = torch.cat([x[:, :1], prompt[i].to(x.dtype).expand(batch, -1, -1), x[:, 1 + n_prompts:]], dim=1)
            x = block(x)
        x = torch.cat([x[:, :1], x[:, 1 + n_prompts:]], dim=1)
    pooled, tokens = visual._pool(x)  # noqa: SLF001
    if not with_tokens:
        tokens = None
    elif getattr(visual, "final_ln_after_pool", False):
        tokens = visual.ln_post(tokens)  # the [CLS] got ln_post after pooling: treat the patches alike
    if visual.proj is not None:
        pooled = pooled @ visual.proj
        tokens = None if tokens is None else tokens @ visual.proj
    return pooled, tokens


def prompted_forward(visual: nn.Module, images: torch.Tensor, prompt: torch.Tensor | None, deep: bool) -> torch.Tensor:
    """open_clip VisionTransformer.forward with prompt tokens; identical to it when prompt is None."""
    return prompted_tokens(visual, images, prompt, deep, with_tokens=False)[0]


# ---- checkpoint file ---------------------------------------------------------------------
def save_checkpoint(path: str | Path, prompted: PromptedViT, model_name: str, pretrained: str,
                    preprocess_version: str, extra: dict[str, str] | None = None) -> Path:
    """Write the learned tensors and their metadata to one .safetensors file (atomically)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model": model_name,
        "pretrained": pretrained,
        "width": str(prompted.width),
        "layers": str(prompted.n_layers),
        "insert": INSERT_POINT,
        "preprocess_version": preprocess_version,
        "spec": json.dumps(asdict(prompted.spec)),
        **(extra or {}),
    }
    tmp = path.with_name(path.name + ".tmp")
    save_file(prompted.learned_state(), str(tmp), metadata=meta)
    tmp.replace(path)
    return path


@dataclass(frozen=True)
class PromptCheckpoint:
    path: Path
    spec: PromptSpec
    meta: dict[str, str]
    state: dict[str, torch.Tensor]
    sha256: str


def read_checkpoint(path: str | Path) -> PromptCheckpoint:
    """Read and validate a prompt checkpoint file (not yet matched against a model)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Prompt checkpoint {path} not found. Pass the .safetensors file written by train/fit.py.")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = dict(handle.metadata() or {})
            state = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (safe_open is not iterable)
    except Exception as exc:  # safetensors raises several types for corrupt headers
        raise CheckpointError(f"{path} is not a readable prompt checkpoint ({type(exc).__name__}: {exc}).") from None
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a zsdemo prompt checkpoint (no '{CHECKPOINT_FORMAT}' metadata).")
    if meta.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} has checkpoint version {meta.get('version')}; this code reads {CHECKPOINT_VERSION}.")
    if meta.get("insert") != INSERT_POINT:
        raise CheckpointError(f"{path} was trained with prompts inserted at {meta.get('insert')!r}; this code uses {INSERT_POINT!r}.")
    try:
        spec = PromptSpec(**json.loads(meta["spec"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} has no valid prompt spec in its metadata ({exc}).") from None
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return PromptCheckpoint(path=path, spec=spec, meta=meta, state=state, sha256=digest)


def check_compatible(ckpt: PromptCheckpoint, model_name: str, width: int, layers: int) -> None:
    """Fail with a clear message when a checkpoint was made for another backbone."""
    if ckpt.meta.get("model") != model_name:
        raise CheckpointError(
            f"{ckpt.path.name} was trained for backbone {ckpt.meta.get('model')!r}, but the loaded backbone is "
            f"{model_name!r}. Start with --model {ckpt.meta.get('model')} or use prompts trained for {model_name}."
        )
    if ckpt.meta.get("width") != str(width) or ckpt.meta.get("layers") != str(layers):
        raise CheckpointError(
            f"{ckpt.path.name} expects a ViT of width {ckpt.meta.get('width')} with {ckpt.meta.get('layers')} layers; "
            f"the loaded one has width {width} and {layers} layers."
        )
