"""Package the bundle as a self-contained model-zoo folder (and zip) for sharing.

    python -m custom.deploy.package --out DIR [--name fetal_us_ssl] [--weights bundle/models/model.pt] \
        [--zip true] [--method bcp]

writes ``DIR/NAME/`` in the layout of a model-zoo bundle::

    configs/        one self-contained config per workflow (inference.json, train.json, evaluate.json:
                    the repository's config lists merged by MONAI's ConfigParser; train.json trains
                    ``--method``, default the bundle's default method), metadata.json,
                    meta_schema.json, logging.conf; none of the split YAML pieces (the model zoo's
                    verification takes configs/inference.yaml before configs/inference.json)
    models/         model.pt (required unless --allow-missing-weights), its model_config.json, and
                    model.ts / model.onnx when they sit beside the weights
    large_files.yml the weights as model-zoo bundles list them (path, url, sha256): ``--weights_url``
                    is where model.pt will be downloadable once the folder is shared without it
    docs/           bundle/docs (README.md in the model zoo's section layout), plus PACKAGE.md
                    (how to run this copy)
    LICENSE
    custom/         the components the configs import (``$import custom``), at the bundle root: its
                    Python files and the MONAI Label app's configs/, nothing else (see SHIPPED_CODE)

and ``DIR/NAME.zip`` (the folder, under its own name) with ``--zip true``.

Why ``custom/`` sits at the bundle root: MONAI bundles ship their code as a top-level package of
the bundle folder (the model zoo's ``scripts/``), imported from the configs with the bundle
folder on ``sys.path``. MONAI Label adds the bundle folder to ``sys.path``; for ``python -m
monai.bundle run`` run from the bundle folder (``python -m`` puts the working directory on
``sys.path``) or put it on ``PYTHONPATH``. A package named ``custom`` there makes the configs'
``$import custom`` resolve unchanged.

The configs are merged, not rewritten: ``bundle_root`` is ``$custom.utils.paths.bundle_root()``,
the bundle folder of the imported ``custom`` package, found at run time (the repository's
``bundle/`` or the copy's own folder), so no path is written into the copy. ``--bundle_root DIR``
on the command line (as MONAI Label and the model zoo's verification do) still overrides it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from custom.utils.atomic import atomic_write, atomic_write_text
from custom.utils.cli import OptionError, parse_bool
from custom.utils.digest import file_sha256
from custom.utils.outputs import OutputFolderError, check_output_folder, os_error_line
from custom.utils.paths import DEFAULT_METHOD, bundle_root, source_root

__all__ = ["package", "PackagingError", "main"]

logger = logging.getLogger(__name__)

DEFAULT_NAME = "fetal_us_ssl"
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", ".pytest_cache", ".DS_Store")
# research tools no shipped config uses (custom/tools: the comparison, the benchmarks, the GPU
# check) stay in the repository
RESEARCH_TOOLS = ("tools",)
# custom/ is shipped by allow-list: its Python files and the MONAI Label app's configs/*.yaml. What
# else lies in the checkout stays out, whatever it is, because it is the user's, not the bundle's:
# what `monailabel start_server` writes into the app folder (logs/app.log with absolute paths and
# image and annotator ids, model/, bin/), caches (__pycache__, .pytest_cache) and any other file.
SHIPPED_CODE = ("*.py", "monailabel_app/configs/*.yaml")
# folders never shipped: the research tools, caches, and what a MONAI Label session writes
SKIPPED_DIRS = ("__pycache__", ".pytest_cache", *RESEARCH_TOOLS, "logs", "model", "bin")
CODE_SOURCE = None  # custom/ to ship; None: the imported package's (custom.utils.paths.source_root())


def shipped_code(src: Path) -> list[Path]:
    """The files of ``src`` (a ``custom/`` folder) that a package ships, relative to it."""
    out = []
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if not path.is_file() or any(part in SKIPPED_DIRS or part.startswith(".") for part in rel.parts[:-1]):
            continue
        if any(rel.match(pattern) for pattern in SHIPPED_CODE) and not rel.name.startswith("."):
            out.append(rel)
    return out


def _copy_code(src: Path, dst: Path) -> None:
    for rel in shipped_code(src):
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, dst / rel)


# the line of common.yaml that is rewritten, and the import the rewritten value needs


class PackagingError(RuntimeError):
    """The bundle cannot be packaged as asked (missing weights, existing output, ...)."""


# one merged, self-contained config per workflow, as model-zoo bundles ship them
# (`configs/inference.json` runs alone); MONAI has no includes, so the lists are merged here
def workflow_configs(method: str = DEFAULT_METHOD) -> dict[str, tuple[str, ...]]:
    """The config files merged into each workflow's json: training trains ``method``."""
    return {
        "train": ("common.yaml", "train.yaml", f"methods/{method}.yaml"),
        "evaluate": ("common.yaml", "train.yaml", "evaluate.yaml"),
        "inference": ("common.yaml", "inference.yaml"),
        # self-supervised pretraining of the Swin-Unet on a dataset's frames (run id `pretraining`)
        "pretrain": ("common.yaml", "pretrain.yaml"),
    }


