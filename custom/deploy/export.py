"""TorchScript and ONNX export of the deployed UNeXt at the size its weights were trained at.

    python -m custom.deploy.export torchscript [--ckpt_dir bundle/models] [--filepath bundle/models/model.ts]
    python -m custom.deploy.export onnx [--ckpt_dir bundle/models] [--filepath bundle/models/model.onnx]

Options: ``--config_file`` (default ``['bundle/configs/common.yaml']``), ``--meta_file`` (default
``bundle/configs/metadata.json``), ``--use_trace`` (TorchScript: trace instead of script),
``--opset_version`` (ONNX), ``--image_size "[H, W]"`` (only for weights without their own record).

The input shape is never typed by hand: ``1 x in_channels x image_size`` comes from
``model_config.json`` beside ``model.pt`` (written by training, see
:mod:`custom.deploy.model_config`), and ``common.yaml`` builds the network from the same record
(``--ckpt_dir`` is passed on as ``ckpt_dir``). The export itself is MONAI's own
(:func:`monai.bundle.ckpt_export`, :func:`monai.bundle.onnx_export`), as the bundle's README ran it
before: the TorchScript file carries the metadata (its ``network_data_format`` set from the
record) and the configs; the ONNX graph has the input ``image`` and output ``pred``, with a
dynamic batch axis. Each export is checked against the eager network on one random input of the
recorded shape (ONNX Runtime for ONNX when it is installed, else ONNX's reference evaluator), is
written to a temporary file beside ``--filepath`` and renamed into place only when complete
(:mod:`custom.utils.atomic`). A missing ``model.pt`` or record, a record of other weights (its
``weights_sha256`` is not theirs) unless ``--image_size`` is given, or a record without a usable
``image_size``, ends with one ``error: ...`` line (status 2).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from custom.deploy.model_config import (
    FILENAME,
    ModelConfigError,
    belongs_to,
    config_path,
    network_data_format,
    read,
)
from custom.utils.atomic import atomic_path
from custom.utils.cli import OptionError, exit_on_error, parse_bool
from custom.utils.paths import bundle_root, configs_dir

__all__ = ["FORMATS", "ONNX_CONVERTER_KWARGS", "WeightsError", "check_weights", "input_shape", "export", "main"]

FORMATS = {"torchscript": ".ts", "onnx": ".onnx"}
# the names and the dynamic batch axis the bundle's ONNX model has always had
ONNX_CONVERTER_KWARGS = {
    "input_names": ["image"],
    "output_names": ["pred"],
    "dynamic_axes": {"image": {0: "batch"}, "pred": {0: "batch"}},
}
# eager against exported on the check input (float32; the tests hold them to 1e-4)
_RTOL, _ATOL = 1e-4, 1e-4


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def input_shape(record: dict, record_file: str) -> list[int]:
    """``[1, in_channels, *image_size]`` from a model record; a record without a usable
    ``image_size`` is refused naming the file."""
    size = record.get("image_size")
    if (
        not isinstance(size, (list, tuple))
        or len(size) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)
    ):
        raise ModelConfigError(f"{record_file}: image_size must be two positive integers, got {size!r}")
    channels = record.get("in_channels", 1)
    if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
        raise ModelConfigError(f"{record_file}: in_channels must be a positive integer, got {channels!r}")
    return [1, channels, *size]


class WeightsError(ValueError):
    """``model.pt`` cannot be exported as it is (unreadable, truncated, pickled objects, NaN/Inf,
    or weights of another network or class count); the message names the file, in one line."""


def check_weights(ckpt_file: str, configs: list[str], ckpt_dir: str, overrides: dict[str, Any]) -> None:
    """Load ``ckpt_file`` strictly into the network the configs build (before MONAI's export, and
    before packaging: :mod:`custom.deploy.package`), finite values only:
    MONAI's ``ckpt_export`` copies only the tensors whose shapes match (``copy_model_state``), so
    weights of another class count would export a partly untrained network without a word. Reads
    with ``weights_only=True`` (no pickled code runs) and never passes on PyTorch's advice to
    load with ``weights_only=False``."""
    from monai.bundle import ConfigParser

    from custom.training.checkpoint import load_network_weights

    parser = ConfigParser()
    parser.read_config(configs)
    parser.update({"bundle_root": bundle_root(), "ckpt_dir": ckpt_dir, **overrides})
    network = parser.get_parsed_content("network_def")
    try:
        load_network_weights(network, ckpt_file)
    except (ValueError, FileNotFoundError) as e:
        text = " ".join(str(e).split())
        if "does not fit" in text:  # the strict load's key list is long: its first mismatch says enough
            import re

            head = text.split(": Error(s)", 1)[0]
            first = re.search(
                r"size mismatch for ([^:]+): copying a param with shape torch\.Size\((\[[^\]]*\])\) "
                r"from checkpoint, the shape in current model is torch\.Size\((\[[^\]]*\])\)",
                text,
            )
            detail = (
                f": '{first[1]}' is {first[2]} in the file, {first[3]} in the network"
                if first
                else ": its tensor names differ from the network's"
            )
            text = f"{head}{detail} (weights of another class count or network than the record describes)"
        raise WeightsError(text) from None


def _image_size_option(value: Any) -> list[int]:
    """``--image_size``: two positive integers (``"[64, 64]"`` or ``64,64``), else one line naming the option."""
    items = value
    if isinstance(value, str):
        items = [v for v in value.strip().strip("[]()").replace(",", " ").split() if v]
    try:
        size = [int(v) for v in items] if isinstance(items, (list, tuple)) else None
    except (TypeError, ValueError):
        size = None
    if (
        size is None
        or len(size) != 2
        or any(s <= 0 for s in size)
        or any(isinstance(v, (bool, float)) and v != int(v) for v in items)
    ):
        raise OptionError(f'--image_size: expected two positive integers such as "[448, 448]", got {value!r}')
    return size


def _files(value: Any, option: str) -> list[str]:
    """A file or a list of files (fire hands ``"['a', 'b']"`` over as a list) that must exist."""
    if isinstance(value, str):
        value = [s.strip() for s in value.strip("[]").replace("'", "").replace('"', "").split(",") if s.strip()]
    files = [os.path.abspath(os.fspath(f)) for f in value]
    if not files:
        raise OptionError(f"--{option}: no file given")
    for f in files:
        if not os.path.isfile(f):
            raise FileNotFoundError(f"--{option}: {f} not found")
    return files


def export(
    fmt: str,
    ckpt_dir: str | os.PathLike | None = None,
    filepath: str | os.PathLike | None = None,
    config_file: str | Sequence[str] | None = None,
    meta_file: str | os.PathLike | None = None,
    use_trace: Any = False,
    opset_version: int | None = None,
    image_size: Any = None,
) -> str:
    """Export ``ckpt_dir/model.pt`` as ``fmt`` (``torchscript`` or ``onnx``) at the recorded input
    shape; returns the written path. See the module docstring."""
    import json

    from monai.bundle import ckpt_export, onnx_export

    kind = str(fmt).strip().lower()
    if kind not in FORMATS:
        raise OptionError(f"format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    trace = parse_bool(use_trace, "use_trace")
    ckpt_dir = os.path.abspath(os.fspath(ckpt_dir if ckpt_dir is not None else Path(bundle_root()) / "models"))
    ckpt_file = os.path.join(ckpt_dir, "model.pt")
    if not os.path.isfile(ckpt_file):
        raise FileNotFoundError(f"no model.pt in {ckpt_dir}: train first, or pass --ckpt_dir with the weights' folder")
    record_file = config_path(ckpt_dir)
    record = read(record_file)
    why = belongs_to(record, ckpt_file)
    overrides: dict[str, Any] = {}
    if image_size is not None:  # the scale given explicitly: the record (if any) is not needed
        size = _image_size_option(image_size)
        record = {**(record if why is None else {}), "image_size": size}
        overrides["image_size"] = size
        if why is not None:
            overrides["model_config_file"] = None
    elif record is None:
        raise FileNotFoundError(
            f"no {FILENAME} beside {ckpt_file}: training writes it (image size, classes, channels, network "
            'widths); retrain, or pass --image_size "[H, W]" (the size of their training)'
        )
    elif why is not None:
        raise ModelConfigError(
            f'{ckpt_file}: {why}: retrain, or pass --image_size "[H, W]" (the size of their training)'
        )
    shape = input_shape(record, record_file)
    configs = _files(config_file if config_file is not None else [configs_dir() / "common.yaml"], "config_file")
    (meta,) = _files([meta_file if meta_file is not None else configs_dir() / "metadata.json"], "meta_file")
    default_file = os.path.join(ckpt_dir, f"model{FORMATS[kind]}")
    filepath = os.path.abspath(os.fspath(filepath if filepath is not None else default_file))
    if kind == "torchscript" and not os.path.splitext(filepath)[1]:
        filepath += ".ts"  # as monai's save_net_with_metadata names it
    with open(meta, encoding="utf-8") as f:
        described = network_data_format(json.load(f), record)

    verify: dict[str, Any] = {"verify": True, "rtol": _RTOL, "atol": _ATOL}
    if kind == "onnx":
        verify["use_ort"] = importlib.util.find_spec("onnxruntime") is not None
        converter_kwargs = {**ONNX_CONVERTER_KWARGS, **verify}
        if opset_version is not None:
            converter_kwargs["opset_version"] = int(opset_version)
        exporter, how = onnx_export, "ONNX (dynamic batch)"
    else:
        converter_kwargs = dict(verify)
        exporter, how = ckpt_export, f"TorchScript ({'traced' if trace else 'scripted'})"
    check_weights(ckpt_file, configs, ckpt_dir, overrides)
    _say(
        f"exporting {ckpt_file} to {how}: input {shape} from {record_file} "
        f"({record.get('num_classes', '?')} classes) ..."
    )
    started = time.monotonic()
    # MONAI logs its whole argument list and the temporary file's name; this function says what it does
    monai_log = logging.getLogger("monai.bundle.scripts")
    level = monai_log.level
    monai_log.setLevel(logging.WARNING)
    try:
        with atomic_path(filepath) as tmp:
            exporter(
                "network_def",
                filepath=tmp,
                ckpt_file=ckpt_file,
                meta_file=meta,
                config_file=configs,
                use_trace=trace,
                input_shape=shape,
                converter_kwargs=converter_kwargs,
                bundle_root=bundle_root(),
                ckpt_dir=ckpt_dir,
                **overrides,
                **{"_meta_#network_data_format": described["network_data_format"]},
            )
    finally:
        monai_log.setLevel(level)
    checked = "ONNX Runtime" if verify.get("use_ort") else "ONNX reference" if kind == "onnx" else "TorchScript"
    _say(
        f"wrote {filepath} in {time.monotonic() - started:.1f} s "
        f"({checked} output equal to the eager network within {_ATOL:g} at {shape})"
    )
    return filepath


def main(argv: Sequence[str] | None = None) -> None:
    import fire

    from custom.utils.cli import command as cli_command
    from custom.utils.cli import without_stray_arguments
    from custom.utils.runtime import setup

    setup()
    # the options are export's parameters; it prints the written path; bad input is one line
    errors = (FileNotFoundError, ModelConfigError, IsADirectoryError, WeightsError)
    command = exit_on_error(errors)(without_stray_arguments(cli_command(export, print)))
    fire.Fire(command, command=list(argv) if argv is not None else None, name="custom.deploy.export")


if __name__ == "__main__":
    main()
