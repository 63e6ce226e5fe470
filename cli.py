"""The ``cellprofiler-omero`` command: one entry point, one subcommand per job.

Conventions: ``--help`` everywhere; exit 0 on success; on failure one clear line on
stderr (``error: …``) and a non-zero exit; ``--json`` where a program may read the
output. Library code raises; only this module and ``cellprofiler_omero.commands``
print. The commands themselves live in ``commands/`` (login, logout, whoami in
``auth``; ls in ``browse``; urls in ``urls``; config in ``config``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NoReturn

from cellprofiler_omero import __version__
from cellprofiler_omero.core.errors import OmeroError

Handler = Callable[[argparse.Namespace], int]

#: Subcommands whose arguments are handed on untouched to another program's ``main``.
PASSTHROUGH = ("bench",)


class Parser(argparse.ArgumentParser):
    """argparse with the one-line error convention (``error: …``, exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see '{self.prog} --help')\n")


def _cmd_emulator(args: argparse.Namespace) -> int:
    from cellprofiler_omero.emulator.runner import run

    return run(args, say=lambda line: print(line, flush=True))


def _cmd_plugins_dir(args: argparse.Namespace) -> int:
    from cellprofiler_omero.cp_integration import plugins_dir

    print(plugins_dir())
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from cellprofiler_omero.cp_integration.demo import report_json, run_demo

    def say(line: str) -> None:
        print(line, file=sys.stderr if args.json else sys.stdout, flush=True)

    then = None
    if args.web:
        from cellprofiler_omero.commands.web import installed_versions, serve_demo_results

        installed_versions()  # says what to install before the run, not after it
        then = serve_demo_results(say)
    report = run_demo(args.data, args.output, fields=args.fields, field_size=args.field_size,
                      large_size=args.large_size, keep_running=args.keep_running,
                      then=then, say=say)
    if args.json:
        print(report_json(report))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    """Hand every remaining argument to ``cellprofiler_omero.benchmarks.main``."""
    bench_main: Callable[[list[str]], int] | None = None
    try:
        module = importlib.import_module("cellprofiler_omero.benchmarks")
        bench_main = getattr(module, "main", None)
        reason = "it has no main()"
    except ImportError as exc:  # e.g. the bench extra's dependencies are not installed
        reason = str(exc)
    if bench_main is None:
        if any(arg in ("-h", "--help") for arg in args.args):
            args.bench_parser.print_help()
            return 0
        print(f"error: the benchmarks are not available in this installation ({reason}).",
              file=sys.stderr)
        return 1
    try:
        return int(bench_main(list(args.args)) or 0)
    except SystemExit as exc:  # an argparse-based main exits on --help or bad arguments
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)


