"""``superclip flops | export | models``: tools around model files and names."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError
from ..strict_json import dumps


def _cmd_flops(args: argparse.Namespace) -> int:
    from .precheck import model_source

    for name in args.models:  # an unknown name or a bad config: one line before torch
        model_source(name, None)
    from ..flops import flops_table

    for name in args.models:
        t = flops_table(name)
        print(f"{name}: multiply-adds per image-text pair (GMACs; the paper's Table 3 labels these GFLOPs)")
        print(f"  vision  {t['vision_gmacs']:10.3f}")
        print(f"  text    {t['text_gmacs']:10.3f}")
        print(f"  head    {t['head_gmacs']:10.3f}   ({t['head_share_percent']:.3f}% of the total)")
        print(f"  total   {t['total_gmacs']:10.3f}   (+{t['attention_gmacs']:.3f} in attention score/value "
              "matmuls, not counted by the paper's convention)")
        if args.json:
            print(dumps({"model": name, **t}))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from ..export.staging import existing_files, staged
    from .precheck import lean_open_clip, model_source

    out = Path(args.out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{args.out_dir} exists and is not a folder: name a folder to export into")
    present = existing_files(out)
    if present and not args.overwrite:  # before any work: a user's README.md or config.json is never replaced
        shown = ", ".join(present[:4]) + (f" and {len(present) - 4} more" if len(present) > 4 else "")
        raise ConfigError(f"{out} is not empty ({shown}): export into a new or empty folder, or add --overwrite to "
                          "replace the files the export writes (other files are left alone)")
    hint = model_source(args.model, args.checkpoint)
    if args.format != "transformers":  # the transformers export imports transformers itself
        lean_open_clip(hint)
    from ..weights import load_model

    model, stats, info = load_model(args.model, pretrained=args.checkpoint, cache_dir=args.cache_dir)
    model.eval()
    if args.format == "transformers":
        from ..export.to_transformers import export_transformers

        with staged(out) as stage:
            export_transformers(model, stage, stats)
        how = f"transformers.CLIPModel.from_pretrained('{out}') (or CLIPVisionModel)"
    elif args.format == "onnx":
        from ..export.to_onnx import export_onnx

        with staged(out) as stage:
            export_onnx(model, stage)
        how = f"onnxruntime.InferenceSession('{out}/image_encoder.onnx') and text_encoder.onnx"
    else:
        from ..export import export_folder, run_metrics

        train = dict(info.get("train_config") or {}, steps=info.get("step"), world_size=info.get("world_size"))
        metrics = run_metrics(info.get("path"), info.get("step")) if info.get("train_config") else None
        with staged(out) as stage:
            export_folder(model, stage, stats, train if info.get("train_config") else None, metrics,
                          name=out.resolve().name)
        how = f"open_clip.create_model_and_transforms('local-dir:{out}'); superclip --pretrained {out} (with the head)"
    print(f"wrote {args.format} export {out}: {how}")
    if args.push_to_hub:
        from ..hub import push_folder

        print(f"pushed to hf-hub:{args.push_to_hub}: {push_folder(out, args.push_to_hub, args.private)}")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from ..model_names import list_models

    print("\n".join(list_models()))
    return 0


def add_model_tools(sub) -> None:
    p = sub.add_parser("flops", help="multiply-adds of vision / text / head per image-text pair")
    p.add_argument("models", nargs="+", metavar="MODEL", help="model name or JSON path")
    p.add_argument("--json", action="store_true", help="also print one JSON line per model")
    p.set_defaults(func=_cmd_flops)

    p = sub.add_parser("export", help="write a model folder: open_clip / hub (safetensors + head), transformers, ONNX")
    p.add_argument("checkpoint", help="superclip, official SuperCLIP or open_clip checkpoint, a model folder, "
                                      "or hf-hub:ORG/REPO[/FILE]")
    p.add_argument("out_dir", help="folder to write")
    p.add_argument("--format", default="open_clip", choices=["open_clip", "transformers", "onnx"],
                   help="open_clip: open_clip_config.json + open_clip_model.safetensors + superclip_head.safetensors + "
                        "README.md (what open_clip's hf-hub: / local-dir: read); transformers: CLIPModel folder; "
                        "onnx: image and text encoders")
    p.add_argument("--model", default=None, help="model config (needed when the checkpoint carries none)")
    p.add_argument("--push-to-hub", default=None, metavar="ORG/REPO", help="upload the folder to this hub repository")
    p.add_argument("--private", action="store_true", help="with --push-to-hub: create the repository private")
    p.add_argument("--cache-dir", default=None, help="hub cache for hf-hub: sources (default: huggingface_hub's)")
    p.add_argument("--overwrite", action="store_true", help="export into a folder that is not empty, replacing the "
                                                            "files of the same names (others are left alone)")
    p.set_defaults(func=_cmd_export)


def add_listing(sub) -> None:
    p = sub.add_parser("models", help="list the model configs shipped with superclip")
    p.set_defaults(func=_cmd_models)
