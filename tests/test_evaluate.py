import json
import os

import numpy as np
import pytest
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image

import superclip
from superclip import cli
from superclip.evaluate import classification_metrics, linear_probe, retrieval_metrics
from superclip.evaluate.features import Encoder
from superclip.evaluate.tags import excluded_token_ids, top_tags

from .conftest import TINY_CFG


def clip_benchmark_recall(scores, positive_pairs, k):
    """clip_benchmark's recall_at_k, written out from its definition (nb_true_positive / nb_positive)."""
    topk = torch.topk(scores, k, dim=1)[1]
    onehot = F.one_hot(topk, num_classes=scores.shape[1])
    true_pos = (onehot * positive_pairs.view(scores.shape[0], 1, scores.shape[1])).sum(dim=(1, 2))
    return true_pos / positive_pairs.sum(dim=1)


def test_retrieval_equals_clip_benchmark_definition_with_several_captions_per_image():
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(30, 8, generator=g), dim=-1)
    owner = torch.cat([torch.arange(30), torch.randint(0, 30, (45,), generator=g)])  # 1 to several captions each
    txt = F.normalize(img[owner] + 0.9 * torch.randn(75, 8, generator=g), dim=-1)
    got = retrieval_metrics(img, txt, owner, chunk=7)  # chunking must not change anything
    scores = txt @ img.T
    positive = torch.zeros_like(scores, dtype=torch.bool)
    positive[torch.arange(75), owner] = True
    for k in (1, 5, 10):
        assert got[f"image_retrieval_recall@{k}"] == (clip_benchmark_recall(scores, positive, k) > 0).float().mean().item()
        assert got[f"text_retrieval_recall@{k}"] == (clip_benchmark_recall(scores.T, positive.T, k) > 0).float().mean().item()
    assert 0 < got["image_retrieval_recall@1"] < got["image_retrieval_recall@10"] <= 1


def test_classification_metrics_definitions():
    logits = torch.tensor([[3.0, 2, 1, 0, -1, -2], [0, 3, 2, 1, -1, -2], [0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0]])
    labels = torch.tensor([0, 2, 0, 1])
    m = classification_metrics(logits, labels)
    assert m["acc1"] == 0.25  # only row 0
    assert m["acc5"] == 0.75  # row 2 ranks class 0 last
    # per class: 0 -> 1/2, 1 -> 0/1, 2 -> 0/1
    assert abs(m["mean_per_class_recall"] - (0.5 + 0 + 0) / 3) < 1e-9
    few = classification_metrics(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]))
    assert few["acc5"] is None and few["acc1"] == 0.5  # fewer than 5 classes: null, as clip_benchmark's NaN


def test_linear_probe_beats_chance_on_separable_features():
    g = torch.Generator().manual_seed(1)
    centres = 3 * torch.randn(4, 16, generator=g)
    def split(n):
        y = torch.randint(0, 4, (n,), generator=g)
        return centres[y] + torch.randn(n, 16, generator=g), y
    (trx, try_), (tex, tey) = split(200), split(100)
    m = linear_probe(trx, try_, tex, tey)
    assert m["acc1"] > 0.9 and m["weight_decay"] in (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def _folder(root, classes, n=3, corrupt=False):
    colours = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (40, 40), tuple(max(0, v - 20 * i) for v in colours[c])).save(root / c / f"{i}.png")
    if corrupt:
        (root / classes[0] / "bad.png").write_bytes(b"junk")
    return root


