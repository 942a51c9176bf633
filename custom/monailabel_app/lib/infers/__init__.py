from .fetal_us import FetalUSInferTask

__all__ = ["FetalUSInferTask"]
