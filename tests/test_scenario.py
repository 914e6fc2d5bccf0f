"""Cases, the rail device model, the Procedure, autopilots and headless runs (issue: cases and procedure)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from iratrainer.anatomy.atlas import AtlasParams, build_atlas
from iratrainer.cli import main
from iratrainer.physics.catalogue import default_catalogue
from iratrainer.scenario.case import CaseError, case_dirs, default_case_path, list_cases, load_case
from iratrainer.scenario.procedure import (
    PHASES,
    Controls,
    Procedure,
    ProcedureError,
    load_control_log,
    replay,
    save_control_log,
)
from iratrainer.scenario.run import HeadlessRun
from iratrainer.scenario.track import RailStack, TrackDevice

CASES = sorted(case_dirs()[0].glob("*.toml"))
DEFAULT = default_case_path()


# ---------------------------------------------------------------- case files
def test_library_has_the_required_cases():
    cases = list_cases()
    ids = {c.id for c in cases}
    assert len(cases) >= 12
    assert sum(c.default for c in cases) == 1 and load_case(DEFAULT).id == "l-m1-type1-femoral"
    occl = {(c.occlusions[0].branch if c.occlusions else None) for c in cases}
    assert {"L_MCA_M1", "R_MCA_M1", "L_ICA", "L_MCA_M2_SUP", "BA"} <= occl
    assert any(c.anatomy.get("arch") == "III" and "simmons2_5F" in c.devices for c in cases)
    assert any(c.access == "right_radial" for c in cases)
    assert any(len(c.occlusions) >= 2 for c in cases)  # tandem
    assert sum(c.goal.kind == "navigate" for c in cases) >= 3
    assert "nav-ica-not-eca" in ids


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_every_shipped_case_validates(path):
    case = load_case(path)
    tree = case.load_tree()
    assert case.title["fr"] and case.title["en"] and case.vignette.text["fr"]
    assert case.access_label(tree) in tree


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "case.toml"
    p.write_text(text, encoding="utf-8")
    return p


@pytest.mark.parametrize("change, msg", [
    (("level = \"thrombectomy\"", "level = \"expert\""), "level: expected one of"),
    (("format = 1", "format = 2"), "format: this version reads format 1"),
    (("\"stent_retriever_4x40\"]", "\"stent_retreiver_4x40\"]"), "devices\\[7\\]: unknown device 'stent_retreiver_4x40' "
                                                                "\\(closest: stent_retriever_4x40"),
    (("age = 67", "age = \"old\""), "vignette.age: expected int"),
    (("collateral_grade = 2", "collateral_grade = 7"), "collateral_grade: expected 0 to 4"),
    (("access = \"right_femoral\"", "access = \"carotid\""), "access: expected one of"),
    (("[goal]", "[goalx]"), "goal: missing"),
    (("length_mm = 8.0", "length_mm = -8.0"), "occlusion\\[0\\].length_mm: expected > 0"),
])
def test_bad_case_files_name_the_file_and_the_field(tmp_path, change, msg):
    text = DEFAULT.read_text(encoding="utf-8")
    assert change[0] in text
    p = _write(tmp_path, text.replace(change[0], change[1], 1))
    with pytest.raises(CaseError, match=msg) as ei:
        load_case(p)
    assert str(p) in str(ei.value)


def test_anatomy_mismatch_is_reported_at_tree_load(tmp_path):
    text = DEFAULT.read_text(encoding="utf-8")
    p = _write(tmp_path, text.replace("branch = \"L_MCA_M1\"", "branch = \"L_MCA_M7\"").replace(
        "target = \"L_MCA_M1\"", "target = \"L_ICA\""))
    with pytest.raises(CaseError, match="occlusion\\[0\\].branch: unknown branch 'L_MCA_M7'"):
        load_case(p).load_tree()
    p2 = _write(tmp_path, text.replace("start_mm = 8.0", "start_mm = 18.0"))
    with pytest.raises(CaseError, match="runs beyond the end of L_MCA_M1"):
        load_case(p2).load_tree()


def test_cli_case_commands(tmp_path, capsys):
    assert main(["case", "validate", str(DEFAULT)]) == 0
    assert main(["case", "list", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert len(rows) == len(CASES) and sum(r["default"] for r in rows) == 1
    broken = _write(tmp_path, "format = 1\nid = [")
    assert main(["case", "validate", str(broken)]) == 2
    err = capsys.readouterr().err
    assert str(broken) in err and "not valid TOML" in err and "Traceback" not in err


# ---------------------------------------------------------------- the rail model
def _choose(arch: str, device: str, phi: float, parent: str, s: float, direction: int) -> str | None:
    tree = build_atlas(AtlasParams(arch=arch))
    rs = RailStack(tree, "R_CFA")
    dev = TrackDevice(default_catalogue()[device], phi_deg=phi)
    travel = rs._opening(parent, s, direction)
    w = rs.choose(dev, rs.ways(parent, s, direction), travel)
    return w.label if w else None


def test_torque_selects_ica_or_eca():
    tree = build_atlas()
    L = tree.length_mm("L_CCA")
    picks = {_choose("I", "guidewire_035_angled", phi, "L_CCA", L, 1) for phi in range(0, 360, 30)}
    assert picks == {"L_ICA", "L_ECA"}  # the hub angle decides


def test_type_three_arch_needs_a_reverse_curve():
    for arch, ok in (("I", True), ("III", False)):
        tree = build_atlas(AtlasParams(arch=arch))
        sj = float(tree["AO_ARCH"].arc_mm[tree["L_CCA"].parent_index])
        got = {_choose(arch, "vertebral_5F", phi, "AO_ARCH", sj, -1) for phi in range(0, 360, 15)}
        assert ("L_CCA" in got) is ok


def test_catheter_does_not_fit_small_vessels_and_stops_at_clot():
    tree = build_atlas()
    rs = RailStack(tree, "R_CFA")
    dev = TrackDevice(default_catalogue()["balloon_guide_8F"])
    assert not rs._fits(dev, "L_MCA_M1", 0.0, 1)
    assert rs._fits(TrackDevice(default_catalogue()["microwire_014"]), "L_MCA_M2_SUP_C1", 0.0, 1)


# ---------------------------------------------------------------- procedure
@pytest.fixture(scope="module")
def nav_run():
    case = load_case(case_dirs()[0] / "nav-ica-not-eca.toml")
    hr = HeadlessRun(case, "expert", 3, render=False)
    hr.run()
    return case, hr


def test_navigation_case_succeeds_and_replays_bit_for_bit(nav_run, tmp_path):
    case, hr = nav_run
    assert hr.proc.outcome == "success"
    path = save_control_log(tmp_path / "c.json", case, 3, hr.control_log, hr.proc.step_index)
    header, log = load_control_log(path)
    assert header["case_hash"] == case.content_hash
    again = replay(case, header["seed"], log, header["steps"])
    assert json.dumps(again.event_log()) == json.dumps(hr.proc.event_log())
    assert again.metrics() == hr.proc.metrics()


def test_broken_control_log(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text("{\"controls\": [[1, {\"nope\": 1}]]}")
    with pytest.raises(ProcedureError, match="not a control log"):
        load_control_log(p)


def test_refused_actions_are_logged_not_raised():
    proc = Procedure(load_case(DEFAULT), 0)
    for a in ("insert:multipurpose_5F", "remove:balloon_guide_8F", "dsa", "inject:5:3", "balloon:on",
              "carm:sideways:0:0", "frobnicate", "insert:microwire_014", "insert:microcatheter_021"):
        proc.step(Controls(action=a))
    refused = [e for e in proc.events if e.kind == "refused"]
    assert len(refused) == 8  # all but inserting the microwire
    assert any("no lumen" in e.data["reason"] for e in refused)
    assert proc.outcome is None
    proc.step(Controls(device="ghost", advance_mm_s=10))
    assert proc.events[-1].kind == "refused"


def test_dose_and_contrast_are_tallied():
    proc = Procedure(load_case(DEFAULT), 0)
    for a in ("insert:balloon_guide_8F",):
        proc.step(Controls(action=a))
    for _ in range(150):
        proc.step(Controls(device="balloon_guide_8F", advance_mm_s=40.0, fluoro=True))
    assert proc.dose.fluoro_time_s == pytest.approx(2 * 150 * proc.dt, rel=0.1)  # biplane, pedal held 5 s
    proc.step(Controls(action="dsa:3"))
    for _ in range(100):
        proc.step(Controls())
    assert proc.contrast_ml == 7.0 and proc.dsa_runs == 1  # a selective run: 7 mL at 5 mL/s
    m = proc.metrics()
    assert m["dap_gy_cm2"] > 0 and m["kar_mgy"] > 0


@pytest.mark.parametrize("pps", [3.75, 15.0, 30.0])
def test_pulse_rate_sets_pulses_and_dose_rate_not_dose_per_pulse(pps):
    """Dose per pulse and pulse rate are independent (Balter 2014): doubling the rate doubles
    the pulses and the fluoroscopy DAP over the same pedal time; the fluoroscopy time does not change."""
    runs = {}
    for rate in (7.5, pps):
        proc = Procedure(load_case(DEFAULT), 0)
        proc.step(Controls(action="insert:balloon_guide_8F"))
        proc.step(Controls(action=f"pulse:{rate:g}"))
        pulses = 0
        for _ in range(120):  # 4 s, frontal only
            proc.step(Controls(device="balloon_guide_8F", advance_mm_s=20.0, fluoro=True, biplane=False))
            pulses += len(proc.exposures_this_step)
        runs[rate] = (pulses, proc.dose.dap_gy_cm2, proc.dose.fluoro_time_s)
    assert runs[7.5][0] == 30 and runs[pps][0] == round(4 * pps)
    assert runs[pps][1] / runs[7.5][1] == pytest.approx(pps / 7.5, rel=1e-9)
    assert runs[pps][2] == pytest.approx(runs[7.5][2], abs=2 / 7.5)
    proc.step(Controls(action="pulse:12"))
    assert proc.events[-1].kind == "refused" and "3.75" in proc.events[-1].data["reason"]


def test_zoom_and_collimation_change_the_field_and_the_dap():
    """DAP = Ka,r x field area: collimating the iris to half the radius quarters the area and
    the DAP per pulse; the operator's zoom survives the table following the tip."""
    dap = {}
    for coll in (1.0, 0.5):
        proc = Procedure(load_case(DEFAULT), 0)
        proc.step(Controls(action="insert:balloon_guide_8F"))
        proc.step(Controls(action="zoom:frontal:16"))
        proc.step(Controls(action=f"collimate:frontal:{coll}"))
        for _ in range(60):
            proc.step(Controls(device="balloon_guide_8F", advance_mm_s=40.0, fluoro=True, biplane=False))
        assert proc.planes["frontal"].fov_cm == 16.0 and proc.planes["frontal"].collimation == coll
        dap[coll] = proc.dose.dap_gy_cm2
    assert dap[0.5] / dap[1.0] == pytest.approx(0.25, rel=0.02)
    proc.step(Controls(action="zoom:frontal:auto"))
    assert proc.planes["frontal"].fov_cm != 16.0
    proc.step(Controls(action="zoom:frontal:25"))
    assert proc.events[-1].kind == "refused" and "30, 22, 16, 11" in proc.events[-1].data["reason"]
    proc.step(Controls(action="collimate:lateral:0.05"))
    assert proc.events[-1].kind == "collimate" and proc.planes["lateral"].collimation == 0.2  # clamped, said


