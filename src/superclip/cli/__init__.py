"""The ``superclip`` command. The CLI owns the console: library modules only log.

User mistakes (``SuperCLIPError``) print one line on stderr and exit with code 2; ``--debug`` shows the traceback.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import List, Optional

from ..errors import SuperCLIPError


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, with a usage mistake (unknown flag, bad value) on one line and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The whole command line. Building it imports no torch, open_clip or numpy: ``--help``, a flag error and
    ``superclip models`` answer at once; each command imports what it needs when it runs."""
    from . import data, evaluate, search, tools, train

    parser = OneLineErrorParser(prog="superclip", description="SuperCLIP on open_clip towers")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True)
    tools.add_model_tools(sub)  # flops, export
    train.add_parsers(sub)  # train, demo
    evaluate.add_parsers(sub)  # eval, embed, classify, tag
    search.add_parsers(sub)  # index build|add|remove|optimize, serve
    data.add_parsers(sub)  # data synth
    tools.add_listing(sub)  # models
    return parser


def one_line(error: Exception) -> str:
    """The message of ``error`` on one line; an error re-raised from a data-loader worker carries the worker's
    traceback in its text, and only its last line is the message."""
    text = str(error).strip()
    if "Traceback" in text:
        text = text.splitlines()[-1]
        prefix = f"{type(error).__module__}.{type(error).__name__}: "
        text = text[len(prefix):] if text.startswith(prefix) else text
    return " ".join(text.split())


class _CtrlC:
    """SIGINT raises KeyboardInterrupt as usual and is also remembered: a library that swallows the exception
    (some guard their optional imports with a bare ``except``) cannot turn a Ctrl-C into exit 0, and whatever the
    interrupt breaks on its way out (a module left half-imported recurses; a library re-raises its own error) is
    reported as the interrupt, not as that error's traceback."""

    def __init__(self):
        self.seen = False

    def __call__(self, signum, frame):
        self.seen = True
        raise KeyboardInterrupt

    def install(self):
        """Installs this handler (on the main thread, over Python's default one or an earlier ``_CtrlC``); returns
        a function that puts back what was there, so ``main()`` called in-process leaves no handler behind."""
        import signal
        import threading

        before = signal.getsignal(signal.SIGINT)
        if threading.current_thread() is not threading.main_thread() or \
                not (before is signal.default_int_handler or isinstance(before, _CtrlC)):
            return lambda: None
        signal.signal(signal.SIGINT, self)
        return lambda: signal.signal(signal.SIGINT, before)


def main(argv: Optional[List[str]] = None) -> int:
    ctrl_c = _CtrlC()
    restore = ctrl_c.install()
    try:
        return _main(argv, ctrl_c)
    finally:
        restore()


def _main(argv: Optional[List[str]], ctrl_c: "_CtrlC") -> int:
    try:  # building the parser imports torch and open_clip: seconds in which a Ctrl-C lands
        parser = build_parser()
        args = parser.parse_args(argv)
        if ctrl_c.seen:
            raise KeyboardInterrupt
    except BaseException as e:
        if not (ctrl_c.seen or isinstance(e, KeyboardInterrupt)):
            raise
        print("superclip: interrupted", file=sys.stderr)
        return 130
    logging.basicConfig(level=logging.INFO if args.debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        rc = args.func(args)
        if ctrl_c.seen:
            raise KeyboardInterrupt
        return rc
    except BaseException as e:
        if ctrl_c.seen or isinstance(e, KeyboardInterrupt):
            if args.debug and not isinstance(e, KeyboardInterrupt):
                raise
            print(f"superclip {args.command}: interrupted", file=sys.stderr)
            return 130
        if isinstance(e, SuperCLIPError) and not args.debug:
            print(f"superclip {args.command}: error: {one_line(e)}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
