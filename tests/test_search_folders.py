"""What ``superclip index`` makes of real folders (issue 25, items 2 to 6): removals that stick, paths stored resolved,
a moved checkpoint, no index from random weights unless asked, and folders holding FIFOs, links, odd names and every
image type PIL reads: each file not indexed counted by reason and listed in skipped.tsv."""
import json
import multiprocessing
import os
import shutil
import sys

import numpy as np
import pytest

pytest.importorskip("faiss")

from .search_helpers import build_args, cli, make_checkpoint, snapshot, write_scene_shards, write_scenes  # noqa: E402

ADD = ["--no-progress", "--workers", "0"]


@pytest.fixture(scope="module")
def ckpt(module_tmp):
    return make_checkpoint(module_tmp("search-folders") / "tiny.pt")


def _live_paths(out):
    return sorted(v[0] for v in snapshot(out)["items"].values() if not v[3])


def test_removals_are_remembered_by_later_adds(ckpt, tmp_path, capsys):
    """Before: ``index remove IDX photos/b`` then ``index add IDX photos`` brought the 3 removed files back with new
    ids (6 live of 6); a removed shard sample stayed removed only until its shard changed."""
    images = tmp_path / "photos"
    write_scenes(images, 6)
    shards = write_scene_shards(tmp_path / "shards", 3)
    out = tmp_path / "idx"
    assert cli(*build_args(ckpt, out, images, shards[0])) == 0
    first = snapshot(out)
    sample = next(i for i, v in first["items"].items() if v[0].endswith("#00000001"))
    one = next(i for i, v in first["items"].items() if v[0].endswith("a/0000.png"))
    capsys.readouterr()
    assert cli("index", "remove", out, images / "b", str(one), str(sample)) == 0
    assert "5 items removed" in capsys.readouterr().out
    write_scenes(images, 2, start=6)  # a/0006.png (taken), b/0007.png (under the excluded folder)
    with open(shards[0], "ab") as f:  # the shard changes: it is embedded again, whole
        f.write(b"\0" * 1024)
    assert cli("index", "add", out, images, shards[0], *ADD) == 0
    said = capsys.readouterr().out
    assert "6 excluded by superclip index remove" in said, said  # b/0001, 0003, 0005, 0007, a/0000, sample 1
    live = _live_paths(out)
    assert [p.rsplit("/", 2)[-2] + "/" + p.rsplit("/", 1)[-1] for p in live if "#" not in p] == [
        "a/0002.png", "a/0004.png", "a/0006.png"]
    assert sorted(p.rsplit("#", 1)[1] for p in live if "#" in p) == ["00000000", "00000002"]  # sample 1 excluded
    skipped = (out / "skipped.tsv").read_text().splitlines()
    assert sum(line.endswith("\texcluded by superclip index remove") for line in skipped) == 6

    capsys.readouterr()
    assert cli("index", "excluded", out) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert sorted((r[0].rsplit("/", 1)[-1], r[1]) for r in rows) == sorted(
        [("0000.png", f"id {one}"), ("b", "path"), ("train-000000.tar#00000001", f"id {sample}")])
    assert cli("index", "restore", out, images / "b", str(sample)) == 0
    assert cli("index", "restore", out, images / "b") == 2  # nothing left to restore there: one line
    assert "is not excluded from" in capsys.readouterr().err
    with open(shards[0], "ab") as f:
        f.write(b"\0" * 1024)
    assert cli("index", "add", out, images, shards[0], *ADD) == 0
    live = _live_paths(out)
    assert len([p for p in live if "/b/" in p]) == 4 and len([p for p in live if "#" in p]) == 3
    assert not any(p.endswith("a/0000.png") for p in live)  # its exclusion (by id) is still there

    capsys.readouterr()
    assert cli("index", "stats", out, "--json") == 0
    st = json.loads(capsys.readouterr().out)
    assert (st["live"], st["exclusions"], st["skipped"], st["changed_since_indexed"]) == (10, 1, {"excluded": 1}, 0)
    assert st["per_source"] == {str(images): 7, shards[0]: 3}
    (images / "a" / "0002.png").write_bytes((images / "a" / "0004.png").read_bytes())
    (images / "a" / "0006.png").unlink()
    assert cli("index", "stats", out, "--json") == 0
    st = json.loads(capsys.readouterr().out)
    assert (st["unchanged"], st["changed_since_indexed"], st["gone_since_indexed"]) == (8, 1, 1)


