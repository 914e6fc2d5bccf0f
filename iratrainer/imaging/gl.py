"""OpenGL 3.3 core renderer of the line integrals, headless through EGL (Mesa or a GPU).

The same equations as the CPU reference (:mod:`iratrainer.imaging.raycast`), in GLSL:

* background: Σ μ_k × chord through each phantom ellipsoid, per pixel ray;
* iodine: entry and exit of every vessel capsule the ray crosses, merged so that the
  path counts once with the largest μ where capsules overlap;
* devices: flat-ended cylinders summed, k x k rays per pixel for thin tubes.

While the view moves, vessel capsules are binned on the CPU into 8 x 8-pixel tiles (from
the same projected bounding boxes as the CPU path) and handed to the fragment shader as
integer textures; each fragment loops over its tile's list (a union needs every capsule
of the ray at once). A still view's iodine is the CPU's ray pieces regrouped by capsule
set (:class:`~iratrainer.imaging.chords.ChordGroups`): each set a patch of lengths in one
atlas texture, drawn as a point sprite over its pixel box and scaled by the set's largest
μ of the frame. Device cylinders and phantom ellipsoids are summed, so each is drawn as its own
instanced quad (a cylinder's projected axis widened by the same margin as the bounding
boxes; an ellipsoid's pixel box, as in the CPU kernel) and the fragments add up by
blending: only covered pixels are shaded, with no list to walk. Image formation (noise, blur,
log) is in GLSL too (:mod:`iratrainer.imaging.gl_detector`) on a GPU.

On a software rasterizer (Mesa's llvmpipe), every primitive costs about a microsecond
and every fragment a few nanoseconds on the same cores as the rest, so two parts run
faster as this package's compiled CPU kernels and are left there by default: the
detector, and a still view's chord re-weighting (``detector=`` and ``iodine=`` choose;
the tests run the GLSL versions against the NumPy reference). :func:`make_gl_renderer`
falls back to the CPU renderer, with a warning that says why, when no GL context can be
created.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from iratrainer.imaging.chords import VesselChords
from iratrainer.imaging.geometry import CArmPlane
from iratrainer.imaging.raycast import _bboxes, _ellipsoid_boxes
from iratrainer.imaging.render import CpuRenderer, ImageOptions, LineIntegrals, blob_integrals, device_segments
from iratrainer.imaging.scene import Scene
from iratrainer.imaging.xray import Technique, linear_attenuation_per_mm

__all__ = ["GlRenderer", "GlUnavailable", "make_gl_renderer"]

TILE = 8  # pixels, a power of two
MAX_INTERVALS = 48

_VERT = """
#version 330 core
const vec2 P[4] = vec2[4](vec2(-1.0, -1.0), vec2(1.0, -1.0), vec2(-1.0, 1.0), vec2(1.0, 1.0));
void main() { gl_Position = vec4(P[gl_VertexID], 0.0, 1.0); }
"""

_COMMON = """
#version 330 core
uniform vec3 src;      // focal spot, mm
uniform vec3 det0;     // detector corner (pixel 0,0 outer corner), mm
uniform vec3 du;       // one pixel along columns, mm
uniform vec3 dv;       // one pixel along rows, mm
uniform int n;         // matrix
out float result;

vec3 ray_dir(float col, float row) {
    vec3 p = det0 + col * du + row * dv;
    return normalize(p - src);
}
"""

# one instance per ellipsoid: the pixel box its bounding cube projects to (as the CPU path)
_VERT_ELLIPSOID = """
#version 330 core
uniform sampler2D ell;
uniform int n;
flat out int sid;
void main() {
    vec4 box = texelFetch(ell, ivec2(gl_InstanceID, 4), 0);   // col0, col1, row0, row1 (pixels)
    vec2 p = vec2((gl_VertexID & 1) == 0 ? box.x : box.y, (gl_VertexID & 2) == 0 ? box.z : box.w);
    gl_Position = vec4(p / float(n) * 2.0 - 1.0, 0.0, 1.0);
    sid = gl_InstanceID;
}
"""

_ELLIPSOIDS = _COMMON + """
uniform sampler2D ell;  // K x 5 texels: centre+mu, inverse-axes rows 0..2, pixel box
flat in int sid;
void main() {
    int col = int(gl_FragCoord.x); int row = int(gl_FragCoord.y);
    vec3 d = ray_dir(float(col) + 0.5, float(row) + 0.5);
    vec4 c = texelFetch(ell, ivec2(sid, 0), 0);
    vec3 m0 = texelFetch(ell, ivec2(sid, 1), 0).xyz;
    vec3 m1 = texelFetch(ell, ivec2(sid, 2), 0).xyz;
    vec3 m2 = texelFetch(ell, ivec2(sid, 3), 0).xyz;
    float tr = dot(c.xyz - src, d);   // float32: origin next to the ellipsoid
    vec3 o = src + tr * d - c.xyz;
    vec3 q = vec3(dot(m0, o), dot(m1, o), dot(m2, o));
    vec3 e = vec3(dot(m0, d), dot(m1, d), dot(m2, d));
    float A = dot(e, e); float B = dot(q, e); float C = dot(q, q) - 1.0;
    float disc = B * B - A * C;
    result = disc > 0.0 ? c.w * 2.0 * sqrt(disc) / A : 0.0;   // summed by additive blending
}
"""

_CAPSULES = _COMMON + """
uniform sampler2D seg;   // S x 4 texels: a+r, b+mu, (k, reach px, 0, 0), projected a and b (col, row)
uniform isampler2D tiles;   // tile start/count (x, y)
uniform isampler2D lists;   // capsule indices, width 4096
uniform int tiles_x;

bool sphere(vec3 o, vec3 d, vec3 c, float r, out float t0, out float t1) {
    vec3 q = o - c; float b = dot(q, d); float cc = dot(q, q) - r * r; float h = b * b - cc;
    if (h < 0.0) return false;
    h = sqrt(h); t0 = -b - h; t1 = -b + h; return true;
}

bool capsule_near(vec3 o, vec3 d, vec3 a, vec3 b, float r, out float t0, out float t1);

