"""``superclip index build | add | remove | optimize`` and ``superclip serve``. The console is ours here."""
from __future__ import annotations

import os
import sys

from ..errors import ConfigError
from . import precheck
from .args import at_least
from .args import port as _port
from .args import positive as _positive
from .args import size as _size


def _job_options(args):
    from ..search.collection import JobOptions

    return JobOptions(part_size=args.part_size, top_k=args.top_k, dtype=args.dtype,
                      max_index_memory=args.max_index_memory, csv_img_key=args.csv_img_key,
                      csv_separator=args.csv_separator, thumb_size=args.thumb_size)


def _model_spec(model):
    """A model given as a JSON file is stored resolved (the index is used from other folders); a name as it is."""
    return os.path.realpath(model) if model and os.path.isfile(model) else model


def skipped_summary(counts) -> str:
    from ..search.sources import REASONS

    total = sum(counts.values())
    if not total:
        return "no file skipped"
    parts = ", ".join(f"{n} {REASONS[r]}" for r, n in sorted(counts.items(), key=lambda x: (-x[1], x[0])))
    return f"{total} files not indexed ({parts})"


def _check_job(args, build: bool) -> None:
    """What the command line alone reveals (.precheck), before torch; then open_clip as lean as the model allows."""
    if not build:
        precheck.index_folder(args.dir)
        precheck.index_sources(args.sources)
        return
    if args.model is None and args.pretrained is None:
        raise ConfigError("name a model (--model) and/or a checkpoint (--pretrained)")
    if args.pretrained is not None and args.random_weights is not None:
        raise ConfigError("--random-weights draws the weights: it cannot go with --pretrained")
    if args.pretrained is None and args.random_weights is None:
        raise ConfigError("no checkpoint (--pretrained): an index of random weights finds nothing; to build one "
                          "on purpose (a test, a benchmark), add --random-weights SEED")
    from ..search.layout import Layout

    layout = Layout(args.dir)
    if not layout.manifest.exists() and layout.foreign():  # before the lock: nothing is written into it
        raise ConfigError(f"{layout.root} is not empty and holds no index: name a new folder")
    precheck.index_sources(args.sources)
    precheck.lean_open_clip(precheck.model_source(args.model, args.pretrained))


def _run_job(args, build: bool) -> int:
    _check_job(args, build)
    from tqdm import tqdm

    from .. import distributed
    from ..devices import resolve_device
    from ..evaluate.tags import caption_words
    from ..search.collection import finish, start
    from ..search.job import Embedder, index_model, load_for_search
    from ..search.layout import FolderLock, Layout
    from ..search.sources import resolve

    layout = Layout(args.dir)
    if build:
        model, pretrained, dtype, top_k = _model_spec(args.model), args.pretrained, args.dtype, args.top_k
        seed = args.random_weights
    elif not layout.root.is_dir():
        raise layout.no_index()
    device = resolve_device(args.device, distributed.local_rank())  # before the lock: a bad one leaves no folder
    rank, _ = distributed.init_from_env(device.type)
    lock = None
    try:
        if rank == 0:  # the lock before the manifest is read: a build or add may be writing it
            lock = FolderLock(layout.root, create=build)
        if not build:
            manifest = layout.read_manifest()
            if manifest.get("reembed"):
                raise ConfigError(f"{args.dir} is being re-embedded with another checkpoint: finish that first "
                                  f"(rerun superclip index reembed {args.dir} --pretrained ...)")
            model, dtype, top_k = manifest["model"], manifest["dtype"], manifest["top_k"]
            args.thumb_size = manifest.get("thumb_size", 0)
        if device.type == "cpu":
            from ..cpu import share_cores_with_workers

            share_cores_with_workers(args.workers)
        if build:
            net, preprocess, tokenizer, weights, info = load_for_search(model, pretrained, str(device), args.precision,
                                                                        args.cache_dir, seed)
        else:
            net, preprocess, tokenizer, weights, info = index_model(manifest, args.dir, str(device), args.precision,
                                                                    args.cache_dir)
        embedder = Embedder(net, preprocess, tokenizer, device, args.precision, top_k, dtype, args.batch_size,
                            args.workers, weights, args.thumb_size, caption_words(info["token_stats"]))
        model_info = {"model": model, "pretrained": info.get("path"), "checkpoint_sha256": info["sha256"],
                      "dim": embedder.dim}
        if build and seed is not None:
            model_info["random_weights_seed"] = seed
        args.top_k, args.dtype = top_k, dtype
        opts = _job_options(args)
        sources = [resolve(s) for s in args.sources]
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
        print(f"{args.dir}: {report['live']} items; {what}; {skipped_summary(report['skipped'])} (listed in "
              f"{layout.skipped}); embedded {report['embedded']} images in {report['embed_seconds']:.1f} s "
              f"({rate:.1f} images/s)")
    return 0


