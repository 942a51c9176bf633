"""The MONAI Label app (custom/monailabel_app) against a real `monailabel start_server`.

Needs the optional extra (requirements-monailabel.txt, its own virtual environment): the main
suite skips this module when `monailabel` is not importable. CI runs it in `.venv-monailabel`:

    .venv-monailabel/bin/python -m pytest -q tests/test_monailabel_server.py

A studies folder of 6 real HC18 frames (PSFHS when HC18 is absent), a seeded random-weights
UNeXt (`model.pt`) and a training state with a `transformer` entry in a temporary models folder
(never the repository's bundle/models), networks at 64 px with a narrow Swin-Unet, `labeled_bs: 2`.
The tests run in file order on one server: inference and the strategy on the initial weights,
then training with no label (refused), one label (trains with a labelled batch of 1), and two
labels plus a broken one (left out), each checked through `train_stats` in `GET /info/`.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("monailabel", reason="MONAI Label is an optional extra (requirements-monailabel.txt)")
requests = pytest.importorskip("requests")

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
APP = REPO / "custom" / "monailabel_app"
MODEL = "fetal_us_ssl"
N_IMAGES = 6
STARTUP_TIMEOUT = 240
REQUEST_TIMEOUT = 180
TRAIN_TIMEOUT = 480

TINY_YAML = """\
image_size: [64, 64]
transformer_def#embed_dim: 12
transformer_def#num_heads: [1, 1, 2, 2]
transformer_def#window_size: 4
transformer_def#drop_path_rate: 0.0
batch_size: 4
labeled_bs: 2
ict_start: 0
log_every: 1
"""


def _dataset() -> tuple[Path, int]:
    """(folder with images/ and labels/, num_classes): HC18 (non-square frames) or PSFHS."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data {SHARED_DATA} is absent (it ships beside the repository as ../shared/data)")
    for name, classes in (("hc18", 2), ("psfhs", 3)):
        folder = SHARED_DATA / name
        if (folder / "images").is_dir() and (folder / "labels").is_dir():
            return folder, classes
    pytest.skip(f"neither {SHARED_DATA}/hc18 nor {SHARED_DATA}/psfhs holds images/ and labels/")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _parser(config_files, num_classes, models_dir):
    from monai.bundle import ConfigParser

    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    parser = ConfigParser()
    parser.read_config([str(f) for f in config_files])
    parser["num_classes"] = num_classes
    parser["ckpt_dir"] = str(models_dir)
    parser["bundle_root"] = str(REPO / "bundle")
    return parser


