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


# --- issue 25: data synth never prints a command that cannot work
@pytest.mark.parametrize("extra,message", [
    (["--compositional", "--test-samples", "0"],
     "--compositional draws its items from the test split: give --test-samples of at least 1, got 0"),
    (["--masks", "--train-samples", "0"], "--masks writes a train split to fit the probe on and a test split to "
                                          "score it: give --train-samples and --test-samples of at least 1, got 0 "
                                          "and 4"),
    (["--masks", "--test-samples", "0"], "got 10 and 0"),
    (["--train-samples", "0", "--test-samples", "0"],
     "nothing to write: --train-samples, --val-samples and --test-samples are all 0"),
    (["--image-size", "100000"], "--image-size must be <= 4096, got 100000 (100000^2 RGB pixels are 27.9 GiB an "
                                 "image)"),
])
def test_a_synth_that_would_write_nothing_usable_is_one_line(tmp_path, capsys, extra, message):
    """On main: --compositional --test-samples 0 wrote an empty images/ folder and printed an eval command that
    fails ('holds no type files'); --masks with an empty split printed a probe command that fails; 0 samples
    everywhere printed a train command for 'train-{000000..000000}.tar' that was never written; --image-size
    100000 set out to draw 28 GiB images (still running when a 60 s timeout killed it)."""
    assert _synth(tmp_path / "out", *extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("superclip data: error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.*"))


def test_shards_without_a_train_split_print_no_train_command(tmp_path, capsys):
    """main printed 'train on them with: superclip train --train-data .../train-{000000..000000}.tar
    --train-num-samples 0' after writing only test shards."""
    assert _synth(tmp_path, "--train-samples", "0") == 0
    out = capsys.readouterr().out
    assert out == f"wrote 1 shards to {tmp_path} (samples: test 4)\n"
    assert _synth(tmp_path / "b") == 0
    assert capsys.readouterr().out == (f"wrote 4 shards to {tmp_path / 'b'} (samples: train 10, test 4); train on "
                                       f"them with: superclip train --train-data '{tmp_path / 'b'}/train-{{000000.."
                                       "000002}.tar' --train-num-samples 10\n")


def test_sets_already_there_are_refused_before_anything_is_written(tmp_path, capsys):
    """--compositional --masks with masks/test already holding files: main wrote the compositional set and the
    train masks, then stopped at masks/test."""
    (tmp_path / "masks" / "test").mkdir(parents=True)
    (tmp_path / "masks" / "test" / "mine.txt").write_text("the user's")
    assert _synth(tmp_path, "--compositional", "--masks", "--no-progress") == 2
    assert "masks/test already holds files" in capsys.readouterr().err
    assert not (tmp_path / "compositional").exists() and not (tmp_path / "masks" / "train").exists()
