"""X-ray physics: attenuation of materials, beam quality, tube output, dose and photon counts.

Units: energies in keV, mass attenuation coefficients in cm²/g, densities in g/cm³,
linear attenuation in 1/mm, air kerma in µGy, tube load in mAs, distances in mm.

Sources (values as published, interpolated log-log between tabulated energies):

* Iodine μ/ρ: NIST XCOM as quoted in the project reference notes (REFERENCE.md,
  "X-ray image formation"): 30 keV 8.56; 33.17 keV 6.55 below / 35.8 above the K-edge;
  40 keV 22.1; 50 keV 12.3; 60 keV 7.58; 80 keV 3.51.
* Water, cortical bone (ICRU, 1.92 g/cm³), air μen/ρ: NIST X-ray mass attenuation tables
  (Hubbell & Seltzer).
* Platinum, nitinol and radiopaque catheter polymer: approximations (platinum
  interpolated between tungsten and lead by atomic number; nitinol as 55% Ni / 45% Ti
  by weight; catheter shafts as Pebax loaded with 20% barium sulphate). They set how
  bright markers, wires and shafts look, not any dose.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "MATERIALS",
    "mass_attenuation",
    "linear_attenuation_per_mm",
    "effective_energy_kev",
    "Technique",
    "tube_output_ugy_per_mas_at_1m",
    "photons_per_mm2_per_ugy",
    "IODINE_K_EDGE_KEV",
]

IODINE_K_EDGE_KEV = 33.17

# energy (keV) -> mass attenuation coefficient (cm²/g)
_IODINE = ((30.0, 8.56), (33.169, 6.55), (33.17, 35.8), (40.0, 22.1), (50.0, 12.3), (60.0, 7.58),
           (80.0, 3.51))
_WATER = ((30.0, 0.3756), (40.0, 0.2683), (50.0, 0.2269), (60.0, 0.2059), (80.0, 0.1837))
_BONE = ((30.0, 1.331), (40.0, 0.6655), (50.0, 0.4242), (60.0, 0.3148), (80.0, 0.2229))
_PLATINUM = ((30.0, 26.5), (40.0, 12.5), (50.0, 7.0), (60.0, 4.4), (78.39, 2.2), (78.4, 8.9),
             (80.0, 8.5))
_NITINOL = ((30.0, 9.0), (40.0, 4.1), (50.0, 2.3), (60.0, 1.45), (80.0, 0.75))
_CATHETER = ((30.0, 2.2), (40.0, 1.3), (50.0, 0.80), (60.0, 0.56), (80.0, 0.37))
# mass energy-absorption coefficient of air (cm²/g), NIST
_AIR_EN = ((30.0, 0.1501), (40.0, 0.06833), (50.0, 0.04098), (60.0, 0.03041), (80.0, 0.02407))

#: material -> (density g/cm³, table of (keV, μ/ρ cm²/g))
MATERIALS: dict[str, tuple[float, tuple[tuple[float, float], ...]]] = {
    "iodine": (1.0, _IODINE),  # density is the concentration: pass it explicitly
    "water": (1.0, _WATER),
    "soft_tissue": (1.04, _WATER),
    "bone": (1.92, _BONE),
    "platinum": (21.45, _PLATINUM),
    "nitinol": (6.45, _NITINOL),
    "catheter": (1.35, _CATHETER),
    "air": (0.0012, _WATER),
}


def _loglog(table: tuple[tuple[float, float], ...], e_kev: float) -> float:
    e = np.array([t[0] for t in table])
    m = np.array([t[1] for t in table])
    x = float(np.clip(e_kev, e[0], e[-1]))
    return float(np.exp(np.interp(np.log(x), np.log(e), np.log(m))))


def mass_attenuation(material: str, e_kev: float) -> float:
    """Mass attenuation coefficient μ/ρ (cm²/g) of ``material`` at ``e_kev`` (30-80 keV)."""
    try:
        return _loglog(MATERIALS[material][1], e_kev)
    except KeyError:
        raise KeyError(f"unknown material {material!r}; known: {', '.join(MATERIALS)}") from None


def linear_attenuation_per_mm(material: str, e_kev: float, density_g_cm3: float | None = None) -> float:
    """Linear attenuation coefficient μ (1/mm) = μ/ρ · ρ / 10.

    For iodine pass ``density_g_cm3`` = the iodine concentration in g/mL (e.g. 0.15 for
    150 mgI/mL of blood-contrast mix).
    """
    rho = MATERIALS[material][0] if density_g_cm3 is None else density_g_cm3
    return mass_attenuation(material, e_kev) * rho / 10.0


def effective_energy_kev(kv: float) -> float:
    """Effective energy (keV) of a neuro-angiography beam as it reaches the detector.

    The beam (about 3 mm Al + 0.1-0.3 mm Cu) is hardened further by the head, so the
    transmitted spectrum that forms the image has a mean energy near 0.5·kV + 12 keV:
    70 kV -> 47, 80 kV -> 52, 100 kV -> 62 keV. One energy stands for the spectrum
    (no beam-hardening artefacts are modelled).
    """
    return 0.5 * float(kv) + 12.0


def tube_output_ugy_per_mas_at_1m(kv: float) -> float:
    """Tube output (air kerma per mAs at 1 m from the focal spot, µGy/mAs).

    Calibrated on the reference DSA frame of REFERENCE.md (70 kV, 1.9 mAs, 42 µGy at the
    interventional reference point, 630 mm from the focus in the Artis preset), scaled
    with the square of the kilovoltage as usual for filtered tungsten beams.
    """
    ref = 42.0 / 1.9 * (630.0 / 1000.0) ** 2  # µGy/mAs at 1 m, 70 kV
    return ref * (float(kv) / 70.0) ** 2


def photons_per_mm2_per_ugy(e_kev: float) -> float:
    """Photon fluence per unit air kerma (photons/mm²/µGy) for a beam of energy ``e_kev``.

    From K = Φ · E · (μen/ρ)_air: Φ/K = 1 / (E · μen/ρ); about 2.3e4 at 40 keV.
    """
    e_joule = e_kev * 1.602176634e-16
    mu_en_m2_kg = _loglog(_AIR_EN, e_kev) * 0.1  # cm²/g -> m²/kg
    per_m2_per_gy = 1.0 / (e_joule * mu_en_m2_kg)
    return per_m2_per_gy * 1e-6 * 1e-6  # per mm², per µGy


@dataclass(frozen=True)
class Technique:
    """Exposure technique of one pulse (fluoroscopy) or one frame (acquisition).

    Attributes:
        kv: tube voltage, kV.
        mas: tube load per pulse or frame, mAs.
        detector_dqe: detective quantum efficiency of the flat panel (CsI), 0-1.
    """

    kv: float
    mas: float
    detector_dqe: float = 0.65

    @property
    def energy_kev(self) -> float:
        """Effective energy of the beam, keV."""
        return effective_energy_kev(self.kv)

    def air_kerma_ugy(self, distance_mm: float) -> float:
        """Free-in-air kerma (µGy) per pulse at ``distance_mm`` from the focal spot."""
        return tube_output_ugy_per_mas_at_1m(self.kv) * self.mas * (1000.0 / distance_mm) ** 2


#: Presets. ``dsa``: a cerebral DSA frame behind a head, ~1 mGy Ka,r (70 kV, 45 mAs; neuro
#: DSA frames are of the order of 1 mGy, so that a thrombectomy's runs dominate its DAP);
#: ``dsa_reference``: the REFERENCE.md low-dose example (70 kV, 1.9 mAs -> 42 µGy Ka,r).
#: Fluoroscopy: per-pulse loads giving about 4, 8 and 16 mGy/min at 15 pulses/s.
TECHNIQUES: dict[str, Technique] = {
    "dsa": Technique(kv=70.0, mas=45.0),
    "dsa_reference": Technique(kv=70.0, mas=1.9),
    "fluoro_low": Technique(kv=75.0, mas=0.18),
    "fluoro_normal": Technique(kv=75.0, mas=0.36),
    "fluoro_high": Technique(kv=75.0, mas=0.72),
}
