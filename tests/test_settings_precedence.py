"""Which layer decides a reader setting in CellProfiler: explicit arguments > the OMERO
reader's settings the user set in CellProfiler > environment > TOML file > defaults.

The unit tests use CellProfiler's own preferences module with an empty configuration
of their own (nothing leaks between tests or from a developer's CellProfiler). The last
two prove it end to end: headless CellProfiler reads over the pixel-buffer service
because the environment (or the TOML file) says so, counted at the emulator.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cellprofiler_omero.core import session as core_session
from cellprofiler_omero.core.errors import ConfigError
from cellprofiler_omero.core.session import SessionManager
from cellprofiler_omero.cp_integration import session
from cellprofiler_omero.emulator import Emulator, synthetic
from tests.conftest import TEST_SEED

pytestmark = pytest.mark.cellprofiler

ENV = {"use_tokens": "CELLPROFILER_OMERO_AUTH_USE_TOKEN",
       "show_token_message": "CELLPROFILER_OMERO_AUTH_SHOW_TOKEN_MESSAGE",
       "transports": "CELLPROFILER_OMERO_TRANSPORTS_READ"}
#: Per reader setting: (TOML line in its section, environment value, CellProfiler value,
#: argument value) and the value each gives as the reader setting reads it. Every layer
#: gives a different value, so the winner is unambiguous.
LAYERS: dict[str, dict[str, tuple[Any, Any]]] = {
    "use_tokens": {"toml": ("use_token = false", False), "env": ("true", True),
                   "cp": (False, False), "arg": (True, True)},
    "show_token_message": {"toml": ("show_token_message = false", False),
                           "env": ("on", True), "cp": (False, False), "arg": (True, True)},
    "transports": {"toml": ('read = ["pixelbuffer"]', "pixelbuffer"),
                   "env": ("pixelbuffer,ice", "pixelbuffer, ice"),
                   "cp": ("ice, pixelbuffer", "ice, pixelbuffer"),
                   "arg": (["ice"], "ice")},
}
DEFAULTS = {"use_tokens": True, "show_token_message": True, "transports": "ice"}


@pytest.fixture
def cp_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Any]:
    """CellProfiler's preferences, headless, with an empty configuration and cache for
    this test only; the settings file and environment variables start empty too."""
    import cellprofiler_core.preferences as preferences
    from cellprofiler_core.preferences._headless_configuration import HeadlessConfiguration

    preferences.set_headless()
    monkeypatch.setattr(preferences, "__headless_config", HeadlessConfiguration())
    monkeypatch.setattr(preferences, "__cached_values", {})
    monkeypatch.setenv("CELLPROFILER_OMERO_CONFIG", str(tmp_path / "absent.toml"))
    for name in ENV.values():
        monkeypatch.delenv(name, raising=False)
    yield preferences


def set_toml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, key: str) -> None:
    section = "transports" if key == "transports" else "auth"
    path = tmp_path / "config.toml"
    path.write_text(f"[{section}]\n{LAYERS[key]['toml'][0]}\n")
    monkeypatch.setenv("CELLPROFILER_OMERO_CONFIG", str(path))


def set_cp(preferences: Any, key: str, value: Any) -> None:
    """What File ▸ Configure Readers does when the user changes the setting (it writes
    only changed settings; ``config_write`` because headless ``config_write_typed`` logs
    an error for a write its configuration does not confirm)."""
    preferences.config_write(f"Reader.{session.READER_NAME}.{key}", value)


# -- the core's layers ------------------------------------------------------------------

def test_load_settings_puts_the_application_layer_between_environment_and_arguments(
        tmp_path: Path) -> None:
    from cellprofiler_omero.core.config import load_settings_with_origins

    path = tmp_path / "config.toml"
    path.write_text('[transports]\nread = ["a"]\nupload = ["a"]\ntables = ["a"]\n'
                    '[server]\nport = 1\n')
    env = {"CELLPROFILER_OMERO_TRANSPORTS_READ": "b", "CELLPROFILER_OMERO_TRANSPORTS_UPLOAD": "b",
           "CELLPROFILER_OMERO_SERVER_PORT": "2"}
    application = {"transports.read": (["c"], "the host's setting R"),
                   "server.port": (3, "the host's setting P")}
    chosen, origins = load_settings_with_origins({"server.port": 4}, path=path, environ=env,
                                                 application=application)
    assert (chosen.transports.read, chosen.transports.upload, chosen.transports.tables,
            chosen.server.port) == (("c",), ("b",), ("a",), 4)
    assert origins == {"transports.read": "the host's setting R",
                       "transports.upload": "environment variable "
                                            "CELLPROFILER_OMERO_TRANSPORTS_UPLOAD",
                       "transports.tables": str(path), "server.port": "argument"}
    assert "transports.connect" not in origins  # defaults have no origin


# -- each layer, for every reader setting --------------------------------------------------

@pytest.mark.parametrize("key", list(LAYERS))
def test_defaults_apply_when_no_layer_sets_the_setting(cp_config: Any, key: str) -> None:
    assert session.reader_setting(key) == DEFAULTS[key]
    assert session.READER_KEYS[key] not in session.settings_with_origins()[1]


@pytest.mark.parametrize("key", list(LAYERS))
def test_the_toml_file_beats_the_defaults(cp_config: Any, monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path, key: str) -> None:
    set_toml(monkeypatch, tmp_path, key)
    assert session.reader_setting(key) == LAYERS[key]["toml"][1]


@pytest.mark.parametrize("key", list(LAYERS))
def test_the_environment_beats_the_toml_file(cp_config: Any, monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path, key: str) -> None:
    set_toml(monkeypatch, tmp_path, key)
    monkeypatch.setenv(ENV[key], LAYERS[key]["env"][0])
    assert session.reader_setting(key) == LAYERS[key]["env"][1]


@pytest.mark.parametrize("key", list(LAYERS))
def test_an_unset_cellprofiler_reader_setting_leaves_the_environment_in_charge(
        cp_config: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, key: str) -> None:
    # The other reader settings are set: only this one's absence must count.
    for other in LAYERS:
        if other != key:
            set_cp(cp_config, other, LAYERS[other]["cp"][0])
    set_toml(monkeypatch, tmp_path, key)
    monkeypatch.setenv(ENV[key], LAYERS[key]["env"][0])
    assert session.user_reader_settings().keys() == set(LAYERS) - {key}
    assert session.reader_setting(key) == LAYERS[key]["env"][1]
    _, origins = session.settings_with_origins()
    assert origins[session.READER_KEYS[key]] == f"environment variable {ENV[key]}"


@pytest.mark.parametrize("key", list(LAYERS))
def test_a_cellprofiler_reader_setting_the_user_set_beats_the_environment(
        cp_config: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, key: str) -> None:
    set_toml(monkeypatch, tmp_path, key)
    monkeypatch.setenv(ENV[key], LAYERS[key]["env"][0])
    set_cp(cp_config, key, LAYERS[key]["cp"][0])
    assert session.reader_setting(key) == LAYERS[key]["cp"][1]
    _, origins = session.settings_with_origins()
    assert origins[session.READER_KEYS[key]] == \
        f"CellProfiler's reader setting Reader.OMERO.{key}"


@pytest.mark.parametrize("key", list(LAYERS))
def test_explicit_arguments_beat_cellprofilers_reader_setting(
        cp_config: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, key: str) -> None:
    set_toml(monkeypatch, tmp_path, key)
    monkeypatch.setenv(ENV[key], LAYERS[key]["env"][0])
    set_cp(cp_config, key, LAYERS[key]["cp"][0])
    overrides = {session.READER_KEYS[key]: LAYERS[key]["arg"][0]}
    chosen, origins = session.settings_with_origins(overrides)
    assert session._reader_value(chosen, key) == LAYERS[key]["arg"][1]
    assert origins[session.READER_KEYS[key]] == "argument"


def test_a_reader_setting_set_to_its_default_still_counts_as_set(
        cp_config: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV["transports"], "pixelbuffer,ice")
    set_cp(cp_config, "transports", "ice")
    assert session.settings().transports.read == ("ice",)


def test_an_empty_transports_field_hands_the_choice_back_to_the_environment(
        cp_config: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV["transports"], "pixelbuffer,ice")
    set_cp(cp_config, "transports", " , ")
    assert "transports" not in session.user_reader_settings()
    assert session.settings().transports.read == ("pixelbuffer", "ice")


def test_the_readers_dialog_shows_what_applies_until_the_user_sets_it(
        cp_config: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from cellprofiler_omero.cp_integration.reader import OMEROReader

    set_toml(monkeypatch, tmp_path, "use_tokens")
    monkeypatch.setenv(ENV["transports"], "pixelbuffer,ice")
    defaults = {key: default for key, _, _, _, default in OMEROReader.get_settings()}
    assert defaults == {"use_tokens": False, "show_token_message": True,
                        "transports": "pixelbuffer, ice"}
    help_text = {key: text for key, _, text, _, _ in OMEROReader.get_settings()}
    assert "CELLPROFILER_OMERO_TRANSPORTS_READ" in help_text["transports"]
    assert "CELLPROFILER_OMERO_AUTH_USE_TOKEN" in help_text["use_tokens"]


def test_a_broken_settings_file_leaves_the_dialog_with_the_package_defaults(
        cp_config: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[transports\n")
    monkeypatch.setenv("CELLPROFILER_OMERO_CONFIG", str(path))
    assert session.reader_settings() == session.READER_SETTINGS
    with pytest.raises(ConfigError, match="not valid TOML"):
        session.settings()


def test_a_bad_value_from_cellprofiler_names_its_reader_setting(
        cp_config: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # A worker receives preferences as they were sent; a value of the wrong type must be
    # reported as CellProfiler's setting, not as the package's.
    monkeypatch.setitem(getattr(cp_config, "__cached_values"), "Reader.OMERO.use_tokens",
                        "perhaps")
    with pytest.raises(ConfigError) as raised:
        session.settings()
    assert "CellProfiler's reader setting Reader.OMERO.use_tokens" in str(raised.value)


def test_the_session_logs_which_layer_chose_the_read_transports(
        cp_config: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(ENV["transports"], "pixelbuffer,ice")
    monkeypatch.setattr(core_session, "_manager", None)
    with caplog.at_level(logging.INFO, logger=session.log.name):
        made = session.manager()
    assert made.settings.transports.read == ("pixelbuffer", "ice")
    assert "OMERO read transports: pixelbuffer, ice (from environment variable " \
           "CELLPROFILER_OMERO_TRANSPORTS_READ)" in caplog.text


def test_analysis_workers_see_the_same_settings_as_the_main_process(
        cp_config: Any, cellprofiler_plugins: None, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """The worker gets CellProfiler's preferences the way CellProfiler sends them
    (``preferences_as_dict`` through its JSON encoding), and the environment by
    inheritance; all three layers must give it the main process's answer."""
    from cellprofiler_core.preferences import preferences_as_dict
    from cellprofiler_core.utilities.zmq import json_encode

    set_toml(monkeypatch, tmp_path, "show_token_message")
    monkeypatch.setenv(ENV["transports"], "pixelbuffer,ice")
    set_cp(cp_config, "use_tokens", False)
    main = {key: session.reader_setting(key) for key in LAYERS}
    assert main == {"use_tokens": False, "show_token_message": False,
                    "transports": "pixelbuffer, ice"}
    sent, buffers = json_encode(preferences_as_dict())
    assert not buffers
    worker = textwrap.dedent("""
        import json, sys
        import cellprofiler_core.preferences as preferences
        from cellprofiler_core.utilities.zmq import json_decode
        preferences.set_headless()
        preferences.set_preferences_from_dict(json_decode(sys.stdin.read(), []))
        from cellprofiler_omero.cp_integration import session
        print(json.dumps({k: session.reader_setting(k) for k in session.READER_KEYS}))
    """)
    result = subprocess.run([sys.executable, "-c", worker], input=sent, text=True,
                            capture_output=True, env=dict(os.environ), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == main


# -- headless CellProfiler reads over HTTP because the environment or the file says so -----

def field(index: int) -> np.ndarray:
    pixels, _ = synthetic.nuclei_and_cells(TEST_SEED.seed * 1000 + index, TEST_SEED.field_size)
    return pixels


@pytest.fixture
def child_env(manager: SessionManager, emulator: Emulator, tmp_path: Path) -> dict[str, str]:
    """A child process's environment: the session handed over, the emulator's
    pixel-buffer service named, no settings file, no read transports chosen."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELLPROFILER_OMERO_")}
    home = tmp_path / "home"
    home.mkdir()
    env.update(manager.export_for_workers())
    env.update({"HOME": str(home), "OMERO_USER_TOKEN_DIR": str(tmp_path / "no-tokens"),
                "CELLPROFILER_OMERO_CONFIG": str(tmp_path / "absent.toml"),
                "CELLPROFILER_OMERO_SERVER_HOST": emulator.host,
                "CELLPROFILER_OMERO_SERVER_PORT": str(emulator.port),
                "CELLPROFILER_OMERO_PIXELBUFFER_SERVERS": f"{emulator.host}={emulator.http_url}"})
    return env


def tiles_served(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before)
            if k.startswith("GET ") and after.get(k, 0) != before.get(k, 0)}


def pipeline_saving_dna() -> str:
    """The demo pipeline (nothing written to OMERO) plus the DNA image as CellProfiler
    read it (npy) and its measurements in CSV."""
    from cellprofiler.modules.exporttospreadsheet import ExportToSpreadsheet
    from cellprofiler.modules.saveimages import BIT_DEPTH_RAW, FF_NPY, FN_FROM_IMAGE, SaveImages
    from cellprofiler_core.pipeline import Pipeline

    from cellprofiler_omero.cp_integration.pipelines import nuclei_pipeline

    pipeline = Pipeline()
    pipeline.loadtxt(io.StringIO(nuclei_pipeline(None, save_labels=False,
                                                 export_tables=False)), raise_on_error=True)
    number = len(pipeline.modules()) + 1
    save = SaveImages()
    save.set_module_num(number)
    save.image_name.value = "DNA"
    save.file_name_method.value = FN_FROM_IMAGE
    save.file_image_name.value = "DNA"
    save.file_format.value = FF_NPY
    save.bit_depth.value = BIT_DEPTH_RAW
    pipeline.add_module(save)
    export = ExportToSpreadsheet()
    export.set_module_num(number + 1)
    pipeline.add_module(export)
    out = io.StringIO()
    pipeline.dump(out)
    return out.getvalue()


@pytest.mark.slow
def test_the_environment_makes_a_headless_run_read_over_the_pixel_buffer_service(
        child_env: dict[str, str], cellprofiler_plugins: None, emulator: Emulator,
        seeded: dict[str, Any], tmp_path: Path) -> None:
    from tests.test_cp_headless import read_csv, run_cellprofiler

    env = {**child_env, ENV["transports"]: "pixelbuffer,ice"}
    before = emulator.http_requests()
    log = run_cellprofiler(pipeline_saving_dna(), [f"omero:iid={seeded['fields'][0]}"],
                           tmp_path / "out", env)
    served = tiles_served(before, emulator.http_requests())
    # Both channels of the one 512² field, each one tile, all answered by the service.
    assert served.get("GET 200", 0) >= 2 and set(served) == {"GET 200"}, served
    assert "OMERO read transports: pixelbuffer, ice (from environment variable " \
           "CELLPROFILER_OMERO_TRANSPORTS_READ)" in log
    rows = read_csv(tmp_path / "out" / "MyExpt_Image.csv")
    assert len(rows) == 1 and int(float(rows[0]["Count_Nuclei"])) > 0
    saved = np.load(next((tmp_path / "out").glob("*.npy")))
    # CellProfiler scales integer images by their type's range when it reads them.
    np.testing.assert_allclose(saved * 65535.0, field(0)[0], atol=1e-3)


@pytest.mark.slow
def test_the_toml_file_makes_cellprofilers_reader_read_over_the_pixel_buffer_service(
        child_env: dict[str, str], emulator: Emulator, seeded: dict[str, Any],
        tmp_path: Path) -> None:
    toml = tmp_path / "config.toml"
    toml.write_text('[transports]\nread = ["pixelbuffer", "ice"]\n')
    env = {**child_env, "CELLPROFILER_OMERO_CONFIG": str(toml)}
    reader = textwrap.dedent(f"""
        import sys
        import numpy as np
        import cellprofiler_core.preferences as preferences
        preferences.set_headless()
        from cellprofiler_core.pipeline import ImageFile
        from cellprofiler_omero.cp_integration.reader import OMEROReader
        from cellprofiler_omero.cp_integration import session
        from cellprofiler_omero.core import runtime
        reader = OMEROReader(ImageFile("omero:iid={seeded['fields'][1]}"))
        np.save(sys.argv[1], reader.read(c=None))
        reader.close()
        print(session.settings_with_origins()[1]["transports.read"])
        runtime.shutdown()
    """)
    before = emulator.http_requests()
    result = subprocess.run([sys.executable, "-c", reader, str(tmp_path / "read.npy")],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    served = tiles_served(before, emulator.http_requests())
    assert served.get("GET 200", 0) >= 2 and set(served) == {"GET 200"}, served
    assert result.stdout.strip().splitlines()[-1] == str(toml)
    data = np.load(tmp_path / "read.npy")
    np.testing.assert_array_equal(np.moveaxis(data, -1, 0), field(1))
