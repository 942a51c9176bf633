"""Multi-process training (bundle/configs/multi_gpu_train.yaml, custom/training/distributed.py) on the CPU.

Two processes and the gloo backend stand in for two GPUs: the same code paths run (DDP,
distributed samplers, all-gathered validation metrics, rank-0-only logging and saving)
except for NCCL and the CUDA device selection.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import CONFIGS, REPO, tiny_overrides, train_config_files

WORLD = 2
MULTI_GPU = "multi_gpu_train.yaml"


def _env() -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""))
    return env


# ----------------------------------------------------------------- the config, statically


def _merged(*extra: str):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(train_config_files(*extra))
    return parser


# handlers that exist on rank 0 only. TrainingStateSaver is not one: it saves on rank 0 by
# itself and must load on every rank when a run resumes.
RANK0_ONLY = {"StatsHandler", "TensorBoardStatsHandler", "ProgressBar", "BestModelSaver"}


@pytest.mark.parametrize("extra", [(MULTI_GPU,), ("demo.yaml", MULTI_GPU), ("cpu_small.yaml", MULTI_GPU)])
def test_every_logging_or_saving_handler_is_disabled_on_other_ranks(extra):
    """Every handler that logs or saves is disabled on ranks > 0 (``is_not_rank0``, which
    multi_gpu_train.yaml leaves to train.yaml), and nothing else."""
    parser = _merged(*extra)
    lists = {
        "train#handlers": parser["train#handlers"],
        "validate#handlers": parser["validate#handlers"],
        "validate#transformer_evaluator#val_handlers": parser["validate#transformer_evaluator#val_handlers"],
    }
    for where, handlers in lists.items():
        for i, h in enumerate(handlers):
            name = h["_target_"].rsplit(".", 1)[-1]
            disabled = h.get("_disabled_")
            if name in RANK0_ONLY:
                assert disabled == "@is_not_rank0", f"{where}#{i} ({name}) must be disabled on ranks > 0"
            else:
                assert disabled != "@is_not_rank0", f"{where}#{i} ({name}) must run on every rank"
    init = parser["initialize"]
    assert init[0] == "$custom.utils.runtime.setup()" and init[1]["_target_"] == "custom.training.distributed.setup"
    assert not any("set_determinism" in str(item) for item in init), "the seed is set per rank by setup()"
    assert "wrap_ddp(@networks" in parser["train#trainer#networks"]
    assert parser["train#dataloader#shuffle"] is False and parser["train#unlabeled_dataloader#shuffle"] is False
    # the deployed model and the training state hold the plain (unwrapped) networks
    saver = next(h for h in parser["validate#handlers"] if h["_target_"].endswith("BestModelSaver"))
    assert saver["save_dict"] == {"model": "@network"}
    state = next(h for h in parser["train#handlers"] if h["_target_"].endswith("TrainingStateSaver"))
    assert "training_objects(@networks," in state["save_dict"] and parser["networks"]["cnn"] == "@network"


# --------------------------------------------------- two gloo processes, spawned in-process


def _worker(rank: int, world: int, store: str, out_dir: str, dataset_dir: str) -> None:
    """Runs in each spawned process; writes its findings to ``out_dir/rank{rank}.pt``."""
    import torch.distributed as dist
    from torch import nn

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    from custom.training import distributed as cd
    from custom.training.ema import EMATeacher
    from custom.training.handlers import Handlers

    res: dict = {}
    # setup() on an initialised group: per-rank seeds
    cd.setup(backend="gloo", seed=5, quiet_non_zero_ranks=False)
    res["initial_seed"] = torch.initial_seed()

    # the coupling's broadcast: each rank believes something else; rank 0's choice wins everywhere
    from custom.training.coupling import Coupling

    coupling = Coupling(leader="transformer" if rank == 0 else "cnn")
    coupling.broadcast()
    res["leader"], res["leader_mismatches"] = coupling.leader, coupling.mismatches

    # BroadcastBuffers: BatchNorm statistics that drifted apart are rank 0's afterwards
    bn = nn.BatchNorm2d(3)
    bn.running_mean.fill_(float(rank + 1))
    bn.num_batches_tracked.fill_(rank + 7)
    cd.BroadcastBuffers({"bn": bn})()
    res["bn"] = {k: v.clone() for k, v in bn.state_dict().items()}

    # DDP + the EMA teacher: different initial weights per rank (the seeds differ), the
    # teacher built from the wrapped module holds rank 0's weights and updates by name
    torch.manual_seed(100 + rank)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1))
    ref = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1))
    res["init_before_wrap"] = {k: v.clone() for k, v in net.state_dict().items()}
    ddp = nn.parallel.DistributedDataParallel(net)
    ref.load_state_dict(net.state_dict())
    teacher = EMATeacher(ddp, decay=0.99)  # copies and averages the unwrapped module
    res["teacher_init"] = {k: v.clone() for k, v in teacher.module.state_dict().items()}

    # two forwards through the DDP module before one backward, as the ICT term does:
    # the all-reduced gradient must be the mean of the per-rank gradients
    g = torch.Generator().manual_seed(7 + rank)
    x, x_mix = torch.rand(3, 1, 8, 8, generator=g), torch.rand(2, 1, 8, 8, generator=g)

    def loss_of(model):
        return model(x).square().mean() + (model(x_mix).softmax(1) - 0.5).square().mean()

    loss_of(ddp).backward()
    loss_of(ref).backward()
    expected = []
    for p in ref.parameters():
        gr = p.grad.clone()
        dist.all_reduce(gr)
        expected.append(gr / world)
    res["grad_max_err"] = max(float((p.grad - e).abs().max()) for p, e in zip(net.parameters(), expected))
    with torch.no_grad():
        for p in net.parameters():
            p.sub_(0.1 * p.grad)
    teacher.update(ddp, step=3)
    res["teacher_after"] = {k: v.clone() for k, v in teacher.module.state_dict().items()}

    # the bundle config resolved on each rank: the teacher is copied after DDP's broadcast,
    # whatever is asked for first
    from monai.bundle import ConfigWorkflow

    over = tiny_overrides(Path(out_dir) / f"cfg{rank}", dataset_dir)
    wf = ConfigWorkflow(
        config_file=train_config_files(MULTI_GPU),
        meta_file=str(CONFIGS / "metadata.json"),
        workflow_type="train",
        **over,
    )
    wf.initialize()
    teacher_cfg = wf.parser.get_parsed_content("transformer_teacher")  # before the trainer or anything else
    res["cfg_teacher"] = {k: v.clone() for k, v in teacher_cfg.state_dict().items()}
    res["cfg_missing_properties"] = wf.check_properties()  # resolves the trainer, hence wraps `network` too
    res["cfg_network"] = {k: v.clone() for k, v in wf.parser.get_parsed_content("network").state_dict().items()}
    trainer = wf.parser.get_parsed_content("train#trainer")
    res["cfg_trainer_networks"] = {k: type(v).__name__ for k, v in trainer.networks.items()}
    res["cfg_samplers"] = [
        type(wf.parser.get_parsed_content(k).sampler).__name__
        for k in ("train#dataloader", "train#unlabeled_dataloader", "validate#dataloader")
    ]
    res["cfg_handlers"] = [
        type(x).__name__
        for h in wf.parser.get_parsed_content("train#trainer#train_handlers")
        for x in (h.handlers.values() if isinstance(h, Handlers) else [h])
    ]
    res["cfg_val_handlers"] = [type(h).__name__ for h in wf.parser.get_parsed_content("validate#handlers")]
    torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))
    cd.cleanup()


@pytest.fixture(scope="module")
def spawned(tmp_path_factory, demo_dataset):
    import torch.multiprocessing as mp

    out = tmp_path_factory.mktemp("spawned")
    mp.spawn(_worker, args=(WORLD, str(out / "store"), str(out), demo_dataset), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_setup_seeds_each_rank_differently(spawned):
    assert [r["initial_seed"] for r in spawned] == [5 + r for r in range(WORLD)]


def test_leader_is_broadcast_from_rank0(spawned):
    assert [r["leader"] for r in spawned] == ["transformer"] * WORLD
    assert [r["leader_mismatches"] for r in spawned] == [0, 1]


def test_buffers_are_broadcast_from_rank0(spawned):
    for r in spawned:
        assert torch.equal(r["bn"]["running_mean"], torch.ones(3))
        assert int(r["bn"]["num_batches_tracked"]) == 7


def test_teacher_starts_from_rank0_weights_and_updates_through_ddp(spawned):
    assert not _same(spawned[0]["init_before_wrap"], spawned[1]["init_before_wrap"]), "the ranks must start apart"
    for r in spawned:
        assert _same(r["teacher_init"], spawned[0]["init_before_wrap"])
    assert _same(spawned[0]["teacher_after"], spawned[1]["teacher_after"])
    assert not _same(spawned[0]["teacher_after"], spawned[0]["teacher_init"])


def test_two_forwards_one_backward_average_the_gradients(spawned):
    for r in spawned:
        assert r["grad_max_err"] < 1e-6


def test_config_builds_the_teacher_after_the_ddp_broadcast(spawned):
    a, b = spawned
    assert _same(a["cfg_teacher"], b["cfg_teacher"])
    assert _same(a["cfg_network"], b["cfg_network"])
    assert a["cfg_missing_properties"] in (None, [])
    assert a["cfg_trainer_networks"] == {"cnn": "DistributedDataParallel", "transformer": "DistributedDataParallel"}
    assert a["cfg_samplers"] == ["DistributedSampler"] * 3
    # rank 0: every handler; rank 1: no logging, no saving; both sync buffers and the leader
    assert a["cfg_handlers"][0] == b["cfg_handlers"][0] == "BroadcastBuffers"
    assert {"StatsHandler", "TensorBoardStatsHandler", "ProgressBar"} <= set(a["cfg_handlers"])
    assert not {"StatsHandler", "TensorBoardStatsHandler", "ProgressBar"} & set(b["cfg_handlers"])
    assert {"ValidationHandler", "NetworkValidationHandler", "Coupling", "TrainingStateSaver"} <= set(b["cfg_handlers"])
    assert a["cfg_val_handlers"] == ["StatsHandler", "TensorBoardStatsHandler", "BestModelSaver"]
    assert b["cfg_val_handlers"] == []


# ------------------------------------------------------------ the bundle run under torchrun


def _torchrun(tmp_path: Path, demo_dataset: str, name: str, **more) -> str:
    over = tiny_overrides(tmp_path, demo_dataset, max_iterations=4, dist_timeout_minutes=2, **more)
    dump = (
        f"$torch.save({{'cnn': @network.state_dict(), 'transformer': @transformer.state_dict(), "
        f"'teacher': @transformer_teacher.state_dict(), 'leader': @train#trainer.leader, "
        f"'iteration': @train#trainer.state.iteration, 'best': @validate#evaluator.state.best_metric}}, "
        f"'{tmp_path}/{name}_rank' + str(torch.distributed.get_rank()) + '.pt')"
    )
    over["finalize"] = [dump, {"_target_": "custom.training.distributed.cleanup"}]
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(over))
    configs = train_config_files(MULTI_GPU) + [str(tmp_path / f"{name}.yaml")]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={WORLD}",
        "-m",
        "monai.bundle",
        "run",
        "training",
        "--config_file",
        str(configs),
        "--meta_file",
        str(CONFIGS / "metadata.json"),
    ]
    start = time.time()
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=420)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    print(f"torchrun x{WORLD} ({name}): {time.time() - start:.1f} s")
    return log


def _rank_states(tmp_path: Path, name: str) -> list[dict]:
    states = [torch.load(tmp_path / f"{name}_rank{r}.pt", weights_only=True) for r in range(WORLD)]
    for key in ("cnn", "transformer", "teacher"):
        a, b = states[0][key], states[1][key]
        assert a.keys() == b.keys()
        differ = [k for k in a if not torch.equal(a[k], b[k])]
        assert not differ, f"{name}: {key}: ranks differ in {differ[:5]}"
    assert states[0]["leader"] == states[1]["leader"] is not None
    assert states[0]["best"] == states[1]["best"], "validation metrics are all-gathered: the same on every rank"
    return states


# stops the run after its first epoch (as a crash would, but cleanly), to resume it
STOP_AFTER_FIRST_EPOCH = (
    "$type('Stop', (), {'attach': lambda self, e: e.add_event_handler("
    "ignite.engine.Events.EPOCH_COMPLETED(once=1), lambda eng: eng.terminate())})()"
)


def test_torchrun_two_processes_train_identical_weights_save_once_and_resume(tmp_path, demo_dataset):
    """``torchrun --standalone --nproc_per_node=2 -m monai.bundle run training`` with gloo, in
    two launches: the first stops after epoch 1 (2 iterations), the second continues with
    ``resume: true`` to iteration 4 (ICT active, validation and leader selection after each
    epoch). After each, both ranks hold identical networks and teacher, and rank 0 alone
    wrote one model.pt, one training state and the TensorBoard logs."""
    log = _torchrun(
        tmp_path,
        demo_dataset,
        "first",
        stop_after_first_epoch=STOP_AFTER_FIRST_EPOCH,
        **{"train#trainer#train_handlers": "$@ddp_first_handlers + @train#handlers + [@stop_after_first_epoch]"},
    )
    states = _rank_states(tmp_path, "first")
    assert [s["iteration"] for s in states] == [2, 2]
    models = tmp_path / "models"
    # written once, by rank 0 (review.json: the review thresholds set on validation at the end)
    assert sorted(p.name for p in models.iterdir()) == ["model.pt", "model_config.json", "review.json", "train_state"]
    assert sorted(p.name for p in (models / "train_state").iterdir()) == ["train_state.pt"]
    first = torch.load(models / "train_state" / "train_state.pt", map_location="cpu", weights_only=True)
    assert first["trainer"]["iteration"] == 2

    log = _torchrun(tmp_path, demo_dataset, "resumed", resume=True)
    states = _rank_states(tmp_path, "resumed")
    assert [s["iteration"] for s in states] == [4, 4], "every rank resumed at iteration 2 and ran 2 more"
    # written once, by rank 0 (review.json: the review thresholds set on validation at the end)
    assert sorted(p.name for p in models.iterdir()) == ["model.pt", "model_config.json", "review.json", "train_state"]
    assert sorted(p.name for p in (models / "train_state").iterdir()) == ["train_state.pt"]
    from custom.networks import UNeXt

    UNeXt(1, 2).load_state_dict(torch.load(models / "model.pt", map_location="cpu", weights_only=True))
    full = torch.load(models / "train_state" / "train_state.pt", map_location="cpu", weights_only=True)
    assert full["trainer"]["iteration"] == 4
    # plain networks' keys (the teacher's own `module.` prefix is EMATeacher's, as in one process)
    assert not any(k.startswith("module.") for k in full["cnn"]) and not any(
        k.startswith("module.") for k in full["transformer"]
    )
    full["teacher"] = full["trainer_extra"]["teachers"]["transformer"]
    assert not any(k.startswith("module.module.") for k in full["teacher"])
    for key in ("cnn", "transformer", "teacher"):  # the final state is rank 0's, equal to every rank's
        assert all(torch.equal(full[key][k], states[0][key][k]) for k in full[key])
    events = list((tmp_path / "eval").glob("events.out.tfevents*"))
    assert events and len({e.name.rsplit(".", 2)[1] for e in events}) == 2, f"rank 0 of each launch writes: {events}"
    assert log.count("Epoch: 2/2, Iter: 2/2") == 1, "only rank 0 logs the iterations"
    assert "Epoch: 1/2" not in log, "the resumed run starts at epoch 2"
    assert log.count("best validation mean Dice") == 1
