"""Run an emulator in the foreground until SIGINT/SIGTERM (``cellprofiler-omero emulator``)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from cellprofiler_omero.emulator.faults import FaultSettings
from cellprofiler_omero.emulator.http import HttpServer
from cellprofiler_omero.emulator.seed import SeedOptions, seed_demo, seed_users
from cellprofiler_omero.emulator.server import (
    Context,
    IceServer,
    ServerOptions,
    SessionReaper,
)

log = logging.getLogger(__name__)
CONTROL_ENV = "CELLPROFILER_OMERO_EMULATOR_CONTROL"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The emulator's command-line options (shared by the CLI and ``python -m``)."""
    parser.add_argument("--data", required=True, type=Path,
                        help="folder for the emulator's state (created; reused on restart)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=4064,
                        help="Ice SSL port (0: any free port); plain TCP gets another port")
    parser.add_argument("--insecure-port", type=int, default=0,
                        help="plain-TCP Ice port advertised as omero.router.insecure "
                             "(default: any free port)")
    parser.add_argument("--http-port", type=int, default=8082,
                        help="pixel-buffer HTTP port (0: any free port)")
    parser.add_argument("--seed", choices=["demo", "users", "none"], default="none",
                        help="demo: users and demo data; users: only the users")
    parser.add_argument("--seed-options", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--session-timeout", type=float, default=600.0,
                        help="idle seconds before a session expires (default 600)")
    parser.add_argument("--pyramid-threshold", type=int, default=3192,
                        help="images wider or taller than this get resolution levels")
    parser.add_argument("--server-config", default="{}", metavar="JSON",
                        help="server settings as a JSON object of omero.* keys and string "
                             "values (as `omero config set` takes them)")
    parser.add_argument("--latency-ms", type=float, default=0.0,
                        help="fault: add this latency to every Ice call and HTTP request")
    parser.add_argument("--drop-after", type=int, default=0,
                        help="fault: drop the client connection on the Nth Ice call")
    parser.add_argument("--drop-probability", type=float, default=0.0,
                        help="fault: drop the connection on each Ice call with this probability")
    parser.add_argument("--http-error-probability", type=float, default=0.0,
                        help="fault: answer tile requests with 500/503 with this probability")
    parser.add_argument("--fault-seed", type=int, default=0, help="seed for random faults")
    parser.add_argument("--ready-file", type=Path, help=argparse.SUPPRESS)


def run(args: argparse.Namespace, say: Callable[[str], None] = log.warning) -> int:
    """Start, say where it listens, serve until a signal, stop cleanly (``say`` prints)."""
    options = ServerOptions(
        data_dir=args.data.resolve(), host=args.host, port=args.port,
        insecure_port=args.insecure_port, http_port=args.http_port,
        session_timeout_s=args.session_timeout, pyramid_threshold=args.pyramid_threshold,
        control_token=os.environ.get(CONTROL_ENV, ""),
        config={str(k): str(v) for k, v in json.loads(args.server_config).items()})
    ctx = Context(options)
    ctx.faults.set(FaultSettings(latency_ms=args.latency_ms, drop_after=args.drop_after,
                                 drop_probability=args.drop_probability,
                                 http_error_probability=args.http_error_probability,
                                 seed=args.fault_seed))
    if args.seed == "demo":
        seed_demo(ctx, SeedOptions(**json.loads(args.seed_options)))
    elif args.seed == "users":
        seed_users(ctx)
    ice = IceServer(ctx)
    ice.start()
    http = HttpServer(ctx)
    http.start()
    reaper = SessionReaper(ctx)
    reaper.start()
    info = {"host": options.host, "port": options.port, "insecure_port": ice.insecure_port,
            "http_port": http.port, "data": str(options.data_dir), "pid": os.getpid()}
    if args.ready_file:
        partial = args.ready_file.with_suffix(".partial")
        partial.write_text(json.dumps(info))
        partial.replace(args.ready_file)
    say(f"cellprofiler-omero emulator listening: Ice ssl {options.host}:{options.port} "
        f"(tcp {ice.insecure_port}), pixel-buffer http://{options.host}:{http.port}/tile, "
        f"data {options.data_dir}")
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    while not stop.wait(0.5):
        pass
    reaper.stopping.set()
    http.stop()
    ice.stop()
    ctx.store.close()
    say("cellprofiler-omero emulator stopped")
    return 0


def main(argv: Sequence[str] | None = None, say: Callable[[str], None] = log.warning) -> int:
    parser = argparse.ArgumentParser(prog="python -m cellprofiler_omero.emulator",
                                     description="A local OMERO-compatible server.")
    add_arguments(parser)
    logging.basicConfig(level=os.environ.get("CELLPROFILER_OMERO_EMULATOR_LOG", "WARNING"),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return run(parser.parse_args(argv), say=say)


