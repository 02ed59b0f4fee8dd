"""Shards at scale: pipe: sources, resampling, upsampling factors, fewer shards than consumers, one-shard epochs,
and resuming at a position that reads one shard."""
import math
import shlex
from collections import Counter

import pytest

from superclip.data import webdataset
from superclip.data.webdataset import ShardStream, expand_sources
from superclip.errors import ConfigError
from superclip.train.trainer import Trainer

from .test_data import write_shards
from .test_train import _cfg


def _keys(stream, n):
    it = iter(stream)
    return [next(it)[0]["__key__"].decode() for _ in range(n)]


def test_pipe_sources_train_exactly_like_the_plain_paths(tmp_path):
    pattern = write_shards(tmp_path, n_shards=2, per_shard=12)
    base = dict(dataset_type="webdataset", train_num_samples=16, batch_size=4, epochs=1)
    plain = Trainer(_cfg(tmp_path, name="plain", train_data=pattern, **base)).fit()
    piped = "pipe:cat " + shlex.quote(str(tmp_path)) + "/shard-{000..001}.tar"
    assert expand_sources(piped) == [[f"pipe:cat {tmp_path}/shard-000.tar", f"pipe:cat {tmp_path}/shard-001.tar"]]
    through_pipe = Trainer(_cfg(tmp_path, name="pipe", train_data=piped, **base)).fit()
    assert [m["loss"] for m in plain] == [m["loss"] for m in through_pipe]


def test_a_failing_pipe_command_is_a_skipped_sample_not_a_crash(tmp_path):
    with webdataset.Shard("pipe:exit 3") as shard:
        assert len(shard) == 1
        with pytest.raises(webdataset.ShardError, match="exited with 3"):
            shard[0]


def test_a_source_that_matches_nothing_is_an_error_naming_it(tmp_path):
    pattern = write_shards(tmp_path, n_shards=2)
    with pytest.raises(ConfigError, match=r"no shard file matches source 2 of 2 \('.*/nope-\{0..3\}.tar'\)"):
        expand_sources(pattern + "::" + str(tmp_path / "nope-{0..3}.tar"))
    with pytest.raises(ConfigError, match="no shard file matches"):
        expand_sources(str(tmp_path / "*.tgz"))


def test_a_one_shard_epoch_of_32_samples_yields_32_distinct_samples(tmp_path):
    urls = expand_sources(write_shards(tmp_path, n_shards=1, per_shard=32))
    keys = _keys(ShardStream(urls, seed=0), 32)
    assert len(set(keys)) == 32


def test_four_consumers_over_two_shards_read_each_sample_once(tmp_path, caplog):
    """2 shards for 4 consumers (here 4 ranks; ranks x loader workers alike): each shard is split in 2 parts,
    each consumer reads its own part, and an epoch of 32 samples sees every sample once."""
    urls = expand_sources(write_shards(tmp_path, n_shards=2, per_shard=16))
    seen = Counter()
    for rank in range(4):
        stream = ShardStream(urls, seed=3, rank=rank, world_size=4)
        seen.update(_keys(stream, 8))
    assert len(seen) == 32 and set(seen.values()) == {1}
    assert "2 shards for 4 consumers" in caplog.text and "4 or more shards avoid that" in caplog.text


def test_resuming_reads_only_the_unit_at_the_position(tmp_path, monkeypatch):
    """A position (round, unit, offset) opens that one shard and skips entries of its permutation without
    reading them: the cost of a resume is one shard's index, not the epoch read again."""
    urls = expand_sources(write_shards(tmp_path, n_shards=6, per_shard=10))
    straight = _keys(ShardStream(urls, seed=1), 60)
    opened, read = [], []
    real_init, real_get = webdataset.Shard.__init__, webdataset.Shard.__getitem__
    monkeypatch.setattr(webdataset.Shard, "__init__",
                        lambda self, url, *a: (opened.append(url), real_init(self, url, *a))[1])
    monkeypatch.setattr(webdataset.Shard, "__getitem__", lambda self, i: (read.append(i), real_get(self, i))[1])
    resumed = ShardStream(urls, seed=1)
    resumed.set_position(0, {0: [0, 4, 3]})  # round 0, fifth unit, 3 of its samples delivered
    assert _keys(resumed, 17) == straight[43:]
    assert len(opened) == 2 and len(read) == 17  # the fifth and sixth shard; only the samples delivered


def _drawn_urls(stream, n):
    return [stream.draw(d, consumer=0).url for d in range(n)]


