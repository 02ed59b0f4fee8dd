"""Evaluation sets drawn from the synthetic families: hard negatives in SugarCrepe's layout (``superclip data synth
--compositional``) and images with index-PNG masks in the ADE20K / VOC layout (``--masks``). Every file is written
atomically; a folder that already holds a set is never written over."""
from __future__ import annotations

import io
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Dict, Optional

from ..errors import ConfigError
from .families import get_family


def _write(path: Path, payload: bytes) -> None:
    """Temporary file in the same folder, fsync, ``os.replace``: a reader sees no file or the whole file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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
        _write(out / name, _png(data.sample(i)[0]))
        # the negatives' own random stream: the images stay those of the test split
        rng = random.Random(f"{family}-{seed}-{i}-hard-negatives")
        for kind, caption, negative in fam.hard_negatives(data.scene(i), rng):
            by_type.setdefault(kind, {})[str(i)] = {"filename": name, "caption": caption, "negative_caption": negative}
        if progress:
            progress(1)
    for kind, items in by_type.items():
        _write(out / f"{kind}.json", (json.dumps(items, indent=1) + "\n").encode())
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
        _write(out / "images" / f"{i:08d}.png", _png(image))
        _write(out / "annotations" / f"{i:08d}.png", _png(mask))
        if progress:
            progress(1)
    _write(out / "classes.txt", ("\n".join(fam.mask_classes) + "\n").encode())
    return num_samples
