"""`iratrainer render`: what a person sees (pixel statistics) and valid DICOM that reads back."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from iratrainer.cli import main
from iratrainer.imaging.geometry import lateral


def _png(path) -> np.ndarray:
    import matplotlib.image as mpimg

    return mpimg.imread(path)


def test_lateral_dsa_png_shows_dark_carotid_on_grey(tmp_path):
    out = tmp_path / "dsa.png"
    assert main(["render", "--atlas", "I", "--plane", "lateral", "--mode", "dsa", "--size", "256",
                 "--out", str(out)]) == 0
    img = _png(out)
    assert img.shape == (256, 256)
    # outside the round field: black; background: mid-grey; the left ICA: dark
    assert img[2, 2] == 0.0 and img[-3, -3] == 0.0
    from iratrainer.anatomy.atlas import build_atlas

    tree = build_atlas()
    plane = lateral(matrix=256)
    px, _ = plane.project(tree.point_at("L_ICA", np.linspace(0, tree.length_mm("L_ICA"), 200)))
    ij = px.astype(int)
    infield = (np.hypot(*(px - 128.0).T) < 120)
    assert infield.sum() > 50
    vessel = img[ij[infield, 1], ij[infield, 0]]
    inside = img[img > 0]
    assert np.median(inside) == pytest.approx(0.5, abs=0.05)
    assert np.median(vessel) < 0.25


def test_fluoro_and_roadmap_differ_as_they_should(tmp_path):
    f, r = tmp_path / "f.png", tmp_path / "r.png"
    common = ["--atlas", "II", "--plane", "frontal", "--size", "192", "--no-noise"]
    assert main(["render", *common, "--mode", "fluoro", "--out", str(f)]) == 0
    assert main(["render", *common, "--mode", "roadmap", "--out", str(r)]) == 0
    fl, rm = _png(f), _png(r)
    # roadmap: background cancelled (mid-grey), vessels white; fluoro: anatomy in grey levels
    inside = rm[rm > 0]
    assert np.median(inside) == pytest.approx(0.5, abs=0.03)
    assert (inside > 0.7).mean() > 0.005
    assert fl[fl > 0].std() > 0.05


def test_same_seed_same_png_bytes(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    for p in (a, b):
        main(["render", "--atlas", "I", "--plane", "lateral", "--mode", "fluoro", "--size", "128",
              "--seed", "7", "--out", str(p)])
    assert a.read_bytes() == b.read_bytes()


def test_dicom_export_reads_back_with_geometry(tmp_path):
    import pydicom

    out = tmp_path / "run.dcm"
    assert main(["render", "--atlas", "I", "--plane", "lateral", "--mode", "dsa", "--size", "128",
                 "--lao", "85", "--cran", "5", "--out", str(out)]) == 0
    ds = pydicom.dcmread(out)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.12.1" and ds.Modality == "XA"
    assert int(ds.NumberOfFrames) == 10 and ds.pixel_array.shape == (10, 128, 128)
    assert float(ds.PositionerPrimaryAngle) == 85.0 and float(ds.PositionerSecondaryAngle) == 5.0
    assert float(ds.DistanceSourceToDetector) == 1250.0 and float(ds.DistanceSourceToPatient) == 780.0
    assert float(ds.ImagerPixelSpacing[0]) == pytest.approx(220.0 / 128, rel=1e-5)
    assert ds.MaskSubtractionSequence[0].MaskFrameNumbers == 1
    assert float(ds.ImageAndFluoroscopyAreaDoseProduct) > 0
    assert "SIMULATED" in str(ds.PatientName)


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools not installed")
@pytest.mark.parametrize("mode", ["dsa", "fluoro"])
def test_dicom_export_is_valid_under_dciodvfy(tmp_path, mode):
    out = tmp_path / f"{mode}.dcm"
    assert main(["render", "--atlas", "I", "--plane", "frontal", "--mode", mode, "--size", "64",
                 "--out", str(out)]) == 0
    p = subprocess.run(["dciodvfy", str(out)], capture_output=True, text=True, timeout=60)
    report = p.stdout + p.stderr
    assert "Error" not in report, report


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--out", "{tmp}/x.jpg"], "must end in .png or .dcm"),
        (["--out", "{tmp}/missing/x.png"], "does not exist"),
        (["--case", "cases/none.toml", "--out", "{tmp}/x.png"], "cases/none.toml: cannot read the case file"),
        (["--inject", "NOPE", "--out", "{tmp}/x.png"], "NOPE"),
    ],
)
def test_render_user_errors(tmp_path, capsys, argv, needle):
    args = ["render", *([] if "--case" in argv else ["--atlas", "I"]), "--size", "32"]
    rc = main(args + [a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and "Traceback" not in err


def test_out_of_range_angle_is_clamped_with_a_warning(tmp_path, capsys):
    rc = main(["render", "--atlas", "I", "--size", "32", "--lao", "170", "--out", str(tmp_path / "x.png")])
    assert rc == 0
    assert "lao_deg 170 outside the C-arm's range, clamped to 120" in capsys.readouterr().err


def test_render_a_case_uses_its_flow_model(tmp_path):
    """--case: the occluded M1's territory stays dark while the ACA fills (the cut-off)."""
    import matplotlib.image as mpimg

    from iratrainer.scenario.case import load_case, resolve_case

    out = tmp_path / "case.png"
    assert main(["render", "--case", "l-m1-type1-femoral", "--plane", "frontal", "--mode", "dsa", "--size", "128",
                 "--no-noise", "--duration", "3", "--out", str(out)]) == 0
    img = np.asarray(mpimg.imread(out), dtype=float)
    img = img if img.ndim == 2 else img[..., 0]
    case = load_case(resolve_case("l-m1-type1-femoral"))
    tree = case.load_tree()
    from iratrainer.imaging.geometry import frontal

    p = frontal(matrix=128)

    def darkness(label: str) -> float:
        uv, _ = p.project(tree.point_at(label, tree.length_mm(label) * np.array([0.3, 0.5, 0.7])))
        px = np.clip(np.round(uv - 0.5).astype(int), 0, 127)
        return float(np.mean(1.0 - img[px[:, 1], px[:, 0]]))

    assert darkness("L_ACA_A2") > darkness("L_MCA_M2_SUP") + 0.05