def _tail(log: Path, n: int = 6000) -> str:
    try:
        return log.read_text(errors="replace")[-n:]
    except OSError:
        return "(no server log)"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    source, num_classes = _dataset()
    tmp = tmp_path_factory.mktemp("monailabel")
    studies, models_dir = tmp / "studies", tmp / "models"
    studies.mkdir()
    names = sorted(p.name for p in (source / "images").glob("*.png"))
    if len(names) < N_IMAGES:
        pytest.skip(f"{source}/images holds fewer than {N_IMAGES} PNG frames")
    step = len(names) // N_IMAGES
    picked = [names[i * step] for i in range(N_IMAGES)]  # spread out: different subjects / video blocks
    files = {}
    for i, name in enumerate(picked):
        stem = name[: -len(".png")]
        if i == N_IMAGES - 1:  # one JPEG frame: MONAI Label lists it, the mask still comes back as PNG
            from PIL import Image

            Image.open(source / "images" / name).save(studies / f"{stem}.jpg", quality=95)
            files[stem] = studies / f"{stem}.jpg"
        else:
            shutil.copy2(source / "images" / name, studies / name)
            files[stem] = studies / name
    tiny = tmp / "tiny.yaml"
    tiny.write_text(TINY_YAML)
    configs = [
        REPO / "bundle" / "configs" / "common.yaml",
        REPO / "bundle" / "configs" / "inference.yaml",
        APP / "configs" / "monailabel.yaml",
        tiny,
    ]

    # seeded random weights at the tiny scale: model.pt (UNeXt) and a training state with the Transformer
    parser = _parser(configs, num_classes, models_dir)
    torch.manual_seed(0)
    cnn = parser.get_parsed_content("network_def", instantiate=True)
    transformer = parser.get_parsed_content("transformer_def", instantiate=True)
    (models_dir / "train_state").mkdir(parents=True)
    torch.save(cnn.state_dict(), models_dir / "model.pt")
    torch.save({"transformer": transformer.state_dict()}, models_dir / "train_state" / "train_state.pt")

    # MONAI Label logs to <app>/logs/app.log unless given a logging config: keep it in tmp
    import monailabel

    log_config = tmp / "logging.json"
    template = (Path(monailabel.__file__).parent / "logging.json").read_text()
    log_config.write_text(template.replace("${LOGDIR}", str(tmp)).replace("${LOGFILE}", str(tmp / "app.log")))
    port = _free_port()
    exe = Path(sys.executable).parent / "monailabel"
    launcher = [str(exe)] if exe.exists() else [sys.executable, "-m", "monailabel.main"]
    cmd = [
        *launcher,
        "start_server",
        "--app",
        str(APP),
        "--studies",
        str(studies),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log_config",
        str(log_config),
        "--conf",
        "models",
        MODEL,
        "--conf",
        "models_dir",
        str(models_dir),
        "--conf",
        "config_overrides",
        str(tiny),
        "--conf",
        "num_classes",
        str(num_classes),
        "--conf",
        "preload",
        "false",
        "--conf",
        "strategy_device",
        "cpu",
    ]
    # the `monailabel` launcher runs `$MONAILABEL_PYEXE -m monailabel.main`: this interpreter
    env = {
        **os.environ,
        "MONAILABEL_PYEXE": sys.executable,
        "CUDA_VISIBLE_DEVICES": "",
        "PYTHONPATH": str(REPO),
        "MONAI_LABEL_AUTO_UPDATE_SCORING": "false",
        "MONAI_LABEL_DATASTORE_AUTO_RELOAD": "false",
        "OMP_NUM_THREADS": "2",
    }
    env.pop("FETAL_US_MODELS_DIR", None)
    log = tmp / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=str(REPO), env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"monailabel start_server exited with {proc.returncode}:\n{_tail(log)}")
            try:
                if requests.get(f"{url}/info/", timeout=10).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not answering /info/ after {STARTUP_TIMEOUT} s:\n{_tail(log)}")
            time.sleep(2)
        yield {
            "url": url,
            "studies": studies,
            "models_dir": models_dir,
            "configs": configs,
            "source": source,
            "num_classes": num_classes,
            "images": list(files),
            "files": files,
            "log": log,
        }
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=20)


def _check(r, server):
    assert r.status_code == 200, f"{r.request.method} {r.url}: {r.status_code} {r.text[:2000]}\n{_tail(server['log'])}"
    return r


def _divergences(server) -> dict[str, float]:
    """Expected per-image scores, computed here with both networks directly."""
    from monai.transforms import Compose

    import custom.training.checkpoint
    from custom.training.losses import InformationDivergenceLoss

    parser = _parser(server["configs"], server["num_classes"], server["models_dir"])
    cnn = parser.get_parsed_content("network_def", instantiate=True)
    transformer = parser.get_parsed_content("transformer_def", instantiate=True)
    custom.training.checkpoint.load_network_weights(cnn, str(server["models_dir"] / "model.pt"))
    custom.training.checkpoint.load_network_weights(
        transformer, str(server["models_dir"] / "train_state" / "train_state.pt"), key="transformer"
    )
    cnn.eval(), transformer.eval()
    pre = Compose(parser.get_parsed_content("deterministic_transforms", instantiate=True))
    divergence = InformationDivergenceLoss(reduction="image")
    out = {}
    with torch.no_grad():
        for image in server["images"]:
            x = pre({"image": str(server["files"][image])})["image"].as_tensor()[None]
            out[image] = float(divergence(torch.softmax(cnn(x), 1), torch.softmax(transformer(x), 1))[0])
    return out


