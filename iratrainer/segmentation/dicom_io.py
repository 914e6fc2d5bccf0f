"""DICOM input for segmentation, de-identified on import.

Reads a file, several files or folders (recursively) with pydicom, groups the images by
series, picks the angiographic series (X-ray angiography first, else the CT/MR series
with the most images) or the one given by ``series_uid``, and returns either

* a :class:`Volume` (CT/MR angiography or 3-D rotational angiography): voxels in HU
  (or stored units), assembled by ImagePositionPatient along the slice normal, never by
  file name, with the index-to-LPS affine; enhanced multi-frame objects use their
  per-frame plane positions; or
* a :class:`Run2D` (XA/RF cine run): frames, pixel spacing at the isocentre when the
  geometry tags allow it (flagged otherwise), positioner angles and distances.

Nothing identifying leaves this module: the returned objects hold pixels, geometry and a
:func:`provenance` made of non-identifying facts and pseudonymous identifiers
(:mod:`iratrainer.segmentation.deid`). Compressed pixel data are decoded by pydicom's
plugins (RLE natively; JPEG baseline/lossless, JPEG-LS, JPEG 2000 through pylibjpeg).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from iratrainer.errors import IratrainerError
from iratrainer.segmentation.deid import Pseudonymizer

__all__ = ["DicomInputError", "Volume", "Run2D", "read_dicom", "list_series"]


class DicomInputError(IratrainerError):
    """A DICOM input cannot be used (not DICOM, no pixels, mixed or broken series); fix the input."""


@dataclass(frozen=True)
class Volume:
    """A 3-D image with its geometry.

    Attributes:
        voxels: (Z, Y, X) float32 array (HU for CT).
        affine: (4, 4) from (x, y, z) voxel index (column, row, slice) to LPS mm.
        modality: ``"CT"``, ``"MR"``, ``"XA"`` (3-D RA) ...
        provenance: non-identifying facts (see :func:`Pseudonymizer.provenance`).
    """

    voxels: np.ndarray
    affine: np.ndarray
    modality: str
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def spacing_mm(self) -> np.ndarray:
        """Voxel size along x (columns), y (rows), z (slices), mm."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    def index_to_lps(self, ijk: np.ndarray) -> np.ndarray:
        """(M, 3) voxel coordinates (x, y, z order) to LPS mm."""
        p = np.atleast_2d(np.asarray(ijk, dtype=np.float64))
        return p @ self.affine[:3, :3].T + self.affine[:3, 3]

    def lps_to_index(self, pts: np.ndarray) -> np.ndarray:
        """(M, 3) LPS mm to voxel coordinates (x, y, z order)."""
        inv = np.linalg.inv(self.affine)
        p = np.atleast_2d(np.asarray(pts, dtype=np.float64))
        return p @ inv[:3, :3].T + inv[:3, 3]


@dataclass(frozen=True)
class Run2D:
    """An X-ray angiography run (one plane).

    Attributes:
        frames: (T, H, W) float32 pixel values.
        pixel_mm: pixel size at the isocentre (mm) if the run carries the geometry, else None.
        calibrated: True when ``pixel_mm`` comes from ImagerPixelSpacing and the distances.
        primary_deg, secondary_deg: positioner angles (LAO > 0, cranial > 0).
        sid_mm, sod_mm: source-detector and source-patient distances (None when absent).
        frame_time_ms: time between frames.
        provenance: non-identifying facts.
    """

    frames: np.ndarray
    pixel_mm: float | None
    calibrated: bool
    primary_deg: float | None
    secondary_deg: float | None
    sid_mm: float | None
    sod_mm: float | None
    imager_pixel_mm: float | None
    frame_time_ms: float | None
    provenance: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------- reading
def _files(inputs: Iterable[str | os.PathLike[str]]) -> list[Path]:
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out.extend(sorted(q for q in p.rglob("*") if q.is_file()))
        elif p.is_file():
            out.append(p)
        else:
            raise DicomInputError(f"{p}: no such file or folder")
    if not out:
        raise DicomInputError("no input files")
    return out


def _read(path: Path, from_folder: bool) -> Any | None:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path)
    except InvalidDicomError:
        if from_folder:
            return None  # other files in a folder (a README, a DICOMDIR viewer) are skipped
        raise DicomInputError(f"{path}: not a DICOM file") from None
    except (OSError, EOFError, ValueError, KeyError, AttributeError) as exc:
        raise DicomInputError(f"{path}: cannot read DICOM ({type(exc).__name__}: truncated or damaged)") from None


