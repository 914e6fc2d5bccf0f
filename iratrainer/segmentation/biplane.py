"""Biplane 3-D reconstruction: two 2-D trees of the same injection, seen from two C-arm
angles, give one 3-D tree by epipolar matching.

1. **Geometry**: each run's positioner angles (PositionerPrimary/SecondaryAngle), source
   distances and ImagerPixelSpacing give its projection (:class:`CArmPlane`). DICOM does
   not say where the isocentre lies in the patient; the tree comes out in isocentre
   coordinates (LPS axes, origin at the isocentre unless ``isocentre_mm`` is given).
2. **Epipolar candidates**: every centerline point ``a`` of the first view (A) back-projects
   to a ray; its projection in the second view (B) is the epipolar line. Points of B's
   centerlines within ``tol_px`` of that line are the candidates; each triangulates (the
   midpoint of the two rays' closest approach) to a 3-D point with a ray gap and two
   radius estimates (each view's radius scaled from the isocentre to the point's depth).
3. **Matching along a branch** (dynamic programming, Viterbi): the candidates of
   successive points of an A branch are chained so as to minimise ray gaps, radius
   disagreement and 3-D jumps; a point may stay unmatched (a vessel parallel to the
   epipolar lines, or hidden in B) at a fixed cost.
4. **Tree**: A's tree structure is kept; unmatched points are placed on their own A ray
   nearest the line between matched neighbours; a branch with too few matches is dropped
   (and its children re-attached to the nearest kept point). Radii: the mean of the two
   views' estimates.

Accuracy on a rendered biplane DSA of the atlas's left carotid territory is measured by
``tests/test_segmentation.py`` and stated in docs/segmentation.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from iratrainer.anatomy.tree import Branch, VesselTree
from iratrainer.imaging.geometry import CArmPlane
from iratrainer.segmentation.dicom_io import Run2D
from iratrainer.segmentation.vessel3d import SegmentationError

__all__ = ["plane_of_run", "reconstruct_biplane", "BiplaneResult"]


@dataclass(frozen=True)
class BiplaneResult:
    """The 3-D tree and how well the two views agreed."""

    tree: VesselTree
    matched_fraction: float  # of A's centerline points matched in B
    median_ray_gap_mm: float  # between the two rays at the matched points


def plane_of_run(run: Run2D, name: str, isocentre_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> CArmPlane:
    """The projection of a calibrated run, from its DICOM geometry."""
    missing = [k for k, v in (("PositionerPrimaryAngle", run.primary_deg), ("DistanceSourceToDetector", run.sid_mm),
                              ("DistanceSourceToPatient", run.sod_mm), ("ImagerPixelSpacing", run.imager_pixel_mm))
               if v is None]
    if missing:
        raise SegmentationError(f"the {name} run lacks {', '.join(missing)}: a biplane reconstruction needs the "
                                "C-arm geometry")
    rows, cols = run.frames.shape[1:]
    if rows != cols:
        raise SegmentationError(f"the {name} run is {cols}x{rows}: square detector images are supported")
    return CArmPlane(name=name, lao_deg=float(run.primary_deg), cran_deg=float(run.secondary_deg or 0.0),
                     sid_mm=float(run.sid_mm), sod_mm=float(run.sod_mm), isocentre_mm=isocentre_mm,
                     fov_cm=float(run.imager_pixel_mm) * cols / 10.0, collimation=1.0, matrix=cols)


def _rays(plane: CArmPlane, uv: np.ndarray) -> np.ndarray:
    """Unit ray directions from the source through detector points (col, row) in pixels."""
    n = plane.matrix
    det = (plane.detector_centre_mm[None, :] + ((uv[:, 0:1] - n / 2.0) * plane.pixel_mm) * plane.u[None, :]
           + ((uv[:, 1:2] - n / 2.0) * plane.pixel_mm) * plane.v[None, :])
    d = det - plane.source_mm
    return d / np.linalg.norm(d, axis=1, keepdims=True)


def _closest(sa: np.ndarray, da: np.ndarray, sb: np.ndarray, db: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Midpoints and gaps (mm) of the closest approach of rays ``sa + s·da`` and ``sb + t·db`` (batched)."""
    w = sa - sb
    b = np.sum(da * db, axis=-1)
    d = np.sum(da * w, axis=-1)
    e = np.sum(db * w, axis=-1)
    den = np.maximum(1.0 - b * b, 1e-12)
    s = (b * e - d) / den
    t = (e - b * d) / den
    pa = sa + s[..., None] * da
    pb = sb + t[..., None] * db
    return 0.5 * (pa + pb), np.linalg.norm(pa - pb, axis=-1)


