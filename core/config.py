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
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from cellprofiler_omero.core.errors import ConfigError

ENV_PREFIX = "CELLPROFILER_OMERO_"
ROLES = ("connect", "read", "upload", "tables")


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
class IceSettings:
    """The Ice transport."""

    #: Largest message the client plans for, in KiB (OMERO's default limit is 250,000 KiB).
    message_limit_kib: int = 65536
    #: Largest tile requested in one call, in bytes (well under the message limit).
    max_tile_bytes: int = 8 * 1024 * 1024
    #: RawPixelsStore handles opened per image for concurrent tiles.
    stores_per_image: int = 4
    #: Concurrent blocking Ice calls per process.
    concurrency: int = 8
    #: How long a read waits for the server to build a new big image's pyramid, in
    #: seconds (each wait as long as the server asks); 0 fails at once.
    pyramid_wait_seconds: float = 120.0


@dataclass(frozen=True)
class PixelBufferSettings:
    """The omero-ms-pixel-buffer HTTP transport."""

    #: Base URL per OMERO server host, e.g. ``{"omero.example.org" = "https://omero.example.org/tile"}``.
    servers: Mapping[str, str] = field(default_factory=dict)
    verify: bool = True
    #: A CA bundle file to verify the service's certificate with.
    ca_bundle: str = ""
    retries: int = 3
    timeout_seconds: float = 60.0
    concurrency: int = 8


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
    ice: IceSettings = IceSettings()
    pixelbuffer: PixelBufferSettings = PixelBufferSettings()
    tables: TableSettings = TableSettings()
    reader: ReaderSettings = ReaderSettings()
    retry: RetrySettings = RetrySettings()

    def replace(self, overrides: Mapping[str, Any]) -> Settings:
        """A copy with ``{"section.key": value}`` overrides applied (validated)."""
        return _apply(self, {k: (v, "argument") for k, v in overrides.items()})


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def default_config_path() -> Path:
    """Where the per-user settings file lives."""
    explicit = os.environ.get("CELLPROFILER_OMERO_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "cellprofiler-omero" / "config.toml"


def _section_types() -> dict[str, type]:
    hints = typing.get_type_hints(Settings)
    return {f.name: hints[f.name] for f in fields(Settings)}


def _coerce(value: Any, annotation: Any, key: str, origin: str) -> Any:
    def bad(expected: str) -> ConfigError:
        return ConfigError(
            f"Setting {key!r} from {origin} must be {expected}, not {value!r}.",
            hint=f"Fix it in {origin} (see `cellprofiler-omero config --help`).",
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


def _apply(settings: Settings, values: Mapping[str, tuple[Any, str]]) -> Settings:
    sections = _section_types()
    changes: dict[str, dict[str, Any]] = {}
    for dotted, (value, origin) in values.items():
        section, _, key = dotted.partition(".")
        if section not in sections:
            raise ConfigError(
                f"Unknown settings section {section!r} (in {dotted!r} from {origin}).",
                hint=f"Known sections: {', '.join(sorted(sections))}.",
            )
        section_type = sections[section]
        hints = typing.get_type_hints(section_type)
        if key not in hints:
            raise ConfigError(
                f"Unknown setting {dotted!r} from {origin}.",
                hint=f"Known keys in [{section}]: {', '.join(sorted(hints))}.",
            )
        changes.setdefault(section, {})[key] = _coerce(value, hints[key], dotted, origin)
    new_sections = {
        name: dataclasses.replace(getattr(settings, name), **kw) for name, kw in changes.items()
    }
    result = dataclasses.replace(settings, **new_sections)
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
        "ice.message_limit_kib": settings.ice.message_limit_kib,
        "ice.max_tile_bytes": settings.ice.max_tile_bytes,
        "ice.stores_per_image": settings.ice.stores_per_image,
        "ice.concurrency": settings.ice.concurrency,
        "pixelbuffer.concurrency": settings.pixelbuffer.concurrency,
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
    if settings.retry.budget_seconds < 0:
        raise ConfigError(
            f"Setting 'retry.budget_seconds' must be 0 or more, not "
            f"{settings.retry.budget_seconds}.", hint="0 turns retries off.")
    if not 0 < settings.retry.initial_delay_seconds <= settings.retry.max_delay_seconds:
        raise ConfigError(
            "Setting 'retry.initial_delay_seconds' must be positive and at most "
            "'retry.max_delay_seconds'.")
    if settings.pixelbuffer.retries < 0:
        raise ConfigError("Setting 'pixelbuffer.retries' must be 0 or more.")
    if settings.tables.long_strings not in ("truncate", "error"):
        raise ConfigError(
            f"Setting 'tables.long_strings' must be 'truncate' or 'error', not "
            f"{settings.tables.long_strings!r}."
        )
    if settings.ice.max_tile_bytes > settings.ice.message_limit_kib * 1024 // 2:
        raise ConfigError(
            "Setting 'ice.max_tile_bytes' must stay under half of 'ice.message_limit_kib'.",
            hint="Lower ice.max_tile_bytes or raise ice.message_limit_kib.",
        )


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
    sections = _section_types()
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
    return _apply(Settings(), values), {key: origin for key, (_, origin) in values.items()}
