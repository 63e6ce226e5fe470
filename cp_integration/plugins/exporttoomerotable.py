"""CellProfiler plugin file: ExportToOMEROTable."""

from cellprofiler_omero.cp_integration import compat
from cellprofiler_omero.cp_integration.export_table import ExportToOMEROTable as _Module

compat.install()


class ExportToOMEROTable(_Module):
    __doc__ = _Module.__doc__  # CellProfiler shows the class docstring as the module's help
