"""Settings in layers; each layer overrides the ones before it, key by key:

1. Defaults (the dataclasses below).
2. File: ``$CELLPROFILER_OMERO_CONFIG`` if set, else
   ``${XDG_CONFIG_HOME:-~/.config}/cellprofiler-omero/config.toml`` (absent is fine).
3. Environment: ``CELLPROFILER_OMERO_<SECTION>_<KEY>``, e.g.
   ``CELLPROFILER_OMERO_TRANSPORTS_READ=pixelbuffer,ice``. Lists are comma
   separated; tables are ``key=value`` pairs, comma separated; booleans are
   ``1/0/true/false/yes/no/on/off``.
4. Application: settings the user set in the program hosting the package, e.g.
   CellProfiler's reader settings (``load_settings(application={key: (value, origin)})``).
   Only values the user actually set belong here, never the host's defaults, so an
   unset host setting leaves the environment and the file in charge.
5. Arguments: ``load_settings(overrides={"transports.read": ["ice"]})`` (CLI options).

Unknown sections or keys and values of the wrong type raise ``ConfigError``
naming the key and where it came from.

Sections have owners. The core declares the transport-neutral ones below
(``server``, ``auth``, ``transports``, ``transfer``, ``tables``, ``reader``,
``retry``); each transport plugin declares its own (``[ice]``, ``[pixelbuffer]``)
through the ``omero_settings_sections`` hook, as pytest plugins add options with
``pytest_addoption``. Plugin sections are found through the same entry points as the
transports, so a section is known exactly when its plugin is installed; read one with
``settings.section(IceSettings)`` (typed) or ``settings.ice`` (untyped). A section
class may define ``check(self, settings)`` to refuse values (``ConfigError``).

Renamed keys keep working for a while with a ``FutureWarning`` naming the new key
(``ice.max_tile_bytes`` → ``transfer.max_chunk_bytes``: the core's table batches and
every read transport obey it, so it is no longer the Ice transport's).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tomllib
import types
import typing
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from cellprofiler_omero.core.errors import ConfigError

log = logging.getLogger(__name__)

ENV_PREFIX = "CELLPROFILER_OMERO_"
ROLES = ("connect", "read", "upload", "tables")
#: The entry-point group through which plugins (and their settings sections) are found.
ENTRY_POINT_GROUP = "cellprofiler_omero"
#: Keys that moved: old dotted key → new dotted key (the old one warns, then applies).
RENAMED = {"ice.max_tile_bytes": "transfer.max_chunk_bytes"}
S = TypeVar("S")


@dataclass(frozen=True)
class ServerSettings:
    """Which server to use when a reference does not name one."""

    host: str = ""
    port: int = 4064
    #: OMERO.web root for links (``https://omero.example.org/``); empty: ``https://<host>/``.
    web_url: str = ""
    #: Keep all traffic on the SSL connection instead of the server's insecure router.
    secure: bool = False
    #: Group to act in; -1 reads across all groups the user belongs to.
    group: int = -1
    #: How long connecting may take, in seconds: a server (or a firewall) that accepts
    #: the connection but never answers fails after this long with one clear error.
    connect_timeout_seconds: float = 15.0


@dataclass(frozen=True)
class AuthSettings:
    """How sessions are obtained and kept."""

    use_token: bool = True
    #: Folder of omero-user-token's token; empty: ``$OMERO_USER_TOKEN_DIR`` or its default.
    token_dir: str = ""
    show_token_message: bool = True
    #: Time-to-idle asked for a saved token, in minutes (clamped to the server's maximum).
    token_time_to_idle_minutes: int = 100
    keepalive_seconds: int = 60


@dataclass(frozen=True)
class TransportSettings:
    """Transport names per role, tried in order (a decline or transient failure falls through)."""

    connect: tuple[str, ...] = ("ice",)
    read: tuple[str, ...] = ("ice",)
    upload: tuple[str, ...] = ("ice",)
    tables: tuple[str, ...] = ("ice",)


@dataclass(frozen=True)
class TransferSettings:
    """Limits every transport obeys (no transport owns them)."""

    #: Largest piece fetched or sent in one call, in bytes: a tile of pixels (Ice,
    #: pixel-buffer) or a batch of table rows. Well under any message limit.
    max_chunk_bytes: int = 8 * 1024 * 1024
    #: SaveImagesToOMERO: uploads that may wait or run behind the pipeline (each holds
    #: its pixels in memory); a further save waits for room. 0: each upload completes
    #: before the pipeline goes on.
    upload_queue: int = 2


@dataclass(frozen=True)
class TableSettings:
    """OMERO.tables writing."""

    batch_rows: int = 10000
    #: Refuse tables wider than this before the server fails (HDF5 header limit).
    max_columns: int = 500
    string_size: int = 256
    #: ``truncate`` (cut and log), or ``error``: what to do with strings longer than their column.
    long_strings: str = "truncate"


@dataclass(frozen=True)
class ReaderSettings:
    """The CellProfiler reader."""

    #: Start reading the other channels of an image when its first is asked for.
    readahead: bool = True
    #: Memory the read-ahead cache may hold, in MiB.
    cache_mib: int = 512
    #: A headless ``cellprofiler -c -r --file-list FILE`` run handed a session starts
    #: reading the file list's first OMERO image (z=0, t=0, every channel) as the reader
    #: plugin loads, before the first image set asks (within ``cache_mib``; needs
    #: ``readahead``). Off: the first image set is read when the run is prepared.
    warm_first_image: bool = True


@dataclass(frozen=True)
class RetrySettings:
    """Retries of calls that are safe to repeat (reads, look-ups, keyed writes, logins).

    A failing call is tried again after waits that grow exponentially from
    ``initial_delay_seconds`` up to ``max_delay_seconds`` (each drawn at random below
    that bound: full jitter, so many workers do not retry in step) until
    ``budget_seconds`` have passed since its first attempt. 0 turns retries off.
    """

    budget_seconds: float = 60.0
    initial_delay_seconds: float = 0.2
    max_delay_seconds: float = 3.0


@dataclass(frozen=True)
class Settings:
    """All settings; every section is a frozen dataclass with documented defaults."""

    server: ServerSettings = ServerSettings()
    auth: AuthSettings = AuthSettings()
    transports: TransportSettings = TransportSettings()
    transfer: TransferSettings = TransferSettings()
    tables: TableSettings = TableSettings()
    reader: ReaderSettings = ReaderSettings()
    retry: RetrySettings = RetrySettings()
    #: Plugin sections that were set (``{"ice": IceSettings(...)}``); the others have
    #: their defaults. Read them with ``section()``.
    plugins: Mapping[str, Any] = field(default_factory=lambda: types.MappingProxyType({}))

    def replace(self, overrides: Mapping[str, Any]) -> Settings:
        """A copy with ``{"section.key": value}`` overrides applied (validated)."""
        return _apply(self, {k: (v, "argument") for k, v in overrides.items()})

    def section(self, kind: type[S] | str) -> S:
        """A plugin's section by its class (typed) or name, with its defaults when unset.

        ``settings.section(IceSettings).concurrency``. Raises ``ConfigError`` when no
        installed plugin declares it.
        """
        declared = plugin_sections()
        if isinstance(kind, str):
            name = kind
        else:
            name = next((n for n, d in declared.items() if d.type is kind), "")
        if name in self.plugins:
            value: S = self.plugins[name]
            return value
        if name not in declared:
            raise ConfigError(
                f"No installed plugin declares the settings section "
                f"{kind if isinstance(kind, str) else kind.__name__!r}.",
                hint=f"Plugin sections: {', '.join(sorted(declared)) or 'none'}.")
        default: S = declared[name].type()
        return default

    def __reduce__(self) -> tuple[Any, ...]:
        # Settings travel to other processes (Dask workers); a mappingproxy does not
        # pickle, so the plugin sections go as a plain dict and come back read-only.
        core = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "plugins"}
        return (_rebuild_settings, (core, dict(self.plugins)))

    def __getattr__(self, name: str) -> Any:
        # Plugin sections read like core ones (``settings.ice.concurrency``), untyped.
        if name.startswith("_") or name == "plugins":
            raise AttributeError(name)
        try:
            return self.section(name)
        except ConfigError:
            raise AttributeError(
                f"'Settings' has no section {name!r} (no installed plugin declares it)"
            ) from None


def _rebuild_settings(core: dict[str, Any], plugins: dict[str, Any]) -> Settings:
    return Settings(**core, plugins=types.MappingProxyType(plugins))


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def default_config_path() -> Path:
    """Where the per-user settings file lives."""
    explicit = os.environ.get("CELLPROFILER_OMERO_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "cellprofiler-omero" / "config.toml"


@dataclass(frozen=True)
class DeclaredSection:
    """A settings section a plugin declared: its class and the plugin's name."""

    type: type
    plugin: str


