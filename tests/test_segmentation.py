"""DICOM import, de-identification and 3-D segmentation, measured against phantoms with truth."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest

from iratrainer.anatomy.atlas import build_atlas
from iratrainer.cli import main
from iratrainer.segmentation.dicom_io import DicomInputError, Run2D, Volume, read_dicom
from iratrainer.segmentation.evaluate import centerline_accuracy
from iratrainer.segmentation.phantom import (
    PLANTED_PHI,
    PLANTED_PRIVATE,
    cta_volume,
    random_tree,
    subtree,
    write_ct_series,
)
from iratrainer.segmentation.vessel3d import SegmentationError, segment_volume


@pytest.fixture(scope="module")
def small_phantom():
    return cta_volume(subtree(build_atlas(), "L_MCA_M1", depth=1), voxel_mm=0.5, seed=3)


# ---------------------------------------------------------------- reading
@pytest.mark.parametrize("compress", [None, "rle", "j2k", "jls"])
def test_series_is_assembled_by_position_not_file_name(tmp_path, small_phantom, compress):
    write_ct_series(small_phantom, tmp_path / "s", compress=compress, seed=5)
    v = read_dicom([tmp_path / "s"])
    assert isinstance(v, Volume) and v.modality == "CT"
    assert np.abs(v.voxels - small_phantom.hu).max() <= 0.51  # stored as integers
    np.testing.assert_allclose(v.affine, small_phantom.affine, atol=1e-9)
    np.testing.assert_allclose(v.spacing_mm, [0.5, 0.5, 0.5])


def test_a_folder_of_several_series_takes_the_angiographic_one_and_says_so(tmp_path, small_phantom):
    """A folder holding a CT angiography series, a shorter CT series and an XA run: the XA run is
    taken and the choice is said; ``series_uid`` takes another; an unknown UID is a clear error."""
    write_ct_series(small_phantom, tmp_path / "mix" / "cta", seed=1)
    short = cta_volume(subtree(build_atlas(), "L_MCA_M1", depth=0), voxel_mm=1.0, seed=2, bone=False)
    short_files = write_ct_series(short, tmp_path / "mix" / "short", seed=2)
    assert main(["render", "--atlas", "I", "--mode", "dsa", "--size", "64", "--inject", "L_ICA", "--no-devices",
                 "--out", str(tmp_path / "mix" / "run.dcm")]) == 0
    said: list[str] = []
    got = read_dicom([tmp_path / "mix"], say=said.append)
    assert isinstance(got, Run2D)
    assert any("3 series" in m and "XA" in m and "--series" in m for m in said), said
    # without the run, the CT series with the most images
    (tmp_path / "mix" / "run.dcm").unlink()
    said.clear()
    got = read_dicom([tmp_path / "mix"], say=said.append)
    assert isinstance(got, Volume) and got.voxels.shape == small_phantom.hu.shape
    assert any("2 series" in m and "CT" in m for m in said), said
    other = str(pydicom.dcmread(short_files[0]).SeriesInstanceUID)
    got = read_dicom([tmp_path / "mix"], series_uid=other)
    assert isinstance(got, Volume) and got.voxels.shape == short.hu.shape
    with pytest.raises(DicomInputError, match="no series with that UID"):
        read_dicom([tmp_path / "mix"], series_uid="1.2.3.4")


def test_inconsistent_spacing_mixed_and_broken_inputs(tmp_path, small_phantom):
    files = sorted(write_ct_series(small_phantom, tmp_path / "s", seed=1))
    # move one slice: inconsistent spacing
    ds = pydicom.dcmread(files[5])
    ds.ImagePositionPatient = [float(v) for v in ds.ImagePositionPatient[:2]] + [float(ds.ImagePositionPatient[2]) + 0.2]
    ds.save_as(files[5])
    with pytest.raises(DicomInputError, match="inconsistent slice spacing"):
        read_dicom([tmp_path / "s"])
    (tmp_path / "notdicom.txt").write_text("hello")
    with pytest.raises(DicomInputError, match="notdicom.txt: not a DICOM file"):
        read_dicom([tmp_path / "notdicom.txt"])
    trunc = tmp_path / "trunc.dcm"
    trunc.write_bytes(files[0].read_bytes()[:600])
    with pytest.raises(DicomInputError, match="trunc.dcm"):
        read_dicom([trunc])
    one = pydicom.dcmread(files[0])
    del one.PixelData
    nopix = tmp_path / "nopix.dcm"
    one.save_as(nopix)
    with pytest.raises(DicomInputError, match="no pixel data"):
        read_dicom([nopix])
    with pytest.raises(DicomInputError, match="a single image"):
        read_dicom([files[0]])
    with pytest.raises(DicomInputError, match="no such file"):
        read_dicom([tmp_path / "missing"])


def test_exported_xa_run_reads_back_with_geometry(tmp_path):
    out = tmp_path / "run.dcm"
    assert main(["render", "--atlas", "I", "--plane", "lateral", "--mode", "dsa", "--size", "128",
                 "--lao", "88", "--out", str(out)]) == 0
    run = read_dicom([out])
    assert isinstance(run, Run2D)
    assert run.frames.shape == (10, 128, 128)
    assert run.primary_deg == 88.0 and run.sid_mm == 1250.0 and run.sod_mm == 780.0
    assert run.calibrated and run.pixel_mm == pytest.approx(220.0 / 128 * 780 / 1250, rel=1e-5)


# ---------------------------------------------------------------- de-identification
def test_no_identifying_value_reaches_any_output(tmp_path, capsys):
    ph = cta_volume(subtree(build_atlas(), "L_MCA_M1", depth=1), voxel_mm=0.6, seed=2)
    files = write_ct_series(ph, tmp_path / "phi", plant_phi=True)
    originals = {str(pydicom.dcmread(files[0]).get(k)) for k in ("StudyInstanceUID", "SeriesInstanceUID")}
    model, preview = tmp_path / "m.vessels.json", tmp_path / "p.png"
    assert main(["segment", str(tmp_path / "phi"), "--out", str(model), "--preview", str(preview)]) == 0
    captured = capsys.readouterr()
    outputs = {"model": model.read_bytes(), "preview": preview.read_bytes(),
               "console": (captured.out + captured.err).encode()}
    needles = list(PLANTED_PHI.values()) + [PLANTED_PRIVATE] + sorted(originals)
    for name, blob in outputs.items():
        for needle in needles:
            assert needle.encode() not in blob, f"{needle!r} leaked into the {name}"
            assert needle.upper().encode() not in blob.upper()
    meta = json.loads(model.read_text())["metadata"]
    assert meta["provenance"]["deidentification"].startswith("DICOM PS3.15")


@pytest.mark.filterwarnings("ignore:The value length")
def test_deidentify_dataset_removes_phi_and_remaps_uids(tmp_path):
    from iratrainer.segmentation.deid import Pseudonymizer, deidentify_dataset

    ph = cta_volume(random_tree(1, n_branches=2), voxel_mm=1.0, bone=False)
    f = write_ct_series(ph, tmp_path / "x", plant_phi=True)[0]
    ds = pydicom.dcmread(f)
    p = Pseudonymizer(b"k")
    out = deidentify_dataset(ds, p)
    text = str(out)
    for v in list(PLANTED_PHI.values()) + [PLANTED_PRIVATE, str(ds.StudyInstanceUID)]:
        assert v not in text
    assert out.StudyInstanceUID == p.uid(str(ds.StudyInstanceUID))  # consistent remapping
    assert out.PatientIdentityRemoved == "YES"


# ---------------------------------------------------------------- segmentation accuracy
def test_atlas_branches_meet_the_accuracy_goals(small_phantom):
    """Low contrast (170 HU, 30 HU noise, fading distally) with bone: the goals of the issue."""
    seg = segment_volume(Volume(small_phantom.hu, small_phantom.affine, "CT", {}))
    acc = centerline_accuracy(seg.tree, small_phantom.tree, small_phantom.voxel_mm)
    assert acc.mean_distance_vox <= 0.35
    assert acc.p95_distance_vox <= 0.9
    assert acc.precision >= 0.98 and acc.recall >= 0.98
    assert acc.median_radius_error <= 0.08
    assert abs(acc.branches_detected - acc.branches_true) <= 0.25 * acc.branches_true


def test_random_trees_keep_their_vessels_apart():
    """The phantom's promise: no two vessels closer than 1 mm wall to wall (except a branch at
    its own origin), and every parent goes on for 3 of its radii + 2 mm past each branch point."""
    for seed in (5, 6, 7):
        t = random_tree(seed)
        assert len(t) >= 5
        for b in t.branches:
            arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(b.points_mm, axis=0), axis=1))])
            for o in t.branches:
                if o.label == b.label or o.parent == b.label:
                    continue
                if b.parent == o.label:
                    r_par = float(o.radii_mm[b.parent_index])
                    mine = arc >= 2.0 * (r_par + float(b.radii_mm[0])) + 1.0
                    o_arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(o.points_mm, axis=0), axis=1))])
                    assert o_arc[-1] - o_arc[b.parent_index] >= 3.0 * r_par + 2.0 - 1e-9
                else:
                    mine = np.ones(len(arc), bool)
                d = np.linalg.norm(b.points_mm[mine, None] - o.points_mm[None], axis=2)
                gap = d - b.radii_mm[mine, None] - o.radii_mm[None]
                assert gap.min() >= 1.0 - 1e-9, (seed, b.label, o.label)


@pytest.mark.slow
def test_thirty_held_out_random_trees():
    """Thirty trees (seeds 200-229) kept out of the development (which used 100-119): the goals
    on all their points pooled, and every goal on at least 27 of the 30 trees taken one by one
    (28 at the time of writing; the two others have a recall of 0.973 and 0.975, thin tips)."""
    dist, rec_ok, rec_n, rad_err, all_ok = [], 0, 0, [], 0
    for seed in range(200, 230):
        truth = random_tree(seed)
        ph = cta_volume(truth, voxel_mm=0.5, seed=seed)
        seg = segment_volume(Volume(ph.hu, ph.affine, "CT", {}))
        acc = centerline_accuracy(seg.tree, truth, ph.voxel_mm)
        assert acc.precision >= 0.98, seed
        assert abs(acc.branches_detected - acc.branches_true) <= 0.25 * acc.branches_true, seed
        assert acc.p95_distance_vox <= 0.9, seed
        n_true = sum(int(np.sum(b.radii_mm >= 1.0)) for b in truth.branches)
        rec_ok += acc.recall * n_true
        rec_n += n_true
        dist.append(acc.mean_distance_vox)
        rad_err.append(acc.median_radius_error)
        all_ok += (acc.mean_distance_vox <= 0.35 and acc.recall >= 0.98 and acc.median_radius_error <= 0.08)
    assert rec_ok / rec_n >= 0.98
    assert max(dist) <= 0.35 and max(rad_err) <= 0.08
    assert all_ok >= 27


@pytest.mark.parametrize("seed", [21, 22])
def test_random_trees_not_tuned_on(seed):
    """Two random trees: every goal of the issue. Thirty held-out trees are measured below and
    reported in docs/segmentation.md."""
    truth = random_tree(seed)
    ph = cta_volume(truth, voxel_mm=0.5, seed=seed)
    seg = segment_volume(Volume(ph.hu, ph.affine, "CT", {}))
    acc = centerline_accuracy(seg.tree, truth, ph.voxel_mm)
    assert acc.median_radius_error <= 0.08
    assert abs(acc.branches_detected - acc.branches_true) <= 0.25 * acc.branches_true
    assert acc.mean_distance_vox <= 0.35 and acc.median_distance_vox <= 0.2
    assert acc.p95_distance_vox <= 0.9
    assert acc.precision >= 0.98 and acc.recall >= 0.98


def test_seed_point_roots_the_tree(small_phantom):
    truth = small_phantom.tree
    tip = truth["L_MCA_M2_SUP"].points_mm[-1]
    seg = segment_volume(Volume(small_phantom.hu, small_phantom.affine, "CT", {}), seed_point=tip)
    root = seg.tree[seg.tree.root]
    assert np.linalg.norm(root.points_mm[0] - tip) < 6.0


def test_no_vessel_is_a_clear_error():
    rng = np.random.default_rng(0)
    vol = Volume(rng.normal(40, 30, (40, 40, 40)).astype(np.float32), np.eye(4), "CT", {})
    with pytest.raises(SegmentationError):
        segment_volume(vol)


def test_segment_cli_user_errors(tmp_path, capsys):
    out = tmp_path / "m.vessels.json"
    assert main(["segment", str(tmp_path / "nothing"), "--out", str(out)]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["segment", str(tmp_path), "--out", str(tmp_path / "nofolder" / "m.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not out.exists()


def test_2d_segmentation_of_a_simulated_dsa_run(tmp_path):
    """Centerlines found in a rendered lateral DSA lie within 1 pixel of the projected truth."""
    from iratrainer.imaging.geometry import lateral
    from iratrainer.segmentation.vessel2d import segment_run

    run_path = tmp_path / "dsa.dcm"
    assert main(["render", "--atlas", "I", "--plane", "lateral", "--mode", "dsa", "--size", "512",
                 "--inject", "L_ICA", "--no-devices", "--out", str(run_path)]) == 0
    run = read_dicom([run_path])
    seg = segment_run(run)
    assert seg.mask_frame == 0 and seg.peak_frame > 0 and seg.calibrated
    atlas = build_atlas()
    plane = lateral(matrix=512)
    truth_px, true_r = [], []
    for lab in atlas.subtree("L_ICA"):
        b = atlas[lab]
        uv, depth = plane.project(b.points_mm)
        truth_px.append(uv - 0.5)  # pixel centres at integer indices
        true_r.append(b.radii_mm * plane.sid_mm / depth / plane.pixel_mm)
    T = np.vstack(truth_px)
    TR = np.concatenate(true_r)
    P = np.vstack([b.points_mm[:, :2] for b in seg.tree.branches]) / seg.pixel_mm
    from scipy.spatial import cKDTree

    d, i = cKDTree(T).query(P)
    wide = TR[i] >= 1.5  # vessels at least 3 pixels wide
    inside = (np.hypot(*(P - 256).T) < 230)
    sel = wide & inside
    assert sel.sum() > 200
    assert np.mean(d[sel]) <= 1.0
    assert len(seg.tree) >= 10


def test_real_angiogram_gives_a_tree(tmp_path, capsys):
    from pathlib import Path

    real = Path(__file__).resolve().parents[2] / "shared" / "data" / "angiograms" / \
        "nema-wg04-xa1-lateral-cerebral.dcm"
    if not real.exists():
        pytest.skip("shared data not available")
    out = tmp_path / "real.vessels.json"
    assert main(["segment", str(real), "--out", str(out), "--preview", str(tmp_path / "p.png"), "--quiet"]) == 0
    msg = capsys.readouterr()
    assert "in pixels" in msg.err and "a single frame, not a run" in msg.err
    doc = json.loads(out.read_text())
    assert doc["metadata"]["units"] == "pixels"
    assert len(doc["branches"]) >= 30


def test_unsupported_compression_is_named(tmp_path, small_phantom):
    """Pixel data in a transfer syntax no plugin decodes: the error names the file and the syntax."""
    from pydicom.uid import UID

    f = write_ct_series(small_phantom, tmp_path / "s", seed=2)[0]
    ds = pydicom.dcmread(f)
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.100")  # MPEG2 video: no decoder
    from pydicom.encaps import encapsulate

    ds.PixelData = encapsulate([b"\x00" * 64])
    ds["PixelData"].VR = "OB"
    bad = tmp_path / "mpeg.dcm"
    ds.save_as(bad, enforce_file_format=True)
    from iratrainer.segmentation.dicom_io import _pixels

    with pytest.raises(DicomInputError, match="mpeg.dcm: cannot decode the pixel data"):
        _pixels(bad, pydicom.dcmread(bad))


# ---------------------------------------------------------------- biplane
def _projected_view(atlas, labels, plane):
    """The exact 2-D tree a perfect segmentation of ``plane`` would give, with its run's geometry."""
    from iratrainer.anatomy.tree import Branch, VesselTree
    from iratrainer.segmentation.dicom_io import Run2D

    px = plane.pixel_mm * plane.sod_mm / plane.sid_mm  # pixel size at the isocentre
    brs = []
    for lab in labels:
        b = atlas[lab]
        uv, depth = plane.project(b.points_mm)
        par = b.parent if b.parent in labels else None
        brs.append(Branch(lab, par, b.parent_index if par else 0, np.column_stack([(uv - 0.5) * px, 0 * uv[:, 0]]),
                          b.radii_mm * plane.sod_mm / depth))
    run = Run2D(np.zeros((2, plane.matrix, plane.matrix), np.float32), px, True, plane.lao_deg, plane.cran_deg,
                plane.sid_mm, plane.sod_mm, plane.pixel_mm, 333.0, {})
    return VesselTree(brs), run


