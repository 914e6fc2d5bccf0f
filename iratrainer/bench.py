"""``iratrainer bench``: the project's benchmarks, one JSON object per line.

Each figure is the median of repeated timed runs after a warm-up, printed as
``{"name": ..., "value": ..., "unit": ..., "workload": ..., "repeats": ...}``.
Groups: ``anatomy`` (and later ``physics``, ``render``, ...); no group runs them all.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["GROUPS", "run_benchmarks", "median_rate"]


def median_rate(fn: Callable[[], Any], work: float, repeats: int, min_time_s: float = 0.05) -> float:
    """Median over ``repeats`` of ``work / seconds`` for one call of ``fn`` (warm-up excluded).

    Each sample loops ``fn`` until at least ``min_time_s`` has passed, so that timer
    resolution does not dominate short calls.
    """
    fn()
    rates = []
    for _ in range(repeats):
        n = 0
        t0 = time.perf_counter()
        while True:
            fn()
            n += 1
            dt = time.perf_counter() - t0
            if dt >= min_time_s:
                break
        rates.append(work * n / dt)
    return float(statistics.median(rates))


def bench_anatomy(repeats: int = 15) -> Iterator[dict[str, Any]]:
    """Signed-distance queries per second, batches of 1,000 points, against the full atlas."""
    from iratrainer.anatomy.atlas import build_atlas
    from iratrainer.anatomy.lumen import LumenIndex

    tree = build_atlas()
    t0 = time.perf_counter()
    tree.lumen_index  # noqa: B018 - builds and caches the index
    first_build_s = time.perf_counter() - t0
    build_s = 1.0 / median_rate(lambda: LumenIndex(tree), 1.0, 5, min_time_s=0.0)
    rng = np.random.default_rng(0)
    # points where devices live: inside and near the lumen, spread along every branch
    seg = rng.integers(0, tree.n_segments, 1000)
    t = rng.random(1000)
    centre = tree.seg_a[seg] + t[:, None] * (tree.seg_b[seg] - tree.seg_a[seg])
    r = tree.seg_ra[seg]
    direction = rng.normal(size=(1000, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    pts = centre + direction * (r * rng.uniform(0.0, 1.3, 1000))[:, None]
    rate = median_rate(lambda: tree.signed_distance(pts), 1000, repeats)
    yield {
        "name": "anatomy.lumen_distance",
        "value": round(rate),
        "unit": "points/s",
        "workload": (
            f"signed distance + nearest centerline point, batches of 1000 points within 1.3 radii "
            f"of the centerline, full atlas ({len(tree)} branches, {tree.n_segments} segments), "
            f"one thread"
        ),
        "repeats": repeats,
    }
    full = median_rate(lambda: tree.query(pts), 1000, repeats)
    yield {
        "name": "anatomy.lumen_query_full",
        "value": round(full),
        "unit": "points/s",
        "workload": "as anatomy.lumen_distance, returning branch, arc length, closest point, radius",
        "repeats": repeats,
    }
    yield {
        "name": "anatomy.index_build_s",
        "value": round(build_s, 4),
        "unit": "s",
        "workload": f"build the lumen grid index of the full atlas (cell {tree.lumen_index.cell} mm), kernels loaded",
        "repeats": 5,
    }
    yield {
        "name": "anatomy.index_first_build_s",
        "value": round(first_build_s, 4),
        "unit": "s",
        "workload": "the first index build in a fresh process, loading the cached compiled kernels",
        "repeats": 1,
    }
    atlas_s = 1.0 / median_rate(build_atlas, 1.0, 5, min_time_s=0.0)
    yield {
        "name": "anatomy.atlas_build_s",
        "value": round(atlas_s, 4),
        "unit": "s",
        "workload": "build the default reference atlas (type I arch)",
        "repeats": 5,
    }


def bench_render(repeats: int = 7) -> Iterator[dict[str, Any]]:
    """Frames per second of the CPU reference renderer, full scene, noise and filtering on."""
    from iratrainer.anatomy.atlas import build_atlas
    from iratrainer.imaging.chain import PlaneChain
    from iratrainer.imaging.dose import DoseMeter
    from iratrainer.imaging.geometry import frontal, lateral
    from iratrainer.imaging.scene import Scene, contrast_downstream, static_stack

    tree = build_atlas()
    scene = Scene(tree, contrast_downstream(tree, "L_CCA"), static_stack(tree))
    for size in (512, 1024):
        for plane in (lateral(matrix=size), frontal(matrix=size)):
            chain = PlaneChain(plane, DoseMeter(), np.random.default_rng(0))
            fps = median_rate(lambda c=chain: c.fluoro_pulse(scene), 1.0, repeats, min_time_s=0.2)
            yield {
                "name": f"render.numpy_{size}_fps" + ("" if plane.name == "lateral" else "_frontal"),
                "value": round(fps, 2),
                "unit": "frames/s",
                "workload": (f"one {size}x{size} {plane.name} fluoroscopy pulse of the full atlas: iodine in "
                             "the left carotid territory (union of tubes), 4-device stroke stack (4x4 rays/px), "
                             "cached phantom background, Poisson noise, blur, recursive filter; line integrals on one "
                             "thread, the detector (noise, blur, log) compiled on every core"),
                "repeats": repeats,
            }
    # the C-arm rotating: every pulse a new view, the vessel rays cast directly (no chords)
    import itertools
    from dataclasses import replace

    base = lateral(matrix=1024)

    def rotating_rate(renderer: Any = None) -> float:
        """Frames/s with the C-arm turning 0.05° per pulse (every pulse a new view)."""
        chain = PlaneChain(base, DoseMeter(), np.random.default_rng(0), renderer=renderer)
        step = itertools.count()

        def moving() -> None:
            chain.set_plane(replace(base, lao_deg=base.lao_deg + 0.05 * next(step)))
            chain.fluoro_pulse(scene)

        return median_rate(moving, 1.0, max(3, repeats // 2), min_time_s=0.2)

    fps = rotating_rate()
    yield {"name": "render.numpy_1024_moving_fps", "value": round(fps, 2), "unit": "frames/s",
           "workload": ("as render.numpy_1024_fps with the C-arm rotating 0.05° per pulse: every pulse a new "
                        "view, so the vessel rays are cast directly instead of re-weighting the view's chords"),
           "repeats": max(3, repeats // 2)}
    from iratrainer.imaging.chords import VesselChords

    r = 0.5 * (tree.seg_ra + tree.seg_rb)
    times = []
    for k in range(3):
        t0 = time.perf_counter()
        VesselChords(replace(base, lao_deg=base.lao_deg + 0.3 * k), tree.seg_a, tree.seg_b, r)
        times.append(time.perf_counter() - t0)
    yield {"name": "render.chords_build_1024_s", "value": round(statistics.median(times), 4), "unit": "s",
           "workload": (f"the vessel chords of one new 1024x1024 lateral view, all {len(r)} atlas capsules "
                        "(built once when the C-arm stops; every later pulse re-weights them)"),
           "repeats": 3}
    try:
        from iratrainer.imaging.gl import GlRenderer, GlUnavailable

        gl = GlRenderer()
    except (ImportError, GlUnavailable) as exc:
        yield {"name": "render.gl_unavailable", "value": 0, "unit": "", "workload": str(exc), "repeats": 0}
        return
    where = f"{gl.ctx.renderer}, OpenGL {gl.ctx.version}"
    placed = ("background, devices and " + ("iodine" if gl.gl_iodine else "a new view's iodine") + " in GLSL"
              + ("" if gl.gl_iodine else "; a still view's iodine re-weighted on the CPU (faster on a software "
                                         "rasterizer, the same sum)")
              + ("; noise, blur and log in GLSL" if gl.gl_detector else
                 "; noise, blur and log on the CPU (compiled, every core)"))
    for size in (512, 1024):
        chain = PlaneChain(lateral(matrix=size), DoseMeter(), np.random.default_rng(0), renderer=gl)
        fps = median_rate(lambda c=chain: c.fluoro_pulse(scene), 1.0, repeats, min_time_s=0.2)
        yield {
            "name": f"render.gl_{size}_fps",
            "value": round(fps, 2),
            "unit": "frames/s",
            "workload": f"as render.numpy_{size}_fps on {where}: {placed} (the renderer's automatic choice)",
            "repeats": repeats,
        }
    # the parts the renderer leaves on the CPU on a software rasterizer, drawn in GLSL instead
    # (what a GPU runs): on llvmpipe slower, so reported for comparison
    auto = (gl.gl_iodine, gl.gl_detector)
    for name, iodine, detector, what in (
            ("render.gl_1024_gl_iodine_fps", True, False,
             "a still view's iodine drawn too (its chords as 8,900 patches), the detector on the CPU"),
            ("render.gl_1024_all_glsl_fps", True, True,
             "every part in GLSL: the iodine drawn, noise, blur and log in three full-frame passes, "
             "only the log image read back")):
        gl.gl_iodine, gl.gl_detector = iodine, detector
        try:
            chain = PlaneChain(lateral(matrix=1024), DoseMeter(), np.random.default_rng(0), renderer=gl)
            fps = median_rate(lambda c=chain: c.fluoro_pulse(scene), 1.0, repeats, min_time_s=0.2)
        finally:
            gl.gl_iodine, gl.gl_detector = auto
        yield {
            "name": name,
            "value": round(fps, 2),
            "unit": "frames/s",
            "workload": (f"as render.gl_1024_fps with {what}, on {where}; the renderer does this by itself "
                         f"{'here' if auto == (iodine, detector) else 'on a GPU, not on a software rasterizer'}"),
            "repeats": repeats,
        }
    fps = rotating_rate(gl)
    yield {"name": "render.gl_1024_moving_fps", "value": round(fps, 2), "unit": "frames/s",
           "workload": (f"as render.numpy_1024_moving_fps (the C-arm rotating, every pulse a new view: the "
                        f"vessel rays cast directly in GLSL), {where}"),
           "repeats": max(3, repeats // 2)}
    chains = [PlaneChain(p(matrix=1024), DoseMeter(), np.random.default_rng(0), renderer=gl)
              for p in (frontal, lateral)]
    fps = median_rate(lambda: [c.fluoro_pulse(scene) for c in chains], 1.0, repeats, min_time_s=0.2)
    yield {
        "name": "render.gl_biplane_1024_fps",
        "value": round(fps, 2),
        "unit": "frames/s (both planes)",
        "workload": f"one frontal and one lateral 1024x1024 pulse per frame, {where}: {placed}",
        "repeats": repeats,
    }


def bench_physics(repeats: int = 5) -> Iterator[dict[str, Any]]:
    """Physics steps per second: the full stroke stack in the atlas, and one 80-node wire."""
    import subprocess
    import sys

    from iratrainer.anatomy.atlas import build_atlas
    from iratrainer.physics.catalogue import default_catalogue
    from iratrainer.physics.stack import DeviceStack, HubCommand

    tree = build_atlas()
    cat = default_catalogue()
    names = ["balloon_guide_8F", "intermediate_6F", "microcatheter_021", "microwire_014"]
    stack = DeviceStack(tree, [cat[n] for n in names], inserted_mm=[330.0, 360.0, 390.0, 420.0])
    cmds = {n: HubCommand(5.0, 30.0) for n in names}
    for _ in range(50):
        stack.step(cmds)
    nodes = sum(len(r.x) for r in stack.rods)
    rate = median_rate(lambda: stack.step(cmds), 1.0, repeats, min_time_s=0.5)
    yield {"name": "physics.stack_steps_per_s", "value": round(rate, 1), "unit": "steps/s",
           "workload": f"8F guide + 6F intermediate + 0.021 microcatheter + 0.014 microwire ({nodes} nodes), "
                       "from the right femoral artery into the aorta, all hubs advancing and turning, one core",
           "repeats": repeats}
    wire = DeviceStack(tree, [cat["guidewire_035_angled"]], inserted_mm=[160.0], access_label="R_CFA")
    target = 80  # nodes: CathSim's guidewire size
    while len(wire.rods[0].x) < target:
        wire.step({"guidewire_035_angled": HubCommand(40.0, 0.0)})
    cmd = {"guidewire_035_angled": HubCommand(2.0, 90.0)}
    rate = median_rate(lambda: wire.step(cmd), 1.0, repeats, min_time_s=0.5)
    yield {"name": "physics.single_wire_steps_per_s", "value": round(rate, 1), "unit": "steps/s",
           "workload": f"one 0.035 in wire of {len(wire.rods[0].x)} nodes in the iliac-aortic path, advancing and "
                       "turning, one core (CathSim uses an 80-capsule wire)",
           "repeats": repeats}
    code = ("import time; t=time.perf_counter(); from iratrainer.anatomy.atlas import build_atlas; "
            "from iratrainer.physics.catalogue import default_catalogue; "
            "from iratrainer.physics.stack import DeviceStack; c=default_catalogue(); "
            "s=DeviceStack(build_atlas(), [c['guidewire_035_angled']]); s.step(); "
            "print(time.perf_counter()-t)")
    first = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 check=True).stdout.strip())
    yield {"name": "physics.first_step_s", "value": round(first, 3), "unit": "s",
           "workload": "fresh process: import, build the atlas and a wire, first step (compiled caches warm)",
           "repeats": 1}


def bench_segment(repeats: int = 1) -> Iterator[dict[str, Any]]:
    """End-to-end 3-D segmentation time for cubic CTA volumes of 64³, 128³ and 256³ voxels (0.5 mm)."""
    from iratrainer.anatomy.atlas import build_atlas
    from iratrainer.segmentation.dicom_io import Volume
    from iratrainer.segmentation.phantom import cta_volume, subtree
    from iratrainer.segmentation.vessel3d import segment_volume

    tree = subtree(build_atlas(), "L_ICA", depth=2)
    ph = cta_volume(tree, voxel_mm=0.5, margin_mm=4.0, seed=1)
    for n in (64, 128, 256):
        # an n³ block of the phantom around the carotid siphon, padded with background if needed
        zc, yc, xc = (s // 2 for s in ph.hu.shape)
        block = np.full((n, n, n), float(np.median(ph.hu)), np.float32)
        sl = [slice(max(c - n // 2, 0), max(c - n // 2, 0) + n) for c in (zc, yc, xc)]
        part = ph.hu[sl[0], sl[1], sl[2]]
        block[:part.shape[0], :part.shape[1], :part.shape[2]] = part
        aff = ph.affine.copy()
        aff[:3, 3] = ph.affine[:3, 3] + 0.5 * np.array([sl[2].start, sl[1].start, sl[0].start])
        vol = Volume(block, aff, "CT", {})
        times = []
        n_br = 0
        for _ in range(repeats):
            t0 = time.perf_counter()
            try:
                n_br = len(segment_volume(vol).tree)
            except Exception:  # a small block may hold no tree; the time still counts
                n_br = 0
            times.append(time.perf_counter() - t0)
        yield {"name": f"segment.volume_{n}_s", "value": round(float(statistics.median(times)), 2), "unit": "s",
               "workload": f"{n}³ voxels of 0.5 mm from a CTA phantom of the left ICA tree (170 HU contrast fading "
                           f"distally, 30 HU noise, bone): vesselness to tree ({n_br} branches)",
               "repeats": repeats}


def bench_procedure(repeats: int = 3) -> Iterator[dict[str, Any]]:
    """The expert autopilot on the default case, headless: without images, and with every
    fluoroscopy pulse and acquisition frame rendered (NumPy, 256²) at its pulse rate."""
    from iratrainer.scenario.case import default_case_path, load_case
    from iratrainer.scenario.run import HeadlessRun

    case = load_case(default_case_path())
    HeadlessRun(case, "expert", 0, render=False).run()  # warm-up: compiled kernels, cached network
    for render in (False, True):
        factors, sims, imgs = [], [], 0
        for k in range(repeats if not render else max(1, repeats // 2)):
            hr = HeadlessRun(case, "expert", k, render=render)
            t0 = time.perf_counter()
            proc = hr.run()
            wall = time.perf_counter() - t0
            factors.append(proc.time_s / wall)
            sims.append(proc.time_s)
            imgs = hr.images_rendered
        name = "procedure.realtime_factor_rendered" if render else "procedure.realtime_factor"
        yield {"name": name, "value": round(float(statistics.median(factors)), 2), "unit": "x real time",
               "workload": f"expert autopilot, default case ({case.id}), seeds 0..{len(factors) - 1}, "
                           f"{statistics.median(sims):.0f} s simulated"
                           + (f", {imgs} images of 256² rendered with the NumPy renderer" if render else
                              ", no images"),
               "repeats": len(factors)}


def construct_validity(seeds: Any = range(10), case_path: Any = None) -> dict[str, dict[str, Any]]:
    """Expert vs novice autopilot on one case over ``seeds``: medians and whether the expert
    is better by a clear margin (10 % of the novice's median, 5 points of score)."""
    from iratrainer.scenario.case import default_case_path, load_case
    from iratrainer.scenario.run import HeadlessRun
    from iratrainer.scoring.rubric import score_session

    case = load_case(case_path or default_case_path())
    vals: dict[str, dict[str, list[float]]] = {"expert": {}, "novice": {}}
    for who in ("expert", "novice"):
        for seed in seeds:
            hr = HeadlessRun(case, who, int(seed), render=False)
            proc = hr.run()
            m = proc.metrics()
            m["score"] = score_session(m, proc.event_log(), case.level, case.goal.kind, case.scoring).total
            for key in ("score", "procedure_time_s", "fluoro_time_s", "dap_gy_cm2", "contrast_ml"):
                vals[who].setdefault(key, []).append(float(m[key]))
    out = {}
    for key in vals["expert"]:
        e = statistics.median(vals["expert"][key])
        n = statistics.median(vals["novice"][key])
        better = (e - n >= 5.0) if key == "score" else (n - e >= 0.1 * n)
        out[key] = {"expert": e, "novice": n, "expert_better": bool(better)}
    return out


def bench_scoring(repeats: int = 1) -> Iterator[dict[str, Any]]:
    """Construct validity (expert vs novice over 10 seeds, default case) and the longest
    records write while a procedure runs."""
    import tempfile

    from iratrainer.records.store import Store
    from iratrainer.scenario.case import default_case_path, load_case
    from iratrainer.scenario.run import run_headless

    rows = construct_validity(range(10))
    for key, r in rows.items():
        yield {"name": f"scoring.{key}_expert_vs_novice", "value": [round(r["expert"], 2), round(r["novice"], 2)],
               "unit": "median expert, median novice", "workload": "default case, seeds 0-9, autopilots, no images",
               "expert_better": r["expert_better"], "repeats": 10}
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "records.db")
        store.add_trainee("bench")
        res = run_headless(load_case(default_case_path()), Path(tmp) / "run", "expert", 0, render=False,
                           store=store, trainee="bench")
        yield {"name": "scoring.longest_write_s", "value": res["records"]["longest_write_s"], "unit": "s",
               "workload": f"expert on the default case recorded as it goes ({res['records']['batches']} batches, "
                           "writer thread; the loop only hands batches over)", "repeats": 1}
        yield {"name": "scoring.longest_handover_s", "value": res["records"]["longest_push_s"], "unit": "s",
               "workload": "the simulation loop's longest pause to hand a batch to the writer", "repeats": 1}


