"""The import contract: dependencies point inward, read from the source of every module.

``core`` imports no transport, no CellProfiler integration, no command, and none of the
libraries a transport or CellProfiler brings (omero-py, Ice, requests, CellProfiler,
wx); ``cp_integration`` and ``commands`` reach transports only through the core's
roles and hooks, never by import. The modules are found by walking the folders and
their imports read with ``ast`` (every ``import`` statement, at any depth, including
those inside functions and ``TYPE_CHECKING`` blocks), so a module added tomorrow is
checked too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import cellprofiler_omero

PACKAGE = "cellprofiler_omero"
ROOT = Path(cellprofiler_omero.__file__).resolve().parent

#: What ``core`` may not import (a name or any module below it).
CORE_FORBIDDEN = (
    f"{PACKAGE}.transports", f"{PACKAGE}.cp_integration", f"{PACKAGE}.commands",
    f"{PACKAGE}.emulator", f"{PACKAGE}.cli", f"{PACKAGE}.api",
    "cellprofiler", "cellprofiler_core", "omero", "omero_user_token", "Ice", "IcePy",
    "Glacier2", "requests", "urllib3", "wx",
)
#: Libraries no core module may load, directly or through another dependency.
LIBRARIES = ["omero", "Ice", "IcePy", "Glacier2", "requests", "cellprofiler",
             "cellprofiler_core", "wx"]
#: Parts of this package no core module may load.
OUTER_PARTS = [f"{PACKAGE}.{part}" for part in ("transports", "cp_integration", "commands",
                                                "emulator")]
#: What ``cp_integration`` and ``commands`` may not import.
OUTER_FORBIDDEN = (f"{PACKAGE}.transports",)


def modules_of(subpackage: str) -> dict[str, Path]:
    """Every module of ``cellprofiler_omero.<subpackage>``, by dotted name."""
    folder = ROOT / subpackage
    found: dict[str, Path] = {}
    for path in sorted(folder.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join((PACKAGE, *parts))] = path
    return found


def imports_of(module: str, path: Path) -> set[str]:
    """The absolute names of every module ``path`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[:len(base) - node.level + (1 if is_package else 0)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            names.add(stem)
            # ``from pkg import mod`` may import a module: count ``pkg.mod`` too.
            names.update(f"{stem}.{alias.name}" for alias in node.names)
    return names


def violations(subpackage: str, forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for module, path in modules_of(subpackage).items():
        for name in sorted(imports_of(module, path)):
            if any(name == bad or name.startswith(bad + ".") for bad in forbidden):
                found.append(f"{path.relative_to(ROOT)} imports {name}")
    return found


def test_every_core_module_is_found_by_walking_the_folder() -> None:
    core = modules_of("core")
    # The walk finds the modules the architecture names, and more when more are added.
    assert {f"{PACKAGE}.core.{name}" for name in ("session", "registry", "errors", "roles",
                                                   "handoff", "credentials")} <= set(core)
    assert len(core) == len(list((ROOT / "core").rglob("*.py")))


def test_core_imports_no_transport_integration_command_or_their_libraries() -> None:
    assert violations("core", CORE_FORBIDDEN) == []


def test_cp_integration_imports_no_transport() -> None:
    assert violations("cp_integration", OUTER_FORBIDDEN) == []


def test_commands_import_no_transport() -> None:
    assert violations("commands", OUTER_FORBIDDEN) == []


def test_the_contract_check_sees_relative_nested_and_from_imports(tmp_path: Path) -> None:
    # The reader of imports must catch every way of writing one, or the tests above
    # could pass while a forbidden import hides in a function.
    source = tmp_path / "probe.py"
    source.write_text(
        "from __future__ import annotations\n"
        "import typing\n"
        "if typing.TYPE_CHECKING:\n"
        "    from ..transports.ice import connection\n"
        "def later():\n"
        "    import omero.gateway\n"
        "    from .. import cp_integration\n")
    names = imports_of(f"{PACKAGE}.core.probe", source)
    assert f"{PACKAGE}.transports.ice.connection" in names
    assert "omero.gateway" in names
    assert f"{PACKAGE}.cp_integration" in names


def test_importing_every_core_module_loads_no_transport_library() -> None:
    # The source check above sees what is written; this sees what is loaded (a core
    # dependency that itself pulls in omero-py or requests would show here).
    core = sorted(modules_of("core"))
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in core)
        + "from cellprofiler_omero.core.registry import Registry\n"
        + "from cellprofiler_omero.core.config import Settings\n"
        + "Registry(Settings(), load_entry_points=False)\n"
        + f"libraries = {LIBRARIES!r}\n"
        + f"inner = {OUTER_PARTS!r}\n"
        + "bad = [m for m in sys.modules if m.split('.')[0] in libraries\n"
        + "       or any(m == p or m.startswith(p + '.') for p in inner)]\n"
        + "print(','.join(sorted(bad)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == ""
