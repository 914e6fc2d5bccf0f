"""The detector in two compiled passes: Beer-Lambert, quantum noise, blur and the log image.

Per pixel, with ``L`` the line integral, ``N0`` the unattenuated count and ``g`` the
vignetting profile:

1. expected quanta ``λ = N0 · g · exp(-L)``;
2. quantum noise: ``N ~ Poisson(λ)``, drawn exactly below 25 quanta as the sum of a
   Poisson of the tabulated mean just below λ (0.125-quantum steps, inverted by an
   indexed search: a guide table per mean says where to start, one or two steps from
   the answer) and a Poisson of the small remainder (inverted directly); above 25 quanta
   as its normal approximation ``N(λ, λ)`` (indistinguishable there: the skewness
   ``1/√λ`` is under 0.2); one or two uniforms per pixel (the normal deviate by inverting
   its distribution function);
3. detector blur: a separable Gaussian (σ in pixels, truncated at 4 σ, edges repeated,
   the kernel of :func:`scipy.ndimage.gaussian_filter` with ``mode="nearest"``), the
   row pass fused with steps 1-2 (each row blurred while in cache);
4. ``Lhat = -ln(max(N, 0.5) / N0)`` times the collimated field mask.

Only the pixels that can reach the field are computed: per row, the field's columns, the
row blur the column blur of the rows around needs, and the quanta that row blur reads
(each range the previous widened by the blur radius); the rest is 0. Inside the field
the image is the full computation's to the bit (tested).

The exponential and the logarithm are this module's own (:func:`exp_range`,
:func:`log_range`): range reduction and a polynomial in plain arithmetic, within 2 units
in the last place of the C library's, which the compiler turns into vector instructions
(the library's scalar calls cost three times as much), and which give the same bits on
every machine. The noise is drawn the same way (:func:`_quanta_range`): for a whole row in
one vectorised loop (the hash, its uniform, the central normal deviate and the Poisson
draw with a fixed number of steps), then the few pixels that need more (the normal tails,
5 % of the uniforms; an unfinished search, about 1 in 360) one by one.

The random numbers are counter based: each pixel's uniforms are a hash (SplitMix64) of
the frame seed and the pixel index. The result does not depend on the number of threads,
so the same seed gives the same image bit for bit; the frame seed is one draw from the
caller's generator.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

__all__ = ["detect", "exp_range", "filter_and_roadmap", "filter_and_window", "gaussian_kernel", "log_range"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_TWO_53 = 1.0 / 9007199254740992.0
NORMAL_ABOVE = 25.0  # quanta: the normal approximation of Poisson above this mean


@nb.njit(cache=True, inline="always")
def _splitmix(z):  # pragma: no cover - numba
    z = z + _GOLDEN
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@nb.njit(cache=True, inline="always")
def _uniform(h):  # pragma: no cover - numba
    """A uniform in (0, 1) from the 53 high bits of a hash."""
    return (float(h >> _S11) + 0.5) * _TWO_53


# Rational approximation of the inverse normal distribution function (P. J. Acklam):
# relative error below 1.2e-9 over (0, 1); the central 95 % needs no transcendental call.
_A = (-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02,
      1.383577518672690e+02, -3.066479806614716e+01, 2.506628277459239e+00)
_B = (-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02,
      6.680131188771972e+01, -1.328068155288572e+01)
_C = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00,
      -2.549732539343734e+00, 4.374664141464968e+00, 2.938163982698783e+00)
_D = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00, 3.754408661907416e+00)
_P_LOW = 0.02425


@nb.njit(cache=True, inline="always")
def _central_quantile(p):  # pragma: no cover - numba
    """The normal quantile's central branch (``_P_LOW ≤ p ≤ 1 − _P_LOW``): no call, so it vectorises."""
    q = p - 0.5
    r = q * q
    return (((((_A[0] * r + _A[1]) * r + _A[2]) * r + _A[3]) * r + _A[4]) * r + _A[5]) * q / \
        (((((_B[0] * r + _B[1]) * r + _B[2]) * r + _B[3]) * r + _B[4]) * r + 1.0)