def test_biplane_reconstruction_is_exact_on_exact_views_and_robust_to_missing_vessels():
    """Epipolar matching against the truth: the left carotid tree of the atlas projected
    into a frontal and a lateral view (every vessel overlapping others somewhere) comes back
    where it was; with a third of the subtrees missing from each view (hidden, unsegmented),
    most of what is reconstructed is still inside the true lumen."""
    from iratrainer.anatomy.tree import VesselTree
    from iratrainer.imaging.geometry import frontal, lateral
    from iratrainer.segmentation.biplane import reconstruct_biplane

    atlas = build_atlas()
    labels = atlas.subtree("L_ICA")
    pa, pb = frontal(matrix=512), lateral(matrix=512)
    ta, ra = _projected_view(atlas, labels, pa)
    tb, rb = _projected_view(atlas, labels, pb)
    res = reconstruct_biplane(ta, ra, tb, rb, isocentre_mm=pa.isocentre_mm)
    R = np.vstack([b.points_mm for b in res.tree.branches])
    q = atlas.query(R)
    d = np.linalg.norm(R - q.closest_mm, axis=1)
    assert res.matched_fraction > 0.97
    assert np.median(d) < 0.05 and np.mean(d <= q.radius_mm) > 0.97
    rr = np.concatenate([b.radii_mm for b in res.tree.branches])
    assert np.median(np.abs(rr - q.radius_mm) / q.radius_mm) < 0.05

    def drop(tree, rng):
        gone = set()
        for b in tree.branches:
            if b.parent is not None and (b.parent in gone or rng.random() < 0.3):
                gone.add(b.label)
        return VesselTree([b for b in tree.branches if b.label not in gone])

    prec = []
    for k in range(3):
        res = reconstruct_biplane(drop(ta, np.random.default_rng(k)), ra, drop(tb, np.random.default_rng(50 + k)),
                                  rb, isocentre_mm=pa.isocentre_mm)
        R = np.vstack([b.points_mm for b in res.tree.branches])
        q = atlas.query(R)
        prec.append(np.mean(np.linalg.norm(R - q.closest_mm, axis=1) <= q.radius_mm))
    assert np.mean(prec) > 0.7


