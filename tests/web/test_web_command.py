"""The OMERO.web launcher, the guest login OMERO.web relies on, and the ``web`` command."""

from __future__ import annotations

import re
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from cellprofiler_omero.commands.web import OmeroWeb
    from tests.web.conftest import WebEmulator, WebIds, WebSession


def test_demo_logs_in_to_omero_web_and_sees_the_demo_results(
        omero_web: OmeroWeb, web_session: WebSession, web_ids: WebIds) -> None:
    session = web_session("demo", "demo")
    datasets = session.get(omero_web.url + "api/v0/m/datasets/", timeout=60).json()["data"]
    assert web_ids.dataset in {d["@id"] for d in datasets}
    images = session.get(omero_web.url + f"api/v0/m/datasets/{web_ids.dataset}/images/",
                         timeout=60).json()["data"]
    assert {web_ids.image, web_ids.label_image} <= {i["@id"] for i in images}
    me = session.get(omero_web.url + "api/v0/m/experimenters/", timeout=60)
    assert me.status_code == 200
    # OMERO.iviewer is the viewer and an "Open with" entry, its static files are served
    # by OMERO.web's own process (WhiteNoise over the collected files).
    viewers = session.get(omero_web.url + "webgateway/open_with/", timeout=60).json()
    assert "omero_iviewer" in {v["id"] for v in viewers["open_with_options"]}
    script = session.get(omero_web.url + "static/omero_iviewer/openwith.js", timeout=60)
    assert script.status_code == 200 and script.content
    # Django's secret key is private; the OMERODIR is ours alone.
    key = omero_web.home / "var" / "django_secret_key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_a_wrong_password_is_refused_by_omero_web(omero_web: OmeroWeb,
                                                  web_session: WebSession) -> None:
    with pytest.raises(AssertionError, match="refused the login of demo"):
        web_session("demo", "not-the-password", fresh=True)


def test_the_guest_logs_in_with_any_password_as_on_a_real_server(
        web_emulator: WebEmulator) -> None:
    from omero.gateway import BlitzGateway

    emu = web_emulator.emulator
    for password in ("guest", "anything", ""):
        conn = BlitzGateway("guest", password, host=emu.host, port=emu.port)
        try:
            assert conn.connect(), conn.getLastError()
            assert conn.getUser().getName() == "guest"
        finally:
            conn.close()


def test_the_guest_may_create_nothing_as_on_a_real_server(web_emulator: WebEmulator) -> None:
    import omero
    from omero.gateway import BlitzGateway
    from omero.rtypes import rstring

    emu = web_emulator.emulator
    conn = BlitzGateway("guest", "guest", host=emu.host, port=emu.port)
    try:
        assert conn.connect(), conn.getLastError()
        # The guest sees none of demo's private data ...
        assert web_emulator.ids.dataset not in {d.getId() for d in conn.getObjects("Dataset")}
        # ... and may not write (BasicACLVoter.allowCreation refuses the guest).
        with pytest.raises(omero.SecurityViolation, match="not permitted to create Dataset"):
            dataset = omero.model.DatasetI()
            dataset.setName(rstring("guest's"))
            conn.getUpdateService().saveAndReturnObject(dataset)
    finally:
        conn.close()


def _gunicorns_on(port: int) -> list[int]:
    """Pids of processes whose command line binds ``127.0.0.1:port`` (our gunicorn)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"127.0.0.1:{port}".encode() in cmdline:
            found.append(int(entry.name))
    return found


def test_the_web_command_prints_links_that_answer_and_stops_on_ctrl_c(
        web_emulator: WebEmulator, tmp_path: Path) -> None:
    from tests.web.conftest import login

    emu, ids = web_emulator.emulator, web_emulator.ids
    process = subprocess.Popen(
        [sys.executable, "-m", "cellprofiler_omero", "web", "--server",
         f"{emu.host}:{emu.port}", "--port", "0", "--home", str(tmp_path / "web")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # A background CI job inherits SIGINT ignored; a terminal's Ctrl-C is not.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert process.stdout is not None
    lines: list[str] = []
    try:
        for line in process.stdout:
            lines.append(line)
            if line.startswith("Press Ctrl-C"):
                break
        text = "".join(lines)
        running = re.search(r"OMERO\.web is running on (http://127\.0\.0\.1:(\d+)/)", text)
        assert running, text
        url, port = running.group(1), int(running.group(2))
        assert _gunicorns_on(port)
        session = login(url, "demo", "demo")
        # The links printed for the demo's results answer: the dataset and the table;
        # the image with the nuclei ROIs and the uploaded label image are named too.
        assert f"{url}webclient/?show=dataset-{ids.dataset}" in text
        assert f"{url}iviewer/?images={ids.image}  (field_01, {len(ids.rois)} ROIs)" in text
        assert f"{url}iviewer/?images={ids.label_image}  (field_01_nuclei)" in text
        assert f"{url}webclient/omero_table/{ids.table_file}/" in text
        table = session.get(f"{url}webclient/omero_table/{ids.table_file}/json/", timeout=120)
        assert table.status_code == 200
        assert len(table.json()["data"]["rows"]) == ids.table_rows
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err
    assert "Traceback" not in err
    assert "Stopping OMERO.web" in out
    assert _gunicorns_on(port) == []


def test_the_web_command_says_in_one_line_what_is_wrong(
        web_emulator: WebEmulator, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import importlib.util

    from cellprofiler_omero.cli import main
    from cellprofiler_omero.commands.web import free_port

    emu = web_emulator.emulator
    # No server there.
    closed = free_port()
    assert main(["web", "--server", f"127.0.0.1:{closed}", "--home", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"No OMERO server answers at 127.0.0.1:{closed}" in err
    # OMERO.web's port taken by someone else.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        assert main(["web", "--server", f"{emu.host}:{emu.port}", "--port", str(busy),
                     "--home", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"Port {busy} on 127.0.0.1 is already in use" in err
    # omero-web missing: what to install.
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None
                        if name == "omeroweb" else real_find_spec(name, *a))
    assert main(["web", "--server", f"{emu.host}:{emu.port}", "--home", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'cellprofiler-omero[web]'" in err
    # demo --web says so before it runs anything (no emulator, no CellProfiler).
    assert main(["demo", "--web", "--data", str(tmp_path / "demo"),
                 "--output", str(tmp_path / "out")]) == 1
    captured = capsys.readouterr()
    assert "pip install 'cellprofiler-omero[web]'" in captured.err
    assert captured.out == "" and not (tmp_path / "demo").exists()