def test_info_lists_model_trainer_and_strategy(server):
    info = _check(requests.get(f"{server['url']}/info/", timeout=REQUEST_TIMEOUT), server).json()
    assert MODEL in info["models"], info["models"]
    assert MODEL in info["trainers"], info.get("trainers")
    assert {"divergence", "random", "first"} <= set(info["strategies"]), info["strategies"]
    model = info["models"][MODEL]
    assert model["dimension"] == 2 and model["type"] == "segmentation"
    assert len(model["labels"]) == server["num_classes"] - 1, model["labels"]
    assert info["train_stats"] == {MODEL: {}}, info["train_stats"]  # nothing trained by this app yet


@pytest.mark.parametrize("which", [0, -1], ids=["png", "jpeg"])
def test_infer_returns_a_mask_of_the_image_size(server, which):
    from monai.transforms import Compose, Resize
    from PIL import Image

    import custom.training.checkpoint

    image = server["images"][which]
    r = _check(
        requests.post(
            f"{server['url']}/infer/{MODEL}", params={"image": image, "output": "image"}, timeout=REQUEST_TIMEOUT
        ),
        server,
    )
    assert r.content[:8] == b"\x89PNG\r\n\x1a\n", "the mask is not a PNG"
    mask = np.asarray(Image.open(io.BytesIO(r.content)))
    original = np.asarray(Image.open(server["files"][image]))
    assert mask.shape == original.shape[:2], (mask.shape, original.shape)
    assert set(np.unique(mask)) <= set(range(server["num_classes"])), np.unique(mask)

    # the same prediction computed here: UNeXt at 64 px, argmax, nearest back to the original size
    parser = _parser(server["configs"], server["num_classes"], server["models_dir"])
    cnn = parser.get_parsed_content("network_def", instantiate=True)
    custom.training.checkpoint.load_network_weights(cnn, str(server["models_dir"] / "model.pt")).eval()
    pre = Compose(parser.get_parsed_content("deterministic_transforms", instantiate=True))
    x = pre({"image": str(server["files"][image])})["image"].as_tensor()[None]
    with torch.no_grad():
        label = cnn(x).argmax(1)  # 1 x W x H (MONAI's PNG reader puts width first)
    expected = Resize(original.shape[:2][::-1], mode="nearest")(label.float())[0].numpy().T.astype(np.uint8)
    agreement = float((expected == mask).mean())
    assert agreement > 0.99, f"served mask agrees with the direct prediction on {agreement:.3f} of the pixels"
    if len(np.unique(expected)) > 1:  # a non-uniform mask also pins the orientation
        assert float((expected[::-1] == mask).mean()) < agreement or np.array_equal(expected, expected[::-1])


