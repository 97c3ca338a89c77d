"""CLIP parts of SAN, built from an open_clip model.

SAN splits CLIP's visual tower at block ``K`` (``feature_last_layer``):

* :class:`ClipFeatureExtractor` runs the patch embedding and the first ``K`` blocks and keeps every
  layer's tokens (the side adapter fuses some of them);
* :class:`RecognitionHead` runs the remaining blocks on ``[SLS; CLS; patches]``, where the ``Q``
  [SLS] tokens start as copies of the CLS token and attend to the patches through the side
  adapter's attention bias, so that CLIP itself embeds each mask proposal.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
from torch import nn

from ..config import ClipConfig
from ..errors import WeightsUnavailableError


def clip_model_config(cfg: ClipConfig) -> dict[str, Any]:
    """The open_clip model config dict (``embed_dim``, ``vision_cfg``, ``text_cfg``, ``quick_gelu``)."""
    if cfg.model_cfg is not None:
        return dict(cfg.model_cfg)
    model_cfg = open_clip.get_model_config(cfg.model_name)
    if model_cfg is None:
        known = ", ".join(m for m in open_clip.list_models() if m.startswith("ViT"))
        raise ValueError(f"unknown CLIP model {cfg.model_name!r}; open_clip ViT models: {known}")
    return model_cfg


def build_clip(cfg: ClipConfig) -> CLIP:
    """A randomly initialised open_clip ``CLIP`` with the architecture ``cfg`` names.

    Only the classic CLIP layout is supported (ViT vision tower with a class token, the CLIP text
    transformer with its BPE tokenizer), which is what SAN's recognition head relies on.
    """
    model_cfg = clip_model_config(cfg)
    unsupported = sorted(set(model_cfg) - {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu"})
    vision = model_cfg.get("vision_cfg", {})
    if unsupported or vision.get("timm_model_name") or model_cfg.get("text_cfg", {}).get("hf_model_name"):
        raise ValueError(
            f"CLIP model {cfg.model_name!r} is not a classic CLIP ViT (config keys {sorted(model_cfg)}); "
            "SAN needs an OpenAI-style ViT vision tower and CLIP text transformer"
        )
    model = CLIP(**model_cfg)
    visual = model.visual
    if not isinstance(visual, VisionTransformer) or visual.class_embedding is None:
        raise ValueError(f"CLIP model {cfg.model_name!r} has no ViT vision tower with a class token")
    if not 0 < cfg.feature_last_layer < len(visual.transformer.resblocks):
        raise ValueError(
            f"feature_last_layer={cfg.feature_last_layer} must split the "
            f"{len(visual.transformer.resblocks)} CLIP blocks (0 < K < depth)"
        )
    return model


def load_pretrained_clip(cfg: ClipConfig) -> CLIP:
    """The CLIP of ``cfg`` with the weights ``cfg.pretrained`` names: a weights file (an open_clip or
    OpenAI state dict) or an open_clip pretrained tag (e.g. ``"openai"``, from the hub cache)."""
    if not cfg.pretrained:
        raise WeightsUnavailableError(
            f"no CLIP weights configured for {cfg.model_name!r} (ClipConfig.pretrained is empty)"
        )
    if Path(cfg.pretrained).is_file():
        model = build_clip(cfg)
        open_clip.load_checkpoint(model, cfg.pretrained, strict=True)
        return model
    if cfg.model_cfg is not None:
        raise WeightsUnavailableError(
            f"CLIP weights {cfg.pretrained!r}: not a file, and a pretrained tag needs a named model"
        )
    try:
        model = open_clip.create_model(cfg.model_name, pretrained=cfg.pretrained)
    except Exception as error:  # offline, unknown tag, corrupt download: all mean "not available"
        raise WeightsUnavailableError(
            f"cannot get the CLIP weights {cfg.pretrained!r} for {cfg.model_name!r} from open_clip "
            f"({type(error).__name__}: {error}). Download them on a machine with internet access "
            "(open_clip caches them in the Hugging Face hub cache) or give the path of a weights file."
        ) from error
    build_clip(cfg)  # the same architecture checks as for a random model
    return model


def resize_clip_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Resize CLIP's positional embedding ``[1 + G*G, C]`` to a ``grid`` of patches.

    The class row is kept; the patch rows are resized bicubically (align_corners=False, no
    antialias, also when shrinking), as SAN does. Returns ``[1 + gh*gw, C]``.
    """
    num_patches = pos_embed.shape[0] - 1
    side = int(round(num_patches**0.5))
    if (side, side) == tuple(grid):
        return pos_embed
    cls_pos, patch_pos = pos_embed[:1], pos_embed[1:]
    patch_pos = patch_pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    patch_pos = F.interpolate(patch_pos, size=grid, mode="bicubic", align_corners=False)
    return torch.cat([cls_pos, patch_pos.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)])


