"""A synthetic patient for the X-ray background: skull, face, teeth, spine, shoulders, ribs.

Built from ellipsoids in the atlas frame (LPS mm, origin at the top of the aortic arch),
each with a material: soft tissue (water), cortical bone, teeth (enamel, denser bone),
air (negative attenuation inside tissue: lungs, sinuses, airway). Line integrals are
analytic (:func:`iratrainer.imaging.raycast.ellipsoid_integrals`).

Proportions follow an average adult: head 150 mm wide and 190 mm long with a 6-7 mm
skull; the cervical spine in front of the posterior neck; shoulders 380 mm apart.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from iratrainer.imaging.xray import linear_attenuation_per_mm

__all__ = ["Ellipsoid", "Phantom", "default_phantom"]


@dataclass(frozen=True)
class Ellipsoid:
    """One body part: centre (mm), semi-axes (mm), rotation (columns = axes), material."""

    centre: tuple[float, float, float]
    semi_axes: tuple[float, float, float]
    material: str
    rotation: tuple[tuple[float, float, float], ...] = ((1, 0, 0), (0, 1, 0), (0, 0, 1))
    sign: float = 1.0  # -1 removes the material (a cavity inside the previous part)


def _rot_z(deg: float) -> tuple[tuple[float, float, float], ...]:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return ((c, -s, 0.0), (s, c, 0.0), (0.0, 0.0, 1.0))


def _rot_x(deg: float) -> tuple[tuple[float, float, float], ...]:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return ((1.0, 0.0, 0.0), (0.0, c, -s), (0.0, s, c))


@dataclass(frozen=True)
class Phantom:
    """A set of ellipsoids; :meth:`arrays` gives what the ray caster needs at an energy."""

    parts: tuple[Ellipsoid, ...]

    def arrays(self, e_kev: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Centres (K,3), rotations (K,3,3), semi-axes (K,3) and μ (K,) in 1/mm at ``e_kev``."""
        c = np.array([p.centre for p in self.parts], dtype=np.float64).reshape(-1, 3)
        r = np.array([p.rotation for p in self.parts], dtype=np.float64).reshape(-1, 3, 3)
        s = np.array([p.semi_axes for p in self.parts], dtype=np.float64).reshape(-1, 3)
        mu = np.array([p.sign * _mu(p.material, e_kev) for p in self.parts])
        return c, r, s, mu


def _mu(material: str, e_kev: float) -> float:
    if material == "teeth":
        return linear_attenuation_per_mm("bone", e_kev, 2.9)  # enamel-dense
    if material == "cancellous":
        return linear_attenuation_per_mm("bone", e_kev, 1.18)
    if material == "air_cavity":
        # replaces soft tissue by air: remove the tissue's attenuation
        return linear_attenuation_per_mm("soft_tissue", e_kev)
    return linear_attenuation_per_mm(material, e_kev)


