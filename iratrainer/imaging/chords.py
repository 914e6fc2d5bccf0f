"""Vessel chords per C-arm view, computed once and re-weighted every frame.

The iodine image is ``∫ μ dl`` through the union of the vessel capsules, where overlaps
(joints, junctions) count once with the largest μ (:func:`~iratrainer.imaging.raycast.
capsule_union_integrals`). Along each pixel ray the capsules' entry and exit points cut
the ray into elementary pieces, each covered by a set of capsules. Those pieces depend
only on the geometry (the C-arm view and the vessel model), not on the contrast: with
μ_s = μ_I · c_s per capsule,

    L(pixel) = Σ_pieces length × max_{s covering the piece} μ_s   (μ_s >= 0).

:class:`VesselChords` computes the pieces once per view (the same capsule chords as the
direct kernel) and stores them in compressed per-pixel lists: pieces covered by one
capsule are summed per capsule ("singles"), pieces covered by several keep their
capsule set ("shared"). Each frame is then a weighted sum over those lists with the
frame's concentrations, exact (to rounding) and about twenty times cheaper than casting
the rays again. Moving the C-arm or the table builds a new set (one slow frame).
"""

from __future__ import annotations

import numba as nb
import numpy as np

from iratrainer.imaging.geometry import CArmPlane
from iratrainer.imaging.raycast import _bboxes, capsule_hits, sorted_ends

__all__ = ["VesselChords"]


@nb.njit(cache=True)
def _pieces(npix, counts, used, t_in, t_out, sid):  # pragma: no cover - numba
    """Sweep each pixel's intervals into singles (capsule, summed length) and shared pieces."""
    n_single = 0
    n_shared = 0
    n_ids = 0
    for p in range(npix):
        nk = used[p]
        n_single += nk
        if nk > 1:
            n_shared += 2 * nk - 1
            n_ids += (2 * nk - 1) * nk
    s_ptr = np.zeros(npix + 1, np.int64)
    s_id = np.empty(n_single, np.int32)
    s_len = np.empty(n_single, np.float64)
    m_ptr = np.zeros(npix + 1, np.int64)
    m_len = np.empty(n_shared, np.float64)
    m_idptr = np.zeros(n_shared + 1, np.int64)
    m_ids = np.empty(max(n_ids, 1), np.int32)
    ns = 0
    nm = 0
    ni = 0
    cover = np.empty(64, np.int64)
    for p in range(npix):
        k0 = counts[p]
        nk = used[p]
        if nk == 1:
            s_id[ns] = sid[k0]
            s_len[ns] = t_out[k0] - t_in[k0]
            ns += 1
        elif nk > 1:
            if cover.shape[0] < nk:
                cover = np.empty(2 * nk, np.int64)
            ev = sorted_ends(t_in, t_out, k0, nk)
            first_single = ns
            for e in range(2 * nk - 1):
                lo, hi = ev[e], ev[e + 1]
                if hi <= lo:
                    continue
                mid = 0.5 * (lo + hi)
                nc = 0
                for j in range(nk):
                    if t_in[k0 + j] <= mid <= t_out[k0 + j]:
                        cover[nc] = j
                        nc += 1
                if nc == 0:
                    continue
                if nc == 1:
                    s = sid[k0 + cover[0]]
                    found = False
                    for q in range(first_single, ns):
                        if s_id[q] == s:
                            s_len[q] += hi - lo
                            found = True
                            break
                    if not found:
                        s_id[ns] = s
                        s_len[ns] = hi - lo
                        ns += 1
                else:
                    m_len[nm] = hi - lo
                    for c in range(nc):
                        m_ids[ni] = sid[k0 + cover[c]]
                        ni += 1
                    nm += 1
                    m_idptr[nm] = ni
        s_ptr[p + 1] = ns
        m_ptr[p + 1] = nm
    return s_ptr, s_id[:ns].copy(), s_len[:ns].copy(), m_ptr, m_len[:nm].copy(), m_idptr[:nm + 1].copy(), \
        m_ids[:ni].copy()


@nb.njit(cache=True, parallel=True)
def _weigh(n, s_ptr, s_id, s_len, m_ptr, m_len, m_idptr, m_ids, mu, out):  # pragma: no cover - numba
    for row in nb.prange(n):
        for col in range(n):
            p = row * n + col
            acc = 0.0
            for j in range(s_ptr[p], s_ptr[p + 1]):
                acc += mu[s_id[j]] * s_len[j]
            for j in range(m_ptr[p], m_ptr[p + 1]):
                best = 0.0
                for k in range(m_idptr[j], m_idptr[j + 1]):
                    v = mu[m_ids[k]]
                    if v > best:
                        best = v
                acc += best * m_len[j]
            out[row, col] = acc


class VesselChords:
    """The ray pieces of one view through a fixed set of capsules (see the module docstring).

    Args:
        plane: the imaging plane (its ``key()`` identifies the view).
        a, b: (S, 3) capsule end points, LPS mm.
        r: (S,) capsule radii, mm.
        supersample: k x k rays per pixel, averaged (1: the pixel centre).
    """

    def __init__(self, plane: CArmPlane, a: np.ndarray, b: np.ndarray, r: np.ndarray,
                 supersample: int = 1) -> None:
        from dataclasses import replace

        self.key = plane.key()
        self.n = plane.matrix
        self.k = max(1, int(supersample))
        fine = replace(plane, matrix=plane.matrix * self.k) if self.k > 1 else plane
        nf = fine.matrix
        self.n_capsules = len(a)
        a = np.ascontiguousarray(a, dtype=np.float64)
        b = np.ascontiguousarray(b, dtype=np.float64)
        r = np.ascontiguousarray(r, dtype=np.float64)
        if len(a) == 0:
            a, b, r = np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0)
        bbox = _bboxes(fine, a, b, r)
        det0 = fine.detector_centre_mm - (nf / 2.0) * fine.pixel_mm * (fine.u + fine.v)
        counts, used, t_in, t_out, sid = capsule_hits(fine.source_mm, det0, fine.u * fine.pixel_mm,
                                               fine.v * fine.pixel_mm, nf, a, b, r, bbox)
        self._lists = _pieces(nf * nf, counts, used, t_in, t_out, sid)

    @property
    def lists(self) -> tuple[np.ndarray, ...]:
        """(s_ptr, s_id, s_len, m_ptr, m_len, m_idptr, m_ids): per-pixel CSR of the singles
        (capsule, length mm) and the shared pieces (length mm, capsule indices), on the
        ``matrix·k`` grid."""
        return self._lists

    @property
    def nbytes(self) -> int:
        """Memory held by the piece lists, bytes."""
        return int(sum(x.nbytes for x in self._lists))

    def integrals(self, mu: np.ndarray) -> np.ndarray:
        """(n, n) ∫ μ dl (dimensionless) through the union of the capsules for per-capsule μ (1/mm, >= 0)."""
        mu = np.ascontiguousarray(np.broadcast_to(mu, (self.n_capsules,)), dtype=np.float64)
        if np.any(mu < 0):
            raise ValueError("vessel chords need non-negative attenuation")
        nf = self.n * self.k
        out = np.empty((nf, nf))
        _weigh(nf, *self._lists, mu, out)
        if self.k > 1:
            out = out.reshape(self.n, self.k, self.n, self.k).mean(axis=(1, 3))
        return out
