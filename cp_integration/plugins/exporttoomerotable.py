"""CellProfiler plugin file: ExportToOMEROTable."""

from cellprofiler_omero.cp_integration import compat
from cellprofiler_omero.cp_integration.export_table import ExportToOMEROTable as _Module

compat.install()


class ExportToOMEROTable(_Module):
    """Export measurements to OMERO.tables beside the images they describe."""
