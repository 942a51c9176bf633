"""Swin-Unet (Cao et al., 2021) assembled from timm's Swin Transformer building blocks.

The encoder is timm's own ``SwinTransformer`` (patch 4, no absolute position embedding),
used stage by stage so that the input of every stage's blocks is kept as a skip. The
decoder mirrors it: ``PatchExpand`` (Linear to 2x channels, 2x2 pixel shuffle, LayerNorm)
up, concatenation with the skip and a Linear back to the stage width, a timm
``SwinTransformerStage`` of the mirrored depth, and a final x4 ``FinalPatchExpand`` and
1x1 head. Attention, windows, shifts and masks are timm's, not hand-written.

Because the encoder keeps timm's module names, an ImageNet ``swin_tiny_patch4_window7_224``
state dict (timm layout, or Microsoft's original layout through timm's own converter)
loads into it directly; see :func:`load_pretrained_swin`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

import numpy as np
import torch
from timm.models import adapt_input_conv
from timm.models.swin_transformer import SwinTransformer, SwinTransformerStage
from timm.models.swin_transformer import checkpoint_filter_fn as timm_swin_checkpoint_filter
from torch import nn

__all__ = [
    "SwinUnet",
    "PatchExpand",
    "FinalPatchExpand",
    "load_pretrained_swin",
    "with_pretrained",
    "PretrainedLoadReport",
]

logger = logging.getLogger(__name__)


def _expand_tokens(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Rearrange ``B, H, W, (s1 s2 c)`` to ``B, H*s, W*s, c`` (the reference's channel order)."""
    b, h, w, ch = x.shape
    c = ch // (scale * scale)
    x = x.reshape(b, h, w, scale, scale, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h * scale, w * scale, c)


