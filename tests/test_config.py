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
        ({"transfer.max_chunk_bytes": 10**12}, "'transfer.max_chunk_bytes'"),
        ({"transfer.max_chunk_bytes": 0}, "'transfer.max_chunk_bytes' must be positive"),
        ({"pixelbuffer.retries": -1}, "'pixelbuffer.retries'"),
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


# -- sections have owners ----------------------------------------------------------------


def test_transport_sections_are_declared_by_their_transports() -> None:
    from dataclasses import fields

    from cellprofiler_omero.core.config import plugin_sections
    from cellprofiler_omero.transports.ice.settings import IceSettings
    from cellprofiler_omero.transports.pixelbuffer.settings import PixelBufferSettings

    declared = plugin_sections()
    assert (declared["ice"].type, declared["ice"].plugin) == (IceSettings, "ice")
    assert (declared["pixelbuffer"].type, declared["pixelbuffer"].plugin) == (
        PixelBufferSettings, "pixelbuffer")
    core = {f.name for f in fields(Settings)}
    assert not {"ice", "pixelbuffer"} & core
    assert "transfer" in core


def test_plugin_sections_load_from_file_and_environment_typed(tmp_path: Path) -> None:
    from cellprofiler_omero.transports.ice.settings import IceSettings

    path = write(tmp_path, "[ice]\nconcurrency = 3\n")
    env = {"CELLPROFILER_OMERO_ICE_STORES_PER_IMAGE": "2"}
    settings = load_settings(path=path, environ=env)
    assert settings.section(IceSettings) == IceSettings(concurrency=3, stores_per_image=2)
    assert settings.ice.concurrency == 3  # the untyped spelling reads the same section
    assert Settings().section(IceSettings) == IceSettings()  # unset: the defaults


def test_unknown_key_in_a_plugin_section_names_the_key_and_the_known_ones(
        tmp_path: Path) -> None:
    path = write(tmp_path, "[ice]\nconcurency = 3\n")
    with pytest.raises(ConfigError, match=r"'ice\.concurency'") as failure:
        load_settings(path=path, environ={})
    assert "stores_per_image" in (failure.value.hint or "")


def test_plugin_sections_check_their_own_values() -> None:
    with pytest.raises(ConfigError, match=r"'ice\.concurrency' must be positive"):
        Settings().replace({"ice.concurrency": 0})
    with pytest.raises(ConfigError, match=r"'transfer\.max_chunk_bytes'.*'ice\.message_limit_kib'"):
        Settings().replace({"ice.message_limit_kib": 100, "transfer.max_chunk_bytes": 60_000})


def test_the_old_tile_key_still_works_and_warns_naming_the_new_one(tmp_path: Path) -> None:
    from cellprofiler_omero.core.config import load_settings_with_origins

    path = write(tmp_path, "[ice]\nmax_tile_bytes = 1048576\n")
    with pytest.warns(FutureWarning, match=r"'ice\.max_tile_bytes'.*'transfer\.max_chunk_bytes'"):
        settings, origins = load_settings_with_origins(path=path, environ={})
    assert settings.transfer.max_chunk_bytes == 1048576
    assert origins == {"transfer.max_chunk_bytes": str(path)}


def test_the_new_key_wins_over_its_old_name(tmp_path: Path) -> None:
    path = write(tmp_path, "[ice]\nmax_tile_bytes = 1048576\n[transfer]\nmax_chunk_bytes = 2048\n")
    with pytest.warns(FutureWarning):
        assert load_settings(path=path, environ={}).transfer.max_chunk_bytes == 2048


PLUGIN_WITH_A_SECTION = '''
from dataclasses import dataclass
from cellprofiler_omero.plugin import hookimpl

@dataclass(frozen=True)
class TileCacheSettings:
    folder: str = "/tmp/tiles"
    size_mib: int = 64

@hookimpl
def omero_settings_sections():
    return {SECTION: TileCacheSettings}
'''


def install_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, section: str) -> None:
    """A plugin installed the way a package installs one: entry-point metadata."""
    import sys

    module = f"cpo_sectioned_{section}"
    (tmp_path / f"{module}.py").write_text(PLUGIN_WITH_A_SECTION.replace("SECTION",
                                                                         repr(section)))
    dist = tmp_path / f"{module}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[cellprofiler_omero]\ntilecache = {module}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module, raising=False)


