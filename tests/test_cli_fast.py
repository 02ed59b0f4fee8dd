"""The command line answers without the heavy libraries (issue 29): help, usage errors and what the command line alone
reveals are checked before torch, open_clip or numpy is imported, in a fresh process each, through sys.modules (no
timing is asserted: bench/startup.py measures it). And open_clip imported for a model that needs neither
transformers nor timm comes up without them, while they stay importable."""
import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "open_clip", "numpy", "transformers", "timm", "matplotlib")
PROBE = """
import json, sys
from superclip.cli import main
try:
    rc = main(json.loads(sys.argv[1]))
except SystemExit as e:
    rc = e.code
print(json.dumps([rc, sorted(m for m in json.loads(sys.argv[2]) if m in sys.modules)]))
"""


def _run(argv, cwd):
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argv), json.dumps(HEAVY)], capture_output=True,
                          text=True, cwd=cwd, timeout=120)
    rc, heavy = json.loads(proc.stdout.strip().splitlines()[-1])
    return rc, heavy, proc.stderr


@pytest.mark.parametrize("argv, rc, says", [
    (["--help"], 0, ""),
    (["train", "--help"], 0, ""),
    (["eval", "--help"], 0, ""),
    (["index", "build", "--help"], 0, ""),
    (["serve", "--help"], 0, ""),
    (["models"], 0, ""),
    (["train", "--no-such-flag"], 2, "unrecognized arguments: --no-such-flag"),
    (["train", "--batch-size", "many"], 2, "invalid int value: 'many'"),
    (["train", "--lr", "-1"], 2, "--lr"),
    (["train", "--train-data", "no/such.csv"], 2, "CSV file not found: no/such.csv"),
    (["train", "--train-data", "no/{0..3}.tar", "--train-num-samples", "8"], 2, "no shard file matches"),
    (["train", "--model", "NoSuchModel"], 2, "unknown model 'NoSuchModel'"),
    (["train", "--model", "no/such.json"], 2, "model config file not found: no/such.json"),
    (["demo", "--samples", "1"], 2, "--samples 1 is less than one batch of 32"),
    (["data", "synth", "--out", "synth", "--image-size", "0"], 2, "--image-size must be >= 1, got 0"),
])
def test_the_command_line_answers_without_importing_torch(tmp_path, argv, rc, says):
    got, heavy, err = _run(argv, tmp_path)
    assert (got, heavy) == (rc, []), err
    assert says in err and (rc == 0 or len(err.strip().splitlines()) == 1), err


def test_a_csv_mistake_is_found_before_torch(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "train.csv").write_text("filepath,title\na.png,a red square\n")
    got, heavy, err = _run(["train", "--train-data", "train.csv", "--csv-caption-key", "caption"], tmp_path)
    assert (got, heavy) == (2, [])
    assert "train.csv: no column 'caption' (--csv-caption-key); columns are ['filepath', 'title']" in err


NO_INDEX = "no/idx holds no index (no manifest.json): build one with superclip index build"


