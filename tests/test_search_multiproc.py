"""``torchrun --nproc_per_node 2 -m superclip index build`` (two processes joined as torchrun joins them) writes the
same parts, ids and vectors as one process, over a folder, a CSV file and webdataset shards (local and ``pipe:``)."""
import pytest

pytest.importorskip("faiss")

from .multiproc import run_ranks  # noqa: E402
from .search_helpers import (assert_same, build_args, cli, make_checkpoint, snapshot, write_scene_shards,  # noqa: E402
                             write_scenes)


def _build_rank(rank, args):
    assert cli(*args) == 0


def test_two_processes_build_what_one_builds(tmp_path):
    ckpt = make_checkpoint(tmp_path / "tiny.pt")
    write_scenes(tmp_path / "folder", 7)
    csv_images = write_scenes(tmp_path / "csv_images", 5, start=7)
    (tmp_path / "list.csv").write_text("filepath,title\n" + "".join(f"{p.relative_to(tmp_path)},x\n"
                                                                  for p in csv_images))
    shards = write_scene_shards(tmp_path / "shards", 9, shard_size=4)
    assert len(shards) == 3
    sources = [tmp_path / "folder", tmp_path / "list.csv", str(tmp_path / "shards" / "train-{000000..000001}.tar"),
               f"pipe:cat {shards[2]}"]
    one = tmp_path / "one"
    assert cli(*build_args(ckpt, one, *sources)) == 0
    two = tmp_path / "two"
    run_ranks(_build_rank, build_args(ckpt, two, *sources), nprocs=2)
    a, b = snapshot(one), snapshot(two)
    assert len(a["items"]) == 7 + 5 + 9  # 12 files in parts of 6, then one part per shard
    assert sum(1 for v in a["items"].values() if "#" in v[0]) == 9
    assert_same(a, b)
    for name in ("img_emb/img_emb_00003.npy", "metadata/metadata_00004.parquet"):
        assert (one / name).read_bytes() == (two / name).read_bytes()
