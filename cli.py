"""The ``cellprofiler-omero`` command: one entry point, one subcommand per job.

Conventions: ``--help`` everywhere; exit 0 on success; on failure one clear line on
stderr (``error: …``) and a non-zero exit; ``--json`` where a program may read the
output. Library code raises; only this module prints.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from cellprofiler_omero import __version__
from cellprofiler_omero.core.errors import OmeroError

Handler = Callable[[argparse.Namespace], int]


def _cmd_emulator(args: argparse.Namespace) -> int:
    from cellprofiler_omero.emulator.runner import run

    return run(args)


def _cmd_plugins_dir(args: argparse.Namespace) -> int:
    from cellprofiler_omero.cp_integration import plugins_dir

    print(plugins_dir())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cellprofiler-omero",
        description="Connect CellProfiler 5 to OMERO: read images, save results, export "
                    "tables. Run 'cellprofiler-omero COMMAND --help' for each command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log more (-v: info, -vv: debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0
    try:
        return handler(args)
    except OmeroError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130