def test_paths_are_stored_resolved_and_a_moved_checkpoint_can_be_relinked(ckpt, tmp_path, monkeypatch, capsys):
    """Before: the manifest stored ``--pretrained tiny.pt`` as typed, so ``add`` from another folder failed
    ("checkpoint file not found: tiny.pt", exit 2); a source given again through a link or ``..`` was indexed a second
    time; a moved checkpoint left no way to point the index at it."""
    images = tmp_path / "photos"
    write_scenes(images, 4)
    os.symlink(images, tmp_path / "link")
    shutil.copy(ckpt, tmp_path / "model.pt")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "idx"
    assert cli(*build_args("model.pt", "idx", "photos")) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["pretrained"] == str(tmp_path / "model.pt") and manifest["sources"] == [str(images)]
    monkeypatch.chdir(tmp_path / "photos" / "a")
    before = snapshot(out)
    assert cli("index", "add", out, tmp_path / "link", "../../photos/b/..", *ADD) == 0  # the same folder twice more
    assert snapshot(out)["items"] == before["items"]
    assert json.loads((out / "manifest.json").read_text())["sources"] == [str(images)]

    os.rename(tmp_path / "model.pt", tmp_path / "moved.pt")
    capsys.readouterr()
    assert cli("index", "add", out, images, *ADD) == 2
    assert capsys.readouterr().err == (f"superclip index: error: the checkpoint of {out} is gone from {tmp_path}/"
                                       f"model.pt: if it moved, point the index at it with superclip index relink "
                                       f"{out} --pretrained NEW_PATH\n")
    other = tmp_path / "other.pt"
    import superclip
    from superclip.weights import save_checkpoint

    from .conftest import TINY_CFG
    save_checkpoint(other, superclip.create_model(TINY_CFG), config=TINY_CFG)
    assert cli("index", "relink", out, "--pretrained", other) == 2
    assert "is not the checkpoint" in capsys.readouterr().err
    assert cli("index", "relink", out, "--pretrained", tmp_path / "moved.pt") == 0
    assert json.loads((out / "manifest.json").read_text())["pretrained"] == str(tmp_path / "moved.pt")
    write_scenes(images, 1, start=4)
    assert cli("index", "add", out, images, *ADD) == 0
    assert len(_live_paths(out)) == 5


def test_no_index_from_random_weights_unless_asked(ckpt, tmp_path, capsys):
    """Before: ``index build --model X`` without ``--pretrained`` built from random weights (exit 0), and every add
    drew other weights: a byte-identical copy added later had cosine ~0 with its original. Now it is one line
    (exit 2), and ``--random-weights SEED`` builds one on purpose, seeded and recorded, so an add draws the same
    weights."""
    images = tmp_path / "photos"
    write_scenes(images, 3)
    (tmp_path / "tiny.json").write_text(json.dumps(__import__("tests.conftest", fromlist=["x"]).TINY_CFG))
    base = ["index", "build", images, "--model", tmp_path / "tiny.json", "--workers", "0", "--no-progress",
            "--dtype", "float32"]
    assert cli(*base, "--out", tmp_path / "a") == 2
    assert capsys.readouterr().err.startswith("superclip index: error: no checkpoint (--pretrained): an index of random"
                                              " weights finds nothing; to build one on purpose")
    assert not (tmp_path / "a" / "manifest.json").exists()
    out = tmp_path / "b"
    assert cli(*base, "--out", out, "--random-weights", "7") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["random_weights_seed"] == 7 and manifest["pretrained"] is None
    copy = images / "a" / "copy.png"
    shutil.copy(images / "a" / "0000.png", copy)
    assert cli("index", "add", out, images, *ADD) == 0
    snap = snapshot(out)
    vec = {v[0]: snap["vectors"][i] for i, v in snap["items"].items()}
    assert float(vec[str(copy)] @ vec[str(images / "a" / "0000.png")]) == pytest.approx(1.0, abs=1e-5)


def _build_in_child(argv):
    import torch

    torch.set_num_threads(1)  # a forked child of a process whose torch threads ran would wait on them forever
    sys.exit(cli(*argv))