def test_the_table_frames_the_head_or_the_neck_and_then_follows_the_tip_again():
    """``table:head`` moves the field to the head whatever the tip's position (an intracranial
    run from a guide in the groin's reach), ``table:neck`` to the neck, ``auto`` back to the tip."""
    from iratrainer.scenario.procedure import TABLE_VIEWS

    proc = Procedure(load_case(DEFAULT), 0)
    proc.step(Controls(action="insert:balloon_guide_8F"))
    for _ in range(30):
        proc.step(Controls(device="balloon_guide_8F", advance_mm_s=40.0, fluoro=True))
    low = proc.planes["frontal"].isocentre_mm
    assert low[2] < 0.0  # the table followed the tip in the groin
    for view in ("head", "neck"):
        proc.step(Controls(action=f"table:{view}"))
        assert proc.events[-1].kind == "table"
        for plane in proc.planes.values():
            assert plane.isocentre_mm == TABLE_VIEWS[view][0]
        proc.step(Controls(fluoro=True))  # fluoroscopy does not move a placed table
        assert proc.planes["lateral"].isocentre_mm == TABLE_VIEWS[view][0]
    proc.step(Controls(action="table:auto"))
    assert proc.planes["frontal"].isocentre_mm == low
    proc.step(Controls(action="table:feet"))
    assert proc.events[-1].kind == "refused" and "head, neck or auto" in proc.events[-1].data["reason"]


