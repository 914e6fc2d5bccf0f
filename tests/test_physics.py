"""Device physics: the catalogue, the rod model against beam theory, stacks, bad input."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from iratrainer.physics.catalogue import CatalogueError, default_catalogue, load_catalogue
from iratrainer.physics.stack import DeviceStack, HubCommand, PhysicsError, StackError
from iratrainer.physics.validate import (
    _tube,
    cantilever,
    check_energy,
    check_fuzz,
    check_torque,
    elastica_tip_angle,
)

INCH = 25.4


# ---------------------------------------------------------------- catalogue
def test_catalogue_has_the_stroke_and_arch_devices():
    c = default_catalogue()
    assert c["guidewire_035_angled"].outer_diameter_mm == pytest.approx(0.035 * INCH, abs=1e-3)
    assert c["microwire_014"].outer_diameter_mm == pytest.approx(0.014 * INCH, abs=1e-3)
    assert c["microwire_014"].shapeable
    assert c["microcatheter_021"].inner_diameter_mm == pytest.approx(0.021 * INCH, abs=1e-3)
    assert c["intermediate_6F"].inner_diameter_mm == pytest.approx(0.071 * INCH, abs=1e-3)
    assert c["balloon_guide_8F"].outer_diameter_mm == pytest.approx(8 / 3, abs=1e-3)  # French = mm x 3
    for name in ("vertebral_5F", "simmons2_5F", "multipurpose_5F"):
        assert c[name].outer_diameter_mm == pytest.approx(5 / 3, abs=1e-3)
    assert c["stent_retriever_4x40"].extra["stent"]["working_length_mm"] == 40.0
    # Simmons: a reverse curve (more than 150 degrees of bend)
    assert sum(cv.angle_deg for cv in c["simmons2_5F"].curves if cv.angle_deg > 0) > 150
    # soft distal tips
    for spec in c.values():
        assert spec.ei_at(0.0) <= spec.ei_at(spec.soft_length_mm + spec.transition_mm + 1)


def test_stack_fits_coaxially():
    c = default_catalogue()
    chain = ["balloon_guide_8F", "intermediate_6F", "microcatheter_021", "microwire_014"]
    for outer, inner in zip(chain, chain[1:], strict=False):
        assert c[inner].outer_diameter_mm <= c[outer].inner_diameter_mm


def test_unknown_device_suggests_names():
    with pytest.raises(CatalogueError, match="did you mean microwire_014"):
        default_catalogue()["microwire14"]


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (("friction = 0.05", "friction = -1", 1), "[devices.guidewire_035_angled].friction: expected a number"),
        (('kind = "guidewire"', 'kind = "banana"', 1), ".kind: expected one of"),
        (("inner_diameter_mm = 0.533", "inner_diameter_mm = 5.0", 1), "is not smaller than the outer"),
        (("format_version = 1", "format_version = 7", 1), "format_version: expected 1"),
        (("[devices.microwire_014]", "[devices.microwire_014\n", 1), "not valid TOML"),
    ],
)
def test_bad_catalogue_names_file_device_and_field(tmp_path, edit, needle):
    from importlib import resources

    text = resources.files("iratrainer").joinpath("data/devices.toml").read_text()
    old, new, count = edit
    assert old in text
    p = tmp_path / "cat.toml"
    p.write_text(text.replace(old, new, count))
    with pytest.raises(CatalogueError) as err:
        load_catalogue(p)
    assert str(p) in str(err.value) and needle in str(err.value)


def test_shaping_a_microwire_tip():
    w = default_catalogue()["microwire_014"].with_tip_shape(90.0, 5.0)
    assert w.rest_curvature(4.0) == pytest.approx(math.radians(90) / 5.0)
    with pytest.raises(CatalogueError, match="no shapeable tip"):
        default_catalogue()["balloon_guide_8F"].with_tip_shape(30.0)


# ---------------------------------------------------------------- against beam theory
@pytest.mark.parametrize("solver", ["primal", "dual"])
def test_small_deflection_cantilever_within_3_percent(solver):
    F, L, EI = 0.001, 100.0, 100.0
    x = cantilever(F, L, EI, steps=3000, mass=1e-9, solver=solver)
    assert -x[0, 2] == pytest.approx(F * L ** 3 / (3 * EI), rel=0.03)
    # inextensible: the rod keeps its length
    assert np.linalg.norm(np.diff(x, axis=0), axis=1).sum() == pytest.approx(40 * L / 39.5, rel=1e-6)


@pytest.mark.parametrize("solver", ["primal", "dual"])
def test_elastica_tip_angle_within_3_percent(solver):
    load, L, EI = 3.0, 100.0, 100.0
    x = cantilever(load * EI / L ** 2, L, EI, steps=20000, solver=solver)
    t = x[0] - x[1]
    assert math.atan2(-t[2], t[0]) == pytest.approx(elastica_tip_angle(load), rel=0.03)


def test_elastica_reference_is_right():
    """Small load: the elastica tends to the linear result θ_tip = F L² / (2 EI)."""
    assert elastica_tip_angle(0.01) == pytest.approx(0.005, rel=1e-3)


def test_torque_transmission_one_to_one_either_way():
    rows = list(check_torque())
    assert [r["check"] for r in rows] == ["torque_transmission", "torque_transmission_backwards"]
    for row in rows:
        assert row["passed"], row
    assert rows[1]["value"] == pytest.approx(-90.0, abs=0.01)


def test_no_energy_gain_without_input():
    row = next(check_energy())
    assert row["passed"], row
    assert row["energy_end_n_mm"] <= row["energy_start_n_mm"]


def test_short_seeded_fuzz():
    row = next(check_fuzz(seconds=3.0, seed=1))
    assert row["passed"], row


def _block_pentadiagonal_spd(n_nodes: int, seed: int) -> np.ndarray:
    """A random SPD matrix whose 3×3 node blocks couple nodes at most two apart (a chain's)."""
    rng = np.random.default_rng(seed)
    n = 3 * n_nodes
    m = np.zeros((n, n))
    for i in range(n_nodes):
        for j in range(max(0, i - 2), i + 1):
            m[3 * i:3 * i + 3, 3 * j:3 * j + 3] = rng.normal(size=(3, 3)) * (3.0 if i == j else 1.0)
    # M Mᵀ couples nodes up to four apart: keep the pentadiagonal blocks, made dominant
    a = m @ m.T
    for i in range(n_nodes):
        for j in range(n_nodes):
            if abs(i - j) > 2:
                a[3 * i:3 * i + 3, 3 * j:3 * j + 3] = 0.0
    return a + np.eye(n) * (np.abs(a).sum(axis=1).max() + 1.0)


def _band(a: np.ndarray, bw: int) -> np.ndarray:
    n = len(a)
    out = np.zeros((n, 2 * bw + 1))
    for i in range(n):
        for j in range(max(0, i - bw), min(n, i + bw + 1)):
            out[i, j - i + bw] = a[i, j]
    return out


@pytest.mark.parametrize("n_nodes", [1, 2, 3, 40])
def test_the_chain_factorisations_solve_the_linear_system(n_nodes):
    """The block Cholesky of the primal solve and the scalar band Cholesky both solve A y = b
    as a dense solver does, for a chain's block-pentadiagonal SPD matrix."""
    from iratrainer.physics.chain import _cholesky_band_solve
    from iratrainer.physics.primal import PRIMAL_HALF_BAND, _block_cholesky_solve

    a = _block_pentadiagonal_spd(n_nodes, seed=n_nodes)
    n = len(a)
    b = np.random.default_rng(7).normal(size=n)
    ref = np.linalg.solve(a, b)
    bw = PRIMAL_HALF_BAND
    band = _band(a, bw)
    y_band = b.copy()
    _cholesky_band_solve(band, y_band, n, bw, np.zeros_like(band))
    y_block = b.copy()
    # the block Cholesky reads only the upper half of the band (the assembly writes nothing below)
    upper = band.copy()
    upper[:, :bw] = np.nan
    _block_cholesky_solve(upper, y_block, n_nodes, bw, np.zeros((n_nodes, 3, 3)), np.zeros((n_nodes, 3, 3)),
                          np.zeros((n_nodes, 3, 3)), np.zeros((n_nodes, 3)))
    scale = np.abs(ref).max()
    assert np.abs(y_band - ref).max() < 1e-12 * scale
    assert np.abs(y_block - ref).max() < 1e-12 * scale
    # the wider band of the dual form too
    y14 = b.copy()
    band14 = _band(a, 14)
    _cholesky_band_solve(band14, y14, n, 14, np.zeros_like(band14))
    assert np.abs(y14 - ref).max() < 1e-12 * scale


@pytest.mark.slow
def test_long_seeded_fuzz():
    row = next(check_fuzz(seconds=120.0, seed=2))
    assert row["passed"], row


# ---------------------------------------------------------------- behaviour in vessels
def test_friction_makes_the_tip_lag_the_hub():
    """Settled first (the shaped tip finds its own orientation in the curve), then turned:
    with friction the tip falls behind the hub, more than without."""
    lags = []
    for mu in (0.0, 0.3):
        spec = replace(default_catalogue()["microwire_014"], friction=mu)
        st = DeviceStack(_tube(bend_deg=120.0, r=1.2, length=200.0), [spec], access_label="TUBE",
                         inserted_mm=[170.0])
        for _ in range(300):
            st.step()
        rod = st.rods[0]
        t0, h0 = rod.theta[0], rod.hub_angle
        for _ in range(200):
            st.step({spec.name: HubCommand(0.0, 360.0)})
        lags.append((rod.hub_angle - h0) - (rod.theta[0] - t0))
        assert max(st.wall_force[0]) > 0.0
    assert lags[1] > 0.0  # lag during rotation
    assert lags[1] > lags[0]


def test_inner_device_stays_in_the_outer_lumen():
    c = default_catalogue()
    tree = _tube(bend_deg=90.0, r=3.0, length=250.0)
    st = DeviceStack(tree, [c["intermediate_6F"], c["microwire_014"]], access_label="TUBE", inserted_mm=[150.0, 180.0])
    for _ in range(150):
        st.step({"microwire_014": HubCommand(20.0, 90.0)})
    outer, inner = st.rods
    gap = c["intermediate_6F"].inner_radius_mm - c["microwire_014"].outer_radius_mm
    a = inner.inserted_mm - inner.sigma
    so = outer.inserted_mm - a
    inside = (so > 2.0) & (so < outer.inserted_mm - 2.0)
    pos = np.stack([np.interp(so[inside], outer.sigma, outer.x[:outer.n_material, i]) for i in range(3)], 1)
    d = np.linalg.norm(inner.x[:inner.n_material][inside] - pos, axis=1)
    assert d.max() <= gap + 0.05


def test_pushing_into_a_dead_end_raises_wall_force_events():
    spec = default_catalogue()["guidewire_035_angled"]
    tree = _tube(length=120.0, r=1.5)
    st = DeviceStack(tree, [replace(spec, curves=())], access_label="TUBE", inserted_mm=[100.0])
    for _ in range(1500):
        st.step({spec.name: HubCommand(30.0, 0.0)})
        if st.events:
            break
    kinds = {e.kind for e in st.events}
    assert kinds & {"perforation_risk", "perforation", "dissection"}
    assert all(e.force_n > 0 and e.branch == "TUBE" for e in st.events)


# ---------------------------------------------------------------- bad input
def test_impossible_stacks_are_refused():
    c = default_catalogue()
    with pytest.raises(StackError, match="does not fit the lumen"):
        DeviceStack(_tube(), [c["microcatheter_021"], c["intermediate_6F"]], access_label="TUBE")
    with pytest.raises(StackError, match="has no lumen"):
        DeviceStack(_tube(), [c["microwire_014"], c["microwire_014"]], access_label="TUBE")


def test_bad_hub_commands_are_clamped_or_ignored_and_logged():
    spec = default_catalogue()["microwire_014"]
    st = DeviceStack(_tube(), [spec], access_label="TUBE", inserted_mm=[50.0])
    st.step({spec.name: HubCommand(float("nan"), 10.0)})
    st.step({spec.name: HubCommand(1e6, -1e9)})
    assert any("non-finite" in m for m in st.log)
    assert any("clamped" in m for m in st.log)
    assert st.rods[0].inserted_mm == pytest.approx(50.0 + 60.0 * st.dt)


def test_device_cannot_be_pushed_beyond_its_length():
    spec = replace(default_catalogue()["microwire_014"], length_mm=200.0)
    st = DeviceStack(_tube(length=400.0), [spec], access_label="TUBE", inserted_mm=[149.0])
    for _ in range(100):
        st.step({spec.name: HubCommand(60.0, 0.0)})
    assert st.rods[0].inserted_mm <= 150.0
    assert any("fully inserted" in m for m in st.log)


def test_divergence_is_a_typed_error():
    spec = default_catalogue()["microwire_014"]
    st = DeviceStack(_tube(), [spec], access_label="TUBE", inserted_mm=[50.0])
    st.rods[0].x[3] = np.nan
    with pytest.raises(PhysicsError, match="diverged"):
        st.step()


def test_same_inputs_same_state_bit_for_bit():
    spec = default_catalogue()["guidewire_035_angled"]
    out = []
    for _ in range(2):
        st = DeviceStack(_tube(bend_deg=45.0, r=3.0), [spec], access_label="TUBE", inserted_mm=[80.0])
        for i in range(200):
            st.step({spec.name: HubCommand(20.0 * math.sin(i / 30), 200.0)})
        out.append(st.rods[0].x.tobytes() + st.rods[0].theta.tobytes())
    assert out[0] == out[1]


def _y_tree():
    """A trunk (entered from below) dividing into LEFT (+x) and RIGHT (-x) branches at 35 degrees."""
    from iratrainer.anatomy.tree import Branch, VesselTree

    s = np.linspace(0, 60, 61)
    trunk = np.stack([0 * s, 0 * s, -s], 1)
    t = np.linspace(0, 50, 51)
    a = math.radians(35)

    def daughter(sign: float) -> np.ndarray:
        return np.stack([sign * math.sin(a) * t, 0 * t, math.cos(a) * t], 1)

    return VesselTree([Branch("TRUNK", None, 0, trunk, np.full(61, 2.5)),
                       Branch("LEFT", "TRUNK", 0, daughter(1.0), np.full(51, 2.0)),
                       Branch("RIGHT", "TRUNK", 0, daughter(-1.0), np.full(51, 2.0))])


@pytest.mark.parametrize(("turn_deg", "expected"), [(0, "LEFT"), (180, "RIGHT")])
def test_vessel_selection_emerges_from_tip_shape_and_torque(turn_deg, expected):
    """Turning the hub half a turn turns the angled tip, and the wire takes the other branch."""
    spec = default_catalogue()["guidewire_035_angled"]
    st = DeviceStack(_y_tree(), [spec], access_label="TRUNK", inserted_mm=[40.0])
    for _ in range(int(turn_deg / 180 * 1000)):
        st.step({spec.name: HubCommand(0.0, 180.0)})
    for _ in range(60):
        st.step()
    for _ in range(2500):
        st.step({spec.name: HubCommand(20.0, 0.0)})
    assert st.tip_branch() == expected
    assert math.degrees(st.rods[0].theta[0]) == pytest.approx(turn_deg, abs=15)


def test_pushing_against_a_dead_end_signals_buckling():
    spec = default_catalogue()["guidewire_035_angled"]
    st = DeviceStack(_tube(length=120.0, r=4.0), [replace(spec, curves=())], access_label="TUBE",
                     inserted_mm=[110.0])
    for _ in range(1500):
        st.step({spec.name: HubCommand(40.0, 0.0)})
    assert "buckling" in {e.kind for e in st.events}


def test_a_wire_pushed_in_a_wide_vessel_with_a_blocked_tip_loops():
    spec = replace(default_catalogue()["microwire_014"], curves=())
    st = DeviceStack(_tube(length=60.0, r=12.0), [spec], access_label="TUBE", inserted_mm=[58.0])
    for _ in range(4000):
        st.step({spec.name: HubCommand(40.0, 0.0)})
        if any(e.kind == "loop" for e in st.events):
            break
    kinds = {e.kind for e in st.events}
    assert "loop" in kinds or "buckling" in kinds


def test_a_full_fold_has_a_finite_curvature():
    """Antiparallel edges (a device folded back on itself) must not divide by zero."""
    from iratrainer.physics.solver import _bend_jacobians, curvature_binormal

    e1 = np.array([1.0, 0.0, 0.0])
    e2 = np.array([-1.0, 0.0, 0.0])
    kb = curvature_binormal(e1, e2)
    J1, J2 = np.empty((3, 3)), np.empty((3, 3))
    _bend_jacobians(e1, e2, kb, J1, J2)
    assert np.all(np.isfinite(kb)) and np.all(np.isfinite(J1)) and np.all(np.isfinite(J2))


@pytest.mark.parametrize("deg_s", [720.0, -720.0])
def test_hub_rotation_reaches_the_tip_of_a_long_wire_at_once(deg_s):
    """Quasi-static torsion along 300 nodes without friction: the tip follows the hub within the step,
    either way (the direct solve; a Gauss-Seidel sweep moved the twist about one node per sweep).
    Turned backwards, the tip used to stand still: every node was first taken to slip forwards,
    stuck when it turned the other way, and was freed one node per iteration from the hub."""
    spec = replace(default_catalogue()["microwire_014"], friction=0.0, curves=())
    st = DeviceStack(_tube(length=700.0), [spec], access_label="TUBE", inserted_mm=[600.0])
    rod = st.rods[0]
    assert len(rod.x) > 290
    for _ in range(100):
        st.step({spec.name: HubCommand(0.0, deg_s)})  # 72 degrees in 0.1 s
        assert math.degrees(rod.theta[0]) == pytest.approx(math.degrees(rod.hub_angle), abs=1e-6)
    assert math.degrees(rod.hub_angle) == pytest.approx(math.copysign(72.0, deg_s))


def test_an_outer_catheter_advances_over_the_devices_inside_it():
    """Coaxial links reach into the outer device's sheath edge: it is not held back by what runs inside."""
    c = default_catalogue()
    names = ["intermediate_6F", "microcatheter_021", "microwire_014"]
    st = DeviceStack(_tube(length=400.0, r=4.0), [c[n] for n in names], access_label="TUBE",
                     inserted_mm=[65.0, 125.0, 150.0])
    for _ in range(1000):
        st.step({n: HubCommand(30.0, 0.0) for n in names})
    assert [r.inserted_mm for r in st.rods] == pytest.approx([95.0, 155.0, 180.0], abs=0.5)
    assert not any("slips in the fingers" in line for line in st.log)


# ---------------------------------------------------------------- the atlas carotid
def _carotid_tree():
    """The atlas's left carotid territory, entered from below through a straight 60 mm sheath
    in line with the CCA (a device at ``ACCESS``'s end climbs into the CCA with the flow)."""
    from iratrainer.anatomy.atlas import build_atlas
    from iratrainer.anatomy.tree import Branch, VesselTree

    atlas = build_atlas()
    cca = atlas["L_CCA"]
    d0 = cca.points_mm[0] - cca.points_mm[1]
    d0 /= np.linalg.norm(d0)
    acc = cca.points_mm[0] + np.arange(1, 61)[:, None] * d0[None]
    branches = [Branch("L_CCA", None, 0, cca.points_mm, cca.radii_mm)]
    for label in ("L_ECA", "L_ICA", "L_OPH", "L_PCOM", "L_MCA_M1", "L_ACA_A1"):
        b = atlas[label]
        branches.append(Branch(label, b.parent, b.parent_index, b.points_mm, b.radii_mm))
    branches.append(Branch("ACCESS", "L_CCA", 0, np.vstack([cca.points_mm[:1], acc]), np.full(61, cca.radii_mm[0])))
    tree = VesselTree(branches)
    ica, oph = atlas["L_ICA"], atlas["L_OPH"]
    path = np.vstack([acc[::-1], cca.points_mm, ica.points_mm[1:]])
    s_bif = 60.0 + cca.arc_mm[-1]
    return tree, path, s_bif, s_bif + ica.arc_mm[oph.parent_index]


def _turn_then_advance(st, name: str, turn_deg: float, advance_mm: float, speed: float) -> None:
    for _ in range(int(turn_deg / 180.0 / st.dt)):
        st.step({name: HubCommand(0.0, 180.0)})
    for _ in range(200):
        st.step()
    for _ in range(int(advance_mm / speed / st.dt)):
        st.step({name: HubCommand(speed, 0.0)})


def test_a_shaped_catheter_over_a_wire_at_rest_presses_the_wall_with_no_spurious_force():
    """A 5F vertebral catheter over a 0.035 in wire, left alone in the CCA: its wall force stays a
    fraction of a newton (the split solve of the devices and their links reported 120 N here)."""
    tree, path, s_bif, _ = _carotid_tree()
    c = default_catalogue()
    st = DeviceStack(tree, [c["vertebral_5F"], c["guidewire_035_angled"]], access_label="ACCESS",
                     inserted_mm=[s_bif - 25.0, s_bif - 20.0], path_mm=path)
    worst = 0.0
    for _ in range(400):
        st.step()
        worst = max(worst, max(float(np.max(f)) for f in st.wall_force))
    assert worst < 0.5
    assert not [e for e in st.events if e.kind in ("perforation", "dissection")]


def test_a_wire_gripped_in_a_bend_and_pulled_back_stays_inextensible():
    """A microwire held by strong friction (mu = 5) in a 150 degree bend and pulled back at the hub
    at 40 mm/s: its edges stay within 5 % of their rest length. Gauss-Newton without the taut
    edges' geometric stiffness stretched them by up to 46 % (kilonewtons of tension): its
    unconverged iterates' penalties fed the friction that held the wire, the wall-force
    spikes of the navigation at the carotid terminus."""
    spec = replace(default_catalogue()["microwire_014"], friction=5.0, curves=())
    st = DeviceStack(_tube(bend_deg=150.0, r=1.2, length=200.0), [spec], access_label="TUBE", inserted_mm=[180.0])
    st.hub_force_max_n = math.inf  # no slipping in the fingers: the solver alone keeps the wire whole
    for _ in range(300):
        st.step({spec.name: HubCommand(10.0, 0.0)})
    rod = st.rods[0]
    worst = 0.0
    for _ in range(600):
        st.step({spec.name: HubCommand(-40.0, 0.0)})
        edges = np.linalg.norm(np.diff(rod.x[:rod.n_material], axis=0), axis=1)
        worst = max(worst, float(edges.max()) / rod.h - 1.0)
    assert worst < 0.05


def test_a_hand_pulls_no_harder_than_its_grip():
    """The same gripped wire pulled back with the hand's limit on: the tension at the sheath never
    exceeds the grip (3 N), the wire slips in the fingers (logged), and the wall forces stay
    of the order of that tension instead of growing with the stretch."""
    spec = replace(default_catalogue()["microwire_014"], friction=5.0, curves=())
    st = DeviceStack(_tube(bend_deg=150.0, r=1.2, length=200.0), [spec], access_label="TUBE", inserted_mm=[180.0])
    for _ in range(300):
        st.step({spec.name: HubCommand(10.0, 0.0)})
    rod = st.rods[0]
    worst_tension, worst_wall = 0.0, 0.0
    for _ in range(600):
        st.step({spec.name: HubCommand(-40.0, 0.0)})
        K = rod.n_material
        rest = rod.inserted_mm - rod.sigma[-1]
        worst_tension = max(worst_tension, (math.dist(rod.x[K - 1], rod.x[K]) - rest) / rod.stretch_compliance)
        worst_wall = max(worst_wall, float(st.wall_force[0].max()))
    assert worst_tension <= st.hub_force_max_n + 1e-6
    assert any("pulling against" in line and "slips in the fingers" in line for line in st.log)
    assert worst_wall < 2.0 * st.hub_force_max_n


def _t_junction():
    """A 20 mm tube along x (the root, entered at x = 160) with a 8 mm branch leaving its roof
    straight up (+z) at x = 0."""
    from iratrainer.anatomy.tree import Branch, VesselTree

    x = np.linspace(-40, 160, 101)
    z = np.linspace(0, 60, 31)
    return VesselTree([Branch("AORTA", None, 0, np.stack([x, 0 * x, 0 * x], 1), np.full(101, 10.0)),
                       Branch("SIDE", "AORTA", 20, np.stack([0 * z, 0 * z, z], 1), np.full(31, 4.0))])


def test_the_rim_of_an_ostium_is_found_from_both_vessels():
    """``related_depth``: a point at the rim where the branch meets the roof of its parent is
    at the wall of both; a point in the middle of the branch, or low in the parent far from
    the branch, is not near the other vessel's lumen; at a flow divider the sibling counts."""
    tree = _t_junction()
    pts = np.array([[4.1, 0.0, 10.3],  # just outside the rim, nearer the branch's wall
                    [0.0, 0.0, 30.0],  # up the branch, on its axis
                    [60.0, 0.0, -9.0]])  # the parent's floor, far from the branch
    q = tree.query(pts)
    related = tree.lumen_index.related_depth(pts, q.segment, q.signed_distance_mm, 3.0)
    assert [tree.labels[b] for b in q.branch[:2]] == ["SIDE", "SIDE"]
    assert related[0] == pytest.approx(0.3, abs=0.02)  # 0.3 mm above the roof of the parent
    assert related[1] == np.inf  # 30 mm up, deeper than the limit in its own vessel: not asked
    assert related[2] == np.inf  # the parent's floor: no branch among its candidates
    # the flow divider of a bifurcation: 4 mm above it, between two daughters of radius 2 mm
    # leaving at ±35 degrees, a point is 4 sin 35° - 2 = 0.29 mm outside each of the two
    y = _y_tree()
    p = np.array([[0.0, 0.0, 4.0]])
    qy = y.query(p)
    assert y.labels[qy.branch[0]] in ("LEFT", "RIGHT")
    rel = y.lumen_index.related_depth(p, qy.segment, qy.signed_distance_mm, 3.0)
    assert rel[0] == pytest.approx(4.0 * math.sin(math.radians(35.0)) - 2.0, abs=1e-9)
    # with the segment it was measured to: the joined vessel's, the one the rim is rounded with
    rel2, seg = tree.lumen_index.related_depth(pts, q.segment, q.signed_distance_mm, 3.0, with_segment=True)
    assert np.array_equal(rel2, related, equal_nan=True)
    assert tree.labels[tree.seg_branch[seg[0]]] == "AORTA" and seg[1] == -1 and seg[2] == -1


def test_the_rim_rounded_in_the_solve_is_the_analytic_rounded_wall():
    """The wall plane the solve takes at a node near a rim (``rim_in_solve``): at (5.5, 0, 10.3)
    by the T-junction, 0.3 mm above the parent's roof (radius 10) and 1.5 mm from the branch's
    tube (radius 4, along z), the wall gives A = 2 - 1.5 = 0.5 mm, so the node is 0.2 mm inside
    the rounded wall g = dist - 10 - A, whose gradient is the sum of the two tubes' outward
    normals, (1, 0, 1)."""
    from iratrainer.physics.primal import _cylinder_planes

    x = np.array([[5.5, 0.0, 10.3]])
    c_n, c_d = np.zeros((1, 3)), np.zeros(1)
    _cylinder_planes(x, np.ones(1, np.bool_), np.ones(1), np.array([[5.5, 0.0, 0.0]]), np.array([[1.0, 0.0, 0.0]]),
                     np.array([10.0]), np.array([-np.inf]), np.array([np.inf]), np.array([[0.0, 0.0, 0.0]]),
                     np.array([[0.0, 0.0, 60.0]]), np.array([4.0]), np.array([4.0]), 1.0, c_n, c_d)
    assert c_n[0] == pytest.approx([math.sqrt(0.5), 0.0, math.sqrt(0.5)])
    assert float(c_n[0] @ x[0] - c_d[0]) == pytest.approx(-0.2 / math.sqrt(2.0))
    # 2.5 mm from the branch's tube the rim is not rounded: the parent's roof, 0.3 mm outside
    x[0, 0] = 6.5
    _cylinder_planes(x, np.ones(1, np.bool_), np.ones(1), np.array([[6.5, 0.0, 0.0]]), np.array([[1.0, 0.0, 0.0]]),
                     np.array([10.0]), np.array([-np.inf]), np.array([np.inf]), np.array([[0.0, 0.0, 0.0]]),
                     np.array([[0.0, 0.0, 60.0]]), np.array([4.0]), np.array([4.0]), 1.0, c_n, c_d)
    assert c_n[0] == pytest.approx([0.0, 0.0, 1.0])
    assert float(c_n[0] @ x[0] - c_d[0]) == pytest.approx(0.3)


@pytest.mark.slow
def test_a_microcatheter_advanced_over_a_still_microwire_does_not_shake_it_with_the_rims_rounded_in_the_solve():
    """The microwire up the ICA past the ophthalmic origin (turned away from it), the
    microcatheter advanced over it at 10 mm/s, its hub held (as the navigation's operator
    does). With the rims rounded in the solve, the wire's distal nodes lie still and its wall
    force stays within twice the grip (3 N) but for a snap or two (measured: 35 of 1,500 steps
    move a distal node more than 0.3 mm; one step above 6 N, 25 N at a snap). Rounded once per
    step (the default), the same run shook them: 156 steps moved a distal node more than
    0.3 mm, and 8 steps pressed the wall with more than 6 N, up to 70 N."""
    tree, path, _, s_oph = _carotid_tree()
    c = default_catalogue()
    mw, mc = c["microwire_014"], c["microcatheter_021"]
    st = DeviceStack(tree, [mc, mw], access_label="ACCESS", inserted_mm=[s_oph - 15.0, s_oph - 8.0], path_mm=path)
    st.rim_in_solve = True
    _turn_then_advance(st, mw.name, 180.0, 25.0, 10.0)
    assert st.tip_branch() in tree.subtree("L_ICA") and st.tip_branch() != "L_OPH"
    wire = st.rods[1]
    shaken = spikes = 0
    for _ in range(1500):
        before = wire.x[:10].copy()
        st.step({mc.name: HubCommand(10.0, 0.0)})
        shaken += bool(np.max(np.linalg.norm(wire.x[:10] - before, axis=1)) > 0.3)
        spikes += bool(st.wall_force[1].max() > 2.0 * st.hub_force_max_n)
    assert shaken <= 60
    assert spikes <= 3


def test_a_wire_tip_hooked_in_an_ostium_comes_out_over_its_rim():
    """A 0.035 in wire with its angled tip up in a side branch and its shaft along the roof of
    the parent, pulled back at 5 mm/s by a hand that slips at 3 N: the tip comes out over the
    rim, and no node presses the wall harder than twice the grip. With the rim sharp (the
    union of tubes as it is, node contact), the node at the rim pressed the side of the branch
    with 20 N on this pull, and 30-100 N in the type II arch, where the wire stayed caught."""
    tree = _t_junction()
    spec = default_catalogue()["guidewire_035_angled"]
    corners = np.array([[160, 0, 0], [120, 0, 9.2], [5.5, 0, 9.2], [3.5, 0, 10.4], [-1, 0, 13.0]])
    path = np.vstack([np.linspace(corners[i], corners[i + 1], 200, endpoint=False) for i in range(len(corners) - 1)]
                     + [corners[-1:]])
    length = float(np.sum(np.linalg.norm(np.diff(path, axis=0), axis=1)))
    st = DeviceStack(tree, [spec], access_label="AORTA", inserted_mm=[length - 0.5], path_mm=path)
    rod = st.rods[0]
    rod.hub_angle = math.radians(270.0)  # the angled tip turned up into the branch
    rod.theta[:] = rod.hub_angle
    for _ in range(300):
        st.step({spec.name: HubCommand(0.0, 0.0)})
    assert st.tip_branch() == "SIDE" and rod.x[0, 2] > 12.0  # hooked: the tip 2 mm and more up the branch
    worst = 0.0
    for _ in range(2000):
        st.step({spec.name: HubCommand(-5.0, 0.0)})
        worst = max(worst, float(st.wall_force[0].max()))
    assert st.tip_branch() == "AORTA"
    assert worst < 2.0 * st.hub_force_max_n


@pytest.mark.slow
@pytest.mark.parametrize(("turn_deg", "expected"), [(270, "L_ECA"), (90, "L_ICA")])
def test_the_wire_tip_orientation_chooses_ica_or_eca_at_the_atlas_bifurcation(turn_deg, expected):
    tree, path, s_bif, _ = _carotid_tree()
    c = default_catalogue()
    wire = c["guidewire_035_angled"]
    st = DeviceStack(tree, [c["vertebral_5F"], wire], access_label="ACCESS",
                     inserted_mm=[s_bif - 25.0, s_bif - 20.0], path_mm=path)
    _turn_then_advance(st, wire.name, turn_deg, 50.0, 20.0)
    assert st.tip_branch() == expected


@pytest.mark.slow
@pytest.mark.parametrize(("turn_deg", "slips"), [(45, True), (180, False)])
def test_a_microwire_coming_up_the_siphon_slips_into_the_ophthalmic_artery_or_not_by_its_turn(turn_deg, slips):
    """The atlas siphon turns back by about 115 degrees at the ophthalmic origin, which lies
    straight ahead of a wire coming up the ICA: with its 45-degree tip turned one way the
    microwire slips into the ophthalmic artery, the classic mistake; turned the opposite way
    it does not, and stays in the ICA (measured with the ostia rounded: 0-135 and 315
    degrees slip in, 180-270 stay out)."""
    tree, path, _, s_oph = _carotid_tree()
    c = default_catalogue()
    mw = c["microwire_014"]
    st = DeviceStack(tree, [c["microcatheter_021"], mw], access_label="ACCESS",
                     inserted_mm=[s_oph - 15.0, s_oph - 8.0], path_mm=path)
    _turn_then_advance(st, mw.name, turn_deg, 25.0, 10.0)
    if slips:
        assert st.tip_branch() == "L_OPH"
    else:
        assert st.tip_branch() != "L_OPH"
        assert st.tip_branch() in tree.subtree("L_ICA")


def _hooked_in_the_lcca():
    """A 5F vertebral catheter over the 0.035 in wire from the right femoral artery, its tip
    hooked about 8 mm into the left common carotid artery of the atlas (type I arch), brought
    there by a pull-back as an operator does, the wire 15 mm behind its tip."""
    from iratrainer.anatomy.atlas import build_atlas

    tree = build_atlas()
    c = default_catalogue()
    path, _, lab = tree.path_polyline("R_CFA", "L_CCA", with_labels=True)
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(path, axis=0), axis=1))])
    s_ost = arc[int(np.argmax(lab == tree.index("L_CCA")))]
    cath, wire = "vertebral_5F", "guidewire_035_angled"
    st = DeviceStack(tree, [c[cath], c[wire]], inserted_mm=[s_ost + 25.0, s_ost + 10.0], path_mm=path)
    for _ in range(300):
        st.step()
    for _ in range(4000):  # 20 mm pulled back at 5 mm/s, both devices
        st.step({cath: HubCommand(-5.0, 0.0), wire: HubCommand(-5.0, 0.0)})
    for _ in range(300):
        st.step()
    return tree, st, cath, wire


