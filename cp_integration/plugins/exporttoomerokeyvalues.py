"""CellProfiler plugin file: ExportToOMEROKeyValues."""

from cellprofiler_omero.cp_integration import compat
from cellprofiler_omero.cp_integration.export_kv import ExportToOMEROKeyValues as _Module

compat.install()


class ExportToOMEROKeyValues(_Module):
    __doc__ = _Module.__doc__  # CellProfiler shows the class docstring as the module's help
