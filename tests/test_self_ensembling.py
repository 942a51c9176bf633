"""The self-ensembling terms (custom.methods): each definition on small tensors, and the trainer's
EMA teachers of further roles."""

from __future__ import annotations

import pytest
import torch
from test_methods import reference_dice

from custom.methods import BidirectionalCopyPasteTerm, WeakToStrongTerm, copy_paste_pairs, cutmix, random_boxes
from custom.networks import UNeXt
from custom.training.ema import EMATeacher
from custom.training.losses import CrossPseudoSupervisionLoss
from custom.training.terms import IterationContext


def _ctx(net, x, labels, labeled_bs, teacher, seed=0):
    logits = {"cnn": net(x)}
    return IterationContext(
        images=x,
        labels=labels,
        labeled_bs=labeled_bs,
        networks={"cnn": net},
        logits=logits,
        probs={"cnn": torch.softmax(logits["cnn"], 1)},
        iteration=0,
        generator=torch.Generator().manual_seed(seed),
        teachers={"cnn": teacher},
    )


def test_random_boxes_area_position_and_probability():
    g = torch.Generator().manual_seed(0)
    boxes = random_boxes(200, 60, 90, prob=1.0, area=(4 / 9, 4 / 9), ratio=(1.0, 1.0), generator=g)
    assert boxes.shape == (200, 1, 60, 90) and set(boxes.unique().tolist()) == {0.0, 1.0}
    for b in boxes[:, 0]:
        rows, cols = b.any(1).nonzero().flatten(), b.any(0).nonzero().flatten()
        assert (rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1) == (40, 60)  # two thirds of each side
        assert b.sum() == 40 * 60  # one solid rectangle
    # the positions vary and reach both borders
    tops = torch.stack([b.any(1).nonzero()[0, 0] for b in boxes[:, 0]])
    assert tops.min() == 0 and tops.max() == 20
    half = random_boxes(2000, 16, 16, prob=0.5, generator=torch.Generator().manual_seed(1))
    share = (half.flatten(1).sum(1) > 0).float().mean()
    assert 0.45 < share < 0.55


