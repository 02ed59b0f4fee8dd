"""``superclip data icons``: a captioned corpus of real drawings from ``@iconify/json``, with evaluation sets made
only from held-out sets (whole sets the model never sees):

    OUT/train-NNNNNN.tar            webdataset shards (KEY.png, KEY.txt caption, KEY.json set / name / licence)
    OUT/zeroshot/CONCEPT/*.png      zero-shot over the concepts most held-out sets draw (+ templates.txt)
    OUT/retrieval/retrieval.csv     image <-> "NAME icon" (filepath,title; images/ beside it)
    OUT/compositional/TYPE.json     hard negatives in SugarCrepe's layout (images/ beside them)
    OUT/dense/{train,test}/         icons on backgrounds, index-PNG masks (classes.txt: background + concepts)
    OUT/LICENSES                    every set used, with its licence and author
    OUT/manifest.json               version, sha256, renderer, sets, counts, every icon skipped and why

Everything is written into ``OUT.partial`` under a lock and renamed to ``OUT`` when complete, so ``OUT`` is
either absent or whole. Every draw is seeded: the same package, options and seed give the same bytes.
"""
from __future__ import annotations

import fcntl
import io
import json
import logging
import random
import shutil
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ..errors import ConfigError
from . import icons as text
from .icon_render import RenderError, dense_scene, on_white, png_bytes, render, renderer_version
from .iconify import (PACKAGE, PINNED_VERSION, Icon, IconSet, check_sha256, expected_sha256, fetch_package,
                      read_index, read_sets, select_sets)

log = logging.getLogger(__name__)
Progress = Optional[Callable[[str, int], Callable[[int], None]]]  # (stage, total) -> update(n)


@dataclass
class CorpusOptions:
    image_size: int = 64
    seed: int = 0
    max_per_set: int = 500  # training icons drawn from each training set
    shard_size: int = 1000
    zeroshot_classes: int = 30
    zeroshot_per_class: int = 40
    retrieval_items: int = 1000
    compositional_per_type: int = 300
    dense_classes: int = 10
    dense_train: int = 300
    dense_test: int = 100


class _Drawings:
    """Renders each (set, icon) once at the corpus size; remembers every icon that failed and why."""

    def __init__(self, size: int):
        self.size, self.cache, self.skipped = size, {}, {}

    def png(self, prefix: str, icon: Icon) -> Optional[bytes]:
        key = f"{prefix}:{icon.name}"
        if key not in self.cache:
            try:
                self.cache[key] = png_bytes(on_white(render(icon, self.size)))
            except RenderError as e:
                self.cache[key] = None
                self.skipped[key] = str(e)
        return self.cache[key]


def _stage(progress: Progress, name: str, total: int) -> Callable[[int], None]:
    return progress(name, total) if progress else (lambda n: None)


def _tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_training(out: Path, sets: Dict[str, IconSet], opts: CorpusOptions, draw: _Drawings,
                   progress: Progress) -> Tuple[List[str], Dict[str, int], set]:
    """Shards of the training sets' icons in a seeded order across sets; returns (shard names, icons per set,
    the concepts of the icons written)."""
    picks = [(p, sets[p].icons[n]) for p in sorted(sets) for n in sorted(sets[p].icons)]
    random.Random(f"{opts.seed}-train-order").shuffle(picks)
    update = _stage(progress, "training shards", len(picks))
    shards, used, concepts, tar, written = [], {}, set(), None, 0
    try:
        for prefix, icon in picks:
            update(1)
            png = draw.png(prefix, icon)
            if png is None:
                continue
            if written % opts.shard_size == 0:
                if tar is not None:
                    tar.close()
                shards.append(f"train-{len(shards):06d}.tar")
                tar = tarfile.open(out / shards[-1], "w")
            s = sets[prefix]
            caption = text.train_caption(icon.name, s.name, icon.category,
                                         random.Random(f"{opts.seed}-{prefix}-{icon.name}-caption"), s.names)
            meta = {"set": prefix, "name": icon.name, "concept": text.concept(icon.name, s.names),
                    "category": icon.category, "license": (s.info.get("license") or {}).get("spdx")}
            key = f"{written:08d}"
            for ext, data in (("png", png), ("txt", caption.encode()), ("json", json.dumps(meta).encode())):
                _tar_member(tar, f"{key}.{ext}", data)
            used[prefix] = used.get(prefix, 0) + 1
            concepts.add(meta["concept"])
            written += 1
    finally:
        if tar is not None:
            tar.close()
    return shards, used, concepts


