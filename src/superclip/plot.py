"""PNG figures of a run (matplotlib, no display needed)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)


def plot_losses(history: List[Dict[str, float]], path: Path, title: str = "") -> Path:
    """Loss curves (total, contrastive, class) against step; returns ``path``."""
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    steps = [h["step"] for h in history]
    for key, style in (("loss", "-"), ("contrastive_loss", "--"), ("class_loss", ":")):
        ax.plot(steps, [h[key] for h in history], style, label=key.replace("_", " "))
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
