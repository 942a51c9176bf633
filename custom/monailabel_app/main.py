"""MONAI Label app for the semi-supervised fetal-ultrasound bundle (2-D PNG/JPEG frames).

    monailabel start_server --app custom/monailabel_app --studies FRAMES_FOLDER --conf models fetal_us_ssl

Registers, under the model name ``fetal_us_ssl``:

* inference: the deployed UNeXt (``BundleInferTask`` over common.yaml + inference.yaml), masks
  at the original image size;
* training: the bundle's method (``BundleTrainTask``, run id ``run``) on MONAI Label's labelled
  images, with its unlabelled images feeding the semi-supervised terms;
* active learning: ``divergence`` (the unlabelled image on which the UNeXt and the Swin-Unet
  disagree most: mean KL + MIG), beside MONAI Label's ``random`` and ``first``.

Training summarises each run in ``models_dir/train_stats.json`` (``train_stats`` in ``GET /info/``;
see ``lib/trainers/fetal_us.py``) and refuses, in one line, to start without a usable labelled
image. A frame that cannot be segmented, or an id the datastore does not hold, gets an HTTP 422
that names the image id and the problem.

Where the bundle and its weights are, and the scale of the networks, come from ``--conf`` (see
``lib/bundle_config.py``): ``bundle_root``, ``models_dir``, ``output_dir``, ``config_overrides``
(e.g. ``bundle/configs/cpu_small.yaml`` for weights trained at that scale), ``num_classes``,
``labels``; ``strategy_device``, ``skip_trainers``, ``skip_strategy``.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Dict

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # the bundle's configs `$import custom`
    sys.path.insert(0, str(REPO_ROOT))

import monailabel  # noqa: E402
from lib.activelearning import InformationDivergenceStrategy  # noqa: E402
from lib.bundle_config import MODEL_NAME, BundleSettings, ensure_repo_on_path  # noqa: E402
from lib.infers import FetalUSInferTask, image_error  # noqa: E402
from lib.trainers import FetalUSTrainTask  # noqa: E402
from monailabel.config import settings  # noqa: E402
from monailabel.interfaces.app import MONAILabelApp  # noqa: E402
from monailabel.interfaces.tasks.infer_v2 import InferTask  # noqa: E402
from monailabel.interfaces.tasks.strategy import Strategy  # noqa: E402
from monailabel.interfaces.tasks.train import TrainTask  # noqa: E402
from monailabel.tasks.activelearning.first import First  # noqa: E402
from monailabel.tasks.activelearning.random import Random  # noqa: E402
from monailabel.utils.others.generic import strtobool  # noqa: E402

logger = logging.getLogger(__name__)


class MyApp(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        ensure_repo_on_path()
        self.bundle = BundleSettings.from_conf(conf)
        requested = [m.strip() for m in str(conf.get("models", MODEL_NAME) or MODEL_NAME).split(",") if m.strip()]
        unknown = [m for m in requested if m not in (MODEL_NAME, "all")]
        if unknown:
            raise ValueError(f"unknown model(s) {unknown}; this app serves '{MODEL_NAME}' (--conf models {MODEL_NAME})")
        self.model_name = MODEL_NAME
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
            description="Semi-supervised fetal ultrasound segmentation (UNeXt + Swin-Unet) "
            "from the repository's MONAI bundle",
            version=monailabel.__version__,
        )

    def infer(self, request, datastore=None):
        """MONAI Label's inference, with the image id kept: an id that is not in the datastore is
        a 422 naming it (MONAI Label would pass on an empty path), and the task's errors about the
        frame name the id the client asked for (``request["image_id"]``)."""
        image = request.get("image")
        if isinstance(image, str) and image and not os.path.exists(image):
            store = datastore if datastore else self.datastore()
            if not store.get_image_uri(image):
                raise image_error(image, "no such image in the datastore (GET /datastore/?output=all lists the ids)")
            request = {**request, "image_id": image}
        return super().infer(request, datastore)

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
        strategies: Dict[str, Strategy] = {"random": Random(), "first": First()}
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
