"""The comparison methods: each term against its definition on small tensors, and every
method config end to end (two iterations) through ``monai.bundle``."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
import torch.nn.functional as F
from conftest import CONFIGS, tiny_overrides, train_config_files

from custom.data.datalist import labeled_union_datalist
from custom.methods.adversarial import AdversarialTerm, ConvDiscriminator
from custom.methods.co_training import DeepCoTrainingTerm
from custom.methods.mean_teacher import MeanTeacherTerm, UncertaintyAwareMeanTeacherTerm, clipped_noise
from custom.tools import compare
from custom.training.ema import EMATeacher
from custom.training.losses import entropy
from custom.training.mixup import interpolation_mixup
from custom.training.terms import CrossPseudoSupervisionTerm, InterpolationConsistencyTerm, IterationContext
from custom.utils.paths import DEFAULT_METHOD

S = 1e-5
METHODS = compare.method_names()  # the comparison's method list; every method file is in it (test below)


def reference_dice(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The reference soft Dice written out: per class over batch and pixels, squared
    denominator, background included, mean over classes."""
    k = p.shape[1]
    onehot = F.one_hot(y[:, 0].long(), k).permute(0, 3, 1, 2).float()
    losses = []
    for c in range(k):
        inter = (p[:, c] * onehot[:, c]).sum()
        losses.append(1 - (2 * inter + S) / ((p[:, c] ** 2).sum() + (onehot[:, c] ** 2).sum() + S))
    return torch.stack(losses).mean()


def tiny_net(seed: int, classes: int = 2) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, classes, 1))


def context(
    networks: dict,
    x: torch.Tensor,
    labeled_bs: int = 2,
    teacher=None,
    iteration: int = 0,
    seed: int = 0,
    labels: torch.Tensor | None = None,
) -> IterationContext:
    logits = {role: net(x) for role, net in networks.items()}
    if labels is None:
        labels = torch.zeros(labeled_bs, 1, *x.shape[2:])
    return IterationContext(
        images=x,
        labels=labels,
        labeled_bs=labeled_bs,
        networks=networks,
        logits=logits,
        probs={r: torch.softmax(v, 1) for r, v in logits.items()},
        teachers={"cnn": teacher} if teacher is not None else {},
        iteration=iteration,
        generator=torch.Generator().manual_seed(seed),
    )


