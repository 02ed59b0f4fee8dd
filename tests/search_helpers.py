"""Shared pieces of the search tests: a tiny checkpoint, folders of synthetic scenes, and snapshots of an index folder
that compare two builds (ids, paths, tags, vectors, search results)."""
from __future__ import annotations

import multiprocessing
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from .conftest import TINY_CFG


def make_checkpoint(path: Path) -> Path:
    import superclip
    from superclip.weights import save_checkpoint

    torch.manual_seed(0)
    save_checkpoint(path, superclip.create_model(TINY_CFG), config=TINY_CFG)
    return path


def write_scenes(folder: Path, n: int, start: int = 0, size: int = 32, seed: int = 0) -> List[Path]:
    """``n`` synthetic scene PNGs (scene ``start`` onwards) in two sub-folders; returns their paths."""
    from superclip.data.synthetic import SyntheticCaptions

    data = SyntheticCaptions(start + n, image_size=size, seed=seed)
    out = []
    for i in range(start, start + n):
        sub = folder / ("a" if i % 2 == 0 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        data[i][0].save(sub / f"{i:04d}.png")
        out.append(sub / f"{i:04d}.png")
    return out


def write_scene_shards(folder: Path, n: int, shard_size: int = 3) -> List[str]:
    """``n`` synthetic training samples (32 px, seed 1) as webdataset shards of ``shard_size`` in ``folder``."""
    from superclip.data.synth_sets import write_shards

    return write_shards(str(folder), n, image_size=32, seed=1, split="train", shard_size=shard_size)


def cli(*argv: str) -> int:
    from superclip.cli import main

    return main([str(a) for a in argv])


def _child(argv, kill_at):
    os.environ["SUPERCLIP_TEST_KILL_AT"] = kill_at
    torch.set_num_threads(1)
    sys.exit(cli(*argv))


def cli_killed_at(kill_at: str, *argv: str) -> int:
    """Run the CLI in a forked process that SIGKILLs itself at the test hook's point ``kill_at``; its exit code."""
    proc = multiprocessing.get_context("fork").Process(target=_child, args=(argv, kill_at))
    proc.start()
    proc.join(300)
    return proc.exitcode


def snapshot(root: Path) -> Dict:
    """What a user can observe of an index folder: items (id -> path, sha256, tags, deleted), live vectors by id,
    the top-5 ids of a search with every live vector, live thumbnails by id, and whether catalog and index agree."""
    from superclip.search.parts import read_thumb
    from superclip.search.searcher import Searcher

    s = Searcher(str(root))
    try:
        items = s.catalog.items([r[0] for r in s.catalog.locations(live=False)])
        vectors = {i: s.vector(i) for i, it in items.items() if not it["deleted"]}
        searches = {i: [h[0] for h in s.search(v, 5)] for i, v in vectors.items()}
        thumbs = {i: read_thumb(s.layout, it["part"], it["thumb_offset"], it["thumb_size"]) for i, it in items.items()
                  if not it["deleted"] and it["thumb_size"] is not None}
        return {"items": {i: (it["path"], it["sha256"], it["tags"], it["deleted"]) for i, it in items.items()},
                "vectors": vectors, "searches": searches, "thumbs": thumbs, "check": s.verify()}
    finally:
        s.close()


def assert_same(a: Dict, b: Dict, atol: float = 1e-6) -> None:
    assert a["items"].keys() == b["items"].keys()
    for i in a["items"]:
        pa, sa, ta, da = a["items"][i]
        pb, sb, tb, db = b["items"][i]
        assert (pa, sa, da) == (pb, sb, db), i
        assert [t for t, _ in ta] == [t for t, _ in tb]
        assert np.allclose([p for _, p in ta], [p for _, p in tb], atol=atol)
    assert a["vectors"].keys() == b["vectors"].keys()
    for i in a["vectors"]:
        np.testing.assert_allclose(a["vectors"][i], b["vectors"][i], atol=atol, rtol=0)
    assert a["searches"] == b["searches"]
    assert a["thumbs"] == b["thumbs"]  # the same JPEG bytes for every live item
    assert a["check"]["agree"] and b["check"]["agree"], (a["check"], b["check"])


def build_args(ckpt: Path, out: Path, *sources, extra: Optional[list] = None) -> list:
    return ["index", "build", *sources, "--out", out, "--pretrained", ckpt, "--part-size", "6", "--batch-size", "4",
            "--workers", "0", "--no-progress", "--dtype", "float32", *(extra or [])]


COLOURS = ("red", "blue", "green", "yellow")
SHAPES = ("circle", "square", "triangle")


def write_colour_scenes(folder: Path, per_colour: int = 6, size: int = 32) -> List[tuple]:
    """One large shape at the centre on grey, ``per_colour`` images of each of COLOURS (shapes in turn);
    returns (path, caption) pairs."""
    import random

    from superclip.data.synthetic import Scene, SceneObject, render

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for c, colour in enumerate(COLOURS):
        for j in range(per_colour):
            shape = SHAPES[j % len(SHAPES)]
            scene = Scene((SceneObject(shape, colour, "large", "center"),), "grey")
            path = folder / f"{colour}-{j}.png"
            render(scene, size, random.Random(c * 100 + j)).save(path)
            out.append((path, f"a {colour} {shape}"))
    return out


def fit_checkpoint(path: Path, pairs: List[tuple], steps: int = 60, lr: float = 2e-3) -> Path:
    """A tiny SuperCLIP fitted on ``pairs`` (the indexed images with their captions, one full batch a step), so that
    its text search and head tags know the scenes' colours; saved with its token statistics."""
    import superclip
    from superclip.data.images import decode_image
    from superclip.weights import save_checkpoint

    torch.manual_seed(0)
    model = superclip.create_model(TINY_CFG)
    preprocess = superclip.get_transforms(model)[1]
    tokenizer = superclip.get_tokenizer(model.config)
    images = torch.stack([preprocess(decode_image(p)) for p, _ in pairs])
    ids = tokenizer([c for _, c in pairs])
    criterion = superclip.SuperCLIPLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    criterion.train()
    for _ in range(steps):
        losses = criterion(model(images, ids), ids)
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
    model.eval()
    save_checkpoint(path, model, criterion, config=TINY_CFG)
    return path
