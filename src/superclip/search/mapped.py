"""Stored vectors by location, gathered from the parts' files mapped side by side into one reserved stretch of
address space, so that a search's re-ranking reads its candidates with one numpy gather instead of one ``pread``
each.

Why (bench/search_rows.py, 10M x 512 float16 in 1,000 parts, rows in the page cache): 3,200 random rows took
~13 ms read one ``pread`` each (~4 us a row; ``preadv`` into one buffer, no Python object a row, still ~3 us: the
system call) and ~4 ms gathered here (~1.2 us a row, once the pages are mapped). At 10M the re-ranking depth sets
the latency of ``serve`` (an ``ivfpq`` query re-ranks up to 3,200 candidates).

How: an anonymous ``PROT_NONE`` reservation (no memory behind it), each part's ``.npy`` file mapped over its piece
of it (``MAP_FIXED``, read-only, shared: the page cache's own pages); a row of part ``p`` is then at a byte offset
``start[p] + row * row_bytes`` of one buffer, and ``np.lib.stride_tricks.as_strided`` over that buffer, with a row
beginning at every byte, turns a batch of offsets into a batch of rows. A part is mapped the first time a location
names it; when the reservation is full a larger one is made and every part mapped again there.

Resident memory: the pages a gather touches are mapped into the process and count in its resident set as
file-backed pages (the kernel maps up to 16 neighbouring pages on each fault), where ``pread`` leaves them to the
page cache alone. They are the page cache's own clean pages, shared, which the kernel takes back under memory
pressure as it does the memory-mapped inverted lists'. Dropping them from the process as it goes
(``madvise(MADV_DONTNEED)`` every 16k rows) was tried and measured: every later row faults again (~5 us a row,
slower than ``pread``), so the mappings are kept.

Linux only (the flags' values are Linux's); :func:`mapped_rows` returns ``None`` elsewhere or where it cannot
reserve address space, and the caller reads with ``pread`` (:class:`~superclip.search.ivf.PartRows`).
"""
from __future__ import annotations

import ctypes
import logging
import mmap
import os
import threading
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import numpy as np

log = logging.getLogger(__name__)

MIN_RESERVE = 1 << 30
MAP_NORESERVE = 0x4000  # Linux's values; mapped_rows checks the platform before using them
MAP_FIXED = 0x10
MADV_RANDOM = 1
PROT_NONE = 0


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                          ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc


