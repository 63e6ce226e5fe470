"""``python -m cellprofiler_omero`` is the ``cellprofiler-omero`` command."""

from cellprofiler_omero.cli import main

raise SystemExit(main())
