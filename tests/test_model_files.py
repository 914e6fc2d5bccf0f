"""*.vessels.json round trip (property-based), validation errors, VTK export."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iratrainer.anatomy.io import export_vtp, load_vessels, save_vessels, tree_to_dict
from iratrainer.anatomy.tree import Branch, VesselTree
from iratrainer.errors import ModelFileError

coord = st.floats(-500, 500, allow_nan=False, allow_infinity=False)


@st.composite
def trees(draw) -> VesselTree:
    n_branches = draw(st.integers(1, 5))
    branches: list[Branch] = []
    for i in range(n_branches):
        n = draw(st.integers(2, 8))
        start = np.array([draw(coord), draw(coord), draw(coord)])
        steps = np.array(draw(st.lists(st.tuples(coord, coord, coord), min_size=n - 1,
                                       max_size=n - 1)), dtype=float) / 50.0
        steps[np.linalg.norm(steps, axis=1) < 1e-3] = [0.5, 0.0, 0.0]
        radii = draw(st.lists(st.floats(0.05, 20, allow_nan=False), min_size=n, max_size=n))
        if i == 0:
            pts = np.vstack([start, start + np.cumsum(steps, axis=0)])
            branches.append(Branch("ROOT", None, 0, pts, radii))
        else:
            parent = branches[draw(st.integers(0, i - 1))]
            pidx = draw(st.integers(0, len(parent.points_mm) - 1))
            p0 = parent.points_mm[pidx]
            pts = np.vstack([p0, p0 + np.cumsum(steps, axis=0)])
            branches.append(Branch(f"B{i}", parent.label, pidx, pts, radii))
    return VesselTree(branches, metadata={"source": "hypothesis", "n": n_branches})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=trees())
def test_round_trip_is_exact(tree, tmp_path):
    path = tmp_path / "t.vessels.json"
    save_vessels(tree, path)
    back = load_vessels(path)
    assert back.labels == tree.labels
    assert back.metadata == tree.metadata
    for a, b in zip(tree.branches, back.branches, strict=True):
        assert (a.parent, a.parent_index) == (b.parent, b.parent_index)
        assert np.array_equal(a.points_mm, b.points_mm)
        assert np.array_equal(a.radii_mm, b.radii_mm)


def test_atlas_round_trip_and_format_fields(atlas, tmp_path):
    path = save_vessels(atlas, tmp_path / "atlas.vessels.json")
    doc = json.loads(path.read_text())
    assert doc["format"] == "iratrainer.vessels" and doc["format_version"] == 1
    assert doc["units"] == {"length": "mm"} and doc["coordinate_system"] == "LPS"
    assert set(doc["branches"][0]) == {"label", "parent", "parent_index", "points_mm", "radii_mm"}
    assert doc["branches"][0]["parent"] is None
    back = load_vessels(path)
    assert back.anastomoses == atlas.anastomoses
    assert tree_to_dict(back) == tree_to_dict(atlas)


def _write(tmp_path, text: str):
    p = tmp_path / "m.vessels.json"
    p.write_text(text)
    return p


def _doc(**branch) -> str:
    b = {"label": "A", "parent": None, "parent_index": 0, "points_mm": [[0, 0, 0], [1, 0, 0]],
         "radii_mm": [1, 1]}
    b.update(branch)
    return json.dumps({"format": "iratrainer.vessels", "format_version": 1, "branches": [b]})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"format": "iratrainer.vessels", "format_ver', "not valid JSON"),
        (_doc().replace("[1, 0, 0]", "[NaN, 0, 0]"), "branch 'A': points_mm: NaN or infinite"),
        (_doc(radii_mm=[1, "Infinity"]).replace('"Infinity"', "Infinity"), "branch 'A': radii_mm: NaN or infinite"),
        (_doc(radii_mm=[1, -2]), "branch 'A': radii_mm: radius must be > 0"),
        (_doc(parent="NOPE"), "exactly one root"),
        (_doc(points_mm=[[0, 0], [1, 0]]), "branch 'A': points_mm"),
        (_doc(points_mm="x"), "branch 'A': points_mm: expected a list"),
        (_doc(parent_index=1.5), "branch 'A': parent_index"),
        (json.dumps({"format": "iratrainer.vessels", "format_version": 9, "branches": []}),
         "format_version"),
        (json.dumps({"format": "other"}), "format: expected"),
        (json.dumps([1, 2]), "top level"),
    ],
)
def test_bad_files_name_file_and_field(tmp_path, text, expected):
    p = _write(tmp_path, text)
    with pytest.raises(ModelFileError) as err:
        load_vessels(p)
    msg = str(err.value)
    assert str(p) in msg and expected in msg and "\n" not in msg


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match="no such file"):
        load_vessels(tmp_path / "absent.vessels.json")


def test_unknown_parent_named(tmp_path):
    doc = json.loads(_doc())
    doc["branches"].append({"label": "B", "parent": "Q", "parent_index": 0,
                            "points_mm": [[0, 0, 0], [0, 1, 0]], "radii_mm": [1, 1]})
    p = _write(tmp_path, json.dumps(doc))
    with pytest.raises(ModelFileError, match="branch 'B': parent: unknown branch 'Q'"):
        load_vessels(p)


def test_failed_save_leaves_previous_file(atlas, tmp_path, monkeypatch):
    path = tmp_path / "keep.vessels.json"
    save_vessels(atlas, path)
    before = path.read_bytes()
    import os

    def boom(*_a, **_k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    from iratrainer.errors import OutputError

    with pytest.raises(OutputError, match="No space left"):
        save_vessels(atlas, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.vessels.json"]


def test_vtp_export_is_valid_polydata(atlas, tmp_path):
    out = export_vtp(atlas, tmp_path / "a.vtp")
    root = ET.parse(out).getroot()
    piece = root.find("PolyData/Piece")
    n_pts = int(piece.get("NumberOfPoints"))
    n_lines = int(piece.get("NumberOfLines"))
    assert n_lines == len(atlas)
    assert n_pts == sum(len(b.points_mm) for b in atlas.branches)
    coords = np.array(piece.find("Points/DataArray").text.split(), dtype=float).reshape(-1, 3)
    assert coords.shape == (n_pts, 3)
    np.testing.assert_allclose(coords[0], atlas.branches[0].points_mm[0], rtol=1e-5)
    arrays = {a.get("Name"): a for a in piece.find("PointData")}
    radius = np.array(arrays["radius_mm"].text.split(), dtype=float)
    assert radius.shape == (n_pts,) and np.all(radius > 0)
    offsets = np.array(piece.find("Lines").findall("DataArray")[1].text.split(), dtype=int)
    assert offsets[-1] == n_pts and len(offsets) == n_lines


def test_cycle_in_file_via_cli(tmp_path, capsys):
    from iratrainer.cli import main

    doc = json.loads(_doc())
    for lab, par in (("B", "C"), ("C", "B")):
        doc["branches"].append({"label": lab, "parent": par, "parent_index": 0,
                                "points_mm": [[0, 0, 0], [0, 1, 0]], "radii_mm": [1, 1]})
    p = _write(tmp_path, json.dumps(doc))
    assert main(["model", str(p)]) == 2
    err = capsys.readouterr().err
    assert str(p) in err and "cycle" in err and "branch '" in err and err.count("\n") == 1
