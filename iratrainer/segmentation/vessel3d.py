"""3-D vessel segmentation (CTA, MRA, 3-D RA) to a :class:`VesselTree`, fully automatic.

Pipeline (each step reports progress):

1. **Noise and levels**: Gaussian smoothing (σ = 0.7 voxel); the background level and
   noise from the median and MAD of the volume.
2. **Vesselness**: multi-scale Sato tubeness for bright tubes (σ = 1-3 voxels,
   normalised; :func:`tubeness`: Hessian eigenvalues in closed form, numba, at the voxels
   brighter than background + 2 noise SD only), the vessel level from the intensity at
   the strongest ridges.
3. **Bone**: voxels far brighter than the vessel level (above vessel level + 6 noise SD
   and above the midpoint between vessel level and 1,000 HU) with low tubeness, dilated,
   are excluded: contrast-filled vessels are separated from bone.
4. **Lumen**: hysteresis thresholds on the smoothed intensity set from the levels (the
   half-maximum boundary between background and vessel, the partial-volume edge), kept
   where connected to strong ridges; the largest connected tree.
5. **Skeleton and graph**: 3-D skeletonisation, junctions (≥ 3 neighbours) and end
   points, branches traced between them, spurs shorter than twice the local radius
   pruned.
6. **Sub-voxel centerlines and radii**: each skeleton point is moved to the
   intensity-weighted centroid of its cross-section (sampled by trilinear interpolation
   in the plane normal to the branch); the radius comes from the integrated contrast of
   the cross-section, ``r = sqrt(Σ(I - background) · dA / (π · peak))``, which is free of
   the half-voxel bias of a distance transform; centerlines are smoothed.
7. **Tree**: rooted at the widest end point (the largest inflow vessel) or at the end
   point nearest ``seed_point``; branch labels ``V0, V1, ...`` (atlas labels are matched
   later by case authoring).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from iratrainer.anatomy.tree import Branch, VesselTree
from iratrainer.errors import IratrainerError
from iratrainer.segmentation.dicom_io import Volume

__all__ = ["SegmentationError", "Segmentation3D", "segment_volume", "tubeness"]


class SegmentationError(IratrainerError):
    """The volume holds no recognisable vessel tree; check the series (contrast phase, field of view)."""


@dataclass(frozen=True)
class Segmentation3D:
    """Result: the tree, the lumen mask, and the levels that were found (for the summary)."""

    tree: VesselTree
    mask: np.ndarray
    background: float
    vessel_level: float
    noise: float


def _tube_kernel():  # compiled on first use (numba), cached on disk
    from numba import njit

    @njit(cache=True, nogil=True)
    def tube_at(g: np.ndarray, idx: np.ndarray, sigma: float, out: np.ndarray) -> None:
        """Sato tubeness at the voxels ``idx`` of the σ-smoothed volume ``g``: σ² times the
        geometric mean of the two largest eigenvalues of −H (clipped at 0), H from central
        second differences; the maximum over scales accumulates in ``out``."""
        nz, ny, nx = g.shape
        s2 = sigma * sigma
        for n in range(idx.shape[0]):
            z, y, x = idx[n, 0], idx[n, 1], idx[n, 2]
            if z < 1 or y < 1 or x < 1 or z > nz - 2 or y > ny - 2 or x > nx - 2:
                continue
            c = g[z, y, x]
            a = g[z + 1, y, x] - 2.0 * c + g[z - 1, y, x]
            d = g[z, y + 1, x] - 2.0 * c + g[z, y - 1, x]
            f = g[z, y, x + 1] - 2.0 * c + g[z, y, x - 1]
            b = 0.25 * (g[z + 1, y + 1, x] - g[z + 1, y - 1, x] - g[z - 1, y + 1, x] + g[z - 1, y - 1, x])
            e = 0.25 * (g[z + 1, y, x + 1] - g[z + 1, y, x - 1] - g[z - 1, y, x + 1] + g[z - 1, y, x - 1])
            h = 0.25 * (g[z, y + 1, x + 1] - g[z, y + 1, x - 1] - g[z, y - 1, x + 1] + g[z, y - 1, x - 1])
            # eigenvalues of [[a, b, e], [b, d, h], [e, h, f]] (trigonometric form), m1 >= m2 >= m3
            p1 = b * b + e * e + h * h
            q = (a + d + f) / 3.0
            p2 = (a - q) ** 2 + (d - q) ** 2 + (f - q) ** 2 + 2.0 * p1
            if p2 <= 1e-30:
                continue
            pp = np.sqrt(p2 / 6.0)
            ba, bd, bf = (a - q) / pp, (d - q) / pp, (f - q) / pp
            bb, be, bh = b / pp, e / pp, h / pp
            r = 0.5 * (ba * (bd * bf - bh * bh) - bb * (bb * bf - bh * be) + be * (bb * bh - bd * be))
            r = min(1.0, max(-1.0, r))
            phi = np.arccos(r) / 3.0
            m1 = q + 2.0 * pp * np.cos(phi)
            m3 = q + 2.0 * pp * np.cos(phi + 2.0943951023931953)
            m2 = 3.0 * q - m1 - m3
            # bright tube: H has two strongly negative eigenvalues across it (m3 <= m2)
            v = s2 * np.sqrt(max(-m3, 0.0) * max(-m2, 0.0))
            if v > out[n]:
                out[n] = v

    return tube_at


_TUBE = None
ELONGATION_MAX = 1.8  # one tube cut 45° off its axis: 1.41; two equal tubes side by side: 2.24


def tubeness(sm: np.ndarray, candidates: np.ndarray, sigmas: tuple[float, ...] = (1.0, 1.5, 2.0, 3.0)) -> np.ndarray:
    """Multi-scale Sato tubeness of bright tubes, computed only at ``candidates`` (a boolean
    mask; 0 elsewhere). One Gaussian smoothing per scale for the whole volume, then the
    Hessian and its eigenvalues at the candidate voxels only (numba): a CTA's vessels are a
    few per cent of its voxels.
    """
    global _TUBE
    if _TUBE is None:
        _TUBE = _tube_kernel()
    idx = np.argwhere(candidates).astype(np.int64)
    vals = np.zeros(len(idx), np.float64)
    for sg in sigmas:
        g = ndi.gaussian_filter(sm, sg, output=np.float32)
        _TUBE(g, idx, float(sg), vals)
    out = np.zeros(sm.shape, np.float32)
    out[tuple(idx.T)] = vals
    return out


_NB26 = np.array([(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1) if (i, j, k) != (0, 0, 0)])


def _trace_branches(skel: np.ndarray, offsets: np.ndarray | None = None) -> list[np.ndarray]:
    """Split a 2-D or 3-D skeleton into branches (arrays of indices) between junctions and ends.

    ``offsets``: the neighbourhood (default: the 26 neighbours in 3-D, the 8 in 2-D).
    """
    if offsets is None:
        offsets = _NB26 if skel.ndim == 3 else np.array(
            [(i, j) for i in (-1, 0, 1) for j in (-1, 0, 1) if (i, j) != (0, 0)])
    pts = np.argwhere(skel)
    index = {tuple(p): i for i, p in enumerate(pts)}
    nbrs: list[list[int]] = [[] for _ in range(len(pts))]
    for i, p in enumerate(pts):
        for d in offsets:
            j = index.get(tuple(p + d))
            if j is not None:
                nbrs[i].append(j)
    node = np.array([len(n) != 2 for n in nbrs], dtype=bool)
    seen: set[tuple[int, int]] = set()
    branches = []
    for s in np.nonzero(node)[0]:
        for nb in nbrs[s]:
            if (s, nb) in seen:
                continue
            path = [s, nb]
            seen.update({(s, nb), (nb, s)})
            prev, cur = s, nb
            while not node[cur]:
                nxt = [q for q in nbrs[cur] if q != prev]
                if not nxt:
                    break
                prev, cur = cur, nxt[0]
                seen.update({(prev, cur), (cur, prev)})
                path.append(cur)
            branches.append(pts[path])
    # isolated loops without nodes are ignored
    return branches


def _cross_section(vol: np.ndarray, p: np.ndarray, t: np.ndarray, r_guess: float, background: float) -> tuple[
        np.ndarray, float, float, float]:
    """Centroid (z, y, x), radius (voxels), peak and elongation (ratio of the principal axes of
    the part above half the peak) of the cross-section of ``vol`` at ``p`` normal to ``t``."""
    t = t / max(np.linalg.norm(t), 1e-9)
    a = np.cross(t, [1.0, 0.0, 0.0])
    if np.linalg.norm(a) < 0.3:
        a = np.cross(t, [0.0, 1.0, 0.0])
    a /= np.linalg.norm(a)
    b = np.cross(t, a)
    R = max(2.5 * r_guess, 3.0)
    step = 0.35
    g = np.arange(-R, R + 1e-9, step)
    U, V = np.meshgrid(g, g)
    disk = U ** 2 + V ** 2 <= R * R
    coords = p[:, None] + a[:, None] * U[disk] + b[:, None] * V[disk]
    vals = []
    for off in (-0.5, 0.0, 0.5):  # a thin slab along the vessel averages the noise
        vals.append(ndi.map_coordinates(vol, coords + (off * t)[:, None], order=1, mode="nearest"))
    v = np.mean(vals, axis=0) - background
    # only this vessel: the bright blob of the cross-section that holds the point (another
    # vessel crossing the plane nearby would pull the centroid and swell the area)
    img = np.zeros(U.shape)
    img[disk] = v
    c0 = len(g) // 2
    near = (U ** 2 + V ** 2 <= max(0.8, 0.5 * r_guess) ** 2) & disk
    level = 0.5 * max(float(img[near].max()), 1e-9)
    lab, n_lab = ndi.label(img > level)
    own = lab[c0, c0]
    if own == 0 and n_lab:
        d_lab = ndi.minimum(U ** 2 + V ** 2, lab, index=np.arange(1, n_lab + 1))
        own = int(np.argmin(d_lab)) + 1
    if n_lab > 1 and own:
        region = ndi.binary_dilation(lab == own, iterations=max(2, int(round(1.0 / step))))
        region &= (lab == own) | (lab == 0)
        region &= ~ndi.binary_dilation((lab != own) & (lab != 0), iterations=1)
        v = np.where(region[disk], v, 0.0)
    w = np.clip(v, 0.0, None)
    if w.sum() <= 0:
        return p, r_guess, 0.0, 1.0
    centroid = (coords * w).sum(axis=1) / w.sum()
    # peak: mean of the central values around the centroid (robust to noise)
    d2 = ((coords - centroid[:, None]) ** 2).sum(axis=0)
    core = d2 <= max(0.5 * r_guess, 0.8) ** 2
    peak = float(np.mean(v[core])) if np.any(core) else float(v.max())
    if peak <= 0:
        return centroid, r_guess, 0.0, 1.0
    area = float(np.sum(v)) * step * step
    r = float(np.sqrt(max(area, 0.0) / (np.pi * peak)))
    # elongation of the blob above half the peak (principal second moments): 1 for one vessel
    # cut across, more where two vessels run merged
    half = w > 0.5 * peak
    elong = 1.0
    if np.count_nonzero(half) >= 6:
        rel = coords[:, half] - coords[:, half].mean(axis=1, keepdims=True)
        ev = np.linalg.eigvalsh(rel @ rel.T / rel.shape[1])  # the smallest is ~0: the blob is planar
        elong = float(np.sqrt(ev[-1] / max(ev[-2], 1e-9)))
    return centroid, r, peak, elong


def _reach(maskf: np.ndarray, start: np.ndarray, t: np.ndarray, max_vox: float) -> float:
    """How far (voxels, in half-voxel steps) the lumen mask (as float, > 0.5 inside) goes on
    from ``start`` along the unit direction ``t``, up to ``max_vox``."""
    steps = np.arange(0.5, max_vox + 1e-9, 0.5)
    pts = start + steps[:, None] * t
    inside = ndi.map_coordinates(maskf, pts.T, order=1, mode="constant", cval=0.0) > 0.5
    n = len(inside) if inside.all() else int(np.argmin(inside))  # first step outside the lumen
    return float(steps[n - 1]) if n else 0.0


def _end_direction(pts: np.ndarray) -> np.ndarray | None:
    """Unit direction of a polyline at its last point (a line fitted to its last 8 points)."""
    if len(pts) < 2:
        return None
    tail = pts[-min(8, len(pts)):]
    _, _, vt = np.linalg.svd(tail - tail.mean(axis=0))
    return vt[0] if vt[0] @ (tail[-1] - tail[0]) > 0 else -vt[0]


def _extend_end(maskf: np.ndarray, cent: np.ndarray, rad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Continue a centerline past its free end along its end direction, in half-voxel steps,
    as far as the lumen mask (the half-maximum edge) reaches, less the end cap's radius; at
    most two radii + 3 voxels (a skeleton stops about a radius short of the end of a capped
    tube, whose lumen reaches a radius beyond its centerline's end)."""
    t = _end_direction(cent) if len(cent) >= 3 else None
    if t is None:
        return cent, rad
    r_end = float(np.median(rad[-min(5, len(rad)):]))
    n_keep = int(np.floor((_reach(maskf, cent[-1], t, 2.0 * r_end + 3.0) - r_end) / 0.5 + 1e-9))
    if n_keep <= 0:
        return cent, rad
    pts = cent[-1] + (0.5 * np.arange(1, n_keep + 1))[:, None] * t
    return np.vstack([cent, pts]), np.concatenate([rad, np.full(n_keep, r_end)])


