"""``web``: the real OMERO.web (with OMERO.iviewer) in front of an OMERO server.

``OmeroWeb`` is a context manager that runs OMERO.web exactly as released (nothing
patched): it keeps an OMERODIR of its own (``etc/grid/config.xml`` written with
omero-py's ``ConfigXml``, as ``omero config set`` would), collects the static files
once per installed omero-web/omero-iviewer version, serves them with WhiteNoise (added
through OMERO.web's own ``omero.web.middleware`` setting, so no nginx is needed) and
runs ``omeroweb.wsgi:application`` under gunicorn on 127.0.0.1::

    with OmeroWeb(host="127.0.0.1", port=emulator.port, home=folder) as web:
        print(web.login_url)

The ``web`` subcommand does that for a running emulator (``--server``) or for one it
starts itself on ``--data DIR``, prints the links and runs until Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.metadata
import importlib.util
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from cellprofiler_omero.core.errors import CannotReachServer, OmeroError

if TYPE_CHECKING:
    from cellprofiler_omero.cp_integration.demo import AfterDemo, DemoReport
    from cellprofiler_omero.emulator import Emulator

log = logging.getLogger(__name__)

#: What to install when OMERO.web is missing.
INSTALL_HINT = "Install it with: pip install 'cellprofiler-omero[web]'."

#: The dataset ``cellprofiler-omero demo`` runs on (made by the emulator's demo seed).
DEMO_DATASET = "Nuclei and cytoplasm"

#: The name OMERO.web shows for our server on its login page (``omero.web.server_list``).
SERVER_NAME = "emulator"

#: OMERO.web's default ``omero.web.middleware`` (omeroweb/settings.py), with WhiteNoise
#: first so static files are served by OMERO.web's own process (as WhiteNoise's docs
#: ask: above every middleware but Django's SecurityMiddleware, which OMERO.web lacks).
MIDDLEWARE = [
    {"index": 0, "class": "whitenoise.middleware.WhiteNoiseMiddleware"},
    {"index": 1, "class": "django.middleware.common.BrokenLinkEmailsMiddleware"},
    {"index": 2, "class": "django.middleware.common.CommonMiddleware"},
    {"index": 3, "class": "django.contrib.sessions.middleware.SessionMiddleware"},
    {"index": 4, "class": "django.middleware.csrf.CsrfViewMiddleware"},
    {"index": 5, "class": "django.contrib.messages.middleware.MessageMiddleware"},
    {"index": 6, "class": "django.middleware.clickjacking.XFrameOptionsMiddleware"},
]

#: OMERO.web's default "Open with" entry plus OMERO.iviewer's, as the iviewer README says.
OPEN_WITH = [
    ["Image viewer", "webgateway",
     {"supported_objects": ["image"], "script_url": "webclient/javascript/ome.openwith_viewer.js"}],
    ["omero_iviewer", "omero_iviewer_index",
     {"supported_objects": ["images", "dataset", "well"],
      "script_url": "omero_iviewer/openwith.js", "label": "OMERO.iviewer"}],
]


class WebError(OmeroError):
    """OMERO.web could not be set up or started (``log`` names its log file, if any)."""

    def __init__(self, message: str, *, hint: str | None = None,
                 log: Path | None = None) -> None:
        super().__init__(message, hint=hint)
        self.log = log


class WebNotInstalled(WebError):
    """omero-web (or omero-iviewer, gunicorn, whitenoise) is not installed."""

    def __init__(self, missing: str) -> None:
        super().__init__(f"OMERO.web is not installed here ({missing} is missing).",
                         hint=INSTALL_HINT)
        self.missing = missing


class PortTaken(WebError):
    """The port asked for OMERO.web is already in use."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(f"Port {port} on {host} is already in use.",
                         hint="Choose another port (0: any free port).")
        self.host = host
        self.port = port


def default_home() -> Path:
    """Where OMERO.web's configuration lives unless told otherwise."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "cellprofiler-omero" / "web"


def installed_versions() -> dict[str, str]:
    """The versions of the distributions OMERO.web runs from; raises ``WebNotInstalled``."""
    versions: dict[str, str] = {}
    for module, dist in (("omeroweb", "omero-web"), ("omero_iviewer", "omero-iviewer"),
                         ("gunicorn", "gunicorn"), ("whitenoise", "whitenoise")):
        if importlib.util.find_spec(module) is None:
            raise WebNotInstalled(dist)
        versions[dist] = importlib.metadata.version(dist)
    return versions


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on now (the OS's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            raise PortTaken(host, port) from None


def check_server(host: str, port: int, timeout: float = 5.0) -> None:
    """Raise ``CannotReachServer`` unless something accepts connections at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except OSError as exc:
        raise CannotReachServer(
            f"No OMERO server answers at {host}:{port} ({exc.strerror or exc}).",
            host=host, port=port, reason=type(exc).__name__,
            hint="Start one with 'cellprofiler-omero emulator --data DIR', or give "
                 "--server HOST:PORT or --data DIR.") from None


