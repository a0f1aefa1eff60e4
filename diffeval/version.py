"""diffeval's version, in a module that imports nothing: the package, the CLI and the results'
provenance read it from here."""

__version__ = "0.1.0"
