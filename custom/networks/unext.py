"""UNeXt (Valanarasu & Patel, MICCAI 2022), written from the description in method.md.

Encoder: three conv stages (Conv3x3 -> BN -> MaxPool2 -> ReLU; 16, 32, 128 channels),
then two tokenized-MLP stages (overlapping 3x3 stride-2 patch embedding + LayerNorm, one
shifted-MLP block each; 160 and 256 channels). The decoder mirrors it with additive skips
and bilinear x2 upsampling; a final 1x1 conv gives the logits.

With ``in_channels=3, out_channels=1`` the network has 1,471,921 parameters (the
published layout). ``in_channels=1`` changes only the first convolution.

No library ships UNeXt (MONAI and timm do not), so it is written here; the building
blocks that exist elsewhere (``timm.layers.DropPath``) are reused.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn

__all__ = ["UNeXt", "ShiftedMLP", "ShiftedMLPBlock", "OverlapPatchEmbed", "shift_groups"]


def shift_groups(x: torch.Tensor, dim: int, groups: int = 5) -> torch.Tensor:
    """Split ``x`` (B, C, H, W) into ``groups`` channel groups and shift group g by
    ``g - groups // 2`` pixels along ``dim`` (2 = H, 3 = W), filling with zeros.

    Shifting with zero fill equals padding by ``groups // 2``, rolling, and cropping back,
    which is how the published layout describes the axial shift.
    """
    pad = groups // 2
    padding = [0, 0, 0, 0]
    padding[2 * (3 - dim)], padding[2 * (3 - dim) + 1] = pad, pad  # F.pad lists the last dim first
    padded = F.pad(x, padding)
    size = x.shape[dim]
    chunks = torch.chunk(padded, groups, dim=1)
    # out[i] = in[i - offset] = padded[i - offset + pad]: content moves by +offset, zeros fill in
    out = [chunk.narrow(dim, pad - offset, size) for offset, chunk in zip(range(-pad, pad + 1), chunks)]
    return torch.cat(out, dim=1)


class ShiftedMLP(nn.Module):
    """Shift along H -> Linear -> depthwise 3x3 conv -> GELU -> shift along W -> Linear."""

    def __init__(self, dim: int, hidden_dim: int | None = None, groups: int = 5, drop: float = 0.0) -> None:
        super().__init__()
        hidden_dim = hidden_dim or dim
        self.groups = groups
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, H, W)
        x = shift_groups(x, dim=2, groups=self.groups)
        x = self.fc1(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = self.drop(self.act(self.dwconv(x)))
        x = shift_groups(x, dim=3, groups=self.groups)
        x = self.fc2(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.drop(x)


class ShiftedMLPBlock(nn.Module):
    """Residual tokenized-MLP block: ``x + DropPath(ShiftedMLP(LayerNorm(x)))``."""

    def __init__(self, dim: int, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = ShiftedMLP(dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, H, W)
        y = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return x + self.drop_path(self.mlp(y))


class OverlapPatchEmbed(nn.Module):
    """Overlapping 3x3 stride-2 convolutional patch embedding followed by LayerNorm."""

    def __init__(self, in_channels: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, 3, stride=2, padding=1)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class TokenizedStage(nn.Module):
    """One tokenized-MLP stage: shifted-MLP block(s) then LayerNorm, on (B, C, H, W)."""

    def __init__(self, dim: int, depth: int = 1, drop_path: float = 0.0) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[ShiftedMLPBlock(dim, drop_path) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(x)
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class UNeXt(nn.Module):
    """UNeXt segmentation network returning logits of shape ``B x out_channels x H x W``.

    Args:
        in_channels: image channels (1 for greyscale ultrasound, 3 for the published layout).
        out_channels: number of classes, background included.
        channels: conv stage widths then tokenized stage widths (16, 32, 128, 160, 256).
        drop_path_rate: stochastic depth of the shifted-MLP blocks (0 in the reference).
    """

    divisor = 32
    __constants__ = ["divisor"]

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 2,
        channels: Sequence[int] = (16, 32, 128, 160, 256),
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if len(channels) != 5:
            raise ValueError(f"UNeXt needs 5 channel widths, got {tuple(channels)}")
        c1, c2, c3, c4, c5 = channels
        self.in_channels, self.out_channels = in_channels, out_channels

        self.enc1, self.enc2, self.enc3 = (
            nn.Conv2d(in_channels, c1, 3, padding=1),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.Conv2d(c2, c3, 3, padding=1),
        )
        self.ebn1, self.ebn2, self.ebn3 = nn.BatchNorm2d(c1), nn.BatchNorm2d(c2), nn.BatchNorm2d(c3)

        self.patch_embed4, self.patch_embed5 = OverlapPatchEmbed(c3, c4), OverlapPatchEmbed(c4, c5)
        self.stage4 = TokenizedStage(c4, drop_path=drop_path_rate)
        self.stage5 = TokenizedStage(c5, drop_path=drop_path_rate)

        self.dec1, self.dec2 = nn.Conv2d(c5, c4, 3, padding=1), nn.Conv2d(c4, c3, 3, padding=1)
        self.dec3, self.dec4, self.dec5 = (
            nn.Conv2d(c3, c2, 3, padding=1),
            nn.Conv2d(c2, c1, 3, padding=1),
            nn.Conv2d(c1, c1, 3, padding=1),
        )
        self.dbn1, self.dbn2, self.dbn3, self.dbn4 = (
            nn.BatchNorm2d(c4),
            nn.BatchNorm2d(c3),
            nn.BatchNorm2d(c2),
            nn.BatchNorm2d(c1),
        )
        self.dstage4 = TokenizedStage(c4, drop_path=drop_path_rate)
        self.dstage3 = TokenizedStage(c3, drop_path=drop_path_rate)

        self.final = nn.Conv2d(c1, out_channels, 1)

    def check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"UNeXt expects a B x {self.in_channels} x H x W tensor, got shape {list(x.shape)}")
        h, w = int(x.shape[-2]), int(x.shape[-1])
        if h % self.divisor or w % self.divisor:
            raise ValueError(
                f"UNeXt input sides must be divisible by {self.divisor}, got {h}x{w}; resize or pad the image"
            )

    @staticmethod
    def _up(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor, feature_dropout: float = 0.0) -> torch.Tensor:
        """Logits of ``x``. ``feature_dropout`` > 0 drops whole channels (``dropout2d``, always
        active) of every encoder feature map, skips and bottleneck, before the decoder reads
        them: the feature-perturbation stream of UniMatch (Yang et al., CVPR 2023)."""
        if not torch.jit.is_tracing():
            self.check_input(x)
        t1 = F.relu(F.max_pool2d(self.ebn1(self.enc1(x)), 2))
        t2 = F.relu(F.max_pool2d(self.ebn2(self.enc2(t1)), 2))
        t3 = F.relu(F.max_pool2d(self.ebn3(self.enc3(t2)), 2))
        t4 = self.stage4(self.patch_embed4(t3))
        out = self.stage5(self.patch_embed5(t4))
        if feature_dropout > 0.0:
            t1, t2 = F.dropout2d(t1, feature_dropout, True), F.dropout2d(t2, feature_dropout, True)
            t3, t4 = F.dropout2d(t3, feature_dropout, True), F.dropout2d(t4, feature_dropout, True)
            out = F.dropout2d(out, feature_dropout, True)

        out = self.dstage4(F.relu(self._up(self.dbn1(self.dec1(out)))) + t4)
        out = self.dstage3(F.relu(self._up(self.dbn2(self.dec2(out)))) + t3)
        out = F.relu(self._up(self.dbn3(self.dec3(out)))) + t2
        out = F.relu(self._up(self.dbn4(self.dec4(out)))) + t1
        out = F.relu(self._up(self.dec5(out)))
        return self.final(out)
