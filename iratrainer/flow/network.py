"""A 1-D flow network on the vessel tree: Poiseuille resistances, terminal beds, collaterals.

The tree's centerlines are cut into **cells** (at most ``cell_mm`` long, never across a
junction); cell ends are the network's **nodes**. Each cell is a Poiseuille resistance

    R = 8 μ / π · ∫ ds / r(s)⁴        (Pa·s/mm³, r in mm, μ in Pa·s)

integrated exactly over each linearly tapered centerline segment. Every branch end that
no child leaves is an **outlet** with a **terminal bed**: a resistance to the venous
pressure. Anastomoses of the tree (ACOM, PCOM, the second vertebral artery) join the end
of one branch to the nearest node of the other, so the circle of Willis is a real loop.

Boundary conditions: a **flow source at the aortic root** (the cardiac output, or for a
partial tree its published share) and the venous pressure behind every bed. Beds are
**sized** so that, with the mean arterial pressure at the root, each bed carries its
target flow: targets are published territory flows (:data:`TERRITORY_FLOW_ML_MIN`),
shared among the beds of a territory in proportion to r³ (Murray's law); beds outside
every named territory share the remainder in the same way. The sizing is done once
on the full network: with the root at the mean arterial pressure and every outlet
drawing its target flow, one linear solve gives the outlet pressures, and Ohm's law the
bed resistances (anastomoses included; exact, no iteration).

Modifiers change cell conductances: a clot or an inflated balloon blocks a cell (its
conductance drops by 1e12, so the matrix stays regular and "no flow" reads below 1e-6 of
baseline); a residual stenosis scales the radius; a catheter in a cell leaves the
annulus between it and the wall (concentric annulus Poiseuille flow), so a catheter
wedged in a small vessel nearly stops it.

Collaterals (ASITN/SIR grade 0-4) are leptomeningeal links from the distal ends of the
MCA cortical branches to the nearest ACA or PCA cortical branch end of the same side,
one per divided cortical pair (the branch that reaches the watershed), with a
resistance that falls with the grade. When M1 is occluded they refill the territory
retrogradely. Units: mm, s, Pa; flows in mm³/s (1 mL/min = 1000/60 mm³/s).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from iratrainer import libm
from iratrainer.anatomy.tree import VesselTree
from iratrainer.errors import IratrainerError

__all__ = [
    "BLOOD_VISCOSITY_PA_S", "MAP_MMHG", "VENOUS_MMHG", "ML_MIN", "MMHG", "TERRITORY_FLOW_ML_MIN",
    "COLLATERAL_RESISTANCE_FACTOR", "FlowError", "FlowNetwork", "FlowSolution", "poiseuille_resistance",
    "annulus_resistance",
]

BLOOD_VISCOSITY_PA_S = 3.5e-3  # apparent viscosity of whole blood in large arteries (3-4 mPa·s)
MAP_MMHG = 93.0  # mean arterial pressure
VENOUS_MMHG = 5.0  # pressure behind the capillary beds (venous / intracranial)
MMHG = 133.322  # Pa
ML_MIN = 1000.0 / 60.0  # mm³/s per mL/min
MIN_BED_DROP_MMHG = 20.0  # pressure left across a sized capillary bed, at least
BLOCKED_SCALE = 1e-12  # conductance factor of a blocked cell

# Published flows (mL/min) into each named territory; beds of a territory share its flow
# ∝ r³. Cerebral figures: ICA 167-399, MCA ~170 (REFERENCE.md "Flow and contrast"); ECA,
# vertebro-basilar, arm and leg flows from duplex/PC-MRI series of healthy adults; the
# remainder of a 5 L/min cardiac output goes to a lumped visceral bed on the abdominal aorta.
TERRITORY_FLOW_ML_MIN: dict[str, float] = {
    "L_MCA_M1": 170.0, "R_MCA_M1": 170.0,
    "L_ACA_A2": 70.0, "R_ACA_A2": 70.0,
    "L_OPH": 12.0, "R_OPH": 12.0,
    "L_ECA": 150.0, "R_ECA": 150.0,
    "BA": 150.0,
    "L_SCA": 220.0, "R_SCA": 220.0,
    "L_CFA": 350.0, "R_CFA": 350.0,
}
CARDIAC_OUTPUT_ML_MIN = 5000.0
VISCERAL_BED = ("AO_ABD", 0.05)  # lumped coeliac/mesenteric/renal bed: (branch, arc fraction)
# Murray scaling for a partial tree (segmented head): ICA 255 mL/min at r = 2.7 mm.
MURRAY_REF = (255.0, 2.7)

# Collateral link resistance as a multiple of the resistance of the MCA bed it feeds. On the
# default atlas, M1 occluded, the collaterals then carry about 2 / 6 / 12 / 18 % of the
# territory's baseline flow for grades 1-4 (`iratrainer validate flow` measures it); the
# ceiling (~24 %) is set by the resistance of the donor cortical branches.
COLLATERAL_RESISTANCE_FACTOR: dict[int, float] = {0: math.inf, 1: 10.0, 2: 3.0, 3: 1.0, 4: 0.3}


class FlowError(IratrainerError):
    """The flow network cannot be built or solved (no outlet, disconnected tree)."""


def poiseuille_resistance(length_mm: np.ndarray, ra_mm: np.ndarray, rb_mm: np.ndarray,
                          mu_pa_s: float = BLOOD_VISCOSITY_PA_S) -> np.ndarray:
    """Resistance of a linearly tapered tube, Pa·s/mm³: 8μL(ra²+ra·rb+rb²) / (3π ra³ rb³).

    The exact integral of 8μ/(π r⁴) along a cone; equal to 8μL/(πr⁴) when ra = rb.
    """
    ra = np.asarray(ra_mm, dtype=np.float64)
    rb = np.asarray(rb_mm, dtype=np.float64)
    # r³ from the C library (iratrainer.libm): the same last bit on every machine
    return (8.0 * mu_pa_s * np.asarray(length_mm) * (ra * ra + ra * rb + rb * rb)
            / (3.0 * np.pi * libm.power(ra, 3.0) * libm.power(rb, 3.0)))


def annulus_resistance(length_mm: float, r_vessel_mm: float, r_device_mm: float,
                       mu_pa_s: float = BLOOD_VISCOSITY_PA_S) -> float:
    """Poiseuille resistance of the annulus between a concentric device and the wall, Pa·s/mm³.

    Q = π ΔP / (8 μ L) · [R⁴ − a⁴ − (R² − a²)² / ln(R/a)]. Infinite when the device fills
    the vessel (a ≥ R: wedged).
    """
    big_r, a = float(r_vessel_mm), float(r_device_mm)
    if a <= 0.0:
        return 8.0 * mu_pa_s * length_mm / (math.pi * big_r ** 4)
    if a >= big_r * 0.999:
        return math.inf
    g = big_r ** 4 - a ** 4 - (big_r ** 2 - a ** 2) ** 2 / math.log(big_r / a)
    return 8.0 * mu_pa_s * length_mm / (math.pi * max(g, 1e-30))


@dataclass(frozen=True)
class FlowSolution:
    """A steady solution: node pressures (Pa), cell and bed flows (mm³/s), link flows.

    ``cell_q`` is signed: positive in the direction of the centerline (the direction of
    flow in the healthy tree), negative when the flow is retrograde.
    """

    pressure_pa: np.ndarray
    cell_q: np.ndarray
    bed_q: np.ndarray
    link_q: np.ndarray
    root_pressure_pa: float


@dataclass
class _Cells:
    branch: list[int] = field(default_factory=list)
    seg0: list[int] = field(default_factory=list)  # first global segment (inclusive)
    seg1: list[int] = field(default_factory=list)  # last global segment (exclusive)
    a: list[int] = field(default_factory=list)  # upstream node
    b: list[int] = field(default_factory=list)  # downstream node


class FlowNetwork:
    """The network of one vessel tree (see the module docstring).

    Args:
        tree: the vessels.
        collateral_grade: ASITN/SIR grade 0-4 of the leptomeningeal collaterals.
        inflow_ml_min: flow into the root; default 5 L/min when the root is the ascending
            aorta, otherwise the Murray estimate from the root radius.
        territory_flow_ml_min: target flows per territory (defaults above).
        bed_resistance: explicit bed resistances by outlet label (Pa·s/mm³), skipping the
            sizing (used by the analytic checks).
        cell_mm: longest cell, mm.
    """

    def __init__(self, tree: VesselTree, collateral_grade: int = 2, inflow_ml_min: float | None = None,
                 territory_flow_ml_min: dict[str, float] | None = None,
                 bed_resistance: dict[str, float] | None = None, cell_mm: float = 2.0) -> None:
        if collateral_grade not in COLLATERAL_RESISTANCE_FACTOR:
            raise FlowError(f"collateral grade must be 0-4, got {collateral_grade!r}")
        self.tree = tree
        self.collateral_grade = int(collateral_grade)
        self.cell_mm = float(cell_mm)
        self._build_cells()
        self._build_outlets()
        self._build_links()
        n_cells = len(self.cell_a)
        self.radius_scale = np.ones(n_cells)  # residual stenosis (clot, dissection)
        self.blocked = np.zeros(n_cells, dtype=bool)  # clot or inflated balloon
        self.device_radius_mm = np.zeros(n_cells)  # largest catheter in the cell
        if self.root_is_aorta:
            default_in = CARDIAC_OUTPUT_ML_MIN
        else:
            r0 = float(tree.branches[0].radii_mm[0])
            default_in = MURRAY_REF[0] * (r0 / MURRAY_REF[1]) ** 3
        self.inflow_mm3_s = (inflow_ml_min if inflow_ml_min is not None else default_in) * ML_MIN
        self.link_r = np.zeros(0)
        if bed_resistance is not None:
            self.bed_r = np.array([bed_resistance[lab] for lab in self.bed_label], dtype=np.float64)
            self.bed_target_mm3_s = np.full(len(self.bed_r), np.nan)
        else:
            self._size_beds(territory_flow_ml_min or TERRITORY_FLOW_ML_MIN)
        self._set_links()
        anast = {self.tree.index(a) for a, _ in self.tree.anastomoses}
        self.anastomosis_cells = np.flatnonzero(np.isin(self.cell_branch, list(anast)))
        self.baseline = self.solve()
        self.baseline_antegrade = self.solve(collaterals=False)

    # ------------------------------------------------------------------ construction
    def _build_cells(self) -> None:
        t = self.tree
        breaks: dict[int, set[int]] = {i: {0, len(b.points_mm) - 1} for i, b in enumerate(t.branches)}
        for b in t.branches[1:]:
            breaks[t.index(b.parent)].add(b.parent_index)  # type: ignore[arg-type]
        self._anast_attach: list[tuple[int, int, int]] = []  # (branch a, branch b, point on b)
        for la, lb in t.anastomoses:
            ia, ib = t.index(la), t.index(lb)
            end = t.branches[ia].points_mm[-1]
            k = int(np.argmin(np.linalg.norm(t.branches[ib].points_mm - end, axis=1)))
            breaks[ib].add(k)
            self._anast_attach.append((ia, ib, k))
        seg_start = np.concatenate([[0], np.cumsum([len(b.points_mm) - 1 for b in t.branches])])
        node_of: dict[tuple[int, int], int] = {}
        n_nodes = 0

        def node(bi: int, k: int) -> int:
            nonlocal n_nodes
            key = (bi, k)
            if key not in node_of:
                node_of[key] = n_nodes
                n_nodes += 1
            return node_of[key]

        cells = _Cells()
        for bi, b in enumerate(t.branches):
            if b.parent is not None:  # the child's first point is the parent's junction node
                node_of[(bi, 0)] = node(t.index(b.parent), b.parent_index)
            arc = b.arc_mm
            cuts = sorted(breaks[bi])
            for k0, k1 in zip(cuts[:-1], cuts[1:], strict=True):
                n_sub = max(1, int(math.ceil((arc[k1] - arc[k0]) / self.cell_mm - 1e-9)))
                idx = np.unique(np.round(np.linspace(k0, k1, n_sub + 1)).astype(int))
                for p0, p1 in zip(idx[:-1], idx[1:], strict=True):
                    cells.branch.append(bi)
                    cells.seg0.append(int(seg_start[bi] + p0))
                    cells.seg1.append(int(seg_start[bi] + p1))
                    cells.a.append(node(bi, int(p0)))
                    cells.b.append(node(bi, int(p1)))
        for ia, ib, k in self._anast_attach:  # the anastomosis ends on the other vessel's node
            last = len(t.branches[ia].points_mm) - 1
            old = node_of[(ia, last)]
            new = node(ib, k)
            cells.a = [new if n == old else n for n in cells.a]
            cells.b = [new if n == old else n for n in cells.b]
            node_of[(ia, last)] = new
        # renumber nodes densely
        used = np.unique(np.concatenate([cells.a, cells.b]))
        remap = {int(n): i for i, n in enumerate(used)}
        self.n_nodes = len(used)
        self.cell_branch = np.array(cells.branch, dtype=np.int32)
        self.cell_seg0 = np.array(cells.seg0, dtype=np.int64)
        self.cell_seg1 = np.array(cells.seg1, dtype=np.int64)
        self.cell_a = np.array([remap[n] for n in cells.a], dtype=np.int64)
        self.cell_b = np.array([remap[n] for n in cells.b], dtype=np.int64)
        self._node_of = {k: remap[v] for k, v in node_of.items() if v in remap}
        # geometry per cell
        sl, ra, rb = t.seg_len, t.seg_ra, t.seg_rb
        self.seg_cell = np.empty(t.n_segments, dtype=np.int64)
        n = len(self.cell_a)
        self.cell_len_mm = np.zeros(n)
        self.cell_volume_mm3 = np.zeros(n)
        self.cell_r0 = np.zeros(n)  # Poiseuille resistance at full lumen
        self.cell_radius_mm = np.zeros(n)
        r_seg = poiseuille_resistance(sl, ra, rb)
        v_seg = np.pi * sl * (ra * ra + ra * rb + rb * rb) / 3.0
        for c in range(n):
            s = slice(self.cell_seg0[c], self.cell_seg1[c])
            self.seg_cell[s] = c
            self.cell_len_mm[c] = sl[s].sum()
            self.cell_volume_mm3[c] = v_seg[s].sum()
            self.cell_r0[c] = r_seg[s].sum()
            self.cell_radius_mm[c] = math.sqrt(self.cell_volume_mm3[c] / (math.pi * self.cell_len_mm[c]))
        self.root_node = self._node_of[(0, 0)]
        self.root_is_aorta = t.labels[0] == "AO_ASC"

    def node_at(self, label: str, point_index: int) -> int:
        """The network node at point ``point_index`` of branch ``label`` (must be a cell end)."""
        return self._node_of[(self.tree.index(label), point_index)]

    def cells_of(self, label: str) -> np.ndarray:
        """Cell indices of branch ``label``, proximal to distal."""
        return np.flatnonzero(self.cell_branch == self.tree.index(label))

    def cell_at(self, label: str, arc_mm: float) -> int:
        """The cell containing arc length ``arc_mm`` of branch ``label``."""
        t = self.tree
        b = t[label]
        s = float(np.clip(arc_mm, 0.0, b.length_mm))
        k = int(np.clip(np.searchsorted(b.arc_mm, s, side="right") - 1, 0, len(b.arc_mm) - 2))
        seg0 = int(np.flatnonzero(t.seg_branch == t.index(label))[0])
        return int(self.seg_cell[seg0 + k])

    def _build_outlets(self) -> None:
        t = self.tree
        anast_start = {a for a, _ in t.anastomoses}
        labels, nodes, radii = [], [], []
        for bi, b in enumerate(t.branches):
            last = len(b.points_mm) - 1
            if b.label in anast_start:
                continue
            if any(t[c].parent_index == last for c in t.children(b.label)):
                continue
            labels.append(b.label)
            nodes.append(self._node_of[(bi, last)])
            radii.append(float(b.radii_mm[-1]))
        if t.labels[0] == "AO_ASC" and VISCERAL_BED[0] in t:
            lab, frac = VISCERAL_BED
            bi = t.index(lab)
            arc = t[lab].arc_mm
            k = int(np.searchsorted(arc, frac * arc[-1]))
            cand = [p for (b2, p) in self._node_of if b2 == bi]
            k = min(cand, key=lambda p: abs(p - k))
            labels.append("VISCERAL")
            nodes.append(self._node_of[(bi, k)])
            radii.append(float(t[lab].radii_mm[k]))
        if not labels:
            raise FlowError("the vessel tree has no outlet (every branch end is joined to another vessel)")
        self.bed_label: tuple[str, ...] = tuple(labels)
        self.bed_node = np.array(nodes, dtype=np.int64)
        self.bed_radius_mm = np.array(radii)

    def _build_links(self) -> None:
        """Leptomeningeal links: MCA cortical pair ends → nearest ACA/PCA cortical end, same side."""
        t = self.tree
        self.link_a: list[int] = []  # bed index of the MCA end
        self.link_b: list[int] = []
        bed_idx = {lab: i for i, lab in enumerate(self.bed_label)}
        for side in ("L", "R"):
            mca = [lab for lab in self.bed_label if lab.startswith(f"{side}_MCA_M2_") and lab.endswith("_1")]
            donors = [lab for lab in self.bed_label
                      if (lab.startswith(f"{side}_ACA_A2_") or lab.startswith(f"{side}_PCA_P1_"))]
            if not donors:
                continue
            for prefix in (f"{side}_ACA_A2_", f"{side}_PCA_P1_"):
                group = [d for d in donors if d.startswith(prefix)]
                if not group:
                    continue
                dpos = np.array([t[d].points_mm[-1] for d in group])
                for m in mca:
                    k = int(np.argmin(np.linalg.norm(dpos - t[m].points_mm[-1], axis=1)))
                    self.link_a.append(bed_idx[m])
                    self.link_b.append(bed_idx[group[k]])
        self.link_a_arr = np.array(self.link_a, dtype=np.int64)
        self.link_b_arr = np.array(self.link_b, dtype=np.int64)

    def _set_links(self) -> None:
        f = COLLATERAL_RESISTANCE_FACTOR[self.collateral_grade]
        if len(self.link_r) != len(self.link_a):  # explicit beds: links from the bed resistances
            self.link_r = np.array([f * self.bed_r[a] for a in self.link_a], dtype=np.float64)
        if not math.isfinite(f):
            self.link_a, self.link_b = [], []
            self.link_r = np.zeros(0)
            self.link_a_arr = np.zeros(0, dtype=np.int64)
            self.link_b_arr = np.zeros(0, dtype=np.int64)

    # ------------------------------------------------------------------ sizing
    def _size_beds(self, territories: dict[str, float]) -> None:
        t = self.tree
        n_beds = len(self.bed_label)
        key_of = []
        for lab in self.bed_label:
            key = None
            if lab != "VISCERAL":
                for anc in t.ancestors(lab):
                    if anc in territories:
                        key = anc
                        break
            key_of.append(key)
        target = np.zeros(n_beds)
        r3 = libm.power(self.bed_radius_mm, 3.0)
        keys = sorted({k for k in key_of if k is not None})
        named = sum(territories[k] for k in keys) * ML_MIN
        # a partial tree (a segmented head) may carry less than the named territories' sum:
        # they then share 95 % of the inflow in their published proportions
        scale = min(1.0, 0.95 * self.inflow_mm3_s / named) if named > 0 else 1.0
        assigned = 0.0
        for key in keys:
            members = [i for i, k in enumerate(key_of) if k == key]
            share = r3[members] / r3[members].sum()
            target[members] = territories[key] * ML_MIN * scale * share
            assigned += territories[key] * ML_MIN * scale
        rest = [i for i, k in enumerate(key_of) if k is None]
        remainder = self.inflow_mm3_s - assigned
        if rest:
            if remainder <= 0:
                raise FlowError("territory flows exceed the inflow; nothing left for the other beds")
            if "VISCERAL" in self.bed_label:
                target[self.bed_label.index("VISCERAL")] = remainder
            else:
                target[rest] = remainder * r3[rest] / r3[rest].sum()
        else:
            self.inflow_mm3_s = assigned
        self.bed_target_mm3_s = target
        # exact sizing: with the root at MAP and each outlet drawing its target flow, one
        # linear solve gives every outlet's pressure; the bed resistance follows from Ohm's
        # law. Collateral links are sized from the nominal bed resistance first, so that
        # they are part of the sized network. A bed whose target would need more pressure
        # than there is (thin, long branches) gets 20 % less, the rest going to the lumped
        # bed, until every bed keeps at least MIN_BED_DROP_MMHG across it.
        n = self.n_nodes
        nominal = (MAP_MMHG - VENOUS_MMHG) * MMHG / np.maximum(target, 1e-12)
        f = COLLATERAL_RESISTANCE_FACTOR[self.collateral_grade]
        use_links = bool(self.link_a) and math.isfinite(f)
        self.link_r = np.array([f * nominal[a] for a in self.link_a]) if use_links else np.zeros(0)
        g = 1.0 / self.cell_r0
        i = [self.cell_a, self.cell_b, self.cell_a, self.cell_b]
        j = [self.cell_a, self.cell_b, self.cell_b, self.cell_a]
        v = [g, g, -g, -g]
        if use_links:
            la, lb, gl = self.bed_node[self.link_a_arr], self.bed_node[self.link_b_arr], 1.0 / self.link_r
            i += [la, lb, la, lb]
            j += [la, lb, lb, la]
            v += [gl, gl, -gl, -gl]
        mat = sp.coo_matrix((np.concatenate(v), (np.concatenate(i), np.concatenate(j))), shape=(n, n)).tolil()
        mat[self.root_node, :] = 0.0
        mat[self.root_node, self.root_node] = 1.0
        csr = mat.tocsr()
        lu = spla.splu(mat.tocsc())
        lumped = self.bed_label.index("VISCERAL") if "VISCERAL" in self.bed_label else -1
        for _ in range(40):
            rhs = -np.bincount(self.bed_node, weights=target, minlength=n)
            rhs[self.root_node] = MAP_MMHG * MMHG
            p = lu.solve(rhs)
            p += lu.solve(rhs - csr @ p)
            dp = p[self.bed_node] - VENOUS_MMHG * MMHG
            short = dp < MIN_BED_DROP_MMHG * MMHG
            if not np.any(short):
                break
            cut = 0.2 * target[short]
            target[short] -= cut
            if lumped >= 0 and not short[lumped]:
                target[lumped] += cut.sum()
        else:
            bad = self.bed_label[int(np.argmin(dp))]
            raise FlowError(f"the territory flows cannot be reached at {MAP_MMHG:g} mmHg (bed {bad})")
        self.bed_target_mm3_s = target
        self.inflow_mm3_s = float(target.sum())
        self.bed_r = dp / target

    # ------------------------------------------------------------------ solving
    def cell_resistance(self) -> np.ndarray:
        """Current resistance of every cell, Pa·s/mm³ (modifiers applied)."""
        r = self.cell_r0.copy()
        narrowed = np.flatnonzero(self.radius_scale != 1.0)  # r⁴ from the C library (iratrainer.libm)
        r[narrowed] = self.cell_r0[narrowed] / libm.power(self.radius_scale[narrowed], 4.0)
        dev = self.device_radius_mm
        for c in np.flatnonzero(dev > 0):
            rv = self.cell_radius_mm[c] * self.radius_scale[c]
            ra = annulus_resistance(self.cell_len_mm[c], rv, dev[c])
            r[c] = ra if math.isfinite(ra) else r[c] / BLOCKED_SCALE
        r = np.where(self.blocked, r / BLOCKED_SCALE, r)
        return r

    def solve(self, collaterals: bool = True) -> FlowSolution:
        """Steady flows with the root inflow as a flow source.

        Args:
            collaterals: include the leptomeningeal links and the anastomoses of the
                circle of Willis (False: antegrade flow only, through the parent vessels,
                what the reperfusion grade counts).
        """
        if collaterals:
            return self._solve(root_pressure_pa=None)
        saved = self.link_a, self.link_b, self.blocked.copy()
        self.link_a, self.link_b = [], []
        self.blocked[self.anastomosis_cells] = True
        try:
            sol = self._solve(root_pressure_pa=None)
        finally:
            self.link_a, self.link_b, self.blocked = saved
        return FlowSolution(sol.pressure_pa, sol.cell_q, sol.bed_q, np.zeros(len(self.link_a)), sol.root_pressure_pa)

    def _solve(self, root_pressure_pa: float | None) -> FlowSolution:
        n = self.n_nodes
        g_cell = 1.0 / self.cell_resistance()
        g_bed = 1.0 / self.bed_r
        la = self.bed_node[np.asarray(self.link_a, dtype=np.int64)] if self.link_a else np.zeros(0, np.int64)
        lb = self.bed_node[np.asarray(self.link_b, dtype=np.int64)] if self.link_b else np.zeros(0, np.int64)
        g_link = 1.0 / self.link_r if len(la) and len(self.link_r) else np.zeros(0)
        la, lb = la[: len(g_link)], lb[: len(g_link)]
        i = np.concatenate([self.cell_a, self.cell_b, self.cell_a, self.cell_b, la, lb, la, lb])
        j = np.concatenate([self.cell_a, self.cell_b, self.cell_b, self.cell_a, la, lb, lb, la])
        v = np.concatenate([g_cell, g_cell, -g_cell, -g_cell, g_link, g_link, -g_link, -g_link])
        diag = np.bincount(self.bed_node, weights=g_bed, minlength=n)
        mat = sp.coo_matrix((v, (i, j)), shape=(n, n)).tocsr() + sp.diags(diag)
        rhs = np.bincount(self.bed_node, weights=g_bed * VENOUS_MMHG * MMHG, minlength=n)
        if root_pressure_pa is None:
            rhs[self.root_node] += self.inflow_mm3_s
        else:  # Dirichlet row at the root
            mat = mat.tolil()
            mat[self.root_node, :] = 0.0
            mat[self.root_node, self.root_node] = 1.0
            mat = mat.tocsr()
            rhs[self.root_node] = root_pressure_pa
        lu = spla.splu(mat.tocsc())
        p = lu.solve(rhs)
        p += lu.solve(rhs - mat @ p)  # one step of iterative refinement (blocked cells: 1e12 contrast)
        if not np.all(np.isfinite(p)):
            raise FlowError("the flow network is singular (a part of the tree has no outlet)")
        q = (p[self.cell_a] - p[self.cell_b]) * g_cell
        bq = (p[self.bed_node] - VENOUS_MMHG * MMHG) * g_bed
        lq = (p[la] - p[lb]) * g_link if len(g_link) else np.zeros(0)
        return FlowSolution(p, q, bq, lq, float(p[self.root_node]))

    # ------------------------------------------------------------------ queries
    def junction_imbalance(self, sol: FlowSolution) -> float:
        """Largest |Σ flows| at a node relative to the flow through it.

        The flow through a node is floored at 1e-6 of the inflow (below that is "no flow").
        """
        n = self.n_nodes
        net = np.bincount(self.cell_a, weights=-sol.cell_q, minlength=n)
        net += np.bincount(self.cell_b, weights=sol.cell_q, minlength=n)
        net -= np.bincount(self.bed_node, weights=sol.bed_q, minlength=n)
        if len(sol.link_q):
            la = self.bed_node[self.link_a_arr[: len(sol.link_q)]]
            lb = self.bed_node[self.link_b_arr[: len(sol.link_q)]]
            net -= np.bincount(la, weights=sol.link_q, minlength=n)
            net += np.bincount(lb, weights=sol.link_q, minlength=n)
        net[self.root_node] += self.inflow_mm3_s
        through = np.bincount(self.cell_a, weights=np.abs(sol.cell_q), minlength=n)
        through += np.bincount(self.cell_b, weights=np.abs(sol.cell_q), minlength=n)
        return float(np.max(np.abs(net) / np.maximum(through, 1e-6 * self.inflow_mm3_s)))

    def branch_flow_ml_min(self, sol: FlowSolution, label: str) -> float:
        """Flow entering branch ``label`` (its first cell), mL/min; negative when retrograde."""
        return float(sol.cell_q[self.cells_of(label)[0]] / ML_MIN)

    def mean_velocity_cm_s(self, sol: FlowSolution, label: str) -> float:
        """Mean velocity Q / (π r²) in the first cell of ``label``, cm/s."""
        c = self.cells_of(label)[0]
        return float(sol.cell_q[c] / (math.pi * self.cell_radius_mm[c] ** 2) / 10.0)

    def territory_beds(self, label: str) -> np.ndarray:
        """Indices of the beds downstream of ``label`` in the tree."""
        sub = set(self.tree.subtree(label))
        return np.array([i for i, lab in enumerate(self.bed_label) if lab in sub], dtype=np.int64)