# the other files of configs/ that a packaged bundle ships (the split YAML pieces stay in the repository)
SHIPPED_CONFIGS = ("metadata.json", "meta_schema.json", "logging.conf")
LARGE_FILES = "large_files.yml"


def _verify_weights(weights_path: Path, source: Path) -> None:
    """Before anything is written: the weights load safely (``weights_only``: a pickled payload is
    refused), hold finite values only, and, when the record beside them is theirs, fit strictly the
    network it describes (the check export and inference make). Weights without their own record
    are still read safely and checked for finite values."""
    from custom.deploy.export import WeightsError, check_weights
    from custom.deploy.model_config import ModelConfigError, belongs_to, read
    from custom.training.checkpoint import checked_state_dict

    recorded = weights_path.parent / "model_config.json"
    try:
        if recorded.is_file() and belongs_to(read(recorded), weights_path) is None:
            overrides = {"bundle_root": str(source), "model_record_file": str(recorded)}
            configs = [str(source / "configs" / "common.yaml")]
            check_weights(str(weights_path), configs, str(weights_path.parent), overrides)
        else:
            checked_state_dict(str(weights_path))
    except (WeightsError, ModelConfigError, ValueError, FileNotFoundError) as e:
        raise PackagingError(f"not packaging {weights_path}: {' '.join(str(e).split())}") from None


def _write_workflow_configs(source: Path, configs: Path, method: str = DEFAULT_METHOD) -> None:
    """Write ``configs/<workflow>.json``: the workflow's config list of ``source`` merged by MONAI's
    own ``ConfigParser`` (left to right, ``a#b`` keys as nested overrides), unresolved."""
    from monai.bundle import ConfigParser

    for workflow, files in workflow_configs(method).items():
        parser = ConfigParser()
        parser.read_config([str(source / f) for f in files])
        merged = {k: v for k, v in parser.get().items() if k != "_meta_"}  # --meta_file fills it at run time
        atomic_write_text(configs / f"{workflow}.json", compact_json(merged) + "\n")


