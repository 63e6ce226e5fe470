"""The CellProfiler GUI with OMERO, tested in a real window (Xvfb) and, headless, its parts.

The scenarios follow one user across restarts of CellProfiler (they share a home, so
they run in this file's order): log in with a password after an unreachable server and
a wrong password, Set Token; restart and connect by token (message, "do not show
again"), browse a Dataset and a Plate, add images, analyse them with workers,
disconnect and quit; restart and connect without the message. Another user, with no
token, sees the Connect dialog open by itself when a pipeline needs OMERO.
Screenshots go to ``test-artifacts/gui/``.
"""

from __future__ import annotations

import csv
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cellprofiler_omero.emulator import Emulator
from tests.gui.conftest import ROOT, GuiUser, assert_ok, run_driver

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

PAGE = "4"  # wells per page in the browser, so the 6-well plate needs "load more…"


def _pipeline(path: Path, *, extract_planes: bool = True) -> Path:
    """The nuclei pipeline (Images ▸ NamesAndTypes ▸ IdentifyPrimaryObjects ▸ measure)
    plus ExportToSpreadsheet into the default output folder; built headless.

    Without ``extract_planes`` the Images module reads nothing before the run (every image
    is "DNA", its channels averaged), so nothing but the pre-run check asks for a login.
    """
    code = (
        "import io, sys\n"
        "from cellprofiler_omero.cp_integration.pipelines import nuclei_pipeline\n"
        "text = nuclei_pipeline(None, save_labels=False, export_tables=False)\n"
        "from cellprofiler_core.pipeline import Pipeline\n"
        "import cellprofiler_core.modules.namesandtypes as nt\n"
        "from cellprofiler.modules.exporttospreadsheet import ExportToSpreadsheet\n"
        "p = Pipeline(); p.load(io.StringIO(text))\n"
        f"if not {extract_planes}:\n"
        "    p.modules()[0].want_split.value = False\n"
        "    names = p.modules()[2]\n"
        "    names.assignment_method.value = nt.ASSIGN_ALL\n"
        "    names.single_image_provider.value = 'DNA'\n"
        "    p.modules()[6].images_list.value = 'DNA'\n"
        "m = ExportToSpreadsheet(); m.set_module_num(len(p.modules()) + 1)\n"
        "p.add_module(m); out = io.StringIO(); p.dump(out)\n"
        "sys.stdout.write(out.getvalue())\n")
    text = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, cwd=ROOT).stdout
    path.write_text(text)
    return path


def _image_rows(outputs: Path) -> list[dict[str, str]]:
    """The rows of ExportToSpreadsheet's per-image table (``MyExpt_Image.csv``)."""
    found = sorted(outputs.glob("*Image.csv"))
    assert found, f"no measurements in {outputs}"
    with found[0].open() as f:
        return list(csv.DictReader(f))


def _live_sessions(emulator: Emulator) -> list[dict[str, Any]]:
    """Sessions still open on the server, except the token's own user session.

    The token's session outlives every client by design (that is what a token is for):
    clients that used it detach from it, as omero-py's detachOnDestroy does, which
    leaves OMERO's reference count as it was. Password sessions, and the joins of the
    analysis workers to a password session, must all be gone.
    """
    return [s for s in emulator.sessions() if s.get("live") and not s.get("user_session")]


def _wait_for_no_live_sessions(emulator: Emulator, seconds: float = 20) -> list[Any]:
    deadline = time.monotonic() + seconds
    live = _live_sessions(emulator)
    while live and time.monotonic() < deadline:
        time.sleep(0.5)
        live = _live_sessions(emulator)
    return live


# -- the real window ---------------------------------------------------------------------------

