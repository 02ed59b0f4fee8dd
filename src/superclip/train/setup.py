"""What the training flags do to the model before the optimizer sees it: the model config they imply
(open_clip_train's ``--force-*``, ``--pretrained-image``, ``--siglip``'s init) and LiT tower locking."""
from __future__ import annotations

import math
from typing import Any, Dict

from ..config import TrainConfig
from ..errors import ConfigError
from ..model import SuperCLIP, resolve_model_config


def model_config(cfg: TrainConfig) -> Dict[str, Any]:
    """``--model``'s config with the training flags applied."""
    model_cfg = resolve_model_config(cfg.model)
    if cfg.fsdp:  # fully_shard cannot shard 0-d parameters
        model_cfg["nonscalar_logit_scale"] = True
    if cfg.force_image_size:
        model_cfg["vision_cfg"]["image_size"] = cfg.force_image_size
    if cfg.force_quick_gelu:
        model_cfg["quick_gelu"] = True
    if cfg.force_context_length:
        model_cfg["text_cfg"]["context_length"] = cfg.force_context_length
    if cfg.contrastive == "siglip" and "init_logit_bias" not in model_cfg:  # open_clip_train's --siglip init
        model_cfg.update(init_logit_scale=math.log(10), init_logit_bias=-10.0)
    if cfg.pretrained_image:
        if not model_cfg["vision_cfg"].get("timm_model_name"):
            raise ConfigError("--pretrained-image loads ImageNet weights for timm image towers (timm_model_name) "
                              f"only, as in open_clip; {cfg.model}'s image tower is open_clip's ViT: start it from a "
                              "checkpoint with --pretrained")
        model_cfg["vision_cfg"]["timm_model_pretrained"] = True
    return model_cfg


def apply_locks(model: SuperCLIP, cfg: TrainConfig) -> None:
    """``--lock-image*`` / ``--lock-text*``: locked parameters get ``requires_grad=False`` (so no gradient and no
    optimizer state)."""
    if cfg.lock_image:
        model.lock_image_tower(cfg.lock_image_unlocked_groups, cfg.lock_image_freeze_bn_stats)
    elif cfg.lock_image_unlocked_groups or cfg.lock_image_freeze_bn_stats:
        raise ConfigError("--lock-image-unlocked-groups / --lock-image-freeze-bn-stats only apply with --lock-image")
    if cfg.lock_text:
        model.lock_text_tower(cfg.lock_text_unlocked_layers, cfg.lock_text_freeze_layer_norm)
    elif cfg.lock_text_unlocked_layers or cfg.lock_text_freeze_layer_norm:
        raise ConfigError("--lock-text-unlocked-layers / --lock-text-freeze-layer-norm only apply with --lock-text")
