"""``python -m custom.deploy.package``: a self-contained bundle that runs with only its own folder on
PYTHONPATH, from another working directory, and a zip of the same files."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO
from PIL import Image

from custom.networks import UNeXt

NAME = "fetal_us_ssl"


def _distinctive_weights(path: Path) -> None:
    """Random UNeXt weights whose prediction is class 1 everywhere (a large bias on the last
    layer): a mask full of foreground proves that the copy's weights were the ones loaded. Beside
    them, the record a 64 px training writes (``model_config.json`` with their checksum): weights
    without their own record are refused wherever they are run."""
    from monai.bundle import ConfigParser

    from custom.deploy.model_config import ModelConfig, weights_sha256

    torch.manual_seed(0)
    net = UNeXt(1, 2)
    with torch.no_grad():
        net.final.bias.copy_(torch.tensor([-1e3, 1e3]))
    torch.save(net.state_dict(), path)
    parser = ConfigParser()
    parser.read_config([str(REPO / "bundle" / "configs" / "common.yaml")])
    parser.update({"bundle_root": str(REPO / "bundle"), "ckpt_dir": str(path.parent), "model_config_file": None,
                   "image_size": [64, 64], "num_classes": 2, "labels": {"background": 0, "fetal head": 1}})
    ModelConfig(str(path.parent), parser.get_parsed_content("model_record")).write(sha256=weights_sha256(path))


def _bundle_env(bundle: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME"}}
    env.update(PYTHONPATH=str(bundle), CUDA_VISIBLE_DEVICES="")
    return env


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("package")
    weights = tmp / "weights.pt"
    _distinctive_weights(weights)
    out = tmp / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "custom.deploy.package",
            "--out",
            str(out),
            "--name",
            NAME,
            "--weights",
            str(weights),
            "--zip",
            "true",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {"bundle": out / NAME, "zip": out / f"{NAME}.zip", "weights": weights, "tmp": tmp}


def test_layout_weights_and_zip(packaged):
    bundle = packaged["bundle"]
    files = _files(bundle)
    for required in (
        "configs/inference.json",
        "configs/train.json",
        "configs/evaluate.json",
        "configs/metadata.json",
        "configs/meta_schema.json",
        "configs/logging.conf",
        "models/model.pt",
        "docs/README.md",
        "LICENSE",
        "large_files.yml",
        "custom/__init__.py",
        "custom/networks/unext.py",
        "custom/deploy/package.py",
    ):
        assert required in files, required
    assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc")]
    # only the runtime code the configs import: no comparison, benchmark or GPU-check tool
    assert not [f for f in files if f.startswith("custom/tools/")], "a research tool in the packaged bundle"
    # one merged config per workflow, none of the split YAML pieces
    assert not [f for f in files if f.startswith("configs/") and f.endswith((".yaml", ".yml"))]
    assert (bundle / "models" / "model.pt").read_bytes() == packaged["weights"].read_bytes()
    with zipfile.ZipFile(packaged["zip"]) as zf:
        zipped = {n for n in zf.namelist() if not n.endswith("/")}
        assert zipped == {f"{NAME}/{f}" for f in files}
        assert zf.read(f"{NAME}/models/model.pt") == packaged["weights"].read_bytes()


def test_no_absolute_path_in_the_copied_configs(packaged):
    needles = {str(REPO), str(REPO.resolve()), str(REPO / "bundle")}
    for file in (packaged["bundle"] / "configs").rglob("*"):
        if file.is_file():
            text = file.read_text(encoding="utf-8", errors="replace")
            assert not [n for n in needles if n in text], file
    for workflow in ("inference", "train", "evaluate"):
        merged = json.loads((packaged["bundle"] / "configs" / f"{workflow}.json").read_text())
        assert merged["bundle_root"] == "$custom.utils.paths.bundle_root()", workflow


def test_refuses_missing_weights_and_existing_output(tmp_path, packaged):
    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "custom.deploy.package", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )

    proc = run("--out", str(tmp_path), "--weights", str(tmp_path / "absent.pt"))
    assert proc.returncode == 2 and "weights not found" in proc.stderr
    assert not (tmp_path / NAME).exists()
    proc = run("--out", str(tmp_path), "--weights", str(tmp_path / "absent.pt"), "--allow-missing-weights", "true")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / NAME / "configs" / "inference.json").is_file() and not (
        tmp_path / NAME / "models" / "model.pt"
    ).exists()
    assert not (tmp_path / NAME / "large_files.yml").exists()  # no weights, nothing to list
    proc = run("--out", str(tmp_path), "--weights", str(packaged["weights"]))
    assert proc.returncode == 2 and "exists" in proc.stderr
    proc = run("--out", str(tmp_path / "u"), "--weights", str(packaged["weights"]), "--weights_url", "ftp://x y")
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: --weights_url must be an http(s) URL")
    assert not (tmp_path / "u" / NAME).exists()


def test_runs_from_the_copy_alone(packaged, tmp_path):
    """Only the bundle folder on PYTHONPATH, another working directory: `custom` resolves to
    the copy and inference runs from the copy's configs and weights."""
    bundle = packaged["bundle"]
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = _bundle_env(bundle)
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import custom, custom.deploy.package as p; print(custom.__file__); print(p.bundle_root())",
        ],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.returncode == 0, probe.stderr
    custom_file, root = probe.stdout.split()
    assert Path(custom_file).resolve().is_relative_to(bundle.resolve())
    assert Path(root).resolve() == bundle.resolve()

    configs = bundle / "configs"
    image = workdir / "frame.png"
    Image.fromarray((np.random.default_rng(0).random((70, 90)) * 255).astype(np.uint8)).save(image)
    out = workdir / "masks"
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str(configs / "inference.json"),
        "--meta_file",
        str(configs / "metadata.json"),
        "--bundle_root",
        str(bundle),
        "--input_path",
        str(image),
        "--infer_output_dir",
        str(out),
        "--image_size",
        "[64, 64]",
        "--num_classes",
        "2",
    ]
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    masks = sorted(out.rglob("*.png"))
    assert masks, f"no mask written under {out}: {proc.stdout[-2000:]}"
    mask = np.asarray(Image.open(masks[0]))
    assert mask.shape[:2] == (70, 90)
    assert mask.min() == mask.max() and mask.max() > 0, "the copy's weights (foreground everywhere) were used"


