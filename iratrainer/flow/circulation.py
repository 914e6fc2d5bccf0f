"""The circulation of one patient: flow network, contrast, clots, emboli, devices, complications.

:class:`Circulation` owns the mutable state on top of a sized :class:`FlowNetwork`
(which can be shared between runs on the same anatomy): which cells a clot blocks or
narrows, which cortical branches emboli occlude, where catheters sit (annulus flow, a
wedged catheter) and whether the balloon guide is inflated; it re-solves the flow when
any of these change and hands the flows to the contrast field. It also keeps the
extravasations of a perforation (contrast leaking into the subarachnoid space) and
reports the reperfusion of the territory at risk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from iratrainer import libm
from iratrainer.flow.contrast import ContrastField, Injection
from iratrainer.flow.network import ML_MIN, FlowNetwork, FlowSolution
from iratrainer.flow.thrombectomy import ClotSpec, PassOutcome, tici_grade

__all__ = ["Circulation", "ClotState", "Extravasation", "InjectionError"]

RESIDUAL_OPEN_FRACTION = 0.10  # lumen area left open by a partly retrieved clot
TISSUE_CBF_ML_PER_ML_MIN = 0.5  # 50 mL/100 g/min: tissue volume perfused by a bed
BLUSH_LABELS = ("MCA", "ACA", "PCA", "OPH", "ECA")
LEAK_FRACTION = 0.03  # of the vessel's baseline flow through a perforation
SUBARACHNOID_DILUTION = 4.0  # leaked blood spreads into this many times its volume
SYRINGE_ML = {"hand": 10.0, "power": 150.0}
VENOUS_MTT_S = 4.5  # cortical veins to the sinuses: the venous phase peaks ~4-6 s after the arterial
VENOUS_STAGES = 3  # compartments in series (a gamma-shaped transit); the last is the sinuses
SINUS_RADIUS_MM = 4.0


def _sinus_path() -> np.ndarray:
    """Dural sinuses along the inner table of the default head (LPS mm, atlas frame): the
    superior sagittal sinus from the frontal pole over the vertex to the torcula, both
    transverse and sigmoid sinuses, and the jugular bulbs."""
    phi = np.radians(np.arange(-70.0, 116.0, 6.0))
    sss = np.c_[np.zeros_like(phi), 12.0 + 84.0 * libm.sin(phi), 232.0 + 74.0 * libm.cos(phi)]
    torcula = sss[-1]
    parts = [sss]
    for side in (-1.0, 1.0):
        x = np.arange(6.0, 56.0, 6.0)
        trans = np.c_[side * x, 12.0 + 76.0 * np.sqrt(np.clip(1.0 - (x / 64.0) ** 2, 0.0, 1.0)),
                      np.full_like(x, torcula[2])]
        sig = np.linspace([side * 55.0, 50.0, torcula[2] - 4.0], [side * 45.0, 30.0, 170.0], 6)
        jug = np.linspace([side * 45.0, 28.0, 164.0], [side * 40.0, 22.0, 120.0], 7)
        parts += [trans, sig, jug]
    pts = np.vstack(parts)
    out = [pts[0]]
    for a, b in zip(pts[:-1], pts[1:], strict=True):  # resample every ~2 mm: a smooth tube of spheres
        n = max(1, int(np.ceil(np.linalg.norm(b - a) / SINUS_STEP_MM)))
        out += [a + (b - a) * (k / n) for k in range(1, n + 1)]
    return np.array(out)


SINUS_STEP_MM = 2.0
# overlapping spheres every 2 mm sum to about 3.2x the chord of a tube of the same radius (measured)
SINUS_OVERLAP = 3.2
SINUS_PATH_MM = _sinus_path()


class InjectionError(ValueError):
    """An injection that cannot be given (more than the syringe, a device without a lumen)."""


@dataclass
class ClotState:
    """A clot as it is now: its spec, what is left of it and whether it still occludes."""

    spec: ClotSpec
    start_mm: float
    length_mm: float
    open_fraction: float = 0.0  # lumen area not taken by the clot (0: occlusive)
    passes: int = 0

    @property
    def present(self) -> bool:
        """Whether anything of the clot remains."""
        return self.length_mm > 0.05


@dataclass
class Extravasation:
    """Contrast leaking from a perforation: where, how much blood (mm³) and iodine (mg) so far."""

    cell: int
    centre_mm: np.ndarray
    leak_mm3_s: float
    volume_mm3: float = 0.0
    iodine_mg: float = 0.0


@dataclass
class _Emboli:
    same_territory: list[str] = field(default_factory=list)
    new_territory: list[str] = field(default_factory=list)


class Circulation:
    """Flow and contrast of one procedure (see the module docstring).

    Args:
        net: a sized network (its modifiers are reset here).
        clots: the occlusions.
        rng: the procedure's generator (emboli destinations).
    """

    def __init__(self, net: FlowNetwork, clots: tuple[ClotSpec, ...] | list[ClotSpec] = (),
                 rng: np.random.Generator | None = None) -> None:
        self.net = net
        self.tree = net.tree
        self.rng = rng if rng is not None else np.random.default_rng(0)
        for k, c in enumerate(clots):
            c.validate(self.tree, f"occlusion[{k}]")
        self.clots = [ClotState(c, c.start_mm, c.length_mm) for c in clots]
        self.emboli = _Emboli()
        self.extravasations: list[Extravasation] = []
        self.venous_mg_ml = np.zeros(VENOUS_STAGES)  # iodine in the venous stages, mg/mL
        self.dissected: list[int] = []
        self._device_radius = np.zeros(len(net.cell_a))
        self._balloon_cell = -1
        self._dirty = True
        self.flow_solves = 0
        self._apply()
        self.contrast = ContrastField(net)
        self._head_beds = np.array([k for k, lab in enumerate(net.bed_label)
                                    if any(x in lab for x in ("MCA", "ACA", "PCA", "OPH"))], dtype=np.int64)
        self.solution = self._solve()
        occl = self.net.solve(collaterals=False)
        self.baseline_bed_q = net.baseline.bed_q.copy()
        self.antegrade_bed_q = net.baseline_antegrade.bed_q.copy()
        ratio = occl.bed_q / np.maximum(self.antegrade_bed_q, 1e-12)
        self.at_risk = np.flatnonzero(ratio < 0.5)  # beds the occlusion deprives of antegrade flow

    # ------------------------------------------------------------------ modifiers
    def _apply(self) -> None:
        net = self.net
        net.blocked[:] = False
        net.radius_scale[:] = 1.0
        net.device_radius_mm[:] = self._device_radius
        for c in self.clots:
            if not c.present:
                continue
            cells = self._cells_between(c.spec.branch, c.start_mm, c.start_mm + c.length_mm)
            if c.open_fraction <= 0.0:
                net.blocked[cells] = True
            else:
                net.radius_scale[cells] = np.minimum(net.radius_scale[cells], math.sqrt(c.open_fraction))
        for lab in self.emboli.same_territory + self.emboli.new_territory:
            cells = net.cells_of(lab)
            net.blocked[cells[len(cells) // 2:]] = True
        for cell in self.dissected:
            net.radius_scale[cell] = min(net.radius_scale[cell], 0.6)
        if self._balloon_cell >= 0:
            net.blocked[self._balloon_cell] = True

    def _cells_between(self, label: str, s0: float, s1: float) -> np.ndarray:
        a = self.net.cell_at(label, s0 + 1e-6)
        b = self.net.cell_at(label, max(s1 - 1e-6, s0 + 1e-6))
        return np.arange(a, b + 1)

    def _solve(self) -> FlowSolution:
        self._apply()
        sol = self.net.solve()
        self.flow_solves += 1
        self.contrast.set_flow(sol)
        self._dirty = False
        return sol

    def _refresh(self) -> None:
        if self._dirty:
            self.solution = self._solve()

    def set_devices(self, shapes: list[tuple[np.ndarray, float]]) -> None:
        """Where the catheters are: (points mm (N, 3), outer radius mm) per device.

        The flow is re-solved only when the occupied cells or radii change (to 0.05 mm).
        """
        rad = np.zeros(len(self.net.cell_a))
        for pts, r in shapes:
            if len(pts) == 0 or r <= 0:
                continue
            seg = self.tree.query(np.asarray(pts, dtype=np.float64)).segment
            cells = self.net.seg_cell[seg]
            np.maximum.at(rad, cells, r)
        rad = np.round(rad / 0.05) * 0.05
        if not np.array_equal(rad, self._device_radius):
            self._device_radius = rad
            self._dirty = True

    def set_balloon(self, point_mm: np.ndarray | None) -> None:
        """Inflate the balloon guide at ``point_mm`` (flow arrest) or deflate it (None)."""
        cell = -1 if point_mm is None else int(self.net.seg_cell[self.tree.query(
            np.asarray(point_mm, dtype=np.float64)[None, :]).segment[0]])
        if cell != self._balloon_cell:
            self._balloon_cell = cell
            self._dirty = True

    # ------------------------------------------------------------------ contrast
    def inject(self, tip_mm: np.ndarray, volume_ml: float, rate_ml_s: float, syringe: str = "power",
               lumen: bool = True) -> Injection:
        """Start an injection from a catheter tip at ``tip_mm``.

        Raises:
            InjectionError: no lumen, a volume beyond the syringe, a non-positive rate.
        """
        if not lumen:
            raise InjectionError("this device has no lumen to inject through")
        cap = SYRINGE_ML.get(syringe)
        if cap is None:
            raise InjectionError(f"unknown syringe '{syringe}' (hand or power)")
        if not (0 < volume_ml <= cap):
            raise InjectionError(f"{volume_ml:g} mL does not fit the {syringe} syringe ({cap:g} mL)")
        if not (0 < rate_ml_s <= 30):
            raise InjectionError(f"injection rate must be in (0, 30] mL/s, got {rate_ml_s:g}")
        self._refresh()
        seg = int(self.tree.query(np.asarray(tip_mm, dtype=np.float64)[None, :]).segment[0])
        inj = Injection(int(self.net.seg_cell[seg]), rate_ml_s, volume_ml / rate_ml_s)
        self.contrast.inject(inj)
        return inj

    def advance(self, dt_s: float) -> None:
        """Move flow and contrast on by ``dt_s`` seconds."""
        self._refresh()
        for ex in self.extravasations:
            c = float(self.contrast.cell_iodine[ex.cell])
            ex.volume_mm3 += ex.leak_mm3_s * dt_s
            ex.iodine_mg += c * ex.leak_mm3_s * dt_s / 1000.0
        self.contrast.advance(dt_s)
        self._venous(dt_s)

    def _venous(self, dt_s: float) -> None:
        """The head's venous return: beds drain into compartments in series (the last: the sinuses)."""
        head = self._head_beds
        if head.size == 0:
            return
        q = self.solution.bed_q[head]
        inflow = float(np.sum(q * self.contrast.bed_iodine[head]))
        qt = float(np.sum(q))
        if inflow <= 1e-9 and float(self.venous_mg_ml.max()) <= 1e-6:
            self.venous_mg_ml[:] = 0.0
            return
        v_stage = max(self.net.baseline.bed_q[head].sum(), 1e-9) * VENOUS_MTT_S / VENOUS_STAGES
        n = max(1, int(np.ceil(dt_s / 0.05)))
        h = dt_s / n
        c = self.venous_mg_ml
        for _ in range(n):
            feed = np.concatenate([[inflow / max(qt, 1e-12)], c[:-1]])
            c += h * qt / v_stage * (feed - c)

    @property
    def time_s(self) -> float:
        """Simulation time of the contrast field, s."""
        return self.contrast.time_s

    def open_fraction_per_segment(self) -> np.ndarray:
        """Lumen fraction free of clot for every tree segment (the filling defect)."""
        t = self.tree
        out = np.ones(t.n_segments)
        for c in self.clots:
            if not c.present:
                continue
            bi = t.index(c.spec.branch)
            m = (t.seg_branch == bi)
            s_mid = t.seg_s0 + 0.5 * t.seg_len
            inside = m & (s_mid >= c.start_mm) & (s_mid <= c.start_mm + c.length_mm)
            out[inside] = np.minimum(out[inside], c.open_fraction)
        return out

    def segment_iodine(self) -> np.ndarray:
        """Iodine per tree segment for the renderer, mg/mL (clot segments dark)."""
        return self.contrast.segment_iodine(self.open_fraction_per_segment())

    def blobs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Iodine spheres: capillary blush of the head's beds and extravasations.

        Returns:
            centres (K, 3) mm, radii (K,) mm, iodine (K,) mg/mL of tissue.
        """
        net, t = self.net, self.tree
        cent, rad, conc = [], [], []
        bed_c = self.contrast.bed_iodine
        head = [t[lab].points_mm[-1] for lab in net.bed_label if any(s in lab for s in BLUSH_LABELS)]
        middle = np.mean(head, axis=0) if head else np.zeros(3)
        for k, lab in enumerate(net.bed_label):
            if bed_c[k] <= 0.5 or not any(s in lab for s in BLUSH_LABELS):
                continue  # below 0.5 mg/mL in the bed's blood the blush is invisible
            q_ml_min = self.baseline_bed_q[k] / ML_MIN
            v_tissue_ml = q_ml_min / TISSUE_CBF_ML_PER_ML_MIN
            v_blood_ml = self.contrast._vol[self.contrast._bed0 + k] / 1000.0
            r = (3.0 * v_tissue_ml * 1000.0 / (4.0 * math.pi)) ** (1.0 / 3.0)
            end = t[lab].points_mm[-1]
            inward = middle - end  # the tissue a cortical branch feeds lies beneath it
            dist = float(np.linalg.norm(inward))
            cent.append(end + inward / dist * min(0.9 * r, 0.5 * dist) if dist > 1e-6 else end)
            rad.append(r)
            conc.append(bed_c[k] * v_blood_ml / v_tissue_ml)
        if self.venous_mg_ml[-1] > 0.5 and self.tree.labels[0] == "AO_ASC":  # the venous phase: the sinuses
            n = len(SINUS_PATH_MM)
            cent += list(SINUS_PATH_MM)
            rad += [SINUS_RADIUS_MM] * n
            conc += [float(self.venous_mg_ml[-1]) / SINUS_OVERLAP] * n
        for ex in self.extravasations:
            if ex.iodine_mg <= 0:
                continue
            vol = max(ex.volume_mm3 * SUBARACHNOID_DILUTION, 1.0)
            cent.append(ex.centre_mm)
            rad.append((3.0 * vol / (4.0 * math.pi)) ** (1.0 / 3.0))
            conc.append(ex.iodine_mg / (vol / 1000.0))
        if not cent:
            return np.zeros((0, 3)), np.zeros(0), np.zeros(0)
        return np.array(cent), np.array(rad), np.array(conc)

    # ------------------------------------------------------------------ thrombectomy
    def clot_at(self, label: str) -> ClotState | None:
        """The first remaining clot on branch ``label``."""
        return next((c for c in self.clots if c.present and c.spec.branch == label), None)

    def apply_pass(self, clot: ClotState, outcome: PassOutcome) -> list[str]:
        """Apply a pass outcome to ``clot``; returns the branches newly occluded by fragments."""
        clot.passes += 1
        if outcome.captured >= 1.0:
            clot.length_mm = 0.0
        elif outcome.captured > 0.0:
            clot.length_mm *= 1.0 - outcome.captured
            clot.open_fraction = min(1.0, max(clot.open_fraction, 0.0) * 2.0 or RESIDUAL_OPEN_FRACTION)
        lodged: list[str] = []
        risk_beds = [self.net.bed_label[k] for k in self.at_risk
                     if self.net.bed_label[k] not in self.emboli.same_territory]
        for _ in range(outcome.fragments):
            if outcome.new_territory:
                dest = self._new_territory_bed(clot)
                if dest is not None:
                    self.emboli.new_territory.append(dest)
                    lodged.append(dest)
                    continue
            cortical = [b for b in risk_beds if "LSA" not in b and b not in lodged]
            if cortical:
                w = np.array([self.baseline_bed_q[self.net.bed_label.index(b)] for b in cortical])
                dest = cortical[int(self.rng.choice(len(cortical), p=w / w.sum()))]
                self.emboli.same_territory.append(dest)
                lodged.append(dest)
        self._dirty = True
        return lodged

    def _new_territory_bed(self, clot: ClotState) -> str | None:
        side = clot.spec.branch[:2]
        risk = {self.net.bed_label[k] for k in self.at_risk}
        cand = [b for b in self.net.bed_label if b.startswith(side) and "ACA_A2" in b and b not in risk]
        cand = [b for b in cand if b not in self.emboli.new_territory]
        if not cand:
            return None
        return cand[int(self.rng.integers(len(cand)))]

    def perforate(self, point_mm: np.ndarray) -> Extravasation:
        """A vessel perforated at ``point_mm``: blood and contrast leak from now on."""
        q = self.tree.query(np.asarray(point_mm, dtype=np.float64)[None, :])
        cell = int(self.net.seg_cell[q.segment[0]])
        leak = max(LEAK_FRACTION * abs(float(self.net.baseline.cell_q[cell])), 2.0)
        ex = Extravasation(cell, np.asarray(point_mm, dtype=np.float64).copy(), leak)
        self.extravasations.append(ex)
        return ex

    def dissect(self, point_mm: np.ndarray, length_mm: float = 10.0) -> None:
        """An intimal flap at ``point_mm`` narrows ``length_mm`` of the vessel (radius × 0.6)."""
        q = self.tree.query(np.asarray(point_mm, dtype=np.float64)[None, :])
        lab = self.tree.labels[int(q.branch[0])]
        s = float(q.arc_mm[0])
        self.dissected.extend(int(c) for c in self._cells_between(lab, max(s - length_mm / 2, 0.0), s + length_mm / 2))
        self._dirty = True

    # ------------------------------------------------------------------ reperfusion
    def reperfusion(self) -> tuple[float, str]:
        """(reperfused fraction of the territory at risk, mTICI), antegrade flow only.

        Antegrade: without the collaterals and the anastomoses of the circle of Willis, so
        that a basilar or carotid-T occlusion is not graded as perfused by the PCOM or the
        ACOM; weights are the beds' antegrade baseline flows.
        """
        if len(self.at_risk) == 0:
            return 1.0, "3"
        self._apply()
        sol = self.net.solve(collaterals=False)
        w = self.antegrade_bed_q[self.at_risk]
        frac = float(np.sum(w * np.minimum(1.0, sol.bed_q[self.at_risk] / w)) / np.sum(w))
        occlusive = any(c.present and c.open_fraction <= 0.0 for c in self.clots)
        distal = len(self.emboli.same_territory)
        return frac, tici_grade(frac, not occlusive, distal)
