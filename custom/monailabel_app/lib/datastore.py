"""The app's datastore: MONAI Label's ``LocalDatastore`` that checks a label before saving it.

``PUT /datastore/label?image=ID`` (and an inference saved as a label) reaches
:meth:`FetalUSDatastore.save_label`. The label is read as ``custom.data`` reads masks
(:mod:`custom.data.readers`) and refused, with an HTTP 4xx that names the image and the problem,
when:

* the image id is not in the datastore (404);
* the file cannot be read (truncated, not an image, unsupported type), is not 2-D, or holds
  non-integer or negative values (422);
* its size differs from the frame's (422);
* its values are not class ids ``0..num_classes-1`` (422). A 0/255 mask is mapped to 0/1 for a
  2-class model, as ``custom.data prepare hc18`` reads filled 0/255 masks; other raw values can be
  mapped by the upload's ``params`` (``{"label_map": "255:2"}``, the syntax of ``--label-map``).

A refused label is not stored: the frame stays unlabelled (in the annotation queue). An accepted
one is stored as a one-channel 8-bit PNG of class ids, written atomically
(:mod:`custom.utils.atomic`).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Dict

import numpy as np
from filelock import FileLock
from monailabel.datastore.local import DataModel, LocalDatastore

from .errors import NOT_FOUND, UNPROCESSABLE, http_error

logger = logging.getLogger(__name__)

# a 0/255 mask for a 2-class model (custom/data/sources/hc18.py reads filled masks the same way)
BINARY_255 = {255: 1}


def label_problem_or_mask(
    label_file: str, image_file: str, num_classes: int, label_map: Dict[int, int] | None = None
) -> tuple[str | None, np.ndarray | None]:
    """``(problem, None)`` for a label that cannot be saved, else ``(None, class-id mask)``
    (``rows x cols`` uint8, 0/255 mapped for a 2-class model)."""
    from custom.data.errors import ReadError
    from custom.data.readers import present_values, read_raw, to_class_ids

    try:
        raw = read_raw(Path(label_file), for_mask=True)
        mask, _ = to_class_ids(raw, label_map)
    except ReadError as e:  # MONAI Label's temporary copy of the upload is no name for the client
        return str(e).replace(str(label_file), "the uploaded file"), None
    try:
        frame = read_raw(Path(image_file)).array
    except ReadError as e:
        return f"its image {image_file} cannot be read ({e})", None
    if mask.shape[:2] != frame.shape[:2]:
        return (
            f"mask of {mask.shape[1]}x{mask.shape[0]} pixels for a frame of {frame.shape[1]}x{frame.shape[0]}: "
            "a label must have the frame's size"
        ), None
    values = [int(v) for v in present_values(mask)]
    outside = [v for v in values if v >= num_classes]
    if outside and not label_map and num_classes == 2 and set(values) <= {0, 255}:
        mask, outside = np.where(mask == 255, 1, 0), []
    if outside:
        shown = outside[:10] + (["..."] if len(outside) > 10 else [])
        hint = (
            " (0/255 masks are read as 0/1 for a 2-class model only; map other values with params "
            '{"label_map": "255:2"})'
            if 255 in outside
            else ""
        )
        return f"label values {shown} outside the classes 0..{num_classes - 1} (num_classes {num_classes}){hint}", None
    return None, mask.astype(np.uint8)


class FetalUSDatastore(LocalDatastore):
    def __init__(self, *args, num_classes: int = 2, **kwargs) -> None:
        self.num_classes = int(num_classes)
        super().__init__(*args, **kwargs)

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: Dict[str, Any]) -> str:
        from custom.data.options import parse_label_map
        from custom.utils.atomic import atomic_path

        obj = self._datastore.objects.get(image_id)
        if not obj:
            raise http_error(
                NOT_FOUND,
                f"image {image_id!r}: no such image in the datastore, label not saved "
                "(GET /datastore/?output=all lists the ids)",
            )
        label_info = dict(label_info or {})
        try:
            label_map = parse_label_map(label_info.pop("label_map", None))
        except ValueError as e:
            raise http_error(UNPROCESSABLE, f"label for image {image_id!r}: {e}; label not saved") from None
        problem, mask = label_problem_or_mask(label_filename, self.get_image_uri(image_id), self.num_classes, label_map)
        if problem:
            logger.warning("label for image %r refused: %s", image_id, problem)
            raise http_error(
                UNPROCESSABLE, f"label for image {image_id!r}: {problem}; label not saved, the image stays unlabelled"
            )

        from PIL import Image

        label_path = self._datastore.label_path(label_tag)
        name = self._filename(image_id, ".png")
        with FileLock(self._lock_file):
            os.makedirs(label_path, exist_ok=True)
            with atomic_path(os.path.join(label_path, name)) as tmp:
                Image.fromarray(mask).save(tmp, format="PNG")
            previous = obj.labels.get(label_tag)
            if previous is not None and previous.ext != ".png":  # a label of another type is replaced
                old = os.path.join(label_path, self._filename(image_id, previous.ext))
                if os.path.isfile(old):
                    os.remove(old)
            label_info.update(ts=int(time.time()), name=name)
            obj.labels[label_tag] = DataModel(info=label_info, ext=".png")
            self._update_datastore_file(lock=False)
        logger.info("label for image %r saved (%s): values %s", image_id, label_tag, np.unique(mask).tolist())
        return image_id
