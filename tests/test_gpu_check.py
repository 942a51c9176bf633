"""Issue 17 item 5: ``python -m custom.tools.bench gpu --out FILE.json [--tiny true]`` runs every stage
and writes one JSON file; a failing stage is recorded with its error and the others still run.
The tiny run is the CPU rehearsal of the H200 check (64 px, narrow Swin-Unet, 3 iterations)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO, SHARED_DATA

from custom.tools.bench.gpu_check import STAGES, run_gpu_check
from custom.utils.paths import DEFAULT_METHOD


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    return subprocess.run(
        [sys.executable, "-m", "custom.tools.bench", "gpu", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


def test_tiny_gpu_check_writes_every_stage_into_one_json(tmp_path):
    out = tmp_path / "check" / "gpu.json"
    proc = _cli("--out", str(out), "--tiny", "true", "--dataset-dir", str(SHARED_DATA / "psfhs"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert [p.name for p in out.parent.iterdir()] == ["gpu.json"]  # atomic: no temporary file left
    assert set(r["stages"]) == set(STAGES) and r["tiny"] is True and r["device"] == "cpu"
    env = r["stages"]["environment"]["result"]
    for key in ("torch", "cuda", "monai", "device_name", "python"):
        assert key in env, key
    data_present = (SHARED_DATA / "psfhs" / "images").is_dir()
    expected_failures = [] if data_present else ["prepare_psfhs", "real_paper", "real_default"]
    assert r["failed"] == expected_failures, {k: v.get("error") for k, v in r["stages"].items()}
    for name in ("train_fp32", "train_bf16", "train_compile", "train_compile_cached"):
        result = r["stages"][name]["result"]
        assert result["iteration_s"] > 0 and result["config"]["image_size"] == 64, name
    assert r["stages"]["train_bf16"]["result"]["config"]["amp"] == "bf16"
    assert r["stages"]["train_compile"]["result"]["config"]["compile"] is True
    cold, warm = r["stages"]["train_compile"]["result"], r["stages"]["train_compile_cached"]["result"]
    assert warm["config"]["compile"] is True and warm["compile_cache"] == cold["compile_cache"]  # one cache
    assert cold["compile_cache_files_before"] == 0 and warm["first_iteration_s"] > 0
    assert r["stages"]["infer"]["result"]["cpu"]["sizes"]["64"]["eager"]["images_per_s"] > 0
    if data_present:
        for name, method in (("real_paper", "paper"), ("real_default", DEFAULT_METHOD)):
            result = r["stages"][name]["result"]
            assert result["method"] == method and result["iterations"] == 3 and result["test_images"] > 0
            assert 0.0 <= result["test_dice"] <= 1.0
    assert all(isinstance(v["seconds"], float) for v in r["stages"].values())


def test_a_failing_stage_is_recorded_and_the_next_still_runs(tmp_path):
    out = tmp_path / "gpu.json"
    r = run_gpu_check(
        out, tiny=True, dataset_dir=tmp_path / "nowhere", stages=("prepare_psfhs", "environment"), quiet=True
    )
    assert r["failed"] == ["prepare_psfhs"]
    assert (
        "FileNotFoundError" in r["stages"]["prepare_psfhs"]["error"]
        and "nowhere" in r["stages"]["prepare_psfhs"]["error"]
    )
    assert r["stages"]["environment"]["ok"] and r["stages"]["environment"]["result"]["torch"]
    assert json.loads(out.read_text()) == json.loads(json.dumps(r, default=str))


def test_bad_options_are_one_line(tmp_path):
    for args, option in (
        ([], "--out"),
        (["--out", str(tmp_path / "x.json"), "--stages", "[bogus]"], "--stages"),
        (["--out", str(tmp_path / "x.json"), "--tiny", "maybe"], "--tiny"),
    ):
        proc = _cli(*args)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert proc.returncode == 2 and len(errors) == 1 and option in errors[0], (args, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr
