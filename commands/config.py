"""``config``: the effective settings and where each comes from; the settings file's path."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from cellprofiler_omero.commands import common


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``config show`` and ``config path``."""
    config = sub.add_parser(
        "config", help="show the effective settings, or where the settings file is",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Settings come in layers, each overriding the ones before: defaults, "
                    "the TOML file,\nenvironment variables CELLPROFILER_OMERO_<SECTION>_<KEY>, "
                    "CellProfiler's reader\nsettings, then command-line options. Sections "
                    "[ice] and [pixelbuffer] belong to\ntheir transports; other installed "
                    "transports add their own.",
        epilog="examples:\n"
               "  cellprofiler-omero config show              every setting and its layer\n"
               "  cellprofiler-omero config show --json\n"
               "  cellprofiler-omero config path              the TOML file to edit")
    actions = config.add_subparsers(dest="action", metavar="ACTION")
    show = actions.add_parser(
        "show", help="every setting's effective value and the layer that set it",
        description="Print every setting as TOML, each with a comment naming the layer "
                    "that set it (default, the file, an environment variable, an option). "
                    "Fails like any command would when a setting is unknown or invalid, "
                    "naming it.")
    common.add_server_options(show)
    show.add_argument("--json", action="store_true",
                      help='print {"section.key": {"value": …, "origin": …}} for programs')
    actions.add_parser(
        "path", help="print where the settings file is (or would be)",
        description="Print the settings file's path: $CELLPROFILER_OMERO_CONFIG, else "
                    "${XDG_CONFIG_HOME:-~/.config}/cellprofiler-omero/config.toml. A note on "
                    "stderr says when it does not exist yet.")
    config.set_defaults(handler=cmd_config, config_parser=config)


def cmd_config(args: argparse.Namespace) -> int:
    """``config ACTION``; without an action, the help."""
    if args.action == "show":
        return cmd_show(args)
    if args.action == "path":
        return cmd_path(args)
    args.config_parser.print_help()
    return 0


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    if getattr(args, "server", None):
        overrides["server.host"] = args.server
    if getattr(args, "port", None) is not None:
        overrides["server.port"] = args.port
    return overrides


def effective(overrides: Mapping[str, Any] | None = None
              ) -> list[tuple[str, str, list[tuple[str, Any, str]]]]:
    """Per section: name, owner (``core`` or ``plugin NAME``), and ``(key, value, origin)``
    for every key, ``origin`` being ``default`` when no layer set it."""
    from cellprofiler_omero.core.config import (
        load_settings_with_origins,
        plugin_sections,
        section_values,
    )

    settings, origins = load_settings_with_origins(overrides)
    declared = plugin_sections()
    out: list[tuple[str, str, list[tuple[str, Any, str]]]] = []
    for name, values in section_values(settings).items():
        owner = f"plugin {declared[name].plugin}" if name in declared else "core"
        keys = [(f.name, getattr(values, f.name), origins.get(f"{name}.{f.name}", "default"))
                for f in fields(values)]
        out.append((name, owner, keys))
    return out


def toml_value(value: Any) -> str:
    """``value`` written as TOML (the types settings have)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(v)}"
                                for k, v in value.items()) + " }"
    return json.dumps(str(value))


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Mapping):
        return dict(value)
    return value


def cmd_show(args: argparse.Namespace) -> int:
    """Print the effective settings with the layer each came from."""
    from cellprofiler_omero.core.config import default_config_path

    sections = effective(_overrides(args))
    if args.json:
        common.print_json({f"{name}.{key}": {"value": _plain(value), "origin": origin}
                           for name, _, keys in sections for key, value, origin in keys})
        return 0
    path = default_config_path()
    lines = [f"# settings file: {path}{'' if path.is_file() else ' (does not exist)'}"]
    for name, owner, keys in sections:
        lines.append("")
        lines.append(f"[{name}]" + ("" if owner == "core" else f"  # declared by {owner}"))
        for key, value, origin in keys:
            lines.append(f"{key} = {toml_value(value)}  # {origin}")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def cmd_path(args: argparse.Namespace) -> int:
    """Print the settings file's path."""
    from cellprofiler_omero.core.config import default_config_path

    path = default_config_path()
    print(path)
    if not path.is_file():
        common.note(f"note: {path} does not exist yet; create it to change settings "
                    "(`cellprofiler-omero config show` prints the current ones as TOML)")
    return 0
