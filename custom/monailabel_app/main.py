"""MONAI Label app for the semi-supervised fetal-ultrasound bundle (2-D PNG/JPEG frames).

    monailabel start_server --app custom/monailabel_app --studies FRAMES_FOLDER --conf models fetal_us_ssl

Registers, under the model name ``fetal_us_ssl``:

* inference: the deployed UNeXt (``BundleInferTask`` over common.yaml + inference.yaml), masks
  at the original image size;
* training: the bundle's default method, or the one ``--conf method`` names (``BundleTrainTask``,
  run id ``run``), on MONAI Label's labelled images, with its unlabelled images feeding the
  semi-supervised terms;
* active learning: ``divergence`` (the unlabelled image on which the UNeXt and the Swin-Unet
  disagree most: mean KL + MIG; needs a method that trains the Swin-Unet, as the default does),
  beside MONAI Label's ``random`` and ``first``.

Training summarises each run in ``models_dir/train_stats.json`` (``train_stats`` in ``GET /info/``;
see ``lib/trainers/fetal_us.py``) and refuses, in one line, to start without a usable labelled
image.

A client's mistake gets a 4xx with one line naming the image, model, strategy or file and what to
do (``lib/errors.py``), never a 500: a frame that cannot be segmented, or an id the datastore does
not hold, 422; an unknown model or strategy, 404; inference or the ``divergence`` strategy before
any model is trained, or the ``divergence`` strategy with a method without the Swin-Unet, 409; a
label that cannot be used (``lib/datastore.py``: unreadable, not 2-D, not the frame's size, values
outside the classes), 422, and it is not stored. A frame handed
out by a strategy is reserved for the asking client for ``reserve_s`` seconds
(``lib/activelearning/reservations.py``).

Where the bundle and its weights are, and the scale of the networks, come from ``--conf`` (see
``lib/bundle_config.py``): ``bundle_root``, ``models_dir``, ``output_dir``, ``config_overrides``
(e.g. ``bundle/configs/cpu_small.yaml`` for weights trained at that scale), ``num_classes``,
``labels``, ``method``; ``strategy_device``, ``skip_trainers``, ``skip_strategy``, ``reserve_s``.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Dict

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # the bundle's configs `$import custom`
    sys.path.insert(0, str(REPO_ROOT))

import monailabel  # noqa: E402
from lib.activelearning import InformationDivergenceStrategy  # noqa: E402
from lib.activelearning.reservations import (  # noqa: E402
    DEFAULT_RESERVE_S,
    FreeImagesView,
    RandomStrategy,
    Reservations,
)
from lib.bundle_config import MODEL_NAME, BundleSettings, ensure_repo_on_path  # noqa: E402
from lib.datastore import FetalUSDatastore  # noqa: E402
from lib.errors import CONFLICT, NOT_FOUND, UNPROCESSABLE, http_error, install_exception_handlers  # noqa: E402
from lib.infers import FetalUSInferTask, image_error  # noqa: E402
from lib.trainers import FetalUSTrainTask  # noqa: E402
from monailabel.config import settings  # noqa: E402
from monailabel.interfaces.app import MONAILabelApp  # noqa: E402
from monailabel.interfaces.datastore import Datastore  # noqa: E402
from monailabel.interfaces.tasks.infer_v2 import InferTask  # noqa: E402
from monailabel.interfaces.tasks.strategy import Strategy  # noqa: E402
from monailabel.interfaces.tasks.train import TrainTask  # noqa: E402
from monailabel.tasks.activelearning.first import First  # noqa: E402
from monailabel.utils.others.generic import strtobool  # noqa: E402

logger = logging.getLogger(__name__)


def loopback_unless_chosen() -> str | None:
    """``monailabel start_server`` listens on every interface (``0.0.0.0``) unless given ``--host``:
    without one, make the server bind to ``127.0.0.1``. The app starts inside uvicorn's startup,
    before uvicorn binds its socket (single process), so the host of uvicorn's ``Config`` (found on
    the call stack: its lifespan handler) can still be set. Returns the host set, ``None`` when the
    user chose one or this is not ``start_server``; warns when it cannot be set (``--workers``)."""
    argv = sys.argv
    if "start_server" not in argv or any(a in ("--host", "-i") or a.startswith("--host=") for a in argv):
        return None
    frame = sys._getframe(1)
    while frame is not None:
        owner = frame.f_locals.get("self")
        config = getattr(owner, "config", None)
        if type(owner).__module__.startswith("uvicorn.") and hasattr(config, "host"):
            single = (getattr(config, "workers", 1) or 1) <= 1 and not getattr(config, "fd", None)
            if config.host == "0.0.0.0" and single and not getattr(config, "uds", None):
                config.host = "127.0.0.1"
                logger.warning("no --host given: listening on 127.0.0.1 only (--host 0.0.0.0: every interface)")
                return config.host
            break
        frame = frame.f_back
    logger.warning("no --host given: monailabel listens on every interface (0.0.0.0); pass --host 127.0.0.1")
    return None


class MyApp(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        loopback_unless_chosen()
        try:
            self._init(app_dir, studies, conf)
        except Exception as error:
            from custom.utils.runtime import input_error_of

            found = error if isinstance(error, (ValueError, FileNotFoundError)) else input_error_of(error)
            if found is None or os.environ.get("CUSTOM_TRACEBACK") == "1" or "start_server" not in sys.argv:
                raise
            # a wrong --conf: one line, not uvicorn's traceback of the failed startup
            print(f"error: {' '.join(str(found).split())}", file=sys.stderr, flush=True)
            logging.shutdown()
            os._exit(2)

    def _init(self, app_dir, studies, conf):
        ensure_repo_on_path()
        self.bundle = BundleSettings.from_conf(conf)
        requested = [m.strip() for m in str(conf.get("models", MODEL_NAME) or MODEL_NAME).split(",") if m.strip()]
        unknown = [m for m in requested if m not in (MODEL_NAME, "all")]
        if unknown:
            raise ValueError(f"unknown model(s) {unknown}; this app serves '{MODEL_NAME}' (--conf models {MODEL_NAME})")
        self.model_name = MODEL_NAME
        try:
            reserve_s = float(conf.get("reserve_s", DEFAULT_RESERVE_S))
        except ValueError:
            raise ValueError(f"--conf reserve_s {conf.get('reserve_s')!r}: expected seconds (0: off)") from None
        self.reservations = Reservations(reserve_s)
        # 2-D frames: MONAI Label lists *.png and *.jpg; add the other spellings
        for ext in ("*.jpeg", "*.JPG", "*.JPEG", "*.PNG"):
            if ext not in settings.MONAI_LABEL_DATASTORE_FILE_EXT:
                settings.MONAI_LABEL_DATASTORE_FILE_EXT.append(ext)
        logger.info(
            "bundle %s; weights in %s; overrides %s",
            self.bundle.bundle_root,
            self.bundle.models_dir,
            self.bundle.config_overrides,
        )
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name=f"MONAILabel - fetal ultrasound SSL bundle ({monailabel.__version__})",
            description=f"Semi-supervised fetal ultrasound segmentation (UNeXt; method {self.bundle.method!r}) "
            "from the repository's MONAI bundle",
            version=monailabel.__version__,
        )

    def on_init_complete(self):
        if install_exception_handlers():
            logger.info("one-line 4xx answers for MONAI Label's own input errors (lib/errors.py)")
        super().on_init_complete()

    def init_datastore(self) -> Datastore:
        """MONAI Label's local datastore that checks each label before saving it (lib/datastore.py)."""
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()
        return FetalUSDatastore(
            self.studies,
            extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
            num_classes=self.bundle.num_classes,
        )

    def _unknown_model(self, model, what: str):
        served = sorted(set(self._infers) | set(self._trainers))
        return http_error(NOT_FOUND, f"model {model!r}: no such model to {what}; this app serves {served}")

    def infer(self, request, datastore=None):
        """MONAI Label's inference, with the image id kept: an id that is not in the datastore is
        a 422 naming it (MONAI Label would pass on an empty path), and the task's errors about the
        frame name the id the client asked for (``request["image_id"]``). An unknown model is a
        404, a model not trained yet a 409."""
        model = request.get("model")
        if model not in self._infers:
            raise self._unknown_model(model, "run inference with")
        if model == self.model_name and not os.path.isfile(self.bundle.model_path):
            raise http_error(
                CONFLICT,
                f"model {model!r}: no trained model at {self.bundle.model_path}: train first "
                f"(POST /train/{model}) or copy a model.pt there",
            )
        image = request.get("image")
        if isinstance(image, str) and image and not os.path.exists(image):
            store = datastore if datastore else self.datastore()
            if not store.get_image_uri(image):
                raise image_error(image, "no such image in the datastore (GET /datastore/?output=all lists the ids)")
            request = {**request, "image_id": image}
        return super().infer(request, datastore)

    def bundle_path(self, model):
        """Called by MONAI Label for ``POST /train/<model>`` before the task starts: an unknown
        model is a 404 there instead of a task that fails later."""
        if isinstance(model, str) and model and model not in self._trainers and model not in self._infers:
            raise self._unknown_model(model, "train")
        return super().bundle_path(model)

    def next_sample(self, request):
        """MONAI Label's next sample, with an unknown strategy a 404, the ``divergence`` strategy
        before any model a 409, and the frame reserved for the asking client (``client_id``; none:
        a client of its own) for ``reserve_s`` seconds: the answer says so (``reserved_for``,
        ``reserved_until``, ``reserve_s``); a frame reserved by another client is never handed out."""
        strategy = request.get("strategy") or "random"
        task = self._strategies.get(strategy)
        if task is None:
            raise http_error(
                NOT_FOUND, f"strategy {strategy!r}: no such strategy; this app has {sorted(self._strategies)}"
            )
        client = str(request.get("client_id") or f"anonymous-{id(request)}-{time.monotonic_ns()}")
        with self.reservations.lock:
            view = FreeImagesView(self.datastore(), self.reservations.held_by_others(client))
            try:
                res = task({**request, "strategy": strategy}, view)
            except FileNotFoundError as e:  # the divergence strategy before any training, or without the Swin-Unet
                raise http_error(CONFLICT, f"strategy {strategy!r}: {e}") from None
            except ValueError as e:  # a request option that is not a number, ...
                raise http_error(UNPROCESSABLE, f"strategy {strategy!r}: {e}") from None
            if not res or not res.get("id"):
                if view.excluded_count:
                    raise http_error(
                        CONFLICT,
                        f"strategy {strategy!r}: all {view.excluded_count} unlabelled image(s) are reserved by other "
                        f"clients (for up to {self.reservations.reserve_s:g} s after they were handed out); "
                        "label them or ask again later",
                    )
                return {}
            until = self.reservations.reserve(res["id"], client)
        res["path"] = self.datastore().get_image_uri(res["id"])
        if until is not None:
            res.update(
                reserved_for=request.get("client_id") or None,
                reserved_until=int(until),
                reserve_s=self.reservations.reserve_s,
            )
        return res

    def init_infers(self) -> Dict[str, InferTask]:
        task = FetalUSInferTask(self.bundle, self.conf)
        logger.info("+++ Adding Inferer:: %s => %s", self.model_name, task)
        return {self.model_name: task}

    def init_trainers(self) -> Dict[str, TrainTask]:
        if strtobool(self.conf.get("skip_trainers", "false")):
            return {}
        task = FetalUSTrainTask(self.bundle, self.conf)
        if not task.is_valid():
            return {}
        logger.info("+++ Adding Trainer:: %s => %s", self.model_name, task)
        return {self.model_name: task}

    def init_strategies(self) -> Dict[str, Strategy]:
        strategies: Dict[str, Strategy] = {"random": RandomStrategy(), "first": First()}
        if not strtobool(self.conf.get("skip_strategy", "false")):
            strategies["divergence"] = InformationDivergenceStrategy(
                self.bundle,
                device=self.conf.get("strategy_device") or None,
                batch_size=int(self.conf.get("strategy_batch_size", "4")),
            )
        logger.info("Active Learning Strategies:: %s", list(strategies))
        return strategies


def main() -> None:
    """Run the tasks without a server: ``python custom/monailabel_app/main.py --studies FOLDER``."""
    import argparse
    import json

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] [%(levelname)s] (%(name)s) - %(message)s")
    parser = argparse.ArgumentParser()
    parser.add_argument("-s", "--studies", required=True)
    parser.add_argument("-t", "--test", default="infer", choices=("infer", "train", "activelearning"))
    parser.add_argument("--conf", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"))
    args = parser.parse_args()
    conf = {"models": MODEL_NAME, "preload": "false", **dict(args.conf)}
    app = MyApp(os.path.dirname(os.path.abspath(__file__)), args.studies, conf)
    if args.test == "activelearning":
        print(json.dumps(app.next_sample({"strategy": "divergence"}), indent=2))
    elif args.test == "infer":
        sample = app.next_sample({"strategy": "first"})
        print(app.infer({"model": MODEL_NAME, "image": sample["id"], "device": "cpu"}))
    else:
        app.train({"model": MODEL_NAME, "max_epochs": 1, "val_split": 0.0, "device": "cpu"})


if __name__ == "__main__":
    main()
