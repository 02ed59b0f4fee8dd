"""SuperCLIP: an open_clip model plus a token-classification head on its image tower.

The head (METHOD.md): patch tokens of the image tower after its final norm, CLS excluded, mean over
tokens, then ``LayerNorm(width) -> Linear(width, V)``. The open_clip model is wrapped, not modified,
except that open_clip ``VisionTransformer`` towers are asked to return their tokens.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import asdict
from typing import Any, Dict, List, Optional

import open_clip
import torch
import torch.nn.functional as F
from open_clip.timm_model import TimmModel
from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict
from open_clip.transformer import TextTransformer, VisionTransformer, text_global_pool
from torch import nn

from .errors import ConfigError
from .lean_import import check_buildable
from .model_check import check_model_config
from .model_names import ModelCfg, list_models, resolve_model_config  # noqa: F401 (public names, re-exported)

log = logging.getLogger(__name__)

# Keys of a model JSON that are ours (or the official release's), not open_clip constructor arguments.
_NON_OPENCLIP_KEYS = ("clstext_cfg", "custom_text", "preprocess_cfg")


def split_model_config(cfg: Dict[str, Any]) -> tuple:
    """Split a model config into (open_clip constructor kwargs, vocabulary size V, preprocess overrides)."""
    cfg = copy.deepcopy(cfg)
    for key in ("embed_dim", "vision_cfg", "text_cfg"):
        if key not in cfg:
            raise ConfigError(f"model config lacks required key {key!r}")
    for tower, external, keys in (("vision_cfg", "timm_model_name", ("width", "layers", "patch_size", "image_size")),
                                  ("text_cfg", "hf_model_name", ("width", "heads", "layers"))):
        if not isinstance(cfg[tower], dict):
            raise ConfigError(f"model config: {tower} must be a mapping, got {cfg[tower]!r}")
        # open_clip would fill a missing size with its ViT-B default and build another model than the one meant
        missing = [k for k in keys if k not in cfg[tower]] if not cfg[tower].get(external) else []
        if missing:
            raise ConfigError(f"model config: {tower} lacks {', '.join(repr(k) for k in missing)}")
    check_model_config(cfg)
    cls_cfg = cfg.get("clstext_cfg") or {}
    vocab_size = int(cls_cfg.get("vocab_size", cfg["text_cfg"].get("vocab_size", 49408)))
    preprocess = cfg.get("preprocess_cfg") or {}
    for key in _NON_OPENCLIP_KEYS:
        cfg.pop(key, None)
    # The tower returns tokens only inside SuperCLIP; open_clip's own encode_image expects a tensor.
    cfg["vision_cfg"] = {k: v for k, v in cfg["vision_cfg"].items() if k != "output_tokens"}
    return cfg, vocab_size, preprocess


def openclip_config(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """The open_clip model config equivalent to ours (for export to an open_clip ``local-dir:``)."""
    oc_cfg, _, _ = split_model_config(cfg)
    oc_cfg["custom_text"] = True  # our state dict uses CustomTextCLIP's ``text.*`` layout
    return oc_cfg


class TokenClassifier(nn.Module):
    """Mean of patch tokens -> LayerNorm -> Linear to the vocabulary.

    Args:
        width: channel width of the image tower's tokens.
        vocab_size: V, the tokenizer vocabulary size.
    """

    def __init__(self, width: int, vocab_size: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc = nn.Linear(width, vocab_size)
        nn.init.normal_(self.fc.weight, std=width ** -0.5)
        nn.init.zeros_(self.fc.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, W) patch tokens -> (B, V) logits."""
        return self.fc(self.norm(tokens.mean(dim=1)))


def _tower_width(visual: nn.Module) -> int:
    if isinstance(visual, VisionTransformer):
        return visual.ln_post.normalized_shape[0]
    if isinstance(visual, TimmModel):
        return visual.trunk.num_features
    raise ConfigError(
        f"image tower {type(visual).__name__} is not supported: superclip needs an open_clip "
        "VisionTransformer or a timm tower (ViT, ConvNeXt, ...)"
    )


