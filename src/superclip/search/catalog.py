"""The catalog: one SQLite database (WAL) of every item an index ever held.

An item's id is assigned once, when its part is ingested (parts in order, one transaction each), and never reused
or renumbered: it does not depend on a row position (``part``, ``row`` only say where its vector is stored). A
removed or replaced item keeps its row with ``deleted = 1``. Tags live in their own table, indexed by tag, so that
filters and facets are index look-ups.
"""
from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

from .layout import kill_point

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL, source TEXT NOT NULL, shard_index INTEGER NOT NULL,
    size INTEGER NOT NULL, mtime REAL NOT NULL, sha256 TEXT NOT NULL,
    part INTEGER NOT NULL, row INTEGER NOT NULL,
    tags TEXT NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS items_path ON items(path);
CREATE TABLE IF NOT EXISTS tags (tag TEXT NOT NULL, id INTEGER NOT NULL, prob REAL NOT NULL,
    PRIMARY KEY (tag, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS parts (part INTEGER PRIMARY KEY, count INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS shards (url TEXT PRIMARY KEY, identity TEXT NOT NULL);
"""

_ITEM_COLUMNS = "id, path, source, shard_index, size, mtime, sha256, part, row, tags, deleted"


class Catalog:
    """The catalog of one index folder; safe to share between threads (one connection behind a lock)."""

    def __init__(self, path: Path, readonly: bool = False):
        self.path = Path(path)
        self.db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
        self.lock = threading.Lock()
        with self.lock:
            if not readonly:
                self.db.execute("PRAGMA journal_mode=WAL")
            self.db.executescript(SCHEMA)  # a folder whose build was killed before its first part still opens
            self.db.execute("PRAGMA synchronous=FULL")

    def close(self) -> None:
        self.db.close()

    def _all(self, sql: str, args: Sequence = ()) -> List[tuple]:
        with self.lock:
            return self.db.execute(sql, args).fetchall()

    # --- writing
    def ingest_part(self, part: int, columns: Dict[str, list], shard: Optional[Tuple[str, str]] = None) -> List[int]:
        """Insert part ``part``'s rows (ids assigned in row order), their tags, and the part itself, in one
        transaction; ``shard``: (url, identity) of a shard part. Returns the new ids."""
        ids = []
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                for row in range(len(columns["image_path"])):
                    tags = list(zip(columns["tags"][row], columns["tag_probs"][row]))
                    cur = self.db.execute(
                        "INSERT INTO items (path, source, shard_index, size, mtime, sha256, part, row, tags) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (columns["image_path"][row], columns["source"][row], columns["shard_index"][row],
                         columns["size"][row], columns["mtime"][row], columns["sha256"][row], part, row,
                         json.dumps([[t, round(float(p), 6)] for t, p in tags])))
                    ids.append(cur.lastrowid)
                    self.db.executemany("INSERT OR IGNORE INTO tags (tag, id, prob) VALUES (?, ?, ?)",
                                        [(t, cur.lastrowid, float(p)) for t, p in tags])
                if shard:
                    self.db.execute("INSERT OR REPLACE INTO shards (url, identity) VALUES (?, ?)", shard)
                self.db.execute("INSERT INTO parts (part, count) VALUES (?, ?)", (part, len(ids)))
                kill_point("ingest-commit")
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        return ids

    def mark_deleted(self, ids: Iterable[int]) -> int:
        """Flag ``ids`` deleted (one transaction); returns how many live items that removed."""
        ids = list(ids)
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            n = 0
            for s in range(0, len(ids), 500):
                chunk = ids[s:s + 500]
                n += self.db.execute(f"UPDATE items SET deleted = 1 WHERE deleted = 0 AND id IN "
                                     f"({','.join('?' * len(chunk))})", chunk).rowcount
            self.db.execute("COMMIT")
        return n

    def forget_shard(self, url: str) -> None:
        with self.lock:
            self.db.execute("DELETE FROM shards WHERE url = ?", (url,))

    def touch(self, item_id: int, size: int, mtime: float) -> None:
        """Record a file's new size / mtime when its content is unchanged (so the next add skips hashing it)."""
        with self.lock:
            self.db.execute("UPDATE items SET size = ?, mtime = ? WHERE id = ?", (size, mtime, item_id))

    # --- reading
    def ingested_parts(self) -> Dict[int, int]:
        return dict(self._all("SELECT part, count FROM parts"))

    def live_count(self) -> int:
        return self._all("SELECT COUNT(*) FROM items WHERE deleted = 0")[0][0]

    def locations(self, parts: Optional[Iterable[int]] = None, live: bool = True) -> List[Tuple[int, int, int]]:
        """(id, part, row) of the (live) items, by id; ``parts``: only those parts."""
        rows = self._all("SELECT id, part, row FROM items" + (" WHERE deleted = 0" if live else "") + " ORDER BY id")
        if parts is not None:
            keep = set(parts)
            rows = [r for r in rows if r[1] in keep]
        return rows

    def deleted_ids(self) -> Set[int]:
        return {r[0] for r in self._all("SELECT id FROM items WHERE deleted = 1")}

    def live_files(self) -> Dict[str, Tuple[int, int, float, str]]:
        """path -> (id, size, mtime, sha256) of live items read from files (not shards)."""
        return {r[0]: r[1:] for r in self._all(
            "SELECT path, id, size, mtime, sha256 FROM items WHERE deleted = 0 AND source = ''")}

    def live_shards(self) -> Dict[str, str]:
        """url -> identity of shards with live items."""
        return dict(self._all("SELECT s.url, s.identity FROM shards s WHERE EXISTS "
                              "(SELECT 1 FROM items i WHERE i.source = s.url AND i.deleted = 0)"))

    def ids_of_source(self, url: str) -> List[int]:
        return [r[0] for r in self._all("SELECT id FROM items WHERE deleted = 0 AND source = ?", (url,))]

    def ids_under(self, prefix: str) -> List[int]:
        """Live ids whose path is ``prefix`` or lies under the folder ``prefix``."""
        folder = prefix.rstrip("/") + "/"
        return [r[0] for r in self._all(
            "SELECT id FROM items WHERE deleted = 0 AND (path = ? OR substr(path, 1, ?) = ?)",
            (prefix, len(folder), folder))]

    def items(self, ids: Sequence[int]) -> Dict[int, Dict]:
        """id -> item (path, source, shard_index, size, mtime, sha256, part, row, tags [[tag, p]], deleted)."""
        out: Dict[int, Dict] = {}
        ids = [int(i) for i in ids]
        for s in range(0, len(ids), 500):
            chunk = ids[s:s + 500]
            for r in self._all(f"SELECT {_ITEM_COLUMNS} FROM items WHERE id IN ({','.join('?' * len(chunk))})",
                               chunk):
                item = dict(zip(_ITEM_COLUMNS.split(", "), r))
                item["tags"] = json.loads(item["tags"])
                out[item["id"]] = item
        return out

    def ids_with_tags(self, tags: Sequence[str]) -> Set[int]:
        """Live ids tagged with every one of ``tags``."""
        result: Optional[Set[int]] = None
        for tag in tags:
            ids = {r[0] for r in self._all("SELECT t.id FROM tags t JOIN items i ON i.id = t.id "
                                           "WHERE t.tag = ? AND i.deleted = 0", (tag,))}
            result = ids if result is None else result & ids
        return result or set()

    def facets(self, limit: int = 50, tags: Sequence[str] = ()) -> List[Tuple[str, int]]:
        """(tag, live items carrying it), most frequent first; ``tags``: counted among items having all of them."""
        if not tags:
            return self._all("SELECT t.tag, COUNT(*) AS n FROM tags t JOIN items i ON i.id = t.id "
                             "WHERE i.deleted = 0 GROUP BY t.tag ORDER BY n DESC, t.tag LIMIT ?", (limit,))
        ids = sorted(self.ids_with_tags(tags))
        counts: Dict[str, int] = {}
        for s in range(0, len(ids), 500):
            chunk = ids[s:s + 500]
            for tag, n in self._all(f"SELECT tag, COUNT(*) FROM tags WHERE id IN ({','.join('?' * len(chunk))}) "
                                    "GROUP BY tag", chunk):
                counts[tag] = counts.get(tag, 0) + n
        return sorted(counts.items(), key=lambda x: (-x[1], x[0]))[:limit]