def cmd_build(args) -> int:
    return _run_job(args, build=True)


def cmd_add(args) -> int:
    return _run_job(args, build=False)


def cmd_remove(args) -> int:
    precheck.index_folder(args.dir)
    from ..search.manage import remove

    n = remove(args.dir, list(args.targets))
    print(f"{args.dir}: {n} items removed (they no longer appear in results) and excluded: later builds and adds "
          f"leave them out (superclip index excluded {args.dir} lists exclusions, superclip index restore undoes one)")
    return 0


def cmd_restore(args) -> int:
    precheck.index_folder(args.dir)
    from ..search.manage import restore

    n = restore(args.dir, list(args.targets))
    print(f"{args.dir}: {n} exclusion{'s' if n != 1 else ''} forgotten: the next superclip index add {args.dir} "
          "SOURCE... indexes those files again (with new ids)")
    return 0


def cmd_excluded(args) -> int:
    precheck.index_folder(args.dir)
    import time

    from ..search.manage import excluded
    from ..search.names import display

    rows = excluded(args.dir)
    for target, item, made in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(made))
        print(f"{display(target)}\t{'id ' + str(item) if item is not None else 'path'}\t{when}")
    if not rows:
        print(f"{args.dir}: nothing is excluded", file=sys.stderr)
    return 0


def cmd_stats(args) -> int:
    precheck.index_folder(args.dir)
    import json

    from ..search.manage import stats

    st = stats(args.dir)
    if args.json:
        print(json.dumps(st, indent=1))
        return 0
    print(f"{args.dir}: {st['live']} items ({st['removed']} removed or replaced), index {st['index']}, model "
          f"{st['model']} ({st['pretrained'] or 'random weights'})")
    for source, n in st["per_source"].items():
        print(f"  {n if n is not None else '?':>8} items from {source}")
    print(f"  not indexed: {skipped_summary(st['skipped'])}; {st['exclusions']} exclusions")
    print(f"  since indexed: {st['unchanged']} unchanged, {st['changed_since_indexed']} changed, "
          f"{st['gone_since_indexed']} gone (superclip index add takes the changes in)")
    return 0


def cmd_relink(args) -> int:
    if not os.path.exists(os.path.realpath(args.pretrained)):  # manage.relink's first check
        from ..search.names import display

        raise ConfigError(f"--pretrained: {display(args.pretrained)} not found")
    precheck.index_folder(args.dir)
    from ..search.manage import relink

    path = relink(args.dir, args.pretrained)
    print(f"{args.dir}: checkpoint now read from {path} (same sha256)")
    return 0