def _tip(st, k):
    q = st.tree.query(st.rods[k].x[:1])
    return st.tree.branches[int(q.branch[0])].label, float(q.arc_mm[0])


def test_a_catheter_hooked_in_an_ostium_stays_still():
    """Left alone, the hooked catheter is at rest: its tip does not move from one step to the
    next (with the wall planes fixed at the start of each step it alternated between two
    directions 15-30° apart, the tip's wall force going 2 <-> 40-70 N)."""
    tree, st, cath, _ = _hooked_in_the_lcca()
    assert _tip(st, 0)[0] == "L_CCA"
    prev = st.rods[0].x[:3].copy()
    worst_move, worst_force = 0.0, 0.0
    for _ in range(100):
        st.step()
        worst_move = max(worst_move, float(np.max(np.linalg.norm(st.rods[0].x[:3] - prev, axis=1))))
        worst_force = max(worst_force, float(st.wall_force[0][:3].max()))
        prev = st.rods[0].x[:3].copy()
    assert worst_move < 0.05
    assert worst_force < 5.0


@pytest.mark.slow
def test_the_wire_goes_up_the_vessel_through_a_hooked_catheter():
    """With the catheter held, the wire pushed 60 mm goes up the left common carotid artery
    and the catheter's tip stays hooked (the manoeuvre that takes the arch vessels)."""
    tree, st, cath, wire = _hooked_in_the_lcca()
    arc0 = _tip(st, 0)[1]
    for _ in range(6000):
        st.step({wire: HubCommand(10.0, 0.0)})
    lab_c, arc_c = _tip(st, 0)
    lab_w, arc_w = _tip(st, 1)
    assert lab_c == "L_CCA" and arc_c > arc0 - 5.0
    assert lab_w == "L_CCA" and arc_w > arc_c + 30.0