class SuperCLIP(nn.Module):
    """An open_clip ``CustomTextCLIP`` plus a token-classification head.

    Args:
        clip: the open_clip model (``visual`` + ``text`` towers, ``logit_scale``, optional ``logit_bias``).
        vocab_size: V, outputs of the classification head.
        config: the model config it was built from (kept for checkpoints and export).
    """

    def __init__(self, clip: nn.Module, vocab_size: int, config: Optional[Dict[str, Any]] = None):
        super().__init__()
        self.clip = clip
        self.head = TokenClassifier(_tower_width(clip.visual), vocab_size)
        self.config = copy.deepcopy(config) if config is not None else None
        self.vocab_size = vocab_size
        self.crop_text = True  # run a causal text tower only up to the batch's last end-of-text token
        if isinstance(clip.visual, VisionTransformer):
            clip.visual.output_tokens = True

    @property
    def visual(self) -> nn.Module:
        return self.clip.visual

    @property
    def text(self) -> nn.Module:
        return self.clip.text

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.clip.logit_scale

    @property
    def logit_bias(self) -> Optional[nn.Parameter]:
        return getattr(self.clip, "logit_bias", None)

    @property
    def context_length(self) -> int:
        return self.clip.context_length

    def contrastive_parameters(self) -> List[nn.Parameter]:
        """Parameters that only the contrastive embeddings use: the text tower, the temperature (and bias),
        and the image tower's projection of its pooled output. The classification head never reaches them."""
        visual = self.clip.visual
        projection = [visual.proj] if isinstance(visual, VisionTransformer) and visual.proj is not None else \
            list(visual.head.parameters()) if isinstance(visual, TimmModel) else []
        extra = [p for p in (self.logit_scale, self.logit_bias) if p is not None]
        return [*self.clip.text.parameters(), *extra, *projection]

    def transformer_blocks(self) -> List[nn.Module]:
        """The blocks of both towers (open_clip ``resblocks``, timm ``blocks``): FSDP2's all-gather units."""
        units: List[nn.Module] = []
        for tower in (self.clip.visual, self.clip.text):
            for owner in (getattr(tower, "transformer", None), getattr(tower, "trunk", None)):
                for name in ("resblocks", "blocks"):
                    units.extend(getattr(owner, name, None) or [])
        return units

    def lock_image_tower(self, unlocked_groups: int = 0, freeze_bn_stats: bool = False) -> None:
        """LiT (open_clip's ``--lock-image``): the image tower's parameters stop training, except its last
        ``unlocked_groups`` layer groups (open_clip's grouping); the classification head is ours and still trains."""
        self.clip.lock_image_tower(unlocked_groups=unlocked_groups, freeze_bn_stats=freeze_bn_stats)

    def lock_text_tower(self, unlocked_layers: int = 0, freeze_layer_norm: bool = False) -> None:
        """open_clip's ``--lock-text``: the text tower stops training except its last ``unlocked_layers`` layers;
        its LayerNorms keep training unless ``freeze_layer_norm`` (the flag's meaning in open_clip)."""
        from open_clip.transformer import lock_text_tower

        text = self.clip.text
        if not isinstance(text, TextTransformer):  # open_clip's hub text encoder has its own lock
            text.lock(unlocked_layers, freeze_layer_norm)
            return
        lock_text_tower(self.clip, unlocked_layers)
        if not freeze_layer_norm:
            for module in text.modules():
                if isinstance(module, nn.LayerNorm):
                    module.requires_grad_(True)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.clip.set_grad_checkpointing(enable)

    def image_features_and_tokens(self, images: torch.Tensor):
        """(B, 3, H, W) -> ((B, D) projected features, (B, N, W) patch tokens after the final norm)."""
        visual = self.clip.visual
        if isinstance(visual, VisionTransformer):
            return visual(images)
        trunk = visual.trunk
        feats = trunk.forward_features(images)
        pooled = visual.head(trunk.forward_head(feats))
        if feats.ndim == 4:  # convolutional trunk: (B, C, H, W) -> (B, H*W, C)
            tokens = feats.flatten(2).transpose(1, 2)
        else:
            tokens = feats[:, getattr(trunk, "num_prefix_tokens", 0):]
        return pooled, tokens

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """(B, 3, H, W) float -> (B, D) image embeddings (L2-normalised if ``normalize``)."""
        features = self.image_features_and_tokens(images)[0]
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, token_ids: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """(B, L) int64 -> (B, D) text embeddings (L2-normalised if ``normalize``).

        A causal text tower pooled at the end-of-text token (CLIP's) never lets a token after it change the
        result, so the batch is run only up to its last end-of-text column (rounded up to a multiple of 8):
        captions of ~20 tokens cost a quarter of the 77-position forward and backward, with the same
        features and gradients (up to float rounding). Other towers, and ``crop_text=False``, run all columns.
        """
        length = self._text_length(token_ids)
        if length is None:
            return self.clip.encode_text(token_ids, normalize=normalize)
        tower, ids = self.clip.text, token_ids[:, :length]
        x, _ = tower._embeds(ids)  # token + positional embeddings of the first `length` positions
        x = tower.ln_final(tower.transformer(x, attn_mask=tower.attn_mask[:length, :length]))
        pooled = text_global_pool(x, ids, pool_type=tower.pool_type, eos_token_id=tower.eos_id)
        if isinstance(tower.text_projection, nn.Linear):
            pooled = tower.text_projection(pooled)
        elif tower.text_projection is not None:
            pooled = pooled @ tower.text_projection
        return F.normalize(pooled, dim=-1) if normalize else pooled

    def _text_length(self, token_ids: torch.Tensor) -> Optional[int]:
        """Columns of ``token_ids`` that can change the pooled text feature, or None to run them all."""
        tower = getattr(self.clip, "text", None)
        exact = (self.crop_text and isinstance(tower, TextTransformer) and tower.attn_mask is not None
                 and tower.cls_emb is None and not tower.use_pad_mask and not tower.output_tokens
                 and tower.pool_type in ("argmax", "eos") and token_ids.dim() == 2)
        # compiled: a data-dependent length would recompile the graph; meta tensors (FLOP counts) have no values
        if not exact or torch.compiler.is_compiling() or token_ids.is_meta:
            return None
        pooled_at = token_ids.argmax(dim=-1) if tower.pool_type == "argmax" else \
            (token_ids == tower.eos_id).int().argmax(dim=-1)
        length = -(-(int(pooled_at.max()) + 1) // 8) * 8
        return length if length < token_ids.shape[1] else None

    def token_logits(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, V) classification-head logits."""
        return self.head(self.image_features_and_tokens(images)[1])

    def forward(
        self,
        images: Optional[torch.Tensor] = None,
        token_ids: Optional[torch.Tensor] = None,
        return_token_logits: bool = True,
    ) -> Dict[str, torch.Tensor]:
        """Returns a dict: image_features (B, D), text_features (B, D) (both normalised), logit_scale
        (exp'ed), token_logits (B, V) unless ``return_token_logits=False``, logit_bias for SigLIP models."""
        out: Dict[str, torch.Tensor] = {"logit_scale": self.clip.logit_scale.exp()}
        if images is not None:
            pooled, tokens = self.image_features_and_tokens(images)
            out["image_features"] = F.normalize(pooled, dim=-1)
            if return_token_logits:
                out["token_logits"] = self.head(tokens)
        if token_ids is not None:
            out["text_features"] = self.encode_text(token_ids, normalize=True)
        if self.logit_bias is not None:
            out["logit_bias"] = self.logit_bias
        return out


def compile_towers(model: SuperCLIP) -> SuperCLIP:
    """``torch.compile`` the image tower, the text tower's transformer (or the whole text tower when it is not
    open_clip's) and the head, each in place. ``SuperCLIP.encode_text`` crops the batch to its last end-of-text
    column before the transformer, eagerly; the compiled transformer sees a few lengths (multiples of 8) and
    torch compiles it once more for a dynamic length after the second."""
    model.clip.visual.compile()
    text = model.clip.text
    (text.transformer if isinstance(text, TextTransformer) else text).compile()
    model.head.compile()
    return model


def build_model(cfg: ModelCfg, precision: str = "fp32") -> SuperCLIP:
    """A freshly initialised SuperCLIP from a config (name, JSON path or dict)."""
    full_cfg = resolve_model_config(cfg)
    oc_kwargs, vocab_size, preprocess = split_model_config(full_cfg)
    check_buildable(full_cfg)
    try:
        clip = open_clip.CustomTextCLIP(**oc_kwargs, cast_dtype=open_clip.get_cast_dtype(precision))
    except TypeError as e:
        raise ConfigError(f"model config does not fit open_clip: {e}") from None
    pp = merge_preprocess_dict(asdict(PreprocessCfg()), preprocess)
    pp["size"] = clip.visual.image_size
    open_clip.set_model_preprocess_cfg(clip, pp)
    return SuperCLIP(clip, vocab_size, config=full_cfg)


def get_transforms(model: SuperCLIP, aug_cfg: Optional[Dict[str, Any]] = None):
    """(preprocess_train, preprocess_val): open_clip's transforms for this model's preprocess config."""
    pp = PreprocessCfg(**open_clip.get_model_preprocess_cfg(model.clip))
    return image_transform_v2(pp, is_train=True, aug_cfg=aug_cfg), image_transform_v2(pp, is_train=False)


# tokenizer arguments that would let a config (e.g. one stored in a checkpoint) run code from the hub
_CODE_KWARGS = ("trust_remote_code", "code_revision")


def get_tokenizer(cfg: ModelCfg, trust_remote_code: bool = False):
    """The tokenizer a model config implies: open_clip's CLIP BPE, or an HF tokenizer if the config names one.

    A config is data: its ``tokenizer_kwargs`` cannot turn on ``trust_remote_code``; only the caller can."""
    text_cfg = resolve_model_config(cfg)["text_cfg"]
    context_length = text_cfg.get("context_length", 77)
    if "hf_tokenizer_name" in text_cfg:
        kwargs = {k: v for k, v in (text_cfg.get("tokenizer_kwargs") or {}).items() if k not in _CODE_KWARGS}
        if any(k in _CODE_KWARGS for k in text_cfg.get("tokenizer_kwargs") or {}) and not trust_remote_code:
            log.warning("ignoring %s in the model config's tokenizer_kwargs", ", ".join(_CODE_KWARGS))
        if trust_remote_code:
            kwargs["trust_remote_code"] = True
        return open_clip.tokenizer.HFTokenizer(text_cfg["hf_tokenizer_name"], context_length=context_length, **kwargs)
    return open_clip.SimpleTokenizer(context_length=context_length)