def _view(tree: VesselTree, pixel_iso_mm: float) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each branch's points as detector pixels (col, row) and radii in isocentre mm."""
    uv = [b.points_mm[:, :2] / pixel_iso_mm + 0.5 for b in tree.branches]  # pixel centres at index + 0.5
    return uv, [b.radii_mm for b in tree.branches]


def reconstruct_biplane(tree_a: VesselTree, run_a: Run2D, tree_b: VesselTree, run_b: Run2D,
                        isocentre_mm: tuple[float, float, float] = (0.0, 0.0, 0.0), tol_px: float = 1.5,
                        min_matched: float = 0.5) -> BiplaneResult:
    """A 3-D tree from two calibrated 2-D trees (from :func:`segment_run`) of two planes.

    Args:
        tree_a, run_a: the first view (its tree structure is kept).
        tree_b, run_b: the second view, at another angle (30 degrees or more apart).
        isocentre_mm: where the isocentre lies, LPS mm (DICOM does not say).
        tol_px: epipolar tolerance, pixels.
        min_matched: a branch with a smaller fraction of matched points is dropped.
    """
    for name, run in (("first", run_a), ("second", run_b)):
        if not run.calibrated or run.pixel_mm is None:
            raise SegmentationError(f"the {name} run is not calibrated (ImagerPixelSpacing and distances needed)")
    pa, pb = plane_of_run(run_a, "A", isocentre_mm), plane_of_run(run_b, "B", isocentre_mm)
    cosang = abs(float(pa.beam @ pb.beam))
    if cosang > np.cos(np.radians(30.0)):
        raise SegmentationError(f"the two runs are {np.degrees(np.arccos(cosang)):.0f} degrees apart; a biplane "
                                "reconstruction needs 30 degrees or more")
    uva, ra = _view(tree_a, float(run_a.pixel_mm))
    uvb, rb = _view(tree_b, float(run_b.pixel_mm))
    UB = np.vstack(uvb)
    RB = np.concatenate(rb)
    BB = np.concatenate([np.full(len(u), k) for k, u in enumerate(uvb)])  # B branch of each B point
    BI = np.concatenate([np.arange(len(u)) for u in uvb])  # its index along that branch
    DB = _rays(pb, UB)
    sa_, sb_ = pa.source_mm, pb.source_mm
    new_branches: list[tuple[np.ndarray, np.ndarray, np.ndarray, int]] = []  # points, radii, matched, first kept
    gaps_all: list[float] = []
    recon: dict[str, np.ndarray] = {}  # label -> reconstructed points of A's sample points (NaN: unmatched)
    for b, uv, r_iso in zip(tree_a.branches, uva, ra, strict=True):
        da = _rays(pa, uv)
        start = None
        if b.parent is not None and b.parent in recon:
            sp = recon[b.parent][min(b.parent_index, len(recon[b.parent]) - 1)]
            start = None if np.isnan(sp[0]) else sp
        # epipolar lines of A's points in B: the projections of two points on each ray
        near, _ = pb.project(sa_ + (pa.sod_mm - 120.0) * da)
        far, _ = pb.project(sa_ + (pa.sod_mm + 120.0) * da)
        L = far - near
        Ln = np.linalg.norm(L, axis=1, keepdims=True)
        L = L / np.maximum(Ln, 1e-9)
        cands: list[list[tuple[np.ndarray, float, float, int, int]]] = []
        for i in range(len(uv)):
            q = UB - near[i]
            dist = np.abs(q[:, 0] * L[i, 1] - q[:, 1] * L[i, 0])
            idx = np.nonzero(dist <= tol_px)[0]
            lst: list[tuple[np.ndarray, float, float, int, int]] = []
            if len(idx):
                X, gap = _closest(sa_[None, :], np.repeat(da[i:i + 1], len(idx), 0), sb_[None, :], DB[idx])
                # radius of each view at the point's distance from its source
                r3a = r_iso[i] * np.linalg.norm(X - sa_, axis=1) / pa.sod_mm
                r3b = RB[idx] * np.linalg.norm(X - sb_, axis=1) / pb.sod_mm
                # one candidate per crossing: B points along the line cluster; keep each cluster's
                # best (the gap, then the radius agreement)
                score = (gap / 0.5) ** 2 + ((r3a - r3b) / (0.35 * np.maximum(r3a, 0.3))) ** 2
                taken: list[np.ndarray] = []
                for k in np.argsort(score):
                    if any(np.linalg.norm(X[k] - t) < 2.0 * max(r3a[k], 0.5) for t in taken):
                        continue
                    taken.append(X[k])
                    lst.append((X[k], float(score[k]), float(0.5 * (r3a[k] + r3b[k])), int(BB[idx[k]]),
                                int(BI[idx[k]])))
                    if len(lst) >= 12:
                        break
            cands.append(lst)
        pts, rads, ok = _viterbi(cands, uv, pa, float(run_a.pixel_mm), start=start)
        full = np.where(ok[:, None], pts, np.nan)
        recon[b.label] = full
        if ok.any():  # a triangulated midpoint lies half the gap off each ray
            rel = pts[ok] - sa_
            off = rel - np.sum(rel * da[ok], axis=1, keepdims=True) * da[ok]
            gaps_all.extend((2.0 * np.linalg.norm(off, axis=1)).tolist())
        new_branches.append(_fill(pts, rads, ok, da, sa_, r_iso, pa))
    # keep A's structure: children start at their parent's (reconstructed) point
    out: list[Branch] = []
    kept_label: dict[str, str] = {}
    n_pts = n_ok = 0
    first_kept: dict[str, int] = {}
    for b, (pts, rads, ok, lo) in zip(tree_a.branches, new_branches, strict=True):
        first_kept[b.label] = lo
        n_pts += len(ok)
        n_ok += int(ok.sum())
        if len(pts) < 2 or ok.mean() < min_matched:
            continue
        if b.parent is None or b.parent not in kept_label:
            if out and b.parent is not None:
                # parent dropped: attach to the nearest point of a kept branch
                best = min(((float(np.min(np.linalg.norm(o.points_mm - pts[0], axis=1))), o) for o in out),
                           key=lambda t: t[0])[1]
                k = int(np.argmin(np.linalg.norm(best.points_mm - pts[0], axis=1)))
                # the child starts on that point: its first point moves there, or, farther than
                # the parent's lumen, a connecting point is put in front of it
                anchor = best.points_mm[k]
                if np.linalg.norm(pts[0] - anchor) <= best.radii_mm[k] or len(pts) <= 2:
                    pts = np.vstack([anchor, pts[1:]])
                else:
                    pts = np.vstack([anchor, pts])
                    rads = np.concatenate([rads[:1], rads])
                out.append(Branch(f"V{len(out)}", best.label, k, pts, rads))
            elif not out:
                out.append(Branch("V0", None, 0, pts, rads))
            else:
                continue
        else:
            parent = next(o for o in out if o.label == kept_label[b.parent])
            k = int(np.clip(b.parent_index - first_kept[b.parent], 0, len(parent.points_mm) - 1))
            pts = np.vstack([parent.points_mm[k], pts[1:]]) if len(pts) > 2 else pts
            out.append(Branch(f"V{len(out)}", parent.label, k, pts, rads))
        kept_label[b.label] = out[-1].label
    if not out:
        raise SegmentationError("the two views could not be matched (check that both runs show the same injection)")
    meta = {"source": "segmentation", "method": "iratrainer biplane epipolar reconstruction",
            "coordinates": "LPS mm relative to the isocentre" if isocentre_mm == (0.0, 0.0, 0.0) else "LPS mm",
            "views": [{"primary_deg": run_a.primary_deg, "secondary_deg": run_a.secondary_deg},
                      {"primary_deg": run_b.primary_deg, "secondary_deg": run_b.secondary_deg}]}
    return BiplaneResult(VesselTree(out, metadata=meta), n_ok / max(n_pts, 1),
                         float(np.median(gaps_all)) if gaps_all else float("nan"))


