"""Export to ONNX: ``image_encoder.onnx`` (pixel_values (B, 3, H, W) float32 -> image_embeds (B, D),
token_logits (B, V): the tower and the head) and ``text_encoder.onnx`` (input_ids (B, L) int64 -> text_embeds
(B, D)), batch dimension dynamic; embeddings unnormalised, as ``encode_image`` / ``encode_text``. ``onnx.json``
beside them has what a runtime needs to use them: preprocessing, context length, logit scale (and bias).
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path

import open_clip
import torch
from torch import nn

from ..errors import ConfigError
from ..model import SuperCLIP
from ..strict_json import dumps

log = logging.getLogger(__name__)


class _ImageEncoder(nn.Module):
    def __init__(self, model: SuperCLIP):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor):
        pooled, tokens = self.model.image_features_and_tokens(pixel_values)
        return pooled, self.model.head(tokens)


class _TextEncoder(nn.Module):
    def __init__(self, model: SuperCLIP):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor):
        return self.model.encode_text(input_ids)


def export_onnx(model: SuperCLIP, out_dir, opset: int = 18) -> Path:
    """Write the two encoders and ``onnx.json`` into ``out_dir``."""
    try:
        import onnx  # noqa: F401  (torch.onnx needs it; say so before tracing)
        import onnxscript  # noqa: F401
    except ImportError:
        raise ConfigError("--format onnx needs the onnx and onnxscript packages: pip install onnx onnxscript") \
            from None
    model = copy.deepcopy(model).float().eval()
    model.crop_text = False  # all L columns: the exported graph takes any batch of token ids
    size = model.visual.image_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with torch.no_grad():
            torch.onnx.export(_ImageEncoder(model).eval(), (torch.randn(2, 3, *size),), str(out / "image_encoder.onnx"),
                              input_names=["pixel_values"], output_names=["image_embeds", "token_logits"],
                              dynamic_shapes={"pixel_values": {0: batch}}, dynamo=True, opset_version=opset,
                              verbose=False)
            ids = torch.zeros(2, model.context_length, dtype=torch.long)
            torch.onnx.export(_TextEncoder(model).eval(), (ids,), str(out / "text_encoder.onnx"),
                              input_names=["input_ids"], output_names=["text_embeds"],
                              dynamic_shapes={"input_ids": {0: batch}}, dynamo=True, opset_version=opset, verbose=False)
        meta = {"image_size": list(size), "context_length": model.context_length, "vocab_size": model.vocab_size,
                "logit_scale": float(model.logit_scale.detach().exp().reshape(())),
                "logit_bias": None if model.logit_bias is None else float(model.logit_bias.detach().reshape(())),
                "preprocess_cfg": open_clip.get_model_preprocess_cfg(model.clip), "config": model.config}
        (out / "onnx.json").write_text(dumps(meta, indent=2) + "\n")
    except OSError as e:
        raise ConfigError(f"cannot write to {out}: {e.strerror or e}") from None
    return out