def _save(folder: Path, name: str, data: bytes) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)
    return name


def write_zero_shot(out: Path, held: Dict[str, IconSet], classes: Sequence[str], opts: CorpusOptions,
                    draw: _Drawings, used: Dict[str, int]) -> Dict[str, int]:
    """``zeroshot/CONCEPT/SET-NAME.png`` (one image per set and style of the concept, at most zeroshot_per_class)
    and ``zeroshot/templates.txt``; returns images per class."""
    counts = {}
    for c in classes:
        seen, pool = set(), []
        for p in sorted(held):
            names = held[p].names
            for icon in held[p].icons.values():
                if text.concept(icon.name, names) == c and (p, text.name_text(icon.name, names)) not in seen:
                    seen.add((p, text.name_text(icon.name, names)))
                    pool.append((p, icon))
        random.Random(f"{opts.seed}-zeroshot-{c}").shuffle(pool)
        n = 0
        for p, icon in pool:
            png = draw.png(p, icon)
            if png is None:
                continue
            _save(out / "zeroshot" / c.replace(" ", "_"), f"{p}-{icon.name}.png", png)
            used[p] = used.get(p, 0) + 1
            n += 1
            if n == opts.zeroshot_per_class:
                break
        counts[c] = n
    (out / "zeroshot" / "templates.txt").write_text("\n".join(text.ZERO_SHOT_TEMPLATES) + "\n")
    return counts


def write_retrieval(out: Path, pool: List[Tuple[str, Icon]], siblings: Dict[str, frozenset], opts: CorpusOptions,
                    draw: _Drawings, used: Dict[str, int]) -> int:
    """``retrieval/retrieval.csv`` (filepath,title) of held-out icons, every caption distinct."""
    pool = list(pool)
    random.Random(f"{opts.seed}-retrieval").shuffle(pool)
    rows, captions = [], set()
    for p, icon in pool:
        if len(rows) == opts.retrieval_items:
            break
        caption = text.eval_caption(icon.name, siblings[p])
        if caption in captions or (png := draw.png(p, icon)) is None:
            continue
        captions.add(caption)
        rows.append(f"images/{_save(out / 'retrieval' / 'images', f'{p}-{icon.name}.png', png)},{caption}")
        used[p] = used.get(p, 0) + 1
    (out / "retrieval" / "retrieval.csv").write_text("filepath,title\n" + "".join(r + "\n" for r in rows))
    return len(rows)


def write_compositional(out: Path, pool: List[Tuple[str, Icon]], siblings: Dict[str, frozenset], offs,
                        opts: CorpusOptions, draw: _Drawings, used: Dict[str, int]) -> Dict[str, int]:
    """SugarCrepe's layout: ``compositional/TYPE.json`` = {id: {filename, caption, negative_caption, changed}}
    (``changed``: [the caption's word, the negative's word], null where a word is added or dropped)."""
    by_type: Dict[str, list] = {}
    for p, icon in pool:
        rng = random.Random(f"{opts.seed}-{p}-{icon.name}-negatives")
        for kind, caption, negative, changed in text.hard_negatives(icon.name, rng, offs, siblings[p]):
            by_type.setdefault(kind, []).append((p, icon, caption, negative, changed))
    counts = {}
    for kind in sorted(by_type):
        items = by_type[kind]
        random.Random(f"{opts.seed}-compositional-{kind}").shuffle(items)
        chosen = {}
        for p, icon, caption, negative, changed in items:
            if len(chosen) == opts.compositional_per_type:
                break
            png = draw.png(p, icon)
            if png is None:
                continue
            name = _save(out / "compositional" / "images", f"{p}-{icon.name}.png", png)
            chosen[f"{p}:{icon.name}"] = {"filename": f"images/{name}", "caption": caption,
                                          "negative_caption": negative, "changed": changed}
            used[p] = used.get(p, 0) + 1
        (out / "compositional" / f"{kind}.json").write_text(json.dumps(chosen, indent=1) + "\n")
        counts[kind] = len(chosen)
    return counts


