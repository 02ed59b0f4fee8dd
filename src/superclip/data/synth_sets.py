"""The synthetic families written to disk (``superclip data synth``): webdataset shards to train on, hard negatives in
SugarCrepe's layout (``--compositional``) and images with index-PNG masks in the ADE20K / VOC layout (``--masks``).
Every file is written atomically; existing shards are replaced only when asked (``overwrite``), and a folder that
already holds a set is never written over."""
from __future__ import annotations

import io
import json
import random
import tarfile
from dataclasses import asdict
from pathlib import Path
from typing import Dict, List, Optional

from ..errors import ConfigError
from ..files import atomic_write, atomic_write_bytes
from .families import get_family


def shard_paths(out_dir: str, num_samples: int, split: str = "train", shard_size: int = 1000) -> List[Path]:
    """The shard files :func:`write_shards` writes: ``{split}-NNNNNN.tar``."""
    return [Path(out_dir) / f"{split}-{n:06d}.tar" for n in range(-(-num_samples // shard_size))]


def write_shards(out_dir: str, num_samples: int, image_size: int = 64, seed: int = 0, split: str = "train",
                 shard_size: int = 1000, family: str = "scenes", overwrite: bool = False) -> List[str]:
    """Write a synthetic family (default: the scenes) as webdataset shards ``{split}-NNNNNN.tar``: KEY.png,
    KEY.txt (short caption), KEY.long.txt (detailed caption), KEY.json (what is drawn). Returns the paths.

    An existing shard is a ConfigError unless ``overwrite``; each shard is written atomically, so an interrupted
    run leaves no truncated shard.
    """
    paths = shard_paths(out_dir, num_samples, split, shard_size)
    if not paths:
        return []
    existing = [p for p in paths if p.exists()]
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more of the {len(paths)} shards to write)" if len(existing) > 1 else ""
        raise ConfigError(f"{existing[0]} exists{more}: pass --overwrite to replace it, or choose another --out")
    data = get_family(family).dataset(num_samples, image_size=image_size, seed=seed, split=split)

    def shard(n: int):
        def write(f) -> None:
            with tarfile.open(fileobj=f, mode="w") as tar:
                for i in range(n * shard_size, min((n + 1) * shard_size, num_samples)):
                    image, short, detailed = data.sample(i)
                    members = {"png": _png(image), "txt": short.encode(), "long.txt": detailed.encode(),
                               "json": json.dumps(asdict(data.scene(i))).encode()}
                    for ext, payload in members.items():
                        info = tarfile.TarInfo(f"{i:08d}.{ext}")
                        info.size = len(payload)
                        tar.addfile(info, io.BytesIO(payload))
        return write

    for n, path in enumerate(paths):
        atomic_write(path, shard(n))
    return [str(p) for p in paths]


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _fresh(folder: Path, what: str) -> None:
    if folder.exists() and any(folder.iterdir()):
        raise ConfigError(f"{folder} already holds files; remove it or choose another --out (a {what} set is "
                          "never written over)")
    folder.mkdir(parents=True, exist_ok=True)


def write_compositional(out_dir: str, family: str, num_samples: int, image_size: int = 64, seed: int = 0,
                        progress: Optional[callable] = None) -> Dict[str, int]:
    """The test split's first ``num_samples`` images under ``OUT/images/`` and one SugarCrepe type file per type
    (``OUT/TYPE.json``: ``{id: {filename, caption, negative_caption}}``, filenames relative to ``OUT``), each image
    contributing one item to every type its scene allows. Returns {type: items}."""
    fam = get_family(family)
    out = Path(out_dir)
    _fresh(out, "compositional")
    (out / "images").mkdir()
    data = fam.dataset(num_samples, image_size=image_size, seed=seed, split="test")
    by_type: Dict[str, Dict[str, Dict[str, str]]] = {}
    for i in range(num_samples):
        name = f"images/{i:08d}.png"
        atomic_write_bytes(_png(data.sample(i)[0]), out / name)
        # the negatives' own random stream: the images stay those of the test split
        rng = random.Random(f"{family}-{seed}-{i}-hard-negatives")
        for kind, caption, negative in fam.hard_negatives(data.scene(i), rng):
            by_type.setdefault(kind, {})[str(i)] = {"filename": name, "caption": caption, "negative_caption": negative}
        if progress:
            progress(1)
    for kind, items in by_type.items():
        atomic_write_bytes((json.dumps(items, indent=1) + "\n").encode(), out / f"{kind}.json")
    return {kind: len(items) for kind, items in sorted(by_type.items())}


def write_masks(out_dir: str, family: str, num_samples: int, image_size: int = 64, seed: int = 0,
                split: str = "train", progress: Optional[callable] = None) -> int:
    """``OUT/images/NAME.png`` and ``OUT/annotations/NAME.png`` (mode L, the class index of each pixel:
    ``family.mask_classes``, also listed in ``OUT/classes.txt``) for the first ``num_samples`` of ``split``."""
    fam = get_family(family)
    out = Path(out_dir)
    _fresh(out, "mask")
    (out / "images").mkdir()
    (out / "annotations").mkdir()
    data = fam.dataset(num_samples, image_size=image_size, seed=seed, split=split)
    for i in range(num_samples):
        image = data.sample(i)[0]
        mask = fam.render_mask(data.scene(i), image_size, data._rng(i, "draw"))  # the rng render drew with
        atomic_write_bytes(_png(image), out / "images" / f"{i:08d}.png")
        atomic_write_bytes(_png(mask), out / "annotations" / f"{i:08d}.png")
        if progress:
            progress(1)
    atomic_write_bytes(("\n".join(fam.mask_classes) + "\n").encode(), out / "classes.txt")
    return num_samples
