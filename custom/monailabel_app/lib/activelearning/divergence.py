"""Active learning by the disagreement of the bundle's two networks.

The next image to annotate is the unlabelled one on which the CNN (UNeXt, ``models/model.pt``)
and the Transformer (Swin-Unet, ``models/train_state/train_state.pt``, key ``transformer``)
disagree most, by the method's information divergence averaged over the image:

    score(x) = mean over pixels of KL(p_cnn || p_transformer) + MIG(p_cnn, p_transformer)

(``custom.training.losses.InformationDivergenceLoss(reduction="image")``), computed at the training size
with the bundle's deterministic preprocessing by :func:`custom.evaluation.disagreement.divergence_scores`,
the very function the simulated active-learning study (``custom.tools.active_learning``) ranks with.
Only a method that trains the Swin-Unet saves it (the default ``ours``, ``paper``); with another method
a request is refused with a line saying so (409).
Scores are cached per image (path + mtime) and per pair of weight files (their mtimes): after a
training run writes new weights, every image is scored again; otherwise a call only scores images it has not seen.
"""

from __future__ import annotations

import logging
import os
import random
import threading
from typing import Any, Dict, Mapping, Sequence

import torch
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy

from ..bundle_config import BundleSettings, ensure_repo_on_path

ensure_repo_on_path()
from custom.evaluation.disagreement import divergence_scores  # noqa: E402  (the study's score too)

logger = logging.getLogger(__name__)


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return -1


class DivergenceScorer:
    """Both networks and the preprocessing, built from the merged inference config; weights are
    (re)loaded when their files change. ``score(paths)`` returns ``{path: divergence}``."""

    def __init__(self, settings: BundleSettings, device: str | None = None, batch_size: int = 4) -> None:
        ensure_repo_on_path()
        self.settings = settings
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.batch_size = max(1, int(batch_size))
        self._weights_key: tuple | None = None
        self._cnn = self._transformer = self._preprocessing = None
        self._cache: Dict[tuple, float] = {}
        self._lock = threading.Lock()

    def weights_key(self) -> tuple:
        return _mtime(self.settings.model_path), _mtime(self.settings.train_state_path)

    def _build(self) -> None:
        from monai.transforms import Compose

        import custom.training.checkpoint

        key = self.weights_key()
        if self._cnn is not None and key == self._weights_key:
            return
        if not self.settings.trains_transformer:
            raise FileNotFoundError(
                f"the divergence strategy needs the Swin-Unet, which the app's method {self.settings.method!r} "
                "does not train: start the app with a two-network method, e.g. --conf method ours "
                "(or ask for the strategy 'random')"
            )
        for path, what in (
            (self.settings.model_path, "UNeXt weights (model.pt)"),
            (self.settings.train_state_path, "training state with the Transformer"),
        ):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"the divergence strategy needs the {what} at {path}: train first")
        parser = self.settings.parser("inference")
        cnn = parser.get_parsed_content("network_def", instantiate=True)
        transformer = parser.get_parsed_content("transformer_def", instantiate=True)
        custom.training.checkpoint.load_network_weights(cnn, self.settings.model_path)
        custom.training.checkpoint.load_network_weights(transformer, self.settings.train_state_path, key="transformer")
        self._cnn, self._transformer = cnn.to(self.device).eval(), transformer.to(self.device).eval()
        self._preprocessing = Compose(parser.get_parsed_content("deterministic_transforms", instantiate=True))
        if key != self._weights_key:
            self._cache.clear()  # other weights, other scores
        self._weights_key = key
        logger.info(
            "divergence strategy: networks loaded (%s, %s) on %s",
            self.settings.model_path,
            self.settings.train_state_path,
            self.device,
        )

    def _compute(self, paths: Sequence[str]) -> list[float]:
        images = (self._preprocessing({"image": p})["image"] for p in paths)
        return divergence_scores(self._cnn, self._transformer, images, self.batch_size, self.device)

    def score(self, paths: Sequence[str], names: Mapping[str, str] | None = None) -> Dict[str, float]:
        """``{path: divergence}``; a file that cannot be read scores ``-inf`` and is logged with
        its image id (``names[path]``, else the file name)."""
        names = names or {}
        with self._lock:
            self._build()
            keys = {p: (os.path.abspath(p), _mtime(p)) for p in paths}
            todo = [p for p in paths if keys[p] not in self._cache]
            if todo:
                import custom.deploy.inference

                logger.info(
                    "divergence strategy: scoring %d new image(s) (%d cached)", len(todo), len(paths) - len(todo)
                )
                readable = []
                for p in todo:  # a broken file is never proposed: it scores -inf and is logged
                    problem = custom.deploy.inference.screen_file(p, timeout_s=None)
                    if problem is None:
                        readable.append(p)
                    else:
                        image = names.get(p) or os.path.splitext(os.path.basename(p))[0]
                        logger.warning("divergence strategy: never proposes image %r (%s): %s", image, p, problem)
                        self._cache[keys[p]] = float("-inf")
                for p, s in zip(readable, self._compute(readable)):
                    self._cache[keys[p]] = s
            return {p: self._cache[keys[p]] for p in paths}


class InformationDivergenceStrategy(Strategy):
    """Next sample: the unlabelled image with the highest CNN-Transformer information divergence.

    Request options (``POST /activelearning/divergence`` body): ``label_tag``/``labels`` as for
    MONAI Label's own strategies; ``max_samples`` (default 0 = all) scores a random subset of
    that many unlabelled images (seeded by ``seed``) on large datastores.
    The answer carries the score: ``{"id": ..., "disagreement": ..., "scored": n}``.
    """

    def __init__(self, settings: BundleSettings, device: str | None = None, batch_size: int = 4) -> None:
        super().__init__("Unlabelled image with the highest CNN-Transformer disagreement (KL + MIG)")
        self.scorer = DivergenceScorer(settings, device, batch_size)

    def __call__(self, request: Dict[str, Any], datastore: Datastore):
        images = sorted(datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels")))
        if not images:
            return None
        try:
            max_samples, seed = int(request.get("max_samples", 0) or 0), int(request.get("seed", 0) or 0)
        except (TypeError, ValueError):
            raise ValueError(
                f"max_samples {request.get('max_samples')!r} / seed {request.get('seed')!r}: expected whole numbers"
            ) from None
        if 0 < max_samples < len(images):
            images = sorted(random.Random(seed).sample(images, max_samples))
        paths = {i: datastore.get_image_uri(i) for i in images}
        scores = self.scorer.score(list(paths.values()), {p: i for i, p in paths.items()})
        images = [i for i in images if scores[paths[i]] != float("-inf")]
        if not images:
            logger.warning("divergence strategy: no readable unlabelled image left")
            return {}
        best = max(images, key=lambda i: (scores[paths[i]], i))
        logger.info("divergence strategy: selected %s (%.6f) among %d", best, scores[paths[best]], len(images))
        return {"id": best, "disagreement": scores[paths[best]], "scored": len(images)}
