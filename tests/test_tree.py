"""VesselTree structure and lumen queries, checked against brute force and analytic geometry."""

from __future__ import annotations

import numpy as np
import pytest

from iratrainer.anatomy.lumen import LumenIndex, brute_force_query
from iratrainer.anatomy.tree import Branch, VesselTree
from iratrainer.errors import VesselTreeError


def straight_tube(r: float = 3.0, length: float = 100.0, n: int = 51) -> VesselTree:
    s = np.linspace(0.0, length, n)
    pts = np.stack([s, np.zeros(n), np.zeros(n)], axis=1)
    return VesselTree([Branch("T", None, 0, pts, np.full(n, r))])


def ring_tube(R: float = 40.0, r: float = 2.0, n: int = 721) -> VesselTree:
    th = np.linspace(0.0, 1.5 * np.pi, n)
    pts = np.stack([R * np.cos(th), R * np.sin(th), np.zeros(n)], axis=1)
    return VesselTree([Branch("C", None, 0, pts, np.full(n, r))])


def branching_tree() -> VesselTree:
    s = np.linspace(0.0, 120.0, 61)
    trunk = np.stack([np.zeros_like(s), np.zeros_like(s), s], axis=1)
    rad = np.linspace(5.0, 3.0, 61)
    k = 30
    t = np.linspace(0.0, 1.0, 40)[:, None]
    left = trunk[k] + t * np.array([50.0, 10.0, 40.0])
    right = trunk[k] + t * np.array([-40.0, -5.0, 55.0])
    return VesselTree([
        Branch("TRUNK", None, 0, trunk, rad),
        Branch("LEFT", "TRUNK", k, left, np.linspace(2.5, 1.2, 40)),
        Branch("RIGHT", "TRUNK", k, right, np.linspace(2.0, 1.0, 40)),
    ])


def random_points(tree: VesselTree, n: int, rng: np.random.Generator, spread: float) -> np.ndarray:
    lo, hi = tree.bounds_mm()
    return rng.uniform(lo - spread, hi + spread, size=(n, 3))


@pytest.mark.parametrize("make", [straight_tube, ring_tube, branching_tree])
def test_query_matches_brute_force(make):
    tree = make()
    rng = np.random.default_rng(1)
    pts = np.vstack([random_points(tree, 3000, rng, 10.0), random_points(tree, 200, rng, 80.0)])
    fast = tree.query(pts)
    ref = brute_force_query(tree, pts)
    np.testing.assert_allclose(fast.signed_distance_mm, ref.signed_distance_mm, atol=1e-9)
    # where the minimum is unique, the same branch and arc length are reported
    np.testing.assert_allclose(fast.closest_mm, ref.closest_mm, atol=1e-6)
    np.testing.assert_array_equal(fast.branch, ref.branch)


def test_query_matches_brute_force_on_atlas(atlas):
    rng = np.random.default_rng(7)
    seg = rng.integers(0, atlas.n_segments, 2000)
    t = rng.random(2000)[:, None]
    centre = atlas.seg_a[seg] + t * (atlas.seg_b[seg] - atlas.seg_a[seg])
    pts = centre + rng.normal(scale=3.0, size=(2000, 3))
    pts = np.vstack([pts, random_points(atlas, 300, rng, 20.0)])
    fast = atlas.signed_distance(pts)
    ref = brute_force_query(atlas, pts).signed_distance_mm
    np.testing.assert_allclose(fast, ref, atol=1e-9)


def test_small_cells_and_narrow_band_still_exact(atlas):
    rng = np.random.default_rng(3)
    pts = random_points(atlas, 1500, rng, 5.0)
    idx = LumenIndex(atlas, cell_mm=3.7, band_mm=0.5)
    np.testing.assert_allclose(idx.signed_distance(pts),
                               brute_force_query(atlas, pts).signed_distance_mm, atol=1e-9)


def test_straight_cylinder_analytic():
    tree = straight_tube(r=3.0)
    rng = np.random.default_rng(2)
    x = rng.uniform(1.0, 99.0, 500)
    rho = rng.uniform(0.0, 10.0, 500)
    phi = rng.uniform(0, 2 * np.pi, 500)
    pts = np.stack([x, rho * np.cos(phi), rho * np.sin(phi)], axis=1)
    q = tree.query(pts)
    np.testing.assert_allclose(q.signed_distance_mm, rho - 3.0, atol=1e-9)
    np.testing.assert_allclose(q.arc_mm, x, atol=1e-9)
    assert np.array_equal(tree.contains(pts), rho <= 3.0)


