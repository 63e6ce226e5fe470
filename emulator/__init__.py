"""A local OMERO-compatible server: Ice (Glacier2, services, OMERO.tables) and pixel-buffer HTTP.

``Emulator`` starts one in a child process on free ports and stops it again::

    with Emulator(tmp_path, seed="demo") as emu:
        conn = BlitzGateway("demo", "demo", host=emu.host, port=emu.port)

It is a server, not a mock: unmodified omero-py clients talk to it over the network.
The emulator depends on nothing else of this package.

Server settings (``server_config``) are a real server's ``omero.*`` keys, plus one the
emulator alone has: ``omero.pixeldata.emulator_pyramid_delay_ms`` (default 1000), how
long a pyramid written through a RawPixelsStore stays unreadable after its writer
closes (``setPixelsId`` raises ``MissingPyramidException`` with a ``backOff`` meanwhile).
A real server has no such key because the wait is real there: its pixel-data service
builds the pyramids of imported big images in the background, taking as long as that
takes. The emulator builds pyramids at once, so it waits on purpose to give clients
that same state to handle. ``0`` makes new pyramids readable at once, which is what a
real server does for a pyramid written tile by tile (its writer finishes it on close).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict
from pathlib import Path
from types import TracebackType
from typing import Any

from cellprofiler_omero.emulator.seed import SeedOptions

CONTROL_ENV = "CELLPROFILER_OMERO_EMULATOR_CONTROL"


class EmulatorError(RuntimeError):
    """The emulator did not start, or a control request failed."""


class Emulator:
    """An emulator in a child process (so it has its own interpreter and core)."""

    def __init__(self, data_dir: Path | str | None = None, *, seed: str = "demo",
                 seed_options: SeedOptions | None = None, host: str = "127.0.0.1",
                 port: int = 0, http_port: int = 0, session_timeout: float = 600.0,
                 pyramid_threshold: int = 3192, log_level: str = "WARNING",
                 start_timeout: float = 600.0,
                 server_config: dict[str, str] | None = None) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="cpo-emulator-")
            data_dir = self._tmp.name
        self.data_dir = Path(data_dir)
        self.seed = seed
        self.seed_options = seed_options or SeedOptions()
        self.host = host
        self._port, self._http_port = port, http_port
        self.session_timeout = session_timeout
        self.pyramid_threshold = pyramid_threshold
        # Server settings as a real server's ``omero config set`` keys (strings), e.g.
        # ``{"omero.sessions.max_user_time_to_live": "3600000"}``; they win over defaults.
        self.server_config = dict(server_config or {})
        self.log_level = log_level
        self.start_timeout = start_timeout
        self.control_token = secrets.token_hex(16)
        self.process: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> Emulator:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ready = self.data_dir / "emulator.ready.json"
        ready.unlink(missing_ok=True)
        log_path = self.data_dir / "emulator.log"
        args = [sys.executable, "-m", "cellprofiler_omero.emulator", "--data",
                str(self.data_dir), "--host", self.host,
                "--port", str(self.info.get("port", self._port)),
                "--insecure-port", str(self.info.get("insecure_port", 0)),
                "--http-port", str(self.info.get("http_port", self._http_port)),
                "--seed", self.seed, "--seed-options", json.dumps(asdict(self.seed_options)),
                "--session-timeout", str(self.session_timeout),
                "--pyramid-threshold", str(self.pyramid_threshold),
                "--server-config", json.dumps(self.server_config), "--ready-file", str(ready)]
        env = dict(os.environ)
        env[CONTROL_ENV] = self.control_token
        env["CELLPROFILER_OMERO_EMULATOR_LOG"] = self.log_level
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                            env=env)
        deadline = time.monotonic() + self.start_timeout
        while not ready.exists():
            if self.process.poll() is not None:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise EmulatorError(f"The emulator exited during start-up:\n{tail}")
            if time.monotonic() > deadline:
                self.stop()
                raise EmulatorError("The emulator did not start in time.")
            time.sleep(0.05)
        self.info = json.loads(ready.read_text())
        return self

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def restart(self) -> None:
        """Stop and start again on the same ports and data (state survives)."""
        self.stop()
        self.seed = "none" if self.seed == "demo" else self.seed
        self.start()

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- where it is ---------------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self.info["port"])

    @property
    def insecure_port(self) -> int:
        return int(self.info["insecure_port"])

    @property
    def http_port(self) -> int:
        return int(self.info["http_port"])

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def seeded(self) -> dict[str, Any]:
        """Ids of the demo objects (read from the emulator's store)."""
        import sqlite3

        db = sqlite3.connect(str(self.data_dir / "omero.sqlite"))
        try:
            row = db.execute("SELECT value FROM meta WHERE key='seeded'").fetchone()
        finally:
            db.close()
        return json.loads(row[0]) if row else {}

    # -- control -------------------------------------------------------------------------

    def _control(self, path: str, body: dict[str, Any]) -> Any:
        request = urllib.request.Request(
            f"{self.http_url}/_emulator/{path}", data=json.dumps(body).encode(),
            headers={"X-Emulator-Control": self.control_token,
                     "Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            # The emulator says what it refused (e.g. an unknown setting) in the body.
            reason = exc.read().decode(errors="replace") or exc.reason
            raise EmulatorError(f"Emulator control request {path} was refused: {reason}"
                                ) from exc
        except OSError as exc:
            raise EmulatorError(f"Emulator control request {path} failed: {exc}") from exc

    def set_faults(self, **settings: Any) -> dict[str, Any]:
        """Replace the fault settings (see ``faults.FaultSettings``); no arguments clears."""
        result: dict[str, Any] = self._control("faults", settings)
        return result

    def clear_faults(self) -> None:
        self._control("faults", {})

    def expire_sessions(self, *, user: str | None = None, keys: list[str] | None = None
                        ) -> int:
        """Expire sessions now (all, one user's, or the given keys); returns how many."""
        return int(self._control("expire-sessions", {"user": user, "keys": keys})["expired"])

    def http_requests(self) -> dict[str, int]:
        """How many requests the pixel-buffer service answered since the start, by method
        and status (``{"GET 200": 12, "OPTIONS 200": 1}``); compare before and after."""
        result: dict[str, int] = self._control("http-requests", {})
        return result

    def call_counts(self, session_key: str | None = None, *, reset: bool = False
                    ) -> dict[str, int]:
        """Round trips the emulator answered since the start or the last reset, by operation:
        Ice calls as ``"Interface.operation"`` (``"RawPixelsStore.getTile"``, including
        ``ice_isA``/``ice_ping``) and HTTP requests as ``"HTTP METHOD /first-segment"``
        (``"HTTP GET /tile"``); control requests are not counted.

        ``session_key`` limits the counts to calls made in that session (Ice calls on its
        services, HTTP requests carrying its key); ``reset=True`` zeroes every count after
        reading them, in the same request.
        """
        result: dict[str, int] = self._control(
            "calls", {"session": session_key, "reset": reset})
        return result

    def reset_call_counts(self) -> None:
        """Zero the counts of ``call_counts`` (all of them, every session's too)."""
        self._control("calls", {"reset": True})

    def set_network(self, *, latency_ms: float = 0.0, bandwidth_mbit: float = 0.0
                    ) -> dict[str, float]:
        """Pretend the clients reach the emulator over a network: every Ice call and HTTP
        request waits ``latency_ms`` (one round trip), and request and reply bytes cross
        two shared links (one per direction) of ``bandwidth_mbit`` each (0: unlimited).
        No arguments: loopback again. Independent of ``set_faults``."""
        result: dict[str, float] = self._control(
            "network", {"latency_ms": latency_ms, "bandwidth_mbit": bandwidth_mbit})
        return result

    def sessions(self) -> list[dict[str, Any]]:
        """The open sessions: user, reference count, whether alive (never their keys)."""
        result: list[dict[str, Any]] = self._control("sessions", {})
        return result


__all__ = ["Emulator", "EmulatorError", "SeedOptions"]