def test_what_a_folder_may_hold(ckpt, tmp_path, capsys):
    """A FIFO named ``x.png`` (before: ``index build`` blocked forever), a dangling link and a file that vanishes
    (before: every later ``add`` died on a FileNotFoundError traceback), ``.jfif`` / ``.jpe`` / ``.avif`` (before:
    ignored by extension, listed nowhere), ``.heic`` without pillow-heif, a file name that is not UTF-8 (before: a
    UnicodeEncodeError traceback from pyarrow), names holding a tab and a newline, links to a file and to a folder.
    Each file not indexed is counted by reason and listed in skipped.tsv, one escaped line each."""
    from PIL import Image

    from superclip.search.names import tsv_unescape

    photos = tmp_path / "photos"
    write_scenes(photos, 2)
    scene = Image.open(photos / "a" / "0000.png").convert("RGB")
    for name, fmt in (("x.jfif", "JPEG"), ("y.JPE", "JPEG"), ("z.avif", "AVIF"), ("tab\there.png", "PNG"),
                      ("new\nline.png", "PNG")):
        scene.save(photos / name, format=fmt)
    odd = os.path.join(os.fsencode(photos).decode(), os.fsdecode(b"caf\xe9.png"))
    scene.save(odd, format="PNG")
    (photos / "phone.heic").write_bytes(b"\0\0\0\x18ftypheic")
    (photos / "notes.txt").write_text("not an image")
    os.mkfifo(photos / "fifo.png")
    os.symlink(photos / "gone.png", photos / "dangling.png")
    outside = tmp_path / "outside"
    write_scenes(outside, 1)
    os.symlink(outside / "a" / "0000.png", photos / "link.png")
    os.symlink(outside, photos / "linked-folder")
    os.symlink(photos, photos / "a" / "loop")
    out = tmp_path / "idx"
    child = multiprocessing.get_context("fork").Process(target=_build_in_child,
                                                        args=([str(a) for a in build_args(ckpt, out, photos)],))
    child.start()
    child.join(120)
    hung = child.exitcode is None
    if hung:
        child.kill()
    assert not hung and child.exitcode == 0, "index build did not finish"
    live = _live_paths(out)
    names = sorted(os.path.basename(p) for p in live)
    heif = __import__("superclip.data.images", fromlist=["x"]).heif_support()
    assert names == sorted(["0000.png", "0001.png", "x.jfif", "y.JPE", "z.avif", "tab\there.png", "new\nline.png",
                            os.fsdecode(b"caf\xe9.png")])
    rows = (out / "skipped.tsv").read_bytes().decode("utf-8").split("\n")[:-1]
    assert all(len(r.split("\t")) == 2 for r in rows)
    skipped = {os.path.basename(tsv_unescape(p)): reason for p, reason in (r.split("\t") for r in rows)}
    assert skipped.pop("notes.txt") == "not an image file type: suffix .txt"
    assert skipped.pop("fifo.png") == "not regular files: a FIFO"
    for link in ("dangling.png", "link.png", "linked-folder", "loop"):
        assert skipped.pop(link).startswith("symbolic links, not followed: a link may lead outside the folder")
    if heif:  # the file holds only a HEIC header: read, it fails to decode, counted so
        assert skipped.pop("phone.heic").startswith("unreadable"), skipped
    else:
        assert skipped.pop("phone.heic").endswith("install pillow-heif (pip install 'superclip[heic]') to read "
                                                  "HEIC/HEIF images")
    assert skipped == {}

    # the summary: by reason; a file that vanishes and a dangling link do not break later adds
    (photos / "a" / "0000.png").unlink()
    (photos / "list.csv").write_text(f"filepath\n{photos}/b/0001.png\n{photos}/nowhere.png\n")
    capsys.readouterr()
    for _ in range(2):
        assert cli("index", "add", out, photos, photos / "list.csv", *ADD) == 0
    said = capsys.readouterr().out.splitlines()[-1]
    assert "files not indexed (4 symbolic links, not followed, 2 not an image file type, " in said  # + list.csv
    assert f"{1 + heif} unreadable images" in said and f"(listed in {out}/skipped.tsv)" in said, said
    assert "0000.png" not in " ".join(os.path.basename(p) for p in _live_paths(out) if "/a/" in p)


def test_embed_keeps_names_that_are_not_utf8(ckpt, tmp_path, capsys):
    """Before: ``superclip embed`` of a file whose name is not UTF-8 died on a UnicodeEncodeError and left OUT.npy
    without OUT.ids.jsonl."""
    write_scenes(tmp_path, 1)
    name = os.path.join(str(tmp_path), os.fsdecode(b"caf\xe9.png"))
    shutil.copy(tmp_path / "a" / "0000.png", name)
    out = tmp_path / "emb"
    assert cli("embed", "--pretrained", ckpt, name, str(tmp_path / "a" / "0000.png"), "--out", out) == 0
    ids = [json.loads(line) for line in (tmp_path / "emb.ids.jsonl").read_text().splitlines()]
    assert [os.fsencode(i) for i in ids] == [os.fsencode(name), os.fsencode(str(tmp_path / "a" / "0000.png"))]
    emb = np.load(tmp_path / "emb.npy")
    np.testing.assert_allclose(emb[0], emb[1], atol=1e-6)