def compact_json(value: Any, width: int = 100, indent: int = 0) -> str:
    """JSON as a model-zoo config is written by hand: a list or mapping that fits on one line of
    ``width`` characters stays on it (``"keys": ["image", "label"]``), larger ones open one item per
    line. ``json.dumps(indent=...)`` puts every list item on its own line (a 2-item list takes 4);
    the parsed result is the same."""
    import json

    flat = json.dumps(value)
    if not isinstance(value, (dict, list)) or len(flat) + indent <= width:
        return flat
    pad = " " * (indent + 1)
    if isinstance(value, dict):
        items = [f"{pad}{json.dumps(k)}: {compact_json(v, width, indent + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    items = [pad + compact_json(v, width, indent + 1) for v in value]
    return "[\n" + ",\n".join(items) + "\n" + " " * indent + "]"


def _write_large_files(target: Path, weights_url: str) -> None:
    """``large_files.yml`` as model-zoo bundles write it: each shipped weight file's path, the URL
    it will be downloaded from (``weights_url``/NAME; empty until published) and its sha256 (the
    zoo's verification checks the hash of a file that is present and downloads only a missing one)."""
    entries = []
    for name in ("model.pt", "model.ts"):
        file = target / "models" / name
        if file.is_file():
            file_url = f"{weights_url.rstrip('/')}/{name}" if weights_url else ""
            digest = file_sha256(file)
            entries.append(
                f'- path: "models/{name}"\n  url: "{file_url}"\n  hash_val: "{digest}"\n  hash_type: "sha256"\n'
            )
    if entries:
        atomic_write_text(target / LARGE_FILES, "large_files:\n" + "".join(entries))


def _usage(name: str) -> str:
    return f"""# {name}: running this packaged bundle

This folder is a self-contained MONAI bundle in the model zoo's layout: `configs/`,
`models/model.pt` (the UNeXt weights) with `models/model_config.json` (what they were trained
with), `large_files.yml`, `docs/`, `LICENSE` and the Python components the configs import, in
`custom/`. Each workflow has one self-contained config: `configs/inference.json`,
`configs/evaluate.json`, `configs/train.json` and `configs/pretrain.json` (the Swin-Unet's
self-supervised pretraining on a dataset's frames, for `--transformer_pretrained_path`). The configs import `custom`, so the bundle
folder must be on `sys.path`: run from this folder (`python -m` puts it there) or put it on
`PYTHONPATH` (MONAI Label adds it itself). `bundle_root` is found at run time from the
imported `custom` package; `--bundle_root` sets it explicitly.

`custom/` holds the bundle's Python files and the MONAI Label app's `configs/`, nothing else of the
checkout it was packaged from: not what a MONAI Label session writes into the app folder
(`logs/app.log`, with absolute paths and image and annotator ids; `model/`; `bin/`), nor caches,
nor the research tools (comparison, benchmarks), which no config imports.

```bash
python -m monai.bundle run --config_file configs/inference.json --meta_file configs/metadata.json --input_path IMAGES --infer_output_dir OUT
python -m monai.bundle run evaluating --config_file configs/evaluate.json --meta_file configs/metadata.json --dataset_dir DATA
python -m monai.bundle run training --config_file configs/train.json --meta_file configs/metadata.json --dataset_dir DATA
python -m monai.bundle run pretraining --config_file configs/pretrain.json --meta_file configs/metadata.json --dataset_dir DATA --ckpt_dir PRETRAINED
# the model zoo's checks (metadata, network input/output, TorchScript export)
python -m monai.bundle verify_metadata --meta_file configs/metadata.json --filepath configs/meta_schema.json
python -m monai.bundle verify_net_in_out network_def --meta_file configs/metadata.json --config_file configs/inference.json --bundle_root .
python -m monai.bundle ckpt_export network_def --filepath models/verify_model.ts --ckpt_file models/model.pt --meta_file configs/metadata.json --config_file configs/inference.json --bundle_root .
```

From anywhere (`B` is this folder):

```bash
B=/path/to/{name}
PYTHONPATH=$B python -m monai.bundle run --config_file $B/configs/inference.json \\
    --meta_file $B/configs/metadata.json --bundle_root $B --input_path IMAGES --infer_output_dir OUT
# TorchScript and ONNX (dynamic batch) exports of the UNeXt, at the input shape recorded in
# models/model_config.json, each checked against the network before it is written
PYTHONPATH=$B python -m custom.deploy.export torchscript --ckpt_dir $B/models \\
    --config_file $B/configs/inference.json --meta_file $B/configs/metadata.json
```

The image size, classes and network widths the weights were trained with come from
`models/model_config.json`; an explicit, different value is refused. `large_files.yml` lists
the weights with their sha256, as model-zoo bundles do (the URL is the one given to
`--weights_url` when packaging; the hashes are those of the files as packaged: package again
after exporting anew). Configs execute Python expressions: run bundles from trusted sources only.
"""  # noqa: E501


def _copy_review_thresholds(weights_path: Path, models: Path) -> None:
    """The review thresholds set for these weights (``review.json`` beside them) travel with them;
    thresholds of other weights stay behind, with a warning (custom/evaluation/review.py)."""
    from custom.evaluation.review import REVIEW_FILE, read_review_file

    if not (weights_path.parent / REVIEW_FILE).is_file():
        return
    try:
        read_review_file(str(weights_path))
    except ValueError as e:
        logger.warning("review thresholds left out of the package: %s", e)
        return
    shutil.copy2(weights_path.parent / REVIEW_FILE, models / REVIEW_FILE)


def package(
    out: str,
    name: str = DEFAULT_NAME,
    weights: str | None = None,
    zip: Any = False,  # noqa: A002 - the CLI flag is --zip
    allow_missing_weights: Any = False,
    overwrite: Any = False,
    bundle_dir: str | None = None,
    with_exports: Any = True,
    weights_url: str | None = None,
    method: str = DEFAULT_METHOD,
) -> Path:
    """Write the self-contained bundle ``out/name/`` (and ``out/name.zip`` when ``zip``).

    Args:
        out: folder to write into (created).
        name: the bundle's folder name.
        weights: the UNeXt state dict to ship as ``models/model.pt`` (default: the source
            bundle's ``models/model.pt``).
        zip: also write ``out/name.zip``.
        allow_missing_weights: package without ``models/model.pt`` instead of refusing.
        overwrite: replace an existing ``out/name`` (and zip).
        bundle_dir: the source bundle folder (default: this repository's ``bundle/``, or the
            packaged bundle this module belongs to).
        with_exports: also copy ``model.ts`` / ``model.onnx`` found beside the weights (unless
            they are older than the weights).
        weights_url: the URL of the folder from which ``model.pt`` (and ``model.ts``) will be
            downloadable, written into ``large_files.yml`` (empty until given).
        method: the method ``configs/train.json`` trains (``bundle/configs/methods/<method>.yaml``).

    Returns:
        the bundle folder written.
    """
    zip_, allow_missing, overwrite_, with_exports_ = (
        parse_bool(v, n)
        for v, n in (
            (zip, "zip"),
            (allow_missing_weights, "allow-missing-weights"),
            (overwrite, "overwrite"),
            (with_exports, "with-exports"),
        )
    )
    if weights_url and not re.fullmatch(r"https?://[^\s\"'\\]+", str(weights_url)):
        raise PackagingError(f"--weights_url must be an http(s) URL without spaces or quotes, got {weights_url!r}")
    if not name or os.sep in name or name in {".", ".."} or (os.altsep and os.altsep in name):
        raise PackagingError(f"--name must be a plain folder name, got {name!r}")
    source = Path(bundle_dir).resolve() if bundle_dir else Path(bundle_root())
    if not (source / "configs" / "common.yaml").is_file():
        raise PackagingError(f"{source}: not a bundle folder (no configs/common.yaml)")
    if not (source / "configs" / "methods" / f"{method}.yaml").is_file():
        known = sorted(p.stem for p in (source / "configs" / "methods").glob("*.yaml"))
        raise PackagingError(f"--method {method!r}: no configs/methods/{method}.yaml in {source}; known: {known}")
    weights_path = Path(weights).resolve() if weights else source / "models" / "model.pt"
    if not weights_path.is_file() and not allow_missing:
        raise PackagingError(
            f"weights not found: {weights_path}. Train first (writes bundle/models/model.pt), pass "
            "--weights PATH, or --allow-missing-weights true to package configs and code only"
        )
    if weights_path.is_file():
        _verify_weights(weights_path, source)

    out_dir = Path(out).resolve()
    target = out_dir / name
    zip_path = out_dir / f"{name}.zip"
    if target.exists():
        if not overwrite_:
            raise PackagingError(f"{target} exists; pass --overwrite true to replace it")
        if any(target.iterdir()) and not (target / "configs" / "metadata.json").is_file():
            raise PackagingError(f"{target} exists and is not a packaged bundle; refusing to delete it")
        shutil.rmtree(target)
    if zip_ and zip_path.exists():
        if not overwrite_:
            raise PackagingError(f"{zip_path} exists; pass --overwrite true to replace it")
        zip_path.unlink()
    check_output_folder(out_dir, "--out")  # a read-only or full output is refused before any work
    created = [p for p in (out_dir, *out_dir.parents) if not p.exists()]  # what to remove again on failure
    out_dir.mkdir(parents=True, exist_ok=True)

    try:
        (target / "configs").mkdir(parents=True)
        for config in SHIPPED_CONFIGS:
            shutil.copy2(source / "configs" / config, target / "configs" / config)
        _write_workflow_configs(source / "configs", target / "configs", str(method))
        _copy_code(CODE_SOURCE or source_root() / "custom", target / "custom")

        models = target / "models"
        models.mkdir()
        if weights_path.is_file():
            shutil.copy2(weights_path, models / "model.pt")
            # what the weights were trained with travels with them (custom/deploy/model_config.py)
            recorded = weights_path.parent / "model_config.json"
            if recorded.is_file():
                from custom.deploy.model_config import belongs_to, read, write_network_data_format

                why = belongs_to(read(recorded), weights_path)
                if why is not None:  # a record of other weights would be shipped as theirs
                    raise PackagingError(f"{weights_path}: {why}; retrain, or package weights with their own record")

                shutil.copy2(recorded, models / "model_config.json")
                write_network_data_format(target / "configs" / "metadata.json", recorded)
                _copy_review_thresholds(weights_path, models)
            else:  # inference from the package will refuse them unless the image size is given explicitly
                logger.warning(
                    "%s has no model_config.json beside it: the package's inference and evaluation will need "
                    "--image_size explicitly (package weights with the record their training wrote)",
                    weights_path,
                )
            if with_exports_:
                for export in ("model.ts", "model.onnx"):
                    found = weights_path.parent / export
                    if not found.is_file():
                        continue
                    if found.stat().st_mtime < weights_path.stat().st_mtime:
                        logger.warning("not shipping %s: older than the weights %s (export again)", found, weights_path)
                        continue
                    shutil.copy2(found, models / export)
        else:
            logger.warning("packaging without weights: %s is missing", weights_path)
        _write_large_files(target, weights_url or "")

        docs = target / "docs"
        if (source / "docs").is_dir():
            shutil.copytree(source / "docs", docs, ignore=_IGNORE)
        docs.mkdir(exist_ok=True)
        usage = _usage(name)
        atomic_write_text(docs / "PACKAGE.md", usage)
        if not (docs / "README.md").exists():
            atomic_write_text(docs / "README.md", usage)
        if (source / "LICENSE").is_file():
            shutil.copy2(source / "LICENSE", target / "LICENSE")

        _check_no_absolute_paths(target / "configs", [source_root(), source])
        if zip_:
            # make_archive adds ".zip" to the temporary file's name without it: it writes that very file
            atomic_write(
                zip_path, lambda tmp: shutil.make_archive(tmp[: -len(".zip")], "zip", root_dir=out_dir, base_dir=name)
            )
    except BaseException:  # nothing half-packaged stays, nor the folders this call created
        shutil.rmtree(target, ignore_errors=True)
        for folder in created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only while empty
        raise
    return target


def _check_no_absolute_paths(configs: Path, roots: list[Path]) -> None:
    patterns = {
        str(r): re.compile(r"(?<![\w.-])" + re.escape(str(r)) + r"(?![\w.-])") for r in roots if str(r) not in {"", "/"}
    }
    for file in configs.rglob("*"):
        if file.is_file():
            text = file.read_text(encoding="utf-8", errors="replace")
            found = [n for n, pattern in patterns.items() if pattern.search(text)]
            if found:
                raise PackagingError(f"{file}: contains the absolute path {found[0]}; configs must stay relocatable")


@functools.wraps(package)
def _command(*args: Any, **kwargs: Any) -> None:
    """:func:`package` for the command line (its parameters are the options): prints where the
    bundle (and zip) went; input errors and refused writes exit with status 2 and one line."""
    try:
        target = package(*args, **kwargs)
    except (PackagingError, OptionError, OutputFolderError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except OSError as error:  # the system refused a write during the work (full disk, read-only)
        line = os_error_line(error)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        sys.exit(2)
    print(f"bundle written to {target}")
    if parse_bool(kwargs.get("zip", False), "zip"):
        print(f"zip written to {target.parent / (target.name + '.zip')}")


def main() -> None:
    import fire

    from custom.utils.runtime import setup

    setup()
    from custom.utils.cli import exit_on_error, without_stray_arguments

    fire.Fire(exit_on_error(())(without_stray_arguments(_command)))  # a value no option took: one line


if __name__ == "__main__":
    main()
