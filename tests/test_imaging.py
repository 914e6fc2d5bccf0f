"""Imaging checked against geometry and physics: projection, Beer-Lambert, Poisson, dose."""

from __future__ import annotations

import numpy as np
import pytest

from iratrainer.anatomy.tree import Branch, VesselTree
from iratrainer.imaging.chain import ChainSettings, PlaneChain
from iratrainer.imaging.dose import DoseMeter
from iratrainer.imaging.geometry import CArmPlane, frontal, lateral
from iratrainer.imaging.phantom import Phantom
from iratrainer.imaging.raycast import capsule_union_integrals, ellipsoid_integrals
from iratrainer.imaging.render import CpuRenderer, ImageOptions, form_image, unattenuated_counts
from iratrainer.imaging.scene import DeviceShape, Scene
from iratrainer.imaging.xray import (
    TECHNIQUES,
    Technique,
    linear_attenuation_per_mm,
    mass_attenuation,
    photons_per_mm2_per_ugy,
)

EMPTY = Phantom(())
QUIET = ImageOptions(noise=False, blur_px=0.0, vignetting=0.0)


def small_plane(**kw) -> CArmPlane:
    base = dict(isocentre_mm=(0.0, 0.0, 0.0), fov_cm=11.0, matrix=96)
    base.update(kw)
    return CArmPlane(**base)


# ---------------------------------------------------------------- geometry
def test_beam_and_image_axes_conventions():
    f, lat = frontal(), lateral()
    np.testing.assert_allclose(f.beam, [0, -1, 0], atol=1e-12)  # posterior -> anterior
    np.testing.assert_allclose(f.u, [1, 0, 0], atol=1e-12)  # patient's left on the image right
    np.testing.assert_allclose(f.v, [0, 0, -1], atol=1e-12)  # head at the top
    np.testing.assert_allclose(lat.beam, [1, 0, 0], atol=1e-12)  # detector on the patient's left
    np.testing.assert_allclose(lat.u, [0, 1, 0], atol=1e-12)  # anterior on the image left
    cran = CArmPlane(cran_deg=30.0)
    assert cran.beam[2] == pytest.approx(np.sin(np.radians(30)))
    for p in (f, lat, CArmPlane(lao_deg=-35, cran_deg=20)):
        m = np.vstack([p.u, p.v, p.beam])
        np.testing.assert_allclose(m @ m.T, np.eye(3), atol=1e-12)


def test_projection_matrix_magnification_and_rays():
    p = CArmPlane(lao_deg=25.0, cran_deg=-10.0, isocentre_mm=(3.0, -4.0, 200.0), matrix=256)
    (c,), _ = p.project(np.array(p.isocentre_mm))
    np.testing.assert_allclose(c, [128.0, 128.0], atol=1e-9)
    # 10 mm along u at the isocentre spans 10 * SID/SOD / pixel pixels
    pts = np.array(p.isocentre_mm) + np.outer([0.0, 10.0], p.u)
    px, _ = p.project(pts)
    assert px[1, 0] - px[0, 0] == pytest.approx(10 * p.magnification / p.pixel_mm, rel=1e-12)
    # the ray through a pixel centre projects back onto that pixel centre
    src, rays = p.pixel_rays()
    pt = src + 700.0 * rays[40, 200]
    (back,), _ = p.project(pt)
    np.testing.assert_allclose(back, [200.5, 40.5], atol=1e-9)


def test_out_of_range_settings_are_clamped_and_reported():
    p, notes = CArmPlane(lao_deg=200.0, cran_deg=-80.0, fov_cm=50.0, sid_mm=float("nan")).clamped()
    assert (p.lao_deg, p.cran_deg, p.fov_cm) == (120.0, -45.0, 30.0)
    assert np.isfinite(p.sid_mm)
    fields = {n.field for n in notes}
    assert {"lao_deg", "cran_deg", "fov_cm", "sid_mm"} <= fields
    assert "clamped" in str(notes[0])


# ---------------------------------------------------------------- ray casting
def _analytic_cylinder_chords(p: CArmPlane, r: float) -> np.ndarray:
    """Independent reference: chord of each pixel ray through the infinite cylinder y² + z² = r²."""
    s, d = p.pixel_rays()
    a = d[..., 1] ** 2 + d[..., 2] ** 2
    b = 2 * (s[1] * d[..., 1] + s[2] * d[..., 2])
    c = s[1] ** 2 + s[2] ** 2 - r * r
    disc = b * b - 4 * a * c
    return np.where(disc > 0, np.sqrt(np.maximum(disc, 0)) / a, 0.0)


def test_capsule_chord_matches_analytic_cylinder():
    p = small_plane()
    r = 4.0
    L = capsule_union_integrals(p, np.array([[-200.0, 0, 0]]), np.array([[200.0, 0, 0]]),
                                np.array([r]), np.array([1.0]))
    np.testing.assert_allclose(L, _analytic_cylinder_chords(p, r), atol=1e-9)
    assert L.max() == pytest.approx(2 * r, rel=5e-3)  # pixel centres sit half a pixel off the axis


