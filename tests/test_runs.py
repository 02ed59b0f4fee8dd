"""Runs and their folders (issue 21): the run lock, the resume rule (a resume applies the new command line's
settings and names each change), and a resume that has nothing left to train."""
import json
import math
import re

import pytest
import torch

from superclip.errors import ConfigError
from superclip.train.run_folder import RunLock, read_metrics
from superclip.train.trainer import Trainer

from .conftest import run_cli as _main
from .test_train import _cfg


def _train_argv(tmp_path, name, *extra):
    return ["train", "--model", str(tmp_path / "tiny.json"), "--dataset-type", "synthetic", "--train-num-samples",
            "96", "--batch-size", "8", "--epochs", "2", "--warmup", "2", "--logs", str(tmp_path / "logs"), "--name",
            name, "--no-progress", "--log-every-n-steps", "1", "--save-every-n-steps", "3", *extra]


def _diverges_above(monkeypatch, lr: float, from_step: int) -> None:
    """Training diverges, on every machine alike, from step ``from_step`` on whenever the step's lr is above
    ``lr``: the batch's images are NaN there, so the loss is. (At --lr 10 a real run diverged at steps 5-7 on one
    CPU and trained to the end on another: when a float overflows is the machine's arithmetic.)"""
    import superclip.train.trainer as trainer_module

    real, calls = trainer_module.train_step, [0]

    def step(model, criterion, optimizer, images, *rest, **kwargs):
        calls[0] += 1
        if calls[0] >= from_step and optimizer.param_groups[0]["lr"] > lr:
            images = torch.full_like(images, float("nan"))
        return real(model, criterion, optimizer, images, *rest, **kwargs)

    monkeypatch.setattr(trainer_module, "train_step", step)


@pytest.mark.arithmetic
def test_guard_stop_at_a_too_high_lr_then_resume_as_it_says_trains_on(tmp_path, capsys, caplog, monkeypatch):
    """--lr 0.05 diverges (made to: above lr 0.01 every step from the 5th is non-finite): steps 5-7 are non-finite
    and the guard stops the run. Its advice (lower --lr, then --resume latest) is followed: the resume names the
    change, trains at the new lr and reaches the end. Before: the checkpoint optimizer's lr came back, the resumed
    run stopped again (exit 2)."""
    _cfg(tmp_path)  # writes tiny.json
    _diverges_above(monkeypatch, lr=0.01, from_step=5)
    rc, _, err = _main(_train_argv(tmp_path, "hot", "--lr", "0.05", "--max-nonfinite-steps", "3"), capsys)
    stopped = re.search(r"3 steps in a row \(to step (\d+)\)", err)
    assert rc == 2 and stopped and stopped.group(1) == "7" and "Lower --lr" in err and "--resume latest" in err, err
    run = tmp_path / "logs" / "hot"
    streak = range(int(stopped.group(1)) - 2, int(stopped.group(1)) + 1)
    saved = [json.loads(p.read_text())["step"] for p in (run / "checkpoints").glob("*.pt.json")]
    assert saved and not set(saved) & set(streak)  # none taken during the non-finite steps
    start = max(saved)
    rc, out, err = _main(_train_argv(tmp_path, "hot", "--lr", "1e-3", "--max-nonfinite-steps", "3",
                                     "--resume", "latest"), capsys)
    assert rc == 0, err
    notice = [r.getMessage() for r in caplog.records if "differ from the checkpoint's" in r.getMessage()]
    assert len(notice) == 1 and notice[0].endswith("(the new ones apply): --lr 0.05 -> 0.001"), notice
    assert "trained 24 steps" in out
    logged = [m for m in read_metrics(run / "metrics.jsonl") if "loss" in m]
    assert [m["step"] for m in logged] == list(range(1, 25))  # the steps after the checkpoint logged once
    assert all(m["nonfinite"] == 0 for m in logged[start:])
    cosine = [1e-3 * 0.5 * (1 + math.cos(math.pi * (s - 2) / 22)) for s in range(start + 1, 25)]  # after step s
    for m, lr in zip(logged[start:], cosine, strict=True):
        assert m["lr"] == pytest.approx(lr, rel=1e-9, abs=1e-15), m["step"]
    assert json.loads((run / "config.json").read_text())["lr"] == 1e-3


