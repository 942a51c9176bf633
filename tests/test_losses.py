"""Loss terms, mixup and schedules against hand-computed values on small tensors."""

from __future__ import annotations

import math

import pytest
import torch

from custom.training.losses import (
    CrossPseudoSupervisionLoss,
    InformationDivergenceLoss,
    InterpolationConsistencyLoss,
    SupervisedLoss,
    entropy,
    kl_divergence,
    mutual_information_gap,
)
from custom.training.mixup import interpolation_mixup, sample_mix_lambda
from custom.training.schedules import PolyLRLambda, poly_lr, ramp_weight, sigmoid_rampup

S = 1e-5


def reference_dice(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The reference soft Dice written out: per class over batch and pixels, squared
    denominator, background included, mean over classes."""
    k = p.shape[1]
    onehot = torch.nn.functional.one_hot(y[:, 0].long(), k).permute(0, 3, 1, 2).float()
    losses = []
    for c in range(k):
        inter = (p[:, c] * onehot[:, c]).sum()
        losses.append(1 - (2 * inter + S) / ((p[:, c] ** 2).sum() + (onehot[:, c] ** 2).sum() + S))
    return torch.stack(losses).mean()


def test_supervised_loss_is_half_ce_plus_half_reference_dice():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, 4)
    y = torch.randint(0, 3, (2, 1, 5, 4))
    ce = torch.nn.functional.cross_entropy(logits, y[:, 0])
    dice = reference_dice(torch.softmax(logits, 1), y)
    assert torch.allclose(SupervisedLoss()(logits, y), 0.5 * ce + 0.5 * dice, atol=1e-6)


def test_supervised_loss_hand_value_on_two_pixels():
    # two pixels, two classes; logits chosen so that softmax is (0.5, 0.5) everywhere
    logits = torch.zeros(1, 2, 1, 2)
    y = torch.tensor([[[[0, 1]]]])
    ce = math.log(2)
    # per class: intersection 0.5, sum p^2 = 0.5, sum y^2 = 1 -> 1 - (1 + S) / (1.5 + S)
    dice = 1 - (1 + S) / (1.5 + S)
    assert SupervisedLoss()(logits, y).item() == pytest.approx(0.5 * ce + 0.5 * dice, abs=1e-6)


def test_cps_uses_the_other_networks_hard_labels_and_detaches_them():
    torch.manual_seed(1)
    p1 = torch.softmax(torch.randn(3, 3, 4, 4), 1).requires_grad_()
    p2 = torch.softmax(torch.randn(3, 3, 4, 4), 1).requires_grad_()
    loss = CrossPseudoSupervisionLoss()(p1, p2)
    expected = reference_dice(p1, p2.argmax(1, keepdim=True)) + reference_dice(p2, p1.argmax(1, keepdim=True))
    assert torch.allclose(loss, expected, atol=1e-6)
    # the pseudo-label path carries no gradient: d L / d p1 comes only from Dice(p1, y2)
    (g1,) = torch.autograd.grad(loss, p1, retain_graph=True)
    (g1_direct,) = torch.autograd.grad(reference_dice(p1, p2.argmax(1, keepdim=True)), p1)
    assert torch.allclose(g1, g1_direct, atol=1e-7)


def test_cps_of_agreeing_confident_networks_is_near_zero():
    y = torch.randint(0, 2, (2, 4, 4))
    onehot = torch.nn.functional.one_hot(y, 2).permute(0, 3, 1, 2).float()
    assert CrossPseudoSupervisionLoss()(onehot, onehot).item() == pytest.approx(0.0, abs=1e-6)


def test_identical_predictions_give_zero_kl_and_mig_equal_to_entropy():
    p = torch.softmax(torch.randn(2, 3, 4, 5), 1)
    assert torch.allclose(kl_divergence(p, p), torch.zeros(2, 4, 5), atol=1e-6)
    assert torch.allclose(mutual_information_gap(p, p), entropy(p), atol=1e-6)
    loss = InformationDivergenceLoss()(p, p)
    assert loss.item() == pytest.approx(entropy(p).mean().item(), abs=1e-6)


def test_opposite_one_hot_predictions_give_mig_minus_ln2():
    p1 = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    p2 = torch.tensor([0.0, 1.0]).view(1, 2, 1, 1)
    assert mutual_information_gap(p1, p2).item() == pytest.approx(-math.log(2), abs=1e-6)
    # KL(p1 || p2) = 1 * log((1 + eps) / eps)
    assert kl_divergence(p1, p2).item() == pytest.approx(math.log((1 + 1e-8) / 1e-8), rel=1e-5)


def test_kl_hand_value_and_direction():
    p1 = torch.tensor([0.8, 0.2]).view(1, 2, 1, 1)
    p2 = torch.tensor([0.5, 0.5]).view(1, 2, 1, 1)
    expected = 0.8 * math.log(0.8 / 0.5) + 0.2 * math.log(0.2 / 0.5)
    assert kl_divergence(p1, p2).item() == pytest.approx(expected, rel=1e-5)
    reverse = 0.5 * math.log(0.5 / 0.8) + 0.5 * math.log(0.5 / 0.2)
    assert kl_divergence(p2, p1).item() == pytest.approx(reverse, rel=1e-5)
    # MIG by hand: H1 + H2 - H(mean)
    h = lambda q: -sum(x * math.log(x) for x in q)  # noqa: E731
    mig = h([0.8, 0.2]) + h([0.5, 0.5]) - h([0.65, 0.35])
    assert mutual_information_gap(p1, p2).item() == pytest.approx(mig, rel=1e-5)
    loss = InformationDivergenceLoss()(p1, p2)
    assert loss.item() == pytest.approx(expected + mig, rel=1e-5)


def test_divergence_terms_switch_off_and_weight():
    torch.manual_seed(2)
    p1, p2 = torch.softmax(torch.randn(2, 3, 4, 4), 1), torch.softmax(torch.randn(2, 3, 4, 4), 1)
    kl, mig = kl_divergence(p1, p2).mean(), mutual_information_gap(p1, p2).mean()
    assert InformationDivergenceLoss(kl_weight=0)(p1, p2).item() == pytest.approx(mig.item(), abs=1e-6)
    assert InformationDivergenceLoss(mig_weight=0)(p1, p2).item() == pytest.approx(kl.item(), abs=1e-6)
    assert InformationDivergenceLoss(kl_weight=2, mig_weight=0.5)(p1, p2).item() == pytest.approx(
        (2 * kl + 0.5 * mig).item(), abs=1e-6
    )


def test_divergence_reductions():
    torch.manual_seed(3)
    p1, p2 = torch.softmax(torch.randn(2, 3, 4, 5), 1), torch.softmax(torch.randn(2, 3, 4, 5), 1)
    per_pixel = InformationDivergenceLoss(reduction="none")(p1, p2)
    per_image = InformationDivergenceLoss(reduction="image")(p1, p2)
    assert per_pixel.shape == (2, 4, 5) and per_image.shape == (2,)
    assert torch.allclose(per_image, per_pixel.flatten(1).mean(1))
    assert torch.allclose(per_pixel.mean(), InformationDivergenceLoss()(p1, p2))
    with pytest.raises(ValueError, match="reduction"):
        InformationDivergenceLoss(reduction="sum")


def test_divergence_is_finite_with_exact_zeros_and_ones():
    p1 = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).T.reshape(1, 3, 1, 2).contiguous().requires_grad_()
    p2 = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]).T.reshape(1, 3, 1, 2).contiguous().requires_grad_()
    loss = InformationDivergenceLoss()(p1, p2)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(p1.grad).all() and torch.isfinite(p2.grad).all()


def test_divergence_gradients_reach_both_networks_inputs():
    from custom.networks import SwinUnet, UNeXt

    torch.manual_seed(0)
    cnn = UNeXt(1, 3)
    vit = SwinUnet(img_size=64, in_channels=1, out_channels=3, embed_dim=24, num_heads=(1, 2, 3, 4), window_size=4)
    x1 = torch.rand(2, 1, 64, 64, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_()
    loss = InformationDivergenceLoss()(torch.softmax(cnn(x1), 1), torch.softmax(vit(x2), 1))
    loss.backward()
    assert x1.grad.abs().sum() > 0 and x2.grad.abs().sum() > 0
    assert cnn.final.weight.grad.abs().sum() > 0 and vit.head.weight.grad.abs().sum() > 0


def test_ict_loss_is_mean_squared_difference():
    a, b = torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4)
    assert torch.allclose(InterpolationConsistencyLoss()(a, b), ((a - b) ** 2).mean())
    assert InterpolationConsistencyLoss(reduction="image")(a, b).shape == (2,)


def test_mixup_pairs_halves_with_beta_weights():
    x = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 1, 2, 2).contiguous()
    probs = torch.softmax(torch.randn(4, 2, 2, 2), 1)
    g = torch.Generator().manual_seed(0)
    x_mix, target, lam = interpolation_mixup(x, probs, alpha=0.5, generator=g)
    assert lam.shape == (2, 1, 1, 1) and ((lam >= 0) & (lam <= 1)).all()
    assert torch.allclose(x_mix, (1 - lam) * x[:2] + lam * x[2:])
    assert torch.allclose(target, (1 - lam) * probs[:2] + lam * probs[2:])
    # the teacher may be given as a function; it runs without gradients
    calls = []
    fn = lambda t: (calls.append(torch.is_grad_enabled()), probs)[1]  # noqa: E731
    interpolation_mixup(x, fn, generator=torch.Generator().manual_seed(0))
    assert calls == [False]


def test_mix_lambda_follows_beta_half_half():
    lam = sample_mix_lambda(20000, 0.5, torch.Generator().manual_seed(0)).flatten()
    # Beta(0.5, 0.5): mean 1/2, variance 1/8, U-shaped (more mass near 0 and 1 than the middle)
    assert lam.mean().item() == pytest.approx(0.5, abs=0.01)
    assert lam.var().item() == pytest.approx(0.125, abs=0.005)
    assert ((lam < 0.1) | (lam > 0.9)).float().mean() > ((lam > 0.4) & (lam < 0.6)).float().mean()
    a = sample_mix_lambda(5, 0.5, torch.Generator().manual_seed(7))
    b = sample_mix_lambda(5, 0.5, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_sigmoid_rampup_and_ramp_weight():
    assert sigmoid_rampup(0, 200) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(100, 200) == pytest.approx(math.exp(-5 * 0.25))
    assert sigmoid_rampup(500, 200) == 1.0 and sigmoid_rampup(3, 0) == 1.0
    # the reference: r = 150 for a 30000-iteration run -> s = t // 150
    for t in (0, 149, 150, 7777, 29999, 30000):
        assert ramp_weight(t, 1.0, 30000) == pytest.approx(sigmoid_rampup(t // 150, 200))
    assert ramp_weight(10, 0.3, 100, start=20) == 0.0
    assert ramp_weight(100, 0.3, 100, start=20) == pytest.approx(0.3)


def test_poly_lr():
    assert poly_lr(0.01, 0, 100) == pytest.approx(0.01)
    assert poly_lr(0.01, 50, 100) == pytest.approx(0.01 * 0.5**0.9)
    assert poly_lr(0.01, 150, 100) == 0.0
    assert PolyLRLambda(100)(50) == pytest.approx(0.5**0.9)


# ------------------------------------------------------------ confidence-gated cross terms (issue 10)


def _probs(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(3 * torch.randn(shape, generator=g), dim=1)


def test_gated_cps_is_the_reference_dice_on_the_teachers_confident_pixels_only():
    student, teacher = _probs((2, 3, 6, 5), 0), _probs((2, 3, 6, 5), 1)
    loss = CrossPseudoSupervisionLoss(confidence=0.8)
    keep = teacher.amax(dim=1) >= 0.8
    assert 0 < int(keep.sum()) < keep.numel()  # the draw has pixels on both sides of the gate
    # the reference Dice over the kept pixels alone (gathered into a 1 x K x N x 1 "image")
    p_kept = student.permute(1, 0, 2, 3)[:, keep].T[None, :, :, None].transpose(1, 2)
    y_kept = teacher.argmax(dim=1)[keep][None, None, :, None]
    assert torch.allclose(loss.pseudo(student, teacher), reference_dice(p_kept, y_kept), atol=1e-6)
    # the student's values on unconfident pixels do not matter; on confident ones they do
    other = student.clone()
    other.permute(0, 2, 3, 1)[~keep] = torch.tensor([1.0, 0.0, 0.0])
    assert torch.allclose(loss.pseudo(other, teacher), loss.pseudo(student, teacher), atol=1e-6)
    other.permute(0, 2, 3, 1)[keep] = torch.tensor([0.0, 0.0, 1.0])
    assert not torch.allclose(loss.pseudo(other, teacher), loss.pseudo(student, teacher))
    # gate 0 is the published CPS; a gate nothing passes gives 0
    assert torch.allclose(
        CrossPseudoSupervisionLoss(confidence=0.0).pseudo(student, teacher),
        reference_dice(student, teacher.argmax(1, keepdim=True)),
    )
    assert (
        float(CrossPseudoSupervisionLoss(confidence=0.999999).pseudo(student, torch.full_like(teacher, 1 / 3))) == 0.0
    )
    with pytest.raises(ValueError, match="confidence"):
        CrossPseudoSupervisionLoss(confidence=1.0)


def test_gated_cps_gradient_reaches_the_student_only_on_confident_pixels():
    student, teacher = _probs((1, 2, 4, 4), 2).requires_grad_(True), _probs((1, 2, 4, 4), 3)
    CrossPseudoSupervisionLoss(confidence=0.9).pseudo(student, teacher).backward()
    keep = (teacher.amax(dim=1) >= 0.9)[:, None].expand_as(student)
    assert student.grad[~keep].abs().max() == 0 and student.grad[keep].abs().max() > 0


def _context(p_cnn, p_vit, leader="cnn", labeled_bs=0):
    from custom.training.terms import IterationContext

    return IterationContext(
        images=torch.zeros(p_cnn.shape[0], 1, *p_cnn.shape[2:]),
        labels=torch.zeros(0),
        labeled_bs=labeled_bs,
        networks={},
        logits={},
        probs={"cnn": p_cnn, "transformer": p_vit},
        iteration=0,
        leader=leader,
    )


@pytest.mark.parametrize("direction", ["follower", "both"])
def test_gated_divergence_term_averages_kl_and_mig_over_the_confident_pixels(direction):
    from custom.training.terms import InformationDivergenceTerm

    p_cnn, p_vit = _probs((2, 3, 5, 5), 4).requires_grad_(True), _probs((2, 3, 5, 5), 5).requires_grad_(True)
    term = InformationDivergenceTerm(direction=direction, confidence=0.7)
    value = term.loss(_context(p_cnn, p_vit, leader="transformer"))
    if direction == "follower":  # the leader (transformer) is the detached target, its confidence the gate
        keep = p_vit.amax(dim=1) >= 0.7
        per_pixel = kl_divergence(p_vit, p_cnn) + mutual_information_gap(p_vit, p_cnn)
    else:  # the published direction KL(p_cnn || p_vit); pixels where either network is confident
        keep = (p_cnn.amax(dim=1) >= 0.7) | (p_vit.amax(dim=1) >= 0.7)
        per_pixel = kl_divergence(p_cnn, p_vit) + mutual_information_gap(p_cnn, p_vit)
    assert 0 < int(keep.sum()) < keep.numel()
    assert torch.allclose(value, per_pixel[keep].mean(), atol=1e-6)
    value.backward()
    if direction == "follower":
        assert p_vit.grad is None or p_vit.grad.abs().max() == 0
    else:
        assert p_vit.grad.abs().max() > 0
    assert p_cnn.grad.abs().max() > 0
    # gate 0: every pixel, the plain mean
    plain = InformationDivergenceTerm(direction=direction).loss(_context(p_cnn.detach(), p_vit.detach(), "transformer"))
    assert torch.allclose(plain, per_pixel.detach().mean(), atol=1e-6)


def test_ensemble_direction_teaches_both_networks_the_detached_mean_on_its_confident_pixels():
    from custom.training.terms import CrossPseudoSupervisionTerm, InformationDivergenceTerm

    p_cnn, p_vit = _probs((2, 3, 5, 5), 6).requires_grad_(True), _probs((2, 3, 5, 5), 7).requires_grad_(True)
    mean = 0.5 * (p_cnn.detach() + p_vit.detach())
    keep = mean.amax(dim=1) >= 0.6
    assert 0 < int(keep.sum()) < keep.numel()
    ctx = _context(p_cnn, p_vit)
    cps = CrossPseudoSupervisionTerm(direction="ensemble", confidence=0.6).loss(ctx)
    gated = CrossPseudoSupervisionLoss(confidence=0.6)
    assert torch.allclose(cps, gated.pseudo(p_cnn, mean) + gated.pseudo(p_vit, mean))
    div = InformationDivergenceTerm(direction="ensemble", confidence=0.6).loss(ctx)
    expected = sum(((kl_divergence(mean, p) + mutual_information_gap(mean, p))[keep]).mean() for p in (p_cnn, p_vit))
    assert torch.allclose(div, expected, atol=1e-6)
    (cps + div).backward()
    assert p_cnn.grad.abs().max() > 0 and p_vit.grad.abs().max() > 0  # both networks learn


def test_self_training_term_is_gated_dice_of_the_perturbed_prediction_against_the_clean_pseudo_labels():
    from custom.methods.ablations import SelfTrainingTerm
    from custom.methods.perturb import perturb_intensity
    from custom.training.terms import IterationContext

    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 3, 3, padding=1)
    x = torch.rand(6, 1, 8, 8)
    with torch.no_grad():
        p_clean = torch.softmax(3 * net(x), 1)  # sharper than the net itself: confident pixels exist
    term = SelfTrainingTerm(roles=("cnn",), confidence=0.7, noise_std=0.05)
    ctx = IterationContext(
        images=x,
        labels=torch.zeros(0),
        labeled_bs=2,
        networks={"cnn": net},
        logits={},
        probs={"cnn": p_clean},
        iteration=0,
        generator=torch.Generator().manual_seed(3),
    )
    torch.manual_seed(5)
    value = term.loss(ctx)
    torch.manual_seed(5)
    x_s = perturb_intensity(x[2:], noise_std=0.05, generator=torch.Generator().manual_seed(3))
    expected = CrossPseudoSupervisionLoss(confidence=0.7).pseudo(torch.softmax(net(x_s), 1), p_clean[2:])
    assert torch.allclose(value, expected)
    assert 0 < float((p_clean[2:].amax(1) >= 0.7).float().mean()) < 1
    value.backward()
    assert net.weight.grad.abs().max() > 0
    # the perturbation: within [0, 1], different from the input, the same for the same draws
    assert 0 <= float(x_s.min()) and float(x_s.max()) <= 1 and not torch.allclose(x_s, x[2:])
    assert SelfTrainingTerm.own_graph


def test_reverse_kl_and_mutual_directions_of_the_divergence_term():
    from custom.methods.ablations import ReverseKLDivergenceTerm
    from custom.training.terms import CrossPseudoSupervisionTerm, InformationDivergenceTerm

    p_cnn, p_vit = _probs((2, 3, 4, 4), 8).requires_grad_(True), _probs((2, 3, 4, 4), 9).requires_grad_(True)
    ctx = _context(p_cnn, p_vit, leader="cnn")
    reverse = ReverseKLDivergenceTerm(direction="follower").loss(ctx)  # ablations/reverse_kl.yaml
    expected = (kl_divergence(p_vit, p_cnn) + mutual_information_gap(p_cnn, p_vit)).mean()  # KL(follower || leader)
    assert torch.allclose(reverse, expected, atol=1e-6)
    assert not torch.allclose(reverse, InformationDivergenceTerm(direction="follower").loss(ctx))
    mutual = InformationDivergenceTerm(direction="mutual", mig_weight=0.0).loss(ctx)
    assert torch.allclose(mutual, kl_divergence(p_cnn, p_vit).mean() + kl_divergence(p_vit, p_cnn).mean(), atol=1e-6)
    # mutual: each network is moved by its own target term only (the targets are detached)
    grad_cnn = torch.autograd.grad(mutual, p_cnn, retain_graph=True)[0]
    alone = torch.autograd.grad(kl_divergence(p_vit.detach(), p_cnn).mean(), p_cnn)[0]
    assert torch.allclose(grad_cnn, alone, atol=1e-7)
    # one vocabulary: the CPS term's "mutual" is "both", its pseudo-labels being always detached
    assert torch.equal(CrossPseudoSupervisionTerm(direction="mutual").loss(ctx), CrossPseudoSupervisionTerm().loss(ctx))


def test_hard_labels_are_the_argmax_with_its_ties():
    """hard_labels takes max(dim=1).indices for speed: the same classes as argmax, ties included
    (the first maximal class)."""
    from custom.training.losses import class_thresholds, hard_labels

    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(3, 4, 9, 7, generator=g), 1)
    p[0, :, 0, 0] = 0.25  # a four-way tie
    p[1, 1:3, 2, 2] = 0.5
    p[1, [0, 3], 2, 2] = 0.0  # a tie of classes 1 and 2
    assert torch.equal(hard_labels(p), p.argmax(1, keepdim=True))
    assert int(hard_labels(p)[0, 0, 0, 0]) == 0 and int(hard_labels(p)[1, 0, 2, 2]) == 1
    label = p.argmax(1).flatten()
    means = torch.stack([p.amax(1).flatten()[label == c].mean() for c in range(4)])
    torch.testing.assert_close(class_thresholds(p, 0.9), 0.9 * means / means.max())
