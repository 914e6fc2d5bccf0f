"""X-ray image formation, the CPU reference (NumPy with numba kernels).

For every detector pixel, with ``L`` the line integral of linear attenuation along the ray:

1. ``L = L_background + L_iodine + L_devices``: the background from the phantom
   (ellipsoids) or a CT; iodine as ``(μ/ρ)_I(E) · c_I · chord`` through the *union* of the
   vessel tubes (overlaps counted once); each device as shaft material through its wall
   (outer tube minus lumen) plus platinum markers and coil tips.
2. Beer-Lambert: expected detected quanta ``N = N0 · g(r) · exp(-L)``, where ``N0`` is
   the unattenuated count per pixel from the technique (air kerma at the detector ×
   photons per µGy × pixel area × DQE) and ``g(r) = 1 - k·r²`` the vignetting.
3. Quantum noise: ``N ~ Poisson`` (counter-based draws seeded from the caller's
   generator, :mod:`iratrainer.imaging.detector`), then detector blur (Gaussian, σ in
   pixels).
4. Log image: ``Lhat = -ln(N / N0)``, the estimated line integral (vignetting included,
   as on an uncorrected image intensifier).

Display mappings (window and level) live in :mod:`iratrainer.imaging.chain`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from iratrainer.imaging.chords import VesselChords
from iratrainer.imaging.detector import detect
from iratrainer.imaging.geometry import CArmPlane
from iratrainer.imaging.raycast import capsule_union_integrals, ellipsoid_integrals, tube_sum_integrals
from iratrainer.imaging.scene import DeviceShape, Scene
from iratrainer.imaging.xray import (
    Technique,
    linear_attenuation_per_mm,
    photons_per_mm2_per_ugy,
)

__all__ = ["LineIntegrals", "CpuRenderer", "form_image", "ImageOptions", "unattenuated_counts"]


@dataclass(frozen=True)
class LineIntegrals:
    """Per-pixel ∫μ dl (dimensionless) by component, each (matrix, matrix)."""

    background: np.ndarray
    iodine: np.ndarray
    devices: np.ndarray

    @property
    def total(self) -> np.ndarray:
        """Sum of the components."""
        return self.background + self.iodine + self.devices


@dataclass(frozen=True)
class ImageOptions:
    """Image-chain options.

    Attributes:
        noise: Poisson quantum noise on/off.
        blur_px: detector blur, Gaussian σ in pixels (0 = none).
        vignetting: relative intensity loss at the field edge, 0-1.
    """

    noise: bool = True
    blur_px: float = 0.6
    vignetting: float = 0.25


def device_segments(dev: DeviceShape, e_kev: float) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Capsule sets (a, b, r, μ) whose union integrals add up to the device's attenuation.

    A catheter is its outer tube minus its lumen (μ of the shaft material, subtracted
    inside the lumen); markers and coil tips are platinum tubes over the same points.
    """
    p = dev.points_mm
    a, b = p[:-1], p[1:]
    n = len(a)
    mu_shaft = linear_attenuation_per_mm(dev.material, e_kev)
    out = [(a, b, np.full(n, dev.outer_radius_mm), np.full(n, mu_shaft))]
    if dev.inner_radius_mm > 0:
        out.append((a, b, np.full(n, dev.inner_radius_mm), np.full(n, -mu_shaft)))
    arc = dev.arc_from_tip_mm()
    mid = 0.5 * (arc[:-1] + arc[1:])
    mu_pt = linear_attenuation_per_mm("platinum", e_kev)
    bands = list(dev.markers)
    if dev.radiopaque_tip_mm > 0:
        bands.append((0.0, dev.radiopaque_tip_mm))
    for start, length in bands:
        sel = (mid >= start - 0.5) & (mid <= start + length + 0.5)
        if not np.any(sel):
            continue
        # marker bands are solid platinum rings; a coil tip is a platinum wire wrap,
        # about 40% metal by volume. Either replaces the shaft material where it sits.
        fill = 0.4 if (dev.radiopaque_tip_mm > 0 and start == 0.0) else 1.0
        delta = fill * (mu_pt - mu_shaft)
        k = int(sel.sum())
        out.append((a[sel], b[sel], np.full(k, dev.outer_radius_mm), np.full(k, delta)))
        if dev.inner_radius_mm > 0:
            out.append((a[sel], b[sel], np.full(k, dev.inner_radius_mm), np.full(k, -delta)))
    return out


