"""iratrainer: an interventional radiology simulation trainer.

The simulation core (``anatomy``, ``physics``, ``flow``, ``scenario``, ``scoring``)
never imports a window, GL or database library; see ``docs/ARCHITECTURE.md``.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
