"""Flow network, contrast transport, clot, passes and mTICI (issue: flow)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from iratrainer.anatomy.atlas import build_atlas
from iratrainer.cli import main
from iratrainer.flow.circulation import Circulation, InjectionError
from iratrainer.flow.network import ML_MIN, FlowNetwork, annulus_resistance, poiseuille_resistance
from iratrainer.flow.thrombectomy import ClotError, ClotSpec, PassOutcome, PassTechnique, pass_outcome, tici_grade
from iratrainer.flow.validate import (
    check_bolus,
    check_collaterals,
    check_conservation,
    check_determinism,
    check_parallel,
    check_pass_rates,
    check_published,
    check_tici,
)


@pytest.fixture(scope="module")
def tree():
    return build_atlas()


@pytest.fixture(scope="module")
def net(tree):
    return FlowNetwork(tree, collateral_grade=2)


def _m1(tree, net, **kw) -> Circulation:
    return Circulation(net, [ClotSpec("L_MCA_M1", 8.0, 8.0, **kw)], np.random.default_rng(0))


def test_validation_checks_pass(net):
    rows = [*check_conservation(net), *check_parallel(), *check_published(net), *check_bolus(),
            *check_tici(net), *check_determinism(net)]
    failed = [r for r in rows if not r["passed"]]
    assert not failed, failed


def test_collateral_grades_monotonic():
    (row,) = check_collaterals()
    assert row["passed"], row
    assert row["shares"][0] < 1e-5 and 0.1 < row["shares"][4] < 0.3


@pytest.mark.slow
def test_first_pass_effects_in_published_ranges(net):
    rows = list(check_pass_rates(net, 200))
    assert all(r["passed"] for r in rows), rows


def test_tapered_resistance_is_the_integral():
    ra, rb, length = 2.0, 1.0, 30.0
    s = np.linspace(0.0, length, 200001)
    r = ra + (rb - ra) * s / length
    numeric = np.trapezoid(8 * 3.5e-3 / (np.pi * r ** 4), s)
    assert float(poiseuille_resistance(length, ra, rb)) == pytest.approx(numeric, rel=1e-6)


def test_annulus_limits():
    assert annulus_resistance(10.0, 2.0, 0.0) == pytest.approx(float(poiseuille_resistance(10.0, 2.0, 2.0)))
    assert annulus_resistance(10.0, 2.0, 1.0) > 5 * annulus_resistance(10.0, 2.0, 0.0)
    assert math.isinf(annulus_resistance(10.0, 1.0, 1.0))


def test_occlusion_stops_antegrade_flow_and_collaterals_refill(tree, net):
    circ = _m1(tree, net)
    sol = net.solve(collaterals=False)
    risk = circ.at_risk
    assert sol.bed_q[risk].sum() < 1e-6 * net.baseline.bed_q[risk].sum()
    # with collaterals, some flow returns, retrograde in part of the territory
    with_coll = circ.solution
    assert with_coll.bed_q[risk].sum() > 0.03 * net.baseline.bed_q[risk].sum()
    assert any(net.branch_flow_ml_min(with_coll, lab) < 0 for lab in tree.subtree("L_MCA_M2_SUP"))
    frac, grade = circ.reperfusion()
    assert frac < 1e-3 and grade == "0"


def test_balloon_guide_arrests_ica_flow(tree, net):
    circ = Circulation(net, [])
    circ.set_balloon(tree.point_at("L_ICA", 20.0))
    circ.advance(0.01)
    assert abs(net.branch_flow_ml_min(circ.solution, "L_ICA")) < 1e-3
    assert net.branch_flow_ml_min(circ.solution, "L_ECA") > 100.0
    circ.set_balloon(None)
    circ.advance(0.01)
    assert net.branch_flow_ml_min(circ.solution, "L_ICA") > 200.0


def test_wedged_catheter_reduces_flow(tree, net):
    circ = Circulation(net, [])
    pts = tree.point_at("L_MCA_M2_SUP_C1", np.linspace(0.0, 10.0, 21))
    r_vessel = float(tree.radius_at("L_MCA_M2_SUP_C1", 5.0))
    before = net.branch_flow_ml_min(circ.solution, "L_MCA_M2_SUP_C1")
    circ.set_devices([(pts, 0.95 * r_vessel)])
    circ.advance(0.01)
    after = net.branch_flow_ml_min(circ.solution, "L_MCA_M2_SUP_C1")
    assert after < 0.5 * before


def test_dsa_shows_cut_off_and_reperfusion(tree, net):
    circ = _m1(tree, net)
    circ.inject(tree.point_at("L_ICA", 110.0), 6.0, 3.0)
    circ.advance(1.5)
    io = circ.segment_iodine()
    m1 = tree.seg_branch == tree.index("L_MCA_M1")
    s_mid = tree.seg_s0 + 0.5 * tree.seg_len
    in_clot = m1 & (s_mid > 8.0) & (s_mid < 16.0)
    stump = m1 & (s_mid < 7.0)
    assert io[in_clot].max() == 0.0  # filling defect
    assert io[stump].mean() > 50.0  # the column reaches the clot face
    m2 = np.isin(tree.seg_branch, [tree.index(x) for x in tree.subtree("L_MCA_M2_INF")])
    aca = tree.seg_branch == tree.index("L_ACA_A2")
    assert io[aca].mean() > 50.0 and io[m2].mean() < 5.0
    circ.apply_pass(circ.clots[0], PassOutcome(1.0, 0, False, 1.0))
    circ.advance(20.0)
    circ.inject(tree.point_at("L_ICA", 110.0), 6.0, 3.0)
    circ.advance(1.5)
    io = circ.segment_iodine()
    assert io[m2].mean() > 50.0
    assert circ.reperfusion()[1] == "3"


def test_reflux_when_rate_exceeds_flow(tree, net):
    circ = Circulation(net, [])
    tip = tree.point_at("L_ICA", 15.0)
    ica_q = net.branch_flow_ml_min(net.baseline, "L_ICA") / 60.0  # mL/s
    circ.inject(tip, 10.0, 2.5 * ica_q)
    circ.advance(1.2)
    io = circ.segment_iodine()
    eca = tree.seg_branch == tree.index("L_ECA")
    assert io[eca].max() > 20.0  # the reflux reached the bifurcation and the ECA filled
    circ2 = Circulation(net, [])
    circ2.inject(tip, 3.0, 0.5 * ica_q)
    circ2.advance(1.2)
    assert circ2.segment_iodine()[eca].max() < 1e-6
    # concentration at the tip equals the rate fraction of the vessel's flow
    cell = net.seg_cell[tree.query(tip[None, :]).segment[0]]
    assert circ2.contrast.cell_iodine[cell] == pytest.approx(300.0 * 0.5, rel=0.05)


def test_capillary_blush_and_extravasation(tree, net):
    circ = Circulation(net, [])
    circ.inject(tree.point_at("L_ICA", 110.0), 6.0, 4.0)
    circ.advance(3.0)
    c, r, io = circ.blobs()
    assert np.sum(r > 5.0) > 5 and np.all(io >= 0)  # tissue blush (sinus spheres are 4 mm)
    ex = circ.perforate(tree.point_at("L_MCA_M2_SUP_C2", 5.0))
    circ.inject(tree.point_at("L_ICA", 110.0), 6.0, 4.0)
    circ.advance(3.0)
    assert ex.iodine_mg > 0.0
    c2, r2, _ = circ.blobs()
    assert np.any(np.linalg.norm(c2 - ex.centre_mm, axis=1) < 1e-9)


def test_pass_outcomes_follow_technique():
    rng = np.random.default_rng(0)
    good = [pass_outcome(PassTechnique("stent_retriever", wait_s=180), "mixed", rng).p_capture for _ in range(3)]
    poor = pass_outcome(PassTechnique("stent_retriever", coverage=0.4, wait_s=20), "mixed", rng)
    assert poor.p_capture < 0.3 * good[0]
    assert {"coverage", "wait"} <= set(poor.notes)
    fib = pass_outcome(PassTechnique("stent_retriever"), "fibrin", rng).p_capture
    red = pass_outcome(PassTechnique("stent_retriever"), "red", rng).p_capture
    assert red > fib
    assert tici_grade(0.7, True, 0) == "2b"


def test_partial_pass_leaves_a_residual_stenosis(tree, net):
    circ = _m1(tree, net)
    circ.apply_pass(circ.clots[0], PassOutcome(0.5, 0, False, 0.3))
    frac, grade = circ.reperfusion()
    assert 0.1 < frac < 0.99 and grade in ("2a", "2b", "2c")


@pytest.mark.parametrize("spec, msg", [
    (ClotSpec("L_MCA_M9", 1.0, 5.0), "unknown branch"),
    (ClotSpec("L_MCA_M1", 15.0, 10.0), "beyond the end"),
    (ClotSpec("L_MCA_M1", 2.0, 5.0, diameter_mm=6.0), "larger than the lumen"),
    (ClotSpec("L_MCA_M1", 2.0, 5.0, composition="gravel"), "composition"),
    (ClotSpec("L_MCA_M1", -1.0, 5.0), "start_mm"),
])
def test_bad_clots_are_refused(tree, net, spec, msg):
    with pytest.raises(ClotError, match=msg):
        Circulation(net, [spec])


def test_bad_injections_are_refused(tree, net):
    circ = Circulation(net, [])
    tip = tree.point_at("L_ICA", 50.0)
    with pytest.raises(InjectionError, match="syringe"):
        circ.inject(tip, 25.0, 3.0, syringe="hand")
    with pytest.raises(InjectionError, match="no lumen"):
        circ.inject(tip, 5.0, 3.0, lumen=False)
    with pytest.raises(InjectionError, match="rate"):
        circ.inject(tip, 5.0, 0.0)


def test_flow_on_a_segmented_partial_tree():
    from iratrainer.segmentation.phantom import subtree

    t = subtree(build_atlas(), "L_ICA")
    n = FlowNetwork(t)
    assert n.inflow_mm3_s / ML_MIN == pytest.approx(255.0 * (float(t.branches[0].radii_mm[0]) / 2.7) ** 3)
    assert n.junction_imbalance(n.baseline) < 1e-6


def test_cli_validate_flow(capsys, monkeypatch):
    import iratrainer.flow.validate as v

    monkeypatch.setattr(v, "check_pass_rates", lambda net, n=200: iter(()))
    assert main(["validate", "flow"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) >= 9


def test_venous_phase_follows_the_capillary_phase(tree, net):
    from iratrainer.flow.circulation import SINUS_PATH_MM

    circ = Circulation(net, [])
    circ.inject(tree.point_at("L_ICA", 110.0), 7.0, 5.0)
    t, art, bed, ven = [], [], [], []
    m1 = tree.seg_branch == tree.index("L_MCA_M1")
    head = circ._head_beds
    for _ in range(60):
        circ.advance(0.25)
        t.append(circ.time_s)
        art.append(circ.segment_iodine()[m1].mean())
        bed.append(circ.contrast.bed_iodine[head].mean())
        ven.append(circ.venous_mg_ml[-1])
    t = np.array(t)
    peaks = [t[int(np.argmax(x))] for x in (art, bed, ven)]
    assert peaks[0] < peaks[1] < peaks[2]  # arterial, capillary, venous
    assert 3.0 < peaks[2] - peaks[0] < 12.0
    assert ven[-1] < 0.3 * max(ven)  # washed out by 15 s
    circ2 = Circulation(net, [])
    circ2.inject(tree.point_at("L_ICA", 110.0), 7.0, 5.0)
    circ2.advance(t[int(np.argmax(ven))])
    c, _, _ = circ2.blobs()
    assert np.any(np.all(np.isclose(c[:, None, :], SINUS_PATH_MM[None, :, :]), axis=2))
