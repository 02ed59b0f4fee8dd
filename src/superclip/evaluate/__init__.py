"""Evaluators: pure functions over embeddings returning {name: float}."""
from .zero_shot import classifier_weights, zero_shot_metrics

__all__ = ["classifier_weights", "zero_shot_metrics"]
