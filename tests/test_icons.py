"""`superclip data icons` on a tiny IconifyJSON fixture (tests/data/iconify): deterministic rendering, held-out sets
kept out of training, hard negatives that change exactly the word they claim, masks that match the drawings, and a
licence file that lists exactly the sets used. No network: the fixture is packed as the npm tarball would be."""
import filecmp
import json
import os
import random
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from superclip import cli
from superclip.data import icons as text
from superclip.data.icon_render import RenderError, render
from superclip.data.iconify import parse_set

from .iconify_fixture import PACKAGE, argv, pack

HELD = {"fx-round", "fx-sharp", "fx-round-duo"}  # fx-round-duo: fx-round's author


@pytest.fixture(scope="module")
def corpus(module_tmp):
    root = module_tmp("icons")
    tarball, sha = pack(root / "fixture.tgz")
    assert cli.main(argv(tarball, sha, root / "corpus")) == 0
    return root / "corpus", tarball, sha


def shard_samples(corpus: Path):
    for shard in sorted(corpus.glob("train-*.tar")):
        with tarfile.open(shard) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for key in sorted({n.split(".")[0] for n in members}):
            yield members[f"{key}.png"], members[f"{key}.txt"].decode(), json.loads(members[f"{key}.json"])


def eval_images(corpus: Path):
    return [p for sub in ("zeroshot", "retrieval", "compositional") for p in (corpus / sub).rglob("*.png")]


def set_of(image: Path) -> str:
    """The set of an evaluation image (named SET-ICON.png), or '' if no held-out set's."""
    return next((s for s in sorted(HELD, key=len, reverse=True) if image.name.startswith(s + "-")), "")


def test_rendering_is_deterministic(corpus, tmp_path, capsys):
    """The same icon renders to the same pixels twice, and a second build gives byte-identical files."""
    data = json.loads((PACKAGE / "json" / "fx-sharp.json").read_text())
    icon = parse_set("fx-sharp", data).icons["arrow-left-circle-outline"]
    a, b = render(icon, 48), render(icon, 48)
    assert a.tobytes() == b.tobytes() and np.asarray(a)[..., 3].max() == 255
    out, tarball, sha = corpus
    assert cli.main(argv(tarball, sha, tmp_path / "again")) == 0
    capsys.readouterr()
    ours = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    theirs = sorted(str(p.relative_to(tmp_path / "again")) for p in (tmp_path / "again").rglob("*") if p.is_file())
    assert ours == theirs and len(ours) > 50
    _, mismatch, errors = filecmp.cmpfiles(out, tmp_path / "again", ours, shallow=False)
    assert mismatch == [] and errors == []


def test_held_out_sets_never_appear_in_training(corpus):
    out, _, _ = corpus
    samples = list(shard_samples(out))
    trained = {meta["set"] for _, _, meta in samples}
    assert trained == {"fx-line", "fx-solid", "fx-thin"}  # fx-color: multicolour, fx-moji: emoji, left out
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["held_out_sets"]) == HELD and manifest["train_samples"] == len(samples)
    # every evaluation image comes from a held-out set, and none has the bytes of a training image
    held_files = eval_images(out)
    assert held_files and all(set_of(p) for p in held_files)
    assert {set_of(p) for p in held_files} == HELD
    training_pngs = {png for png, _, _ in samples}
    assert not training_pngs & {p.read_bytes() for p in held_files}
    for line in (out / "dense" / "train" / "scenes.jsonl").read_text().splitlines() + \
            (out / "dense" / "test" / "scenes.jsonl").read_text().splitlines():
        assert all(placed["icon"].rsplit(":", 1)[0] in HELD for placed in json.loads(line)["icons"])


def test_training_captions_come_from_name_set_and_category(corpus):
    out, _, _ = corpus
    for _, caption, meta in shard_samples(out):
        assert text.name_text(meta["name"], None).split()[0] in caption
    captions = [c for _, c, m in shard_samples(out) if m["category"]]
    assert any("arrows" in c for c in captions)  # fx-line groups its icons (category templates)
    assert any("Fixture Solid" in c for _, c, _ in shard_samples(out))  # the set's name