def test_eval_zero_shot_matches_open_clip_local_dir_route(tmp_path, capsys):
    model = superclip.build_model(TINY_CFG)
    ckpt = tmp_path / "m.pt"
    superclip.save_checkpoint(ckpt, model)
    data = _folder(tmp_path / "zs", ["red", "green", "blue"])
    (tmp_path / "t.txt").write_text("a {c} square\na photo of {c}\n")
    out = tmp_path / "res.json"
    assert cli.main(["eval", "--pretrained", str(ckpt), "--zeroshot-data", str(data), "--templates",
                     str(tmp_path / "t.txt"), "--output", str(out)]) == 0
    ours = json.loads(out.read_text())["metrics"]["zeroshot"]
    # the same evaluation through plain open_clip on the exported folder
    assert cli.main(["export", str(ckpt), str(tmp_path / "oc")]) == 0
    oc, _, pre = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'oc'}")
    oc.eval()
    tok = open_clip.get_tokenizer(f"local-dir:{tmp_path / 'oc'}")
    with torch.no_grad():
        w = open_clip.build_zero_shot_classifier(oc, tok, ["red", "green", "blue"],
                                                 [lambda c: f"a {c} square", lambda c: f"a photo of {c}"],
                                                 num_classes_per_batch=None, device="cpu", use_tqdm=False)
        paths = sorted((data / c / f"{i}.png", k) for k, c in enumerate(["blue", "green", "red"]) for i in range(3))
        feats = oc.encode_image(torch.stack([pre(Image.open(p).convert("RGB")) for p, _ in paths]), normalize=True)
    labels = torch.tensor([k for _, k in paths])
    # folder order is sorted: blue, green, red; open_clip's classifier above is in red, green, blue order
    theirs = classification_metrics(feats @ w[:, [2, 1, 0]], labels)
    assert ours["acc1"] == theirs["acc1"] and ours["mean_per_class_recall"] == theirs["mean_per_class_recall"]
    assert ours["acc5"] is None and ours["n_images"] == 9


def test_eval_retrieval_csv_and_json(tmp_path, capsys):
    model = superclip.build_model(TINY_CFG)
    ckpt = tmp_path / "m.pt"
    superclip.save_checkpoint(ckpt, model)
    _folder(tmp_path / "imgs", ["red", "green"], n=2)
    rows = ["filepath\ttitle"] + [f"imgs/{c}/{i}.png\ta {c} square number {i}" for c in ("red", "green") for i in range(2)]
    rows.append("imgs/red/0.png\tanother caption of the first image")
    (tmp_path / "r.tsv").write_text("\n".join(rows) + "\n")
    assert cli.main(["eval", "--pretrained", str(ckpt), "--retrieval-data", str(tmp_path / "r.tsv")]) == 0
    res = json.loads(capsys.readouterr().out)["metrics"]["retrieval"]
    assert res["n_images"] == 4 and res["n_captions"] == 5 and res["image_retrieval_recall@5"] == 1.0
    items = [{"image": f"imgs/{c}/{i}.png", "caption": [f"a {c} square", f"number {i}"]} for c in ("red", "green")
             for i in range(2)]
    (tmp_path / "r.json").write_text(json.dumps(items))
    assert cli.main(["eval", "--pretrained", str(ckpt), "--retrieval-data", str(tmp_path / "r.json")]) == 0
    res = json.loads(capsys.readouterr().out)["metrics"]["retrieval"]
    assert res["n_captions"] == 8 and set(res) >= {"text_retrieval_recall@1", "image_retrieval_recall@10"}


def _eval_error(capsys, argv):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    return err


def test_eval_user_errors(tmp_path, capsys):
    ckpt = tmp_path / "m.pt"
    superclip.save_checkpoint(ckpt, superclip.build_model(TINY_CFG))
    (tmp_path / "empty").mkdir()
    assert "holds no class folders" in _eval_error(
        capsys, ["eval", "--pretrained", str(ckpt), "--zeroshot-data", str(tmp_path / "empty"), "--no-progress"])
    bad = _folder(tmp_path / "bad", ["red", "green"], corrupt=True)
    assert "cannot read image" in _eval_error(capsys, ["eval", "--pretrained", str(ckpt), "--zeroshot-data", str(bad)])
    (tmp_path / "r.xml").write_text("<x/>")
    assert "unknown retrieval file format '.xml'" in _eval_error(
        capsys, ["eval", "--pretrained", str(ckpt), "--retrieval-data", str(tmp_path / "r.xml")])
    assert "nothing to evaluate" in _eval_error(capsys, ["eval", "--pretrained", str(ckpt)])