// float32: move the ray origin next to the capsule first (|o - a| small), then shift back
bool capsule(vec3 o, vec3 d, vec3 a, vec3 b, float r, out float t0, out float t1) {
    float tr = dot(a - o, d);
    bool hit = capsule_near(o + tr * d, d, a, b, r, t0, t1);
    t0 += tr; t1 += tr;
    return hit;
}

bool capsule_near(vec3 o, vec3 d, vec3 a, vec3 b, float r, out float t0, out float t1) {
    vec3 ba = b - a; vec3 oa = o - a;
    float baba = dot(ba, ba); float bard = dot(ba, d); float baoa = dot(ba, oa);
    float rdoa = dot(d, oa); float oaoa = dot(oa, oa);
    float k2 = baba - bard * bard;
    float s0, s1, u0, u1;
    if (baba <= 0.0 || k2 <= 1e-12 * baba) {
        bool h1 = sphere(o, d, a, r, s0, s1); bool h2 = sphere(o, d, b, r, u0, u1);
        if (!h1 && !h2) return false;
        if (h1 && h2) { t0 = min(s0, u0); t1 = max(s1, u1); return true; }
        if (h1) { t0 = s0; t1 = s1; return true; }
        t0 = u0; t1 = u1; return true;
    }
    float k1 = baba * rdoa - baoa * bard;
    float k0 = baba * oaoa - baoa * baoa - r * r * baba;
    float h = k1 * k1 - k2 * k0;
    if (h < 0.0) return false;
    h = sqrt(h);
    t0 = (-k1 - h) / k2; t1 = (-k1 + h) / k2;
    float y0 = baoa + t0 * bard;
    if (y0 <= 0.0) { if (!sphere(o, d, a, r, s0, s1)) return false; t0 = s0; }
    else if (y0 >= baba) { if (!sphere(o, d, b, r, s0, s1)) return false; t0 = s0; }
    float y1 = baoa + t1 * bard;
    if (y1 <= 0.0) { if (!sphere(o, d, a, r, s0, s1)) return false; t1 = s1; }
    else if (y1 >= baba) { if (!sphere(o, d, b, r, s0, s1)) return false; t1 = s1; }
    return t1 > t0;
}

float cylinder(vec3 o0, vec3 d, vec3 a, vec3 b, float r) {
    vec3 o = o0 + dot(a - o0, d) * d;  // float32: origin next to the tube (lengths only)
    vec3 ba = b - a; vec3 oa = o - a;
    float baba = dot(ba, ba);
    if (baba <= 0.0) return 0.0;
    float bard = dot(ba, d); float baoa = dot(ba, oa);
    float k2 = baba - bard * bard;
    if (k2 <= 1e-12 * baba) return 0.0;
    float k1 = baba * dot(d, oa) - baoa * bard;
    float k0 = baba * dot(oa, oa) - baoa * baoa - r * r * baba;
    float h = k1 * k1 - k2 * k0;
    if (h <= 0.0) return 0.0;
    h = sqrt(h);
    float t0 = (-k1 - h) / k2; float t1 = (-k1 + h) / k2;
    if (abs(bard) > 1e-15) {
        float s0 = -baoa / bard; float s1 = (baba - baoa) / bard;
        if (s0 > s1) { float tmp = s0; s0 = s1; s1 = tmp; }
        t0 = max(t0, s0); t1 = min(t1, s1);
    } else if (baoa < 0.0 || baoa > baba) return 0.0;
    return t1 > t0 ? t1 - t0 : 0.0;
}

// 2-D early out: the pixel is farther from the projected axis than the projected radius
// (plus the bounding-box margin), so no ray of this pixel meets the capsule
bool misses(int s, vec2 pix) {
    vec4 P = texelFetch(seg, ivec2(s, 3), 0);
    float reach = texelFetch(seg, ivec2(s, 2), 0).y;
    vec2 ab = P.zw - P.xy; vec2 ap = pix - P.xy;
    float l2 = dot(ab, ab);
    float h = l2 > 0.0 ? clamp(dot(ap, ab) / l2, 0.0, 1.0) : 0.0;
    vec2 q = ap - h * ab;
    return dot(q, q) > reach * reach;
}

"""

_TILE_LIST = """
// the tile's candidate list: start and count (tiles of TILE x TILE pixels, TILE = 2^SHIFT)
ivec2 tile_list(int col, int row) {
    int t = (col >> SHIFT) + (row >> SHIFT) * tiles_x;
    return texelFetch(tiles, ivec2(t & 4095, t >> 12), 0).xy;
}
int candidate(int idx) { return texelFetch(lists, ivec2(idx & 4095, idx >> 12), 0).x; }
""".replace("SHIFT", str(TILE.bit_length() - 1))

# one instance per device cylinder: a quad around its projected axis, widened by the margin
_VERT_CYLINDER = """
#version 330 core
uniform sampler2D seg;
uniform int n;
flat out int sid;
void main() {
    int s = gl_InstanceID;
    vec4 P = texelFetch(seg, ivec2(s, 3), 0);
    float reach = texelFetch(seg, ivec2(s, 2), 0).y;
    vec2 ab = P.zw - P.xy; float l = length(ab);
    vec2 t = l > 1e-6 ? ab / l : vec2(1.0, 0.0); vec2 q = vec2(-t.y, t.x);
    float along = (gl_VertexID & 1) == 0 ? -reach : l + reach;
    float side = (gl_VertexID & 2) == 0 ? -reach : reach;
    vec2 p = P.xy + along * t + side * q;   // pixel units; NDC below
    gl_Position = vec4(p / float(n) * 2.0 - 1.0, 0.0, 1.0);
    sid = s;
}
"""

_DEVICES = _CAPSULES.replace("out float result;", "out float result;\nflat in int sid;") + """
void main() {
    int col = int(gl_FragCoord.x); int row = int(gl_FragCoord.y);
    // every ray of this pixel misses when its centre lies farther from the projected axis than
    // the projected radius (the conservative reach less its 1.5 px margin) plus half a pixel
    // diagonal: nothing to add, and no k x k rays to cast
    vec4 P = texelFetch(seg, ivec2(sid, 3), 0);
    vec2 kr = texelFetch(seg, ivec2(sid, 2), 0).xy;
    vec2 ab = P.zw - P.xy; vec2 ap = gl_FragCoord.xy - P.xy;
    float h = clamp(dot(ap, ab) / max(dot(ab, ab), 1e-12), 0.0, 1.0);
    if (length(ap - h * ab) > kr.y - 1.5 + 0.7072) discard;
    vec4 A = texelFetch(seg, ivec2(sid, 0), 0);
    vec4 B = texelFetch(seg, ivec2(sid, 1), 0);
    int k = int(kr.x);
    float sub = 0.0;
    for (int si = 0; si < k; ++si) for (int sj = 0; sj < k; ++sj) {
        vec3 d = ray_dir(float(col) + (float(sj) + 0.5) / float(k),
                         float(row) + (float(si) + 0.5) / float(k));
        sub += cylinder(src, d, A.xyz, B.xyz, A.w);
    }
    result = B.w * sub / float(k * k);   // summed over cylinders by additive blending
}
"""

_VESSELS = _CAPSULES + _TILE_LIST + """
// candidate i of the tile: its entry and exit along ray d, and its mu
bool hit(int i, vec2 pix, vec3 d, out float t0, out float t1, out float w) {
    int s = candidate(i);
    if (misses(s, pix)) return false;
    vec4 A = texelFetch(seg, ivec2(s, 0), 0);
    vec4 B = texelFetch(seg, ivec2(s, 1), 0);
    w = B.w;
    return capsule(src, d, A.xyz, B.xyz, A.w, t0, t1);
}