def test_every_hard_negative_changes_exactly_the_word_it_claims(corpus):
    out, _, _ = corpus
    seen = set()
    for path in sorted((out / "compositional").glob("*.json")):
        kind, items = path.stem, json.loads(path.read_text())
        assert items and kind in text.TYPE_WORDS
        vocabulary = text.TYPE_WORDS[kind]
        for item in items.values():
            cap, neg = item["caption"].split(), item["negative_caption"].split()
            old, new = item["changed"]
            if kind.startswith("replace"):
                assert len(cap) == len(neg)
                diff = [(a, b) for a, b in zip(cap, neg) if a != b]
                assert diff == [(old, new)] and old in vocabulary and new in vocabulary, item
            elif kind == "add_off":
                assert len(neg) == len(cap) + 1 and old is None and new in vocabulary
                i = neg.index(new)
                assert neg[:i] + neg[i + 1:] == cap, item
            else:
                assert len(cap) == len(neg) + 1 and new is None and old in vocabulary
                i = cap.index(old)
                assert cap[:i] + cap[i + 1:] == neg, item
            assert (out / "compositional" / item["filename"]).is_file()
        seen.add(kind)
    assert seen == {"replace_direction", "replace_shape", "replace_style", "add_off", "drop_off"}


def test_dense_masks_match_the_drawings(corpus):
    """Every pixel a mask gives to an icon is nearer that icon's ink than the background, every background pixel
    nearer the background; the classes are the placed icons' concepts, each within its box."""
    out, _, _ = corpus
    classes = (out / "dense" / "classes.txt").read_text().split("\n")[:-1]
    assert classes[0] == "background" and len(classes) == 5
    checked = 0
    for split in ("train", "test"):
        for line in (out / "dense" / split / "scenes.jsonl").read_text().splitlines():
            scene = json.loads(line)
            image = np.asarray(Image.open(out / "dense" / split / "images" / scene["image"]), dtype=float)
            mask = np.asarray(Image.open(out / "dense" / split / "annotations" / scene["image"]))
            assert Image.open(out / "dense" / split / "annotations" / scene["image"]).mode == "L"
            bg = np.asarray(scene["background"], dtype=float)
            near_bg = np.linalg.norm(image - bg, axis=-1)
            claimed = np.zeros(mask.shape, dtype=bool)
            for placed in scene["icons"]:
                x, y, w, h = placed["box"]
                box = (slice(y, y + h), slice(x, x + w))
                inside = mask[box] != 0
                assert inside.any() and set(np.unique(mask[box][inside])) == {placed["class"]}
                name = placed["icon"].rsplit(":", 1)[1]
                assert text.concept(name) == classes[placed["class"]]
                near_ink = np.linalg.norm(image[box] - np.asarray(placed["ink"], dtype=float), axis=-1)
                assert (near_ink[inside] <= near_bg[box][inside] + 1.5).all()
                assert (near_bg[box][~inside] <= near_ink[~inside] + 1.5).all()
                claimed[box] = True
                checked += int(inside.sum())
            assert (mask[~claimed] == 0).all() and (near_bg[~claimed] == 0).all()
    assert checked > 100


def test_licences_list_exactly_the_sets_used(corpus):
    out, _, _ = corpus
    used = {meta["set"] for _, _, meta in shard_samples(out)}
    for p in eval_images(out):
        used.add(set_of(p))
    lines = [ln.split("\t") for ln in (out / "LICENSES").read_text().splitlines() if "\t" in ln]
    assert {ln[0] for ln in lines} == used
    info = json.loads((PACKAGE / "collections.json").read_text())
    for prefix, name, role, *_ in lines:
        row = "\t".join(next(ln for ln in lines if ln[0] == prefix))
        assert name == info[prefix]["name"] and role == ("held out" if prefix in HELD else "training")
        assert info[prefix]["license"]["spdx"] in row and info[prefix]["author"]["name"] in row