class PatchExpand(nn.Module):
    """Double the resolution and halve the channels: Linear(C -> 2C), 2x2 shuffle, LayerNorm(C/2)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.expand = nn.Linear(dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(dim // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # B, H, W, C
        return self.norm(_expand_tokens(self.expand(x), 2))


class FinalPatchExpand(nn.Module):
    """Quadruple the resolution at constant width: Linear(C -> 16C), 4x4 shuffle, LayerNorm(C)."""

    def __init__(self, dim: int, scale: int = 4) -> None:
        super().__init__()
        self.scale = scale
        self.expand = nn.Linear(dim, scale * scale * dim, bias=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(_expand_tokens(self.expand(x), self.scale))


class DecoderStage(nn.Module):
    """Skip fusion (concat + Linear), Swin blocks of the mirrored encoder stage, optional PatchExpand."""

    def __init__(
        self,
        dim: int,
        resolution: tuple[int, int],
        depth: int,
        num_heads: int,
        window_size: int,
        drop_path: Sequence[float],
        upsample: bool,
    ) -> None:
        super().__init__()
        self.concat_back = nn.Linear(2 * dim, dim)
        self.stage = SwinTransformerStage(
            dim=dim,
            out_dim=dim,
            input_resolution=resolution,
            depth=depth,
            downsample=False,
            num_heads=num_heads,
            window_size=window_size,
            drop_path=list(drop_path),
        )
        self.upsample = PatchExpand(dim) if upsample else nn.Identity()

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.concat_back(torch.cat([x, skip], dim=-1))
        return self.upsample(self.stage(x))


class SwinUnet(nn.Module):
    """Swin-Unet returning logits of shape ``B x out_channels x H x W``.

    Args:
        img_size: square input side; each stage's resolution must suit ``window_size``
            (224 and 448 with window 7; e.g. 64 with window 4 for tests).
        in_channels, out_channels: image channels and classes (background included).
        embed_dim, depths, num_heads, window_size, drop_path_rate: Swin hyper-parameters.

    The network is built randomly initialised; :func:`with_pretrained` (the config's
    ``transformer_pretrained_path``) loads a local ImageNet Swin checkpoint into it afterwards.
    """

    def __init__(
        self,
        img_size: int = 224,
        in_channels: int = 1,
        out_channels: int = 2,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        drop_path_rate: float = 0.2,
    ) -> None:
        super().__init__()
        depths, num_heads = tuple(int(d) for d in depths), tuple(int(h) for h in num_heads)
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {depths} and num_heads {num_heads} must have the same length")
        self.img_size, self.in_channels, self.out_channels = int(img_size), in_channels, out_channels
        self.num_stages = len(depths)
        divisor = 4 * 2 ** (self.num_stages - 1)
        if self.img_size % divisor:
            raise ValueError(
                f"SwinUnet img_size must be divisible by {divisor} (patch 4 and {self.num_stages - 1} mergings), "
                f"got {img_size}"
            )

        self.encoder = SwinTransformer(
            img_size=self.img_size,
            patch_size=4,
            in_chans=in_channels,
            num_classes=0,
            global_pool="",
            embed_dim=embed_dim,
            depths=depths,
            num_heads=num_heads,
            window_size=window_size,
            drop_path_rate=drop_path_rate,
        )
        dims = [embed_dim * 2**i for i in range(self.num_stages)]
        grid = self.img_size // 4
        resolutions = [(grid // 2**i, grid // 2**i) for i in range(self.num_stages)]
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        starts = [sum(depths[:i]) for i in range(self.num_stages)]

        self.bottleneck_expand = PatchExpand(dims[-1])
        # decoder stage k mirrors encoder stage k, from the deepest skip to the shallowest
        self.decoder = nn.ModuleList(
            DecoderStage(
                dims[k],
                resolutions[k],
                depths[k],
                num_heads[k],
                window_size,
                dpr[starts[k] : starts[k] + depths[k]],
                upsample=k > 0,
            )
            for k in reversed(range(self.num_stages - 1))
        )
        self.norm_up = nn.LayerNorm(embed_dim)
        self.final_expand = FinalPatchExpand(embed_dim)
        self.head = nn.Conv2d(embed_dim, out_channels, kernel_size=1, bias=False)
        for module in (self.bottleneck_expand, self.decoder, self.norm_up, self.final_expand, self.head):
            module.apply(_init_weights)

    def decoder_stage_of(self, encoder_stage: int) -> int | None:
        """Index in ``self.decoder`` of the stage mirroring ``encoder_stage`` (None for the deepest)."""
        if not 0 <= encoder_stage < self.num_stages - 1:
            return None
        return self.num_stages - 2 - encoder_stage

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing() and (
            x.ndim != 4 or x.shape[1] != self.in_channels or tuple(x.shape[-2:]) != (self.img_size, self.img_size)
        ):
            raise ValueError(
                f"SwinUnet expects B x {self.in_channels} x {self.img_size} x {self.img_size}, got {tuple(x.shape)}"
            )
        x = self.encoder.patch_embed(x)  # B, H/4, W/4, C
        skips = []
        for layer in self.encoder.layers:
            x = layer.downsample(x)
            skips.append(x)
            x = layer.blocks(x)
        x = self.bottleneck_expand(self.encoder.norm(x))
        for stage, skip in zip(self.decoder, reversed(skips[:-1])):
            x = stage(x, skip)
        x = self.final_expand(self.norm_up(x))
        return self.head(x.permute(0, 3, 1, 2))


def _init_weights(module: nn.Module) -> None:
    """The reference initialisation: truncated normal (std 0.02) for Linear, unit LayerNorm."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class PretrainedLoadReport(dict):
    """Which keys of a pretrained checkpoint went where: ``encoder``, ``decoder``, ``skipped``."""


def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    from custom.training.checkpoint import safe_torch_load

    obj = safe_torch_load(path, "pretrained Swin checkpoint")
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return obj


