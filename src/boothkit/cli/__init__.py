"""The `boothkit` command line: a thin layer over the library (each verb in its own module)."""