def test_union_counts_overlaps_once_with_largest_mu():
    p = small_plane()
    one = capsule_union_integrals(p, np.array([[-50.0, 0, 0]]), np.array([[50.0, 0, 0]]),
                                  np.array([3.0]), np.array([0.2]))
    # the same tube as 7 overlapping pieces, plus a sphere inside it
    xs = np.linspace(-50, 50, 8)
    a = np.stack([xs[:-1] - 2, np.zeros(7), np.zeros(7)], 1)
    b = np.stack([xs[1:] + 2, np.zeros(7), np.zeros(7)], 1)
    a = np.vstack([a, [[0, 0, 0]]])
    b = np.vstack([b, [[0, 0, 0]]])
    pieces = capsule_union_integrals(p, np.clip(a, -50, 50), np.clip(b, -50, 50),
                                     np.r_[np.full(7, 3.0), 2.0], np.r_[np.full(7, 0.2), 0.1])
    np.testing.assert_allclose(pieces, one, atol=1e-9)
    # a denser sphere inside: along rays through it, its μ wins over its chord
    hot = capsule_union_integrals(p, a, b, np.r_[np.full(7, 3.0), 2.0], np.r_[np.full(7, 0.2), 1.0])
    s, d = p.pixel_rays()
    c = p.matrix // 2
    dist2 = s @ s - (s @ d[c, c]) ** 2
    sphere_chord = 2 * np.sqrt(4.0 - dist2)
    assert hot[c, c] == pytest.approx(one[c, c] + 0.8 * sphere_chord, rel=1e-9)


def _capsule_knot(rng: np.random.Generator, n: int) -> tuple[np.ndarray, ...]:
    """``n`` random capsules (ends a, b, radius r) tangled round the isocentre: many overlaps."""
    c = rng.normal(0.0, 6.0, (n, 3))
    a = c + rng.normal(0.0, 5.0, (n, 3))
    b = c - rng.normal(0.0, 5.0, (n, 3))
    return a, b, rng.uniform(0.5, 3.0, n)


def test_cached_vessel_chords_reweigh_to_the_direct_union_for_any_contrast():
    """The per-view pieces give the direct union's ∫μdl for new per-capsule μ (zeros, overlaps, supersampling)."""
    from iratrainer.imaging.chords import VesselChords

    p = small_plane(matrix=64)
    rng = np.random.default_rng(7)
    a, b, r = _capsule_knot(rng, 40)
    for k in (1, 2):
        vc = VesselChords(p, a, b, r, supersample=k)
        for trial in range(3):
            mu = rng.uniform(0.0, 1.0, 40) * (rng.uniform(size=40) > 0.3 * trial)
            want = capsule_union_integrals(p, a, b, r, mu, supersample=k)
            np.testing.assert_allclose(vc.integrals(mu), want, rtol=1e-12, atol=1e-12)
    assert np.all(vc.integrals(np.zeros(40)) == 0.0)
    with pytest.raises(ValueError):
        vc.integrals(-np.ones(40))


def test_chords_regrouped_by_capsule_set_give_the_same_sum():
    """Σ_sets len_σ × max μ over σ (the patches the OpenGL renderer draws) is the pieces' sum:
    every capsule set once, lengths to float32 rounding, for any contrast."""
    from iratrainer.imaging.chords import VesselChords

    p = small_plane(matrix=64)
    rng = np.random.default_rng(11)
    a, b, r = _capsule_knot(rng, 60)
    vc = VesselChords(p, a, b, r)
    g = vc.groups(atlas_width=256)
    shared = g.group[g.group >= 60] - 60
    assert len(shared) == len(g.set_ptr) - 1 > 0  # overlapping capsules make shared sets
    sets = {tuple(g.set_ids[g.set_ptr[i]:g.set_ptr[i + 1]]) for i in range(len(shared))}
    assert len(sets) == len(shared)  # each set once
    # patches lie inside the image and the atlas, and do not overlap in the atlas
    assert np.all(g.box[:, 0] + g.box[:, 2] <= 64) and np.all(g.box[:, 1] + g.box[:, 3] <= 64)
    used = np.zeros(g.atlas.shape, int)
    for (_, _, w, h), (ax, ay) in zip(g.box, g.origin, strict=True):
        used[ay:ay + h, ax:ax + w] += 1
    assert used.max() == 1
    for trial in range(3):
        mu = rng.uniform(0.0, 1.0, 60) * (rng.uniform(size=60) > 0.3 * trial)
        want = vc.integrals(mu)
        np.testing.assert_allclose(g.integrals(mu), want, rtol=0, atol=1e-6 * max(want.max(), 1.0))


def test_ellipsoid_chord_matches_sphere_formula():
    p = small_plane()
    s, d = p.pixel_rays()
    R = 20.0
    L = ellipsoid_integrals(p, np.zeros((1, 3)), np.eye(3)[None], np.full((1, 3), R), np.array([0.5]))
    # distance of the centre (origin) from each ray
    proj = -(s @ d.reshape(-1, 3).T).reshape(d.shape[:2])
    dist2 = s @ s - proj ** 2
    ref = 0.5 * 2 * np.sqrt(np.maximum(R * R - dist2, 0))
    np.testing.assert_allclose(L, ref, atol=1e-9)


# ---------------------------------------------------------------- X-ray physics
def test_iodine_attenuation_is_the_published_table():
    # REFERENCE.md (NIST XCOM): cm²/g
    for e, mu in ((30, 8.56), (40, 22.1), (50, 12.3), (60, 7.58), (80, 3.51)):
        assert mass_attenuation("iodine", e) == pytest.approx(mu, rel=1e-9)
    assert mass_attenuation("iodine", 33.0) < 7.0 < 30.0 < mass_attenuation("iodine", 33.5)  # K-edge
    assert linear_attenuation_per_mm("iodine", 40.0, 0.15) == pytest.approx(22.1 * 0.15 / 10)


