"""File names as the index stores and shows them.

Python reads a file name that is not UTF-8 (an old archive, a FAT or SMB copy) with its undecodable bytes as lone
surrogates (``os.fsdecode``, "surrogateescape"); such a string cannot be written to SQLite, parquet or a JSON
response. The index keeps every name exactly:

- in the catalog (SQLite) a UTF-8 name is TEXT, any other name the BLOB of its bytes (:func:`to_db`, :func:`from_db`);
- in a part's metadata (parquet) ``image_path`` is the name for display (:func:`display`) and ``image_path_bytes``
  the bytes of a name that is not UTF-8 (null otherwise);
- for people (the API, the console, ``skipped.tsv``) a byte that is not UTF-8 is written ``\\xNN``.
"""
from __future__ import annotations

import os
from typing import Optional, Union


def is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def display(name: str) -> str:
    """``name`` as valid text: each byte that is not UTF-8 written as ``\\xNN``."""
    if is_utf8(name):
        return name
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def raw_bytes(name: str) -> Optional[bytes]:
    """The bytes of a name that is not UTF-8, None for a UTF-8 name."""
    return None if is_utf8(name) else os.fsencode(name)


def from_parts(text: str, raw: Optional[bytes]) -> str:
    """The name a metadata row stores (``image_path``, ``image_path_bytes``)."""
    return os.fsdecode(raw) if raw is not None else text


def to_db(name: str) -> Union[str, bytes]:
    return name if is_utf8(name) else os.fsencode(name)


def from_db(value: Union[str, bytes]) -> str:
    return os.fsdecode(value) if isinstance(value, bytes) else value


def tsv_field(name: str) -> str:
    """One field of a TSV row: backslash, tab, newline and carriage return escaped (``\\\\``, ``\\t``, ``\\n``,
    ``\\r``), a byte that is not UTF-8 as ``\\xNN``; so a row is always one line of two fields."""
    out = []
    for ch in name:
        if ch == "\\":
            out.append("\\\\")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif 0xDC80 <= ord(ch) <= 0xDCFF:  # surrogateescape's stand-in for the byte ord(ch) - 0xDC00
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        else:
            out.append(ch)
    return "".join(out)


def tsv_unescape(field: str) -> str:
    """The name a :func:`tsv_field` wrote (a name that was not UTF-8 comes back with its surrogates)."""
    out, i = [], 0
    while i < len(field):
        ch = field[i]
        if ch != "\\" or i + 1 == len(field):
            out.append(ch)
            i += 1
            continue
        nxt = field[i + 1]
        if nxt == "x":
            out.append(chr(0xDC00 + int(field[i + 2:i + 4], 16)))
            i += 4
            continue
        out.append({"t": "\t", "n": "\n", "r": "\r"}.get(nxt, nxt))
        i += 2
    return "".join(out)
