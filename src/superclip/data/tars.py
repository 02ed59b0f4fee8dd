"""Reading tar archives that may be damaged, and the commands of ``pipe:`` URLs that may fail or stall.

Why not ``tarfile``'s own iteration: it reads a member header it cannot parse, or the zero blocks of a first
archive followed by a second one (``cat a.tar b.tar``), as the clean end of the archive, so the rest of a shard
is dropped without a word; and a ``pipe:`` reader that stops reading early leaves the command blocked on a full
pipe while the reader waits for it to exit. Here:

- :func:`walk` indexes an archive header by header (``TarInfo.frombuf``, the POSIX ustar / pax / GNU long-name
  layouts) and reports every damaged stretch as a :class:`Damage` (offset, what, where reading went on) instead
  of ending: after a header that does not parse it looks for the next block that does (a ``ustar`` header with
  a valid checksum); zero blocks followed by more data are a second archive, read on.
- :func:`run_command` always drains the command's stdout and stderr until it ends, kills it (its whole process
  group) when no byte came for ``stall_timeout`` seconds or when what it writes is not a tar archive, and
  returns what it wrote with what went wrong. It runs under ``bash -o pipefail`` where bash exists, so a failed
  download inside a pipeline (``aws s3 cp ... - | cat``) is a failure too: ``sh`` (dash on Debian) has no
  ``pipefail`` and reports the exit status of the last command only.
- :func:`decompress` reads gzip / bzip2 / xz archives (``.tar.gz`` shards, as webdataset does), keeping what
  decompressed before a damaged or cut stream.
"""
from __future__ import annotations

import bz2
import io
import lzma
import os
import select
import shutil
import signal
import subprocess
import tarfile
import time
import zlib
from dataclasses import dataclass, field
from typing import BinaryIO, List, Optional, Tuple

BLOCK = tarfile.BLOCKSIZE  # 512
ZERO_BLOCK = bytes(BLOCK)
DEFAULT_STALL_TIMEOUT = 300.0  # seconds without a byte from a pipe: command (--wds-stall-timeout)
_CHUNK = 1 << 20
_DATA_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
_MAGICS = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}


@dataclass
class Damage:
    """A stretch of an archive that could not be read: ``offset`` where it starts, ``what`` went wrong,
    ``resumed`` the offset of the next readable header (None: nothing readable followed), ``name`` the member
    name the damaged header seems to carry (None when unreadable)."""

    offset: int
    what: str
    resumed: Optional[int] = None
    name: Optional[str] = None

    def describe(self) -> str:
        where = f"offset {self.offset}"
        if self.resumed is None:
            return f"{where}: {self.what}; nothing readable after it"
        return f"{where}: {self.what}; read on at offset {self.resumed} ({self.resumed - self.offset} bytes skipped)"


@dataclass
class Member:
    """A regular file of the archive: its name and where its data lies."""

    name: str
    offset: int  # of the data
    size: int


@dataclass
class Index:
    members: List[Member] = field(default_factory=list)
    damage: List[Damage] = field(default_factory=list)
    archives: int = 0  # concatenated archives found (2 for ``cat a.tar b.tar``)


def compression(head: bytes) -> Optional[str]:
    """The compression a file's first bytes announce (gzip, bzip2, xz, zstd), or None."""
    return next((name for magic, name in _MAGICS.items() if head.startswith(magic)), None)


def decompress(data_or_file, kind: str) -> Tuple[bytes, Optional[str]]:
    """(the decompressed bytes, an error or None); a cut or damaged stream keeps what came out before it."""
    if kind == "zstd":
        return b"", "zstd-compressed: decompress it first (e.g. pipe:zstd -dc FILE), Python 3.11 reads no zstd"
    source = data_or_file if hasattr(data_or_file, "read") else io.BytesIO(data_or_file)
    out = io.BytesIO()
    while True:  # members of a multi-member (concatenated) gzip / bzip2 / xz file, one after the other
        dec = {"gzip": lambda: zlib.decompressobj(16 + zlib.MAX_WBITS), "bzip2": bz2.BZ2Decompressor,
               "xz": lzma.LZMADecompressor}[kind]()
        try:
            while not dec.eof:
                chunk = source.read(_CHUNK)
                if not chunk:
                    return out.getvalue(), f"the {kind} stream is cut short after {out.tell()} bytes of archive"
                out.write(dec.decompress(chunk))
        except (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError) as e:
            return out.getvalue(), f"the {kind} stream is damaged after {out.tell()} bytes of archive ({e})"
        rest = dec.unused_data
        if not rest.strip(b"\0"):
            rest += source.read(_CHUNK)
            if not rest.strip(b"\0"):
                return out.getvalue(), None
        source = io.BytesIO(rest + source.read())