def test_fluence_per_kerma_from_first_principles():
    # Φ/K = 1/(E μen/ρ): at 40 keV, μen/ρ(air) = 0.06833 cm²/g -> 2.28e4 photons/mm²/µGy
    assert photons_per_mm2_per_ugy(40.0) == pytest.approx(2.283e4, rel=2e-3)


def _tube_tree(r: float = 2.0) -> VesselTree:
    s = np.linspace(-80, 80, 81)
    pts = np.stack([s, np.zeros_like(s), np.zeros_like(s)], 1)
    return VesselTree([Branch("V", None, 0, pts, np.full(81, r))])


def test_beer_lambert_with_iodine_in_a_vessel():
    """Noise off: the log image equals μ_I(E)·c·chord through the vessel, per pixel."""
    tree = _tube_tree(2.0)
    p = small_plane()
    tech = Technique(kv=76.0, mas=1.0)  # effective energy 50 keV: μ/ρ(I) = 12.3 cm²/g
    assert tech.energy_kev == pytest.approx(50.0)
    scene = Scene(tree, 200.0, (), EMPTY)  # 200 mgI/mL
    L = CpuRenderer().line_integrals(scene, p, tech.energy_kev).total
    lhat = form_image(L, p, tech, QUIET, None)
    chords = _analytic_cylinder_chords(p, 2.0)
    expected = 12.3 * 0.200 / 10.0 * chords
    inside = p.field_mask() == 1.0
    np.testing.assert_allclose(lhat[inside], expected[inside], atol=1e-6)


def test_poisson_statistics_and_detector_counts():
    p = small_plane(matrix=128)
    tech = TECHNIQUES["fluoro_normal"]
    n0 = unattenuated_counts(p, tech)
    # N0 = Ka(SID) · Φ/K · pixel² · DQE, recomputed independently
    k = tech.air_kerma_ugy(p.sid_mm)
    assert n0 == pytest.approx(k * photons_per_mm2_per_ugy(tech.energy_kev) * p.pixel_mm ** 2 * 0.65)
    L = np.full((128, 128), 3.0)
    rng = np.random.default_rng(5)
    opts = ImageOptions(noise=True, blur_px=0.0, vignetting=0.0)
    samples = np.stack([form_image(L, p, tech, opts, rng) for _ in range(40)])
    counts = n0 * np.exp(-samples[:, 40:88, 40:88])
    mean = n0 * np.exp(-3.0)
    assert counts.mean() == pytest.approx(mean, rel=0.01)
    assert counts.var() == pytest.approx(mean, rel=0.05)  # Poisson: variance = mean


# ---------------------------------------------------------------- dose
def test_dsa_frame_dose_matches_the_reference_example():
    """REFERENCE.md: 70 kV, 1.9 mAs -> 0.042 mGy per frame (tens of µGy)."""
    p = frontal()
    e = DoseMeter.exposure(p, TECHNIQUES["dsa_reference"], "acquisition")
    assert e.kar_ugy == pytest.approx(42.0, rel=1e-9)
    neuro = DoseMeter.exposure(p, TECHNIQUES["dsa"], "acquisition")
    assert 0.5e3 < neuro.kar_ugy < 2e3  # a cerebral DSA frame: of the order of 1 mGy
    area = np.pi * (0.5 * p.fov_cm * (p.sod_mm - 150) / p.sid_mm) ** 2
    assert e.field_area_cm2 == pytest.approx(area)
    assert e.dap_gy_cm2 == pytest.approx(42e-6 * area)


def test_fluoro_dose_rate_and_time():
    p = frontal()
    dm = DoseMeter()
    ch = PlaneChain(p, dm, np.random.default_rng(0), ChainSettings(pps=15.0, dose_level="normal"))
    scene = Scene(_tube_tree(), 0.0, (), EMPTY)
    for _ in range(30):
        ch.fluoro_pulse(scene)
    pd = dm.planes["frontal"]
    assert pd.fluoro_pulses == 30 and pd.fluoro_time_s == pytest.approx(2.0)
    rate_mgy_min = pd.kar_mgy / pd.fluoro_time_s * 60
    assert 4.0 < rate_mgy_min < 15.0  # typical neuro pulsed fluoroscopy, a few to ~10 mGy/min
    assert pd.acquisition_frames == 0
    # collimating to half the radius divides the DAP rate by four, not the Ka,r
    e1 = DoseMeter.exposure(p, TECHNIQUES["fluoro_normal"], "fluoro")
    e2 = DoseMeter.exposure(CArmPlane(collimation=0.5), TECHNIQUES["fluoro_normal"], "fluoro")
    assert e2.kar_ugy == e1.kar_ugy and e2.dap_gy_cm2 == pytest.approx(e1.dap_gy_cm2 / 4)


# ---------------------------------------------------------------- modes
def _scene_with_device() -> Scene:
    tree = _tube_tree(2.0)
    wire = DeviceShape("w", np.array([[0.0, 0.0, -60.0], [0.0, 0.0, -2.0]]) + [10, 0, 0], 0.3, 0.0,
                       "nitinol")
    return Scene(tree, 0.0, (wire,), EMPTY)


