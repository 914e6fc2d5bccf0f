"""The detector in GLSL: the equations of :mod:`iratrainer.imaging.detector` on the GPU.

Three full-frame passes over float32 textures, so the line integrals never leave the
GPU (or Mesa's software rasterizer) and only the log image is read back:

1. **counts**: ``λ = N0 · g · exp(-(L_bg + L_iodine + L_devices))``, then quantum noise,
   ``N ~ Poisson(λ)`` drawn exactly below 25 quanta (a Poisson of the tabulated mean just
   below λ, inverted by binary search in the same table as the CPU, plus a Poisson of the
   remainder inverted directly), and as ``N(λ, λ)`` above (the inverse normal
   distribution function of the CPU, in float32);
2. **blur along rows**: the truncated Gaussian of the CPU (σ in pixels, edges repeated);
3. **blur along columns and log**: ``Lhat = -ln(max(N, 0.5) / N0)`` times the collimated
   field mask.

The random numbers are counter based as on the CPU, but with a 32-bit hash (GLSL 3.3 has
no 64-bit integers): each pixel's uniforms hash its index with two keys derived from the
frame seed, with 24-bit resolution. The same seed gives the same image bit for bit on one
driver; the CPU and GL noise images are different draws of the same distribution. With
noise off, the two detectors agree to float32 rounding.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from iratrainer.imaging.detector import _CDF, _STEP, _WIDTH, NORMAL_ABOVE, gaussian_kernel

__all__ = ["GlDetector", "seed_keys", "MAX_BLUR_RADIUS", "blur_fits"]

MAX_BLUR_RADIUS = 32  # pixels: σ up to 7.9 px (truncated at 4 σ, as the CPU)

_HEAD = """
#version 330 core
out float result;
"""

_HASH = """
uint mix32(uint x) {   // an avalanche integer hash (xorshift-multiply rounds)
    x ^= x >> 16; x *= 0x7feb352du; x ^= x >> 15; x *= 0x846ca68bu; x ^= x >> 16;
    return x;
}
float unit24(uint h) { return (float(h >> 8) + 0.5) * (1.0 / 16777216.0); }   // in (0, 1)
"""

# the CPU's rational approximation of the inverse normal distribution function (Acklam)
_QUANTILE = """
float normal_quantile(float p) {
    const float a0 = -3.969683028665376e+01, a1 = 2.209460984245205e+02, a2 = -2.759285104469687e+02,
                a3 = 1.383577518672690e+02, a4 = -3.066479806614716e+01, a5 = 2.506628277459239e+00;
    const float b0 = -5.447609879822406e+01, b1 = 1.615858368580409e+02, b2 = -1.556989798598866e+02,
                b3 = 6.680131188771972e+01, b4 = -1.328068155288572e+01;
    const float c0 = -7.784894002430293e-03, c1 = -3.223964580411365e-01, c2 = -2.400758277161838e+00,
                c3 = -2.549732539343734e+00, c4 = 4.374664141464968e+00, c5 = 2.938163982698783e+00;
    const float d0 = 7.784695709041462e-03, d1 = 3.224671290700398e-01, d2 = 2.445134137142996e+00,
                d3 = 3.754408661907416e+00;
    if (p < 0.02425 || p > 1.0 - 0.02425) {
        float q = sqrt(-2.0 * log(min(p, 1.0 - p)));
        float x = (((((c0 * q + c1) * q + c2) * q + c3) * q + c4) * q + c5) /
                  ((((d0 * q + d1) * q + d2) * q + d3) * q + 1.0);
        return p < 0.5 ? x : -x;
    }
    float q = p - 0.5; float r = q * q;
    return (((((a0 * r + a1) * r + a2) * r + a3) * r + a4) * r + a5) * q /
           (((((b0 * r + b1) * r + b2) * r + b3) * r + b4) * r + 1.0);
}
"""

_COUNTS = _HEAD + _HASH + _QUANTILE + """
uniform sampler2D bg;     // line integral parts (dimensionless)
uniform sampler2D iod;
uniform sampler2D dev;
uniform sampler2D gain;   // vignetting profile
uniform sampler2D cdf;    // WIDTH x ROWS: the CDF of Poisson(j STEP) at k, row j
uniform float n0;         // unattenuated quanta per pixel
uniform int noise;
uniform uint key0;        // the frame's noise keys
uniform uint key1;
uniform int n;
void main() {
    ivec2 px = ivec2(gl_FragCoord.xy);
    float total = (texelFetch(bg, px, 0).x + texelFetch(iod, px, 0).x) + texelFetch(dev, px, 0).x;
    float lam = n0 * texelFetch(gain, px, 0).x * exp(-total);
    if (noise == 0) { result = lam; return; }
    uint h = mix32(mix32(uint(px.y * n + px.x) ^ key0) + key1);
    float u1 = unit24(h);
    if (lam >= NORMAL_ABOVE) { result = lam + sqrt(lam) * normal_quantile(u1); return; }
    int j = int(lam * (1.0 / STEP));
    float r = max(lam - float(j) * STEP, 0.0);
    int lo = 0;   // the number of table entries below u1: a binary search
    for (int s = WIDTH / 2; s > 0; s >>= 1) lo += texelFetch(cdf, ivec2(lo + s - 1, j), 0).x < u1 ? s : 0;
    float u2 = unit24(mix32(h ^ 0x5bd1e995u));
    float p = exp(-r); float f = p; int k = 0;   // Poisson(r), r < STEP, by inversion
    while (u2 > f && k < 40) { k += 1; p *= r / float(k); f += p; }
    result = float(lo + k);
}
""".replace("NORMAL_ABOVE", f"{NORMAL_ABOVE:.1f}").replace("STEP", f"{_STEP!r}").replace("WIDTH", str(_WIDTH))

# the separable blur, one axis per pass (edges repeated); the second pass also takes the log
_BLUR = _HEAD + """
uniform sampler2D src;
uniform sampler2D mask;
uniform float w[2 * MAXR + 1];
uniform int r;
uniform int n;
uniform int ax;           // the pass's axis: (1, 0) along rows, (0, 1) along columns
uniform int ay;
uniform int log_out;      // 1: -ln(max(N, 0.5) / N0) times the field mask
uniform float inv_n0;
void main() {
    ivec2 px = ivec2(gl_FragCoord.xy);
    ivec2 axis = ivec2(ax, ay);
    float acc = w[r] * texelFetch(src, px, 0).x;
    for (int k = 1; k <= r; ++k) {
        acc += w[r - k] * texelFetch(src, clamp(px - k * axis, 0, n - 1), 0).x;
        acc += w[r + k] * texelFetch(src, clamp(px + k * axis, 0, n - 1), 0).x;
    }
    result = log_out == 0 ? acc : -log(max(acc, 0.5) * inv_n0) * texelFetch(mask, px, 0).x;
}
""".replace("MAXR", str(MAX_BLUR_RADIUS))


def blur_fits(blur_px: float) -> bool:
    """True when a detector blur of σ = ``blur_px`` pixels fits the GLSL kernel."""
    return blur_px <= 0 or int(4.0 * blur_px + 0.5) <= MAX_BLUR_RADIUS  # gaussian_kernel's radius


def seed_keys(seed: int) -> tuple[int, int]:
    """Two 32-bit keys of a 64-bit frame seed (its low and high words, each SplitMix64-mixed)."""
    m = (1 << 64) - 1

    def splitmix(z: int) -> int:
        z = (z + 0x9E3779B97F4A7C15) & m
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
        return z ^ (z >> 31)

    z = splitmix(int(seed) & m)
    return z & 0xFFFFFFFF, (z >> 32) & 0xFFFFFFFF


class GlDetector:
    """The detector passes on a :class:`~iratrainer.imaging.gl.GlRenderer`'s context.

    Args:
        gl: the renderer (its context, program compiler, textures and draw call).
    """

    def __init__(self, gl: Any) -> None:
        self.gl = gl
        GL = gl.ctx.GL
        self._counts = gl._program(_COUNTS)
        self._blur = gl._program(_BLUR)
        self._cdf = gl._texture(_CDF.astype(np.float32), GL.GL_R32F, GL.GL_RED, GL.GL_FLOAT)

    def detect(self, parts: tuple[Any, Any, Any], gain: np.ndarray, n0: float, mask: np.ndarray,
               blur_px: float, seed: int | None) -> np.ndarray:
        """The log image ``Lhat``, as :func:`iratrainer.imaging.detector.detect`.

        Args:
            parts: the three line-integral parts (background, iodine, devices), each an
                (n, n) array or a texture the renderer drew (:class:`~iratrainer.imaging.gl.GlImage`).
            gain: (n, n) vignetting profile (relative intensity, 0-1). Read-only images
                (the cached gain, mask and background) are uploaded once and kept.
            n0: unattenuated quanta per pixel for this exposure.
            mask: (n, n) collimated field (1 inside, 0 outside).
            blur_px: Gaussian σ of the detector blur, pixels (0: none; at most 7.9).
            seed: frame seed of the quantum noise (0 ≤ seed < 2**64); None for no noise.

        Returns:
            (n, n) float64 ``-ln(N / N0)`` (computed in float32), 0 outside the field.
        """
        gl = self.gl
        n = int(np.shape(gain)[0])
        w = gaussian_kernel(blur_px) if blur_px > 0 else np.ones(1)
        r = (len(w) - 1) // 2
        if not blur_fits(blur_px):
            raise ValueError(f"detector blur σ = {blur_px} px is wider than the GL detector's "
                             f"{MAX_BLUR_RADIUS}-pixel kernel")
        slots = ("bg", "iod", "dev")
        tex = [gl._as_texture(p, n, s) for p, s in zip(parts, slots, strict=True)]
        if np.shape(gain) != (n, n) or np.shape(mask) != (n, n):
            raise ValueError("the GL detector needs the gain and the mask as (n, n) images")
        g_tex = gl._as_texture(gain, n, "gain")
        m_tex = gl._as_texture(mask, n, "mask")
        k0, k1 = seed_keys(seed) if seed is not None else (0, 0)
        counts = gl._pass(self._counts, n, [("bg", tex[0]), ("iod", tex[1]), ("dev", tex[2]), ("gain", g_tex),
                                            ("cdf", self._cdf)],
                          ints={"noise": int(seed is not None), "n": n}, floats={"n0": float(n0)},
                          uints={"key0": k0, "key1": k1}, slot="counts")
        wf = np.zeros(2 * MAX_BLUR_RADIUS + 1, np.float32)
        wf[:len(w)] = w
        blur = {"r": r, "n": n}
        rows = gl._pass(self._blur, n, [("src", counts), ("mask", m_tex)], ints={**blur, "ax": 1, "ay": 0, "log_out": 0},
                        floats={"inv_n0": 1.0 / float(n0)}, arrays={"w": wf}, slot="rows")
        out = gl._pass(self._blur, n, [("src", rows), ("mask", m_tex)], ints={**blur, "ax": 0, "ay": 1, "log_out": 1},
                       floats={"inv_n0": 1.0 / float(n0)}, arrays={"w": wf}, slot="lhat", read=True)
        return np.asarray(out, dtype=np.float64)
