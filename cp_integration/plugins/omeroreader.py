"""CellProfiler plugin file: the OMERO image reader (and, in the desktop GUI, the OMERO menu).

The menu lives here rather than in a file of its own because CellProfiler registers
one Module or Reader class per plugin file and warns about files without one.
``gui.install()`` does nothing (and imports no wx) in headless runs and analysis
workers.
"""

import sys
from types import ModuleType

from cellprofiler_omero.cp_integration import compat, session
from cellprofiler_omero.cp_integration import reader as _reader
from cellprofiler_omero.cp_integration.reader import OMEROReader as _OMEROReader

_gui: ModuleType | None
try:
    from cellprofiler_omero.cp_integration import gui as _gui
except ImportError:  # an installation without the GUI parts: the reader works alone
    _gui = None

compat.install()
# A headless run handed a session joins it while CellProfiler loads the pipeline, and
# starts reading the file list's first image (the first image set overlaps nothing else).
if session.connect_early():
    _reader.warm_first_image(sys.argv)


class OMEROReader(_OMEROReader):
    """Reads images from OMERO servers: paste OMERO.web image links or omero:iid=N URLs."""


# After the class: the loader registers the first class defined in this file.
if _gui is not None:
    _gui.install()