@pytest.mark.parametrize("argv, says", [
    (["eval", "--pretrained", "m.pt", "--zeroshot-data", "no/such"], "folder not found: no/such"),
    (["eval", "--pretrained", "m.pt", "--imagenet-val", "no/such"], "folder not found: no/such"),
    (["eval", "--pretrained", "m.pt", "--zeroshot-data", "img", "--templates", "no.txt"],
     "templates file not found: no.txt"),
    (["eval", "--pretrained", "m.pt", "--zeroshot-data", "img", "--classnames", "no.txt"],
     "class names file not found: no.txt"),
    (["eval", "--pretrained", "m.pt", "--retrieval-data", "no.csv"], "retrieval file not found: no.csv"),
    (["eval", "--pretrained", "m.pt", "--linear-probe-train", "img", "--linear-probe-test", "no/b"],
     "folder not found: no/b"),
    (["eval", "--pretrained", "m.pt", "--compositional", "no/set"], "compositional set not found: no/set"),
    (["eval", "--pretrained", "m.pt", "--segmentation-probe-train", "img", "--segmentation-probe-test", "img"],
     "img: expected the folders images/ and annotations/ (images/NAME.jpg, annotations/NAME.png)"),
    (["eval", "--pretrained", "no.pt", "--zeroshot-data", "img"], "checkpoint file not found: no.pt"),
    (["eval", "--model", "SuperCLIP-Tiny", "--pretrained", "no/such.pt", "--zeroshot-data", "img"],
     "checkpoint file not found: no/such.pt"),
    (["eval", "--pretrained", "local-dir:no/folder", "--zeroshot-data", "img"],
     "local-dir:no/folder: not a model folder (no open_clip_config.json in no/folder)"),
    (["eval", "--model", "NoSuchModel", "--zeroshot-data", "img"], "unknown model 'NoSuchModel'"),
    (["eval", "--model", "bad.json", "--zeroshot-data", "img"], "model config: model.embed_dim must be an integer >= 1, got 0"),
    (["eval", "--zeroshot-data", "img"], "name a model (--model) and/or a checkpoint (--pretrained)"),
    (["embed", "--pretrained", "m.pt", "a.png", "no.png", "--out", "e"], "image not found: no.png"),
    (["embed", "--pretrained", "m.pt", "--texts", "no.txt", "--out", "e"], "texts file not found: no.txt"),
    (["embed", "--pretrained", "no.pt", "a.png", "--out", "e"], "checkpoint file not found: no.pt"),
    (["embed", "--model", "NoSuchModel", "a.png", "--out", "e"], "unknown model 'NoSuchModel'"),
    (["tag", "--pretrained", "m.pt", "no.png"], "image not found: no.png"),
    (["tag", "--pretrained", "no.pt", "a.png"], "checkpoint file not found: no.pt"),
    (["classify", "--pretrained", "m.pt", "no.png", "--labels", "a,b"], "image not found: no.png"),
    (["index", "build", "no/such", "--pretrained", "m.pt", "--out", "idx"], "source not found: "),
    (["index", "build", "no.csv", "--pretrained", "m.pt", "--out", "idx"], "CSV file not found: "),
    (["index", "build", "img", "--pretrained", "no.pt", "--out", "idx"], "checkpoint file not found: no.pt"),
    (["index", "build", "img", "--model", "NoSuchModel", "--random-weights", "0", "--out", "idx"],
     "unknown model 'NoSuchModel'"),
    (["index", "build", "img", "--model", "SuperCLIP-Tiny", "--out", "idx"], "add --random-weights SEED"),
    (["index", "build", "img", "--pretrained", "m.pt", "--out", "img"], "img is not empty and holds no index"),
    (["index", "add", "no/idx", "img"], NO_INDEX),
    (["index", "remove", "no/idx", "3"], NO_INDEX),
    (["index", "restore", "no/idx", "3"], NO_INDEX),
    (["index", "excluded", "no/idx"], NO_INDEX),
    (["index", "stats", "no/idx"], NO_INDEX),
    (["index", "optimize", "no/idx"], NO_INDEX),
    (["index", "relink", "no/idx", "--pretrained", "m.pt"], NO_INDEX),
    (["index", "relink", "no/idx", "--pretrained", "no.pt"], "--pretrained: no.pt not found"),
    (["index", "reembed", "no/idx", "--pretrained", "m.pt"], NO_INDEX),
    (["serve", "no/idx"], NO_INDEX),
    (["export", "no.pt", "out"], "checkpoint file not found: no.pt"),
    (["export", "m.pt", "a.png"], "a.png exists and is not a folder: name a folder to export into"),
    (["export", "m.pt", "img"], "img is not empty (red): export into a new or empty folder, or add --overwrite"),
    (["flops", "NoSuchModel"], "unknown model 'NoSuchModel'"),
    (["data", "icons", "--tarball", "no.tgz", "--out", "icons"], "--tarball no.tgz: file not found"),
])
def test_what_the_command_line_reveals_is_said_before_torch(tmp_path, argv, says):
    """A missing file, folder or checkpoint, an unknown or malformed model: one line, exit 2, nothing heavy imported
    (the same words the library says once loaded: the commands check again). ``m.pt`` exists but is no checkpoint:
    each line's first mistake is the one named."""
    (tmp_path / "img" / "red").mkdir(parents=True)
    for name in ("a.png", "m.pt", "img/red/0.png"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "bad.json").write_text(json.dumps({"embed_dim": 0, "vision_cfg": {}, "text_cfg": {}}))
    got, heavy, err = _run(argv, tmp_path)
    assert (got, heavy) == (2, []), err
    assert len(err.strip().splitlines()) == 1 and says in err, err
    assert err.startswith(f"superclip {argv[0]}: error: "), err
    assert not (tmp_path / "idx").exists()  # a refused build leaves no folder behind