# ----------------------------------------------------------------- what the model zoo accepts

# the model zoo's lookup (ci/verify_bundle.py): configs/<workflow>.{json,yaml,yml}, the last found wins
ZOO_SUFFIXES = ("json", "yaml", "yml")

ZOO_CHECKS = r"""
import json, sys, torch
from monai.bundle import ckpt_export, create_workflow, verify_metadata, verify_net_in_out
B, OUT, DATA = sys.argv[1], sys.argv[2], sys.argv[3]
meta, infer = f"{B}/configs/metadata.json", f"{B}/configs/inference.json"
verify_metadata(meta_file=meta, filepath=f"{B}/configs/meta_schema.json")
verify_net_in_out(net_id="network_def", meta_file=meta, config_file=infer, bundle_root=B)
ckpt_export(net_id="network_def", filepath=f"{OUT}/verify_model.ts", ckpt_file=f"{B}/models/model.pt",
            meta_file=meta, config_file=infer, bundle_root=B)
missing = {}
# evaluate.json is train.json + evaluate.yaml: checked as a "train" workflow, as the model zoo's unit
# tests check [train.json, evaluate.json] ("override train.json, thus set the workflow to train")
for name, workflow, config in (("train", "train", "train"), ("evaluate", "train", "evaluate"),
                               ("infer", "infer", "inference")):
    # the properties' components are built: a tiny prepared dataset, its images for inference; the
    # training workflows into a folder of their own (the packaged weights, trained at 64 px, are kept:
    # a training at the configs' own scale refuses to replace them)
    own = {"ckpt_dir": f"{OUT}/ckpt_{name}"} if workflow == "train" else {}
    wf = create_workflow(workflow_type=workflow, config_file=f"{B}/configs/{config}.json", meta_file=meta,
                         logging_file=f"{B}/configs/logging.conf", bundle_root=B, dataset_dir=DATA,
                         input_path=f"{DATA}/images", infer_output_dir=f"{OUT}/infer", output_dir=f"{OUT}/eval",
                         **own)
    missing[name] = wf.check_properties() or []
print("ZOO " + json.dumps({"missing": missing}))
"""


