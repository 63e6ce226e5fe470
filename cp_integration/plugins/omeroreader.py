"""CellProfiler plugin file: the OMERO image reader."""

from cellprofiler_omero.cp_integration import compat
from cellprofiler_omero.cp_integration.reader import OMEROReader as _OMEROReader

compat.install()


class OMEROReader(_OMEROReader):
    """Reads images from OMERO servers: paste OMERO.web image links or omero:iid=N URLs."""
