"""Every user mistake is one line with exit code 2; every bad sample is skipped and counted (tests/bad_inputs.py)."""
import pytest

from superclip import cli
from superclip.train.run_folder import read_metrics

from .bad_inputs import CASES, SAMPLE_CASES, workspace, write_sample_case


@pytest.fixture(scope="module")
def ws(module_tmp):
    return workspace(module_tmp("bad_inputs"))


def _run(argv, capsys):
    try:
        rc = cli.main(argv)
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("case", CASES, ids=[f"{c.command}: {c.what}" for c in CASES])
def test_user_mistake_is_one_line_and_exit_2(ws, case, capsys):
    rc, err = _run(case.argv(ws), capsys)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert case.expect in lines[0], lines[0]


def test_there_are_at_least_40_distinct_cases():
    assert len({(c.command, c.what) for c in CASES}) + len(SAMPLE_CASES) >= 40


@pytest.mark.parametrize("case", SAMPLE_CASES, ids=[c.what for c in SAMPLE_CASES])
def test_bad_sample_is_skipped_and_counted(tmp_path, case, capsys):
    import json

    from .conftest import TINY_CFG

    (tmp_path / "tiny.json").write_text(json.dumps(TINY_CFG))
    flags = write_sample_case(tmp_path / "data", case)
    rc, err = _run(["train", "--model", str(tmp_path / "tiny.json"), "--logs", str(tmp_path / "logs"), "--name", "r",
                    "--no-progress", "--log-every-n-steps", "1", *flags], capsys)
    assert rc == 0, err
    metrics = read_metrics(tmp_path / "logs" / "r" / "metrics.jsonl")
    skipped = metrics[-1]["skipped_samples"]
    if case.kind == "csv":
        assert skipped == 1 and len(metrics) == 2  # 8 samples, batch 4: every sample read once
    else:
        assert skipped >= 1  # 32 draws from the endless stream, one sample in 8 (or 5) bad