def write_dense(out: Path, held: Dict[str, IconSet], ranked: Sequence[str], opts: CorpusOptions, draw: _Drawings,
                used: Dict[str, int], progress: Progress) -> List[str]:
    """``dense/{train,test}/images|annotations/NNNNNN.png`` and ``scenes.jsonl``, ``dense/classes.txt``. The probe's
    train and test scenes draw from different held-out sets (alternate sets, sorted by prefix); the classes are the
    first ``dense_classes`` zero-shot concepts that both halves draw."""
    halves = {"train": sorted(held)[0::2], "test": sorted(held)[1::2]}
    pools = {split: {c: [(p, i) for p in prefixes for i in held[p].icons.values()
                         if text.concept(i.name, held[p].names) == c and draw.png(p, i) is not None] for c in ranked}
             for split, prefixes in halves.items()}
    classes = [c for c in ranked if all(pools[s][c] for s in pools)][:opts.dense_classes]
    for split, n in (("train", opts.dense_train), ("test", opts.dense_test)):
        folder = out / "dense" / split
        (folder / "images").mkdir(parents=True, exist_ok=True)
        (folder / "annotations").mkdir(parents=True, exist_ok=True)
        choices = [(k + 1, pools[split][c]) for k, c in enumerate(classes)]
        update = _stage(progress, f"dense {split}", n)
        with open(folder / "scenes.jsonl", "w") as log_file:
            for i in range(n):
                image, mask, scene = dense_scene(choices, opts.image_size,
                                                 random.Random(f"{opts.seed}-dense-{split}-{i}"))
                image.save(folder / "images" / f"{i:06d}.png")
                mask.save(folder / "annotations" / f"{i:06d}.png")
                log_file.write(json.dumps({"image": f"{i:06d}.png", **scene}) + "\n")
                for placed in scene["icons"]:
                    p = placed["icon"].split(":")[0]
                    used[p] = used.get(p, 0) + 1
                update(1)
    (out / "dense" / "classes.txt").write_text("\n".join(["background"] + list(classes)) + "\n")
    return list(classes)


def licences_text(version: str, sets: Dict[str, IconSet], roles: Dict[str, str], used: Dict[str, int]) -> str:
    lines = [f"Icons from the npm package {PACKAGE} {version} (MIT; the package gathers the sets below, each under",
             "its own licence). Every set this corpus uses, with its licence and author:", ""]
    for p in sorted(used):
        info = sets[p].info
        lic, author = info.get("license") or {}, info.get("author") or {}
        lines.append(f"{p}\t{sets[p].name}\t{roles[p]}\t{used[p]} images\tlicence: {lic.get('title', '?')} "
                     f"({lic.get('spdx', '?')}) {lic.get('url', '')}\tauthor: {author.get('name', '?')} "
                     f"{author.get('url', '')}".rstrip())
    return "\n".join(lines) + "\n"


def _lock(out: Path):
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        handle = open(out.parent / f".{out.name}.lock", "a+")
    except OSError as e:
        raise ConfigError(f"--out: cannot create folder {out}: {e.strerror or e}") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise ConfigError(f"{out} is being written by another superclip data icons") from None
    return handle


