"""torchrun --max-restarts: a rank SIGKILLed mid-run, both restarted, the run resumed from the newest checkpoint and
ending equal to an uninterrupted run (a file of its own so that `make test`'s two workers can run it beside the
other fault tests)."""
import os
import signal
import subprocess
import sys
from pathlib import Path

from .test_faults import ENV, STEPS, _args, _assert_same_final_state, _final_state, _metric_steps, _wait_for


def _descendants(pid):
    """PIDs of the processes below ``pid``, with their environment's RANK (from /proc)."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    out, todo = {}, [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            todo.append(child)
            try:
                env = dict(e.split("=", 1) for e in (Path(f"/proc/{child}/environ").read_bytes().decode(
                    errors="replace").split("\0")) if "=" in e)
            except OSError:
                continue
            if "RANK" in env and "LOCAL_RANK" in env:
                out[child] = int(env["RANK"])
    return out


def _torchrun(tmp_path, name, log, *extra):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *extra,
           "-m", "superclip", "--", *_args(tmp_path, name, "--batch-size", "4", "--resume", "latest")]
    return subprocess.Popen(cmd, env=ENV, stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).parent.parent)


def test_torchrun_restart_after_a_killed_rank_continues_exactly(tmp_path):
    """2 processes under torchrun --max-restarts 1; rank 1 is SIGKILLed after 8 steps: torchrun restarts both,
    they resume the newest checkpoint (restarts imply --resume latest) and end equal to an uninterrupted run."""
    log = open(tmp_path / "torchrun.log", "w")
    assert _torchrun(tmp_path, "straight2", log).wait(timeout=600) == 0
    straight = _final_state(tmp_path / "logs" / "straight2")
    run = tmp_path / "logs" / "restarted"
    proc = _torchrun(tmp_path, "restarted", log, "--max-restarts", "1")
    _wait_for(proc, lambda: len(_metric_steps(run)) >= 8)
    ranks = _descendants(proc.pid)
    victim = next(pid for pid, rank in ranks.items() if rank == 1)
    os.kill(victim, signal.SIGKILL)
    assert proc.wait(timeout=600) == 0, (tmp_path / "torchrun.log").read_text()[-3000:]
    assert "restart" in (tmp_path / "torchrun.log").read_text().lower()
    _assert_same_final_state(_final_state(run), straight)
    assert _metric_steps(run) == list(range(1, STEPS + 1))
