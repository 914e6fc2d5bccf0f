"""The ``iratrainer`` command line: thin commands over the packages.

``main(argv)`` is callable from tests. A user error (bad file, bad parameter) prints one
line ``iratrainer: error: ...`` on stderr and returns 2; no traceback.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from iratrainer import __version__
from iratrainer.errors import IratrainerError

__all__ = ["main", "build_parser", "user_data_dir"]


def user_data_dir() -> Path:
    """The per-user data folder (models, previews, the records database), created on demand.

    ``IRATRAINER_HOME`` overrides it (tests and portable installs).
    """
    env = os.environ.get("IRATRAINER_HOME")
    if env:
        p = Path(env)
    else:
        from platformdirs import user_data_path

        p = user_data_path("iratrainer", appauthor=False)
    p.mkdir(parents=True, exist_ok=True)
    return p


# ---------------------------------------------------------------------- commands
def _cmd_atlas(args: argparse.Namespace) -> int:
    from iratrainer.anatomy.atlas import AtlasParams, build_atlas
    from iratrainer.anatomy.io import save_vessels

    tree = build_atlas(AtlasParams(arch=args.arch, seed=args.seed, tortuosity=args.tortuosity,
                                   bovine=args.bovine))
    out = save_vessels(tree, args.out)
    msg = f"wrote {out}: {len(tree)} branches, {tree.total_length_mm:.0f} mm of centerline"
    if args.vtp:
        from iratrainer.anatomy.io import export_vtp

        export_vtp(tree, args.vtp)
        msg += f"; {args.vtp}"
    if args.preview:
        from iratrainer.anatomy.preview import save_preview

        title = (f"iratrainer atlas: arch type {args.arch}{' bovine' if args.bovine else ''}, "
                 f"seed {args.seed}, tortuosity {args.tortuosity}")
        save_preview(tree, args.preview, title)
        msg += f"; preview {args.preview}"
    print(msg)
    return 0


def _cmd_model(args: argparse.Namespace) -> int:
    from iratrainer.anatomy.io import export_vtp, load_vessels

    status = 0
    for path in args.paths:
        try:
            tree = load_vessels(path)
        except IratrainerError as exc:
            print(f"iratrainer: error: {exc}", file=sys.stderr)
            status = 2
            continue
        radii = [b.radii_mm for b in tree.branches]
        lo = min(float(r.min()) for r in radii)
        hi = max(float(r.max()) for r in radii)
        print(f"{path}: ok, {len(tree)} branches, root {tree.root}, "
              f"{tree.total_length_mm:.0f} mm of centerline, radius {lo:.2f}-{hi:.2f} mm")
        if args.vtp:
            out = Path(args.vtp)
            if len(args.paths) > 1:
                out = out / (Path(path).name.removesuffix(".json").removesuffix(".vessels")
                             + ".vtp")
            export_vtp(tree, out)
            print(f"  exported {out}")
        if args.preview:
            from iratrainer.anatomy.preview import save_preview

            save_preview(tree, args.preview)
            print(f"  preview {args.preview}")
    return status


def _cmd_render(args: argparse.Namespace) -> int:
    import numpy as np

    from iratrainer.anatomy.atlas import AtlasParams, build_atlas
    from iratrainer.anatomy.io import load_vessels
    from iratrainer.imaging.chain import ChainSettings, PlaneChain
    from iratrainer.imaging.dose import DoseMeter
    from iratrainer.imaging.geometry import CArmPlane
    from iratrainer.imaging.png import write_png
    from iratrainer.imaging.render import ImageOptions
    from iratrainer.imaging.scene import Scene, contrast_downstream, static_stack

    out = Path(args.out)
    suffix = out.suffix.lower()
    if suffix not in (".png", ".dcm"):
        raise IratrainerError(f"{out}: output must end in .png or .dcm")
    if not out.parent.is_dir():
        raise IratrainerError(f"{out}: folder {out.parent} does not exist")
    circ = None
    phantom = None
    if args.case:  # the case's anatomy, background, clots and flow: a run injected upstream of the target
        from iratrainer.flow.circulation import Circulation
        from iratrainer.flow.network import FlowNetwork
        from iratrainer.scenario.case import load_case, resolve_case

        case = load_case(resolve_case(args.case))
        tree = case.load_tree()
        phantom = case.load_background(tree)
        circ = Circulation(FlowNetwork(tree, collateral_grade=case.collateral_grade), list(case.occlusions))
        route = tree.path(case.access_label(tree), case.goal.target)
        neck = next((lab for lab in route if lab.endswith(("_ICA", "_VA", "_CCA"))), route[0])
        inject = args.inject or neck
    else:
        tree = load_vessels(args.model) if args.model else build_atlas(AtlasParams(arch=args.atlas or "I"))
        inject = args.inject or ("L_CCA" if "L_CCA" in tree else tree.root)
    if inject not in tree:
        raise IratrainerError(f"--inject: {inject!r} is not a branch of the model")
    devices = ()
    if args.devices and "R_CFA" in tree and "L_MCA_M1" in tree and not args.case:
        devices = static_stack(tree)
    scene = Scene(tree, 0.0, devices) if phantom is None else Scene(tree, 0.0, devices, phantom)
    iodine = contrast_downstream(tree, inject, args.iodine_mg_ml)
    base = CArmPlane()
    plane = CArmPlane(
        name=args.plane, lao_deg=args.lao if args.lao is not None else (90.0 if args.plane == "lateral" else 0.0),
        cran_deg=args.cran, isocentre_mm=tuple(args.isocentre), fov_cm=args.fov, collimation=args.collimation,
        matrix=args.size, sid_mm=args.sid or base.sid_mm, sod_mm=args.sod or base.sod_mm)
    plane, notes = plane.clamped()
    for n in notes:
        print(f"iratrainer: warning: {n}", file=sys.stderr)
    options = ImageOptions(noise=not args.no_noise)
    renderer = None
    if args.backend == "gl":
        from iratrainer.imaging.gl import make_gl_renderer

        renderer = make_gl_renderer(warn=lambda m: print(f"iratrainer: warning: {m}", file=sys.stderr))
    chain = PlaneChain(plane, DoseMeter(), np.random.default_rng(args.seed),
                       ChainSettings(options=options, dsa_fps=args.fps), renderer=renderer)
    if args.mode == "fluoro":
        frames = [chain.fluoro_pulse(scene) for _ in range(args.pulses)]
    elif circ is not None:  # contrast from the flow model: 7 mL at 5 mL/s into the vessel upstream of the target
        b = tree[inject]
        circ.inject(tree.point_at(inject, 0.6 * b.length_mm), 7.0, 5.0)

        def scene_at(t: float) -> Scene:
            circ.advance(max(0.0, t - circ.time_s))
            return Scene(tree, circ.segment_iodine(), devices, scene.phantom, t, *circ.blobs())

        frames = chain.dsa_run(scene_at, args.duration)
        if args.mode == "roadmap":
            chain.store_roadmap()
            frames = [chain.fluoro_pulse(scene) for _ in range(args.pulses)]
    else:
        frames = chain.dsa_run(lambda t: scene.with_contrast(iodine if t > 0 else 0.0), args.duration)
        if args.mode == "roadmap":
            chain.store_roadmap()
            frames = [chain.fluoro_pulse(scene) for _ in range(args.pulses)]
    if suffix == ".png":
        write_png(out, frames[-1].display)
    else:
        from iratrainer.imaging.dicom_export import write_xa_run

        write_xa_run(out, frames, plane, series_description=f"iratrainer {args.mode} {args.plane}")
    d = chain.dose
    print(f"wrote {out}: {args.mode}, {args.plane}, {len(frames)} frame(s), {plane.matrix}x{plane.matrix}, "
          f"Ka,r {d.kar_mgy:.3f} mGy, DAP {d.dap_gy_cm2:.4f} Gy.cm2")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    import json

    if args.what == "flow":
        from iratrainer.flow.validate import run_checks as flow_checks

        rows = flow_checks()
    elif args.what == "physics":
        from iratrainer.physics.validate import run_checks

        rows = run_checks(fuzz_seconds=args.fuzz_seconds)
    else:
        raise IratrainerError(f"validate: unknown subject {args.what!r} (choose: physics, flow)")
    ok = True
    for row in rows:
        ok &= bool(row["passed"])
        print(json.dumps(row), flush=True)
    return 0 if ok else 1


def _cmd_navigate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from iratrainer.anatomy.atlas import AtlasParams, build_atlas
    from iratrainer.scenario.navigate import navigate

    labels = build_atlas(AtlasParams(arch=args.arch)).labels
    if args.target not in labels:
        raise IratrainerError(f"--target: no vessel {args.target!r} in the atlas (e.g. L_MCA_M1, L_ICA, R_ICA, "
                              "L_CCA, BCT, L_SCA)")
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise IratrainerError(f"{out}: cannot write there ({exc.strerror or exc})") from None
    res = navigate(args.arch, args.target, seed=args.seed, max_sim_s=args.max_seconds,
                   progress=lambda msg: print(f"navigate: {msg}", file=sys.stderr, flush=True))
    path = res.write(out)
    state = "reached" if res.reached else "not reached"
    print(f"{args.target} {state} ({res.outcome}) in {res.sim_time_s:.1f} s simulated, tip in {res.tip_branch}, "
          f"path {res.path_length_mm:.0f} mm, max wall force {res.max_wall_force_n:.2f} N: {path}")
    return 0 if res.reached else 1


def _progress_bar(stage: str, frac: float) -> None:
    n = int(round(30 * frac))
    end = "\n" if frac >= 1.0 else ""
    print(f"\rsegmenting: [{'#' * n}{' ' * (30 - n)}] {100 * frac:3.0f}% {stage:<12}", end=end, file=sys.stderr,
          flush=True)


def _cmd_segment(args: argparse.Namespace) -> int:
    import numpy as np

    from iratrainer.anatomy.io import save_vessels
    from iratrainer.segmentation.dicom_io import Run2D, read_dicom
    from iratrainer.segmentation.vessel3d import segment_volume

    out = Path(args.out)
    if not out.parent.is_dir():
        raise IratrainerError(f"{out}: folder {out.parent} does not exist")
    seed = None
    if args.seed_point:
        try:
            seed = np.array([float(v) for v in args.seed_point.split(",")])
            assert seed.shape == (3,)
        except (ValueError, AssertionError):
            raise IratrainerError(f"--seed-point: expected x,y,z in mm, got {args.seed_point!r}") from None
    progress = None if args.quiet else _progress_bar
    if len(args.inputs) == 2 and not args.series:
        runs = [read_dicom([x], say=lambda m: print(f"iratrainer: {m}", file=sys.stderr)) for x in args.inputs]
        if all(isinstance(r, Run2D) for r in runs):
            return _segment_biplane(runs, out, progress)
    data = read_dicom(args.inputs, series_uid=args.series, say=lambda m: print(f"iratrainer: {m}", file=sys.stderr))
    if isinstance(data, Run2D):
        from iratrainer.segmentation.vessel2d import segment_run

        if data.frames.shape[0] == 1:
            print("iratrainer: warning: a single frame, not a run: no mask frame, so no subtraction "
                  "(the flattened log image stands in)", file=sys.stderr)
        seg2 = segment_run(data, progress=progress)
        tree = seg2.tree
        unit = "mm" if seg2.calibrated else "px"
        if not seg2.calibrated:
            print("iratrainer: warning: the run has no ImagerPixelSpacing/distances: the tree is in pixels",
                  file=sys.stderr)
        save_vessels(tree, out)
        if args.preview:
            from iratrainer.segmentation.preview import save_run_preview

            save_run_preview(data, seg2, args.preview)
        radii = np.concatenate([b.radii_mm for b in tree.branches])
        print(f"wrote {out}: {len(tree)} branches, {tree.total_length_mm:.0f} {unit} of centerline, radius "
              f"{radii.min():.2f}-{radii.max():.2f} {unit} (2-D, detector plane, {data.frames.shape[0]} frame(s))")
        return 0
    seg = segment_volume(data, seed_point=seed, progress=progress)
    tree = seg.tree
    save_vessels(tree, out)
    if args.preview:
        from iratrainer.segmentation.preview import save_segmentation_preview

        save_segmentation_preview(data, tree, args.preview)
    radii = np.concatenate([b.radii_mm for b in tree.branches])
    print(f"wrote {out}: {len(tree)} branches, {tree.total_length_mm:.0f} mm of centerline, "
          f"radius {radii.min():.2f}-{radii.max():.2f} mm ({data.modality}, {data.voxels.shape[2]}x"
          f"{data.voxels.shape[1]}x{data.voxels.shape[0]} voxels)")
    return 0


def _window_arguments(p: argparse.ArgumentParser) -> None:
    """The options every command that opens the trainer window takes."""
    p.add_argument("--db", help="records database")
    p.add_argument("--headless", action="store_true", help="offscreen, driven by --script")
    p.add_argument("--script", help="recorded inputs, JSON lines ({\"at_s\": 1.0, \"press\": \"RETURN\"} ...)")
    p.add_argument("--screenshot-dir", help="where --script screenshots go")
    p.add_argument("--settings", help="settings file (default: settings.toml in the user config folder)")
    p.add_argument("--display", choices=("auto", "opengl", "software"),
                   help="OpenGL window or pygame's software display (default: the settings', auto)")


def _segment_biplane(runs: list[Any], out: Path, progress: Any) -> int:
    """Two calibrated XA runs of two planes: a 3-D tree by epipolar matching."""
    import numpy as np

    from iratrainer.anatomy.io import save_vessels
    from iratrainer.segmentation.biplane import reconstruct_biplane
    from iratrainer.segmentation.vessel2d import segment_run

    segs = [segment_run(r, progress=progress) for r in runs]
    res = reconstruct_biplane(segs[0].tree, runs[0], segs[1].tree, runs[1])
    save_vessels(res.tree, out)
    radii = np.concatenate([b.radii_mm for b in res.tree.branches])
    print(f"wrote {out}: {len(res.tree)} branches, {res.tree.total_length_mm:.0f} mm of centerline, radius "
          f"{radii.min():.2f}-{radii.max():.2f} mm (biplane: {100 * res.matched_fraction:.0f} % of the first view "
          f"matched, median ray gap {res.median_ray_gap_mm:.2f} mm; coordinates relative to the isocentre)")
    print("iratrainer: warning: biplane reconstruction is exact on complete 2-D trees but, on dense cortical "
          "territories, vessels hidden in one view can be matched to the wrong vessel (docs/segmentation.md)",
          file=sys.stderr)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from iratrainer.bench import GROUPS, run_benchmarks

    unknown = [g for g in args.groups if g not in GROUPS]
    if unknown:
        raise IratrainerError(
            f"unknown benchmark group {unknown[0]!r}; choose from {', '.join(GROUPS)}"
        )
    for line in run_benchmarks(args.groups, args.repeats):
        print(line, flush=True)
    return 0


def _cmd_preview(args: argparse.Namespace) -> int:
    """The main job until the trainer window lands: the atlas preview, shown or written."""
    from iratrainer.anatomy.atlas import AtlasParams, build_atlas
    from iratrainer.anatomy.preview import save_preview

    out = Path(args.out) if args.out else user_data_dir() / "atlas-preview.png"
    tree = build_atlas(AtlasParams(arch=args.arch))
    save_preview(tree, out, f"iratrainer reference atlas, arch type {args.arch}")
    print(f"iratrainer {__version__}: reference atlas ({len(tree)} branches) preview at {out}")
    if args.no_window or not _has_display():
        print("no display found: the preview was written to the file above "
              "(set DISPLAY, or run on a desktop, to see it in a window)")
        return 0
    return _show_image_window(out)


def _has_display() -> bool:
    if sys.platform in ("win32", "darwin"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _show_image_window(path: Path) -> int:  # pragma: no cover - needs a display
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    import pygame

    pygame.init()
    try:
        img = pygame.image.load(str(path))
        screen = pygame.display.set_mode(img.get_size())
        pygame.display.set_caption("iratrainer: reference atlas (close the window to quit)")
        screen.blit(img, (0, 0))
        pygame.display.flip()
        clock = pygame.time.Clock()
        while True:
            for ev in pygame.event.get():
                if ev.type == pygame.QUIT or (ev.type == pygame.KEYDOWN
                                              and ev.key in (pygame.K_ESCAPE, pygame.K_q)):
                    return 0
            clock.tick(30)
    except pygame.error as exc:
        print(f"iratrainer: cannot open a window ({exc}); the preview is at {path}",
              file=sys.stderr)
        return 0
    finally:
        pygame.quit()


def _cmd_case(args: argparse.Namespace) -> int:
    import json

    from iratrainer.scenario.case import default_case_path, list_cases, load_case

    if args.case_cmd == "validate":
        ok = True
        for path in args.paths:
            case = load_case(path)  # structure, values, devices
            tree = case.load_tree()  # the anatomy has what the case names
            case.load_background(tree)  # a background CT, when named, contains the model
            print(f"ok: {path} ({case.id}, {case.level}, difficulty {case.difficulty})")
        return 0 if ok else 1
    if args.case_cmd == "list":
        cases = list_cases()
        default = default_case_path().resolve()
        if args.json:
            for c in cases:
                print(json.dumps({"id": c.id, "path": str(c.path), "level": c.level, "difficulty": c.difficulty,
                                  "title": c.title, "goal": c.goal.kind, "target": c.goal.target,
                                  "default": c.path.resolve() == default}, ensure_ascii=False))
        else:
            for c in cases:
                mark = "*" if c.path.resolve() == default else " "
                print(f"{mark} {c.id:32s} {c.level:18s} {c.difficulty}  {c.title['en']}")
            print("(* = default case)")
        return 0
    if args.case_cmd == "new":
        from iratrainer.scenario.authoring import case_from_dicom

        out = case_from_dicom(args.inputs, args.occlusion, args.out, access=args.access,
                              progress=None if args.quiet else _progress_bar)
        print(f"wrote {out}")
        return 0
    raise IratrainerError("case: choose validate, list or new")


def _cmd_run(args: argparse.Namespace) -> int:
    from iratrainer.scenario.case import load_case, resolve_case
    from iratrainer.scenario.run import run_headless

    if not args.headless:
        raise IratrainerError("run: only --headless runs exist so far (the window is 'iratrainer play')")
    if not args.autopilot:
        raise IratrainerError("run --headless needs --autopilot expert or novice")
    case = load_case(resolve_case(args.case))
    store = None
    if args.trainee:
        from iratrainer.records.store import Store

        store = Store(args.db)
        store.trainee_id(args.trainee)  # unknown names fail before the run, with suggestions
    res = run_headless(case, args.out, args.autopilot, args.seed, cine=args.cine, matrix=args.matrix,
                       render=not args.no_render, store=store, trainee=args.trainee)
    print(f"{case.id}: {res['outcome']} in {res['time_s']:.0f} s simulated ({res['realtime_factor']:.1f}x real time); "
          f"mTICI {res['tici']}, {res['passes']} pass(es), fluoroscopy {res['fluoro_time_s']:.0f} s, "
          f"DAP {res['dap_gy_cm2']:.1f} Gy.cm2, contrast {res['contrast_ml']:.0f} mL -> {args.out}")
    if "session_id" in res:
        print(f"recorded session {res['session_id'][:8]} for {args.trainee}: score {res['score']['total']:.1f} "
              f"({'pass' if res['score']['passed'] else 'not yet'}) in {res['records']['db']}")
    return 0 if res["outcome"] in ("success", "ended") else 3


def _cmd_main(args: argparse.Namespace) -> int:
    """``iratrainer`` alone: the trainer window; without a display, how to run headless, and
    the trainer's screens on the default case written to the user data folder."""
    from iratrainer.app.i18n import default_language, tr
    from iratrainer.app.trainer import DEMO_SCRIPT, TrainerApp
    from iratrainer.scenario.case import default_case_path

    if _has_display():
        return TrainerApp().run()
    lang = default_language()
    print(f"iratrainer {__version__}: {tr('no_display', lang)}")
    shots = user_data_dir() / "screenshots"
    TrainerApp(str(default_case_path()), headless=True, script=DEMO_SCRIPT, screenshot_dir=str(shots)).run()
    print(tr("demo_written", lang, path=shots))
    return 0