class OmeroWeb:
    """OMERO.web + OMERO.iviewer (gunicorn, 127.0.0.1) for the OMERO server at host:port.

    ``home`` is its OMERODIR (config, logs, Django's secret key and sessions);
    ``static_root`` where the collected static files go (shared by every home, collected
    again only when omero-web or omero-iviewer change). ``web_port`` 0 takes a free port.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 4064, *,
                 home: Path | str | None = None, web_port: int = 0,
                 bind: str = "127.0.0.1", static_root: Path | str | None = None,
                 threads: int = 4, start_timeout: float = 120.0) -> None:
        self.host = host
        self.port = port
        self.home = Path(home) if home is not None else default_home()
        self.bind = bind
        self.web_port = web_port
        self.static_root = (Path(static_root) if static_root is not None
                            else default_home().parent / "web-static")
        self.threads = threads
        self.start_timeout = start_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.versions: dict[str, str] = {}

    # -- where it is ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The root of OMERO.web, ending in a slash."""
        return f"http://{self.bind}:{self.web_port}/"

    @property
    def login_url(self) -> str:
        return self.url + "webclient/login/"

    @property
    def log_path(self) -> Path:
        """OMERO.web's own log (Django, BlitzGateway)."""
        return self.home / "var" / "log" / "OMEROweb.log"

    @property
    def gunicorn_log(self) -> Path:
        return self.home / "var" / "log" / "gunicorn.log"

    def webclient_url(self, kind: str | None = None, object_id: int | None = None) -> str:
        """The webclient, opened on ``kind`` (``dataset``, ``image``, …) ``object_id``."""
        if kind is None or object_id is None:
            return self.url + "webclient/"
        return self.url + f"webclient/?show={kind.lower()}-{object_id}"

    def iviewer_url(self, image_id: int) -> str:
        return self.url + f"iviewer/?images={image_id}"

    def table_url(self, file_id: int) -> str:
        """OMERO.web's page of the OMERO.table in OriginalFile ``file_id``."""
        return self.url + f"webclient/omero_table/{file_id}/"

    # -- lifecycle ---------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["OMERODIR"] = str(self.home)
        env["DJANGO_SETTINGS_MODULE"] = "omeroweb.settings"
        # OMERO.web keeps its Django sessions (and uploads) in tempfile.gettempdir():
        # ours stay private to this home, not in the shared /tmp.
        env["TMPDIR"] = str(self.home / "var" / "tmp")
        return env

    def configure(self) -> None:
        """Write ``$OMERODIR/etc/grid/config.xml`` (as ``omero config set`` would)."""
        from omero.config import ConfigXml

        for sub in ("etc/grid", "var/log", "var/tmp"):
            (self.home / sub).mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):  # Django's secret key and sessions live here
            self.home.chmod(0o700)
        settings: dict[str, Any] = {
            "omero.web.server_list": [[self.host, self.port, SERVER_NAME]],
            "omero.web.apps": ["omero_iviewer"],
            "omero.web.viewer.view": "omero_iviewer.views.index",
            "omero.web.open_with": OPEN_WITH,
            "omero.web.middleware": MIDDLEWARE,
            "omero.web.static_root": str(self.static_root),
            # A development setting that makes OMERO.web single-threaded and slow.
            "omero.web.debug": False,
        }
        config = ConfigXml(str(self.home / "etc" / "grid" / "config.xml"))
        try:
            for key, value in settings.items():
                config[key] = value if isinstance(value, str) else json.dumps(value)
        finally:
            config.close()

    def collect_static(self) -> None:
        """``collectstatic`` once per omero-web/omero-iviewer version (a stamp says)."""
        self.static_root.mkdir(parents=True, exist_ok=True)
        stamp = self.static_root / ".collected"
        wanted = json.dumps(self.versions, sort_keys=True)
        with (self.static_root / ".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be collecting now
            if stamp.exists() and stamp.read_text() == wanted:
                return
            done = subprocess.run(
                [sys.executable, "-m", "django", "collectstatic", "--noinput", "-v", "0"],
                env=self._env(), capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise WebError("OMERO.web could not collect its static files: "
                               + (done.stderr.strip().splitlines() or ["no output"])[-1],
                               hint=f"See {self.log_path}.", log=self.log_path)
            stamp.write_text(wanted)

    def start(self) -> OmeroWeb:
        """Configure, collect static files, start gunicorn and wait until it answers."""
        self.versions = installed_versions()
        if self.web_port:
            _check_port_free(self.bind, self.web_port)
        else:
            self.web_port = free_port(self.bind)
        self.configure()
        self.collect_static()
        args = [sys.executable, "-m", "gunicorn", "omeroweb.wsgi:application",
                "--bind", f"{self.bind}:{self.web_port}", "--workers", "1",
                "--threads", str(self.threads), "--timeout", "300",
                "--graceful-timeout", "5", "--error-logfile", "-",
                # gunicorn's control socket is one path per user (~/.gunicorn): several
                # OMERO.webs would fight over it, and nothing here uses it.
                "--no-control-socket",
                "--access-logfile", str(self.home / "var" / "log" / "access.log")]
        with self.gunicorn_log.open("ab") as log:
            # A session of its own: a Ctrl-C in the terminal reaches us, and we stop
            # gunicorn (master and workers) ourselves, in order.
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=self._env(),
                                            cwd=self.home, start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.process.poll() is not None:
                tail = self.gunicorn_log.read_text(errors="replace").strip().splitlines()
                last = tail[-1] if tail else f"exit status {self.process.returncode}"
                raise WebError(f"OMERO.web exited while starting: {last}",
                               hint=f"See {self.gunicorn_log}.", log=self.gunicorn_log)
            try:
                with urllib.request.urlopen(self.login_url, timeout=10) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise WebError(f"OMERO.web did not answer within {self.start_timeout:.0f} s.",
                               hint=f"See {self.gunicorn_log}.", log=self.gunicorn_log)
            time.sleep(0.2)

    def stop(self) -> None:
        """Stop gunicorn and its workers (TERM, then KILL after 15 s)."""
        process, self.process = self.process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        # Workers still alive after their master went (they should not be).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)

    def __enter__(self) -> OmeroWeb:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


# -- the command ---------------------------------------------------------------------------


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``web``."""
    web = sub.add_parser(
        "web", help="serve OMERO.web and OMERO.iviewer for an emulator (until Ctrl-C)",
        description="Start the real OMERO.web (with OMERO.iviewer) on 127.0.0.1 in front of "
                    "a running OMERO emulator (--server, default 127.0.0.1:4064, where "
                    "'cellprofiler-omero emulator' listens) or of one started here on "
                    "--data DIR, print the login link and run until Ctrl-C. Needs "
                    "pip install 'cellprofiler-omero[web]'.")
    where = web.add_mutually_exclusive_group()
    where.add_argument("--server", metavar="HOST:PORT", default="127.0.0.1:4064",
                       help="the OMERO server's Ice SSL address (default 127.0.0.1:4064)")
    where.add_argument("--data", type=Path, metavar="DIR",
                       help="start an emulator on this data folder (demo data if new)")
    web.add_argument("--port", type=int, default=4080, dest="web_port", metavar="N",
                     help="OMERO.web's port on 127.0.0.1 (default 4080; 0: any free port)")
    web.add_argument("--home", type=Path, metavar="DIR",
                     help="OMERO.web's configuration and logs (default: beside --data, "
                          "else ~/.cache/cellprofiler-omero/web)")
    web.set_defaults(handler=_cmd_web)


def _parse_server(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise WebError(f"--server {text!r} is not HOST:PORT.", hint="E.g. 127.0.0.1:4064.")
    return host, int(port)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def wait_for_interrupt(alive: Callable[[], bool] = lambda: True) -> None:
    """Sleep until Ctrl-C or SIGTERM (or until ``alive()`` turns false).

    SIGTERM is taken as Ctrl-C while waiting, so that a ``kill`` also stops OMERO.web
    (it runs in a session of its own and would outlive us otherwise).
    """
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main else None
    try:
        with contextlib.suppress(KeyboardInterrupt):
            while alive():
                time.sleep(0.5)
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)


def demo_links(web: OmeroWeb, host: str, port: int) -> list[str]:
    """Links to the demo's dataset, an image with ROIs, the label images and the tables,
    found as demo/demo through the core (``core.overview``).

    Only a convenience: on a server without the demo user or data there are none.
    """
    from cellprofiler_omero.core import runtime
    from cellprofiler_omero.core.config import load_settings
    from cellprofiler_omero.core.overview import datasets_named
    from cellprofiler_omero.core.session import SessionManager

    lines: list[str] = []
    try:
        manager = SessionManager(load_settings({"server.host": host, "server.port": port,
                                                "auth.use_token": False}))
    except OmeroError as exc:  # a broken settings file: the links are optional
        log.debug("no demo links: %s", exc)
        return lines
    try:
        runtime.run(lambda: manager.connect(user="demo", password="demo"))
        found = runtime.run(lambda: datasets_named(manager, DEMO_DATASET))
    except OmeroError as exc:  # the links are optional: the server is up, that is enough
        log.debug("no demo links: %s", exc)
        return lines
    finally:
        runtime.run(manager.close)
    for dataset in found[:1]:
        lines.append(f"  dataset       {web.webclient_url('dataset', dataset.id)}")
        for image in (dataset.images_with_rois or dataset.images)[:1]:
            lines.append(f"  image         {web.iviewer_url(image.id)}  "
                         f"({image.name}, {image.roi_count} ROIs)")
        lines += [f"  label image   {web.iviewer_url(image.id)}  ({image.name})"
                  for image in dataset.uploaded_images[:3]]
        lines += [f"  table         {web.table_url(table.file_id)}  ({table.name})"
                  for table in dataset.tables]
    return lines


def serve_demo_results(say: Callable[[str], None]) -> AfterDemo:
    """What ``demo --web`` does after the run (``run_demo(then=…)``): OMERO.web in front of
    the demo's emulator, links to the results, until Ctrl-C or SIGTERM."""

    def serve(report: DemoReport, emulator: Emulator, folder: Path) -> None:
        home = folder / f"{report.data_dir.name}-web"
        say("[demo] start OMERO.web…")
        started = time.monotonic()
        web = OmeroWeb(emulator.host, emulator.port, home=home).start()
        report.phases.append(("start OMERO.web", time.monotonic() - started))
        try:
            lines = ["", f"OMERO.web is running on {web.url} — log in as demo / demo:",
                     f"  log in        {web.login_url}",
                     f"  dataset       {web.webclient_url('dataset', report.dataset_id)}"]
            lines += [f"  image + ROIs  {web.iviewer_url(image_id)}  ({rois} nuclei ROIs)"
                      for image_id, rois in sorted(report.rois.items())[:3]]
            lines += [f"  label image   {web.iviewer_url(image_id)}  ({name})"
                      for image_id, name in report.uploaded[:3]]
            lines += [f"  table         {web.table_url(file_id)}  ({name}, {rows} rows)"
                      for name, file_id, rows in report.tables]
            lines.append(f"The emulator runs on {report.server} (data in "
                         f"{report.data_dir}); press Ctrl-C to stop both.")
            say("\n".join(lines))

            def alive() -> bool:
                return (emulator.process is not None and emulator.process.poll() is None
                        and web.process is not None and web.process.poll() is None)

            wait_for_interrupt(alive)
            say("Stopping OMERO.web and the emulator …")
        finally:
            web.stop()

    return serve


@contextlib.contextmanager
def _emulator_on(data: Path) -> Iterator[Emulator]:
    from cellprofiler_omero.emulator import Emulator

    emulator = Emulator(data, seed="demo")
    try:
        yield emulator.start()
    finally:
        emulator.stop()


def _cmd_web(args: argparse.Namespace) -> int:
    installed_versions()  # says what to install before anything starts
    with contextlib.ExitStack() as stack:
        emulator: Emulator | None = None
        if args.data is not None:
            data = args.data.resolve()
            print(f"Starting an OMERO emulator on {data} …", flush=True)
            emulator = stack.enter_context(_emulator_on(data))
            host, port = emulator.host, emulator.port
            home = args.home or data.parent / f"{data.name}-web"
        else:
            host, port = _parse_server(args.server)
            check_server(host, port)
            home = args.home or default_home()
        web = OmeroWeb(host, port, home=home, web_port=args.web_port)
        print(f"Starting OMERO.web for {host}:{port} …", flush=True)
        stack.enter_context(web)
        print(f"OMERO.web is running on {web.url} (server '{SERVER_NAME}' = {host}:{port}).",
              flush=True)
        print(f"  log in        {web.login_url}", flush=True)
        for line in demo_links(web, host, port):
            print(line, flush=True)
        print("Press Ctrl-C to stop.", flush=True)

        def alive() -> bool:
            gunicorn_up = web.process is not None and web.process.poll() is None
            emulator_up = emulator is None or (emulator.process is not None
                                               and emulator.process.poll() is None)
            return gunicorn_up and emulator_up

        wait_for_interrupt(alive)
        # Ctrl-C in a terminal also reaches a child in our process group: the emulator
        # stops on its own, OMERO.web (own session) is stopped by the exit stack.
        print("Stopping OMERO.web …", flush=True)
    return 0