void main() {
    int col = int(gl_FragCoord.x); int row = int(gl_FragCoord.y);
    vec2 pix = gl_FragCoord.xy;
    ivec2 tc = tile_list(col, row);
    vec3 d = ray_dir(float(col) + 0.5, float(row) + 0.5);
    // The first two hits live in registers: merging overlapping hits of equal mu is exact,
    // and then almost every ray meets at most two intervals. No local arrays: on a
    // software rasterizer they cost every fragment, used or not.
    float a0 = 0.0, a1 = 0.0, am = 0.0, b0 = 0.0, b1 = 0.0, bm = 0.0;
    int m = 0;
    for (int i = 0; i < tc.y; ++i) {
        float t0, t1, w;
        if (!hit(tc.x + i, pix, d, t0, t1, w)) continue;
        if (m == 0) { a0 = t0; a1 = t1; am = w; m = 1; }
        else if (m <= 2 && w == am && t0 <= a1 && t1 >= a0) { a0 = min(a0, t0); a1 = max(a1, t1); }
        else if (m == 1) { b0 = t0; b1 = t1; bm = w; m = 2; }
        else if (m == 2 && w == bm && t0 <= b1 && t1 >= b0) { b0 = min(b0, t0); b1 = max(b1, t1); }
        else { m = 3; break; }
    }
    if (m == 0) { result = 0.0; return; }
    if (m == 1) { result = am * (a1 - a0); return; }
    if (m == 2) {   // two intervals: the overlap counts once, with the larger mu
        float ov = max(0.0, min(a1, b1) - max(a0, b0));
        result = am * (a1 - a0) + bm * (b1 - b0) - min(am, bm) * ov;
        return;
    }
    // Three or more: sweep the sorted end points without storing them. Each pass over
    // the candidates finds the next end point after t and the largest mu covering the
    // middle of the previous piece [tp, t].
    float acc = 0.0;
    float tp = -1e30; float t = -1e30;
    for (int it = 0; it < 2 * MAXI + 1; ++it) {
        float nxt = 1e30; float best = 0.0; bool inside = false;
        float mid = 0.5 * (tp + t);
        for (int i = 0; i < tc.y; ++i) {
            float t0, t1, w;
            if (!hit(tc.x + i, pix, d, t0, t1, w)) continue;
            if (t0 > t) nxt = min(nxt, t0);
            if (t1 > t) nxt = min(nxt, t1);
            if (it > 1 && t0 <= mid && mid <= t1) { best = inside ? max(best, w) : w; inside = true; }
        }
        if (inside) acc += best * (t - tp);
        if (nxt >= 1e30) break;
        tp = t; t = nxt;
    }
    result = acc;
}
""".replace("MAXI", str(MAX_INTERVALS))


# a still view: the chords regrouped by capsule set (:class:`iratrainer.imaging.chords.ChordGroups`),
# one point sprite per patch over its pixel box, reading its lengths from the atlas, scaled
# by the patch's μ and summed by additive blending
_VERT_PATCH = """
#version 330 core
uniform sampler2D inst;   // per patch i: texel (i & 4095, 2 (i >> 12)) box (col, row, w, h); + 1 row: (atlas col, row, mu)
uniform int n;
uniform int max_point;    // the largest point size (px): wider patches come cut into tiles
flat out ivec2 off;
flat out float mu;
flat out ivec4 box_i;
// one point per patch, as wide as its box's longer side (the pixels outside the box are
// discarded): on llvmpipe a point costs less than the two triangles of a quad
void main() {
    int i = gl_VertexID;
    ivec2 at = ivec2(i & 4095, 2 * (i >> 12));
    vec4 box = texelFetch(inst, at, 0);
    vec4 a = texelFetch(inst, at + ivec2(0, 1), 0);
    vec2 c = box.xy + 0.5 * box.zw;
    gl_Position = vec4(c / float(n) * 2.0 - 1.0, 0.0, 1.0);
    gl_PointSize = min(max(box.z, box.w), float(max_point));   // as the driver would clamp it
    off = ivec2(a.xy) - ivec2(box.xy);
    mu = a.z;
    box_i = ivec4(box);
}
"""

_PATCHES = """
#version 330 core
uniform sampler2D atlas;
flat in ivec2 off;
flat in float mu;
flat in ivec4 box_i;
out float result;
void main() {
    ivec2 px = ivec2(gl_FragCoord.xy);
    if (px.x < box_i.x || px.y < box_i.y || px.x >= box_i.x + box_i.z || px.y >= box_i.y + box_i.w) discard;
    result = mu * texelFetch(atlas, px + off, 0).x;
}
"""



def _reach_px(plane: CArmPlane, r: np.ndarray, za: np.ndarray, zb: np.ndarray) -> np.ndarray:
    """A capsule's projected radius (px) at its nearest end (depths ``za``, ``zb`` mm from the
    source) plus a 1.5 px margin: as the CPU's bounding boxes."""
    return r * plane.sid_mm / np.maximum(np.minimum(za, zb) - r, 1.0) / plane.pixel_mm + 1.5


