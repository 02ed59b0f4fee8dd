import json
import logging

import numpy as np
import open_clip
import pytest
import torch

import superclip
from superclip import cli
from superclip.weights import load_token_stats, superclip_to_official

from .conftest import V, assert_text_features_match, random_captions
from .test_loss import NumpyReference


def _official_checkpoint(tiny_cfg, tmp_path, steps=3):
    """A training checkpoint in the released layout (METHOD.md), built by hand: DDP prefix, text_decoder.*, stats."""
    clip = open_clip.CustomTextCLIP(**tiny_cfg)
    g = torch.Generator().manual_seed(11)
    sd = {f"module.{k}": v for k, v in clip.state_dict().items()}
    sd["module.text_decoder.ln_mlp.weight"] = 1 + 0.1 * torch.randn(64, generator=g)
    sd["module.text_decoder.ln_mlp.bias"] = 0.1 * torch.randn(64, generator=g)
    sd["module.text_decoder.text_projection.weight"] = torch.randn(V, 64, generator=g) / 8
    sd["module.text_decoder.text_projection.bias"] = 0.01 * torch.randn(V, generator=g)
    ref = NumpyReference()
    for _ in range(steps):
        ref.step(random_captions(8, g).numpy(), np.zeros((8, V)))
    sd["module.cap_fq"] = torch.from_numpy(ref.df).reshape(1, V)
    sd["module.num_samples"] = torch.tensor([[ref.n]], dtype=torch.float64)
    path = tmp_path / "epoch_1.pt"
    torch.save({"epoch": 1, "name": "superclip_tiny", "state_dict": sd, "optimizer": {}}, path)
    cfg_path = tmp_path / "SuperCLIP-Tiny-official.json"
    official_cfg = dict(tiny_cfg, clstext_cfg={"context_length": 77, "vocab_size": V, "layers": 0, "mlp_ratio": 4})
    official_cfg["vision_cfg"] = dict(tiny_cfg["vision_cfg"], output_tokens=True)
    cfg_path.write_text(json.dumps(official_cfg))
    return path, cfg_path, sd, ref


def test_official_checkpoint_loads_and_continues(tiny_cfg, tmp_path):
    path, cfg_path, sd, ref = _official_checkpoint(tiny_cfg, tmp_path)
    model = superclip.create_model(str(cfg_path), pretrained=str(path)).eval()  # strict: no missing/unexpected
    assert torch.equal(model.head.fc.weight, sd["module.text_decoder.text_projection.weight"])
    assert torch.equal(model.visual.conv1.weight, sd["module.visual.conv1.weight"])
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        _, tokens = model.image_features_and_tokens(images)
        pooled = torch.nn.functional.layer_norm(tokens.mean(1), (64,), sd["module.text_decoder.ln_mlp.weight"],
                                                sd["module.text_decoder.ln_mlp.bias"])
        expected = pooled @ sd["module.text_decoder.text_projection.weight"].T + sd["module.text_decoder.text_projection.bias"]
        torch.testing.assert_close(model.token_logits(images), expected, rtol=1e-5, atol=1e-5)
    # statistics continue in the loss exactly as the released code would
    crit = superclip.SuperCLIPLoss(contrastive="none").train()
    crit.load_state_dict(load_token_stats(path))
    g = torch.Generator().manual_seed(12)
    ids, logits = random_captions(8, g), torch.randn(8, V, dtype=torch.float64, generator=g)
    got = crit({"token_logits": logits}, ids)["class_loss"].item()
    expected_loss, _ = ref.step(ids.numpy(), logits.numpy())
    assert abs(got - expected_loss) < 1e-9 and crit.num_samples.item() == 4
    # and our model maps back to the official layout key for key
    back = superclip_to_official(model, crit)
    assert set(back) == {k[len("module."):] for k in sd}


