"""Damaged shards and pipe: streams (issue 21, items 1 and 2): every damaged stretch is a counted, named skip,
reading goes on after it, and no command can hang the epoch."""
import gzip
import io
import logging
import shlex
import tarfile

import pytest

from superclip.data import webdataset
from superclip.data.webdataset import Shard, ShardError, ShardStream
from superclip.errors import TrainingError
from superclip.train.run_folder import read_metrics
from superclip.train.trainer import Trainer

from .test_data import _png
from .test_train import _cfg


def tar_bytes(keys, members=("png", "txt"), fmt=tarfile.PAX_FORMAT) -> bytes:
    """A shard of samples KEY.png + KEY.txt (captions "a red square NUMBER")."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for n, key in enumerate(keys):
            for ext in members:
                data = _png((200, 30, 30)) if ext == "png" else f"a red square {n}".encode()
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def header_offset(data: bytes, name: str) -> int:
    at = data.index(name.encode())
    assert at % 512 == 0
    return at


def read_all(shard):
    good, bad = [], []
    for i in range(len(shard)):
        try:
            good.append(shard[i]["__key__"].decode())
        except ShardError as e:
            bad.append(str(e))
    return good, bad


# --- item 2: archive damage in a local shard
def test_a_corrupt_member_header_costs_its_sample_not_the_rest_of_the_shard(tmp_path):
    """40 samples; the checksum of k0010.txt's header is broken. tarfile reads that header as the end of the
    archive (main: 10 samples of 40 read, no error entry, skipped_samples 0); here 39 samples read and the 40th
    is one error naming the shard, the sample and the offset."""
    data = bytearray(tar_bytes([f"k{i:04d}" for i in range(40)]))
    at = header_offset(data, "k0010.txt")
    data[at + 148:at + 156] = b"0000000\0"  # a wrong checksum; the name stays readable
    path = tmp_path / "shard.tar"
    path.write_bytes(bytes(data))
    with Shard(str(path)) as shard:
        good, bad = read_all(shard)
    assert len(good) == 39 and "k0010" not in good and good[-1] == "k0039"
    assert bad == [f"shard {path}: sample k0010: offset {at}: a member header that does not parse (bad checksum); "
                   f"read on at offset {at + 1024} (1024 bytes skipped)"]


def test_an_unreadable_header_is_one_counted_entry_naming_shard_and_offset(tmp_path):
    data = bytearray(tar_bytes([f"k{i:04d}" for i in range(12)]))
    at = header_offset(data, "k0005.png")
    data[at:at + 512] = bytes(range(256)) * 2  # not a header, no name to read
    path = tmp_path / "shard.tar"
    path.write_bytes(bytes(data))
    with Shard(str(path)) as shard:
        good, bad = read_all(shard)
        caption_only = shard[good.index("k0005")]
    assert len(good) == 12 and set(caption_only) == {"__key__", "txt"}  # k0005 lost its image: it fails to decode
    assert len(bad) == 1 and bad[0].startswith(f"shard {path}: offset {at}: a member header that does not parse")


def test_two_concatenated_archives_are_read_whole(tmp_path):
    """``cat a.tar b.tar``: main read a.tar's 6 samples and dropped b.tar's 5 without a word."""
    path = tmp_path / "both.tar"
    path.write_bytes(tar_bytes([f"a{i}" for i in range(6)]) + tar_bytes([f"b{i}" for i in range(5)]))
    with Shard(str(path)) as shard:
        good, bad = read_all(shard)
        assert shard.notes == ["2 archives one after the other (concatenated tars): all read"]
    assert good == [f"a{i}" for i in range(6)] + [f"b{i}" for i in range(5)] and bad == []


def test_long_names_in_gnu_and_pax_archives_are_read(tmp_path):
    keys = ["d/" + "x" * 120 + str(i) for i in range(3)]
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        path = tmp_path / f"long{fmt}.tar"
        path.write_bytes(tar_bytes(keys, fmt=fmt))
        with Shard(str(path)) as shard:
            assert read_all(shard) == (keys, [])
            assert shard[2]["txt"] == b"a red square 2"


def test_gzip_compressed_shards_are_read_and_a_cut_one_keeps_what_came_before(tmp_path):
    """A .tar.gz shard: main's reader refused it (ReadError, the same warning for every read of it, then the
    advice to check --wds-caption-key); webdataset reads it, so do we."""
    raw = tar_bytes([f"k{i}" for i in range(20)])
    packed = gzip.compress(raw)
    (tmp_path / "s.tar.gz").write_bytes(packed)
    (tmp_path / "cut.tar.gz").write_bytes(packed[: len(packed) // 2])
    with Shard(str(tmp_path / "s.tar.gz")) as shard:
        assert read_all(shard) == ([f"k{i}" for i in range(20)], [])
    with Shard(str(tmp_path / "cut.tar.gz")) as shard:
        good, bad = read_all(shard)
    assert 0 < len(good) < 20 and len(bad) == 1 and "the gzip stream is cut short" in bad[0]


def test_members_of_a_sample_need_not_be_adjacent(tmp_path):
    """``tar cf shard.tar *.png *.txt``: images first, captions after. main grouped adjacent members only, so
    every sample was an image without caption plus a caption without image: all skipped."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for ext in ("png", "txt"):
            for i in range(4):
                data = _png((1, 2, 3)) if ext == "png" else b"a caption"
                info = tarfile.TarInfo(f"k{i}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    (tmp_path / "s.tar").write_bytes(buf.getvalue())
    with Shard(str(tmp_path / "s.tar")) as shard:
        samples = [shard[i] for i in range(len(shard))]
    assert [sorted(s) for s in samples] == [["__key__", "png", "txt"]] * 4


# --- item 1: pipe: streams never hang
def _write(tmp_path, name, data):
    (tmp_path / name).write_bytes(data)
    return shlex.quote(str(tmp_path / name))


def fault_sources(tmp_path):
    """pipe: URLs -> (samples each yields, error entries each yields). Each bad one writes more than a pipe
    buffer (64 KiB) after its damage: main's reader stopped reading there and waited for the command forever."""
    big = tar_bytes([f"a{i:03d}" for i in range(120)])  # ~100 KiB
    assert len(big) > 3 * 65536
    a = _write(tmp_path, "a.tar", big)
    b = _write(tmp_path, "b.tar", tar_bytes([f"b{i}" for i in range(5)]))
    good = _write(tmp_path, "good.tar", tar_bytes([f"g{i}" for i in range(8)]))
    cut = header_offset(big, "a060.png") + 512 + 50  # inside a060's image
    return {
        f"pipe:cat {good}": (8, 0),
        "pipe:yes garbage | head -c 3000000": (0, 1),  # garbage
        f"pipe:head -c {cut} {a}": (60, 1),  # truncated
        # cut, then noise: a060's image is 50 bytes of it and noise (it fails to decode later), the rest is lost
        f"pipe:head -c {cut} {a}; head -c 3000000 /dev/urandom": (61, 1),
        f"pipe:cat {b} {a}": (125, 0),  # two concatenated tars: all read
        "pipe:sleep 1000": (0, 1),  # stalls with no output
        f"pipe:cat {b}; sleep 1000": (5, 1),  # a whole archive, then a command that does not end
        f"pipe:head -c 200000 /dev/zero >&2; cat {good}": (8, 0),  # 200 kB of stderr first
    }


def test_pipe_faults_end_each_shard_with_a_counted_named_skip(tmp_path, caplog):
    sources = fault_sources(tmp_path)
    for url, (n_good, n_bad) in sources.items():
        with Shard(url, stall_timeout=1.0) as shard:
            good, bad = read_all(shard)
        assert (len(good), len(bad)) == (n_good, n_bad), (url, good, bad)
        assert all(e.startswith(f"shard {url}: ") for e in bad)
    with Shard(f"pipe:cat {tmp_path / 'a.tar'} | gzip -c", stall_timeout=1.0) as shard:  # a compressed stream
        assert read_all(shard)[0] == [f"a{i:03d}" for i in range(120)]
    with Shard("pipe:sleep 1000", stall_timeout=1.0) as shard:
        assert read_all(shard)[1] == ["shard pipe:sleep 1000: no data for 1 s after 0 bytes: the command was killed "
                                      "(--wds-stall-timeout) (skipped)"]


def test_an_epoch_over_faulty_pipe_sources_finishes_counts_and_names_each_shard(tmp_path, caplog):
    """One pass over the 8 sources of fault_sources at a 1 s stall timeout: 267 samples and 5 counted skips, and
    the log names each of the 5 faulty shards once. (main: the first faulty source hung the run.)"""
    sources = fault_sources(tmp_path)
    stream = ShardStream([list(sources)], seed=0, stall_timeout=1.0)
    good, bad = 0, []
    for sample, _, position in iter(stream):
        if position[0] == 1:  # the second pass began
            break
        if "__error__" in sample:
            bad.append(sample["__error__"].decode())
        else:
            good += 1
    assert good == sum(g for g, _ in sources.values()) == 267
    assert len(bad) == sum(b for _, b in sources.values()) == 5
    assert sorted(e.split(": ")[0] for e in bad) == sorted(f"shard {u}" for u, (_, b) in sources.items() if b)

    # and through training: the epoch ends, the skips are counted in the metrics, each shard named once
    caplog.set_level(logging.WARNING)
    pattern = "::".join(sources)
    cfg = _cfg(tmp_path, dataset_type="webdataset", train_data=pattern, train_num_samples=2 * 267, batch_size=38,
               epochs=1, wds_stall_timeout=1.0)
    Trainer(cfg).fit()
    metrics = read_metrics(tmp_path / "logs" / "run" / "metrics.jsonl")
    assert metrics[-1]["step"] == 14 and metrics[-1]["skipped_samples"] >= 5  # the first pass's 5, at least
    concatenated = next(u for u in sources if u.startswith("pipe:cat") and u.endswith("a.tar"))
    for url, (_, n_bad) in sources.items():
        named = [r.getMessage() for r in caplog.records if f"shard {url}: " in r.getMessage()]
        assert len(named) == (1 if n_bad or url == concatenated else 0), (url, named)
    assert named_once(caplog, concatenated) == "2 archives one after the other (concatenated tars): all read"


def named_once(caplog, url):
    (message,) = [r.getMessage() for r in caplog.records if f"shard {url}: " in r.getMessage()]
    return message.split(f"shard {url}: ", 1)[1]


def test_shards_that_all_fail_stop_training_with_one_line_saying_why(tmp_path):
    """Every shard empty (0 bytes), gzip-damaged or a tar without samples: main printed the same warning 200 times
    (an empty shard: then advised --wds-caption-key; a tar without samples: looped forever)."""
    (tmp_path / "empty.tar").write_bytes(b"")
    (tmp_path / "nothing.tar").write_bytes(bytes(10240))  # a valid, empty archive
    (tmp_path / "html.tar").write_bytes(b"<html><body>403 Forbidden</body></html>\n" * 20)
    for name, why in (("empty.tar", "the file is empty (0 bytes)"),
                      ("nothing.tar", "it holds no samples (an empty archive)"),
                      ("html.tar", "offset 0: not a tar archive (it begins with b'<html><body>403 ')")):
        cfg = _cfg(tmp_path, name=name, dataset_type="webdataset", train_data=str(tmp_path / name),
                   train_num_samples=8, batch_size=4, epochs=1)
        with pytest.raises(TrainingError) as e:
            Trainer(cfg).fit()
        assert str(e.value).startswith(f"none of the 1 shards holds a readable sample (shard {tmp_path / name}: {why}")


def test_stall_timeout_must_be_positive(tmp_path):
    from superclip.errors import ConfigError

    with pytest.raises(ConfigError, match="--wds-stall-timeout must be > 0 seconds"):
        _cfg(tmp_path, wds_stall_timeout=0.0)
    assert webdataset.DEFAULT_STALL_TIMEOUT == 300.0


@pytest.mark.parametrize("fmt", ["gnu", "posix", "ustar"])
def test_the_index_equals_tarfiles_on_archives_gnu_tar_writes(tmp_path, fmt):
    """An archive of folders, long names and empty files written by GNU tar: the same regular files, names,
    sizes and bytes as tarfile lists (on an undamaged archive the two readers agree)."""
    import shutil
    import subprocess

    if shutil.which("tar") is None:
        pytest.skip("no tar command")
    src = tmp_path / "src" / ("deep-" * 12) / "x"
    src.mkdir(parents=True)
    for i in range(5):
        (src / f"{'n' * (60 + i * 20)}.{i}.txt").write_bytes(bytes([i]) * (i * 300))
    if fmt == "ustar":  # ustar holds names up to 255 bytes (prefix + name) only
        for p in src.iterdir():
            p.rename(src / p.name[-40:])
    subprocess.run(["tar", f"--format={fmt}", "-cf", str(tmp_path / "a.tar"), "-C", str(tmp_path), "src"],
                   check=True)
    from superclip.data.tars import walk

    data = (tmp_path / "a.tar").read_bytes()
    index = walk(io.BytesIO(data), len(data))
    with tarfile.open(tmp_path / "a.tar") as tar:
        theirs = [(m.name, m.size, tar.extractfile(m).read()) for m in tar.getmembers() if m.isreg()]
    assert [(m.name, m.size, data[m.offset:m.offset + m.size]) for m in index.members] == theirs
    assert len(theirs) == 5 and index.damage == [] and index.archives == 1


def test_tiff_bmp_and_gif_images_in_shards_are_read(tmp_path):
    """open_clip's shard pipeline takes jpg/jpeg/png/webp only; main skipped a .tif sample as 'has no image'."""
    from PIL import Image

    from superclip.data.webdataset import decode_sample

    for ext, fmt in (("tif", "TIFF"), ("bmp", "BMP"), ("gif", "GIF")):
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), (255, 0, 0)).save(buf, format=fmt)
        image, caption, _ = decode_sample({"__key__": b"k", ext: buf.getvalue(), "txt": b"a red square"}, "txt", None)
        assert image.getpixel((0, 0)) == (255, 0, 0) and caption == "a red square"


@pytest.mark.parametrize("command,code", [
    ("(cat {good}; exit 3) | cat", 3),  # a download that fails inside a pipeline: sh reports cat's 0
    ("cat {good} | (cat; exit 4)", 4),
    ("cat {good}; exit 5", 5),
])
def test_a_pipe_command_that_fails_after_a_whole_archive_is_a_counted_skip(tmp_path, command, code):
    """All 8 samples are read, and the failure is one error entry (a counted skip, named in the log). On main
    a failure before the last command of a pipeline was not reported at all: 8 samples, 0 errors."""
    good = _write(tmp_path, "good.tar", tar_bytes([f"g{i}" for i in range(8)]))
    url = "pipe:" + command.format(good=good)
    with Shard(url, stall_timeout=5.0) as shard:
        good_keys, bad = read_all(shard)
    assert len(good_keys) == 8 and bad == [f"shard {url}: the command exited with {code} (skipped)"]
