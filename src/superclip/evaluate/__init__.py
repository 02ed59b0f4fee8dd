"""Evaluators: pure functions over embeddings returning {name: float}."""
from .linear_probe import linear_probe
from .retrieval import retrieval_metrics
from .zero_shot import classification_metrics, classifier_weights, zero_shot_metrics

__all__ = ["classification_metrics", "classifier_weights", "linear_probe", "retrieval_metrics", "zero_shot_metrics"]
