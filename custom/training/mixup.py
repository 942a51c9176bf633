"""Interpolation-consistency mixup (ICT, method.md 3) with an EMA-teacher target."""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["sample_mix_lambda", "mix_pairs", "interpolation_mixup"]


def sample_mix_lambda(
    n: int, alpha: float = 0.5, generator: torch.Generator | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """``n`` mixing weights ``lambda ~ Beta(alpha, alpha)``, shaped ``n x 1 x 1 x 1``.

    Drawn as ``G1 / (G1 + G2)`` with ``G ~ Gamma(alpha)`` so that an explicit ``generator``
    makes the draw reproducible (``torch.distributions`` has no generator argument).
    """
    if alpha <= 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    conc = torch.full((2, n), float(alpha))
    g = torch._standard_gamma(conc, generator=generator) if generator is not None else torch._standard_gamma(conc)
    lam = g[0] / (g[0] + g[1]).clamp_min(1e-12)
    return lam.view(n, 1, 1, 1).to(device) if device is not None else lam.view(n, 1, 1, 1)


def mix_pairs(a: torch.Tensor, b: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """``(1 - lambda) a + lambda b`` per pair."""
    return (1 - lam) * a + lam * b


def interpolation_mixup(
    x_u: torch.Tensor,
    teacher_probs: torch.Tensor | Callable[[torch.Tensor], torch.Tensor],
    alpha: float = 0.5,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split the unlabelled batch into halves ``ua``, ``ub`` and mix them.

    Args:
        x_u: unlabelled images ``U x C x H x W`` (``U`` even; an odd last image is left out).
        teacher_probs: the teacher's softmax on ``x_u`` (``U x K x H x W``), or a function
            computing it; evaluated once on the whole unlabelled batch, which equals
            evaluating it on ``ua`` and ``ub`` separately.
        alpha: the Beta(alpha, alpha) concentration (0.5 in the reference).

    Returns:
        ``x_mix = (1 - lambda) ua + lambda ub``,
        ``target = (1 - lambda) p_t(ua) + lambda p_t(ub)`` (detached), and ``lambda``.
    """
    half = x_u.shape[0] // 2
    if half == 0:
        raise ValueError(f"interpolation mixup needs at least 2 unlabelled images, got {x_u.shape[0]}")
    with torch.no_grad():
        probs = teacher_probs(x_u) if callable(teacher_probs) else teacher_probs
        probs = probs.detach()
    lam = sample_mix_lambda(half, alpha, generator).to(device=x_u.device, dtype=x_u.dtype)
    x_mix = mix_pairs(x_u[:half], x_u[half : 2 * half], lam)
    target = mix_pairs(probs[:half], probs[half : 2 * half], lam)
    return x_mix, target, lam
