"""A patient's CT as the X-ray background: digitally reconstructed radiographs by ray marching.

A case may name a CT series (``[anatomy] background_ct``); its voxels replace the
ellipsoid phantom behind the vessels. Hounsfield units map to linear attenuation at the
beam's effective energy as a water/air mix below 0 HU (``μ = μ_water (1 + HU/1000)``) and a
water/cortical-bone mix above (bone fraction ``HU / 1900``, cortical bone 1.92 g/cm³), with
the NIST coefficients of :mod:`iratrainer.imaging.xray`. Each detector pixel's ray is
clipped to the volume's box and marched at half the smallest voxel spacing with
trilinear interpolation; the line integral Σ μ·Δs is what Beer–Lambert needs. Results
are cached per C-arm geometry and energy by the renderers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numba as nb
import numpy as np

from iratrainer.imaging.geometry import CArmPlane
from iratrainer.imaging.xray import linear_attenuation_per_mm

__all__ = ["CtBackground", "hu_to_mu"]

HU_CORTICAL_BONE = 1900.0


def hu_to_mu(hu: np.ndarray, e_kev: float) -> np.ndarray:
    """Linear attenuation (1/mm) of voxels in Hounsfield units at ``e_kev``."""
    hu = np.asarray(hu, dtype=np.float64)
    mu_w = linear_attenuation_per_mm("soft_tissue", e_kev, 1.0)
    mu_b = linear_attenuation_per_mm("bone", e_kev, 1.92)
    f = np.clip(hu / HU_CORTICAL_BONE, 0.0, 1.0)
    soft = mu_w * np.clip(1.0 + hu / 1000.0, 0.0, None)
    return np.where(hu <= 0.0, soft, (1.0 - f) * mu_w + f * mu_b)


@nb.njit(cache=True)
def _march(mu, inv_aff, src, det0, du, dv, n, step_mm, out):  # pragma: no cover - numba
    nz, ny, nx = mu.shape
    for r in range(n):
        for c in range(n):
            px = det0 + (c + 0.5) * du + (r + 0.5) * dv
            d = px - src
            length = math.sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2])
            d = d / length
            # ray in index space: i = A @ (x, 1)
            o = np.empty(3)
            e = np.empty(3)
            for k in range(3):
                o[k] = inv_aff[k, 0] * src[0] + inv_aff[k, 1] * src[1] + inv_aff[k, 2] * src[2] + inv_aff[k, 3]
                e[k] = inv_aff[k, 0] * d[0] + inv_aff[k, 1] * d[1] + inv_aff[k, 2] * d[2]
            hi = (nx - 1.0, ny - 1.0, nz - 1.0)
            t0, t1 = 0.0, length
            ok = True
            for k in range(3):
                if abs(e[k]) < 1e-12:
                    if o[k] < 0.0 or o[k] > hi[k]:
                        ok = False
                else:
                    ta = (0.0 - o[k]) / e[k]
                    tb = (hi[k] - o[k]) / e[k]
                    if ta > tb:
                        ta, tb = tb, ta
                    t0 = max(t0, ta)
                    t1 = min(t1, tb)
            if not ok or t1 <= t0:
                out[r, c] = 0.0
                continue
            acc = 0.0
            m = int((t1 - t0) / step_mm) + 1
            for s in range(m):
                t = t0 + (s + 0.5) * (t1 - t0) / m
                x = o[0] + t * e[0]
                y = o[1] + t * e[1]
                z = o[2] + t * e[2]
                ix = min(max(int(math.floor(x)), 0), nx - 2)
                iy = min(max(int(math.floor(y)), 0), ny - 2)
                iz = min(max(int(math.floor(z)), 0), nz - 2)
                fx, fy, fz = x - ix, y - iy, z - iz
                v = 0.0
                for a in range(2):
                    wz = fz if a else 1.0 - fz
                    for b in range(2):
                        wy = fy if b else 1.0 - fy
                        for cc in range(2):
                            wx = fx if cc else 1.0 - fx
                            v += wz * wy * wx * mu[iz + a, iy + b, ix + cc]
                acc += v
            out[r, c] = acc * (t1 - t0) / m


@dataclass(frozen=True, eq=False)
class CtBackground:
    """A CT volume in patient coordinates (LPS mm).

    Attributes:
        hu: (z, y, x) Hounsfield units.
        affine: 4x4 from voxel index (x, y, z, 1) to LPS mm.
        source: where it came from (for messages).
    """

    hu: np.ndarray
    affine: np.ndarray
    source: str = ""
    _mu_cache: dict[float, np.ndarray] = field(default_factory=dict, repr=False)

    def bounds_mm(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned box of the volume in LPS mm."""
        nz, ny, nx = self.hu.shape
        corners = np.array([[i, j, k, 1.0] for i in (0, nx - 1) for j in (0, ny - 1) for k in (0, nz - 1)])
        pts = corners @ self.affine.T
        return pts[:, :3].min(axis=0), pts[:, :3].max(axis=0)

    def mu(self, e_kev: float) -> np.ndarray:
        """Attenuation volume at ``e_kev`` (cached)."""
        key = round(float(e_kev), 3)
        m = self._mu_cache.get(key)
        if m is None:
            m = np.ascontiguousarray(hu_to_mu(self.hu, e_kev))
            self._mu_cache.clear()
            self._mu_cache[key] = m
        return m

    def line_integrals(self, plane: CArmPlane, e_kev: float) -> np.ndarray:
        """Σ μ·Δs along every pixel's ray (dimensionless), (n, n)."""
        n = plane.matrix
        inv = np.linalg.inv(self.affine)
        spacing = np.linalg.norm(self.affine[:3, :3], axis=0)
        det0 = plane.detector_centre_mm - (n / 2.0) * plane.pixel_mm * (plane.u + plane.v)
        out = np.zeros((n, n))
        step_idx = 0.5  # half a voxel, in index units along the ray (t is in mm, e in index/mm)
        step_mm = step_idx * float(np.min(spacing))
        _march(self.mu(e_kev), np.ascontiguousarray(inv), plane.source_mm, det0, plane.u * plane.pixel_mm,
               plane.v * plane.pixel_mm, n, step_mm, out)
        return out

    def arrays(self, e_kev: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """No ellipsoids (the interface of :class:`~iratrainer.imaging.phantom.Phantom`)."""
        return np.zeros((0, 3)), np.zeros((0, 3, 3)), np.zeros((0, 3)), np.zeros(0)