def test_dsa_subtraction_cancels_background_and_devices():
    p = small_plane()
    ch = PlaneChain(p, DoseMeter(), np.random.default_rng(1), ChainSettings(options=QUIET))
    sc = _scene_with_device()
    frames = ch.dsa_run(lambda t: sc.with_contrast(150.0 if t > 0 else 0.0), 1.0)
    assert frames[0].kind == "dsa_mask" and all(f.kind == "dsa" for f in frames[1:])
    sub = frames[-1].lhat
    chords = _analytic_cylinder_chords(p, 2.0)
    vessel = chords > 0
    assert np.abs(sub[~vessel]).max() < 1e-9  # device and background gone
    mu = linear_attenuation_per_mm("iodine", TECHNIQUES["dsa"].energy_kev, 0.150)
    inside = vessel & (p.field_mask() == 1.0)
    np.testing.assert_allclose(sub[inside], mu * chords[inside], atol=1e-9)
    assert frames[-1].display[inside].mean() < 0.3  # vessels dark on grey


def test_roadmap_shows_vessels_white_and_devices_dark():
    p = small_plane()
    ch = PlaneChain(p, DoseMeter(), np.random.default_rng(1), ChainSettings(options=QUIET))
    sc = _scene_with_device()
    before = Scene(sc.tree, 0.0, (), EMPTY)  # the wire is brought in after the mask pulse
    ch.dsa_run(lambda t: before.with_contrast(150.0 if t > 0 else 0.0), 1.0)
    assert ch.store_roadmap() and ch.roadmap_active
    mask = ch.fluoro_pulse(before)
    assert np.abs(mask.display[p.field_mask() == 1.0][:50] - 0.5).max() < 0.5
    fr = ch.fluoro_pulse(sc)
    assert fr.kind == "roadmap"
    chords = _analytic_cylinder_chords(p, 2.0)
    ves = (chords > 3.0) & (p.field_mask() > 0.99)
    col = p.project(np.array([[10.0, 0, -30.0]]))[0][0].astype(int)
    assert fr.display[ves].mean() > 0.6
    assert fr.display[col[1], col[0]] < 0.45
    assert ch.last_image_hold().display is fr.display


def test_recursive_filter_lowers_noise_as_predicted():
    p = small_plane(matrix=64)
    sc = Scene(_tube_tree(), 0.0, (), EMPTY)
    opts = ImageOptions(noise=True, blur_px=0.0, vignetting=0.0)
    var = {}
    for a in (0.0, 0.5):
        ch = PlaneChain(p, DoseMeter(), np.random.default_rng(2),
                        ChainSettings(recursive_filter=a, options=opts))
        frames = [ch.fluoro_pulse(sc).lhat[20:44, 20:44] for _ in range(60)]
        var[a] = np.var(np.stack(frames[20:]), axis=0).mean()
    # y = a y + (1-a) x on white noise: variance ratio (1-a)/(1+a) = 1/3
    assert var[0.5] / var[0.0] == pytest.approx(1 / 3, rel=0.15)


def test_same_seed_same_images():
    p = small_plane()
    sc = _scene_with_device()
    imgs = []
    for _ in range(2):
        ch = PlaneChain(p, DoseMeter(), np.random.default_rng(42))
        imgs.append(ch.fluoro_pulse(sc).display.tobytes())
    assert imgs[0] == imgs[1]


def test_thin_wire_keeps_its_volume_with_supersampling():
    """Σ pixels (mean ∫μdl · pixel area) = μ · volume · M² for an object at the isocentre.

    Pixel pitch at the isocentre 0.27 mm, as at 512 px over 22 cm: a 0.014 in wire is
    thinner than a pixel; 4 x 4 rays per pixel keep its volume within 4% whatever its
    sub-pixel position, and it shows along its whole length.
    """
    p = small_plane(matrix=256)
    r, half = 0.18, 20.0
    vol = np.pi * r * r * 2 * half + 4 / 3 * np.pi * r ** 3
    for z in (5.0, 5.05, 5.1, 5.13):
        a, b = np.array([[-half, 0.0, z]]), np.array([[half, 0.0, z]])
        L = capsule_union_integrals(p, a, b, np.array([r]), np.array([1.0]), supersample=4)
        assert L.sum() * p.pixel_mm ** 2 == pytest.approx(vol * p.magnification ** 2, rel=0.04)
        row = int(p.project(np.array([[0.0, 0.0, z]]))[0][0, 1])
        cols = np.arange(70, 186)
        assert np.all(L[row - 1:row + 2, cols].max(axis=0) > 0.05)
    assert CpuRenderer().device_supersample == 4


@pytest.fixture(scope="module")
def gl_renderer():
    from iratrainer.imaging.gl import GlRenderer, GlUnavailable

    try:
        return GlRenderer(iodine="gl")  # every part drawn, also a still view's iodine
    except GlUnavailable as exc:  # pragma: no cover - CI installs Mesa
        pytest.skip(f"no OpenGL: {exc}")


