"""Seeding the whole process: Python's, NumPy's and torch's global generators (the trainer seeds every rank alike
before building the model, then each rank apart)."""
import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def generator_seed(value: int) -> int:
    """``value`` as a seed torch's generators take (-2**63 .. 2**64 - 1): itself when it fits, else modulo 2**64.
    Seeds derived by arithmetic (``seed * 1_000_003 + epoch``) overflow there for large user seeds."""
    return value if -2 ** 63 <= value < 2 ** 64 else value % 2 ** 64
