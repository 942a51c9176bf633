"""The coupling of the cross terms: one vocabulary for every term, the leader chosen by validation
(or fixed), kept across a resume, and one line for a bad value."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from custom.training.coupling import COUPLINGS, Coupling
from custom.training.terms import CrossPseudoSupervisionTerm, InformationDivergenceTerm, IterationContext


def _evaluator(value=None):
    return SimpleNamespace(state=SimpleNamespace(metrics={} if value is None else {"dice": value}))


def _engine(iteration=10):
    import logging

    return SimpleNamespace(state=SimpleNamespace(iteration=iteration), logger=logging.getLogger("test"))


def _coupling(cnn=None, transformer=None, **kwargs):
    evaluators = {"cnn": _evaluator(cnn), "transformer": _evaluator(transformer)}
    return Coupling(evaluators=evaluators, metric_names={"cnn": "dice", "transformer": "dice"}, **kwargs)


def test_the_better_validated_network_leads_once_both_are_rated_and_ties_keep_the_leader():
    c = _coupling(cnn=0.5)  # the Swin-Unet not validated yet: the first role leads
    c(_engine())
    assert c.leader == "cnn" and c.history == []
    c.evaluators["transformer"].state.metrics["dice"] = 0.6
    c(_engine(20))
    assert c.leader == "transformer" and c.history[-1] == {
        "iteration": 20,
        "leader": "transformer",
        "cnn": 0.5,
        "transformer": 0.6,
    }
    c.evaluators["cnn"].state.metrics["dice"] = 0.6  # a tie keeps the leader
    c(_engine(30))
    assert c.leader == "transformer"
    c.margin, c.evaluators["cnn"].state.metrics["dice"] = 0.05, 0.62  # within the margin: kept
    c(_engine(40))
    assert c.leader == "transformer"


@pytest.mark.parametrize("setting", [{"leader": "transformer"}, {"direction": "both"}])
def test_a_fixed_leader_or_a_symmetric_coupling_never_reselects(setting):
    c = _coupling(cnn=0.9, transformer=0.1, **setting)
    before = c.leader
    c(_engine())
    assert c.leader == before and c.history == []


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"direction": "sideways"}, "coupling direction must be one of"),
        ({"leader": "teacher"}, "leader must be 'validation' or one of"),
        ({"roles": ["cnn"]}, "two networks"),
    ],
)
def test_bad_values_are_refused_in_one_line(kwargs, match):
    with pytest.raises(ValueError, match=match) as e:
        _coupling(**kwargs)
    assert "\n" not in str(e.value)


def _ctx(leader):
    g = torch.Generator().manual_seed(0)
    logits = {r: torch.randn(4, 2, 8, 8, generator=g, requires_grad=True) for r in ("cnn", "transformer")}
    return IterationContext(
        images=torch.rand(4, 1, 8, 8, generator=g),
        labels=torch.zeros(2, 1, 8, 8),
        labeled_bs=2,
        networks={},
        logits=logits,
        probs={r: torch.softmax(v, 1) for r, v in logits.items()},
        iteration=0,
        leader=leader,
    )


def test_every_cross_term_takes_the_one_vocabulary_and_cps_mutual_is_both():
    for direction in COUPLINGS:
        CrossPseudoSupervisionTerm(direction=direction)
        InformationDivergenceTerm(direction=direction)
    ctx = _ctx("cnn")
    assert torch.equal(CrossPseudoSupervisionTerm(direction="mutual").loss(ctx), CrossPseudoSupervisionTerm().loss(ctx))
    # follower: only the follower receives gradients, whichever the coupling's leader is
    for leader, follower in (("cnn", "transformer"), ("transformer", "cnn")):
        ctx = _ctx(leader)
        InformationDivergenceTerm(direction="follower").loss(ctx).backward()
        assert ctx.logits[leader].grad is None and ctx.logits[follower].grad is not None


def test_the_trainer_reads_and_saves_the_coupling_leader():
    from custom.training.losses import SupervisedLoss
    from custom.training.trainer import SemiSupervisedTrainer

    nets = {"cnn": torch.nn.Conv2d(1, 2, 1), "transformer": torch.nn.Conv2d(1, 2, 1)}
    coupling = Coupling(leader="transformer")
    trainer = SemiSupervisedTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=[{"image": torch.rand(1, 1, 4, 4), "label": torch.zeros(1, 1, 4, 4)}],
        networks=nets,
        optimizers={r: torch.optim.SGD(n.parameters(), lr=0.1) for r, n in nets.items()},
        supervised_loss=SupervisedLoss(),
        coupling=coupling,
    )
    assert trainer.leader == "transformer" and trainer.extra_state_dict()["leader"] == "transformer"
    trainer.load_extra_state_dict({"leader": "cnn"})  # a resumed run continues with the saved leader
    assert coupling.leader == "cnn" == trainer.leader
