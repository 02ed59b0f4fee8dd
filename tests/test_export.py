"""Where models go and come from: the exported folder (open_clip local-dir / hub layout + head), hf-hub: through a
local hub cache (offline), --push-to-hub up to the upload call, transformers' CLIPModel and ONNX."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from safetensors.torch import load_file

import superclip
from superclip import cli
from superclip.weights import superclip_to_official

from .conftest import TINY_CFG, V, assert_text_features_match

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _trained_checkpoint(tmp_path: Path):
    """A run folder with a checkpoint (non-trivial head and IDF statistics) and an evaluation in metrics.jsonl."""
    model = superclip.build_model(TINY_CFG).eval()
    with torch.no_grad():
        for p in model.head.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    criterion = superclip.SuperCLIPLoss(vocab_size=V)
    criterion.cap_fq += torch.rand_like(criterion.cap_fq) * 5
    criterion.num_samples += 7
    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "step_4.pt"
    ckpt.parent.mkdir(parents=True)
    superclip.save_checkpoint(ckpt, model, criterion, step=4,
                              train_config={"train_data": "my.tsv", "epochs": 2, "batch_size": 8, "lr": 1e-3})
    (run / "metrics.jsonl").write_text(json.dumps({"step": 4, "loss": 3.0}) + "\n"
                                       + json.dumps({"step": 4, "epoch": 0, "retrieval_mean_recall@1": 0.625}) + "\n")
    return model, criterion, ckpt


def _inputs(n=3, size=32):
    torch.manual_seed(1)
    return torch.randn(n, 3, size, size), torch.randint(0, V - 1, (n, 77))


@pytest.mark.arithmetic
def test_export_folder_loads_in_open_clip_and_superclip_with_the_head(tmp_path):
    model, criterion, ckpt = _trained_checkpoint(tmp_path)
    out = tmp_path / "export"
    assert cli.main(["export", str(ckpt), str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md", "open_clip_config.json", "open_clip_model.safetensors", "superclip_head.safetensors"]
    # safetensors round trip: every tensor equal to the model's
    weights = load_file(out / "open_clip_model.safetensors")
    assert weights.keys() == model.clip.state_dict().keys()
    assert all(torch.equal(weights[k], v) for k, v in model.clip.state_dict().items())
    head = load_file(out / "superclip_head.safetensors")
    assert torch.equal(head["head.fc.weight"], model.head.fc.weight)
    assert torch.equal(head["loss.cap_fq"], criterion.cap_fq) and head["loss.cap_fq"].dtype == torch.float64

    images, ids = _inputs()
    oc_model, _, oc_val = open_clip.create_model_and_transforms(f"local-dir:{out}")
    oc_model.eval()
    with torch.no_grad():
        assert torch.equal(oc_model.encode_image(images), model.encode_image(images))
    assert_text_features_match(model, oc_model.encode_text, ids)
    for name in (str(out), f"local-dir:{out}"):
        loaded = superclip.create_model(name).eval()
        assert loaded.config == model.config
        with torch.no_grad():
            assert torch.equal(loaded.token_logits(images), model.token_logits(images))
            assert torch.equal(loaded.encode_image(images), model.encode_image(images))
    stats = superclip.load_token_stats(str(out))
    assert torch.equal(stats["cap_fq"], criterion.cap_fq) and torch.equal(stats["num_samples"], criterion.num_samples)
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: open_clip\n")
    assert '"embed_dim": 32' in card and "train_data: `my.tsv`" in card and "steps: `4`" in card
    assert "| retrieval_mean_recall@1 | 0.6250 |" in card


def test_tag_on_the_exported_folder_equals_tag_on_the_checkpoint(tmp_path, capsys):
    model, _, ckpt = _trained_checkpoint(tmp_path)
    out = tmp_path / "export"
    assert cli.main(["export", str(ckpt), str(out)]) == 0
    from PIL import Image

    img = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(img)
    capsys.readouterr()
    assert cli.main(["tag", str(img), "--pretrained", str(out), "--top-k", "3", "--device", "cpu"]) == 0
    from_folder = capsys.readouterr().out
    assert cli.main(["tag", str(img), "--pretrained", str(ckpt), "--top-k", "3", "--device", "cpu"]) == 0
    assert capsys.readouterr().out == from_folder and from_folder.count("(") == 3


@pytest.mark.arithmetic
def test_open_clip_folder_without_head_loads_with_a_fresh_head(tmp_path, caplog):
    clip = open_clip.CLIP(**TINY_CFG).eval()  # open_clip's own layout, as open_clip hub repositories hold it
    out = tmp_path / "oc"
    out.mkdir()
    torch.save(clip.state_dict(), out / "open_clip_pytorch_model.bin")
    (out / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CFG, "preprocess_cfg": {}}))
    model = superclip.create_model(f"local-dir:{out}").eval()
    assert "classification head is freshly initialised" in caplog.text
    images, ids = _inputs()
    with torch.no_grad():
        assert torch.equal(model.encode_image(images), clip.encode_image(images))
    assert_text_features_match(model, clip.encode_text, ids)


def _hub_cache(root: Path, repo: str, files: dict) -> None:
    """huggingface_hub's cache layout: models--ORG--REPO/{refs/main, snapshots/COMMIT/FILES}."""
    folder = root / ("models--" + repo.replace("/", "--"))
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(COMMIT)
    snap = folder / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    for name, src in files.items():
        shutil.copy(src, snap / name)


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    model, criterion, ckpt = _trained_checkpoint(tmp_path)
    out = tmp_path / "export"
    superclip.export_folder(model, out, {"cap_fq": criterion.cap_fq, "num_samples": criterion.num_samples})
    cache = tmp_path / "hub"
    _hub_cache(cache, "org/superclip-tiny", {p.name: p for p in out.iterdir()})
    official = tmp_path / "epoch_2.pt"
    sd = superclip_to_official(model, criterion)
    torch.save({"epoch": 2, "name": "release", "state_dict": {"module." + k: v for k, v in sd.items()}}, official)
    _hub_cache(cache, "authors/SuperCLIP-release", {"epoch_2.pt": official, "README.md": out / "README.md"})
    return model, criterion, cache


