"""Seeding the whole process: Python's, NumPy's and torch's global generators (the trainer seeds every rank alike
before building the model, then each rank apart)."""
import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
