"""`superclip data synth` (issue 21, item 7): never over existing shards without --overwrite, each shard written
atomically."""
import pytest

from superclip import cli
from superclip.data import synth_sets, synthetic


def _synth(out, *extra):
    return cli.main(["data", "synth", "--out", str(out), "--train-samples", "10", "--test-samples", "4",
                     "--shard-size", "4", "--image-size", "16", *extra])


def test_existing_shards_are_refused_in_one_line_unless_overwrite(tmp_path, capsys):
    """main wrote over the shards of the first run without a word."""
    assert _synth(tmp_path) == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert sorted(before) == ["test-000000.tar", "train-000000.tar", "train-000001.tar", "train-000002.tar"]
    (tmp_path / "train-000001.tar").write_bytes(b"the user's own")
    capsys.readouterr()
    assert _synth(tmp_path, "--seed", "3") == 2
    err = capsys.readouterr().err
    assert err == (f"superclip data: error: {tmp_path / 'train-000000.tar'} exists (and 3 more): pass --overwrite to "
                   "replace it, or choose another --out\n")
    assert (tmp_path / "train-000001.tar").read_bytes() == b"the user's own"
    assert _synth(tmp_path, "--overwrite") == 0
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_an_interrupted_run_leaves_no_truncated_shard(tmp_path, monkeypatch):
    """Interrupted in the middle of the second shard: the first is complete, no second shard nor temporary file.
    main left train-000001.tar cut after its first sample."""
    real = synthetic.SyntheticCaptions.sample

    def sample(self, i):
        if i == 5:
            raise KeyboardInterrupt
        return real(self, i)

    monkeypatch.setattr(synthetic.SyntheticCaptions, "sample", sample)
    with pytest.raises(KeyboardInterrupt):
        synth_sets.write_shards(str(tmp_path), 10, image_size=16, shard_size=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train-000000.tar"]


@pytest.mark.parametrize("flag,value,message", [("--shard-size", "0", "--shard-size must be >= 1, got 0"),
                                                ("--train-samples", "-5", "--train-samples must be >= 0, got -5"),
                                                ("--image-size", "0", "--image-size must be >= 1, got 0")])
def test_bad_synth_values_are_one_line(tmp_path, capsys, flag, value, message):
    """main: --shard-size 0 ended in a ZeroDivisionError / ValueError traceback."""
    assert _synth(tmp_path, flag, value) == 2
    assert capsys.readouterr().err == f"superclip data: error: {message}\n"