def cmd_reembed(args) -> int:
    if args.pretrained is None:
        raise ConfigError("name the new checkpoint (--pretrained)")
    precheck.index_folder(args.dir)
    precheck.model_source(args.model, args.pretrained)
    import torch
    from tqdm import tqdm

    from ..evaluate.tags import caption_words
    from ..search.collection import JobOptions
    from ..search.job import Embedder, load_for_search
    from ..search.layout import Layout
    from ..search.reembed import reembed

    if args.pretrained is None:
        raise ConfigError("name the new checkpoint (--pretrained)")
    manifest = Layout(args.dir).read_manifest()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = _model_spec(args.model) if args.model else (None if args.pretrained else manifest["model"])
    net, preprocess, tokenizer, weights, info = load_for_search(model, args.pretrained, str(device), args.precision,
                                                                args.cache_dir)
    embedder = Embedder(net, preprocess, tokenizer, device, args.precision, manifest["top_k"], manifest["dtype"],
                        args.batch_size, args.workers, weights, manifest.get("thumb_size", 0),
                        caption_words(info["token_stats"]))
    model_info = {"model": model, "pretrained": info.get("path"), "checkpoint_sha256": info["sha256"],
                  "dim": embedder.dim}
    opts = JobOptions(part_size=manifest.get("part_size", 10_000), max_index_memory=args.max_index_memory)
    with tqdm(total=None, unit="img", desc="index reembed", dynamic_ncols=True, disable=not args.progress,
              file=sys.stderr) as bar:
        opts.progress, opts.on_total = bar.update, lambda total: bar.reset(total=total)
        report = reembed(args.dir, embedder, model_info, opts)
    idx = report["index"]
    print(f"{args.dir}: {report.get('reembedded', report['live'])} items embedded again with "
          f"{info.get('path') or 'random weights'} (ids kept); {report.get('removed', 0)} items whose image changed "
          f"or is gone since it was indexed removed (superclip index add takes them in again); index {idx['kind']}, "
          f"{report['live']} items")
    return 0


def cmd_optimize(args) -> int:
    precheck.index_folder(args.dir)
    from ..search.collection import optimize

    info = optimize(args.dir, args.max_index_memory)
    print(f"{args.dir}: main index {info['kind']} over {info['count']} items, recall@10 "
          f"{info['recall_at_10'] if info['recall_at_10'] is not None else float('nan'):.3f} vs exact")
    return 0


def _listen(host: str, port: int, reuse_port: bool = False, listen: bool = True):
    """A listening socket on (host, port), or a one-line error (the port is taken, the address is not this
    machine's), before anything is loaded or announced. ``reuse_port``: SO_REUSEPORT, so that each worker process
    of ``serve --workers N`` listens on a socket of its own at the same port and the kernel spreads connections
    among them (one shared socket lets whichever process wakes first accept every connection of a burst);
    ``listen=False``: bound only (the port is taken, no connection queues on it)."""
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        if listen:
            sock.listen(128)
    except OSError as e:
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


def serve_workers(requested, device: str) -> int:
    """How many server processes ``serve`` runs: ``--workers`` when given, else one a core (at most 4) on the CPU
    and one on a GPU. One process runs Python (HTTP, JSON, the catalog) on one core at a time, whatever its threads:
    on 2 cores a Tiny text query costs ~2.2 ms of CPU, and at concurrency 8 one process answered 558 requests/s,
    two 754, in the same run (``bench/search_http.py --workers 1,default``)."""
    from ..cpu import cores

    if requested:
        return requested
    return 1 if device != "cpu" or not hasattr(os, "fork") else min(4, cores())


def _app(args, device: str, threads: int):
    from ..search.server import ServeOptions, create_app, settle

    app = create_app(args.dir, ServeOptions(device=device, max_upload_bytes=args.max_upload,
                                            cors_origins=args.cors_origin or [], model_threads=threads,
                                            map_vectors=args.map_vectors))
    settle()
    return app


def _run(app, sock) -> None:
    import uvicorn

    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


