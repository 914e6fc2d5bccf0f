"""Analytic line integrals through tubes and ellipsoids, for every detector pixel.

* :func:`capsule_union_integrals`: the tubes (vessels or one device) are capsules
  (segment a->b, radius r, linear attenuation μ). For each pixel ray the exact entry and
  exit of every capsule it crosses are computed; the intervals are merged so that where
  capsules overlap (at joints and junctions) the path is counted once, with the largest
  μ of the overlapping capsules. Result: ∫ μ dl along each ray (dimensionless).
* :func:`ellipsoid_integrals`: Σ μ_k × chord through ellipsoid k, for the anatomical
  background phantom (negative μ for air cavities inside tissue).

Both are numba kernels that loop over pixels; the capsule kernel only visits the pixels
inside each capsule's projected bounding box.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from iratrainer.imaging.geometry import CArmPlane

__all__ = ["capsule_union_integrals", "tube_sum_integrals", "ellipsoid_integrals", "capsule_chord", "cylinder_chord"]


@nb.njit(cache=True, inline="always")
def _sphere(ox, oy, oz, dx, dy, dz, cx, cy, cz, r):  # pragma: no cover - numba
    qx, qy, qz = ox - cx, oy - cy, oz - cz
    b = qx * dx + qy * dy + qz * dz
    c = qx * qx + qy * qy + qz * qz - r * r
    h = b * b - c
    if h < 0.0:
        return False, 0.0, 0.0
    h = np.sqrt(h)
    return True, -b - h, -b + h


@nb.njit(cache=True)
def capsule_chord(ox, oy, oz, dx, dy, dz, ax, ay, az, bx, by, bz, r):  # pragma: no cover
    """Entry and exit distance of the unit ray o + t d through the capsule a-b of radius r."""
    bax, bay, baz = bx - ax, by - ay, bz - az
    oax, oay, oaz = ox - ax, oy - ay, oz - az
    baba = bax * bax + bay * bay + baz * baz
    bard = bax * dx + bay * dy + baz * dz
    baoa = bax * oax + bay * oay + baz * oaz
    rdoa = dx * oax + dy * oay + dz * oaz
    oaoa = oax * oax + oay * oay + oaz * oaz
    k2 = baba - bard * bard
    if baba <= 0.0 or k2 <= 1e-12 * baba:
        # degenerate segment or ray parallel to the axis: the caps decide
        h1, a0, a1 = _sphere(ox, oy, oz, dx, dy, dz, ax, ay, az, r)
        h2, b0, b1 = _sphere(ox, oy, oz, dx, dy, dz, bx, by, bz, r)
        if not h1 and not h2:
            return False, 0.0, 0.0
        if h1 and h2:
            return True, min(a0, b0), max(a1, b1)
        if h1:
            return True, a0, a1
        return True, b0, b1
    k1 = baba * rdoa - baoa * bard
    k0 = baba * oaoa - baoa * baoa - r * r * baba
    h = k1 * k1 - k2 * k0
    if h < 0.0:
        return False, 0.0, 0.0
    h = np.sqrt(h)
    t0 = (-k1 - h) / k2
    t1 = (-k1 + h) / k2
    y0 = baoa + t0 * bard
    if y0 <= 0.0:
        hit, t0, _ = _sphere(ox, oy, oz, dx, dy, dz, ax, ay, az, r)
        if not hit:
            return False, 0.0, 0.0
    elif y0 >= baba:
        hit, t0, _ = _sphere(ox, oy, oz, dx, dy, dz, bx, by, bz, r)
        if not hit:
            return False, 0.0, 0.0
    y1 = baoa + t1 * bard
    if y1 <= 0.0:
        hit, _, t1 = _sphere(ox, oy, oz, dx, dy, dz, ax, ay, az, r)
        if not hit:
            return False, 0.0, 0.0
    elif y1 >= baba:
        hit, _, t1 = _sphere(ox, oy, oz, dx, dy, dz, bx, by, bz, r)
        if not hit:
            return False, 0.0, 0.0
    if t1 <= t0:
        return False, 0.0, 0.0
    return True, t0, t1


@nb.njit(cache=True)
def _pixel_ray(src, det0, du, dv, col, row):  # pragma: no cover - numba
    """Unit direction from the focal spot through the centre of pixel (col, row)."""
    dx = det0[0] + (col + 0.5) * du[0] + (row + 0.5) * dv[0] - src[0]
    dy = det0[1] + (col + 0.5) * du[1] + (row + 0.5) * dv[1] - src[1]
    dz = det0[2] + (col + 0.5) * du[2] + (row + 0.5) * dv[2] - src[2]
    norm = np.sqrt(dx * dx + dy * dy + dz * dz)
    return dx / norm, dy / norm, dz / norm


@nb.njit(cache=True)
def capsule_hits(src, det0, du, dv, n, a, b, r, bbox):  # pragma: no cover - numba
    """Per pixel (CSR: ``used[p]`` entries from ``counts[p]``): the entry, exit and index of every
    capsule the pixel's ray crosses, from the capsules' pixel boxes. Slots are reserved for
    every box that covers the pixel; those past ``used[p]`` are left unset."""
    npix = n * n
    counts = np.zeros(npix + 1, np.int64)
    for s in range(a.shape[0]):
        for row in range(bbox[s, 2], bbox[s, 3]):
            for col in range(bbox[s, 0], bbox[s, 1]):
                counts[row * n + col + 1] += 1
    for i in range(npix):
        counts[i + 1] += counts[i]
    total = counts[npix]
    t_in = np.empty(total, np.float64)
    t_out = np.empty(total, np.float64)
    sid = np.empty(total, np.int32)
    used = np.zeros(npix, np.int64)
    for s in range(a.shape[0]):
        for row in range(bbox[s, 2], bbox[s, 3]):
            for col in range(bbox[s, 0], bbox[s, 1]):
                dx, dy, dz = _pixel_ray(src, det0, du, dv, col, row)
                hit, t0, t1 = capsule_chord(src[0], src[1], src[2], dx, dy, dz, a[s, 0], a[s, 1],
                                            a[s, 2], b[s, 0], b[s, 1], b[s, 2], r[s])
                if hit:
                    p = row * n + col
                    k = counts[p] + used[p]
                    t_in[k] = t0
                    t_out[k] = t1
                    sid[k] = s
                    used[p] += 1
    return counts, used, t_in, t_out, sid


@nb.njit(cache=True)
def sorted_ends(t_in, t_out, k0, nk):  # pragma: no cover - numba
    """The entry and exit distances of intervals k0..k0+nk-1, sorted (the sweep's events)."""
    ev = np.empty(2 * nk, np.float64)
    for j in range(nk):
        ev[2 * j] = t_in[k0 + j]
        ev[2 * j + 1] = t_out[k0 + j]
    ev.sort()
    return ev


@nb.njit(cache=True)
def _capsule_kernel(src, det0, du, dv, n, a, b, r, mu, bbox):  # pragma: no cover - numba
    """Per pixel: the (entry, exit, μ) of every capsule in its box, merged (see the wrapper)."""
    npix = n * n
    counts, used, t_in, t_out, sid = capsule_hits(src, det0, du, dv, n, a, b, r, bbox)
    m = np.empty(t_in.shape[0], np.float64)
    for p in range(npix):  # only the slots a hit filled (the others are unset)
        for k in range(counts[p], counts[p] + used[p]):
            m[k] = mu[sid[k]]
    out = np.zeros(npix, np.float64)
    for p in range(npix):
        k0 = counts[p]
        k1 = k0 + used[p]
        if k1 == k0:
            continue
        if k1 - k0 == 1:
            out[p] = m[k0] * (t_out[k0] - t_in[k0])
            continue
        # exact union with the largest μ where intervals overlap: sweep over endpoints
        nk = k1 - k0
        ev = sorted_ends(t_in, t_out, k0, nk)
        acc = 0.0
        for e in range(2 * nk - 1):
            lo, hi = ev[e], ev[e + 1]
            if hi <= lo:
                continue
            mid = 0.5 * (lo + hi)
            best = 0.0
            inside = False
            for j in range(nk):
                if t_in[k0 + j] <= mid <= t_out[k0 + j]:
                    if not inside or m[k0 + j] > best:
                        best = m[k0 + j]
                    inside = True
            if inside:
                acc += best * (hi - lo)
        out[p] = acc
    return out


def _bboxes(plane: CArmPlane, a: np.ndarray, b: np.ndarray, r: np.ndarray,
            projected: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Pixel bounding boxes (col0, col1, row0, row1), half-open, of each capsule's projection.

    ``projected``: ``plane.project`` of ``a`` and ``b`` as (pa, za, pb, zb) when the caller has them.
    """
    n = plane.matrix
    pa, za, pb, zb = projected if projected is not None else (*plane.project(a), *plane.project(b))
    zmin = np.maximum(np.minimum(za, zb) - r, 1.0)
    rpix = r * plane.sid_mm / zmin / plane.pixel_mm + 1.5
    lo = np.floor(np.minimum(pa, pb) - rpix[:, None]).astype(np.int64)
    hi = np.ceil(np.maximum(pa, pb) + rpix[:, None]).astype(np.int64) + 1
    lo = np.clip(lo, 0, n)
    hi = np.clip(hi, 0, n)
    # segments behind the source are not imaged
    behind = np.maximum(za, zb) <= 0
    hi[behind] = lo[behind]
    return np.ascontiguousarray(np.stack([lo[:, 0], hi[:, 0], lo[:, 1], hi[:, 1]], axis=1))


def capsule_union_integrals(
    plane: CArmPlane, a: np.ndarray, b: np.ndarray, r: np.ndarray, mu: np.ndarray,
    supersample: int = 1,
) -> np.ndarray:
    """∫ μ dl (dimensionless) through the union of capsules, averaged over each pixel of ``plane``.

    Args:
        plane: the imaging plane.
        a, b: (S, 3) segment end points, LPS mm.
        r: (S,) capsule radii, mm.
        mu: (S,) linear attenuation coefficient inside each capsule, 1/mm.
        supersample: rays per pixel along each axis (k x k rays averaged). A detector
            pixel integrates over its area; objects thinner than a pixel (a 0.36 mm
            microwire) need k >= 2 or they fall between pixel centres.

    Returns:
        (matrix, matrix) float64 image of line integrals.
    """
    if supersample > 1:
        from dataclasses import replace

        k = int(supersample)
        fine = capsule_union_integrals(replace(plane, matrix=plane.matrix * k), a, b, r, mu, 1)
        n = plane.matrix
        return fine.reshape(n, k, n, k).mean(axis=(1, 3))
    n = plane.matrix
    a = np.ascontiguousarray(a, dtype=np.float64)
    b = np.ascontiguousarray(b, dtype=np.float64)
    r = np.ascontiguousarray(r, dtype=np.float64)
    mu = np.ascontiguousarray(np.broadcast_to(mu, r.shape), dtype=np.float64)
    if len(a) == 0:
        return np.zeros((n, n))
    keep = mu != 0
    a, b, r, mu = a[keep], b[keep], r[keep], mu[keep]
    bbox = _bboxes(plane, a, b, r)
    det0 = plane.detector_centre_mm - (n / 2.0) * plane.pixel_mm * (plane.u + plane.v)
    du = plane.u * plane.pixel_mm
    dv = plane.v * plane.pixel_mm
    out = _capsule_kernel(plane.source_mm, det0, du, dv, n, a, b, r, mu, bbox)
    return out.reshape(n, n)


@nb.njit(cache=True)
def cylinder_chord(ox, oy, oz, dx, dy, dz, ax, ay, az, bx, by, bz, r):  # pragma: no cover
    """Length of the unit ray o + t d inside the flat-ended cylinder a-b of radius r."""
    bax, bay, baz = bx - ax, by - ay, bz - az
    oax, oay, oaz = ox - ax, oy - ay, oz - az
    baba = bax * bax + bay * bay + baz * baz
    if baba <= 0.0:
        return 0.0
    bard = bax * dx + bay * dy + baz * dz
    baoa = bax * oax + bay * oay + baz * oaz
    k2 = baba - bard * bard
    if k2 <= 1e-12 * baba:
        return 0.0  # along the axis: no tube here is long and thin enough for this to matter
    k1 = baba * (dx * oax + dy * oay + dz * oaz) - baoa * bard
    k0 = baba * (oax * oax + oay * oay + oaz * oaz) - baoa * baoa - r * r * baba
    h = k1 * k1 - k2 * k0
    if h <= 0.0:
        return 0.0
    h = np.sqrt(h)
    t0 = (-k1 - h) / k2
    t1 = (-k1 + h) / k2
    if abs(bard) > 1e-15:
        s0 = -baoa / bard
        s1 = (baba - baoa) / bard
        if s0 > s1:
            s0, s1 = s1, s0
        t0 = max(t0, s0)
        t1 = min(t1, s1)
    elif baoa < 0.0 or baoa > baba:
        return 0.0
    return t1 - t0 if t1 > t0 else 0.0


@nb.njit(cache=True, parallel=True)
def _tube_sum_kernel(src, det0, du, dv, n, ks, a, b, r, mu, bbox, ends, reach, bands, out):  # pragma: no cover
    """Rows dealt out to the threads in turn (each pixel has one writer, and adds its
    segments in the same order whatever the thread count); in each segment's box, pixels
    farther from its projected axis than its reach are skipped."""
    for band in nb.prange(bands):
        for s in range(a.shape[0]):
            row0 = bbox[s, 2] + (band - bbox[s, 2]) % bands
            row1 = bbox[s, 3]
            if row1 <= row0:
                continue
            k = ks[s]
            inv = 1.0 / (k * k)
            ax, ay, bx, by = ends[s, 0], ends[s, 1], ends[s, 2], ends[s, 3]
            ex, ey = bx - ax, by - ay
            ee = ex * ex + ey * ey
            lim = (reach[s] + 0.75) ** 2
            for row in range(row0, row1, bands):
                for col in range(bbox[s, 0], bbox[s, 1]):
                    # distance from the pixel centre to the projected axis, pixels
                    qx, qy = col + 0.5 - ax, row + 0.5 - ay
                    t = (qx * ex + qy * ey) / ee if ee > 0.0 else 0.0
                    t = min(max(t, 0.0), 1.0)
                    fx, fy = qx - t * ex, qy - t * ey
                    if fx * fx + fy * fy > lim:
                        continue
                    acc = 0.0
                    for si in range(k):
                        fr = row + (si + 0.5) / k
                        for sj in range(k):
                            fc = col + (sj + 0.5) / k
                            dx = det0[0] + fc * du[0] + fr * dv[0] - src[0]
                            dy = det0[1] + fc * du[1] + fr * dv[1] - src[1]
                            dz = det0[2] + fc * du[2] + fr * dv[2] - src[2]
                            nn = np.sqrt(dx * dx + dy * dy + dz * dz)
                            acc += cylinder_chord(src[0], src[1], src[2], dx / nn, dy / nn, dz / nn,
                                                  a[s, 0], a[s, 1], a[s, 2], b[s, 0], b[s, 1], b[s, 2], r[s])
                    out[row, col] += mu[s] * acc * inv


def tube_sum_integrals(
    plane: CArmPlane, a: np.ndarray, b: np.ndarray, r: np.ndarray, mu: np.ndarray, supersample: int = 4,
) -> np.ndarray:
    """Σ μ · chord through flat-ended cylinders, averaged over k x k rays per pixel.

    For devices: consecutive segments of a smooth device meet without overlap (the small
    wedges at bends are below a micrometre for device bend radii), so a sum is the union.
    No per-pixel lists: fast even with 16 rays per pixel.
    """
    n = plane.matrix
    out = np.zeros((n, n))
    if len(a) == 0:
        return out
    a = np.ascontiguousarray(a, dtype=np.float64)
    b = np.ascontiguousarray(b, dtype=np.float64)
    r = np.ascontiguousarray(np.broadcast_to(r, (len(a),)), dtype=np.float64)
    mu = np.ascontiguousarray(np.broadcast_to(mu, (len(a),)), dtype=np.float64)
    pa, za = plane.project(a)
    pb, zb = plane.project(b)
    bbox = _bboxes(plane, a, b, r, (pa, za, pb, zb))
    zmin = np.maximum(np.minimum(za, zb) - r, 1.0)
    reach = r * plane.sid_mm / zmin / plane.pixel_mm + 1.5  # projected radius with margin, as the boxes
    ends = np.ascontiguousarray(np.concatenate([pa, pb], axis=1), dtype=np.float64)
    # rays per pixel per tube: thin tubes (projected radius under 1.5 px) get `supersample`,
    # thicker ones fewer (their chord varies slowly across a pixel)
    r_px = r * plane.sid_mm / np.maximum(za, 1.0) / plane.pixel_mm
    ks = np.where(r_px >= 3.0, 1, np.where(r_px >= 1.5, 2, int(supersample))).astype(np.int64)
    det0 = plane.detector_centre_mm - (n / 2.0) * plane.pixel_mm * (plane.u + plane.v)
    _tube_sum_kernel(plane.source_mm, det0, plane.u * plane.pixel_mm, plane.v * plane.pixel_mm, n,
                     ks, a, b, r, mu, bbox, ends, reach, nb.get_num_threads(), out)
    return out


@nb.njit(cache=True, parallel=True)
def _ellipsoid_kernel(src, det0, du, dv, centres, inv_axes, mu, bbox, bands, out):  # pragma: no cover
    """Each ellipsoid over the pixels of its projected box; rows dealt out to the threads in
    turn (one writer per pixel, ellipsoids added in order whatever the thread count)."""
    K = centres.shape[0]
    for band in nb.prange(bands):
        for k in range(K):
            row0 = bbox[k, 2] + (band - bbox[k, 2]) % bands
            for row in range(row0, bbox[k, 3], bands):
                for col in range(bbox[k, 0], bbox[k, 1]):
                    dx, dy, dz = _pixel_ray(src, det0, du, dv, col, row)
                    ox, oy, oz = src[0] - centres[k, 0], src[1] - centres[k, 1], src[2] - centres[k, 2]
                    # map into the unit sphere frame: q = M (o - c), e = M d, M = diag(1/abc) R^T
                    qx = inv_axes[k, 0, 0] * ox + inv_axes[k, 0, 1] * oy + inv_axes[k, 0, 2] * oz
                    qy = inv_axes[k, 1, 0] * ox + inv_axes[k, 1, 1] * oy + inv_axes[k, 1, 2] * oz
                    qz = inv_axes[k, 2, 0] * ox + inv_axes[k, 2, 1] * oy + inv_axes[k, 2, 2] * oz
                    ex = inv_axes[k, 0, 0] * dx + inv_axes[k, 0, 1] * dy + inv_axes[k, 0, 2] * dz
                    ey = inv_axes[k, 1, 0] * dx + inv_axes[k, 1, 1] * dy + inv_axes[k, 1, 2] * dz
                    ez = inv_axes[k, 2, 0] * dx + inv_axes[k, 2, 1] * dy + inv_axes[k, 2, 2] * dz
                    A = ex * ex + ey * ey + ez * ez
                    B = qx * ex + qy * ey + qz * ez
                    C = qx * qx + qy * qy + qz * qz - 1.0
                    disc = B * B - A * C
                    if disc > 0.0:
                        out[row, col] += mu[k] * 2.0 * np.sqrt(disc) / A


def _ellipsoid_boxes(plane: CArmPlane, centres: np.ndarray, semi_axes: np.ndarray) -> np.ndarray:
    """Pixel boxes (col0, col1, row0, row1), half-open, that contain each ellipsoid's projection.

    The ellipsoid lies in the cube of its largest semi-axis around its centre; the cube is
    convex, so (all corners in front of the focal spot) its projection lies in the hull of
    its 8 projected corners. A cube reaching behind the focal spot gets the whole image.
    """
    n = plane.matrix
    R = semi_axes.max(axis=1)
    corners = centres[:, None, :] + R[:, None, None] * np.array(
        [[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)[None]
    p, z = plane.project(corners.reshape(-1, 3))
    p = p.reshape(-1, 8, 2)
    z = z.reshape(-1, 8)
    lo = np.clip(np.floor(p.min(axis=1)) - 1, 0, n).astype(np.int64)
    hi = np.clip(np.ceil(p.max(axis=1)) + 2, 0, n).astype(np.int64)
    behind = (z <= 1.0).any(axis=1)
    lo[behind], hi[behind] = 0, n
    return np.ascontiguousarray(np.stack([lo[:, 0], hi[:, 0], lo[:, 1], hi[:, 1]], axis=1))


def ellipsoid_integrals(
    plane: CArmPlane, centres: np.ndarray, rotations: np.ndarray, semi_axes: np.ndarray,
    mu: np.ndarray,
) -> np.ndarray:
    """Σ_k μ_k × chord_k (dimensionless) for each pixel: the background phantom's line integral.

    Args:
        centres: (K, 3) ellipsoid centres, LPS mm.
        rotations: (K, 3, 3) rotation matrices whose columns are the ellipsoid axes.
        semi_axes: (K, 3) semi-axes, mm.
        mu: (K,) linear attenuation added inside each ellipsoid, 1/mm (may be negative).
    """
    n = plane.matrix
    if len(centres) == 0:
        return np.zeros((n, n))
    inv = np.ascontiguousarray(
        (np.transpose(rotations, (0, 2, 1)) / semi_axes[:, :, None]).astype(np.float64))
    det0 = plane.detector_centre_mm - (n / 2.0) * plane.pixel_mm * (plane.u + plane.v)
    out = np.zeros((n, n))
    centres = np.ascontiguousarray(centres, dtype=np.float64)
    bbox = _ellipsoid_boxes(plane, centres, np.asarray(semi_axes, dtype=np.float64))
    _ellipsoid_kernel(plane.source_mm, det0, plane.u * plane.pixel_mm, plane.v * plane.pixel_mm,
                      centres, inv, np.ascontiguousarray(mu, dtype=np.float64), bbox, nb.get_num_threads(), out)
    return out
