"""Where the project's files are, found once from the imported ``custom`` package.

In the repository ``custom/`` sits beside ``bundle/``; in a bundle copied by
:mod:`custom.deploy.package` it sits inside the bundle folder (``NAME/custom``). Every config
(``bundle_root`` in ``common.yaml``), tool and the MONAI Label app asks :func:`bundle_root`,
so none holds a path of its own.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["source_root", "bundle_root", "configs_dir", "DEFAULT_METHOD", "ABLATED_METHOD"]

# The method a training uses unless told otherwise: the README's commands, the packaged bundle's
# train.json (custom.deploy.package) and the MONAI Label app train bundle/configs/methods/<this>.yaml.
# The paper's two-network system made robust (methods/ours.yaml); methods/paper.yaml is the
# published recipe, methods/bcp.yaml the fast single-network method.
DEFAULT_METHOD = "ours"
# The method that bundle/configs/ablations/ vary: each ablation is an override merged over it.
ABLATED_METHOD = "ours"


def source_root() -> Path:
    """The folder holding the imported ``custom`` package: the repository, or a packaged bundle."""
    return Path(__file__).resolve().parents[2]


def bundle_root() -> str:
    """The bundle folder: the repository's ``bundle/``, or the packaged bundle itself, recognised
    by its ``configs/metadata.json``."""
    here = source_root()
    for candidate in (here, here / "bundle"):
        if (candidate / "configs" / "metadata.json").is_file():
            return str(candidate)
    raise FileNotFoundError(
        f"no bundle folder (configs/metadata.json) at {here} or {here / 'bundle'}: pass --bundle_root DIR"
    )


def configs_dir() -> Path:
    """The bundle's ``configs/`` folder (:func:`bundle_root`), where every tool finds the configs."""
    return Path(bundle_root()) / "configs"
