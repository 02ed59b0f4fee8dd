import copy
import json

import open_clip
import pytest
import timm
import torch
import torch.nn.functional as F

import superclip
from superclip.model import resolve_model_config

from .conftest import V, assert_text_features_match, random_captions


def _manual_vit_tokens(visual, images):
    """Patch tokens of an open_clip VisionTransformer written out step by step: embed, blocks, ln_post, no CLS."""
    x = visual.conv1(images).flatten(2).transpose(1, 2)
    cls = visual.class_embedding.expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding
    x = visual.transformer(visual.ln_pre(x))
    return visual.ln_post(x)[:, 1:]


def _manual_head(head, tokens):
    pooled = tokens.mean(dim=1)
    normed = F.layer_norm(pooled, (pooled.shape[-1],), head.norm.weight, head.norm.bias, eps=1e-5)
    return normed @ head.fc.weight.T + head.fc.bias


def test_head_is_layernorm_linear_on_mean_patch_tokens(tiny_cfg):
    model = superclip.build_model(tiny_cfg).eval()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = _manual_head(model.head, _manual_vit_tokens(model.visual, images))
        got = model.token_logits(images)
    assert got.shape == (3, V)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_head_init_matches_method(tiny_cfg):
    model = superclip.build_model(tiny_cfg)
    w = model.head.fc.weight
    assert w.shape == (V, 64)
    assert torch.all(model.head.fc.bias == 0)
    assert abs(w.std().item() - 64 ** -0.5) < 0.01 * 64 ** -0.5 * 10  # 3.2M samples: within 10 %
    assert abs(w.mean().item()) < 1e-3


@pytest.mark.arithmetic
def test_embeddings_equal_plain_open_clip(tiny_cfg):
    model = superclip.build_model(tiny_cfg).eval()
    plain = open_clip.CustomTextCLIP(**tiny_cfg).eval()
    plain.load_state_dict(model.clip.state_dict())
    images, ids = torch.randn(2, 3, 32, 32), torch.randint(0, V, (2, 77))
    with torch.no_grad():
        assert torch.equal(model.encode_image(images, normalize=True), plain.encode_image(images, normalize=True))
        assert_text_features_match(model, lambda t: plain.encode_text(t, normalize=True), ids, normalize=True)
        out = model(images, ids)
        assert torch.equal(out["image_features"], plain.encode_image(images, normalize=True))
    assert set(out) == {"image_features", "text_features", "logit_scale", "token_logits"}
    assert "token_logits" not in model(images, ids, return_token_logits=False)


@pytest.mark.arithmetic
def test_text_tower_runs_only_to_the_last_end_of_text_with_the_same_features_and_gradients(tiny_cfg):
    model = superclip.build_model(tiny_cfg).train()
    ids = random_captions(6, torch.Generator().manual_seed(1))  # <= 14 tokens incl. SOT and EOT
    assert model._text_length(ids) == 16
    results = []
    for crop in (True, False):
        model.zero_grad()
        model.crop_text = crop
        feats = model.encode_text(ids, normalize=True)
        (feats * torch.linspace(-1, 1, feats.numel()).view_as(feats)).sum().backward()
        results.append((feats.detach(), {n: p.grad.clone() for n, p in model.clip.text.named_parameters()}))
    (cropped, g_crop), (full, g_full) = results
    torch.testing.assert_close(cropped, full, rtol=1e-5, atol=1e-6)
    assert g_crop.keys() == g_full.keys()
    for name in g_full:
        assert (g_crop[name] - g_full[name]).abs().max() <= 1e-5 * g_full[name].abs().max(), name  # rounding
    assert torch.count_nonzero(g_full["positional_embedding"][16:]) == 0  # no position past EOT ever mattered
    # a row that fills the context, and a bidirectional tower, run whole
    full_row = ids.clone()
    full_row[0, 76] = ids.max() + 1
    model.crop_text = True
    assert model._text_length(full_row) is None
    cfg = copy.deepcopy(tiny_cfg)
    cfg["text_cfg"]["no_causal_mask"] = True
    assert superclip.build_model(cfg)._text_length(ids) is None


def test_patch_dropout_head_sees_kept_tokens(tiny_cfg):
    tiny_cfg["vision_cfg"]["patch_dropout"] = 0.5
    model = superclip.build_model(tiny_cfg)
    images = torch.randn(2, 3, 32, 32)
    model.train()
    _, tokens = model.image_features_and_tokens(images)
    assert tokens.shape == (2, 8, 64)  # 16 patches, half kept
    model.eval()
    with torch.no_grad():
        _, tokens = model.image_features_and_tokens(images)
        expected = _manual_head(model.head, _manual_vit_tokens(model.visual, images))
        torch.testing.assert_close(model.token_logits(images), expected, rtol=1e-5, atol=1e-5)
    assert tokens.shape == (2, 16, 64)