def test_time_limit_truncates():
    case = replace(load_case(DEFAULT), time_limit_min=0.05)
    proc = Procedure(case, 0)
    while not proc.terminated:
        proc.step(Controls())
    assert proc.outcome == "time_limit" and proc.events[-1].data["reason"] == "time_limit"


def test_cli_run_writes_result_controls_events_and_cine(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "nav-arch-lcca", "--headless", "--autopilot", "expert", "--out", str(out), "--cine",
                 "--matrix", "128"]) == 0
    res = json.loads((out / "result.json").read_text())
    for key in ("outcome", "procedure_time_s", "phases", "passes", "tici", "complications", "fluoro_time_s",
                "dap_gy_cm2", "kar_mgy", "contrast_ml", "realtime_factor"):
        assert key in res
    assert res["outcome"] == "success"
    assert (out / "controls.json").exists() and (out / "events.jsonl").read_text().count("\n") > 5
    dcm = sorted((out / "cine").glob("*.dcm"))
    assert dcm, "the roadmap run should be written as DICOM"
    import pydicom

    ds = pydicom.dcmread(dcm[0])
    assert ds.Modality == "XA" and int(ds.NumberOfFrames) >= 2
    from PIL import Image

    gif = Image.open(out / "cine" / "procedure.gif")
    assert gif.n_frames > 3
    frame = np.asarray(gif.convert("L"), dtype=float)
    assert frame.std() > 5.0  # an image, not a blank