@nb.njit(cache=True, inline="always")
def _in_tail(p):  # pragma: no cover - numba
    return p < _P_LOW or p > 1.0 - _P_LOW


@nb.njit(cache=True, inline="always")
def normal_quantile(p):  # pragma: no cover - numba
    """The standard normal quantile of ``p`` in (0, 1), to a relative 1.2e-9."""
    if _in_tail(p):
        q = math.sqrt(-2.0 * math.log(min(p, 1.0 - p)))
        x = (((((_C[0] * q + _C[1]) * q + _C[2]) * q + _C[3]) * q + _C[4]) * q + _C[5]) / \
            ((((_D[0] * q + _D[1]) * q + _D[2]) * q + _D[3]) * q + 1.0)
        return x if p < 0.5 else -x
    return _central_quantile(p)


# exp and ln in plain arithmetic (vectorisable): Cody-Waite reduction by ln 2 (the high part
# has trailing zero bits, so k·LN2_HI is exact), then Taylor series, the power of two built
# from its bits
_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_SQRT2 = 1.4142135623730951
_EXP_C = tuple(1.0 / math.factorial(k) for k in range(14))  # |r| ≤ ln2/2: the 14th term < 5e-18
_LOG_C = tuple(2.0 / (2 * k + 1) for k in range(12))  # ln m = 2 atanh s, s² ≤ 0.0295: the 13th term < 1e-19
_MANT = np.int64((1 << 52) - 1)
_ONE_BITS = np.int64(1023 << 52)


@nb.njit(cache=True, inline="always")
def exp_range(x, out, bits):  # pragma: no cover - numba
    """``out = exp(x)`` for 1-D arrays (``out`` may be ``x``), within 2 ulp of the C library.

    The argument is clamped to [-708, 709] (below: fewer than 1e-307, the smallest normal
    scale). ``bits`` is int64 scratch as long as ``x``. (Loops that start at 0: LLVM
    vectorises those, not one that starts at a variable column.)
    """
    c = _EXP_C
    for j in range(x.shape[0]):
        v = min(max(x[j], -708.0), 709.0)
        k = np.floor(v * _LOG2E + 0.5)
        r = (v - k * _LN2_HI) - k * _LN2_LO
        p = c[13]
        for i in range(12, -1, -1):  # Horner (a fixed count: unrolled and vectorised as written out)
            p = p * r + c[i]
        out[j] = p
        bits[j] = (np.int64(k) + 1023) << 52  # 2^k
    scale = bits.view(np.float64)
    for j in range(x.shape[0]):
        out[j] *= scale[j]


@nb.njit(cache=True, inline="always")
def log_range(x, out, bits):  # pragma: no cover - numba
    """``out = ln(x)`` for 1-D arrays of positive normal numbers (``out`` may be ``x``), within
    2 ulp of the C library (relative; absolute 1e-22 next to 1). ``bits``: int64 scratch."""
    xb = x.view(np.int64)
    for j in range(x.shape[0]):  # x = 2^e · m, m in [1, 2)
        b = xb[j]
        out[j] = np.float64((b >> 52) - 1023)
        bits[j] = (b & _MANT) | _ONE_BITS
    mant = bits.view(np.float64)
    c = _LOG_C
    for j in range(x.shape[0]):
        m = mant[j]
        e = out[j]
        big = m > _SQRT2  # m in [√2/2, √2)
        m = m * 0.5 if big else m
        e = e + 1.0 if big else e
        s = (m - 1.0) / (m + 1.0)
        z = s * s
        p = c[11]
        for i in range(10, 0, -1):  # Horner: 2/3 + 2/5 z + ... + 2/23 z^10
            p = p * z + c[i]
        out[j] = e * _LN2_HI + ((2.0 * s + s * z * p) + e * _LN2_LO)


_STEP = 0.125  # quanta: the grid of tabulated Poisson means
_WIDTH = 128  # table entries (a power of two): P(N > 127) < 1e-40 for means up to 25


