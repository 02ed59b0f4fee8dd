"""Datasets: CSV/TSV, procedurally generated scenes; a resumable, seeded sampler."""
from .loader import ResumableSampler, build_train_dataset

__all__ = ["ResumableSampler", "build_train_dataset"]
