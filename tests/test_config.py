"""Settings: file < environment < arguments, with clear errors for bad keys and values."""

from __future__ import annotations

from pathlib import Path

import pytest

from cellprofiler_omero.core.config import Settings, default_config_path, load_settings
from cellprofiler_omero.core.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_defaults_apply_without_a_file(tmp_path: Path) -> None:
    settings = load_settings(path=tmp_path / "absent.toml", environ={})
    assert settings == Settings()
    assert settings.transports.read == ("ice",)


def test_file_values_are_read(tmp_path: Path) -> None:
    path = write(tmp_path, '[transports]\nread = ["pixelbuffer", "ice"]\n[server]\nport = 4065\n')
    settings = load_settings(path=path, environ={})
    assert settings.transports.read == ("pixelbuffer", "ice")
    assert settings.server.port == 4065


def test_environment_overrides_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 4065\n")
    env = {"CELLPROFILER_OMERO_SERVER_PORT": "4070",
           "CELLPROFILER_OMERO_TRANSPORTS_READ": "pixelbuffer, ice"}
    settings = load_settings(path=path, environ=env)
    assert settings.server.port == 4070
    assert settings.transports.read == ("pixelbuffer", "ice")


def test_arguments_override_environment(tmp_path: Path) -> None:
    env = {"CELLPROFILER_OMERO_SERVER_PORT": "4070"}
    settings = load_settings({"server.port": 4080}, path=tmp_path / "x.toml", environ=env)
    assert settings.server.port == 4080


def test_tables_of_strings_from_file_and_environment(tmp_path: Path) -> None:
    path = write(tmp_path, '[pixelbuffer.servers]\n"omero.org" = "https://omero.org/tile"\n')
    assert load_settings(path=path, environ={}).pixelbuffer.servers == {
        "omero.org": "https://omero.org/tile"}
    env = {"CELLPROFILER_OMERO_PIXELBUFFER_SERVERS": "a=http://a:8082, b=http://b/tile"}
    servers = load_settings(path=tmp_path / "x.toml", environ=env).pixelbuffer.servers
    assert servers == {"a": "http://a:8082", "b": "http://b/tile"}


def test_booleans_from_environment(tmp_path: Path) -> None:
    env = {"CELLPROFILER_OMERO_AUTH_USE_TOKEN": "off"}
    assert load_settings(path=tmp_path / "x.toml", environ=env).auth.use_token is False


def test_unknown_key_in_file_names_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nhots = 'x'\n")
    with pytest.raises(ConfigError, match=r"'server\.hots'.*config\.toml"):
        load_settings(path=path, environ={})


def test_unknown_section_names_the_section(tmp_path: Path) -> None:
    path = write(tmp_path, "[serverz]\nhost = 'x'\n")
    with pytest.raises(ConfigError, match="'serverz'"):
        load_settings(path=path, environ={})


def test_unknown_key_in_environment_names_the_variable(tmp_path: Path) -> None:
    env = {"CELLPROFILER_OMERO_SERVER_HOTS": "x"}
    with pytest.raises(ConfigError, match="CELLPROFILER_OMERO_SERVER_HOTS"):
        load_settings(path=tmp_path / "x.toml", environ=env)


def test_unrelated_environment_variables_are_ignored(tmp_path: Path) -> None:
    env = {"CELLPROFILER_OMERO_SESSION_FILE": "/tmp/x", "OTHER": "1"}
    assert load_settings(path=tmp_path / "x.toml", environ=env) == Settings()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"server.port": "many"}, "'server.port'.*integer"),
        ({"server.port": True}, "'server.port'.*integer"),
        ({"auth.use_token": "maybe"}, "'auth.use_token'.*true or false"),
        ({"transports.read": [1, 2]}, "'transports.read'.*list of names"),
        ({"transports.read": []}, "'transports.read' is empty"),
        ({"ice.concurrency": 0}, "'ice.concurrency' must be positive"),
        ({"tables.long_strings": "drop"}, "'tables.long_strings'"),
        ({"ice.max_tile_bytes": 10**12}, "'ice.max_tile_bytes'"),
    ],
)
def test_bad_values_raise_naming_the_key(overrides: dict[str, object], message: str,
                                          tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(overrides, path=tmp_path / "x.toml", environ={})


def test_invalid_toml_is_reported_with_its_path(tmp_path: Path) -> None:
    path = write(tmp_path, "[server\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(path=path, environ={})


def test_default_path_follows_xdg_and_explicit_variable(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    monkeypatch.delenv("CELLPROFILER_OMERO_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert default_config_path() == tmp_path / "cellprofiler-omero" / "config.toml"
    monkeypatch.setenv("CELLPROFILER_OMERO_CONFIG", str(tmp_path / "mine.toml"))
    assert default_config_path() == tmp_path / "mine.toml"


def test_replace_validates_like_loading() -> None:
    with pytest.raises(ConfigError):
        Settings().replace({"server.nope": 1})
    assert Settings().replace({"server.host": "h"}).server.host == "h"
