"""Self-supervised pretraining of the Swin-Unet on unlabelled frames (bundle/configs/pretrain.yaml):
masked image modelling (:mod:`custom.pretraining.mim`) and the workflow's data, outputs and curve
(:mod:`custom.pretraining.workflow`)."""

from custom.utils.lazy import lazy_submodules

__getattr__ = lazy_submodules(__name__, __path__)