def _turn_deg(rod, s0_mm: float, s1_mm: float) -> float:
    """Angle between the device's tangents at arcs s0 and s1 from its tip, degrees."""
    i0, i1 = int(s0_mm / rod.h), int(s1_mm / rod.h)
    t0, t1 = rod.x[i0] - rod.x[i0 + 1], rod.x[i1] - rod.x[i1 + 1]
    return math.degrees(math.acos(np.clip(t0 @ t1 / np.linalg.norm(t0) / np.linalg.norm(t1), -1.0, 1.0)))


@pytest.mark.slow
def test_a_simmons_re_forms_against_the_valve_and_stays_formed_when_pulled_back():
    """Simmons reformation in an aorta-sized tube (31 mm, closed at its root like the aortic
    valve): straight over the wire; with the wire pulled back, only partly re-formed (its
    170° loop, 34 mm across, cannot swing open in the lumen); pushed on against the closed
    end, the shaft buckles and the loop forms, the tip turned back towards the entry; pulled
    back, it stays formed, tip first (how a Simmons is then drawn back into an ostium)."""
    c = default_catalogue()
    tree = _tube(400.0, 15.4)  # entry at z = 400 mm, the closed root at z = 0
    cath, wire = "simmons2_5F", "guidewire_035_angled"
    st = DeviceStack(tree, [c[cath], c[wire]], access_label="TUBE", inserted_mm=[365.0, 375.0])
    for _ in range(300):
        st.step()
    rod = st.rods[0]
    assert _turn_deg(rod, 25.0, 85.0) < 10.0  # straightened by the wire
    for _ in range(7500):  # the wire back 150 mm, out of the catheter's curves
        st.step({wire: HubCommand(-20.0, 0.0)})
    partial = _turn_deg(rod, 25.0, 85.0)
    assert 40.0 < partial < 120.0
    assert rod.tip_dir[2] < 0.0  # still pointing on, towards the root
    worst = 0.0
    for _ in range(11000):  # pushed 110 mm at 10 mm/s: the tip meets the root, the shaft prolapses
        st.step({cath: HubCommand(10.0, 0.0)})
        worst = max(worst, float(st.wall_force[0].max()))
    assert rod.tip_dir[2] > 0.8  # turned back towards the entry
    formed = _turn_deg(rod, 25.0, 85.0)
    assert formed > 140.0
    z0 = rod.x[0, 2]
    for _ in range(6000):  # pulled back 60 mm
        st.step({cath: HubCommand(-10.0, 0.0)})
    assert rod.x[0, 2] > z0 + 40.0  # the tip leads the pull-back
    assert rod.tip_dir[2] > 0.8 and _turn_deg(rod, 25.0, 85.0) > 140.0
    # a few newtons (5.3) against the root while the loop forms (the radius-scaled thresholds call
    # 2 N "perforation" in a 15 mm aorta: see docs/physics.md, wall forces)
    assert worst < 10.0


