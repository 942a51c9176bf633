"""``python -m custom.tools.bench`` (issue 8) and the equality of one trainer iteration's loss terms
with a plain-torch reference computation of method.md on the same inputs."""

from __future__ import annotations

import copy
import json
import os
import statistics
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, tiny_overrides, train_config_files
from ignite.engine import Events

from custom.tools.bench.train import build_trainer
from custom.training.trainer import logged_terms

TINY_SWIN = {
    "transformer_def#embed_dim": 12,
    "transformer_def#num_heads": [1, 1, 2, 2],
    "transformer_def#window_size": 4,
}


def _bench(*args: str) -> dict:
    cmd = [sys.executable, "-m", "custom.tools.bench", *args, "--json"]
    proc = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    )
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, f"--json must print one JSON object and nothing else, got:\n{proc.stdout[-2000:]}"
    return json.loads(lines[0])


def test_bench_train_json_reports_iteration_floor_and_ratio():
    r = _bench(
        "train",
        "--image-size",
        "64",
        "--iterations",
        "2",
        "--warmup",
        "1",
        "--threads",
        "1",
        "--overrides",
        repr(TINY_SWIN),
        "--mmap-threshold-kib",
        "128",
    )
    for key in ("iteration_s", "floor_s", "floor_ratio", "peak_rss_mb"):
        assert isinstance(r[key], float) and r[key] > 0, (key, r[key])
    # invariants only (timings on a loaded machine say nothing): the floor is the sum of its parts,
    # the ratio is the iteration over the floor, every part was measured
    assert 0.0 <= r["data_wait_fraction"] < 1.0
    assert set(r["floor_components_s"]) == {
        "fwd_bwd_cnn",
        "fwd_bwd_transformer",
        "fwd_bwd_transformer_mix",
        "fwd_teacher_transformer",
    }
    assert all(isinstance(v, float) and v > 0 for v in r["floor_components_s"].values()), r["floor_components_s"]
    assert r["floor_s"] == pytest.approx(sum(r["floor_components_s"].values()), rel=1e-9)
    assert r["floor_ratio"] == pytest.approx(r["iteration_s"] / r["floor_s"], rel=1e-9)
    assert r["config"]["image_size"] == 64 and r["config"]["batch_size"] == 5 and r["config"]["labeled_bs"] == 1
    assert r["config"]["malloc_mmap_threshold"] == "128 KiB"


def test_bench_infer_json_reports_every_variant():
    r = _bench("infer", "--sizes", "64", "--reps", "2", "--warmup", "1", "--batch", "2", "--threads", "1")
    res = r["sizes"]["64"]
    assert set(res) == {"eager", "channels_last", "torchscript", "onnxruntime"}
    for variant, m in res.items():
        assert m["images_per_s"] > 0 and m["latency_ms"] > 0, variant
        # the ratios are what they say: of this variant's numbers to eager's
        assert m["throughput_ratio_vs_eager"] == pytest.approx(m["images_per_s"] / res["eager"]["images_per_s"])
        assert m["latency_ratio_vs_eager"] == pytest.approx(res["eager"]["latency_ms"] / m["latency_ms"])
        assert m["images_per_s_batch1"] == pytest.approx(1000.0 / m["latency_ms"])
        assert m["images_per_s"] == pytest.approx(2 / (m["batch_ms"] / 1000.0))  # --batch 2
    assert res["eager"]["throughput_ratio_vs_eager"] == 1.0
    assert r["peak_rss_mb"] > 0


# ------------------------------------------------------------------ reference computation
SMOOTH, EPS = 1e-5, 1e-8