def test_embed_classify_tag(tmp_path, capsys):
    ckpt = tmp_path / "m.pt"
    model = superclip.build_model(TINY_CFG)
    crit = superclip.SuperCLIPLoss()
    tok = superclip.get_tokenizer(TINY_CFG)
    crit.update(tok(["a red circle", "a blue circle"]))
    superclip.save_checkpoint(ckpt, model, crit)
    imgs = _folder(tmp_path / "i", ["red", "blue"], n=1)
    paths = [str(imgs / "red" / "0.png"), str(imgs / "blue" / "0.png")]
    assert cli.main(["embed", "--pretrained", str(ckpt), *paths, "--out", str(tmp_path / "e")]) == 0
    emb = np.load(tmp_path / "e.npy")
    assert emb.shape == (2, 32) and abs(np.linalg.norm(emb[0]) - 1) < 1e-5
    assert [json.loads(line) for line in (tmp_path / "e.ids.jsonl").read_text().splitlines()] == paths
    capsys.readouterr()
    assert cli.main(["classify", "--pretrained", str(ckpt), paths[0], "--labels", "a red square,a blue square"]) == 0
    line = capsys.readouterr().out.strip()
    probs = [float(x.split(": ")[1]) for x in line.split("\t")[1].split("  ")]
    assert abs(sum(probs) - 1) < 1e-3
    assert cli.main(["tag", "--pretrained", str(ckpt), *paths, "--top-k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    # tags are words the statistics' captions used, ranked by lift: here only "red" and "blue" ("a" and "circle" are
    # in every caption), so two tags of the three asked for
    tags = [[t.split(" (")[0] for t in line.split("\t")[1].split("  ")] for line in lines]
    assert len(lines) == 2 and all(sorted(t) == ["blue", "red"] for t in tags), tags
    # weight-0 ids (in every caption: SOT, EOT, pad, "a", "circle") and special ids are never tags
    weights = crit.token_weights()
    excluded = excluded_token_ids(tok, weights)
    for word in ("a", "circle"):
        assert tok([word])[0, 1].item() in excluded
    logits = torch.full((49408,), -10.0)
    logits[tok(["circle"])[0, 1]] = 10.0
    logits[tok(["square"])[0, 1]] = 5.0
    logits[49406] = 20.0
    assert [w for w, _ in top_tags(logits, tok, 1, excluded)] == ["square"]


def test_evaluation_during_training(tmp_path):
    from superclip.train.trainer import Trainer

    from .test_train import _cfg

    zs = _folder(tmp_path / "zs", ["red", "green"], n=2)
    rows = ["filepath\ttitle"] + [f"zs/{c}/{i}.png\ta {c} square" for c in ("red", "green") for i in range(2)]
    (tmp_path / "val.tsv").write_text("\n".join(rows) + "\n")
    t = Trainer(_cfg(tmp_path, imagenet_val=str(zs), zeroshot_steps=3, val_data=str(tmp_path / "val.tsv"),
                     val_steps=6, epochs=1))
    t.fit()
    assert [e["step"] for e in t.evals] == [3, 6]
    assert "imagenet-zeroshot-val-top1" in t.evals[0] and "val/image_retrieval_recall@1" not in t.evals[0]
    assert t.evals[1]["val/image_retrieval_recall@1"] >= 0 and t.evals[1]["imagenet-zeroshot-val-top5"] is None
    lines = (tmp_path / "logs" / "run" / "metrics.jsonl").read_text().splitlines()
    assert sum("imagenet-zeroshot-val-top1" in line for line in lines) == 2


def test_imagenet_v2_and_val_num_samples_during_training(tmp_path):
    from superclip.evaluate.tasks import retrieval_file, zero_shot_folder
    from superclip.model import get_tokenizer, get_transforms
    from superclip.train.trainer import Trainer

    from .test_train import _cfg

    zs = _folder(tmp_path / "zs", ["red", "green"], n=2)
    v2 = _folder(tmp_path / "v2", ["red", "green", "blue"], n=1)
    rows = ["filepath\ttitle"] + [f"zs/{c}/{i}.png\ta {c} square number {i}" for c in ("red", "green") for i in range(2)]
    (tmp_path / "val.tsv").write_text("\n".join(rows) + "\n")
    (tmp_path / "val3.tsv").write_text("\n".join(rows[:4]) + "\n")  # the first 3 images
    t = Trainer(_cfg(tmp_path, imagenet_val=str(zs), imagenet_v2=str(v2), zeroshot_steps=2,
                     val_data=str(tmp_path / "val.tsv"), val_steps=2, val_num_samples=3, epochs=1, max_steps=2))
    t.fit()
    logged = t.evals[-1]
    model = t.model.eval()
    encoder = Encoder(model, torch.device("cpu"), "fp32")
    _, preprocess = get_transforms(model)
    tokenizer = get_tokenizer(model.config)
    from open_clip import OPENAI_IMAGENET_TEMPLATES

    v2_direct = zero_shot_folder(encoder, preprocess, tokenizer, str(v2), None,
                                 [f("{c}") for f in OPENAI_IMAGENET_TEMPLATES], 8)
    assert logged["imagenetv2-zeroshot-val-top1"] == pytest.approx(v2_direct["acc1"])
    val3 = retrieval_file(encoder, preprocess, tokenizer, str(tmp_path / "val3.tsv"))
    assert val3["n_images"] == 3
    for key in ("image_retrieval_recall@1", "text_retrieval_recall@1"):
        assert logged[f"val/{key}"] == pytest.approx(val3[key])


def test_a_fifo_named_like_an_image_is_not_opened(tmp_path):
    """A FIFO named blue/b.png in a zero-shot folder: main listed it and eval waited on it forever (a 40 s timeout
    killed it); only regular files are images now."""
    import os

    from superclip.evaluate.data import image_folder

    _folder(tmp_path / "zs", ["red", "blue"], n=1)
    os.mkfifo(tmp_path / "zs" / "blue" / "b.png")
    paths, labels, classes = image_folder(str(tmp_path / "zs"))
    assert [p.split("/zs/")[1] for p in paths] == ["blue/0.png", "red/0.png"] and labels == [0, 1]


def test_classify_and_tag_print_a_name_that_is_not_utf8_escaped(tmp_path):
    """A file name whose bytes are not UTF-8 gave a UnicodeEncodeError traceback on a strict UTF-8 console (every
    locale but C; here PYTHONIOENCODING=utf-8); it is printed with the byte as \\xNN, as the index shows it."""
    import subprocess
    import sys

    from PIL import Image

    ckpt = tmp_path / "m.pt"
    crit = superclip.SuperCLIPLoss()
    crit.update(superclip.get_tokenizer(TINY_CFG)(["a red circle", "a blue circle"]))
    superclip.save_checkpoint(ckpt, superclip.build_model(TINY_CFG), crit)
    name = os.fsdecode(bytes(tmp_path) + b"/caf\xe9.png")
    Image.new("RGB", (32, 32), (200, 0, 0)).save(name)
    env = dict(os.environ, PYTHONIOENCODING="utf-8")
    for argv in (["tag", "--top-k", "2"], ["classify", "--labels", "red,blue"]):
        done = subprocess.run([sys.executable, "-m", "superclip", *argv, "--pretrained", str(ckpt), name],
                              capture_output=True, env=env)
        assert done.returncode == 0, done.stderr.decode()[-500:]
        assert done.stdout.decode("utf-8").startswith(f"{tmp_path}/caf\\xe9.png\t"), done.stdout
