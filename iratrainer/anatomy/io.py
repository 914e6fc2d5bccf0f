"""Model files: ``*.vessels.json`` (load with validation, save) and VTK PolyData export.

The format (version 1) is documented in ``docs/vessels-format.md``. In short::

    {
      "format": "iratrainer.vessels",
      "format_version": 1,
      "units": {"length": "mm"},
      "coordinate_system": "LPS",
      "metadata": {"source": "...", "method": "...", ...},
      "anastomoses": [["ACOM", "R_ACA_A1"], ...],          # optional
      "branches": [
        {"label": "AO_ASC", "parent": null, "parent_index": 0,
         "points_mm": [[x, y, z], ...], "radii_mm": [r, ...]},
        ...
      ]
    }

Every error names the file, the branch and the field, e.g.
``cases/x.vessels.json: branch 'L_ICA': radii_mm: radius must be > 0 mm``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from iratrainer.anatomy.tree import Branch, VesselTree
from iratrainer.errors import ModelFileError, OutputError, VesselTreeError

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "load_vessels",
    "save_vessels",
    "tree_from_dict",
    "tree_to_dict",
    "export_vtp",
    "atomic_write_bytes",
]

FORMAT_NAME = "iratrainer.vessels"
FORMAT_VERSION = 1


def tree_to_dict(tree: VesselTree) -> dict[str, Any]:
    """The JSON-ready dictionary of a tree (format version 1); floats keep full precision."""
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "units": {"length": "mm"},
        "coordinate_system": "LPS",
        "metadata": tree.metadata,
        "anastomoses": [list(p) for p in tree.anastomoses],
        "branches": [
            {
                "label": b.label,
                "parent": b.parent,
                "parent_index": int(b.parent_index),
                "points_mm": [[float(v) for v in row] for row in b.points_mm],
                "radii_mm": [float(v) for v in b.radii_mm],
            }
            for b in tree.branches
        ],
    }


def _num_array(value: Any, where: str, field: str, shape_hint: str) -> np.ndarray:
    if not isinstance(value, list):
        raise VesselTreeError(f"{where}: {field}: expected a list ({shape_hint})")
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise VesselTreeError(f"{where}: {field}: expected numbers ({shape_hint})") from None
    return arr


def tree_from_dict(data: Any) -> VesselTree:
    """Build and validate a tree from a parsed ``*.vessels.json`` document.

    Raises:
        VesselTreeError: naming the branch and the field at fault.
    """
    if not isinstance(data, dict):
        raise VesselTreeError("top level: expected a JSON object")
    if data.get("format") != FORMAT_NAME:
        raise VesselTreeError(f"format: expected '{FORMAT_NAME}', got {data.get('format')!r}")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise VesselTreeError(
            f"format_version: this iratrainer reads version {FORMAT_VERSION}, got {version!r}"
        )
    units = data.get("units", {"length": "mm"})
    if not isinstance(units, dict) or units.get("length", "mm") != "mm":
        raise VesselTreeError(f"units.length: expected 'mm', got {units!r}")
    cs = data.get("coordinate_system", "LPS")
    if cs != "LPS":
        raise VesselTreeError(f"coordinate_system: expected 'LPS', got {cs!r}")
    meta = data.get("metadata", {})
    if not isinstance(meta, dict):
        raise VesselTreeError("metadata: expected an object")
    raw = data.get("branches")
    if not isinstance(raw, list) or not raw:
        raise VesselTreeError("branches: expected a non-empty list")
    branches = []
    for i, rb in enumerate(raw):
        if not isinstance(rb, dict):
            raise VesselTreeError(f"branches[{i}]: expected an object")
        label = rb.get("label")
        if not isinstance(label, str) or not label:
            raise VesselTreeError(f"branches[{i}]: label: expected a non-empty string")
        where = f"branch '{label}'"
        for key in ("parent", "parent_index", "points_mm", "radii_mm"):
            if key not in rb:
                raise VesselTreeError(f"{where}: {key}: missing")
        parent = rb["parent"]
        if parent is not None and (not isinstance(parent, str) or not parent):
            raise VesselTreeError(f"{where}: parent: expected a label or null")
        pidx = rb["parent_index"]
        if isinstance(pidx, bool) or not isinstance(pidx, int):
            raise VesselTreeError(f"{where}: parent_index: expected an integer")
        pts = _num_array(rb["points_mm"], where, "points_mm", "[[x, y, z], ...] in mm")
        rad = _num_array(rb["radii_mm"], where, "radii_mm", "[r, ...] in mm")
        if pts.ndim != 2 or pts.shape[1:] != (3,):
            raise VesselTreeError(f"{where}: points_mm: expected a list of [x, y, z] triples")
        if rad.ndim != 1:
            raise VesselTreeError(f"{where}: radii_mm: expected a flat list of numbers")
        branches.append(Branch(label, parent, int(pidx), pts, rad))
    anast = data.get("anastomoses", [])
    if not isinstance(anast, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in anast
    ):
        raise VesselTreeError("anastomoses: expected a list of [label, label] pairs")
    return VesselTree(branches, metadata=meta, anastomoses=[tuple(p) for p in anast])


def load_vessels(path: str | os.PathLike[str]) -> VesselTree:
    """Load and validate a ``*.vessels.json`` model.

    Raises:
        ModelFileError: one line naming the file, the branch and the field.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelFileError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise ModelFileError(f"{p}: is a folder, expected a .vessels.json file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{p}: cannot read: {exc}") from None
    try:
        # NaN and Infinity parse (Python's json accepts them) so that validation can say
        # which branch and field hold them
        data = json.loads(text)
    except ValueError as exc:
        raise ModelFileError(f"{p}: not valid JSON (truncated or malformed): {exc}") from None
    try:
        return tree_from_dict(data)
    except VesselTreeError as exc:
        raise ModelFileError(f"{p}: {exc}") from None


