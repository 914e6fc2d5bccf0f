"""Dose bookkeeping: reference air kerma, dose-area product, fluoroscopy time, per plane.

* Reference air kerma Ka,r (IEC 60601-2-43): free-in-air kerma at the interventional
  reference point, on the central ray 15 cm from the isocentre towards the source, no
  backscatter. Per pulse or frame: tube output × mAs / distance².
* Dose-area product: air kerma × exposed field area, invariant along the beam, so it is
  computed at the reference point: Ka,r (Gy) × field area there (cm²) -> Gy·cm².
* Fluoroscopy time: pedal-down time, counted per plane; acquisition frames are counted
  separately.

No module-level state: each procedure owns its :class:`DoseMeter`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from iratrainer.imaging.geometry import CArmPlane
from iratrainer.imaging.xray import Technique

__all__ = ["Exposure", "PlaneDose", "DoseMeter"]


@dataclass(frozen=True)
class Exposure:
    """The dose of one pulse or frame."""

    plane: str
    kind: str  # "fluoro" or "acquisition"
    kar_ugy: float
    dap_gy_cm2: float
    field_area_cm2: float


@dataclass
class PlaneDose:
    """Running totals for one plane."""

    kar_mgy: float = 0.0
    dap_gy_cm2: float = 0.0
    fluoro_time_s: float = 0.0
    fluoro_pulses: int = 0
    acquisition_frames: int = 0
    kar_fluoro_mgy: float = 0.0
    dap_fluoro_gy_cm2: float = 0.0


@dataclass
class DoseMeter:
    """Per-plane and total dose of a procedure."""

    planes: dict[str, PlaneDose] = field(default_factory=dict)

    @staticmethod
    def exposure(plane: CArmPlane, technique: Technique, kind: str) -> Exposure:
        """The dose of one pulse (``kind="fluoro"``) or frame (``"acquisition"``) on ``plane``."""
        d_ref = plane.reference_point_mm
        kar = technique.air_kerma_ugy(d_ref)
        area = plane.field_area_cm2_at(d_ref)
        return Exposure(plane.name, kind, kar, kar * 1e-6 * area, area)

    def record(self, exp: Exposure, pulse_interval_s: float = 0.0) -> None:
        """Add one pulse or frame; fluoroscopy pulses also add ``pulse_interval_s`` of fluoro time."""
        pd = self.planes.setdefault(exp.plane, PlaneDose())
        pd.kar_mgy += exp.kar_ugy * 1e-3
        pd.dap_gy_cm2 += exp.dap_gy_cm2
        if exp.kind == "fluoro":
            pd.fluoro_pulses += 1
            pd.fluoro_time_s += pulse_interval_s
            pd.kar_fluoro_mgy += exp.kar_ugy * 1e-3
            pd.dap_fluoro_gy_cm2 += exp.dap_gy_cm2
        else:
            pd.acquisition_frames += 1

    @property
    def kar_mgy(self) -> float:
        """Total reference air kerma over planes, mGy."""
        return sum(p.kar_mgy for p in self.planes.values())

    @property
    def dap_gy_cm2(self) -> float:
        """Total dose-area product over planes, Gy·cm²."""
        return sum(p.dap_gy_cm2 for p in self.planes.values())

    @property
    def fluoro_time_s(self) -> float:
        """Total fluoroscopy time (pedal down, any plane), s. Biplane time counts once per plane."""
        return sum(p.fluoro_time_s for p in self.planes.values())

    def as_dict(self) -> dict[str, object]:
        """JSON-ready totals."""
        return {
            "kar_mgy": self.kar_mgy,
            "dap_gy_cm2": self.dap_gy_cm2,
            "fluoro_time_s": self.fluoro_time_s,
            "planes": {k: vars(v).copy() for k, v in self.planes.items()},
        }
