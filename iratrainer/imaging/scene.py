"""What the renderers read: a frozen snapshot of vessels, contrast and devices.

The simulation (later: ``scenario.Procedure.snapshot()``) fills a :class:`Scene`; the
renderers never change it. Arrays are read-only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from iratrainer.anatomy.tree import VesselTree
from iratrainer.imaging.phantom import Phantom, default_phantom

__all__ = ["DeviceShape", "Scene", "contrast_downstream", "static_stack"]


def _ro(a: np.ndarray) -> np.ndarray:
    a = np.array(a, dtype=np.float64)
    a.flags.writeable = False
    return a


@dataclass(frozen=True)
class DeviceShape:
    """A device as the X-ray sees it.

    Attributes:
        name: catalogue name, e.g. ``"microwire_014"``.
        points_mm: (N, 3) centreline from hub side to tip, LPS mm.
        outer_radius_mm: outer radius, mm.
        inner_radius_mm: lumen radius, mm (0 for wires).
        material: shaft material (``"catheter"`` polymer, ``"nitinol"``, ``"platinum"``).
        markers: radiopaque platinum bands as (distance from the tip, length), mm.
        radiopaque_tip_mm: length of a platinum-coil tip (wires), mm.
    """

    name: str
    points_mm: np.ndarray
    outer_radius_mm: float
    inner_radius_mm: float = 0.0
    material: str = "catheter"
    markers: tuple[tuple[float, float], ...] = ()
    radiopaque_tip_mm: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "points_mm", _ro(self.points_mm))

    def arc_from_tip_mm(self) -> np.ndarray:
        """Distance of each point from the tip along the device, mm."""
        seg = np.linalg.norm(np.diff(self.points_mm, axis=0), axis=1)
        arc = np.concatenate([[0.0], np.cumsum(seg)])
        return arc[-1] - arc


@dataclass(frozen=True)
class Scene:
    """Vessels with iodine, devices and the patient background at one instant.

    Attributes:
        tree: the vessel model.
        iodine_mg_ml: (S,) iodine concentration in each centerline segment, mg/mL.
        devices: the devices in the patient.
        phantom: the patient background.
        time_s: simulation time of the snapshot, s.
        blob_centres_mm, blob_radii_mm, blob_iodine_mg_ml: iodine outside the vessel tubes,
            as spheres: the capillary blush of perfused tissue and contrast extravasated
            from a perforation ((K, 3) mm, (K,) mm, (K,) mg/mL of tissue).
    """

    tree: VesselTree
    iodine_mg_ml: np.ndarray
    devices: tuple[DeviceShape, ...] = ()
    phantom: Phantom = field(default_factory=default_phantom)  # or an imaging.ct_background.CtBackground
    time_s: float = 0.0
    blob_centres_mm: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    blob_radii_mm: np.ndarray = field(default_factory=lambda: np.zeros(0))
    blob_iodine_mg_ml: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __post_init__(self) -> None:
        c = np.broadcast_to(np.asarray(self.iodine_mg_ml, dtype=np.float64),
                            (self.tree.n_segments,))
        object.__setattr__(self, "iodine_mg_ml", _ro(c))
        object.__setattr__(self, "blob_centres_mm", _ro(np.asarray(self.blob_centres_mm).reshape(-1, 3)))
        object.__setattr__(self, "blob_radii_mm", _ro(self.blob_radii_mm))
        object.__setattr__(self, "blob_iodine_mg_ml", _ro(self.blob_iodine_mg_ml))
        if not (len(self.blob_centres_mm) == len(self.blob_radii_mm) == len(self.blob_iodine_mg_ml)):
            raise ValueError("blob arrays must have the same length")

    def with_contrast(self, iodine_mg_ml: np.ndarray | float,
                      blobs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> Scene:
        """The same scene with another contrast state (vessel iodine and, optionally, blobs)."""
        b = blobs if blobs is not None else (self.blob_centres_mm, self.blob_radii_mm, self.blob_iodine_mg_ml)
        return Scene(self.tree, np.broadcast_to(iodine_mg_ml, (self.tree.n_segments,)),
                     self.devices, self.phantom, self.time_s, *b)

    def blob_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Blobs as ellipsoids for :func:`~iratrainer.imaging.raycast.ellipsoid_integrals`:
        centres, rotations (identity), semi-axes (K, 3) and iodine (mg/mL)."""
        k = len(self.blob_radii_mm)
        rot = np.broadcast_to(np.eye(3), (k, 3, 3)).copy()
        axes = np.repeat(self.blob_radii_mm[:, None], 3, axis=1)
        return self.blob_centres_mm, rot, axes, self.blob_iodine_mg_ml


def contrast_downstream(tree: VesselTree, label: str, mg_ml: float = 150.0) -> np.ndarray:
    """Per-segment iodine: ``mg_ml`` in ``label`` and everything downstream, 0 elsewhere.

    A stand-in for the flow model (issue: blood flow and contrast): an injection into
    ``label`` at steady state, every downstream vessel filled at the same concentration.
    """
    idx = {tree.index(lab) for lab in tree.subtree(label)}
    mask = np.isin(tree.seg_branch, list(idx))
    return np.where(mask, mg_ml, 0.0)


def static_stack(tree: VesselTree, target: str = "L_MCA_M1", access: str = "R_CFA") -> tuple[DeviceShape, ...]:
    """A stroke stack laid along the centerline from ``access`` to ``target`` (no mechanics).

    8F balloon guide to the distal CCA, 6F intermediate catheter to the cavernous ICA,
    0.021 in microcatheter to the M1 origin, 0.014 in microwire 15 mm beyond. Used for
    static renders until device physics places the devices.
    """
    pts, _ = tree.path_polyline(access, target)
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    total = arc[-1]

    def upto(s: float) -> np.ndarray:
        k = int(np.searchsorted(arc, s))
        tip = np.array([np.interp(s, arc, pts[:, i]) for i in range(3)])
        return np.vstack([pts[:k], tip])

    wire_tip = total - 2.0
    mc_tip = wire_tip - 15.0
    ic_tip = mc_tip - 45.0
    guide_tip = ic_tip - 70.0
    inch = 25.4
    return (
        DeviceShape("balloon_guide_8F", upto(guide_tip), 8 / 3 / 2, 0.085 * inch / 2, "catheter",
                    markers=((1.0, 1.0),)),
        DeviceShape("intermediate_6F", upto(ic_tip), 6 / 3 / 2, 0.071 * inch / 2, "catheter",
                    markers=((0.5, 1.0),)),
        DeviceShape("microcatheter_021", upto(mc_tip), 0.8 / 2, 0.021 * inch / 2, "catheter",
                    markers=((0.5, 0.8), (30.5, 0.8))),
        DeviceShape("microwire_014", upto(wire_tip), 0.014 * inch / 2, 0.0, "nitinol",
                    radiopaque_tip_mm=30.0),
    )
