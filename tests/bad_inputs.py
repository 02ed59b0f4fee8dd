"""User mistakes and corrupt inputs, across the commands: each must end in one line on stderr with exit code 2, or
be a sample that training skips and counts. ``tests/test_bad_inputs.py`` runs them; ``python -m tests.bad_inputs``
prints the table of docs/faults.md (each case with what superclip answered; --write docs/faults.md puts it there)."""
from __future__ import annotations

import io
import json
import struct
import tarfile
import zlib
from pathlib import Path
from typing import Callable, List, NamedTuple

from PIL import Image

from .conftest import TINY_CFG


class Case(NamedTuple):
    command: str
    what: str
    argv: Callable[[Path], List[str]]  # workspace -> argv
    expect: str  # a piece of the one-line message


class SampleCase(NamedTuple):
    what: str
    kind: str  # csv or shard
    make: Callable[[Path], object]  # writes one bad sample into the workspace, returns what the writer needs


def png(colour=(200, 30, 30), size=36) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format="PNG")
    return buf.getvalue()


def bomb_png(width=40000, height=40000) -> bytes:
    """A valid PNG header claiming 1.6 gigapixels: PIL refuses it (DecompressionBombError) before decoding."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def workspace(root: Path) -> Path:
    """Every file the cases use: a tiny model, its checkpoint, images, CSVs, an image folder, YAML files."""
    import superclip

    root.mkdir(parents=True, exist_ok=True)
    (root / "tiny.json").write_text(json.dumps(TINY_CFG))
    other = dict(TINY_CFG, vision_cfg=dict(TINY_CFG["vision_cfg"], width=96, head_width=32))
    (root / "other.json").write_text(json.dumps(other))
    no_width = dict(TINY_CFG, vision_cfg={k: v for k, v in TINY_CFG["vision_cfg"].items() if k != "width"})
    (root / "no_width.json").write_text(json.dumps(no_width))
    (root / "broken.json").write_text('{"embed_dim": 32, "vision_cfg": ')
    model = superclip.build_model(TINY_CFG)
    superclip.save_checkpoint(root / "tiny.pt", model)
    import torch

    torch.save(model.state_dict(), root / "no_config.pt")  # weights without a config
    superclip.save_checkpoint(root / "other.pt", superclip.build_model(other))
    data = (root / "tiny.pt").read_bytes()
    (root / "truncated.pt").write_bytes(data[: len(data) // 2])
    (root / "notes.txt").write_text("not a checkpoint\n")
    (root / "empty.pt").write_bytes(b"")
    for c in ("red", "blue"):
        (root / "zs" / c).mkdir(parents=True, exist_ok=True)
        (root / "zs" / c / "0.png").write_bytes(png((200, 30, 30) if c == "red" else (30, 30, 200)))
    (root / "zs_empty_class" / "red").mkdir(parents=True, exist_ok=True)
    (root / "zs_empty_class" / "green").mkdir(parents=True, exist_ok=True)
    (root / "zs_empty_class" / "red" / "0.png").write_bytes(png())
    (root / "zs_no_classes").mkdir(exist_ok=True)
    (root / "zs_corrupt" / "red").mkdir(parents=True, exist_ok=True)
    (root / "zs_corrupt" / "blue").mkdir(parents=True, exist_ok=True)
    (root / "zs_corrupt" / "red" / "0.png").write_bytes(png())
    (root / "zs_corrupt" / "blue" / "0.png").write_bytes(b"GIF89a truncated")
    (root / "img.png").write_bytes(png())
    (root / "text.jpg").write_text("this is text, not a jpeg")
    (root / "train.csv").write_text("filepath,title\nimg.png,a red square\n")
    (root / "train_missing_images.csv").write_text("filepath\ttitle\n" +
                                                   "".join(f"nope{i}.png\ta red square\n" for i in range(40)))
    (root / "train_empty_captions.csv").write_text("filepath\ttitle\n" + "img.png\t \n" * 8)
    (root / "header_only.csv").write_text("filepath\ttitle\n")
    (root / "empty.csv").write_text("")
    (root / "val_bad_utf8.tsv").write_bytes(b"filepath\ttitle\nimg.png\ta caf\xe9 sign\n")
    (root / "texts_bad_utf8.txt").write_bytes(b"a caf\xe9 sign\n")
    (root / "retrieval.txt").write_text("img.png a red square\n")
    (root / "bad.json").write_text("{not json")
    (root / "templates_no_c.txt").write_text("a photo of a thing.\n")
    (root / "templates_empty.txt").write_text("\n\n")
    (root / "classnames_3.txt").write_text("red\nblue\ngreen\n")
    (root / "unknown_key.yaml").write_text("learning_rate: 0.1\n")
    (root / "list_value.yaml").write_text("lr: [0.1, 0.2]\n")
    (root / "bad_syntax.yaml").write_text("lr: [0.1\n")
    (root / "not_mapping.yaml").write_text("- lr\n- 0.1\n")
    (root / "shards").mkdir(exist_ok=True)
    (root / "a_file").write_text("x")
    compositional_files(root)
    segmentation_files(root)
    icon_files(root)
    return root


def icon_files(root: Path) -> None:
    """The IconifyJSON fixture packed as an npm tarball (icons.tgz) and its sha256 (icons.sha256)."""
    from .iconify_fixture import pack

    _, sha = pack(root / "icons.tgz")
    (root / "icons.sha256").write_text(sha)


def _icons(ws: Path, out: str, *extra: str, checked: bool = True) -> List[str]:
    sha = ["--sha256", (ws / "icons.sha256").read_text()] if checked else []
    return ["data", "icons", "--out", str(ws / out), "--tarball", str(ws / "icons.tgz"), *sha, "--no-progress", *extra]


def segmentation_files(root: Path) -> None:
    """images/ + annotations/ folders: one good, the others with one mistake each."""
    import numpy as np

    def folder(name, mask_size=(36, 36), value=1, with_mask=True):
        (root / name / "images").mkdir(parents=True, exist_ok=True)
        (root / name / "annotations").mkdir(parents=True, exist_ok=True)
        (root / name / "images" / "a.png").write_bytes(png())
        if with_mask:
            mask = np.zeros(mask_size[::-1], dtype=np.uint8)
            mask[:5] = value
            mask[-3:] = 255
            Image.fromarray(mask, mode="L").save(root / name / "annotations" / "a.png")
    folder("seg_ok")
    folder("seg_size", mask_size=(36, 30))
    folder("seg_value", value=9)
    folder("seg_no_mask", with_mask=False)


def compositional_files(root: Path) -> None:
    """SugarCrepe folders and JSONL sets with one mistake each (the images are workspace files)."""
    item = {"filename": "img.png", "caption": "a red square", "negative_caption": "a blue square"}
    same = dict(item, negative_caption="a Red  square")
    for name, files in {"sc_missing_image": {"replace_att": {"7": dict(item, filename="nope.png")}},
                        "sc_empty_type": {"replace_att": {"1": item}, "swap_att": {}},
                        "sc_same_caption": {"replace_att": {"1": item, "2": same}}}.items():
        (root / name).mkdir(exist_ok=True)
        for kind, data in files.items():
            (root / name / f"{kind}.json").write_text(json.dumps(data))
    (root / "comp_missing_image.jsonl").write_text(json.dumps(
        {"image": "gone.png", "positive": "a red square", "negatives": ["a blue square"], "type": "x"}) + "\n")
    (root / "comp_same_caption.jsonl").write_text(json.dumps(
        {"image": "img.png", "positive": "a red square", "negatives": ["a blue square", "a red square"]}) + "\n")


def _train(ws: Path, *extra: str) -> List[str]:
    return ["train", "--model", str(ws / "tiny.json"), "--dataset-type", "synthetic", "--train-num-samples", "16",
            "--batch-size", "8", "--logs", str(ws / "logs"), "--no-progress", *extra]


def _csv_train(ws: Path, csv: str, *extra: str) -> List[str]:
    return ["train", "--model", str(ws / "tiny.json"), "--train-data", str(ws / csv), "--batch-size", "2",
            "--logs", str(ws / "logs"), "--no-progress", *extra]


def _eval(ws: Path, *extra: str) -> List[str]:
    return ["eval", "--pretrained", str(ws / "tiny.pt"), "--no-progress", *extra]


CASES: List[Case] = [
    # --- train: values
    Case("train", "--batch-size 0", lambda ws: _train(ws, "--batch-size", "0"), "--batch-size must be >= 1"),
    Case("train", "negative --batch-size", lambda ws: _train(ws, "--batch-size", "-4"), "--batch-size must be >= 1"),
    Case("train", "--log-every-n-steps 0", lambda ws: _train(ws, "--log-every-n-steps", "0"),
         "--log-every-n-steps must be >= 1"),
    Case("train", "--max-steps -1", lambda ws: _train(ws, "--max-steps", "-1"), "--max-steps must be >= 1"),
    Case("train", "--epochs 0", lambda ws: _train(ws, "--epochs", "0"), "--epochs must be >= 1"),
    Case("train", "--lr 0", lambda ws: _train(ws, "--lr", "0"), "--lr must be > 0"),
    Case("train", "--accum-freq 0", lambda ws: _train(ws, "--accum-freq", "0"), "--accum-freq must be >= 1"),
    Case("train", "--workers -1", lambda ws: _train(ws, "--workers", "-1"), "--workers must be >= 0"),
    Case("train", "--beta2 1", lambda ws: _train(ws, "--beta2", "1"), "--beta2 must be in [0, 1)"),
    Case("train", "--precision fp8", lambda ws: _train(ws, "--precision", "fp8"), "--precision must be one of"),
    Case("train", "--force-patch-dropout 1.5", lambda ws: _train(ws, "--force-patch-dropout", "1.5"),
         "--force-patch-dropout must be in [0, 1)"),
    Case("train", "--csv-separator of two characters", lambda ws: _train(ws, "--csv-separator", ";;"),
         "--csv-separator must be one character"),
    Case("train", "--batch-size not a number", lambda ws: _train(ws, "--batch-size", "eight"),
         "invalid int value"),
    Case("train", "unknown flag", lambda ws: _train(ws, "--learning-rate", "0.1"), "unrecognized arguments"),
    Case("train", "--report-to mlflow", lambda ws: _train(ws, "--report-to", "mlflow"), "unknown backend 'mlflow'"),
    Case("train", "epoch shorter than one batch", lambda ws: _train(ws, "--train-num-samples", "4"),
         "shorter than one step's batch"),
    Case("train", "--global-batch-size below --accum-freq", lambda ws: _train(
        ws, "--batch-size", "0", "--global-batch-size", "2", "--accum-freq", "4"), "is smaller than"),
    # --- train: config files and models
    Case("train", "YAML with an unknown key", lambda ws: _train(ws, "--config", str(ws / "unknown_key.yaml")),
         "unknown key 'learning_rate'"),
    Case("train", "YAML value of the wrong shape (lr: [0.1, 0.2])",
         lambda ws: _train(ws, "--config", str(ws / "list_value.yaml")), "expected one float value"),
    Case("train", "YAML that does not parse", lambda ws: _train(ws, "--config", str(ws / "bad_syntax.yaml")),
         "is not valid YAML"),
    Case("train", "YAML that is a list", lambda ws: _train(ws, "--config", str(ws / "not_mapping.yaml")),
         "must be a mapping"),
    Case("train", "missing YAML file", lambda ws: _train(ws, "--config", str(ws / "none.yaml")),
         "config file not found"),
    Case("train", "unknown model name", lambda ws: _train(ws, "--model", "ViT-Q-99"), "unknown model 'ViT-Q-99'"),
    Case("train", "model JSON without vision_cfg.width", lambda ws: _train(ws, "--model", str(ws / "no_width.json")),
         "vision_cfg lacks 'width'"),
    Case("train", "model JSON that does not parse", lambda ws: _train(ws, "--model", str(ws / "broken.json")),
         "is not valid JSON"),
    # --- train: data
    Case("train", "missing CSV file", lambda ws: _csv_train(ws, "none.csv"), "CSV file not found"),
    Case("train", "CSV without the caption column", lambda ws: _csv_train(ws, "train.csv", "--csv-caption-key",
                                                                           "caption"), "no column 'caption'"),
    Case("train", "separator mismatch (--csv-separator tab on a comma file)",
         lambda ws: _csv_train(ws, "train.csv", "--csv-separator", "\t"), "no column 'filepath'"),
    Case("train", "empty CSV file", lambda ws: _csv_train(ws, "empty.csv"), "is empty"),
    Case("train", "CSV with a header and no rows", lambda ws: _csv_train(ws, "header_only.csv"), "has no rows"),
    Case("train", "CSV whose image paths all fail", lambda ws: _csv_train(ws, "train_missing_images.csv"),
         "none of 32 image paths looked at exists"),
    Case("train", "CSV whose captions are all empty", lambda ws: _csv_train(ws, "train_empty_captions.csv"),
         "every caption"),
    Case("train", "shard pattern that matches nothing", lambda ws: _train(
        ws, "--train-data", str(ws / "shards" / "{000..009}.tar"), "--dataset-type", "webdataset"),
        "no shard file matches"),
    Case("train", "shards without --train-num-samples", lambda ws: ["train", "--train-data", str(
        ws / "shards" / "x.tar"), "--logs", str(ws / "logs")], "--train-num-samples is required"),
    Case("train", "--val-data file missing", lambda ws: _train(ws, "--val-data", str(ws / "none.tsv")),
         "--val-data file not found"),
    Case("train", "--imagenet-val folder missing", lambda ws: _train(ws, "--imagenet-val", str(ws / "none")),
         "folder not found"),
    # --- train: checkpoints and run folders
    Case("train", "--resume file missing", lambda ws: _train(ws, "--resume", str(ws / "none.pt")),
         "--resume checkpoint not found"),
    Case("train", "--resume a text file", lambda ws: _train(ws, "--resume", str(ws / "notes.txt")),
         "not a complete torch checkpoint"),
    Case("train", "--resume a truncated checkpoint", lambda ws: _train(ws, "--resume", str(ws / "truncated.pt")),
         "not a complete torch checkpoint"),
    Case("train", "--resume a checkpoint of weights only", lambda ws: _train(ws, "--resume", str(ws / "tiny.pt")),
         "not a superclip training checkpoint"),
    Case("train", "--pretrained of another model", lambda ws: _train(ws, "--pretrained", str(ws / "other.pt")),
         "does not fit the model config"),
    Case("train", "read-only --logs (/proc)", lambda ws: _train(ws, "--logs", "/proc/superclip-logs"),
         "cannot write to the run folder"),
    Case("train", "--logs through a file", lambda ws: _train(ws, "--logs", str(ws / "a_file" / "logs")),
         "cannot write to the run folder"),
    Case("train", "an open_clip_train flag superclip does not take", lambda ws: _train(ws, "--horovod"),
         "--horovod is not supported: launch with torchrun"),
    Case("train", "--lock-image-unlocked-groups without --lock-image",
         lambda ws: _train(ws, "--lock-image-unlocked-groups", "1"), "only apply with --lock-image"),
    Case("train", "--pretrained-image on open_clip's ViT tower", lambda ws: _train(ws, "--pretrained-image"),
         "for timm image towers"),
    Case("train", "--lr-scheduler const-cooldown without --epochs-cooldown",
         lambda ws: _train(ws, "--lr-scheduler", "const-cooldown"), "needs --epochs-cooldown"),
    Case("train", "--opt sgd", lambda ws: _train(ws, "--opt", "sgd"), "AdamW only"),
    Case("train", "a malformed hf-hub: name", lambda ws: _train(ws, "--pretrained", "hf-hub:just-a-name"),
         "is not a hub name"),
    # --- eval
    Case("eval", "nothing to evaluate", lambda ws: _eval(ws), "nothing to evaluate"),
    Case("eval", "--batch-size 0", lambda ws: _eval(ws, "--batch-size", "0", "--zeroshot-data", str(ws / "zs")),
         "must be >= 1"),
    Case("eval", "missing --zeroshot-data folder", lambda ws: _eval(ws, "--zeroshot-data", str(ws / "none")),
         "folder not found"),
    Case("eval", "an empty class folder", lambda ws: _eval(ws, "--zeroshot-data", str(ws / "zs_empty_class")),
         "class folder 'green' holds no images"),
    Case("eval", "a folder without class folders", lambda ws: _eval(ws, "--zeroshot-data", str(ws / "zs_no_classes")),
         "holds no class folders"),
    Case("eval", "a corrupt image in the zero-shot folder", lambda ws: _eval(ws, "--zeroshot-data",
                                                                            str(ws / "zs_corrupt")),
         "cannot read image"),
    Case("eval", "templates without {c}", lambda ws: _eval(ws, "--zeroshot-data", str(ws / "zs"), "--templates",
                                                           str(ws / "templates_no_c.txt")), "has no {c}"),
    Case("eval", "an empty templates file", lambda ws: _eval(ws, "--zeroshot-data", str(ws / "zs"), "--templates",
                                                             str(ws / "templates_empty.txt")), "is empty"),
    Case("eval", "3 class names for 2 class folders", lambda ws: _eval(
        ws, "--zeroshot-data", str(ws / "zs"), "--classnames", str(ws / "classnames_3.txt")),
        "3 class names for 2 class folders"),
    Case("eval", "retrieval file of unknown format", lambda ws: _eval(ws, "--retrieval-data",
                                                                      str(ws / "retrieval.txt")),
         "unknown retrieval file format"),
    Case("eval", "retrieval JSON that does not parse", lambda ws: _eval(ws, "--retrieval-data", str(ws / "bad.json")),
         "is not valid JSON"),
    Case("eval", "a non-UTF-8 caption in the retrieval file", lambda ws: _eval(
        ws, "--retrieval-data", str(ws / "val_bad_utf8.tsv")), "line 2: caption is not valid UTF-8"),
    Case("eval", "--output into a read-only place", lambda ws: _eval(
        ws, "--zeroshot-data", str(ws / "zs"), "--output", "/proc/superclip/out.json"), "--output: cannot create"),
    Case("eval", "--output naming a folder", lambda ws: _eval(ws, "--zeroshot-data", str(ws / "zs"), "--output",
                                                             str(ws / "zs")), "is a folder"),
    Case("eval", "--pretrained file missing", lambda ws: ["eval", "--pretrained", str(ws / "none.pt"),
                                                          "--zeroshot-data", str(ws / "zs")],
         "checkpoint file not found"),
    Case("eval", "--pretrained an empty file", lambda ws: ["eval", "--pretrained", str(ws / "empty.pt"),
                                                           "--zeroshot-data", str(ws / "zs")],
         "not a complete torch checkpoint"),
    Case("eval", "--linear-probe-train without --linear-probe-test", lambda ws: _eval(
        ws, "--linear-probe-train", str(ws / "zs")), "go together"),
    # --- embed, classify, tag
    Case("embed", "images and --texts at once", lambda ws: ["embed", "--pretrained", str(ws / "tiny.pt"),
                                                            str(ws / "img.png"), "--texts", str(ws / "notes.txt"),
                                                            "--out", str(ws / "e")], "either image files"),
    Case("embed", "a missing image", lambda ws: ["embed", "--pretrained", str(ws / "tiny.pt"), str(ws / "none.png"),
                                                 "--out", str(ws / "e")], "image not found"),
    Case("embed", "a text file named .jpg", lambda ws: ["embed", "--pretrained", str(ws / "tiny.pt"),
                                                        str(ws / "text.jpg"), "--out", str(ws / "e")],
         "cannot read image"),
    Case("embed", "--texts file that is not UTF-8", lambda ws: ["embed", "--pretrained", str(ws / "tiny.pt"),
                                                                "--texts", str(ws / "texts_bad_utf8.txt"),
                                                                "--out", str(ws / "e")], "is not UTF-8 text"),
    Case("embed", "--out into a read-only place", lambda ws: ["embed", "--pretrained", str(ws / "tiny.pt"),
                                                              str(ws / "img.png"), "--out", "/proc/superclip/e"],
         "--out: cannot create"),
    Case("classify", "one label", lambda ws: ["classify", "--pretrained", str(ws / "tiny.pt"), str(ws / "img.png"),
                                              "--labels", "a dog"], "at least two"),
    Case("classify", "--template without {c}", lambda ws: ["classify", "--pretrained", str(ws / "tiny.pt"),
                                                           str(ws / "img.png"), "--labels", "a dog,a cat",
                                                           "--template", "a photo"], "has no {c}"),
    Case("classify", "--template with another field", lambda ws: [
        "classify", "--pretrained", str(ws / "tiny.pt"), str(ws / "img.png"), "--labels", "a dog,a cat",
        "--template", "a {x} photo of {c}"], "only {c} may stand in braces"),
    Case("classify", "a label given twice", lambda ws: ["classify", "--pretrained", str(ws / "tiny.pt"),
                                                        str(ws / "img.png"), "--labels", "a dog,a cat,a dog"],
         "names a label twice"),
    Case("tag", "--top-k 0", lambda ws: ["tag", "--pretrained", str(ws / "tiny.pt"), str(ws / "img.png"),
                                         "--top-k", "0"], "must be >= 1"),
    Case("tag", "a decompression bomb", lambda ws: ["tag", "--pretrained", str(ws / "tiny.pt"), _bomb(ws)],
         "DecompressionBombError"),
    Case("tag", "no model and no checkpoint", lambda ws: ["tag", str(ws / "img.png")], "name a model"),
    # --- export, flops
    Case("export", "onto an existing file", lambda ws: ["export", str(ws / "tiny.pt"), str(ws / "notes.txt")],
         "exists and is not a folder"),
    Case("export", "into a read-only place", lambda ws: ["export", str(ws / "tiny.pt"), "/proc/superclip-export"],
         "cannot write to"),
    Case("export", "weights without a config and no --model", lambda ws: ["export", str(ws / "no_config.pt"),
                                                                          str(ws / "out")], "carries no model config"),
    Case("export", "--model that does not fit the weights", lambda ws: [
        "export", str(ws / "tiny.pt"), str(ws / "out2"), "--model", str(ws / "other.json")],
        "does not fit the model config"),
    Case("export", "an unknown --format", lambda ws: ["export", str(ws / "tiny.pt"), str(ws / "o3"), "--format",
                                                      "tflite"], "invalid choice"),
    Case("tag", "local-dir: of a folder that is not a model", lambda ws: [
        "tag", "--pretrained", f"local-dir:{ws}", str(ws / "img.png")], "not a model folder"),
    Case("flops", "unknown model", lambda ws: ["flops", "ViT-Q-99"], "unknown model"),
    # --- issue 21, runs and outputs: model configs, run flags, demo / data synth / export / embed outputs, hub names
    Case("train", "model config: negative image-tower layers", lambda ws: _train_bad_model(ws, "vision_cfg", layers=-2),
         "vision_cfg.layers must be an integer >= 1, got -2"),
    Case("train", "model config: zero text-tower layers", lambda ws: _train_bad_model(ws, "text_cfg", layers=0),
         "text_cfg.layers must be an integer >= 1, got 0"),
    Case("train", "model config: context length 1", lambda ws: _train_bad_model(ws, "text_cfg", context_length=1),
         "text_cfg.context_length must be an integer >= 3, got 1"),
    Case("train", "model config: vocabulary 0", lambda ws: _train_bad_model(ws, "text_cfg", vocab_size=0),
         "text_cfg.vocab_size must be an integer >= 1, got 0"),
    Case("train", "model config: text heads that do not divide the width",
         lambda ws: _train_bad_model(ws, "text_cfg", heads=3), "text_cfg.heads 3 does not divide text_cfg.width 64"),
    Case("train", "model config: image head_width that does not divide the width",
         lambda ws: _train_bad_model(ws, "vision_cfg", head_width=48), "vision_cfg.head_width 48 does not divide"),
    Case("train", "model config: embed_dim 0", lambda ws: _train_bad_model(ws, None, embed_dim=0),
         "model.embed_dim must be an integer >= 1, got 0"),
    Case("train", "model config: image smaller than one patch", lambda ws: _train_bad_model(ws, "vision_cfg",
                                                                                          image_size=4),
         "vision_cfg.image_size must be at least patch_size 8"),
    Case("train", "model config: width given as a string", lambda ws: _train_bad_model(ws, "text_cfg", width="64"),
         "text_cfg.width must be an integer >= 1, got '64'"),
    Case("train", "model config: mlp_ratio 0", lambda ws: _train_bad_model(ws, "vision_cfg", mlp_ratio=0),
         "vision_cfg.mlp_ratio must be a number > 0"),
    Case("train", "model config: text vocabulary smaller than the CLIP tokenizer's ids",
         lambda ws: _train_bad_model(ws, "text_cfg", vocab_size=1000), "text_cfg.vocab_size 1000 is smaller than"),
    Case("train", "model config: head vocabulary smaller than the tokenizer's ids",
         lambda ws: _train_bad_model(ws, "clstext_cfg", vocab_size=10), "clstext_cfg.vocab_size 10 is smaller"),
    Case("flops", "model config with negative layers", lambda ws: ["flops", _bad_model(ws, "vision_cfg", layers=-1)],
         "vision_cfg.layers must be an integer >= 1"),
    Case("train", "--force-context-length 2 (no room for a word)", lambda ws: _train(ws, "--force-context-length", "2"),
         "text_cfg.context_length must be an integer >= 3, got 2"),
    Case("train", "--force-image-size smaller than a patch", lambda ws: _train(ws, "--force-image-size", "4"),
         "vision_cfg.image_size must be at least patch_size 8"),
    Case("train", "--batch-size 1 with the contrastive loss", lambda ws: _train(ws, "--batch-size", "1"),
         "--batch-size 1 with the contrastive loss"),
    Case("train", "--lr inf", lambda ws: _train(ws, "--lr", "inf"), "--lr must be a finite number, got inf"),
    Case("train", "--eps inf", lambda ws: _train(ws, "--eps", "inf"), "--eps must be a finite number"),
    Case("train", "--wd inf", lambda ws: _train(ws, "--wd", "inf"), "--wd must be a finite number"),
    Case("train", "--cls-loss-weight inf", lambda ws: _train(ws, "--cls-loss-weight", "inf"),
         "--cls-loss-weight must be a finite number"),
    Case("train", "--name with a path in it", lambda ws: _train(ws, "--name", "../escape"),
         "--name must be a folder name"),
    Case("train", "--resume a run folder", lambda ws: _train(ws, "--resume", str(ws)),
         "is a folder: name a checkpoint"),
    Case("demo", "--batches -4", lambda ws: ["demo", "--batches", "-4"], "--batches: must be >= 2, got -4"),
    Case("demo", "--batches 0", lambda ws: ["demo", "--batches", "32", "0"], "--batches: must be >= 2, got 0"),
    Case("demo", "--batches 1 (a contrastive loss of 0)", lambda ws: ["demo", "--batches", "1"], "must be >= 2"),
    Case("demo", "--samples 1 (less than a batch)", lambda ws: ["demo", "--samples", "1", "--out", str(ws / "demo")],
         "--samples 1 is less than one batch of 32"),
    Case("demo", "--eval-samples 0", lambda ws: ["demo", "--eval-samples", "0"], "--eval-samples: must be >= 1"),
    Case("data synth", "--out under a file", lambda ws: ["data", "synth", "--out", str(ws / "a_file" / "synth")],
         "--out: cannot create folder"),
    Case("eval", "--pretrained an ONNX export folder", lambda ws: ["eval", "--pretrained", _onnx_folder(ws),
                                                                   "--zeroshot-data", str(ws / "zs")],
         "is an ONNX export"),
    Case("eval", "--pretrained a folder that is no model folder", lambda ws: ["eval", "--pretrained",
                                                                              str(ws / "zs"), "--zeroshot-data",
                                                                              str(ws / "zs")],
         "is a folder without open_clip_config.json"),
    Case("eval", "hf-hub: file path with ..", lambda ws: ["eval", "--pretrained", "hf-hub:org/repo/../../etc/passwd",
                                                         "--zeroshot-data", str(ws / "zs")], "'..'"),
    Case("export", "into a folder holding the user's README.md", lambda ws: ["export", str(ws / "tiny.pt"),
                                                                            _user_folder(ws)],
         "is not empty (README.md)"),
    Case("embed", "--out whose files exist", lambda ws: ["embed", "--pretrained", str(ws / "tiny.pt"),
                                                         str(ws / "img.png"), "--out", _existing_embedding(ws)],
         "already exist"),
    # --- issue 21, data half: broken streams and archives, CSV shapes, data synth (see docs/faults-data.md)
    Case("train", "CSV whose header names the caption column twice", lambda ws: _csv_train(
        ws, _put(ws, "dup_title.csv", b"filepath,title,title\nimg.png,a red square,DRAFT\n")),
        "the header names column 'title' 2 times (columns 2, 3)"),
    Case("train", "CSV row with an unquoted comma in its caption", lambda ws: _csv_train(
        ws, _put(ws, "ragged.csv", b"filepath,title\nimg.png,a red square\nimg.png,red, square\n")),
        "rows with more fields than the header's 2: line 3 has 3"),
    Case("train", "CSV with a quote never closed", lambda ws: _csv_train(
        ws, _put(ws, "open_quote.csv", b'filepath,title\nimg.png,"a red square\nimg.png,a blue one\n')),
        "line 2: a quote opened in this row is never closed"),
    Case("train", "--wds-stall-timeout 0", lambda ws: _train(ws, "--wds-stall-timeout", "0"),
         "--wds-stall-timeout must be > 0 seconds"),
    Case("train", "the only shard is empty (0 bytes)", lambda ws: _shard_train(ws, _put(ws, "empty.tar", b"")),
         "the file is empty (0 bytes)"),
    Case("train", "the only shard is an HTML error page saved as .tar", lambda ws: _shard_train(
        ws, _put(ws, "page.tar", b"<html><head><title>403 Forbidden</title></head></html>\n" * 12)),
        "offset 0: not a tar archive (it begins with b'<html><head><tit')"),
    Case("train", "the only shard is all zeros (a preallocated download)", lambda ws: _shard_train(
        ws, _put(ws, "zeros.tar", bytes(65536))), "it holds no samples (an empty archive)"),
    Case("train", "the only shard holds no KEY.EXT members (a tar of folders)", lambda ws: _shard_train(
        ws, _put(ws, "noext.tar", _tar({"images/README": b"x", "LICENSE": b"y"}))), "it holds no samples (no member"),
    Case("train", "the only shard is zstd-compressed", lambda ws: _shard_train(
        ws, _put(ws, "z.tar.zst", b"\x28\xb5\x2f\xfd" + bytes(600))), "zstd-compressed: decompress it first"),
    Case("train", "a pipe: command that does not exist", lambda ws: _shard_train(ws, "pipe:no-such-tool get x.tar"),
         "the command exited with 127"),
    Case("train", "a pipe: command that stalls (--wds-stall-timeout 1)", lambda ws: _shard_train(
        ws, "pipe:sleep 1000", "--wds-stall-timeout", "1"), "no data for 1 s after 0 bytes: the command was killed"),
    Case("train", "a pipe: command that writes noise", lambda ws: _shard_train(ws, "pipe:yes noise | head -c 900000"),
         "its output is not a tar archive (it begins with b'noise\\nnoise\\nnois')"),
    Case("eval", "retrieval CSV with a row of more fields than the header", lambda ws: _eval(
        ws, "--retrieval-data", _put(ws, "ragged_val.csv", b"filepath,title\nimg.png,a,b,c\n")),
        "line 2 has 4"),
    Case("data", "synth into a folder holding its shards", lambda ws: _synth_twice(ws), "--overwrite"),
    Case("data", "synth --shard-size 0", lambda ws: ["data", "synth", "--out", str(ws / "syn0"), "--shard-size", "0"],
         "--shard-size must be >= 1, got 0"),
    # superclip index / serve (tests/test_search_*.py test the commands themselves)
    Case("index", "build from a missing folder", lambda ws: ["index", "build", str(ws / "nope"), "--out",
                                                             str(ws / "idx_a"), "--pretrained", str(ws / "tiny.pt")],
         "source not found: "),
    Case("index", "build into a folder that holds other files", lambda ws: [
        "index", "build", str(ws / "zs"), "--out", str(ws / "zs"), "--pretrained", str(ws / "tiny.pt")],
         "is not empty and holds no index"),
    Case("index", "build without a model", lambda ws: ["index", "build", str(ws / "zs"), "--out", str(ws / "idx_b")],
         "name a model (--model) and/or a checkpoint (--pretrained)"),
    Case("index", "build from a CSV without the image column", lambda ws: [
        "index", "build", str(ws / "train.csv"), "--csv-img-key", "image", "--out", str(ws / "idx_c"),
        "--pretrained", str(ws / "tiny.pt")], "no column 'image' (--csv-img-key)"),
    Case("index", "--max-index-memory not a size", lambda ws: ["index", "build", str(ws / "zs"), "--out",
                                                               str(ws / "idx_d"), "--max-index-memory", "lots"],
         "expected a size such as 512M or 4G"),
    Case("index", "add to a folder without an index", lambda ws: ["index", "add", str(ws / "zs"), str(ws / "zs")],
         "holds no index (no manifest.json)"),
    Case("index", "optimize a folder without an index", lambda ws: ["index", "optimize", str(ws / "shards")],
         "holds no index (no manifest.json)"),
    Case("serve", "a folder without an index", lambda ws: ["serve", str(ws / "shards")],
         "holds no index (no manifest.json)"),
    # --- issue 25: index and serve on real folders
    Case("index", "build with --model and no checkpoint (random weights)", lambda ws: [
        "index", "build", str(ws / "zs"), "--out", str(ws / "idx_r"), "--model", str(ws / "tiny.json")],
         "no checkpoint (--pretrained): an index of random weights finds nothing; to build one on purpose"),
    Case("index", "build with --random-weights and --pretrained", lambda ws: [
        "index", "build", str(ws / "zs"), "--out", str(ws / "idx_r"), "--pretrained", str(ws / "tiny.pt"),
        "--random-weights", "3"], "--random-weights draws the weights: it cannot go with --pretrained"),
    Case("index", "--thumb-size -1", lambda ws: ["index", "build", str(ws / "zs"), "--out", str(ws / "idx_r"),
                                                 "--pretrained", str(ws / "tiny.pt"), "--thumb-size", "-1"],
         "argument --thumb-size: must be >= 0, got -1"),
    Case("index", "add after the index's checkpoint moved", lambda ws: [
        "index", "add", _moved_index(ws), str(ws / "zs")], "is gone from"),
    Case("index", "relink to another checkpoint", lambda ws: [
        "index", "relink", _moved_index(ws), "--pretrained", str(ws / "other.pt")],
         "was built with (sha256 differs): to use it, re-embed the index: superclip index reembed"),
    Case("index", "relink to a missing file", lambda ws: [
        "index", "relink", _moved_index(ws), "--pretrained", str(ws / "none.pt")], "none.pt not found"),
    Case("index", "remove an id past SQLite's largest integer", lambda ws: [
        "index", "remove", _moved_index(ws), "99999999999999999999"], "no item with id 99999999999999999999"),
    Case("index", "remove a path the index does not hold", lambda ws: [
        "index", "remove", _moved_index(ws), str(ws / "elsewhere")], "no live item has the path"),
    Case("index", "restore what is not excluded", lambda ws: [
        "index", "restore", _moved_index(ws), str(ws / "zs" / "red")], "is not excluded from"),
    Case("index", "reembed without --pretrained", lambda ws: ["index", "reembed", _moved_index(ws)],
         "name the new checkpoint (--pretrained)"),
    Case("index", "stats of a folder without an index", lambda ws: ["index", "stats", str(ws / "shards")],
         "holds no index (no manifest.json)"),
    Case("index", "excluded of a folder without an index", lambda ws: ["index", "excluded", str(ws / "shards")],
         "holds no index (no manifest.json)"),
    Case("serve", "--port 70000", lambda ws: ["serve", str(ws / "shards"), "--port", "70000"],
         "argument --port: must be a TCP port (0 to 65535), got 70000"),
    Case("serve", "an index whose checkpoint moved", lambda ws: ["serve", _moved_index(ws), "--port", "0"],
         "superclip index relink"),
    # --- eval --compositional
    Case("eval", "--compositional: a missing image named in a type file", lambda ws: _eval(
        ws, "--compositional", str(ws / "sc_missing_image"), "--compositional-images", str(ws)),
        "replace_att.json, id 7: image not found"),
    Case("eval", "--compositional: a missing image named in a JSONL", lambda ws: _eval(
        ws, "--compositional", str(ws / "comp_missing_image.jsonl")),
        "comp_missing_image.jsonl, line 1: image not found"),
    Case("eval", "--compositional: an empty type file", lambda ws: _eval(
        ws, "--compositional", str(ws / "sc_empty_type"), "--compositional-images", str(ws)),
        "swap_att.json: empty type file"),
    Case("eval", "--compositional: a caption equal to its negative", lambda ws: _eval(
        ws, "--compositional", str(ws / "sc_same_caption"), "--compositional-images", str(ws)),
        "replace_att.json, id 2: negative caption equals the caption"),
    Case("eval", "--compositional: a JSONL negative equal to the caption", lambda ws: _eval(
        ws, "--compositional", str(ws / "comp_same_caption.jsonl")), "line 1: negative caption equals the caption"),
    Case("eval", "--segmentation-probe: a mask whose size differs from its image", lambda ws: _eval(
        ws, "--segmentation-probe-train", str(ws / "seg_ok"), "--segmentation-probe-test", str(ws / "seg_size")),
        "image is 36x36, its mask 36x30"),
    Case("eval", "--segmentation-probe: a mask value above the class count", lambda ws: _eval(
        ws, "--segmentation-probe-train", str(ws / "seg_value"), "--segmentation-probe-test", str(ws / "seg_ok"),
        "--segmentation-classes", "3"), "value 9 is not a class (there are 3: 0..2) and not the ignore index 255"),
    Case("eval", "--segmentation-probe: an image without a mask", lambda ws: _eval(
        ws, "--segmentation-probe-train", str(ws / "seg_no_mask"), "--segmentation-probe-test", str(ws / "seg_ok")),
        "no mask"),
    Case("eval", "--segmentation-probe-train without -test", lambda ws: _eval(
        ws, "--segmentation-probe-train", str(ws / "seg_ok")), "go together"),
    Case("train", "--compositional-val: an item whose image is missing", lambda ws: _train(
        ws, "--compositional-val", str(ws / "comp_missing_image.jsonl"), "--val-steps", "1"),
        "comp_missing_image.jsonl, line 1: image not found"),
    Case("eval", "--compositional: no such set", lambda ws: _eval(ws, "--compositional", str(ws / "nothing_here")),
         "compositional set not found"),
    # --- issue 25, elsewhere: one device check for every command (superclip.devices)
    Case("eval", "--device gpu (no such device type)", lambda ws: _eval(ws, "--zeroshot-data", str(ws / "zs"),
                                                                       "--device", "gpu"),
         "--device gpu: unknown device (expected cpu, cuda, cuda:N, mps or xpu[:N])"),
    Case("embed", "--device cuda:99 (a GPU this machine lacks)", lambda ws: [
        "embed", "--pretrained", str(ws / "tiny.pt"), str(ws / "img.png"), "--out", str(ws / "e_dev"), "--device",
        "cuda:99"], "--device cuda:99: "),
    Case("tag", "--device meta (a device superclip cannot run on)", lambda ws: [
        "tag", "--pretrained", str(ws / "tiny.pt"), str(ws / "img.png"), "--device", "meta"], "not on 'meta' devices"),
    Case("classify", "--device cuda:-1", lambda ws: [
        "classify", "--pretrained", str(ws / "tiny.pt"), str(ws / "img.png"), "--labels", "a,b", "--device",
        "cuda:-1"], "--device cuda:-1: unknown device"),
    Case("serve", "--device cuda:99", lambda ws: ["serve", str(ws / "shards"), "--device", "cuda:99"],
         "--device cuda:99: "),
    Case("index", "build --device gpu", lambda ws: ["index", "build", str(ws / "zs"), "--out", str(ws / "idx_dev"),
                                                    "--pretrained", str(ws / "tiny.pt"), "--device", "gpu"],
         "--device gpu: unknown device"),
    Case("train", "--device xla", lambda ws: _train(ws, "--device", "xla"), "not on 'xla' devices"),
    # --- issue 25, elsewhere: hard-negative sets
    Case("eval", "--compositional: an id given twice in a SugarCrepe type file", lambda ws: _eval(
        ws, "--compositional", _type_file(ws, "sc_repeated_id", '{"7": %s, "7": %s}' % (_SC_ITEM, _SC_ITEM)),
        "--compositional-images", str(ws)), "replace_att.json: id 7 appears 2 times"),
    Case("eval", "--compositional: a negative that differs only in punctuation", lambda ws: _eval(
        ws, "--compositional", _put(ws, "comp_punct.jsonl", json.dumps(
            {"image": "img.png", "positive": "a red square", "negatives": ["a red square."]}).encode())),
        "line 1: negative caption equals the caption up to case, spacing and punctuation"),
    Case("eval", "--compositional: caption and negative identical within the 77-token window", lambda ws: _eval(
        ws, "--compositional", _put(ws, "comp_long.jsonl", json.dumps(
            {"image": "img.png", "positive": _LONG + " on white", "negatives": [_LONG + " on black"]}).encode())),
        "has the caption's token ids: both fill the 77-token window"),
    Case("train", "--compositional-val: a negative the tokenizer reads as its caption", lambda ws: _train(
        ws, "--compositional-val", _put(ws, "comp_entity.jsonl", json.dumps(
            {"image": "img.png", "positive": "a red &amp; blue square", "negatives": ["a red & blue square"]}
        ).encode()), "--val-steps", "1"), "has the caption's token ids: the tokenizer's text cleaning"),
    Case("eval", "--segmentation-probe: a test split whose masks hold only the ignore index", lambda ws: _eval(
        ws, "--segmentation-probe-train", str(ws / "seg_ok"), "--segmentation-probe-test", _seg_all_ignored(ws)),
        "every mask pixel is the ignore index 255: there is nothing to fit or score"),
    Case("train", "--resume latest without --name", lambda ws: _train(ws, "--resume", "latest"),
         "--resume latest needs --name"),
    Case("data", "synth --compositional --test-samples 0", lambda ws: [
        "data", "synth", "--out", str(ws / "syn_c0"), "--compositional", "--test-samples", "0"],
        "--compositional draws its items from the test split: give --test-samples of at least 1"),
    Case("data", "synth --masks --train-samples 0", lambda ws: [
        "data", "synth", "--out", str(ws / "syn_m0"), "--masks", "--train-samples", "0"],
        "--masks writes a train split to fit the probe on and a test split to score it"),
    Case("data", "synth with every split 0", lambda ws: [
        "data", "synth", "--out", str(ws / "syn_00"), "--train-samples", "0", "--test-samples", "0"],
        "nothing to write"),
    Case("data", "synth --image-size 100000", lambda ws: [
        "data", "synth", "--out", str(ws / "syn_big"), "--image-size", "100000"], "--image-size must be <= 4096"),
    # --- issue 25, hunted: evaluation layouts and flags
    Case("eval", "Karpathy JSON image without sentences", lambda ws: _eval(ws, "--retrieval-data", _put(
        ws, "k_nosent.json", b'{"images": [{"filename": "img.png", "split": "test"}]}')),
        "k_nosent.json, images[0]: expected {filename, sentences: [{raw}], split}"),
    Case("eval", "retrieval JSON item without a caption", lambda ws: _eval(ws, "--retrieval-data", _put(
        ws, "k_nocap.json", b'[{"image": "img.png"}]')), "k_nocap.json, item 0: expected {image, caption}"),
    Case("eval", "retrieval JSON whose images is not a list", lambda ws: _eval(ws, "--retrieval-data", _put(
        ws, "k_imgstr.json", b'{"images": "img.png"}')), "'images' must be a list"),
    Case("eval", "retrieval JSON caption that is a number", lambda ws: _eval(ws, "--retrieval-data", _put(
        ws, "k_capnum.json", b'[{"image": "img.png", "caption": ["a red square", 5]}]')),
        "item 0: 'caption' must be a non-empty string, got 5"),
    Case("eval", "--csv-separator of two characters", lambda ws: _eval(
        ws, "--retrieval-data", str(ws / "train.csv"), "--csv-separator", ";;"),
        "--csv-separator must be one character"),
    Case("eval", "--seed beyond 64 bits", lambda ws: _eval(ws, "--zeroshot-data", str(ws / "zs"), "--seed", "1" * 25),
         "argument --seed: must be an integer between -2**62 and 2**62"),
    Case("train", "--seed beyond 64 bits", lambda ws: _train(ws, "--seed", "1" * 25),
         "--seed must be an integer between -2**62 and 2**62"),
    Case("eval", "zero-shot over one class folder", lambda ws: _eval(ws, "--zeroshot-data", _folders(ws, "zs_one",
                                                                                                      ["red"])),
         "class folders: one class only ('red')"),
    Case("eval", "linear probe over one class folder", lambda ws: _eval(
        ws, "--linear-probe-train", _folders(ws, "zs_one", ["red"]), "--linear-probe-test",
        _folders(ws, "zs_one", ["red"])), "holds one class folder ('red')"),
    Case("eval", "class folders red_car and 'red car' (one class name twice)", lambda ws: _eval(
        ws, "--zeroshot-data", _folders(ws, "zs_same", ["red_car", "red car"])),
        "class folders: 'red car' and 'red_car' read the same to the model"),
    Case("eval", "--classnames naming a class twice in other case", lambda ws: _eval(
        ws, "--zeroshot-data", str(ws / "zs"), "--classnames", _put(ws, "cn_case.txt", b"Red\nred\n")),
        "class names: 'Red' and 'red' read the same to the model"),
    Case("classify", "--labels differing only in case", lambda ws: [
        "classify", "--pretrained", str(ws / "tiny.pt"), str(ws / "img.png"), "--labels", "Dog,dog,cat"],
        "--labels: 'Dog' and 'dog' read the same to the model"),
    Case("eval", "--segmentation-probe: two images sharing one mask name", lambda ws: _eval(
        ws, "--segmentation-probe-train", _seg_same_stem(ws), "--segmentation-probe-test", str(ws / "seg_ok")),
        "a.jpg and a.png share the name 'a'"),
    Case("embed", "--texts file with a blank line between texts", lambda ws: [
        "embed", "--pretrained", str(ws / "tiny.pt"), "--texts",
        _put(ws, "texts_gap.txt", b"a red square\n\na blue one\n"), "--out", str(ws / "e_gap")],
        "texts_gap.txt, line 2 is blank"),
    Case("embed", "--out naming a folder (DIR/)", lambda ws: [
        "embed", "--pretrained", str(ws / "tiny.pt"), str(ws / "img.png"), "--out", str(ws / "zs") + "/"],
        "a prefix is expected, not a folder"),
    Case("train", "--imagenet-val of one class folder (checked before training)", lambda ws: _train(
        ws, "--imagenet-val", _folders(ws, "zs_one", ["red"])), "class folders: one class only ('red')"),
    Case("eval", "--compositional JSONL that is not UTF-8 (Latin-1)", lambda ws: _eval(ws, "--compositional", _put(
        ws, "comp_latin1.jsonl", b'{"image": "img.png", "positive": "a caf\xe9", "negatives": ["a bar"]}\n')),
        "comp_latin1.jsonl is not UTF-8 text (invalid continuation byte at byte 39)"),
    Case("eval", "retrieval JSON that is not UTF-8 (Latin-1)", lambda ws: _eval(ws, "--retrieval-data", _put(
        ws, "ret_latin1.json", b'[{"image": "img.png", "caption": "a caf\xe9"}]')),
        "ret_latin1.json is not UTF-8 text"),
    # --- superclip data icons (tests/test_icons.py builds the corpus itself)
    Case("data icons", "npm registry unreachable", lambda ws: [
        "data", "icons", "--out", str(ws / "ic_npm"), "--registry", "http://127.0.0.1:9/", "--fetch-retries", "0",
        "--no-progress"], "could not fetch @iconify/json@2.2.553"),
    Case("data icons", "a tarball whose sha256 is not the pinned one", lambda ws: _icons(ws, "ic_sha", checked=False),
         "expected acf23ea102e682c28c367f76d44caa60b90365570201304358891386d52393a1"),
    Case("data icons", "--tarball that does not exist", lambda ws: [
        "data", "icons", "--out", str(ws / "ic_none"), "--tarball", str(ws / "none.tgz")], "file not found"),
    Case("data icons", "a version whose sha256 is not known", lambda ws: [
        "data", "icons", "--out", str(ws / "ic_v"), "--iconify-version", "9.9.9"], "no known sha256"),
    Case("data icons", "a set name that does not exist", lambda ws: _icons(ws, "ic_set", "--sets", "no-such-set"),
         "--sets: no icon set 'no-such-set'"),
    Case("data icons", "an emoji set named", lambda ws: _icons(ws, "ic_emoji", "--held-out", "fx-moji"),
         "'fx-moji' is an emoji set"),
    Case("data icons", "a set both trained on and held out", lambda ws: _icons(
        ws, "ic_both", "--sets", "fx-line", "--held-out", "fx-line"), "'fx-line' is held out"),
    Case("data icons", "--out that holds other files", lambda ws: _icons(ws, "zs"), "already exists and is not empty"),
    Case("data icons", "--max-per-set 0", lambda ws: _icons(ws, "ic_0", "--max-per-set", "0"),
         "--max-per-set must be >= 1, got 0"),
]


def _folders(ws: Path, name: str, classes: List[str]) -> str:
    for c in classes:
        (ws / name / c).mkdir(parents=True, exist_ok=True)
        (ws / name / c / "0.png").write_bytes(png())
    return str(ws / name)


def _seg_same_stem(ws: Path) -> str:
    import shutil

    folder = ws / "seg_same_stem"
    if not folder.exists():
        shutil.copytree(ws / "seg_ok", folder)
        Image.open(folder / "images" / "a.png").convert("RGB").save(folder / "images" / "a.jpg")
    return str(folder)

_SC_ITEM = json.dumps({"filename": "img.png", "caption": "a red square", "negative_caption": "a blue square"})
_LONG = " ".join(["a red square beside a blue circle"] * 12)  # 84 words


def _seg_all_ignored(ws: Path) -> str:
    import numpy as np

    folder = ws / "seg_all_ignored"
    (folder / "annotations").mkdir(parents=True, exist_ok=True)
    (folder / "images").mkdir(exist_ok=True)
    (folder / "images" / "a.png").write_bytes(png())
    Image.fromarray(np.full((36, 36), 255, dtype=np.uint8), mode="L").save(folder / "annotations" / "a.png")
    return str(folder)


def _type_file(ws: Path, folder: str, text: str, kind: str = "replace_att") -> str:
    (ws / folder).mkdir(exist_ok=True)
    (ws / folder / f"{kind}.json").write_text(text)
    return str(ws / folder)


# --- issue 21, runs and outputs: files the cases above make when they run
def _bad_model(ws: Path, tower, **changes) -> str:
    cfg = json.loads(json.dumps(TINY_CFG))
    (cfg.setdefault(tower, {}) if tower else cfg).update(changes)
    path = ws / f"bad_{tower}_{'_'.join(f'{k}{v}' for k, v in changes.items())}.json"
    path.write_text(json.dumps(cfg))
    return str(path)


def _train_bad_model(ws: Path, tower, **changes) -> List[str]:
    argv = _train(ws)
    argv[argv.index("--model") + 1] = _bad_model(ws, tower, **changes)
    return argv


def _onnx_folder(ws: Path) -> str:
    folder = ws / "onnx_export"
    folder.mkdir(exist_ok=True)
    (folder / "image_encoder.onnx").write_bytes(b"onnx")
    (folder / "onnx.json").write_text("{}")
    return str(folder)


def _user_folder(ws: Path) -> str:
    folder = ws / "my_model_folder"
    folder.mkdir(exist_ok=True)
    (folder / "README.md").write_text("my notes\n")
    return str(folder)


def _moved_index(ws: Path) -> str:
    """An index of the zero-shot folder whose checkpoint was moved after the build (built once)."""
    import shutil

    from superclip import cli

    out = ws / "idx_moved"
    if not (out / "manifest.json").exists():
        import contextlib

        shutil.copy(ws / "tiny.pt", ws / "moving.pt")
        with contextlib.redirect_stdout(io.StringIO()):
            rc = cli.main(["index", "build", str(ws / "zs"), "--out", str(out), "--pretrained", str(ws / "moving.pt"),
                           "--workers", "0", "--no-progress"])
        assert rc == 0
        (ws / "moving.pt").rename(ws / "moved.pt")
    return str(out)


def _existing_embedding(ws: Path) -> str:
    (ws / "emb_existing.npy").write_bytes(b"mine")
    return str(ws / "emb_existing")


def _put(ws: Path, name: str, data: bytes) -> str:
    (ws / name).write_bytes(data)
    return str(ws / name)


def _tar(members: dict) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _shard_train(ws: Path, url: str, *extra: str) -> List[str]:
    return ["train", "--model", str(ws / "tiny.json"), "--train-data", url, "--dataset-type", "webdataset",
            "--train-num-samples", "8", "--batch-size", "4", "--logs", str(ws / "logs"), "--no-progress", *extra]


def _synth_twice(ws: Path) -> List[str]:
    argv = ["data", "synth", "--out", str(ws / "syn"), "--train-samples", "4", "--test-samples", "0",
            "--image-size", "8"]
    if not (ws / "syn" / "train-000000.tar").exists():
        from superclip import cli

        cli.main(argv)
    return argv


def _bomb(ws: Path) -> str:
    path = ws / "bomb.png"
    path.write_bytes(bomb_png())
    return str(path)


# --- samples that training skips and counts (one bad sample among good ones)
def _csv_row(ws: Path, name: str, image: bytes, caption: bytes = b"a red square") -> bytes:
    (ws / name).write_bytes(image)
    return name.encode() + b"\t" + caption + b"\n"


SAMPLE_CASES: List[SampleCase] = [
    SampleCase("truncated PNG", "csv", lambda ws: _csv_row(ws, "trunc.png", png()[:60])),
    SampleCase("empty image file", "csv", lambda ws: _csv_row(ws, "empty.png", b"")),
    SampleCase("text file named .jpg", "csv", lambda ws: _csv_row(ws, "t.jpg", b"plain text")),
    SampleCase("decompression bomb (40000 x 40000 PNG header)", "csv", lambda ws: _csv_row(ws, "bomb.png",
                                                                                         bomb_png())),
    SampleCase("missing image file", "csv", lambda ws: b"gone.png\ta red square\n"),
    SampleCase("non-UTF-8 caption", "csv", lambda ws: _csv_row(ws, "ok1.png", png(), b"a caf\xe9 sign")),
    SampleCase("empty caption", "csv", lambda ws: _csv_row(ws, "ok2.png", png(), b"   ")),
    SampleCase("corrupt image in a shard", "shard", lambda ws: {"png": b"not an image", "txt": b"a red square"}),
    SampleCase("shard sample without an image", "shard", lambda ws: {"txt": b"a red square"}),
    SampleCase("JSON caption that is a list", "shard", lambda ws: {"png": png(), "json": b'{"txt": ["a", "b"]}'}),
    SampleCase("JSON member that is not an object", "shard", lambda ws: {"png": png(), "json": b'["a red square"]'}),
    SampleCase("non-UTF-8 caption in a shard", "shard", lambda ws: {"png": png(), "txt": b"caf\xe9"}),
    SampleCase("truncated shard (cut inside a sample)", "shard", lambda ws: "truncate"),
    # --- issue 21, data half: damaged archives, spreadsheet rows, cut downloads (see docs/faults-data.md)
    SampleCase("CSV row with fewer fields than the header (no caption)", "csv", lambda ws: _csv_row(
        ws, "ok3.png", png(), b"")[:-2] + b"\n"),
    SampleCase("truncated JPEG (a cut download)", "csv", lambda ws: _csv_row(ws, "cut.jpg", _jpeg()[:300])),
    SampleCase("corrupt member header in a shard (bad checksum)", "shard", lambda ws: _break_header),
    SampleCase("an HTML page appended to a shard", "shard", lambda ws: _append_page),
    SampleCase("a zeroed stretch inside a shard (a hole in a download)", "shard", lambda ws: _zero_hole),
]


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 40).convert("RGB").save(buf, format="JPEG")
    return buf.getvalue()


def _break_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    at = data.index(b"k0003.txt")
    data[at + 148:at + 156] = b"0000000\0"
    path.write_bytes(bytes(data))


def _append_page(path: Path) -> None:
    path.write_bytes(path.read_bytes() + b"<html><body>502 Bad Gateway</body></html>\n" * 30)


def _zero_hole(path: Path) -> None:
    data = bytearray(path.read_bytes())
    at = data.index(b"k0003.png")
    data[at:at + 1024] = bytes(1024)
    path.write_bytes(bytes(data))


def write_sample_case(ws: Path, case: SampleCase, good: int = 7) -> List[str]:
    """A training set of ``good`` good samples and the case's bad one; returns the train flags that read it."""
    ws.mkdir(parents=True, exist_ok=True)
    bad = case.make(ws)
    if case.kind == "csv":
        rows = b"filepath\ttitle\n" + b"".join(_csv_row(ws, f"good{i}.png", png((30 * i, 90, 90)))
                                               for i in range(good))
        (ws / "data.tsv").write_bytes(rows[:rows.index(b"\n", rows.index(b"good3")) + 1] + bad +
                                      rows[rows.index(b"\n", rows.index(b"good3")) + 1:])
        return ["--train-data", str(ws / "data.tsv"), "--batch-size", "4", "--epochs", "1"]
    path = ws / "shard-000.tar"
    with tarfile.open(path, "w") as tar:
        samples = [{"png": png((30 * i, 90, 90)), "txt": b"a red square"} for i in range(good)]
        samples.insert(3, bad if isinstance(bad, dict) else dict(samples[0]))
        for i, members in enumerate(samples):
            for ext, data in members.items():
                info = tarfile.TarInfo(f"k{i:04d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    if callable(bad):  # damage done to the written shard
        bad(path)
    if bad == "truncate":  # cut 50 bytes into the image of the fifth sample
        data = path.read_bytes()
        path.write_bytes(data[: data.index(b"k0004.png") + 512 + 50])
    return ["--train-data", str(path), "--dataset-type", "webdataset", "--train-num-samples", "32", "--batch-size",
            "4", "--epochs", "1"]


BEGIN, END = "<!-- bad-inputs table: python -m tests.bad_inputs --write docs/faults.md -->", "<!-- end of table -->"


def table() -> List[str]:
    """Every case with superclip's answer, measured now, as markdown table lines."""
    import contextlib
    import tempfile

    from superclip import cli

    lines = ["| command | mistake or bad input | what superclip says (exit 2, one line) |", "|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        ws = workspace(Path(tmp) / "ws")
        for case in CASES:
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                try:
                    rc = cli.main(case.argv(ws))
                except SystemExit as e:
                    rc = e.code
            line = err.getvalue().strip().splitlines()[-1].replace(tmp, "…").replace("|", "\\|")
            lines.append(f"| {case.command} | {case.what} | `{line}` (rc {rc}) |")
    return lines


def main() -> None:
    """Prints the table; ``--write FILE`` puts it between FILE's markers instead (docs/faults.md)."""
    import argparse
    import re

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--write", default=None, metavar="FILE")
    args = p.parse_args()
    lines = table()
    if not args.write:
        print("\n".join(lines))
        return
    path = Path(args.write)
    text = path.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{path} has no {BEGIN!r} ... {END!r} markers")
    block = BEGIN + "\n\n" + "\n".join(lines) + "\n\n" + END
    path.write_text(re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S))
    print(f"{path}: {len(CASES)} cases")


if __name__ == "__main__":
    main()
