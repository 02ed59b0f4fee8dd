"""Nothing lost, nothing overwritten: an existing run is refused, non-finite steps are skipped, a damaged
newest checkpoint is passed over, a full disk leaves the previous checkpoints intact, a checkpoint is data."""
import errno
import hashlib
import json

import pytest
import torch

import superclip
from superclip import cli
from superclip.errors import CheckpointError, ConfigError, TrainingError
from superclip.train.run_folder import read_metrics
from superclip.train.trainer import Trainer

from .conftest import TINY_CFG
from .test_train import _cfg


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_a_second_run_with_the_same_name_is_refused_and_the_first_is_untouched(tmp_path, capsys):
    Trainer(_cfg(tmp_path, name="mine", max_steps=2, epochs=1)).fit()
    ckpts = tmp_path / "logs" / "mine" / "checkpoints"
    before = _digests(ckpts)
    metrics_before = (tmp_path / "logs" / "mine" / "metrics.jsonl").read_bytes()
    rc = cli.main(["train", "--model", str(tmp_path / "tiny.json"), "--dataset-type", "synthetic",
                   "--logs", str(tmp_path / "logs"), "--name", "mine", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "already holds checkpoints" in err and "--resume latest" in err and "--name" in err
    assert _digests(ckpts) == before
    assert (tmp_path / "logs" / "mine" / "metrics.jsonl").read_bytes() == metrics_before


def test_default_run_names_are_unique(tmp_path):
    names = set()
    for _ in range(2):
        cfg = _cfg(tmp_path, name=None, max_steps=1, epochs=1)
        t = Trainer(cfg)
        t.fit()
        names.add(t.dir.name)
        assert t.dir.name.startswith(tuple("0123456789")) and "model_tiny" in t.dir.name and "b_8" in t.dir.name
    assert len(names) == 2


def _nan_at(trainer, steps):
    """Makes one parameter's gradient NaN in the given optimizer steps (1-based)."""
    state = {"step": 0}
    param = trainer.model.visual.conv1.weight

    def hook(grad):
        return grad * float("nan") if state["step"] in steps else grad

    param.register_hook(hook)
    return state


def test_a_nan_gradient_skips_that_step_and_the_run_goes_on(tmp_path):
    trainer = Trainer(_cfg(tmp_path, name="nan", max_steps=6, epochs=1, save_every_n_steps=1))
    state = _nan_at(trainer, {3})
    snapshots = {}

    def on_step(step, m):
        snapshots[step] = ({k: v.clone() for k, v in trainer.model.state_dict().items()},
                           trainer.criterion.cap_fq.clone(), trainer.criterion.num_samples.clone(), m)
        state["step"] = step + 1

    state["step"] = 1
    trainer.fit(on_step)
    after2, after3 = snapshots[2], snapshots[3]
    assert after3[3]["nonfinite"] == 1 and all(snapshots[s][3]["nonfinite"] == 0 for s in (1, 2, 4, 5, 6))
    for k in after2[0]:  # step 3 changed nothing: weights and IDF statistics as after step 2
        assert torch.equal(after2[0][k], after3[0][k]), k
    assert torch.equal(after2[1], after3[1]) and torch.equal(after2[2], after3[2])
    assert not torch.equal(snapshots[4][0]["head.fc.weight"], after3[0]["head.fc.weight"])  # and it goes on
    assert trainer.progress.nonfinite_steps == 1
    for path in (tmp_path / "logs" / "nan" / "checkpoints").glob("*.pt"):
        ckpt = torch.load(path, weights_only=True)
        assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point()), path
    logged = [m for m in read_metrics(tmp_path / "logs" / "nan" / "metrics.jsonl") if m.get("nonfinite")]
    assert [m["step"] for m in logged] == [3]


def test_too_many_nonfinite_steps_in_a_row_stop_the_run(tmp_path):
    trainer = Trainer(_cfg(tmp_path, name="nans", max_steps=8, epochs=1, max_nonfinite_steps=3))
    state = _nan_at(trainer, set(range(3, 100)))
    state["step"] = 1

    def on_step(step, m):
        state["step"] = step + 1

    with pytest.raises(TrainingError, match="3 steps in a row"):
        trainer.fit(on_step)
    assert trainer.progress.step == 5 and trainer.progress.nonfinite_steps == 3


def test_a_nonfinite_weight_is_never_saved(tmp_path):
    trainer = Trainer(_cfg(tmp_path, name="inf", max_steps=1, epochs=1))
    trainer.fit()
    before = _digests(tmp_path / "logs" / "inf" / "checkpoints")
    with torch.no_grad():
        trainer.model.head.fc.bias[3] = float("inf")
    with pytest.raises(CheckpointError, match="head.fc.bias is not finite"):
        trainer.save("epoch_latest.pt")
    assert _digests(tmp_path / "logs" / "inf" / "checkpoints") == before


def test_a_truncated_newest_checkpoint_resumes_from_the_one_before(tmp_path, caplog):
    straight = Trainer(_cfg(tmp_path, name="straight", max_steps=8)).fit()
    Trainer(_cfg(tmp_path, name="broken", max_steps=6, save_every_n_steps=2)).fit()
    ckpts = tmp_path / "logs" / "broken" / "checkpoints"
    newest = ckpts / "step_6.pt"  # epoch_latest.pt is the same file (a hard link)
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 3])
    trainer = Trainer(_cfg(tmp_path, name="broken", max_steps=8, resume="latest"))
    assert trainer.progress.step == 4
    assert "cannot read checkpoint" in caplog.text and "step_6.pt" in caplog.text
    resumed = trainer.fit()
    assert [m["step"] for m in resumed] == [5, 6, 7, 8]
    for a, b in zip(straight[4:], resumed, strict=True):
        assert abs(a["loss"] - b["loss"]) <= 1e-6
    steps = [m["step"] for m in read_metrics(tmp_path / "logs" / "broken" / "metrics.jsonl")]
    assert steps == list(range(1, 9))  # steps 5 and 6, logged before, are logged once


