"""Anatomy: the vessel tree, lumen queries, model files and the reference atlas."""

from __future__ import annotations

from iratrainer.anatomy.atlas import REQUIRED_LABELS, AtlasParams, build_atlas
from iratrainer.anatomy.io import export_vtp, load_vessels, save_vessels
from iratrainer.anatomy.tree import Branch, LumenQuery, VesselTree

__all__ = [
    "REQUIRED_LABELS",
    "AtlasParams",
    "Branch",
    "LumenQuery",
    "VesselTree",
    "build_atlas",
    "export_vtp",
    "load_vessels",
    "save_vessels",
]