@pytest.mark.parametrize("mode", ["fluoro", "dsa", "roadmap"])
@pytest.mark.parametrize("make_plane", [frontal, lateral])
def test_gl_and_numpy_renderers_agree(gl_renderer, mode, make_plane):
    """Same scene, noise off: mean absolute difference under 2% of the dynamic range."""
    from iratrainer.anatomy.atlas import build_atlas
    from iratrainer.imaging.scene import contrast_downstream, static_stack

    tree = build_atlas()
    scene = Scene(tree, 0.0, static_stack(tree))
    iodine = contrast_downstream(tree, "L_CCA")
    out = {}
    for name, renderer in (("numpy", CpuRenderer()), ("gl", gl_renderer)):
        ch = PlaneChain(make_plane(matrix=192), DoseMeter(), np.random.default_rng(0),
                        ChainSettings(options=ImageOptions(noise=False)), renderer=renderer)
        if mode == "fluoro":
            img = ch.fluoro_pulse(scene.with_contrast(iodine)).display
        else:
            img = ch.dsa_run(lambda t: scene.with_contrast(iodine if t > 0 else 0.0), 1.0)[-1].display
            if mode == "roadmap":
                ch.store_roadmap()
                ch.fluoro_pulse(scene)
                img = ch.fluoro_pulse(scene).display
        out[name] = np.asarray(img, dtype=np.float64)
    rng_ = out["numpy"].max() - out["numpy"].min()
    assert rng_ > 0.3
    assert np.abs(out["gl"] - out["numpy"]).mean() / rng_ < 0.02
    # and in fact they agree to float32 precision
    assert np.abs(out["gl"] - out["numpy"]).mean() < 1e-3


def test_gl_renderer_auto_parts_on_a_software_rasterizer():
    """``auto`` keeps the detector and a still view's iodine on the CPU on llvmpipe (faster
    there), draws them on a GPU; either way the line integrals are the same equations."""
    from iratrainer.anatomy.atlas import build_atlas
    from iratrainer.imaging.gl import GlRenderer, GlUnavailable
    from iratrainer.imaging.scene import contrast_downstream, static_stack

    try:
        auto = GlRenderer()
    except GlUnavailable as exc:  # pragma: no cover - CI installs Mesa
        pytest.skip(f"no OpenGL: {exc}")
    assert auto.gl_iodine is (not auto.software) and auto.gl_detector is (not auto.software)
    with pytest.raises(ValueError, match="unknown iodine"):
        GlRenderer(iodine="fast")
    tree = build_atlas()
    scene = Scene(tree, contrast_downstream(tree, "L_CCA"), static_stack(tree))
    plane = frontal(matrix=128)
    cpu = CpuRenderer()
    drawn = GlRenderer(iodine="gl")
    for r in (cpu, auto, drawn):
        r.iodine(scene, plane, 50.0)  # a new view: rays cast directly; then the view's chords
    want = cpu.line_integrals(scene, plane, 50.0)
    for r in (auto, drawn):
        got = r.line_integrals(scene, plane, 50.0)
        assert np.abs(got.iodine - want.iodine).max() < 1e-5 * want.iodine.max()
        assert np.abs(got.devices - want.devices).max() < 1e-3 * want.devices.max()
    if auto.software:  # the CPU's own sum, to the bit
        assert np.array_equal(auto.line_integrals(scene, plane, 50.0).iodine, want.iodine)


def test_gl_device_quads_match_the_cpu_devices(gl_renderer):
    """Each device cylinder is its own instanced quad summed by blending: the same line
    integrals as the CPU's summed tubes, including a catheter seen end-on (its quad is a
    square around one point) and tubes that leave the field (clipped quads)."""
    from iratrainer.anatomy.atlas import build_atlas
    from iratrainer.imaging.scene import DeviceShape, static_stack

    tree = build_atlas()
    plane = lateral(matrix=160)
    ray = plane.source_mm - plane.detector_centre_mm
    ray = ray / np.linalg.norm(ray)
    end_on = DeviceShape("end_on", np.array([[0.0, 0.0, 215.0] - 20.0 * ray, [0.0, 0.0, 215.0] + 20.0 * ray]),
                         outer_radius_mm=1.0, inner_radius_mm=0.6, material="catheter", markers=((0.0, 1.0),))
    scene = Scene(tree, 0.0, (*static_stack(tree), end_on))
    cpu = CpuRenderer().devices(scene, plane, 50.0)
    gl = gl_renderer.devices(scene, plane, 50.0)
    assert cpu.max() > 1.0 and np.count_nonzero(cpu) > 200
    assert np.abs(gl - cpu).max() < 1e-3 * cpu.max()


def test_gl_phantom_boxes_match_the_cpu_background(gl_renderer):
    """Each phantom ellipsoid is an instanced quad over the pixel box its bounding cube
    projects to (the CPU kernel's box), summed by blending: the same background, also in an
    oblique view where skull, spine and shoulders leave the field."""
    from iratrainer.anatomy.atlas import build_atlas

    tree = build_atlas()
    for plane in (frontal(matrix=160), lateral(matrix=160, lao_deg=75.0, cran_deg=20.0)):
        scene = Scene(tree, 0.0, ())
        cpu = CpuRenderer().background(scene, plane, 50.0)
        gl = gl_renderer.background(scene, plane, 50.0)
        assert cpu.max() > 5.0
        assert np.abs(gl - cpu).max() < 1e-4 * cpu.max()


