"""``superclip index build | add | remove | optimize``: the parts (clip-retrieval layout), the catalog's stable ids,
incremental adds, removals, and builds killed (SIGKILL) at exact moments then rerun, which must end equal to an
uninterrupted build. The kills use ``SUPERCLIP_TEST_KILL_AT`` (a test-only hook in ``superclip.search.layout``)."""
import json
import os
import shutil
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

pytest.importorskip("faiss")

from .search_helpers import (assert_same, build_args, cli, cli_killed_at, make_checkpoint, snapshot,  # noqa: E402
                             write_scenes)

N = 20


@pytest.fixture(scope="module")
def env(module_tmp):
    root = module_tmp("search-index")
    ckpt = make_checkpoint(root / "tiny.pt")
    images = root / "images"
    write_scenes(images, N)
    (images / "a" / "broken.jpg").write_bytes(b"not an image")
    reference = root / "reference"
    assert cli(*build_args(ckpt, reference, images)) == 0
    return {"root": root, "ckpt": ckpt, "images": images, "reference": reference, "snap": snapshot(reference)}


def test_build_writes_clip_retrieval_parts_and_a_catalog(env):
    ref = env["reference"]
    manifest = json.loads((ref / "manifest.json").read_text())
    # 21 files (20 scenes + 1 broken) in sorted order, parts of 6: 6, 6, 6, 3 planned; the broken one is skipped
    assert manifest["planned"] == 4 and sum(manifest["parts"].values()) == N and manifest["skipped"] == 1
    assert manifest["dim"] == 32 and manifest["dtype"] == "float32" and manifest["index"]["kind"] == "flat"
    assert manifest["index"]["recall_at_10"] == 1.0
    assert (ref / "skipped.tsv").read_text().startswith(str(env["images"] / "a" / "broken.jpg") + "\t")
    rows = 0
    for i in range(4):
        emb = np.load(ref / "img_emb" / f"img_emb_{i:05d}.npy")
        meta = pq.read_table(ref / "metadata" / f"metadata_{i:05d}.parquet").to_pydict()
        assert emb.shape == (manifest["parts"][str(i)], 32) and len(meta["image_path"]) == emb.shape[0]
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
        assert all(len(t) == 5 and len(p) == 5 for t, p in zip(meta["tags"], meta["tag_probs"]))
        rows += emb.shape[0]
    assert rows == N
    snap = env["snap"]
    assert sorted(snap["items"]) == list(range(1, N + 1))  # ids 1..N, in part order
    assert all(snap["searches"][i][0] == i for i in snap["vectors"])  # an image's own vector finds it first
    assert snap["check"] == {"live": N, "searchable": N, "duplicates": 0, "orphans": 0, "agree": True}


def test_rerunning_a_finished_build_changes_nothing(env, tmp_path):
    out = tmp_path / "idx"
    shutil.copytree(env["reference"], out)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    assert cli(*build_args(env["ckpt"], out, env["images"])) == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != ".lock"
            and p.name != "manifest.json" and p.suffix != ".tsv"} == {
        p: m for p, m in before.items() if p.name != "manifest.json" and p.suffix != ".tsv"}