def test_twenty_concurrent_inference_requests_all_answer_correctly(server):
    """Under load: 20 simultaneous /infer requests on loopback, each answered with the mask its
    image gets from a single request."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    images = [server["images"][i % len(server["images"])] for i in range(20)]

    def infer(image):
        r = requests.post(
            f"{server['url']}/infer/{MODEL}", params={"image": image, "output": "image"}, timeout=REQUEST_TIMEOUT
        )
        return image, r.status_code, r.content

    # each image's mask from a single request, alone: what every concurrent answer must equal
    alone = {}
    for image in dict.fromkeys(images):
        _, status, content = infer(image)
        assert status == 200, (image, status, content[:300], _tail(server["log"]))
        alone[image] = np.asarray(Image.open(io.BytesIO(content)))
        assert alone[image].shape == np.asarray(Image.open(server["files"][image])).shape[:2], image
    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(infer, images))
    for image, status, content in results:
        assert status == 200, (image, status, content[:300], _tail(server["log"]))
        mask = np.asarray(Image.open(io.BytesIO(content)))
        # no mix-up between simultaneous requests: the very mask this image gets alone
        assert np.array_equal(mask, alone[image]), (image, float((mask == alone[image]).mean()))
    # the server is still alive and answering afterwards (no crash, no out-of-memory kill)
    _check(requests.get(f"{server['url']}/info/", timeout=REQUEST_TIMEOUT), server)


def test_a_broken_image_gets_an_error_naming_it_and_the_server_keeps_serving(server):
    truncated = server["files"][server["images"][0]].read_bytes()[:200]
    r = requests.put(
        f"{server['url']}/datastore/image",
        params={"image": "broken_frame"},
        files={"file": ("broken_frame.png", truncated, "image/png")},
        timeout=REQUEST_TIMEOUT,
    )
    assert r.status_code == 200, r.text[:500]
    r = requests.post(
        f"{server['url']}/infer/{MODEL}", params={"image": "broken_frame", "output": "image"}, timeout=REQUEST_TIMEOUT
    )
    assert r.status_code == 422, (r.status_code, r.text[:1000])
    detail = r.json()["detail"]
    assert detail.startswith("image 'broken_frame' (") and "broken_frame.png): " in detail, detail
    assert len(detail.split("): ", 1)[1]) > 3, detail  # and the problem
    _check(requests.get(f"{server['url']}/info/", timeout=REQUEST_TIMEOUT), server)
    # the strategy never proposes it
    nxt = _check(requests.post(f"{server['url']}/activelearning/divergence", json={}, timeout=REQUEST_TIMEOUT), server)
    assert nxt.json().get("id") != "broken_frame"
    # remove it again (the training test adds its own broken, labelled frame)
    _check(
        requests.delete(f"{server['url']}/datastore/", params={"id": "broken_frame"}, timeout=REQUEST_TIMEOUT), server
    )


def test_an_unknown_or_missing_image_gets_a_422_naming_its_id(server):
    url = server["url"]
    r = requests.post(f"{url}/infer/{MODEL}", params={"image": "no_such_frame", "output": "image"}, timeout=60)
    assert r.status_code == 422, (r.status_code, r.text[:1000])
    assert r.json()["detail"].startswith("image 'no_such_frame': no such image in the datastore"), r.text
    # an image the datastore lists but whose file has gone
    good = server["files"][server["images"][0]].read_bytes()
    _check(
        requests.put(
            f"{url}/datastore/image",
            params={"image": "vanishing_frame"},
            files={"file": ("vanishing_frame.png", good, "image/png")},
            timeout=REQUEST_TIMEOUT,
        ),
        server,
    )
    (vanished,) = server["studies"].glob("vanishing_frame.*")
    vanished.unlink()
    r = requests.post(f"{url}/infer/{MODEL}", params={"image": "vanishing_frame", "output": "image"}, timeout=60)
    assert r.status_code == 422, (r.status_code, r.text[:1000])
    detail = r.json()["detail"]
    assert detail.startswith("image 'vanishing_frame' (") and detail.endswith("): file not found"), detail
    _check(requests.delete(f"{url}/datastore/", params={"id": "vanishing_frame"}, timeout=REQUEST_TIMEOUT), server)
    _check(requests.get(f"{url}/info/", timeout=REQUEST_TIMEOUT), server)


def test_divergence_strategy_returns_the_most_disagreeing_image(server):
    expected = _divergences(server)
    best = max(expected, key=expected.get)
    t0 = time.monotonic()
    first = _check(
        requests.post(f"{server['url']}/activelearning/divergence", json={}, timeout=REQUEST_TIMEOUT), server
    ).json()
    t_first = time.monotonic() - t0
    assert first["id"] == best, (first, expected)
    assert first["disagreement"] == pytest.approx(expected[best], rel=1e-4, abs=1e-6)
    t0 = time.monotonic()
    again = _check(
        requests.post(f"{server['url']}/activelearning/divergence", json={}, timeout=REQUEST_TIMEOUT), server
    ).json()
    assert again["id"] == best and again["disagreement"] == first["disagreement"]
    print(f"divergence strategy: first call {t_first:.2f} s, cached call {time.monotonic() - t0:.2f} s")


def _put_label(server, image, label_file=None):
    label_file = label_file or server["source"] / "labels" / f"{image}.png"
    with open(label_file, "rb") as f:
        _check(
            requests.put(
                f"{server['url']}/datastore/label",
                params={"image": image, "tag": "final"},
                files={"label": (f"{image}.png", f, "image/png")},
                data={"params": "{}"},
                timeout=REQUEST_TIMEOUT,
            ),
            server,
        )


def _train(server, **params) -> dict:
    """POST /train/<model> and wait for the task to end; returns its status (with `details`)."""
    url = server["url"]
    params = {"max_epochs": 1, "val_split": 0.0, "device": "cpu", "multi_gpu": False, "pretrained": True, **params}
    _check(requests.post(f"{url}/train/{MODEL}", json=params, timeout=REQUEST_TIMEOUT), server)
    deadline = time.monotonic() + TRAIN_TIMEOUT
    status = {}
    while time.monotonic() < deadline:
        status = _check(requests.get(f"{url}/train/", timeout=REQUEST_TIMEOUT), server).json()
        if status.get("status") in ("DONE", "ERROR", "STOPPED"):  # else SUBMITTED, QUEUED, RUNNING
            return status
        time.sleep(3)
    pytest.fail(f"training still running after {TRAIN_TIMEOUT} s: {json.dumps(status)[:3000]}\n{_tail(server['log'])}")


def _train_stats(server) -> dict:
    info = _check(requests.get(f"{server['url']}/info/", timeout=REQUEST_TIMEOUT), server).json()
    return info["train_stats"][MODEL]


def _check_stats(stats: dict, epochs: int, labelled: int) -> None:
    """A finished training's stats: when, how long, how much, how good, on what."""
    assert stats["status"] == "done", stats
    assert stats["epoch"] == stats["max_epochs"] == epochs, stats
    # iterations per epoch: one pass over the labelled loader (batches of min(labeled_bs, labelled))
    assert stats["iterations"] == epochs * stats["epoch_length"] and stats["epoch_length"] >= 1, stats
    assert stats["labelled_images"] == labelled and stats["labeled_batch_size"] == min(2, labelled), stats
    assert stats["key_metric_name"] == "val_mean_dice", stats
    assert isinstance(stats["best_metric"], float) and 0.0 <= stats["best_metric"] <= 1.0, stats
    assert stats["best_metric"] == stats["eval"]["best_metric"], stats
    assert 1 <= stats["best_metric_epoch"] <= epochs, stats
    assert stats["eval"]["metrics"]["val_mean_dice"] is not None, stats
    assert abs(time.time() - stats["start_ts"]) < TRAIN_TIMEOUT + 60, stats
    assert time.strptime(stats["last_training"][:19], "%Y-%m-%dT%H:%M:%S"), stats
    assert re.fullmatch(r"\d+:\d\d:\d\d", stats["total_time"]), stats
    assert stats["method"] == "ours", stats