def test_a_full_disk_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    trainer = Trainer(_cfg(tmp_path, name="full", max_steps=4, save_every_n_steps=2))
    real_save = torch.save
    calls = {"n": 0}

    def save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] >= 2:  # the second checkpoint finds the disk full, half-way through
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(CheckpointError, match="No space left on device"):
        trainer.fit()
    ckpts = tmp_path / "logs" / "full" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["epoch_latest.pt", "epoch_latest.pt.json", "step_2.pt",
                                                        "step_2.pt.json"]
    monkeypatch.setattr(torch, "save", real_save)
    assert Trainer(_cfg(tmp_path, name="full", max_steps=4, resume="latest")).progress.step == 2


def test_resuming_with_another_model_or_batch_size_says_what_differs(tmp_path):
    Trainer(_cfg(tmp_path, name="a", max_steps=1, epochs=1)).fit()
    wider = dict(TINY_CFG, vision_cfg=dict(TINY_CFG["vision_cfg"], width=96))
    (tmp_path / "wider.json").write_text(json.dumps(wider))
    with pytest.raises(CheckpointError, match=r"another model: its config differs at vision_cfg.width \(64 in"):
        Trainer(_cfg(tmp_path, name="a", model=str(tmp_path / "wider.json"), resume="latest"))
    with pytest.raises(CheckpointError, match="trained with --batch-size 8, this run has 4"):
        Trainer(_cfg(tmp_path, name="a", batch_size=4, resume="latest"))


def test_a_checkpoint_cannot_turn_on_remote_code(tmp_path, monkeypatch):
    """A tokenizer named in a (checkpoint's) model config never gets trust_remote_code from that config."""
    import open_clip

    seen = {}

    class FakeHFTokenizer:
        def __init__(self, name, context_length=77, **kwargs):
            seen.update(kwargs, name=name)

    monkeypatch.setattr(open_clip.tokenizer, "HFTokenizer", FakeHFTokenizer)
    cfg = dict(TINY_CFG, text_cfg=dict(TINY_CFG["text_cfg"], hf_tokenizer_name="someone/tok",
                                       tokenizer_kwargs={"trust_remote_code": True, "use_fast": True}))
    superclip.get_tokenizer(cfg)
    assert seen == {"name": "someone/tok", "use_fast": True}
    superclip.get_tokenizer(cfg, trust_remote_code=True)  # only the caller's own argument turns it on
    assert seen["trust_remote_code"] is True


def test_an_unwritable_log_folder_is_one_clear_error(tmp_path):
    """Checked before any training: a path through a file, and a read-only file system (/proc, read-only even
    for root)."""
    (tmp_path / "file").write_text("x")
    for logs in (tmp_path / "file" / "logs", "/proc/superclip-logs"):
        with pytest.raises(ConfigError, match="cannot write to the run folder"):
            Trainer(_cfg(tmp_path, logs=str(logs)))