@dataclass
class ClipFeatures:
    """Tokens after each of the first ``K`` CLIP blocks.

    ``tokens[i]`` is ``[B, 1 + gh*gw, C]`` (CLS first, then patches row-major): index 0 is the
    ``ln_pre`` output, index i the output of CLIP block i.
    """

    tokens: list[torch.Tensor]
    grid: tuple[int, int]

    def patch_map(self, index: int) -> torch.Tensor:
        """Patch tokens of layer ``index`` as a feature map ``[B, C, gh, gw]``."""
        x = self.tokens[index][:, 1:]
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *self.grid)

    def cls_token(self, index: int) -> torch.Tensor:
        """CLS token of layer ``index``: ``[B, C]``."""
        return self.tokens[index][:, 0]


class ClipFeatureExtractor(nn.Module):
    """Patch embedding plus the first ``K`` blocks of an open_clip ``VisionTransformer``."""

    def __init__(self, visual: VisionTransformer, num_blocks: int):
        super().__init__()
        self.conv1 = visual.conv1
        self.class_embedding = visual.class_embedding
        self.positional_embedding = visual.positional_embedding
        self.ln_pre = visual.ln_pre
        self.resblocks = nn.ModuleList(ClipBlock(b) for b in visual.transformer.resblocks[:num_blocks])

    @property
    def width(self) -> int:
        return self.class_embedding.shape[0]

    def forward(self, images: torch.Tensor) -> ClipFeatures:
        """Run on normalised images ``[B, 3, H, W]``; trailing pixels that fill no patch are dropped."""
        x = self.conv1(images.to(self.conv1.weight.dtype))
        grid = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1)
        pos = self.positional_embedding  # resized in float32 at least (behind a bf16 trunk too)
        x = x + resize_clip_pos_embed(pos.to(torch.promote_types(pos.dtype, torch.float32)), grid).to(x.dtype)
        x = self.ln_pre(x)
        tokens = [x]
        for block in self.resblocks:
            x = block(x)
            tokens.append(x)
        return ClipFeatures(tokens=tokens, grid=grid)


