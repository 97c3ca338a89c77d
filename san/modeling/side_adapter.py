"""The side adapter network: a small ViT that reads the image and fused CLIP features and predicts
mask proposals and the attention biases that steer CLIP's recognition head.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ..config import AttnBiasConfig, SideAdapterConfig
from .clip import ClipFeatures


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of a ``[B, C, H, W]`` map (SAN's fusion norm, eps 1e-6)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__(channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class AddFusion(nn.Module):
    """Adds projected CLIP features to the side adapter's patch tokens.

    ``input_proj`` (channel LayerNorm, then a 1x1 conv) runs at the CLIP grid; the result is
    resized bilinearly to the side grid and added.
    """

    def __init__(self, clip_width: int, side_width: int):
        super().__init__()
        self.input_proj = nn.Sequential(ChannelLayerNorm(clip_width), nn.Conv2d(clip_width, side_width, 1))
        # Detectron2's c2_xavier_fill, which SAN uses for this conv.
        nn.init.kaiming_uniform_(self.input_proj[1].weight, a=1)
        nn.init.zeros_(self.input_proj[1].bias)

    def forward(self, x: torch.Tensor, clip_map: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """``x`` patch tokens ``[B, h*w, C_side]``, ``clip_map`` ``[B, C_clip, gh, gw]`` -> ``[B, h*w, C_side]``."""
        y = F.interpolate(self.input_proj(clip_map), size=grid, mode="bilinear", align_corners=False)
        return x + y.flatten(2).transpose(1, 2)


class MLP(nn.Module):
    """Layers ``in -> hidden x (n-1) -> out`` with ReLU between them; 1x1 convs when ``conv``."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int, conv: bool = False):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        layer = partial(nn.Conv2d, kernel_size=1) if conv else nn.Linear
        self.layers = nn.ModuleList(layer(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class MaskDecoder(nn.Module):
    """Decodes query and patch tokens into mask logits and per-head attention biases."""

    def __init__(self, width: int, cfg: AttnBiasConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.num_layers = cfg.num_layers
        self.query_mlp = MLP(width, cfg.mlp_channels, cfg.embed_channels, cfg.mlp_num_layers)
        self.pix_mlp = MLP(width, cfg.mlp_channels, cfg.embed_channels, cfg.mlp_num_layers, conv=True)
        attn_out = cfg.embed_channels * cfg.num_heads * cfg.num_layers
        self.attn_mlp = MLP(width, cfg.mlp_channels, attn_out, cfg.mlp_num_layers, conv=True)
        self.bias_scaling = nn.Linear(1, 1) if cfg.rescale else None

    def forward(self, query: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``query`` ``[B, Q, C]``, ``x`` ``[B, C, h, w]`` -> mask logits ``[B, Q, h, w]`` and
        ``num_layers`` attention biases ``[B, num_heads, Q, h, w]``."""
        dtype = self.query_mlp.layers[0].weight.dtype  # float32 also behind a bf16 trunk
        query = self.query_mlp(query.to(dtype))
        x = x.to(dtype)
        pix = self.pix_mlp(x)
        b, c, h, w = pix.shape
        mask_preds = torch.einsum("bqc,bchw->bqhw", query, pix)
        attn = self.attn_mlp(x).reshape(b, self.num_layers, self.num_heads, c, h, w)
        attn_bias = torch.einsum("bqc,blnchw->blnqhw", query, attn)
        if self.bias_scaling is not None:
            attn_bias = attn_bias * self.bias_scaling.weight[0, 0] + self.bias_scaling.bias[0]
        return mask_preds, list(attn_bias.unbind(dim=1))


@dataclass
class SideAdapterOutput:
    """Per decoded level (ascending block index): mask logits ``[B, Q, h, w]`` and, per recognition
    layer, attention biases ``[B, heads, Q, h, w]``."""

    mask_preds: list[torch.Tensor]
    attn_biases: list[list[torch.Tensor]]


class SideAdapter(nn.Module):
    """Side ViT (timm blocks, no class token, no final norm) with learnable queries and CLIP fusion."""

    def __init__(self, cfg: SideAdapterConfig, clip_width: int):
        super().__init__()
        self.cfg = cfg
        self.vit = VisionTransformer(
            img_size=cfg.image_size,
            patch_size=cfg.patch_size,
            embed_dim=cfg.width,
            depth=cfg.depth,
            num_heads=cfg.num_heads,
            mlp_ratio=cfg.mlp_ratio,
            qkv_bias=True,
            class_token=False,
            global_pool="",
            num_classes=0,
            final_norm=False,
            fc_norm=False,
            dynamic_img_size=True,
            drop_path_rate=cfg.drop_path_rate,
        )
        self.query_embed = nn.Parameter(torch.randn(1, cfg.num_queries, cfg.width) * 0.02)
        self.query_pos_embed = nn.Parameter(torch.randn(1, cfg.num_queries, cfg.width) * 0.02)
        self.fusion_map = {side: clip for clip, side in cfg.fusion_map}
        self.fusion_layers = nn.ModuleDict(
            {f"layer_{side}": AddFusion(clip_width, cfg.width) for side in sorted(self.fusion_map)}
        )
        self.mask_decoder = MaskDecoder(cfg.width, cfg.attn_bias)
        bad = [i for i in cfg.deep_supervision if not 1 <= i <= cfg.depth]
        if bad or not cfg.deep_supervision:
            raise ValueError(f"deep_supervision {cfg.deep_supervision} must name side blocks 1..{cfg.depth}")

    def position_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        """Query then patch position embeddings ``[1, Q + h*w, C]`` for a side grid ``(h, w)``.

        The patch table is resized bicubically only when the token count differs from the
        table's, as in the official implementation (which then treats a same-count grid of another
        shape as the flat table).
        """
        pos = self.vit.pos_embed
        if pos.shape[1] != grid[0] * grid[1]:
            side = int(round(pos.shape[1] ** 0.5))
            pos = pos.to(torch.promote_types(pos.dtype, torch.float32)).reshape(1, side, side, -1).permute(0, 3, 1, 2)
            pos = F.interpolate(pos, size=grid, mode="bicubic", align_corners=False)
            pos = pos.flatten(2).transpose(1, 2).to(self.vit.pos_embed.dtype)
        return torch.cat([self.query_pos_embed, pos], dim=1)

    def fuse(self, index: int, x: torch.Tensor, clip: ClipFeatures, grid: tuple[int, int]) -> torch.Tensor:
        if index not in self.fusion_map:
            return x
        q = self.cfg.num_queries
        patches = self.fusion_layers[f"layer_{index}"](x[:, q:], clip.patch_map(self.fusion_map[index]), grid)
        return torch.cat([x[:, :q], patches], dim=1)

    def forward(self, images: torch.Tensor, clip: ClipFeatures) -> SideAdapterOutput:
        """``images``: normalised, padded ``[B, 3, Hp, Wp]``. In eval mode only the last
        deep-supervision level is decoded; in training mode every level is."""
        patches = self.vit.patch_embed(images.to(self.vit.pos_embed.dtype))  # [B, h, w, C]
        b, h, w, c = patches.shape
        grid = (h, w)
        pos = self.position_embedding(grid)
        x = torch.cat([self.query_embed.expand(b, -1, -1), patches.reshape(b, h * w, c)], dim=1) + pos
        x = self.fuse(0, x, clip, grid)
        levels = sorted(self.cfg.deep_supervision) if self.training else [max(self.cfg.deep_supervision)]
        q = self.cfg.num_queries
        outputs = SideAdapterOutput([], [])
        for i, block in enumerate(self.vit.blocks[: levels[-1]], start=1):
            x = self.fuse(i, block(x), clip, grid)
            if i in levels:
                mask_preds, attn_biases = self.mask_decoder(x[:, :q], x[:, q:].transpose(1, 2).reshape(b, c, h, w))
                outputs.mask_preds.append(mask_preds)
                outputs.attn_biases.append(attn_biases)
            if i < self.cfg.depth:
                x = x + pos
        return outputs
