"""The ``amp`` option of train.yaml: booleans as given, ``auto`` bfloat16 autocast only where it
was measured to win (large images on a device with native bfloat16)."""

from __future__ import annotations

import pytest
import torch
from conftest import train_config_files

from custom.training import settings as tr
from custom.utils.cli import OptionError


@pytest.mark.parametrize(
    "value, expected", [("true", True), ("false", False), ("yes", True), ("0", False), (True, True)]
)
def test_explicit_values_are_booleans(value, expected):
    assert tr.resolve_amp(value, [64, 64], "cpu") is expected
    assert tr.resolve_amp(value, [448, 448], "cpu") is expected


def test_a_bad_value_names_the_option():
    with pytest.raises((OptionError, ValueError), match="amp"):
        tr.resolve_amp("perhaps", [448, 448], "cpu")


@pytest.mark.parametrize("native", [True, False])
def test_auto_is_on_only_for_large_images_on_a_native_bf16_device(monkeypatch, native):
    monkeypatch.setattr(tr, "bf16_is_native", lambda device: native)
    assert tr.resolve_amp("auto", [448, 448], "cpu") is native
    assert tr.resolve_amp("auto", [224, 224], "cpu") is native
    assert tr.resolve_amp("auto", [128, 128], "cpu") is native  # the CPU scale: bf16 was faster there
    assert tr.resolve_amp("auto", [64, 64], "cpu") is False  # the demo's size: bf16 was slower there
    assert tr.resolve_amp("auto", [448, 64], "cpu") is False  # the smaller side decides
    assert tr.resolve_amp("auto", [448, 448], "cpu", amp_dtype="float16") is False  # auto means bfloat16 only
    assert tr.resolve_amp("auto", [448, 448], "cpu", min_side=512) is False


def test_native_bf16_detection_reads_the_device():
    assert tr.bf16_is_native("meta") is False
    if not torch.cuda.is_available():
        assert tr.bf16_is_native("cuda") is False
    try:
        flags = open("/proc/cpuinfo", encoding="utf-8").read()
    except OSError:
        flags = ""
    assert tr.bf16_is_native("cpu") == (" avx512_bf16" in flags or " amx_bf16" in flags)


@pytest.mark.parametrize("extra, size", [(("demo.yaml",), 64), (("cpu_small.yaml",), 128), ((), 448)])
def test_the_default_config_resolves_auto_by_its_image_size(extra, size, monkeypatch):
    from monai.bundle import ConfigParser

    monkeypatch.setattr(tr, "bf16_is_native", lambda device: True)
    parser = ConfigParser()
    parser.read_config(train_config_files(*extra))
    parser["model_config_file"] = None
    assert parser.get_parsed_content("amp") == "auto" and parser.get_parsed_content("image_size")[0] == size
    assert parser.get_parsed_content("train#trainer#amp") is (size >= 128)


@pytest.mark.parametrize("amp_roles", [None, ("transformer",)])
def test_only_the_networks_of_amp_roles_run_in_bfloat16(amp_roles):
    """With amp on, each network's forward (and the terms' forwards of it) is autocast only if its
    role is in amp_roles (None: every network): here the UNeXt stays in float32 while the Swin-Unet
    runs in bfloat16."""
    from test_trainer import _batches, tiny_swin

    from custom.networks import UNeXt
    from custom.training.ema import EMATeacher
    from custom.training.losses import SupervisedLoss
    from custom.training.terms import InterpolationConsistencyTerm
    from custom.training.trainer import SemiSupervisedTrainer

    torch.manual_seed(0)
    cnn, vit = UNeXt(1, 2), tiny_swin()
    labeled, unlabeled = _batches()
    trainer = SemiSupervisedTrainer(
        device="cpu",
        max_epochs=1,
        epoch_length=1,
        train_data_loader=labeled,
        unlabeled_data_loader=unlabeled,
        networks={"cnn": cnn, "transformer": vit},
        optimizers={r: torch.optim.SGD(n.parameters(), lr=0.01) for r, n in (("cnn", cnn), ("transformer", vit))},
        supervised_loss=SupervisedLoss(),
        terms=[InterpolationConsistencyTerm()],
        teachers={"transformer": EMATeacher(vit)},
        amp=True,
        amp_dtype="bfloat16",
        amp_roles=amp_roles,
        seed=0,
    )
    dtypes: dict[str, set] = {"cnn": set(), "transformer": set()}
    for role, net in trainer.networks.items():
        net.register_forward_hook(lambda m, i, out, role=role: dtypes[role].add(out.dtype))
    trainer.run()
    assert dtypes["transformer"] == {torch.bfloat16}  # the shared forward and ICT's mixed forward
    assert dtypes["cnn"] == ({torch.float32} if amp_roles else {torch.bfloat16})
