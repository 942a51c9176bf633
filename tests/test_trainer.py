"""The semi-supervised trainer and the training config, end to end on tiny images."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from conftest import CONFIGS, REPO, SHARED_DATA, require_shared, tiny_overrides, train_config_files
from ignite.engine import Events

from custom.networks import SwinUnet, UNeXt
from custom.training.ema import EMATeacher
from custom.training.losses import SupervisedLoss
from custom.training.terms import CrossPseudoSupervisionTerm, InformationDivergenceTerm, InterpolationConsistencyTerm
from custom.training.trainer import CyclingLoader, SemiSupervisedTrainer


def tiny_swin(classes=2, size=64):
    return SwinUnet(
        img_size=size,
        in_channels=1,
        out_channels=classes,
        embed_dim=12,
        num_heads=(1, 1, 2, 2),
        window_size=4,
        drop_path_rate=0.0,
    )


def test_ema_update_matches_its_formula():
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    teacher = EMATeacher(student, decay=0.99)
    before = {k: v.clone() for k, v in teacher.module.named_parameters()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
        student[1].running_mean.fill_(3.0)
    for step in (0, 5, 500):
        alpha = min(1 - 1 / (step + 1), 0.99)
        prev = {k: v.clone() for k, v in teacher.module.named_parameters()}
        teacher.update(student, step)
        for name, p in teacher.module.named_parameters():
            expected = alpha * prev[name] + (1 - alpha) * dict(student.named_parameters())[name]
            assert torch.allclose(p, expected), (step, name)
    assert not torch.equal(before["0.weight"], teacher.module[0].weight)
    assert all(not p.requires_grad for p in teacher.module.parameters())
    assert torch.equal(teacher.module[1].running_mean, torch.full((2,), 3.0))  # buffers copied
    assert teacher.alpha(0) == 0.0 and teacher.alpha(10_000) == 0.99


def test_unlabeled_stream_cycles_when_shorter():
    loader = torch.utils.data.DataLoader(list(range(3)), batch_size=2, shuffle=False)
    cyc = CyclingLoader(loader)
    seen = [cyc.next().tolist() for _ in range(5)]
    assert seen == [[0, 1], [2], [0, 1], [2], [0, 1]]
    assert cyc.epoch == 2


def _batches(n_labeled=2, n_unlabeled=4, size=64, seed=0):
    from custom.data.demo import synthetic_head_image

    rng = np.random.default_rng(seed)
    pairs = [synthetic_head_image(size, rng) for _ in range(n_labeled + n_unlabeled)]
    imgs = torch.tensor(np.stack([p[0] for p in pairs]), dtype=torch.float32)[:, None] / 255
    masks = torch.tensor(np.stack([p[1] for p in pairs]), dtype=torch.float32)[:, None]
    labeled = [{"image": imgs[:n_labeled], "label": masks[:n_labeled]}]
    unlabeled = [{"image": imgs[n_labeled:]}]
    return labeled, unlabeled


def _trainer(iterations, lr=0.01, terms=None, seed=0, forward="joint"):
    torch.manual_seed(seed)
    cnn, vit = UNeXt(1, 2), tiny_swin()
    teacher = EMATeacher(vit, 0.99)
    if terms is None:
        terms = [CrossPseudoSupervisionTerm(), InterpolationConsistencyTerm(), InformationDivergenceTerm()]
    labeled, unlabeled = _batches()
    trainer = SemiSupervisedTrainer(
        device="cpu",
        max_epochs=iterations,
        train_data_loader=labeled,
        unlabeled_data_loader=unlabeled,
        networks={"cnn": cnn, "transformer": vit},
        optimizers={
            "cnn": torch.optim.SGD(cnn.parameters(), lr=lr, momentum=0.9),
            "transformer": torch.optim.SGD(vit.parameters(), lr=lr, momentum=0.9),
        },
        supervised_loss=SupervisedLoss(),
        terms=terms,
        teachers={"transformer": teacher},
        seed=seed,
        decollate=False,
        forward=forward,
    )
    outputs = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outputs.append(dict(e.state.output)))
    return trainer, outputs


def test_each_term_is_nonzero_and_the_total_decreases_when_overfitting():
    trainer, outputs = _trainer(iterations=20)
    trainer.run()
    first, last = outputs[0], outputs[-1]
    for key in ("loss_sup_cnn", "loss_sup_transformer", "loss_cps", "loss_ict", "loss_id"):
        assert abs(float(first[key])) > 1e-6, key
    assert first["weight_cps"] == 1.0 and first["weight_id"] == 1.0
    assert float(last["loss_sup_cnn"]) < 0.5 * float(first["loss_sup_cnn"])
    assert float(last["loss_sup_transformer"]) < float(first["loss_sup_transformer"])
    mean_first = np.mean([float(o["loss"]) for o in outputs[:5]])
    mean_last = np.mean([float(o["loss"]) for o in outputs[-5:]])
    assert mean_last < mean_first
    assert first["lr_cnn"] == pytest.approx(0.01)


def test_zero_weight_term_is_skipped_and_teacher_follows_student():
    ict = InterpolationConsistencyTerm(weight=lambda t: 0.0)
    trainer, outputs = _trainer(iterations=2, terms=[ict])
    before = [p.clone() for p in trainer.teachers["transformer"].module.parameters()]
    trainer.run()
    assert outputs[0]["loss_ict"] == 0.0 and outputs[0]["weight_ict"] == 0.0
    changed = [not torch.equal(a, b) for a, b in zip(before, trainer.teachers["transformer"].module.parameters())]
    assert any(changed)


@pytest.mark.parametrize("forward", ["joint", "separate"])
def test_separate_forward_normalises_the_supervised_pass_with_labelled_images_only(forward):
    import copy

    trainer, outputs = _trainer(iterations=1, terms=[CrossPseudoSupervisionTerm()], forward=forward)
    cnn_before = copy.deepcopy(trainer.networks["cnn"]).train()
    calls, swin_calls = [], []
    trainer.networks["cnn"].register_forward_hook(lambda m, inp, out: calls.append(inp[0].shape[0]))
    trainer.networks["transformer"].register_forward_hook(lambda m, inp, out: swin_calls.append(inp[0].shape[0]))
    swin_before = copy.deepcopy(trainer.networks["transformer"]).train()
    trainer.run()
    labeled, unlabeled = _batches()
    x_l, y_l = labeled[0]["image"], labeled[0]["label"]
    with torch.no_grad():
        alone = float(SupervisedLoss()(cnn_before(x_l), y_l))  # batch statistics of the labelled images only
        mixed = float(SupervisedLoss()(cnn_before(torch.cat([x_l, unlabeled[0]["image"]]))[:2], y_l))
    assert abs(alone - mixed) > 1e-4  # the UNeXt's BatchNorm makes the two differ
    expected = alone if forward == "separate" else mixed
    assert float(outputs[0]["loss_sup_cnn"]) == pytest.approx(expected, rel=1e-5)
    assert calls == ([2, 4] if forward == "separate" else [6])
    # the Swin-Unet normalises each image by itself (LayerNorm): one forward in either mode, the same
    # supervised loss as a forward of the labelled images alone
    assert swin_calls == [6]
    with torch.no_grad():
        swin_alone = float(SupervisedLoss()(swin_before(x_l), y_l))
    assert float(outputs[0]["loss_sup_transformer"]) == pytest.approx(swin_alone, rel=1e-5)
    with pytest.raises(ValueError, match="forward must be one of"):
        _trainer(iterations=1, forward="sideways")


def test_ict_backpropagated_apart_gives_the_gradients_of_one_backward_of_the_total():
    """The trainer backpropagates ICT (own_graph) after the shared graph: same update as one backward."""

    def one_step(own_graph: bool | None):
        terms = [CrossPseudoSupervisionTerm(), InformationDivergenceTerm()]
        if own_graph is not None:
            ict = InterpolationConsistencyTerm()
            ict.own_graph = own_graph
            terms.insert(1, ict)
        trainer, outputs = _trainer(iterations=1, lr=0.5, terms=terms)
        trainer.run()
        return [p.detach().clone() for p in trainer.networks.parameters()], outputs[0]

    apart, out_apart = one_step(True)
    joint, out_joint = one_step(False)
    without, _ = one_step(None)
    assert float(out_apart["loss"]) == pytest.approx(float(out_joint["loss"]), rel=1e-6)
    assert float(out_apart["loss_ict"]) == pytest.approx(float(out_joint["loss_ict"]), rel=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(apart, joint))
    assert any(not torch.allclose(a, b, atol=1e-6) for a, b in zip(apart, without))  # ICT did contribute


def test_non_finite_loss_names_the_term_and_iteration():
    class Broken(CrossPseudoSupervisionTerm):
        name = "broken"

        def loss(self, ctx):
            return torch.tensor(float("nan"))

    trainer, _ = _trainer(iterations=1, terms=[Broken()])
    with pytest.raises(FloatingPointError, match=r"iteration 1.*loss_broken"):
        trainer.run()


def test_properties_check_reports_nothing_missing(tmp_path, demo_dataset):
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(
        config_file=train_config_files(),
        meta_file=str(CONFIGS / "metadata.json"),
        workflow_type="train",
        **tiny_overrides(tmp_path, demo_dataset),
    )
    wf.initialize()
    assert wf.check_properties() in (None, [])


def test_two_iteration_bundle_run_writes_loadable_model(tmp_path, demo_dataset):
    from monai.bundle import run

    run(run_id="training", config_file=train_config_files(), **tiny_overrides(tmp_path, demo_dataset))
    model_path = tmp_path / "models" / "model.pt"
    assert model_path.is_file()
    state = torch.load(model_path, map_location="cpu", weights_only=True)
    net = UNeXt(1, 2)
    net.load_state_dict(state)  # the deployed network's weights only
    state_file = tmp_path / "models" / "train_state" / "train_state.pt"
    full = torch.load(state_file, map_location="cpu", weights_only=True)
    assert {
        "cnn",
        "transformer",
        "optimizer_cnn",
        "optimizer_transformer",
        "lr_scheduler_cnn",
        "lr_scheduler_transformer",
        "trainer",
    } <= set(full)
    assert full["trainer"]["iteration"] == 2
    assert not any(name.endswith(".pt") and name != "model.pt" for name in os.listdir(tmp_path / "models"))
    assert list((tmp_path / "eval").glob("events.out.tfevents*")), "TensorBoard logs written"


def _prepare_psfhs_subset(root, ids_labeled, ids_unlabeled, ids_val):
    src = SHARED_DATA / "psfhs"
    doc = {"training": [], "unlabeled": [], "validation": [], "allow_paths_outside": True}  # the shared files
    for split, ids in (("training", ids_labeled), ("unlabeled", ids_unlabeled), ("validation", ids_val)):
        for i in ids:
            entry = {"image": str(src / "images" / f"{i:05d}.png"), "label": str(src / "labels" / f"{i:05d}.png")}
            doc[split].append(entry if split != "unlabeled" else {"image": entry["image"]})
    path = root / "datalist.json"
    path.write_text(json.dumps(doc))
    return str(root)


@pytest.mark.slow
def test_short_run_on_real_psfhs_improves_validation_dice(tmp_path):
    require_shared("psfhs")
    from monai.bundle import ConfigWorkflow

    ids = list(range(3744, 4800))
    data_dir = _prepare_psfhs_subset(tmp_path, ids[0:400:50], ids[1:400:25], ids[600:660:6])
    overrides = tiny_overrides(
        tmp_path,
        data_dir,
        num_classes=3,
        max_iterations=60,
        **{"train#epoch_length": 60},
        learning_rate=0.01,
        validate_transformer=False,
    )
    wf = ConfigWorkflow(config_file=train_config_files(), workflow_type="train", **overrides)
    wf.initialize()
    evaluator = wf.parser.get_parsed_content("validate#evaluator")
    evaluator.run()
    untrained = evaluator.state.metrics["val_mean_dice"]
    wf.run()
    trained = evaluator.state.metrics["val_mean_dice"]
    assert trained > untrained + 0.1, (untrained, trained)


def test_monai_mlflow_tracking_logs_the_run(tmp_path, demo_dataset):
    from monai.bundle import run
    from monai.utils import path_to_sqlite_uri

    run(
        run_id="training",
        config_file=train_config_files(),
        meta_file=str(CONFIGS / "metadata.json"),
        tracking="mlflow",
        **tiny_overrides(tmp_path, demo_dataset),
    )
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=path_to_sqlite_uri(str(tmp_path / "eval" / "mlruns.db")))
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    metrics = set().union(*(r.data.metrics for r in runs))
    assert any("loss" in m.lower() for m in metrics) and "val_mean_dice" in metrics, metrics


@pytest.mark.parametrize("value, on", [("false", False), ("true", True), ("yes", True)])
def test_compile_is_switched_by_its_value(value, on):
    """``--compile true`` switches torch.compile on (no line to uncomment); a bad value is one line."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(train_config_files())
    assert parser["compile"] is False  # off by default
    parser["compile"] = value
    assert parser.get_parsed_content("train#trainer#compile") is on
    parser["compile"] = "sometimes"
    with pytest.raises(Exception, match="compile"):
        parser.get_parsed_content("train#trainer#compile")


def test_each_workflow_states_which_record_it_reads():
    """Training reads no record of earlier weights; evaluation and inference the one beside the
    weights they load, whatever config came before them in the merge."""
    from monai.bundle import ConfigParser

    def record_file(*files):
        parser = ConfigParser()
        parser.read_config([str(CONFIGS / f) for f in files])
        parser.update({"bundle_root": str(REPO / "bundle"), "ckpt_dir": "/weights"})
        return parser.get_parsed_content("model_config_file")

    assert record_file("common.yaml", "train.yaml", "methods/ours.yaml") is None
    for files in (("common.yaml", "train.yaml", "evaluate.yaml"), ("common.yaml", "evaluate.yaml")):
        assert record_file(*files) == "/weights/model_config.json"
    assert record_file("common.yaml", "inference.yaml") == "/weights/model_config.json"