class ClipBlock(nn.Module):
    """One CLIP residual block, ``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))``, with the attention through
    ``F.scaled_dot_product_attention`` (PyTorch's fused kernel, also in bf16 on CPU; the inference path of
    ``nn.MultiheadAttention`` materialises every head's attention matrix instead). Parameters are shared
    with (and named as) the open_clip block it wraps."""

    def __init__(self, block: ResidualAttentionBlock):
        super().__init__()
        self.ln_1 = block.ln_1
        self.attn = block.attn
        self.ls_1 = block.ls_1
        self.ln_2 = block.ln_2
        self.mlp = block.mlp
        self.ls_2 = block.ls_2

    def queries_keys_values(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens`` ``[B, N, C]`` -> stacked ``q, k, v`` ``[3, B, heads, N, C / heads]``."""
        batch, length, width = tokens.shape
        heads = self.attn.num_heads
        qkv = F.linear(self.ln_1(tokens), self.attn.in_proj_weight, self.attn.in_proj_bias)
        return qkv.view(batch, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4)

    def finish(self, tokens: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """The residual block's rest, from ``tokens`` ``[B, N, C]`` and the attention output
        ``[B, heads, N, C / heads]``."""
        x = tokens + self.ls_1(self.attn.out_proj(attended.transpose(1, 2).reshape(tokens.shape)))
        return x + self.ls_2(self.mlp(self.ln_2(x)))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens`` ``[B, N, C]`` -> ``[B, N, C]``."""
        q, k, v = self.queries_keys_values(tokens)
        return self.finish(tokens, F.scaled_dot_product_attention(q, k, v))


class RecognitionBlock(ClipBlock):
    """One CLIP residual block run jointly on ``[SLS; CLS; patches]`` tokens.

    The CLS/patch rows attend only to CLS and patches, without bias: exactly CLIP's ordinary
    forward. Each SLS row attends to itself and to the patches, with the side adapter's bias
    added; it ignores the CLS token and the other SLS tokens. The official implementation
    expresses this as one ``(Q+1+L)^2`` additive mask whose excluded entries are -100; here they
    are left out of the attention (their weight, e^-100 relative, is below float32 resolution).
    """

    def forward(self, tokens: torch.Tensor, num_sls: int, sls_mask: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """``tokens`` ``[B, Q+1+L, C]``; ``sls_mask`` additive ``[B, heads, Q, Q+L]`` (keys: SLS, patches)."""
        q, k, v = self.queries_keys_values(tokens)
        image_out = F.scaled_dot_product_attention(q[:, :, num_sls:], k[:, :, num_sls:], v[:, :, num_sls:])
        sls_keys = torch.cat([k[:, :, :num_sls], k[:, :, num_sls + 1 :]], dim=2)
        sls_values = torch.cat([v[:, :, :num_sls], v[:, :, num_sls + 1 :]], dim=2)
        sls_out = F.scaled_dot_product_attention(
            q[:, :, :num_sls], sls_keys, sls_values, attn_mask=sls_mask.to(q.dtype)
        )
        return self.finish(tokens, torch.cat([sls_out, image_out], dim=2))


def downsample_attn_bias(bias: torch.Tensor, grid: tuple[int, int], method: str = "max") -> torch.Tensor:
    """Bring an attention bias ``[B, H, Q, h, w]`` to the CLIP grid: ``[B, H, Q, gh*gw]``.

    ``"max"`` is adaptive max pooling (windows ``[floor(i*h/gh), ceil((i+1)*h/gh))``), SAN's default.
    """
    b, nh, q, h, w = bias.shape
    flat = bias.reshape(b, nh * q, h, w)
    if method == "max":
        flat = F.adaptive_max_pool2d(flat, grid)
    elif method == "avg":
        flat = F.adaptive_avg_pool2d(flat, grid)
    elif method in ("bilinear", "bicubic", "nearest"):
        flat = F.interpolate(flat, size=grid, mode=method, **({} if method == "nearest" else {"align_corners": False}))
    else:
        raise ValueError(f"unknown attention-bias downsample method {method!r}")
    return flat.reshape(b, nh, q, grid[0] * grid[1])


class RecognitionHead(nn.Module):
    """CLIP blocks ``K..`` with [SLS] tokens, ``ln_post`` and ``proj``: mask embeddings."""

    def __init__(self, visual: VisionTransformer, first_block: int, downsample: str = "max"):
        super().__init__()
        self.resblocks = nn.ModuleList(RecognitionBlock(b) for b in visual.transformer.resblocks[first_block:])
        self.ln_post = visual.ln_post
        self.proj = visual.proj
        self.downsample = downsample

    @property
    def num_heads(self) -> int:
        return self.resblocks[0].attn.num_heads

    def sls_attention_mask(self, attn_bias: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Additive mask ``[B, heads, Q, Q + gh*gw]`` for the SLS rows from a bias ``[B, nh, Q, h, w]``.

        The first ``Q`` columns keep each SLS on itself (0 on the diagonal, -inf elsewhere); the
        rest is the bias pooled to the CLIP grid. ``nh`` must be 1 (shared by all heads) or the
        number of CLIP heads.
        """
        bias = downsample_attn_bias(attn_bias, grid, self.downsample)
        batch, nh, q, _ = bias.shape
        if nh == 1:
            bias = bias.expand(batch, self.num_heads, q, bias.shape[-1])
        elif nh != self.num_heads:
            raise ValueError(f"attention bias has {nh} heads, CLIP has {self.num_heads}")
        own = torch.full((q, q), float("-inf"), dtype=bias.dtype, device=bias.device).fill_diagonal_(0)
        return torch.cat([own.expand(batch, self.num_heads, q, q), bias], dim=-1)

    def forward(self, features: ClipFeatures, attn_biases: list[torch.Tensor]) -> torch.Tensor:
        """Mask embeddings ``[B, Q, D]`` (L2-normalised) from the last CLIP features and the biases.

        ``attn_biases`` holds one ``[B, nh, Q, h, w]`` tensor shared by all blocks, or one per block.
        """
        if len(attn_biases) not in (1, len(self.resblocks)):
            raise ValueError(f"{len(attn_biases)} attention biases for {len(self.resblocks)} recognition blocks")
        image_tokens = features.tokens[-1]
        masks = [self.sls_attention_mask(bias, features.grid).to(image_tokens.dtype) for bias in attn_biases]
        num_sls = attn_biases[0].shape[2]
        sls = image_tokens[:, :1].expand(-1, num_sls, -1)
        x = torch.cat([sls, image_tokens], dim=1)
        for i, block in enumerate(self.resblocks):
            x = block(x, num_sls, masks[i if len(masks) > 1 else 0])
        x = self.ln_post(x[:, :num_sls].to(self.proj.dtype)) @ self.proj
        return F.normalize(x, dim=-1)
