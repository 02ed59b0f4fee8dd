"""Writing and reading parts in clip-retrieval's layout (``img_emb/img_emb_{i}.npy`` +
``metadata/metadata_{i}.parquet``, rows in the same order), so embedding-reader and autofaiss read them as they are.
"""
from __future__ import annotations

from typing import Dict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .job import PartResult
from .layout import Layout, kill_point, read_json, write_bytes, write_json

# image_path is text for every reader (a name that is not UTF-8 with its bytes as \xNN); image_path_bytes holds such a
# name's bytes (null for a UTF-8 name); thumb_offset / thumb_size: where the row's thumbnail lies in the part's
# thumbs/thumbs_{i}.bin
SCHEMA = pa.schema([("image_path", pa.string()), ("source", pa.string()), ("shard_index", pa.int64()),
                    ("size", pa.int64()), ("mtime", pa.float64()), ("sha256", pa.string()),
                    ("tags", pa.list_(pa.string())), ("tag_probs", pa.list_(pa.float32())),
                    ("image_path_bytes", pa.binary()), ("thumb_offset", pa.int64()), ("thumb_size", pa.int64())])


def write_part(layout: Layout, i: int, result: PartResult) -> None:
    """Embeddings, thumbnails, then metadata, then the ``done`` record: the part counts as written only once all
    are."""
    write_bytes(layout.emb(i), lambda f: np.save(f, result.embeddings), point="part-emb")
    if result.thumbs:
        write_bytes(layout.thumbs(i), lambda f: f.write(result.thumbs), point="part-thumbs")
    table = pa.table(result.columns, schema=SCHEMA)
    write_bytes(layout.meta(i), lambda f: pq.write_table(table, f), point="part-meta")
    kill_point("part-before-done")
    write_json(layout.done(i), {"count": int(result.embeddings.shape[0]), "skipped": result.skipped})
    kill_point("part-done")


def is_done(layout: Layout, i: int) -> bool:
    return layout.done(i).is_file()


def read_done(layout: Layout, i: int) -> Dict:
    return read_json(layout.done(i))


def read_embeddings(layout: Layout, i: int, mmap: bool = True) -> np.ndarray:
    """(n_i, D) embeddings of part i, memory-mapped."""
    return np.load(layout.emb(i), mmap_mode="r" if mmap else None)


def read_metadata(layout: Layout, i: int) -> Dict[str, list]:
    return pq.read_table(layout.meta(i)).to_pydict()


def read_thumb(layout: Layout, i: int, offset: int, size: int) -> bytes:
    """One thumbnail JPEG of part ``i``."""
    with open(layout.thumbs(i), "rb") as f:
        f.seek(offset)
        data = f.read(size)
    if len(data) != size:
        raise OSError(f"{layout.thumbs(i)} is shorter than the catalog says")
    return data