@pytest.fixture(scope="module")
def reembed_case(ckpt, module_tmp):
    """9 scenes indexed with ``ckpt`` (one item removed), another checkpoint, and a fresh index of the scenes built
    with it: what a re-embedding must end equal to."""
    import torch

    import superclip
    from superclip.weights import save_checkpoint

    from .conftest import TINY_CFG

    root = module_tmp("search-reembed")
    write_scenes(root / "photos", 9)  # parts of 6: 6 + 3; after the removal, 8 live: re-embedded as 6 + 2
    torch.manual_seed(5)
    new = root / "new.pt"
    save_checkpoint(new, superclip.create_model(TINY_CFG), config=TINY_CFG)
    assert cli(*build_args(ckpt, root / "idx", root / "photos")) == 0
    assert cli("index", "remove", root / "idx", "3") == 0
    before = snapshot(root / "idx")
    # the reference: the live files in id order, in parts of 6 as the re-embedding cuts them (a part's tags are
    # ranked against its own mean, so the same parts give the same tags)
    live = [v[0] for _, v in sorted(before["items"].items()) if not v[3]]
    (root / "live.csv").write_text("filepath\n" + "".join(p + "\n" for p in live))
    assert cli(*build_args(new, root / "fresh", root / "live.csv")) == 0
    return {"idx": root / "idx", "new": new, "before": before, "fresh": snapshot(root / "fresh")}


@pytest.mark.parametrize("kill_at", [None, "part-meta:2", "reembed-commit:1", "reembed-manifest:1"])
def test_reembed_in_place_keeps_ids_and_resumes(reembed_case, tmp_path, kill_at):
    """``index reembed`` with another checkpoint: every live item keeps its id and gets the vector and tags a fresh
    build with that checkpoint gives it; a removed item stays removed; killed anywhere and rerun, the same end (and
    what a kill leaves is consistent: the old model's index, or 503 while the switch is half written). Before:
    there was no way to re-embed an index (a new checkpoint meant a new index, new ids)."""
    from superclip.search.searcher import Unavailable

    from .search_helpers import cli_killed_at

    out = tmp_path / "idx"
    shutil.copytree(reembed_case["idx"], out)
    new, before, ref = reembed_case["new"], reembed_case["before"], reembed_case["fresh"]
    argv = ["index", "reembed", out, "--pretrained", new, "--workers", "0", "--no-progress", "--batch-size", "4"]
    client = None
    if kill_at is None:  # a server over the index while it is re-embedded: it takes the new model on its next query
        from fastapi.testclient import TestClient

        from superclip.search.server import create_app
        client = TestClient(create_app(str(out)))
        assert client.get("/api/search", params={"q": "red"}).status_code == 200
    if kill_at:
        assert cli_killed_at(kill_at, *argv) == -9
        try:  # what the kill left: the old index whole, or 503 while the catalog's switch is not in the manifest yet
            assert snapshot(out)["check"]["agree"]
        except Unavailable as e:
            assert kill_at == "reembed-manifest:1" and "is being re-embedded" in str(e)
    assert cli(*argv) == 0
    after = snapshot(out)
    by_path = {v[0]: i for i, v in ref["items"].items()}
    assert {i for i, v in after["items"].items() if not v[3]} == {i for i, v in before["items"].items() if not v[3]}
    assert after["items"][3][3] == 1 and after["check"]["agree"]
    for i, v in after["items"].items():
        if not v[3]:
            j = by_path[v[0]]
            np.testing.assert_allclose(after["vectors"][i], ref["vectors"][j], atol=1e-6)
            assert [t for t, _ in v[2]] == [t for t, _ in ref["items"][j][2]]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["pretrained"] == str(new) and "reembed" not in manifest
    assert sorted(p.name for p in (out / "img_emb").iterdir()) == ["img_emb_00002.npy", "img_emb_00003.npy"]
    if client is not None:
        engine = client.app.state.engine
        top = client.get("/api/search", params={"q": "a red circle", "k": 1}).json()["results"][0]["id"]
        assert engine.sha256 == manifest["checkpoint_sha256"]  # the query loaded the new model
        q = engine.text(["a red circle"])[0]
        assert top == max((float(after["vectors"][i] @ q), i) for i in after["vectors"])[1]
        assert len(client.get("/api/items/1/similar", params={"k": 3}).json()["results"]) == 3