def test_cli_run_errors(tmp_path, capsys):
    assert main(["run", "no-such-case", "--headless", "--autopilot", "expert", "--out", str(tmp_path)]) == 2
    assert "no such case" in capsys.readouterr().err
    assert main(["run", str(DEFAULT), "--headless", "--out", str(tmp_path)]) == 2
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["run", "nav-arch-lcca", "--headless", "--autopilot", "expert", "--out", str(blocker / "sub"),
                 "--no-render"]) == 2
    assert "cannot write" in capsys.readouterr().err


# ---------------------------------------------------------------- long runs
@pytest.mark.slow
@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_every_shipped_case_completes_with_the_expert(path):
    hr = HeadlessRun(load_case(path), "expert", 0, render=False)
    proc = hr.run()
    assert proc.outcome == "success", proc.events[-3:]
    if proc.case.goal.kind == "thrombectomy":
        need = {"access", "guide_placement", "retrieval", "control_dsa", "full_angiogram", "device_removal"}
        if proc.case.access != "model_root":
            need |= {"arch_navigation", "cca_access_roadmap"}
        if any(p["technique"] == "stent_retriever" for p in proc.passes):
            need |= {"crossing", "deployment"}
        assert need <= set(proc.phases), need - set(proc.phases)


@pytest.mark.slow
def test_default_case_expert_and_novice():
    case = load_case(DEFAULT)
    ex = HeadlessRun(case, "expert", 1, render=False)
    ex.run()
    assert ex.proc.outcome == "success" and set(PHASES) <= set(ex.proc.phases)
    nv = HeadlessRun(case, "novice", 1, render=False)
    nv.run()
    assert nv.proc.outcome in ("success", "ended")
    assert nv.proc.metrics()["fluoro_time_s"] > ex.proc.metrics()["fluoro_time_s"]
    # a complete thrombectomy lands in the published DAP range: within 25 % of the median for
    # its number of passes (Weyland, Eur Radiol 2020, n = 544: 68.7, 106.4, 130.2, 169.9,
    # 227.6 Gy·cm² for 1-5 passes), and the novice's above the expert's
    for run in (ex, nv):
        n_pass = max(1, min(5, len(run.proc.passes)))
        published = (68.7, 106.4, 130.2, 169.9, 227.6)[n_pass - 1]
        assert 0.75 * published <= run.proc.dose.dap_gy_cm2 <= 1.25 * published, (n_pass, run.proc.dose.dap_gy_cm2)
    assert nv.proc.dose.dap_gy_cm2 > ex.proc.dose.dap_gy_cm2
    # the run protocol: runs framed on the head and on the neck, a gentle run through the microcatheter
    views = [e.data["view"] for e in ex.proc.events if e.kind == "table"]
    assert {"head", "neck", "auto"} <= set(views)
    micro = [e.data for e in ex.proc.events if e.kind == "inject" and e.data["catheter"] == "microcatheter_021"]
    assert micro and all(d["volume_ml"] == 2.0 and d["rate_ml_s"] == 1.0 for d in micro)
    again = replay(case, 1, ex.control_log, ex.proc.step_index)
    assert json.dumps(again.event_log()) == json.dumps(ex.proc.event_log())