def test_a_still_view_reuses_its_chords_and_a_moving_one_casts_rays(gl_renderer):
    """First frame of a view: rays cast directly; from the second: the view's chords, same image."""
    from dataclasses import replace

    from iratrainer.anatomy.atlas import build_atlas
    from iratrainer.imaging.scene import contrast_downstream

    tree = build_atlas()
    iodine = contrast_downstream(tree, "L_CCA")
    scene = Scene(tree, iodine, ())
    plane = lateral(matrix=128)
    for renderer in (CpuRenderer(), gl_renderer):
        renderer._chords.clear()
        renderer._last_view.clear()
        first = renderer.iodine(scene, plane, 50.0)
        assert not renderer._chords  # a new view: no chords yet
        second = renderer.iodine(scene, plane, 50.0)
        assert len(renderer._chords) == 1
        half = renderer.iodine(scene.with_contrast(0.5 * iodine), plane, 50.0)
        tol = 1e-12 if renderer.name == "numpy" else 2e-4 * first.max()
        np.testing.assert_allclose(second, first, atol=tol)
        np.testing.assert_allclose(half, 0.5 * first, atol=tol)
        renderer._chords.clear()
        for k in range(4):  # the C-arm rotating: every frame a new view, no chords built
            renderer.iodine(scene, replace(plane, lao_deg=-90.0 + 2.0 * k), 50.0)
        assert not renderer._chords


def test_gl_patches_wider_than_a_point_are_cut_into_tiles(gl_renderer, monkeypatch):
    """A driver with small points: the still view's iodine patches are drawn in tiles, same image."""
    from iratrainer.anatomy.atlas import build_atlas
    from iratrainer.imaging.scene import contrast_downstream

    tree = build_atlas()
    scene = Scene(tree, contrast_downstream(tree, "L_CCA"), ())
    plane = lateral(matrix=128)
    cpu = CpuRenderer()
    for r in (cpu, gl_renderer):
        r.iodine(scene, plane, 50.0)
    want = cpu.iodine(scene, plane, 50.0)
    assert gl_renderer.vessel_chords(scene, plane).groups().box[:, 2:].max() > 3
    monkeypatch.setattr(gl_renderer, "_max_point", 3)
    got = gl_renderer.iodine(scene, plane, 50.0)
    np.testing.assert_allclose(got, want, atol=2e-4 * want.max())


def test_gl_fallback_warns_and_uses_numpy(monkeypatch):
    from iratrainer.imaging import gl

    def broken(self):
        raise gl.GlUnavailable("eglInitialize failed (test)")

    monkeypatch.setattr(gl._Context, "__init__", broken)
    msgs: list[str] = []
    r = gl.make_gl_renderer(msgs.append)
    assert type(r) is CpuRenderer
    assert "eglInitialize failed (test)" in msgs[0] and "NumPy renderer" in msgs[0]


def test_ct_background_matches_beer_lambert_through_a_water_sphere():
    from iratrainer.imaging.ct_background import CtBackground, hu_to_mu

    n, vox, radius = 120, 1.0, 40.0
    z, y, x = np.mgrid[0:n, 0:n, 0:n].astype(float)
    c = (n - 1) / 2.0
    hu = np.where((x - c) ** 2 + (y - c) ** 2 + (z - c) ** 2 <= (radius / vox) ** 2, 0.0, -1000.0)
    aff = np.eye(4) * vox
    aff[3, 3] = 1.0
    centre = np.array([0.0, 5.0, 215.0])  # the default isocentre
    aff[:3, 3] = centre - c * vox
    bg = CtBackground(hu.astype(np.float32), aff, "sphere")
    p = frontal(matrix=128, fov_cm=22.0)
    e = 50.0
    L = bg.line_integrals(p, e)
    mu_w = float(hu_to_mu(np.array([0.0]), e)[0])
    centre_px = L[63:65, 63:65].mean()
    assert centre_px == pytest.approx(mu_w * 2 * radius, rel=0.02)
    assert L[0, 0] == 0.0 or L[0, 0] < 0.05 * centre_px  # outside the sphere: air
    assert float(hu_to_mu(np.array([1900.0]), e)[0]) > 2.5 * mu_w  # bone attenuates more


def test_detector_blur_is_scipys_gaussian_and_noise_is_poisson_at_low_counts():
    """The compiled detector: blur equals scipy's Gaussian (nearest edges); exact Poisson below 25 quanta."""
    from scipy.ndimage import gaussian_filter

    from iratrainer.imaging.detector import detect

    rng = np.random.default_rng(3)
    L = rng.uniform(0.0, 2.0, (64, 64))
    n0 = 1000.0
    lhat = detect(L, np.ones_like(L), n0, np.ones_like(L), 0.8, None)
    want = -np.log(np.maximum(gaussian_filter(n0 * np.exp(-L), 0.8, mode="nearest"), 0.5) / n0)
    np.testing.assert_allclose(lhat, want, rtol=1e-12, atol=1e-12)
    # λ = 3 quanta: mean 3, variance 3, P(N = 0) = e^-3 (a normal approximation would fail all three)
    lam = 3.0
    L = np.full((256, 256), np.log(n0 / lam))
    counts = np.concatenate([
        n0 * np.exp(-detect(L, np.ones_like(L), n0, np.ones_like(L), 0.0, s)).ravel() for s in range(4)])
    counts[counts < 0.75] = 0.0  # max(N, 0.5) in the log image: 0.5 back to 0
    counts = np.rint(counts)
    assert counts.mean() == pytest.approx(lam, rel=0.01)
    assert counts.var() == pytest.approx(lam, rel=0.02)
    assert np.mean(counts == 0) == pytest.approx(np.exp(-lam), rel=0.03)
    assert np.all(counts == np.round(counts))
    # off the tabulated grid (7.3 = 58 steps of 0.125 + 0.05): the whole distribution
    from scipy.stats import poisson

    lam = 7.3
    L = np.full((256, 256), np.log(n0 / lam))
    counts = np.concatenate([
        n0 * np.exp(-detect(L, np.ones_like(L), n0, np.ones_like(L), 0.0, s)).ravel() for s in range(4)])
    counts[counts < 0.75] = 0.0
    counts = np.rint(counts).astype(int)
    m = len(counts)
    freq = np.bincount(counts, minlength=30)[:30] / m
    pmf = poisson.pmf(np.arange(30), lam)
    sd = np.sqrt(pmf * (1 - pmf) / m)
    assert np.all(np.abs(freq - pmf) <= 4.5 * sd + 1e-6)