def test_an_svg_that_does_not_render_is_skipped_and_named(corpus, tmp_path, capsys):
    out, tarball, sha = corpus
    skipped = {s["icon"]: s["reason"] for s in json.loads((out / "manifest.json").read_text())["skipped"]}
    assert set(skipped) == {"fx-line:broken-thing", "fx-line:spinner-dots"}
    assert skipped["fx-line:spinner-dots"].startswith("animated")
    assert cli.main(argv(tarball, sha, tmp_path / "c")) == 0
    said = capsys.readouterr().out
    assert "skipped 2 icons that did not render: fx-line:broken-thing (" in said
    with pytest.raises(RenderError, match="blank"):
        render(parse_set("x", {"icons": {"e": {"body": "<g/>"}}}).icons["e"], 16)


def test_fetch_runs_npm_pack_and_checks_the_sha(tmp_path, capsys, monkeypatch):
    """Without --tarball the package is fetched with `npm pack` (a stand-in npm on PATH here) and kept in OUT."""
    tarball, sha = pack(tmp_path / "src" / "fixture.tgz")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "npm").write_text(f"""#!/bin/sh
# argv: pack @iconify/json@VERSION --pack-destination DIR --json
cp {tarball} "$4/iconify-json-$(echo $2 | cut -d@ -f3).tgz"
echo "[{{\\"filename\\": \\"iconify-json-$(echo $2 | cut -d@ -f3).tgz\\"}}]"
""")
    (bin_dir / "npm").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    args = argv(tarball, sha, tmp_path / "out", "--iconify-version", "0.0.1-fixture")
    i = args.index("--tarball")
    assert cli.main(args[:i] + args[i + 2:]) == 0
    assert (tmp_path / "out" / "iconify-json-0.0.1-fixture.tgz").read_bytes() == tarball.read_bytes()
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["sha256"] == sha
    assert not (tmp_path / "out.partial").exists()
    capsys.readouterr()


def test_names_styles_and_negatives():
    siblings = {"home-line", "home-fill", "chart-line", "traffic-light", "outline-home", "round-home", "bell",
                "bell-off", "home-20-regular", "home-20-filled"}
    assert text.split_name("home-line", siblings) == (["home"], ["outline"])
    assert text.split_name("chart-line", siblings) == (["chart", "line"], [])  # no "chart" sibling: a thing
    assert text.split_name("traffic-light", siblings) == (["traffic", "light"], [])
    assert text.split_name("home-20-regular", siblings) == (["home"], ["outline"])
    assert text.split_name("outline-home", siblings) == (["home"], ["outline"])
    assert text.split_name("arrow-left-circle-fill") == (["arrow", "left", "circle"], ["filled"])
    negs = text.hard_negatives("arrow-left-circle-fill", random.Random(0), set())
    assert [(k, n) for k, _, n, _ in negs] == [
        ("replace_direction", "arrow right circle filled icon"), ("replace_shape", negs[1][2]),
        ("replace_style", "arrow left circle outline icon")]
    assert text.hard_negatives("arrow-left-right", random.Random(0), set()) == []  # the opposite is in the name
    assert [k for k, *_ in text.hard_negatives("bell", random.Random(0), {"bell"})] == ["add_off"]
    assert text.off_concepts({"x": siblings}) == {"bell"}
    ranked = text.rank_concepts({"a": {"home", "star", "cup"}, "b": {"home-fill", "star"}, "c": {"home"}},
                                {"home", "star"}, 5)
    assert ranked == ["home", "star"]  # cup: never in training


def test_shards_train(corpus, tmp_path, capsys):
    """The shards are what `superclip train` reads: two steps of a tiny model on them."""
    from .conftest import TINY_CFG

    out, _, _ = corpus
    (tmp_path / "tiny.json").write_text(json.dumps(dict(TINY_CFG, vision_cfg=dict(TINY_CFG["vision_cfg"],
                                                                                    image_size=32))))
    shards = sorted(out.glob("train-*.tar"))
    assert cli.main(["train", "--model", str(tmp_path / "tiny.json"), "--train-data",
                     f"{out}/train-{{000000..{len(shards) - 1:06d}}}.tar", "--dataset-type", "webdataset",
                     "--train-num-samples", "16", "--batch-size", "8", "--logs", str(tmp_path), "--name", "r",
                     "--no-progress"]) == 0
    capsys.readouterr()
    assert any((tmp_path / "r").rglob("*.pt"))