def _cmd_play(args: argparse.Namespace) -> int:
    from iratrainer.app.trainer import TrainerApp

    if args.headless and not args.script:
        raise IratrainerError("play --headless needs --script FILE (recorded inputs, JSON lines)")
    app = TrainerApp(args.case, args.trainee, args.db, args.headless, args.script, args.screenshot_dir,
                     args.settings, args.seed, exam=args.exam, display=args.display)
    for w in app.warnings:
        print(f"iratrainer: warning: {w}", file=sys.stderr)
    if args.resume:
        app.resume(args.resume)
    return app.run()


def _cmd_replay(args: argparse.Namespace) -> int:
    from iratrainer.app.trainer import TrainerApp

    if args.headless and not args.script:
        raise IratrainerError("replay --headless needs --script FILE (recorded inputs, JSON lines)")
    app = TrainerApp(None, None, args.db, args.headless, args.script, args.screenshot_dir, args.settings,
                     display=args.display)
    app.open_replay(args.session)
    return app.run()


def _store(args: argparse.Namespace) -> Any:
    from iratrainer.records.store import Store

    return Store(args.db)


def _cmd_trainee(args: argparse.Namespace) -> int:
    store = _store(args)
    if args.trainee_cmd == "add":
        tid = store.add_trainee(args.name, args.cohort, args.des_year, args.email)
        print(f"added trainee {args.name} (id {tid}, cohort {args.cohort or '-'}) to {store.path}")
        return 0
    if args.trainee_cmd == "list":
        rows = store.trainees()
        for r in rows:
            print(f"{r['id']:4d}  {r['name']:30s} {str(r['cohort'] or '-'):12s} sessions {r['sessions']:3d}  "
                  f"passed {r['passed'] or 0:3d}")
        if not rows:
            print(f"no trainee yet in {store.path} (iratrainer trainee add NAME --cohort C)")
        return 0
    raise IratrainerError("trainee: choose add or list")


