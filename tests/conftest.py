"""Shared fixtures: repository paths, the real data folder, tiny bundle overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundle" / "configs"
SHARED_DATA = REPO.parent / "shared" / "data"


def train_config_files(*extra: str) -> list[str]:
    """common.yaml, train.yaml, the method (the first ``methods/...`` of ``extra``, else ours.yaml:
    the paper's method, which exercises both networks and every term kind) and the other ``extra``
    files, as the README's training commands list them."""
    method = [e for e in extra if e.startswith("methods/")][:1] or ["methods/ours.yaml"]
    rest = [e for e in extra if e not in method]
    return [str(CONFIGS / f) for f in ("common.yaml", "train.yaml", *method, *rest)]


def tiny_overrides(tmp_path: Path, dataset_dir: str, **more) -> dict:
    """Overrides that make the bundle train in seconds: 64 px, a narrow Swin-Unet, 2 iterations."""
    out = {
        "bundle_root": str(REPO / "bundle"),
        "dataset_dir": dataset_dir,
        "ckpt_dir": str(tmp_path / "models"),
        "output_dir": str(tmp_path / "eval"),
        "image_size": [64, 64],
        "batch_size": 4,
        "labeled_bs": 2,
        "max_iterations": 2,
        "ict_start": 0,
        "train#epoch_length": 2,
        "transformer_def#embed_dim": 12,
        "transformer_def#num_heads": [1, 1, 2, 2],
        "transformer_def#window_size": 4,
        "log_every": 1,
    }
    out.update(more)
    return out


@pytest.fixture(scope="session")
def demo_dataset(tmp_path_factory) -> str:
    """A small synthetic set (8 labelled, 8 unlabelled, 4 validation images of 64 px)."""
    from custom.data.demo import ensure_demo_dataset

    root = tmp_path_factory.mktemp("demo")
    ensure_demo_dataset(str(root / "data"), n_labeled=8, n_unlabeled=8, n_validation=4, size=64, seed=1)
    return str(root / "data")


def require_shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real data {path} is absent (it ships beside the repository as ../shared/data)")
    return path