def _dice(p: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Batch Dice, squared denominator, background included, smooth 1e-5, mean over classes;
    only the pixels where ``keep`` (B x H x W) is true count when it is given."""
    y = F.one_hot(labels[:, 0].long(), p.shape[1]).permute(0, 3, 1, 2).float()
    if keep is not None:
        p, y = p * keep[:, None], y * keep[:, None]
    num = 2 * (p * y).sum(dim=(0, 2, 3)) + SMOOTH
    den = (p * p).sum(dim=(0, 2, 3)) + (y * y).sum(dim=(0, 2, 3)) + SMOOTH
    return (1 - num / den).mean()


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * torch.log(p + EPS)).sum(dim=1)


def _gate(p: torch.Tensor, confidence: float, per_class: bool) -> torch.Tensor:
    """Pixels whose largest probability reaches the threshold: ``confidence``, or per class
    ``confidence * m_c / max_k m_k`` with ``m_c`` the mean largest probability of the pixels whose
    argmax is ``c`` (classes no pixel takes keep ``confidence``), written out class by class."""
    top, label = p.amax(1), p.argmax(1)
    if not per_class:
        return top >= confidence
    means = {c: float(top[label == c].mean()) for c in range(p.shape[1]) if bool((label == c).any())}
    best = max(means.values())
    threshold = torch.full_like(top, confidence)
    for c, m in means.items():
        threshold[label == c] = confidence * m / best
    return top >= threshold


def _reference_terms(
    nets: dict,
    teacher,
    x_l,
    y_l,
    x_u,
    generator_state,
    coupling: str,
    confidence: float = 0.0,
    cnn_teacher=None,
    per_class: bool = False,
) -> dict[str, float]:
    """The paper (``coupling="both"``: one forward of [x_l; x_u], every pixel) or the default
    (``"follower"``: x_l and x_u forwarded apart, the CNN leading, pixels gated by its confidence,
    per class with ``per_class``)."""
    x = torch.cat([x_l, x_u])
    nl = x_l.shape[0]
    with torch.no_grad():
        if coupling == "both":
            logits = {role: net(x) for role, net in nets.items()}
        else:
            logits = {role: torch.cat([net(x_l), net(x_u)]) for role, net in nets.items()}
        p1, p2 = torch.softmax(logits["cnn"], 1), torch.softmax(logits["transformer"], 1)
        out = {}
        for role, lg in logits.items():
            ce = F.cross_entropy(lg[:nl], y_l[:, 0].long())
            out[f"loss_sup_{role}"] = 0.5 * ce + 0.5 * _dice(torch.softmax(lg[:nl], 1), y_l)
        y1, y2 = p1[nl:].argmax(1, keepdim=True), p2[nl:].argmax(1, keepdim=True)
        if coupling == "both":
            out["loss_cps"] = _dice(p1[nl:], y2) + _dice(p2[nl:], y1)
        else:  # follower, the CNN leading: only the Transformer learns from the CNN's confident pseudo-labels
            out["loss_cps"] = _dice(p2[nl:], y1, _gate(p1[nl:], confidence, per_class))
        # ICT: the same lambda draw as the trainer (its generator's state before the iteration)
        half = x_u.shape[0] // 2
        g = torch.Generator()
        g.set_state(generator_state)
        gam = torch._standard_gamma(torch.full((2, half), 0.5), generator=g)
        lam = (gam[0] / (gam[0] + gam[1])).view(half, 1, 1, 1)
        ua, ub = x_u[:half], x_u[half : 2 * half]
        x_mix = (1 - lam) * ua + lam * ub
        target = (1 - lam) * torch.softmax(teacher(ua), 1) + lam * torch.softmax(teacher(ub), 1)
        out["loss_ict"] = ((torch.softmax(nets["transformer"](x_mix), 1) - target) ** 2).mean()
        # information divergence on every image: mean(MIG) + mean(KL(p1 || p2)); gated: over the
        # pixels where the leader (the CNN, p1) is confident
        kl = (p1 * (torch.log(p1 + EPS) - torch.log(p2 + EPS))).sum(1)
        mig = _entropy(p1) + _entropy(p2) - _entropy(0.5 * (p1 + p2))
        keep = _gate(p1, confidence, per_class)
        out["loss_id"] = (mig + kl)[keep].mean()
        if cnn_teacher is not None:  # the default's copy-paste term, drawing its boxes after ICT's lambdas
            out["loss_bcp"] = _reference_copy_paste(nets["cnn"], cnn_teacher, x_l, y_l, x_u, g)
    return {k: float(v) for k, v in out.items()}


def _reference_copy_paste(net, teacher, x_l, y_l, x_u, g, unlabeled_weight: float = 0.5) -> torch.Tensor:
    """BCP written out: per unlabelled image j and labelled image j mod L, a box of two thirds of
    each side at a uniform place; the labelled box pasted into the unlabelled image and the
    reverse; 0.5 (Dice + CE) on the ground-truth pixels plus 0.5 x the same on the teacher's
    pseudo-labelled pixels."""
    n, _, h, w = x_u.shape
    keep = torch.rand(n, generator=g, dtype=torch.float64)  # the box probability draw (1: always a box)
    (
        torch.rand(n, generator=g, dtype=torch.float64),
        torch.rand(n, generator=g, dtype=torch.float64),
    )  # area, ratio: fixed
    pos = torch.rand(2, n, generator=g, dtype=torch.float64)
    assert bool((keep < 1.0).all())
    bh, bw = round(h * 2 / 3), round(w * 2 / 3)
    box = torch.zeros(n, 1, h, w)
    for j in range(n):
        top, left = int(pos[0, j] * (h - bh + 1)), int(pos[1, j] * (w - bw + 1))
        box[j, :, top : top + bh, left : left + bw] = 1
    y_u = torch.softmax(teacher(x_u), 1).argmax(1, keepdim=True).float()
    idx = torch.arange(n) % x_l.shape[0]
    xl, yl = x_l[idx], y_l[idx].float()
    images = torch.cat([x_u * (1 - box) + xl * box, xl * (1 - box) + x_u * box])
    targets = torch.cat([y_u * (1 - box) + yl * box, yl * (1 - box) + y_u * box])
    gt = torch.cat([box, 1 - box])[:, 0] > 0.5
    logits = net(images)
    probs = torch.softmax(logits, 1)
    ce = F.cross_entropy(logits, targets[:, 0].long(), reduction="none")

    def region(mask):
        return 0.5 * (_dice(probs, targets, mask) + ce[mask].mean())

    return region(gt) + unlabeled_weight * region(~gt)


@pytest.mark.parametrize("coupling", ["both", "follower"])
def test_one_trainer_iteration_equals_the_reference_math(tmp_path, demo_dataset, coupling):
    extra = ("methods/paper.yaml",) if coupling == "both" else ()
    overrides = tiny_overrides(
        tmp_path,
        demo_dataset,
        batch_size=6,
        labeled_bs=2,
        max_iterations=1,
        **{"train#epoch_length": 1, "transformer_def#drop_path_rate": 0.0},
    )
    parser, trainer = build_trainer(train_config_files(*extra), overrides)
    confidence = float(parser.get_parsed_content("confidence"))
    peeked = None
    if coupling == "follower":
        # the default's gate, moved to the median confidence of the leading UNeXt on this very
        # batch (the unlabelled loader peeked through a copy), so that it keeps about half of the
        # pixels whatever the seed: an untrained UNeXt is rarely 0.9 sure anywhere
        peeked = next(iter(copy.deepcopy(trainer.unlabeled.loader)))["image"]
        peeked = (peeked.as_tensor() if hasattr(peeked, "as_tensor") else torch.as_tensor(peeked)).float()
        with torch.no_grad():
            leader = copy.deepcopy(trainer.networks["cnn"]).train()  # as in the separate forward
            confidence = float(torch.softmax(leader(peeked), 1).amax(1).median())
        for t in trainer.terms:
            if hasattr(t, "direction"):  # the CPS and divergence terms: the gated ones
                t.confidence = confidence
                if hasattr(t, "criterion") and hasattr(t.criterion, "confidence"):
                    t.criterion.confidence = confidence
    assert parser.get_parsed_content("forward") == ("joint" if coupling == "both" else "separate")
    assert parser.get_parsed_content("coupling#direction") == coupling
    assert all(t.direction == coupling for t in trainer.terms if hasattr(t, "direction"))
    nets = {role: copy.deepcopy(net).train() for role, net in trainer.networks.items()}
    teacher = copy.deepcopy(trainer.teachers["transformer"].module)
    cnn_teacher = copy.deepcopy(trainer.teachers["cnn"].module) if "cnn" in trainer.teachers else None
    assert (cnn_teacher is not None) == (coupling == "follower"), "the default's copy-paste term has its EMA teacher"
    assert teacher.training == (coupling == "both")  # methods/paper.yaml: the EMA teacher in train mode
    generator_state = trainer.generator.get_state()

    captured: dict = {}
    stream, original_next = trainer.unlabeled, trainer.unlabeled.next

    def next_unlabeled():
        captured["unlabeled"] = original_next()
        return captured["unlabeled"]

    stream.next = next_unlabeled
    trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: captured.update(labeled=e.state.batch))
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: captured.update(terms=logged_terms(e.state.output)))
    calls: dict[str, list[int]] = {"cnn": [], "transformer": [], "teacher": [], "cnn_teacher": []}
    for role, net in trainer.networks.items():
        net.register_forward_hook(lambda m, inp, out, role=role: calls[role].append(inp[0].shape[0]))
    trainer.teachers["transformer"].module.register_forward_hook(
        lambda m, inp, out: calls["teacher"].append(inp[0].shape[0])
    )
    if cnn_teacher is not None:
        trainer.teachers["cnn"].module.register_forward_hook(
            lambda m, inp, out: calls["cnn_teacher"].append(inp[0].shape[0])
        )
    trainer.run()

    # each network forwards once on the whole batch (the paper) or once on each part (the default);
    # ICT: Swin once on the mixed pairs, teacher once on the unlabelled
    # the default: the UNeXt once more on the 8 copy-paste images, its EMA teacher once on the unlabelled
    if coupling == "both":
        assert calls == {"cnn": [6], "transformer": [6, 2], "teacher": [4], "cnn_teacher": []}
    else:
        # (the Swin-Unet, without batch statistics, forwards the whole batch once in the separate mode too)
        assert calls == {"cnn": [2, 4, 8], "transformer": [6, 2], "teacher": [4], "cnn_teacher": [4]}
    plain = lambda v: v.as_tensor() if hasattr(v, "as_tensor") else torch.as_tensor(v)  # noqa: E731
    x_l, y_l = plain(captured["labeled"]["image"]).float(), plain(captured["labeled"]["label"])
    x_u = plain(captured["unlabeled"]["image"]).float()
    if peeked is not None:
        assert torch.equal(peeked, x_u), "the peeked batch is the one the trainer drew"
    per_class = coupling == "follower" and bool(parser.get_parsed_content("confidence_per_class"))
    expected = _reference_terms(
        nets, teacher, x_l, y_l, x_u, generator_state, coupling, confidence, cnn_teacher, per_class
    )
    if coupling == "follower":
        with torch.no_grad():
            conf = torch.softmax(nets["cnn"](x_u), 1).amax(1)
        assert 0.05 < float((conf >= confidence).float().mean()) < 0.95, "the gate keeps only some pixels"
    got = captured["terms"]
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-5, rel=1e-5), (key, got[key], value)
        assert abs(value) > 1e-6, key  # every term is really computed


# ---------------------------------------------------- compile cache and the reference driver (issue 17)
def test_compile_cache_directory_precedence_and_switches(tmp_path, monkeypatch):
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    from custom.utils import compile_cache

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.delenv(compile_cache.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compile_cache.configure() == (tmp_path / "xdg" / "fetal_us_ssl" / "torch_compile").resolve()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "xdg" / "fetal_us_ssl" / "torch_compile")
    assert inductor_config.fx_graph_cache and functorch_config.enable_autograd_cache
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    monkeypatch.setenv(compile_cache.ENV_VAR, str(tmp_path / "project_var"))
    assert compile_cache.configure() == (tmp_path / "project_var").resolve()
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor_var"))  # Inductor's own variable wins
    assert compile_cache.configure() == (tmp_path / "inductor_var").resolve()
    assert compile_cache.configure(tmp_path / "given") == (tmp_path / "given").resolve()  # an explicit dir wins
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str((tmp_path / "given").resolve())
    assert compile_cache.cache_entries(tmp_path / "given") == 0 and compile_cache.cache_entries(tmp_path / "no") == 0
    (tmp_path / "given" / "fxgraph").mkdir()
    (tmp_path / "given" / "fxgraph" / "entry").write_text("x")
    assert compile_cache.cache_entries(tmp_path / "given") == 1


def test_compile_networks_compiles_in_place_keeping_parameter_names(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from custom.training.ema import EMATeacher
    from custom.utils.compile_cache import compile_networks

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    nets = torch.nn.ModuleDict({"cnn": torch.nn.Conv2d(1, 2, 3), "transformer": torch.nn.Conv2d(1, 2, 1)})
    keys = {r: list(n.state_dict()) for r, n in nets.items()}
    teacher = EMATeacher(nets["transformer"])
    trainer = SimpleNamespace(networks=nets, teachers={"transformer": teacher, "cnn": EMATeacher(nets["cnn"])})
    x = torch.rand(1, 1, 8, 8)
    before = nets["cnn"](x)
    assert compile_networks(trainer, tmp_path / "cache", backend="eager") == (tmp_path / "cache").resolve()
    for role, net in nets.items():
        assert net._compiled_call_impl is not None and list(net.state_dict()) == keys[role], role
    assert teacher.module._compiled_call_impl is not None
    assert trainer.teachers["cnn"].module._compiled_call_impl is not None
    torch.testing.assert_close(nets["cnn"](x), before)


_FAKE_REFERENCE = """
import argparse
import json
import os
import time

import torch

parser = argparse.ArgumentParser()
for name in ("--root_path", "--exp", "--model", "--cfg"):
    parser.add_argument(name, type=str)
for name in ("--max_iterations", "--batch_size", "--labeled_bs", "--labeled_num", "--num_classes", "--seed"):
    parser.add_argument(name, type=int)
parser.add_argument("--patch_size", type=list, default=[448, 448])
args = parser.parse_args()
from utils import losses, ramps
from utils.losses import DiceLoss, Uncertainty_Loss


class _Cfg:
    class MODEL:
        PRETRAIN_CKPT = "missing.pth"

    class DATA:
        IMG_SIZE = 224

    def defrost(self):
        pass

    def freeze(self):
        pass


config = _Cfg()
SEEN = {}


def update_ema_variables(model, ema_model, alpha, global_step):
    pass


def train(args, snapshot_path):
    SEEN.update(size=args.patch_size, ckpt=config.MODEL.PRETRAIN_CKPT, ict=[], threads=torch.get_num_threads())
    try:
        Uncertainty_Loss()
    except NotImplementedError as error:
        SEEN["placeholder"] = str(error)
    for iter_num in range(args.max_iterations):
        if iter_num < 1000:
            SEEN["ict"].append(False)
        else:
            SEEN["ict"].append(True)
        torch.zeros(8).sum()
        time.sleep(0.01)
        update_ema_variables(None, None, 0.99, iter_num)
    print("{not json} printed by the reference")
    if os.environ.get("FAKE_REFERENCE_OUT"):
        with open(os.environ["FAKE_REFERENCE_OUT"], "w") as f:
            json.dump(SEEN, f)
"""


def _fake_reference(root):
    code = root / "ref" / "src" / "code"
    (code / "configs").mkdir(parents=True)
    (code / "configs" / "swin_tiny_patch4_window7_224_lite.yaml").write_text("MODEL: {}\n")
    (code / "train_semi_swin_unext_consist_v2.py").write_text(_FAKE_REFERENCE)
    utils = root / "Semi-supervised-EGAD" / "src" / "code" / "utils"
    utils.mkdir(parents=True)
    (utils / "losses.py").write_text("class DiceLoss:\n    pass\n")
    (utils / "ramps.py").write_text("def sigmoid_rampup(current, length):\n    return 1.0\n")
    return root / "ref"


def test_reference_driver_runs_the_scripts_train_with_ict_on_and_times_each_iteration(tmp_path, monkeypatch):
    from custom.tools.bench import reference

    path = _fake_reference(tmp_path)
    monkeypatch.setenv("FAKE_REFERENCE_OUT", str(tmp_path / "seen.json"))
    path_before = list(sys.path)
    threads = torch.get_num_threads()
    try:
        r = reference.run_reference(path, image_size=32, iterations=3, warmup=1, threads=1)
    finally:
        torch.set_num_threads(threads)
    assert len(r["iteration_s_all"]) == 3 and len(r["warmup_s_all"]) == 1
    assert all(t > 0 for t in r["iteration_s_all"]), r["iteration_s_all"]  # no timing bound: a loaded machine
    assert r["iteration_s"] == pytest.approx(statistics.median(r["iteration_s_all"]))
    assert r["peak_rss_mb"] > 0 and r["config"]["ict_start"] == 0
    assert r["config"]["utils"].endswith("Semi-supervised-EGAD/src/code/utils")  # found beside the checkout
    seen = json.loads((tmp_path / "seen.json").read_text())
    assert seen["ict"] == [True] * 5  # warm-up + iterations + 1, the ICT term on from the first
    assert seen["size"] == [32, 32] and seen["ckpt"] is None and seen["threads"] == 1
    assert "Uncertainty_Loss" in seen["placeholder"]  # imported by the script, absent from the utils package
    assert "utils" not in sys.modules and sys.path == path_before  # the reference's modules are gone again


def test_reference_driver_cli_prints_one_json_line_and_names_what_is_missing(tmp_path):
    path = _fake_reference(tmp_path)
    cmd = [sys.executable, "-m", "custom.tools.bench.reference", "run", "--path", str(path), "--image-size", "32"]
    proc = subprocess.run(cmd + ["--iterations", "2", "--warmup", "0"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith('{"')][-1])
    assert r["benchmark"] == "reference" and len(r["iteration_s_all"]) == 2
    missing = subprocess.run(
        [sys.executable, "-m", "custom.tools.bench.reference", "run", "--path", str(tmp_path / "nowhere")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2 and "error: --path" in missing.stderr and "Traceback" not in missing.stderr


def test_reference_variants_parse_to_bench_options():
    from custom.tools.bench.reference import parse_variant
    from custom.utils.cli import OptionError

    assert parse_variant("paper") == {"method": "paper", "amp": "none", "channels_last": False, "compile": False}
    assert parse_variant("ours+bf16+cl+compile") == {
        "method": "ours",
        "amp": "bf16",
        "channels_last": True,
        "compile": True,
    }
    for bad in ("nomethod", "ours+fast"):
        with pytest.raises(OptionError):
            parse_variant(bad)


def test_trainer_compile_option_compiles_every_network_once_at_run_start(tmp_path, demo_dataset, monkeypatch):
    from custom.utils import compile_cache

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "cache"))
    calls = []
    real = compile_cache.compile_networks

    def eager_compile(trainer, cache_dir=None, **options):  # dynamo tracing, no Inductor codegen
        calls.append(cache_dir)
        return real(trainer, cache_dir, backend="eager")

    monkeypatch.setattr(compile_cache, "compile_networks", eager_compile)
    overrides = tiny_overrides(tmp_path, demo_dataset, max_iterations=1, **{"train#epoch_length": 1})
    overrides["train#trainer#compile"] = True
    _, trainer = build_trainer(train_config_files(), overrides)
    keys = {role: list(net.state_dict()) for role, net in trainer.networks.items()}
    assert trainer.compile_networks is True
    trainer.run()
    assert calls == [None] and trainer.compile_networks is False  # once, with the default cache location
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str((tmp_path / "cache").resolve())
    for role, net in trainer.networks.items():
        assert net._compiled_call_impl is not None and list(net.state_dict()) == keys[role], role
    assert all(t.module._compiled_call_impl is not None for t in trainer.teachers.values())
    assert trainer.state.iteration == 1


_FAKE_WRAPPER = '''
import torch
from torch import nn


class _Sys(nn.Module):  # the three steps of SwinTransformerSys.forward, counting encoder passes
    def __init__(self):
        super().__init__()
        self.enc, self.dec, self.encoder_passes = nn.Linear(3, 3), nn.Linear(3, 3), 0

    def forward_features(self, x):
        self.encoder_passes += 1
        skips = [x, 2 * x]
        return self.enc(x), skips

    def forward_up_features(self, x, skips):
        return self.dec(x + skips[0])

    def up_x4(self, x):
        return 4 * x

    def forward(self, x):
        x, x_downsample = self.forward_features(x)
        return self.up_x4(self.forward_up_features(x, x_downsample))


class SwinUnet(nn.Module):
    def __init__(self):
        super().__init__()
        self.swin_unet = _Sys()

    def forward(self, x):
        if x.size()[1] == 1:
            x = x.repeat(1,3,1,1)
        _, emb = self.swin_unet.forward_features(x)
        logits = self.swin_unet(x)
        return logits, emb[-1]
'''


def test_reference_one_encoder_pass_gives_the_same_outputs_with_one_pass(tmp_path, monkeypatch):
    """The correction of the reference's Swin-Unet wrapper: one encoder pass instead of two, the
    same logits and feature map; a wrapper that is not the published one is refused."""
    import importlib.util
    import types

    from custom.tools.bench import reference

    (tmp_path / "wrapper.py").write_text(_FAKE_WRAPPER)
    spec = importlib.util.spec_from_file_location("fake_vision_transformer", tmp_path / "wrapper.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, "fake_vision_transformer", module)
    torch.manual_seed(0)
    net, x = module.SwinUnet(), torch.rand(2, 1, 3)
    logits, emb = net(x)
    assert net.swin_unet.encoder_passes == 2  # as published
    reference._one_encoder_pass("fake_vision_transformer")
    net.swin_unet.encoder_passes = 0
    logits1, emb1 = net(x)
    assert net.swin_unet.encoder_passes == 1
    torch.testing.assert_close(logits1, logits, rtol=0, atol=0)
    torch.testing.assert_close(emb1, emb, rtol=0, atol=0)
    other = types.ModuleType("other_wrapper")
    other.SwinUnet = type("SwinUnet", (torch.nn.Module,), {"forward": lambda self, x: self.swin_unet(x)})
    monkeypatch.setitem(sys.modules, "other_wrapper", other)
    with pytest.raises(RuntimeError, match="not the published one"):
        reference._one_encoder_pass("other_wrapper")


@pytest.mark.parametrize(
    "args, option",
    [
        (["train", "--amp", "fp8"], "--amp"),
        (["train", "--data", "real"], "--data real needs --dataset-dir"),
        (["train", "--floor", "perhaps"], "--floor"),
        (["infer", "--variants", "eager,bogus"], "--variants"),
        (["reference"], "--path"),
        (["infer", "--json", "maybe"], "--json"),
    ],
)
def test_bench_bad_options_are_one_line_before_any_work(args, option):
    """Each subcommand's options are its function's parameters; what they refuse is one line, status 2."""
    proc = subprocess.run(
        [sys.executable, "-m", "custom.tools.bench", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and option in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not proc.stdout.strip()
