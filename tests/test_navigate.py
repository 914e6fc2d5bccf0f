"""The scripted operator on the rod physics: roadmap geometry, the command line, a real navigation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from iratrainer.anatomy.atlas import build_atlas
from iratrainer.cli import main
from iratrainer.imaging.geometry import frontal, lateral
from iratrainer.scenario.navigate import _Route


def test_the_roadmap_knows_its_junctions_and_which_branches_leave_backwards():
    tree = build_atlas()
    route = _Route(tree, "R_CFA", "L_MCA_M1", [frontal(), lateral()])
    labels = [tree.labels[i] for i in route.lab]
    assert labels[0] == "R_CFA" and labels[-1] == "L_MCA_M1"
    # the left common carotid leaves the arch more than 75 degrees from the way up the arch: a hook
    k = int(np.argmax(np.array(labels) == "L_CCA"))
    assert any(abs(h - route.arc[k - 1]) < 3.0 for h in route.hooks)
    # side branches on the way are junctions too (those under 0.6 mm radius, like this atlas's
    # posterior communicating artery, are not worth an aim)
    for side in ("L_OPH", "L_ECA", "L_SCA", "L_ACA_A1"):
        b = tree[side]
        j = tree[b.parent].points_mm[b.parent_index]
        s = route.arc[int(np.argmin(np.linalg.norm(route.pts - j, axis=1)))]
        assert min(abs(np.array(route.junctions) - s)) < 0.5, side


def test_the_roadmap_locates_a_projected_tip():
    tree = build_atlas()
    route = _Route(tree, "R_CFA", "L_ICA", [frontal(), lateral()])
    k = len(route.arc) // 2
    tips = [pr[k] + 0.3 for pr in route.proj]
    s, excess = route.locate(tips, float(route.arc[k]), (-30.0, 30.0))
    assert s == pytest.approx(route.arc[k], abs=2.0)
    assert excess < 0.0
    far = [pr[k] + 40.0 for pr in route.proj]
    assert route.locate(far, float(route.arc[k]), (-30.0, 30.0))[1] > 0.0


def test_navigate_command_rejects_bad_input(tmp_path, capsys):
    assert main(["navigate", "--target", "NOPE", "--out", str(tmp_path / "o")]) == 2
    assert "no vessel 'NOPE'" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["navigate", "--target", "L_SCA", "--out", str(blocker / "sub")]) == 2
    err = capsys.readouterr().err
    assert "cannot write there" in err and "Traceback" not in err


@pytest.mark.slow
def test_navigate_climbs_from_the_groin_to_the_aortic_arch(tmp_path):
    """Arch type I: the vertebral catheter over the 0.035 wire, driven at the hubs only, past the
    aortic bifurcation (the contralateral iliac is a junction to aim at) up to the arch."""
    out = tmp_path / "nav"
    assert main(["navigate", "--arch", "I", "--target", "AO_ARCH", "--out", str(out)]) == 0
    res = json.loads((out / "result.json").read_text())
    assert res["reached"] is True and res["tip_branch"] == "AO_ARCH"
    assert res["stack"] == ["vertebral_5F", "guidewire_035_angled"]
    assert 0 < res["sim_time_s"] < 120
    assert res["path_length_mm"] > 600  # femoral to arch
    # reported, not yet bounded: the 5F catheter shows transient contact-penalty spikes (docs/physics.md)
    assert np.isfinite(res["max_wall_force_n"]) and res["max_wall_force_n"] > 0
    assert any("aim before the junction" in line for line in res["log"])
