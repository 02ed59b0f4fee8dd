import json

import torch

from superclip import cli
from superclip.data.synthetic import COLOURS, SHAPES, SyntheticCaptions, zero_shot_task
from superclip.evaluate.zero_shot import zero_shot_metrics


def test_generator_is_deterministic_and_splits_differ():
    a, b = SyntheticCaptions(5, seed=3), SyntheticCaptions(5, seed=3)
    for i in range(5):
        assert a[i][0].tobytes() == b[i][0].tobytes() and a[i][1] == b[i][1]
    test = SyntheticCaptions(5, seed=3, split="test")
    assert all(a.scene(i) != test.scene(i) or a[i][0].tobytes() != test[i][0].tobytes() for i in range(5))


def test_captions_mention_exactly_the_drawn_attributes():
    data = SyntheticCaptions(200, seed=1, detailed_prob=0.5)
    for i in range(200):
        scene, (_, text) = data.scene(i), data[i]
        words = text.replace(",", " ").split()
        drawn_colours = sorted(o.colour for o in scene.objects)
        assert sorted(w for w in words if w in COLOURS) == drawn_colours, text
        assert sorted(w for w in words if w in SHAPES) == sorted(o.shape for o in scene.objects), text


def test_zero_shot_metrics_definitions():
    feats = torch.eye(3)
    weights = torch.eye(3)
    labels = torch.tensor([0, 1, 0])
    m = zero_shot_metrics(feats, weights, labels)
    assert abs(m["acc1"] - 2 / 3) < 1e-6  # predictions 0, 1, 2 against labels 0, 1, 0
    assert m["acc5"] is None  # fewer than 5 classes: undefined (clip_benchmark: NaN)
    assert abs(m["mean_per_class_recall"] - 0.75) < 1e-6  # class 0: 1/2, class 1: 1/1
    images, labels, classnames, _ = zero_shot_task("colour+shape", 20, image_size=32)
    assert len(images) == 20 and len(classnames) == len(COLOURS) * len(SHAPES) and max(labels) < len(classnames)


def test_demo_end_to_end_in_seconds(tmp_path, capsys):
    assert cli.main(["demo", "--family", "scenes", "--samples", "24", "--batches", "8", "4", "--eval-samples", "12",
                     "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert list(report["regimes"]) == ["batch 8", "batch 4"]
    for label, steps in (("batch 8", 3), ("batch 4", 6)):
        runs = report["regimes"][label]["runs"]
        assert set(runs) == {"CLIP", "SuperCLIP"}
        for run in runs.values():
            assert len(run["history"]) == steps
            assert set(run["metrics"]) >= {"zeroshot_shape_acc1", "zeroshot_colour+shape_acc1",
                                           "image_retrieval_recall@1", "tag@5_attribute_word",
                                           "compositional_acc", "compositional_count_acc"}
            assert 0 <= run["metrics"]["compositional_acc"] <= 1 and "dense_miou" not in run["metrics"]
            assert len(run["examples"]) == 6 and run["examples"][0]["truth"].count(" ") == 1
        assert runs["CLIP"]["history"][0]["class_loss"] == 0.0
        assert runs["SuperCLIP"]["history"][0]["class_loss"] > 1.0
    # what each model loses going to the small batch, per metric
    for name in ("CLIP", "SuperCLIP"):
        big, small = (report["regimes"][b]["runs"][name]["metrics"] for b in ("batch 8", "batch 4"))
        assert report["lost"]["batch 4"][name] == {k: big[k] - small[k] for k in big}
    assert (tmp_path / "demo.png").stat().st_size > 30_000
    out = capsys.readouterr().out
    assert "zero-shot colour+shape" in out and "lost at b4: CLIP" in out and "One seed, one draw" in out
    # hard negatives: the overall figure only (report.json has them per type), of --eval-samples test images
    rows = {line[:28].strip(): line[28:].split() for line in out.splitlines()}
    s8 = report["regimes"]["batch 8"]["runs"]["SuperCLIP"]["metrics"]
    assert rows["hard negatives (all types)"][1] == f"{100 * s8['compositional_acc']:.1f}"
    assert not any(label.startswith("compositional_") for label in rows)
    sets = tmp_path / "fine-sets"
    assert len(list((sets / "compositional" / "images").iterdir())) == 12 and not (sets / "masks").exists()


def test_data_synth_writes_shards_that_train(tmp_path, capsys):
    from superclip.train.trainer import Trainer

    from .test_train import _cfg

    assert cli.main(["data", "synth", "--out", str(tmp_path / "shards"), "--train-samples", "24",
                     "--test-samples", "8", "--shard-size", "10"]) == 0
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == [
        "test-000000.tar", "train-000000.tar", "train-000001.tar", "train-000002.tar"]
    hint = capsys.readouterr().out
    assert "train-{000000..000002}.tar" in hint
    pattern = str(tmp_path / "shards" / "train-{000000..000002}.tar")
    hist = Trainer(_cfg(tmp_path, dataset_type="auto", train_data=pattern, train_num_samples=24, batch_size=4,
                        epochs=1, long_caption_key="long.txt", class_caption="long")).fit()
    assert len(hist) == 6 and hist[-1]["skipped_samples"] == 0
