"""The reference neurovascular atlas: both femoral arteries to the cortical MCA branches.

A patient-average anatomy built from published dimensions (``docs/REFERENCE.md`` in the
shared design notes; each number is cited where it is used). Coordinates are DICOM LPS
in mm with the origin at the top of the aortic arch centerline (+x left, +y posterior,
+z superior). Each branch is drawn as a smooth curve (centripetal Catmull-Rom) through
anatomical control points, then resampled at a spacing tied to its radius.

Parameters:

* ``arch``: ``"I"``, ``"II"`` or ``"III"``. The brachiocephalic origin drops below the
  top of the arch by < 1, 1-2 or > 2 common-carotid diameters (Myla's classification as
  summarised in REFERENCE.md). The atlas places the origin at 0.5, 1.5 and 2.6 diameters,
  and the arch itself is taller and the neck landmarks stay put, so a type III arch has
  longer, steeper great vessels, as in patients.
* ``seed``: varies diameters within their published spread (normal, clipped at 2 SD),
  torso and neck lengths (SD 5%), and jitters control points (SD about 1 mm).
  ``seed=None`` gives the exact population mean.
* ``tortuosity``: 0 (straight) to 3; scales the cervical loops of the carotid and
  vertebral arteries. 1 gives an extracranial carotid tortuosity index of about 1.15,
  inside the published 1.1-1.3 (JNIS 2016).
* ``bovine``: the left CCA arises from the brachiocephalic trunk (a bovine arch).

The labels are fixed (case files and tests use them); see :data:`REQUIRED_LABELS`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from iratrainer import libm
from iratrainer.anatomy.tree import Branch, VesselTree
from iratrainer.errors import AtlasError

__all__ = [
    "ARCH_TYPES",
    "REQUIRED_LABELS",
    "DIAMETER_REFERENCE_MM",
    "AtlasParams",
    "build_atlas",
    "arch_drop_in_cca_diameters",
    "carotid_tortuosity_index",
]

ARCH_TYPES = ("I", "II", "III")

REQUIRED_LABELS = tuple(
    "R_CFA R_EIA R_CIA L_CFA L_EIA L_CIA AO_ABD AO_DESC AO_ARCH AO_ASC BCT R_SCA L_SCA R_VA "
    "L_VA BA R_CCA L_CCA R_ECA L_ECA R_ICA L_ICA R_OPH L_OPH R_PCOM L_PCOM R_MCA_M1 L_MCA_M1 "
    "R_MCA_M2_SUP R_MCA_M2_INF L_MCA_M2_SUP L_MCA_M2_INF R_ACA_A1 L_ACA_A1 ACOM R_PCA_P1 "
    "L_PCA_P1".split()
)

#: Mean lumen diameter (mm) and SD at the segment the atlas models, with the source.
#: Keys are label patterns without the side prefix. Used to build and to test the atlas.
DIAMETER_REFERENCE_MM: dict[str, tuple[float, float, str]] = {
    "CFA": (7.3, 0.8, "Saudi CTA study, n=112"),
    "EIA": (7.5, 0.8, "Saudi CTA study, n=112"),
    "CIA": (9.0, 1.0, "Saudi CTA study, n=112"),
    "AO_ABD_INFRARENAL": (15.5, 1.5, "Chinese CT study, n=1340: 16.5 men, 14.5 women"),
    "CCA": (6.8, 0.7, "JNIS 2016 extracranial carotid geometry"),
    "ICA_BULB": (7.59, 1.00, "Baz, Medicina 2021"),
    "ICA_CERVICAL": (4.67, 0.47, "Baz, Medicina 2021"),
    "ICA_CAVERNOUS": (5.0, 0.6, "JNIS anterior-circulation geometry"),
    "ICA_TERMINUS": (3.6, 0.4, "JNIS anterior-circulation geometry"),
    "MCA_M1": (3.1, 0.4, "JNIS anterior-circulation geometry"),
    "MCA_M2": (2.4, 0.4, "JNIS anterior-circulation geometry"),
    "ACA_A1": (2.05, 0.3, "REFERENCE.md (~2.05)"),
    "ACOM": (1.16, 0.2, "REFERENCE.md (1.16)"),
}

#: Published lengths (mm): (low, high, source).
LENGTH_REFERENCE_MM: dict[str, tuple[float, float, str]] = {
    "L_CCA_FROM_ARCH": (124 - 2 * 12, 124 + 2 * 12, "JNIS 2016: left CCA 124 mm"),
    "R_CCA_FROM_ARCH": (136 - 2 * 13, 136 + 2 * 13, "JNIS 2016: right CCA 136 mm (BCT + CCA)"),
    "ICA_CERVICAL": (70.0, 100.0, "JNIS 2016: cervical ICA ~85 mm"),
    "MCA_M1": (16.9, 20.6, "REFERENCE.md: M1 16.9-20.6 mm (Reci 2019)"),
    "ACA_A1": (11.0, 17.0, "REFERENCE.md: A1 ~14 mm"),
    "ACOM": (1.5, 4.5, "REFERENCE.md: ACOM ~3 mm"),
    "L_ARCH_TO_SKULL_BASE": (208 - 2 * 19, 208 + 2 * 19, "JNIS 2016: 208 +/- 19 mm"),
    "R_ARCH_TO_SKULL_BASE": (222 - 2 * 22, 222 + 2 * 22, "JNIS 2016: 222 +/- 22 mm"),
}

# Brachiocephalic drop below the arch top, in CCA diameters, per arch type.
_ARCH_DROP = {"I": 0.5, "II": 1.5, "III": 2.6}
# Vertical semi-axis of the arch (mm) per type: taller arches for type III.
_ARCH_HEIGHT = {"I": 16.0, "II": 24.0, "III": 34.0}
_ARCH_HALF_WIDTH = 34.0  # mm, half the distance between ascending and descending aorta


@dataclass(frozen=True)
class AtlasParams:
    """Parameters of :func:`build_atlas` (see the module docstring)."""

    arch: str = "I"
    seed: int | None = None
    tortuosity: float = 1.0
    bovine: bool = False

    def validated(self) -> AtlasParams:
        """Return self, or raise :class:`AtlasError` naming the parameter at fault."""
        if self.arch not in ARCH_TYPES:
            raise AtlasError(f"arch: expected one of I, II, III, got {self.arch!r}")
        t = float(self.tortuosity)
        if not np.isfinite(t) or not 0.0 <= t <= 3.0:
            raise AtlasError(f"tortuosity: expected a number from 0 to 3, got {self.tortuosity!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or self.seed < 0):
            raise AtlasError(f"seed: expected a non-negative integer, got {self.seed!r}")
        return self


# ---------------------------------------------------------------------- curve helpers
def catmull_rom(ctrl: np.ndarray, samples_per_span: int = 24) -> np.ndarray:
    """Centripetal Catmull-Rom curve through control points (K, 3); returns dense (M, 3).

    Centripetal parameterisation (alpha = 0.5) has no cusps or self-intersections within a
    span, so anatomical curves do not overshoot their control points.
    """
    p = np.asarray(ctrl, dtype=np.float64)
    if len(p) == 2:
        t = np.linspace(0.0, 1.0, samples_per_span + 1)[:, None]
        return p[0] + t * (p[1] - p[0])
    ext = np.vstack([2 * p[0] - p[1], p, 2 * p[-1] - p[-2]])
    out = [p[:1]]
    for i in range(1, len(ext) - 2):
        p0, p1, p2, p3 = ext[i - 1], ext[i], ext[i + 1], ext[i + 2]
        t0 = 0.0
        t1 = t0 + max(np.linalg.norm(p1 - p0), 1e-9) ** 0.5
        t2 = t1 + max(np.linalg.norm(p2 - p1), 1e-9) ** 0.5
        t3 = t2 + max(np.linalg.norm(p3 - p2), 1e-9) ** 0.5
        t = np.linspace(t1, t2, samples_per_span + 1)[1:, None]
        a1 = (t1 - t) / (t1 - t0) * p0 + (t - t0) / (t1 - t0) * p1
        a2 = (t2 - t) / (t2 - t1) * p1 + (t - t1) / (t2 - t1) * p2
        a3 = (t3 - t) / (t3 - t2) * p2 + (t - t2) / (t3 - t2) * p3
        b1 = (t2 - t) / (t2 - t0) * a1 + (t - t0) / (t2 - t0) * a2
        b2 = (t3 - t) / (t3 - t1) * a2 + (t - t1) / (t3 - t1) * a3
        out.append((t2 - t) / (t2 - t1) * b1 + (t - t1) / (t2 - t1) * b2)
    return np.vstack(out)


def resample_curve(
    ctrl: np.ndarray, radii_ctrl: np.ndarray, spacing_fn: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Smooth curve through ``ctrl`` resampled at uniform arc length; radii follow the controls.

    Args:
        ctrl: (K, 3) control points, mm.
        radii_ctrl: (K,) radius at each control point, mm (linear along arc length).
        spacing_fn: point spacing in mm; default ``clip(radius, 0.5, 2.0)``.

    Returns:
        points (N, 3) and radii (N,), with the first and last control points kept exactly.
    """
    dense = catmull_rom(ctrl)
    seg = np.linalg.norm(np.diff(dense, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    # arc length of each control point along the dense curve
    n_span = len(ctrl) - 1
    per = (len(dense) - 1) // n_span
    ctrl_arc = arc[np.arange(0, n_span + 1) * per]
    total = arc[-1]
    rmean = float(np.mean(radii_ctrl))
    spacing = spacing_fn if spacing_fn is not None else float(np.clip(rmean, 0.5, 2.0))
    n = max(2, int(np.ceil(total / spacing)) + 1)
    s = np.linspace(0.0, total, n)
    pts = np.stack([np.interp(s, arc, dense[:, k]) for k in range(3)], axis=1)
    pts[0], pts[-1] = ctrl[0], ctrl[-1]
    rad = np.interp(s, ctrl_arc, radii_ctrl)
    return pts, rad


# ---------------------------------------------------------------------- the builder
@dataclass
class _Builder:
    params: AtlasParams
    rng: np.random.Generator | None
    branches: dict[str, Branch] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    neck_scale: float = 1.0
    torso_scale: float = 1.0
    factors: dict[str, float] = field(default_factory=dict)

    def factor(self, key: str, cv: float = 0.10) -> float:
        """Diameter factor for a vessel group: 1 at the mean, N(1, cv) clipped at 2 SD."""
        if key not in self.factors:
            if self.rng is None:
                self.factors[key] = 1.0
            else:
                self.factors[key] = float(np.clip(self.rng.normal(1.0, cv), 1 - 2 * cv, 1 + 2 * cv))
        return self.factors[key]

    def place(self, p: np.ndarray) -> np.ndarray:
        """Apply the seeded body-size scaling (neck above the arch top, torso below)."""
        q = np.array(p, dtype=np.float64)
        z = q[..., 2]
        q[..., 2] = np.where(z > 0, z * self.neck_scale, z * self.torso_scale)
        return q

    def jitter(self, ctrl: np.ndarray, sd: float) -> np.ndarray:
        if self.rng is None or sd <= 0:
            return ctrl
        out = ctrl.copy()
        out[1:-1] += self.rng.normal(0.0, sd, size=out[1:-1].shape)
        out[-1] += self.rng.normal(0.0, sd * 0.5, size=3)
        return out

    def attach_index(self, parent: str, where: float | str) -> int:
        """Point index on ``parent``: ``"end"``, ``"start"``, or an arc length in mm (<0: from end)."""
        b = self.branches[parent]
        if where == "end":
            return len(b.points_mm) - 1
        if where == "start":
            return 0
        s = float(where)
        if s < 0:
            s = b.length_mm + s
        return int(np.clip(np.argmin(np.abs(b.arc_mm - s)), 0, len(b.points_mm) - 1))

    def add(
        self,
        label: str,
        ctrl: list[list[float]] | np.ndarray,
        diam: list[float] | np.ndarray,
        parent: str | None = None,
        at: float | str = "end",
        jitter_mm: float = 1.0,
        spacing: float | None = None,
        absolute_end: bool = False,
    ) -> None:
        """Add a branch through control points (before body scaling) with diameters (mm)."""
        c = self.place(np.asarray(ctrl, dtype=np.float64))
        if parent is not None:
            pidx = self.attach_index(parent, at)
            c = np.vstack([self.branches[parent].points_mm[pidx], c])
            d = np.asarray(diam, dtype=np.float64)
            if len(d) == len(c) - 1:  # no diameter given for the attachment point
                d = np.concatenate([[d[0]], d])
        else:
            pidx = 0
            d = np.asarray(diam, dtype=np.float64)
        if len(d) != len(c):
            raise ValueError(f"{label}: {len(d)} diameters for {len(c)} control points")
        c = self.jitter(c, jitter_mm)
        if absolute_end:
            c[-1] = self.place(np.asarray(ctrl, dtype=np.float64))[-1]
        pts, rad = resample_curve(c, d / 2.0, spacing)
        self.branches[label] = Branch(label, parent, pidx, pts, rad)
        self.order.append(label)


def _mirror(ctrl: list[list[float]]) -> list[list[float]]:
    return [[-x, y, z] for x, y, z in ctrl]


def build_atlas(params: AtlasParams | None = None) -> VesselTree:
    """Build the reference atlas (see the module docstring). Deterministic for a given seed."""
    prm = (params or AtlasParams()).validated()
    rng = None if prm.seed is None else np.random.default_rng(prm.seed)
    b = _Builder(prm, rng)
    if rng is not None:
        b.neck_scale = float(np.clip(rng.normal(1.0, 0.05), 0.9, 1.1))
        b.torso_scale = float(np.clip(rng.normal(1.0, 0.05), 0.9, 1.1))
    T = float(prm.tortuosity)
    f = b.factor
    ref = DIAMETER_REFERENCE_MM

    def cv(key: str) -> float:
        """Coefficient of variation (SD / mean) of a published diameter."""
        return ref[key][1] / ref[key][0]

    # ---------------- aorta (root: aortic valve) --------------------------------------
    a_h = _ARCH_HALF_WIDTH
    b_v = _ARCH_HEIGHT[prm.arch]
    u = np.array([0.50, 0.866, 0.0])  # arch plane: right-anterior -> left-posterior
    centre = np.array([0.0, 0.0, -b_v])
    th = np.linspace(np.pi, 0.0, 9)
    normal = np.array([-0.866, 0.50, 0.0])  # horizontal, perpendicular to the arch plane
    cos_th, sin_th = libm.cos(th), libm.sin(th)  # the C library's, on every machine (see iratrainer.libm)
    arch_pts = (centre + a_h * cos_th[:, None] * u
                + b_v * sin_th[:, None] * np.array([0.0, 0.0, 1.0])
                # the arch is not quite planar: its limbs twist out of the plane
                + (5.0 * (1.0 - sin_th) * np.sign(cos_th))[:, None] * normal)
    start = arch_pts[0]
    fa = f("AORTA", 0.08)
    b.add("AO_ASC", [start + [4, -4, -55], start + [2, -4, -30], start], [31 * fa, 31 * fa, 30 * fa],
          jitter_mm=0.0, spacing=2.0)
    b.add("AO_ARCH", arch_pts[1:], np.linspace(29, 24, 8) * fa, parent="AO_ASC", jitter_mm=0.0,
          spacing=2.0)
    end = arch_pts[-1]
    b.add("AO_DESC", [end + [0, 3, -30], [14, 36, -120], [8, 34, -250]],
          [23 * fa, 22 * fa, 21 * fa], parent="AO_ARCH", jitter_mm=0.0, spacing=2.0)
    fabd = f("AO_ABD", cv("AO_ABD_INFRARENAL"))
    b.add("AO_ABD", [[4, 26, -330], [2, 16, -400], [0, 10, -430]],
          [19 * fabd, 16.5 * fabd, ref["AO_ABD_INFRARENAL"][0] * fabd],
          parent="AO_DESC", jitter_mm=0.0, spacing=2.0)

    # ---------------- iliac and femoral (both sides) -----------------------------------
    for side, sx in (("L", 1.0), ("R", -1.0)):
        fc, fe, ff = f(f"{side}_CIA", cv("CIA")), f(f"{side}_EIA", cv("EIA")), f(f"{side}_CFA", cv("CFA"))
        b.add(f"{side}_CIA", [[sx * 17, 8, -455], [sx * 31, 6, -482]],
              [ref["CIA"][0] * fc] * 2, parent="AO_ABD", jitter_mm=0.8)
        b.add(f"{side}_EIA",
              [[sx * (44 + 2 * T), 0, -512], [sx * 57, -11, -546], [sx * 67, -21, -580]],
              [ref["EIA"][0] * fe] * 3, parent=f"{side}_CIA", jitter_mm=1.0)
        b.add(f"{side}_CFA", [[sx * 72, -27, -602], [sx * 75, -31, -628]],
              [ref["CFA"][0] * ff] * 2, parent=f"{side}_EIA", jitter_mm=0.8)

    # ---------------- supra-aortic trunks ---------------------------------------------
    dcca = {s: ref["CCA"][0] * f(f"{s}_CCA", cv("CCA")) for s in ("L", "R")}
    d_ref = 0.5 * (dcca["L"] + dcca["R"])
    arch = b.branches["AO_ARCH"]
    top_z = float(arch.points_mm[:, 2].max())
    drop = _ARCH_DROP[prm.arch] * d_ref
    # first arch point (on the ascending side) whose height is within `drop` of the top
    asc = np.arange(int(np.argmax(arch.points_mm[:, 2])) + 1)
    i_bct = int(asc[np.argmin(np.abs(arch.points_mm[asc, 2] - (top_z - drop)))])
    s_bct = float(arch.arc_mm[i_bct])
    fb = f("BCT", 0.10)
    b.add("BCT", [[-14, -14, 18], [-24, -12, 34]], [12 * fb, 11.5 * fb, 11 * fb], parent="AO_ARCH",
          at=s_bct, jitter_mm=0.8)
    if prm.bovine:
        b.add("L_CCA", [[2, -16, 24], [14, -12, 45], [25, -8, 75], [29, -6, 100], [30, -5, 112]],
              [dcca["L"]] * 5, parent="BCT", at=6.0, jitter_mm=1.0)
    else:
        # from the roof of the arch in types I and II; behind an elongated type III arch,
        # whose vessels leave low on its ascending side, the first centimetres run obliquely
        # leftwards before turning up
        first = [[0, -7, 16], [17 + 2 * T, -9 - 2 * T, 45]] if prm.arch != "III" else \
            [[10, -8, 14], [22 + 2 * T, -9 - 2 * T, 45]]
        b.add("L_CCA", first + [[27 - 2 * T, -7 + 2 * T, 75], [29, -6, 100], [30, -5, 112]],
              [dcca["L"]] * 5, parent="AO_ARCH", at=s_bct + 13.0, jitter_mm=1.0)
    fsl = f("L_SCA", 0.10)
    b.add("L_SCA", [[24, 14, 18], [34, 8, 36], [52, 4, 42], [72, 2, 36], [95, 6, 18]],
          np.array([9.5, 9.0, 8.5, 7.5, 6.5]) * fsl, parent="AO_ARCH", at=s_bct + 25.0,
          jitter_mm=1.0)
    fsr = f("R_SCA", 0.10)
    b.add("R_SCA", [[-40, -9, 43], [-60, -4, 43], [-82, 0, 32], [-100, 5, 16]],
          np.array([9.5, 8.5, 7.5, 6.5]) * fsr, parent="BCT", jitter_mm=1.0)
    b.add("R_CCA", [[-27 + 1.5 * T, -10 - 1.5 * T, 62], [-30 - 1.5 * T, -7 + 1.5 * T, 95],
                    [-31, -5, 122]], [dcca["R"]] * 3,
          parent="BCT", jitter_mm=1.0)

    # ---------------- vertebrobasilar ---------------------------------------------------
    # V1-V2 through the transverse foramina, V3 loop at the atlas, V4 to the junction.
    vjunction = [0.0, 12.0, 198.0]
    for side, sx, parent in (("L", 1.0, "L_SCA"), ("R", -1.0, "R_SCA")):
        fv = f(f"{side}_VA", 0.12)
        w = 1.5 * T
        # V2 runs through the transverse foramina, 15-20 mm behind the internal carotid
        # (until the twelfth session it ran 4-6 mm behind it, the two lumens overlapping over
        # ~50 mm: a microwire in the ICA crossed into the vertebral artery there)
        ctrl = [[sx * 33, 8, 60], [sx * 28, 17, 85], [sx * (26 + w), 20, 115],
                [sx * (25 - w), 21, 145], [sx * 28, 21, 163], [sx * 36, 22, 172],
                [sx * 28, 28, 180], [sx * 14, 24, 186], [sx * 6, 18, 192]]
        end_pt = vjunction if side == "L" else [-1.0, 12.5, 197.0]
        ctrl.append(end_pt)
        dv = np.array([3.8, 3.7, 3.6, 3.5, 3.4, 3.3, 3.2, 3.1, 3.0, 3.0]) * fv
        b.add(f"{side}_VA", ctrl, dv, parent=parent, at=16.0, jitter_mm=0.8, absolute_end=True)
    fba = f("BA", 0.12)
    b.add("BA", [[0, 6, 211], [0, -2, 222]], np.array([3.3, 3.1, 2.9]) * fba, parent="L_VA",
          jitter_mm=0.4)
    fp = f("PCA", 0.12)
    for side, sx in (("L", 1.0), ("R", -1.0)):
        b.add(f"{side}_PCA_P1", [[sx * 4, -2.5, 222.5], [sx * 8, -3, 223]], [2.1 * fp] * 3, parent="BA",
              jitter_mm=0.2, absolute_end=True)

    # ---------------- carotids and intracranial anterior circulation -------------------
    for side, sx in (("L", 1.0), ("R", -1.0)):
        fe = f(f"{side}_ECA", 0.12)
        b.add(f"{side}_ECA", _mirror_if(sx, [[27, -13, 126], [29, -19, 145], [34, -21, 165],
                                             [44, -16, 186]]),
              np.array([4.6, 4.3, 3.9, 3.4, 3.0]) * fe, parent=f"{side}_CCA", jitter_mm=1.0)
        fbulb = f(f"{side}_ICA_BULB", cv("ICA_BULB"))
        fcer = f(f"{side}_ICA_CERV", cv("ICA_CERVICAL"))
        fcav = f(f"{side}_ICA_CAV", cv("ICA_CAVERNOUS"))
        fter = f(f"{side}_ICA_TERM", cv("ICA_TERMINUS"))
        w = 1.5 * T
        ica = [[31, -1, 120],  # bulb, posterolateral
               [31 + 3.5 * w, 3 + 1.5 * w, 132], [29 - 4.0 * w, 6 + 2.0 * w, 146],
               [29 + 3.5 * w, 5 - 1.0 * w, 160], [28 - 1.5 * w, 5, 172],
               [27, 4, 184],  # skull base, carotid canal
               [26, 2, 192], [21, -5, 195], [17, -11, 196],  # petrous
               [15, -14, 201], [16, -21, 202], [17, -26, 206],  # cavernous, anterior genu
               [17.5, -24, 212], [15.5, -19, 216], [13, -14, 221]]  # supraclinoid, terminus
        dbulb = ref["ICA_BULB"][0] * fbulb
        dcer = ref["ICA_CERVICAL"][0] * fcer
        dcav = ref["ICA_CAVERNOUS"][0] * fcav
        dter = ref["ICA_TERMINUS"][0] * fter
        dica = [dbulb, dbulb, 0.5 * (dbulb + dcer), dcer, dcer, dcer, dcer, 0.98 * dcav,
                0.98 * dcav, dcav, dcav, dcav, 0.5 * (dcav + dter), 0.5 * (dcav + dter) * 0.95, dter]
        b.add(f"{side}_ICA", _mirror_if(sx, ica), np.asarray(dica), parent=f"{side}_CCA",
              jitter_mm=0.6)
        ica_b = b.branches[f"{side}_ICA"]
        # ophthalmic: off the ICA just beyond the anterior genu, runs anteriorly to the orbit
        i_oph = int(np.argmin(np.linalg.norm(ica_b.points_mm - b.place(
            np.array(_mirror_if(sx, [[17.5, -25, 209]])[0])), axis=1)))
        b.add(f"{side}_OPH", _mirror_if(sx, [[21, -31, 211], [25, -41, 212], [28, -55, 210]]),
              np.array([1.5, 1.4, 1.2, 1.0]) * f(f"{side}_OPH", 0.12), parent=f"{side}_ICA",
              at=float(ica_b.arc_mm[i_oph]), jitter_mm=0.5)
        # posterior communicating: from the supraclinoid ICA to the P1/P2 junction
        i_pcom = int(np.argmin(np.linalg.norm(ica_b.points_mm - b.place(
            np.array(_mirror_if(sx, [[14, -16, 219]])[0])), axis=1)))
        p1_end = b.branches[f"{side}_PCA_P1"].points_mm[-1]
        b.add(f"{side}_PCOM", [_mirror_if(sx, [[11, -9, 221]])[0], _unplace(b, p1_end)],
              [1.2, 1.2, 1.1], parent=f"{side}_ICA", at=float(ica_b.arc_mm[i_pcom]),
              jitter_mm=0.3, absolute_end=True)
        # M1 and its bifurcation (M1 length 16.9-20.6 mm, REFERENCE.md)
        fm1 = f(f"{side}_M1", cv("MCA_M1"))
        b.add(f"{side}_MCA_M1", _mirror_if(sx, [[22, -15, 222], [31.5, -13, 223.5]]),
              np.array([3.3, 3.1, 2.9]) * fm1, parent=f"{side}_ICA", jitter_mm=0.3)
        b.add(f"{side}_MCA_LSA1", _mirror_if(sx, [[20, -12, 230], [21, -9, 240]]),
              [0.5, 0.45, 0.4], parent=f"{side}_MCA_M1", at=5.0, jitter_mm=0.3)
        b.add(f"{side}_MCA_LSA2", _mirror_if(sx, [[26, -11, 231], [28, -8, 241]]),
              [0.5, 0.45, 0.4], parent=f"{side}_MCA_M1", at=10.0, jitter_mm=0.3)
        fm2 = f(f"{side}_M2", cv("MCA_M2"))
        dm2 = ref["MCA_M2"][0] * fm2
        b.add(f"{side}_MCA_M2_SUP", _mirror_if(sx, [[37, -13, 230], [41, -8, 240], [44, 2, 248]]),
              [dm2, dm2, 0.9 * dm2, 0.8 * dm2], parent=f"{side}_MCA_M1", jitter_mm=0.6)
        b.add(f"{side}_MCA_M2_INF", _mirror_if(sx, [[38, -9, 219], [43, 1, 215], [46, 13, 213]]),
              [dm2, dm2, 0.9 * dm2, 0.8 * dm2], parent=f"{side}_MCA_M1", jitter_mm=0.6)
        # A1 (~14 mm), A2 along the corpus callosum
        fa1 = f(f"{side}_A1", cv("ACA_A1"))
        b.add(f"{side}_ACA_A1", _mirror_if(sx, [[8, -19, 224], [1.5, -24, 226]]),
              np.array([2.1, 2.05, 2.0]) * fa1, parent=f"{side}_ICA", jitter_mm=0.2,
              absolute_end=True)
        b.add(f"{side}_ACA_A2", _mirror_if(sx, [[2, -31, 240], [2.5, -30, 258], [3, -14, 272],
                                                [3, 10, 280]]),
              np.array([2.0, 1.9, 1.8, 1.6, 1.4]) * fa1, parent=f"{side}_ACA_A1", jitter_mm=0.6)
    # anterior communicating artery: from the left A1 end to the right A1 end (~3 mm)
    r_a1_end = b.branches["R_ACA_A1"].points_mm[-1]
    b.add("ACOM", [_unplace(b, r_a1_end)], [1.16 * f("ACOM", cv("ACOM"))] * 2, parent="L_ACA_A1",
          jitter_mm=0.0, absolute_end=True)

    # ---------------- cortical branches (territories for perfusion and emboli) ----------
    head_c = np.array([0.0, 8.0, 225.0])
    cortical = {
        "MCA_M2_SUP": [(-55, 35), (-20, 42), (15, 45), (45, 38)],
        "MCA_M2_INF": [(-50, -5), (-15, -12), (20, -8), (50, 5)],
        "ACA_A2": [(-60, 60), (-10, 72), (40, 70)],
        "PCA_P1": [(130, 15), (150, -5)],
    }
    for side, sx in (("L", 1.0), ("R", -1.0)):
        for trunk, dirs in cortical.items():
            parent = f"{side}_{trunk}"
            pb = b.branches[parent]
            for k, (az, el) in enumerate(dirs):
                frac = 0.35 + 0.65 * k / max(1, len(dirs) - 1)
                i0 = b.attach_index(parent, frac * pb.length_mm)
                p0 = _unplace(b, pb.points_mm[i0])
                # direction: azimuth from anterior (0 = straight lateral), elevation up
                azr, elr = np.radians(az), np.radians(el)
                lateral = 0.3 if trunk == "ACA_A2" else 1.0
                d = np.array([sx * lateral * math.cos(elr) * math.cos(azr), math.cos(elr) * math.sin(azr),
                              math.sin(elr)])
                d /= np.linalg.norm(d)
                target = head_c + 68.0 * d
                if trunk == "ACA_A2":
                    target[0] = sx * (4.0 + 8.0 * abs(math.sin(azr)))
                mid = p0 + 0.45 * (target - p0) + np.array([sx * 4.0, 0.0, 3.0])
                r0 = float(pb.radii_mm[i0]) * 2 * 0.65
                name = f"{side}_{trunk}_C{k + 1}"
                b.add(name, [mid, target - 0.1 * (target - head_c), target],
                      [r0, r0, 0.8 * r0, 0.6 * r0], parent=parent, at=float(pb.arc_mm[i0]),
                      jitter_mm=0.5)
                # second generation: two branches run on over the convexity, one to each side
                cb = b.branches[name]
                for j, (frac, turn) in enumerate(((0.45, 1.0), (0.75, -1.0))):
                    i1 = b.attach_index(name, frac * cb.length_mm)
                    p1 = np.array(_unplace(b, cb.points_mm[i1]))
                    radial = (p1 - head_c) / np.linalg.norm(p1 - head_c)
                    along = np.cross(radial, [0.0, 0.0, 1.0]) * turn * sx
                    if np.linalg.norm(along) < 1e-6:
                        along = np.array([0.0, turn, 0.0])
                    along /= np.linalg.norm(along)
                    up = np.cross(along, radial)
                    tgt = head_c + 66.0 * (radial + 0.45 * along + 0.25 * up) / np.linalg.norm(
                        radial + 0.45 * along + 0.25 * up)
                    rr = float(cb.radii_mm[i1]) * 2 * 0.75
                    b.add(f"{name}_{j + 1}", [0.5 * (p1 + tgt) + 3.0 * radial, tgt],
                          [rr, 0.8 * rr, 0.55 * rr], parent=name, at=float(cb.arc_mm[i1]),
                          jitter_mm=0.6)

    meta = {
        "source": "iratrainer reference atlas",
        "method": "control points from published mean dimensions, centripetal Catmull-Rom",
        "atlas": {"arch": prm.arch, "seed": prm.seed, "tortuosity": prm.tortuosity,
                  "bovine": prm.bovine},
        "origin": "top of the aortic arch centerline",
        "references": sorted({v[2] for v in DIAMETER_REFERENCE_MM.values()}),
    }
    anast = [("ACOM", "R_ACA_A1"), ("R_VA", "BA"), ("L_PCOM", "L_PCA_P1"),
             ("R_PCOM", "R_PCA_P1")]
    return VesselTree([b.branches[k] for k in b.order], metadata=meta, anastomoses=anast)


def _mirror_if(sx: float, ctrl: list[list[float]]) -> list[list[float]]:
    return ctrl if sx > 0 else _mirror(ctrl)


def _unplace(b: _Builder, p: np.ndarray) -> list[float]:
    """Inverse of the body scaling, so an absolute target survives :meth:`_Builder.place`."""
    q = np.array(p, dtype=np.float64)
    q[2] = q[2] / b.neck_scale if q[2] > 0 else q[2] / b.torso_scale
    return [float(v) for v in q]


# ---------------------------------------------------------------------- measurements
def arch_drop_in_cca_diameters(tree: VesselTree) -> float:
    """Drop of the brachiocephalic origin below the arch top, in mean CCA diameters.

    Measured on the centerline: ``(z_top - z_origin) / mean(CCA diameter)``.
    """
    arch = tree["AO_ARCH"]
    top = float(arch.points_mm[:, 2].max())
    bct = tree["BCT"]
    origin_z = float(arch.points_mm[bct.parent_index, 2])
    d = np.mean([2 * np.median(tree[f"{s}_CCA"].radii_mm) for s in ("L", "R")])
    return (top - origin_z) / d


def carotid_tortuosity_index(tree: VesselTree, side: str = "L") -> float:
    """Extracranial carotid tortuosity: centerline length / straight distance, CCA origin to skull base.

    The skull base is where the ICA enters the carotid canal (the atlas's control point at
    z = 184 mm before scaling): here taken as the first ICA point above 92% of the
    CCA-origin-to-terminus height.
    """
    cca, ica = tree[f"{side}_CCA"], tree[f"{side}_ICA"]
    z0, z1 = cca.points_mm[0, 2], ica.points_mm[-1, 2]
    zs = z0 + 0.815 * (z1 - z0)
    k = int(np.argmax(ica.points_mm[:, 2] >= zs))
    path = np.vstack([cca.points_mm, ica.points_mm[1 : k + 1]])
    length = float(np.sum(np.linalg.norm(np.diff(path, axis=0), axis=1)))
    return length / float(np.linalg.norm(path[-1] - path[0]))