# ---------------------------------------------------------------- authoring from DICOM
def test_shipped_segmented_case_has_atlas_labels():
    case = load_case(case_dirs()[0] / "seg-l-m1-cta.toml")
    tree = case.load_tree()
    assert {"L_ICA", "L_MCA_M1", "L_ACA_A1", "L_MCA_M2_SUP", "L_MCA_M2_INF"} <= set(tree.labels)
    assert case.access == "model_root" and "segment" in json.dumps(tree.metadata).lower()


def test_case_new_refuses_a_2d_run_and_unknown_labels(tmp_path, capsys):
    run = tmp_path / "dsa.dcm"
    assert main(["render", "--atlas", "I", "--mode", "dsa", "--size", "64", "--inject", "L_ICA", "--no-devices",
                 "--out", str(run)]) == 0
    assert main(["case", "new", "--from-dicom", str(run), "--occlusion", "L_MCA_M1", "--out",
                 str(tmp_path / "x.toml"), "--quiet"]) == 2
    assert "2-D run" in capsys.readouterr().err
    assert main(["case", "new", "--from-dicom", str(run), "--occlusion", "L_MCA_M1", "--out",
                 str(tmp_path / "x.txt"), "--quiet"]) == 2


@pytest.mark.slow
def test_case_from_a_ct_series_validates_and_plays(tmp_path):
    from iratrainer.segmentation.phantom import cta_volume, subtree, write_ct_series

    ph = cta_volume(subtree(build_atlas(), "L_ICA", depth=2), voxel_mm=0.6, margin_mm=5.0, seed=3)
    write_ct_series(ph, tmp_path / "ct", seed=3)
    (tmp_path / "cases").mkdir()
    out = tmp_path / "cases" / "mine.toml"
    assert main(["case", "new", "--from-dicom", str(tmp_path / "ct"), "--occlusion", "L_MCA_M1", "--out", str(out),
                 "--quiet"]) == 0
    assert (tmp_path / "cases" / "models" / "mine.vessels.json").exists()
    assert (tmp_path / "cases" / "models" / "mine.png").exists()
    hr = HeadlessRun(load_case(out), "expert", 0, render=False)
    assert hr.run().outcome == "success"


def _ct_case(tmp_path: Path, shift_mm: float) -> Path:
    """The shipped segmented case, with a synthetic CT series of the same patient as background."""
    import shutil

    from iratrainer.segmentation.phantom import cta_volume, subtree, write_ct_series

    src = case_dirs()[0]
    (tmp_path / "models").mkdir()
    shutil.copy(src / "models" / "seg-l-m1-cta.vessels.json", tmp_path / "models")
    tree = subtree(build_atlas(), "L_ICA", depth=2)
    ph = cta_volume(tree, voxel_mm=2.0, margin_mm=12.0, seed=1)
    ph.affine[:3, 3] += shift_mm
    write_ct_series(ph, tmp_path / "ct", seed=1)
    text = (src / "seg-l-m1-cta.toml").read_text(encoding="utf-8")
    text = text.replace('model = "models/seg-l-m1-cta.vessels.json"',
                        'model = "models/seg-l-m1-cta.vessels.json"\nbackground_ct = "ct"')
    p = tmp_path / "ct-case.toml"
    p.write_text(text, encoding="utf-8")
    return p


def test_case_with_a_background_ct(tmp_path):
    from iratrainer.imaging.ct_background import CtBackground
    from iratrainer.imaging.geometry import frontal
    from iratrainer.imaging.render import CpuRenderer

    case = load_case(_ct_case(tmp_path, 0.0))
    proc = Procedure(case, 0)
    assert isinstance(proc.phantom, CtBackground)
    scene = proc.snapshot()
    lo, hi = proc.tree.bounds_mm()
    plane = frontal(matrix=96, isocentre_mm=tuple((lo + hi) / 2), fov_cm=22.0)
    bg = CpuRenderer().background(scene, plane, 50.0)
    assert bg.max() > 1.0  # the CT (tissue, bone) attenuates the beam
    assert main(["case", "validate", str(case.path)]) == 0


def test_background_ct_of_another_patient_is_refused(tmp_path, capsys):
    p = _ct_case(tmp_path, 300.0)
    assert main(["case", "validate", str(p)]) == 2
    assert "does not contain the vessel model" in capsys.readouterr().err
