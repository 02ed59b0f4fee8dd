"""Compositional hard negatives: the metric against SugarCrepe's own comparison (ties included), SugarCrepe's
layout against the JSON/JSONL layout, and the evaluation on a checkpoint, an exported folder and an hf-hub: name."""
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import superclip
from superclip import cli
from superclip.evaluate.compositional import compositional_metrics, item_wins
from superclip.evaluate.features import Encoder
from superclip.evaluate.tasks import compositional_set
from superclip.model import get_tokenizer, get_transforms

from .conftest import TINY_CFG

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def sugarcrepe_text_retrieval(pos_emb, neg_emb, image_emb) -> int:
    """SugarCrepe's ``main_eval.text_retrieval`` after the encoders: both embeddings against the image, a win iff
    the caption's score is strictly greater."""
    pos_score = pos_emb @ image_emb.t()
    neg_score = neg_emb @ image_emb.t()
    return 1 if pos_score.item() > neg_score.item() else 0


def _known_set(n=60, d=16, seed=0):
    """Items whose outcome is known by construction: (image, positive, negative, expected win).
    kind 0: caption = image, negative random -> win; 1: negative = image, caption random -> loss;
    2: caption = negative = image (a tie) -> loss; 3: caption and negative equal random vectors (a tie) -> loss."""
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    rnd = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    pos, neg, expect = torch.empty(n, d), torch.empty(n, d), []
    for i in range(n):
        kind = i % 4
        pos[i] = img[i] if kind in (0, 2) else rnd[i]
        neg[i] = img[i] if kind in (1, 2) else rnd[i]
        expect.append(kind == 0)
    return img, pos, neg, expect


def test_metric_equals_sugarcrepe_comparison_with_ties():
    img, pos, neg, expect = _known_set()
    transcribed = [sugarcrepe_text_retrieval(pos[i:i + 1], neg[i:i + 1], img[i:i + 1]) for i in range(len(img))]
    assert transcribed == [int(e) for e in expect]  # the construction is what SugarCrepe computes
    owner = torch.arange(len(img))
    assert item_wins(img, pos, neg, owner).tolist() == expect
    types = ["a" if i < 30 else "b" for i in range(len(img))]
    m = compositional_metrics(img, pos, neg, owner, types)
    assert m["a_acc"] == sum(transcribed[:30]) / 30 and m["b_acc"] == sum(transcribed[30:]) / 30
    assert m["acc"] == sum(transcribed) / 60 == 0.25 and m["mean_type_acc"] == (m["a_acc"] + m["b_acc"]) / 2
    # clip_benchmark's sugar_crepe (argmax over [caption, negative]) counts the 30 ties as wins
    scores = torch.stack([(img * pos).sum(-1), (img * neg).sum(-1)], dim=1)
    assert (scores.argmax(1) == 0).float().mean().item() == 0.75


def test_several_negatives_all_must_lose():
    img, pos, neg, _ = _known_set(8)
    # item 0 (a win against its own negative) gets a second negative equal to the image: now a tie, a loss
    negs = torch.cat([neg, img[:1]])
    owner = torch.cat([torch.arange(8), torch.tensor([0])])
    assert item_wins(img, pos, negs, owner).tolist() == [False, False, False, False, True, False, False, False]


def _png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)


ITEMS = [  # (type, image, caption, negative)
    ("replace_att", "a.png", "a red circle", "a blue circle"),
    ("replace_att", "b.png", "a green square", "a green square and a cross"),
    ("swap_att", "a.png", "a red circle and a blue square", "a blue circle and a red square"),
    ("swap_att", "c.png", "crimson dots on cream paper", "cream dots on crimson paper"),
    ("add_obj", "b.png", "a triangle", "a triangle and a diamond"),
]


def write_sugarcrepe(folder: Path, items=ITEMS) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    by_type = {}
    for i, (kind, image, pos, neg) in enumerate(items):
        by_type.setdefault(kind, {})[str(i)] = {"filename": image, "caption": pos, "negative_caption": neg}
    for kind, data in by_type.items():
        (folder / f"{kind}.json").write_text(json.dumps(data))


def write_jsonl(path: Path, items=ITEMS) -> None:
    path.write_text("".join(json.dumps({"image": image, "positive": pos, "negatives": [neg], "type": kind}) + "\n"
                            for kind, image, pos, neg in items))


@pytest.fixture(scope="module")
def data(module_tmp):
    root = module_tmp("compositional")
    for i, name in enumerate("abc"):
        _png(root / "images" / f"{name}.png", i)
    write_sugarcrepe(root / "sugarcrepe")
    write_jsonl(root / "set.jsonl")
    rows = [json.loads(line) for line in (root / "set.jsonl").read_text().splitlines()]
    (root / "set.json").write_text(json.dumps(rows))
    return root