@functools.cache
def default_phantom() -> Phantom:
    """The average adult used when a case gives no CT (one frozen instance, so renderers can cache it)."""
    P: list[Ellipsoid] = []
    head_c = (0.0, 12.0, 232.0)
    # --- head: scalp/brain (water) and skull shell (outer bone minus inner bone)
    P.append(Ellipsoid(head_c, (76.0, 98.0, 88.0), "soft_tissue"))
    P.append(Ellipsoid(head_c, (72.0, 94.0, 84.0), "bone"))
    P.append(Ellipsoid(head_c, (65.5, 87.5, 77.5), "bone", sign=-1.0))
    # skull base: petrous ridges and clivus (dense bone)
    for sx in (-1.0, 1.0):
        P.append(Ellipsoid((sx * 30.0, 8.0, 200.0), (28.0, 9.0, 8.0), "bone", _rot_z(sx * 35.0)))
    P.append(Ellipsoid((0.0, 6.0, 205.0), (10.0, 22.0, 7.0), "bone", _rot_x(-40.0)))
    # --- face: maxilla, orbits (rims), zygomas, mandible, teeth, sinuses, nasal airway
    P.append(Ellipsoid((0.0, -62.0, 196.0), (30.0, 16.0, 20.0), "cancellous"))
    for sx in (-1.0, 1.0):
        P.append(Ellipsoid((sx * 32.0, -72.0, 225.0), (18.0, 14.0, 16.0), "bone"))
        P.append(Ellipsoid((sx * 32.0, -74.0, 225.0), (15.0, 12.0, 13.0), "bone", sign=-1.0))
        P.append(Ellipsoid((sx * 48.0, -55.0, 205.0), (8.0, 22.0, 7.0), "bone", _rot_z(sx * 20.0)))
        P.append(Ellipsoid((sx * 18.0, -62.0, 200.0), (12.0, 14.0, 14.0), "air_cavity"))  # maxillary
    P.append(Ellipsoid((0.0, -78.0, 205.0), (6.0, 14.0, 14.0), "air_cavity"))  # nasal cavity
    P.append(Ellipsoid((0.0, -55.0, 250.0), (22.0, 8.0, 10.0), "air_cavity"))  # frontal sinus
    # mandible: a chain along a horseshoe, bodies and rami
    for k, th in enumerate(np.linspace(-70, 70, 9)):
        t = np.radians(th)
        x, y = 42.0 * np.sin(t), -85.0 + 38.0 * (1 - np.cos(t))
        P.append(Ellipsoid((x, y, 158.0), (9.0, 6.0, 12.0), "bone", _rot_z(-th)))
        if k in (0, 8):
            P.append(Ellipsoid((np.sign(x) * 46.0, -38.0, 185.0), (5.0, 10.0, 26.0), "bone"))
    # teeth: upper and lower arcades
    for z in (172.0, 181.0):
        for th in np.linspace(-65, 65, 14):
            t = np.radians(th)
            P.append(Ellipsoid((36.0 * np.sin(t), -86.0 + 30.0 * (1 - np.cos(t)), z),
                               (3.2, 3.5, 5.0), "teeth", _rot_z(-th)))
    # --- neck: soft tissue, airway, cervical spine (C1-C7 bodies, arches, spinous processes)
    P.append(Ellipsoid((0.0, 10.0, 118.0), (52.0, 55.0, 62.0), "soft_tissue"))
    P.append(Ellipsoid((0.0, -18.0, 130.0), (8.0, 9.0, 60.0), "air_cavity"))  # pharynx/trachea
    for k, z in enumerate(np.linspace(186.0, 78.0, 7)):
        P.append(Ellipsoid((0.0, 18.0, z), (9.0 + 0.6 * k, 8.0, 6.5), "cancellous"))
        P.append(Ellipsoid((0.0, 18.0, z), (9.5 + 0.6 * k, 8.5, 7.0), "bone"))
        P.append(Ellipsoid((0.0, 18.0, z), (9.0 + 0.6 * k, 8.0, 6.5), "bone", sign=-1.0))
        for sx in (-1.0, 1.0):  # lateral masses / transverse processes
            P.append(Ellipsoid((sx * 20.0, 24.0, z), (6.0, 6.0, 6.0), "bone"))
        P.append(Ellipsoid((0.0, 45.0, z - 4.0), (4.0, 12.0, 4.0), "bone", _rot_x(20.0)))
    # --- thorax: soft tissue, lungs (air), thoracic spine, sternum, ribs, clavicles, shoulders
    P.append(Ellipsoid((0.0, 20.0, -120.0), (150.0, 105.0, 190.0), "soft_tissue"))
    for sx in (-1.0, 1.0):
        P.append(Ellipsoid((sx * 62.0, 22.0, -110.0), (52.0, 70.0, 120.0), "air_cavity"))
    for z in np.linspace(60.0, -270.0, 12):
        P.append(Ellipsoid((0.0, 55.0, z), (14.0, 12.0, 10.0), "cancellous"))
        P.append(Ellipsoid((0.0, 55.0, z), (15.0, 13.0, 11.0), "bone"))
        P.append(Ellipsoid((0.0, 55.0, z), (14.0, 12.0, 10.0), "bone", sign=-1.0))
    P.append(Ellipsoid((0.0, -75.0, -80.0), (14.0, 6.0, 85.0), "bone"))  # sternum
    for z0 in np.linspace(35.0, -250.0, 11):
        for sx in (-1.0, 1.0):
            for th in np.linspace(10, 170, 9):  # rib as a chain, from the spine around the side
                t = np.radians(th)
                x = sx * 125.0 * np.sin(t) * (0.75 + 0.25 * (z0 < -20))
                y = 55.0 - 95.0 * (1 - np.cos(t)) * 0.75
                z = z0 - 22.0 * np.sin(t)
                P.append(Ellipsoid((x, y, z), (9.0, 3.5, 4.5), "bone", _rot_z(sx * (90 - th))))
    for sx in (-1.0, 1.0):
        P.append(Ellipsoid((sx * 80.0, -40.0, 55.0), (75.0, 6.0, 6.0), "bone", _rot_z(sx * 20.0)))
        P.append(Ellipsoid((sx * 185.0, 10.0, 30.0), (28.0, 28.0, 30.0), "bone"))  # humeral head
        P.append(Ellipsoid((sx * 175.0, 10.0, 40.0), (40.0, 45.0, 45.0), "soft_tissue"))
        P.append(Ellipsoid((sx * 150.0, 45.0, -10.0), (35.0, 10.0, 70.0), "bone", _rot_z(sx * 15.0)))
    # --- abdomen and pelvis
    P.append(Ellipsoid((0.0, 15.0, -430.0), (150.0, 100.0, 160.0), "soft_tissue"))
    for z in np.linspace(-300.0, -440.0, 5):
        P.append(Ellipsoid((0.0, 50.0, z), (20.0, 16.0, 13.0), "bone"))
    for sx in (-1.0, 1.0):
        P.append(Ellipsoid((sx * 85.0, 35.0, -470.0), (55.0, 18.0, 45.0), "bone", _rot_z(sx * 30.0)))
        P.append(Ellipsoid((sx * 95.0, -10.0, -600.0), (25.0, 25.0, 25.0), "bone"))  # femoral head
        P.append(Ellipsoid((sx * 95.0, 5.0, -600.0), (70.0, 80.0, 90.0), "soft_tissue"))
    P.append(Ellipsoid((0.0, 60.0, -500.0), (35.0, 20.0, 40.0), "bone"))  # sacrum
    return Phantom(tuple(P))
