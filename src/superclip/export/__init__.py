"""Export: the open_clip / hub folder (safetensors + head + model card), transformers' CLIPModel, ONNX.

The names below are imported on first use: ``superclip export`` checks its output folder (:mod:`.staging`) before
torch is imported."""
import importlib

__all__ = ["export_folder", "export_openclip", "run_metrics", "write_head"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module(".folder", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