def segment_volume(volume: Volume, seed_point: np.ndarray | None = None,
                   progress: Callable[[str, float], None] | None = None, min_radius_vox: float = 0.8) -> Segmentation3D:
    """Run the pipeline of the module docstring on ``volume``.

    Args:
        volume: the de-identified volume (HU for CT).
        seed_point: LPS mm; the tree is rooted at the end point nearest to it.
        progress: called with (stage, fraction 0-1).
        min_radius_vox: smallest vessel radius kept, voxels.

    Raises:
        SegmentationError: when nothing vessel-like is found.
    """
    from skimage.filters import apply_hysteresis_threshold
    from skimage.morphology import skeletonize

    say = progress or (lambda _s, _f: None)
    vol = volume.voxels.astype(np.float32)
    if vol.ndim != 3 or min(vol.shape) < 8:
        raise SegmentationError(f"a 3-D volume of at least 8 voxels per side is needed, got {vol.shape}")
    say("smoothing", 0.05)
    sm = ndi.gaussian_filter(vol, 0.7)
    background = float(np.median(vol))
    noise = float(1.4826 * np.median(np.abs(vol - background)))
    noise_sm = max(noise * 0.35, 1e-3)  # after σ=0.7 smoothing the noise SD drops to about a third
    say("bone", 0.15)
    # bright voxels split in two classes (Otsu): contrast-filled vessels and, when the upper
    # class is far brighter (more than 2.5 times the contrast), bone
    from skimage.filters import threshold_otsu

    bright = sm[sm > background + 4 * noise_sm]
    bone = np.zeros(sm.shape, bool)
    if bright.size > 100:
        t = float(threshold_otsu(bright))
        lo_cls, hi_cls = bright[bright <= t], bright[bright > t]
        if lo_cls.size and hi_cls.size and (hi_cls.mean() - background) > 2.5 * (lo_cls.mean() - background):
            bone = ndi.binary_dilation(sm > t, iterations=2)
    say("vesselness", 0.25)
    clean = np.where(bone, np.float32(background), sm)
    tube = tubeness(clean, clean > background + 2 * noise_sm)
    ridge = (tube > np.percentile(tube, 99.7)) & ~bone
    strong = ridge & (sm > background + 3 * noise_sm)
    if not np.any(strong):
        raise SegmentationError("no tubular structure brighter than the background found")
    vessel_level = float(np.median(sm[strong]))
    contrast = vessel_level - background
    if contrast < 4 * noise_sm:
        raise SegmentationError(f"vessel contrast ({contrast:.0f}) is within the noise ({noise_sm:.0f}): "
                                "not a contrast-enhanced angiography?")
    say("lumen", 0.45)
    low = background + 0.5 * contrast * 0.6  # half-maximum of the faded distal contrast
    high = background + 0.5 * contrast * 1.2
    cand = apply_hysteresis_threshold(np.where(bone, background, sm), low, high)
    lab, n = ndi.label(cand, structure=np.ones((3, 3, 3)))
    if n == 0:
        raise SegmentationError("no vessel left after thresholding")
    sizes = ndi.sum(np.ones_like(lab), lab, index=np.arange(1, n + 1))
    keep = np.argmax(sizes) + 1
    mask = lab == keep
    mask = ndi.binary_closing(mask, iterations=1) & ~bone
    mask = ndi.binary_fill_holes(mask)
    say("skeleton", 0.6)
    skel = skeletonize(mask)
    edt = ndi.distance_transform_edt(mask)
    branches = _trace_branches(skel)
    if not branches:
        raise SegmentationError("the skeleton has no branch")
    say("centerlines", 0.7)
    # prune spurs: terminal branches shorter than twice the local radius (+2 voxels)
    pts_all = np.argwhere(skel)
    degree: dict[tuple[int, ...], int] = {}
    index = {tuple(p): True for p in pts_all}
    for p in pts_all:
        degree[tuple(p)] = sum(1 for d in _NB26 if index.get((p[0] + d[0], p[1] + d[1], p[2] + d[2])))
    maskf = mask.astype(np.float32)
    kept = []
    for br in branches:
        ends = [degree[tuple(br[0])], degree[tuple(br[-1])]]
        terminal = 1 in ends
        r_along = edt[tuple(br.T)]
        r_loc = float(np.max(r_along))
        if terminal and ends != [1, 1]:
            # a spur runs from the centre of a vessel to its surface and no further: there the
            # lumen ends at once; a real end's skeleton stops about a radius inside its lumen
            tip_first = ends[0] == 1
            r_junc = float(r_along[-1] if tip_first else r_along[0])
            seq = (br[::-1] if tip_first else br).astype(np.float64)
            t_tip = _end_direction(seq)
            beyond = _reach(maskf, seq[-1], t_tip, 12.0) if t_tip is not None else 0.0
            if len(br) + beyond < r_junc + 2.0:
                continue
        if terminal and ends == [1, 1] and len(br) < 2 * r_loc + 2:
            continue
        if not terminal and len(br) <= max(3.0, r_loc):
            continue  # a short edge inside a junction cluster: the neighbours are joined by proximity
        kept.append(br)
    refined: list[tuple[np.ndarray, np.ndarray]] = []
    skeleton_ends: list[tuple[bool, bool]] = []  # whether each polyline's (start, end) is a skeleton end point
    for bi, br in enumerate(kept):
        say("centerlines", 0.7 + 0.25 * bi / max(len(kept), 1))
        P = br.astype(np.float64)
        if len(P) >= 5:
            P = ndi.uniform_filter1d(P, 3, axis=0, mode="nearest")
        cent = np.empty_like(P)
        rad = np.empty(len(P))
        tubular = np.ones(len(P), bool)
        for i in range(len(P)):
            t = P[min(i + 2, len(P) - 1)] - P[max(i - 2, 0)]
            r_e = float(edt[tuple(br[i])]) + 0.5
            r0 = max(r_e - 0.5, 1.0)
            c, r, _, _ = _cross_section(sm, P[i], t, r0, background)
            # a second pass from the refined point
            c, r, _, elong = _cross_section(sm, c, t, max(r, 0.8), background)
            cent[i], rad[i] = c, r
            # at a junction, or where two vessels run merged, the cross-section holds two vessels:
            # its centroid wanders off the skeleton, its radius swells, or it is elongated; such
            # points are left out (the tree joins across)
            if np.linalg.norm(c - P[i]) > max(1.0, 0.6 * r_e) or r > 1.6 * r_e or elong > ELONGATION_MAX:
                tubular[i] = False
        if len(cent) >= 5:
            cent = ndi.uniform_filter1d(cent, 3, axis=0, mode="nearest")
            rad = ndi.median_filter(rad, size=5, mode="nearest")
        # the neighbours of a junction's points are half in it too
        if not tubular.all():
            tubular &= ~ndi.binary_dilation(~tubular, iterations=1)
        good = (rad >= min_radius_vox) & tubular
        if good.sum() >= 2:
            c_good, r_good = cent[good], rad[good]
            # a free end (skeleton end point) stops about a radius short of the lumen's end
            if degree[tuple(br[-1])] == 1:
                c_good, r_good = _extend_end(maskf, c_good, r_good)
            if degree[tuple(br[0])] == 1:
                c_rev, r_rev = _extend_end(maskf, c_good[::-1], r_good[::-1])
                c_good, r_good = c_rev[::-1].copy(), r_rev[::-1].copy()
            refined.append((c_good, r_good))
            skeleton_ends.append((degree[tuple(br[0])] == 1, degree[tuple(br[-1])] == 1))
    if not refined:
        raise SegmentationError("no centerline survived refinement")
    say("tree", 0.97)
    tree = _build_tree(refined, volume, seed_point, skeleton_ends=skeleton_ends)
    say("done", 1.0)
    return Segmentation3D(tree, mask, background, vessel_level, noise)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of the angle between two vectors."""
    return float(a @ b) / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-9)


def _start_dir(pts: np.ndarray) -> np.ndarray:
    """Direction of a polyline over its first ~5 points (junction points are noisy)."""
    return pts[min(5, len(pts) - 1)] - pts[0]


def _continues(c: tuple[float, float, int, np.ndarray, np.ndarray],
               cands: list[tuple[float, float, int, np.ndarray, np.ndarray]], r_par: float) -> bool:
    """Whether candidate ``c`` = (cosine with the parent's end direction, calibre mm, polyline
    index, ...) continues a parent of end calibre ``r_par`` mm: within 50 degrees, at least 0.7
    of its calibre, and clearly the one of ``cands``: better aligned than every other by 0.1, or
    as well aligned to within 0.2 (a side branch may leave at a small angle) and wider by 20 %."""
    cos_c, r_c = c[0], c[1]
    return (cos_c > np.cos(np.radians(50)) and r_c >= 0.7 * r_par
            and all(cos_c > o[0] + 0.1 or (cos_c > o[0] - 0.2 and r_c >= 1.2 * o[1])
                    for o in cands if o is not c and o[2] != c[2]))


def _build_tree(refined: list[tuple[np.ndarray, np.ndarray]], volume: Volume,
                seed_point: np.ndarray | None, join_radii: float = 3.0, root_free_end: bool = True,
                skeleton_ends: list[tuple[bool, bool]] | None = None) -> VesselTree:
    """Connect branch polylines (voxel coordinates z, y, x) into a tree in LPS mm.

    ``root_free_end``: root at the widest end that no other polyline reaches (3-D: a
    junction's ends are wide too); in a projection, where vessels overlap, any end counts.
    ``skeleton_ends``: per polyline, whether its start and its end are end points of the
    skeleton (the lumen ends there). Such an end is free unless another polyline comes
    within its radius + 3 voxels (a vessel broken by a gap in the contrast): the reach
    that joins junctions, three radii, would take a vessel's tip passing near the root's
    inflow end for a junction.
    """
    vox = float(np.mean(volume.spacing_mm))
    polys = []
    kept_of: list[int] = []  # index in ``refined`` of each polyline
    for n_ref, (cent, rad) in enumerate(refined):
        xyz = cent[:, ::-1]  # (z, y, x) -> (x, y, z) index order of the affine
        pts = volume.index_to_lps(xyz)
        keep = np.concatenate([[True], np.linalg.norm(np.diff(pts, axis=0), axis=1) > 1e-6])
        pts, r = pts[keep], rad[keep] * vox
        if len(pts) >= 2:
            polys.append((pts, r))
            kept_of.append(n_ref)
    if not polys:
        raise SegmentationError("no usable centerline")
    tol = 3.0 * vox

    def reach(i: int, e: int) -> float:
        """How far an end may be from another branch and still join it: junction points were
        left out over about two radii, so the gap scales with the local radius."""
        return 2 * tol + join_radii * float(polys[i][1][e])

    # connected groups of polylines (an end point within tolerance of another polyline)
    parent_of = list(range(len(polys)))

    def find(a: int) -> int:
        while parent_of[a] != a:
            parent_of[a] = parent_of[parent_of[a]]
            a = parent_of[a]
        return a

    for i in range(len(polys)):
        for j in range(len(polys)):
            if i == j:
                continue
            for e in (0, -1):
                if np.min(np.linalg.norm(polys[j][0] - polys[i][0][e], axis=1)) <= reach(i, e):
                    parent_of[find(i)] = find(j)
    groups: dict[int, float] = {}
    for i, (p, _) in enumerate(polys):
        groups[find(i)] = groups.get(find(i), 0.0) + float(np.sum(np.linalg.norm(np.diff(p, axis=0), axis=1)))
    main = max(groups, key=lambda g: groups[g])
    # root: the end point nearest the seed, or the widest end point of the largest group
    ends = [(i, e) for i in range(len(polys)) for e in (0, -1)
            if seed_point is not None or find(i) == main]
    if seed_point is not None:
        sp = np.asarray(seed_point, dtype=np.float64)
        root_i, root_e = min(ends, key=lambda ie: float(np.linalg.norm(polys[ie[0]][0][ie[1]] - sp)))
    else:
        # the widest free end (one that no other polyline reaches: a junction's ends are wide too)
        def free(ie: tuple[int, int]) -> bool:
            i, e = ie
            if skeleton_ends is not None and skeleton_ends[kept_of[i]][0 if e == 0 else 1]:
                gap = float(polys[i][1][e]) + 2 * tol
            else:
                gap = reach(i, e)
            return all(np.min(np.linalg.norm(polys[j][0] - polys[i][0][e], axis=1)) > gap
                       for j in range(len(polys)) if j != i)

        free_ends = ([ie for ie in ends if free(ie)] if root_free_end else []) or ends
        root_i, root_e = max(free_ends, key=lambda ie: float(np.median(polys[ie[0]][1][:5] if ie[1] == 0
                                                                        else polys[ie[0]][1][-5:])))
    if root_e == -1:
        polys[root_i] = (polys[root_i][0][::-1].copy(), polys[root_i][1][::-1].copy())
    placed: dict[int, str] = {root_i: "V0"}
    out = [Branch("V0", None, 0, polys[root_i][0], polys[root_i][1])]
    where = {"V0": 0}  # label -> index in out
    remaining = set(range(len(polys))) - {root_i}
    # best attachment of each remaining polyline: (distance, end, label, index on the parent)
    best_of: dict[int, tuple[float, int, str, int]] = {}

    def offer(label: str) -> None:
        pts_l = out[where[label]].points_mm
        for j in remaining:
            pj = polys[j][0]
            for e in (0, -1):
                d = np.linalg.norm(pts_l - pj[e], axis=1)
                k = int(np.argmin(d))
                dk, lab_k = float(d[k]), label
                par = out[where[label]].parent
                if k <= 2 and par is not None:
                    # the first points of a branch are its junction: attach to the branch it leaves
                    # (where a continuation can still be recognised) when that is within reach
                    pb_ = out[where[par]]
                    kp = out[where[label]].parent_index
                    dp = float(np.linalg.norm(pb_.points_mm[kp] - pj[e]))
                    if dp <= reach(j, e):
                        dk, lab_k, k = dp, par, kp
                if j not in best_of or dk < best_of[j][0]:
                    best_of[j] = (dk, e, lab_k, k)

    offer("V0")
    while remaining:
        cands = [(best_of[j][0], j) for j in remaining if j in best_of]
        if not cands:
            break
        cands = [(d, j) for d, j in cands if d <= reach(j, best_of[j][1])]
        if not cands:
            break  # the rest is disconnected from the tree
        dist, j = min(cands)
        _, e, lab, k = best_of[j]
        pj, rj = polys[j]
        if e == -1:
            pj, rj = pj[::-1].copy(), rj[::-1].copy()
        parent = out[where[lab]]
        pp = parent.points_mm
        remaining.discard(j)
        if k >= len(pp) - 2 and len(pp) >= 3 and len(pj) >= 3:
            # attached at the parent's end: the vessel that continues the parent's direction
            # (< 50 degrees) at its calibre, clearly, is the same vessel beyond a junction; at a
            # bifurcation (two children leaving alike) the parent ends
            t_par = pp[-1] - pp[max(0, len(pp) - 6)]  # over ~5 points: junction points are noisy
            # candidates leaving there: (cosine, calibre, polyline index or -1, oriented points, radii)
            cands_end: list[tuple[float, float, int, np.ndarray, np.ndarray]] = [
                (_cos(t_par, _start_dir(pj)), float(np.median(rj[:12])), j, pj, rj)]
            cands_end += [(_cos(t_par, _start_dir(b_.points_mm)), float(np.median(b_.radii_mm[1:13])), -1,
                           b_.points_mm, b_.radii_mm) for b_ in out
                          if b_.parent == lab and b_.parent_index >= len(pp) - 2 and len(b_.points_mm) >= 4]
            for j2 in remaining:
                for e2 in (0, -1):
                    q2 = polys[j2][0][e2]
                    # one that starts nearer this candidate's far end than the parent's end continues
                    # the candidate (a vessel broken in pieces), it does not compete with it
                    if (np.linalg.norm(q2 - pp[-1]) <= reach(j2, e2)
                            and np.linalg.norm(q2 - pj[-1]) >= np.linalg.norm(q2 - pp[-1])):
                        p2, r2 = (polys[j2][0], polys[j2][1]) if e2 == 0 else (polys[j2][0][::-1], polys[j2][1][::-1])
                        if len(p2) >= 3:
                            cands_end.append((_cos(t_par, _start_dir(p2)), float(np.median(r2[:12])), j2, p2, r2))
            r_par = float(np.median(parent.radii_mm[-12:]))

            winner = next((c for c in cands_end if c[2] >= 0 and _continues(c, cands_end, r_par)), None)
            if winner is not None:
                jw, pw, rw = winner[2], winner[3], winner[4]
                if jw != j:  # another vessel continues the parent: place it first, this one later
                    remaining.add(j)
                    remaining.discard(jw)
                ext = np.vstack([pp, pw])
                er = np.concatenate([parent.radii_mm, rw])
                keep = np.concatenate([[True], np.linalg.norm(np.diff(ext, axis=0), axis=1) > 1e-6])
                out[where[lab]] = Branch(parent.label, parent.parent, parent.parent_index, ext[keep], er[keep])
                placed[jw] = lab
                offer(lab)
                continue
        if len(pj) >= 3:
            # the junction points were left out: the branch leaves its parent where its own
            # direction, followed back, meets the parent's centerline (not at the parent point
            # nearest to its first kept point, which cuts the corner)
            back = -_start_dir(pj)
            nb_ = float(np.linalg.norm(back))
            if nb_ > 1e-9:
                back /= nb_
                rel = pp - pj[0]
                s_ = rel @ back
                perp = np.linalg.norm(rel - np.outer(s_, back), axis=1)
                cost = np.where(s_ > 0, perp, np.linalg.norm(rel, axis=1)) + 0.1 * np.abs(s_)
                k_alt = int(np.argmin(cost))
                if np.linalg.norm(pp[k_alt] - pj[0]) <= 2.0 * np.linalg.norm(pp[k] - pj[0]) + tol:
                    k = k_alt
        pts = np.vstack([pp[k], pj])
        rr = np.concatenate([[rj[0]], rj])
        keep = np.concatenate([[True], np.linalg.norm(np.diff(pts, axis=0), axis=1) > 1e-6])
        pts, rr = pts[keep], rr[keep]
        if len(pts) < 2:
            continue
        name = f"V{len(out)}"
        out.append(Branch(name, lab, k, pts, rr))
        where[name] = len(out) - 1
        placed[j] = name
        offer(name)
    out = _drop_junction_pieces(out)
    return VesselTree(out, metadata={"source": "segmentation", "method": "iratrainer 3-D pipeline",
                                     "provenance": volume.provenance})


def _drop_junction_pieces(out: list[Branch]) -> list[Branch]:
    """Leave out the branches of fewer than four points (a junction point and a voxel or two
    of centerline: a piece of a junction, not a vessel), their children moved to the point where
    the piece left its own parent; then number the branches again in order (parents first)."""
    by_label = {b.label: b for b in out}
    for b in reversed(out):  # children before parents: a chain of pieces collapses fully
        if b.parent is None or len(b.points_mm) >= 4 or b.label not in by_label:
            continue
        par = by_label[b.parent]
        for c in list(by_label.values()):
            if c.parent == b.label:
                # its first point (the junction point on the piece) moves to the piece's own junction
                # point, so that the indices of its own children stay valid
                pts = c.points_mm.copy()
                pts[0] = par.points_mm[b.parent_index]
                by_label[c.label] = Branch(c.label, par.label, b.parent_index, pts, c.radii_mm)
        del by_label[b.label]
    kept = [by_label[b.label] for b in out if b.label in by_label]
    new = {b.label: f"V{i}" for i, b in enumerate(kept)}
    return [Branch(new[b.label], None if b.parent is None else new[b.parent], b.parent_index, b.points_mm, b.radii_mm)
            for b in kept]