def test_first_run_password_errors_and_set_token(gui_python: Path, display: str,
                                                 gui_user: GuiUser,
                                                 gui_emulator: Emulator) -> None:
    port = gui_emulator.port
    results = run_driver(gui_python, display, gui_user, "first", port=port)
    assert_ok(results)
    checks = results["checks"]
    assert checks["plugins_menu"] == ["Connect to OMERO", "Connect to OMERO (no token)",
                                      "Browse OMERO for images", "Disconnect from OMERO"]
    assert "OMERO" not in checks["title_before"]
    assert checks["unreachable_status"].startswith("Could not connect: Cannot reach OMERO")
    assert checks["open_after_unreachable"]
    assert "refused the login" in checks["wrong_password_status"]
    assert "Check the user name and password" in checks["wrong_password_status"]
    assert checks["open_after_wrong_password"] and checks["password_masked"]
    assert checks["connected_status"].startswith(f"Connected to 127.0.0.1:{port} as demo")
    assert checks["set_token_enabled"]
    assert "shared account" in checks["token_warning"]
    assert checks["title_connected"].endswith(f"OMERO: demo@127.0.0.1:{port}")
    assert checks["x_title_connected"]
    assert checks["token_status"].startswith(f"Token saved for 127.0.0.1:{port}")
    token = (gui_user.token_dir / "token").read_text().strip()
    assert token.endswith(f"@127.0.0.1:{port}")
    assert checks["connected_after_dialog"]
    assert results["threads_at_exit"] == []
    # The password session ended at quit; the token's own session stays for next time.
    assert _wait_for_no_live_sessions(gui_emulator) == []
    sessions = gui_emulator.sessions()
    assert [s["user_session"] for s in sessions] == [True]
    config = gui_user.config_file.read_text()
    assert "Reader.OMERO.last_server=127.0.0.1" in config


def test_second_run_token_browse_add_analyse(gui_python: Path, display: str,
                                            gui_user: GuiUser, gui_emulator: Emulator,
                                            tmp_path: Path) -> None:
    if not (gui_user.token_dir / "token").exists():
        pytest.fail("needs the token saved by the first run, which did not save one")
    port = gui_emulator.port
    pipeline = _pipeline(tmp_path / "nuclei.cppipe")
    results = run_driver(gui_python, display, gui_user, "second", port=port,
                         cellprofiler_args=["-p", str(pipeline), "-o", str(gui_user.outputs)],
                         CELLPROFILER_OMERO_BROWSE_PAGE=PAGE)
    assert_ok(results)
    checks = results["checks"]
    assert f"Connected to OMERO server 127.0.0.1 (port {port}) as demo" in \
        checks["token_message"]
    assert checks["dont_show_ticked"]
    assert checks["show_token_message_setting"] is False
    assert checks["login_source"] == "token"
    assert "OMERO" not in checks["title_disconnected"]
    assert checks["message_again"] is False
    assert "OMERO" in checks["readers"]
    assert checks["reader_settings"]["Use OMERO tokens"] is True
    assert checks["reader_settings"]["Say when connected by token"] is False
    assert [g.split()[0] for g in checks["groups"]] == ["demo", "shared"]
    assert any(c.startswith("CellProfiler demo") for c in checks["group_contents"])
    assert any(c.startswith("Demo screen") for c in checks["group_contents"])
    assert len(checks["dataset_images"]) == 3
    assert all("512×512" in name and "C2" in name for name in checks["dataset_images"])
    assert "Size: 512 × 512 pixels" in checks["image_details"]
    assert checks["plate_first_page"][:4] == ["A01  (2)", "A02  (2)", "A03  (2)", "B01  (2)"]
    assert checks["plate_first_page"][4].startswith("Load more…  (4 of 6 shown)")
    assert [w.split()[0] for w in checks["plate_all_wells"]] == \
        ["A01", "A02", "A03", "B01", "B02", "B03"]
    assert [f.split(":")[0] for f in checks["well_fields"]] == ["Field 1", "Field 2"]
    assert checks["selected"] == ["Nuclei and cytoplasm", "A01"]
    added = checks["file_list_after_add"]
    assert len(added) == 5
    assert all(u.startswith("https://127.0.0.1/webclient/?show=image-") for u in added)
    assert checks["drag_and_drop"], "dropping a well on the file list added nothing"
    assert len(checks["file_list"]) == 7
    assert checks["handoff_file"], "the GUI did not hand its session to the workers"
    assert "OMERO" not in checks["title_end"]
    assert results["threads_at_exit"] == []

    rows = _image_rows(gui_user.outputs)
    assert len(rows) == 7
    assert all(float(r["Count_Nuclei"]) > 0 for r in rows)
    assert {r["URL_DNA"].split("image-")[1] for r in rows} == \
        {u.split("image-")[1] for u in checks["file_list"]}
    assert _wait_for_no_live_sessions(gui_emulator) == []
    assert "Reader.OMERO.show_token_message=0" in gui_user.config_file.read_text()


