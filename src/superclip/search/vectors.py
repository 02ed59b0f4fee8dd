"""The stored vectors of a folder's live items, part by part: what the main index is built over (a
:class:`~superclip.search.index.VectorSource`), the additions the searcher scans exactly, and the re-ranking reader.
Nothing here holds more than one part's vectors at a time."""
from __future__ import annotations

from typing import Iterable, Optional, Tuple

import numpy as np

from . import parts
from .catalog import Catalog
from .ivf import PartRows
from .layout import Layout
from .mapped import mapped_rows

FETCH = 100_000


def live_locations(catalog: Catalog, only_parts: Optional[Iterable[int]] = None) -> Tuple[np.ndarray, ...]:
    """(ids, parts, rows) int64 of the live items (of ``only_parts``), ordered by part then row."""
    sql = "SELECT id, part, row FROM items WHERE deleted = 0"
    args: tuple = ()
    only = sorted(set(only_parts)) if only_parts is not None else None
    if only is not None and not only:
        return tuple(np.zeros(0, np.int64) for _ in range(3))
    if only is not None and len(only) <= 500:  # SQLite's limit on bound variables; more are filtered below
        sql += f" AND part IN ({','.join('?' * len(only))})"
        args = tuple(only)
    chunks = []
    with catalog.lock:
        cursor = catalog.db.execute(sql, args)
        while True:
            got = cursor.fetchmany(FETCH)
            if not got:
                break
            chunks.append(np.asarray(got, dtype=np.int64).reshape(-1, 3))
    table = np.concatenate(chunks) if chunks else np.zeros((0, 3), np.int64)
    if only is not None and len(only) > 500:
        table = table[np.isin(table[:, 1], only)]
    table = table[np.lexsort((table[:, 2], table[:, 1]))]
    return table[:, 0].copy(), table[:, 1].copy(), table[:, 2].copy()


class CatalogSource:
    """The live items of an index folder (of ``only_parts``) as a VectorSource: ids and locations from the
    catalog, vectors from the parts' embeddings (memory-mapped, one part at a time)."""

    def __init__(self, layout: Layout, catalog: Catalog, dim: int, dtype: str,
                 only_parts: Optional[Iterable[int]] = None):
        self.layout, self.dim, self.dtype = layout, int(dim), np.dtype(dtype)
        self.ids, self.part_of, self.rows = live_locations(catalog, only_parts)
        self.count = len(self.ids)

    def parts(self):
        bounds = np.flatnonzero(np.r_[True, self.part_of[1:] != self.part_of[:-1]]) if self.count else []
        ends = list(bounds[1:]) + [self.count]
        for s, e in zip(list(bounds), ends):
            yield int(self.part_of[s]), self.ids[s:e], self.rows[s:e]

    def vectors(self, part: int, rows: np.ndarray) -> np.ndarray:
        emb = parts.read_embeddings(self.layout, part)
        return np.ascontiguousarray(emb[rows], dtype=np.float32)

    def all(self) -> Tuple[np.ndarray, np.ndarray]:
        """(ids (n,) int64, vectors (n, D) float32) by id: every vector at once (the additions, a few)."""
        if not self.count:
            return np.zeros(0, np.int64), np.zeros((0, self.dim), np.float32)
        got = [(ids, self.vectors(part, rows)) for part, ids, rows in self.parts()]
        ids = np.concatenate([g[0] for g in got])
        order = np.argsort(ids, kind="stable")
        return ids[order], np.concatenate([g[1] for g in got])[order]


def reader(layout: Layout, mapped: bool = False):
    """Stored vectors by location (part << 32 | row) from the parts: ``mapped`` (``serve --map-vectors``), gathered
    from the parts mapped side by side (mapped.py: ~3x faster re-ranking; the pages read count in the resident
    memory), else read one ``pread`` a row (builds and ``serve``'s default: the page cache holds the rows)."""
    if mapped:
        rows = mapped_rows(layout.emb)
        if rows is not None:
            return rows
    return PartRows(layout.emb)
