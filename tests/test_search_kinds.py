"""The index kinds (search/index.py, search/ivf.py) on small data: each reaches the recall the build stored, against
exact search; the on-disk ``ivfpq`` build (what ten million vectors get, forced here by a small budget) killed at
its stages and rerun equals an uninterrupted build; ``optimize`` after a removal and an addition encodes only the
new parts."""
import numpy as np
import pytest

pytest.importorskip("faiss")

from .search_helpers import assert_same, cli, cli_killed_at, snapshot  # noqa: E402

DIM = 32


def clustered(n: int, seed: int = 0, clusters: int = 60) -> np.ndarray:
    """(n, DIM) float16 unit vectors around ``clusters`` centres (from one fixed set of centres)."""
    centres = np.random.default_rng(1234).standard_normal((clusters, DIM))
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


@pytest.fixture
def small_thresholds(monkeypatch):
    """The kinds at test size: exact search up to 1,000 vectors of dim 32, PQ codes from 1,000 vectors on."""
    from superclip.search import index

    monkeypatch.setattr(index, "FLAT_MAX_FLOATS", 1000 * DIM)
    monkeypatch.setattr(index, "PQ_MIN_VECTORS", 1000)


# budgets: flat 500 x 176 bytes; hnsw 3,000 x (64 + 304); ivfpq 3,000 x (4 + 24) + 64 lists + the PQ tables
CASES = [("flat", 500, 1 << 30), ("hnsw", 3000, 1 << 30), ("ivfpq", 3000, 200_000)]


@pytest.mark.parametrize("kind,n,budget", CASES)
def test_each_index_kind_reaches_its_stored_recall(small_thresholds, tmp_path, kind, n, budget):
    from superclip.search import index

    x = clustered(n)
    held_out = clustered(300, seed=1).astype(np.float32)
    ids = np.arange(100, 100 + n, dtype=np.int64)
    source = index.ArraySource(x, ids, part_size=700)
    built, info = index.build(source, budget, tmp_path, 0, reader=source.read)
    assert info["kind"] == kind and info["count"] == n
    assert info["recall_at_10"] >= index.RECALL_TARGET
    main = index.load(tmp_path, info, source.read)
    assert sorted(main.ids().tolist()) == ids.tolist()
    # the stored figure is what the loaded index finds for the build's queries (its first draws from seed 0)
    query_ids, queries = index.sample_queries(source, index.RECALL_QUERIES, np.random.default_rng(0))
    truth = index.exact_top_source(source, queries, 11)[1]
    assert index.recall_of(main.search(queries, 11)[1], truth, query_ids) == pytest.approx(info["recall_at_10"],
                                                                                          abs=1e-12)
    # queries that are not stored vectors: recall@10 against exact search stays above 0.95
    exact = ids[index.exact_top(x.astype(np.float32), held_out, 10)]
    assert index.recall_of(main.search(held_out, 10)[1], exact) >= 0.95
    # scores are the stored vectors' cosines (hnsw stores float16 as given; ivfpq re-ranks with the stored vectors)
    scores, found = main.search(held_out[:5], 10)
    stored = x.astype(np.float32)[found - 100]
    np.testing.assert_allclose(scores, np.einsum("qkd,qd->qk", stored, held_out[:5]), atol=1e-5)
    # a selector drops what it bans
    banned = found[:, 0]
    again = main.search(held_out[:5], 10, index.selector(None, banned))[1]
    assert not set(again.ravel().tolist()) & set(banned.tolist())


