"""``custom.tools.active_learning``: the simulated annotator, equal budgets, no frame picked twice,
the app's divergence score, resuming with the same picks, one-line errors."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_overrides

import custom.evaluation.disagreement as disagreement
import custom.tools.active_learning as al
import custom.tools.compare as compare
from custom.training.losses import InformationDivergenceLoss

APP_DIVERGENCE = compare.REPO / "custom" / "monailabel_app" / "lib" / "activelearning" / "divergence.py"


def scale_file(tmp_path: Path) -> str:
    """The tests' tiny bundle scale (64 px, a narrow Swin-Unet) as an override file."""
    skip = ("bundle_root", "dataset_dir", "ckpt_dir", "output_dir", "max_iterations")
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in tiny_overrides(tmp_path, "unused").items() if k not in skip}))
    return str(path)


def pool_of(n: int, groups: int = 0) -> list[dict]:
    return [
        {"image": f"/x/images/{i:03d}.png", "label": f"/x/labels/{i:03d}.png", "name": f"{i:03d}",
         "group": f"g{i // groups}" if groups else f"{i:03d}"}
        for i in range(n)
    ]


# ------------------------------------------------------------------------------ annotator


def test_the_annotator_reveals_exactly_the_chosen_frames_and_each_once():
    annotator = al.SimulatedAnnotator(pool_of(10))
    hidden = annotator.hidden(annotator.ids)
    assert len(hidden) == 10 and all("label" not in e for e in hidden)  # the learner sees no mask
    revealed = annotator.reveal(["007", "002"])
    assert [e["name"] for e in revealed] == ["007", "002"]
    assert [e["label"] for e in revealed] == ["/x/labels/007.png", "/x/labels/002.png"]
    assert [e["name"] for e in annotator.labelled()] == ["007", "002"]
    assert "007" not in annotator.unlabelled_ids() and len(annotator.unlabelled_ids()) == 8
    with pytest.raises(ValueError, match="already annotated"):
        annotator.reveal(["002"])
    with pytest.raises(ValueError, match="outside the pool"):
        annotator.reveal(["999"])
    with pytest.raises(ValueError, match="twice"):
        annotator.reveal(["003", "003"])
    assert [e["name"] for e in annotator.labelled()] == ["007", "002"]  # refused requests reveal nothing


def test_a_pool_without_masks_is_refused_by_name():
    pool = pool_of(3)
    del pool[1]["label"]
    with pytest.raises(ValueError, match="pool frame '001'.*hide-unlabeled-masks"):
        al.SimulatedAnnotator(pool)


# ------------------------------------------------------------------------ budget and picks


def test_the_budget_is_the_seed_set_plus_one_batch_per_round():
    assert al.budget(656, 0.02, 0.02, 2) == [13, 26, 39]
    assert al.budget(100, 0.01, 0.015, 3) == [1, 3, 5, 7]  # halves round up
    with pytest.raises(ValueError, match="--seed-fraction 1.5"):
        al.budget(100, 1.5, 0.1, 1)
    with pytest.raises(ValueError, match="leave some unlabelled"):
        al.budget(10, 0.5, 0.5, 1)


