"""superclip: SuperCLIP (CLIP + caption-token classification) on open_clip towers.

The public names load their modules on first use (PEP 562): ``import superclip`` alone is light, so the
``superclip`` command reaches its own Ctrl-C handling before torch and open_clip are imported (a Ctrl-C during
those imports was a traceback)."""
from .errors import CheckpointError, ConfigError, SuperCLIPError

__version__ = "0.1.0"

_LAZY = {
    "create_model": "checkpoint", "create_model_and_transforms": "checkpoint", "load_token_stats": "checkpoint",
    "save_checkpoint": "checkpoint", "export_folder": "export", "export_openclip": "export",
    "SuperCLIPLoss": "loss", "token_classification_loss": "loss", "SuperCLIP": "model", "build_model": "model",
    "get_tokenizer": "model", "get_transforms": "model", "list_models": "model", "resolve_model_config": "model",
}

__all__ = [
    "CheckpointError", "ConfigError", "SuperCLIP", "SuperCLIPError", "SuperCLIPLoss", "build_model",
    "create_model", "create_model_and_transforms", "export_folder", "export_openclip", "get_tokenizer",
    "get_transforms", "list_models", "load_token_stats", "resolve_model_config", "save_checkpoint",
    "token_classification_loss",
]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'superclip' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
