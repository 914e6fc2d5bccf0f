"""Accuracy of a segmented tree against the truth of a phantom.

Definitions (after the coronary centerline evaluation framework of Schaap et al.,
Medical Image Analysis 2009):

* **distance**: from each detected centerline point to the true centerline, in voxels,
  for points in vessels of true radius >= ``min_radius_vox`` voxels;
* **precision**: fraction of those detected points within the true lumen radius of the
  true centerline;
* **recall**: fraction of true centerline points (radius >= ``min_radius_vox``) within
  the true radius of a detected point; true points inside another branch's lumen (the
  start of a child inside its parent) are not counted;
* **radius error**: median |r_detected - r_true| / r_true over matched points;
* **branches**: detected versus true branch counts, the true count restricted to
  branches with a radius of at least ``min_radius_vox`` somewhere.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from iratrainer.anatomy.tree import VesselTree

__all__ = ["Accuracy", "centerline_accuracy"]


@dataclass(frozen=True)
class Accuracy:
    """Centerline accuracy figures (see the module docstring)."""

    mean_distance_vox: float
    median_distance_vox: float
    p95_distance_vox: float
    precision: float
    recall: float
    median_radius_error: float
    branches_detected: int
    branches_true: int

    def as_dict(self) -> dict[str, float]:
        """JSON-ready."""
        return asdict(self)


def centerline_accuracy(detected: VesselTree, truth: VesselTree, voxel_mm: float,
                        min_radius_vox: float = 2.0) -> Accuracy:
    """Compare ``detected`` with ``truth`` (both in LPS mm)."""
    P = np.vstack([b.points_mm for b in detected.branches])
    R = np.concatenate([b.radii_mm for b in detected.branches])
    q = truth.query(P)
    d = np.linalg.norm(P - q.closest_mm, axis=1)
    big = q.radius_mm >= min_radius_vox * voxel_mm
    if not np.any(big):
        big = np.ones(len(P), bool)
    dv = d[big] / voxel_mm
    precision = float(np.mean(d[big] <= q.radius_mm[big]))
    matched = big & (d <= q.radius_mm)
    rad_err = float(np.median(np.abs(R[matched] - q.radius_mm[matched]) / q.radius_mm[matched])) if np.any(
        matched) else float("nan")
    # recall over true points not inside another branch's lumen
    TP, TR, own = [], [], []
    for i, b in enumerate(truth.branches):
        TP.append(b.points_mm)
        TR.append(b.radii_mm)
        own.append(np.full(len(b.points_mm), i))
    TPa, TRa, owna = np.vstack(TP), np.concatenate(TR), np.concatenate(own)
    qt = truth.query(TPa)
    inside_other = (qt.branch != owna) & (qt.signed_distance_mm < -0.5 * voxel_mm)
    # a point of branch b lies in another branch's lumen if its nearest segment belongs elsewhere
    sel = (TRa >= min_radius_vox * voxel_mm) & ~inside_other
    q2 = detected.query(TPa[sel])
    d2 = np.linalg.norm(TPa[sel] - q2.closest_mm, axis=1)
    recall = float(np.mean(d2 <= TRa[sel])) if np.any(sel) else float("nan")
    n_true = sum(1 for b in truth.branches if b.radii_mm.max() >= min_radius_vox * voxel_mm * 0.5)
    return Accuracy(float(dv.mean()), float(np.median(dv)), float(np.percentile(dv, 95)), precision, recall,
                    rad_err, len(detected), n_true)
