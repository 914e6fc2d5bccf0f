"""Every exception iratrainer raises on purpose lives here.

Each docstring says how the user recovers. The CLI turns any :class:`IratrainerError`
into one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations


class IratrainerError(Exception):
    """Base class: a user-facing error; fix the input named in the message and retry."""


class ModelFileError(IratrainerError):
    """A ``*.vessels.json`` model is missing, truncated or invalid; fix or regenerate the file."""


class VesselTreeError(IratrainerError):
    """A vessel tree is inconsistent (unknown label, cycle, bad geometry); fix the tree data."""


class AtlasError(IratrainerError):
    """Atlas parameters are out of range; choose values within the documented ranges."""


class OutputError(IratrainerError):
    """An output path cannot be written; choose a writable path or free disk space."""
