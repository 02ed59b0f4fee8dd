"""``superclip eval | embed | classify | tag``: what users do with a trained model. The console is ours here."""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional

from ..errors import ConfigError
from ..search.names import display
from . import precheck
from .args import positive as _positive
from .args import seed as seed_type

if TYPE_CHECKING:
    import torch


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="model name or JSON (default: the checkpoint's own config)")
    p.add_argument("--pretrained", default=None, help="checkpoint (superclip, official SuperCLIP, open_clip), a model "
                                                      "folder (superclip export), or hf-hub:ORG/REPO[/FILE]")
    p.add_argument("--cache-dir", default=None, help="hub cache for hf-hub: names (default: huggingface_hub's)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "amp", "amp_bf16", "bf16"])
    p.add_argument("--batch-size", type=_positive, default=64)
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def _writable_output(path: Optional[str], what: str) -> None:
    """Create the folder an output goes to now, so that a bad path fails before the work, not after it."""
    if path is None:
        return
    parent = Path(path).parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{what}: cannot create folder {parent}: {e.strerror or e}") from None
    if Path(path).is_dir():
        raise ConfigError(f"{what}: {path} is a folder, expected a file name")
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"{what}: folder {parent} is not writable")


def _check_model(args) -> None:
    """The model flags' checks that need no torch (:mod:`.precheck`), then open_clip imported as lean as the model
    allows: the first thing every command of this module does after its own argument checks."""
    if args.model is None and args.pretrained is None:
        raise ConfigError("name a model (--model) and/or a checkpoint (--pretrained)")
    precheck.lean_open_clip(precheck.model_source(args.model, args.pretrained))


def _load(args, tokenizer: bool = True):
    """(model, preprocess, tokenizer or None where ``tokenizer`` is False, encoder)."""
    from ..model import get_tokenizer, get_transforms
    from ..weights import load_model

    if args.model is None and args.pretrained is None:
        raise ConfigError("name a model (--model) and/or a checkpoint (--pretrained)")
    from ..devices import resolve_device
    from ..evaluate.features import Encoder

    device = str(resolve_device(args.device))
    model, args.stats, _ = load_model(args.model, pretrained=args.pretrained, device=device, cache_dir=args.cache_dir)
    from ..model_check import check_tokenizer_fits

    check_tokenizer_fits(model.config)
    model.eval()
    return (model, get_transforms(model)[1], get_tokenizer(model.config) if tokenizer else None,
            Encoder(model, device, args.precision))