def test_a_third_party_plugin_declares_its_own_section(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    install_plugin(tmp_path, monkeypatch, "tilecache")
    env = {"CELLPROFILER_OMERO_TILECACHE_SIZE_MIB": "128"}
    settings = load_settings(path=write(tmp_path, '[tilecache]\nfolder = "/scratch"\n'),
                             environ=env)
    assert settings.section("tilecache").folder == "/scratch"
    assert settings.section("tilecache").size_mib == 128
    with pytest.raises(ConfigError, match=r"'tilecache\.sise_mib'"):
        Settings().replace({"tilecache.sise_mib": 1})


def test_a_section_of_a_plugin_not_installed_is_unknown(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'tilecache'") as failure:
        load_settings(path=write(tmp_path, "[tilecache]\nsize_mib = 1\n"), environ={})
    assert "plugin" in (failure.value.hint or "")


def test_a_plugin_may_not_take_a_section_someone_else_owns(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_plugin(tmp_path, monkeypatch, "tables")
    with pytest.raises(ConfigError, match=r"'tilecache'.*\[tables\].*the core"):
        load_settings(path=tmp_path / "absent.toml", environ={})


# -- config show / config path -----------------------------------------------------------


def test_config_show_gives_every_setting_with_the_layer_that_set_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import json
    import tomllib

    from cellprofiler_omero.cli import main

    path = write(tmp_path, '[tables]\nbatch_rows = 7\n[pixelbuffer.servers]\n"h" = "http://h/"\n')
    monkeypatch.setenv("CELLPROFILER_OMERO_CONFIG", str(path))
    monkeypatch.setenv("CELLPROFILER_OMERO_ICE_CONCURRENCY", "3")
    assert main(["config", "show", "--server", "omero.example.org"]) == 0
    text = capsys.readouterr().out
    assert tomllib.loads(text)["tables"]["batch_rows"] == 7  # the output is valid TOML
    assert f"batch_rows = 7  # {path}" in text
    assert "concurrency = 3  # environment variable CELLPROFILER_OMERO_ICE_CONCURRENCY" in text
    assert 'host = "omero.example.org"  # argument' in text
    assert "[ice]  # declared by plugin ice" in text
    assert main(["config", "show", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["pixelbuffer.servers"] == {"value": {"h": "http://h/"}, "origin": str(path)}
    assert data["retry.budget_seconds"]["origin"] == "default"


def test_config_show_fails_naming_a_bad_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from cellprofiler_omero.cli import main

    monkeypatch.setenv("CELLPROFILER_OMERO_CONFIG", str(write(tmp_path, "[ice]\nspeed = 1\n")))
    assert main(["config", "show"]) == 1
    assert "'ice.speed'" in capsys.readouterr().err


def test_config_path_prints_the_file_and_says_when_it_is_missing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from cellprofiler_omero.cli import main

    monkeypatch.setenv("CELLPROFILER_OMERO_CONFIG", str(tmp_path / "mine.toml"))
    assert main(["config", "path"]) == 0
    out, err = capsys.readouterr()
    assert out == f"{tmp_path / 'mine.toml'}\n" and "does not exist" in err
    write(tmp_path, "")
    (tmp_path / "config.toml").rename(tmp_path / "mine.toml")
    assert main(["config", "path"]) == 0
    assert capsys.readouterr().err == ""


def test_bad_value_hints_point_at_a_command_that_exists(tmp_path: Path) -> None:
    from cellprofiler_omero.cli import build_parser

    with pytest.raises(ConfigError) as failure:
        load_settings({"server.port": "many"}, path=tmp_path / "x.toml", environ={})
    assert "`cellprofiler-omero config show`" in (failure.value.hint or "")
    assert build_parser().parse_args(["config", "show"]).action == "show"


def test_settings_with_plugin_sections_pickle_for_other_processes() -> None:
    import pickle

    from cellprofiler_omero.transports.ice.settings import IceSettings

    settings = Settings().replace({"ice.concurrency": 2, "tables.batch_rows": 5})
    back = pickle.loads(pickle.dumps(settings))
    assert back == settings
    assert back.section(IceSettings).concurrency == 2 and back.tables.batch_rows == 5
    with pytest.raises(TypeError):  # still read-only after the trip
        back.plugins["ice"] = IceSettings()  # type: ignore[index]
