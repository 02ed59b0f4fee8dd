"""A model config checked before anything is built: each value that would build a nonsense model (a tower with
no blocks, captions cut to one identical token) or fail deep inside torch (heads that do not divide the width, a
vocabulary smaller than the tokenizer's ids) is a one-line :class:`ConfigError` naming the key."""
from __future__ import annotations

from typing import Any, Dict

from .errors import ConfigError

CLIP_BPE_VOCAB = 49408  # open_clip's SimpleTokenizer: ids 0..49407 (SOT 49406, EOT 49407)


def _int(cfg: Dict[str, Any], tower: str, key: str, default: Any, low: int) -> int:
    value = cfg.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"model config: {tower}.{key} must be an integer >= {low}, got {value!r}")
    return value


def _positive_number(cfg: Dict[str, Any], tower: str, key: str, default: float) -> None:
    value = cfg.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"model config: {tower}.{key} must be a number > 0, got {value!r}")


def check_model_config(cfg: Dict[str, Any]) -> None:
    """Raise :class:`ConfigError` for the first bad value of a SuperCLIP / open_clip model config (defaults as
    open_clip's ``CLIPVisionCfg`` / ``CLIPTextCfg``). Towers from timm or transformers are checked by them."""
    _int(cfg, "model", "embed_dim", None, 1)
    vision, text = cfg["vision_cfg"], cfg["text_cfg"]
    if not vision.get("timm_model_name"):
        layers = vision.get("layers", 12)
        if isinstance(layers, (list, tuple)):  # a ResNet's stages
            if not layers or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in layers):
                raise ConfigError(f"model config: vision_cfg.layers must be integers >= 1, got {layers!r}")
        else:
            _int(vision, "vision_cfg", "layers", 12, 1)
        width = _int(vision, "vision_cfg", "width", 768, 1)
        _positive_number(vision, "vision_cfg", "mlp_ratio", 4.0)
        if not isinstance(layers, (list, tuple)):  # a ViT
            patch = _int(vision, "vision_cfg", "patch_size", 16, 1)
            head_width = _int(vision, "vision_cfg", "head_width", 64, 1)
            if width % head_width:
                raise ConfigError(f"model config: vision_cfg.head_width {head_width} does not divide "
                                  f"vision_cfg.width {width} (heads = width / head_width)")
            size = vision.get("image_size", 224)
            sizes = list(size) if isinstance(size, (list, tuple)) else [size]
            if len(sizes) not in (1, 2) or any(isinstance(s, bool) or not isinstance(s, int) or s < patch
                                               for s in sizes):
                raise ConfigError(f"model config: vision_cfg.image_size must be at least patch_size {patch} "
                                  f"(one patch), got {size!r}")
    _int(text, "text_cfg", "context_length", 77, 3)  # SOT, at least one word, EOT
    vocab = _int(text, "text_cfg", "vocab_size", CLIP_BPE_VOCAB, 1)
    if not text.get("hf_model_name"):
        width = _int(text, "text_cfg", "width", 512, 1)
        heads = _int(text, "text_cfg", "heads", 8, 1)
        _int(text, "text_cfg", "layers", 12, 1)
        _positive_number(text, "text_cfg", "mlp_ratio", 4.0)
        if width % heads:
            raise ConfigError(f"model config: text_cfg.heads {heads} does not divide text_cfg.width {width}")
    cls_cfg = cfg.get("clstext_cfg") or {}
    if "vocab_size" in cls_cfg:
        _int(cls_cfg, "clstext_cfg", "vocab_size", vocab, 1)


def check_tokenizer_fits(cfg: Dict[str, Any]) -> None:
    """Where a model is fed by its config's tokenizer (train, eval, embed, tag...): with open_clip's CLIP BPE,
    every id it makes must have a row in the text embedding and an output in the head (an index error deep
    inside torch otherwise). A model built for another tokenizer, through the API, is not refused."""
    text, cls_cfg = cfg["text_cfg"], cfg.get("clstext_cfg") or {}
    vocab = text.get("vocab_size", CLIP_BPE_VOCAB)
    head_vocab = cls_cfg.get("vocab_size", vocab)
    if not text.get("hf_tokenizer_name"):  # the CLIP BPE: every id must have a row in the embedding and the head
        for where, value in (("text_cfg.vocab_size", vocab), ("clstext_cfg.vocab_size", head_vocab)):
            if value < CLIP_BPE_VOCAB:
                raise ConfigError(f"model config: {where} {value} is smaller than the CLIP tokenizer's "
                                  f"{CLIP_BPE_VOCAB} ids (name an hf_tokenizer_name for another vocabulary)")