def _page_up(n: int) -> int:
    return -(-n // mmap.PAGESIZE) * mmap.PAGESIZE


def npy_layout(path: Path) -> Tuple[int, np.dtype, Tuple[int, ...]]:
    """(offset of the data, dtype, shape) of a C-ordered ``.npy`` file."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = header(f)
        if fortran:
            raise ValueError(f"{path}: a Fortran-ordered array")
        return f.tell(), np.dtype(dtype), tuple(shape)


class _Region:
    """A reserved stretch of address space and the parts mapped into it; unmapped when nothing refers to it (a
    gather's view keeps it)."""

    def __init__(self, libc, size: int):
        self.libc, self.size, self.used, self.base = libc, size, 0, None
        base = libc.mmap(None, size, PROT_NONE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        if base in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), f"cannot reserve {size} bytes of address space")
        self.base = base
        self.buffer = (ctypes.c_uint8 * size).from_address(base)
        self.buffer._region = self  # a numpy view over the buffer keeps the region (and its mappings) alive

    def map(self, path: Path, length: int) -> int:
        """Maps the file over the next free piece; returns its offset in the region."""
        at = self.used
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < length:  # a mapped page past the end is a SIGBUS, not an error
                raise ValueError(f"{path}: shorter than its header says ({size} < {length} bytes)")
            got = self.libc.mmap(self.base + at, length, mmap.PROT_READ, mmap.MAP_SHARED | MAP_FIXED, f.fileno(), 0)
        if got != self.base + at:
            raise OSError(ctypes.get_errno(), f"cannot map {path}")
        # a gather reads scattered rows: no readahead from disk (the kernel still maps up to 16 neighbouring pages
        # already in the page cache on each fault: measured, see the module's docstring)
        self.libc.madvise(self.base + at, length, MADV_RANDOM)
        self.used = at + _page_up(length)
        return at

    def view(self, row_bytes: int):
        """The region's bytes with a row of ``row_bytes`` starting at every byte: indexing it with byte offsets
        gathers whole rows at once."""
        raw = np.frombuffer(self.buffer, np.uint8)
        return np.lib.stride_tricks.as_strided(raw, shape=(self.size - row_bytes + 1, row_bytes), strides=(1, 1),
                                               writeable=False)

    def __del__(self):
        if self.base is not None:
            self.libc.munmap(self.base, self.size)
            self.base = None


class MappedRows:
    """Stored vectors by location (part << 32 | row) of the parts' ``.npy`` files (``path_of(part)``), all of one
    row size; thread-safe. The same interface as :class:`~superclip.search.ivf.PartRows`."""

    def __init__(self, path_of: Callable[[int], Path], libc=None):
        self.path_of = path_of
        self.libc = libc or _libc()
        self.lock = threading.Lock()  # mapping; gathers never take it
        self.region: Optional[_Region] = None
        self.files: Dict[int, Tuple[int, int]] = {}  # part -> (file length, data offset), in the order mapped
        self.dtype: Optional[np.dtype] = None
        self.dim = 0
        # (rows view, part -> byte offset of its row 0 or -1): replaced as one, so a gather never pairs a view with
        # offsets of another region
        self._snap = (None, np.full(0, -1, np.int64))
        self.closed = False

    # --- mapping
    def _map(self, parts: np.ndarray) -> None:
        with self.lock:
            for part in parts.tolist():
                start = self._snap[1]
                if part < len(start) and start[part] >= 0:
                    continue
                path = self.path_of(part)
                offset, dtype, shape = npy_layout(path)
                if len(shape) != 2:
                    raise ValueError(f"{path}: not a (rows, dim) array")
                if self.dtype is None:
                    self.dtype, self.dim = dtype, shape[1]
                elif (dtype, shape[1]) != (self.dtype, self.dim):
                    raise ValueError(f"{path}: {dtype} x {shape[1]}, the other parts {self.dtype} x {self.dim}")
                self._place(part, offset + shape[0] * dtype.itemsize * shape[1], offset)

    def _place(self, part: int, length: int, offset: int) -> None:
        if self.region is None or self.region.used + _page_up(length) > self.region.size:
            self._grow(_page_up(length))
        at = self.region.map(self.path_of(part), length) + offset
        self.files[part] = (length, offset)
        view, start = self._snap
        if part >= len(start):
            grown = np.full(max(part + 1, 2 * len(start)), -1, np.int64)
            grown[:len(start)] = start
            grown[part] = at
            self._snap = (view, grown)
        else:
            start[part] = at  # the part was not mapped: no gather reads this entry before it is set

    def _grow(self, need: int) -> None:
        """A reservation twice the size of what is mapped and asked for (at least MIN_RESERVE), every part mapped
        again into it at the same offsets (in the order they were mapped); the old one goes when the last gather
        reading it is done."""
        mapped = sum(_page_up(n) for n, _ in self.files.values())
        region = _Region(self.libc, max(MIN_RESERVE, 2 * (mapped + need)))
        start = self._snap[1].copy()
        for part, (length, offset) in self.files.items():
            start[part] = region.map(self.path_of(part), length) + offset
        self.region = region
        self._snap = (region.view(self.dtype.itemsize * self.dim), start)

    # --- reading
    def __call__(self, locations: np.ndarray) -> np.ndarray:
        """(n, D) float32 of ``locations`` (n,) int64."""
        if self.closed:
            raise ValueError("the reader is closed")
        locs = np.asarray(locations, dtype=np.int64).reshape(-1)
        if not len(locs):
            return np.zeros((0, self.dim), np.float32)
        parts = locs >> 32
        view, start = self._snap
        if parts.max() >= len(start) or (start[parts] < 0).any():
            self._map(np.unique(parts))
            view, start = self._snap
        rows = view[start[parts] + (locs & 0xFFFFFFFF) * (self.dtype.itemsize * self.dim)]
        return rows.view(self.dtype).astype(np.float32)

    def close(self) -> None:
        """Stops reading; the mappings go when nothing refers to them any more (a search on another thread may
        still be gathering)."""
        self.closed = True
        self.region, self._snap = None, (None, np.full(0, -1, np.int64))


def mapped_rows(path_of: Callable[[int], Path]) -> Optional[MappedRows]:
    """A :class:`MappedRows` reader, or None on a system where this one cannot reserve address space and map
    files at fixed places in it (the caller then reads with ``pread``)."""
    if os.uname().sysname != "Linux":
        return None
    try:
        reader = MappedRows(path_of)
        _Region(reader.libc, mmap.PAGESIZE)  # reserved and released: this system can
        return reader
    except (OSError, AttributeError) as e:
        log.info("stored vectors read with pread: %s", e)
        return None
