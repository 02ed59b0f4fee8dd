"""An item's original bytes, sent only while they are the bytes that were indexed.

A file item is opened at the path the catalog recorded (stored resolved: no symbolic link in it) and nowhere else:
every folder on the way must still be what it names (no link), the file itself is opened without following a link
(``O_NOFOLLOW``) and must be a regular file; then size and mtime of the open file are compared with the catalog's,
and when either differs the bytes read are hashed and must have the recorded sha256. A shard sample is read back
from its shard (a ``pipe:`` shard's command is run again) and its bytes must have the recorded sha256. Whatever
fails, no byte of what the path holds now is sent.
"""
from __future__ import annotations

import errno
import hashlib
import mimetypes
import os
from typing import Dict, Tuple

from .job import read_regular_file
from .names import display

HINT = "run superclip index add"


class NotServed(Exception):
    """Why an item's bytes are not sent: ``status`` (404 gone, 409 changed, 502 its shard cannot be read)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _changed(item_id: int, why: str) -> NotServed:
    return NotServed(409, f"the image of item {item_id} changed since it was indexed ({why}): {HINT}")


def file_bytes(item: Dict) -> bytes:
    """The bytes of a file item, checked (module docstring)."""
    path, item_id = item["path"], item["id"]
    parent = os.path.dirname(path)
    try:
        if os.path.realpath(parent) != parent:
            raise _changed(item_id, "a folder on its path is now a symbolic link")
        data, st = read_regular_file(path)
    except NotServed:
        raise
    except FileNotFoundError:
        raise NotServed(404, f"the image of item {item_id} is no longer on disk: {HINT}") from None
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EINVAL):  # now a link, or not a regular file
            raise _changed(item_id, e.strerror or str(e)) from None
        raise NotServed(404, f"the image of item {item_id} cannot be read: {e.strerror or e}") from None
    if (st.st_size, st.st_mtime) != (item["size"], item["mtime"]) and \
            hashlib.sha256(data).hexdigest() != item["sha256"]:
        raise _changed(item_id, "other bytes")
    return data


def shard_bytes(item: Dict) -> Tuple[bytes, str]:
    """(bytes, extension) of a shard sample, read back from its shard and checked against the recorded sha256."""
    from ..data.webdataset import IMAGE_EXTS, Shard, ShardError

    item_id = item["id"]
    try:
        with Shard(item["source"]) as shard:
            if item["shard_index"] >= len(shard):
                if shard.errors:  # cut short (a failed command, a damaged file): what it could not read
                    raise ShardError("; ".join(shard.errors))
                raise _changed(item_id, "its shard holds fewer samples")
            sample = shard[item["shard_index"]]
    except (ShardError, OSError) as e:
        raise NotServed(502, f"the image of item {item_id} cannot be read from its shard now: {e}") from None
    ext = next((e for e in IMAGE_EXTS if e in sample), None)
    if ext is None or hashlib.sha256(sample[ext]).hexdigest() != item["sha256"]:
        raise _changed(item_id, "its shard holds another sample there")
    return sample[ext], ext


def media_type(suffix: str) -> str:
    """The MIME type of an image file suffix (``.jfif`` -> image/jpeg), from PIL's registry, then Python's."""
    from PIL import Image

    fmt = Image.registered_extensions().get(suffix.lower())
    kind = Image.MIME.get(fmt) if fmt else None
    kind = kind or mimetypes.types_map.get(suffix.lower())
    return kind if kind and kind.startswith("image/") else "application/octet-stream"


def original(item: Dict) -> Tuple[bytes, str]:
    """(checked bytes, media type) of an item's original image."""
    if item["source"]:
        data, ext = shard_bytes(item)
        return data, media_type("." + ext)
    return file_bytes(item), media_type(os.path.splitext(display(item["path"]))[1])
