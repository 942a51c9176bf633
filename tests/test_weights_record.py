"""The record beside the weights belongs to them: it carries their sha256 (written with model.pt),
and evaluation, inference and export refuse weights without their own record unless the image
size is given explicitly (a default 448 px on 64 px weights gave wrong masks with exit 0)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import CONFIGS, REPO

from custom.deploy.model_config import CHECKSUM_KEY, ModelConfig, weights_sha256
from custom.networks import UNeXt
from custom.utils.runtime import input_error_of

RECORD = {"image_size": [64, 64], "num_classes": 2, "in_channels": 1, "intensity_range": [0, 255]}


def _weights(path, seed=0):
    torch.manual_seed(seed)
    torch.save(UNeXt(1, 2).state_dict(), path)
    return path


def _parser(ckpt_dir, *configs, **more):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(CONFIGS / c) for c in ("common.yaml", *configs)])
    parser.update({"bundle_root": str(REPO / "bundle"), "ckpt_dir": str(ckpt_dir), **more})
    return parser


def test_best_model_saver_writes_the_checksum_of_the_renamed_weights(tmp_path):
    from custom.training.checkpoint import _atomic_disk_saver

    config = ModelConfig(str(tmp_path), RECORD)
    saver = _atomic_disk_saver()(str(tmp_path), "model.pt", config.write)
    saver({"w": torch.arange(5.0)}, "ignored.pt")
    record = json.loads((tmp_path / "model_config.json").read_text())
    assert record[CHECKSUM_KEY] == weights_sha256(tmp_path / "model.pt")
    saver({"w": torch.arange(6.0)}, "ignored.pt")  # a better model later: the record follows it
    record = json.loads((tmp_path / "model_config.json").read_text())
    assert record[CHECKSUM_KEY] == weights_sha256(tmp_path / "model.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "model_config.json"]


@pytest.mark.parametrize("workflow", ["inference.yaml", "evaluate.yaml"])
def test_weights_without_a_record_are_refused_unless_the_size_is_given(tmp_path, workflow):
    _weights(tmp_path / "model.pt")
    with pytest.raises(Exception) as err:
        _parser(tmp_path, workflow).get_parsed_content("image_size")
    text = str(input_error_of(err.value))  # the one line a bundle run prints
    assert "model_config.json" in text and str(tmp_path / "model.pt") in text and "--image_size" in text, text
    assert _parser(tmp_path, workflow, image_size=[64, 64]).get_parsed_content("image_size") == [64, 64]


def test_a_record_of_other_weights_is_refused_and_never_sets_a_value(tmp_path):
    _weights(tmp_path / "model.pt", seed=0)
    ModelConfig(str(tmp_path), {**RECORD, "image_size": [32, 32]}).write()  # the record of these weights
    assert _parser(tmp_path, "inference.yaml").get_parsed_content("image_size") == [32, 32]
    _weights(tmp_path / "model.pt", seed=1)  # other weights replace model.pt; the record stays
    with pytest.raises(Exception) as err:
        _parser(tmp_path, "inference.yaml").get_parsed_content("image_size")
    text = str(input_error_of(err.value))
    assert "describes other weights" in text and CHECKSUM_KEY in text, text
    # the size given explicitly: the foreign record is ignored, not compared (no "trained with 32")
    parser = _parser(tmp_path, "inference.yaml", image_size=[64, 64])
    assert parser.get_parsed_content("model_record_file") is None
    parser.get_parsed_content("network_def")


def test_a_record_without_a_checksum_is_refused(tmp_path):
    _weights(tmp_path / "model.pt")
    (tmp_path / "model_config.json").write_text(json.dumps(RECORD))
    with pytest.raises(Exception) as err:
        _parser(tmp_path, "evaluate.yaml").get_parsed_content("image_size")
    assert "carries no checksum" in str(input_error_of(err.value))


def test_export_refuses_a_record_of_other_weights_in_one_line(tmp_path, capsys):
    from custom.deploy.export import main

    _weights(tmp_path / "model.pt", seed=0)
    ModelConfig(str(tmp_path), RECORD).write()
    _weights(tmp_path / "model.pt", seed=1)
    with pytest.raises(SystemExit) as exit_:
        main(["torchscript", "--ckpt_dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.startswith("error: ") and "\n" not in err, err
    assert "describes other weights" in err and "--image_size" in err, err
    with pytest.raises(SystemExit):
        main(["torchscript", "--ckpt_dir", str(tmp_path), "--image_size", "abc"])
    assert "--image_size: expected two positive integers" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "model_config.json"]


def test_packaging_refuses_to_ship_a_record_of_other_weights(tmp_path):
    from custom.deploy.package import PackagingError, package

    models = tmp_path / "models"
    models.mkdir()
    _weights(models / "model.pt", seed=0)
    ModelConfig(str(models), RECORD).write()
    _weights(models / "model.pt", seed=1)
    with pytest.raises(PackagingError, match="describes other weights"):
        package(str(tmp_path / "dist"), weights=str(models / "model.pt"))
    assert not (tmp_path / "dist").exists() or not any((tmp_path / "dist").iterdir())