def _serve_child(args, device: str, host: str, port: int, threads: int, report: int) -> int:
    """A worker process of ``serve --workers N`` (forked before anything is loaded): its own socket at the port,
    its own model and searcher. Tells its parent through the pipe ``report`` when it is ready to answer (``ready``)
    or why it cannot (``error MESSAGE``: the parent prints it, one line); ends with its parent (PR_SET_PDEATHSIG)."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: no orphan keeps the port
    except (OSError, AttributeError):
        pass
    from ..errors import SuperCLIPError
    from . import one_line

    def tell(line: str) -> None:
        os.write(report, (line[:3000] + "\n").encode("utf-8", "replace"))  # under PIPE_BUF: one write, whole

    try:
        sock = _listen(host, port, reuse_port=True)
        app = _app(args, device, threads)
        tell("ready")
        os.close(report)
        _run(app, sock)
        return 0
    except KeyboardInterrupt:
        return 130
    except SuperCLIPError as e:
        tell(f"error {one_line(e)}")
        return 2
    except BaseException:  # noqa: BLE001 - the worker's traceback, then its parent stops the others
        import traceback

        traceback.print_exc()
        return 1


def _start_workers(args, device: str, port: int, threads: int, workers: int):
    """Forks the workers and waits until each is ready: (their pids, None, _), or (their pids, the one-line error of
    the first that could not start, whether it was the user's mistake)."""
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    children = set()
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            rc = _serve_child(args, device, args.host, port, threads, write_end)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(rc)
        children.add(pid)
    os.close(write_end)
    ready, error = 0, None
    with os.fdopen(read_end, "r", encoding="utf-8", errors="replace") as pipe:
        for line in pipe:  # ends when every worker has said its line or ended
            if line.startswith("error "):
                error = line[len("error "):].strip()
                break
            ready += line.strip() == "ready"
            if ready == workers:
                break
    if error is None and ready < workers:  # not a user mistake: the worker's traceback is above it
        return children, "a worker process ended before it was ready (its output above says why)", False
    return children, error, True


def _supervise(children, stop_now: bool = False) -> int:
    """Waits for the worker processes. One that ends by itself stops the others (the server does not go on at part
    of its capacity) and its exit code is returned (1 for a signal); SIGTERM to this process reaches every worker
    (0), and so does Ctrl-C (KeyboardInterrupt: 130)."""
    import signal

    def stop():
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    stopping = False

    def terminate(*_):
        nonlocal stopping
        stopping = True
        stop()

    before = signal.signal(signal.SIGTERM, terminate)
    code, interrupted = 0, False
    if stop_now:
        terminate()
    try:
        while children:
            try:
                pid, status = os.wait()
            except KeyboardInterrupt:
                interrupted = True
                stop()
                continue
            except ChildProcessError:
                break
            children.discard(pid)
            rc = os.waitstatus_to_exitcode(status)
            if rc and not code and not interrupted and not stopping:
                if rc != 2:  # 2: the worker has said why in one line
                    how = f"exit code {rc}" if rc > 0 else f"signal {signal.Signals(-rc).name}"
                    print(f"superclip serve: worker process {pid} ended ({how}): stopping the others",
                          file=sys.stderr)
                code = rc if rc > 0 else 1
                stop()
    finally:
        signal.signal(signal.SIGTERM, before)
    if interrupted:
        raise KeyboardInterrupt
    return code


def cmd_serve(args) -> int:
    if args.device == "cpu":  # the default, always there: the folder's check needs no torch
        precheck.index_folder(args.dir)
    from ..devices import resolve_device

    device = str(resolve_device(args.device))  # a device this machine lacks: one line, before the port is taken
    precheck.index_folder(args.dir)
    workers = serve_workers(args.workers, device)
    from ..search.server import model_threads

    threads = args.model_threads or model_threads(workers)
    # several workers: the parent's socket is bound (the port is ours) and takes no connection, each worker listens
    # on a socket of its own
    sock = _listen(args.host, args.port, reuse_port=workers > 1, listen=workers == 1)
    try:
        port = sock.getsockname()[1]
        if workers == 1:
            app = _app(args, device, threads)
        else:
            children, error, mistake = _start_workers(args, device, port, threads, workers)
            if error is not None:
                _supervise(children, stop_now=True)
                if mistake:
                    raise ConfigError(error)
                print(f"superclip serve: {error}", file=sys.stderr)
                return 1
        if args.host not in ("127.0.0.1", "localhost", "::1"):
            print(f"superclip serve: listening on {args.host}: anyone who can reach it can search {args.dir} and see "
                  "its images", file=sys.stderr)
        how = "" if workers == 1 else \
            f"; {workers} worker processes, {threads} model thread{'s' if threads > 1 else ''} each"
        print(f"serving {args.dir} on http://{args.host}:{port}/ (API docs at /docs{how})", file=sys.stderr)
        if workers == 1:
            _run(app, sock)
            return 0
        return _supervise(children)
    finally:
        sock.close()


def _model_flags(p, build: bool) -> None:
    if build:
        p.add_argument("--model", default=None, help="model name or JSON (default: the checkpoint's own config)")
        p.add_argument("--pretrained", default=None, help="checkpoint, model folder or hf-hub:ORG/REPO[/FILE]")
        p.add_argument("--dtype", default="float16", choices=["float16", "float32"], help="stored embeddings")
        p.add_argument("--top-k", type=_positive, default=5, help="head tags kept per image")
        p.add_argument("--thumb-size", type=at_least(0), default=256,
                       help="thumbnails made while embedding, at most this many pixels a side (0: none)")
        p.add_argument("--random-weights", type=at_least(0), default=None, metavar="SEED",
                       help="no checkpoint: draw the model's weights from SEED (recorded; for tests and benchmarks)")
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
    for name, func, targets, text in (
            ("remove", cmd_remove, True, "remove items by id or path (a file, a folder, a shard, URL#KEY) and exclude "
                                         "them from later adds"),
            ("restore", cmd_restore, True, "undo a removal's exclusion (by the path or id removed): the next add "
                                           "takes those files again"),
            ("excluded", cmd_excluded, False, "list the exclusions (path or id, when) that later adds honour"),
            ("stats", cmd_stats, False, "items per source, files not indexed by reason, exclusions, changed since "
                                        "indexed")):
        q = isub.add_parser(name, help=text)
        q.add_argument("dir", metavar="DIR")
        if targets:
            q.add_argument("targets", nargs="+", metavar="ID_OR_PATH")
        q.set_defaults(func=func)
    q.add_argument("--json", action="store_true", help="one JSON object")  # stats
    q = isub.add_parser("relink", help="point the index at its checkpoint's new place (same sha256)")
    q.add_argument("dir", metavar="DIR")
    q.add_argument("--pretrained", required=True, help="the checkpoint's new path")
    q.set_defaults(func=cmd_relink)
    q = isub.add_parser("reembed", help="embed every item again with another checkpoint, in place (ids kept; "
                                        "resumable)")
    q.add_argument("dir", metavar="DIR")
    q.add_argument("--model", default=None, help="model name or JSON (default: the checkpoint's own config)")
    q.add_argument("--pretrained", default=None, help="the new checkpoint, model folder or hf-hub:ORG/REPO[/FILE]")
    q.add_argument("--cache-dir", default=None, help="hub cache for hf-hub: names")
    q.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available)")
    q.add_argument("--precision", default="fp32", choices=["fp32", "amp", "amp_bf16", "bf16"])
    q.add_argument("--batch-size", type=_positive, default=64)
    q.add_argument("--workers", type=int, default=2, help="data-loader workers decoding images")
    q.add_argument("--max-index-memory", type=_size, default="4G", help="memory budget of the faiss index")
    q.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    q.set_defaults(func=cmd_reembed)
    q = isub.add_parser("optimize", help="fold additions and removals into a new main index")
    q.add_argument("dir", metavar="DIR")
    q.add_argument("--max-index-memory", type=_size, default=None, help="default: the build's")
    q.set_defaults(func=cmd_optimize)

    p = sub.add_parser("serve", help="a search page and JSON API over an index folder")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s: this machine only)")
    p.add_argument("--port", type=_port, default=8000, help="TCP port (default %(default)s; 0: any free one)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-upload", type=_size, default="20M", help="largest image upload (default %(default)s)")
    p.add_argument("--cors-origin", action="append", default=None, metavar="ORIGIN",
                   help="allow cross-origin requests from ORIGIN (repeatable; none by default)")
    p.add_argument("--workers", type=_positive, default=None,
                   help="server processes, each with its own model (default: one a core, at most 4, on the CPU; 1 on "
                        "a GPU)")
    p.add_argument("--model-threads", type=_positive, default=None,
                   help="torch threads of a model pass in each process (default: the cores left to it)")
    p.add_argument("--map-vectors", action="store_true",
                   help="read stored vectors from the parts mapped into memory: faster queries on a large ivfpq "
                        "index (p50 6.6 against 16.5 ms at 10M), but the parts' pages then count in serve's resident "
                        "memory (10.1 GiB file-backed at 10M, against 0.6; page cache either way)")
    p.set_defaults(func=cmd_serve)