def _viterbi(cands: list[list[tuple[np.ndarray, float, float, int, int]]], uv: np.ndarray, pa: CArmPlane,
             pixel_iso_mm: float, skip_cost: float = 6.0, switch_cost: float = 8.0,
             start: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Chain candidates along a branch (state -1 = unmatched). Costs: each candidate's ray gap
    and radius disagreement; a 3-D step far from what the projected step allows; walking
    along a B centerline faster than along A's (both are sampled about a pixel apart); and
    changing B branch (a vessel of A is one vessel of B, except across B's junctions). A
    child branch starts where its parent was placed (``start``): the parent's correct match
    carries down the tree."""
    n = len(cands)
    step_iso = np.concatenate([[0.0], np.linalg.norm(np.diff(uv, axis=0), axis=1)]) * pixel_iso_mm
    # each state: (total cost, back pointer, last matched candidate carried, its sample index)
    layers: list[list[tuple[float, int, tuple | None, int]]] = []
    for i in range(n):
        states: list[tuple | None] = [*cands[i], None]
        cur: list[tuple[float, int, tuple | None, int]] = []
        for st in states:
            c = skip_cost if st is None else st[1]
            if i == 0:
                pen = 0.0
                if start is not None:  # the branch leaves its parent here
                    d0 = float(np.linalg.norm(st[0] - start)) if st is not None else 0.0
                    pen = ((d0 - 1.5) / 1.0) ** 2 if d0 > 1.5 else 0.0
                    virtual = (start, 0.0, 0.0, -1, -1)
                    cur.append((c + pen, -1, st if st is not None else virtual, 0))
                else:
                    cur.append((c, -1, st, 0 if st is not None else -1))
                continue
            best: tuple[float, int, tuple | None, int] = (np.inf, -1, None, -1)
            for j, (tot, _, last, li) in enumerate(layers[-1]):
                pen = 0.0
                if st is not None and last is not None:
                    arc = float(np.sum(step_iso[li + 1:i + 1]))
                    d = float(np.linalg.norm(st[0] - last[0]))
                    allowed = 2.5 * arc + 1.5
                    pen = ((d - allowed) / 1.0) ** 2 if d > allowed else 0.0
                    if st[3] == last[3]:
                        db = abs(st[4] - last[4])
                        allowed_b = 3.0 * (i - li) + 3.0
                        pen += ((db - allowed_b) / 2.0) ** 2 if db > allowed_b else 0.0
                    else:
                        pen += switch_cost
                if tot + pen < best[0]:
                    best = (tot + pen, j, last, li)
            tot, j, last, li = best
            cur.append((tot + c, j, st if st is not None else last, i if st is not None else li))
        layers.append(cur)
    # back-track
    k = int(np.argmin([s[0] for s in layers[-1]]))
    pts = np.zeros((n, 3))
    ok = np.zeros(n, bool)
    rads = np.zeros(n)
    for i in range(n - 1, -1, -1):
        state = layers[i][k]
        if k < len(cands[i]):
            pts[i], rads[i], ok[i] = cands[i][k][0], cands[i][k][2], True
        k = state[1]
    return pts, rads, ok


def _fill(pts: np.ndarray, rads: np.ndarray, ok: np.ndarray, da: np.ndarray, sa: np.ndarray,
          r_iso: np.ndarray, pa: CArmPlane) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Unmatched points: on their own A ray, nearest the line between matched neighbours; the
    unmatched ends are cut."""
    idx = np.nonzero(ok)[0]
    if len(idx) < 2:
        return pts[ok], rads[ok], ok[ok], int(idx[0]) if len(idx) else 0
    lo, hi = idx[0], idx[-1]
    out_p, out_r = pts.copy(), rads.copy()
    for i in range(lo, hi + 1):
        if ok[i]:
            continue
        j0 = idx[idx < i][-1]
        j1 = idx[idx > i][0]
        w = (i - j0) / (j1 - j0)
        guess = (1 - w) * pts[j0] + w * pts[j1]
        t = float((guess - sa) @ da[i])
        out_p[i] = sa + t * da[i]
        out_r[i] = r_iso[i] * t / pa.sod_mm
    sl = slice(lo, hi + 1)
    return out_p[sl], out_r[sl], ok[sl], int(lo)
