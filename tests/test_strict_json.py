"""Every JSON superclip writes is strict JSON (no NaN / Infinity): read back with a parser that refuses them."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from superclip.evaluate.dense import confusion_matrix, segmentation_metrics
from superclip.strict_json import dumps, strict
from superclip.train.trainer import Trainer

from .bad_inputs import png
from .conftest import TINY_CFG, run_cli


def strict_loads(text: str):
    def refuse(word):
        raise ValueError(f"not JSON: {word}")
    return json.loads(text, parse_constant=refuse)


def test_non_finite_values_are_null_with_a_reason():
    obj = {"loss": float("nan"), "lr": 0.1, "nested": {"x": float("-inf")}, "iou": [0.5, float("inf")],
           "null_reasons": {"y": "given by the caller"}, "y": None}
    out = strict_loads(dumps(obj))
    assert out == {"loss": None, "lr": 0.1, "nested": {"x": None, "null_reasons": {"x": "-infinite"}},
                   "iou": [0.5, None], "y": None,
                   "null_reasons": {"y": "given by the caller", "loss": "not a number (NaN)", "iou[1]": "infinite"}}
    assert strict([float("nan"), 1]) == [None, 1]
    assert obj["loss"] != obj["loss"]  # the caller's object is left as it was


def test_segmentation_metrics_of_no_scored_pixel_are_null_with_a_reason():
    """On main: miou and mean_class_acc NaN (written as NaN, not JSON), pixel_acc 0.0 (a number for no pixel)."""
    target = torch.full((1, 2, 3), 255)
    m = segmentation_metrics(confusion_matrix(torch.zeros_like(target), target, 3, 255))
    assert m["miou"] is None and m["pixel_acc"] is None and m["mean_class_acc"] is None
    assert m["null_reasons"]["miou"] == "no pixel is scored (every one is the ignore index)"
    strict_loads(json.dumps(m, allow_nan=False))


def _split(root, name, value):
    (root / name / "images").mkdir(parents=True)
    (root / name / "annotations").mkdir(parents=True)
    for i in range(2):
        (root / name / "images" / f"{i}.png").write_bytes(png((40 * i, 90, 90), size=32))
        mask = np.full((32, 32), 255, dtype=np.uint8)
        if value is not None:
            mask[:16] = value
        Image.fromarray(mask, mode="L").save(root / name / "annotations" / f"{i}.png")
    return str(root / name)


def test_a_segmentation_split_without_a_scored_pixel_is_one_line(tmp_path, capsys):
    """On main the eval ran and printed (and wrote with --output) ``"miou": NaN``: not JSON."""
    import superclip

    superclip.save_checkpoint(tmp_path / "tiny.pt", superclip.build_model(TINY_CFG))
    train, test = _split(tmp_path, "train", 1), _split(tmp_path, "test", None)
    rc, out, err = run_cli(["eval", "--pretrained", str(tmp_path / "tiny.pt"), "--segmentation-probe-train", train,
                            "--segmentation-probe-test", test, "--segmentation-classes", "2", "--no-progress",
                            "--output", str(tmp_path / "out.json")], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "test: every mask pixel is the ignore index 255: there is nothing to fit or score" in err
    assert not (tmp_path / "out.json").exists()


def test_metrics_of_a_skipped_non_finite_step_are_strict_json(tmp_path):
    """A step whose gradient is NaN is logged (nonfinite 1); on main its line held ``"grad_norm": NaN``."""
    from .test_crash_safety import _cfg, _nan_at

    trainer = Trainer(_cfg(tmp_path, name="nan", max_steps=3, epochs=1))
    state = _nan_at(trainer, {2})
    state["step"] = 1
    trainer.fit(lambda step, m: state.update(step=step + 1))
    lines = (tmp_path / "logs" / "nan" / "metrics.jsonl").read_text().splitlines()
    records = [strict_loads(line) for line in lines]
    bad = [r for r in records if r.get("nonfinite")]
    assert len(bad) == 1 and bad[0]["grad_norm"] is None and bad[0]["null_reasons"]["grad_norm"] == \
        "not a number (NaN)"
    assert all(r["loss"] is not None for r in records)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_the_eval_json_is_strict(tmp_path, capsys, monkeypatch, value):
    """Whatever a metric comes out as, eval's stdout and --output parse strictly (a linear probe whose accuracy
    is made non-finite here stands for any evaluation)."""
    import sys

    import superclip

    linear_probe = sys.modules["superclip.evaluate.linear_probe"]  # the module (the package exports the function)

    superclip.save_checkpoint(tmp_path / "tiny.pt", superclip.build_model(TINY_CFG))
    for c in ("red", "blue"):
        for i in range(2):
            (tmp_path / "zs" / c).mkdir(parents=True, exist_ok=True)
            (tmp_path / "zs" / c / f"{i}.png").write_bytes(png((200, 30 * i, 30) if c == "red" else (30, 30, 200)))
    monkeypatch.setattr(linear_probe, "linear_probe", lambda *a, **k: {"acc1": value})
    rc, out, err = run_cli(["eval", "--pretrained", str(tmp_path / "tiny.pt"), "--linear-probe-train",
                            str(tmp_path / "zs"), "--linear-probe-test", str(tmp_path / "zs"), "--no-progress",
                            "--output", str(tmp_path / "out.json")], capsys)
    assert rc == 0, err
    for text in (out, (tmp_path / "out.json").read_text()):
        probe = strict_loads(text)["metrics"]["linear_probe"]
        assert probe["acc1"] is None and probe["null_reasons"]["acc1"] in ("not a number (NaN)", "infinite")
