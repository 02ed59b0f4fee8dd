"""Runs killed (SIGKILL), stopped (SIGTERM) and restarted by torchrun, each resumed with --resume latest: the final
weights equal an uninterrupted run's exactly and metrics.jsonl holds every step once.

Each run is a real ``python -m superclip train`` process. ``SUPERCLIP_TEST_WRITE_DELAY`` (a test-only hook in
``superclip.files``) holds every checkpoint write open for a moment, so that a kill can land inside one.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from .conftest import TINY_CFG

STEPS = 24  # 2 epochs x 12 steps of batch 8; a step checkpoint every 3 steps
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "SUPERCLIP_TEST_WRITE_DELAY": "0.25"}


def _args(tmp_path, name, *extra):
    model = tmp_path / "tiny.json"
    if not model.exists():
        model.write_text(json.dumps(TINY_CFG))
    return ["train", "--model", str(model), "--dataset-type", "synthetic", "--train-num-samples", "96",
            "--batch-size", "8", "--epochs", "2", "--lr", "1e-3", "--warmup", "2", "--logs", str(tmp_path / "logs"),
            "--name", name, "--no-progress", "--log-every-n-steps", "1", "--save-every-n-steps", "3", *extra]


def _start(args, log):
    return subprocess.Popen([sys.executable, "-m", "superclip", *args], env=ENV, stdout=log, stderr=subprocess.STDOUT,
                            cwd=Path(__file__).parent.parent)


def _wait_for(proc, condition, timeout=120.0, poll=0.005):
    """Poll ``condition()`` until true; False if the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if proc.poll() is not None:
            return condition()
        time.sleep(poll)
    raise TimeoutError("condition not reached")


def _metric_steps(run):
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line)["step"])
        except (ValueError, KeyError):
            out.append(None)
    return out


def _final_state(run):
    ckpt = torch.load(run / "checkpoints" / "epoch_latest.pt", weights_only=True)
    assert ckpt["step"] == STEPS
    return ckpt


def _assert_same_final_state(a, b):
    for key in ("model", "loss"):
        assert set(a[key]) == set(b[key])
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), (key, k)
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k
    assert a["scheduler"] == b["scheduler"]


@pytest.fixture(scope="module")
def straight(module_tmp):
    """The uninterrupted run, and the folder the interrupted ones share with it."""
    tmp_path = module_tmp("faults")
    with open(tmp_path / "straight.log", "w") as log:
        assert _start(_args(tmp_path, "straight"), log).wait(timeout=300) == 0
    return tmp_path, _final_state(tmp_path / "logs" / "straight")


def test_sigkill_at_many_moments_then_resume_equals_uninterrupted(straight):
    tmp_path, straight = straight
    run = tmp_path / "logs" / "killed"
    ckpts = run / "checkpoints"

    def n_logged():
        return len([s for s in _metric_steps(run) if s is not None])

    def tmp_of(prefix):
        return lambda: any(p.name.startswith(prefix) and p.name.endswith(".tmp") for p in ckpts.glob("*"))

    def pt_without_json():
        return any(not Path(str(p) + ".json").exists() for p in ckpts.glob("step_*.pt"))

    moments = [
        ("before the first checkpoint", lambda: n_logged() >= 2),
        ("while a step checkpoint is written", tmp_of("step_")),
        ("between a checkpoint and its .json", pt_without_json),
        ("while the epoch checkpoint is written", tmp_of("epoch_1.pt")),
        ("while starting up", lambda: True),
        ("between checkpoints in the second epoch", lambda: n_logged() >= 18),
    ]
    log = open(tmp_path / "killed.log", "w")
    first = True
    for what, condition in moments:
        proc = _start(_args(tmp_path, "killed", *([] if first else ["--resume", "latest"])), log)
        first = False
        if what == "while starting up":
            time.sleep(1.0)
        hit = _wait_for(proc, condition)
        proc.kill()
        proc.wait()
        assert hit, f"the run finished before the kill {what}"
    proc = _start(_args(tmp_path, "killed", "--resume", "latest"), log)
    assert proc.wait(timeout=300) == 0, (tmp_path / "killed.log").read_text()[-3000:]
    _assert_same_final_state(_final_state(run), straight)
    assert _metric_steps(run) == list(range(1, STEPS + 1))
    assert not list(ckpts.glob("*.tmp"))


def _snapshot(folder):
    """Every finished file's identity (inode, size, modification time): quick enough to take mid-write."""
    return {p.name: (p.stat().st_ino, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.glob("*")
            if not p.name.endswith(".tmp")}


def test_sigterm_saves_at_a_step_boundary_and_a_second_signal_exits_at_once(straight):
    tmp_path, straight = straight
    run = tmp_path / "logs" / "stopped"
    log = open(tmp_path / "stopped.log", "w")
    for i, after in enumerate((4, 13, 19)):
        proc = _start(_args(tmp_path, "stopped", *(["--resume", "latest"] if i else [])), log)
        _wait_for(proc, lambda: len(_metric_steps(run)) >= after)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 128 + signal.SIGTERM
        ckpt = torch.load(run / "checkpoints" / "epoch_latest.pt", weights_only=True)
        assert ckpt["step"] == _metric_steps(run)[-1] >= after  # saved at the step it stopped after
    # a second SIGTERM during the save it asked for: exit at once, the checkpoints as they were
    stopped_at = _metric_steps(run)[-1]
    proc = _start(_args(tmp_path, "stopped", "--resume", "latest"), log)
    _wait_for(proc, lambda: _metric_steps(run)[-1] > stopped_at)  # a step trained by this process
    proc.send_signal(signal.SIGTERM)
    assert _wait_for(proc, lambda: any(p.name.endswith(".tmp") for p in (run / "checkpoints").glob("*")))
    before = _snapshot(run / "checkpoints")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert _snapshot(run / "checkpoints") == before
    proc = _start(_args(tmp_path, "stopped", "--resume", "latest"), log)
    assert proc.wait(timeout=300) == 0
    _assert_same_final_state(_final_state(run), straight)
    assert _metric_steps(run) == list(range(1, STEPS + 1))


def test_two_runs_started_at_once_on_one_name_one_trains_the_other_refuses(straight):
    """Two `superclip train` on one --name at the same moment: the run lock lets one in, the other exits 2 with
    one line; the survivor's checkpoints and metrics equal the uninterrupted run's. Before: both exited 0 into
    one folder (metrics steps 1,1,2,2,...; one run's checkpoints replaced the other's)."""
    tmp_path, straight_state = straight
    procs = [subprocess.Popen([sys.executable, "-m", "superclip", *_args(tmp_path, "twins")], env=ENV, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=Path(__file__).parent.parent)
             for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    results = [(p.returncode, out, err) for p, (out, err) in zip(procs, outputs)]
    assert sorted(rc for rc, _, _ in results) == [0, 2], results
    _, _, err = next(r for r in results if r[0] == 2)
    assert len(err.strip().splitlines()) == 1 and "is in use by another superclip train (pid" in err, err
    run, reference = tmp_path / "logs" / "twins", tmp_path / "logs" / "straight"
    _assert_same_final_state(_final_state(run), straight_state)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == \
        sorted(p.name for p in (reference / "checkpoints").iterdir())

    def steps(folder):
        return [{k: v for k, v in m.items() if k != "samples_per_s"}
                for m in map(json.loads, (folder / "metrics.jsonl").read_text().splitlines())]
    assert steps(run) == steps(reference) and len(steps(run)) == STEPS