_declared_cache: tuple[tuple[tuple[str, str], ...], dict[str, DeclaredSection]] | None = None


_entry_points_cache: tuple[tuple[Any, ...], tuple[tuple[str, str], ...]] | None = None


def _path_stamp() -> tuple[Any, ...]:
    """``sys.path`` with each folder's modification time: installing or removing a
    distribution (its ``.dist-info``) changes the time of the folder it lands in."""
    import sys

    stamp: list[Any] = []
    for entry in sys.path:
        try:
            stamp.append((entry, os.stat(entry or ".").st_mtime_ns))
        except OSError:
            stamp.append((entry, None))
    return tuple(stamp)


def _plugin_entry_points() -> tuple[tuple[str, str], ...]:
    """``(name, value)`` of the group's entry points, read again only when ``sys.path``
    or one of its folders changed: reading them scans every installed distribution
    (tens of milliseconds), and plugin sections are read on every image a reader opens.
    """
    global _entry_points_cache
    from importlib.metadata import entry_points

    stamp = _path_stamp()
    if _entry_points_cache is not None and _entry_points_cache[0] == stamp:
        return _entry_points_cache[1]
    key = tuple(sorted((ep.name, ep.value) for ep in entry_points(group=ENTRY_POINT_GROUP)))
    _entry_points_cache = (stamp, key)
    return key