def _poisson_tables() -> np.ndarray:
    """CDF of Poisson(j·STEP) at k = 0..WIDTH-1 for j = 0..NORMAL_ABOVE/STEP (rows), last column 1."""
    rows = int(round(NORMAL_ABOVE / _STEP)) + 1
    out = np.empty((rows, _WIDTH))
    for j in range(rows):
        lam = j * _STEP
        p = np.empty(_WIDTH)
        p[0] = np.exp(-lam)
        for k in range(1, _WIDTH):
            p[k] = p[k - 1] * lam / k
        out[j] = np.minimum(np.cumsum(p), 1.0)
        out[j, -1] = 1.0
    return out


_CDF = _poisson_tables()
_GUIDE_BINS = 256  # a power of two: u·BINS is exact


def _guide_tables(cdf: np.ndarray) -> np.ndarray:
    """Per row, for each bin b: the number of entries below b/BINS (where the search for u starts).

    The search for ``u`` in row ``j`` starts at ``guide[j, int(u·BINS)]`` and steps up while
    the entry is below ``u``: the same index as a binary search (the number of entries
    below ``u``; the last entry is 1), in one or two steps instead of seven.
    """
    edges = np.arange(_GUIDE_BINS) / _GUIDE_BINS
    return np.stack([np.searchsorted(row, edges, side="left") for row in cdf]).astype(np.int32)


_GUIDE = _guide_tables(_CDF)


@nb.njit(cache=True, inline="always")
def _hash(seed, index):  # pragma: no cover - numba
    return _splitmix(seed ^ (np.uint64(index) * _GOLDEN))


@nb.njit(cache=True, inline="always")
def _poisson_small(lam, h):  # pragma: no cover - numba
    """Poisson(λ) for λ < NORMAL_ABOVE from the pixel's hash ``h`` (exact).

    The sum of two independent Poissons: Poisson(j·STEP) by inversion of its tabulated
    distribution function (an indexed search), plus Poisson(r), r < STEP, by inversion with
    P(0) = e^-r from its series (error below 1e-11).
    """
    u1 = _uniform(h)
    j = int(lam * (1.0 / _STEP))
    r = lam - j * _STEP
    row = _CDF[j]
    lo = _GUIDE[j, int(u1 * _GUIDE_BINS)]  # the number of entries below u1 (an indexed search)
    while row[lo] < u1:
        lo += 1
    u2 = _uniform(_splitmix(h))
    p = 1.0 - r * (1.0 - r * (0.5 - r * (1.0 / 6.0 - r * (1.0 / 24.0 - r * (1.0 / 120.0 - r * (1.0 / 720.0))))))
    f = p
    k = 0
    while u2 > f and k < 40:
        k += 1
        p *= r * _INV_INT[k]
        f += p
    return float(lo + k)


_INV_INT = tuple(1.0 / t if t else 0.0 for t in range(41))


