"""cellprofiler_omero.emulator."""