def plugin_sections() -> dict[str, DeclaredSection]:
    """The settings sections of the installed plugins (``omero_settings_sections``).

    Plugins are the entry points of group ``cellprofiler_omero``; the answer is kept
    until that set of entry points changes.
    """
    global _declared_cache
    key = _plugin_entry_points()
    if _declared_cache is not None and _declared_cache[0] == key:
        return _declared_cache[1]
    import pluggy

    from cellprofiler_omero.core import hookspecs

    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    declared: dict[str, DeclaredSection] = {}
    core = _section_types()
    for impl in pm.hook.omero_settings_sections.get_hookimpls():
        plugin = pm.get_name(impl.plugin) or "?"
        answer = typing.cast("Mapping[str, type] | None", impl.function())
        for name, kind in (answer or {}).items():
            if name in core or name in declared:
                owner = "the core" if name in core else f"plugin {declared[name].plugin!r}"
                raise ConfigError(
                    f"Plugin {plugin!r} declares the settings section [{name}], which "
                    f"{owner} declares already.",
                    hint="Plugins must name their sections after themselves.")
            if not dataclasses.is_dataclass(kind) or not isinstance(kind, type):
                raise ConfigError(f"Plugin {plugin!r} declares settings section [{name}] "
                                  "with something that is not a dataclass.")
            declared[name] = DeclaredSection(kind, plugin)
    _declared_cache = (key, declared)
    return declared


def _section_types() -> dict[str, type]:
    """The core's sections (``Settings`` fields, without ``plugins``)."""
    hints = typing.get_type_hints(Settings)
    return {f.name: hints[f.name] for f in fields(Settings) if f.name != "plugins"}


def section_types() -> dict[str, type]:
    """Every known section, the core's and the installed plugins', by name."""
    return {**_section_types(),
            **{name: d.type for name, d in plugin_sections().items()}}


def section_values(settings: Settings) -> dict[str, Any]:
    """Every section's current values (plugin sections with their defaults when unset)."""
    return {name: getattr(settings, name) if name in _section_types()
            else settings.section(name) for name in section_types()}


