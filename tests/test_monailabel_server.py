"""The MONAI Label app (custom/monailabel_app) against a real `monailabel start_server`.

Needs the optional extra (requirements-monailabel.txt, its own virtual environment): the main
suite skips this module when `monailabel` is not importable. CI runs it in `.venv-monailabel`:

    .venv-monailabel/bin/python -m pytest -q tests/test_monailabel_server.py

A studies folder of 6 real HC18 frames (PSFHS when HC18 is absent), a seeded random-weights
UNeXt (`model.pt`) and a training state with a `transformer` entry in a temporary models folder
(never the repository's bundle/models), networks at 64 px with a narrow Swin-Unet, `labeled_bs: 2`.
The tests run in file order on one server: inference and the strategy on the initial weights,
every client mistake a one-line 4xx (unknown model, strategy or image, bad labels: not stored),
then training with no label (refused), one label (trains with a labelled batch of 1), a refused
scale, and two labels plus a frame broken after labelling (left out), each checked through
`train_stats` in `GET /info/`; then the per-client reservations of the strategies. Further
servers: the README's start commands and curl lines as written (before any model: 409s; after a
demo-like model: the train request at the served scale; the second command: one error line, or
serving cpu_small-scale weights), and a start without --host (loopback only).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
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
# the tests' own strategy requests: one client, whose reservations never hide a frame from itself
TESTER = {"client_id": "tester"}
RESERVE_S = 10

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

    cmd = [
        "start_server",
        "--app",
        str(APP),
        "--studies",
        str(studies),
        "--host",
        "127.0.0.1",
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
        "--conf",
        "reserve_s",
        str(RESERVE_S),
        # the app's default method (the two networks): the divergence strategy needs the Swin-Unet it trains
    ]
    with _running_server(tmp, cmd) as (url, log):
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
            "tmp": tmp,
        }


def _launcher() -> list[str]:
    exe = Path(sys.executable).parent / "monailabel"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "monailabel.main"]


def _server_env(**more) -> dict:
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
    env.update(more)
    return env


def _log_config(tmp: Path) -> Path:
    """MONAI Label logs to <app>/logs/app.log unless given a logging config: keep it in tmp."""
    import monailabel

    log_config = tmp / "logging.json"
    template = (Path(monailabel.__file__).parent / "logging.json").read_text()
    log_config.write_text(template.replace("${LOGDIR}", str(tmp)).replace("${LOGFILE}", str(tmp / "app.log")))
    return log_config


@contextlib.contextmanager
def _running_server(tmp: Path, args: list[str], env: dict | None = None, cwd: Path = REPO):
    """``monailabel ARGS --port P --log_config ...`` started on loopback; yields (url, log file)
    once ``/info/`` answers, and stops the server afterwards."""
    port = _free_port()
    cmd = [*_launcher(), *args, "--port", str(port), "--log_config", str(_log_config(tmp))]
    log = tmp / f"server_{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=str(cwd), env=env or _server_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
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
        yield url, log
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
    nxt = _check(
        requests.post(f"{server['url']}/activelearning/divergence", json=TESTER, timeout=REQUEST_TIMEOUT), server
    )
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


def _detail(r) -> str:
    """The one-line ``detail`` of a 4xx answer."""
    detail = r.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and "Traceback" not in detail, detail
    return detail


def _datastore_completed(server) -> int:
    return _check(requests.get(f"{server['url']}/info/", timeout=REQUEST_TIMEOUT), server).json()["datastore"][
        "completed"
    ]


def test_unknown_model_strategy_and_image_get_a_4xx_naming_them(server):
    url, image = server["url"], server["images"][0]
    r = requests.post(f"{url}/infer/no_such_model", params={"image": image, "output": "image"}, timeout=60)
    assert r.status_code == 404, (r.status_code, r.text[:1000])
    assert _detail(r).startswith("model 'no_such_model': no such model to run inference with") and MODEL in _detail(r)
    r = requests.post(f"{url}/train/no_such_model", json={"max_epochs": 1}, timeout=60)
    assert r.status_code == 404, (r.status_code, r.text[:1000])
    assert _detail(r).startswith("model 'no_such_model': no such model to train") and MODEL in _detail(r)
    assert requests.get(f"{url}/train/", timeout=60).status_code == 404  # no training task was started
    r = requests.post(f"{url}/activelearning/no_such_strategy", json=TESTER, timeout=60)
    assert r.status_code == 404, (r.status_code, r.text[:1000])
    assert _detail(r).startswith("strategy 'no_such_strategy': no such strategy") and "divergence" in _detail(r)
    r = requests.post(f"{url}/activelearning/divergence", json={**TESTER, "max_samples": "many"}, timeout=60)
    assert r.status_code == 422 and _detail(r).startswith("strategy 'divergence': max_samples 'many'"), r.text
    # MONAI Label's own check (a 500 there): inference with neither an image id nor a file
    r = requests.post(f"{url}/infer/{MODEL}", params={"output": "image"}, timeout=60)
    assert r.status_code == 422 and _detail(r).startswith("inference needs an image: ?image=ID"), r.text
    label = (server["source"] / "labels" / f"{image}.png").read_bytes()
    r = requests.put(
        f"{url}/datastore/label",
        params={"image": "no_such_frame", "tag": "final"},
        files={"label": ("no_such_frame.png", label, "image/png")},
        timeout=60,
    )
    assert r.status_code == 404, (r.status_code, r.text[:1000])
    assert _detail(r).startswith("image 'no_such_frame': no such image in the datastore, label not saved")
    assert _datastore_completed(server) == 0
    _check(requests.get(f"{url}/info/", timeout=REQUEST_TIMEOUT), server)


def _png(array) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(array).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_bad_labels_are_refused_naming_the_problem_and_not_stored(server):
    from PIL import Image

    url, image, n = server["url"], server["images"][1], server["num_classes"]
    good = np.asarray(Image.open(server["source"] / "labels" / f"{image}.png"))
    h, w = good.shape[:2]
    cases = {
        "truncated PNG": (_png(good)[:200], "cannot read"),
        "not an image": (b"this is not an image\n" * 20, "cannot read"),
        "another size": (_png(np.zeros((100, 120))), f"mask of 120x100 pixels for a frame of {w}x{h}"),
        "a class the model lacks": (_png(np.full((h, w), n)), f"label values [{n}] outside the classes 0..{n - 1}"),
    }
    if n != 2:  # 0/255 is read as 0/1 only for a 2-class model
        cases["0/255"] = (_png((good > 0) * 255), "label values [255] outside the classes")
    stored = server["studies"] / "labels" / "final"
    for what, (content, expected) in cases.items():
        r = requests.put(
            f"{url}/datastore/label",
            params={"image": image, "tag": "final"},
            files={"label": (f"{image}.png", content, "image/png")},
            timeout=REQUEST_TIMEOUT,
        )
        assert r.status_code == 422, (what, r.status_code, r.text[:1000])
        detail = _detail(r)
        assert detail.startswith(f"label for image {image!r}: ") and expected in detail, (what, detail)
        assert detail.endswith("label not saved, the image stays unlabelled"), (what, detail)
        assert "/tmp" not in detail, detail  # not the server's temporary copy of the upload
        assert not list(stored.glob(f"{image}.*")), what
        assert _datastore_completed(server) == 0, what
    if n == 2:
        # a 0/255 mask of the frame's size: stored as 0/1, counted, then removed again
        r = requests.put(
            f"{url}/datastore/label",
            params={"image": image, "tag": "final"},
            files={"label": (f"{image}.png", _png((good > 0) * 255), "image/png")},
            timeout=REQUEST_TIMEOUT,
        )
        assert r.status_code == 200, r.text[:1000]
        saved = np.asarray(Image.open(stored / f"{image}.png"))
        assert saved.dtype == np.uint8 and np.array_equal(saved, (good > 0).astype(np.uint8))
        assert _datastore_completed(server) == 1
        _check(requests.delete(f"{url}/datastore/label", params={"id": image, "tag": "final"}, timeout=60), server)
        assert _datastore_completed(server) == 0
    # other raw values: mapped by the upload's params, as `custom.data prepare --label-map` maps them
    raw = (good > 0) * 7

    def put(params):
        return requests.put(
            f"{url}/datastore/label",
            params={"image": image, "tag": "final"},
            data={"params": json.dumps(params)},
            files={"label": (f"{image}.png", _png(raw), "image/png")},
            timeout=REQUEST_TIMEOUT,
        )

    r = put({"label_map": "7:9:1"})
    assert r.status_code == 422 and "--label-map '7:9:1': expected RAW:CLASS pairs" in _detail(r), r.text
    r = put({"label_map": "7:1"})
    assert r.status_code == 200, r.text[:1000]
    assert np.array_equal(np.asarray(Image.open(stored / f"{image}.png")), (good > 0).astype(np.uint8))
    _check(requests.delete(f"{url}/datastore/label", params={"id": image, "tag": "final"}, timeout=60), server)
    assert _datastore_completed(server) == 0
    _check(requests.get(f"{url}/info/", timeout=REQUEST_TIMEOUT), server)


def test_divergence_strategy_returns_the_most_disagreeing_image(server):
    expected = _divergences(server)
    best = max(expected, key=expected.get)
    t0 = time.monotonic()
    first = _check(
        requests.post(f"{server['url']}/activelearning/divergence", json=TESTER, timeout=REQUEST_TIMEOUT), server
    ).json()
    t_first = time.monotonic() - t0
    assert first["id"] == best, (first, expected)
    assert first["disagreement"] == pytest.approx(expected[best], rel=1e-4, abs=1e-6)
    t0 = time.monotonic()
    again = _check(
        requests.post(f"{server['url']}/activelearning/divergence", json=TESTER, timeout=REQUEST_TIMEOUT), server
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
    stats = _train_stats(server)  # refused, and says so (not an earlier run's `done`)
    assert stats["status"] == "refused" and stats["error"].startswith(message), stats


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
    # the first training (no model_config.json yet) says the size it trains at (issue 33)
    assert "training at image_size [64, 64] (no model_config.json yet)" in log, _tail(server["log"])
    server["single_label_stats"] = stats


def test_a_refused_training_is_visible_in_train_stats(server):
    """The served model (64 px, recorded in model_config.json by the previous training): a request
    for another image size is refused unless it says overwrite_model; a bad size is one line."""
    model_pt = server["models_dir"] / "model.pt"
    before = model_pt.stat().st_mtime_ns
    previous = _train_stats(server)
    assert previous["status"] == "done", previous
    for params, expected in (
        (
            {"image_size": [128, 128]},
            'image_size [128, 128] but {} was trained at image_size [64, 64]: add "overwrite_model"',
        ),
        ({"image_size": "abc"}, "train request: image_size 'abc': expected a side"),
        ({"overwrite_model": "perhaps"}, "train request: "),
    ):
        status = _train(server, **params)
        details = list(status.get("details") or [])
        assert status["status"] == "ERROR", f"{json.dumps(status)[:3000]}\n{_tail(server['log'])}"
        expected = expected.format(model_pt)
        assert any(expected in line for line in details), (params, details)
        assert not any("Traceback" in line for line in details), details
        stats = _train_stats(server)
        assert stats["status"] == "refused" and expected in stats["error"], (params, stats)
        assert stats["start_ts"] >= previous["start_ts"], stats
        assert model_pt.stat().st_mtime_ns == before


def test_short_training_run_completes(server):
    source, url = server["source"], server["url"]
    labelled = server["images"][:2]
    for image in labelled:
        assert server["files"][image].suffix == ".png"
        _put_label(server, image)
    # a frame labelled while it was readable, truncated afterwards: training leaves it out
    # (logged by name) and trains on the rest (a label for an unreadable frame is refused: 422)
    frame = server["files"][labelled[0]].read_bytes()
    _check(
        requests.put(
            f"{url}/datastore/image",
            params={"image": "broken_labelled"},
            files={"file": ("broken_labelled.png", frame, "image/png")},
            timeout=REQUEST_TIMEOUT,
        ),
        server,
    )
    _put_label(server, "broken_labelled", source / "labels" / f"{labelled[0]}.png")
    (stored,) = server["studies"].glob("broken_labelled.*")
    stored.write_bytes(frame[:200])
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
    nxt = _check(requests.post(f"{url}/activelearning/divergence", json=TESTER, timeout=REQUEST_TIMEOUT), server).json()
    assert nxt["id"] == max(expected, key=expected.get), (nxt, expected)
    assert nxt["disagreement"] == pytest.approx(expected[nxt["id"]], rel=1e-4, abs=1e-6)


def test_a_training_stopped_with_delete_shows_as_stopped(server):
    """Issue 33: ``DELETE /train/`` stops a running training; ``train_stats`` in ``GET /info/`` then
    says ``stopped`` (with where it stopped), not ``running`` for ever."""
    url = server["url"]
    params = {"max_epochs": 10000, "val_split": 0.0, "device": "cpu", "multi_gpu": False}
    _check(requests.post(f"{url}/train/{MODEL}", json=params, timeout=REQUEST_TIMEOUT), server)
    deadline = time.monotonic() + TRAIN_TIMEOUT
    while time.monotonic() < deadline and _train_stats(server).get("status") != "running":
        time.sleep(1)  # until the first epoch has written its stats
    assert _train_stats(server).get("status") == "running", _tail(server["log"])
    _check(requests.delete(f"{url}/train/", timeout=REQUEST_TIMEOUT), server)
    while time.monotonic() < deadline:
        if requests.get(f"{url}/train/", timeout=REQUEST_TIMEOUT).json().get("status") not in ("RUNNING", "SUBMITTED"):
            break
        time.sleep(1)
    while time.monotonic() < deadline and _train_stats(server).get("status") == "running":
        time.sleep(1)  # the killed process may take a moment to end (under load): running until then
    stats = _train_stats(server)
    assert stats["status"] == "stopped" and stats["stopped_after"].startswith("iteration "), stats
    assert "pid" not in stats, stats


def test_strategies_never_hand_one_frame_to_two_clients_and_say_so(server):
    """Two annotators asking for the next sample get different frames, each reserved for its
    client (the answer says until when); a client asking again keeps its own; `random` never fails
    on a small pool; when every unlabelled frame is reserved by others the answer is a 409."""
    url = server["url"]
    time.sleep(RESERVE_S + 1)  # the earlier tests' own reservations have expired
    a = _check(requests.post(f"{url}/activelearning/first", json={"client_id": "annotator-a"}, timeout=60), server)
    b = _check(requests.post(f"{url}/activelearning/first", json={"client_id": "annotator-b"}, timeout=60), server)
    a, b = a.json(), b.json()
    assert a["id"] and b["id"] and a["id"] != b["id"], (a, b)
    assert a["reserved_for"] == "annotator-a" and b["reserved_for"] == "annotator-b", (a, b)
    assert a["reserve_s"] == RESERVE_S and 0 < a["reserved_until"] - time.time() <= RESERVE_S, a
    again = _check(requests.post(f"{url}/activelearning/first", json={"client_id": "annotator-a"}, timeout=60), server)
    assert again.json()["id"] == a["id"]
    # divergence skips the frames reserved by others too
    d = _check(requests.post(f"{url}/activelearning/divergence", json={"client_id": "annotator-c"}, timeout=60), server)
    assert d.json()["id"] not in {a["id"], b["id"]}, d.json()
    # 24 quick `random` calls over the small pool (MONAI Label's own failed 5 times in 24)
    seen = set()
    for i in range(24):
        r = requests.post(f"{url}/activelearning/random", json={"client_id": "quick"}, timeout=60)
        assert r.status_code == 200 and r.json().get("id"), (i, r.status_code, r.text[:500])
        assert r.json()["id"] not in {a["id"], b["id"], d.json()["id"]}, r.json()
        seen.add(r.json()["id"])
    # every unlabelled frame is now reserved by some client: a new client is told so
    info = _check(requests.get(f"{url}/datastore/", params={"output": "stats"}, timeout=60), server).json()
    free = info["total"] - info["completed"] - len({a["id"], b["id"], d.json()["id"]} | seen)
    if free == 0:
        r = requests.post(f"{url}/activelearning/first", json={"client_id": "annotator-z"}, timeout=60)
        assert r.status_code == 409, (r.status_code, r.text[:500])
        assert _detail(r).startswith("strategy 'first': all ") and "reserved by other clients" in _detail(r)


def _readme_commands(prefix: str) -> list[str]:
    """The README's MONAI Label section: its bash lines starting with ``prefix`` (continuations joined)."""
    section = (REPO / "README.md").read_text(encoding="utf-8").split("## MONAI Label", 1)[1].split("\n## ", 1)[0]
    lines: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.S):
        lines += [" ".join(line.split()) for line in block.replace("\\\n", " ").splitlines()]
    return [line for line in lines if line.startswith(prefix)]


