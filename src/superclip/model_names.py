"""The model configs shipped with superclip, listed without importing torch or open_clip."""
from __future__ import annotations

from importlib import resources

CONFIG_PACKAGE = "superclip.model_configs"


def list_models() -> list:
    """Names of the model configs shipped with superclip (open_clip's own names work too)."""
    files = resources.files(CONFIG_PACKAGE).iterdir()
    return sorted(f.name[:-5] for f in files if f.name.endswith(".json"))
