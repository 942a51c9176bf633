"""Semi-supervised methods that train one network from its own EMA teacher, as unsupervised terms
of the one trainer (:mod:`custom.training.trainer`):

* :mod:`.weak_to_strong`: weak-to-strong self-ensembling (FixMatch / UniMatch): the teacher labels
  the unlabelled images, the student predicts strongly perturbed views of them (CutMix between
  unlabelled images, intensity, blur and noise, and a feature-dropout stream);
* :mod:`.copy_paste`: bidirectional copy-paste (BCP) between labelled and unlabelled images.

Both need no second network, so the deployed UNeXt learns from the unlabelled images whichever
network leads the cross terms of the paper's method.
"""

from custom.methods.copy_paste import BidirectionalCopyPasteTerm, copy_paste_pairs
from custom.methods.perturb import cutmix, frozen_norm_statistics, gaussian_blur, random_boxes, strong_intensity
from custom.methods.weak_to_strong import WeakToStrongTerm

__all__ = [
    "WeakToStrongTerm",
    "BidirectionalCopyPasteTerm",
    "copy_paste_pairs",
    "random_boxes",
    "cutmix",
    "strong_intensity",
    "gaussian_blur",
    "frozen_norm_statistics",
]

from custom.utils.lazy import lazy_submodules  # noqa: E402

# the baselines' modules (custom.methods.mean_teacher, .adversarial, .co_training, .ablations) load on first access
__getattr__ = lazy_submodules(__name__, __path__)