def _cmd_progress(args: argparse.Namespace) -> int:
    from iratrainer.records.curriculum import progress
    from iratrainer.scenario.case import list_cases

    store = _store(args)
    tid = store.trainee_id(args.name)
    for lv in progress(store.sessions(trainee_id=tid), list_cases()):
        state = "unlocked" if lv["unlocked"] else "locked"
        print(f"{lv['level']:18s} {state:9s} passed {len(lv['passed'])}/{lv['needed']}")
        for c in lv["cases"]:
            best = "-" if c["best_score"] is None else f"{c['best_score']:.1f}"
            print(f"    {'✔' if c['passed'] else ' '} {c['id']:30s} best {best}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from iratrainer.records.report import cohort_report, trainee_report

    store = _store(args)
    if bool(args.trainee) == bool(args.cohort):
        raise IratrainerError("report: give --trainee NAME or --cohort NAME")
    out = trainee_report(store, args.trainee, args.out) if args.trainee else cohort_report(store, args.cohort, args.out)
    print(f"wrote {out}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    import json

    from iratrainer.anatomy.io import atomic_write_bytes
    from iratrainer.records.export import sessions_csv, statements

    store = _store(args)
    text = sessions_csv(store, args.trainee) if args.format == "csv" else json.dumps(statements(store, args.trainee),
                                                                                       indent=1)
    if args.out == "-":
        print(text)
    else:
        try:
            atomic_write_bytes(args.out, text.encode("utf-8"))
        except OSError as exc:
            raise IratrainerError(f"{args.out}: cannot write ({exc.strerror or exc})") from None
        print(f"wrote {args.out}")
    return 0


def _cmd_sync(args: argparse.Namespace) -> int:
    from iratrainer.records.export import sync

    store = _store(args)
    sent, before = sync(store, args.lrs, args.user, args.password)
    print(f"sent {sent} statement(s) to {args.lrs} ({before} sent before)")
    return 0


# ---------------------------------------------------------------------- parser
def _seed(text: str) -> int:
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return v


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command (tests check that each has help)."""
    p = argparse.ArgumentParser(
        prog="iratrainer",
        description="Interventional radiology simulation trainer (stroke thrombectomy). "
        "With no command: open the main view.",
    )
    p.add_argument("--version", action="version", version=f"iratrainer {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    a = sub.add_parser("atlas", help="build the reference neurovascular atlas as a model file",
                       description="Build a patient-average anatomy, femoral arteries to the "
                       "cortical MCA branches, from published dimensions.")
    a.add_argument("--arch", choices=["I", "II", "III"], default="I", help="aortic arch type")
    a.add_argument("--seed", type=_seed, default=None,
                   help="vary dimensions within their published spread (default: the mean)")
    a.add_argument("--tortuosity", type=float, default=1.0,
                   help="cervical tortuosity scale, 0 (straight) to 3; 1 is average")
    a.add_argument("--bovine", action="store_true", help="left CCA from the brachiocephalic trunk")
    a.add_argument("--out", required=True, help="output MODEL.vessels.json")
    a.add_argument("--preview", help="also write a PNG with three orthogonal projections")
    a.add_argument("--vtp", help="also export VTK PolyData (.vtp) for 3D Slicer / ParaView / vmtk")
    a.set_defaults(func=_cmd_atlas)

    m = sub.add_parser("model", help="validate, describe and export *.vessels.json models",
                       description="Load each model with validation and print a summary.")
    m.add_argument("paths", nargs="+", help="MODEL.vessels.json files")
    m.add_argument("--vtp", help="export to this .vtp (a folder when several models are given)")
    m.add_argument("--preview", help="write a PNG preview")
    m.set_defaults(func=_cmd_model)

    r = sub.add_parser("render", help="render a fluoroscopy, DSA or roadmap image (PNG) or run (DICOM XA)",
                       description="Simulated X-ray imaging of a vessel model on one C-arm plane.")
    src = r.add_mutually_exclusive_group(required=True)
    src.add_argument("--atlas", choices=["I", "II", "III"], help="the reference atlas with this arch type")
    src.add_argument("--case", help="a case file")
    src.add_argument("--model", help="a MODEL.vessels.json")
    r.add_argument("--plane", choices=["frontal", "lateral"], default="frontal")
    r.add_argument("--mode", choices=["fluoro", "dsa", "roadmap"], default="fluoro")
    r.add_argument("--backend", choices=["numpy", "gl"], default="numpy")
    r.add_argument("--no-noise", action="store_true", help="no quantum noise")
    r.add_argument("--out", required=True, help="FILE.png (last image) or FILE.dcm (the whole run, XA)")
    r.add_argument("--size", type=int, default=512, help="image matrix (pixels)")
    r.add_argument("--fov", type=float, default=22.0, help="zoom: field edge at the detector, cm (11-30)")
    r.add_argument("--collimation", type=float, default=1.0, help="iris radius, fraction of the field")
    r.add_argument("--lao", type=float, default=None, help="primary angle, degrees (LAO > 0)")
    r.add_argument("--cran", type=float, default=0.0, help="secondary angle, degrees (cranial > 0)")
    r.add_argument("--sid", type=float, default=None, help="source-detector distance, mm")
    r.add_argument("--sod", type=float, default=None, help="source-isocentre distance, mm")
    r.add_argument("--isocentre", type=float, nargs=3, default=[0.0, 5.0, 215.0], metavar=("X", "Y", "Z"),
                   help="isocentre in patient LPS mm (table position)")
    r.add_argument("--inject", help="branch where contrast is injected (default L_CCA; with --case the "
                   "cervical vessel on the way to the target, and the flow model carries it)")
    r.add_argument("--iodine-mg-ml", type=float, default=150.0, help="iodine in filled vessels, mg/mL")
    r.add_argument("--no-devices", dest="devices", action="store_false", help="no catheter stack")
    r.add_argument("--duration", type=float, default=3.0, help="DSA run length, s")
    r.add_argument("--fps", type=float, default=3.0, help="DSA frame rate, frames/s")
    r.add_argument("--pulses", type=int, default=4, help="fluoroscopy pulses (recursive filter warm-up)")
    r.add_argument("--seed", type=_seed, default=0, help="noise seed")
    r.set_defaults(func=_cmd_render)

    sg = sub.add_parser("segment", help="segment vessels from DICOM (CTA, MRA, 3-D RA) into a model file",
                        description="DICOM import with de-identification, automatic 3-D vessel segmentation, "
                        "centerline tree.")
    sg.add_argument("inputs", nargs="+", help="DICOM files and/or folders")
    sg.add_argument("--out", required=True, help="output MODEL.vessels.json")
    sg.add_argument("--series", help="SeriesInstanceUID to use when the input holds several series")
    sg.add_argument("--seed-point", help="x,y,z (LPS mm): root the tree at the vessel end nearest this point")
    sg.add_argument("--preview", help="PNG: maximum-intensity projections with the centerlines")
    sg.add_argument("--quiet", action="store_true", help="no progress bar")
    sg.set_defaults(func=_cmd_segment)

    va = sub.add_parser("validate", help="check the models against physics (one JSON line per check)",
                        description="Physics (devices) or flow (blood, contrast, thrombectomy) checks with their "
                                    "error and tolerance; exit 1 if any fails.")
    va.add_argument("what", choices=["physics", "flow"], help="what to validate")
    va.add_argument("--fuzz-seconds", type=float, default=20.0,
                    help="simulated seconds of random hub inputs (600 = the full 10-minute fuzz)")
    va.set_defaults(func=_cmd_validate)

    nv = sub.add_parser("navigate", help="a scripted operator drives the rod physics to a vessel (hub inputs and "
                        "fluoroscopy only)",
                        description="From the right femoral sheath through the atlas with the device physics: the "
                        "operator sees the roadmap and the projected tips, turns and pushes hubs. Writes "
                        "result.json (reached, simulated time, tip path length, maximum wall force); exit 0 when "
                        "the target is reached, 1 when not.")
    nv.add_argument("--arch", choices=["I", "II", "III"], default="I", help="aortic arch type of the atlas")
    nv.add_argument("--target", default="L_MCA_M1", help="target vessel label")
    nv.add_argument("--seed", type=_seed, default=0, help="operator seed (starting hub angles, turns when starting again)")
    nv.add_argument("--max-seconds", type=float, default=600.0, help="simulated time limit, s (default: ten minutes)")
    nv.add_argument("--out", required=True, help="output folder (result.json)")
    nv.set_defaults(func=_cmd_navigate)

    cs = sub.add_parser("case", help="validate, list and author case files",
                        description="Case files (TOML): validate them, list the shipped library, or make "
                        "one from a DICOM angiography.")
    csub = cs.add_subparsers(dest="case_cmd", metavar="CASE_COMMAND")
    cv = csub.add_parser("validate", help="check case files (and their anatomy)")
    cv.add_argument("paths", nargs="+", help="case files")
    cl = csub.add_parser("list", help="the shipped cases (the default marked)")
    cl.add_argument("--json", action="store_true", help="one JSON object per case")
    cn = csub.add_parser("new", help="a case from a DICOM CTA/MRA/3D-RA: segment, label, write")
    cn.add_argument("--from-dicom", dest="inputs", nargs="+", required=True, help="DICOM files or folders")
    cn.add_argument("--occlusion", required=True, help="branch label to occlude (e.g. L_MCA_M1)")
    cn.add_argument("--access", default="model_root", help="access: model_root (a head model starts at its root)")
    cn.add_argument("--out", required=True, help="the case file to write (cases/NAME.toml)")
    cn.add_argument("--quiet", action="store_true", help="no progress bar")
    cs.set_defaults(func=_cmd_case)

    rn = sub.add_parser("run", help="play a case headless with an autopilot; write result.json and logs",
                        description="Play a case without a window. Writes result.json, controls.json, "
                        "events.jsonl and, with --cine, the DSA runs as DICOM and a GIF.")
    rn.add_argument("case", help="case file or shipped case id")
    rn.add_argument("--headless", action="store_true", help="no window (required for now)")
    rn.add_argument("--autopilot", choices=["expert", "novice"], help="who plays")
    rn.add_argument("--seed", type=_seed, default=0, help="session seed (default 0)")
    rn.add_argument("--out", required=True, help="output folder")
    rn.add_argument("--cine", action="store_true", help="also write the runs (DICOM XA) and a GIF")
    rn.add_argument("--matrix", type=int, default=256, help="image matrix for rendering (default 256)")
    rn.add_argument("--no-render", action="store_true", help="do not render the images (faster)")
    rn.add_argument("--trainee", help="record the session for this trainee (like a played one)")
    rn.add_argument("--db", help="records database (default: IRATRAINER_DB or the user data folder)")
    rn.set_defaults(func=_cmd_run)

    pl = sub.add_parser("play", help="the trainer window (menu, briefing, procedure, debrief)",
                        description="Play a case in the trainer window. Headless: --headless --script FILE "
                        "--screenshot-dir DIR drives the real app with recorded inputs.")
    pl.add_argument("case", nargs="?", help="case file or shipped case id (default: the case menu)")
    pl.add_argument("--trainee", help="record the sessions for this trainee")
    _window_arguments(pl)
    pl.add_argument("--seed", type=_seed, default=0, help="session seed")
    pl.add_argument("--resume", metavar="SESSION_ID", help="continue a session a crash interrupted")
    pl.add_argument("--exam", action="store_true", help="exam mode: no 3-D overview, recorded as an exam")
    pl.set_defaults(func=_cmd_play)

    rpl = sub.add_parser("replay", help="replay a recorded session, with a timeline to scrub",
                         description="Replay a session from its recorded control log (bit-identical to the session).")
    rpl.add_argument("session", help="session id (or its first characters)")
    _window_arguments(rpl)
    rpl.set_defaults(func=_cmd_replay)

    tr = sub.add_parser("trainee", help="add and list trainees in the records database")
    tsub = tr.add_subparsers(dest="trainee_cmd", metavar="TRAINEE_COMMAND")
    ta = tsub.add_parser("add", help="add a trainee")
    ta.add_argument("name")
    ta.add_argument("--cohort", help="cohort (e.g. DES 2026)")
    ta.add_argument("--des-year", type=int, help="DES year (1-5)")
    ta.add_argument("--email")
    ta.add_argument("--db", help="records database")
    tl = tsub.add_parser("list", help="list trainees")
    tl.add_argument("--db", help="records database")
    tr.set_defaults(func=_cmd_trainee, db=None)

    pg = sub.add_parser("progress", help="a trainee's curriculum: levels, passes, best scores")
    pg.add_argument("name")
    pg.add_argument("--db", help="records database")
    pg.set_defaults(func=_cmd_progress)

    rp = sub.add_parser("report", help="HTML report of a trainee (learning curves) or a cohort (who is behind)")
    rp.add_argument("--trainee")
    rp.add_argument("--cohort")
    rp.add_argument("--out", required=True, help="FILE.html")
    rp.add_argument("--db", help="records database")
    rp.set_defaults(func=_cmd_report)

    ex = sub.add_parser("export", help="sessions and metrics as CSV, or xAPI 1.0.3 statements (JSON)")
    ex.add_argument("--format", choices=["csv", "xapi"], required=True)
    ex.add_argument("--trainee")
    ex.add_argument("--out", default="-", help="file (default: standard output)")
    ex.add_argument("--db", help="records database")
    ex.set_defaults(func=_cmd_export)

    sy = sub.add_parser("sync", help="send the statements not yet sent to a Learning Record Store (xAPI)")
    sy.add_argument("--lrs", required=True, help="LRS base URL (e.g. http://127.0.0.1:8100)")
    sy.add_argument("--user", required=True)
    sy.add_argument("--password", required=True)
    sy.add_argument("--db", help="records database")
    sy.set_defaults(func=_cmd_sync)

    b = sub.add_parser("bench", help="run benchmarks; one JSON object per line",
                       description="Benchmarks (medians of repeated runs). Groups: anatomy, render, physics, segment.")
    b.add_argument("groups", nargs="*", help="groups to run (default: all)")
    b.add_argument("--repeats", type=int, default=None, help="timed repeats per figure")
    b.set_defaults(func=_cmd_bench)

    v = sub.add_parser("preview", help="write (and show, if a display exists) the atlas preview",
                       description="The main view until the trainer window lands.")
    v.add_argument("--arch", choices=["I", "II", "III"], default="I")
    v.add_argument("--out", help="PNG path (default: in the user data folder)")
    v.add_argument("--no-window", action="store_true", help="only write the PNG")
    v.set_defaults(func=_cmd_preview)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 2 user error)."""
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.command is None:
        args.func = _cmd_main
    try:
        return int(args.func(args))
    except IratrainerError as exc:
        print(f"iratrainer: error: {exc}", file=sys.stderr)
        return 2
    except sqlite3.Error as exc:  # a locked or damaged records database met after opening it
        db = getattr(args, "db", None) or os.environ.get("IRATRAINER_DB") or "the records database"
        print(f"iratrainer: error: {db}: {exc} (nothing was overwritten; retry when the other process is done)",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("iratrainer: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader stopped reading (``iratrainer bench | head -1``): stop quietly, and point
        # stdout at nothing so that the interpreter's last flush does not fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a program killed by the closed pipe


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
