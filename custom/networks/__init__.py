"""Networks of the method: the UNeXt CNN and the Swin-Unet Transformer."""

from .swin_unet import SwinUnet, load_pretrained_swin, with_pretrained
from .unext import UNeXt

__all__ = ["UNeXt", "SwinUnet", "load_pretrained_swin", "with_pretrained"]
