"""cellprofiler-omero in CellProfiler's desktop window: Plugins menu, Connect dialog, browser.

Importing this package needs neither wx nor CellProfiler's GUI, so plugin files may
import it anywhere (headless runs, analysis workers, the command line). ``install()``
does the wiring, and only in a process that shows CellProfiler's window:

* the Plugins menu entries *Connect to OMERO*, *Connect to OMERO (no token)*,
  *Browse OMERO for images* and *Disconnect from OMERO*;
* the "connected by token" message (from the ``omero_session_changed`` hook);
* the Connect dialog opening by itself when a pipeline needs OMERO and no session
  exists (before a run, and when the reader is refused for want of a login: the
  ``omero_login_needed`` hook);
* the window title naming the connected server and user, the file list accepting
  dropped OMERO links, and the session ending when CellProfiler quits.

Start the GUI with ``python -m cellprofiler_omero.cp_integration.gui.launcher``
(CellProfiler's own ``main``, with two Python 3.11 layout fixes and this package's
plugins folder).
"""

from __future__ import annotations

import importlib.util
import logging

log = logging.getLogger(__name__)


def available() -> bool:
    """True in a process that runs (or is about to run) CellProfiler's window.

    That needs wx and ``cellprofiler.gui`` importable and CellProfiler not set headless
    (``set_headless`` runs before plugins load in headless runs and analysis workers),
    so nothing here imports wx where no window will ever be shown.
    """
    try:
        if importlib.util.find_spec("wx") is None or \
                importlib.util.find_spec("cellprofiler.gui") is None:
            return False
        from cellprofiler_core.preferences import get_headless
    except (ImportError, ValueError):
        return False
    return not get_headless()


def install() -> bool:
    """Wire the GUI into CellProfiler when ``available()``; safe to call more than once.

    Returns whether the GUI parts are installed. Never raises: a failure is logged and
    CellProfiler keeps working without the menu.
    """
    if not available():
        return False
    try:
        from cellprofiler_omero.cp_integration.gui import integration

        integration.install()
    except Exception:  # the reader must keep working even if the GUI parts fail
        log.warning("cellprofiler-omero: the OMERO menu could not be installed",
                    exc_info=True)
        return False
    return True
