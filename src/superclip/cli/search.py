"""``superclip index build | add | remove | optimize`` and ``superclip serve``. The console is ours here."""
from __future__ import annotations

import os
import sys

from ..errors import ConfigError
from .args import positive as _positive
from .args import size as _size


def _job_options(args):
    from ..search.collection import JobOptions

    return JobOptions(part_size=args.part_size, top_k=args.top_k, dtype=args.dtype,
                      max_index_memory=args.max_index_memory, csv_img_key=args.csv_img_key,
                      csv_separator=args.csv_separator)


def _run_job(args, build: bool) -> int:
    import torch
    from tqdm import tqdm

    from .. import distributed
    from ..search.collection import checkpoint_hash, finish, start
    from ..search.job import Embedder, load_for_search
    from ..search.layout import FolderLock, Layout

    layout = Layout(args.dir)
    if build:
        model, pretrained, dtype, top_k = args.model, args.pretrained, args.dtype, args.top_k
        if model is None and pretrained is None:
            raise ConfigError("name a model (--model) and/or a checkpoint (--pretrained)")
        if not layout.manifest.exists() and layout.foreign():  # before the lock: nothing is written into it
            raise ConfigError(f"{layout.root} is not empty and holds no index: name a new folder")
    elif not layout.root.is_dir():
        raise layout.no_index()
    rank, _ = distributed.init_from_env("cuda" if args.device and args.device.startswith("cuda") else "cpu")
    lock = None
    try:
        if rank == 0:  # the lock before the manifest is read: a build or add may be writing it
            lock = FolderLock(layout.root, create=build)
        if not build:
            manifest = layout.read_manifest()
            model, pretrained = manifest["model"], manifest["pretrained"]
            dtype, top_k = manifest["dtype"], manifest["top_k"]
        device = distributed.resolve_device(args.device, distributed.local_rank())
        if device.type == "cpu" and args.workers > 0 and "OMP_NUM_THREADS" not in os.environ:
            # the decoding workers take cores too: torch threads on every core as well: 28 vs 43 images/s here
            torch.set_num_threads(max(1, (os.cpu_count() or 1) - args.workers))
        net, preprocess, tokenizer, weights, info = load_for_search(model, pretrained, str(device), args.precision,
                                                                    args.cache_dir)
        digest = checkpoint_hash(info.get("path"))
        if not build and digest != manifest["checkpoint_sha256"]:
            raise ConfigError(f"the checkpoint {pretrained} changed since {args.dir} was built (sha256 differs): "
                              "build a new index with it")
        embedder = Embedder(net, preprocess, tokenizer, device, args.precision, top_k, dtype, args.batch_size,
                            args.workers, weights)
        model_info = {"model": model, "pretrained": info.get("path"), "checkpoint_sha256": digest,
                      "dim": embedder.dim}
        args.top_k, args.dtype = top_k, dtype
        opts = _job_options(args)
        sources = [s if s.startswith("pipe:") else os.path.abspath(s) for s in args.sources]
        manifest = start(args.dir, sources, opts, model_info, build)
        with tqdm(total=None, unit="img", desc="index " + ("build" if build else "add"), dynamic_ncols=True,
                  disable=not (args.progress and rank == 0), file=sys.stderr) as bar:
            opts.progress, opts.on_total = bar.update, lambda total: bar.reset(total=total)
            report = finish(layout, manifest, embedder, opts, index_all=build)
    finally:
        if lock is not None:
            lock.release()
        distributed.destroy()
    if rank == 0:
        idx = report.get("index") or {}
        recall = idx.get("recall_at_10")
        what = (f"index {idx.get('kind')} (recall@10 {recall:.3f} vs exact)" if recall is not None
                else "additions searched exactly until superclip index optimize") if build else \
            f"{report.get('added', 0)} added, {manifest.get('removed_now', 0)} removed; additions are searched " \
            "exactly until superclip index optimize"
        rate = report["embedded"] / report["embed_seconds"] if report["embedded"] else 0.0
        print(f"{args.dir}: {report['live']} items; {what}; {report['skipped']} unreadable images skipped "
              f"(listed in {layout.skipped}); embedded {report['embedded']} images in {report['embed_seconds']:.1f} s "
              f"({rate:.1f} images/s)")
    return 0


def cmd_build(args) -> int:
    return _run_job(args, build=True)