def build_parser() -> argparse.ArgumentParser:
    from cellprofiler_omero.commands import auth, browse, urls
    from cellprofiler_omero.commands import config as config_commands
    from cellprofiler_omero.commands import run as run_commands
    from cellprofiler_omero.commands import web as web_commands

    parser = Parser(
        prog="cellprofiler-omero",
        description="Connect CellProfiler 5 to OMERO: read images, save results, export "
                    "tables. Run 'cellprofiler-omero COMMAND --help' for each command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log more (-v: info, -vv: debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    auth.add_parsers(sub)
    browse.add_parsers(sub)
    urls.add_parsers(sub)
    run_commands.add_parsers(sub)
    config_commands.add_parsers(sub)
    web_commands.add_parsers(sub)

    from cellprofiler_omero.emulator.runner import add_arguments

    emu = sub.add_parser(
        "emulator", help="run a local OMERO-compatible server in the foreground",
        description="Run a local OMERO-compatible server (Ice with SSL and plain TCP, and "
                    "the omero-ms-pixel-buffer HTTP API) until Ctrl-C. Users: root/omero, "
                    "demo/demo, other/other. State is kept in --data and served again "
                    "after a restart.")
    add_arguments(emu)
    emu.set_defaults(handler=_cmd_emulator)

    pdir = sub.add_parser(
        "plugins-dir", help="print the folder to pass to CellProfiler's --plugins-directory",
        description="Print the folder holding this package's CellProfiler plugins, e.g. "
                    "cellprofiler -c -r -p PIPELINE --plugins-directory "
                    "\"$(cellprofiler-omero plugins-dir)\".")
    pdir.set_defaults(handler=_cmd_plugins_dir)

    demo = sub.add_parser(
        "demo", help="run a real CellProfiler pipeline against a local OMERO emulator",
        description="Start an OMERO emulator with demo data (synthetic nuclei and cytoplasm), "
                    "then run CellProfiler headless: read the images from OMERO, find and "
                    "measure nuclei, save the nuclei label images back to OMERO and export "
                    "the measurements as OMERO.tables. Ends with a summary of what was "
                    "processed, uploaded and written, and how long each phase took.")
    demo.add_argument("--data", type=Path, help="keep the emulator's data in DIR "
                      "(default: a temporary folder, removed afterwards)")
    demo.add_argument("--output", type=Path, help="write the pipeline, file list and "
                      "CellProfiler's log to DIR (default: ./demo-output)")
    demo.add_argument("--fields", type=int, default=8, help="number of demo images (8)")
    demo.add_argument("--field-size", type=int, default=1024, help="their size in pixels")
    demo.add_argument("--large-size", type=int, default=8192,
                      help="size of the large pyramid image in the demo data (0: none)")
    demo.add_argument("--keep-running", action="store_true",
                      help="leave the emulator running afterwards, to explore it")
    demo.add_argument("--web", action="store_true",
                      help="afterwards serve OMERO.web + OMERO.iviewer in front of the "
                           "emulator and print links to the results, until Ctrl-C (needs "
                           "pip install 'cellprofiler-omero[web]')")
    demo.add_argument("--json", action="store_true",
                      help="print the report as JSON on stdout (progress goes to stderr)")
    demo.set_defaults(handler=_cmd_demo)

    bench = sub.add_parser(
        "bench", help="run the benchmarks (arguments go to the benchmark harness)",
        add_help=False,
        description="Run the benchmark harness (cellprofiler_omero.benchmarks); every "
                    "argument after 'bench' is passed to it unchanged, so "
                    "'cellprofiler-omero bench --help' shows the harness's own help.")
    bench.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS",
                       help="arguments for the benchmark harness")
    bench.set_defaults(handler=_cmd_bench, bench_parser=bench)
    return parser


def _split_passthrough(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """Split ``[global options…] bench ARGS…`` into what argparse parses and ``ARGS``.

    argparse's REMAINDER does not take arguments that start with ``-`` (``bench
    --help``), so a pass-through command's arguments are cut off before parsing. The
    global options take no values, so the first word not starting with ``-`` is the
    command.
    """
    for index, word in enumerate(argv):
        if not word.startswith("-"):
            if word in PASSTHROUGH:
                return argv[: index + 1], argv[index + 1:]
            break
    return argv, None


#: Loggers whose warnings repeat what the one error line already says (a failed
#: transport, omero-py's cleanup chatter); shown only when asked for with -v.
_QUIET_LOGGERS = ("cellprofiler_omero.core.registry", "omero")


@contextlib.contextmanager
def _logging(verbose: int) -> Iterator[None]:
    """Configure logging for one command; quieted loggers get their levels back after
    (``main`` also runs inside other programs and tests)."""
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    saved = {name: logging.getLogger(name).level for name in _QUIET_LOGGERS}
    if not verbose:
        for name in _QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for name, previous in saved.items():
            logging.getLogger(name).setLevel(previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``cellprofiler-omero`` with ``argv`` (default ``sys.argv[1:]``); the exit status."""
    words = list(sys.argv[1:] if argv is None else argv)
    words, passthrough = _split_passthrough(words)
    parser = build_parser()
    args = parser.parse_args(words)
    if passthrough is not None:
        args.args = passthrough
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0
    with _logging(args.verbose):
        return _run(handler, args)


#: Exit status of a failure this package did not expect (``EX_SOFTWARE`` of sysexits.h).
EXIT_BUG = 70


def _run(handler: Handler, args: argparse.Namespace) -> int:
    """Run a command; failures become one ``error: …`` line on stderr.

    Expected failures (``OmeroError``) say what to do. Anything else is a bug: it is
    reported in one line too (no traceback for users), and ``-vv`` shows where.
    """
    from cellprofiler_omero.commands.common import UsageError

    try:
        return handler(args)
    except OmeroError as exc:
        # One line, whatever the message holds: scripts and people read the first line.
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2 if isinstance(exc, UsageError) else 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of our output went away (`urls … | head`): stop quietly, and keep
        # Python from complaining again when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except Exception as exc:  # the last place before a user's terminal
        if args.verbose >= 2:
            raise
        text = " ".join(str(exc).split())[:300]
        print(f"error: unexpected {type(exc).__name__}{': ' + text if text else ''} (a bug "
              "in cellprofiler-omero: run again with -vv to see where, and please report "
              "it)", file=sys.stderr)
        return EXIT_BUG