def _coerce(value: Any, annotation: Any, key: str, origin: str) -> Any:
    def bad(expected: str) -> ConfigError:
        return ConfigError(
            f"Setting {key!r} from {origin} must be {expected}, not {value!r}.",
            hint=f"Fix it in {origin} (`cellprofiler-omero config show` lists every "
                 "setting and where it comes from).",
        )

    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise bad("true or false")
    if annotation is int:
        if isinstance(value, bool):
            raise bad("an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                raise bad("an integer") from None
        raise bad("an integer")
    if annotation is float:
        if isinstance(value, bool):
            raise bad("a number")
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                raise bad("a number") from None
        raise bad("a number")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise bad("a string")
    origin_type = typing.get_origin(annotation)
    if origin_type is tuple:
        if isinstance(value, str):
            value = [item.strip() for item in value.split(",") if item.strip()]
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise bad("a list of names")
    if origin_type in (Mapping, dict) or annotation is Mapping:
        if isinstance(value, str):
            pairs: dict[str, str] = {}
            for item in value.split(","):
                if not item.strip():
                    continue
                name, sep, target = item.partition("=")
                if not sep:
                    raise bad("name=value pairs separated by commas")
                pairs[name.strip()] = target.strip()
            return types.MappingProxyType(pairs)
        if isinstance(value, Mapping) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            return types.MappingProxyType(dict(value))
        raise bad("a table of strings")
    raise bad(str(annotation))  # pragma: no cover - every field type is handled above


def renamed(values: Mapping[str, tuple[Any, str]]) -> dict[str, tuple[Any, str]]:
    """``values`` with renamed keys moved to their new names, warning once for each
    (``FutureWarning``: it is the user's settings, not code, that must change). A new
    key given as well wins over its old name."""
    out: dict[str, tuple[Any, str]] = {}
    for dotted, (value, origin) in values.items():
        new = RENAMED.get(dotted)
        if new is None:
            out[dotted] = (value, origin)
            continue
        message = (f"Setting {dotted!r} (from {origin}) is deprecated; it is now {new!r}. "
                   f"Rename it in {origin}.")
        warnings.warn(message, FutureWarning, stacklevel=3)
        log.warning("%s", message)
        if new not in values:
            out[new] = (value, origin)
    return out


def _apply(settings: Settings, values: Mapping[str, tuple[Any, str]]) -> Settings:
    sections = section_types()
    core = _section_types()
    changes: dict[str, dict[str, Any]] = {}
    for dotted, (value, origin) in renamed(values).items():
        section, _, key = dotted.partition(".")
        if section not in sections:
            raise ConfigError(
                f"Unknown settings section {section!r} (in {dotted!r} from {origin}).",
                hint=f"Known sections: {', '.join(sorted(sections))} (a plugin's section "
                     "is known when the plugin is installed).",
            )
        section_type = sections[section]
        hints = typing.get_type_hints(section_type)
        if key not in hints:
            raise ConfigError(
                f"Unknown setting {dotted!r} from {origin}.",
                hint=f"Known keys in [{section}]: {', '.join(sorted(hints))}.",
            )
        changes.setdefault(section, {})[key] = _coerce(value, hints[key], dotted, origin)
    new_sections = {name: dataclasses.replace(getattr(settings, name), **kw)
                    for name, kw in changes.items() if name in core}
    plugins = dict(settings.plugins)
    for name, kw in changes.items():
        if name not in core:
            plugins[name] = dataclasses.replace(settings.section(name), **kw)
    result = dataclasses.replace(settings, **new_sections,
                                 plugins=types.MappingProxyType(plugins))
    _validate(result)
    return result


def _validate(settings: Settings) -> None:
    for role in ROLES:
        names = getattr(settings.transports, role)
        if not names:
            raise ConfigError(
                f"Setting 'transports.{role}' is empty.",
                hint="Name at least one transport, e.g. [\"ice\"].",
            )
    positive = {
        "server.port": settings.server.port,
        "transfer.max_chunk_bytes": settings.transfer.max_chunk_bytes,
        "tables.batch_rows": settings.tables.batch_rows,
        "tables.max_columns": settings.tables.max_columns,
        "tables.string_size": settings.tables.string_size,
        "auth.keepalive_seconds": settings.auth.keepalive_seconds,
        "auth.token_time_to_idle_minutes": settings.auth.token_time_to_idle_minutes,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"Setting {key!r} must be positive, not {value}.")
    timeout = settings.server.connect_timeout_seconds
    # Ice takes whole milliseconds in a 32-bit int: a day is plenty and keeps it in range.
    if not 0 < timeout <= 86400:
        raise ConfigError(
            f"Setting 'server.connect_timeout_seconds' must be above 0 and at most 86400 "
            f"(a day), not {timeout}.")
    if settings.transfer.upload_queue < 0:
        raise ConfigError(
            f"Setting 'transfer.upload_queue' must be 0 or more, not "
            f"{settings.transfer.upload_queue}.", hint="0 uploads each image before going on.")
    if settings.retry.budget_seconds < 0:
        raise ConfigError(
            f"Setting 'retry.budget_seconds' must be 0 or more, not "
            f"{settings.retry.budget_seconds}.", hint="0 turns retries off.")
    if not 0 < settings.retry.initial_delay_seconds <= settings.retry.max_delay_seconds:
        raise ConfigError(
            "Setting 'retry.initial_delay_seconds' must be positive and at most "
            "'retry.max_delay_seconds'.")
    if settings.tables.long_strings not in ("truncate", "error"):
        raise ConfigError(
            f"Setting 'tables.long_strings' must be 'truncate' or 'error', not "
            f"{settings.tables.long_strings!r}."
        )
    # Plugin sections check themselves (and what of the rest they depend on).
    for name in plugin_sections():
        check = getattr(settings.section(name), "check", None)
        if callable(check):
            check(settings)


def positive(values: Mapping[str, int | float]) -> None:
    """Raise ``ConfigError`` naming the first of ``{"section.key": value}`` not above 0
    (for plugin sections' ``check``)."""
    for key, value in values.items():
        if value <= 0:
            raise ConfigError(f"Setting {key!r} must be positive, not {value}.")


def _flatten(data: Mapping[str, Any], origin: str) -> dict[str, tuple[Any, str]]:
    flat: dict[str, tuple[Any, str]] = {}
    for section, body in data.items():
        if not isinstance(body, Mapping):
            raise ConfigError(
                f"Top-level key {section!r} in {origin} must be a [section].",
                hint="Put settings under a section such as [transports].",
            )
        for key, value in body.items():
            flat[f"{section}.{key}"] = (value, origin)
    return flat


def _from_env(environ: Mapping[str, str]) -> dict[str, tuple[Any, str]]:
    # Longest names first, so a section whose name starts another's is not cut short.
    sections = sorted(section_types(), key=len, reverse=True)
    flat: dict[str, tuple[Any, str]] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == "CELLPROFILER_OMERO_CONFIG":
            continue
        rest = name[len(ENV_PREFIX):].lower()
        # Environment names of other parts of the package (session hand-off, …) are not settings.
        section = next((s for s in sections if rest.startswith(s + "_")), None)
        if section is None:
            continue
        key = rest[len(section) + 1:]
        flat[f"{section}.{key}"] = (value, f"environment variable {name}")
    return flat


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    *,
    path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    application: Mapping[str, tuple[Any, str]] | None = None,
) -> Settings:
    """Settings from the defaults, the file, the environment, ``application`` and
    ``overrides``, each overriding the ones before (see the module docstring).

    ``application`` maps ``"section.key"`` to ``(value, origin)``, where ``origin`` names
    the setting as its user knows it (it appears in error messages).
    """
    return load_settings_with_origins(overrides, path=path, environ=environ,
                                      application=application)[0]


