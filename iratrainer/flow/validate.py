"""``iratrainer validate flow``: the flow, contrast and thrombectomy models against references.

Each check yields ``{"check", "value", "reference", "error", "tolerance", "passed", ...}``:

* ``junction_conservation``: Σ flows at every node of the atlas network, healthy and with
  the left M1 occluded, relative to the flow through the node (≤ 1e-6).
* ``poiseuille_parallel``: a trunk feeding two parallel tubes into known beds: the flow
  split and the root pressure against the analytic resistance network (≤ 1e-6).
* ``published_flows``: ICA flows within 167-399 mL/min and MCA flows within 10 % of
  170 mL/min (REFERENCE.md); mean velocities are reported.
* ``bolus_transit``: mean transit of a bolus through a straight 200 mm tube against
  length / mean velocity (≤ 5 %).
* ``iodine_conservation``: iodine leaving a tube = iodine injected (≤ 1 %).
* ``collateral_grades``: collateral share of the occluded MCA territory's baseline flow
  for grades 0-4: zero at 0, increasing with the grade.
* ``tici_from_fractions``: the grade of known reperfused fractions, and the reperfused
  fraction when emboli occlude beds of known weight (≤ 2 %).
* ``determinism``: the same seed gives the same pass outcomes and bit-identical contrast.
* ``first_pass_effect_*``: over 200 seeded first passes with ideal technique on a mixed
  M1 clot, the share reaching mTICI ≥ 2c within the published range.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from iratrainer.anatomy.tree import Branch, VesselTree
from iratrainer.flow.circulation import Circulation
from iratrainer.flow.contrast import ContrastField, Injection
from iratrainer.flow.network import ML_MIN, MMHG, VENOUS_MMHG, FlowNetwork, poiseuille_resistance
from iratrainer.flow.thrombectomy import ClotSpec, PassTechnique, pass_outcome, tici_grade

__all__ = ["run_checks", "FPE_RANGES", "first_pass_rate", "straight_tube"]

# technique → (published first-pass effect, accepted range), REFERENCE.md "Thrombectomy"
FPE_RANGES: dict[str, tuple[float, tuple[float, float], PassTechnique]] = {
    "stent_retriever_conventional_guide": (0.288, (0.20, 0.38), PassTechnique("stent_retriever")),
    "stent_retriever_balloon_guide_aspiration": (0.561, (0.46, 0.66), PassTechnique(
        "stent_retriever", balloon_inflated=True, distal_aspiration=True)),
    "direct_aspiration": (0.35, (0.25, 0.45), PassTechnique("aspiration")),
}
DEFAULT_CLOT = ClotSpec("L_MCA_M1", 8.0, 8.0, "mixed")


def _row(check: str, value: float, reference: float, error: float, tol: float, unit: str, workload: str,
         **extra: Any) -> dict[str, Any]:
    return {"check": check, "value": value, "reference": reference, "error": error, "tolerance": tol,
            "passed": bool(error <= tol), "unit": unit, "workload": workload, **extra}


def straight_tube(length_mm: float = 200.0, radius_mm: float = 2.0, n: int = 401) -> VesselTree:
    """A straight tube along x (one branch)."""
    pts = np.c_[np.linspace(0.0, length_mm, n), np.zeros(n), np.zeros(n)]
    return VesselTree([Branch("TUBE", None, 0, pts, np.full(n, radius_mm))])


def _atlas_net(grade: int = 2) -> FlowNetwork:
    from iratrainer.anatomy.atlas import build_atlas

    return FlowNetwork(build_atlas(), collateral_grade=grade)


def check_conservation(net: FlowNetwork) -> Iterator[dict[str, Any]]:
    """Kirchhoff at every node, healthy and occluded."""
    healthy = net.junction_imbalance(net.baseline)
    circ = Circulation(net, [DEFAULT_CLOT])
    occluded = net.junction_imbalance(circ.solution)
    worst = max(healthy, occluded)
    yield _row("junction_conservation", worst, 0.0, worst, 1e-6, "relative imbalance",
               f"atlas network ({net.n_nodes} nodes, {len(net.cell_a)} cells), healthy and left M1 occluded",
               healthy=healthy, occluded=occluded)


def check_parallel() -> Iterator[dict[str, Any]]:
    """A trunk and two parallel tubes with known beds, against the analytic network."""
    def line(p0: np.ndarray, p1: np.ndarray, n: int = 41) -> np.ndarray:
        return p0 + np.linspace(0.0, 1.0, n)[:, None] * (p1 - p0)

    o, j = np.zeros(3), np.array([50.0, 0.0, 0.0])
    a_end, b_end = np.array([130.0, 20.0, 0.0]), np.array([110.0, -20.0, 0.0])
    rt, r1, r2 = 2.0, 1.5, 1.0
    tree = VesselTree([Branch("TRUNK", None, 0, line(o, j), np.full(41, rt)),
                       Branch("A", "TRUNK", 40, line(j, a_end), np.full(41, r1)),
                       Branch("B", "TRUNK", 40, line(j, b_end), np.full(41, r2))])
    rb = {"A": 2.0, "B": 5.0}  # Pa·s/mm³
    q_in = 4.0 * ML_MIN * 60.0  # 4 mL/s
    net = FlowNetwork(tree, inflow_ml_min=q_in / ML_MIN, bed_resistance=rb)
    sol = net.baseline
    la, lb = float(np.linalg.norm(a_end - j)), float(np.linalg.norm(b_end - j))
    ra = float(poiseuille_resistance(la, r1, r1)) + rb["A"]
    rbb = float(poiseuille_resistance(lb, r2, r2)) + rb["B"]
    rt_ = float(poiseuille_resistance(50.0, rt, rt))
    qa_ref = q_in * rbb / (ra + rbb)
    p_root_ref = VENOUS_MMHG * MMHG + q_in * (rt_ + ra * rbb / (ra + rbb))
    qa = float(sol.bed_q[net.bed_label.index("A")])
    err = max(abs(qa / qa_ref - 1.0), abs(sol.root_pressure_pa / p_root_ref - 1.0))
    yield _row("poiseuille_parallel", qa, qa_ref, err, 1e-6, "mm3/s in branch A (relative error)",
               "trunk r=2 mm L=50 mm into tubes r=1.5 mm and r=1 mm with beds 2 and 5 Pa.s/mm3, 4 mL/s",
               root_pressure_pa=sol.root_pressure_pa, root_pressure_ref_pa=p_root_ref)


def check_published(net: FlowNetwork) -> Iterator[dict[str, Any]]:
    """ICA and MCA flows against REFERENCE.md."""
    sol = net.baseline
    flows = {lab: net.branch_flow_ml_min(sol, lab) for lab in ("L_ICA", "R_ICA", "L_MCA_M1", "R_MCA_M1")}
    vel = {lab: net.mean_velocity_cm_s(sol, lab) for lab in ("L_CCA", "L_ICA", "L_MCA_M1")}
    ica_err = max(max(0.0, 167.0 - flows[k], flows[k] - 399.0) for k in ("L_ICA", "R_ICA"))
    yield _row("published_flows_ica", flows["L_ICA"], 283.0, ica_err, 0.0, "mL/min (distance outside 167-399)",
               "atlas, healthy", flows=flows, velocities_cm_s=vel)
    mca_err = max(abs(flows[k] / 170.0 - 1.0) for k in ("L_MCA_M1", "R_MCA_M1"))
    yield _row("published_flows_mca", flows["L_MCA_M1"], 170.0, mca_err, 0.10, "mL/min (relative error)",
               "atlas, healthy", flows=flows)


def _outlet_series(tube_len: float = 200.0, r: float = 2.0, q_ml_min: float = 250.0, rate_ml_s: float = 0.5,
                   dur_s: float = 0.05) -> tuple[np.ndarray, np.ndarray, FlowNetwork]:
    net = FlowNetwork(straight_tube(tube_len, r), inflow_ml_min=q_ml_min)
    cf = ContrastField(net)
    cf.inject(Injection(0, rate_ml_s, dur_s))
    dt = 0.002
    ts, cs = [], []
    u = q_ml_min * ML_MIN / (math.pi * r * r)
    for _ in range(int(3.0 * tube_len / u / dt) + 200):
        cf.advance(dt)
        ts.append(cf.time_s - dt / 2)
        cs.append(cf.cell_iodine[-1])
    return np.array(ts), np.array(cs), net


def check_bolus() -> Iterator[dict[str, Any]]:
    """Mean transit time and iodine conservation in a straight tube."""
    length, r, q = 200.0, 2.0, 250.0
    ts, cs, net = _outlet_series(length, r, q, 0.5, 0.05)
    u = q * ML_MIN / (math.pi * r * r)
    ref = length / u
    t_mean = float(np.sum(ts * cs) / np.sum(cs)) - 0.025  # minus the injection's own centroid
    yield _row("bolus_transit", t_mean, ref, abs(t_mean / ref - 1.0), 0.05, "s (relative error)",
               f"0.025 mL bolus in a {length:g} mm tube, r = {r:g} mm, {q:g} mL/min")
    q_mm3 = float(net.baseline.cell_q[-1])
    out_mg = float(np.sum(cs) * 0.002 * q_mm3 / 1000.0)
    in_mg = 0.5 * 0.05 * 300.0
    yield _row("iodine_conservation", out_mg, in_mg, abs(out_mg / in_mg - 1.0), 0.01, "mg (relative error)",
               "iodine through the outlet of the same tube vs iodine injected")


def check_collaterals() -> Iterator[dict[str, Any]]:
    """Collateral share of the occluded territory's flow for each grade."""
    shares = []
    for g in range(5):
        net = _atlas_net(g)
        circ = Circulation(net, [ClotSpec("L_MCA_M1", 1.0, 6.0)])
        risk = circ.at_risk
        shares.append(float(circ.solution.bed_q[risk].sum() / net.baseline.bed_q[risk].sum()))
    mono = all(b > a for a, b in zip(shares[:-1], shares[1:], strict=True))
    err = shares[0] + (0.0 if mono else 1.0)
    yield _row("collateral_grades", shares[4], 0.18, err, 1e-6, "share of baseline territory flow (grade 4)",
               "left M1 occluded at its origin, grades 0-4", shares=shares, monotonic=mono)