def test_superclip_checkpoint_round_trip(tiny_cfg, tmp_path):
    model = superclip.build_model(tiny_cfg)
    crit = superclip.SuperCLIPLoss().train()
    crit.update(random_captions(4, torch.Generator().manual_seed(0)))
    path = tmp_path / "ckpt.pt"
    superclip.save_checkpoint(path, model, crit, step=7)
    meta = json.loads((tmp_path / "ckpt.pt.json").read_text())
    assert meta["step"] == 7 and meta["config"] == tiny_cfg and "torch" in meta["versions"]
    loaded = superclip.create_model(pretrained=str(path))  # config read from the checkpoint
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    stats = load_token_stats(path)
    assert torch.equal(stats["cap_fq"], crit.cap_fq) and torch.equal(stats["num_samples"], crit.num_samples)


@pytest.mark.arithmetic
def test_open_clip_weights_load_with_fresh_head(tiny_cfg, tmp_path, caplog):
    clip = open_clip.CLIP(**tiny_cfg).eval()  # open_clip's default (non-custom-text) layout, as released weights
    path = tmp_path / "open_clip.bin"
    torch.save(clip.state_dict(), path)
    with caplog.at_level(logging.WARNING):
        model = superclip.create_model(tiny_cfg, pretrained=str(path)).eval()
    assert "classification head is freshly initialised" in caplog.text
    images, ids = torch.randn(2, 3, 32, 32), torch.randint(0, V, (2, 77))
    with torch.no_grad():
        assert torch.equal(model.encode_image(images), clip.encode_image(images))
    assert_text_features_match(model, clip.encode_text, ids)


@pytest.mark.arithmetic
def test_export_round_trip_through_open_clip_local_dir(tiny_cfg, tmp_path):
    model = superclip.build_model(tiny_cfg).eval()
    ckpt = tmp_path / "ckpt.pt"
    superclip.save_checkpoint(ckpt, model)
    assert cli.main(["export", str(ckpt), str(tmp_path / "export")]) == 0
    oc_model, _, oc_val = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'export'}")
    oc_model.eval()
    _, val = superclip.get_transforms(model)
    from PIL import Image

    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 40, 3), dtype=np.uint8))
    assert torch.equal(val(img), oc_val(img))
    images, ids = torch.stack([val(img), oc_val(img)]), torch.randint(0, V, (2, 77))
    with torch.no_grad():
        assert torch.equal(model.encode_image(images, normalize=True), oc_model.encode_image(images, normalize=True))
    assert_text_features_match(model, lambda t: oc_model.encode_text(t, normalize=True), ids, normalize=True)


def test_mismatched_checkpoint_is_a_clear_error(tiny_cfg, tmp_path):
    path = tmp_path / "ckpt.pt"
    superclip.save_checkpoint(path, superclip.build_model(tiny_cfg))
    other = dict(tiny_cfg, vision_cfg=dict(tiny_cfg["vision_cfg"], width=128))
    with pytest.raises(superclip.CheckpointError, match="does not fit the model config: .*shape mismatches"):
        superclip.create_model(other, pretrained=str(path))


def _cli_error(capsys, argv):
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    return err


def test_cli_user_errors(tiny_cfg, tmp_path, capsys):
    assert "unknown model 'ViT-Nope'" in _cli_error(capsys, ["flops", "ViT-Nope"])
    assert "checkpoint file not found" in _cli_error(capsys, ["export", str(tmp_path / "none.pt"), str(tmp_path / "o")])
    path, _, _, _ = _official_checkpoint(tiny_cfg, tmp_path)
    assert "carries no model config" in _cli_error(capsys, ["export", str(path), str(tmp_path / "o")])
    assert "does not fit the model config" in _cli_error(
        capsys, ["export", str(path), str(tmp_path / "o"), "--model", "SuperCLIP-Tiny"])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    assert "cannot read checkpoint" in _cli_error(capsys, ["export", str(garbage), str(tmp_path / "o"), "--model", "SuperCLIP-Tiny"])