def _bar(args, total: Optional[int], desc: str):
    """A progress bar on stderr, shown once the work has taken 2 s; ``total`` may come later (``bar.reset``)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not args.progress, delay=2, file=sys.stderr)


def _images(preprocess, paths: List[str], args, desc: str, kind: str = "features") -> torch.Tensor:
    from ..evaluate.features import embed_images

    with _bar(args, len(paths), desc) as bar:
        return embed_images(args.encoder, preprocess, paths, args.batch_size, bar.update, kind)


def _texts(tokenizer, texts: List[str], args) -> torch.Tensor:
    from ..evaluate.features import embed_texts

    return embed_texts(args.encoder, tokenizer, texts)


def _zero_shot(model, preprocess, tokenizer, args, root: str, classnames, templates) -> Dict:
    from ..evaluate.tasks import zero_shot_folder

    with _bar(args, None, "zero-shot") as bar:
        return zero_shot_folder(args.encoder, preprocess, tokenizer, root, classnames, templates, args.batch_size,
                                bar)


def _check_templates(templates: List[str]) -> None:
    for t in templates:
        if "{c}" not in t:
            raise ConfigError(f"template {t!r} has no {{c}} where the class name goes")
        try:
            t.format(c="x")
        except (IndexError, KeyError, ValueError) as e:
            raise ConfigError(f"template {t!r}: only {{c}} may stand in braces ({e})") from None


def _check_eval_inputs(args: argparse.Namespace) -> None:
    """The files and folders ``eval`` reads exist (their contents are checked once the readers are imported)."""
    precheck.lines_file(args.templates, "templates")
    precheck.lines_file(args.classnames, "class names")
    for root in (args.zeroshot_data, args.imagenet_val, args.linear_probe_train, args.linear_probe_test):
        precheck.folder(root)
    if args.retrieval_data and not args.retrieval_data.startswith("pipe:") and ".tar" not in args.retrieval_data:
        precheck.files([args.retrieval_data], "retrieval file")
    precheck.files([args.compositional] if args.compositional else [], "compositional set")
    precheck.folder(args.compositional_images if args.compositional else None, "image folder not found: {}")
    for root in (args.segmentation_probe_train, args.segmentation_probe_test) if args.segmentation_probe_train else ():
        if not (Path(root) / "images").is_dir() or not (Path(root) / "annotations").is_dir():
            raise ConfigError(f"{root}: expected the folders images/ and annotations/ (images/NAME.jpg, "
                              "annotations/NAME.png)")
    _check_model(args)


def cmd_eval(args: argparse.Namespace) -> int:
    if not (args.zeroshot_data or args.imagenet_val or args.retrieval_data or args.linear_probe_train
            or args.compositional or args.segmentation_probe_train):
        raise ConfigError("nothing to evaluate: give --zeroshot-data, --imagenet-val, --retrieval-data, "
                          "--linear-probe-train/--linear-probe-test, --compositional or "
                          "--segmentation-probe-train/--segmentation-probe-test")
    if bool(args.segmentation_probe_train) != bool(args.segmentation_probe_test):
        raise ConfigError("--segmentation-probe-train and --segmentation-probe-test go together")
    if bool(args.linear_probe_train) != bool(args.linear_probe_test):
        raise ConfigError("--linear-probe-train and --linear-probe-test go together")
    _writable_output(args.output, "--output")
    _check_eval_inputs(args)
    from open_clip import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

    from ..evaluate.data import image_folder, read_lines
    from ..evaluate.linear_probe import linear_probe
    from ..evaluate.tasks import retrieval_file

    templates = read_lines(args.templates, "templates") if args.templates else [
        t("{c}") for t in OPENAI_IMAGENET_TEMPLATES]
    _check_templates(templates)
    classnames = read_lines(args.classnames, "class names") if args.classnames else None
    if args.compositional:  # a bad set fails before the model loads
        from ..evaluate.hard_negatives import compositional_items

        compositional_items(args.compositional, args.compositional_images)
    if args.segmentation_probe_train:  # so does a bad mask
        from ..evaluate.data import segmentation_folder

        for folder in (args.segmentation_probe_train, args.segmentation_probe_test):
            segmentation_folder(folder, args.segmentation_classes, args.segmentation_ignore_index)
    model, preprocess, tokenizer, args.encoder = _load(args)
    results: Dict = {"model": args.model or "(from checkpoint)", "pretrained": args.pretrained, "metrics": {}}
    if args.zeroshot_data:
        results["metrics"]["zeroshot"] = _zero_shot(model, preprocess, tokenizer, args, args.zeroshot_data,
                                                    classnames, templates)
    if args.imagenet_val:
        results["metrics"]["imagenet_zeroshot"] = _zero_shot(
            model, preprocess, tokenizer, args, args.imagenet_val, list(IMAGENET_CLASSNAMES),
            [t("{c}") for t in OPENAI_IMAGENET_TEMPLATES])
    if args.retrieval_data:
        with _bar(args, None, "retrieval") as bar:
            results["metrics"]["retrieval"] = retrieval_file(
                args.encoder, preprocess, tokenizer, args.retrieval_data, args.csv_img_key, args.csv_caption_key,
                args.retrieval_split, args.retrieval_images, args.batch_size, bar, args.csv_separator,
                args.wds_caption_key)
    if args.linear_probe_train:
        import torch

        tr_paths, tr_labels, tr_classes = image_folder(args.linear_probe_train)
        te_paths, te_labels, te_classes = image_folder(args.linear_probe_test)
        if tr_classes != te_classes:
            raise ConfigError("--linear-probe-train and --linear-probe-test have different class folders")
        if len(tr_classes) < 2:
            raise ConfigError(f"--linear-probe-train {args.linear_probe_train} holds one class folder "
                              f"({tr_classes[0]!r}): a probe over one class is right on every image; give two or more")
        tr = _images(preprocess, tr_paths, args, "probe train")
        te = _images(preprocess, te_paths, args, "probe test")
        results["metrics"]["linear_probe"] = {
            **linear_probe(tr, torch.tensor(tr_labels), te, torch.tensor(te_labels), seed=args.seed),
            "data": [args.linear_probe_train, args.linear_probe_test]}
    if args.compositional:
        from ..evaluate.tasks import compositional_set

        with _bar(args, None, "compositional") as bar:
            results["metrics"]["compositional"] = compositional_set(
                args.encoder, preprocess, tokenizer, args.compositional, args.compositional_images, args.batch_size,
                bar)
    if args.segmentation_probe_train:
        from ..evaluate.tasks import segmentation_probe

        with _bar(args, None, "segmentation probe") as bar:
            results["metrics"]["segmentation_probe"] = segmentation_probe(
                args.encoder, preprocess, args.segmentation_probe_train, args.segmentation_probe_test,
                args.segmentation_classes, args.segmentation_ignore_index, args.batch_size, bar, args.seed)
    from ..strict_json import dumps

    text = dumps(results, indent=2)
    print(text)
    if args.output:
        from ..files import atomic_write_text

        try:
            atomic_write_text(text + "\n", args.output)
        except OSError as e:
            raise ConfigError(f"--output: cannot write {args.output}: {e.strerror or e}") from None
    return 0


def _text_lines(path: str) -> List[str]:
    """``embed --texts``: one text a line, row i of OUT.npy being line i; a blank line inside the file is an
    error (dropping it would shift every later row against the file's line numbers); blank lines at its end go."""
    from ..evaluate.data import read_lines

    texts = read_lines(path, "texts")  # the file's checks: found, UTF-8, not empty
    lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    blank = [n for n, line in enumerate(lines, 1) if not line.strip()]
    if blank:
        raise ConfigError(f"--texts {path}, line {blank[0]} is blank ({len(blank)} blank line"
                          f"{'s' if len(blank) > 1 else ''}): row i of the output is line i, so each line must hold "
                          "a text; remove the blank lines")
    return texts


def cmd_embed(args: argparse.Namespace) -> int:
    from ..search.names import is_utf8

    if bool(args.images) == bool(args.texts):
        raise ConfigError("give either image files or --texts FILE")

    if Path(args.out).name in ("", "..") or args.out.endswith(("/", os.sep)):  # "out/" would write out/.npy: hidden
        raise ConfigError(f"--out {args.out}: a prefix is expected, not a folder (OUT.npy and OUT.ids.jsonl are "
                          f"written): e.g. --out {os.path.join(args.out, 'embeddings')}")
    npy, ids_file = Path(args.out + ".npy"), Path(args.out + ".ids.jsonl")
    _writable_output(str(npy), "--out")
    existing = [str(p) for p in (npy, ids_file) if p.exists()]
    if existing and not args.overwrite:
        raise ConfigError(f"--out: {' and '.join(existing)} already exist{'s' if len(existing) == 1 else ''}: name "
                          "another --out, or add --overwrite to replace them")
    precheck.files(args.images)
    precheck.lines_file(args.texts, "texts")
    _check_model(args)
    import numpy as np

    from ..files import atomic_write_bytes

    ids = list(args.images) if args.images else _text_lines(args.texts)
    model, preprocess, tokenizer, args.encoder = _load(args, tokenizer=bool(args.texts))  # BPE tables: ~0.2 s
    feats = _images(preprocess, ids, args, "embed") if args.images else _texts(tokenizer, ids, args)
    buf = io.BytesIO()
    np.save(buf, feats.numpy())
    # one JSON string a line: a file name holding a newline stays one line (row i of OUT.npy is line i); a name that
    # is not UTF-8 keeps its bytes as \udcXX escapes (os.fsencode(json.loads(line)) gives them back)
    ids_text = "".join(json.dumps(i, ensure_ascii=not is_utf8(i)) + "\n" for i in ids)
    try:  # the ids first: an interrupted write never leaves a .npy whose rows are not named
        atomic_write_bytes(ids_text.encode(), ids_file)
        atomic_write_bytes(buf.getvalue(), npy)
    except OSError as e:
        raise ConfigError(f"--out: cannot write {args.out}.*: {e.strerror or e}") from None
    print(f"wrote {npy} ({feats.shape[0]} x {feats.shape[1]}) and {ids_file} (one JSON string a line)")
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    labels = [x.strip() for x in args.labels.split(",") if x.strip()]
    if len(labels) < 2:
        raise ConfigError("--labels needs at least two comma-separated labels")
    if len(set(labels)) < len(labels):
        raise ConfigError("--labels names a label twice")
    _check_templates([args.template])
    precheck.files(args.images)
    _check_model(args)
    model, preprocess, tokenizer, args.encoder = _load(args)
    from ..evaluate.zero_shot import check_classes, classifier_weights

    check_classes(tokenizer, labels, "--labels")

    weights = classifier_weights(lambda t: model.encode_text(t), tokenizer, labels, [args.template],
                                 args.encoder.device)
    feats = _images(preprocess, list(args.images), args, "classify")
    probs = (model.logit_scale.exp().item() * feats @ weights.cpu().T).softmax(dim=1)
    for path, row in zip(args.images, probs):
        ranked = sorted(zip(labels, row.tolist()), key=lambda x: -x[1])
        print(display(path) + "\t" + "  ".join(f"{label}: {p:.3f}" for label, p in ranked))
    return 0


def cmd_tag(args: argparse.Namespace) -> int:
    precheck.files(args.images)
    _check_model(args)
    from ..evaluate.tags import TagTable, caption_words, excluded_token_ids
    from ..loss import idf_weights

    model, preprocess, tokenizer, args.encoder = _load(args)
    weights = None
    stats = args.stats
    if stats and stats["num_samples"].item() > 0:
        weights = idf_weights(stats["cap_fq"], stats["num_samples"], 1 << 30)
    tagger = TagTable(tokenizer, args.top_k, excluded_token_ids(tokenizer, weights), caption_words(stats))
    logits = _images(preprocess, list(args.images), args, "tag", kind="token_logits")
    for path, tags in zip(args.images, tagger(logits)):
        print(display(path) + "\t" + "  ".join(f"{w} ({p:.3f})" for w, p in tags))
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("eval", help="zero-shot, retrieval and linear-probe metrics (clip_benchmark names)")
    _add_model_args(p)
    p.add_argument("--zeroshot-data", default=None, help="ImageFolder tree (ROOT/CLASS/IMAGE)")
    p.add_argument("--imagenet-val", default=None, help="ImageNet val as an ImageFolder (open_clip's class names)")
    p.add_argument("--classnames", default=None, help="file: one class name a line, in sorted folder order")
    p.add_argument("--templates", default=None, help="file: one prompt template a line, with {c}")
    p.add_argument("--retrieval-data", default=None,
                   help="CSV/TSV (image, caption rows), karpathy-style JSON, or webdataset shards (.tar, pipe:)")
    p.add_argument("--wds-caption-key", default="txt", help="caption member of shard samples")
    p.add_argument("--retrieval-images", default=None, help="root of relative image paths in the retrieval file")
    p.add_argument("--retrieval-split", default="test", help="split of a Karpathy dataset_*.json")
    p.add_argument("--csv-img-key", default="filepath")
    p.add_argument("--csv-caption-key", default="title")
    p.add_argument("--csv-separator", default=None,
                   help="CSV separator (default: a tab if the header line has one, else a comma; as train)")
    p.add_argument("--linear-probe-train", default=None, help="ImageFolder tree to fit the probe on")
    p.add_argument("--linear-probe-test", default=None, help="ImageFolder tree to score it on")
    p.add_argument("--compositional", default=None, metavar="DIR|FILE",
                   help="hard negatives: a folder in SugarCrepe's layout (TYPE.json files) or a .json/.jsonl of "
                        "{image, positive, negatives, type}; accuracy per type (caption strictly above every negative)")
    p.add_argument("--compositional-images", default=None, metavar="ROOT",
                   help="root of the images the compositional set names (default: its folder; COCO val2017 for "
                        "SugarCrepe)")
    p.add_argument("--segmentation-probe-train", default=None, metavar="DIR",
                   help="images/NAME.* + annotations/NAME.png (index PNG) to fit the dense linear probe on")
    p.add_argument("--segmentation-probe-test", default=None, metavar="DIR", help="the same layout, to score it on "
                                                                                  "(mIoU, pixel accuracy)")
    p.add_argument("--segmentation-classes", type=_positive, default=None,
                   help="number of classes (default: the largest mask value + 1, the ignore index aside)")
    p.add_argument("--segmentation-ignore-index", type=int, default=255, help="mask value left unscored")
    p.add_argument("--seed", type=seed_type, default=0)
    p.add_argument("--output", default=None, help="also write the JSON here")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("embed", help="images or texts -> OUT.npy + OUT.ids.jsonl (row i: line i, a JSON string)")
    _add_model_args(p)
    p.add_argument("images", nargs="*", help="image files")
    p.add_argument("--texts", default=None, help="file: one text a line")
    p.add_argument("--out", required=True, help="output prefix")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT.npy / OUT.ids.jsonl")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("classify", help="zero-shot probabilities of images over --labels")
    _add_model_args(p)
    p.add_argument("images", nargs="+")
    p.add_argument("--labels", required=True, help='comma-separated, e.g. "a dog,a cat,a bird"')
    p.add_argument("--template", default="a photo of {c}.", help="prompt template with {c}")
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("tag", help="the classification head as an image tagger: top caption words per image")
    _add_model_args(p)
    p.add_argument("images", nargs="+")
    p.add_argument("--top-k", type=_positive, default=5)
    p.set_defaults(func=cmd_tag)
