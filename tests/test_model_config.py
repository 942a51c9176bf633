"""Issue 16 items 1-3: scale overrides merge into every workflow, the scale travels with the
weights (models/model_config.json), and a training never silently replaces weights of
another configuration."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import CONFIGS, REPO, tiny_overrides, train_config_files
from PIL import Image

SCALES = ["cpu_small.yaml", "demo.yaml", "protocol.yaml", "protocol_cpu.yaml"]
META = str(CONFIGS / "metadata.json")
# the tiny size of tests/conftest.py, as a user would repeat it on every command
SIZE = {
    "image_size": [64, 64],
    "transformer_def#embed_dim": 12,
    "transformer_def#num_heads": [1, 1, 2, 2],
    "transformer_def#window_size": 4,
}


def _cfg(*names):
    return [str(CONFIGS / n) for n in names]


def _chain(e):
    out = []
    while e is not None:
        out.append(str(e))
        e = e.__cause__ or e.__context__
    return "\n".join(out)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_dataset):
    """A tiny training with cpu_small.yaml merged, as the README's step 2 (at the tests' size)."""
    from monai.bundle import run

    tmp = tmp_path_factory.mktemp("trained")
    run(
        run_id="training",
        config_file=train_config_files("cpu_small.yaml"),
        meta_file=META,
        **tiny_overrides(tmp, demo_dataset, validate_transformer=False),
    )
    return tmp


@pytest.mark.parametrize("scale", SCALES)
def test_scale_overrides_carry_no_workflow_keys(scale):
    keys = yaml.safe_load((CONFIGS / scale).read_text())
    assert not [k for k in keys if "#" in k and k.split("#")[0] in ("train", "validate")], scale


def test_training_records_what_inference_needs(trained, demo_dataset):
    rec = json.loads((trained / "models" / "model_config.json").read_text())
    assert rec["image_size"] == [64, 64] and rec["num_classes"] == 2 and rec["in_channels"] == 1
    assert rec["labels"] == {"background": 0, "fetal head": 1} and rec["intensity_range"] == [0, 255]
    assert rec["transformer_def"]["embed_dim"] == 12 and rec["transformer_def"]["window_size"] == 4
    assert rec["transformer_def"]["num_heads"] == [1, 1, 2, 2] and rec["transformer_def"]["img_size"] == 64
    assert rec["network_def"] == {"target": "custom.networks.UNeXt", "in_channels": 1, "out_channels": 2}


def test_readme_inference_evaluate_export_with_cpu_small(trained, demo_dataset, tmp_path):
    """The README's commands as written (cpu_small.yaml merged) plus the tests' tiny size."""
    from monai.bundle import ckpt_export, run

    common = {
        "bundle_root": str(REPO / "bundle"),
        "ckpt_dir": str(trained / "models"),
        "dataset_dir": demo_dataset,
        "output_dir": str(tmp_path / "out"),
        **SIZE,
    }
    run(
        config_file=_cfg("common.yaml", "cpu_small.yaml", "inference.yaml"),
        meta_file=META,
        input_path=str(Path(demo_dataset) / "images"),
        **common,
    )
    # one mask per input, at the input's own size, holding class ids only
    inputs = sorted((Path(demo_dataset) / "images").glob("*.png"))
    masks = sorted((tmp_path / "out" / "inference").glob("*_mask.png"))
    assert [m.name for m in masks] == [f"{p.stem}_mask.png" for p in inputs]
    for image, mask in zip(inputs, masks):
        m = np.asarray(Image.open(mask))
        assert m.shape == np.asarray(Image.open(image)).shape[:2], mask
        assert set(np.unique(m)) <= {0, 1}, mask
    run(
        run_id="evaluating",
        config_file=_cfg("common.yaml", "train.yaml", "cpu_small.yaml", "evaluate.yaml"),
        meta_file=META,
        eval_split="validation",
        **common,
    )
    validation = json.loads((Path(demo_dataset) / "datalist.json").read_text())["validation"]
    summary = json.loads((tmp_path / "out" / "evaluation" / "summary.json").read_text())
    assert summary["n_images"] == len(validation) > 0
    per_image = (tmp_path / "out" / "evaluation" / "per_image.csv").read_text().strip().splitlines()
    assert len(per_image) == 1 + len(validation)
    assert (tmp_path / "out" / "evaluation" / "summary.md").is_file()
    ckpt_export(
        net_id="network_def",
        filepath=str(tmp_path / "model.ts"),
        ckpt_file=str(trained / "models" / "model.pt"),
        meta_file=META,
        config_file=_cfg("common.yaml", "cpu_small.yaml"),
        input_shape=[1, 1, 64, 64],
        **common,
    )
    # the TorchScript model computes what the eager network with these weights computes
    from custom.networks import UNeXt

    eager = UNeXt(1, 2)
    eager.load_state_dict(torch.load(trained / "models" / "model.pt", weights_only=True))
    scripted = torch.jit.load(str(tmp_path / "model.ts"))
    x = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(scripted(x), eager.eval()(x), atol=1e-4, rtol=1e-4)


def test_consumers_without_the_scale_use_the_recorded_one(trained, demo_dataset, tmp_path):
    from monai.bundle import ConfigParser, run

    parser = ConfigParser()
    parser.read_config(_cfg("common.yaml", "inference.yaml"))
    parser.update({"bundle_root": str(REPO / "bundle"), "ckpt_dir": str(trained / "models")})
    assert parser.get_parsed_content("image_size") == [64, 64]
    assert parser.get_parsed_content("transformer").encoder.patch_embed.proj.out_channels == 12
    # the disagreement map builds the Swin-Unet and loads its training-state weights
    run(
        config_file=_cfg("common.yaml", "inference.yaml"),
        meta_file=META,
        bundle_root=str(REPO / "bundle"),
        ckpt_dir=str(trained / "models"),
        output_dir=str(tmp_path / "out"),
        with_disagreement=True,
        input_path=str(Path(demo_dataset) / "images"),
    )
    assert list((tmp_path / "out" / "inference").rglob("*.png"))
    run(
        run_id="evaluating",
        config_file=_cfg("common.yaml", "train.yaml", "evaluate.yaml"),
        meta_file=META,
        bundle_root=str(REPO / "bundle"),
        ckpt_dir=str(trained / "models"),
        dataset_dir=demo_dataset,
        output_dir=str(tmp_path / "out"),
        eval_split="validation",
    )
    summary = json.loads((tmp_path / "out" / "evaluation" / "summary.json").read_text())
    assert summary


@pytest.mark.parametrize(
    "override, named",
    [
        ({"image_size": [32, 32]}, "image_size=[32, 32]"),
        ({"transformer_def#embed_dim": 96}, "transformer_def.embed_dim=96"),
        ({"num_classes": 3}, "num_classes=3"),
    ],
)
def test_an_explicit_contradicting_value_is_refused(trained, demo_dataset, tmp_path, override, named):
    from monai.bundle import run

    with pytest.raises(Exception) as err:
        run(
            config_file=_cfg("common.yaml", "inference.yaml"),
            meta_file=META,
            bundle_root=str(REPO / "bundle"),
            ckpt_dir=str(trained / "models"),
            output_dir=str(tmp_path / "out"),
            input_path=str(Path(demo_dataset) / "images"),
            **override,
        )
    msg = [line for line in _chain(err.value).splitlines() if "but the weights were trained with" in line]
    assert msg and named in msg[0] and "model_config.json" in msg[0], _chain(err.value)[-2000:]


def test_a_second_training_of_another_configuration_is_refused(trained, demo_dataset, tmp_path):
    from monai.bundle import run

    models = tmp_path / "models"
    models.mkdir()
    for f in ("model.pt", "model_config.json"):
        (models / f).write_bytes((trained / "models" / f).read_bytes())
    before = (models / "model.pt").read_bytes()
    ov = tiny_overrides(tmp_path, demo_dataset, validate_transformer=False, ckpt_dir=str(models))
    ov["transformer_def#embed_dim"] = 24
    with pytest.raises(Exception) as err:
        run(run_id="training", config_file=train_config_files(), meta_file=META, **ov)
    text = _chain(err.value)
    assert "holds weights of another configuration" in text and "--overwrite_model true" in text, text[-2000:]
    assert (models / "model.pt").read_bytes() == before
    run(run_id="training", config_file=train_config_files(), meta_file=META, overwrite_model=True, **ov)
    assert json.loads((models / "model_config.json").read_text())["transformer_def"]["embed_dim"] == 24
    assert (models / "model.pt").read_bytes() != before
    torch.load(models / "model.pt", weights_only=True)


def test_package_and_monailabel_follow_the_recorded_weights(trained, tmp_path):
    from custom.deploy.package import package
    from custom.monailabel_app.lib.bundle_config import BundleSettings

    models = trained / "models"
    target = package(str(tmp_path / "dist"), name="b", weights=str(models / "model.pt"))
    meta = json.loads((target / "configs" / "metadata.json").read_text())
    fmt = meta["network_data_format"]
    assert fmt["inputs"]["image"]["spatial_shape"] == fmt["outputs"]["pred"]["spatial_shape"] == [64, 64]
    assert fmt["outputs"]["pred"]["num_channels"] == 2 and fmt["outputs"]["pred"]["channel_def"] == {
        "0": "background",
        "1": "fetal head",
    }
    assert (target / "models" / "model_config.json").read_bytes() == (models / "model_config.json").read_bytes()

    settings = BundleSettings.from_conf({"bundle_root": str(REPO / "bundle"), "models_dir": str(models)})
    assert settings.num_classes == 2 and settings.labels == ["fetal head"]
    parser = settings.parser("inference")
    assert parser.get_parsed_content("transformer").encoder.patch_embed.proj.out_channels == 12