def test_packaged_bundle_passes_the_model_zoo_checks(packaged, tmp_path, demo_dataset):
    """The model zoo's verification (full mode), with MONAI's own functions on a freshly packaged
    bundle: one self-contained config per workflow (no split YAML piece that the zoo would take
    before inference.json), large_files.yml with the weights' hash, verify_metadata,
    verify_net_in_out and ckpt_export on configs/inference.json, ConfigWorkflow.check_properties
    for train, evaluate and infer."""
    import hashlib

    from monai.bundle import ConfigParser

    bundle = packaged["bundle"]
    configs = sorted(p.name for p in (bundle / "configs").iterdir())
    assert configs == sorted(
        ["evaluate.json", "inference.json", "train.json", "pretrain.json", "metadata.json", "meta_schema.json",
         "logging.conf"]
    ), configs
    for workflow in ("inference", "train", "evaluate"):
        found = [f"{workflow}.{s}" for s in ZOO_SUFFIXES if (bundle / "configs" / f"{workflow}.{s}").is_file()]
        assert found == [f"{workflow}.json"], found
    for required in ("configs/metadata.json", "LICENSE", "models/model.pt"):
        assert (bundle / required).is_file(), required
    large = ConfigParser.load_config_file(str(bundle / "large_files.yml"))["large_files"]
    assert [e["path"] for e in large] == ["models/model.pt"], large
    digest = hashlib.sha256((bundle / "models" / "model.pt").read_bytes()).hexdigest()
    assert large[0]["hash_type"] == "sha256" and large[0]["hash_val"] == digest, large

    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", ZOO_CHECKS, str(bundle), str(tmp_path), demo_dataset],
        cwd=workdir,
        env=_bundle_env(bundle),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("ZOO ")]
    assert json.loads(line[4:]) == {"missing": {"train": [], "evaluate": [], "infer": []}}, line
    # the exported TorchScript is the packaged UNeXt (foreground everywhere)
    ts = torch.jit.load(str(tmp_path / "verify_model.ts"))
    assert bool((ts(torch.rand(1, 1, 64, 64)).argmax(1) == 1).all())
    assert not (bundle / "models" / "verify_model.ts").exists()


def test_packaged_docs_follow_the_model_zoo_sections(packaged):
    readme = (packaged["bundle"] / "docs" / "README.md").read_text(encoding="utf-8")
    headings = [line for line in readme.splitlines() if re.match(r"#{1,2} ", line)]
    zoo = [
        "# Model Overview",
        "## Data",
        "## Training configuration",
        "## Performance",
        "## MONAI Bundle Commands",
        "# References",
        "# License",
    ]
    assert [h for h in headings if h in zoo] == zoo, headings
    commands = readme.split("## MONAI Bundle Commands", 1)[1].split("# References", 1)[0]
    for workflow in ("train", "evaluate", "inference"):
        assert f"--config_file configs/{workflow}.json" in commands, workflow


def test_monailabel_app_reads_the_packaged_merged_configs(packaged):
    """The MONAI Label app inside a packaged bundle (no YAML pieces) merges the workflow's JSON."""
    from custom.monailabel_app.lib.bundle_config import BundleSettings

    bundle = packaged["bundle"]
    settings = BundleSettings.from_conf({"bundle_root": str(bundle)})
    assert settings.models_dir == str(bundle / "models")
    assert settings.config_files("inference")[0] == str(bundle / "configs" / "inference.json")
    assert settings.config_files("train")[0] == str(bundle / "configs" / "train.json")
    net = settings.parser("inference").get_parsed_content("network_def")
    assert net(torch.rand(1, 1, 64, 64)).shape == (1, 2, 64, 64)
    assert "initialize" in settings.parser("train").get() and settings.parser("train").get("train#trainer")
    # the packaged train.json trains the default method, the paper's two networks, which the app then trains
    assert settings.method == "ours" and settings.trains_transformer
    assert BundleSettings.from_conf({"bundle_root": str(bundle), "method": "ours"}).method == "ours"
    with pytest.raises(FileNotFoundError, match="trains only 'ours'"):
        BundleSettings.from_conf({"bundle_root": str(bundle), "method": "bcp"})