def test_training_without_a_label_fails_with_one_message(server):
    model_pt = server["models_dir"] / "model.pt"
    before = model_pt.stat().st_mtime_ns
    status = _train(server)
    details = list(status.get("details") or [])
    assert status["status"] == "ERROR", f"{json.dumps(status)[:3000]}\n{_tail(server['log'])}"
    message = "training needs at least 1 labelled image; the datastore has 0 labelled and"
    assert any(message in line for line in details), details
    assert not any("Traceback" in line for line in details), details
    assert model_pt.stat().st_mtime_ns == before
    assert _train_stats(server) == {}


def test_training_on_a_single_label_trains_with_a_smaller_labelled_batch(server):
    """One label and labeled_bs 2: trains with batches of 1, writes model.pt, validates on the
    one training image (there is no other labelled one) and says so."""
    image = server["images"][0]
    _put_label(server, image)
    model_pt = server["models_dir"] / "model.pt"
    before = model_pt.stat().st_mtime_ns
    status = _train(server, max_epochs=2, val_split=0.2)
    assert status.get("status") == "DONE", f"{json.dumps(status)[:3000]}\n{_tail(server['log'])}"
    assert model_pt.stat().st_mtime_ns > before, "training did not write model.pt"
    stats = _train_stats(server)
    _check_stats(stats, epochs=2, labelled=1)
    assert stats["iterations"] == 2, stats
    assert stats["validation_images"] == 0 and stats["validated_on"].startswith("training images"), stats
    log = Path(server["log"]).read_text(errors="replace")
    assert "labeled_bs is 2 but only 1 labelled image(s) are listed: batches of 1" in log, _tail(server["log"])
    assert "no validation image (val_split 0.2, 1 labelled): validating on the 1 training image(s)" in log
    server["single_label_stats"] = stats