def build_corpus(out: Path, tarball: Optional[Path] = None, version: str = PINNED_VERSION,
                 sha256: Optional[str] = None, registry: Optional[str] = None, fetch_retries: Optional[int] = None,
                 train_sets: Optional[List[str]] = None, held_out: Optional[List[str]] = None,
                 opts: CorpusOptions = CorpusOptions(), progress: Progress = None) -> Dict:
    """Fetch (or read ``tarball``), check its sha256, and write the corpus to ``out`` (see the module). Returns the
    manifest. A fetched tarball is kept in ``out`` (pass it as ``tarball`` next time)."""
    out = Path(out)

    def check_out():
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise ConfigError(f"--out {out} already exists and is not empty: an icon corpus is never written over")
    check_out()
    if tarball is not None and not Path(tarball).is_file():
        raise ConfigError(f"--tarball {tarball}: file not found")
    expected = expected_sha256(version, sha256)
    handle = _lock(out)
    staging = out.with_name(out.name + ".partial")
    try:
        check_out()  # again under the lock: another command may have finished it meanwhile
        shutil.rmtree(staging, ignore_errors=True)  # an interrupted run's: we hold the lock
        staging.mkdir(parents=True)
        if tarball is None:
            update = _stage(progress, f"npm pack {PACKAGE}@{version}", 1)
            tarball = fetch_package(staging, version, registry, fetch_retries)
            update(1)
        digest = check_sha256(Path(tarball), expected)
        found_version, index = read_index(Path(tarball))
        chosen = select_sets(index, train_sets, held_out, found_version)
        manifest = _write(staging, Path(tarball), found_version, digest, chosen, opts, progress)
        if out.is_dir():
            out.rmdir()  # empty (checked under the lock)
        staging.rename(out)
        return manifest
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        Path(handle.name).unlink(missing_ok=True)
        handle.close()


def _write(out: Path, tarball: Path, version: str, digest: str, chosen, opts: CorpusOptions, progress) -> Dict:
    def keep_some(prefix: str, s: IconSet) -> IconSet:  # a training set keeps only the icons drawn from it
        if prefix in chosen.held_out:
            return s
        names = sorted(s.icons)
        picked = random.Random(f"{opts.seed}-{prefix}-pick").sample(names, min(opts.max_per_set, len(names)))
        s.icons = {n: s.icons[n] for n in sorted(picked)}
        return s

    update = _stage(progress, "reading sets", len(chosen.train) + len(chosen.held_out))
    sets = read_sets(tarball, chosen.train + chosen.held_out, lambda p, s: (update(1), keep_some(p, s))[1])
    draw = _Drawings(opts.image_size)
    train = {p: sets[p] for p in chosen.train}
    held = {p: sets[p] for p in chosen.held_out}
    shards, used, train_concepts = write_training(out, train, opts, draw, progress)
    siblings = {p: s.names for p, s in sets.items()}
    ranked = text.rank_concepts({p: held[p].names for p in held}, train_concepts,
                                max(opts.zeroshot_classes, opts.dense_classes))
    pool = [(p, held[p].icons[n]) for p in sorted(held) for n in sorted(held[p].icons)]
    offs = text.off_concepts(siblings)
    eval_used: Dict[str, int] = {}
    zero_shot = write_zero_shot(out, held, ranked[:opts.zeroshot_classes], opts, draw, eval_used)
    retrieval = write_retrieval(out, pool, siblings, opts, draw, eval_used)
    compositional = write_compositional(out, pool, siblings, offs, opts, draw, eval_used)
    dense = write_dense(out, held, ranked, opts, draw, eval_used, progress)
    roles = {**{p: "training" for p in train}, **{p: "held out" for p in held}}
    all_used = {**used, **eval_used}
    (out / "LICENSES").write_text(licences_text(version, sets, roles, all_used))
    manifest = {"package": PACKAGE, "version": version, "sha256": digest, "tarball": tarball.name,
                "renderer": renderer_version(), "options": asdict(opts),
                "train_sets": sorted(used), "held_out_sets": sorted(eval_used),
                "held_out_named": chosen.held_out, "left_out": chosen.left_out,
                "shards": shards, "train_samples": sum(used.values()), "zeroshot": zero_shot,
                "retrieval_items": retrieval, "compositional": compositional, "dense_classes": dense,
                "skipped": [{"icon": k, "reason": v} for k, v in sorted(draw.skipped.items())]}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest
