"""The benchmark harness: this package's transports side by side with the usual ways.

``cellprofiler-omero bench`` and ``python -m cellprofiler_omero.benchmarks`` (or
``python -m benchmarks`` from the repository root) call ``main``. The modules:
``harness`` (command line, plans, the run), ``target`` (the server and its clients),
``paths_read``, ``paths_upload``, ``paths_tables``, ``paths_e2e`` (what is compared),
``ceilings`` and ``growth`` (what bounds and how it scales), ``timing``, ``machine`` and
``report`` (goals, table, plot). See ``benchmarks/README.md``.
"""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run the harness with ``argv`` (default ``sys.argv[1:]``); the exit status."""
    # Imported here so that importing the package (the CLI does, to find ``main``) and
    # the growth benchmark's fresh child processes stay light.
    from cellprofiler_omero.benchmarks.harness import main as harness_main

    return harness_main(argv)


__all__ = ["main"]
