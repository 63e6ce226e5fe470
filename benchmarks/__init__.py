"""cellprofiler_omero.benchmarks."""