@dataclass(frozen=True)
class GlImage:
    """An n x n float image left on the GPU (a texture the renderer drew into)."""

    tex: int
    n: int


class GlUnavailable(RuntimeError):
    """No usable OpenGL 3.3 context (no EGL, no driver); the CPU renderer is used instead."""


class _Context:
    """A headless EGL context with an OpenGL 3.3 core profile."""

    def __init__(self) -> None:
        os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
        os.environ.setdefault("EGL_PLATFORM", "surfaceless")
        if os.environ.get("PYOPENGL_PLATFORM") != "egl":
            raise GlUnavailable("PYOPENGL_PLATFORM is not 'egl' (the headless renderer needs EGL)")
        try:
            from OpenGL import EGL
        except Exception as exc:  # pragma: no cover - depends on the machine
            raise GlUnavailable(f"cannot load EGL ({exc})") from None
        self.EGL = EGL
        dpy = EGL.eglGetDisplay(EGL.EGL_DEFAULT_DISPLAY)
        major, minor = EGL.EGLint(), EGL.EGLint()
        if not dpy or not EGL.eglInitialize(dpy, ctypes.pointer(major), ctypes.pointer(minor)):
            raise GlUnavailable("eglInitialize failed (no EGL display: install Mesa's libegl1)")
        attrs = (EGL.EGLint * 5)(EGL.EGL_SURFACE_TYPE, EGL.EGL_PBUFFER_BIT, EGL.EGL_RENDERABLE_TYPE,
                                 EGL.EGL_OPENGL_BIT, EGL.EGL_NONE)
        cfg = EGL.EGLConfig()
        num = EGL.EGLint()
        if not EGL.eglChooseConfig(dpy, attrs, ctypes.pointer(cfg), 1, ctypes.pointer(num)) or num.value < 1:
            raise GlUnavailable("no EGL configuration with desktop OpenGL")
        EGL.eglBindAPI(EGL.EGL_OPENGL_API)
        cattrs = (EGL.EGLint * 7)(EGL.EGL_CONTEXT_MAJOR_VERSION, 3, EGL.EGL_CONTEXT_MINOR_VERSION, 3,
                                  EGL.EGL_CONTEXT_OPENGL_PROFILE_MASK, EGL.EGL_CONTEXT_OPENGL_CORE_PROFILE_BIT,
                                  EGL.EGL_NONE)
        ctx = EGL.eglCreateContext(dpy, cfg, EGL.EGL_NO_CONTEXT, cattrs)
        if not ctx:
            raise GlUnavailable("eglCreateContext failed: no OpenGL 3.3 core profile")
        if not EGL.eglMakeCurrent(dpy, EGL.EGL_NO_SURFACE, EGL.EGL_NO_SURFACE, ctx):
            raise GlUnavailable("eglMakeCurrent failed (surfaceless contexts unsupported)")
        self.dpy, self.ctx = dpy, ctx
        self._egl_ctx = ctypes.cast(ctx, ctypes.c_void_p).value
        from OpenGL import GL

        self.GL = GL
        self.version = GL.glGetString(GL.GL_VERSION).decode()
        self.renderer = GL.glGetString(GL.GL_RENDERER).decode()

    def make_current(self) -> None:
        """Make this context the thread's current one (another renderer may have taken it)."""
        EGL = self.EGL
        if ctypes.cast(EGL.eglGetCurrentContext(), ctypes.c_void_p).value != self._egl_ctx:
            if not EGL.eglMakeCurrent(self.dpy, EGL.EGL_NO_SURFACE, EGL.EGL_NO_SURFACE, self.ctx):
                raise GlUnavailable("eglMakeCurrent failed")