def test_third_run_token_without_message(gui_python: Path, display: str, gui_user: GuiUser,
                                         gui_emulator: Emulator) -> None:
    if not (gui_user.token_dir / "token").exists():
        pytest.fail("needs the token saved by the first run, which did not save one")
    results = run_driver(gui_python, display, gui_user, "third", port=gui_emulator.port)
    assert_ok(results)
    assert results["checks"]["login_source"] == "token"
    assert results["checks"]["message_shown"] is False
    assert _wait_for_no_live_sessions(gui_emulator) == []


def test_analyze_opens_the_dialog_by_itself(gui_python: Path, display: str,
                                            gui_emulator: Emulator, tmp_path: Path) -> None:
    user = GuiUser(tmp_path / "home")  # no token, never connected
    seeded = gui_emulator.seeded
    files = tmp_path / "files.txt"
    files.write_text("".join(f"https://127.0.0.1/webclient/?show=image-{i}\n"
                             for i in seeded["fields"][:2]))
    pipeline = _pipeline(tmp_path / "nuclei.cppipe")
    results = run_driver(gui_python, display, user, "auto", port=gui_emulator.port,
                         label="auto-reader", shot_name="14-dialog-opened-by-analyze-images",
                         cellprofiler_args=["-p", str(pipeline), "--file-list", str(files),
                                            "-o", str(user.outputs)])
    assert_ok(results)
    checks = results["checks"]
    assert len(checks["file_list"]) == 2
    assert "log in to continue" in checks["auto_notice"]
    assert checks["auto_server"] == "127.0.0.1"
    assert checks["auto_connected"].startswith("Connected to")
    assert len(_image_rows(user.outputs)) == 2
    assert _wait_for_no_live_sessions(gui_emulator) == []


def test_run_logs_in_before_the_workers_start(gui_python: Path, display: str,
                                             gui_emulator: Emulator, tmp_path: Path) -> None:
    """Nothing is read in the window before the run: the pre-run check opens the dialog."""
    user = GuiUser(tmp_path / "home")
    files = tmp_path / "files.txt"
    types = gui_emulator.seeded["types"]  # one-channel images: whole images are grayscale
    files.write_text("".join(f"https://127.0.0.1/webclient/?show=image-{types[t]}\n"
                             for t in ("uint8", "uint16")))
    pipeline = _pipeline(tmp_path / "whole.cppipe", extract_planes=False)
    results = run_driver(gui_python, display, user, "auto", port=gui_emulator.port,
                         label="auto-prerun", shot_name="15-dialog-opened-before-the-run",
                         cellprofiler_args=["-p", str(pipeline), "--file-list", str(files),
                                            "-o", str(user.outputs)])
    assert_ok(results)
    checks = results["checks"]
    assert checks["auto_notice"] == "This pipeline uses OMERO: log in to continue."
    assert len(_image_rows(user.outputs)) == 2
    assert _wait_for_no_live_sessions(gui_emulator) == []


def test_reading_opens_the_dialog_by_itself(gui_python: Path, display: str,
                                            gui_emulator: Emulator, tmp_path: Path) -> None:
    """Test mode reads in CellProfiler's own process: the reader asks for a login."""
    user = GuiUser(tmp_path / "home")
    files = tmp_path / "files.txt"
    files.write_text(f"https://127.0.0.1/webclient/?show=image-{gui_emulator.seeded['fields'][0]}\n")
    pipeline = _pipeline(tmp_path / "nuclei.cppipe")
    results = run_driver(gui_python, display, user, "testmode", port=gui_emulator.port,
                         cellprofiler_args=["-p", str(pipeline), "--file-list", str(files),
                                            "-o", str(user.outputs)])
    assert_ok(results)
    checks = results["checks"]
    assert checks["connected_at_start"] is False
    assert checks["reader_notice"].startswith("To read image ")
    assert checks["reader_notice"].endswith("log in to continue.")
    assert checks["reader_connected"].startswith("Connected to")
    assert checks["test_mode"] is True
    assert checks["nuclei_in_test_mode"] > 5  # field 1 has about 20 nuclei
    assert _wait_for_no_live_sessions(gui_emulator) == []


