"""Components of the fetal-ultrasound semi-supervised bundle, referenced by its configs.

Submodules are imported here so that a config's ``$import custom`` makes expressions such
as ``$custom.trainer.logged_terms`` resolve (MONAI binds ``$import a.b`` to the name
``a.b``, not ``a``).
"""

from . import checkpoint, demo_data, ema, losses, mixup, networks, schedules, terms, trainer, transforms  # noqa: F401
