"""Fuzzing the entry points of input: ~220 seeded malformed files (random bytes behind PNG/
JPEG/NIfTI/DICOM headers, truncated real files, odd shapes and dtypes, NaN/Inf arrays,
zero-byte files, PNG headers declaring huge sizes) fed to batch-inference screening and one
inference run, and to data preparation. Each file must end in a clean error naming it (or a
reported bad input) or a valid result, within a time limit, without crashing the process."""

from __future__ import annotations

import gzip
import io
import json
import re
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
import torch
from conftest import CONFIGS, REPO
from PIL import Image

SEED = 20240517
PER_FILE_LIMIT_S = 20  # per-file read/check limit (signal.alarm); real reads take milliseconds
PREPARE_ERROR_CODE = 2  # documented exit status of `python -m custom.data prepare` for input errors


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG")
    return buf.getvalue()


def _nifti_bytes(array: np.ndarray) -> bytes:
    return gzip.compress(nib.Nifti1Image(array, np.eye(4)).to_bytes(), mtime=0)  # written as .nii.gz


def _tiff_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, array)
    return buf.getvalue()


def generate(folder: Path, seed: int = SEED) -> dict[str, str]:
    """Write the malformed (and a few valid) files; returns name -> kind of fault."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    kinds: dict[str, str] = {}

    def put(name: str, data: bytes, kind: str) -> None:
        (folder / name).write_bytes(data)
        kinds[name] = kind

    def img(h=32, w=32, dtype=np.uint8):
        return (rng.random((h, w)) * 255).astype(dtype)

    headers = {
        "png": b"\x89PNG\r\n\x1a\n",
        "jpg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
        "dcm": b"\x00" * 128 + b"DICM",
        "nii": struct.pack("<i", 348),
    }
    for ext, head in headers.items():  # random bytes behind a valid magic number
        for i in range(15):
            put(f"rand_{ext}_{i:02d}.{ext}", head + rng.bytes(int(rng.integers(0, 3000))), "random bytes with header")
    real = {
        "png": _png_bytes(img(48, 40)),
        "jpg": _jpeg_bytes(img(48, 40)),
        "nii.gz": _nifti_bytes(img(48, 40).astype(np.float32)),
        "nii": nib.Nifti1Image(img(48, 40).astype(np.int16), np.eye(4)).to_bytes(),
        "tif": _tiff_bytes(img(48, 40)),
    }
    for ext, data in real.items():  # real files cut short
        for i in range(10):
            cut = int(rng.integers(1, len(data) - 1))
            put(f"trunc_{ext.replace('.', '')}_{i:02d}.{ext}", data[:cut], "truncated")
    shapes = {
        "line": (64,),
        "stack3": (32, 32, 3),
        "stack5": (32, 32, 5),
        "vol": (8, 16, 16),
        "tall": (1, 300),
        "dot": (1, 1),
        "four_d": (8, 8, 2, 2),
    }
    for name, shape in shapes.items():  # odd shapes
        put(f"shape_{name}.nii.gz", _nifti_bytes((rng.random(shape) * 255).astype(np.float32)), f"shape {shape}")
    for c in (2, 5, 7):
        put(f"shape_c{c}.tif", _tiff_bytes((rng.random((c, 24, 24)) * 255).astype(np.uint8)), f"{c} channels first")
        put(f"shape_last{c}.tif", _tiff_bytes((rng.random((24, 24, c)) * 255).astype(np.uint8)), f"{c} channels last")
    put("shape_la.png", _png_bytes((rng.random((24, 24, 2)) * 255).astype(np.uint8)), "grey + alpha")
    put("shape_rgba.png", _png_bytes((rng.random((24, 24, 4)) * 255).astype(np.uint8)), "RGBA")
    put("shape_stack_tiff.tif", _tiff_bytes((rng.random((6, 24, 24)) * 255).astype(np.uint8)), "multi-page")
    dtypes = {
        "f64": np.float64,
        "i16": np.int16,
        "u16": np.uint16,
        "i32": np.int32,
        "f32": np.float32,
        "u8": np.uint8,
        "i8": np.int8,
    }
    for name, dt in dtypes.items():  # dtypes, in range and out of range of the 8-bit scaling
        for scale, tag in ((1.0, "unit"), (255.0, "byte"), (40000.0, "wide")):
            if tag == "wide" and dt in (np.int8, np.uint8):
                continue
            array = (rng.random((24, 24)) * scale).astype(dt)
            put(f"dtype_{name}_{tag}.nii.gz", _nifti_bytes(array), f"dtype {name} x{scale:g}")
            put(f"dtype_{name}_{tag}_t.tif", _tiff_bytes(array), f"dtype {name} x{scale:g}")
    put("dtype_bool.tif", _tiff_bytes(rng.random((24, 24)) > 0.5), "bool")
    put("dtype_u16.png", _png_bytes((rng.random((24, 24)) * 60000).astype(np.uint16)), "16-bit PNG")
    put("dtype_u16low.png", _png_bytes((rng.random((24, 24)) * 200).astype(np.uint16)), "16-bit PNG, 8-bit values")
    for i, fill in enumerate((np.nan, np.inf, -np.inf)):  # NaN/Inf arrays
        for partial in (False, True):
            a = (rng.random((24, 24)) * 255).astype(np.float32)
            if partial:
                a[rng.random(a.shape) < 0.1] = fill
            else:
                a[:] = fill
            tag = f"{i}{'p' if partial else 'f'}"
            put(f"nonfinite_{tag}.nii.gz", _nifti_bytes(a), "NaN/Inf")
            put(f"nonfinite_{tag}_t.tif", _tiff_bytes(a), "NaN/Inf")
            put(f"nonfinite64_{tag}.nii.gz", _nifti_bytes(a.astype(np.float64)), "NaN/Inf")
    for ext in ("png", "jpg", "jpeg", "bmp", "tif", "tiff", "nii", "nii.gz", "dcm"):  # zero-byte files
        put(f"zero_{ext.replace('.', '')}.{ext}", b"", "zero bytes")
    for i, (w, h) in enumerate(
        [
            (2**31 - 1, 2**31 - 1),
            (65535, 65535),
            (100000, 1),
            (1, 100000),
            (30000, 30000),
            (12000, 12000),
            (0, 10),
            (10, 0),
            (2**32 - 1, 5),
            (5000, 5000),
            (20000, 9000),
            (1, 1),
            (40000, 40000),
            (9000, 20000),
            (16384, 16384),
        ]
    ):
        ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
        idat = zlib.compress(rng.bytes(int(rng.integers(0, 64))))
        data = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
        put(f"huge_{i:02d}.png", data, f"PNG header {w}x{h}, tiny data")
    for i in range(10):  # valid images (several sizes, formats): must be segmented
        h, w = int(rng.integers(8, 80)), int(rng.integers(8, 80))
        put(f"valid_{i:02d}.png", _png_bytes(img(h, w)), "valid")
    put("valid_jpg.jpg", _jpeg_bytes(img(30, 50)), "valid")
    put("valid_nii.nii.gz", _nifti_bytes(img(30, 50).astype(np.float32)), "valid")
    put("valid_small.png", _png_bytes(img(20, 20)), "valid")
    return kinds


@pytest.fixture(scope="module")
def fuzz_folder(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    folder = tmp_path_factory.mktemp("fuzz") / "inputs"
    kinds = generate(folder)
    return folder, kinds


def test_generation_is_deterministic_and_large_enough(tmp_path, fuzz_folder):
    folder, kinds = fuzz_folder
    again = generate(tmp_path / "again")
    assert len(kinds) >= 200 and kinds == again
    assert all((folder / n).read_bytes() == (tmp_path / "again" / n).read_bytes() for n in kinds)


def _screen_all(folder: Path, names) -> dict[str, str | None]:
    from custom.deploy.inference import screen_file

    results = {}
    for name in names:
        start = time.monotonic()
        results[name] = screen_file(str(folder / name), intensity_range=[0, 255], timeout_s=PER_FILE_LIMIT_S)
        assert time.monotonic() - start < PER_FILE_LIMIT_S + 5, name
    return results


def test_inference_screening_and_one_run_on_the_fuzz_folder(tmp_path, fuzz_folder):
    folder, kinds = fuzz_folder
    results = _screen_all(folder, sorted(kinds))
    good = sorted(n for n, r in results.items() if r is None)
    bad = {n: r for n, r in results.items() if r is not None}
    assert all(n in good for n in kinds if kinds[n] == "valid"), [(n, results[n]) for n in kinds if kinds[n] == "valid"]
    for n in kinds:  # these can never be segmented
        if kinds[n] in ("zero bytes", "NaN/Inf") or n.startswith("huge_0"):
            assert n in bad, (n, kinds[n])
        if kinds[n] == "zero bytes":
            assert bad[n] == "empty file (0 bytes)"

    # the whole folder through the bundle, in a subprocess: exit 0, bad files reported, good ones segmented
    from custom.networks import UNeXt

    torch.manual_seed(0)
    torch.save(UNeXt(1, 2).state_dict(), tmp_path / "model.pt")
    configs = str([str(CONFIGS / c) for c in ("common.yaml", "inference.yaml")])
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            configs,
            "--input_path",
            str(folder),
            "--ckpt_path",
            str(tmp_path / "model.pt"),
            "--output_dir",
            str(tmp_path / "out"),
            "--image_size",
            "[32,32]",
            "--num_classes",
            "2",
            "--input_check_timeout",
            str(PER_FILE_LIMIT_S),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = tmp_path / "out" / "inference"
    report = {Path(r["file"]).name: r["reason"] for r in json.loads((out / "bad_inputs.json").read_text())}
    assert report == bad
    for name in good:
        from custom.deploy.inference import mask_output_path

        mask = Path(mask_output_path(str(out), name))
        assert mask.is_file(), name


def test_per_file_preparation_readers_fail_cleanly(fuzz_folder):
    from custom.data.errors import ReadError
    from custom.data.preflight import time_limit
    from custom.data.readers import read_image_plane, read_mask_plane

    folder, kinds = fuzz_folder
    outcomes = {}
    for name in sorted(kinds):
        for reader in (read_image_plane, read_mask_plane):
            start = time.monotonic()
            try:
                with time_limit(PER_FILE_LIMIT_S, name):
                    plane = reader(folder / name)
                assert plane.array.ndim == 2 and plane.array.size > 0, name
                outcomes[(name, reader.__name__)] = "ok"
            except ReadError as e:
                assert str(e), name
                outcomes[(name, reader.__name__)] = "error"
            assert time.monotonic() - start < PER_FILE_LIMIT_S + 5, name
    assert all(outcomes[(n, "read_image_plane")] == "ok" for n in kinds if kinds[n] == "valid")
    assert all(outcomes[(n, "read_image_plane")] == "error" for n in kinds if kinds[n] == "zero bytes")


def _prepare_cmd(source: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "custom.data",
        "prepare",
        "folder",
        "--source",
        str(source),
        "--out",
        str(out),
        "--val-fraction",
        "0",
        "--test-fraction",
        "0",
        "--progress",
        "false",
        *extra,
    ]


@pytest.mark.parametrize("fuzzed", ["images", "labels"])
def test_preparation_of_a_fuzzed_folder_lists_every_bad_file(tmp_path, fuzz_folder, fuzzed):
    """prepare (through the command line, in a subprocess): exit 2 naming every bad file, or with
    --skip-invalid a valid dataset of the good pairs and skipped.json naming the others."""
    from custom.data.readers import strip_suffix

    folder, kinds = fuzz_folder
    source = tmp_path / "src"
    (source / "images").mkdir(parents=True)
    (source / "labels").mkdir()
    fuzz_dir, other_dir = (
        (source / "images", source / "labels") if fuzzed == "images" else (source / "labels", source / "images")
    )
    for name in kinds:
        (fuzz_dir / name).write_bytes((folder / name).read_bytes())
        # the partner of every file: a plain 8-bit PNG of the fuzzed file's size where it has one
        try:
            from custom.data.readers import read_raw

            shape = read_raw(folder / name).array.shape[:2]
            shape = shape if len(shape) == 2 and 0 < shape[0] * shape[1] <= 10**6 else (16, 16)
        except Exception:
            shape = (16, 16)
        partner = np.zeros(shape, np.uint8) if fuzzed == "images" else np.full(shape, 128, np.uint8)
        Image.fromarray(partner).save(other_dir / f"{strip_suffix(name)}.png")
    res = subprocess.run(_prepare_cmd(source, tmp_path / "out"), capture_output=True, text=True, timeout=600, cwd=REPO)
    assert res.returncode == PREPARE_ERROR_CODE, (res.returncode, res.stderr[-3000:])
    assert not (tmp_path / "out").exists()
    bad = [n for n in kinds if kinds[n] in ("zero bytes", "NaN/Inf") or n.startswith("huge_0")]
    for name in bad:
        assert name in res.stderr, name
    first_stderr = res.stderr
    # the refused run named every bad file; with --skip-invalid those are exactly the skipped ones
    named_bad = {n for n in kinds if re.search(rf"(^|[/\s]){re.escape(n)}(:|\s|$)", first_stderr, re.M)}
    res = subprocess.run(
        _prepare_cmd(source, tmp_path / "out", "--skip-invalid"), capture_output=True, text=True, timeout=600, cwd=REPO
    )
    assert res.returncode == 0, (res.returncode, res.stderr[-3000:])
    skipped = json.loads((tmp_path / "out" / "skipped.json").read_text())
    skipped_stems = {strip_suffix(Path(s["file"]).name) for s in skipped}
    assert {strip_suffix(n) for n in bad} <= skipped_stems
    assert {strip_suffix(n) for n in named_bad} == skipped_stems, (sorted(named_bad), sorted(skipped_stems))
    datalist = json.loads((tmp_path / "out" / "datalist.json").read_text())
    written = [e for k, v in datalist.items() if k in ("training", "unlabeled", "validation", "test") for e in v]
    written_stems = {strip_suffix(Path(e["image"]).name) for e in written}
    # every pair is either listed (a valid one) or skipped (a bad one), never both, never neither
    assert written_stems.isdisjoint(skipped_stems) and len(written) == len(written_stems)
    assert written_stems | skipped_stems == {strip_suffix(n) for n in kinds}
    from custom.data.readers import read_image_plane, read_mask_plane

    for entry in written:  # each listed pair was written and is readable at one size
        image = read_image_plane(tmp_path / "out" / entry["image"]).array
        assert image.ndim == 2 and read_mask_plane(tmp_path / "out" / entry["label"]).array.shape == image.shape


def test_preparation_rejects_non_finite_images(fuzz_folder):
    from custom.data.errors import ReadError
    from custom.data.readers import read_image_plane

    folder, kinds = fuzz_folder
    for name in sorted(n for n in kinds if kinds[n] == "NaN/Inf" and n.endswith(".nii.gz")):
        with pytest.raises(ReadError):
            read_image_plane(folder / name)


def test_json_nested_too_deeply_is_one_line_naming_the_file(tmp_path, demo_dataset):
    """Issue 33: a 100,000-deep nested JSON (Python's parser raises ``RecursionError``) as a
    datalist, a weights record or a demo set's datalist: one line naming the file."""
    import shutil

    from custom.data.demo import ensure_demo_dataset
    from custom.deploy.model_config import ModelConfigError, datalist_labels, read
    from custom.utils.jsonio import load_json

    deep = tmp_path / "deep.json"
    deep.write_text('{"x": ' * 100_000 + "1" + "}" * 100_000)
    with pytest.raises(ValueError, match=r"deep\.json: JSON nested too deeply"):
        load_json(deep)
    with pytest.raises(ModelConfigError, match=r"weights record .*deep\.json: JSON nested too deeply"):
        read(deep)
    assert datalist_labels(deep) is None  # the labels default applies; the datalist's own check names it
    data = tmp_path / "data"
    shutil.copytree(demo_dataset, data)
    (data / "datalist.json").write_text('{"training": ' + '[' * 100_000 + "]" * 100_000 + "}")
    marker_free = tmp_path / "demo"
    marker_free.mkdir()
    (marker_free / "datalist.json").write_text(deep.read_text())
    with pytest.raises(FileExistsError, match="not a demo set"):  # not the demo's own: refused, untouched
        ensure_demo_dataset(str(marker_free))
    args = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file",
            str([str(CONFIGS / f) for f in ("common.yaml", "train.yaml", "methods/bcp.yaml")]),
            "--meta_file", str(CONFIGS / "metadata.json"), "--dataset_dir", str(data),
            "--ckpt_dir", str(tmp_path / "models"), "--image_size", "[64, 64]", "--max_iterations", "2"]
    p = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
    expected = f"error: {data / 'datalist.json'}: JSON nested too deeply to be a datalist"
    assert p.stderr.strip().splitlines()[-1] == expected
