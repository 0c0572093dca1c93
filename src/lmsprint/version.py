"""The package version, in the bottom layer so that any module can record it (run directories, exports)."""

__version__ = "0.1.0"
