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

For a renderer that draws rather than loops (OpenGL), the same sum is regrouped by
capsule set: with σ a set of capsules (one capsule for the singles) and ``len_σ(pixel)``
the summed length of that pixel's pieces covered by exactly σ,

    L(pixel) = Σ_σ len_σ(pixel) × max_{s in σ} μ_s,

so each set is an image patch of lengths over the pixels it covers (its bounding box, a
few pixels across: the capsules are short) and a frame is a sum of patches, each scaled by
one number (:class:`ChordGroups`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numba as nb
import numpy as np

from iratrainer.imaging.geometry import CArmPlane
from iratrainer.imaging.raycast import _bboxes, capsule_hits, sorted_ends

__all__ = ["VesselChords", "ChordGroups"]


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


@nb.njit(cache=True)
def _canonical_sets(m_idptr, m_ids):  # pragma: no cover - numba
    """Each shared piece's capsule set, sorted, and a 64-bit hash of it (SplitMix64 chain)."""
    n = m_idptr.shape[0] - 1
    ids = m_ids.astype(np.int64).copy()
    h = np.empty(n, np.uint64)
    for j in range(n):
        a, b = m_idptr[j], m_idptr[j + 1]
        for k in range(a + 1, b):  # insertion sort: a few capsules per set
            v = ids[k]
            q = k - 1
            while q >= a and ids[q] > v:
                ids[q + 1] = ids[q]
                q -= 1
            ids[q + 1] = v
        z = np.uint64(b - a)
        for k in range(a, b):
            z = z ^ np.uint64(ids[k])
            z = z + np.uint64(0x9E3779B97F4A7C15)
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            z = z ^ (z >> np.uint64(31))
        h[j] = z
    return ids, h


@nb.njit(cache=True)
def _same_sets(m_idptr, ids, first, inverse):  # pragma: no cover - numba
    """True when every piece's sorted set equals the set of its hash's first piece (no collision)."""
    for j in range(inverse.shape[0]):
        f = first[inverse[j]]
        a, b = m_idptr[j], m_idptr[j + 1]
        fa, fb = m_idptr[f], m_idptr[f + 1]
        if b - a != fb - fa:
            return False
        for k in range(b - a):
            if ids[a + k] != ids[fa + k]:
                return False
    return True


@dataclass(frozen=True)
class ChordGroups:
    """The chords regrouped by capsule set, as patches packed in one atlas (see the module docstring).

    Attributes:
        n: the pixel grid the patches lie on (``matrix · supersample``).
        n_capsules: S; group ``g < S`` is the singles of capsule g, ``g >= S`` a shared set.
        group: (G,) each patch's group.
        set_ptr, set_ids: the capsules of shared set ``g - S`` are ``set_ids[set_ptr[g-S]:set_ptr[g-S+1]]``.
        box: (G, 4) int32 patch bounding box on the grid: first column, first row, width, height.
        origin: (G, 2) int32 where the patch lies in the atlas (column, row).
        atlas: (H, W) float32 summed piece lengths, mm.
    """

    n: int
    n_capsules: int
    group: np.ndarray
    set_ptr: np.ndarray
    set_ids: np.ndarray
    box: np.ndarray
    origin: np.ndarray
    atlas: np.ndarray

    def weights(self, mu: np.ndarray) -> np.ndarray:
        """(G,) each patch's μ (1/mm): its capsule's, or the largest of its set's."""
        mu = np.asarray(mu, dtype=np.float64)
        S = self.n_capsules
        set_mu = (np.maximum.reduceat(mu[self.set_ids], self.set_ptr[:-1]) if len(self.set_ids)
                  else np.zeros(0))
        return np.where(self.group < S, mu[np.minimum(self.group, S - 1)],
                        set_mu[np.maximum(self.group - S, 0)] if len(set_mu) else 0.0)

    def integrals(self, mu: np.ndarray) -> np.ndarray:
        """(n, n) Σ patches × μ on the CPU (the drawing a renderer does; for checks)."""
        out = np.zeros((self.n, self.n))
        for (c0, r0, w, h), (ax, ay), m in zip(self.box, self.origin, self.weights(mu), strict=True):
            out[r0:r0 + h, c0:c0 + w] += m * self.atlas[ay:ay + h, ax:ax + w]
        return out


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

    def groups(self, atlas_width: int = 4096) -> ChordGroups:
        """The chords regrouped by capsule set and packed in an atlas (built once, cached)."""
        cached = getattr(self, "_groups", None)
        if cached is not None and cached.atlas.shape[1] == atlas_width:
            return cached
        s_ptr, s_id, s_len, m_ptr, m_len, m_idptr, m_ids = self._lists
        nf = self.n * self.k
        S = self.n_capsules
        ids, h = _canonical_sets(m_idptr, m_ids)
        _, first, inverse = np.unique(h, return_index=True, return_inverse=True)
        if not _same_sets(m_idptr, ids, first, inverse):  # a hash collision: exact, slower path
            keys: dict[tuple[int, ...], int] = {}
            inverse = np.array([keys.setdefault(tuple(ids[m_idptr[j]:m_idptr[j + 1]]), len(keys))
                                for j in range(len(m_len))], dtype=np.int64)
            first = np.zeros(len(keys), dtype=np.int64)
            for j in range(len(inverse) - 1, -1, -1):
                first[inverse[j]] = j
        set_ptr = np.concatenate([[0], np.cumsum(m_idptr[first + 1] - m_idptr[first])]).astype(np.int64)
        set_ids = (np.concatenate([ids[m_idptr[f]:m_idptr[f + 1]] for f in first]) if len(first)
                   else np.zeros(0, np.int64))
        pix_s = np.repeat(np.arange(nf * nf, dtype=np.int64), np.diff(s_ptr))
        pix_m = np.repeat(np.arange(nf * nf, dtype=np.int64), np.diff(m_ptr))
        g = np.concatenate([s_id.astype(np.int64), S + inverse.astype(np.int64)])
        key, inv = np.unique(g * (nf * nf) + np.concatenate([pix_s, pix_m]), return_inverse=True)
        length = np.bincount(inv, weights=np.concatenate([s_len, m_len]), minlength=len(key))
        gk, pk = key // (nf * nf), key % (nf * nf)
        row, col = pk // nf, pk % nf
        starts = np.concatenate([[0], np.nonzero(np.diff(gk))[0] + 1]) if len(gk) else np.zeros(0, np.int64)
        group = gk[starts] if len(gk) else np.zeros(0, np.int64)
        if len(gk):
            c0, c1 = np.minimum.reduceat(col, starts), np.maximum.reduceat(col, starts)
            r0, r1 = np.minimum.reduceat(row, starts), np.maximum.reduceat(row, starts)
        else:
            c0 = c1 = r0 = r1 = np.zeros(0, np.int64)
        w, hgt = c1 - c0 + 1, r1 - r0 + 1
        # shelf packing, tallest first
        order = np.argsort(-hgt, kind="stable")
        ox = np.zeros(len(group), np.int64)
        oy = np.zeros(len(group), np.int64)
        x = y = shelf = 0
        for i in order:
            if x + w[i] > atlas_width:
                y, x, shelf = y + shelf, 0, 0
            ox[i], oy[i] = x, y
            x += w[i]
            shelf = max(shelf, hgt[i])
        atlas = np.zeros((max(y + shelf, 1), atlas_width), np.float32)
        gi = np.repeat(np.arange(len(group)), np.diff(np.append(starts, len(gk))))
        atlas[oy[gi] + row - r0[gi], ox[gi] + col - c0[gi]] = length
        self._groups = ChordGroups(nf, S, group, set_ptr, set_ids,
                                   np.stack([c0, r0, w, hgt], axis=1).astype(np.int32),
                                   np.stack([ox, oy], axis=1).astype(np.int32), atlas)
        return self._groups

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
