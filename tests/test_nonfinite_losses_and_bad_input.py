"""Numerical faults (nonfinite: stop | skip) and bad input at every entry point (training
datalists, checkpoints, configs, batch inference), each failing with the file and the problem."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import tiny_overrides, train_config_files
from ignite.engine import Events
from PIL import Image

from custom.data.preflight import PreflightError, check_entries, checked_split
from custom.deploy.inference import BAD_INPUTS_NAME, InputScreen, screen_inputs
from custom.networks import SwinUnet, UNeXt
from custom.training.checkpoint import load_network_weights
from custom.training.ema import EMATeacher
from custom.training.losses import SupervisedLoss
from custom.training.terms import CrossPseudoSupervisionTerm
from custom.training.trainer import SemiSupervisedTrainer


class NanFrom(CrossPseudoSupervisionTerm):
    """A CPS term whose value is NaN at the 0-based iterations in [start, stop)."""

    name = "nanterm"

    def __init__(self, start: int = 0, stop: int = 10**9, **kwargs) -> None:
        super().__init__(**kwargs)
        self.start, self.stop = start, stop

    def loss(self, ctx):
        value = super().loss(ctx)
        return value * float("nan") if self.start <= ctx.iteration < self.stop else value


# ------------------------------------------------------------------------ numerical faults
def _tiny_trainer(iterations, terms, nonfinite):
    from custom.data.demo import synthetic_head_image

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    pairs = [synthetic_head_image(32, rng) for _ in range(4)]
    imgs = torch.tensor(np.stack([p[0] for p in pairs]), dtype=torch.float32)[:, None] / 255
    masks = torch.tensor(np.stack([p[1] for p in pairs]), dtype=torch.float32)[:, None]
    cnn = UNeXt(1, 2)
    vit = SwinUnet(
        img_size=32,
        in_channels=1,
        out_channels=2,
        embed_dim=12,
        num_heads=(1, 1, 2, 2),
        window_size=4,
        drop_path_rate=0.0,
    )
    trainer = SemiSupervisedTrainer(
        device="cpu",
        max_epochs=iterations,
        train_data_loader=[{"image": imgs[:2], "label": masks[:2]}],
        unlabeled_data_loader=[{"image": imgs[2:]}],
        networks={"cnn": cnn, "transformer": vit},
        optimizers={
            "cnn": torch.optim.SGD(cnn.parameters(), lr=0.01),
            "transformer": torch.optim.SGD(vit.parameters(), lr=0.01),
        },
        supervised_loss=SupervisedLoss(),
        terms=terms,
        teachers={"transformer": EMATeacher(vit, 0.99)},
        seed=0,
        decollate=False,
        nonfinite=nonfinite,
    )
    return trainer


def test_skip_policy_skips_the_step_counts_it_and_warns(caplog):
    trainer = _tiny_trainer(3, [NanFrom(start=0, stop=1)], "skip")
    snapshots = []

    def snap(engine):
        snapshots.append(
            {
                "cnn": [p.detach().clone() for p in engine.networks["cnn"].parameters()],
                "teacher": [p.detach().clone() for p in engine.teachers["transformer"].module.parameters()],
                "grads": [p.grad for p in engine.networks["cnn"].parameters()],
                "output": dict(engine.state.output),
            }
        )

    before = {
        "cnn": [p.detach().clone() for p in trainer.networks["cnn"].parameters()],
        "teacher": [p.detach().clone() for p in trainer.teachers["transformer"].module.parameters()],
    }
    trainer.add_event_handler(Events.ITERATION_COMPLETED, snap)
    with caplog.at_level(logging.WARNING, logger="custom.training.trainer"):
        trainer.run()
    first, second = snapshots[0], snapshots[1]
    # the faulty step changed nothing: no optimiser step, no EMA update, gradients cleared
    assert all(torch.equal(a, b) for a, b in zip(before["cnn"], first["cnn"]))
    assert all(torch.equal(a, b) for a, b in zip(before["teacher"], first["teacher"]))
    assert all(g is None for g in first["grads"])
    assert first["output"]["nonfinite_skips"] == 1 and not torch.isfinite(first["output"]["loss"])
    # training went on from the next step
    assert any(not torch.equal(a, b) for a, b in zip(first["cnn"], second["cnn"]))
    assert any(not torch.equal(a, b) for a, b in zip(first["teacher"], second["teacher"]))
    assert trainer.state.nonfinite_skips == 1 and snapshots[-1]["output"]["nonfinite_skips"] == 1
    warnings = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(warnings) == 1 and "iteration 1" in warnings[0] and "loss_nanterm" in warnings[0]
    from custom.training.trainer import logged_terms

    assert logged_terms(snapshots[-1]["output"])["nonfinite_skips"] == 1.0


def test_stop_policy_raises_and_an_unknown_policy_is_refused():
    trainer = _tiny_trainer(2, [NanFrom(start=1)], "stop")
    with pytest.raises(FloatingPointError, match=r"iteration 2.*loss_nanterm"):
        trainer.run()
    assert trainer.state.iteration == 2
    with pytest.raises(ValueError, match="nonfinite must be one of"):
        _tiny_trainer(1, [], "ignore")


def test_stop_keeps_the_last_good_checkpoint(tmp_path, demo_dataset):
    """A NaN in epoch 2 stops the bundle run; model.pt and the training state of epoch 1 stay whole."""
    from monai.bundle import run

    ov = tiny_overrides(
        tmp_path,
        demo_dataset,
        max_iterations=4,
        validate_transformer=False,
        terms=[{"_target_": "test_nonfinite_losses_and_bad_input.NanFrom", "start": 2}],
    )
    ov["train#epoch_length"] = 2
    with pytest.raises(Exception) as info:
        run(run_id="training", config_file=train_config_files(), **ov)
    chain, e = [], info.value
    while e is not None:
        chain.append(e)
        e = e.__cause__ or e.__context__
    assert any(isinstance(x, FloatingPointError) and "iteration 3" in str(x) for x in chain), chain
    models = tmp_path / "models"
    UNeXt(1, 2).load_state_dict(torch.load(models / "model.pt", map_location="cpu", weights_only=True))
    state = torch.load(models / "train_state" / "train_state.pt", map_location="cpu", weights_only=True)
    assert state["trainer"]["iteration"] == 2  # the end of epoch 1, before the fault
    assert all(torch.isfinite(v).all() for v in state["cnn"].values() if v.is_floating_point())
    assert not list((models / "train_state").glob(".tmp_*")), "no half-written file left"


# ----------------------------------------------------------------- training/eval datalists
def _png(path, array):
    Image.fromarray(array).save(path)
    return str(path)


def _datalist(tmp_path, entries, split="training"):
    (tmp_path / "datalist.json").write_text(json.dumps({"num_classes": 2, split: entries}))
    return str(tmp_path / "datalist.json")


@pytest.fixture()
def mixed_training_list(tmp_path):
    rng = np.random.default_rng(0)
    img = lambda h, w: (rng.random((h, w)) * 255).astype(np.uint8)  # noqa: E731
    mask = np.zeros((64, 64), np.uint8)
    mask[20:40, 20:40] = 1
    d = tmp_path
    good = {"image": _png(d / "good.png", img(64, 64)), "label": _png(d / "good_m.png", mask)}
    small = {"image": _png(d / "small.png", img(20, 20)), "label": _png(d / "small_m.png", mask[:20, :20])}
    rgba = {
        "image": _png(d / "rgba.png", (rng.random((64, 64, 4)) * 255).astype(np.uint8)),
        "label": _png(d / "rgba_m.png", mask),
    }
    wrong_size = {"image": _png(d / "ws.png", img(64, 64)), "label": _png(d / "ws_m.png", mask[:50])}
    unknown = {"image": _png(d / "uv.png", img(64, 64)), "label": _png(d / "uv_m.png", mask * 7)}
    deep = {
        "image": _png(d / "deep16.png", (rng.random((64, 64)) * 60000).astype(np.uint16)),
        "label": _png(d / "deep_m.png", mask),
    }
    (d / "trunc.png").write_bytes((d / "good.png").read_bytes()[:100])
    trunc = {"image": str(d / "trunc.png"), "label": _png(d / "trunc_m.png", mask)}
    (d / "zero_m.png").write_bytes(b"")
    zero = {"image": _png(d / "zero.png", img(64, 64)), "label": str(d / "zero_m.png")}
    nan = np.full((64, 64), np.nan, np.float32)
    nib.save(nib.Nifti1Image(nan, np.eye(4)), str(d / "nan.nii.gz"))
    nanimg = {"image": str(d / "nan.nii.gz"), "label": _png(d / "nan_m.png", mask)}
    rgbmask = {
        "image": _png(d / "rgbm.png", img(64, 64)),
        "label": _png(d / "rgbm_m.png", np.stack([mask, mask * 0, mask], -1)),
    }
    entries = [good, small, rgba, wrong_size, unknown, deep, trunc, zero, nanimg, rgbmask]
    expected_bad = {
        wrong_size["label"]: "differs from its image",
        unknown["label"]: "label values [7] outside",
        deep["image"]: "outside intensity_range",
        trunc["image"]: "cannot read",
        zero["label"]: "empty file (0 bytes)",
        nanimg["image"]: "non-finite",
        rgbmask["label"]: "3 channels",
    }
    return _datalist(tmp_path, entries), entries, expected_bad


def test_preflight_lists_every_bad_file_of_a_training_list(mixed_training_list):
    datalist, entries, expected = mixed_training_list
    with pytest.raises(PreflightError) as info:
        checked_split(datalist, "training", num_classes=2, intensity_range=[0, 255])
    problems = dict(info.value.problems)
    assert set(problems) == set(expected), problems  # good, 20 x 20 and RGBA images pass
    for file, text in expected.items():
        assert text in problems[file], (file, problems[file])
        assert file in str(info.value)
    assert "'training' list" in str(info.value)
    # a list of only the good pairs goes through and comes back unchanged
    assert check_entries(entries[:3], 2, [0, 255]) == []
    # beyond the scan limit the label values are not read (documented), the rest still is
    problems = dict(check_entries(entries, 2, [0, 255], label_scan_limit=3))
    assert entries[4]["label"] not in problems and entries[3]["label"] in problems


def test_training_run_stops_before_training_on_a_bad_list(tmp_path, mixed_training_list):
    from monai.bundle import run

    datalist, entries, expected = mixed_training_list
    doc = json.loads(Path(datalist).read_text())
    # validation must not overlap training (refused by name): the first two move there
    doc["training"], doc["validation"], doc["unlabeled"] = entries[2:], entries[:2], [{"image": entries[0]["image"]}]
    Path(datalist).write_text(json.dumps(doc))
    with pytest.raises(Exception) as info:
        run(
            run_id="training",
            config_file=train_config_files(),
            **tiny_overrides(tmp_path, str(tmp_path), ckpt_dir=str(tmp_path / "m")),
        )
    text = "".join(str(e) for e in (info.value, info.value.__cause__) if e is not None)
    assert "bad input file(s)" in text and entries[3]["label"] in text
    assert not (tmp_path / "m" / "model.pt").exists()


def test_empty_and_missing_lists_and_paths_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="datalist not found"):
        checked_split(tmp_path / "nowhere" / "datalist.json", "training", 2)
    datalist = _datalist(tmp_path, [])
    with pytest.raises(ValueError, match="'training' list is empty"):
        checked_split(datalist, "training", 2)
    datalist = _datalist(tmp_path, [{"image": str(tmp_path / "gone.png"), "label": str(tmp_path / "gone_m.png")}])
    with pytest.raises(FileNotFoundError, match="gone.png"):
        checked_split(datalist, "training", 2)


def test_labelled_fraction_selecting_no_image_is_a_split_error(tmp_path):
    from custom.data.errors import SplitError
    from custom.data.prepare import prepare

    (tmp_path / "src" / "images").mkdir(parents=True)
    (tmp_path / "src" / "labels").mkdir()
    for i in range(5):
        _png(tmp_path / "src" / "images" / f"a{i}.png", np.full((16, 16), 9 * i, np.uint8))
        _png(tmp_path / "src" / "labels" / f"a{i}.png", np.eye(16, dtype=np.uint8))
    with pytest.raises(SplitError, match="selects .* = 0 images"):
        prepare("folder", tmp_path / "src", tmp_path / "out", labeled_fraction=0.01, progress=False, quiet=True)
    assert not (tmp_path / "out").exists()


def test_missing_and_incompatible_checkpoints_name_the_file(tmp_path):
    from custom.networks import load_pretrained_swin

    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_network_weights(UNeXt(1, 2), str(tmp_path / "none.pt"))
    torch.save(UNeXt(1, 3).state_dict(), tmp_path / "three.pt")
    with pytest.raises(ValueError, match=r"three\.pt does not fit UNeXt"):
        load_network_weights(UNeXt(1, 2), str(tmp_path / "three.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match=r"cannot read checkpoint .*junk\.pt"):
        load_network_weights(UNeXt(1, 2), str(tmp_path / "junk.pt"))
    swin = SwinUnet(img_size=32, in_channels=1, out_channels=2, embed_dim=12, num_heads=(1, 1, 2, 2), window_size=4)
    with pytest.raises(FileNotFoundError, match="pretrained Swin checkpoint not found"):
        load_pretrained_swin(swin, str(tmp_path / "swin.pth"))
    with pytest.raises(ValueError, match=r"three\.pt is not a Swin"):
        load_pretrained_swin(swin, str(tmp_path / "three.pt"))


# ----------------------------------------------------------------------- batch inference
@pytest.fixture()
def mixed_inputs(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    rng = np.random.default_rng(1)
    _png(d / "a_good.png", (rng.random((64, 64)) * 255).astype(np.uint8))
    _png(d / "b_small.png", (rng.random((20, 20)) * 255).astype(np.uint8))
    (d / "c_zero.png").write_bytes(b"")
    (d / "d_trunc.png").write_bytes((d / "a_good.png").read_bytes()[:80])
    _png(d / "e_deep16.png", (rng.random((64, 64)) * 60000).astype(np.uint16))
    return d


def test_screen_reports_bad_inputs_and_keeps_the_good(tmp_path, mixed_inputs):
    from custom.deploy.inference import list_inputs

    out = tmp_path / "out"
    good = screen_inputs(list_inputs(str(mixed_inputs)), str(out), intensity_range=[0, 255])
    assert [Path(g["image"]).name for g in good] == ["a_good.png", "b_small.png"]
    report = json.loads((out / BAD_INPUTS_NAME).read_text())
    assert {Path(r["file"]).name: r["reason"] for r in report}.keys() == {"c_zero.png", "d_trunc.png", "e_deep16.png"}
    assert all(r["reason"] for r in report)
    # a second screening refuses to overwrite the report of the first
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        InputScreen(str(out), intensity_range=[0, 255])(list_inputs(str(mixed_inputs)))
    # fail_on_bad_input: every bad file in one error, nothing written
    with pytest.raises(ValueError, match="3 bad input file") as info:
        InputScreen(str(tmp_path / "o2"), intensity_range=[0, 255], fail_on_bad_input=True)(
            list_inputs(str(mixed_inputs))
        )
    assert "c_zero.png: empty file" in str(info.value) and not (tmp_path / "o2").exists()
    # nothing usable at all is an error too
    with pytest.raises(ValueError, match="none is usable"):
        InputScreen(str(tmp_path / "o3"))([{"image": str(mixed_inputs / "c_zero.png")}])
