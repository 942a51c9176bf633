from .divergence import DivergenceScorer, InformationDivergenceStrategy

__all__ = ["DivergenceScorer", "InformationDivergenceStrategy"]
