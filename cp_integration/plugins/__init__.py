"""cellprofiler_omero.cp_integration.plugins."""