def list_series(inputs: Iterable[str | os.PathLike[str]]) -> dict[str, list[tuple[Path, Any]]]:
    """Readable images grouped by (original) SeriesInstanceUID. For internal use: holds identifiers."""
    groups: dict[str, list[tuple[Path, Any]]] = {}
    paths = [Path(i) for i in inputs]
    folders = any(p.is_dir() for p in paths)
    for f in _files(paths):
        ds = _read(f, folders)
        if ds is None:
            continue
        if "PixelData" not in ds and "FloatPixelData" not in ds:
            if folders:
                continue
            raise DicomInputError(f"{f}: no pixel data (a non-image DICOM object: "
                                  f"{getattr(ds, 'Modality', '?')} {ds.get('SOPClassUID', '')})")
        groups.setdefault(str(ds.get("SeriesInstanceUID", f"no-series:{f}")), []).append((f, ds))
    if not groups:
        raise DicomInputError("no DICOM image found in the input")
    return groups


def _pixels(path: Path, ds: Any) -> np.ndarray:
    try:
        arr = ds.pixel_array
    except Exception as exc:  # pydicom raises several types for decoding problems
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(ts, "name", str(ts))
        raise DicomInputError(f"{path}: cannot decode the pixel data ({name}): {exc}") from None
    return np.asarray(arr)


def _choose(groups: dict[str, list[tuple[Path, Any]]], series_uid: str | None,
            say: Callable[[str], None]) -> tuple[str, list[tuple[Path, Any]]]:
    if series_uid is not None:
        if series_uid not in groups:
            raise DicomInputError(f"--series: no series with that UID among the {len(groups)} series given")
        return series_uid, groups[series_uid]

    def rank(item: tuple[str, list[tuple[Path, Any]]]) -> tuple[int, int]:
        ds = item[1][0][1]
        mod = str(getattr(ds, "Modality", ""))
        pref = {"XA": 3, "RF": 2, "CT": 1, "MR": 1}.get(mod, 0)
        frames = sum(int(getattr(d, "NumberOfFrames", 1) or 1) for _, d in item[1])
        return pref, frames

    uid, members = max(groups.items(), key=rank)
    if len(groups) > 1:
        ds = members[0][1]
        say(f"{len(groups)} series in the input; using the {getattr(ds, 'Modality', '?')} series of "
            f"{len(members)} file(s) (choose another with --series UID)")
    return uid, members


def read_dicom(inputs: Iterable[str | os.PathLike[str]], series_uid: str | None = None,
               say: Callable[[str], None] | None = None, salt: bytes | None = None) -> Volume | Run2D:
    """Read, select, assemble and de-identify (see the module docstring).

    Args:
        inputs: files and/or folders.
        series_uid: pick this series (its original SeriesInstanceUID).
        say: where to report choices and warnings (never identifying).
        salt: secret for the pseudonymous identifiers (random per import by default).
    """
    say = say or (lambda _m: None)
    groups = list_series(inputs)
    uid, members = _choose(groups, series_uid, say)
    pseudo = Pseudonymizer(salt)
    first = members[0][1]
    modality = str(getattr(first, "Modality", "OT"))
    nframes = int(getattr(first, "NumberOfFrames", 1) or 1)
    if modality in ("XA", "RF") and nframes >= 1 and len(members) == 1 and "PerFrameFunctionalGroupsSequence" \
            not in first:
        return _run2d(members[0][0], first, pseudo)
    if "PerFrameFunctionalGroupsSequence" in first and len(members) == 1:
        return _enhanced_volume(members[0][0], first, pseudo)
    if len(members) == 1 and nframes == 1:
        raise DicomInputError(f"{members[0][0]}: a single image; a volume needs a series of slices "
                              "(or give the whole folder)")
    return _slices_volume(members, pseudo, modality)


def _rescale(ds: Any, arr: np.ndarray) -> np.ndarray:
    slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
    inter = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
    return arr.astype(np.float32) * np.float32(slope) + np.float32(inter)


