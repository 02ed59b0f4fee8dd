"""The catalog: one SQLite database (WAL) of every item an index ever held.

An item's id is assigned once, when its part is ingested (parts in order, one transaction each), and never reused
or renumbered: it does not depend on a row position (``part``, ``row`` only say where its vector is stored). A
removed or replaced item keeps its row with ``deleted = 1``. Tags live in their own table, indexed by tag, so that
filters and facets are index look-ups.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from .layout import kill_point
from .names import from_db, from_parts, to_db

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
CREATE TABLE IF NOT EXISTS skipped (path NOT NULL PRIMARY KEY, reason TEXT NOT NULL, detail TEXT NOT NULL,
    checked REAL NOT NULL);
CREATE TABLE IF NOT EXISTS exclusions (target NOT NULL PRIMARY KEY, item INTEGER, made REAL NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
# columns added to ``items`` after the first release: an older catalog gets them (NULL) when it is opened
_ADDED_COLUMNS = (("thumb_offset", "INTEGER"), ("thumb_size", "INTEGER"))

_ITEM_COLUMNS = "id, path, source, shard_index, size, mtime, sha256, part, row, tags, deleted, thumb_offset, thumb_size"


def _under(column: str) -> str:
    """SQL: ``column`` is the path ``?`` or lies under the folder (or shard) ``?`` (the prefix's length, then the
    prefix, as bytes: a name that is not UTF-8 is stored as a BLOB)."""
    return f"(CAST({column} AS BLOB) = ? OR substr(CAST({column} AS BLOB), 1, ?) = ?)"


def _under_args(prefix: str) -> tuple:
    whole = os.fsencode(prefix)
    folder = os.fsencode(prefix.rstrip("/") + "/")
    return whole, len(folder), folder


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
            have = {r[1] for r in self.db.execute("PRAGMA table_info(items)")}
            for name, kind in _ADDED_COLUMNS:
                if name not in have:
                    self.db.execute(f"ALTER TABLE items ADD COLUMN {name} {kind}")

    def close(self) -> None:
        self.db.close()

    def _all(self, sql: str, args: Sequence = ()) -> List[tuple]:
        with self.lock:
            return self.db.execute(sql, args).fetchall()

    # --- writing
    def ingest_part(self, part: int, columns: Dict[str, list], shard: Optional[Tuple[str, str]] = None,
                    unreadable: Sequence[Tuple[str, str]] = (), checked: float = 0.0,
                    excluded: Optional[Callable[[str, str], bool]] = None) -> List[int]:
        """Insert part ``part``'s rows (ids assigned in row order), their tags, and the part itself, in one
        transaction; ``shard``: (url, identity) of a shard part; ``unreadable``: (path, error) of the images the
        part could not read (``checked``: when); ``excluded(path, source)``: rows not to take (an exclusion
        recorded by ``index remove``), listed as skipped instead. Returns the new ids."""
        ids = []
        n = len(columns["image_path"])
        raw = columns.get("image_path_bytes") or [None] * n
        thumbs = columns.get("thumb_offset") or [None] * n
        thumb_sizes = columns.get("thumb_size") or [None] * n
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                for row in range(n):
                    path = from_parts(columns["image_path"][row], raw[row])
                    if excluded is not None and excluded(path, columns["source"][row]):
                        self.db.execute("INSERT OR REPLACE INTO skipped (path, reason, detail, checked) "
                                        "VALUES (?, 'excluded', '', ?)", (to_db(path), checked))
                        continue
                    tags = list(zip(columns["tags"][row], columns["tag_probs"][row]))
                    cur = self.db.execute(
                        "INSERT INTO items (path, source, shard_index, size, mtime, sha256, part, row, tags, "
                        "thumb_offset, thumb_size) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (to_db(path), columns["source"][row], columns["shard_index"][row],
                         columns["size"][row], columns["mtime"][row], columns["sha256"][row], part, row,
                         json.dumps([[t, round(float(p), 6)] for t, p in tags]), thumbs[row], thumb_sizes[row]))
                    ids.append(cur.lastrowid)
                    self.db.executemany("INSERT OR IGNORE INTO tags (tag, id, prob) VALUES (?, ?, ?)",
                                        [(t, cur.lastrowid, float(p)) for t, p in tags])
                    self.db.execute("DELETE FROM skipped WHERE path = ?", (to_db(path),))
                self.db.executemany("INSERT OR REPLACE INTO skipped (path, reason, detail, checked) "
                                    "VALUES (?, 'unreadable', ?, ?)", [(to_db(p), e, checked) for p, e in unreadable])
                if shard:
                    self.db.execute("INSERT OR REPLACE INTO shards (url, identity) VALUES (?, ?)", shard)
                self.db.execute("INSERT INTO parts (part, count) VALUES (?, ?)", (part, len(ids)))
                kill_point("ingest-commit")
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        return ids

    def mark_deleted(self, ids: Iterable[int], exclusions: Sequence[Tuple[str, Optional[int]]] = ()) -> int:
        """Flag ``ids`` deleted and record ``exclusions`` (target path, item id or None: :meth:`exclusion_test`),
        in one transaction; returns how many live items that removed."""
        ids, now = list(ids), time.time()
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany("INSERT OR REPLACE INTO exclusions (target, item, made) VALUES (?, ?, ?)",
                                [(to_db(t), i, now) for t, i in exclusions])
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
        return {from_db(r[0]): r[1:] for r in self._all(
            "SELECT path, id, size, mtime, sha256 FROM items WHERE deleted = 0 AND source = ''")}

    def known_shards(self) -> Dict[str, str]:
        """url -> identity of every shard embedded (its samples may all have been removed since)."""
        return dict(self._all("SELECT url, identity FROM shards"))

    def ids_of_source(self, url: str) -> List[int]:
        return [r[0] for r in self._all("SELECT id FROM items WHERE deleted = 0 AND source = ?", (url,))]

    def ids_under(self, prefix: str) -> List[int]:
        """Live ids whose path is ``prefix`` or lies under the folder ``prefix``, or whose shard is ``prefix``."""
        return [r[0] for r in self._all(f"SELECT id FROM items WHERE deleted = 0 AND ({_under('path')} OR source = ?)",
                                        (*_under_args(prefix), prefix))]

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
                item["path"] = from_db(item["path"])
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

    # --- what is not indexed: skipped files and exclusions
    def record_scan(self, folders: Sequence[str], files: Iterable[str],
                    skipped: Sequence[Tuple[str, str, str]]) -> None:
        """Replace what was skipped under ``folders`` by what a new scan of them found (``skipped``: path, reason,
        detail); an unreadable image stays listed while the scan still finds it (``files``)."""
        present = {os.fsencode(p) for p in files}
        now = time.time()
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            for folder in folders:
                for value, reason in self.db.execute(f"SELECT path, reason FROM skipped WHERE {_under('path')}",
                                                     _under_args(folder)).fetchall():
                    if reason != "unreadable" or os.fsencode(from_db(value)) not in present:
                        self.db.execute("DELETE FROM skipped WHERE path = ?", (value,))
            self.db.executemany("INSERT OR REPLACE INTO skipped (path, reason, detail, checked) VALUES (?, ?, ?, ?)",
                                [(to_db(p), r, d, now) for p, r, d in skipped])
            self.db.execute("COMMIT")

    def skipped(self) -> List[Tuple[str, str, str]]:
        """(path, reason code, detail) of every file not indexed, by path."""
        rows = [(from_db(p), r, d) for p, r, d in self._all("SELECT path, reason, detail FROM skipped")]
        return sorted(rows, key=lambda r: os.fsencode(r[0]))

    def unreadable(self) -> Dict[str, float]:
        """path -> when it was found unreadable, for the images a job could not read."""
        return {from_db(p): t for p, t in self._all("SELECT path, checked FROM skipped WHERE reason = 'unreadable'")}

    def exclusions(self) -> List[Tuple[str, Optional[int], float]]:
        """(target path, item id it was removed by or None, when) of every exclusion, by target."""
        rows = [(from_db(t), i, m) for t, i, m in self._all("SELECT target, item, made FROM exclusions")]
        return sorted(rows, key=lambda r: os.fsencode(r[0]))

    def unexclude(self, target: Optional[str] = None, item: Optional[int] = None) -> int:
        """Forget the exclusion of ``target`` (a path) or made by removing ``item``; returns how many it forgot.
        The excluded skipped rows go too: the next add looks at those files again."""
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            where, arg = ("item = ?", item) if item is not None else ("CAST(target AS BLOB) = ?", os.fsencode(target))
            gone = [t for (t,) in self.db.execute(f"SELECT target FROM exclusions WHERE {where}", (arg,))]
            for t in gone:
                self.db.execute("DELETE FROM exclusions WHERE target = ?", (t,))
                self.db.execute(f"DELETE FROM skipped WHERE reason = 'excluded' AND {_under('path')}",
                                _under_args(from_db(t)))
            self.db.execute("COMMIT")
        return len(gone)

    def exclusion_test(self) -> Callable[[str, str], bool]:
        """``test(path, source)``: whether an item of that path (and shard URL, or '' for a file) is excluded: its
        path, a folder above it, or its shard is an exclusion's target."""
        targets = {t for t, _, _ in self.exclusions()}

        def test(path: str, source: str = "") -> bool:
            if not targets:
                return False
            if path in targets or (source and source in targets):
                return True
            folder = os.path.dirname(path)
            while folder and folder not in targets:
                parent = os.path.dirname(folder)
                if parent == folder:
                    return False
                folder = parent
            return bool(folder)
        return test

    def get_meta(self, key: str) -> Optional[str]:
        rows = self._all("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None