def load_settings_with_origins(
    overrides: Mapping[str, Any] | None = None,
    *,
    path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    application: Mapping[str, tuple[Any, str]] | None = None,
) -> tuple[Settings, dict[str, str]]:
    """``load_settings`` plus where each setting that is not a default came from
    (``{"transports.read": "environment variable CELLPROFILER_OMERO_TRANSPORTS_READ"}``),
    so a program can say which layer decided."""
    config_path = path if path is not None else default_config_path()
    values: dict[str, tuple[Any, str]] = {}
    if config_path.is_file():
        try:
            with config_path.open("rb") as handle:
                data = tomllib.load(handle)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{config_path} is not valid TOML: {exc}.") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{config_path} is not valid TOML: not UTF-8 text.",
                              hint="Save the settings file as UTF-8.") from None
        except OSError as exc:
            raise ConfigError(
                f"Cannot read the settings file {config_path} "
                f"({exc.strerror or type(exc).__name__}).",
                hint="Make it readable, or point $CELLPROFILER_OMERO_CONFIG elsewhere.",
            ) from None
        values.update(_flatten(data, str(config_path)))
    values.update(_from_env(os.environ if environ is None else environ))
    values.update(application or {})
    for key, value in (overrides or {}).items():
        values[key] = (value, "argument")
    values = renamed(values)
    return _apply(Settings(), values), {key: origin for key, (_, origin) in values.items()}