def test_biplane_from_two_rendered_dsa_runs(tmp_path, capsys):
    """The whole chain: two rendered DSA runs (frontal, lateral) -> 2-D segmentation of each ->
    epipolar matching -> a 3-D model in isocentre coordinates. Its accuracy (docs/segmentation.md):
    the carotid trunk lands within a millimetre; cortical branches missing from one view's
    segmentation are often matched to the wrong vessel."""
    from iratrainer.anatomy.io import load_vessels

    for plane in ("frontal", "lateral"):
        assert main(["render", "--atlas", "I", "--plane", plane, "--mode", "dsa", "--size", "512",
                     "--inject", "L_ICA", "--no-devices", "--out", str(tmp_path / f"{plane}.dcm")]) == 0
    out = tmp_path / "bp.vessels.json"
    assert main(["segment", str(tmp_path / "frontal.dcm"), str(tmp_path / "lateral.dcm"), "--out", str(out),
                 "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "biplane" in captured.out and "wrong vessel" in captured.err
    tree = load_vessels(out)
    atlas = build_atlas()
    iso = np.array([0.0, 5.0, 215.0])  # where the render put the isocentre; the model is relative to it
    root = tree.branches[0].points_mm + iso
    q = atlas.query(root)
    d_root = np.linalg.norm(root - q.closest_mm, axis=1)
    assert np.median(d_root) < 1.0 and np.mean(np.array(atlas.labels)[q.branch] == "L_ICA") > 0.8
    R = np.vstack([b.points_mm for b in tree.branches]) + iso
    q = atlas.query(R)
    assert np.mean(np.linalg.norm(R - q.closest_mm, axis=1) <= q.radius_mm) > 0.15


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:The value length")
def test_no_identifying_value_reaches_a_case_its_runs_or_the_records(tmp_path, capsys):
    """Identifying values planted in every attribute of a CT series (a private tag included):
    the case authored from it, its model and preview, a recorded headless run of the case
    (result, events, controls, the DSA runs as DICOM and GIF), the records database and the
    console hold none of them."""
    ph = cta_volume(subtree(build_atlas(), "L_ICA", depth=2), voxel_mm=0.6, margin_mm=5.0, seed=3)
    files = write_ct_series(ph, tmp_path / "phi", plant_phi=True, seed=3)
    originals = {str(pydicom.dcmread(files[0]).get(k)) for k in ("StudyInstanceUID", "SeriesInstanceUID")}
    out = tmp_path / "out"
    (out / "cases").mkdir(parents=True)
    case = out / "cases" / "mine.toml"
    db = out / "records.sqlite"
    assert main(["case", "new", "--from-dicom", str(tmp_path / "phi"), "--occlusion", "L_MCA_M1", "--out", str(case),
                 "--quiet"]) == 0
    assert main(["trainee", "add", "Interne Test", "--db", str(db)]) == 0
    assert main(["run", str(case), "--headless", "--autopilot", "expert", "--out", str(out / "run"), "--cine",
                 "--matrix", "64", "--trainee", "Interne Test", "--db", str(db)]) == 0
    captured = capsys.readouterr()
    blobs = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    blobs["console"] = (captured.out + captured.err).encode()
    assert any(k.endswith(".dcm") for k in blobs) and any(k.endswith(".sqlite") for k in blobs)
    needles = list(PLANTED_PHI.values()) + [PLANTED_PRIVATE] + sorted(originals)
    for name, blob in blobs.items():
        for needle in needles:
            assert needle.encode() not in blob, f"{needle!r} leaked into {name}"
            assert needle.upper().encode() not in blob.upper(), f"{needle!r} leaked into {name}"


def test_a_jpeg_baseline_xa_run_is_decoded(tmp_path):
    """An 8-bit XA run stored as JPEG baseline (lossy, each frame encoded by Pillow and
    encapsulated) reads back frame by frame within the codec's error, with its geometry."""
    import io

    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    out = tmp_path / "run.dcm"
    assert main(["render", "--atlas", "I", "--mode", "dsa", "--size", "64", "--inject", "L_ICA", "--no-devices",
                 "--out", str(out)]) == 0
    ds = pydicom.dcmread(out)
    frames = ds.pixel_array.astype(np.float64)
    lo, hi = frames.min(), frames.max()
    eight = np.rint(255.0 * (frames - lo) / max(hi - lo, 1e-9)).astype(np.uint8)
    blobs = []
    for f in eight:
        buf = io.BytesIO()
        Image.fromarray(f, mode="L").save(buf, format="JPEG", quality=95)
        blobs.append(buf.getvalue())
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate(blobs)
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    jpeg = tmp_path / "jpeg.dcm"
    ds.save_as(jpeg, enforce_file_format=True)
    run = read_dicom([jpeg])
    assert isinstance(run, Run2D) and run.frames.shape == eight.shape
    assert np.abs(run.frames - eight).mean() < 2.0  # grey levels: the JPEG's loss
    assert run.calibrated and run.pixel_mm is not None
