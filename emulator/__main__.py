"""``python -m cellprofiler_omero.emulator`` runs an emulator in the foreground."""

from cellprofiler_omero.emulator.runner import main

raise SystemExit(main(say=lambda line: print(line, flush=True)))
