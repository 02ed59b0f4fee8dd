"""argparse value types shared by the command groups: a bad value is argparse's one-line usage error, exit 2."""
from __future__ import annotations

import argparse
import re


def at_least(low: int):
    """argparse type: an int >= ``low``."""
    def parse(value: str) -> int:
        n = int(value)
        if n < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {n}")
        return n
    parse.__name__ = "int"  # argparse names the type in its error for a non-number
    return parse


positive = at_least(1)


def port(value: str) -> int:
    """argparse type: a TCP port, 0..65535 (0: any free port)."""
    n = int(value)
    if not 0 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port (0 to 65535), got {n}")
    return n


def size(value: str) -> int:
    """argparse type: bytes, with an optional K/M/G/T suffix (powers of 1024): ``4G``."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", value, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"expected a size such as 512M or 4G, got {value!r}")
    return int(float(m.group(1)) * 1024 ** " KMGT".index((m.group(2) or " ").upper()))


SEED_LIMIT = 2 ** 62  # torch's generators take 64-bit seeds; runs add ranks and epochs to them


def seed(value: str) -> int:
    """argparse type: an int of magnitude below 2**62 (torch raises an overflow traceback beyond 64 bits)."""
    n = int(value)
    if abs(n) >= SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"must be an integer between -2**62 and 2**62, got {n}")
    return n
