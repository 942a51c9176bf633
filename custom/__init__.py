"""Components of the fetal-ultrasound semi-supervised bundle, referenced by its configs.

Folders by concern: ``networks/`` (UNeXt, Swin-Unet), ``data/`` (preparation, datalists,
transforms, the synthetic demo set), ``training/`` (trainer, handlers, terms, losses, EMA, mixup, schedules,
checkpoints, distributed), ``methods/`` (the unsupervised terms of each method),
``pretraining/`` (masked image modelling of the Swin-Unet),
``evaluation/`` (metrics, evaluation, biometry, overlays), ``deploy/`` (inference, model
record, packaging, export), ``tools/`` (comparison, benchmarks, GPU check; not shipped),
``utils/`` (command-line options, atomic writes, paths, the process setup), ``monailabel_app/``.

Submodules load on first attribute access (PEP 562), so a config's ``$import custom``
makes expressions such as ``$custom.training.trainer.logged_terms`` resolve (MONAI binds
``$import a.b`` to the name ``a.b``, not ``a``), while ``python -m custom.data`` does not
pay for importing torch-heavy modules it does not use. Importing it changes nothing in the
process: the configs' ``initialize`` and the entry points call :func:`custom.utils.runtime.setup`.
"""

from custom.utils.lazy import lazy_submodules

__getattr__ = lazy_submodules(__name__, __path__)
