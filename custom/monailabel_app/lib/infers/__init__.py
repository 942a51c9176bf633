from .fetal_us import FetalUSInferTask, image_error

__all__ = ["FetalUSInferTask", "image_error"]