def test_resume_applies_optimizer_settings_and_keeps_unchanged_ones_exact(tmp_path):
    Trainer(_cfg(tmp_path, name="a", max_steps=3)).fit()
    t = Trainer(_cfg(tmp_path, name="a", resume="latest", wd=0.05, beta2=0.95, eps=1e-8, lr=2e-3))
    decay, no_decay = t.optimizer.param_groups
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.05, 0.0)
    assert decay["betas"] == (0.9, 0.95) and decay["eps"] == 1e-8
    # the lr of step 4: warmup 2 then cosine over 16 steps, at the new peak
    assert decay["lr"] == pytest.approx(2e-3 * 0.5 * (1 + math.cos(math.pi * 1 / 14)), rel=1e-12)
    assert [c[0] for c in t.checkpoints.changed_settings] == ["max_steps", "lr", "wd", "beta2", "eps"]
    t.close()
    same = Trainer(_cfg(tmp_path, name="a", max_steps=3, resume="latest"))
    assert same.checkpoints.changed_settings == []
    same.close()


def test_resume_with_another_set_of_trained_parameters_is_one_line(tmp_path, capsys):
    """Before: ValueError 'loaded state dict contains a parameter group that doesn't match' (a traceback)."""
    _cfg(tmp_path)
    assert _main(_train_argv(tmp_path, "lock", "--max-steps", "3"), capsys)[0] == 0
    rc, _, err = _main(_train_argv(tmp_path, "lock", "--lock-image", "--resume", "latest"), capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "trained another set of parameters" in err and "--lock-image" in err


def test_resume_of_a_finished_run_says_there_is_nothing_to_train(tmp_path, capsys):
    """Before: 'trained 3 steps; final loss nan'."""
    _cfg(tmp_path)
    assert _main(_train_argv(tmp_path, "done", "--max-steps", "3"), capsys)[0] == 0
    rc, out, err = _main(_train_argv(tmp_path, "done", "--max-steps", "3", "--resume", "latest"), capsys)
    assert rc == 0 and "nan" not in out
    assert "nothing to train" in out and "is at step 3, its end is step 3" in out and "--max-steps 3" in out


def test_a_run_folder_in_use_is_refused_and_freed_when_the_run_ends(tmp_path):
    t = Trainer(_cfg(tmp_path, name="busy", max_steps=1))
    with pytest.raises(ConfigError, match="is in use by another run"):
        Trainer(_cfg(tmp_path, name="busy", max_steps=1))
    t.fit()  # fit lets go of the folder when it ends
    Trainer(_cfg(tmp_path, name="busy", max_steps=2, resume="latest")).fit()
    assert [m["step"] for m in read_metrics(tmp_path / "logs" / "busy" / "metrics.jsonl")] == [1, 2]


def test_a_failed_start_leaves_the_folder_free(tmp_path):
    (tmp_path / "wide.json").write_text(json.dumps({"embed_dim": 32}))
    with pytest.raises(ConfigError):
        Trainer(_cfg(tmp_path, name="f", model=str(tmp_path / "wide.json")))
    Trainer(_cfg(tmp_path, name="f", max_steps=1)).fit()


def test_lock_is_held_against_another_process(tmp_path):
    """The lock of a live process refuses; the file names the holder."""
    import subprocess
    import sys

    folder = tmp_path / "run"
    folder.mkdir()
    code = ("import sys, time; sys.path.insert(0, sys.argv[2]); from superclip.train.run_folder import RunLock; "
            "lock = RunLock(sys.argv[1]); assert lock.acquire() is None; print('held', flush=True); time.sleep(60)")
    import superclip

    src = str(__import__("pathlib").Path(superclip.__file__).parent.parent)
    holder = subprocess.Popen([sys.executable, "-c", code, str(folder), src], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        error = RunLock(folder).acquire()
        assert error is not None and f"pid {holder.pid} on" in error and "another --name" in error
    finally:
        holder.kill()
        holder.wait()
    lock = RunLock(folder)
    assert lock.acquire() is None  # a killed holder's lock is gone
    lock.release()


def test_two_unnamed_runs_at_the_same_second_get_their_own_folders(tmp_path, monkeypatch):
    """Before: both found the same default name free (exists() then mkdir) and shared one folder."""
    from superclip.train import run_folder

    monkeypatch.setattr(run_folder, "default_name", lambda cfg: "same-second")
    names = []
    for _ in range(2):
        cfg = _cfg(tmp_path, name=None)
        run_folder.settle_name(cfg)
        names.append(cfg.name)
    assert names == ["same-second", "same-second-2"]


# --- issue 25: --resume latest without --name, or for a run that has nothing to resume
def test_resume_latest_without_a_name_is_refused(tmp_path, capsys):
    """Without --name every launch makes a new dated folder; on main it trained a new run from step 0, exit 0,
    without a word (and a second launch did the same again)."""
    _cfg(tmp_path)
    argv = _train_argv(tmp_path, "x", "--resume", "latest", "--max-steps", "1")
    del argv[argv.index("--name"):argv.index("--name") + 2]
    rc, out, err = _main(argv, capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "--resume latest needs --name" in err
    assert not (tmp_path / "logs").exists() or not any((tmp_path / "logs").iterdir())


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and r.name.startswith("superclip")]


def test_resume_latest_of_a_mistyped_name_says_so_and_names_the_close_run(tmp_path, capsys, caplog):
    """On main a mistyped --name trained from step 0 without a word."""
    _cfg(tmp_path)
    assert _main(_train_argv(tmp_path, "my-run", "--max-steps", "3"), capsys)[0] == 0
    caplog.clear()
    rc, out, err = _main(_train_argv(tmp_path, "my-rnu", "--max-steps", "1", "--resume", "latest"), capsys)
    assert rc == 0 and _warnings(caplog) == [
        f"--resume latest: there is no run 'my-rnu' in {tmp_path / 'logs'} to continue, a new folder was made (did "
        "you mean --name my-run? it holds checkpoints); training starts at step 0"], err
    assert [m["step"] for m in read_metrics(tmp_path / "logs" / "my-rnu" / "metrics.jsonl")] == [1]


def test_resume_latest_of_a_run_without_checkpoints_says_it_starts_at_step_0(tmp_path, capsys, caplog):
    """The same command on every launch (a job script that may be requeued) starts the run the first time, as in
    open_clip_train, and the start is now said in one line; the next launch resumes without a word."""
    _cfg(tmp_path)
    (tmp_path / "logs" / "fresh").mkdir(parents=True)
    rc, out, err = _main(_train_argv(tmp_path, "fresh", "--max-steps", "1", "--resume", "latest"), capsys)
    assert rc == 0 and _warnings(caplog) == [f"--resume latest: run folder {tmp_path / 'logs' / 'fresh'} holds no "
                                             "checkpoint yet; training starts at step 0"], err
    caplog.clear()
    rc, out, err = _main(_train_argv(tmp_path, "fresh", "--max-steps", "2", "--resume", "latest"), capsys)
    assert rc == 0 and "trained 2 steps" in out, err
    assert not [w for w in _warnings(caplog) if w.startswith("--resume latest")]


def test_a_large_seed_trains(tmp_path, capsys):
    """--seed 2**62 - 1: the data order's generators take seed * 1_000_003 + epoch, which overflowed torch's 64-bit
    seed (from a seed of 9.2e12 up, a timestamp's size); main stopped with 'Overflow when unpacking long long', a
    traceback. Seeds beyond 2**62 are one line (test_bad_inputs)."""
    from superclip.data.loader import ResumableSampler

    assert sorted(ResumableSampler(8, 20261206123456)) == list(range(8))
    _cfg(tmp_path)
    rc, out, err = _main(_train_argv(tmp_path, "big-seed", "--seed", str(2 ** 62 - 1), "--max-steps", "1"), capsys)
    assert rc == 0 and "trained 1 steps" in out, err