def ondisk_folder(root, n: int = 2000, part_size: int = 250, start: int = 0):
    """An index folder as ``index build`` leaves it before its index stage (manifest, parts, catalog), over ``n``
    synthetic vectors in parts of ``part_size``; with ``start``, the parts added to an existing folder."""
    import hashlib

    from superclip.search import parts
    from superclip.search.catalog import Catalog
    from superclip.search.collection import ingest
    from superclip.search.job import PartResult
    from superclip.search.layout import FORMAT, VERSION, Layout, write_json

    layout = Layout(root)
    root.mkdir(parents=True, exist_ok=True)
    if start == 0:
        manifest = {"format": FORMAT, "version": VERSION, "model": "synthetic", "pretrained": None,
                    "checkpoint_sha256": None, "dim": DIM, "sources": ["/collection"], "dtype": "float16",
                    "top_k": 1, "part_size": part_size, "planned": 0, "parts": {}}
    else:
        manifest = layout.read_manifest()
    x = clustered(n, seed=7 + start)
    first = manifest["planned"]
    for j, s in enumerate(range(0, n, part_size)):
        rows = x[s:s + part_size]
        names = [f"/collection/{start + s + r:06d}.png" for r in range(len(rows))]  # the same in every folder
        write_json(layout.plan(first + j), {"files": names})
        columns = {"image_path": names, "source": [""] * len(rows), "shard_index": [-1] * len(rows),
                   "size": [1] * len(rows), "mtime": [0.0] * len(rows),
                   "sha256": [hashlib.sha256(p.encode()).hexdigest() for p in names],
                   "tags": [["dot"]] * len(rows), "tag_probs": [[1.0]] * len(rows),
                   "image_path_bytes": [None] * len(rows), "thumb_offset": [None] * len(rows),
                   "thumb_size": [None] * len(rows)}
        parts.write_part(layout, first + j, PartResult(rows, columns, []))
    manifest["planned"] = first + -(-n // part_size)
    layout.write_manifest(manifest)
    catalog = Catalog(layout.catalog)
    try:
        ingest(layout, catalog, manifest)
    finally:
        catalog.close()
    return layout


OPTIMIZE = ["index", "optimize", None, "--max-index-memory", "120K"]  # 2,000 x 28 bytes, 32 lists, PQ tables: 100K


def _optimize(root):
    return [root if a is None else a for a in OPTIMIZE]


@pytest.fixture(scope="module")
def ondisk_reference(module_tmp):
    """An uninterrupted on-disk build (thresholds set as in small_thresholds, by hand: module scope)."""
    from superclip.search import index

    saved = index.FLAT_MAX_FLOATS, index.PQ_MIN_VECTORS
    index.FLAT_MAX_FLOATS, index.PQ_MIN_VECTORS = 1000 * DIM, 1000
    try:
        root = module_tmp("ondisk") / "reference"
        ondisk_folder(root)
        assert cli(*_optimize(root)) == 0
        return root, snapshot(root)
    finally:
        index.FLAT_MAX_FLOATS, index.PQ_MIN_VECTORS = saved


# inside the trained quantizer's write, after the 3rd part's codes, inside the main index file's write, between the
# index files and the manifest
@pytest.mark.parametrize("kill_at", ["ivf-train:1", "ivf-part:3", "index-write:1", "index-before-manifest:1"])
def test_ondisk_build_killed_then_rerun_equals_an_uninterrupted_build(small_thresholds, ondisk_reference, tmp_path,
                                                                      kill_at):
    import json

    reference, expected = ondisk_reference
    root = tmp_path / "idx"
    ondisk_folder(root)
    assert cli_killed_at(kill_at, *_optimize(root)) == -9
    partial = snapshot(root)  # what the kill left serves: every item searchable (exactly, no main index yet)
    assert partial["check"]["agree"] and partial["check"]["searchable"] == 2000
    assert cli(*_optimize(root)) == 0
    info = json.loads((root / "manifest.json").read_text())["index"]
    assert info["kind"] == "ivfpq" and info["recall_at_10"] >= 0.97
    assert_same(expected, snapshot(root))
    assert sorted(p.name for p in (root / "index").iterdir()) == sorted(p.name for p in (reference / "index").iterdir())
    assert not list(root.rglob("*.tmp"))


def test_optimize_after_an_addition_encodes_only_the_new_parts(small_thresholds, ondisk_reference, tmp_path):
    import json
    import shutil

    from superclip.search.searcher import Searcher

    reference, _ = ondisk_reference
    root = tmp_path / "idx"
    shutil.copytree(reference, root)
    before = {p.name: p.stat().st_mtime_ns for p in (root / "index").iterdir() if p.name.startswith("ivf-0")}
    assert cli("index", "remove", root, "5", "17") == 0
    ondisk_folder(root, n=500, start=2000)  # 2 parts more
    assert cli("index", "optimize", root, "--max-index-memory", "160K") == 0
    info = json.loads((root / "manifest.json").read_text())["index"]
    assert info["generation"] == 1 and info["trained"] == 0 and info["count"] == 2498
    after = {p.name: p.stat().st_mtime_ns for p in (root / "index").iterdir() if p.name.startswith("ivf-0")}
    assert {k: after[k] for k in before} == before  # the quantizer and the old parts' codes: not rewritten
    assert sorted(set(after) - set(before)) == ["ivf-0-00008.npz", "ivf-0-00009.npz"]
    assert sorted(p.name for p in (root / "index").iterdir() if p.name.startswith("main-")) == [
        "main-1.faiss", "main-1.loc.npy"]
    s = Searcher(str(root))
    try:
        ids = s.main.ids()
        assert 5 not in ids and 17 not in ids and len(ids) == 2498 and s.delta.ntotal == 0
        assert s.verify()["agree"]
        for item in (3, 2100, 2400):
            assert s.search(s.vector(item), 1)[0][0] == item
    finally:
        s.close()


def test_ivf_tuning_starts_nprobe_again_when_it_deepens_the_reranking(monkeypatch):
    """When more lists stop helping, the tuning doubles the re-ranking depth; with more candidates fewer lists may
    do, so nprobe starts again from 1. Before, it kept the nprobe it had reached: on 10M vectors it stored 4,096
    (every list) where 4 did as well. Here recall depends only on the depth: 0.90 at 100, 0.93 at 200, 0.975 at 400;
    the old rule returned nprobe 4."""
    import numpy as np

    from superclip.search import index, ivf

    table = {100: 0.90, 200: 0.93, 400: 0.975}
    asked = []

    class Main:
        info = {"nlist": 16}

        def search(self, queries, k, nprobe, rerank):
            asked.append((nprobe, rerank))
            return None, (nprobe, rerank)

    monkeypatch.setattr(index, "recall_of", lambda found, truth, query_ids, k: table[found[1]])
    got = ivf.tune(Main(), np.zeros((1, 4)), np.zeros(1), np.zeros((1, 11)), 0.97)
    assert got == {"nprobe": 1, "rerank": 400, "recall": 0.975}
    assert asked == [(1, 100), (2, 100), (1, 200), (2, 200), (1, 400)]


def test_a_searcher_with_mapped_vectors_answers_as_one_reading_them_with_pread(small_thresholds, ondisk_reference):
    """``serve --map-vectors``: the ivfpq index's re-ranking, a tag filter's exact scan and an item's own vector
    come from the mapped parts, with the same ids and scores as from ``pread``."""
    from superclip.search.mapped import MappedRows
    from superclip.search.searcher import Searcher

    reference, _ = ondisk_reference
    plain, mapped = Searcher(str(reference)), Searcher(str(reference), mapped=True)
    try:
        assert isinstance(mapped.reader, MappedRows) and not isinstance(plain.reader, MappedRows)
        assert plain.main.kind == "ivfpq"
        queries = clustered(20, seed=5).astype(np.float32)
        for q in queries:
            assert mapped.search(q, 10) == plain.search(q, 10)
            assert mapped.search(q, 5, tags=["dot"]) == plain.search(q, 5, tags=["dot"])
        for item in (1, 999, 2000):
            assert np.array_equal(mapped.vector(item), plain.vector(item))
    finally:
        plain.close()
        mapped.close()