def test_curved_tube_analytic():
    """A circular arc of radius 40 mm: distance to the wall is | |p_xy| - R | combined with z."""
    R, r = 40.0, 2.0
    tree = ring_tube(R, r)
    rng = np.random.default_rng(4)
    th = rng.uniform(0.05, 1.45 * np.pi, 500)
    rho = rng.uniform(R - 6, R + 6, 500)
    z = rng.uniform(-5, 5, 500)
    pts = np.stack([rho * np.cos(th), rho * np.sin(th), z], axis=1)
    exact = np.hypot(rho - R, z) - r
    # polyline of 720 chords: sagitta R(1 - cos(dθ/2)) bounds the discretisation error
    sag = R * (1 - np.cos(1.5 * np.pi / 720 / 2))
    q = tree.query(pts)
    assert np.max(np.abs(q.signed_distance_mm - exact)) <= sag + 1e-9
    np.testing.assert_allclose(q.arc_mm, R * th, atol=0.05)


def test_arc_length_parameterisation():
    tree = ring_tube(40.0, 2.0)
    s = np.array([0.0, 10.0, 50.0, tree.length_mm("C")])
    p = tree.point_at("C", s)
    th = s / 40.0
    np.testing.assert_allclose(p[:3, 0], 40 * np.cos(th[:3]), atol=0.01)
    np.testing.assert_allclose(np.linalg.norm(tree.tangent_at("C", s), axis=1), 1.0)
    assert tree.length_mm("C") == pytest.approx(40 * 1.5 * np.pi, rel=1e-4)
    assert tree.radius_at("C", 5.0) == pytest.approx(2.0)


def test_path_and_subtree():
    tree = branching_tree()
    assert tree.path("LEFT", "RIGHT") == ["LEFT", "TRUNK", "RIGHT"]
    assert tree.path("TRUNK", "LEFT") == ["TRUNK", "LEFT"]
    assert tree.subtree("TRUNK") == ["TRUNK", "LEFT", "RIGHT"]
    assert tree.subtree("LEFT") == ["LEFT"]
    pts, rad = tree.path_polyline("LEFT", "RIGHT")
    assert np.allclose(pts[0], tree["LEFT"].points_mm[-1])
    assert np.allclose(pts[-1], tree["RIGHT"].points_mm[-1])
    assert np.max(np.linalg.norm(np.diff(pts, axis=0), axis=1)) < 3.0
    assert np.all(tree.signed_distance(pts) < 0)
    assert len(rad) == len(pts)


def test_snapshot_arrays_are_frozen():
    tree = branching_tree()
    with pytest.raises(ValueError):
        tree["LEFT"].points_mm[0, 0] = 1.0
    with pytest.raises(ValueError):
        tree.seg_a[0, 0] = 1.0


@pytest.mark.parametrize(
    ("branches", "message"),
    [
        ([Branch("A", None, 0, [[0, 0, 0], [np.nan, 0, 0]], [1, 1])], "'A': points_mm: NaN"),
        ([Branch("A", None, 0, [[0, 0, 0], [1, 0, 0]], [1, -1])], "'A': radii_mm: radius must"),
        ([Branch("A", None, 0, [[0, 0, 0], [1, 0, 0]], [1, 1]),
          Branch("B", "Z", 0, [[0, 0, 0], [0, 1, 0]], [1, 1])], "'B': parent: unknown branch 'Z'"),
        ([Branch("A", None, 0, [[0, 0, 0], [1, 0, 0]], [1, 1]),
          Branch("B", "C", 0, [[0, 0, 0], [0, 1, 0]], [1, 1]),
          Branch("C", "B", 0, [[0, 0, 0], [0, 1, 0]], [1, 1])], "cycle"),
        ([Branch("A", None, 0, [[0, 0, 0], [1, 0, 0]], [1, 1]),
          Branch("B", "A", 5, [[0, 0, 0], [0, 1, 0]], [1, 1])], "'B': parent_index: 5"),
        ([Branch("A", None, 0, [[0, 0, 0], [1, 0, 0]], [1, 1]),
          Branch("B", "A", 1, [[9, 0, 0], [9, 1, 0]], [1, 1])], "'B': points_mm[0]"),
        ([Branch("A", None, 0, [[0, 0, 0], [0, 0, 0]], [1, 1])], "coincide"),
        ([Branch("A", None, 0, [[0, 0, 0], [1, 0, 0]], [1, 1]),
          Branch("A", "A", 0, [[0, 0, 0], [0, 1, 0]], [1, 1])], "duplicated"),
        ([Branch("A", None, 0, [[0, 0, 0]], [1])], "at least 2 points"),
    ],
)
def test_invalid_trees_name_branch_and_field(branches, message):
    with pytest.raises(VesselTreeError, match=None) as err:
        VesselTree(branches)
    assert message in str(err.value)
