"""2-D vessel segmentation of X-ray angiography (DSA runs, single angiograms) to a 2-D tree.

1. **Subtraction**: for a run, the mask frame (least attenuation, early) and the
   peak-opacification frame (largest log-subtracted signal) are found automatically;
   ``D = ln(mask) - ln(peak)`` is positive in the opacified vessels. A single frame has no
   mask: the log image minus its large-scale background stands in (and is flagged).
2. **Field**: the exposed (collimated) field, eroded, so that its edge is not a vessel.
3. **Vesselness**: multi-scale Sato filter for bright ridges of ``D`` (σ = 1.5-4 px).
4. **Vessels**: hysteresis thresholds set from the vesselness distribution inside the
   field (no number to type); small components dropped.
5. **Skeleton and tree**: 2-D skeleton, branches between junctions and end points, spurs
   pruned, radii from the distance to the vessel edge (+ half a pixel), branches
   connected into a tree rooted at the widest end point.

The tree lies in the detector plane (z = 0). Its unit is millimetres at the isocentre when
the run carries ImagerPixelSpacing and the source distances, pixels otherwise (then
``metadata["units"] == "pixels"``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from iratrainer.anatomy.tree import VesselTree
from iratrainer.segmentation.dicom_io import Run2D, Volume
from iratrainer.segmentation.vessel3d import SegmentationError, _build_tree, _trace_branches

__all__ = ["Segmentation2D", "segment_run"]


@dataclass(frozen=True)
class Segmentation2D:
    """Result of :func:`segment_run`."""

    tree: VesselTree
    mask: np.ndarray
    subtracted: np.ndarray
    mask_frame: int | None
    peak_frame: int
    pixel_mm: float
    calibrated: bool


def _field(img: np.ndarray) -> np.ndarray:
    lo = np.percentile(img, 1)
    hi = np.percentile(img, 99)
    field = img > lo + 0.05 * (hi - lo)
    field = ndi.binary_opening(field, iterations=2)
    lab, n = ndi.label(field)
    if n > 1:
        sizes = ndi.sum(np.ones_like(lab), lab, range(1, n + 1))
        field = lab == (np.argmax(sizes) + 1)
    return ndi.binary_erosion(field, iterations=8)


def segment_run(run: Run2D, progress: Callable[[str, float], None] | None = None,
                min_area_px: int = 60) -> Segmentation2D:
    """Segment the vessels of a run (see the module docstring)."""
    from skimage.filters import apply_hysteresis_threshold, sato
    from skimage.morphology import skeletonize

    say = progress or (lambda _s, _f: None)
    frames = np.maximum(run.frames.astype(np.float64), 1.0)
    logs = np.log(frames)
    say("subtraction", 0.1)
    if len(frames) >= 2:
        field = _field(frames[0])
        att = np.array([-np.mean(lf[field]) for lf in logs])  # higher = more attenuation
        half = max(1, len(frames) // 2)
        mask_i = int(np.argmin(att[:half]))
        sig = [float(np.sum(np.clip(logs[mask_i] - lf, 0, None)[field])) for lf in logs]
        peak_i = int(np.argmax(sig))
        if peak_i == mask_i:
            raise SegmentationError("no frame of the run is more opacified than the mask: no contrast injection?")
        D = logs[mask_i] - logs[peak_i]
    else:
        mask_i, peak_i = None, 0
        field = _field(frames[0])
        D = ndi.gaussian_filter(logs[0], 25.0) - logs[0]  # dark vessels on the flattened log image
    D = np.where(field, D, 0.0)
    say("vesselness", 0.3)
    ves = sato(ndi.gaussian_filter(D, 0.8), sigmas=(1.5, 2.0, 3.0, 4.0), black_ridges=False)
    ves = np.where(field, ves, 0.0)
    vals = ves[field]
    if vals.size == 0 or vals.max() <= 0:
        raise SegmentationError("no vessel-like structure in the exposed field")
    say("vessels", 0.5)
    high = float(np.percentile(vals, 96))
    low = float(np.percentile(vals, 88))
    vmask = apply_hysteresis_threshold(ves, low, high) & (D > 0)
    lab, n = ndi.label(vmask, structure=np.ones((3, 3)))
    if n == 0:
        raise SegmentationError("no vessel left after thresholding")
    sizes = ndi.sum(np.ones_like(lab), lab, range(1, n + 1))
    vmask = np.isin(lab, 1 + np.nonzero(sizes >= min_area_px)[0])
    say("skeleton", 0.7)
    skel = skeletonize(vmask)
    edt = ndi.distance_transform_edt(vmask)
    branches = []
    for br in _trace_branches(skel):
        r = edt[tuple(br.T)]
        if len(br) < max(6.0, 2.0 * float(np.median(r)), 2.0 * float(np.max(r))):  # spurs of thick vessels
            continue
        P = br.astype(np.float64)
        if len(P) >= 5:
            P = ndi.uniform_filter1d(P, 5, axis=0, mode="nearest")
        rad = ndi.median_filter(r + 0.5, size=5, mode="nearest") if len(r) >= 5 else r + 0.5
        cent = np.column_stack([np.zeros(len(P)), P])  # (z, y, x) with z = 0
        branches.append((cent, rad))
    if not branches:
        raise SegmentationError("no centerline found")
    px = run.pixel_mm if run.pixel_mm else 1.0
    aff = np.diag([px, px, px, 1.0])
    geom = Volume(np.zeros((1, *frames.shape[1:]), np.float32), aff, "XA", dict(run.provenance))
    say("tree", 0.9)
    tree = _build_tree(branches, geom, None, join_radii=1.5, root_free_end=False)
    meta = dict(tree.metadata)
    meta.update({"units": "mm" if run.calibrated else "pixels", "plane": "detector (z = 0)",
                 "mask_frame": mask_i, "peak_frame": peak_i,
                 "method": "iratrainer 2-D pipeline (log subtraction, Sato vesselness, skeleton)"})
    tree = VesselTree(tree.branches, metadata=meta)
    say("done", 1.0)
    return Segmentation2D(tree, vmask, D, mask_i, peak_i, px, bool(run.calibrated))
