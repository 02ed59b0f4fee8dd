"""CSV/TSV shapes as spreadsheets and pandas write them (issue 21, item 5): one reader, superclip.data.csv."""
import pytest

from superclip.data.csv import read_columns
from superclip.errors import ConfigError

COLS = {"filepath": "--csv-img-key", "title": "--csv-caption-key"}


def _read(tmp_path, content, name="d.csv", **kw):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return read_columns(str(path), COLS, **kw)


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    """Excel's "CSV UTF-8" begins with EF BB BF. main: "no column 'filepath'; columns are ['\\ufefffilepath', ...]"."""
    assert _read(tmp_path, b"\xef\xbb\xbffilepath,title\na.png,a caf\xc3\xa9\n") == [("a.png", "a café")]


def test_utf16_with_its_byte_order_mark_is_read(tmp_path):
    """Excel's "Unicode Text": UTF-16 LE with a BOM, tab-separated. main: no column 'filepath' (NUL bytes)."""
    text = "filepath\ttitle\r\na.png\tun café\r\nb.png\tzwei Bäume\r\n"
    assert _read(tmp_path, text.encode("utf-16"), "d.txt") == [("a.png", "un café"), ("b.png", "zwei Bäume")]


def test_a_semicolon_separated_export_is_detected(tmp_path):
    """Excel where the decimal mark is a comma writes ';'. main: no column 'filepath' (columns ['filepath;title'])."""
    assert _read(tmp_path, "filepath;title\r\na.png;a dog, running\r\n") == [("a.png", "a dog, running")]


def test_a_column_named_twice_is_an_error_with_its_line(tmp_path):
    """main trained on the last 'title' column without a word."""
    with pytest.raises(ConfigError) as e:
        _read(tmp_path, "filepath,title,title\na.png,a dog,DRAFT\n")
    assert str(e.value) == (f"{tmp_path / 'd.csv'}, line 1: the header names column 'title' 2 times (columns 2, 3); "
                            "rename all but the one to read")
    assert _read(tmp_path, "filepath,title,x,x\na.png,a dog,1,2\n") == [("a.png", "a dog")]  # unread duplicates


def test_rows_with_more_fields_than_the_header_are_an_error_naming_their_lines(tmp_path):
    """An unquoted comma in a caption. main cut the caption at the comma ('a dog') without a word."""
    rows = ["filepath,title", "a.png,a dog", 'b.png,"a cat, asleep"', "c.png,a cat, asleep", "", "d.png,x,y,z"]
    with pytest.raises(ConfigError) as e:
        _read(tmp_path, "\n".join(rows) + "\n")
    assert str(e.value) == (f"{tmp_path / 'd.csv'}: rows with more fields than the header's 2: line 4 has 3; line 6 "
                            "has 4; is a ',' inside a value unquoted? Quote such values")


def test_line_numbers_count_physical_lines_after_a_multiline_value(tmp_path):
    with pytest.raises(ConfigError, match=r"line 5 has 3;"):
        _read(tmp_path, 'filepath,title\na.png,"two\nlines"\n\nb.png,x,y\n')


def test_rows_with_fewer_fields_read_the_missing_ones_as_empty(tmp_path):
    assert _read(tmp_path, "title,filepath,other\nx,a.png\ny\n") == [("a.png", "x"), ("", "y")]


def test_a_quote_never_closed_is_an_error_at_its_line(tmp_path):
    """main read every following row into that one caption."""
    with pytest.raises(ConfigError) as e:
        _read(tmp_path, 'filepath,title\na.png,a dog\nb.png,"a cat\nc.png,a bird\nd.png,a fish\n')
    assert str(e.value) == (f"{tmp_path / 'd.csv'}, line 3: a quote opened in this row is never closed: the 3 lines "
                            "to the end of the file would be one value")
    assert _read(tmp_path, 'filepath,title\na.png,"a dog\non two lines"\n') == [("a.png", "a dog\non two lines")]


def test_windows_line_ends_and_a_pandas_index_column(tmp_path):
    """pandas' to_csv without index=False adds an unnamed first column; Windows writes CRLF."""
    assert _read(tmp_path, ",filepath,title\r\n0,a.png,a dog\r\n1,b.png,a cat\r\n") == [("a.png", "a dog"),
                                                                                       ("b.png", "a cat")]


def test_a_backslash_t_separator_as_typed_in_a_shell_is_a_tab(tmp_path):
    """open_clip_train users pass --csv-separator "\\t" (the shell keeps the backslash; pandas reads it as a tab).
    main: train refused it ("must be one character") and eval / index build raised a csv TypeError traceback."""
    from superclip.config import make_config

    assert make_config({}, {"csv_separator": "\\t"}).csv_separator == "\t"
    assert _read(tmp_path, "filepath\ttitle\na.png\ta dog, running\n", separator="\\t") == [("a.png", "a dog, running")]
    with pytest.raises(ConfigError, match="--csv-separator must be one character"):
        _read(tmp_path, "filepath,title\na.png,x\n", separator=";;")