def test_resampling_draws_shards_with_replacement_and_resumes_exactly(tmp_path):
    urls = expand_sources(write_shards(tmp_path, n_shards=4, per_shard=6))
    stream = ShardStream(urls, seed=0, resampled=True)
    drawn = _drawn_urls(stream, 2000)
    assert any(len(set(drawn[i:i + 4])) < 4 for i in range(0, 400, 4))  # with replacement: repeats within 4 draws
    for url, n in Counter(drawn).items():  # uniform over shards: 500 expected each, binomial sd 19.4
        assert abs(n - 500) < 4 * math.sqrt(2000 * 0.25 * 0.75), (url, n)
    assert _drawn_urls(ShardStream(urls, seed=0, resampled=True), 50) == drawn[:50]  # deterministic
    base = dict(dataset_type="webdataset", train_data=str(tmp_path / "shard-{000..003}.tar"), train_num_samples=16,
                batch_size=4, epochs=2, dataset_resampled=True)
    straight = Trainer(_cfg(tmp_path, name="rs", **base)).fit()
    first = Trainer(_cfg(tmp_path, name="rs-resumed", max_steps=3, **base)).fit()
    second = Trainer(_cfg(tmp_path, name="rs-resumed", resume="latest", **base)).fit()
    assert len(straight) == 8
    for a, b in zip(straight, first + second, strict=True):
        assert abs(a["loss"] - b["loss"]) <= 1e-6, a["step"]


def test_upsampling_factors_weigh_the_sources(tmp_path):
    """Sources A and B, 2 shards of 5 samples each, factors 1::3: a shard is drawn with weight 1 (A) or 3 (B), so
    3/4 of the samples come from B. Over 4000 samples (800 shard draws) the share's binomial sd is
    sqrt(0.75 x 0.25 / 800) = 0.0153; the test allows 4 sd."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write_shards(tmp_path / "a", n_shards=2, per_shard=5)
    write_shards(tmp_path / "b", n_shards=2, per_shard=5)
    pattern = str(tmp_path / "a" / "shard-{000..001}.tar") + "::" + str(tmp_path / "b" / "shard-{000..001}.tar")
    stream = ShardStream(expand_sources(pattern), seed=0, resampled=True, weights=[1, 3])
    from_b = 0
    it = iter(stream)
    for _ in range(4000):
        _, _, position = next(it)
        from_b += "/b/" in stream.draw(position[0], 0).url
    assert abs(from_b / 4000 - 0.75) <= 4 * math.sqrt(0.75 * 0.25 / 800)
    # and through the config: factors need --dataset-resampled and one factor per source
    cfg = dict(dataset_type="webdataset", train_data=pattern, train_num_samples=8, batch_size=4)
    with pytest.raises(ConfigError, match="needs --dataset-resampled"):
        Trainer(_cfg(tmp_path, train_data_upsampling_factors="1::3", **cfg))
    with pytest.raises(ConfigError, match="1 factors for 2"):
        Trainer(_cfg(tmp_path, train_data_upsampling_factors="2", dataset_resampled=True, **cfg))


def test_val_data_and_eval_read_shards_also_through_pipe(tmp_path):
    """Retrieval on shards (a pattern or pipe: URLs) equals retrieval on the same images and captions as files."""
    import superclip
    from superclip.evaluate.features import Encoder
    from superclip.evaluate.tasks import retrieval_file

    from .conftest import TINY_CFG

    pattern = write_shards(tmp_path, n_shards=2, per_shard=5)
    rows = ["filepath\ttitle"]
    for url in webdataset.expand_urls(pattern):
        for sample in webdataset.iter_tar(url):
            name = sample["__key__"].decode() + ".png"
            (tmp_path / name).write_bytes(sample["png"])
            rows.append(f"{name}\t{sample['txt'].decode()}")
    (tmp_path / "val.tsv").write_text("\n".join(rows) + "\n")
    model = superclip.build_model(TINY_CFG).eval()
    encoder, preprocess, tok = Encoder(model), superclip.get_transforms(model)[1], superclip.get_tokenizer(TINY_CFG)
    from_files = retrieval_file(encoder, preprocess, tok, str(tmp_path / "val.tsv"))
    from_shards = retrieval_file(encoder, preprocess, tok, pattern)
    piped = retrieval_file(encoder, preprocess, tok, f"pipe:cat {tmp_path}/shard-{{000..001}}.tar")
    metrics = [k for k in from_files if "recall" in k]
    assert from_shards["n_images"] == from_files["n_images"] == 10
    assert [from_shards[k] for k in metrics] == [from_files[k] for k in metrics] == [piped[k] for k in metrics]