def blob_integrals(scene: Scene, plane: CArmPlane, e_kev: float) -> np.ndarray:
    """Iodine line integral of the scene's blobs (blush, extravasation); zeros when none.

    Shared by both renderers: a handful of analytic spheres, cheap on the CPU.
    """
    keep = scene.blob_iodine_mg_ml > 0
    if not np.any(keep):
        return np.zeros((plane.matrix, plane.matrix))
    c, rot, axes, iod = (x[keep] for x in scene.blob_arrays())
    mu = linear_attenuation_per_mm("iodine", e_kev, 1e-3) * iod
    return ellipsoid_integrals(plane, c, rot, axes, mu)


class CpuRenderer:
    """Line integrals on the CPU; caches the background and the vessel chords per view.

    The iodine image re-weights the cached :class:`~iratrainer.imaging.chords.VesselChords`
    of the view with each frame's concentrations; while the view is new (C-arm, table or
    zoom moving) the rays are cast directly (see :meth:`vessel_chords`).

    Args:
        vessel_supersample, device_supersample: rays per pixel along each axis for the
            vessels and the devices (devices are thinner than a pixel: 4 by default).
    """

    name = "numpy"

    def __init__(self, vessel_supersample: int = 1, device_supersample: int = 4) -> None:
        self.vessel_supersample = vessel_supersample
        self.device_supersample = device_supersample
        self._bg_cache: dict[tuple[object, ...], np.ndarray] = {}
        self._chords: dict[tuple[object, ...], tuple[object, VesselChords]] = {}
        self._last_view: dict[str, tuple[object, ...]] = {}

    def vessel_chords(self, scene: Scene, plane: CArmPlane) -> VesselChords | None:
        """The view's vessel chords, or None while the view is new.

        A view seen for the first time (the C-arm or the table moving) is rendered by
        casting the rays directly; the chords are built at its second frame (the C-arm
        has stopped) and re-weighted from then on. A few views are kept (biplane pairs).
        """
        t = scene.tree
        key = (plane.key(), self.vessel_supersample, id(t))
        hit = self._chords.get(key)
        if hit is not None and hit[0] is t:
            return hit[1]
        if self._last_view.get(plane.name) != key:
            self._last_view[plane.name] = key
            return None
        vc = VesselChords(plane, t.seg_a, t.seg_b, 0.5 * (t.seg_ra + t.seg_rb), self.vessel_supersample)
        if len(self._chords) >= 4:
            self._chords.pop(next(iter(self._chords)))
        self._chords[key] = (t, vc)
        return vc

    def background(self, scene: Scene, plane: CArmPlane, e_kev: float) -> np.ndarray:
        """The phantom's line integral (cached)."""
        key = (plane.key(), round(e_kev, 3), id(scene.phantom))
        bg = self._bg_cache.get(key)
        if bg is None:
            if hasattr(scene.phantom, "line_integrals"):  # a patient's CT (imaging.ct_background)
                bg = scene.phantom.line_integrals(plane, e_kev)
            else:
                c, r, s, mu = scene.phantom.arrays(e_kev)
                bg = ellipsoid_integrals(plane, c, r, s, mu)
            bg.flags.writeable = False
            if len(self._bg_cache) > 16:
                self._bg_cache.clear()
            self._bg_cache[key] = bg
        return bg

    def iodine(self, scene: Scene, plane: CArmPlane, e_kev: float) -> np.ndarray:
        """Iodine line integral through the union of vessel tubes."""
        c = scene.iodine_mg_ml
        out = blob_integrals(scene, plane, e_kev)
        if not np.any(c > 0):
            return out
        mu = linear_attenuation_per_mm("iodine", e_kev, 1e-3) * np.maximum(c, 0.0)  # per mg/mL
        vc = self.vessel_chords(scene, plane)
        if vc is not None:
            return out + vc.integrals(mu)
        t = scene.tree
        return out + capsule_union_integrals(plane, t.seg_a, t.seg_b, 0.5 * (t.seg_ra + t.seg_rb), mu,
                                             self.vessel_supersample)

    def devices(self, scene: Scene, plane: CArmPlane, e_kev: float) -> np.ndarray:
        """Sum over devices of their attenuation."""
        parts = [seg for dev in scene.devices for seg in device_segments(dev, e_kev)]
        if not parts:
            return np.zeros((plane.matrix, plane.matrix))
        a, b, r, mu = (np.concatenate([p[i] for p in parts]) for i in range(4))
        return tube_sum_integrals(plane, a, b, r, mu, self.device_supersample)

    def line_integrals(self, scene: Scene, plane: CArmPlane, e_kev: float) -> LineIntegrals:
        """All three components for ``plane`` at effective energy ``e_kev``."""
        return LineIntegrals(self.background(scene, plane, e_kev), self.iodine(scene, plane, e_kev),
                             self.devices(scene, plane, e_kev))

    def expose(self, scene: Scene, plane: CArmPlane, technique: Technique, options: ImageOptions,
               rng: np.random.Generator | None) -> np.ndarray:
        """The log image ``Lhat`` of one exposure: line integrals, then :func:`form_image`."""
        return form_image(self.line_integrals(scene, plane, technique.energy_kev), plane, technique, options, rng)