def atomic_write_bytes(path: str | os.PathLike[str], payload: bytes) -> Path:
    """Write ``payload`` to ``path`` atomically (temporary file, fsync, rename).

    A failure (full disk, no permission) leaves any previous file untouched and no
    partial file behind.

    Raises:
        OutputError: naming the path and the reason.
    """
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"{p}: folder {parent} does not exist")
    fd, tmp = None, None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=parent)
        with os.fdopen(fd, "wb") as fh:
            fd = None
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, p)
        tmp = None
    except OSError as exc:
        raise OutputError(f"{p}: cannot write: {exc.strerror or exc}") from None
    finally:
        if fd is not None:
            os.close(fd)
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return p


def save_vessels(tree: VesselTree, path: str | os.PathLike[str]) -> Path:
    """Write ``tree`` as a ``*.vessels.json`` file (atomically)."""
    text = json.dumps(tree_to_dict(tree), indent=1, allow_nan=False)
    return atomic_write_bytes(path, text.encode("utf-8"))


def export_vtp(tree: VesselTree, path: str | os.PathLike[str]) -> Path:
    """Export the centerlines as VTK XML PolyData (``.vtp``), ASCII.

    One polyline per branch (cell data ``branch_id``), point data ``radius_mm``; the
    labels are in field data ``branch_labels`` (one string per branch_id), and a
    ``MaximumInscribedSphereRadius`` copy of the radius for vmtk. Points are LPS mm
    (3D Slicer shows them correctly when told the file is LPS).
    """
    pts = np.concatenate([b.points_mm for b in tree.branches])
    rad = np.concatenate([b.radii_mm for b in tree.branches])
    counts = [len(b.points_mm) for b in tree.branches]
    offsets = np.cumsum(counts)
    conn = np.arange(len(pts))

    def fmt(a: np.ndarray) -> str:
        return " ".join(f"{v:.6g}" for v in np.ravel(a))

    labels = " ".join(b.label.replace(" ", "_") for b in tree.branches)
    xml = f"""<?xml version="1.0"?>
<VTKFile type="PolyData" version="1.0" byte_order="LittleEndian">
  <PolyData>
    <FieldData>
      <Array type="String" Name="branch_labels" NumberOfTuples="{len(tree)}" format="ascii">{labels}</Array>
    </FieldData>
    <Piece NumberOfPoints="{len(pts)}" NumberOfVerts="0" NumberOfLines="{len(tree)}" NumberOfStrips="0" NumberOfPolys="0">
      <Points>
        <DataArray type="Float64" NumberOfComponents="3" format="ascii">{fmt(pts)}</DataArray>
      </Points>
      <PointData Scalars="radius_mm">
        <DataArray type="Float64" Name="radius_mm" format="ascii">{fmt(rad)}</DataArray>
        <DataArray type="Float64" Name="MaximumInscribedSphereRadius" format="ascii">{fmt(rad)}</DataArray>
      </PointData>
      <CellData Scalars="branch_id">
        <DataArray type="Int32" Name="branch_id" format="ascii">{" ".join(str(i) for i in range(len(tree)))}</DataArray>
      </CellData>
      <Lines>
        <DataArray type="Int64" Name="connectivity" format="ascii">{" ".join(map(str, conn))}</DataArray>
        <DataArray type="Int64" Name="offsets" format="ascii">{" ".join(map(str, offsets))}</DataArray>
      </Lines>
    </Piece>
  </PolyData>
</VTKFile>
"""
    if not math.isfinite(float(np.sum(pts))):
        raise OutputError(f"{path}: model has non-finite coordinates")
    return atomic_write_bytes(path, xml.encode("utf-8"))