@pytest.mark.parametrize("name", sorted(default_catalogue()))
def test_past_the_uniform_point_a_device_is_plain_shaft(name):
    """The per-step cache of the sheath nodes' stiffness holds beyond ``uniform_from_mm``:
    there EI is exactly the shaft value and there is no rest curvature."""
    spec = default_catalogue()[name]
    s0 = spec.uniform_from_mm
    assert s0 > spec.soft_length_mm
    for s in (s0, s0 + 0.37, s0 + 100.0, spec.length_mm):
        assert spec.ei_scalar(s) == spec.ei_scalar(spec.length_mm + 1e3)
        assert spec.rest_curvature_scalar(s) == 0.0
        assert float(spec.ei_at(s)) == spec.bending_stiffness_n_mm2 * (spec.soft_ratio + (1.0 - spec.soft_ratio))


def test_cached_stiffness_profiles_match_a_fresh_computation():
    """After the hubs move (nodes added, removed, or only the inserted length changed, with the
    sheath nodes on the soft tip or on the shaft), the cached per-node profiles are those
    computed afresh for the device as it now is."""
    from iratrainer.anatomy.atlas import build_atlas

    cat = default_catalogue()
    tree = build_atlas()
    wire = cat["guidewire_035_angled"]
    assert wire.uniform_from_mm > 20.0
    for names, inserted in ((["vertebral_5F", "guidewire_035_angled"], [200.0, 230.0]),
                            (["guidewire_035_angled"], [12.0])):
        stack = DeviceStack(tree, [cat[n] for n in names], inserted_mm=inserted)
        for speed in (30.0, -30.0, 0.7, -0.7):
            for _ in range(40):
                stack.step({n: HubCommand(speed, 45.0) for n in names})
                for rod in stack.rods:
                    cached = [a.copy() for a in rod._profiles()]
                    rod._prof_key = rod._prof_k = None  # forget the cache
                    for c, f in zip(cached, rod._profiles(), strict=True):
                        np.testing.assert_array_equal(c, f)
