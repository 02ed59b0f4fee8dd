"""Export to transformers' ``CLIPModel`` layout (``config.json`` + ``model.safetensors``), for the open_clip
towers transformers can express: a ``VisionTransformer`` pooled at its class token and a causal
``TextTransformer`` pooled at the end-of-text token, plain pre-norm blocks (no layer scale, no q/k norm),
GELU or QuickGELU. ``CLIPModel.from_pretrained(OUT)`` and ``CLIPVisionModel.from_pretrained(OUT)`` (e.g. as a
LLaVA vision tower) then give our embeddings. Anything else is refused with the reason.

The head (``superclip_head.safetensors``), CLIPImageProcessor settings (``preprocessor_config.json``) and, for
a model on open_clip's CLIP BPE, that tokenizer as transformers' ``CLIPTokenizer`` (the vocabulary of the
``openai/clip-vit-*`` tokenizers) are written beside them, so ``CLIPProcessor.from_pretrained(OUT)`` works.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import open_clip
import torch
from open_clip.transformer import QuickGELU, ResidualAttentionBlock, TextTransformer, VisionTransformer
from torch import nn

from ..errors import ConfigError
from ..model import SuperCLIP, resolve_model_config

log = logging.getLogger(__name__)


def _unsupported(why: str):
    raise ConfigError(f"--format transformers: {why}; transformers' CLIPModel cannot express it "
                      "(export the open_clip folder or --format onnx instead)")


def _blocks(tower: nn.Module, name: str) -> dict:
    """Checks every block of ``tower.transformer`` and returns its shared settings (width, heads, MLP, act)."""
    blocks = list(tower.transformer.resblocks)
    first = blocks[0]
    for b in blocks:
        if type(b) is not ResidualAttentionBlock or not isinstance(b.attn, nn.MultiheadAttention):
            _unsupported(f"the {name} tower uses {type(b).__name__} blocks (custom attention)")
        if not (isinstance(b.ls_1, nn.Identity) and isinstance(b.ls_2, nn.Identity)):
            _unsupported(f"the {name} tower uses layer scale")
        for norm in (b.ln_1, b.ln_2):
            if not isinstance(norm, nn.LayerNorm) or norm.eps != first.ln_1.eps:
                _unsupported(f"the {name} tower's blocks use {type(norm).__name__}")
        if b.attn.in_proj_bias is None or b.attn.out_proj.bias is None:
            _unsupported(f"the {name} tower's attention has no biases")
    act = first.mlp.gelu
    if isinstance(act, QuickGELU):
        hidden_act = "quick_gelu"
    elif isinstance(act, nn.GELU) and act.approximate == "none":
        hidden_act = "gelu"
    else:
        _unsupported(f"the {name} tower's MLP activation is {act}")
    return {"hidden_size": first.ln_1.normalized_shape[0], "num_attention_heads": first.attn.num_heads,
            "intermediate_size": first.mlp.c_fc.out_features, "num_hidden_layers": len(blocks),
            "hidden_act": hidden_act, "layer_norm_eps": first.ln_1.eps}


def _block_weights(tower: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    out = {}
    for i, b in enumerate(tower.transformer.resblocks):
        p = f"{prefix}.encoder.layers.{i}."
        for part, w, bias in zip("qkv", b.attn.in_proj_weight.chunk(3), b.attn.in_proj_bias.chunk(3)):
            out[p + f"self_attn.{part}_proj.weight"], out[p + f"self_attn.{part}_proj.bias"] = w, bias
        pairs = (("self_attn.out_proj", b.attn.out_proj), ("layer_norm1", b.ln_1), ("layer_norm2", b.ln_2),
                 ("mlp.fc1", b.mlp.c_fc), ("mlp.fc2", b.mlp.c_proj))
        for name, module in pairs:
            out[p + name + ".weight"], out[p + name + ".bias"] = module.weight, module.bias
    return out


def _vision(visual: nn.Module):
    if not isinstance(visual, VisionTransformer):
        _unsupported(f"the image tower is {type(visual).__name__} (transformers' CLIP has a ViT only)")
    if visual.attn_pool is not None or visual.pool_type != "tok":
        pool = getattr(visual, "attn_pool_type", "") or visual.pool_type
        _unsupported(f"the image tower pools with {pool!r}, not its class token")
    if not isinstance(visual.ln_pre, nn.LayerNorm):
        _unsupported("the image tower has no pre-norm (no_ln_pre)")
    if visual.conv1.bias is not None or visual.proj is None or not isinstance(visual.ln_post, nn.LayerNorm):
        _unsupported("the image tower's patch embedding, final norm or projection differs from CLIP's")
    if visual.grid_size[0] != visual.grid_size[1] or visual.patch_size[0] != visual.patch_size[1]:
        _unsupported("the image tower is not square")
    config = {**_blocks(visual, "image"), "image_size": visual.image_size[0], "patch_size": visual.patch_size[0],
              "num_channels": visual.conv1.in_channels}
    sd = {"vision_model.embeddings.class_embedding": visual.class_embedding,
          "vision_model.embeddings.patch_embedding.weight": visual.conv1.weight,
          "vision_model.embeddings.position_embedding.weight": visual.positional_embedding,
          "vision_model.pre_layrnorm.weight": visual.ln_pre.weight,
          "vision_model.pre_layrnorm.bias": visual.ln_pre.bias,
          "vision_model.post_layernorm.weight": visual.ln_post.weight,
          "vision_model.post_layernorm.bias": visual.ln_post.bias,
          "visual_projection.weight": visual.proj.T, **_block_weights(visual, "vision_model")}
    return config, sd


def _text(text: nn.Module):
    if not isinstance(text, TextTransformer):
        _unsupported(f"the text tower is {type(text).__name__}")
    if text.cls_emb is not None or text.attn_mask is None or text.use_pad_mask or \
            text.pool_type not in ("argmax", "eos"):
        _unsupported(f"the text tower is not CLIP's causal one pooled at end-of-text (pool {text.pool_type!r})")
    if not isinstance(text.ln_final, nn.LayerNorm):
        _unsupported("the text tower's final norm is not a LayerNorm")
    proj = text.text_projection
    if isinstance(proj, nn.Linear):
        if proj.bias is not None:
            _unsupported("the text projection has a bias")
        proj_weight = proj.weight
    elif proj is not None:
        proj_weight = proj.T
    else:
        _unsupported("the text tower has no projection")
    # eos_token_id 2 is transformers' rule for "pool at the argmax token id", open_clip's 'argmax'
    config = {**_blocks(text, "text"), "vocab_size": text.vocab_size, "max_position_embeddings": text.context_length,
              "eos_token_id": 2 if text.pool_type == "argmax" else text.eos_id, "bos_token_id": 49406,
              "pad_token_id": 0}
    sd = {"text_model.embeddings.token_embedding.weight": text.token_embedding.weight,
          "text_model.embeddings.position_embedding.weight": text.positional_embedding,
          "text_model.final_layer_norm.weight": text.ln_final.weight,
          "text_model.final_layer_norm.bias": text.ln_final.bias,
          "text_projection.weight": proj_weight, **_block_weights(text, "text_model")}
    return config, sd


def to_transformers(model: SuperCLIP):
    """Our model as a transformers ``CLIPModel`` (same image and text embeddings); refuses what it cannot express."""
    try:
        from transformers import CLIPConfig, CLIPModel
    except ImportError:
        raise ConfigError("--format transformers needs the transformers package: pip install transformers") from None
    clip = model.clip
    if getattr(clip, "logit_bias", None) is not None:
        _unsupported("the model has a SigLIP logit bias")
    vision_cfg, vision_sd = _vision(clip.visual)
    text_cfg, text_sd = _text(clip.text)
    embed_dim = vision_sd["visual_projection.weight"].shape[0]
    config = CLIPConfig(text_config=text_cfg, vision_config=vision_cfg, projection_dim=embed_dim,
                        logit_scale_init_value=float(clip.logit_scale.detach().reshape(())))
    hf = CLIPModel(config).eval()
    sd = {k: v.detach().float().clone() for k, v in {**vision_sd, **text_sd}.items()}
    sd["logit_scale"] = clip.logit_scale.detach().float().reshape(hf.logit_scale.shape).clone()
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:  # a mapping bug, not a user mistake
        raise RuntimeError(f"transformers mapping incomplete: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return hf


def write_clip_tokenizer(model: SuperCLIP, out: Path) -> bool:
    """open_clip's CLIP BPE into ``out`` as transformers' ``CLIPTokenizer`` files (``vocab.json``, ``merges.txt``
    and what ``save_pretrained`` adds): the same ids up to end-of-text; it pads with end-of-text, as the openai
    tokenizers on the Hub do. False (nothing written) where the model has another tokenizer."""
    from transformers import CLIPTokenizer

    if "hf_tokenizer_name" in resolve_model_config(model.config)["text_cfg"]:  # not ours to build (or fetch)
        return False
    bpe = open_clip.SimpleTokenizer()
    if len(bpe.encoder) != model.clip.text.vocab_size:
        return False
    # open_clip names the two special tokens <start_of_text> / <end_of_text>, transformers <|startoftext|> / ...
    names = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    (out / "vocab.json").write_text(json.dumps({names.get(t, t): i for t, i in bpe.encoder.items()}))
    merges = sorted(bpe.bpe_ranks, key=bpe.bpe_ranks.get)
    (out / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    CLIPTokenizer(str(out / "vocab.json"), str(out / "merges.txt"),
                  model_max_length=model.clip.text.context_length).save_pretrained(out)
    return True


def export_transformers(model: SuperCLIP, out_dir, stats=None) -> Path:
    """``OUT/config.json`` + ``model.safetensors`` (CLIPModel), ``preprocessor_config.json``, the tokenizer's
    files and the head file."""
    from transformers import CLIPImageProcessor

    from .folder import write_head

    hf = to_transformers(model)
    out = Path(out_dir)
    try:
        hf.save_pretrained(out)
        pp = open_clip.get_model_preprocess_cfg(model.clip)
        size = pp["size"] if isinstance(pp["size"], int) else pp["size"][0]
        resample = {"bicubic": 3, "bilinear": 2, "nearest": 0}.get(pp.get("interpolation", "bicubic"), 3)
        CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                           image_mean=list(pp["mean"]), image_std=list(pp["std"]), resample=resample,
                           do_center_crop=pp.get("resize_mode", "shortest") == "shortest").save_pretrained(out)
        if not write_clip_tokenizer(model, out):
            log.warning("the model's tokenizer is not open_clip's CLIP BPE: no tokenizer files written; save the "
                        "transformers tokenizer it names into %s to use CLIPProcessor", out)
        write_head(model, out, stats)
    except OSError as e:
        raise ConfigError(f"cannot write to {out}: {e.strerror or e}") from None
    return out
