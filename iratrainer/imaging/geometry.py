"""C-arm geometry of a biplane neuro suite: angles, distances, detector, projection matrices.

Conventions (patient supine, head first, DICOM LPS coordinates in mm):

* **Primary angle** ``lao_deg``: rotation about the patient's long axis (z); positive =
  LAO (the detector moves towards the patient's left), negative = RAO.
* **Secondary angle** ``cran_deg``: positive = cranial (the detector tilts towards the
  head), negative = caudal.
* At 0/0 (the frontal plane) the source is under the table (posterior) and the beam runs
  posterior -> anterior. The image is shown as a viewer facing the patient sees it:
  the patient's right on the image's left, the head at the top.
* The lateral plane is the same C-arm model at LAO 90 (detector on the patient's left,
  source on the right): anterior on the image's left, head at the top.

With beam direction ``w`` (unit, source -> detector), image axes ``u`` (columns, to the
right) and ``v`` (rows, downwards) are ``u = (cos α, sin α, 0)``, ``v = u × w``.

**Projection matrix.** A point X (mm, LPS, homogeneous) maps to pixel (col, row) by the
3x4 matrix ``P = K [R | -R S]``, with ``R`` the rows ``u, v, w``, ``S`` the source
position and ``K = [[f, 0, cx], [0, f, cy], [0, 0, 1]]``, ``f = SID / pixel_mm``,
``(cx, cy)`` the detector centre in pixels: ``(c, r, 1) ~ P X``. The magnification of an
object at the isocentre is ``SID / SOD``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

__all__ = ["CArmPlane", "ARTIS_PRESET", "FOV_CM", "frontal", "lateral", "Clamped"]

#: Siemens Artis zee biplane preset (REFERENCE.md): source-detector 1250 mm, source-isocentre 780 mm.
ARTIS_PRESET = {"sid_mm": 1250.0, "sod_mm": 780.0}

#: Zoom settings: edge of the square imaged field at the detector, cm (30 cm flat panel).
FOV_CM = (30.0, 22.0, 16.0, 11.0)

# mechanical and technical ranges: (low, high)
RANGES = {
    "lao_deg": (-120.0, 120.0),
    "cran_deg": (-45.0, 45.0),
    "sid_mm": (900.0, 1300.0),
    "sod_mm": (600.0, 850.0),
    "fov_cm": (min(FOV_CM), max(FOV_CM)),
    "collimation": (0.2, 1.0),
}


@dataclass(frozen=True)
class Clamped:
    """A value that was outside the C-arm's range: what was asked, what was used."""

    field: str
    asked: float
    used: float

    def __str__(self) -> str:
        return f"{self.field} {self.asked:g} outside the C-arm's range, clamped to {self.used:g}"