def test_add_is_idempotent_and_embeds_only_what_is_new_or_changed(env, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(env["images"], images)
    out = tmp_path / "idx"
    assert cli(*build_args(env["ckpt"], out, images)) == 0
    first = snapshot(out)
    planned = json.loads((out / "manifest.json").read_text())["planned"]
    assert cli("index", "add", out, images, "--no-progress", "--workers", "0") == 0  # nothing changed
    again = snapshot(out)
    assert_same(first, again)
    assert json.loads((out / "manifest.json").read_text())["planned"] == planned  # no part was planned
    # two new scenes, one changed file, one file gone
    write_scenes(images, 2, start=N)
    changed = images / "a" / "0000.png"
    shutil.copy(images / "b" / "0001.png", changed)
    os.utime(changed, (time.time() + 5, time.time() + 5))
    (images / "b" / "0003.png").unlink()
    id_of = {v[0]: i for i, v in first["items"].items()}
    assert cli("index", "add", out, images, "--no-progress", "--workers", "0") == 0
    after = snapshot(out)
    new_ids = sorted(set(after["items"]) - set(first["items"]))
    assert len(new_ids) == 3 and min(new_ids) == N + 1  # 2 new + the changed one, ids never reused
    assert after["items"][id_of[str(changed)]][3] == 1  # the old version of the changed file: deleted
    assert after["items"][id_of[str(images / "b" / "0003.png")]][3] == 1  # the gone file: deleted
    assert {after["items"][i][0] for i in new_ids} == {str(changed), str(images / "a" / "0020.png"),
                                                       str(images / "b" / "0021.png")}
    live = [i for i, v in after["items"].items() if not v[3]]
    assert len(live) == N + 2 - 1 and after["check"]["agree"]
    for i in live:  # every live item is found by its own vector; deleted ones never come back
        assert after["searches"][i][0] == i or np.allclose(after["vectors"][after["searches"][i][0]],
                                                            after["vectors"][i], atol=1e-6)
    dead = {i for i, v in after["items"].items() if v[3]}
    assert not dead & {h for hits in after["searches"].values() for h in hits}
    assert cli("index", "add", out, images, "--no-progress", "--workers", "0") == 0  # and idempotent again
    assert_same(after, snapshot(out))


def test_remove_then_optimize(env, tmp_path):
    out = tmp_path / "idx"
    shutil.copytree(env["reference"], out)
    target = env["images"] / "b"
    assert cli("index", "remove", out, target, "3") == 0
    snap = snapshot(out)
    dead = {i for i, v in snap["items"].items() if v[3]}
    assert dead == {i for i, v in snap["items"].items() if v[0].startswith(str(target) + "/")} | {3}
    assert not dead & {h for hits in snap["searches"].values() for h in hits}
    assert snap["check"]["agree"] and snap["check"]["live"] == N - len(dead)
    assert cli("index", "optimize", out) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["index"]["count"] == N - len(dead) and manifest["index"]["generation"] == 1
    assert [p.name for p in (out / "index").iterdir()] == ["main-1.faiss"]
    assert_same(snap, snapshot(out))


def test_remove_of_an_unknown_id_is_one_line(env, tmp_path, capsys):
    out = tmp_path / "idx"
    shutil.copytree(env["reference"], out)
    assert cli("index", "remove", out, "999") == 2
    assert capsys.readouterr().err == f"superclip index: error: no item with id 999 in {out}\n"


# (hook point:which pass): inside a part's embeddings write, inside its metadata write, between its metadata and
# its done record (the part written, not yet in the catalog), inside the catalog transaction of the 2nd part,
# inside the index write, between the index file and the manifest
BUILD_KILLS = ["plan-manifest:1", "part-emb:2", "part-meta:3", "part-before-done:1", "ingest-commit:2", "index-write:1",
               "index-before-manifest:1"]


@pytest.mark.parametrize("kill_at", BUILD_KILLS)
def test_build_killed_then_rerun_equals_an_uninterrupted_build(env, tmp_path, kill_at):
    out = tmp_path / "idx"
    args = build_args(env["ckpt"], out, env["images"])
    assert cli_killed_at(kill_at, *args) == -9
    partial = snapshot(out) if (out / "manifest.json").exists() else None
    if partial is not None:  # what a kill leaves opens, and catalog and index agree
        assert partial["check"]["agree"] and partial["check"]["duplicates"] == 0
    assert cli(*args) == 0
    assert_same(env["snap"], snapshot(out))
    assert not list(out.rglob("*.tmp"))


@pytest.mark.parametrize("kill_at", ["part-meta:1", "ingest:1", "plan-manifest:1"])
def test_add_killed_then_rerun_equals_an_uninterrupted_add(env, tmp_path, kill_at):
    images = tmp_path / "images"
    shutil.copytree(env["images"], images)
    write_scenes(tmp_path / "more", 8, start=N)
    expected, out = tmp_path / "expected", tmp_path / "idx"
    shutil.copytree(env["reference"], expected)
    shutil.copytree(env["reference"], out)
    add = ["index", "add", None, env["images"], tmp_path / "more", "--no-progress", "--workers", "0",
           "--part-size", "3"]
    assert cli(*[expected if a is None else a for a in add]) == 0
    assert cli_killed_at(kill_at, *[out if a is None else a for a in add]) == -9
    assert snapshot(out)["check"]["agree"]
    assert cli(*[out if a is None else a for a in add]) == 0
    assert_same(snapshot(expected), snapshot(out))


@pytest.mark.parametrize("kill_at", ["index-write:1", "index-before-manifest:1"])
def test_optimize_killed_then_rerun(env, tmp_path, kill_at):
    out = tmp_path / "idx"
    shutil.copytree(env["reference"], out)
    assert cli("index", "remove", out, "5") == 0
    before = snapshot(out)
    assert cli_killed_at(kill_at, "index", "optimize", out) == -9
    assert_same(before, snapshot(out))  # the old index still serves, with the removal filtered
    assert cli("index", "optimize", out) == 0
    assert_same(before, snapshot(out))
    assert [p.name for p in (out / "index").iterdir()] == ["main-1.faiss"]


def test_a_parts_tags_do_not_depend_on_its_batches():
    """The embedder ranks a part's tags once the part's mean is known: tags from candidates gathered batch by batch
    (3 images at a time) equal the tags of the whole part at once, and an image tagged alone gets its most probable
    words (lift over itself is 0 for every word)."""
    import superclip
    import torch
    from superclip.evaluate.tags import top_tags
    from superclip.search.job import Embedder

    from .conftest import TINY_CFG

    model = superclip.create_model(TINY_CFG).eval()
    e = Embedder(model, superclip.get_transforms(model)[1], superclip.get_tokenizer(model.config), "cpu", top_k=5,
                 workers=0)
    logits = torch.randn(8, 49408, generator=torch.Generator().manual_seed(1)) * 3
    whole = e.tags(logits)
    chunks = [e.tag_table.candidates(logits[s:s + 3]) for s in range(0, 8, 3)]
    total = sum(c[2] for c in chunks)
    batched = e.tag_table.rank(torch.cat([c[0] for c in chunks]), torch.cat([c[1] for c in chunks]), (total / 8).log())
    assert [[w for w, _ in t] for t in whole] == [[w for w, _ in t] for t in batched]
    np.testing.assert_allclose([[p for _, p in t] for t in whole], [[p for _, p in t] for t in batched], atol=1e-7)
    alone = top_tags(logits[0], e.tokenizer, 5, e.exclude)
    probs = [p for _, p in alone]
    assert probs == sorted(probs, reverse=True) and len(alone) == 5
    assert [w for w, _ in alone] != [w for w, _ in whole[0]]  # among 8 images, lift reorders them


def test_a_max_index_memory_too_small_is_one_line(env, tmp_path, capsys):
    """20 vectors of dim 32 need 3,520 bytes as a flat index (too few to train PQ codes): 1K is refused in one line
    (before: faiss's traceback from training 256 PQ centroids on 20 points); the parts stay, so a rerun with a
    larger budget finishes the build."""
    out = tmp_path / "idx"
    assert cli(*build_args(env["ckpt"], out, env["images"], extra=["--max-index-memory", "1K"])) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("superclip index: error: --max-index-memory 1K is too small for an index of 20 vectors of dim 32: "
                   "give at least 3.5K")
    assert cli(*build_args(env["ckpt"], out, env["images"], extra=["--max-index-memory", "3.5K"])) == 0
    assert_same(env["snap"], snapshot(out))


def _index_command(argv, delay=None):
    import sys

    import torch

    from .search_helpers import cli as run

    if delay:
        os.environ["SUPERCLIP_TEST_WRITE_DELAY"] = delay
    torch.set_num_threads(1)
    sys.exit(run(*argv))


@pytest.mark.parametrize("second", ["build", "add", "optimize", "remove"])
def test_a_second_index_command_while_a_build_runs_is_refused_in_one_line(env, tmp_path, capfd, second):
    """A second writer (the same build, an add, an optimize, a remove) started while a build runs on the folder:
    it stops at once with one line naming the lock (exit 2); the build ends equal to an uninterrupted one. The
    build holds each file write 0.3 s (the test hook), so it is surely still running when the second starts,
    just after the build wrote its manifest."""
    import multiprocessing

    out = tmp_path / "idx"
    build = [str(a) for a in build_args(env["ckpt"], out, env["images"])]
    other = {"build": build, "add": ["index", "add", out, env["images"], "--no-progress", "--workers", "0"],
             "optimize": ["index", "optimize", out], "remove": ["index", "remove", out, "0"]}[second]
    ctx = multiprocessing.get_context("fork")
    first = ctx.Process(target=_index_command, args=(build, "0.3"))
    first.start()
    deadline = time.monotonic() + 120
    while not (out / "manifest.json").exists():
        assert first.exitcode is None and time.monotonic() < deadline, "the build ended before its manifest"
        time.sleep(0.01)
    then = ctx.Process(target=_index_command, args=([str(a) for a in other],))
    then.start()
    then.join(120)
    still_running = first.exitcode is None
    first.join(300)
    err = capfd.readouterr().err
    assert still_running, "the build had finished before the second command ended: nothing overlapped"
    assert (first.exitcode, then.exitcode) == (0, 2), err
    refused = [line for line in err.splitlines() if "superclip index: error:" in line]
    assert len(refused) == 1 and f"{out} is in use by another superclip index command" in refused[0], err
    assert "Traceback" not in err
    assert_same(env["snap"], snapshot(out))
    assert not list(out.rglob("*.tmp"))


def test_index_commands_on_a_missing_folder_create_nothing(tmp_path, capsys):
    """add / optimize / remove on a folder that does not exist: the one-line "holds no index", and no folder made
    (they take the folder's lock, which must not create it)."""
    for argv in (["index", "add", tmp_path / "nope", tmp_path], ["index", "optimize", tmp_path / "nope"],
                 ["index", "remove", tmp_path / "nope", "3"]):
        assert cli(*argv) == 2
        assert "nope holds no index (no manifest.json)" in capsys.readouterr().err
        assert not (tmp_path / "nope").exists()


@pytest.mark.parametrize("command", ["add", "optimize", "remove"])
def test_a_command_arriving_before_the_builds_manifest_says_the_folder_is_in_use(tmp_path, capsys, command):
    """A build holds the folder's lock from its start, seconds before its manifest exists (the model loads). A
    command arriving then must say the folder is in use. Before: add / optimize / remove read the manifest before
    taking the lock and answered "holds no index: build one" while the build ran (seen when a build and an add
    were started at the same moment)."""
    import fcntl

    out = tmp_path / "idx"
    out.mkdir()
    with open(out / ".lock", "a+") as held:  # what a starting build holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        argv = {"add": ["index", "add", out, tmp_path], "optimize": ["index", "optimize", out],
                "remove": ["index", "remove", out, "3"]}[command]
        assert cli(*argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{out} is in use by another superclip index command" in err[0], err