def test_seed_labels_are_drawn_as_prepare_draws_labelled_frames():
    frames = al.draw_seed_labels(pool_of(100, groups=50), 4, seed=0, draw="frames")
    assert len(frames) == 4 and len({int(f) // 50 for f in frames}) == 2  # spread over both video blocks
    assert frames == al.draw_seed_labels(pool_of(100, groups=50), 4, seed=0, draw="frames")  # deterministic
    subjects = al.draw_seed_labels(pool_of(20, groups=2), 4, seed=3, draw="groups")
    assert len(subjects) == 4 and len({int(f) // 2 for f in subjects}) == 2  # two whole subjects


def test_rankings_pick_distinct_unlabelled_frames_and_the_spread_strategy_covers_clusters():
    ids = [f"{i:02d}" for i in range(20)]
    # frames 00-09 form one cluster with the highest divergence, 10-19 another
    scores = {i: (2.0 if int(i) < 10 else 1.0) + int(i) * 1e-3 for i in ids}
    features = {i: np.array([0.0 if int(i) < 10 else 10.0, int(i) % 3 * 0.01]) for i in ids}
    rng = np.random.default_rng(0)
    top = al.select("divergence", ids, 4, rng, scores)
    assert top == ["09", "08", "07", "06"]  # the ranking takes one cluster only
    spread = al.select("divergence_spread", ids, 2, rng, scores, features, seed=0)
    assert spread == ["09", "19"]  # the most divergent frame of each cluster
    for strategy in al.STRATEGIES:
        picked = al.select(strategy, ids[5:], 6, np.random.default_rng(1), scores, features, seed=1)
        assert len(picked) == len(set(picked)) == 6 and set(picked) <= set(ids[5:])
    with pytest.raises(ValueError, match="cannot pick 30 of 20"):
        al.select("random", ids, 30, rng)
    clusters = {i: "a" if int(i) < 10 else "b" for i in ids}
    picks = {"picks": {"divergence": {"0": {"1": top}}, "divergence_spread": {"0": {"1": spread, "2": ["00", "01"]}}}}
    assert al.groups_spanned(picks, clusters) == {"divergence": 1.0, "divergence_spread": 1.5}


def test_kmeans_separates_obvious_clusters():
    x = np.concatenate([np.random.default_rng(0).normal(c, 0.1, size=(10, 2)) for c in (0.0, 5.0, 10.0)])
    labels = al.kmeans(x, 3, seed=0)
    assert [len(set(labels[i : i + 10])) for i in (0, 10, 20)] == [1, 1, 1] and len(set(labels)) == 3


# ------------------------------------------------------------------------- the app's score


class Constant(torch.nn.Module):
    """Logits that depend on the image mean, so that every image gets another score."""

    def __init__(self, weights):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(weights).view(1, -1, 1, 1))
        self.stage5 = torch.nn.Identity()

    def forward(self, x):
        return self.stage5(x.mean(dim=1, keepdim=True)) * self.w


@pytest.fixture()
def app_divergence(monkeypatch):
    """The app's strategy module, imported with just enough of ``monailabel`` stubbed (an optional
    extra, absent here); the app's ``lib`` modules imported with the stub are dropped afterwards."""
    import importlib

    strategy = types.ModuleType("monailabel.interfaces.tasks.strategy")
    strategy.Strategy = type("Strategy", (), {"__init__": lambda self, description="": None})
    datastore = types.ModuleType("monailabel.interfaces.datastore")
    datastore.Datastore = object
    for name in ("monailabel", "monailabel.interfaces", "monailabel.interfaces.tasks"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, strategy.__name__, strategy)
    monkeypatch.setitem(sys.modules, datastore.__name__, datastore)
    monkeypatch.syspath_prepend(str(APP_DIVERGENCE.parents[2]))
    monkeypatch.setenv("PYTHONPATH", "")  # the app puts the repository there: undone after the test
    before = {m: sys.modules[m] for m in sys.modules if m == "lib" or m.startswith("lib.")}
    for name in before:
        del sys.modules[name]
    try:
        yield importlib.import_module("lib.activelearning.divergence")
    finally:
        for name in [m for m in sys.modules if m == "lib" or m.startswith("lib.")]:
            del sys.modules[name]
        sys.modules.update(before)


def test_the_app_scores_with_the_very_function_the_study_uses(monkeypatch, app_divergence):
    # in the source: the app imports the core function and its scorer calls it
    tree = ast.parse(APP_DIVERGENCE.read_text())
    imports = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == disagreement.__name__]
    assert any(a.name == "divergence_scores" for n in imports for a in n.names)
    # imported (monailabel stubbed): the same object, and the scorer's numbers are that function's
    app = app_divergence
    assert app.divergence_scores is disagreement.divergence_scores
    cnn, transformer = Constant([1.0, -1.0, 0.5]).eval(), Constant([-0.5, 2.0, 0.0]).eval()
    images = {f"/img{i}": torch.full((1, 8, 8), float(i) / 3) for i in range(5)}
    scorer = app.DivergenceScorer.__new__(app.DivergenceScorer)
    scorer._cnn, scorer._transformer, scorer.batch_size, scorer.device = cnn, transformer, 2, torch.device("cpu")
    scorer._preprocessing = lambda d: {"image": images[d["image"]]}
    got = scorer._compute(list(images))
    x = torch.stack(list(images.values()))
    expected = InformationDivergenceLoss(reduction="image")(torch.softmax(cnn(x), 1), torch.softmax(transformer(x), 1))
    assert got == pytest.approx(expected.tolist()) and len(set(got)) == 5
    # the study ranks by the same function (a spy on the core module sees the study's call)
    calls = []
    monkeypatch.setattr(disagreement, "divergence_scores", lambda *a, **k: calls.append(a) or [0.0] * len(a[2]))
    monkeypatch.setattr(al, "_networks", lambda spec, both: (cnn, transformer, scorer._preprocessing))
    scored = al.score_pool(None, [{"image": p, "name": p[1:]} for p in images], "divergence")
    assert len(calls) == 1 and calls[0][0] is cnn and calls[0][1] is transformer and set(scored["scores"]) == {
        "img0", "img1", "img2", "img3", "img4"}


# ---------------------------------------------------------------------------- end to end


@pytest.fixture()
def pool_set(tmp_path, demo_dataset) -> str:
    """The demo set (16 pool frames) with a test list of two of its validation images."""
    data = tmp_path / "data"
    shutil.copytree(demo_dataset, data)
    doc = json.loads((data / "datalist.json").read_text())
    doc["test"], doc["validation"] = doc["validation"][:2], doc["validation"][2:]
    (data / "datalist.json").write_text(json.dumps(doc))
    return str(data)


def test_a_tiny_study_gives_every_strategy_the_same_budget_and_resumes_with_its_picks(
    tmp_path, pool_set, monkeypatch
):
    kwargs = dict(
        out=str(tmp_path / "study"), strategies="random,entropy,divergence,divergence_spread", seeds="0", rounds=2,
        seed_fraction=0.13, batch_fraction=0.13, override=scale_file(tmp_path), max_iterations=2,
        launcher="inprocess", progress=False, device="cpu",
    )
    result = al.run_study(pool_set, **kwargs)
    out = Path(result["out"])
    picks = json.loads((out / "picks.json").read_text())
    seed_ids = picks["seed_labels"]["0"]
    assert len(seed_ids) == 2
    for strategy in al.STRATEGIES:
        rounds = picks["picks"][strategy]["0"]
        assert [len(rounds[r]) for r in ("1", "2")] == [2, 2]  # the same batch for every strategy
        chosen = seed_ids + rounds["1"] + rounds["2"]
        assert len(set(chosen)) == len(chosen) == 6  # never picked twice
        for r, n in (("1", 4), ("2", 6)):
            doc = json.loads((out / strategy / "seed0" / f"round{r}" / "data" / "datalist.json").read_text())
            labelled = [Path(e["image"]).stem for e in doc["training"]]
            # the learner gets masks of exactly the revealed frames; the rest of the pool stays image-only
            assert sorted(labelled) == sorted(chosen[:n]) and all(e.get("label") for e in doc["training"])
            assert len(doc["unlabeled"]) == 16 - n and not any("label" in e for e in doc["unlabeled"])
    rows = result["rows"]
    assert {(r["strategy"], r["round"], r["n_labelled"]) for r in rows} == {
        (s, r, n) for s in al.STRATEGIES for r, n in ((0, 2), (1, 4), (2, 6))
    }
    for name in ("results.csv", "results.md", "plot.png"):
        assert (out / name).stat().st_size > 0

    # a rerun trains nothing and scores nothing: the picks of finished rounds are reused
    def refuse(*a, **k):
        raise AssertionError("a finished round ran again")

    monkeypatch.setattr(compare, "train_run", refuse)
    monkeypatch.setattr(al, "score_pool", refuse)
    again = al.run_study(pool_set, **kwargs)
    assert json.loads((out / "picks.json").read_text()) == picks and len(again["rows"]) == len(rows)
    # another budget in the same folder is refused, not mixed in
    with pytest.raises(ValueError, match="other settings"):
        al.run_study(pool_set, **{**kwargs, "batch_fraction": 0.07})


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--strategies", "random,bald"], "--strategies"),
        (["--progress", "maybe"], "--progress"),
        (["--rounds", "two"], "--rounds"),
        (["--seed-fraction", "0.9", "--batch-fraction", "0.5"], "leave some unlabelled"),
        (["--seeds", "0", "1"], "unexpected argument(s) 1"),  # fire would hand the 1 to --rounds
    ],
)
def test_bad_options_are_one_line(args, needle, tmp_path, pool_set):
    done = subprocess.run(
        [sys.executable, "-m", "custom.tools.active_learning", "--dataset-dir", pool_set, *args,
         "--out", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=compare.REPO, timeout=300,
    )
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in done.stderr