def test_sugarcrepe_and_jsonl_layouts_give_the_same_numbers(data):
    model = superclip.build_model(TINY_CFG).eval()
    enc, pre, tok = Encoder(model), get_transforms(model)[1], get_tokenizer(model.config)
    images = str(data / "images")
    a = compositional_set(enc, pre, tok, str(data / "sugarcrepe"), images)
    b = compositional_set(enc, pre, tok, str(data / "set.jsonl"), images)
    c = compositional_set(enc, pre, tok, str(data / "set.json"), images)
    for m in (a, b, c):
        m.pop("data")
    assert a == b == c
    assert a["n_items"] == 5 and a["n_images"] == 3 and a["replace_att_n"] == 2 and a["add_obj_n"] == 1
    # against the transcription, item by item, on the model's own embeddings
    pre_img = {n: model.encode_image(pre(Image.open(data / "images" / n).convert("RGB"))[None], normalize=True)
               for n in ("a.png", "b.png", "c.png")}
    with torch.no_grad():
        wins = [sugarcrepe_text_retrieval(model.encode_text(tok([p]), normalize=True),
                                          model.encode_text(tok([n]), normalize=True), pre_img[im])
                for _, im, p, n in ITEMS]
    assert a["acc"] == pytest.approx(sum(wins) / 5, abs=1e-9)


def _hub_cache(root: Path, repo: str, folder: Path) -> None:
    snap = root / ("models--" + repo.replace("/", "--")) / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    (root / ("models--" + repo.replace("/", "--")) / "refs").mkdir()
    (root / ("models--" + repo.replace("/", "--")) / "refs" / "main").write_text(COMMIT)
    for p in folder.iterdir():
        shutil.copy(p, snap / p.name)