def test_detector_exp_and_log_are_the_c_librarys_to_two_ulp():
    """The detector's own vectorisable exp and ln against the C library (math.exp, math.log)."""
    import math

    import numba

    from iratrainer.imaging.detector import exp_range, log_range

    @numba.njit
    def both(x, y):
        e = np.empty_like(x)
        lg = np.empty_like(y)
        exp_range(x, e, np.empty(len(x), np.int64))
        log_range(y, lg, np.empty(len(y), np.int64))
        return e, lg

    rng = np.random.default_rng(5)
    x = np.concatenate([np.linspace(-708.0, 709.0, 200_001), rng.uniform(-30.0, 0.0, 100_000),
                        [0.0, -1e-300, 1e-17, -0.5 * math.log(2.0), 0.5 * math.log(2.0)]])
    y = np.concatenate([np.exp(np.linspace(-700.0, 700.0, 200_001)), rng.uniform(1e-4, 1e4, 100_000),
                        1.0 + np.linspace(-1e-6, 1e-6, 2_001), [1.0, 0.5, 2.0, math.sqrt(2.0), 1e-300]])
    e, lg = both(x, y)
    want_e = np.array([math.exp(v) for v in x])
    want_l = np.array([math.log(v) for v in y])
    ulp_e = np.abs(e - want_e) / np.spacing(want_e)
    assert ulp_e.max() <= 2.0
    err_l = np.abs(lg - want_l)
    assert np.all(err_l <= 2.0 * np.spacing(np.abs(want_l)) + 1e-22)
    assert lg[-5] == 0.0 and e[len(x) - 5] == 1.0
    # below e^-708 the argument is clamped (no denormal scale): ≤ 3.3e-308, never negative or NaN
    lo, _ = both(np.array([-710.0, -1e4]), np.ones(1))
    assert np.all((lo > 0.0) & (lo < 3.4e-308))


def test_detector_noise_does_not_depend_on_the_thread_count():
    import numba

    from iratrainer.imaging.detector import detect

    L = np.random.default_rng(1).uniform(0.0, 4.0, (97, 131))
    g = np.ones_like(L)
    a = detect(L, g, 200.0, g, 0.6, 12345)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        b = detect(L, g, 200.0, g, 0.6, 12345)
    finally:
        numba.set_num_threads(before)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, detect(L, g, 200.0, g, 0.6, 12346))


