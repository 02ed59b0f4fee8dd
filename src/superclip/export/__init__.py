"""Export: the open_clip / hub folder (safetensors + head + model card), transformers' CLIPModel, ONNX."""
from .folder import export_folder, export_openclip, run_metrics, write_head

__all__ = ["export_folder", "export_openclip", "run_metrics", "write_head"]
