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