def test_gl_vessel_union_matches_the_cpu_with_many_overlaps_and_unequal_mu(gl_renderer):
    """Rays through 3 to ~10 overlapping capsules of different μ take the shader's sweep path."""
    p = small_plane(matrix=128)
    rng = np.random.default_rng(11)
    # a knot of short capsules near the isocentre, at every angle, unequal μ
    c = rng.normal(0.0, 3.0, (60, 3))
    d = rng.normal(size=(60, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    a, b = c - 4.0 * d, c + 4.0 * d
    r = rng.uniform(0.8, 2.5, 60)
    mu = rng.uniform(0.01, 0.05, 60)
    cpu = capsule_union_integrals(p, a, b, r, mu)
    gl = gl_renderer._capsules(p, a, b, r, mu)
    assert cpu.max() > 0.2
    np.testing.assert_allclose(gl, cpu, atol=2e-4 * cpu.max())


# ---------------------------------------------------------------- the detector in GLSL
def test_gl_detector_is_the_cpu_detector_in_float32(gl_renderer):
    """Noise off: the GLSL passes (Beer-Lambert, vignetting, blur, log, field mask) give the
    CPU detector's log image to float32 rounding, with parts given as arrays or left on the GPU."""
    from iratrainer.imaging.detector import detect
    from iratrainer.imaging.gl_detector import GlDetector

    det = GlDetector(gl_renderer)
    rng = np.random.default_rng(4)
    n = 96
    parts = tuple(rng.uniform(0.0, 1.5, (n, n)).astype(np.float32) for _ in range(3))
    gain = 1.0 - 0.3 * rng.uniform(0.0, 1.0, (n, n))
    mask = (rng.uniform(0.0, 1.0, (n, n)) > 0.2).astype(float)
    for blur in (0.0, 0.8, 2.5):
        want = detect(parts, gain, 700.0, mask, blur, None)
        got = det.detect(parts, gain, 700.0, mask, blur, None)
        np.testing.assert_allclose(got, want, atol=2e-6 * np.abs(want).max())
    with pytest.raises(ValueError, match="wider than"):
        det.detect(parts, gain, 700.0, mask, 9.0, None)


def test_gl_detector_noise_is_poisson(gl_renderer):
    """The GLSL quantum noise: exact Poisson below 25 quanta (the whole distribution, P(0)
    included), N(λ, λ) above; the same seed gives the same image, another seed another."""
    from scipy.stats import poisson

    from iratrainer.imaging.gl_detector import GlDetector

    det = GlDetector(gl_renderer)
    n, n0 = 256, 1000.0
    ones = np.ones((n, n))
    zero = np.zeros((n, n), np.float32)

    def counts(lam: float, seeds: range) -> np.ndarray:
        L = np.full((n, n), np.log(n0 / lam), np.float32)
        c = np.concatenate([n0 * np.exp(-det.detect((L, zero, zero), ones, n0, ones, 0.0, s)).ravel()
                            for s in seeds])
        c[c < 0.75] = 0.0  # max(N, 0.5) in the log image: 0.5 back to 0
        return c

    for lam in (3.0, 7.3, 19.9):
        c = np.rint(counts(lam, range(4))).astype(int)
        m = len(c)
        freq = np.bincount(c, minlength=60)[:60] / m
        pmf = poisson.pmf(np.arange(60), lam)
        sd = np.sqrt(pmf * (1 - pmf) / m)
        assert np.all(np.abs(freq - pmf) <= 4.5 * sd + 1e-6), lam
    c = counts(400.0, range(2))
    assert c.mean() == pytest.approx(400.0, rel=2e-3)
    assert c.var() == pytest.approx(400.0, rel=0.02)
    L = np.full((n, n), 2.0, np.float32)
    a = det.detect((L, zero, zero), ones, n0, ones, 0.6, 2**63 - 5)
    assert np.array_equal(a, det.detect((L, zero, zero), ones, n0, ones, 0.6, 2**63 - 5))
    assert not np.array_equal(a, det.detect((L, zero, zero), ones, n0, ones, 0.6, 2**63 - 4))


@pytest.mark.parametrize("mode", ["fluoro", "roadmap"])
def test_gl_renderer_with_its_gl_detector_agrees_with_numpy(gl_renderer, mode):
    """The whole GL path (line integrals left on the GPU, detector in GLSL) against the CPU
    reference, noise off; with noise on, the same noise level."""
    from iratrainer.anatomy.atlas import build_atlas
    from iratrainer.imaging.scene import contrast_downstream, static_stack

    tree = build_atlas()
    scene = Scene(tree, 0.0, static_stack(tree))
    iodine = contrast_downstream(tree, "L_CCA")
    before = gl_renderer.gl_detector
    gl_renderer.gl_detector = True
    try:
        out, noisy = {}, {}
        for name, renderer in (("numpy", CpuRenderer()), ("gl", gl_renderer)):
            for noise in (False, True):
                ch = PlaneChain(lateral(matrix=160), DoseMeter(), np.random.default_rng(0),
                                ChainSettings(options=ImageOptions(noise=noise), recursive_filter=0.0),
                                renderer=renderer)
                if mode == "fluoro":
                    frame = ch.fluoro_pulse(scene.with_contrast(iodine))
                else:
                    ch.dsa_run(lambda t: scene.with_contrast(iodine if t > 0 else 0.0), 1.0)
                    ch.store_roadmap()
                    ch.fluoro_pulse(scene)
                    frame = ch.fluoro_pulse(scene)
                (noisy if noise else out)[name] = np.asarray(frame.lhat, dtype=np.float64)
    finally:
        gl_renderer.gl_detector = before
    assert np.abs(out["gl"] - out["numpy"]).mean() < 1e-4
    if mode == "fluoro":
        # a blur wider than the GLSL kernel takes the CPU detector (the same image as NumPy's)
        wide = ChainSettings(options=ImageOptions(noise=False, blur_px=9.0), recursive_filter=0.0)
        imgs = []
        for renderer in (CpuRenderer(), gl_renderer):
            gl_renderer.gl_detector = True
            ch = PlaneChain(lateral(matrix=160), DoseMeter(), np.random.default_rng(0), wide, renderer=renderer)
            imgs.append(np.asarray(ch.fluoro_pulse(scene.with_contrast(iodine)).lhat))
        gl_renderer.gl_detector = before
        assert np.abs(imgs[0] - imgs[1]).max() < 1e-5
        inside = lateral(matrix=160).field_mask() == 1.0
        sd = {k: np.std((noisy[k] - out[k])[inside]) for k in out}
        assert sd["gl"] == pytest.approx(sd["numpy"], rel=0.05)


def test_detector_computes_only_the_collimated_field_and_loses_nothing():
    """Outside the collimated field (and the blur's reach) the detector skips the pixels:
    the image is the full computation times the field mask, to the bit."""
    from dataclasses import replace

    from iratrainer.imaging.detector import detect

    p = replace(lateral(matrix=200), collimation=0.7)
    mask = p.field_mask()
    assert not mask.flags.writeable and mask.min() == 0.0  # the cached field, with pixels outside
    L = np.random.default_rng(2).uniform(0.0, 5.0, (200, 200))
    g = np.ones_like(L)
    for blur in (0.0, 1.5):
        full = detect(L, g, 60.0, np.ones_like(L), blur, 99) * mask
        np.testing.assert_array_equal(detect(L, g, 60.0, mask, blur, 99), full)