def check_tici(net: FlowNetwork) -> Iterator[dict[str, Any]]:
    """Grades of known fractions; reperfused fraction with emboli of known weight."""
    table = [(0.0, False, 0, "0"), (0.0, True, 0, "1"), (0.05, True, 0, "1"), (0.3, True, 0, "2a"),
             (0.6, True, 0, "2b"), (0.95, True, 0, "2c"), (1.0, True, 1, "2c"), (1.0, True, 0, "3")]
    wrong = [(f, g) for f, flow, e, g in table if tici_grade(f, flow, e) != g]
    yield _row("tici_from_fractions", float(len(wrong)), 0.0, float(len(wrong)), 0.0, "wrong grades",
               "8 fractions spanning 0-3", wrong=wrong)
    circ = Circulation(net, [DEFAULT_CLOT])
    circ.clots[0].length_mm = 0.0  # clot gone
    risk_labels = [net.bed_label[k] for k in circ.at_risk if "_C" in net.bed_label[k] and
                   net.bed_label[k].count("_") >= 5]
    pick = risk_labels[:2]
    circ.emboli.same_territory.extend(pick)
    circ._dirty = True
    frac, grade = circ.reperfusion()
    w = net.baseline_antegrade.bed_q
    lost = sum(w[net.bed_label.index(b)] for b in pick) / w[circ.at_risk].sum()
    ref = 1.0 - lost
    yield _row("tici_emboli_fraction", frac, ref, abs(frac - ref), 0.02, "reperfused fraction",
               f"M1 clot removed, emboli in {', '.join(pick)}", grade=grade)