def _slices_volume(members: list[tuple[Path, Any]], pseudo: Pseudonymizer, modality: str) -> Volume:
    iop = None
    rows = []
    for path, ds in members:
        if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
            raise DicomInputError(f"{path}: no ImagePositionPatient/ImageOrientationPatient: cannot place the slice")
        o = np.array(ds.ImageOrientationPatient, dtype=np.float64)
        if iop is None:
            iop = o
        elif np.abs(o - iop).max() > 1e-3:
            raise DicomInputError(f"{path}: slice orientation differs from the rest of the series (mixed series)")
        rows.append((path, ds, np.array(ds.ImagePositionPatient, dtype=np.float64)))
    assert iop is not None
    r_dir, c_dir = iop[:3], iop[3:]
    normal = np.cross(r_dir, c_dir)
    rows.sort(key=lambda t: float(t[2] @ normal))
    pos = np.array([float(t[2] @ normal) for t in rows])
    gaps = np.diff(pos)
    if np.any(gaps <= 1e-6):
        raise DicomInputError(f"{rows[int(np.argmin(gaps)) + 1][0]}: two slices at the same position (mixed series?)")
    med = float(np.median(gaps))
    if np.max(np.abs(gaps - med)) > 0.01 * med + 1e-3:
        k = int(np.argmax(np.abs(gaps - med)))
        raise DicomInputError(f"{rows[k + 1][0]}: inconsistent slice spacing ({gaps[k]:.3g} mm where the series "
                              f"has {med:.3g} mm)")
    shape = None
    planes = []
    for path, ds, _ in rows:
        arr = _pixels(path, ds)
        if shape is None:
            shape = arr.shape
        elif arr.shape != shape:
            raise DicomInputError(f"{path}: image size {arr.shape} differs from {shape} (mixed series)")
        planes.append(_rescale(ds, arr))
    vol = np.stack(planes).astype(np.float32)
    ds0 = rows[0][1]
    ps = [float(v) for v in ds0.PixelSpacing]  # row spacing, column spacing
    aff = np.eye(4)
    aff[:3, 0] = r_dir * ps[1]  # x index (column) moves along the row direction
    aff[:3, 1] = c_dir * ps[0]
    aff[:3, 2] = normal * med
    aff[:3, 3] = rows[0][2]
    prov = pseudo.provenance(ds0, n_images=len(rows), shape=vol.shape,
                             spacing_mm=[ps[1], ps[0], med])
    return Volume(vol, aff, modality, prov)


def _enhanced_volume(path: Path, ds: Any, pseudo: Pseudonymizer) -> Volume:
    arr = _pixels(path, ds)
    if arr.ndim != 3:
        raise DicomInputError(f"{path}: enhanced object without frames")
    shared = ds.SharedFunctionalGroupsSequence[0]
    try:
        iop = np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, dtype=np.float64)
        ps = [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing]
    except (AttributeError, IndexError):
        raise DicomInputError(f"{path}: enhanced object without shared plane orientation or pixel spacing") from None
    pos = []
    for i, fg in enumerate(ds.PerFrameFunctionalGroupsSequence):
        try:
            pos.append(np.array(fg.PlanePositionSequence[0].ImagePositionPatient, dtype=np.float64))
        except (AttributeError, IndexError):
            raise DicomInputError(f"{path}: frame {i + 1} has no plane position") from None
    normal = np.cross(iop[:3], iop[3:])
    order = np.argsort([p @ normal for p in pos])
    d = np.array([pos[i] @ normal for i in order])
    gaps = np.diff(d)
    med = float(np.median(gaps)) if len(gaps) else 1.0
    if len(gaps) and np.max(np.abs(gaps - med)) > 0.01 * med + 1e-3:
        raise DicomInputError(f"{path}: inconsistent frame spacing")
    vol = _rescale(ds, arr[order])
    aff = np.eye(4)
    aff[:3, 0] = iop[:3] * ps[1]
    aff[:3, 1] = iop[3:] * ps[0]
    aff[:3, 2] = normal * med
    aff[:3, 3] = pos[order[0]]
    return Volume(vol, aff, str(getattr(ds, "Modality", "OT")),
                  pseudo.provenance(ds, n_images=1, shape=vol.shape, spacing_mm=[ps[1], ps[0], med]))


def _f(ds: Any, name: str) -> float | None:
    v = getattr(ds, name, None)
    try:
        return float(v) if v not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _run2d(path: Path, ds: Any, pseudo: Pseudonymizer) -> Run2D:
    arr = _pixels(path, ds).astype(np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise DicomInputError(f"{path}: colour or unusual pixel layout {arr.shape} is not supported")
    sid, sod = _f(ds, "DistanceSourceToDetector"), _f(ds, "DistanceSourceToPatient")
    ips = getattr(ds, "ImagerPixelSpacing", None)
    imager = float(ips[0]) if ips else None
    if imager is not None and sid and sod:
        pixel_mm, calibrated = imager * sod / sid, True
    else:
        pixel_mm, calibrated = None, False
    return Run2D(arr, pixel_mm, calibrated, _f(ds, "PositionerPrimaryAngle"), _f(ds, "PositionerSecondaryAngle"),
                 sid, sod, imager, _f(ds, "FrameTime"),
                 pseudo.provenance(ds, n_images=1, shape=arr.shape, spacing_mm=[pixel_mm, pixel_mm] if pixel_mm
                                   else None))
