"""The one CSV / TSV reader of every command: training data (``--train-data``), validation during training
(``--val-data``) and ``superclip eval --retrieval-data``.

The separator is ``--csv-separator`` when given, else a tab if the header line holds one, a semicolon if it
holds one and no comma, and a comma otherwise (open_clip's files are tab-separated whatever their extension;
spreadsheet exports are comma-separated, or semicolon-separated where the decimal mark is a comma). Text is
read as UTF-8, a leading byte-order mark dropped (Excel's "CSV UTF-8"), or as UTF-16 when the file begins with
its byte-order mark (Excel's "Unicode Text"); a byte that is not UTF-8 does not reject the file: it stays in
its value as a surrogate, so the one sample it belongs to can be skipped (:func:`clean_text` raises ValueError
for it).
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..config import separator_char
from ..errors import ConfigError, require_file

CSV_NOT_FOUND = "CSV file not found: {}"


def detect_separator(header: str) -> str:
    """A tab if the header line holds one; else a semicolon if it holds one and no comma (what Excel writes
    for "CSV" where the decimal mark is a comma); else a comma."""
    if "\t" in header:
        return "\t"
    return ";" if ";" in header and "," not in header else ","


def _encoding(path: Path) -> str:
    """UTF-16 when the file begins with its byte-order mark (Excel's "Unicode Text"), else UTF-8 with an
    optional BOM (Excel's "CSV UTF-8" writes one)."""
    with path.open("rb") as f:
        return "utf-16" if f.read(2) in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig"


def read_columns(path: str, columns: Dict[str, str], separator: Optional[str] = None) -> List[Tuple[str, ...]]:
    """The values of ``columns`` (column name -> the flag that names it) of every row, in that order.

    One-line ConfigErrors: missing file, empty file, a missing column (naming the columns found and the
    separator used), a column the header names twice, rows with more fields than the header (with their line
    numbers: an unquoted separator in a value), a quote never closed, a malformed line, no rows. A row with
    fewer fields reads the missing ones as empty (a spreadsheet may drop trailing empty cells); blank lines
    are skipped.
    """
    require_file(path, CSV_NOT_FOUND)
    p = Path(path)
    encoding = _encoding(p)
    with p.open(newline="", encoding=encoding, errors="surrogateescape") as f:
        header_line = f.readline()
        if not header_line.strip():
            raise ConfigError(f"CSV file {path} is empty (expected a header line naming its columns)")
        sep = separator_char(separator) or detect_separator(header_line)
        f.seek(0)
        reader = csv.reader(f, delimiter=sep)
        line, start = 0, 1
        try:
            header = next(reader)
            line = reader.line_num
            for key, flag in columns.items():
                at = [i + 1 for i, name in enumerate(header) if name == key]
                if not at:
                    raise ConfigError(f"{path}: no column {key!r} ({flag}); columns are {header} (separator "
                                      f"{sep!r}, --csv-separator)")
                if len(at) > 1:
                    raise ConfigError(f"{path}, line 1: the header names column {key!r} {len(at)} times (columns "
                                      f"{', '.join(map(str, at))}); rename all but the one to read")
            where = [header.index(key) for key in columns]
            rows, ragged = [], []
            for record in reader:
                start, line = line + 1, reader.line_num
                if not record:
                    continue
                if len(record) > len(header):
                    ragged.append(f"line {start} has {len(record)}")
                    continue
                rows.append(tuple(record[i] if i < len(record) else "" for i in where))
        except csv.Error as e:
            raise ConfigError(f"{path}, line {start}: {e}") from None
    if ragged:
        more = f" (and {len(ragged) - 3} more rows)" if len(ragged) > 3 else ""
        raise ConfigError(f"{path}: rows with more fields than the header's {len(header)}: "
                          f"{'; '.join(ragged[:3])}{more}; is a {sep!r} inside a value unquoted? Quote such values")
    if line > start:  # the last row spans lines: was it opened by a quote that never closes?
        _check_last_quote(p, encoding, sep, start)
    if not rows:
        raise ConfigError(f"CSV file {path} has no rows")
    return rows


def _check_last_quote(path: Path, encoding: str, sep: str, start: int) -> None:
    with path.open(newline="", encoding=encoding, errors="surrogateescape") as f:
        tail = f.readlines()[start - 1:]
    try:
        list(csv.reader(tail, delimiter=sep, strict=True))
    except csv.Error as e:
        if "unexpected end of data" in str(e):
            raise ConfigError(f"{path}, line {start}: a quote opened in this row is never closed: the {len(tail)} "
                              "lines to the end of the file would be one value") from None


def clean_text(text: Optional[str], what: str = "caption") -> str:
    """``text`` stripped; ValueError for one that is empty or was not valid UTF-8 in the file."""
    if text is None or not text.strip():
        raise ValueError(f"empty {what}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid UTF-8: {text.encode('utf-8', 'replace')[:60]!r}") from None
    return text.strip()


def read_captions(path: str, img_key: str = "filepath", caption_key: str = "title", separator: Optional[str] = None,
                  long_caption_key: Optional[str] = None) -> List[Tuple[str, str, Optional[str]]]:
    """(image path, caption, long caption or None) of every row of a training CSV/TSV, checked as a whole: some
    caption is not empty, and of up to 32 image paths spread over the file at least one exists (relative paths
    are read from the file's folder). Each is a one-line ConfigError, like :func:`read_columns`'s."""
    columns = {img_key: "--csv-img-key", caption_key: "--csv-caption-key"}
    if long_caption_key:
        columns[long_caption_key] = "--long-caption-key"
    rows = [(r[0], r[1], r[2] if long_caption_key else None) for r in read_columns(path, columns, separator)]
    if not any(text.strip() for _, text, _ in rows):
        raise ConfigError(f"every caption in {path} (column {caption_key!r}) is empty")
    # fail now, not after 50 unreadable samples in a row
    root = Path(path).parent
    probe = rows[::max(1, len(rows) // 32)][:32]
    if not any(image_path(root, p).is_file() for p, _, _ in probe):
        raise ConfigError(f"{path}: none of {len(probe)} image paths looked at exists (e.g. "
                          f"{str(image_path(root, probe[0][0]))!r}); relative paths are read from the CSV's folder")
    return rows


def image_path(root: Path, value: str) -> Path:
    """A CSV's image path: absolute as it is, relative from the CSV's folder ``root``."""
    return Path(value) if Path(value).is_absolute() else root / value

