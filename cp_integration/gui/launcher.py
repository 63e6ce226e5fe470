"""Start CellProfiler's desktop window with cellprofiler-omero's plugins.

    python -m cellprofiler_omero.cp_integration.gui.launcher [CellProfiler arguments]

It runs CellProfiler's own ``main`` after three fixes for Python 3.11 that CellProfiler
5.0.0.dev784 needs under wxPython 4.2 (floats where wx wants integers, which garble the
window's layout or break analysis):

* the module-settings sizer (``ModuleSizer.RecalcSizes``) computes positions and wrap
  widths with ``/``; the same function, compiled with ``//``, gives a correct layout;
* the main window gives sash windows a float default height
  (``SashLayoutWindow.SetDefaultSize``); sizes are rounded to integers;
* the analysis progress bar is given a float percentage (``Gauge.SetValue``), which
  stops "Analyze Images" before any worker starts; values are rounded to integers.

Unless ``--plugins-directory`` is given, this package's plugins folder is used (the
analysis workers get it from CellProfiler too). When CellProfiler's window closes,
the OMERO session is ended before the process exits.
"""

from __future__ import annotations

import ast
import inspect
import logging
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)


class _DivisionToFloorDivision(ast.NodeTransformer):
    def visit_BinOp(self, node: ast.BinOp) -> Any:
        self.generic_visit(node)
        if isinstance(node.op, ast.Div):
            node.op = ast.FloorDiv()
        return node


def _recompiled_with_floor_division(cls: type, name: str) -> Any:
    """``cls.name`` compiled again with every ``/`` turned into ``//``.

    The function is compiled inside a class of the same name so that its private
    (``self.__x``) attributes are mangled as in the original.
    """
    function = getattr(cls, name)
    source = textwrap.dedent(inspect.getsource(function))
    tree = ast.parse(f"class {cls.__name__}:\n" + textwrap.indent(source, "    "))
    tree = ast.fix_missing_locations(_DivisionToFloorDivision().visit(tree))
    module = sys.modules[cls.__module__]
    namespace: dict[str, Any] = {}
    exec(compile(tree, inspect.getsourcefile(function) or "<patched>", "exec"),
         vars(module), namespace)
    patched = getattr(namespace[cls.__name__], name)
    patched.__qualname__ = function.__qualname__
    return patched


def patch_layout() -> list[str]:
    """Apply both layout fixes (idempotent); returns the names of those applied now.

    CellProfiler's module view creates wx objects when it is imported, so it needs the
    ``wx.App``: without one, the sizer fix is applied by the application's ``OnInit``
    (before the window is built) instead.
    """
    import wx
    import wx.adv

    applied: list[str] = []
    if wx.GetApp() is None:
        from cellprofiler.gui import app as app_module

        if not getattr(app_module.App.OnInit, "_cellprofiler_omero", False):
            on_init = app_module.App.OnInit

            def patched_on_init(self: Any) -> Any:
                patch_layout()
                return on_init(self)

            patched_on_init._cellprofiler_omero = True  # type: ignore[attr-defined]
            app_module.App.OnInit = patched_on_init
            applied.append("App.OnInit")
    else:
        applied += _patch_module_sizer()
    applied += _patch_sash()
    applied += _patch_gauge()
    return applied


def _patch_module_sizer() -> list[str]:
    try:
        from cellprofiler.gui.module_view._module_sizer import ModuleSizer

        if getattr(ModuleSizer.RecalcSizes, "_cellprofiler_omero", False):
            return []
        patched = _recompiled_with_floor_division(ModuleSizer, "RecalcSizes")
        patched._cellprofiler_omero = True
        ModuleSizer.RecalcSizes = patched
    except (ImportError, OSError, SyntaxError, TypeError) as exc:
        # No source to recompile (a frozen build): the window works, its layout suffers.
        log.warning("could not fix CellProfiler's module settings layout: %s", exc)
        return []
    return ["ModuleSizer.RecalcSizes"]


def _patch_sash() -> list[str]:
    import wx
    import wx.adv

    sash = wx.adv.SashLayoutWindow
    if not getattr(sash.SetDefaultSize, "_cellprofiler_omero", False):
        original = sash.SetDefaultSize

        def set_default_size(self: Any, size: Any) -> Any:
            width, height = size
            return original(self, wx.Size(int(width), int(height)))

        set_default_size._cellprofiler_omero = True  # type: ignore[attr-defined]
        sash.SetDefaultSize = set_default_size
        return ["SashLayoutWindow.SetDefaultSize"]
    return []


def _patch_gauge() -> list[str]:
    import wx

    if getattr(wx.Gauge.SetValue, "_cellprofiler_omero", False):
        return []
    original = wx.Gauge.SetValue

    def set_value(self: Any, value: Any) -> Any:
        return original(self, round(value))

    set_value._cellprofiler_omero = True  # type: ignore[attr-defined]
    wx.Gauge.SetValue = set_value
    return ["Gauge.SetValue"]


def cellprofiler_arguments(argv: Sequence[str]) -> list[str]:
    """``argv`` with this package's plugins folder added unless one is given."""
    from cellprofiler_omero.cp_integration import plugins_dir

    args = list(argv)
    if not any(a == "--plugins-directory" or a.startswith("--plugins-directory=")
               for a in args):
        args += ["--plugins-directory", str(plugins_dir())]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run CellProfiler (the GUI unless the arguments ask for a headless run)."""
    args = cellprofiler_arguments(sys.argv[1:] if argv is None else argv)
    patch_layout()
    from cellprofiler.__main__ import main as cellprofiler_main

    # CellProfiler parses sys.argv itself.
    sys.argv = [sys.argv[0] or "cellprofiler", *args]
    try:
        code = cellprofiler_main(sys.argv)
    finally:
        _end_session()
    return int(code or 0)


def _end_session() -> None:
    """End the OMERO session and the event loop before the interpreter exits."""
    try:
        from cellprofiler_omero.core import runtime

        runtime.shutdown()
    except Exception as exc:  # exiting must not fail on cleanup
        log.warning("cellprofiler-omero shutdown failed: %s", exc)


if __name__ == "__main__":
    sys.exit(main())
