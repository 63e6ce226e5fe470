"""The ``cellprofiler-omero`` subcommands (command-line code: these modules print).

Each module adds its subcommands to the parser with ``add_parsers(subparsers)``;
``cli.main`` runs the chosen handler and turns every ``OmeroError`` into one
``error: …`` line. Heavy imports (omero-py, the session manager) happen inside the
handlers so that ``--help`` stays fast.
"""