@nb.njit(cache=True, inline="always")
def _quanta_range(row, seed, base, hs, zs, ps, fix):  # pragma: no cover - numba
    """Replace the expected quanta ``row`` (1-D) by a draw: N(λ, λ) at and above 25 quanta,
    Poisson(λ) below. Pixel j's hash is that of index ``base + j``; ``hs`` (uint64), ``zs``,
    ``ps`` and ``fix`` (bool) are scratch as long.

    The draws of :func:`_poisson_small` and :func:`normal_quantile`, reorganised so that
    almost all the work vectorises: first, for every pixel, its hash, the central normal
    draw and the Poisson draw with a fixed number of steps (two steps of the indexed search,
    eight terms of the small remainder's series: P(more) < 2.1e-14), flagging the pixels that
    need more (a normal tail, 5 % of them; a search not finished, about 1 in 360); then those
    pixels one by one.
    """
    c = _CDF
    gd = _GUIDE
    for j in range(row.shape[0]):
        h = _hash(seed, base + j)
        hs[j] = h
        lam = row[j]
        u1 = _uniform(h)
        zs[j] = lam + math.sqrt(lam) * _central_quantile(u1)
        small = lam < NORMAL_ABOVE
        lc = min(lam, NORMAL_ABOVE)  # (the last row at and above 25 quanta: that draw is not used)
        jj = int(lc * (1.0 / _STEP))
        r = lc - jj * _STEP
        k = gd[jj, int(u1 * _GUIDE_BINS)]
        k += 1 if c[jj, k] < u1 else 0
        k += 1 if c[jj, k] < u1 else 0
        more = c[jj, k] < u1
        u2 = _uniform(_splitmix(h))
        p = 1.0 - r * (1.0 - r * (0.5 - r * (1.0 / 6.0 - r * (1.0 / 24.0 - r * (1.0 / 120.0 - r * (1.0 / 720.0))))))
        f = p
        extra = 0
        for t in range(1, 9):  # counts to 8: P(Poisson(r) > 8) < r^9/9! < 2.1e-14 for r < 1/8
            extra += 1 if u2 > f else 0
            p *= r * _INV_INT[t]  # (a product, not r / t: eight divisions cost more than the rest)
            f += p
        ps[j] = float(k + extra)
        fix[j] = more if small else _in_tail(u1)
    for j in range(row.shape[0]):  # the few left, one by one
        if fix[j]:
            lam = row[j]
            if lam < NORMAL_ABOVE:
                ps[j] = _poisson_small(lam, hs[j])
            else:
                zs[j] = lam + math.sqrt(lam) * normal_quantile(_uniform(hs[j]))
    for j in range(row.shape[0]):
        row[j] = ps[j] if row[j] < NORMAL_ABOVE else zs[j]


@nb.njit(cache=True, inline="always")
def _blur_row(row, w, o, lo, hi):  # pragma: no cover - numba
    """``o[lo:hi]`` = ``row`` convolved with the odd kernel ``w`` along the row, edges
    repeated; 0 elsewhere. Each output sums its terms in the same order whatever the range."""
    m = row.shape[0]
    r = (w.shape[0] - 1) // 2
    for j in range(0, lo):
        o[j] = 0.0
    for j in range(hi, m):
        o[j] = 0.0
    for j in range(lo, hi):
        o[j] = w[r] * row[j]
    for k in range(-r, r + 1):  # interior: no clamping; slices from 0, so the loop vectorises
        if k == 0:
            continue
        wk = w[k + r]
        s, e = max(lo, -k), min(hi, m - k)
        if e > s:
            dst, src = o[s:e], row[s + k:e + k]
            for j in range(e - s):
                dst[j] += wk * src[j]
        for j in range(lo, min(hi, max(0, -k))):  # edges repeat the first and last pixel
            o[j] += wk * row[0]
        for j in range(max(lo, min(m, m - k)), hi):
            o[j] += wk * row[m - 1]


@nb.njit(cache=True, parallel=True)
def _counts_rows(L, L2, L3, gain, n0, noise, seed, w, need, keep, out):  # pragma: no cover - numba
    """Quanta per pixel for the line integral ``(L + L2) + L3`` (the renderer's three parts,
    summed here in the order NumPy would, so no summed image is made), blurred along the
    row while the row is in cache. Row i is counted on columns ``need[i, 0]:need[i, 1]`` and
    its blur kept on ``keep[i, 0]:keep[i, 1]`` (0 elsewhere)."""
    n = L.shape[0]
    m = L.shape[1]
    for i in nb.prange(n):
        row = np.empty(m)
        bits = np.empty(m, np.int64)
        lo, hi = need[i, 0], need[i, 1]
        # every loop on slices that start at 0 (see exp_range)
        a, b, c, g, x = L[i, lo:hi], L2[i, lo:hi], L3[i, lo:hi], gain[i, lo:hi], row[lo:hi]
        for j in range(hi - lo):
            x[j] = -((np.float64(a[j]) + np.float64(b[j])) + np.float64(c[j]))
        exp_range(x, x, bits[lo:hi])
        for j in range(hi - lo):
            x[j] = n0 * g[j] * x[j]  # λ = N0 · g · exp(-L)
        if noise:
            nn = hi - lo
            _quanta_range(x, seed, i * m + lo, bits[lo:hi].view(np.uint64), np.empty(nn), np.empty(nn),
                          np.empty(nn, np.bool_))
        _blur_row(row, w, out[i], keep[i, 0], keep[i, 1])