def _header_name(block: bytes) -> Optional[str]:
    """The name a header block seems to carry, even when it does not parse (for naming a damaged member)."""
    raw = block[:100].split(b"\0", 1)[0]
    prefix = block[345:500].split(b"\0", 1)[0] if block[257:262] == b"ustar" else b""
    try:
        name = ((prefix + b"/" if prefix else b"") + raw).decode("utf-8")
    except UnicodeDecodeError:
        return None
    return name if name and name.isprintable() else None


def _pax(data: bytes) -> dict:
    """The records of a pax extended header (``LENGTH KEY=VALUE\\n``)."""
    records, pos = {}, 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0 or not data[pos:space].isdigit():
            break
        length = int(data[pos:space])
        if length <= 0:
            break
        key, _, value = data[space + 1:pos + length - 1].partition(b"=")
        records[key.decode("utf-8", "replace")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records


def _next_nonzero(f: BinaryIO, offset: int, size: int) -> Optional[int]:
    """The offset of the first block at or after ``offset`` that is not all zeros, None if there is none."""
    while offset < size:
        f.seek(offset)
        chunk = f.read(min(_CHUNK, size - offset))
        stripped = len(chunk) - len(chunk.lstrip(b"\0"))
        if stripped < len(chunk):
            return offset + stripped // BLOCK * BLOCK
        offset += len(chunk)
    return None


def _next_header(f: BinaryIO, offset: int, size: int) -> Optional[int]:
    """The offset of the next block at or after ``offset`` that is a ustar header with a valid checksum."""
    while offset < size:
        f.seek(offset)
        chunk = f.read(min(_CHUNK, size - offset))
        at = chunk.find(b"ustar")
        while at >= 0:
            start = at - 257
            if start >= 0 and start % BLOCK == 0:
                f.seek(offset + start)
                try:
                    tarfile.TarInfo.frombuf(f.read(BLOCK), "utf-8", "surrogateescape")
                    return offset + start
                except tarfile.HeaderError:
                    pass
            at = chunk.find(b"ustar", at + 1)
        offset += max(BLOCK, len(chunk) - BLOCK)  # overlap, so a header across two chunks is found
    return None


def walk(f: BinaryIO, size: int) -> Index:
    """Index the archive in the seekable ``f`` of ``size`` bytes: its regular files and every damaged stretch.

    A header that does not parse, a member whose data runs past the end, a file that ends inside a block and
    non-archive bytes after the end-of-archive marker are each a :class:`Damage`; reading goes on at the next
    readable header, so one damaged header costs one member, never the rest of the archive.
    """
    index, offset, long_name, pax = Index(), 0, None, {}
    started, ended = False, False
    while offset < size:
        f.seek(offset)
        block = f.read(BLOCK)
        if len(block) < BLOCK:
            index.damage.append(Damage(offset, f"the archive ends {len(block)} bytes into a {BLOCK}-byte header "
                                               "block (truncated)"))
            break
        if block == ZERO_BLOCK:  # an end-of-archive marker, or a hole, or the gap before a second archive
            after = _next_nonzero(f, offset, size)
            if after is None:
                ended = True
                break
            zeros = (after - offset) // BLOCK
            if _is_header(f, after):
                if zeros >= 2:
                    started = False  # a second archive (cat a.tar b.tar): read on
                else:
                    index.damage.append(Damage(offset, "a zero block where a member header belongs", after))
                offset = after
                continue
            resumed = _next_header(f, after, size)
            index.damage.append(Damage(offset, f"{zeros} zero blocks, then bytes that are not a member header (a "
                                               "hole, or something appended to the archive)", resumed))
            if resumed is None:
                break
            offset = resumed
            continue
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.HeaderError as e:
            resumed = _next_header(f, offset + BLOCK, size)
            what = f"a member header that does not parse ({e})" if started or offset else \
                f"not a tar archive (it begins with {block[:16]!r})"
            index.damage.append(Damage(offset, what, resumed, _header_name(block)))
            if resumed is None:
                break
            offset, long_name, pax = resumed, None, {}
            continue
        if not started:
            index.archives += 1
            started = True
        length = int(pax.get("size", info.size)) if info.type not in (tarfile.XHDTYPE, tarfile.XGLTYPE) \
            else info.size
        data_at = offset + BLOCK
        has_data = info.type in _DATA_TYPES or info.type in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK,
                                                              tarfile.XHDTYPE, tarfile.XGLTYPE) \
            or info.type not in tarfile.SUPPORTED_TYPES
        end = data_at + (-(-length // BLOCK) * BLOCK if has_data else 0)
        name = long_name or pax.get("path") or info.name
        if has_data and data_at + length > size:
            index.damage.append(Damage(offset, f"member {name!r} needs {length} bytes, the file ends after "
                                               f"{size - data_at} (truncated)", None, name))
            break
        if info.type == tarfile.GNUTYPE_LONGNAME:
            f.seek(data_at)
            long_name = f.read(length).split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        elif info.type == tarfile.XHDTYPE:
            f.seek(data_at)
            pax = _pax(f.read(length))
        elif info.type in (tarfile.GNUTYPE_LONGLINK, tarfile.XGLTYPE):
            pass
        else:
            if info.type in _DATA_TYPES:
                index.members.append(Member(name, data_at, length))
            long_name, pax = None, {}
        offset = end
    cut = index.damage and index.damage[-1].resumed is None
    if not ended and not cut and index.archives:  # tar writers end every archive with zero blocks
        index.damage.append(Damage(size, "the file ends inside a block (cut short)" if size % BLOCK else
                                   "the archive has no end-of-archive marker (cut short after a member?)"))
    return index


def _is_header(f: BinaryIO, offset: int) -> bool:
    f.seek(offset)
    try:
        tarfile.TarInfo.frombuf(f.read(BLOCK), "utf-8", "surrogateescape")
        return True
    except tarfile.HeaderError:
        return False


def _looks_like_archive(head: bytes) -> bool:
    """Whether the first block of a stream can begin an archive: a header, zeros, or a compressed stream."""
    if compression(head) or head == ZERO_BLOCK[:len(head)]:
        return True
    try:
        tarfile.TarInfo.frombuf(head[:BLOCK], "utf-8", "surrogateescape")
        return True
    except tarfile.HeaderError:
        return False


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_command(command: str, stall_timeout: float = DEFAULT_STALL_TIMEOUT) -> Tuple[bytes, Optional[str]]:
    """Run a ``pipe:`` command; (what it wrote to stdout, None or what went wrong).

    Both pipes are drained until the command ends, so it never blocks on a full pipe; it runs in its own
    process group, killed whole when ``stall_timeout`` seconds pass without a byte on either pipe, when its
    output is not a tar archive (after the first block), or when it still runs ``stall_timeout`` seconds
    after closing its stdout.
    """
    bash = shutil.which("bash")
    argv = [bash, "-o", "pipefail", "-c", command] if bash else ["/bin/sh", "-c", command]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    out, err = bytearray(), bytearray()
    streams = {proc.stdout.fileno(): out, proc.stderr.fileno(): err}
    problem, checked = None, False
    last = time.monotonic()
    try:
        while streams:
            ready, _, _ = select.select(list(streams), [], [], max(0.0, last + stall_timeout - time.monotonic()))
            if not ready:
                problem = f"no data for {stall_timeout:g} s after {len(out)} bytes: the command was killed " \
                          "(--wds-stall-timeout)"
                break
            last = time.monotonic()
            for fd in ready:
                chunk = os.read(fd, _CHUNK)
                if not chunk:
                    del streams[fd]
                    continue
                streams[fd] += chunk
                if fd == proc.stderr.fileno() and len(err) > 8 * _CHUNK:
                    del err[:-_CHUNK]  # keep the end: the last line says what failed
            if not checked and len(out) >= BLOCK:
                checked = True
                if not _looks_like_archive(bytes(out[:BLOCK])):
                    problem = f"its output is not a tar archive (it begins with {bytes(out[:16])!r}): the command " \
                              "was killed"
                    break
        if problem is None:
            try:
                proc.wait(timeout=stall_timeout)
            except subprocess.TimeoutExpired:
                problem = f"the command closed its output but was still running {stall_timeout:g} s later: killed"
    finally:
        _kill(proc)
        proc.stdout.close()
        proc.stderr.close()
        rc = proc.wait()
    if problem is None and rc != 0:
        last_line = err.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        problem = f"the command exited with {rc}" + (f": {last_line[0]}" if last_line[0] else "")
    elif problem is None and not out:
        problem = "the command wrote nothing"
    return bytes(out), problem