def test_readme_monailabel_commands_run_as_written(server, tmp_path):
    """The README's start command, as written (the frames folder and the weights folder given by
    FETAL_US_MODELS_DIR, a free port), on loopback: the app trains the default method (both
    networks); before any model inference and the divergence strategy are 409s naming the missing
    weights; with the weights of a tiny trained model (model_config.json beside them, as after the
    Quick start demo) the README's curl lines run as written (ID: the frame the strategy proposed),
    the train request trains at the served scale, and after it the divergence strategy proposes a
    frame; the log holds neither a progress bar nor the image lists. The second start command,
    against weights of another scale, exits with one error line."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    starts = _readme_commands("monailabel start_server")
    assert len(starts) == 2 and all("--host 127.0.0.1" in c for c in starts), starts
    studies, models = tmp_path / "my_frames", tmp_path / "models"
    studies.mkdir()
    for image in server["images"][:3]:
        shutil.copy2(server["files"][image], studies / server["files"][image].name)
    args = [str(studies) if a == "my_frames/" else a for a in shlex.split(starts[0])[1:]]
    env = _server_env(FETAL_US_MODELS_DIR=str(models))
    with _running_server(tmp_path, args, env) as (url, log):
        r = requests.post(f"{url}/infer/{MODEL}", params={"image": server["images"][0], "output": "image"}, timeout=60)
        assert r.status_code == 409, (r.status_code, r.text[:500])
        assert _detail(r).startswith(f"model '{MODEL}': no trained model at {models / 'model.pt'}: train first")
        r = requests.post(f"{url}/activelearning/divergence", json={}, timeout=60)
        assert r.status_code == 409, (r.status_code, r.text[:500])
        assert _detail(r).startswith("strategy 'divergence': the divergence strategy needs the "), _detail(r)
        assert "train first" in _detail(r), _detail(r)
        # a trained model and its record, as the Quick start demo leaves them
        shutil.copytree(server["models_dir"], models, ignore=shutil.ignore_patterns("monailabel_eval", "*.json"))
        shutil.copy2(server["models_dir"] / "model_config.json", models / "model_config.json")
        port = url.rsplit(":", 1)[1]
        image = None
        for line in _readme_commands("curl "):
            line = line.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
            if image is not None:
                line = line.replace("ID", image)
            # as written, plus curl's "fail on an HTTP error" (the line's own options are kept)
            checked = "set -o pipefail; " + line.replace("curl ", "curl --fail-with-body -sS ", 1)
            proc = subprocess.run(
                ["bash", "-c", checked], cwd=tmp_path, capture_output=True, text=True, timeout=REQUEST_TIMEOUT
            )
            assert proc.returncode == 0, (line, proc.stdout[-2000:], proc.stderr[-2000:], _tail(log))
            if "/activelearning/" in line:
                image = json.loads(proc.stdout)["id"]
            if "/train/" in line and "-X POST" in line:
                deadline = time.monotonic() + TRAIN_TIMEOUT
                while time.monotonic() < deadline:
                    status = requests.get(f"{url}/train/", timeout=60).json()
                    if status.get("status") in ("DONE", "ERROR", "STOPPED"):
                        break
                    time.sleep(3)
                assert status.get("status") == "DONE", f"{json.dumps(status)[:3000]}\n{_tail(log)}"
        assert image is not None
        stats = requests.get(f"{url}/info/", timeout=60).json()["train_stats"][MODEL]
        assert stats["status"] == "done" and stats["max_epochs"] == 10 and stats["method"] == "ours", stats
        # after its first training the server answers the divergence strategy with one of its frames
        r = requests.post(f"{url}/activelearning/divergence", json={"client_id": "readme"}, timeout=REQUEST_TIMEOUT)
        frames = {p.stem for p in studies.glob("*.png")}
        assert r.status_code == 200 and r.json()["id"] in frames, (r.text, _tail(log))
        assert stats["image_size"] is None or stats["image_size"] == [64, 64], stats
        assert json.loads((models / "model_config.json").read_text())["image_size"] == [64, 64]
        text = log.read_text(errors="replace")
        assert "training at image_size [64, 64] (the served model's)" in text, _tail(log)
        assert "\u2588" not in text and "it/s]" not in text, "a progress bar in the server log"
        assert "train#dataset#data" not in text and "unlabeled_datalist" not in text, "image lists in the log"
        # the infer response carries the head measurement and whether to distrust it, judged by the
        # thresholds that training set on its validation frames (review.json beside model.pt)
        assert "review thresholds set on" in text and (models / "review.json").is_file(), _tail(log)
        r = requests.post(f"{url}/infer/{MODEL}", params={"image": image, "output": "json"}, timeout=REQUEST_TIMEOUT)
        assert r.status_code == 200, (r.text[:2000], _tail(log))
        result = r.json()
        assert isinstance(result.get("review"), bool) and "review_reason" in result, result
        assert result["unit"] == "px" and set(result["scores"]) >= {"edge", "ellipse_misfit", "disagreement"}, result
        # an explicit scale: another image size replaces the 64 px weights when the request says so
        before = (models / "model.pt").stat().st_mtime_ns
        params = {"max_epochs": 1, "val_split": 0, "image_size": 128, "overwrite_model": True}
        assert requests.post(f"{url}/train/{MODEL}", json=params, timeout=60).status_code == 200
        deadline = time.monotonic() + TRAIN_TIMEOUT
        while time.monotonic() < deadline:
            status = requests.get(f"{url}/train/", timeout=60).json()
            if status.get("status") in ("DONE", "ERROR", "STOPPED"):
                break
            time.sleep(3)
        assert status.get("status") == "DONE", f"{json.dumps(status)[:3000]}\n{_tail(log)}"
        stats = requests.get(f"{url}/info/", timeout=60).json()["train_stats"][MODEL]
        assert stats["status"] == "done" and stats["image_size"] == [128, 128], stats
        assert json.loads((models / "model_config.json").read_text())["image_size"] == [128, 128]
        assert (models / "model.pt").stat().st_mtime_ns > before
    # the second command against the 64 px, 2-class weights: one error line, no traceback
    second = [str(studies) if a == "my_frames/" else a for a in shlex.split(starts[1])[1:]]
    proc = subprocess.run(
        [*_launcher(), *second, "--port", str(_free_port()), "--log_config", str(_log_config(tmp_path))],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=STARTUP_TIMEOUT,
    )
    out = proc.stdout + proc.stderr
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert proc.returncode != 0 and len(errors) == 1 and "Traceback" not in out, out[-3000:]
    assert "num_classes=3 but the weights were trained with num_classes=2" in errors[0], errors
    # ... and as written against what it is for: weights trained at cpu_small.yaml's scale with 3 classes
    psfhs = tmp_path / "psfhs_models"
    parser = _parser([REPO / "bundle" / "configs" / c for c in ("common.yaml", "cpu_small.yaml")], 3, psfhs)
    psfhs.mkdir()
    torch.save(parser.get_parsed_content("network_def", instantiate=True).state_dict(), psfhs / "model.pt")
    (psfhs / "model_config.json").write_text(json.dumps(parser.get_parsed_content("model_record")))
    with _running_server(tmp_path, second, _server_env(FETAL_US_MODELS_DIR=str(psfhs))) as (url, log):
        model = requests.get(f"{url}/info/", timeout=60).json()["models"][MODEL]
        assert sorted(model["labels"]) == ["fetal head", "pubic symphysis"], model
        r = requests.post(f"{url}/infer/{MODEL}", params={"image": server["images"][0], "output": "image"}, timeout=60)
        assert r.status_code == 200, (r.status_code, r.text[:500], _tail(log))


def _listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp writes them) listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            local, state = row.split()[1], row.split()[3]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                found.add(local.rsplit(":", 1)[0])
    return found


def test_without_host_the_server_listens_on_loopback_only(server, tmp_path):
    """monailabel's own default host is 0.0.0.0: the app makes a server started without --host
    bind to 127.0.0.1 (the README's command, --host left out)."""
    if not Path("/proc/net/tcp").exists():
        pytest.skip("no /proc/net/tcp to read the listening address from")
    start = shlex.split(_readme_commands("monailabel start_server")[0])[1:]
    i = start.index("--host")
    args = [str(server["studies"]) if a == "my_frames/" else a for a in start[:i] + start[i + 2 :]]
    env = _server_env(FETAL_US_MODELS_DIR=str(tmp_path / "models"))
    with _running_server(tmp_path, args, env) as (url, log):
        port = int(url.rsplit(":", 1)[1])
        assert _listening_addresses(port) == {"0100007F"}, (_listening_addresses(port), _tail(log))
        assert f"Uvicorn running on http://127.0.0.1:{port}" in log.read_text(errors="replace")
        assert "no --host given: listening on 127.0.0.1 only" in log.read_text(errors="replace")


def test_app_without_weights_registers_the_tasks_and_says_what_is_missing(tmp_path):
    """In process, no server: a fresh models folder (nothing trained yet) still gets the infer
    and train tasks (MONAI Label trains the first model); inference and the divergence strategy
    answer with errors that name the missing file."""
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
    from fastapi import HTTPException

    with pytest.raises(HTTPException, match="no trained model") as err:
        app.infer({"model": MODEL, "image": name[: -len(".png")], "device": "cpu"})
    assert err.value.status_code == 409
    with pytest.raises(HTTPException, match="model.pt") as err:
        app.next_sample({"strategy": "divergence"})  # the default method trains the Swin-Unet: not yet
    assert err.value.status_code == 409
    bcp = app_class(str(APP), str(studies), {**conf, "method": "bcp"})
    with pytest.raises(HTTPException, match="needs the Swin-Unet, which the app's method 'bcp'") as err:
        bcp.next_sample({"strategy": "divergence"})  # one network: nothing to disagree with
    assert err.value.status_code == 409
    with pytest.raises(ValueError, match="unknown model"):
        app_class(str(APP), str(studies), {**conf, "models": "spleen_ct_segmentation"})