class GlRenderer(CpuRenderer):
    """Line integrals with OpenGL (same interface and equations as :class:`CpuRenderer`)."""

    name = "gl"

    def __init__(self, vessel_supersample: int = 1, device_supersample: int = 4, detector: str = "auto",
                 iodine: str = "auto") -> None:
        super().__init__(vessel_supersample, device_supersample)
        for what, v in (("detector", detector), ("iodine", iodine)):
            if v not in ("auto", "gl", "cpu"):
                raise ValueError(f"unknown {what} {v!r} (auto, gl or cpu)")
        self.ctx = _Context()
        # On a software rasterizer (Mesa's llvmpipe: the shaders compiled for this CPU) two
        # parts run faster as the compiled CPU kernels, so "auto" keeps them there, with the
        # same equations: the detector (noise, blur, log), whose three full-frame passes cost
        # about twice the CPU's (1024 x 1024 on 2 cores: 38 ms against 17 ms, then 8 ms), and a
        # still view's iodine, the sum of the chords re-weighted (9 ms for 8,900 patches drawn,
        # each a primitive, against 5 ms). On a GPU both are drawn.
        software = any(k in self.ctx.renderer.lower() for k in ("llvmpipe", "softpipe", "swrast", "software"))
        self.software = software
        self.gl_detector = detector == "gl" or (detector == "auto" and not software)
        self.gl_iodine = iodine == "gl" or (iodine == "auto" and not software)
        GL = self.ctx.GL
        self._vao = GL.glGenVertexArrays(1)
        self._prog_ell = self._program(_ELLIPSOIDS, _VERT_ELLIPSOID)
        self._prog_ves = self._program(_VESSELS)
        self._prog_dev = self._program(_DEVICES, _VERT_CYLINDER)
        self._prog_patch = self._program(_PATCHES, _VERT_PATCH)
        # the largest point size the driver draws (patches wider than that are cut into tiles)
        sizes = GL.glGetFloatv(GL.GL_POINT_SIZE_RANGE)
        self._max_point = max(1, int(np.asarray(sizes, dtype=float).ravel()[-1]))
        self._chord_tex: dict[int, tuple[object, int]] = {}
        self._fbo = GL.glGenFramebuffers(1)
        self._targets: dict[int, Any] = {}
        self._slots: dict[tuple[int, str], int] = {}
        self._kept: dict[int, tuple[np.ndarray, int]] = {}
        self._detector: Any = None

    # ------------------------------------------------------------------ GL plumbing
    def _program(self, frag: str, vert: str = _VERT) -> int:
        GL = self.ctx.GL
        self.ctx.make_current()
        from OpenGL.GL import shaders

        return int(shaders.compileProgram(shaders.compileShader(vert, GL.GL_VERTEX_SHADER),
                                          shaders.compileShader(frag, GL.GL_FRAGMENT_SHADER),
                                          validate=False))

    def _texture(self, data: np.ndarray, internal: int, fmt: int, typ: int) -> int:
        GL = self.ctx.GL
        self.ctx.make_current()
        tex = GL.glGenTextures(1)
        GL.glBindTexture(GL.GL_TEXTURE_2D, tex)
        GL.glTexParameteri(GL.GL_TEXTURE_2D, GL.GL_TEXTURE_MIN_FILTER, GL.GL_NEAREST)
        GL.glTexParameteri(GL.GL_TEXTURE_2D, GL.GL_TEXTURE_MAG_FILTER, GL.GL_NEAREST)
        GL.glPixelStorei(GL.GL_UNPACK_ALIGNMENT, 1)
        h, w = data.shape[:2]
        GL.glTexImage2D(GL.GL_TEXTURE_2D, 0, internal, w, h, 0, fmt, typ, np.ascontiguousarray(data))
        return int(tex)

    def _target(self, n: int) -> Any:
        GL = self.ctx.GL
        if n not in self._targets:
            tex = self._texture(np.zeros((n, n), np.float32), GL.GL_R32F, GL.GL_RED, GL.GL_FLOAT)
            self._targets[n] = tex
        return self._targets[n]

    def _slot(self, n: int, slot: str) -> int:
        """A persistent n x n float texture for one role (a drawn part, a detector pass)."""
        GL = self.ctx.GL
        tex = self._slots.get((n, slot))
        if tex is None:
            tex = self._texture(np.zeros((n, n), np.float32), GL.GL_R32F, GL.GL_RED, GL.GL_FLOAT)
            self._slots[(n, slot)] = tex
        return tex

    def _as_texture(self, part: GlImage | np.ndarray, n: int, slot: str) -> int:
        """A part as a texture: a drawn one as it is; a read-only image (cached background,
        gain, mask) uploaded once and kept while it lives (the 16 latest); any other image
        uploaded into the slot's texture."""
        GL = self.ctx.GL
        self.ctx.make_current()
        if isinstance(part, GlImage):
            if part.n != n:
                raise ValueError(f"a {part.n}x{part.n} part in a {n}x{n} image")
            return part.tex
        arr = np.asarray(part)
        if arr.shape != (n, n):
            raise ValueError(f"a part of shape {arr.shape} in a {n}x{n} image")
        if not arr.flags.writeable:
            hit = self._kept.get(id(part))
            if hit is not None and hit[0] is part:
                return hit[1]
            tex = self._texture(arr.astype(np.float32), GL.GL_R32F, GL.GL_RED, GL.GL_FLOAT)
            if len(self._kept) >= 16:
                GL.glDeleteTextures([self._kept.pop(next(iter(self._kept)))[1]])
            self._kept[id(part)] = (part, tex)  # type: ignore[assignment]
            return tex
        tex = self._slot(n, slot)
        GL.glBindTexture(GL.GL_TEXTURE_2D, tex)
        GL.glPixelStorei(GL.GL_UNPACK_ALIGNMENT, 1)
        GL.glTexSubImage2D(GL.GL_TEXTURE_2D, 0, 0, 0, n, n, GL.GL_RED, GL.GL_FLOAT,
                           np.ascontiguousarray(arr, dtype=np.float32))
        return tex

    def _pass(self, prog: int, n: int, textures: list[tuple[str, int | GlImage]], ints: dict[str, int] | None = None,
              floats: dict[str, float] | None = None, uints: dict[str, int] | None = None,
              arrays: dict[str, np.ndarray] | None = None, slot: str = "pass",
              read: bool = False) -> GlImage | np.ndarray:
        """One full-frame pass of an image program into the slot's texture (no geometry)."""
        GL = self.ctx.GL
        self.ctx.make_current()
        target = self._slot(n, slot)
        GL.glBindFramebuffer(GL.GL_FRAMEBUFFER, self._fbo)
        GL.glFramebufferTexture2D(GL.GL_FRAMEBUFFER, GL.GL_COLOR_ATTACHMENT0, GL.GL_TEXTURE_2D, target, 0)
        GL.glViewport(0, 0, n, n)
        GL.glUseProgram(prog)
        for name, v in (ints or {}).items():
            GL.glUniform1i(GL.glGetUniformLocation(prog, name), int(v))
        for name, f in (floats or {}).items():
            GL.glUniform1f(GL.glGetUniformLocation(prog, name), float(f))
        for name, u in (uints or {}).items():
            GL.glUniform1ui(GL.glGetUniformLocation(prog, name), int(u))
        for name, arr in (arrays or {}).items():
            a = np.ascontiguousarray(arr, dtype=np.float32)
            GL.glUniform1fv(GL.glGetUniformLocation(prog, name), len(a), a)
        for unit, (name, tex) in enumerate(textures):
            GL.glActiveTexture(GL.GL_TEXTURE0 + unit)
            GL.glBindTexture(GL.GL_TEXTURE_2D, tex.tex if isinstance(tex, GlImage) else tex)
            GL.glUniform1i(GL.glGetUniformLocation(prog, name), unit)
        GL.glBindVertexArray(self._vao)
        GL.glDrawArrays(GL.GL_TRIANGLE_STRIP, 0, 4)
        if read:
            return self._read_bound(n)
        return GlImage(target, n)

    def _draw(self, prog: int, plane: CArmPlane, textures: list[tuple[str, int, bool]],
              ints: dict[str, int], instances: int = 0, points: bool = False,
              slot: str | None = None) -> Any:
        """One pass into the plane's float target, read back: a full-frame quad, or
        ``instances`` quads (``points``: points) placed by the vertex shader and summed by
        additive blending. With a ``slot``, drawn into that slot's texture and not read back
        (a :class:`GlImage`)."""
        GL = self.ctx.GL
        self.ctx.make_current()
        n = plane.matrix
        target = self._target(n) if slot is None else self._slot(n, slot)
        GL.glBindFramebuffer(GL.GL_FRAMEBUFFER, self._fbo)
        GL.glFramebufferTexture2D(GL.GL_FRAMEBUFFER, GL.GL_COLOR_ATTACHMENT0, GL.GL_TEXTURE_2D, target, 0)
        GL.glViewport(0, 0, n, n)
        GL.glUseProgram(prog)
        det0 = plane.detector_centre_mm - (n / 2.0) * plane.pixel_mm * (plane.u + plane.v)
        for name, vec in (("src", plane.source_mm), ("det0", det0), ("du", plane.u * plane.pixel_mm),
                          ("dv", plane.v * plane.pixel_mm)):
            GL.glUniform3f(GL.glGetUniformLocation(prog, name), *map(float, vec))
        GL.glUniform1i(GL.glGetUniformLocation(prog, "n"), n)
        for name, val in ints.items():
            GL.glUniform1i(GL.glGetUniformLocation(prog, name), int(val))
        for unit, (name, tex, _) in enumerate(textures):
            GL.glActiveTexture(GL.GL_TEXTURE0 + unit)
            GL.glBindTexture(GL.GL_TEXTURE_2D, tex)
            GL.glUniform1i(GL.glGetUniformLocation(prog, name), unit)
        GL.glBindVertexArray(self._vao)
        if instances:
            GL.glClearColor(0.0, 0.0, 0.0, 0.0)
            GL.glClear(GL.GL_COLOR_BUFFER_BIT)
            GL.glEnable(GL.GL_BLEND)
            GL.glBlendFunc(GL.GL_ONE, GL.GL_ONE)
            if points:
                GL.glEnable(GL.GL_PROGRAM_POINT_SIZE)
                GL.glDrawArrays(GL.GL_POINTS, 0, instances)
            else:
                GL.glDrawArraysInstanced(GL.GL_TRIANGLE_STRIP, 0, 4, instances)
            GL.glDisable(GL.GL_BLEND)
        else:
            GL.glDrawArrays(GL.GL_TRIANGLE_STRIP, 0, 4)
        for _, tex, owned in textures:
            if owned:
                GL.glDeleteTextures([tex])
        if slot is not None:
            return GlImage(target, n)
        return self._read_bound(n)

    def _read_bound(self, n: int) -> np.ndarray:
        """The bound n x n float target, read back (float32 as drawn: the detector widens it
        exactly as it sums the parts; gl_FragCoord.y = row, so image order)."""
        GL = self.ctx.GL
        out = np.empty((n, n), np.float32)  # (PyOpenGL would zero a new array first)
        GL.glPixelStorei(GL.GL_PACK_ALIGNMENT, 1)
        GL.glReadPixels(0, 0, n, n, GL.GL_RED, GL.GL_FLOAT, out)
        return out

    def read(self, image: GlImage | np.ndarray) -> np.ndarray:
        """A drawn part read back to the CPU (an array as it is)."""
        if not isinstance(image, GlImage):
            return image
        GL = self.ctx.GL
        self.ctx.make_current()
        GL.glBindFramebuffer(GL.GL_FRAMEBUFFER, self._fbo)
        GL.glFramebufferTexture2D(GL.GL_FRAMEBUFFER, GL.GL_COLOR_ATTACHMENT0, GL.GL_TEXTURE_2D, image.tex, 0)
        return self._read_bound(image.n)

    # ------------------------------------------------------------------ components
    def background(self, scene: Scene, plane: CArmPlane, e_kev: float) -> np.ndarray:
        """The phantom's line integral, computed in a fragment shader (cached)."""
        key = ("gl", plane.key(), round(e_kev, 3), id(scene.phantom))
        bg = self._bg_cache.get(key)
        if bg is not None:
            return bg
        c, r, s, mu = scene.phantom.arrays(e_kev)
        GL = self.ctx.GL
        K = len(c)
        if hasattr(scene.phantom, "line_integrals"):  # a patient's CT: the shared CPU ray marcher
            bg = np.array(scene.phantom.line_integrals(plane, e_kev))
        elif K == 0:
            bg = np.zeros((plane.matrix, plane.matrix))
        else:
            inv = np.transpose(r, (0, 2, 1)) / s[:, :, None]
            tex = np.zeros((5, K, 4), np.float32)
            tex[0, :, :3] = c
            tex[0, :, 3] = mu
            for i in range(3):
                tex[1 + i, :, :3] = inv[:, i, :]
            tex[4] = _ellipsoid_boxes(plane, np.asarray(c, np.float64), np.asarray(s, np.float64))
            t = self._texture(tex, GL.GL_RGBA32F, GL.GL_RGBA, GL.GL_FLOAT)
            bg = self._draw(self._prog_ell, plane, [("ell", t, True)], {}, instances=K)
        bg.flags.writeable = False
        self._bg_cache[key] = bg
        return bg

    def _segment_texture(self, plane: CArmPlane, a: np.ndarray, b: np.ndarray, r: np.ndarray, mu: np.ndarray,
                         ks: np.ndarray, proj: tuple[np.ndarray, ...]) -> int:
        """Per capsule: ends (mm), radius (mm), μ (1/mm), rays per pixel side, the reach (px) and
        the projected ends (pixels), as an S x 4 RGBA32F texture."""
        GL = self.ctx.GL
        pa, za, pb, zb = proj
        seg = np.zeros((4, len(a), 4), np.float32)
        seg[0, :, :3], seg[0, :, 3] = a, r
        seg[1, :, :3], seg[1, :, 3] = b, mu
        seg[2, :, 0] = ks
        seg[2, :, 1] = _reach_px(plane, r, za, zb)
        seg[3, :, :2], seg[3, :, 2:] = pa, pb
        return self._texture(seg, GL.GL_RGBA32F, GL.GL_RGBA, GL.GL_FLOAT)

    def _capsules(self, plane: CArmPlane, a: np.ndarray, b: np.ndarray, r: np.ndarray, mu: np.ndarray,
                  slot: str | None = None) -> Any:
        """Iodine through the union of capsules, the rays cast directly (tile lists)."""
        GL = self.ctx.GL
        n = plane.matrix
        if len(a) == 0:
            return np.zeros((n, n))
        pa, za = plane.project(a)
        pb, zb = plane.project(b)
        bbox = _bboxes(plane, a, b, r, (pa, za, pb, zb))
        tx = (n + TILE - 1) // TILE
        # bin capsules into tiles
        t0c, t1c = bbox[:, 0] // TILE, (np.maximum(bbox[:, 1], 1) - 1) // TILE
        t0r, t1r = bbox[:, 2] // TILE, (np.maximum(bbox[:, 3], 1) - 1) // TILE
        nonempty = np.nonzero((bbox[:, 1] > bbox[:, 0]) & (bbox[:, 3] > bbox[:, 2]))[0]
        if len(nonempty) == 0:
            return np.zeros((n, n))
        # every (tile, capsule) pair, vectorised: capsule s covers an nc x nr block of tiles
        nc = (t1c - t0c + 1)[nonempty]
        nr = (t1r - t0r + 1)[nonempty]
        cnt = nc * nr
        ps = np.repeat(nonempty, cnt)
        first = np.repeat(np.cumsum(cnt) - cnt, cnt)
        local = np.arange(len(ps)) - first
        ncr = np.repeat(nc, cnt)
        pt = (np.repeat(t0r[nonempty], cnt) + local // ncr) * tx + np.repeat(t0c[nonempty], cnt) + local % ncr
        order = np.lexsort((ps, pt))
        pt, ps = pt[order], ps[order]
        counts = np.bincount(pt, minlength=tx * tx)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        width = 4096
        nt = len(counts)
        tiles_tex = np.zeros((((nt + width - 1) // width) * width, 2), np.int32)
        tiles_tex[:nt, 0], tiles_tex[:nt, 1] = starts, counts
        tiles_tex = tiles_tex.reshape(-1, width, 2)
        lst = np.zeros(((len(ps) + width - 1) // width) * width, np.int32)
        lst[:len(ps)] = ps
        t_seg = self._segment_texture(plane, a, b, r, mu, np.ones(len(a)), (pa, za, pb, zb))
        t_tiles = self._texture(tiles_tex, GL.GL_RG32I, GL.GL_RG_INTEGER, GL.GL_INT)
        t_list = self._texture(lst.reshape(-1, width), GL.GL_R32I, GL.GL_RED_INTEGER, GL.GL_INT)
        textures = [("seg", t_seg, True), ("tiles", t_tiles, True), ("lists", t_list, True)]
        return self._draw(self._prog_ves, plane, textures, {"tiles_x": tx}, slot=slot)

    def _atlas(self, vc: VesselChords) -> int:
        """The view's patch atlas as a texture, uploaded once per view (the oldest view's freed)."""
        hit = self._chord_tex.get(id(vc))
        if hit is not None and hit[0] is vc:
            return hit[1]
        GL = self.ctx.GL
        groups = vc.groups()
        tex = self._texture(groups.atlas, GL.GL_R32F, GL.GL_RED, GL.GL_FLOAT)
        if len(self._chord_tex) >= 4:
            old = self._chord_tex.pop(next(iter(self._chord_tex)))
            GL.glDeleteTextures([old[1]])
        self._chord_tex[id(vc)] = (vc, tex)
        return tex

    def _patches(self, vc: VesselChords, plane: CArmPlane, mu: np.ndarray, slot: str | None = None) -> Any:
        """Σ patch × μ drawn as points over the patches' boxes (the patches without contrast skipped)."""
        from dataclasses import replace

        GL = self.ctx.GL
        groups = vc.groups()
        atlas = self._atlas(vc)
        m = groups.weights(mu)
        draw = np.nonzero(m > 0.0)[0]
        fine = replace(plane, matrix=groups.n) if groups.n != plane.matrix else plane
        if len(draw) == 0:
            return np.zeros((plane.matrix, plane.matrix))
        box, origin, weight = groups.box[draw], groups.origin[draw], m[draw]
        size = self._max_point
        if int(box[:, 2:].max()) > size:  # patches wider than the largest point: cut into tiles
            nx, ny = -(-box[:, 2] // size), -(-box[:, 3] // size)
            rep = nx * ny
            j = np.repeat(np.arange(len(box)), rep)
            local = np.arange(int(rep.sum())) - np.repeat(np.cumsum(rep) - rep, rep)
            tx, ty = (local % nx[j]) * size, (local // nx[j]) * size
            box = np.stack([box[j, 0] + tx, box[j, 1] + ty, np.minimum(box[j, 2] - tx, size),
                            np.minimum(box[j, 3] - ty, size)], axis=1)
            origin = np.stack([origin[j, 0] + tx, origin[j, 1] + ty], axis=1)
            weight = weight[j]
        width = 4096
        rows = (len(box) + width - 1) // width
        inst = np.zeros((2 * rows, width, 4), np.float32)
        i = np.arange(len(box))
        col, row = i % width, 2 * (i // width)
        inst[row, col] = box
        inst[row + 1, col, :2] = origin
        inst[row + 1, col, 2] = weight
        t_inst = self._texture(inst, GL.GL_RGBA32F, GL.GL_RGBA, GL.GL_FLOAT)
        out = self._draw(self._prog_patch, fine, [("atlas", atlas, False), ("inst", t_inst, True)],
                         {"max_point": size}, instances=len(box), points=True,
                         slot=slot if vc.k == 1 else None)
        if vc.k > 1:
            out = out.reshape(plane.matrix, vc.k, plane.matrix, vc.k).mean(axis=(1, 3))
        return out

    def iodine(self, scene: Scene, plane: CArmPlane, e_kev: float, slot: str | None = None) -> Any:
        """Iodine through the union of the vessel capsules, in GLSL (blobs: the shared CPU path).

        As the CPU renderer: rays cast directly while the view is new, then the view's
        chords (built once on the CPU), regrouped by capsule set, drawn as patches scaled by
        this frame's μ. With a ``slot``, the drawn image may stay on the GPU (a
        :class:`GlImage`; an array where the CPU adds to it).
        """
        t = scene.tree
        c = scene.iodine_mg_ml
        keep = c > 0
        blobs = bool(np.any(scene.blob_iodine_mg_ml > 0))
        if not np.any(keep):
            return blob_integrals(scene, plane, e_kev)
        mu_i = linear_attenuation_per_mm("iodine", e_kev, 1e-3)
        vc = self.vessel_chords(scene, plane)
        slot = None if blobs else slot  # the CPU adds the blobs: read back
        if vc is not None and not self.gl_iodine:  # a still view on a software rasterizer: the CPU's sum
            vessels = vc.integrals(mu_i * np.maximum(c, 0.0))
        elif vc is not None:
            vessels = self._patches(vc, plane, mu_i * np.maximum(c, 0.0), slot)
        else:
            mu = mu_i * c[keep]
            r = 0.5 * (t.seg_ra + t.seg_rb)[keep]
            vessels = self._capsules(plane, t.seg_a[keep], t.seg_b[keep], r, mu, slot)
        return blob_integrals(scene, plane, e_kev) + vessels if blobs else vessels

    def devices(self, scene: Scene, plane: CArmPlane, e_kev: float, slot: str | None = None) -> Any:
        """Devices as summed flat-ended cylinders with k x k rays for thin tubes, in GLSL
        (with a ``slot``, left on the GPU as a :class:`GlImage`)."""
        parts = [p for dev in scene.devices for p in device_segments(dev, e_kev)]
        if not parts:
            return np.zeros((plane.matrix, plane.matrix))
        a, b, r, mu = (np.concatenate([p[i] for p in parts]) for i in range(4))
        pa, za = plane.project(a)
        pb, zb = plane.project(b)
        # only the cylinders whose quad (the projected axis widened by the reach, as the
        # vertex shader places it) meets the image: most of a stack lies below a head view
        n = plane.matrix
        reach = _reach_px(plane, r, za, zb)
        lo, hi = np.minimum(pa, pb) - reach[:, None], np.maximum(pa, pb) + reach[:, None]
        seen = np.all((hi > 0.0) & (lo < n), axis=1)
        if not np.any(seen):
            return np.zeros((n, n))
        if not np.all(seen):
            a, b, r, mu, pa, za, pb, zb = (x[seen] for x in (a, b, r, mu, pa, za, pb, zb))
        r_px = r * plane.sid_mm / np.maximum(za, 1.0) / plane.pixel_mm
        ks = np.where(r_px >= 3.0, 1, np.where(r_px >= 1.5, 2, self.device_supersample)).astype(float)
        t_seg = self._segment_texture(plane, a, b, r, mu, ks, (pa, za, pb, zb))
        return self._draw(self._prog_dev, plane, [("seg", t_seg, True)], {}, instances=len(a), slot=slot)

    def line_integrals(self, scene: Scene, plane: CArmPlane, e_kev: float) -> LineIntegrals:
        """All three components, computed on the GPU (or Mesa's software rasterizer).

        The devices are queued first and read back last: the rasterizer draws them while
        the iodine is drawn or summed on the CPU (:attr:`gl_iodine`) and copied out.
        """
        bg = self.background(scene, plane, e_kev)
        devices = self.devices(scene, plane, e_kev, slot="dev")
        self.ctx.GL.glFlush()
        iodine = self.read(self.iodine(scene, plane, e_kev, slot="iod"))
        return LineIntegrals(bg, iodine, self.read(devices))

    def expose(self, scene: Scene, plane: CArmPlane, technique: Technique, options: ImageOptions,
               rng: np.random.Generator | None) -> np.ndarray:
        """The log image of one exposure, with the detector in GLSL (:mod:`iratrainer.imaging.gl_detector`)
        when :attr:`gl_detector`, else the line integrals read back and the CPU detector.

        With the GL detector the line integrals stay on the GPU and only the log image is
        read back. The frame's noise seed is drawn from ``rng`` as
        :func:`~iratrainer.imaging.render.form_image` does.
        """
        from iratrainer.imaging.gl_detector import GlDetector, blur_fits
        from iratrainer.imaging.render import _gain, frame_seed, unattenuated_counts

        if not self.gl_detector or not blur_fits(options.blur_px):  # a blur wider than the GLSL kernel: the CPU detector
            return super().expose(scene, plane, technique, options, rng)
        if self._detector is None:
            self._detector = GlDetector(self)
        e = technique.energy_kev
        seed = frame_seed(options, rng)
        parts = (self.background(scene, plane, e), self.iodine(scene, plane, e, slot="iod"),
                 self.devices(scene, plane, e, slot="dev"))
        return self._detector.detect(parts, _gain(plane.matrix, options.vignetting),
                                     unattenuated_counts(plane, technique), plane.field_mask(), options.blur_px, seed)


def make_gl_renderer(warn: Callable[[str], None] | None = None) -> CpuRenderer:
    """A :class:`GlRenderer`, or the CPU renderer with a warning saying why GL is unavailable."""
    try:
        return GlRenderer()
    except GlUnavailable as exc:
        if warn:
            warn(f"OpenGL renderer unavailable ({exc}); using the NumPy renderer")
        return CpuRenderer()
    except Exception as exc:  # driver errors surface as many exception types
        if warn:
            warn(f"OpenGL renderer failed to start ({type(exc).__name__}: {exc}); using the NumPy renderer")
        return CpuRenderer()