def check_determinism(net: FlowNetwork) -> Iterator[dict[str, Any]]:
    """Same seed, same outcomes, same contrast, bit for bit."""
    def run(seed: int) -> tuple[list[tuple[float, int, bool]], bytes]:
        rng = np.random.default_rng(seed)
        circ = Circulation(net, [DEFAULT_CLOT], rng)
        outs = []
        for _ in range(3):
            o = pass_outcome(PassTechnique("stent_retriever", wait_s=150.0), "mixed", rng)
            circ.apply_pass(circ.clots[0], o)
            outs.append((o.captured, o.fragments, o.new_territory))
        circ.inject(net.tree.point_at("L_ICA", 110.0), 6.0, 4.0)
        circ.advance(2.0)
        return outs, circ.segment_iodine().tobytes()

    a, b = run(11), run(11)
    same = a == b
    yield _row("determinism", float(not same), 0.0, float(not same), 0.0, "runs that differ",
               "3 passes and a 2 s DSA, seed 11, twice")


def first_pass_rate(net: FlowNetwork, tech: PassTechnique, n: int = 200, seed0: int = 0) -> float:
    """Share of seeded first passes reaching mTICI ≥ 2c."""
    ok = 0
    for s in range(n):
        rng = np.random.default_rng(seed0 + s)
        circ = Circulation(net, [DEFAULT_CLOT], rng)
        circ.apply_pass(circ.clots[0], pass_outcome(tech, DEFAULT_CLOT.composition, rng))
        ok += circ.reperfusion()[1] in ("2c", "3")
    return ok / n


def check_pass_rates(net: FlowNetwork, n: int = 200) -> Iterator[dict[str, Any]]:
    """First-pass effect per technique against the published ranges."""
    for name, (published, (lo, hi), tech) in FPE_RANGES.items():
        rate = first_pass_rate(net, tech, n)
        err = max(0.0, lo - rate, rate - hi)
        yield _row(f"first_pass_effect_{name}", rate, published, err, 0.0, f"share of passes (range {lo}-{hi})",
                   f"{n} seeded first passes, ideal technique, mixed clot in the left M1")


def run_checks(passes: int = 200) -> Iterator[dict[str, Any]]:
    """All checks, in order (a few seconds)."""
    t0 = time.perf_counter()
    net = _atlas_net(2)
    yield from check_conservation(net)
    yield from check_parallel()
    yield from check_published(net)
    yield from check_bolus()
    yield from check_collaterals()
    yield from check_tici(net)
    yield from check_determinism(net)
    yield from check_pass_rates(net, passes)
    del t0