def _recorded(path: str) -> str:
    """What the record beside a pretrained file (``X.json`` beside ``X.pt``, as the pretraining
    workflow writes it) says it was trained with, for an error message; empty without one."""
    import json
    import os

    try:
        with open(os.path.splitext(path)[0] + ".json", encoding="utf-8") as f:
            record = json.load(f)
        widths = record["transformer_def"]
        return (
            f"; it was pretrained with embed_dim {widths.get('embed_dim')}, depths {widths.get('depths')}, "
            f"num_heads {widths.get('num_heads')}, window_size {widths.get('window_size')} at image_size "
            f"{record.get('image_size')}: train with the same --transformer_def values"
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return ""


def _check_record(model: SwinUnet, path: str) -> None:
    """Refuse a pretrained file whose record (``X.json`` beside it) names other widths than
    ``model``'s: with other heads the attention tables would be skipped and the rest load silently."""
    import json
    import os

    try:
        with open(os.path.splitext(path)[0] + ".json", encoding="utf-8") as f:
            widths = json.load(f)["transformer_def"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return
    if not isinstance(widths, dict):
        return
    layers = list(model.encoder.layers)
    mine = {
        "embed_dim": model.encoder.embed_dim,
        "depths": [len(layer.blocks) for layer in layers],
        "num_heads": [layer.blocks[0].attn.num_heads for layer in layers],
    }
    differ = {
        k: (widths.get(k), v)
        for k, v in mine.items()
        if k in widths and list(np.atleast_1d(widths[k])) != list(np.atleast_1d(v))
    }
    if differ:
        said = ", ".join(f"{k} {theirs} (this network: {ours})" for k, (theirs, ours) in differ.items())
        raise ValueError(f"{path}: pretrained with {said}: train with the same --transformer_def values")


def load_pretrained_swin(model: SwinUnet, path: str) -> PretrainedLoadReport:
    """Initialise ``model``'s encoder, and as the reference does its mirrored decoder stages,
    from an ImageNet Swin checkpoint at a local ``path`` (timm or Microsoft key layout).

    Keys whose shapes do not fit (e.g. the patch embedding of a 1-channel model, the
    classifier) are skipped and listed. Raises ``FileNotFoundError``/``ValueError`` for a
    missing file or a checkpoint that is not a Swin state dict of this model's widths.
    """
    raw = _read_state_dict(path)
    _check_record(model, path)
    if not any(k.startswith("layers.") for k in raw):
        raise ValueError(f"{path} is not a Swin Transformer checkpoint (no 'layers.*' keys)")
    modules = dict(model.encoder.named_modules())
    # timm's converter resizes relative-position tables of blocks the model has; blocks it
    # lacks (swin_tiny has 6 blocks in stage 3, Swin-Unet 2) are set aside first
    skipped = [
        k
        for k in raw
        if k.endswith(".attn.relative_position_bias_table")
        and k[: -len(".relative_position_bias_table")] not in modules
    ]
    kept = {k: v for k, v in raw.items() if k not in skipped}
    try:
        converted = timm_swin_checkpoint_filter(kept, model.encoder)  # Microsoft -> timm layout
    except Exception as e:
        raise ValueError(f"{path}: cannot convert checkpoint to this SwinUnet: {e}") from e
    encoder_state = model.encoder.state_dict()
    decoder_state = model.decoder.state_dict()
    load_encoder, load_decoder = {}, {}
    for key, value in converted.items():
        if (
            key == "patch_embed.proj.weight"
            and key in encoder_state
            and value.ndim == 4
            and value.shape[1] != model.in_channels
        ):
            value = adapt_input_conv(model.in_channels, value)  # e.g. RGB -> greyscale: sum of the channels
        if key in encoder_state and encoder_state[key].shape == value.shape:
            load_encoder[key] = value
        else:
            skipped.append(key)
            continue
        m = re.match(r"layers\.(\d+)\.blocks\.(.+)$", key)
        if m:
            target = model.decoder_stage_of(int(m.group(1)))
            if target is not None:
                dkey = f"{target}.stage.blocks.{m.group(2)}"
                if dkey in decoder_state and decoder_state[dkey].shape == value.shape:
                    load_decoder[dkey] = value
    if not load_encoder:
        raise ValueError(
            f"{path}: no key of the checkpoint fits this SwinUnet (embed_dim/depths differ?){_recorded(path)}"
        )
    n_encoder_params = sum(1 for k in encoder_state if k in dict(model.encoder.named_parameters()))
    if len([k for k in load_encoder if k.endswith(("weight", "bias", "table"))]) < n_encoder_params // 2:
        raise ValueError(
            f"{path}: only {len(load_encoder)} of {n_encoder_params} encoder tensors fit; incompatible checkpoint"
            + _recorded(path)
        )
    model.encoder.load_state_dict(load_encoder, strict=False)
    model.decoder.load_state_dict(load_decoder, strict=False)
    report = PretrainedLoadReport(encoder=sorted(load_encoder), decoder=sorted(load_decoder), skipped=sorted(skipped))
    logger.info(
        "loaded %d encoder and %d decoder tensors from %s; skipped %d: %s",
        len(load_encoder),
        len(load_decoder),
        path,
        len(skipped),
        skipped[:8],
    )
    return report


def with_pretrained(model: SwinUnet, path: str | None) -> SwinUnet:
    """``model`` with the local ImageNet Swin checkpoint at ``path`` loaded into its encoder and
    mirrored decoder stages (:func:`load_pretrained_swin`); unchanged when ``path`` is None."""
    if path:
        load_pretrained_swin(model, path)
    return model
