"""The imaging chain of one plane: pulsed fluoroscopy, last-image-hold, DSA, roadmap.

* **Pulsed fluoroscopy** at 3.75, 7.5, 15 or 30 pulses/s; each pulse is one exposure
  (dose recorded) and one image. A recursive filter averages successive log images,
  ``y_n = α·y_(n-1) + (1-α)·x_n`` (less noise, more lag); it restarts when the geometry
  changes. Releasing the pedal leaves the last image on screen (last-image-hold).
* **DSA**: a mask frame, then contrast frames at 0.5-6 frames/s, shown as the logarithmic
  subtraction ``Lhat_contrast - Lhat_mask`` (vessels dark on grey).
* **Roadmap**: the most opacified subtracted frame of a DSA run is the vessel map; the
  first fluoroscopy pulse after arming is the live mask; each pulse then shows
  ``(Lhat_live - Lhat_mask) - vessel_map``: the background cancels, the vessels appear
  white (inverted), devices that moved since the mask dark.

Display values are floats in [0, 1] (0 black). Window and level for fluoroscopy come
from the noise-free background of the current geometry, so the brightness does not
flicker from pulse to pulse.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from iratrainer.imaging.detector import filter_and_roadmap, filter_and_window
from iratrainer.imaging.dose import DoseMeter, Exposure
from iratrainer.imaging.geometry import CArmPlane
from iratrainer.imaging.render import CpuRenderer, ImageOptions, form_image
from iratrainer.imaging.scene import Scene
from iratrainer.imaging.xray import TECHNIQUES, Technique

__all__ = ["FLUORO_PPS", "Frame", "ChainSettings", "PlaneChain"]

FLUORO_PPS = (3.75, 7.5, 15.0, 30.0)
DSA_FPS_RANGE = (0.5, 6.0)


@dataclass(frozen=True)
class Frame:
    """One displayed image.

    Attributes:
        plane: plane name.
        kind: ``"fluoro"``, ``"lih"``, ``"dsa_mask"``, ``"dsa"``, ``"roadmap"``.
        time_s: simulation time of the exposure, s.
        display: (n, n) float32 in [0, 1], what the monitor shows.
        lhat: (n, n) float64 log image (or the subtraction for DSA/roadmap).
        exposure: the dose of this image (None for last-image-hold).
    """

    plane: str
    kind: str
    time_s: float
    display: np.ndarray
    lhat: np.ndarray
    exposure: Exposure | None


@dataclass
class ChainSettings:
    """Operator settings of one plane's chain."""

    pps: float = 15.0
    dose_level: str = "normal"
    recursive_filter: float = 0.5
    dsa_fps: float = 3.0
    options: ImageOptions = field(default_factory=ImageOptions)
    dsa_gain: float = 0.45
    roadmap_gain: float = 0.30

    def validated(self) -> ChainSettings:
        """Clamp to the supported values (nearest pulse rate, 0-0.9 filter, 0.5-6 fps)."""
        pps = min(FLUORO_PPS, key=lambda p: abs(p - self.pps))
        rf = float(np.clip(self.recursive_filter, 0.0, 0.9))
        fps = float(np.clip(self.dsa_fps, *DSA_FPS_RANGE))
        level = self.dose_level if f"fluoro_{self.dose_level}" in TECHNIQUES else "normal"
        return ChainSettings(pps, level, rf, fps, self.options, self.dsa_gain, self.roadmap_gain)


def _ro(a: np.ndarray, dtype: type = np.float64) -> np.ndarray:
    out = np.asarray(a, dtype=dtype)
    out.flags.writeable = False
    return out


