"""The pretraining workflow (issue 31): masked image modelling of the Swin-Unet's encoder, its
weights loadable by transformer_pretrained_path, the record and curve beside them, resume after a
kill, the images it reads (never a mask, never a held-out frame) and one-line errors."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CONFIGS, REPO

from custom.networks import SwinUnet, load_pretrained_swin
from custom.pretraining.mim import MaskedImageModel, MaskedReconstructionLoss, RandPatchMaskd

HOOKS = REPO / "tests" / "kill_hooks"
SWIN = {"img_size": 64, "embed_dim": 12, "num_heads": [1, 1, 2, 2], "window_size": 4}


def _swin(seed: int = 0) -> SwinUnet:
    torch.manual_seed(seed)
    return SwinUnet(**SWIN)


# ------------------------------------------------------------------------- the objective


def test_mask_covers_the_ratio_in_whole_cells():
    t = RandPatchMaskd(image_size=64, mask_patch_size=16, mask_ratio=0.6)
    t.set_random_state(3)
    masks = [t({"image": torch.zeros(1, 64, 64)})["mask"] for _ in range(20)]
    for m in masks:
        assert m.shape == (16, 16)  # one value per 4x4-pixel token
        cells = m.reshape(4, 4, 4, 4).permute(0, 2, 1, 3).reshape(16, 16)  # 16 cells of 4x4 tokens
        assert ((cells == 0) | (cells == 1)).all() and (cells.min(1).values == cells.max(1).values).all()
        assert int(cells[:, 0].sum()) == 10  # ceil(16 * 0.6) cells masked
    assert len({m.numpy().tobytes() for m in masks}) > 15  # drawn anew per image
    for bad in ({"mask_patch_size": 6}, {"mask_patch_size": 24}, {"mask_ratio": 1.0}):
        with pytest.raises(ValueError, match="mask_patch_size|mask_ratio"):
            RandPatchMaskd(image_size=64, **{"mask_patch_size": 16, "mask_ratio": 0.6, **bad})


def test_the_encoder_never_sees_the_masked_pixels():
    """The masked tokens are replaced by the mask token: whatever the masked cells hold, the
    reconstruction is the same; an unmasked pixel changes it."""
    model = MaskedImageModel(_swin()).eval()
    t = RandPatchMaskd(image_size=64, mask_patch_size=16, mask_ratio=0.5)
    t.set_random_state(0)
    mask = t({"image": None})["mask"][None]
    pixels = mask.repeat_interleave(4, 1).repeat_interleave(4, 2)[:, None].bool()
    image = torch.rand(1, 1, 64, 64)
    other = torch.where(pixels, torch.rand(1, 1, 64, 64), image)
    with torch.no_grad():
        a, b = model(image, mask), model(other, mask)
        changed = image.clone()
        changed[~pixels] = 1 - changed[~pixels]
        c = model(changed, mask)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_the_loss_reads_the_masked_pixels_only():
    image = torch.rand(2, 1, 64, 64)
    mask = torch.zeros(2, 16, 16)
    mask[:, :8] = 1  # the upper half
    pred = image.clone()
    pred[:, :, 32:] = 0  # wrong where unmasked only
    loss = MaskedReconstructionLoss()
    assert float(loss(pred, (image, mask))) < 1e-6
    pred[:, :, :32] += 0.25  # wrong by 0.25 on every masked pixel
    assert float(loss(pred, (image, mask))) == pytest.approx(0.25, abs=1e-4)


# ------------------------------------------------------------------------- the workflow


def _args(dataset: str, out: Path, **more) -> list[str]:
    values = {
        "bundle_root": str(REPO / "bundle"),
        "dataset_dir": dataset,
        "ckpt_dir": str(out),
        "image_size": [64, 64],
        "transformer_def#embed_dim": SWIN["embed_dim"],
        "transformer_def#num_heads": SWIN["num_heads"],
        "transformer_def#window_size": 4,
        "pretrain_iterations": 12,
        "pretrain_epoch_length": 4,
        "pretrain_batch_size": 4,
        "log_every": 4,
        **more,
    }
    args = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "pretraining",
        "--config_file",
        str([str(CONFIGS / "common.yaml"), str(CONFIGS / "pretrain.yaml")]),
        "--meta_file",
        str(CONFIGS / "metadata.json"),
    ]
    for k, v in values.items():
        args += [f"--{k}", repr(v) if isinstance(v, list) else str(v)]
    return args


def _run(args, kill_at: str | None = None, expect: int = 0):
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": f"{HOOKS}{os.pathsep}{REPO}",
        "KILL_REPO": str(REPO),
        "KILL_ENGINE": "SupervisedTrainer",
    }
    env.pop("KILL_AT", None)
    if kill_at:
        env["KILL_AT"] = kill_at
    p = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == (-9 if kill_at else expect), p.stderr[-3000:]
    return p


def _losses(out: Path) -> list[float]:
    with open(out / "pretrain_loss.csv", newline="") as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


def test_pretraining_writes_weights_that_transformer_pretrained_path_loads(demo_dataset, tmp_path):
    out = tmp_path / "pretrained"
    _run(_args(demo_dataset, out))
    record = json.loads((out / "transformer_pretrained.json").read_text())
    assert record["complete"] and record["iterations"] == record["max_iterations"] == 12
    assert record["images_by_source"] == {"training": 8, "unlabeled": 8}  # validation never read
    assert record["transformer_def"]["embed_dim"] == 12 and record["image_size"] == [64, 64]
    import hashlib

    assert record["weights_sha256"] == hashlib.sha256((out / "transformer_pretrained.pt").read_bytes()).hexdigest()
    losses = _losses(out)
    assert len(losses) == 12 and all(np.isfinite(losses))
    assert (out / "pretrain_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".tmp_*"))  # atomic writes leave nothing behind

    saved = torch.load(out / "transformer_pretrained.pt", map_location="cpu", weights_only=True)["state_dict"]
    fresh = _swin(seed=1)
    assert not torch.equal(
        fresh.encoder.layers[0].blocks[0].attn.qkv.weight, saved["layers.0.blocks.0.attn.qkv.weight"]
    )
    report = load_pretrained_swin(fresh, str(out / "transformer_pretrained.pt"))
    assert not report["skipped"]
    for key, value in fresh.encoder.state_dict().items():
        assert torch.equal(value, saved[key]), key
    # the mirrored decoder stages start from the encoder's blocks, as with ImageNet weights
    assert torch.equal(fresh.decoder[0].stage.blocks[0].attn.qkv.weight, saved["layers.2.blocks.0.attn.qkv.weight"])

    # weights of other widths: one line saying what they were pretrained with (their record)
    with pytest.raises(ValueError, match=r"pretrained with embed_dim 12 \(this network: 24\)"):
        load_pretrained_swin(SwinUnet(**{**SWIN, "embed_dim": 24}), str(out / "transformer_pretrained.pt"))
    with pytest.raises(ValueError, match=r"pretrained with num_heads \[1, 1, 2, 2\] \(this network: \[1, 2, 2, 4\]\)"):
        load_pretrained_swin(SwinUnet(**{**SWIN, "num_heads": [1, 2, 2, 4]}), str(out / "transformer_pretrained.pt"))

    # a training with --transformer_pretrained_path builds the Swin-Unet from it
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "common.yaml")])
    parser.update(
        {
            "bundle_root": str(REPO / "bundle"),
            "dataset_dir": demo_dataset,
            "ckpt_dir": str(tmp_path / "m"),
            "image_size": [64, 64],
            "transformer_def#embed_dim": 12,
            "transformer_def#num_heads": [1, 1, 2, 2],
            "transformer_def#window_size": 4,
            "transformer_pretrained_path": str(out / "transformer_pretrained.pt"),
        }
    )
    built = parser.get_parsed_content("transformer")
    assert torch.equal(
        built.encoder.layers[1].blocks[1].mlp.fc1.weight.cpu(), saved["layers.1.blocks.1.mlp.fc1.weight"]
    )


def test_pretraining_resumes_after_a_kill(demo_dataset, tmp_path):
    out = tmp_path / "pretrained"
    _run(_args(demo_dataset, out), kill_at="iteration:6")  # after the state of epoch 1 (4 iterations)
    first = _losses(out)
    assert len(first) == 4
    record = json.loads((out / "transformer_pretrained.json").read_text())
    assert not record["complete"] and record["iterations"] == 4
    _run(_args(demo_dataset, out, resume="true"))
    record = json.loads((out / "transformer_pretrained.json").read_text())
    assert record["complete"] and record["iterations"] == 12
    losses = _losses(out)
    assert len(losses) == 12 and losses[:4] == first  # the curve is whole across the kill
    state = torch.load(out / "pretrain_state" / "train_state.pt", map_location="cpu", weights_only=True)
    assert state["trainer"]["iteration"] == 12
    assert state["lr_scheduler"]["last_epoch"] == 12  # the schedule continued, not restarted


def _write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)


def test_extra_images_are_read_without_masks_and_never_a_held_out_frame(demo_dataset, tmp_path):
    from custom.data.datalist import load_split
    from custom.pretraining.workflow import pretraining_images

    datalist = str(Path(demo_dataset) / "datalist.json")
    extra = tmp_path / "site2"
    rng = np.random.default_rng(0)
    for i in (100, 101, 102):
        _write_png(extra / f"{i:05d}.png", rng.integers(0, 255, (80, 96)))
    _write_png(extra / "00100_mask.png", np.zeros((80, 96)))
    _write_png(extra / "00101_HC_Annotation.png", np.zeros((80, 96)))
    images = pretraining_images(datalist, str(extra))
    names = sorted(Path(e["image"]).name for e in images if e["source"] == "extra:site2")
    assert names == ["00100.png", "00101.png", "00102.png"]
    assert len(images) == 16 + 3
    only = pretraining_images(datalist, [str(extra)], "100-101")
    assert sorted(Path(e["image"]).name for e in only if e["source"].startswith("extra"))[-1] == "00101.png"

    held_out = load_split(datalist, "validation", require_labels=False)[0]["image"]
    shutil.copy(held_out, extra / "00103.png")
    with pytest.raises(ValueError, match=r"00103\.png: the same frame as 'validation'"):
        pretraining_images(datalist, str(extra))
    with pytest.raises(ValueError, match="--extra_ids 'abc'"):
        pretraining_images(datalist, str(extra), "abc")
    with pytest.raises(ValueError, match="--extra_images .*no image file"):
        pretraining_images(datalist, str(extra), "7-9")


@pytest.mark.parametrize(
    "more, message",
    [
        ({"extra_images": "/nonexistent/frames"}, "error: --extra_images /nonexistent/frames: folder not found"),
        ({"pretrain_iterations": "abc"}, "error: --pretrain_iterations: expected a positive integer, got 'abc'"),
        ({"mask_patch_size": 12}, "error: mask_patch_size: expected a multiple of 4 that divides the image size 64"),
    ],
)
def test_bad_input_is_one_line(demo_dataset, tmp_path, more, message):
    p = _run(_args(demo_dataset, tmp_path / "out", **more), expect=1)
    assert message in p.stderr and "Traceback" not in p.stderr


def test_the_readmes_pretraining_lines_run_as_written(demo_dataset, tmp_path):
    """The README's two pretraining lines as written, on the demo set at a tiny size (its paths
    replaced by temporary ones, the scale appended): the training starts its Swin-Unet from the
    pretrained encoder."""
    import re
    import shlex

    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("### Pretraining the Swin-Unet on the frames at hand", 1)[1].split("\n## ", 1)[0]
    lines = re.findall(r"^(\.venv/bin/python -m monai\.bundle run \S+ .*)$", section, re.M)
    assert [shlex.split(line)[4] for line in lines] == ["pretraining", "training"], lines
    extra = tmp_path / "site2" / "images"
    rng = np.random.default_rng(0)
    for i in (4900, 4901, 4990):
        _write_png(extra / f"{i:05d}.png", rng.integers(0, 255, (64, 64)))
    out = tmp_path / "pretrained"
    replace = {
        "data/psfhs20": demo_dataset,
        "runs/pretrained": str(out),
        "../shared/data/psfhs_site2/images": str(extra),
    }
    tiny = {
        "image_size": [64, 64],
        "transformer_def#embed_dim": 12,
        "transformer_def#num_heads": [1, 1, 2, 2],
        "pretrain_iterations": 4,
        "pretrain_epoch_length": 2,
        "pretrain_batch_size": 4,
        "max_iterations": 2,
        "train#epoch_length": 2,
        "ict_start": 0,
        "ckpt_dir": str(tmp_path / "models"),
    }
    for line, run in zip(lines, ("pretraining", "training")):
        args = shlex.split(line)
        for old, new in replace.items():
            args = [new + a[len(old) :] if a.startswith(old) else a for a in args]
        for key, value in tiny.items():
            if key == "ckpt_dir" and run == "pretraining":
                continue
            if (key.startswith("pretrain") and run == "training") or (
                key in ("max_iterations", "train#epoch_length", "ict_start") and run == "pretraining"
            ):
                continue
            args += [f"--{key}", repr(value) if isinstance(value, list) else str(value)]
        p = subprocess.run(
            [sys.executable, *args[1:]],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)},
        )
        assert p.returncode == 0, (run, p.stderr[-3000:])
    record = json.loads((out / "transformer_pretrained.json").read_text())
    assert record["complete"] and record["images_by_source"]["extra:site2"] == 2  # 4990 is outside 4900-4949
    log = p.stdout + p.stderr
    assert re.search(r"loaded \d+ encoder and \d+ decoder tensors from \S*transformer_pretrained\.pt", log), log[-2000:]
    assert (tmp_path / "models" / "model.pt").is_file()
