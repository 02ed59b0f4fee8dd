"""One device check for every command (superclip.devices.resolve_device): a device this machine lacks, or a string
that names none, is one line with exit code 2 in train, eval, embed, classify, tag, index build and serve."""
import json

import pytest
import torch

from superclip.devices import resolve_device
from superclip.errors import ConfigError

from .bad_inputs import png
from .conftest import TINY_CFG, run_cli


def test_device_flag_resolves_to_this_process_gpu(monkeypatch):
    """``--device cuda`` (as --help spells it) means this process's GPU, cuda:LOCAL_RANK."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda", 0)
    assert resolve_device(None, 0) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert resolve_device("cuda", 2) == torch.device("cuda", 2)
    assert resolve_device(None, 3) == torch.device("cuda", 3)
    assert resolve_device("cuda:1", 3) == torch.device("cuda", 1)
    assert resolve_device(" CUDA:1 ", 3) == torch.device("cuda", 1)
    assert resolve_device("cpu", 3) == torch.device("cpu")
    with pytest.raises(ConfigError, match=r"--device cuda:5: this machine has 4 GPUs \(cuda:0..cuda:3\)"):
        resolve_device("cuda:5", 0)
    with pytest.raises(ConfigError, match="local rank 4"):
        resolve_device("cuda", 4)
    with pytest.raises(ConfigError, match="unknown device"):
        resolve_device("gpu0", 0)


@pytest.mark.parametrize("spec,message", [
    ("gpu", "--device gpu: unknown device (expected cpu, cuda, cuda:N, mps or xpu[:N])"),
    ("cuda:-1", "--device cuda:-1: unknown device"),
    ("meta", "--device meta: superclip runs on cpu, cuda, cuda:N, mps or xpu[:N], not on 'meta' devices"),
    ("hip", "not on 'hip' devices"),
    ("mps", "--device mps: MPS (Apple GPU) is not available on this machine"),
    ("xpu", "--device xpu: XPU is not available on this machine"),
])
def test_a_device_string_torch_cannot_use_here_is_named(monkeypatch, spec, message):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(torch.xpu, "is_available", lambda: False)
    with pytest.raises(ConfigError) as e:
        resolve_device(spec, 0)
    assert message in str(e.value)


@pytest.fixture(scope="module")
def files(module_tmp):
    import superclip

    root = module_tmp("devices")
    superclip.save_checkpoint(root / "tiny.pt", superclip.build_model(TINY_CFG))
    (root / "tiny.json").write_text(json.dumps(TINY_CFG))
    for c in ("red", "blue"):
        (root / "zs" / c).mkdir(parents=True)
        (root / "zs" / c / "0.png").write_bytes(png((200, 30, 30) if c == "red" else (30, 30, 200)))
    return root


def _argv(cmd, root, device):
    model = ["--pretrained", str(root / "tiny.pt"), "--device", device]
    image = str(root / "zs" / "red" / "0.png")
    return {
        "eval": ["eval", *model, "--zeroshot-data", str(root / "zs"), "--no-progress"],
        "embed": ["embed", *model, image, "--out", str(root / "e")],
        "classify": ["classify", *model, image, "--labels", "red,blue"],
        "tag": ["tag", *model, image],
        "index build": ["index", "build", str(root / "zs"), "--out", str(root / "idx"), *model, "--no-progress"],
        "serve": ["serve", str(root / "idx"), "--device", device],
        "train": ["train", "--model", str(root / "tiny.json"), "--dataset-type", "synthetic", "--train-num-samples",
                  "16", "--batch-size", "8", "--logs", str(root / "logs"), "--no-progress", "--device", device],
    }[cmd]


COMMANDS = ["eval", "embed", "classify", "tag", "index build", "serve", "train"]


@pytest.mark.parametrize("cmd", COMMANDS)
@pytest.mark.parametrize("device,message", [("cuda", "--device cuda: CUDA is not available on this machine"),
                                            ("cuda:7", "--device cuda:7: CUDA is not available"),
                                            ("gpu", "--device gpu: unknown device"),
                                            ("mps", "--device mps: MPS (Apple GPU) is not available")])
def test_every_command_says_in_one_line_that_the_device_is_not_here(files, monkeypatch, capsys, cmd, device,
                                                                     message):
    """On main: a traceback in eval, embed, classify, tag and serve (``Found no NVIDIA driver``, ``PyTorch is not
    linked with support for mps devices``), a traceback in train and index build for mps, and index build left
    the --out folder behind."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answer on a machine with a GPU
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    rc, out, err = run_cli(_argv(cmd, files, device), capsys)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and message in lines[0], err
    assert not (files / "idx").exists() and not (files / "e.npy").exists()
    assert not (files / "logs").exists() or not any((files / "logs").iterdir())  # no run folder either


def test_cpu_spelled_in_capitals_runs(files, capsys):
    rc, out, err = run_cli(["classify", "--pretrained", str(files / "tiny.pt"), "--device", "CPU",
                            str(files / "zs" / "red" / "0.png"), "--labels", "red,blue"], capsys)
    assert rc == 0 and out.count("red: ") == 1, err