@pytest.fixture
def small_timm(monkeypatch):
    """Shrink timm models built by open_clip's TimmModel (open_clip passes no architecture kwargs)."""
    real = timm.create_model
    extra = {
        "vit_base_patch16_siglip_224": dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2),
        "convnext_base": dict(depths=(1, 1, 1, 1), dims=(16, 32, 48, 64)),
    }
    monkeypatch.setattr(timm, "create_model", lambda name, **kw: real(name, **{**extra.get(name, {}), **kw}))


def test_timm_siglip_vit_without_cls(small_timm):
    cfg = resolve_model_config("ViT-B-16-SigLIP")
    cfg["embed_dim"] = 64
    cfg["vision_cfg"]["image_size"] = 32
    cfg["text_cfg"].update(width=64, heads=2, layers=1)
    model = superclip.build_model(cfg).eval()
    trunk = model.visual.trunk
    assert trunk.num_prefix_tokens == 0
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images), model.visual(images), rtol=0, atol=0)
        tokens = trunk.forward_features(images)
        assert tokens.shape == (2, 16, 64)
        torch.testing.assert_close(model.token_logits(images), _manual_head(model.head, tokens), rtol=1e-5, atol=1e-5)
    assert model.logit_bias is not None and "logit_bias" in model(images, None)


def test_timm_convnext_spatial_mean(small_timm):
    cfg = resolve_model_config("convnext_base")
    cfg["vision_cfg"]["image_size"] = 64
    cfg["text_cfg"].update(width=64, heads=2, layers=1)
    model = superclip.build_model(cfg).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images), model.visual(images), rtol=0, atol=0)
        fmap = model.visual.trunk.forward_features(images)  # (B, C, H, W)
        assert fmap.shape == (2, 64, 2, 2)
        pooled = fmap.mean(dim=(2, 3))
        expected = F.layer_norm(pooled, (64,), model.head.norm.weight, model.head.norm.bias) @ model.head.fc.weight.T
        torch.testing.assert_close(model.token_logits(images), expected + model.head.fc.bias, rtol=1e-5, atol=1e-5)


def test_config_sources(tmp_path, tiny_cfg):
    assert "SuperCLIP-ViT-B-16" in superclip.list_models() and "SuperCLIP-ViT-L-16" in superclip.list_models()
    b16 = resolve_model_config("SuperCLIP-ViT-B-16")
    assert b16["vision_cfg"] == {"image_size": 224, "layers": 12, "width": 768, "patch_size": 16, "output_tokens": True}
    assert b16["clstext_cfg"]["vocab_size"] == 49408
    # the official JSON format as-is, from a file
    official = dict(tiny_cfg, clstext_cfg={"context_length": 77, "vocab_size": V, "layers": 0, "mlp_ratio": 4})
    official["vision_cfg"] = dict(tiny_cfg["vision_cfg"], output_tokens=True)
    path = tmp_path / "official.json"
    path.write_text(json.dumps(official))
    model = superclip.build_model(str(path))
    assert model.vocab_size == V and model.head.fc.out_features == V
    # open_clip names resolve too
    assert resolve_model_config("ViT-B-32")["vision_cfg"]["patch_size"] == 32


def test_config_errors(tmp_path):
    with pytest.raises(superclip.ConfigError, match="unknown model 'ViT-Nope'"):
        resolve_model_config("ViT-Nope")
    with pytest.raises(superclip.ConfigError, match="not found"):
        resolve_model_config(str(tmp_path / "missing.json"))
    with pytest.raises(superclip.ConfigError, match="lacks required key 'text_cfg'"):
        superclip.build_model({"embed_dim": 8, "vision_cfg": {}})


def test_tokenizer_and_transforms(tiny_cfg):
    tok = superclip.get_tokenizer(tiny_cfg)
    ids = tok(["a red circle"])
    assert ids.shape == (1, 77) and ids[0, 0] == 49406 and 49407 in ids[0].tolist()
    model = superclip.build_model(tiny_cfg)
    _, val = superclip.get_transforms(model)
    from PIL import Image

    assert val(Image.new("RGB", (50, 40))).shape == (3, 32, 32)
