from .fetal_us import FetalUSTrainTask

__all__ = ["FetalUSTrainTask"]
