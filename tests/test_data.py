import io
import random
import tarfile

import pytest
from PIL import Image

from superclip import cli
from superclip.data.loader import CaptionPolicy
from superclip.data.webdataset import ShardStream, expand_urls, iter_tar
from superclip.model import get_tokenizer
from superclip.train.trainer import Trainer

from .test_train import _cfg


def _png(colour):
    buf = io.BytesIO()
    Image.new("RGB", (36, 36), colour).save(buf, format="PNG")
    return buf.getvalue()


def write_shards(folder, n_shards=2, per_shard=12, corrupt_every=0, corrupt_shards=None):
    """Shards in webdataset layout: KEY.png + KEY.txt + KEY.long.txt (a corrupt image every n-th sample, in
    every shard or only in ``corrupt_shards``)."""
    for s in range(n_shards):
        with tarfile.open(folder / f"shard-{s:03d}.tar", "w") as tar:
            for i in range(per_shard):
                key = f"s{s}_{i:04d}"
                colour = ("red", "green", "blue")[i % 3]
                bad = corrupt_every and (s * per_shard + i) % corrupt_every == corrupt_every - 1 and \
                    (corrupt_shards is None or s in corrupt_shards)
                members = {"png": b"not an image" if bad else _png(colour), "txt": f"a {colour} square".encode(),
                           "long.txt": f"a large {colour} square on a plain background".encode()}
                for ext, data in members.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(folder / ("shard-{000..%03d}.tar" % (n_shards - 1)))


def test_shard_patterns_and_grouping(tmp_path):
    pattern = write_shards(tmp_path)
    urls = expand_urls(pattern)
    assert len(urls) == 2
    assert expand_urls(pattern + "::" + urls[0]) == urls + urls[:1]
    samples = list(iter_tar(urls[0]))
    assert len(samples) == 12 and set(samples[0]) == {"__key__", "png", "txt", "long.txt"}
    with pytest.raises(Exception, match="no shard file matches"):
        expand_urls(str(tmp_path / "missing-{0..3}.tar"))


def test_stream_splits_over_consumers_without_overlap(tmp_path):
    urls = expand_urls(write_shards(tmp_path, n_shards=1, per_shard=40))  # 20 per consumer per pass
    keys = []
    for rank in range(2):
        stream = ShardStream([urls], seed=0, rank=rank, world_size=2)
        it = iter(stream)
        keys.append({next(it)[0]["__key__"] for _ in range(20)})
    assert len(keys[0]) == len(keys[1]) == 20 and not keys[0] & keys[1]


@pytest.mark.parametrize("workers", [0, 2])
def test_webdataset_training_skips_corrupt_and_resumes_exactly(tmp_path, workers):
    pattern = write_shards(tmp_path, corrupt_every=7)
    base = dict(dataset_type="auto", train_data=pattern, train_num_samples=16, batch_size=4, epochs=2,
                workers=workers)
    straight = Trainer(_cfg(tmp_path, name="wds", **base)).fit()
    assert len(straight) == 8 and straight[-1]["skipped_samples"] > 0
    first = Trainer(_cfg(tmp_path, name="wds-resumed", max_steps=5, **base)).fit()
    assert first[-1]["skipped_samples"] > 0  # corrupt samples before the interruption
    second = Trainer(_cfg(tmp_path, name="wds-resumed", resume="latest", **base)).fit()
    for a, b in zip(straight, first + second, strict=True):
        assert abs(a["loss"] - b["loss"]) <= 1e-6, a["step"]


def test_webdataset_resume_mid_epoch_exact_without_corrupt_samples(tmp_path):
    pattern = write_shards(tmp_path)
    base = dict(dataset_type="webdataset", train_data=pattern, train_num_samples=24, batch_size=4, epochs=1)
    straight = Trainer(_cfg(tmp_path, name="a", **base)).fit()
    first = Trainer(_cfg(tmp_path, name="b", max_steps=2, **base)).fit()
    second = Trainer(_cfg(tmp_path, name="b", resume="latest", **base)).fit()
    resumed = first + second
    assert len(straight) == len(resumed) == 6
    for a, b in zip(straight, resumed):
        assert abs(a["loss"] - b["loss"]) <= 1e-6, a["step"]


def test_caption_policy():
    rng = random.Random(0)
    assert CaptionPolicy().pick("s", "l", rng) == ("s", None)
    assert CaptionPolicy("short", "long").pick("s", "l", rng) == ("s", "l")
    assert CaptionPolicy("long", "long").pick("s", "l", rng) == ("l", None)
    picks = [CaptionPolicy(long_ratio=0.8).pick("s", "l", rng)[0] for _ in range(2000)]
    assert abs(picks.count("l") / 2000 - 0.8) < 0.03


def test_dual_captions_feed_the_class_term(tmp_path):
    tok = get_tokenizer("SuperCLIP-Tiny")
    background = tok(["background"])[0, 1].item()  # a word only the detailed captions use
    stats = {}
    for cls_caption in ("short", "long"):
        t = Trainer(_cfg(tmp_path, name=f"dual-{cls_caption}", class_caption=cls_caption, max_steps=1))
        t.fit()
        stats[cls_caption] = t.criterion.cap_fq[0, background].item()
    assert stats["short"] == 0.0 and stats["long"] > 0.3


def test_missing_long_caption_is_a_user_error(tmp_path, capsys):
    (tmp_path / "t.tsv").write_text("filepath\ttitle\na.png\thello\n")
    assert cli.main(["train", "--train-data", str(tmp_path / "t.tsv"), "--class-caption", "long",
                     "--logs", str(tmp_path)]) == 2
    assert "--long-caption-key" in capsys.readouterr().err
    assert cli.main(["train", "--train-data", str(tmp_path / "none-{0..3}.tar"), "--train-num-samples", "8",
                     "--logs", str(tmp_path)]) == 2
    assert "no shard file matches" in capsys.readouterr().err