def test_short_training_run_completes(server):
    source, url = server["source"], server["url"]
    labelled = server["images"][:2]
    for image in labelled:
        assert server["files"][image].suffix == ".png"
        _put_label(server, image)
    # a truncated frame with a valid mask: training leaves it out (logged by name) and trains on the rest
    truncated = server["files"][labelled[0]].read_bytes()[:200]
    _check(
        requests.put(
            f"{url}/datastore/image",
            params={"image": "broken_labelled"},
            files={"file": ("broken_labelled.png", truncated, "image/png")},
            timeout=REQUEST_TIMEOUT,
        ),
        server,
    )
    _put_label(server, "broken_labelled", source / "labels" / f"{labelled[0]}.png")
    model_pt = server["models_dir"] / "model.pt"
    state_pt = server["models_dir"] / "train_state" / "train_state.pt"
    before = (model_pt.stat().st_mtime_ns, state_pt.stat().st_mtime_ns)
    status = _train(server)
    assert status.get("status") == "DONE", f"{json.dumps(status)[:3000]}\n{_tail(server['log'])}"
    assert state_pt.stat().st_mtime_ns > before[1], "training did not write the training state"
    assert model_pt.stat().st_mtime_ns > before[0], "training did not write model.pt"
    # the stats are this training's, not the previous one's
    stats = _train_stats(server)
    _check_stats(stats, epochs=1, labelled=2)
    assert stats["validated_on"].startswith("training images"), stats  # val_split 0
    previous = server.get("single_label_stats")
    if previous:
        assert stats["start_ts"] >= previous["start_ts"] and stats["last_training"] >= previous["last_training"]
    assert {x["image"] for x in stats["left_out"]} == {"broken_labelled"}, stats
    assert all(x["problem"] for x in stats["left_out"]), stats
    log = Path(server["log"]).read_text(errors="replace")
    assert re.search(r"training leaves out image 'broken_labelled' \(\S*broken_labelled\S*\): ", log), _tail(
        server["log"]
    )
    # the strategy now skips the labelled images and scores with the new weights
    expected = {k: v for k, v in _divergences(server).items() if k not in labelled}
    nxt = _check(requests.post(f"{url}/activelearning/divergence", json={}, timeout=REQUEST_TIMEOUT), server).json()
    assert nxt["id"] == max(expected, key=expected.get), (nxt, expected)
    assert nxt["disagreement"] == pytest.approx(expected[nxt["id"]], rel=1e-4, abs=1e-6)


def test_app_without_weights_registers_the_tasks_and_says_what_is_missing(tmp_path):
    """In process, no server: a fresh models folder (nothing trained yet) still gets the infer
    and train tasks (MONAI Label trains the first model); inference and the divergence strategy
    answer with errors that name the missing file."""
    from monailabel.interfaces.exception import MONAILabelException
    from monailabel.utils.others.class_utils import get_class_of_subclass_from_file

    source, num_classes = _dataset()
    studies = tmp_path / "studies"
    studies.mkdir()
    name = sorted(p.name for p in (source / "images").glob("*.png"))[0]
    shutil.copy2(source / "images" / name, studies / name)
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text(TINY_YAML)
    conf = {
        "models": MODEL,
        "models_dir": str(tmp_path / "models"),
        "config_overrides": str(tiny),
        "num_classes": str(num_classes),
        "preload": "false",
    }
    app_class = get_class_of_subclass_from_file("main", str(APP / "main.py"), "MONAILabelApp")
    app = app_class(str(APP), str(studies), conf)
    info = app.info()
    assert MODEL in info["models"] and MODEL in info["trainers"] and "divergence" in info["strategies"]
    with pytest.raises(MONAILabelException, match="no trained model"):
        app.infer({"model": MODEL, "image": name[: -len(".png")], "device": "cpu"})
    with pytest.raises(FileNotFoundError, match="model.pt"):
        app.next_sample({"strategy": "divergence"})
    with pytest.raises(ValueError, match="unknown model"):
        app_class(str(APP), str(studies), {**conf, "models": "spleen_ct_segmentation"})
