"""The one CSV / TSV reader of every command: training data (``--train-data``), validation during training
(``--val-data``) and ``superclip eval --retrieval-data``.

The separator is ``--csv-separator`` when given, else a tab if the header line holds one and a comma otherwise
(open_clip's files are tab-separated whatever their extension; spreadsheet exports are comma-separated). Text
is read as UTF-8; a byte that is not UTF-8 does not reject the file: it stays in its value as a surrogate, so
the one sample it belongs to can be skipped (:func:`clean_text` raises ValueError for it).
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..errors import ConfigError


def detect_separator(header: str) -> str:
    return "\t" if "\t" in header else ","


def read_columns(path: str, columns: Dict[str, str], separator: Optional[str] = None) -> List[Tuple[str, ...]]:
    """The values of ``columns`` (column name -> the flag that names it) of every row, in that order.

    One-line ConfigErrors: missing file, empty file, a missing column (naming the columns found and the
    separator used), a malformed line, no rows.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"CSV file not found: {path}")
    with p.open(newline="", encoding="utf-8", errors="surrogateescape") as f:
        header = f.readline()
        if not header.strip():
            raise ConfigError(f"CSV file {path} is empty (expected a header line naming its columns)")
        sep = separator or detect_separator(header)
        f.seek(0)
        reader = csv.DictReader(f, delimiter=sep)
        found = reader.fieldnames or []
        for key, flag in columns.items():
            if key not in found:
                raise ConfigError(f"{path}: no column {key!r} ({flag}); columns are {found} (separator {sep!r}, "
                                  "--csv-separator)")
        try:
            rows = [tuple(r[k] if r[k] is not None else "" for k in columns) for r in reader]
        except csv.Error as e:
            raise ConfigError(f"{path}, line {reader.line_num}: {e}") from None
    if not rows:
        raise ConfigError(f"CSV file {path} has no rows")
    return rows


def clean_text(text: Optional[str], what: str = "caption") -> str:
    """``text`` stripped; ValueError for one that is empty or was not valid UTF-8 in the file."""
    if text is None or not text.strip():
        raise ValueError(f"empty {what}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid UTF-8: {text.encode('utf-8', 'replace')[:60]!r}") from None
    return text.strip()