def test_the_default_packaged_train_json_is_the_two_network_system(packaged):
    """Packaged without --method, train.json holds the Swin-Unet beside the UNeXt, cross pseudo-
    supervision, ICT with the Swin-Unet's EMA teacher and the information divergence."""
    train = json.loads((packaged["bundle"] / "configs" / "train.json").read_text())
    assert train["method"] == "ours"
    assert train["networks"] == {"cnn": "@network", "transformer": "@transformer"}
    assert train["transformer_def"]["_target_"] == "custom.networks.SwinUnet"
    terms = {ref.lstrip("@"): train[ref.lstrip("@")]["_target_"] for ref in train["terms"]}
    assert {
        "cps_term": "custom.training.terms.CrossPseudoSupervisionTerm",
        "ict_term": "custom.training.terms.InterpolationConsistencyTerm",
        "id_term": "custom.training.terms.InformationDivergenceTerm",
    }.items() <= terms.items(), terms
    assert train["teachers"]["transformer"] == "@transformer_teacher"
    assert train["train"]["trainer"]["coupling"] == "@method_coupling" and train["method_coupling"] == "@coupling"


def test_the_packaged_train_json_trains_the_method_asked_for(tmp_path):
    """train.json merges the default method unless --method names another; the app in the source
    tree trains the default unless told, and a single-network method trains no Swin-Unet; an
    unknown method is one line naming it."""
    from custom.deploy.package import package
    from custom.monailabel_app.lib.bundle_config import BundleSettings

    weights = tmp_path / "weights.pt"
    _distinctive_weights(weights)
    bcp = package(str(tmp_path / "dist"), name="bcp", weights=str(weights), method="bcp")
    train = json.loads((bcp / "configs" / "train.json").read_text())
    assert train["method"] == "bcp" and set(train["networks"]) == {"cnn"} and train["terms"] == ["@bcp_term"]
    settings = BundleSettings.from_conf({"bundle_root": str(bcp)})
    assert settings.method == "bcp" and not settings.trains_transformer
    source = BundleSettings.from_conf({"bundle_root": str(REPO / "bundle")})
    assert source.method == "ours" and source.trains_transformer
    assert not BundleSettings.from_conf({"bundle_root": str(REPO / "bundle"), "method": "bcp"}).trains_transformer
    proc = subprocess.run(
        [sys.executable, "-m", "custom.deploy.package", "--out", str(tmp_path / "d2"), "--weights", str(weights),
         "--method", "no_such_method"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: --method 'no_such_method': no configs/methods/no_such_method.yaml in "
        f"{REPO / 'bundle'}; known: {sorted(p.stem for p in (REPO / 'bundle' / 'configs' / 'methods').glob('*.yaml'))}"
    ], proc.stderr
    assert not (tmp_path / "d2").exists()


def test_readme_package_commands_run_as_written(tmp_path):
    """The README's packaging lines as written, from a working folder of their own: the package
    command (plus --weights: the repository holds no trained model), then inference from the
    package's merged config, once with PYTHONPATH and once from the bundle folder (IMAGES: a frame,
    the interpreter: this one)."""
    import shlex

    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Export, metadata, sharing") :].split("```bash\n", 1)[1].split("```", 1)[0]
    lines = [line for line in section.splitlines() if "dist" in line and not line.startswith("#")]
    assert len(lines) == 3, lines
    work = tmp_path / "work"
    work.mkdir()
    weights = tmp_path / "weights.pt"
    _distinctive_weights(weights)
    Image.fromarray((np.random.default_rng(1).random((50, 70)) * 255).astype(np.uint8)).save(work / "frame.png")
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME"}}
    env.update(CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(REPO))  # `custom` of the repository for the packager

    def run(line: str, extra: str = "") -> None:
        line = re.sub(r"(\.\./\.\./)?\.venv/bin/python", lambda m: sys.executable, line)
        line = line.replace("IMAGES", str(work / "frame.png")) + extra
        proc = subprocess.run(["bash", "-c", line], cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{line}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"

    run(lines[0], f" --weights {shlex.quote(str(weights))}")
    bundle = work / "dist" / NAME
    assert (work / "dist" / f"{NAME}.zip").is_file() and (bundle / "configs" / "inference.json").is_file()
    assert not list((bundle / "configs").glob("*.yaml"))
    env.pop("PYTHONPATH")  # the lines set it themselves (or run from the bundle folder)
    for i, line in enumerate(lines[1:]):
        run(line, f" --infer_output_dir {shlex.quote(str(tmp_path / f'out{i}'))}")
        (mask,) = (tmp_path / f"out{i}").rglob("*.png")
        got = np.asarray(Image.open(mask))
        assert got.shape[:2] == (50, 70) and got.min() == got.max() == 1, "the packaged weights (foreground everywhere)"


def test_the_package_ships_code_by_allow_list_never_a_monailabel_log(tmp_path, monkeypatch):
    """A checkout after a MONAI Label session holds custom/monailabel_app/logs/app.log (absolute
    paths, image and annotator ids), model/ and bin/: neither the package nor its zip contains
    them, nor any other file of the checkout that is not the bundle's code."""
    from custom.deploy import package as pkg

    code = tmp_path / "custom"
    shutil.copytree(REPO / "custom", code, ignore=shutil.ignore_patterns("__pycache__"))
    app = code / "monailabel_app"
    (app / "logs").mkdir(exist_ok=True)
    (app / "logs" / "app.log").write_text("/home/clinic/frames/patient_0042.png labelled by annotator-7\n")
    (app / "model").mkdir(exist_ok=True)
    (app / "model" / "fetal_us_ssl.pt").write_bytes(b"weights")
    (app / "bin").mkdir(exist_ok=True)
    (app / "bin" / "start.sh").write_text("echo\n")
    (code / "notes.txt").write_text("private\n")
    (code / "data" / "session.log").write_text("private\n")
    monkeypatch.setattr(pkg, "CODE_SOURCE", code)
    out = pkg.package(str(tmp_path / "dist"), name="b", zip=True, allow_missing_weights=True)
    shipped = {p.relative_to(out / "custom").as_posix() for p in (out / "custom").rglob("*") if p.is_file()}
    with zipfile.ZipFile(tmp_path / "dist" / "b.zip") as z:
        zipped = {n.split("/custom/", 1)[1] for n in z.namelist() if "/custom/" in n and not n.endswith("/")}
    assert shipped == zipped
    expected = {p.relative_to(REPO / "custom").as_posix() for p in (REPO / "custom").rglob("*.py")}
    expected = {p for p in expected if not p.startswith("tools/") and "__pycache__" not in p}
    assert shipped == expected | {"monailabel_app/configs/monailabel.yaml"}, shipped ^ expected
    assert not [p for p in shipped if p.endswith((".log", ".txt", ".sh", ".pt")) or "logs/" in p]


class _Payload:
    """A pickled object that would run a command when unpickled without weights_only."""

    def __reduce__(self):
        return (os.system, ("echo payload-ran",))


def _record_for(path: Path) -> None:
    """The record a 64 px, 2-class training writes beside ``path``, carrying the file's own sha256."""
    from monai.bundle import ConfigParser

    from custom.deploy.model_config import ModelConfig, weights_sha256

    parser = ConfigParser()
    parser.read_config([str(REPO / "bundle" / "configs" / "common.yaml")])
    parser.update({"bundle_root": str(REPO / "bundle"), "ckpt_dir": str(path.parent), "model_config_file": None,
                   "image_size": [64, 64], "num_classes": 2, "labels": {"background": 0, "fetal head": 1}})
    ModelConfig(str(path.parent), parser.get_parsed_content("model_record")).write(sha256=weights_sha256(path))


@pytest.mark.parametrize("case", ["pickled payload", "all NaN", "truncated", "another class count"])
def test_package_refuses_weights_that_do_not_load_into_the_recorded_network(tmp_path, case):
    """--weights with a record that carries the file's own sha256 is still loaded safely into the
    network the record describes before anything is written: a pickled payload, non-finite weights,
    a truncated file or weights of another class count end in one line naming the file, exit 2."""
    weights = tmp_path / "w" / "model.pt"
    weights.parent.mkdir()
    if case == "pickled payload":
        torch.save({"final.bias": torch.zeros(2), "note": _Payload()}, weights)
    elif case == "all NaN":
        state = UNeXt(1, 2).state_dict()
        nan = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()}
        torch.save(nan, weights)
    elif case == "truncated":
        torch.save(UNeXt(1, 2).state_dict(), weights)
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    else:
        torch.save(UNeXt(1, 3).state_dict(), weights)
    _record_for(weights)
    out = tmp_path / "dist"
    proc = subprocess.run(
        [sys.executable, "-m", "custom.deploy.package", "--out", str(out), "--weights", str(weights)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-1000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr and "payload-ran" not in proc.stdout + proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and str(weights) in lines[0], proc.stderr
    assert not out.exists(), "nothing is written for weights that are refused"


def test_a_full_or_failing_output_is_one_line_and_leaves_no_empty_folder(tmp_path, monkeypatch, capsys):
    """Issue 33: a full output device is refused before any work; a write the system refuses during
    the work (here the zip) is one line naming the file; neither leaves a (half-)package nor the
    empty dist/ the call created."""
    import errno
    from collections import namedtuple

    from custom.deploy import package as pkg

    usage = namedtuple("usage", "total used free")
    real_usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9, 0))
    with pytest.raises(SystemExit) as e:
        pkg._command(str(tmp_path / "dist"), name="b", allow_missing_weights=True)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --out {tmp_path / 'dist'}: no space left on the device") and err.count("\n") == 1
    assert not (tmp_path / "dist").exists()

    monkeypatch.setattr(shutil, "disk_usage", real_usage)

    def refused(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shutil, "make_archive", refused)
    with pytest.raises(SystemExit) as e:
        pkg._command(str(tmp_path / "dist"), name="b", zip=True, allow_missing_weights=True)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(f"error: {tmp_path / 'dist' / 'b.zip'}: No space left on device")
    assert not (tmp_path / "dist").exists()


def test_a_malformed_weights_record_is_named(tmp_path, capsys):
    """Issue 33: a model_config.json beside the weights that is not JSON is one line naming it."""
    import torch

    from custom.deploy import package as pkg
    from custom.networks import UNeXt

    models = tmp_path / "models"
    models.mkdir()
    torch.save(UNeXt(in_channels=1, out_channels=2).state_dict(), models / "model.pt")
    (models / "model_config.json").write_text("{bad")
    with pytest.raises(SystemExit) as e:
        pkg._command(str(tmp_path / "dist"), name="b", weights=str(models / "model.pt"))
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert f"cannot read the weights record {models / 'model_config.json'}: not valid JSON" in err
    assert not (tmp_path / "dist").exists()


def test_the_packaged_pretraining_runs_from_the_copy_alone(packaged, tmp_path, demo_dataset):
    """configs/pretrain.json: the Swin-Unet's masked image modelling from the packaged bundle alone,
    its weights and record in the given ckpt_dir."""
    bundle = packaged["bundle"]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "pretraining", "--config_file",
           str(bundle / "configs" / "pretrain.json"), "--meta_file", str(bundle / "configs" / "metadata.json"),
           "--bundle_root", str(bundle), "--dataset_dir", demo_dataset, "--ckpt_dir", str(tmp_path / "pre"),
           "--image_size", "[64, 64]", "--transformer_def#embed_dim", "12", "--transformer_def#num_heads",
           "[1, 1, 2, 2]", "--transformer_def#window_size", "4", "--pretrain_iterations", "2",
           "--pretrain_batch_size", "4"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=_bundle_env(bundle), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads((tmp_path / "pre" / "transformer_pretrained.json").read_text())
    assert record["complete"] and record["iterations"] == 2


def test_review_thresholds_travel_with_their_weights_and_stale_ones_stay_behind(tmp_path):
    """Issue 32: ``review.json`` set for the packaged weights is shipped beside them; thresholds set
    for other weights (``model.pt`` replaced after training) are left out with a warning."""
    from custom.evaluation.review import write_review_file

    weights = tmp_path / "w" / "model.pt"
    weights.parent.mkdir()
    _distinctive_weights(weights)
    write_review_file(str(weights.parent), {"thresholds": {"edge": 0.1}, "rate": 0.1}, head_class=1)

    def package(out):
        return subprocess.run(
            [sys.executable, "-m", "custom.deploy.package", "--out", str(out), "--weights", str(weights)],
            cwd=REPO, capture_output=True, text=True, timeout=300,
        )

    proc = package(tmp_path / "dist")
    assert proc.returncode == 0, proc.stderr[-2000:]
    (shipped,) = (tmp_path / "dist").glob("*/models/review.json")
    assert json.loads(shipped.read_text())["thresholds"] == {"edge": 0.1}

    record = json.loads((weights.parent / "review.json").read_text())
    (weights.parent / "review.json").write_text(json.dumps({**record, "weights_sha256": "0" * 64}))
    proc = package(tmp_path / "dist2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not list((tmp_path / "dist2").glob("*/models/review.json"))
    assert "review thresholds left out of the package" in proc.stderr