def test_cutmix_moves_pseudo_labels_with_the_pixels():
    """The box that mixes the images mixes the teacher's probabilities, hence its pseudo-labels and
    confidences, exactly: every pixel's target is the one of the image it now shows."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 32, 32, generator=g)
    p = torch.softmax(torch.randn(4, 3, 32, 32, generator=g) * 3, 1)
    term = WeakToStrongTerm(cutmix_prob=1.0, noise_std=0.0, blur_prob=0.0)
    gen = torch.Generator().manual_seed(5)
    x_s, target = term.strong_views(x, p, gen)
    # redraw the same randomness to know the box and the permutation
    gen = torch.Generator().manual_seed(5)
    from custom.methods import strong_intensity

    s = strong_intensity(x, gen, noise_std=0.0, blur_prob=0.0)
    box = random_boxes(4, 32, 32, 1.0, term.cutmix_area, generator=gen)
    perm = torch.randperm(4, generator=gen)
    assert torch.equal(x_s, cutmix(s, s[perm], box))
    inside = box.bool().expand_as(target)
    assert torch.equal(target[inside], p[perm][inside]) and torch.equal(target[~inside], p[~inside])
    assert torch.equal(target.argmax(1), torch.where(box[:, 0].bool(), p[perm].argmax(1), p.argmax(1)))
    assert torch.equal(target.amax(1), torch.where(box[:, 0].bool(), p[perm].amax(1), p.amax(1)))


def test_confidence_gate_keeps_exactly_the_pixels_above_the_threshold():
    """Gated Dice equals the reference Dice computed over the kept pixels only (both the student's
    probabilities and the one-hot pseudo-labels zeroed elsewhere)."""
    g = torch.Generator().manual_seed(0)
    p_t = torch.softmax(torch.randn(2, 3, 8, 8, generator=g) * 2, 1)
    p_s = torch.softmax(torch.randn(2, 3, 8, 8, generator=g), 1)
    thr = 0.7
    keep = (p_t.amax(1, keepdim=True) >= thr).float()
    assert 0 < keep.mean() < 1
    got = CrossPseudoSupervisionLoss(confidence=thr).pseudo(p_s, p_t)
    y = p_t.argmax(1, keepdim=True)
    onehot = torch.nn.functional.one_hot(y[:, 0], 3).permute(0, 3, 1, 2).float() * keep
    ps = p_s * keep
    losses = [
        1 - (2 * (ps[:, c] * onehot[:, c]).sum() + 1e-5) / ((ps[:, c] ** 2).sum() + (onehot[:, c] ** 2).sum() + 1e-5)
        for c in range(3)
    ]
    assert torch.allclose(got, torch.stack(losses).mean(), atol=1e-6)
    # pixels just below the threshold do not count: moving the student there changes nothing
    p_s2 = p_s.clone()
    p_s2[keep.expand_as(p_s) == 0] = 1 / 3
    assert torch.allclose(CrossPseudoSupervisionLoss(confidence=thr).pseudo(p_s2, p_t), got, atol=1e-6)
    assert torch.allclose(CrossPseudoSupervisionLoss().pseudo(p_s, p_t), reference_dice(p_s, y), atol=1e-6)


def test_copy_paste_selects_ground_truth_inside_and_pseudo_labels_outside():
    x_l = torch.full((2, 1, 6, 6), 10.0) + torch.arange(2).view(2, 1, 1, 1)
    y_l = torch.ones(2, 1, 6, 6, dtype=torch.long) * torch.tensor([1, 2]).view(2, 1, 1, 1)
    x_u = torch.full((3, 1, 6, 6), -1.0) - torch.arange(3).view(3, 1, 1, 1)
    y_u = torch.zeros(3, 1, 6, 6, dtype=torch.long)
    box = torch.zeros(3, 1, 6, 6)
    box[:, :, 1:5, 2:6] = 1
    images, targets, gt = copy_paste_pairs(x_l, y_l, x_u, y_u, box)
    assert images.shape == (6, 1, 6, 6) and targets.shape == (6, 1, 6, 6)
    for j in range(3):
        lab = j % 2
        inward, outward = slice(j, j + 1), slice(3 + j, 4 + j)
        b = box[j : j + 1].bool()
        # inward: the labelled box (ground truth) inside an unlabelled image (pseudo-labels outside)
        assert torch.all(images[inward][b] == 10 + lab) and torch.all(images[inward][~b] == -1 - j)
        assert torch.all(targets[inward][b] == y_l[lab, 0, 0, 0]) and torch.all(targets[inward][~b] == 0)
        assert torch.all(gt[inward][b] == 1) and torch.all(gt[inward][~b] == 0)
        # outward: an unlabelled box inside the labelled image
        assert torch.all(images[outward][b] == -1 - j) and torch.all(images[outward][~b] == 10 + lab)
        assert torch.all(targets[outward][~b] == y_l[lab, 0, 0, 0]) and torch.all(targets[outward][b] == 0)
        assert torch.all(gt[outward][b] == 0) and torch.all(gt[outward][~b] == 1)


def test_copy_paste_loss_weights_the_two_kinds_of_pixel():
    torch.manual_seed(0)
    net = UNeXt(1, 3)
    teacher = EMATeacher(net)
    x = torch.rand(4, 1, 32, 32)
    labels = torch.randint(0, 3, (2, 1, 32, 32)).float()
    term = BidirectionalCopyPasteTerm(unlabeled_weight=0.0)
    loss0 = term.loss(_ctx(net, x, labels, 2, teacher))
    term_half = BidirectionalCopyPasteTerm(unlabeled_weight=0.5)
    loss_half = term_half.loss(_ctx(net, x, labels, 2, teacher))
    assert torch.isfinite(loss0) and loss_half > loss0  # the pseudo-labelled pixels add their share
    loss0.backward()
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize("fp_weight", [0.0, 0.5])
def test_weak_to_strong_trains_the_student_never_the_teacher(fp_weight):
    torch.manual_seed(0)
    net = UNeXt(1, 3)
    teacher = EMATeacher(net)
    x = torch.rand(6, 1, 32, 32)
    ctx = _ctx(net, x, torch.zeros(2, 1, 32, 32), 2, teacher)
    term = WeakToStrongTerm(confidence=0.0, fp_weight=fp_weight)
    loss = term.loss(ctx)
    loss.backward()
    assert loss > 0 and torch.isfinite(loss)
    assert all(p.grad is None for p in teacher.parameters())
    assert all(not p.requires_grad for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    # the teacher's pseudo-labels are computed once per iteration and shared by the terms
    assert ctx.teacher_probs("cnn") is ctx.teacher_probs("cnn")


def test_weak_to_strong_fp_stream_uses_feature_dropout():
    torch.manual_seed(0)
    net = UNeXt(1, 2).eval()
    x = torch.rand(2, 1, 32, 32)
    assert torch.equal(net(x), net(x, feature_dropout=0.0))
    assert not torch.allclose(net(x), net(x, feature_dropout=0.5))
    with pytest.raises(ValueError, match="feature_dropout"):
        vit = torch.nn.Conv2d(1, 2, 1)
        WeakToStrongTerm(role="cnn", confidence=0.0).loss(_ctx(vit, x, torch.zeros(1, 1, 32, 32), 1, EMATeacher(vit)))


def test_trainer_updates_and_saves_the_further_teachers():
    from custom.training.losses import SupervisedLoss
    from custom.training.trainer import SemiSupervisedTrainer

    torch.manual_seed(0)
    net = UNeXt(1, 2)
    teacher = EMATeacher(net, decay=0.5)
    before = [p.clone() for p in teacher.parameters()]
    data = [{"image": torch.rand(2, 1, 32, 32), "label": torch.randint(0, 2, (2, 1, 32, 32)).float()}]
    unlabeled = [{"image": torch.rand(4, 1, 32, 32)}]
    trainer = SemiSupervisedTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=data,
        networks={"cnn": net},
        optimizers={"cnn": torch.optim.SGD(net.parameters(), lr=0.1)},
        supervised_loss=SupervisedLoss(),
        unlabeled_data_loader=unlabeled,
        terms=[WeakToStrongTerm(confidence=0.0)],
        teachers={"cnn": teacher},
        seed=0,
        epoch_length=2,
        decollate=False,
    )
    trainer.run()
    after = list(teacher.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after)), "the EMA teacher follows the student"
    state = trainer.extra_state_dict()["teachers"]["cnn"]
    fresh = EMATeacher(UNeXt(1, 2))
    trainer2 = SemiSupervisedTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=data,
        networks={"cnn": UNeXt(1, 2)},
        optimizers={"cnn": torch.optim.SGD(net.parameters(), lr=0.1)},
        supervised_loss=SupervisedLoss(),
        teachers={"cnn": fresh},
    )
    trainer2.load_extra_state_dict({"teachers": {"cnn": state}})
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), teacher.state_dict().values()))
    with pytest.raises(ValueError, match="teachers given for roles"):
        SemiSupervisedTrainer(
            device="cpu",
            max_epochs=1,
            train_data_loader=data,
            networks={"cnn": net},
            optimizers={"cnn": torch.optim.SGD(net.parameters(), lr=0.1)},
            supervised_loss=SupervisedLoss(),
            teachers={"transformer": teacher},
        )


def test_frozen_norm_statistics_keeps_running_statistics_but_normalises_with_the_batch():
    from custom.methods import frozen_norm_statistics

    torch.manual_seed(0)
    net = UNeXt(1, 2).train()
    state = {k: v.clone() for k, v in net.state_dict().items() if "running" in k}
    x = torch.rand(2, 1, 32, 32) * 5
    with frozen_norm_statistics(net):
        out = net(x)
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items() if "running" in k)
    assert torch.allclose(out, net(x), atol=1e-5), "batch statistics are still used"
    assert any(not torch.equal(state[k], v) for k, v in net.state_dict().items() if "running_mean" in k)
    assert all(m.momentum == 0.1 for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