@nb.njit(cache=True)
def _support(mask, r):  # pragma: no cover - numba
    """Per row, the columns the detector must compute for a field ``mask`` and blur radius r.

    ``field``: where the mask is non-zero (first, last + 1); ``keep``: the row blur needed
    by the column blur of the rows within r (their fields' span); ``need``: the quanta that
    row blur reads (``keep`` widened by r). Rows with nothing to compute get (0, 0).
    """
    n, m = mask.shape
    field = np.zeros((n, 2), np.int64)
    for i in range(n):
        lo, hi = m, 0
        for j in range(m):
            if mask[i, j] != 0.0:
                lo = min(lo, j)
                hi = j + 1
        if hi > lo:
            field[i, 0], field[i, 1] = lo, hi
    keep = np.zeros((n, 2), np.int64)
    need = np.zeros((n, 2), np.int64)
    for i in range(n):
        lo, hi = m, 0
        for ii in range(max(i - r, 0), min(i + r, n - 1) + 1):  # (rows past the edges repeat these)
            if field[ii, 1] > field[ii, 0]:
                lo = min(lo, field[ii, 0])
                hi = max(hi, field[ii, 1])
        if hi > lo:
            keep[i, 0], keep[i, 1] = lo, hi
            need[i, 0], need[i, 1] = max(lo - r, 0), min(hi + r, m)
    return field, keep, need


@nb.njit(cache=True, parallel=True)
def filter_and_window(lhat, prev, a, lo, hi, mask, rf, disp):  # pragma: no cover - numba
    """Recursive filter and fluoroscopy display in one pass.

    ``rf = a·prev + (1 − a)·lhat`` and ``disp = clip(1 − (rf − lo)/(hi − lo), 0, 1)·mask``
    (float32), element by element in the order NumPy evaluates them, so the result is the
    same to the bit.
    """
    n = lhat.shape[0]
    m = lhat.shape[1]
    b = 1.0 - a
    span = hi - lo
    for i in nb.prange(n):
        for j in range(m):
            v = a * prev[i, j] + b * lhat[i, j]
            rf[i, j] = v
            d = 1.0 - (v - lo) / span
            d = min(max(d, 0.0), 1.0)
            disp[i, j] = np.float32(d * mask[i, j])


@nb.njit(cache=True, parallel=True)
def _blur_cols_log(src, w, n0, mask, field, out):  # pragma: no cover - numba
    """The blur along columns, then ``-ln(max(N, 0.5)/N0)·mask`` on each row's field (0 elsewhere)."""
    n, m = src.shape
    r = (w.shape[0] - 1) // 2
    inv = 1.0 / n0
    for i in nb.prange(n):
        o = out[i]
        lo, hi = field[i, 0], field[i, 1]
        for j in range(m):
            o[j] = 0.0
        x, mk = o[lo:hi], mask[i, lo:hi]  # (loops from 0: see exp_range)
        for k in range(-r, r + 1):
            ii = min(max(i + k, 0), n - 1)
            wk = w[k + r]
            row = src[ii, lo:hi]
            for j in range(hi - lo):
                x[j] += wk * row[j]
        for j in range(hi - lo):
            x[j] = max(x[j], 0.5) * inv
        log_range(x, x, np.empty(hi - lo, np.int64))
        for j in range(hi - lo):
            x[j] = -x[j] * mk[j]


