"""Exponential-moving-average teacher (method.md, 3)."""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["EMATeacher"]


class EMATeacher(nn.Module):
    """A frozen copy of ``student`` updated after each optimiser step as
    ``theta_t <- alpha theta_t + (1 - alpha) theta_s`` with ``alpha = min(1 - 1 / (step + 1), decay)``.

    Only parameters are averaged (as in the reference); buffers (e.g. BatchNorm running
    statistics) are copied from the student. The teacher never receives gradients and runs
    in eval mode unless ``train_mode`` is set (the reference leaves it in train mode, so its
    drop-path is active: ``train_mode=True`` reproduces that).
    """

    def __init__(self, student: nn.Module, decay: float = 0.99, train_mode: bool = False) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay, self.train_mode = float(decay), bool(train_mode)
        self.module = copy.deepcopy(_plain(student))
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.module.train(self.train_mode)

    def train(self, mode: bool = True) -> EMATeacher:  # the teacher's mode is fixed by train_mode
        self.training = mode
        self.module.train(self.train_mode)
        return self

    def alpha(self, step: int) -> float:
        return min(1.0 - 1.0 / (step + 1), self.decay)

    @torch.no_grad()
    def update(self, student: nn.Module, step: int) -> None:
        a = self.alpha(step)
        student = _plain(student)
        s_params = dict(student.named_parameters())
        names, t_params = zip(*self.module.named_parameters())
        # one batched (foreach) update instead of a Python loop over ~200 tensors: same values
        torch._foreach_mul_(list(t_params), a)
        torch._foreach_add_(list(t_params), [s_params[n].detach() for n in names], alpha=1.0 - a)
        s_buffers = dict(student.named_buffers())
        for name, b in self.module.named_buffers():
            if name in s_buffers:
                b.copy_(s_buffers[name])

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


def _plain(module: nn.Module) -> nn.Module:
    """The network inside a DistributedDataParallel wrapper: the teacher copies and averages the
    plain module, so its parameter names (and state dict) are those of single-process training."""
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module