def model_sources(tmp_path: Path, monkeypatch):
    """A checkpoint, its exported folder and the folder as an hf-hub: name in an offline cache: argv model flags."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    model = superclip.build_model(TINY_CFG)
    ckpt = tmp_path / "tiny.pt"
    superclip.save_checkpoint(ckpt, model)
    assert cli.main(["export", str(ckpt), str(tmp_path / "export")]) == 0
    _hub_cache(tmp_path / "hub", "org/tiny", tmp_path / "export")
    return {"checkpoint": ["--pretrained", str(ckpt)], "folder": ["--pretrained", str(tmp_path / "export")],
            "hf-hub": ["--pretrained", "hf-hub:org/tiny", "--cache-dir", str(tmp_path / "hub")]}


def test_new_evaluations_on_checkpoint_folder_and_hub_alike(data, tmp_path, monkeypatch, capsys):
    sources = model_sources(tmp_path, monkeypatch)
    assert cli.main(["data", "synth", "--family", "scenes", "--out", str(tmp_path / "synth"), "--masks",
                     "--train-samples", "10", "--test-samples", "6", "--image-size", "32", "--no-progress"]) == 0
    masks = tmp_path / "synth" / "masks"
    capsys.readouterr()
    got = {}
    for name, flags in sources.items():
        assert cli.main(["eval", *flags, "--compositional", str(data / "sugarcrepe"), "--compositional-images",
                         str(data / "images"), "--segmentation-probe-train", str(masks / "train"),
                         "--segmentation-probe-test", str(masks / "test"), "--no-progress", "--device", "cpu"]) == 0
        got[name] = json.loads(capsys.readouterr().out)["metrics"]
    assert got["checkpoint"] == got["folder"] == got["hf-hub"]
    assert set(got["checkpoint"]["compositional"]) >= {"acc", "mean_type_acc", "replace_att_acc", "swap_att_acc",
                                                       "add_obj_acc"}
    seg = got["checkpoint"]["segmentation_probe"]
    assert seg["n_classes"] == 6 and seg["n_train"] == 10 and 0 <= seg["miou"] <= 1


# --- issue 25: repeated ids, negatives that say the caption's words, negatives the model reads as the caption
def _item(caption="a red circle", negative="a blue circle", image="a.png"):
    return json.dumps({"filename": image, "caption": caption, "negative_caption": negative})


def test_a_repeated_sugarcrepe_id_is_refused_naming_it(data, tmp_path):
    """SugarCrepe's ids are the keys of one JSON object; json.loads keeps the last of a repeated key, so on main
    the first item with id 1 was dropped without a word (2 items read of the 3 written)."""
    from superclip.errors import ConfigError
    from superclip.evaluate.hard_negatives import compositional_items

    folder = tmp_path / "sc"
    folder.mkdir()
    (folder / "replace_att.json").write_text('{"1": %s, "1": %s, "2": %s}' % (
        _item(), _item("a green square", "a green circle", "b.png"), _item("a triangle", "a cross", "c.png")))
    with pytest.raises(ConfigError, match=r"replace_att.json: id 1 appears 2 times; .*give each item its own id"):
        compositional_items(str(folder), str(data / "images"))
    # a key given twice inside one item: json kept the second caption
    (folder / "replace_att.json").write_text('{"1": {"filename": "a.png", "caption": "a red circle", '
                                             '"caption": "a red square", "negative_caption": "a blue circle"}}')
    with pytest.raises(ConfigError, match=r"replace_att.json, id 1: key 'caption' appears 2 times in one item"):
        compositional_items(str(folder), str(data / "images"))
    (tmp_path / "set.jsonl").write_text('{"image": "a.png", "positive": "a red circle", "negatives": ["a blue '
                                        'circle"], "negatives": ["a red circle."]}\n')
    with pytest.raises(ConfigError, match=r"set.jsonl, line 1: key 'negatives' appears 2 times"):
        compositional_items(str(tmp_path / "set.jsonl"), str(data / "images"))


@pytest.mark.parametrize("negative", ["a red circle.", "A red, circle!", "a red-circle", "«a red circle»"])
def test_a_negative_that_differs_only_in_punctuation_is_refused(data, tmp_path, negative):
    """It states what the caption states; on main it was scored (CLIP's tokenizer keeps punctuation, so the pair
    does not tie) and counted as a win or a loss by chance (a loss for the seeded tiny model)."""
    from superclip.errors import ConfigError
    from superclip.evaluate.hard_negatives import compositional_items

    write_jsonl(tmp_path / "p.jsonl", [("replace_att", "a.png", "a red circle", negative)])
    with pytest.raises(ConfigError, match="equals the caption up to case, spacing and punctuation"):
        compositional_items(str(tmp_path / "p.jsonl"), str(data / "images"))


LONG = " ".join(["a red circle beside a blue square"] * 12)  # 84 words: past CLIP's 77-token window


@pytest.mark.parametrize("caption,negative,why", [
    (LONG + " on white", LONG + " on black", "both fill the 77-token window and differ only after it"),
    ("a red &amp; blue circle", "a red & blue circle", "the tokenizer's text cleaning makes them one text"),
    ("ﬁne red dots", "fine red dots", "the tokenizer's text cleaning makes them one text"),
])
def test_a_negative_with_the_captions_token_ids_is_refused(data, tmp_path, caption, negative, why):
    """Identical ids give identical embeddings: the item can only tie, and a tie is a loss. On main each of these
    one-item sets was scored, acc 0.0: a silent loss."""
    from superclip.errors import ConfigError
    from superclip.evaluate.hard_negatives import compositional_items

    model = superclip.build_model(TINY_CFG).eval()
    tok = get_tokenizer(model.config)
    write_jsonl(tmp_path / "t.jsonl", [("x", "a.png", caption, negative)])
    compositional_items(str(tmp_path / "t.jsonl"), str(data / "images"))  # the text check lets it through
    with pytest.raises(ConfigError, match=r"t.jsonl, line 1: the negative caption .* has the caption's token ids: "
                                          + re.escape(why)):
        compositional_set(Encoder(model), get_transforms(model)[1], tok, str(tmp_path / "t.jsonl"),
                          str(data / "images"))


def test_a_null_type_is_the_default_type(data, tmp_path):
    """``"type": null`` in a JSONL row: main named the type "None" (metrics None_acc, None_n)."""
    from superclip.evaluate.hard_negatives import compositional_items

    (tmp_path / "n.jsonl").write_text(json.dumps({"image": "a.png", "positive": "a red circle", "negatives":
                                                  ["a blue circle"], "type": None}) + "\n")
    assert compositional_items(str(tmp_path / "n.jsonl"), str(data / "images")).types == ["all"]


def test_files_saved_with_a_byte_order_mark_are_read(data, tmp_path):
    """Windows Notepad saves UTF-8 with a BOM; main refused such a JSONL, JSON list or SugarCrepe type file
    ('Unexpected UTF-8 BOM'), and the retrieval JSON too."""
    from superclip.evaluate.data import retrieval_pairs
    from superclip.evaluate.hard_negatives import compositional_items

    write_jsonl(tmp_path / "s.jsonl")
    write_sugarcrepe(tmp_path / "sc")
    for path in (tmp_path / "s.jsonl", tmp_path / "sc" / "replace_att.json"):
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert len(compositional_items(str(tmp_path / "s.jsonl"), str(data / "images")).positives) == 5
    assert len(compositional_items(str(tmp_path / "sc"), str(data / "images")).positives) == 5
    (tmp_path / "r.json").write_bytes(b'\xef\xbb\xbf[{"image": "a.png", "caption": "a red circle"}]')
    assert retrieval_pairs(str(tmp_path / "r.json"), image_root=str(data / "images"))[1] == ["a red circle"]