# -- headless: the browser's data and the plugin file without wx -------------------------------

def test_browse_source_groups_pages_thumbnails_and_urls(gui_emulator: Emulator) -> None:
    from cellprofiler_omero.core import runtime
    from cellprofiler_omero.core.config import Settings
    from cellprofiler_omero.core.session import SessionManager
    from cellprofiler_omero.cp_integration.gui.source import BrowseSource, Entry, describe

    settings = Settings().replace({"server.host": gui_emulator.host,
                                   "server.port": gui_emulator.port, "auth.use_token": False,
                                   "auth.keepalive_seconds": 3600})
    mgr = SessionManager(settings)
    runtime.run(lambda: mgr.connect(user="demo", password="demo"))
    try:
        source = BrowseSource(mgr)
        roots = runtime.run(source.roots)
        assert [r.node.name for r in roots] == ["demo", "shared"]
        demo = roots[0]
        page = runtime.run(source.children, demo, 0, 10)
        kinds = [(n.kind, n.name) for n in page.items]
        assert ("Project", "CellProfiler demo") in kinds and ("Screen", "Demo screen") in kinds
        assert page.total == len(page.items)
        # Paging across kinds gives every child once, in order.
        pieces = [runtime.run(source.children, demo, o, 1).items[0] for o in range(page.total)]
        assert pieces == list(page.items)
        shared = runtime.run(source.children, roots[1], 0, 10)
        assert [(n.kind, n.name) for n in shared.items] == [("Dataset", "Shared data")]

        plate = Entry(next(n for n in runtime.run(
            source.children, Entry(next(n for n in page.items if n.kind == "Screen")), 0, 10
        ).items))
        first = runtime.run(source.children, plate, 0, 4)
        assert first.total == 6 and first.has_more and len(first.items) == 4
        rest = runtime.run(source.children, plate, 4, 4)
        assert not rest.has_more and [n.name for n in rest.items] == ["B02", "B03"]

        seeded = gui_emulator.seeded
        thumbs = runtime.run(source.thumbnails, list(seeded["fields"]), 64)
        assert set(thumbs) == set(seeded["fields"])
        assert all(data[:2] == b"\xff\xd8" for data in thumbs.values())  # JPEG

        datasets = runtime.run(source.children, Entry(
            next(n for n in page.items if n.kind == "Project")), 0, 10).items
        assert [n.name for n in datasets] == ["Histology", "Large", "Nuclei and cytoplasm",
                                              "Pixel types", "Z stack"]
        dataset = Entry(datasets[2])
        images = runtime.run(source.children, dataset, 0, 10).items
        assert "512×512" in describe(images[0])
        urls = runtime.run(source.image_urls, [dataset, plate])
        assert len(urls) == 3 + 12 and len(set(urls)) == 15
        assert urls[0] == f"https://127.0.0.1/webclient/?show=image-{seeded['fields'][0]}"
    finally:
        runtime.run(mgr.close)


def test_plugin_file_imports_without_wx() -> None:
    """Headless (no wx in the main venv) the reader plugin loads and installs no GUI."""
    code = (
        "import sys\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "import omeroreader\n"
        "from cellprofiler_omero.cp_integration import gui\n"
        "assert omeroreader.OMEROReader.__module__ == 'omeroreader'\n"
        "print(gui.available(), 'wx' in sys.modules,\n"
        "      'cellprofiler_omero.cp_integration.gui.integration' in sys.modules)\n")
    plugins = ROOT / "cp_integration" / "plugins"
    out = subprocess.run([sys.executable, "-c", code, str(plugins)], capture_output=True,
                         text=True, check=True)
    assert out.stdout.split() == ["False", "False", "False"]


def test_launcher_adds_the_plugins_folder() -> None:
    from cellprofiler_omero.cp_integration import plugins_dir
    from cellprofiler_omero.cp_integration.gui.launcher import cellprofiler_arguments

    assert cellprofiler_arguments([]) == ["--plugins-directory", str(plugins_dir())]
    assert cellprofiler_arguments(["--plugins-directory=/x"]) == ["--plugins-directory=/x"]
