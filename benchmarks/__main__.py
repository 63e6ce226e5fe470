"""``python -m cellprofiler_omero.benchmarks`` (or ``python -m benchmarks`` in the repo)."""

from __future__ import annotations

from cellprofiler_omero.benchmarks import main

raise SystemExit(main())
