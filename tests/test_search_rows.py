"""The readers of stored vectors by location: the parts mapped side by side (serve) give exactly what one pread a
row gives (a build), across parts of any sizes, as parts appear, and when the reserved address space grows."""
import threading

import numpy as np
import pytest

from superclip.search import mapped
from superclip.search.ivf import PartRows


def write_parts(tmp_path, sizes, dim=24, dtype=np.float16, seed=0):
    rng = np.random.default_rng(seed)
    for p, n in enumerate(sizes):
        np.save(tmp_path / f"p{p}.npy", rng.standard_normal((n, dim)).astype(dtype))
    return lambda p: tmp_path / f"p{p}.npy"


def locations(rng, sizes, n, parts=None):
    parts = rng.choice(parts if parts is not None else len(sizes), n)
    rows = rng.integers(0, np.asarray(sizes)[parts])
    return (parts.astype(np.int64) << 32) | rows


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_mapped_rows_equal_pread_rows(tmp_path, dtype):
    sizes = [1, 700, 33, 4096, 5]  # rows of odd counts: parts end mid-page
    path_of = write_parts(tmp_path, sizes, dtype=dtype)
    reader, reference = mapped.mapped_rows(path_of), PartRows(path_of)
    assert isinstance(reader, mapped.MappedRows)
    rng = np.random.default_rng(1)
    for n in (1, 7, 500):
        locs = locations(rng, sizes, n)
        got = reader(locs)
        assert got.dtype == np.float32 and got.shape == (n, 24)
        assert np.array_equal(got, reference(locs))
    # every row of every part, in order: the last row of each part is its file's last bytes
    every = np.concatenate([(np.int64(p) << 32) | np.arange(n) for p, n in enumerate(sizes)])
    assert np.array_equal(reader(every), np.concatenate([np.load(path_of(p)).astype(np.float32)
                                                         for p in range(len(sizes))]))
    assert reader(np.zeros(0, np.int64)).shape == (0, 24)


def test_mapped_rows_map_parts_as_they_are_named_and_grow_their_reservation(tmp_path, monkeypatch):
    monkeypatch.setattr(mapped, "MIN_RESERVE", 64 * 1024)  # a reservation that the third part overflows
    sizes = [40, 40, 40, 40, 40, 40]
    path_of = write_parts(tmp_path, sizes, dim=256)
    reader, reference = mapped.MappedRows(path_of), PartRows(path_of)
    rng = np.random.default_rng(2)
    first = locations(rng, sizes, 50, parts=[0])
    assert np.array_equal(reader(first), reference(first))
    assert sorted(reader.files) == [0]  # only the part named so far is mapped
    regions = [reader.region]
    for upto in range(2, 7):
        locs = locations(rng, sizes, 80, parts=list(range(upto)))
        assert np.array_equal(reader(locs), reference(locs))
        regions.append(reader.region)
    assert len({id(r) for r in regions}) >= 2  # grown at least once, every part mapped again at its offset
    assert np.array_equal(reader(first), reference(first))


def test_mapped_rows_gathers_from_threads_while_new_parts_are_mapped(tmp_path, monkeypatch):
    monkeypatch.setattr(mapped, "MIN_RESERVE", 128 * 1024)
    sizes = [64] * 12
    path_of = write_parts(tmp_path, sizes, dim=128)
    reader, reference = mapped.MappedRows(path_of), PartRows(path_of)
    errors = []

    def work(seed):
        rng = np.random.default_rng(seed)
        try:
            for _ in range(60):
                locs = locations(rng, sizes, 30)
                if not np.array_equal(reader(locs), reference(locs)):
                    errors.append("rows differ")
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_mapped_rows_refuse_parts_of_another_shape_and_reads_after_close(tmp_path):
    np.save(tmp_path / "p0.npy", np.zeros((4, 8), np.float16))
    np.save(tmp_path / "p1.npy", np.zeros((4, 16), np.float16))
    reader = mapped.MappedRows(lambda p: tmp_path / f"p{p}.npy")
    assert reader(np.asarray([1 << 32], np.int64)).shape == (1, 16)  # the first part read sets the shape
    with pytest.raises(ValueError, match="float16 x 8, the other parts float16 x 16"):
        reader(np.asarray([0], np.int64))
    reader.close()
    with pytest.raises(ValueError, match="closed"):
        reader(np.asarray([1 << 32], np.int64))


def test_a_truncated_part_is_an_error_not_a_crash(tmp_path):
    """A part cut short (its header promises more rows than its file holds): a mapping past the end of a file would
    kill the server (SIGBUS) on the first read of its last rows; the reader refuses it with an error instead."""
    np.save(tmp_path / "p0.npy", np.ones((100, 64), np.float16))
    size = (tmp_path / "p0.npy").stat().st_size
    with open(tmp_path / "p0.npy", "r+b") as f:
        f.truncate(size - 5000)
    reader = mapped.MappedRows(lambda p: tmp_path / f"p{p}.npy")
    with pytest.raises(ValueError, match="shorter than its header says"):
        reader(np.asarray([99], np.int64))


@pytest.mark.parametrize("step", [1, 3, 5000])  # dense ids (a table), gaps (a table), sparse (binary search)
def test_reranker_finds_each_candidates_location_and_scores_it_exactly(tmp_path, step):
    from superclip.search.ivf import Reranker

    sizes = [300, 200]
    path_of = write_parts(tmp_path, sizes, dim=16, dtype=np.float32)
    locs = np.concatenate([(np.int64(p) << 32) | np.arange(n) for p, n in enumerate(sizes)])
    ids = 7 + step * np.arange(len(locs), dtype=np.int64)
    rng = np.random.default_rng(3)
    order = rng.permutation(len(locs))  # ids and locations in no common order; the table is by id
    loc = np.stack([ids, locs[order]], 1)
    rr = Reranker(loc, PartRows(path_of))
    assert (rr.table is None) == (step == 5000)
    cand = rng.choice(ids, 40, replace=False)
    assert np.array_equal(rr.locations(cand), loc[np.searchsorted(ids, cand), 1])
    q = rng.standard_normal((1, 16)).astype(np.float32)
    scores, got = rr(q, np.concatenate([cand, [-1, -1]])[None], 5)
    vectors = PartRows(path_of)(loc[np.searchsorted(ids, cand), 1])
    exact = vectors @ q[0]
    best = np.argsort(-exact)[:5]
    assert np.array_equal(got[0], cand[best]) and np.allclose(scores[0], exact[best], atol=1e-6)
