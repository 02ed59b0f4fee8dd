"""The second synthetic family (printed textures): deterministic, captions that name exactly what is drawn, splits
that never share a sample, and a seconds-long run through the demo, the data writer and training."""
import json

import numpy as np
import pytest

from superclip import cli
from superclip.config import TrainConfig
from superclip.data.families import FAMILIES, get_family
from superclip.data.textures import INKS, PAPERS, PATTERNS, WEIGHTS, SyntheticTextures, texture_task
from superclip.errors import ConfigError


def test_deterministic_and_splits_never_share_a_sample():
    a, b = SyntheticTextures(30, seed=3), SyntheticTextures(30, seed=3)
    for i in range(30):
        assert a[i][0].tobytes() == b[i][0].tobytes() and a[i][1] == b[i][1] and a.sample(i)[1:] == b.sample(i)[1:]
    images = {}
    for split in ("train", "val", "test"):
        data = SyntheticTextures(200, seed=3, split=split)
        images[split] = {data[i][0].tobytes() for i in range(200)}
    assert not images["train"] & images["test"] and not images["train"] & images["val"]
    assert not images["val"] & images["test"]
    # the other family with the same seed draws other things
    assert SyntheticTextures(5, seed=0)[0][1] != get_family("scenes").dataset(5, seed=0)[0][1]


def _words(text):
    return text.replace(",", " ").split()


def test_captions_name_exactly_what_is_drawn():
    data = SyntheticTextures(300, seed=1)
    for i in range(300):
        t = data.scene(i)
        _, short, detailed = data.sample(i)
        for text, is_detailed in ((short, False), (detailed, True)):
            words = _words(text)
            assert [w for w in words if w in INKS] == [t.ink], text
            assert f"{t.ink} {t.pattern}" in text, text
            assert sum(p in text for p in PATTERNS) == 1, text
            assert [w for w in words if w in WEIGHTS] == ([t.weight] if is_detailed else []), text
            assert [w for w in words if w in PAPERS] == ([t.paper] if is_detailed else []), text
            assert ("frame" in words) == (is_detailed and t.framed), text


def _colour_share(image, rgb, tol=30):
    a = np.asarray(image).astype(int)
    return float((np.abs(a - np.array(rgb)).max(axis=-1) <= tol).mean())


def test_pixels_show_the_ink_paper_and_stripe_orientation():
    data = SyntheticTextures(300, seed=2, image_size=64)
    checked = 0
    for i in range(300):
        t, (image, _) = data.scene(i), data[i]
        assert _colour_share(image, INKS[t.ink]) > 0.1, (i, t)  # the ink covers a good part of the tile
        assert _colour_share(image, PAPERS[t.paper], tol=5) > 0.1, (i, t)
        for other in INKS:
            if other != t.ink:
                assert _colour_share(image, INKS[other], tol=10) < 0.02, (i, t, other)
        if t.pattern in ("horizontal stripes", "vertical stripes"):
            a = np.asarray(image).astype(float)[8:-8, 8:-8]  # inside any frame
            across_rows = np.abs(np.diff(a, axis=0)).mean()  # large for horizontal stripes
            across_cols = np.abs(np.diff(a, axis=1)).mean()
            assert (across_rows > 2 * across_cols) == (t.pattern == "horizontal stripes"), (i, t)
            checked += 1
    assert checked > 50


def test_zero_shot_tasks_and_family_registry():
    for task, n_classes in (("pattern", 6), ("ink", 6), ("ink+pattern", 36)):
        images, labels, classnames, templates = texture_task(task, 24, image_size=32)
        assert len(images) == 24 and len(classnames) == n_classes and max(labels) < n_classes
    data = SyntheticTextures(24, image_size=32, seed=0, split="test")
    _, labels, classnames, _ = texture_task("ink+pattern", 24, image_size=32)
    assert [classnames[k] for k in labels] == [f"{data.scene(i).ink} {data.scene(i).pattern}" for i in range(24)]
    assert get_family("synthetic").name == "scenes" and get_family("synthetic-textures").name == "textures"
    assert FAMILIES["textures"].fine == "pattern" and FAMILIES["textures"].coarse == "ink"
    with pytest.raises(ConfigError, match="unknown synthetic family"):
        get_family("synthetic-clouds")
    with pytest.raises(ConfigError, match="--dataset-type must be one of"):
        TrainConfig(dataset_type="synthetic-clouds")


def test_demo_on_textures_end_to_end_in_seconds(tmp_path, capsys):
    # no --family, no --lr: the demo's defaults are the textures at lr 5e-4 (docs/demo.md's 5-seed tables)
    assert cli.main(["demo", "--samples", "24", "--batches", "8", "4", "--eval-samples", "12",
                     "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["settings"]["family"] == "textures" and report["settings"]["lr"] == 5e-4
    for regime in report["regimes"].values():
        assert regime["settings"]["family"] == "textures" and regime["settings"]["lr"] == 5e-4
        for run in regime["runs"].values():
            assert set(run["metrics"]) >= {"zeroshot_pattern_acc1", "zeroshot_ink_acc1", "zeroshot_ink+pattern_acc1",
                                           "image_retrieval_recall@1", "tag@5_attribute_word"}
            assert run["examples"][0]["truth"].split()[0] in INKS
    assert "zero-shot ink+pattern" in capsys.readouterr().out


def test_textures_as_shards_and_as_a_dataset_type(tmp_path, capsys):
    from superclip.train.trainer import Trainer

    from .test_train import _cfg

    assert cli.main(["data", "synth", "--family", "textures", "--out", str(tmp_path / "shards"),
                     "--train-samples", "12", "--test-samples", "0", "--shard-size", "6"]) == 0
    import tarfile

    with tarfile.open(tmp_path / "shards" / "train-000000.tar") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar}
    drawn = json.loads(members["00000000.json"])
    assert set(drawn) == {"ink", "pattern", "weight", "paper", "framed"}
    assert f"{drawn['ink']} {drawn['pattern']}" in members["00000000.txt"].decode()
    pattern = str(tmp_path / "shards" / "train-{000000..000001}.tar")
    hist = Trainer(_cfg(tmp_path, name="shards", dataset_type="auto", train_data=pattern, train_num_samples=12,
                        batch_size=4, epochs=1)).fit()
    assert len(hist) == 3 and hist[-1]["skipped_samples"] == 0
    trainer = Trainer(_cfg(tmp_path, name="tex", dataset_type="synthetic-textures", train_num_samples=8,
                           batch_size=4, epochs=1))
    assert isinstance(trainer.dataset.source.source, SyntheticTextures)
    hist = trainer.fit()
    assert len(hist) == 2 and hist[0]["class_loss"] > 0