def images(n: int = 6, size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------- terms


def test_clipped_noise_is_bounded_and_reproducible():
    x = torch.zeros(4, 1, 16, 16)
    a = clipped_noise(x, 0.1, 0.2, torch.Generator().manual_seed(3))
    b = clipped_noise(x, 0.1, 0.2, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.abs().max() <= 0.2 and a.std() > 0.05
    assert torch.equal(clipped_noise(x, 0.0), x)


def test_mean_teacher_is_zero_when_student_equals_teacher_and_trains_only_the_student():
    net = tiny_net(0)
    teacher = EMATeacher(net)
    teacher.module.eval()
    net.eval()  # the same mode as the teacher: identical outputs
    x = images()
    ctx = context({"cnn": net}, x, teacher=teacher)
    assert MeanTeacherTerm(noise_std=0.0).loss(ctx).item() == pytest.approx(0.0, abs=1e-12)
    loss = MeanTeacherTerm(noise_std=0.1).loss(ctx)  # a noisy teacher view differs
    assert loss.item() > 0
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())
    assert all(p.grad is None for p in teacher.module.parameters())
    # the value is the mean squared difference of probabilities on the unlabelled part only
    gen = torch.Generator().manual_seed(0)
    noisy = x[2:] + clipped_noise(x[2:], 0.1, 0.2, gen)
    expected = torch.mean((torch.softmax(net(x[2:]), 1) - torch.softmax(teacher(noisy), 1)) ** 2)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


class _FixedTeacher(torch.nn.Module):
    """Logits confident (class 1) on the left half of the image, uniform on the right half."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[0], 2, *x.shape[2:])
        out[:, 1, :, : x.shape[-1] // 2] = 10.0
        return out


def test_uamt_masks_uncertain_pixels_and_its_threshold_ramps_to_ln_k():
    x = images(6, 8)
    net = tiny_net(1)
    term = UncertaintyAwareMeanTeacherTerm(noise_std=0.0, passes=4, total_iterations=100)
    ctx = context({"cnn": net}, x, teacher=_FixedTeacher(), iteration=0)
    loss = term.loss(ctx)
    assert term.last_mask_fraction == pytest.approx(0.5)  # the uniform half (entropy ln 2) is masked out
    p_s, p_t = ctx.unlabeled_probs("cnn"), torch.softmax(_FixedTeacher()(x[2:]), 1)
    left = slice(0, 4)
    expected = ((p_s - p_t) ** 2)[..., left].sum() / (2 * p_s[..., left].numel() / 2)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert term.threshold(0, 2) == pytest.approx((0.75 + 0.25 * math.exp(-5)) * math.log(2))
    assert term.threshold(100, 3) == pytest.approx(math.log(3))
    # every pixel uncertain: the loss is 0, not nan
    uniform = UncertaintyAwareMeanTeacherTerm(noise_std=0.0, passes=2, total_iterations=100)
    ctx_u = context({"cnn": net}, x, teacher=lambda z: torch.zeros(z.shape[0], 2, *z.shape[2:]))
    assert uniform.loss(ctx_u).item() == 0.0 and uniform.last_mask_fraction == 0.0


def test_ict_term_is_the_mixup_consistency_on_the_cnn():
    net, x = tiny_net(2), images()
    teacher = EMATeacher(tiny_net(3))
    term = InterpolationConsistencyTerm(roles=("cnn",), alpha=0.2)  # methods/ict.yaml
    assert term.name == "ict"
    ctx = context({"cnn": net}, x, teacher=teacher, seed=5)
    loss = term.loss(ctx)
    x_mix, target, _ = interpolation_mixup(
        x[2:], lambda z: torch.softmax(teacher(z), 1), 0.2, torch.Generator().manual_seed(5)
    )
    expected = torch.mean((torch.softmax(net(x_mix), 1) - target) ** 2)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_dan_steps_its_discriminator_and_gives_gradient_only_to_the_segmenter():
    torch.manual_seed(0)
    seg, x = tiny_net(4), images(6, 16)
    disc = ConvDiscriminator(num_classes=2, in_channels=1, ndf=4)
    optimizer = torch.optim.Adam(disc.parameters(), lr=1e-2)
    term = AdversarialTerm(disc, optimizer)
    before = [p.detach().clone() for p in disc.parameters()]
    ctx = context({"cnn": seg}, x)
    term.loss(ctx)
    assert all(torch.equal(a, b) for a, b in zip(before, disc.parameters())), "the loss does not step D"
    d_loss = term.discriminator_step(ctx)  # the trainer's explicit step, before the loss
    assert any(not torch.equal(a, b) for a, b in zip(before, disc.parameters())), "the discriminator stepped"
    assert float(d_loss) == term.last_discriminator_loss
    loss = term.loss(ctx)
    assert math.isfinite(term.last_discriminator_loss)
    d_grads = [None if p.grad is None else p.grad.clone() for p in disc.parameters()]
    loss.backward()
    for g0, p in zip(d_grads, disc.parameters()):  # the adversarial loss adds nothing to D's gradients
        assert (g0 is None and p.grad is None) or torch.equal(g0, p.grad)
    assert all(p.requires_grad for p in disc.parameters()), "D's parameters are trainable again afterwards"
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in seg.parameters())
    # the value: CE of D's eval-mode logits on the unlabelled predictions against "labelled" (1)
    disc.eval()
    with torch.no_grad():
        expected = F.cross_entropy(disc(ctx.unlabeled_probs("cnn"), x[2:]), torch.ones(4, dtype=torch.long))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_discriminator_takes_any_size_divisible_by_16():
    disc = ConvDiscriminator(num_classes=3, in_channels=1, ndf=4)
    assert disc(torch.rand(2, 3, 32, 48), torch.rand(2, 1, 32, 48)).shape == (2, 2)


def test_cps_term_with_two_roles_equals_the_hand_computed_dice_sum():
    x = images()
    nets = {"cnn": tiny_net(5), "cnn2": tiny_net(6)}
    ctx = context(nets, x)
    term = CrossPseudoSupervisionTerm(roles=("cnn", "cnn2"))  # methods/cps.yaml: both directions
    loss = term.loss(ctx)
    p1, p2 = ctx.unlabeled_probs("cnn"), ctx.unlabeled_probs("cnn2")
    expected = reference_dice(p1, p2.argmax(1, keepdim=True)) + reference_dice(p2, p1.argmax(1, keepdim=True))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    ce = CrossPseudoSupervisionTerm(roles=("cnn", "cnn2"), dice_weight=0.0, ce_weight=1.0).loss(ctx)
    expected_ce = F.cross_entropy(ctx.logits["cnn"][2:], p2.argmax(1)) + F.cross_entropy(
        ctx.logits["cnn2"][2:], p1.argmax(1)
    )
    assert ce.item() == pytest.approx(expected_ce.item(), rel=1e-6)


def test_cross_teaching_learns_from_detached_hard_labels():
    x = images()
    logits = {
        "cnn": torch.randn(6, 3, 8, 8, requires_grad=True),
        "transformer": torch.randn(6, 3, 8, 8, requires_grad=True),
    }
    probs = {r: torch.softmax(v, 1) for r, v in logits.items()}
    ctx = IterationContext(
        images=x,
        labels=torch.zeros(2, 1, 8, 8),
        labeled_bs=2,
        networks={},
        logits=logits,
        probs=probs,
        iteration=0,
    )
    loss = CrossPseudoSupervisionTerm(roles=("cnn", "transformer"), name="ct").loss(ctx)  # cross_teaching.yaml
    pc, pt = probs["cnn"][2:], probs["transformer"][2:]
    yc, yt = pc.detach().argmax(1, keepdim=True), pt.detach().argmax(1, keepdim=True)
    assert loss.item() == pytest.approx((reference_dice(pc, yt) + reference_dice(pt, yc)).item(), rel=1e-6)
    # the gradient into the CNN comes only from Dice(p_cnn, y_transformer): its own labels carry none
    (g_total,) = torch.autograd.grad(loss, logits["cnn"])
    (g_direct,) = torch.autograd.grad(reference_dice(torch.softmax(logits["cnn"], 1)[2:], yt), logits["cnn"])
    assert torch.allclose(g_total, g_direct, atol=1e-7)
    assert g_total[:2].abs().sum() == 0  # labelled images are not part of the term
    with_ce = CrossPseudoSupervisionTerm(roles=("cnn", "transformer"), ce_weight=0.5).loss(ctx)
    ce = F.cross_entropy(logits["cnn"][2:], yt[:, 0]) + F.cross_entropy(logits["transformer"][2:], yc[:, 0])
    assert with_ce.item() == pytest.approx((loss + 0.5 * ce).item(), rel=1e-6)


def test_dct_is_zero_for_identical_rotation_equivariant_networks_and_positive_otherwise():
    x = images(6, 8)
    torch.manual_seed(7)
    pointwise = torch.nn.Conv2d(1, 2, 1)  # a 1x1 convolution commutes with rotations
    same = {"cnn": pointwise, "cnn2": pointwise}
    term = DeepCoTrainingTerm()
    assert term.loss(context(same, x)).item() == pytest.approx(0.0, abs=1e-7)
    assert term.last_rotation in (1, 2, 3)
    different = {"cnn": tiny_net(8), "cnn2": tiny_net(9)}
    ctx = context(different, x, seed=11)
    loss = DeepCoTrainingTerm().loss(ctx)
    k = int(DeepCoTrainingTerm().draw_rotation(torch.Generator().manual_seed(11)))
    pa, pb = ctx.unlabeled_probs("cnn"), ctx.unlabeled_probs("cnn2")
    cot = (entropy(0.5 * (pa + pb)) - 0.5 * (entropy(pa) + entropy(pb))).mean()
    xr = torch.rot90(x[2:], k, (2, 3))
    view = torch.mean((torch.softmax(different["cnn"](xr), 1) - torch.rot90(pb, k, (2, 3))) ** 2) + torch.mean(
        (torch.softmax(different["cnn2"](xr), 1) - torch.rot90(pa, k, (2, 3))) ** 2
    )
    assert loss.item() == pytest.approx((cot + view).item(), rel=1e-5)
    assert cot.item() > 0 and view.item() > 0


def _datalist(tmp_path, unlabeled):
    doc = {"training": [{"image": "images/a.png", "label": "labels/a.png"}], "unlabeled": unlabeled}
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps(doc))
    return str(path)


def test_fully_supervised_list_adds_unlabelled_masks_and_fails_clearly_when_hidden(tmp_path):
    path = _datalist(
        tmp_path,
        [{"image": "images/b.png", "label": "labels/b.png"}, {"image": "images/c.png", "label": "labels/c.png"}],
    )
    entries = labeled_union_datalist(path, str(tmp_path))
    assert [e["label"] for e in entries] == [str(tmp_path / f"labels/{n}.png") for n in "abc"]
    hidden = _datalist(tmp_path, [{"image": "images/b.png"}])
    with pytest.raises(ValueError, match="hide-unlabeled-masks"):
        labeled_union_datalist(hidden, str(tmp_path))
    partial = _datalist(tmp_path, [{"image": "images/b.png"}, {"image": "images/c.png", "label": "labels/c.png"}])
    with pytest.warns(UserWarning, match="1 of 2"):
        assert len(labeled_union_datalist(partial, str(tmp_path))) == 2


# ------------------------------------------------------------------- configs end to end


def test_no_method_edits_the_shared_handler_list_and_the_state_follows_the_networks():
    """Handlers are train.yaml's one list for every method (a method adds its own by name in
    method_handlers); what the training state saves is derived from the networks in play."""
    from monai.bundle import ConfigParser

    base = ConfigParser.load_config_files(train_config_files("methods/labeled_only.yaml"))["train"]["handlers"]
    for path in sorted((CONFIGS / "methods").glob("*.yaml")) + sorted((CONFIGS / "ablations").glob("*.yaml")):
        raw = ConfigParser.load_config_file(str(path)) or {}
        assert not any(k.startswith("train#handlers") or k == "train" for k in raw), path.name
        name = path.relative_to(CONFIGS).as_posix()
        merged = ConfigParser.load_config_files(train_config_files(name))  # an ablation: over ours.yaml
        assert merged["train"]["handlers"] == base, path.name
    text = "\n".join(p.read_text() for p in CONFIGS.rglob("*.yaml"))
    assert not re.search(r"handlers#[0-9]", text), "a handler addressed by its position"
    ours = ConfigParser.load_config_files(train_config_files())["method_handlers"]
    assert list(ours) == ["transformer_validation", "coupling"]


@pytest.mark.parametrize("method", METHODS)
def test_every_method_config_trains_two_iterations(method, tmp_path, demo_dataset, monkeypatch):
    from monai.bundle import ConfigWorkflow

    import custom.networks.swin_unet as swin

    built = []
    original = swin.SwinUnet.__init__

    def counting(self, *args, **kwargs):
        built.append(1)
        original(self, *args, **kwargs)

    monkeypatch.setattr(swin.SwinUnet, "__init__", counting)
    wf = ConfigWorkflow(
        config_file=train_config_files(f"methods/{method}.yaml"),
        meta_file=str(CONFIGS / "metadata.json"),
        workflow_type="train",
        **tiny_overrides(tmp_path, demo_dataset),
    )
    wf.initialize()
    trainer = wf.parser.get_parsed_content("train#trainer")
    outputs = []
    from ignite.engine import Events

    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outputs.append(dict(e.state.output[0])))
    wf.run()
    # what the method file names is what is built, trained and saved, whichever method it is
    roles = tuple(wf.parser["networks"])
    assert tuple(trainer.networks) == roles and trainer.deployed_role == "cnn"
    assert all(r in trainer.teachers for t in trainer.terms for r in t.teacher_roles)
    assert set(trainer.teachers) == {r for t in trainer.terms for r in t.teacher_roles}, "a teacher no term reads"
    assert (trainer.unlabeled is None) == (not trainer.terms)
    assert bool(built) == ("transformer" in roles), "the Swin-Unet is built only where a method trains it"
    assert trainer.state.iteration == 2 and len(outputs) == 2
    assert all(math.isfinite(float(o["loss"])) for o in outputs)
    for t in trainer.terms:  # every term of the method is active and computed (gated terms may be 0
        # on an untrained network: no confident pixel yet)
        assert outputs[-1][f"weight_{t.name}"] > 0, (t.name, outputs[-1][f"weight_{t.name}"])
        assert math.isfinite(float(outputs[-1][f"loss_{t.name}"])), t.name
    assert (tmp_path / "models" / "model.pt").is_file()
    state = torch.load(tmp_path / "models" / "train_state" / "train_state.pt", map_location="cpu", weights_only=True)
    expected = {*roles, *(f"optimizer_{r}" for r in roles), *(f"lr_scheduler_{r}" for r in roles), "validator"}
    expected |= set(wf.parser["method_state"])
    assert set(state) - {"trainer", "trainer_extra", "random"} == expected | {"method"}
    assert state["method"] == wf.parser["method"]
    assert set(state["trainer_extra"]["teachers"]) == set(trainer.teachers)


def test_the_methods_are_their_files_and_train_what_they_name():
    """A method is its file in methods/ (the comparison and the test above take the folder's list);
    the files name what differs: the two-network methods, the baselines with an EMA teacher."""
    from monai.bundle import ConfigParser

    assert list(METHODS) == [
        DEFAULT_METHOD,
        *sorted(p.stem for p in (CONFIGS / "methods").glob("*.yaml") if p.stem != DEFAULT_METHOD),
    ]
    networks = {
        m: tuple(ConfigParser.load_config_files(train_config_files(f"methods/{m}.yaml"))["networks"]) for m in METHODS
    }
    assert {m for m, roles in networks.items() if len(roles) == 2} == {"ours", "paper", "cps", "dct", "cross_teaching"}
    assert networks["ours"] == networks["paper"] == networks["cross_teaching"] == ("cnn", "transformer")


def test_fully_supervised_config_uses_the_unlabelled_masks_with_the_semi_supervised_budget(tmp_path, demo_dataset):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(train_config_files("methods/fully_supervised.yaml"))
    overrides = tiny_overrides(tmp_path, demo_dataset)
    del overrides["max_iterations"]
    parser.update(overrides)
    with open(f"{demo_dataset}/datalist.json") as f:
        counts = {k: len(v) for k, v in json.load(f).items() if isinstance(v, list)}
    assert len(parser.get_parsed_content("train_datalist")) == counts["training"] + counts["unlabeled"]
    assert parser.get_parsed_content("max_iterations") == 400 * counts["training"]
