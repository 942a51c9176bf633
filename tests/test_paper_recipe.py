"""``methods/paper.yaml`` runs the published recipe (method.md), item by item, as a run merges it.

Each check reads the merged config of ``common.yaml + train.yaml + methods/paper.yaml`` (what
``monai.bundle run training`` builds) and compares it with method.md's words. The recipe file
passes; a copy of it with any one recipe line changed fails, naming that item; the override that
stood for the recipe before (``paper.yaml`` merged over ``ours.yaml``, which left the acquisition
augmentation and the unlabelled stream's augmentation on) fails.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from conftest import CONFIGS, REPO

PAPER = CONFIGS / "methods" / "paper.yaml"


def _parser(method_files, dataset_dir: str, tmp_path: Path):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "common.yaml"), str(CONFIGS / "train.yaml"), *map(str, method_files)])
    parser.update(
        {
            "bundle_root": str(REPO / "bundle"),
            "dataset_dir": dataset_dir,
            "ckpt_dir": str(tmp_path / "models"),
            "output_dir": str(tmp_path / "eval"),
            "device": "$torch.device('cpu')",
        }
    )
    return parser


def _close(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9)
    return a == b


def recipe_violations(parser) -> list[str]:
    """The recipe items of method.md that the merged config does not hold, by name."""
    from custom.data.datalist import load_split
    from custom.training.terms import (
        CrossPseudoSupervisionTerm,
        InformationDivergenceTerm,
        InterpolationConsistencyTerm,
    )

    get = parser.get_parsed_content
    bad: list[str] = []

    def expect(item: str, got, want) -> None:
        if not _close(got, want):
            bad.append(f"{item}: {got!r}, the recipe says {want!r}")

    # --- networks: UNeXt + Swin-Unet (patch 4, embed 96, depths 2222, heads 3-6-12-24, window 7, drop-path 0.2)
    expect("networks", dict(parser["networks"]), {"cnn": "@network", "transformer": "@transformer"})
    expect("UNeXt", parser["network_def"]["_target_"], "custom.networks.UNeXt")
    expect("Swin-Unet", parser["transformer_def"]["_target_"], "custom.networks.SwinUnet")
    for key, want in (("embed_dim", 96), ("depths", [2, 2, 2, 2]), ("num_heads", [3, 6, 12, 24]), ("window_size", 7)):
        expect(f"Swin-Unet {key}", get(f"transformer_def#{key}"), want)
    expect("Swin-Unet drop-path", get("transformer_def#drop_path_rate"), 0.2)
    expect("input size", list(get("image_size")), [448, 448])
    # --- the batch: 1 labelled + 4 unlabelled, both networks see the whole batch in one forward
    expect("batch size", get("batch_size"), 5)
    expect("labelled images per batch", get("labeled_bs"), 1)
    expect("forward", get("forward"), "joint")
    # --- supervised 0.5 (CE + Dice) on the labelled part, for each network
    sup = get("supervised_loss")
    expect("supervised loss", (type(sup).__name__, sup.lambda_ce, sup.lambda_dice), ("SupervisedLoss", 0.5, 0.5))
    # --- the unsupervised terms: CPS, ICT, information divergence, nothing else
    terms = get("terms")
    expect(
        "terms",
        [type(t).__name__ for t in terms],
        ["CrossPseudoSupervisionTerm", "InterpolationConsistencyTerm", "InformationDivergenceTerm"],
    )
    total = int(get("max_iterations"))

    def ramp(name: str, schedule, start: int) -> None:
        # w(t) = beta exp(-5 (1 - s/200)^2) over the whole run, beta = 1
        expect(
            f"{name} weight",
            (type(schedule).__name__, schedule.beta, schedule.total_iterations, schedule.ramp_fraction, schedule.start),
            ("RampUp", 1.0, total, 1.0, start),
        )

    for t in terms:
        if isinstance(t, CrossPseudoSupervisionTerm):
            expect("CPS roles", t.roles, ("cnn", "transformer"))
            expect("CPS direction", t.direction, "both")
            expect("CPS every pixel", t.criterion.confidence, 0.0)
            expect("CPS Dice only", (t.dice_weight, t.ce_weight), (1.0, 0.0))
            ramp("CPS", t.schedule, 0)
        elif isinstance(t, InterpolationConsistencyTerm):
            expect("ICT networks", t.roles, ("transformer",))
            expect("ICT teacher", t.teacher_roles, ("transformer",))
            expect("ICT Beta(alpha, alpha)", t.alpha, 0.5)
            ramp("ICT", t.schedule, 1000)
        elif isinstance(t, InformationDivergenceTerm):
            expect("divergence roles", t.roles, ("cnn", "transformer"))
            expect("divergence direction", t.direction, "both")
            expect("divergence every pixel", t.confidence, 0.0)
            expect("KL and MIG weights", (t.criterion.kl_weight, t.criterion.mig_weight), (1.0, 1.0))
            ramp("divergence", t.schedule, 0)
    # --- the EMA teacher of the Swin-Unet only (decay 0.99), as the authors' code leaves it (train mode)
    expect("EMA teachers", dict(parser["teachers"]), {"transformer": "@transformer_teacher"})
    expect("EMA decay", get("transformer_teacher#decay"), 0.99)
    expect("EMA teacher in train mode", get("transformer_teacher#train_mode"), True)
    # --- SGD lr 0.001, momentum 0.9, weight decay 1e-4 for both networks; poly 0.9 over 400 x labelled
    opt = get("optimizer_def")
    expect(
        "optimiser",
        (opt.func.__name__, dict(opt.keywords)),
        ("SGD", {"lr": 0.001, "momentum": 0.9, "weight_decay": 1e-4}),
    )
    expect("optimised networks", parser["optimizers"], "$custom.training.schedules.per_role(@optimizer_def, @networks)")
    expect("poly power", get("lr_power"), 0.9)
    n_labeled = len(load_split(get("datalist_file"), "training"))
    expect("iterations (400 x labelled images)", total, 400 * n_labeled)
    expect("fp32", get("train#trainer#amp"), False)
    # --- augmentation of the labelled images only, the five original transforms
    active = {type(t).__name__: t for t in get("train#random_transforms") if getattr(t, "prob", 1.0) > 0}
    active.pop("Lambdad", None)  # the clip back to [0, 1] after them: not an augmentation
    expect(
        "labelled augmentation",
        sorted(active),
        sorted(
            ["RandRotated", "RandScaleIntensityd", "RandAdjustContrastd", "RandGaussianSmoothd", "RandGaussianNoised"]
        ),
    )
    if "RandRotated" in active:
        rot = active["RandRotated"]
        expect("rotation +-20 deg, p 0.5", (rot.rand_rotate.range_x, rot.prob), ((-0.349, 0.349), 0.5))
    if "RandScaleIntensityd" in active:
        expect("brightness +-0.2", active["RandScaleIntensityd"].scaler.factors, (-0.2, 0.2))
    if "RandAdjustContrastd" in active:
        expect("contrast +-0.5", active["RandAdjustContrastd"].adjuster.gamma, (0.5, 1.5))
    if "RandGaussianSmoothd" in active:
        expect("blur p 0.3", active["RandGaussianSmoothd"].prob, 0.3)
    if "RandGaussianNoised" in active:
        expect("noise p 0.3", active["RandGaussianNoised"].prob, 0.3)
    unlabeled = [type(t).__name__ for t in get("train#unlabeled_preprocessing").transforms]
    expect("unlabelled images not augmented", [n for n in unlabeled if n.startswith("Rand")], [])
    # --- intensities in [0, 1]; labels resized by nearest neighbour; the best UNeXt kept every epoch
    scale = next(t for t in parser["deterministic_transforms"] if t["_target_"] == "ScaleIntensityRanged")
    expect("intensities [0, 1]", (scale["b_min"], scale["b_max"]), (0.0, 1.0))
    resize = next(t for t in parser["deterministic_transforms"] if t["_target_"] == "Resized")
    expect("labels resized nearest", resize["mode"], ["bilinear", "nearest"])
    expect("validated every epoch", get("val_interval"), 1)
    expect("the UNeXt is the model kept", parser["validate"]["evaluator"]["network"], "@network")
    return bad


def test_the_recipe_file_holds_every_item_of_method_md(tmp_path, demo_dataset):
    assert recipe_violations(_parser([PAPER], demo_dataset, tmp_path)) == []


# one changed value per recipe line of methods/paper.yaml (the key as it is written there)
MUTATIONS = {
    "networks": "{cnn: '@network'}",
    "terms": "['@cps_term', '@id_term']",
    "teachers": "{transformer: '@transformer_teacher', cnn: '@cnn_teacher'}",
    "image_size": "[224, 224]",
    "transformer_def#embed_dim": "48",
    "transformer_def#depths": "[2, 2, 6, 2]",
    "transformer_def#num_heads": "[2, 4, 8, 16]",
    "transformer_def#window_size": "4",
    "transformer_def#drop_path_rate": "0.1",
    "batch_size": "6",
    "labeled_bs": "2",
    "forward": "separate",
    "cps_weight": "0.5",
    "ict_weight": "2.0",
    "id_weight": "0.1",
    "kl_weight": "0.0",
    "mig_weight": "0.5",
    "ramp_fraction": "0.5",
    "coupling#direction": "follower",
    "confidence": "0.9",
    "cross_start": "100",
    "ict_start": "0",
    "ict_roles": "[cnn, transformer]",
    "ict_term#alpha": "0.2",
    "ema_decay": "0.999",
    "teacher_train_mode": "false",
    "learning_rate": "0.01",
    "optimizer_def#momentum": "0.0",
    "optimizer_def#weight_decay": "0.0005",
    "lr_power": "1.0",
    "iterations_per_labeled_image": "200",
    "max_iterations": "100",
    "amp": "true",
    "augment_unlabeled": "true",
    "aug_zoom_prob": "0.5",
    "aug_translate_prob": "0.3",
    "aug_contrast_prob": "0.3",
    "aug_lowres_prob": "0.25",
}
# lines of the recipe file that are not recipe values: its name and where its components plug in
NOT_RECIPE = {"method", "method_handlers", "method_coupling"}
_LINE = re.compile(r"^([A-Za-z_][\w#]*):")


def _recipe_keys() -> list[str]:
    return [m.group(1) for line in PAPER.read_text().splitlines() if (m := _LINE.match(line))]


def test_every_line_of_the_recipe_file_has_a_mutation():
    keys = _recipe_keys()
    assert len(keys) == len(set(keys)), "a key written twice"
    assert set(keys) - NOT_RECIPE == set(MUTATIONS)


@pytest.mark.parametrize("key", sorted(MUTATIONS))
def test_a_copy_with_one_recipe_item_changed_fails(key, tmp_path, demo_dataset):
    lines = PAPER.read_text().splitlines()
    changed = [f"{key}: {MUTATIONS[key]}" if (m := _LINE.match(ln)) and m.group(1) == key else ln for ln in lines]
    assert changed != lines
    copy = tmp_path / "paper_changed.yaml"
    copy.write_text("\n".join(changed) + "\n")
    assert recipe_violations(_parser([copy], demo_dataset, tmp_path)), key


def test_the_previous_paper_override_over_ours_is_not_the_recipe(tmp_path, demo_dataset):
    """What stood for the recipe until 0.7.0: an override merged after ours.yaml. It left the
    acquisition augmentation and the augmentation of the unlabelled images on."""
    old = tmp_path / "paper_override.yaml"
    old.write_text(
        "coupling#direction: both\nteacher_train_mode: true\nconfidence: 0.0\ncross_start: 0\nforward: joint\n"
        "terms: ['@cps_term', '@ict_term', '@id_term']\nteachers: {transformer: '@transformer_teacher'}\namp: false\n"
    )
    bad = recipe_violations(_parser([CONFIGS / "methods" / "ours.yaml", old], demo_dataset, tmp_path))
    assert any(b.startswith("labelled augmentation") for b in bad), bad
    assert any(b.startswith("unlabelled images not augmented") for b in bad), bad