def test_hf_hub_names_resolve_offline_through_the_cache(offline_cache):
    model, criterion, cache = offline_cache
    images, _ = _inputs()
    with torch.no_grad():
        want = model.token_logits(images)
        # open_clip layout (+ our head)
        loaded = superclip.create_model("hf-hub:org/superclip-tiny", cache_dir=str(cache)).eval()
        assert torch.equal(loaded.token_logits(images), want)
        # a repository of training checkpoints: the file named, or the only checkpoint file found
        for name in ("hf-hub:authors/SuperCLIP-release/epoch_2.pt", "hf-hub:authors/SuperCLIP-release"):
            loaded = superclip.create_model(TINY_CFG, pretrained=name, cache_dir=str(cache)).eval()
            assert torch.equal(loaded.token_logits(images), want)
    with pytest.raises(superclip.ConfigError, match="file 'epoch_9.pt' not found .*offline mode"):
        superclip.create_model(TINY_CFG, pretrained="hf-hub:authors/SuperCLIP-release/epoch_9.pt",
                               cache_dir=str(cache))
    with pytest.raises(superclip.ConfigError, match="no open_clip_config.json"):
        superclip.create_model(TINY_CFG, pretrained="hf-hub:nobody/nothing", cache_dir=str(cache))


def test_cli_hf_hub_offline_subprocess(offline_cache, tmp_path):
    """The environment as a user sets it: HF_HUB_OFFLINE=1, HF_HUB_CACHE; train starts from an hf-hub: name."""
    model, criterion, cache = offline_cache
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(TINY_CFG))
    proc = subprocess.run([sys.executable, "-m", "superclip", "train", "--dataset-type", "synthetic",
                           "--model", str(cfg), "--pretrained", "hf-hub:org/superclip-tiny", "--train-num-samples",
                           "8", "--batch-size", "4", "--max-steps", "1", "--lr", "1e-9", "--logs", str(tmp_path / "l"),
                           "--name", "ft", "--device", "cpu", "--no-progress"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    ckpt = superclip.weights.read_checkpoint(tmp_path / "l" / "ft" / "checkpoints" / "epoch_latest.pt")
    # the IDF statistics came with the head: 7 earlier steps + this one
    assert ckpt["loss"]["num_samples"].item() == criterion.num_samples.item() + 1


def test_push_to_hub_uploads_the_folder(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    calls = []
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo",
                        lambda self, repo_id, **kw: calls.append(("create", repo_id, kw)))

    def upload(self, repo_id, folder_path, **kw):
        calls.append(("upload", repo_id, sorted(os.listdir(folder_path))))
        return type("Info", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/abc"})()

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload)
    _, _, ckpt = _trained_checkpoint(tmp_path)
    assert cli.main(["export", str(ckpt), str(tmp_path / "out"), "--push-to-hub", "me/tiny", "--private"]) == 0
    assert calls == [("create", "me/tiny", {"private": True, "exist_ok": True}),
                     ("upload", "me/tiny", ["README.md", "open_clip_config.json", "open_clip_model.safetensors",
                                            "superclip_head.safetensors"])]
    assert "https://huggingface.co/me/tiny/commit/abc" in capsys.readouterr().out


def _features(out):
    return out if isinstance(out, torch.Tensor) else out.pooler_output  # transformers 4 / 5


VIT_B16 = {"embed_dim": 512,
           "vision_cfg": {"image_size": 224, "patch_size": 16, "width": 768, "layers": 12},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12}}


@pytest.mark.parametrize("cfg", [TINY_CFG, VIT_B16], ids=["tiny", "vit-b-16"])
@pytest.mark.arithmetic
def test_transformers_clip_gives_our_embeddings(cfg, tmp_path):
    from transformers import CLIPModel

    from superclip.export.to_transformers import to_transformers

    torch.manual_seed(0)
    model = superclip.build_model(cfg).eval()
    size = cfg["vision_cfg"]["image_size"]
    images, ids = torch.randn(2, 3, size, size), open_clip.SimpleTokenizer()(["a red circle", "two blue squares"])
    hf = to_transformers(model)
    with torch.no_grad():
        assert (_features(hf.get_image_features(pixel_values=images)) - model.encode_image(images)).abs().max() <= 1e-4
        assert (_features(hf.get_text_features(input_ids=ids)) - model.encode_text(ids)).abs().max() <= 1e-4
        assert torch.allclose(hf.logit_scale, model.logit_scale)
    if cfg is TINY_CFG:  # through the folder, as users load it
        from transformers import CLIPVisionModel

        assert cli.main(["export", str(_save(model, tmp_path)), str(tmp_path / "hf"), "--format", "transformers"]) == 0
        loaded = CLIPModel.from_pretrained(tmp_path / "hf").eval()
        vision = CLIPVisionModel.from_pretrained(tmp_path / "hf").eval()
        with torch.no_grad():
            assert (_features(loaded.get_image_features(pixel_values=images)) -
                    model.encode_image(images)).abs().max() <= 1e-4
            assert (_features(loaded.get_text_features(input_ids=ids)) - model.encode_text(ids)).abs().max() <= 1e-4
            # the vision tower alone (LLaVA's use): its tokens after the final norm are the ones our head reads
            hidden = vision(pixel_values=images).last_hidden_state
            tokens = getattr(vision, "vision_model", vision).post_layernorm(hidden[:, 1:])  # transformers 4 / 5
            assert (model.head(tokens) - model.token_logits(images)).abs().max() <= 1e-4
        assert (tmp_path / "hf" / "superclip_head.safetensors").is_file()
        assert (tmp_path / "hf" / "preprocessor_config.json").is_file()
        # the tokenizer travels too: CLIPProcessor's ids are open_clip's up to end-of-text, and give our features
        from transformers import CLIPProcessor

        captions = ["a red circle and a blue square on grey", "Diagonal stripes, printed in GREEN ink!", "x",
                    "two  yellow triangles; a photo of it's 3 corners."]
        tokenizer = CLIPProcessor.from_pretrained(tmp_path / "hf").tokenizer
        theirs = tokenizer(captions, padding="max_length", max_length=77, return_tensors="pt")["input_ids"]
        ours = superclip.get_tokenizer(model.config)(captions)
        for a, b in zip(ours, theirs):
            end = int((a == 49407).nonzero()[0]) + 1
            assert a[:end].tolist() == b[:end].tolist() and end > 2
        with torch.no_grad():
            assert (_features(loaded.get_text_features(input_ids=theirs)) - model.encode_text(ours)).abs().max() <= 1e-4


def _save(model, tmp_path):
    path = tmp_path / "m.pt"
    superclip.save_checkpoint(path, model)
    return path


@pytest.mark.parametrize("change,why", [
    ({"vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "ls_init_value": 0.1}},
     "layer scale"),
    ({"vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "pool_type": "avg"}},
     "pools with 'avg'"),
    ({"text_cfg": {"context_length": 77, "vocab_size": V, "width": 64, "heads": 2, "layers": 2,
                   "no_causal_mask": True}}, "not CLIP's causal one"),
])
def test_transformers_refuses_what_it_cannot_express(change, why, tmp_path, capsys):
    path = _save(superclip.build_model({**TINY_CFG, **change}), tmp_path)
    assert cli.main(["export", str(path), str(tmp_path / "hf"), "--format", "transformers"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and why in err and "cannot express" in err


def test_transformers_tokenizer_only_for_open_clips_bpe(tmp_path):
    from transformers import CLIPTokenizer

    from superclip.export.to_transformers import write_clip_tokenizer

    assert write_clip_tokenizer(superclip.build_model(TINY_CFG), tmp_path)
    assert len(CLIPTokenizer.from_pretrained(tmp_path)) == V
    other = {**TINY_CFG, "text_cfg": {**TINY_CFG["text_cfg"], "vocab_size": 1000}}  # not that vocabulary
    assert not write_clip_tokenizer(superclip.build_model(other), tmp_path / "other")
    assert not (tmp_path / "other").exists()
    # a model that names a transformers tokenizer gets none written, and the export does not fetch that one
    named = {**TINY_CFG, "text_cfg": {**TINY_CFG["text_cfg"], "hf_tokenizer_name": "nobody/no-such-tokenizer"}}
    assert not write_clip_tokenizer(superclip.build_model(named), tmp_path / "named")


@pytest.mark.arithmetic
def test_onnx_runs_in_onnxruntime_with_our_embeddings(tmp_path):
    import onnxruntime as ort

    model = superclip.build_model(TINY_CFG).eval()
    assert cli.main(["export", str(_save(model, tmp_path)), str(tmp_path / "onnx"), "--format", "onnx"]) == 0
    image = ort.InferenceSession(str(tmp_path / "onnx" / "image_encoder.onnx"))
    text = ort.InferenceSession(str(tmp_path / "onnx" / "text_encoder.onnx"))
    for batch in (1, 3):
        images, ids = _inputs(batch)
        feats, logits = image.run(None, {"pixel_values": images.numpy()})
        (text_feats,) = text.run(None, {"input_ids": ids.numpy()})
        with torch.no_grad():
            assert np.abs(feats - model.encode_image(images).numpy()).max() <= 1e-4
            assert np.abs(logits - model.token_logits(images).numpy()).max() <= 1e-4
            assert np.abs(text_feats - model.encode_text(ids).numpy()).max() <= 1e-4
    meta = json.loads((tmp_path / "onnx" / "onnx.json").read_text())
    assert meta["image_size"] == [32, 32] and meta["context_length"] == 77