def bench_app(repeats: int = 1) -> Iterator[dict[str, Any]]:
    """The trainer headless at 1280x800 (SDL offscreen): frames per second end to end while a
    device moves under fluoroscopy, single plane and biplane, through the OpenGL window
    (Mesa's software rasterizer here) and pygame's software display; start-up; input latency
    at 7.5 and 15 pulses/s."""
    import os

    from iratrainer.app.trainer import TrainerApp
    from iratrainer.scenario.case import default_case_path

    os.environ["SDL_VIDEODRIVER"] = "offscreen"
    for display in ("auto", "software"):
        for biplane in (False, True):
            script = [{"at_s": 0.1, "press": "RETURN"}, {"at_s": 0.2, "press": "I"}]
            if not biplane:
                script.append({"at_s": 0.3, "press": "V"})
            script += [{"at_s": 0.5, "hold": "UP", "for_s": 6.0}, {"at_s": 0.5, "hold": "SPACE", "for_s": 6.0},
                       {"at_s": 6.6, "quit": True}]
            runs = []
            for _ in range(max(1, repeats)):
                app = TrainerApp(str(default_case_path()), headless=True, script=script, display=display)
                app.run()
                frames = app.frame_times[20:]  # after the procedure started
                runs.append((len(frames) / sum(frames), frames))
            fps, frames = sorted(runs, key=lambda r: r[0])[len(runs) // 2]
            path = app.gl.description if app.gl is not None else "pygame software display"
            name = "app.fps_biplane_1280x800" if biplane else "app.fps_single_1280x800"
            if display == "software":
                name += "_software"
            yield {"name": name, "value": round(fps, 1), "unit": "frames/s (frames / total time)",
                   "median_frame_fps": round(1.0 / statistics.median(frames), 1),
                   "workload": f"trainer headless (SDL offscreen, {path}), default case, a catheter advancing "
                               "under 7.5 pulses/s fluoroscopy, NumPy images 256² shown at 512², HUD, 3-D overview",
                   "repeats": len(runs), "p95_frame_ms": round(1000 * float(np.percentile(frames, 95)), 1)}
    for pps in (7.5, 15.0):
        # taps of the advance key at phases that do not divide the pulse period, pedal held
        script = [{"at_s": 0.1, "press": "RETURN"}, {"at_s": 0.2, "press": "I"},
                  {"at_s": 0.3, "hold": "SPACE", "for_s": 12.0}]
        if pps == 15.0:
            script.append({"at_s": 0.25, "press": "F"})
        script += [{"at_s": 0.6 + 0.37 * k, "hold": "UP", "for_s": 0.1} for k in range(30)]
        script.append({"at_s": 12.4, "quit": True})
        app = TrainerApp(str(default_case_path()), headless=True, script=script)
        app.run()
        lat = app.latency_frames
        yield {"name": "app.input_latency_frames" + ("" if pps == 15.0 else "_7.5pps"),
               "value": float(np.median(lat)) if lat else None, "max": max(lat) if lat else None,
               "unit": "display frames (median; max given) from a key to the first image showing it",
               "workload": f"{len(lat)} taps of the advance key at varied phases, pedal held, {pps:g} pulses/s "
                           f"(a pulse every {30 / pps:g} display frames at 30 frames/s: the image cannot "
                           "change between pulses)", "repeats": len(lat)}
    t0 = time.perf_counter()
    app = TrainerApp(str(default_case_path()), headless=True, script=[{"at_s": 0.0, "quit": True}])
    app.run()
    yield {"name": "app.startup_s", "value": round(time.perf_counter() - t0, 2), "unit": "s",
           "workload": "in-process, warm caches: build the app, open the OpenGL window, draw the first frame",
           "repeats": 1}


GROUPS: dict[str, Callable[..., Iterator[dict[str, Any]]]] = {
    "anatomy": bench_anatomy,
    "render": bench_render,
    "physics": bench_physics,
    "segment": bench_segment,
    "procedure": bench_procedure,
    "scoring": bench_scoring,
    "app": bench_app,
}


def run_benchmarks(groups: list[str] | None = None, repeats: int | None = None) -> Iterator[str]:
    """Yield one JSON line per figure for the chosen groups (all when ``groups`` is empty)."""
    names = groups or list(GROUPS)
    for g in names:
        kwargs = {} if repeats is None else {"repeats": repeats}
        for row in GROUPS[g](**kwargs):
            row.setdefault("machine", f"{platform.machine()} {platform.python_implementation()} "
                                      f"{platform.python_version()}")
            yield json.dumps(row)
