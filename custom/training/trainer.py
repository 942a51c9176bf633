"""The semi-supervised trainer: one Ignite engine (a ``monai.engines.Trainer``) for every method.

Each iteration (method.md, "Losses, per iteration"):

1. a labelled batch (the engine's data loader) and an unlabelled batch (its own loader,
   cycled) are concatenated: ``x = [x_l; x_u]``;
2. every network forwards once on the whole batch (a network with batch normalisation on ``x_l``
   and ``x_u`` separately under ``forward="separate"``); ``p_r = softmax(f_r(x))``;
3. ``L = sum_r L_sup(f_r(x_l), y_l) + sum_k w_k(t) L_k``, the ``L_k`` being the method's
   unsupervised terms (:mod:`custom.training.terms`), each skipped while its weight is 0;
4. one backward pass; every optimiser steps; the EMA teachers are updated.

Logging, validation, checkpoints and learning-rate schedules are MONAI/Ignite handlers
attached from the config; the engine fires MONAI's ``IterationEvents`` and returns an
output dict (decollated per labelled image, as ``SupervisedTrainer`` does), so standard
handlers work unchanged.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from monai.data import MetaTensor
from monai.engines import Trainer
from monai.engines.utils import IterationEvents, default_metric_cmp_fn
from monai.utils import CommonKeys as Keys
from torch import nn

from custom.training.coupling import Coupling
from custom.training.ema import EMATeacher
from custom.training.terms import IterationContext, UnsupervisedTerm

__all__ = [
    "SemiSupervisedTrainer",
    "logged_terms",
    "CyclingLoader",
]

logger = logging.getLogger(__name__)
NONFINITE_POLICIES = ("stop", "skip")
FORWARD_MODES = ("joint", "separate")


class CyclingLoader:
    """Endless iteration over a data loader: restarts it (a new shuffle) when exhausted.

    Its position is part of the training state: the number of passes, the batches taken in
    the current pass and the loader's ``generator`` state when the pass began, so that a
    resumed run draws the same unlabelled batches as an uninterrupted one.
    """

    def __init__(self, loader: Iterable) -> None:
        self.loader = loader
        self._it = None
        self.epoch = 0
        self.consumed = 0
        self._pass_start_state: torch.Tensor | None = None

    def _generator(self) -> torch.Generator | None:
        return getattr(self.loader, "generator", None)

    def _start_pass(self) -> None:
        sampler = getattr(self.loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.epoch)
        gen = self._generator()
        self._pass_start_state = gen.get_state() if gen is not None else None
        self._it = iter(self.loader)
        self.consumed = 0

    def next(self) -> Any:
        if self._it is None:
            self._start_pass()
        try:
            batch = next(self._it)
        except StopIteration:
            self.epoch += 1
            self._start_pass()
            batch = next(self._it)
        self.consumed += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "consumed": self.consumed, "pass_start_state": self._pass_start_state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.epoch, consumed = int(state["epoch"]), int(state["consumed"])
        gen = self._generator()
        if state.get("pass_start_state") is None or gen is None:
            self._it, self.consumed = None, 0
            return
        gen.set_state(state["pass_start_state"])
        self._start_pass()
        for _ in range(consumed):  # replay the batches already drawn in this pass
            next(self._it)
        self.consumed = consumed


class _Endless:
    """An iterable without end over a :class:`CyclingLoader` (Ignite cuts it into epochs)."""

    def __init__(self, cycling: CyclingLoader) -> None:
        self.cycling = cycling

    def __iter__(self):
        while True:
            yield self.cycling.next()


def logged_terms(output: Any) -> dict[str, float]:
    """Output transform for Stats/TensorBoard/MLflow handlers: every ``loss*``, ``weight_*``
    and ``lr_*`` value of the (decollated) output."""
    item = output[0] if isinstance(output, list) else output
    out = {}
    for k, v in item.items():
        if k.startswith(("loss", "weight_", "lr_")) or k == "nonfinite_skips":
            out[k] = float(v.item() if isinstance(v, torch.Tensor) else v)
    return out


class SemiSupervisedTrainer(Trainer):
    """Trains several networks jointly from a labelled and an unlabelled stream.

    Args:
        device: where the batch and networks live.
        max_epochs: epochs of the labelled loader (``epoch_length`` iterations each).
        train_data_loader: labelled batches ``{"image", "label"}``.
        networks: role -> network, e.g. ``{"cnn": UNeXt, "transformer": SwinUnet}``. All are
            trained; each forwards once on the whole batch.
        optimizers: role -> optimiser (one per network, or one shared under any role).
        supervised_loss: ``L_sup(logits_l, y_l)`` applied to every role in ``supervised_roles``.
        unlabeled_data_loader: unlabelled batches ``{"image"}``, cycled; ``None`` for
            supervised-only methods.
        terms: the method's unsupervised terms.
        teachers: the EMA teachers, role -> :class:`EMATeacher` of that role's network (e.g.
            ``{"transformer": EMA of the Swin-Unet}`` for ICT); a term reads them as
            ``ctx.teacher(role)`` and declares the roles in its ``teacher_roles`` (checked here).
            Each is updated after the optimisers step and saved in the training state with the
            trainer's extra state.
        deployed_role: the network whose labelled predictions are put in the output as ``pred``.
        coupling: the :class:`custom.training.coupling.Coupling` of the cross terms (how two
            networks teach each other and which leads); its ``leader`` is read every iteration
            (``ctx.leader``) and saved with the trainer's state. ``None``: no coupled networks.
        amp: mixed precision (``amp_dtype``: ``"float16"`` with a grad scaler on CUDA, or ``"bfloat16"``).
        amp_roles: the roles whose networks (and EMA teachers) run under mixed precision when ``amp``
            is on; ``None``: every role.
        generator: random generator of the mixup weights (seeded for determinism).
        nonfinite: what a non-finite (NaN/Inf) total loss does: ``"stop"`` raises
            ``FloatingPointError`` naming the terms and the iteration (the last saved
            checkpoints stay as they were); ``"skip"`` skips that step (no backward, no
            optimiser step, no EMA update), logs a warning naming the terms and counts the
            skipped steps in ``engine.state.nonfinite_skips`` (also ``nonfinite_skips`` in
            the output, so it is logged).
        forward: ``"joint"`` (the paper): every network forwards once on ``[x_l; x_u]``, so its
            batch-normalisation statistics mix labelled and unlabelled images; ``"separate"``:
            a network with batch normalisation forwards twice, ``x_l`` then ``x_u``, so its
            supervised pass normalises with labelled statistics only, exactly as labelled-only
            training does; a network without (the Swin-Unet: LayerNorm) still forwards once, which
            gives the same outputs.
        compile: compile every network and EMA teacher in place with ``torch.compile`` when the
            run starts, through the persistent compile cache of :mod:`custom.utils.compile_cache`
            (off by default: see bundle/docs/performance.md for when it pays).
    """

    def __init__(
        self,
        device: torch.device | str,
        max_epochs: int,
        train_data_loader: Iterable,
        networks: Mapping[str, nn.Module],
        optimizers: Mapping[str, torch.optim.Optimizer],
        supervised_loss: Callable,
        unlabeled_data_loader: Iterable | None = None,
        terms: Sequence[UnsupervisedTerm] = (),
        supervised_roles: Sequence[str] | None = None,
        deployed_role: str = "cnn",
        epoch_length: int | None = None,
        non_blocking: bool = False,
        postprocessing: Callable | None = None,
        key_train_metric: dict | None = None,
        additional_metrics: dict | None = None,
        metric_cmp_fn: Callable = default_metric_cmp_fn,
        train_handlers: Sequence | None = None,
        amp: bool = False,
        amp_dtype: str = "float16",
        amp_roles: Sequence[str] | None = None,
        decollate: bool = True,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        coupling: Coupling | None = None,
        nonfinite: str = "stop",
        forward: str = "joint",
        teachers: Mapping[str, EMATeacher] | None = None,
        compile: bool = False,
    ) -> None:
        if nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"nonfinite must be one of {NONFINITE_POLICIES}, got {nonfinite!r}")
        if forward not in FORWARD_MODES:
            raise ValueError(f"forward must be one of {FORWARD_MODES}, got {forward!r}")
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            iteration_update=None,
            postprocessing=postprocessing,
            key_metric=key_train_metric,
            additional_metrics=additional_metrics,
            metric_cmp_fn=metric_cmp_fn,
            handlers=train_handlers,
            amp=amp,
            event_names=None,
            event_to_attr=None,
            decollate=decollate,
        )
        self.networks = nn.ModuleDict(dict(networks))
        if deployed_role not in self.networks:
            raise ValueError(f"deployed_role {deployed_role!r} is not one of the networks {list(self.networks)}")
        self.optimizers = dict(optimizers)
        self.supervised_loss = supervised_loss
        self.supervised_roles = tuple(supervised_roles) if supervised_roles is not None else tuple(self.networks)
        self.terms = list(terms)
        self.teachers = dict(teachers or {})
        unknown = [r for r in self.teachers if r not in self.networks]
        if unknown:
            raise ValueError(f"teachers given for roles {unknown} that are not networks {list(self.networks)}")
        lacking = {t.name: r for t in self.terms for r in t.teacher_roles if r not in self.teachers}
        if lacking:
            raise ValueError(
                f"terms without the EMA teacher they read (term: role): {lacking}; teachers: {list(self.teachers)}"
            )
        self.deployed_role = deployed_role
        # both streams are cycled by us, so that their positions are part of the training
        # state: Ignite draws the labelled batches from an endless iterator, epoch_length long
        self.labeled = CyclingLoader(train_data_loader)
        self.data_loader = _Endless(self.labeled)
        self.unlabeled = CyclingLoader(unlabeled_data_loader) if unlabeled_data_loader is not None else None
        if self.terms and self.unlabeled is None:
            raise ValueError("unsupervised terms need an unlabeled_data_loader")
        self.amp_dtype = getattr(torch, amp_dtype) if isinstance(amp_dtype, str) else amp_dtype
        self.amp_roles = None if amp_roles is None else tuple(amp_roles)
        if generator is None and seed is not None:
            generator = torch.Generator().manual_seed(int(seed))
        self.generator = generator
        self.coupling = coupling
        self.nonfinite = nonfinite
        self.forward_mode = forward
        # which networks normalise with batch statistics (BatchNorm: the UNeXt); only those forward the
        # labelled and unlabelled images apart under forward="separate". A network normalising each
        # image by itself (LayerNorm: the Swin-Unet) gives the same outputs from one forward of the
        # whole batch, at one call's cost instead of two.
        self._batch_statistics = {role: _uses_batch_statistics(net) for role, net in self.networks.items()}
        self.state.nonfinite_skips = 0
        self.compile_networks = bool(compile)

    # ----------------------------------------------------------------------------- helpers
    def _autocast(self, role: str | None = None):
        """Mixed precision for ``role``'s network (``None``: any): on when ``amp`` is and the role is
        one of ``amp_roles`` (all roles when that is ``None``)."""
        if not self.amp or (role is not None and self.amp_roles is not None and role not in self.amp_roles):
            return contextlib.nullcontext()
        device_type = torch.device(self.state.device).type if hasattr(self.state, "device") else "cpu"
        return torch.autocast(device_type=device_type, dtype=self.amp_dtype)

    def _to_device(self, batch: Mapping, keys: Sequence[str]) -> list[torch.Tensor]:
        out = []
        for k in keys:
            v = batch[k]
            v = v.as_tensor() if isinstance(v, MetaTensor) else torch.as_tensor(v)  # plain tensors in the hot path
            out.append(v.to(self.state.device, non_blocking=self.non_blocking))
        return out

    @property
    def leader(self) -> str | None:
        """The coupling's current leader (``None`` without a coupling)."""
        return self.coupling.leader if self.coupling is not None else None

    def extra_state_dict(self) -> dict[str, Any]:
        """What ``Engine.state_dict`` lacks for an exact resume: the mixup generator, the
        labelled loader's shuffle generator, the unlabelled stream's position and the leader."""
        return {
            "generator": self.generator.get_state() if self.generator is not None else None,
            "labeled": self.labeled.state_dict(),
            "unlabeled": self.unlabeled.state_dict() if self.unlabeled is not None else None,
            "leader": self.leader,
            "teachers": {role: t.state_dict() for role, t in self.teachers.items()},
        }

    def load_extra_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("generator") is not None and self.generator is not None:
            self.generator.set_state(state["generator"])
        if state.get("labeled") is not None:
            self.labeled.load_state_dict(state["labeled"])
        if state.get("unlabeled") is not None and self.unlabeled is not None:
            self.unlabeled.load_state_dict(state["unlabeled"])
        if self.coupling is not None and state.get("leader") is not None:
            self.coupling.leader = state["leader"]
        for role, sd in (state.get("teachers") or {}).items():
            if role in self.teachers:
                self.teachers[role].load_state_dict(sd)

    def learning_rates(self) -> dict[str, float]:
        return {f"lr_{role}": opt.param_groups[0]["lr"] for role, opt in self.optimizers.items()}

    # --------------------------------------------------------------------------- iteration
    def _iteration(self, engine: SemiSupervisedTrainer, batchdata: Mapping) -> dict:
        if batchdata is None:
            raise ValueError("must provide batch data for current iteration.")
        x_l, y_l = self._to_device(batchdata, (Keys.IMAGE, Keys.LABEL))
        labeled_bs = x_l.shape[0]
        x = x_l
        if engine.unlabeled is not None:
            (x_u,) = self._to_device(engine.unlabeled.next(), (Keys.IMAGE,))
            x = torch.cat([x_l, x_u.to(x_l.dtype)], dim=0)
        t = engine.state.iteration - 1  # 0-based iteration number, as in the method's formulas
        engine.state.output = {Keys.IMAGE: x_l, Keys.LABEL: y_l}
        for net in engine.networks.values():
            net.train()
        for opt in engine.optimizers.values():
            opt.zero_grad(set_to_none=True)

        logits = {}
        for role, net in engine.networks.items():
            with engine._autocast(role):
                if engine.forward_mode == "separate" and labeled_bs < x.shape[0] and engine._batch_statistics[role]:
                    logits[role] = torch.cat([net(x[:labeled_bs]), net(x[labeled_bs:])])
                else:  # one forward: joint, or a network whose output does not depend on its batch
                    logits[role] = net(x)
        logits = {role: v.float() for role, v in logits.items()}
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        probs = {role: torch.softmax(v, dim=1) for role, v in logits.items()}

        out: dict[str, Any] = {}
        total = x.new_zeros(())
        for role in engine.supervised_roles:
            sup = engine.supervised_loss(logits[role][:labeled_bs], y_l)
            out[f"loss_sup_{role}"] = sup.detach()
            total = total + sup
        ctx = IterationContext(
            images=x,
            labels=y_l,
            labeled_bs=labeled_bs,
            networks=dict(engine.networks),
            logits=logits,
            probs=probs,
            iteration=t,
            generator=engine.generator,
            autocast=engine._autocast,
            leader=engine.leader,
            teachers=engine.teachers,
        )
        deferred = []
        for term in engine.terms:
            w = term.weight(t)
            out[f"weight_{term.name}"] = w
            if w == 0.0:
                out[f"loss_{term.name}"] = 0.0
                continue
            out.update(term.before_loss(ctx))  # e.g. an adversarial term's discriminator step
            if term.own_graph:
                deferred.append((term, w))
                continue
            value = term.loss(ctx)
            out[f"loss_{term.name}"] = value.detach()
            total = total + w * value
        finite = _finite_on_all_ranks(total)
        if finite:
            engine.state.output[Keys.LOSS] = total
            engine.fire_event(IterationEvents.LOSS_COMPLETED)
            engine._backward(total)
            # A term with its own forward graph (ICT: a forward of the mixed images) is backpropagated
            # after the shared graph is freed: the gradients add up to the same sum as one backward of
            # the total, and the memory peak is the larger graph instead of both together.
            for term, w in deferred:
                value = term.loss(ctx)
                out[f"loss_{term.name}"] = value.detach()
                total = total.detach() + w * value.detach()
                finite = _finite_on_all_ranks(value)
                if not finite:
                    break
                engine._backward(w * value)
        if finite:
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine._step(t)
        else:
            engine._refuse_step(out, t)  # raises (nonfinite: stop) or skips the step (nonfinite: skip)
        engine.state.nonfinite_skips = getattr(engine.state, "nonfinite_skips", 0)  # absent in a fresh state
        out["nonfinite_skips"] = engine.state.nonfinite_skips
        out.update(engine.learning_rates())
        engine.state.output.update({Keys.PRED: logits[engine.deployed_role][:labeled_bs].detach(), **out})
        engine.state.output[Keys.LOSS] = total.detach()
        # MONAI decollates and post-processes the output on this event, so it comes last
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output

    def _step(self, t: int) -> None:
        """Every optimiser steps (through the grad scaler under float16), then the EMA teachers follow."""
        for opt in self.optimizers.values():
            if self._scaled:
                self.scaler.step(opt)
            else:
                opt.step()
        if self._scaled:
            self.scaler.update()
        for role, teacher in self.teachers.items():
            teacher.update(self.networks[role], step=t)

    @property
    def _scaled(self) -> bool:
        """float16 mixed precision on CUDA: losses are scaled and optimisers step through the scaler."""
        return bool(self.amp) and getattr(self, "scaler", None) is not None and self.amp_dtype == torch.float16

    def _backward(self, loss: torch.Tensor) -> None:
        if self._scaled:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()

    def _refuse_step(self, out: dict, t: int) -> None:
        """A non-finite loss, naming the terms: raise (``nonfinite="stop"``), or skip the step
        (``nonfinite="skip"``: no optimiser step, no EMA update; counted and logged)."""
        bad = [
            k for k, v in out.items() if k.startswith("loss") and isinstance(v, torch.Tensor) and not torch.isfinite(v)
        ]
        message = (
            f"non-finite loss at iteration {t + 1}: terms {bad or ['total']} (values {[float(out[k]) for k in bad]})"
        )
        if self.nonfinite == "stop":
            raise FloatingPointError(message)
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        self.state.nonfinite_skips = getattr(self.state, "nonfinite_skips", 0) + 1
        logger.warning("%s: step skipped (nonfinite: skip; %d skipped so far)", message, self.state.nonfinite_skips)

    def run(self) -> None:  # noqa: D401 - same contract as monai's Trainer.run
        if self.amp and self.amp_dtype == torch.float16 and torch.cuda.is_available():
            self.scaler = torch.amp.GradScaler("cuda")
        else:
            self.scaler = None
        if self.compile_networks:
            from custom.utils.compile_cache import compile_networks

            compile_networks(self)
            self.compile_networks = False  # once: a second run() keeps the compiled modules
        super(Trainer, self).run()


def _uses_batch_statistics(net: nn.Module) -> bool:
    """Whether ``net``'s output for one image depends on the other images of its batch (batch norm)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


def _finite_on_all_ranks(total: torch.Tensor) -> bool:
    """Whether the loss is finite here and, under DDP, on every rank (so all ranks skip together)."""
    finite = bool(torch.isfinite(total))
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        flag = torch.tensor([0.0 if finite else 1.0], device=total.device)
        dist.all_reduce(flag)
        finite = bool(flag.item() == 0)
    return finite
