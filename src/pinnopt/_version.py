"""The package version, in a module of its own so that modules the package imports can read
it without importing the package itself (an import circle)."""

__version__ = "0.1.0"