@dataclass(frozen=True)
class CArmPlane:
    """One imaging plane (source + detector) of the C-arm.

    Attributes:
        name: ``"frontal"`` or ``"lateral"``.
        lao_deg: primary angle, degrees (LAO > 0, RAO < 0).
        cran_deg: secondary angle, degrees (cranial > 0, caudal < 0).
        sid_mm: source-to-image (detector) distance, mm.
        sod_mm: source-to-isocentre distance, mm.
        isocentre_mm: isocentre in patient LPS coordinates (table position), mm.
        fov_cm: edge of the square imaged field at the detector (zoom), cm.
        collimation: radius of the round iris as a fraction of the half field (0.2-1).
        matrix: image size in pixels (square).
    """

    name: str = "frontal"
    lao_deg: float = 0.0
    cran_deg: float = 0.0
    sid_mm: float = ARTIS_PRESET["sid_mm"]
    sod_mm: float = ARTIS_PRESET["sod_mm"]
    isocentre_mm: tuple[float, float, float] = (0.0, 5.0, 215.0)
    fov_cm: float = 22.0
    collimation: float = 1.0
    matrix: int = 512

    def clamped(self) -> tuple[CArmPlane, list[Clamped]]:
        """This plane with every angle and distance inside the C-arm's range, and what was clamped."""
        changes: dict[str, float] = {}
        notes: list[Clamped] = []
        for f, (lo, hi) in RANGES.items():
            v = float(getattr(self, f))
            if not np.isfinite(v):
                used = lo if f != "collimation" else hi
            else:
                used = float(np.clip(v, lo, hi))
            if used != v:
                changes[f] = used
                notes.append(Clamped(f, v, used))
        if self.sod_mm >= self.sid_mm - 100:
            used = min(changes.get("sod_mm", self.sod_mm), changes.get("sid_mm", self.sid_mm) - 100)
            changes["sod_mm"] = used
            notes.append(Clamped("sod_mm", self.sod_mm, used))
        if self.matrix < 16:
            changes["matrix"] = 16
            notes.append(Clamped("matrix", self.matrix, 16))
        return (replace(self, **changes) if changes else self), notes

    # ------------------------------------------------------------------ frame
    @property
    def beam(self) -> np.ndarray:
        """Unit beam direction, source -> detector (LPS)."""
        a, c = math.radians(self.lao_deg), math.radians(self.cran_deg)  # the C library's sin, cos (iratrainer.libm)
        return np.array([math.sin(a) * math.cos(c), -math.cos(a) * math.cos(c), math.sin(c)])

    @property
    def u(self) -> np.ndarray:
        """Image column axis (to the right), unit, LPS."""
        a = math.radians(self.lao_deg)
        return np.array([math.cos(a), math.sin(a), 0.0])

    @property
    def v(self) -> np.ndarray:
        """Image row axis (downwards), unit, LPS."""
        v = np.cross(self.u, self.beam)
        return v / np.linalg.norm(v)

    @property
    def source_mm(self) -> np.ndarray:
        """Focal spot position, LPS mm."""
        return np.asarray(self.isocentre_mm, dtype=np.float64) - self.sod_mm * self.beam

    @property
    def detector_centre_mm(self) -> np.ndarray:
        """Centre of the detector, LPS mm."""
        return self.source_mm + self.sid_mm * self.beam

    @property
    def pixel_mm(self) -> float:
        """Pixel pitch at the detector, mm."""
        return self.fov_cm * 10.0 / self.matrix

    @property
    def magnification(self) -> float:
        """Geometric magnification at the isocentre, SID / SOD."""
        return self.sid_mm / self.sod_mm

    @property
    def reference_point_mm(self) -> float:
        """Distance from the focal spot to the interventional reference point (IEC 60601-2-43):
        15 cm from the isocentre towards the source, mm."""
        return self.sod_mm - 150.0

    def field_area_cm2_at(self, distance_mm: float) -> float:
        """Area of the exposed field (round iris within the square field) at ``distance_mm``
        from the focal spot, cm²."""
        half = 0.5 * self.fov_cm * distance_mm / self.sid_mm  # cm
        r = self.collimation * half
        if r <= half:
            return float(np.pi * r * r)
        return float(4 * half * half)  # pragma: no cover - collimation <= 1

    # ------------------------------------------------------------------ projection
    def projection_matrix(self) -> np.ndarray:
        """The 3x4 matrix P with (col, row, 1) ~ P @ (x, y, z, 1) (see module docstring)."""
        R = np.vstack([self.u, self.v, self.beam])
        f = self.sid_mm / self.pixel_mm
        c = self.matrix / 2.0
        K = np.array([[f, 0.0, c], [0.0, f, c], [0.0, 0.0, 1.0]])
        Rt = np.hstack([R, (-R @ self.source_mm)[:, None]])
        return K @ Rt

    def project(self, points_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel coordinates (M, 2) as (col, row) and depth along the beam (M,) in mm."""
        p = np.atleast_2d(np.asarray(points_mm, dtype=np.float64))
        h = np.hstack([p, np.ones((len(p), 1))]) @ self.projection_matrix().T
        return h[:, :2] / h[:, 2:3], h[:, 2]

    def pixel_rays(self) -> tuple[np.ndarray, np.ndarray]:
        """Source position (3,) and unit ray directions (matrix, matrix, 3) through pixel centres."""
        n = self.matrix
        k = (np.arange(n) + 0.5 - n / 2.0) * self.pixel_mm
        det = (self.detector_centre_mm[None, None, :] + k[None, :, None] * self.u[None, None, :]
               + k[:, None, None] * self.v[None, None, :])
        d = det - self.source_mm
        d /= np.linalg.norm(d, axis=2, keepdims=True)
        return self.source_mm, d

    def field_mask(self) -> np.ndarray:
        """(matrix, matrix) float: 1 inside the round collimated field, 0 outside, 1-pixel soft edge."""
        return _field_mask(self.matrix, self.collimation)

    def radius_fraction(self) -> np.ndarray:
        """(matrix, matrix) distance of each pixel from the centre, as a fraction of the half field."""
        return _radius_fraction(self.matrix)

    def radius_fraction_sq(self) -> np.ndarray:
        """``min(radius_fraction, 1)²`` (the vignetting profile), cached."""
        return _radius_fraction_sq(self.matrix)

    def key(self) -> tuple[float, ...]:
        """Hashable geometry key (what a cached background depends on)."""
        return (self.lao_deg, self.cran_deg, self.sid_mm, self.sod_mm, *self.isocentre_mm,
                self.fov_cm, float(self.matrix))


def frontal(**kw: object) -> CArmPlane:
    """The frontal plane (AP at 0/0), with optional overrides."""
    return CArmPlane(name="frontal", **kw)  # type: ignore[arg-type]


def lateral(**kw: object) -> CArmPlane:
    """The lateral plane (LAO 90: detector on the patient's left), with optional overrides."""
    kw.setdefault("lao_deg", 90.0)
    return CArmPlane(name="lateral", **kw)  # type: ignore[arg-type]


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


@lru_cache(maxsize=16)
def _radius_fraction(n: int) -> np.ndarray:
    k = (np.arange(n) + 0.5 - n / 2.0) / (n / 2.0)
    return _readonly(np.hypot(k[None, :], k[:, None]))


@lru_cache(maxsize=16)
def _radius_fraction_sq(n: int) -> np.ndarray:
    return _readonly(np.minimum(_radius_fraction(n), 1.0) ** 2)


@lru_cache(maxsize=32)
def _field_mask(n: int, collimation: float) -> np.ndarray:
    k = np.arange(n) + 0.5 - n / 2.0
    r = np.hypot(k[None, :], k[:, None])
    edge = collimation * n / 2.0
    return _readonly(np.clip(edge - r + 0.5, 0.0, 1.0))
