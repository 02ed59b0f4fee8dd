import copy
import os
import shutil
import tempfile

# torch.compile's kernel cache is not keyed by the CPU capability torch runs with: kernels written under
# ATEN_CPU_CAPABILITY=avx512 and run under avx2 gave a NaN loss in test_torchcompile (measured; a fresh cache gave
# the eager losses under every setting). `make test` runs the suite and then its arithmetic-sensitive tests under a
# second setting: one cache per setting. (Set before torch is imported; a cache the user named is kept.)
_SETTING = "-".join(os.environ.get(k, "native") for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA"))
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"torchinductor-superclip-{_SETTING}"))

import pytest  # noqa: E402
import torch  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two pytest workers on CI's two cores: each keeps to one thread (and so do the commands its
    # tests start), or four threads fight over two cores and torch slows down many times over
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

SOT, EOT = 49406, 49407
V = 49408

# A small open_clip ViT + text tower: real vocabulary (V = 49408) and context length, tiny widths.
TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": V, "width": 64, "heads": 2, "layers": 2},
}


@pytest.fixture
def tiny_cfg():
    return copy.deepcopy(TINY_CFG)


@pytest.fixture(scope="module")
def module_tmp(request, tmp_path_factory):
    """``module_tmp(name)``: a folder for runs a module's tests share, removed once the module is done unless one of
    its tests failed (a Tiny checkpoint is 79 MB; kept until the session ends, these filled CI's disk)."""
    made, failed = [], request.session.testsfailed

    def mk(name):
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]

    yield mk
    if request.session.testsfailed == failed:
        for path in made:
            shutil.rmtree(path, ignore_errors=True)


def run_cli(argv, capsys):
    """(exit code, stdout, stderr) of ``superclip ARGV`` run in this process (argparse's own exits included)."""
    from superclip import cli

    try:
        rc = cli.main(argv)
    except SystemExit as e:
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def random_captions(batch: int, generator: torch.Generator, max_words: int = 12, vocab_words: int = 300) -> torch.Tensor:
    """(B, 77) int64 rows as the CLIP tokenizer makes them: SOT, words (repeats possible), EOT, zero padding.

    Words come from a small id range so that document frequencies vary and repeats happen.
    """
    ids = torch.zeros(batch, 77, dtype=torch.long)
    for i in range(batch):
        n = int(torch.randint(1, max_words + 1, (1,), generator=generator))
        words = torch.randint(300, 300 + vocab_words, (n,), generator=generator)
        ids[i, 0] = SOT
        ids[i, 1:n + 1] = words
        ids[i, n + 1] = EOT
    return ids


def assert_text_features_match(ours, reference, ids: torch.Tensor, normalize: bool = False) -> None:
    """Our text features against a reference tower holding the same weights (open_clip's ``encode_text``).

    Run whole (``crop_text = False``) ours is the reference's own computation, the same matrices in the same order,
    so the bits are equal on any machine. Cropped to the batch's last end-of-text column (the default) the
    matrices have another shape, and a CPU's kernels may round differently (AVX-512 against AVX2): the features
    agree to float rounding, the tolerance test_model's crop test holds the crop to.
    """
    with torch.no_grad():
        want = reference(ids)
        crop = ours.crop_text
        try:
            ours.crop_text = False
            assert torch.equal(ours.encode_text(ids, normalize=normalize), want)
            ours.crop_text = True
            torch.testing.assert_close(ours.encode_text(ids, normalize=normalize), want, rtol=1e-5, atol=1e-6)
        finally:
            ours.crop_text = crop


def pytest_sessionfinish(session, exitstatus):
    """With ``SUPERCLIP_NO_SKIPS=1`` (CI, set by .ci/run) a skipped test fails the run: every optional package the
    suite imports with ``importorskip`` (faiss, fastapi, schemathesis, the exporters) is in the test extras, so a skip
    there means an install went wrong, and would otherwise hide the tests behind it."""
    if os.environ.get("SUPERCLIP_NO_SKIPS") != "1":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped:
        for report in skipped:
            reporter.write_line(f"SUPERCLIP_NO_SKIPS=1: skipped {report.nodeid}: {report.longrepr}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