def cmd_add(args) -> int:
    return _run_job(args, build=False)


def cmd_remove(args) -> int:
    from ..search.collection import remove

    n = remove(args.dir, list(args.targets))
    print(f"{args.dir}: {n} items removed (they no longer appear in results)")
    return 0


def cmd_optimize(args) -> int:
    from ..search.collection import optimize

    info = optimize(args.dir, args.max_index_memory)
    print(f"{args.dir}: main index {info['kind']} over {info['count']} items, recall@10 "
          f"{info['recall_at_10'] if info['recall_at_10'] is not None else float('nan'):.3f} vs exact")
    return 0


def cmd_serve(args) -> int:
    import uvicorn

    from ..search.server import ServeOptions, create_app

    app = create_app(args.dir, ServeOptions(device=args.device, max_upload_bytes=args.max_upload,
                                            cors_origins=args.cors_origin or []))
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"superclip serve: listening on {args.host}: anyone who can reach it can search {args.dir} and see "
              "its images", file=sys.stderr)
    print(f"serving {args.dir} on http://{args.host}:{args.port}/ (API docs at /docs)", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def _model_flags(p, build: bool) -> None:
    if build:
        p.add_argument("--model", default=None, help="model name or JSON (default: the checkpoint's own config)")
        p.add_argument("--pretrained", default=None, help="checkpoint, model folder or hf-hub:ORG/REPO[/FILE]")
        p.add_argument("--dtype", default="float16", choices=["float16", "float32"], help="stored embeddings")
        p.add_argument("--top-k", type=_positive, default=5, help="head tags kept per image")
    p.add_argument("--cache-dir", default=None, help="hub cache for hf-hub: names")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "amp", "amp_bf16", "bf16"])
    p.add_argument("--batch-size", type=_positive, default=64)
    p.add_argument("--workers", type=int, default=2, help="data-loader workers decoding images")
    p.add_argument("--part-size", type=_positive, default=10_000, help="images per part (the unit of resuming)")
    p.add_argument("--max-index-memory", type=_size, default="4G",
                   help="memory budget of the index: an HNSW graph while it fits, IVF-PQ on disk beyond (512M, 4G)")
    p.add_argument("--csv-img-key", default="filepath")
    p.add_argument("--csv-separator", default=None)
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def add_parsers(sub) -> None:
    p = sub.add_parser("index", help="embed a collection into a searchable index (resumable; torchrun shares parts)")
    isub = p.add_subparsers(dest="index_command", required=True)
    q = isub.add_parser("build", help="a new index over image folders, CSV/TSV files and webdataset shards",
                        description="Killed and rerun, it redoes only unfinished parts. Many processes: torchrun "
                                    "--nproc_per_node N -m superclip index build ...")
    q.add_argument("sources", nargs="+", metavar="SOURCE", help="image folder, .csv/.tsv, image, or shard pattern")
    q.add_argument("--out", dest="dir", required=True, help="index folder (new, or an interrupted build's)")
    _model_flags(q, build=True)
    q.set_defaults(func=cmd_build)
    q = isub.add_parser("add", help="embed only what is new or changed in SOURCEs (files gone from a folder are "
                                    "removed)")
    q.add_argument("dir", metavar="DIR")
    q.add_argument("sources", nargs="+", metavar="SOURCE")
    _model_flags(q, build=False)
    q.set_defaults(func=cmd_add)
    q = isub.add_parser("remove", help="remove items by id or path (a file, or everything under a folder)")
    q.add_argument("dir", metavar="DIR")
    q.add_argument("targets", nargs="+", metavar="ID_OR_PATH")
    q.set_defaults(func=cmd_remove)
    q = isub.add_parser("optimize", help="fold additions and removals into a new main index")
    q.add_argument("dir", metavar="DIR")
    q.add_argument("--max-index-memory", type=_size, default=None, help="default: the build's")
    q.set_defaults(func=cmd_optimize)

    p = sub.add_parser("serve", help="a search page and JSON API over an index folder")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-upload", type=_size, default="20M", help="largest image upload (default %(default)s)")
    p.add_argument("--cors-origin", action="append", default=None, metavar="ORIGIN",
                   help="allow cross-origin requests from ORIGIN (repeatable; none by default)")
    p.set_defaults(func=cmd_serve)


