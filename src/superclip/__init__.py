"""superclip: SuperCLIP (CLIP + caption-token classification) on open_clip towers."""
from .checkpoint import create_model, create_model_and_transforms, load_token_stats, save_checkpoint
from .errors import CheckpointError, ConfigError, SuperCLIPError
from .export import export_folder, export_openclip
from .loss import SuperCLIPLoss, token_classification_loss
from .model import SuperCLIP, build_model, get_tokenizer, get_transforms, list_models, resolve_model_config

__version__ = "0.1.0"

__all__ = [
    "CheckpointError", "ConfigError", "SuperCLIP", "SuperCLIPError", "SuperCLIPLoss", "build_model",
    "create_model", "create_model_and_transforms", "export_folder", "export_openclip", "get_tokenizer",
    "get_transforms", "list_models", "load_token_stats", "resolve_model_config", "save_checkpoint",
    "token_classification_loss",
]