def unattenuated_counts(plane: CArmPlane, technique: Technique) -> float:
    """Detected quanta per pixel with nothing in the beam (N0), for one pulse or frame."""
    k_det = technique.air_kerma_ugy(plane.sid_mm)  # µGy at the detector, free in air
    return (k_det * photons_per_mm2_per_ugy(technique.energy_kev) * plane.pixel_mm ** 2
            * technique.detector_dqe)


def form_image(
    L: np.ndarray | LineIntegrals, plane: CArmPlane, technique: Technique, options: ImageOptions,
    rng: np.random.Generator | None,
) -> np.ndarray:
    """Beer-Lambert, vignetting, Poisson noise and blur; returns the log image ``Lhat``.

    Args:
        L: (n, n) total line integral, or the renderer's parts (summed in the detector kernel,
            in the order of :attr:`LineIntegrals.total`).
        rng: the caller's generator; required when ``options.noise``.

    Returns:
        (n, n) float64 ``-ln(N / N0)``; outside the collimated field (no exposure) 0.
    """
    n0 = unattenuated_counts(plane, technique)
    g = _gain(plane.matrix, options.vignetting)
    seed = frame_seed(options, rng)
    parts = (L.background, L.iodine, L.devices) if isinstance(L, LineIntegrals) else L
    return detect(parts, g, n0, plane.field_mask(), options.blur_px, seed)


def frame_seed(options: ImageOptions, rng: np.random.Generator | None) -> int | None:
    """The frame's noise seed: one draw from the caller's generator (None with noise off)."""
    if not options.noise:
        return None
    if rng is None:
        raise ValueError("noise needs the caller's random generator")
    return int(rng.integers(0, 2**63))  # counter-based draws per pixel from this seed


@lru_cache(maxsize=16)
def _gain(matrix: int, vignetting: float) -> np.ndarray:
    """The vignetting profile ``1 − v·min(r, 1)²`` (relative intensity), read-only, cached."""
    from iratrainer.imaging.geometry import _radius_fraction_sq

    g = 1.0 - vignetting * _radius_fraction_sq(matrix)
    g.flags.writeable = False
    return g