LEAN = """
import json, sys
from superclip.lean_import import import_open_clip_for
import_open_clip_for(json.loads(sys.argv[1]))
imported = sorted(m for m in ("open_clip", "transformers", "timm") if m in sys.modules)
import superclip
model = superclip.build_model(json.loads(sys.argv[1]))
from superclip.errors import ConfigError
try:
    superclip.build_model({**json.loads(sys.argv[1]), "text_cfg": {"hf_model_name": "roberta-base"}})
    refused = ""
except ConfigError as e:
    refused = str(e)
import transformers  # still importable for everything else (the transformers export)
print(json.dumps([imported, sum(p.numel() for p in model.parameters()), refused]))
"""


def test_open_clip_comes_up_without_the_libraries_the_model_does_not_use(tiny_cfg):
    proc = subprocess.run([sys.executable, "-c", LEAN, json.dumps(tiny_cfg)], capture_output=True, text=True,
                          timeout=300)
    imported, params, refused = json.loads(proc.stdout.strip().splitlines()[-1])
    assert imported == ["open_clip"], proc.stderr
    import superclip

    assert params == sum(p.numel() for p in superclip.build_model(tiny_cfg).parameters())
    assert refused.startswith("this process imported open_clip without transformers for another model")


def test_open_clip_keeps_transformers_for_a_model_that_uses_it(tiny_cfg):
    cfg = {**tiny_cfg, "text_cfg": {"hf_model_name": "roberta-base"}}
    code = ("import json, sys\nfrom superclip.lean_import import import_open_clip_for\n"
            "import_open_clip_for(json.loads(sys.argv[1]))\nimport open_clip.hf_model as h\n"
            "print(h.transformers is not None and 'transformers' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(cfg)], capture_output=True, text=True, timeout=300)
    assert proc.stdout.strip().splitlines()[-1] == "True", proc.stderr


EACH = """
import json, sys
from superclip.cli import main
out = []
for argv in json.loads(sys.argv[1]):  # one process: each command finds open_clip as the first one imported it
    out.append([main(argv), sorted(m for m in json.loads(sys.argv[2]) if m in sys.modules)])
print(json.dumps(out))
"""


def test_commands_import_open_clip_without_the_libraries_their_model_does_not_use(tmp_path, tiny_cfg):
    """embed, eval and index build on a model of open_clip's own towers: open_clip comes up without transformers and
    timm (superclip.lean_import; the two later commands run with it as embed imported it), and the result is the
    one of the full import (embed's rows equal)."""
    import numpy as np
    from PIL import Image

    import superclip

    superclip.save_checkpoint(tmp_path / "m.pt", superclip.create_model(tiny_cfg))
    for i, colour in enumerate(((200, 0, 0), (0, 0, 200))):
        (tmp_path / "img" / str(i)).mkdir(parents=True)
        Image.new("RGB", (40, 40), colour).save(tmp_path / "img" / str(i) / "a.png")
    model = ["--pretrained", "m.pt", "--device", "cpu", "--no-progress"]
    commands = [["embed", *model, "img/0/a.png", "img/1/a.png", "--out", "lean"],
                ["eval", *model, "--zeroshot-data", "img"],
                ["index", "build", "img", *model, "--out", "idx", "--workers", "0", "--thumb-size", "0"]]
    proc = subprocess.run([sys.executable, "-c", EACH, json.dumps(commands), json.dumps(["open_clip", *HEAVY[3:5]])],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [[0, ["open_clip"]]] * 3, proc.stderr
    from superclip.cli import main

    assert main(["embed", "--pretrained", str(tmp_path / "m.pt"), "--device", "cpu", "--no-progress", str(tmp_path / "img/0/a.png"),
                 str(tmp_path / "img/1/a.png"), "--out", str(tmp_path / "full")]) == 0
    assert np.array_equal(np.load(tmp_path / "lean.npy"), np.load(tmp_path / "full.npy"))
