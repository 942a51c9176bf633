"""The bundle's metadata against the model-zoo schema shipped in the repository (offline), and
the network's input/output against the metadata, through monai.bundle's own commands:

    python -m monai.bundle verify_metadata --meta_file bundle/configs/metadata.json \
        --filepath bundle/configs/meta_schema.json
    python -m monai.bundle verify_net_in_out network_def --meta_file bundle/configs/metadata.json \
        --config_file "['bundle/configs/common.yaml']" --device cpu
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import CONFIGS, REPO

SCHEMA = CONFIGS / "meta_schema.json"
METADATA = CONFIGS / "metadata.json"
# any attempt to reach the network fails at once: the check must not need it
OFFLINE_ENV = {
    **os.environ,
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "http_proxy": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "NO_PROXY": "",
    "no_proxy": "",
    "CUDA_VISIBLE_DEVICES": "",
}


def _monai_bundle(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=OFFLINE_ENV,
    )


def _verify_metadata(meta_file) -> subprocess.CompletedProcess:
    return _monai_bundle("verify_metadata", "--meta_file", str(meta_file), "--filepath", str(SCHEMA))


def test_schema_is_a_valid_draft7_schema_requiring_the_model_zoo_fields():
    import jsonschema

    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    assert {
        "version",
        "changelog",
        "monai_version",
        "pytorch_version",
        "numpy_version",
        "required_packages_version",
        "task",
        "description",
        "authors",
        "copyright",
        "network_data_format",
    } <= set(schema["required"])
    io_required = set(schema["definitions"]["data_format"]["required"])
    assert io_required == {
        "type",
        "format",
        "num_channels",
        "spatial_shape",
        "dtype",
        "value_range",
        "is_patch_data",
        "channel_def",
    }


def test_verify_metadata_passes_offline_with_the_shipped_schema():
    schema_before = SCHEMA.read_bytes()
    proc = _verify_metadata(METADATA)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "skipped downloading" in log and "verified with no error" in log
    assert SCHEMA.read_bytes() == schema_before  # read, never replaced by a download


def test_verify_metadata_rejects_metadata_without_version(tmp_path):
    meta = json.loads(METADATA.read_text())
    del meta["version"]
    bad = tmp_path / "metadata.json"
    bad.write_text(json.dumps(meta))
    proc = _verify_metadata(bad)
    assert proc.returncode != 0
    assert "'version' is a required property" in proc.stderr


def test_schema_rejects_incomplete_io_entries_and_bad_spatial_dims():
    import jsonschema

    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    meta = json.loads(METADATA.read_text())
    assert not list(validator.iter_errors(meta))
    del meta["network_data_format"]["outputs"]["pred"]["channel_def"]
    assert ["'channel_def' is a required property"] == [e.message for e in validator.iter_errors(meta)]
    meta = json.loads(METADATA.read_text())
    meta["network_data_format"]["inputs"]["image"]["spatial_shape"] = ["32*n", "*"]  # model-zoo patterns pass
    assert not list(validator.iter_errors(meta))
    meta["network_data_format"]["inputs"]["image"]["spatial_shape"] = [0, 448]
    assert list(validator.iter_errors(meta))


def test_verify_net_in_out_matches_the_metadata():
    # num_classes pinned to the metadata's 2 output channels, so that a prepared datalist with
    # other classes lying around cannot change the network under test
    out_channels = json.loads(METADATA.read_text())["network_data_format"]["outputs"]["pred"]["num_channels"]
    proc = _monai_bundle(
        "verify_net_in_out",
        "network_def",
        "--meta_file",
        str(METADATA),
        "--config_file",
        "['bundle/configs/common.yaml']",
        "--device",
        "cpu",
        "--num_classes",
        str(out_channels),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "verified with no error" in proc.stdout + proc.stderr


def test_verify_net_in_out_detects_a_channel_mismatch(tmp_path):
    # an empty ckpt_dir: no recorded model_config.json (e.g. of a demo in bundle/models) takes part
    proc = _monai_bundle(
        "verify_net_in_out",
        "network_def",
        "--ckpt_dir",
        str(tmp_path),
        "--meta_file",
        str(METADATA),
        "--config_file",
        "['bundle/configs/common.yaml']",
        "--device",
        "cpu",
        "--num_classes",
        "3",
        "--_meta_#network_data_format#inputs#image#spatial_shape",
        "[64, 64]",
    )
    assert proc.returncode != 0
    assert "output channel number" in proc.stderr


def test_metadata_declares_the_monailabel_app_it_ships_with_its_pinned_version():
    """Issue 33: the model zoo's property check reads ``supported_apps``; the bundle ships a MONAI
    Label app (custom/monailabel_app) tested against the version requirements-monailabel.txt pins."""
    import re

    meta = json.loads((CONFIGS / "metadata.json").read_text())
    pinned = re.search(r"^monailabel==(\S+)$", (REPO / "requirements-monailabel.txt").read_text(), re.M).group(1)
    assert meta["supported_apps"] == {"monai-label": pinned}
    assert (REPO / "custom" / "monailabel_app" / "main.py").is_file()
