"""The emulator's Ice servants, one module per OMERO service family."""