class PlaneChain:
    """Fluoroscopy, DSA and roadmap for one plane; records every exposure in ``dose``.

    Args:
        plane: geometry of the plane (may be replaced with :meth:`set_plane`).
        dose: the procedure's dose meter.
        rng: the procedure's random generator (quantum noise).
        settings: operator settings.
        renderer: line-integral backend (the CPU reference by default).
    """

    def __init__(self, plane: CArmPlane, dose: DoseMeter, rng: np.random.Generator,
                 settings: ChainSettings | None = None, renderer: object | None = None) -> None:
        self.plane, self.clamp_notes = plane.clamped()
        self.dose = dose
        self.rng = rng
        self.settings = (settings or ChainSettings()).validated()
        self.renderer = renderer or CpuRenderer()
        self._rf: np.ndarray | None = None
        self._lih: Frame | None = None
        self._mask: np.ndarray | None = None
        self._roadmap: np.ndarray | None = None
        self._window: dict[tuple[object, ...], tuple[float, float]] = {}
        self._fluoro_mask: np.ndarray | None = None
        self._peak: np.ndarray | None = None
        self._peak_score = -1.0

    # ------------------------------------------------------------------ state
    def set_plane(self, plane: CArmPlane) -> list[str]:
        """Move the C-arm; returns notes on clamped values. Resets filter and roadmap if it moved."""
        new, notes = plane.clamped()
        if new != self.plane:
            self._rf = None
            self._roadmap = None
            self._mask = None
        self.plane = new
        return [str(n) for n in notes]

    @property
    def roadmap_active(self) -> bool:
        """True when a roadmap mask is stored."""
        return self._roadmap is not None

    def clear_roadmap(self) -> None:
        """Forget the roadmap mask."""
        self._roadmap = None

    def last_image_hold(self) -> Frame | None:
        """The last displayed image (pedal released), or None before the first exposure."""
        if self._lih is None:
            return None
        f = self._lih
        return Frame(f.plane, "lih", f.time_s, f.display, f.lhat, None)

    # ------------------------------------------------------------------ helpers
    def _technique(self, kind: str) -> Technique:
        return TECHNIQUES["dsa"] if kind == "acquisition" else TECHNIQUES[f"fluoro_{self.settings.dose_level}"]

    def _expose(self, scene: Scene, kind: str) -> tuple[np.ndarray, Exposure]:
        tech = self._technique(kind)
        expose = getattr(self.renderer, "expose", None)
        if expose is not None:  # the renderer's own image formation (GL: the detector in GLSL)
            lhat = expose(scene, self.plane, tech, self.settings.options, self.rng)
        else:
            L = self.renderer.line_integrals(scene, self.plane, tech.energy_kev)  # type: ignore[attr-defined]
            lhat = form_image(L, self.plane, tech, self.settings.options, self.rng)
        exp = DoseMeter.exposure(self.plane, tech, kind)
        self.dose.record(exp, 1.0 / self.settings.pps if kind == "fluoro" else 0.0)
        return lhat, exp

    def window(self, scene: Scene) -> tuple[float, float]:
        """(low, high) log-image values mapped to white and black for fluoroscopy."""
        tech = self._technique("fluoro")
        key = (self.plane.key(), tech.energy_kev, id(scene.phantom), self.settings.options.vignetting)
        w = self._window.get(key)
        if w is None:
            bg = self.renderer.background(scene, self.plane, tech.energy_kev)
            g = 1.0 - self.settings.options.vignetting * np.minimum(self.plane.radius_fraction(), 1) ** 2
            ref = bg - np.log(g)
            inside = ref[self.plane.field_mask() > 0.5]
            lo, hi = np.percentile(inside, [0.5, 99.5])
            w = (float(lo) - 0.3, float(hi) + 1.2)  # room for iodine and devices
            self._window[key] = w
        return w

    def _fluoro_display(self, lhat: np.ndarray, scene: Scene) -> np.ndarray:
        lo, hi = self.window(scene)
        return np.clip(1.0 - (lhat - lo) / (hi - lo), 0.0, 1.0) * self.plane.field_mask()

    # ------------------------------------------------------------------ modes
    def fluoro_pulse(self, scene: Scene) -> Frame:
        """One fluoroscopy pulse: exposure, recursive filter, roadmap if stored; updates LIH."""
        lhat, exp = self._expose(scene, "fluoro")
        a = self.settings.recursive_filter
        if (self._roadmap is not None and self._fluoro_mask is not None and self._rf is not None and a != 0
                and self._rf.shape == lhat.shape == self._roadmap.shape == self._fluoro_mask.shape):
            # the filter and the roadmap subtraction in one compiled pass (the same arithmetic as below)
            rf, sub = np.empty_like(lhat), np.empty_like(lhat)
            disp = np.empty(lhat.shape, np.float32)
            filter_and_roadmap(lhat, self._rf, float(a), self._fluoro_mask, self._roadmap,
                               float(self.settings.roadmap_gain), self.plane.field_mask(), rf, sub, disp)
            self._rf = rf
            self._lih = Frame(self.plane.name, "roadmap", scene.time_s, _ro(disp, np.float32), _ro(sub), exp)
            return self._lih
        if self._roadmap is None and self._rf is not None and a != 0 and self._rf.shape == lhat.shape:
            # the filter and the display in one compiled pass (the same arithmetic as below)
            lo, hi = self.window(scene)
            rf = np.empty_like(lhat)
            disp = np.empty(lhat.shape, np.float32)
            filter_and_window(lhat, self._rf, float(a), lo, hi, self.plane.field_mask(), rf, disp)
            self._rf = rf
            self._lih = Frame(self.plane.name, "fluoro", scene.time_s, _ro(disp, np.float32), _ro(rf), exp)
            return self._lih
        self._rf = lhat if (self._rf is None or a == 0) else a * self._rf + (1.0 - a) * lhat
        if self._roadmap is not None:
            if self._fluoro_mask is None:
                # first pulse after the roadmap is armed: the live subtraction mask
                self._fluoro_mask = self._rf
            sub = self._rf - self._fluoro_mask - self._roadmap
            disp = np.clip(0.5 - self.settings.roadmap_gain * sub, 0.0, 1.0)
            disp = disp * self.plane.field_mask()
            frame = Frame(self.plane.name, "roadmap", scene.time_s, _ro(disp, np.float32),
                          _ro(sub), exp)
        else:
            frame = Frame(self.plane.name, "fluoro", scene.time_s,
                          _ro(self._fluoro_display(self._rf, scene), np.float32), _ro(self._rf), exp)
        self._lih = frame
        return frame

    def dsa_frame(self, scene: Scene, mask: bool = False) -> Frame:
        """One acquisition frame; the first of a run (``mask=True``) is the subtraction mask."""
        lhat, exp = self._expose(scene, "acquisition")
        if mask or self._mask is None:
            self._mask = lhat
            disp = np.full_like(lhat, 0.5) * self.plane.field_mask()
            frame = Frame(self.plane.name, "dsa_mask", scene.time_s, _ro(disp, np.float32),
                          _ro(np.zeros_like(lhat)), exp)
        else:
            sub = lhat - self._mask
            disp = np.clip(0.5 - self.settings.dsa_gain * sub, 0.0, 1.0) * self.plane.field_mask()
            frame = Frame(self.plane.name, "dsa", scene.time_s, _ro(disp, np.float32), _ro(sub), exp)
            self._peak_candidate(sub)
        self._lih = frame
        return frame

    def _peak_candidate(self, sub: np.ndarray) -> None:
        """Keep the most opacified subtracted frame of the run as the roadmap's vessel map."""
        score = float(np.sum(np.maximum(sub, 0.0)))
        if score > self._peak_score:
            self._peak_score = score
            self._peak = sub

    def store_roadmap(self) -> bool:
        """Arm the roadmap from the last DSA run's most opacified frame; False if there is none.

        The next fluoroscopy pulse becomes the live subtraction mask; from then on each
        pulse shows ``live - mask`` (background cancelled, devices that moved dark) with
        the vessel map inverted over it (vessels white).
        """
        if self._peak is None:
            return False
        self._roadmap = self._peak
        self._fluoro_mask = None
        self._rf = None
        self._peak_score = -1.0
        return True

    def dsa_run(self, scene_at: object, duration_s: float, t0: float = 0.0) -> list[Frame]:
        """A whole run: mask at ``t0`` then frames at ``dsa_fps`` for ``duration_s``.

        ``scene_at`` is a callable ``t -> Scene`` giving the contrast state at time t.
        """
        fps = self.settings.dsa_fps
        times = t0 + np.arange(int(np.floor(duration_s * fps)) + 1) / fps
        self._peak_score = -1.0
        frames = [self.dsa_frame(scene_at(float(times[0])), mask=True)]  # type: ignore[operator]
        frames += [self.dsa_frame(scene_at(float(t))) for t in times[1:]]  # type: ignore[operator]
        return frames