@nb.njit(cache=True, parallel=True)
def filter_and_roadmap(lhat, prev, a, live_mask, roadmap, gain, mask, rf, sub, disp):  # pragma: no cover
    """Recursive filter and roadmap display in one pass.

    ``rf = a·prev + (1 − a)·lhat``, ``sub = (rf − live_mask) − roadmap`` and
    ``disp = clip(0.5 − gain·sub, 0, 1)·mask`` (float32), in NumPy's order of evaluation.
    """
    n = lhat.shape[0]
    m = lhat.shape[1]
    b = 1.0 - a
    for i in nb.prange(n):
        for j in range(m):
            v = a * prev[i, j] + b * lhat[i, j]
            rf[i, j] = v
            d = (v - live_mask[i, j]) - roadmap[i, j]
            sub[i, j] = d
            e = min(max(0.5 - gain * d, 0.0), 1.0)
            disp[i, j] = np.float32(e * mask[i, j])


def gaussian_kernel(sigma_px: float, truncate: float = 4.0) -> np.ndarray:
    """Normalised 1-D Gaussian weights, radius ``int(truncate·σ + 0.5)`` pixels."""
    radius = int(truncate * sigma_px + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * (x / sigma_px) ** 2)
    return w / w.sum()


def detect(L: np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray], gain: np.ndarray, n0: float,
           mask: np.ndarray, blur_px: float, seed: int | None) -> np.ndarray:
    """The log image ``Lhat`` of a line-integral image.

    Args:
        L: (n, n) total line integral (dimensionless), or its three parts (background,
            iodine, devices), summed in the kernel.
        gain: (n, n) vignetting profile ``g`` (relative intensity, 0-1).
        n0: unattenuated quanta per pixel for this exposure.
        mask: (n, n) collimated field (1 inside, 0 outside).
        blur_px: Gaussian σ of the detector blur, pixels (0: none).
        seed: frame seed of the quantum noise (0 ≤ seed < 2**64); None for no noise.

    Returns:
        (n, n) float64 ``-ln(N / N0)``, 0 outside the field.
    """
    # float32 parts (an OpenGL read-back) stay float32: the kernel widens them exactly
    parts = [np.ascontiguousarray(x, dtype=np.float32 if np.asarray(x).dtype == np.float32 else np.float64)
             for x in (L if isinstance(L, tuple) else (L,))]
    L = parts[0]
    zero = np.zeros((1, 1))
    if len(parts) == 1:
        parts = [L, np.broadcast_to(zero, L.shape), np.broadcast_to(zero, L.shape)]
    if any(x.shape != L.shape for x in parts):
        raise ValueError("the line-integral parts differ in shape")
    gain = np.ascontiguousarray(np.broadcast_to(gain, L.shape), dtype=np.float64)
    if not (isinstance(mask, np.ndarray) and mask.shape == L.shape and mask.dtype == np.float64
            and mask.flags.c_contiguous):  # (the cached field masks pass as they are)
        mask = np.ascontiguousarray(np.broadcast_to(mask, L.shape), dtype=np.float64)
    w = gaussian_kernel(blur_px) if blur_px > 0 else np.ones(1)
    tmp = np.empty(L.shape)
    field, keep, need = _field_support(mask, (len(w) - 1) // 2)
    _counts_rows(parts[0], parts[1], parts[2], gain, float(n0), seed is not None, np.uint64(seed or 0), w, need,
                 keep, tmp)
    out = np.empty(L.shape)
    _blur_cols_log(tmp, w, float(n0), mask, field, out)
    return out


_SUPPORT: dict[tuple[int, int], tuple[np.ndarray, tuple[np.ndarray, ...]]] = {}


def _field_support(mask: np.ndarray, r: int) -> tuple[np.ndarray, ...]:
    """:func:`_support` of a mask, kept for read-only masks (the cached collimated fields)."""
    if mask.flags.writeable:
        return _support(mask, r)
    hit = _SUPPORT.get((id(mask), r))
    if hit is not None and hit[0] is mask:
        return hit[1]
    out = _support(mask, r)
    if len(_SUPPORT) >= 16:
        _SUPPORT.pop(next(iter(_SUPPORT)))
    _SUPPORT[(id(mask), r)] = (mask, out)
    return out
