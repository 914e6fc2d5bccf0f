"""Headless runs: a case played by an autopilot, with its images, result and logs on disk.

``iratrainer run CASE --headless --autopilot expert --out DIR [--cine]`` writes

* ``result.json``: the metrics of :meth:`Procedure.metrics`, the outcome, wall time and
  the real-time factor;
* ``controls.json``: the control log (replay gives the same event log, bit for bit);
* ``events.jsonl``: the event log, one event per line;
* with ``--cine``: every DSA run of each plane as a DICOM XA multi-frame file
  (``cine/run03_frontal.dcm``) and an animated GIF of the frontal and lateral images
  (fluoroscopy and DSA) a person can open (``cine/procedure.gif``).

Images are rendered with the NumPy reference renderer at every fluoroscopy pulse and
acquisition frame (the images the autopilot "looks at"); their noise comes from a
generator of their own, so rendering never changes the simulation.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from iratrainer.errors import OutputError
from iratrainer.scenario.autopilot import Autopilot
from iratrainer.scenario.case import Case
from iratrainer.scenario.procedure import Controls, Procedure, save_control_log

__all__ = ["HeadlessRun", "run_headless"]


class HeadlessRun:
    """An autopilot playing a case, optionally rendering what it sees.

    Args:
        case: the case.
        autopilot: ``"expert"`` or ``"novice"``.
        seed: session seed.
        render: render the fluoroscopy pulses and acquisition frames.
        matrix: image matrix for rendering (256 keeps CI fast).
        keep_frames: keep frames for the cine output.
    """

    def __init__(self, case: Case, autopilot: str = "expert", seed: int = 0, render: bool = True,
                 matrix: int = 256, keep_frames: bool = False) -> None:
        self.proc = Procedure(case, seed)
        self.pilot = Autopilot(self.proc, autopilot, seed)
        self.render = render
        self.matrix = matrix
        self.keep_frames = keep_frames
        self.control_log: list[tuple[int, Controls]] = []
        self._prev = Controls()
        self.frames: list[Any] = []  # (run index or -1 for fluoro, Frame)
        self.images_rendered = 0
        self.render_s = 0.0
        self._chains: dict[str, Any] = {}
        self._run_index = 0
        if render:
            from iratrainer.imaging.chain import PlaneChain
            from iratrainer.imaging.dose import DoseMeter

            rng = np.random.default_rng([99, seed])  # the images' own noise
            for name, plane in self.proc.planes.items():
                self._chains[name] = PlaneChain(replace(plane, matrix=matrix), DoseMeter(), rng)

    def step(self) -> None:
        """One step: the autopilot decides, the procedure moves, the images are made."""
        c = self.pilot.controls()
        base = replace(c, action="")
        if c.action or base != self._prev:
            self.control_log.append((self.proc.step_index, c))
            self._prev = base
        self.proc.step(c)
        if self.render and self.proc.exposures_this_step:
            self._images()

    def _images(self) -> None:
        t0 = time.perf_counter()
        scene = None
        for name, kind in self.proc.exposures_this_step:
            scene = scene or self.proc.snapshot()
            ch = self._chains[name]
            ch.set_plane(replace(self.proc.planes[name], matrix=self.matrix))
            if kind == "fluoro":
                fr = ch.fluoro_pulse(scene)
            else:
                first = kind.endswith("_mask")
                if first and name == "frontal":
                    self._run_index += 1
                fr = ch.dsa_frame(scene, mask=first)
                if kind.startswith("roadmap") and not first:
                    ch.store_roadmap()
            self.images_rendered += 1
            if self.keep_frames:
                self.frames.append((self._run_index if kind != "fluoro" else -1, fr))
        self.render_s += time.perf_counter() - t0

    def run(self, max_steps: int = 2_000_000) -> Procedure:
        """Play to the end."""
        while not self.proc.terminated and self.proc.step_index < max_steps:
            self.step()
        return self.proc


def run_headless(case: Case, out_dir: str | Path, autopilot: str = "expert", seed: int = 0, cine: bool = False,
                 matrix: int = 256, render: bool = True, store: Any = None, trainee: str | None = None
                 ) -> dict[str, Any]:
    """Play ``case`` with an autopilot and write the outputs to ``out_dir`` (see the module docstring).

    With a records ``store`` and a ``trainee``, the session is recorded as it goes, like a
    played one (events and controls in batches from a writer thread), then scored.
    """
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"{out}: cannot write there ({exc.strerror or exc})") from None
    from iratrainer import __version__
    from iratrainer.scoring.rubric import score_session

    t0 = time.perf_counter()
    hr = HeadlessRun(case, autopilot, seed, render=render or cine, matrix=matrix, keep_frames=cine)
    rec = None
    sid = None
    if store is not None and trainee:
        from iratrainer.records.recorder import SessionRecorder

        sid = store.start_session(store.trainee_id(trainee), case, seed, __version__, autopilot)
        rec = SessionRecorder(store, sid)
    while not hr.proc.terminated:
        hr.step()
        if rec is not None:
            rec.maybe_push(hr.proc, hr.control_log)
    proc = hr.proc
    wall = time.perf_counter() - t0
    result = proc.metrics()
    score = score_session(result, proc.event_log(), case.level, case.goal.kind, case.scoring)
    result["score"] = score.as_dict()
    if rec is not None and store is not None and sid is not None:
        rec.maybe_push(proc, hr.control_log, force=True)
        rec.finish()
        store.finish_session(sid, proc.metrics(), score.as_dict(), "completed" if proc.outcome != "aborted"
                             else "aborted", wall)
        result["session_id"] = sid
        result["records"] = {"db": str(store.path), "longest_write_s": round(rec.longest_write_s, 5),
                             "longest_push_s": round(rec.longest_push_s, 6), "batches": rec.batches}
    result.update({"autopilot": autopilot, "wall_s": round(wall, 3),
                   "realtime_factor": round(proc.time_s / max(wall, 1e-9), 2),
                   "images_rendered": hr.images_rendered, "render_s": round(hr.render_s, 3),
                   "matrix": matrix if hr.render else None})
    try:
        (out / "result.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
        save_control_log(out / "controls.json", case, seed, hr.control_log, proc.step_index)
        with open(out / "events.jsonl", "w", encoding="utf-8") as f:
            for e in proc.event_log():
                f.write(json.dumps(e) + "\n")
        if cine:
            _write_cine(out / "cine", hr)
    except OSError as exc:
        raise OutputError(f"{out}: writing the run failed ({exc.strerror or exc})") from None
    return result


def _write_cine(folder: Path, hr: HeadlessRun) -> None:
    from PIL import Image

    from iratrainer.imaging.dicom_export import write_xa_run

    folder.mkdir(parents=True, exist_ok=True)
    runs: dict[tuple[int, str], list[Any]] = {}
    for k, fr in hr.frames:
        if k >= 0:
            runs.setdefault((k, fr.plane), []).append(fr)
    for (k, plane), frames in sorted(runs.items()):
        p = replace(hr.proc.planes[plane], matrix=hr.matrix)
        write_xa_run(folder / f"run{k:02d}_{plane}.dcm", frames, p,
                     series_description=f"iratrainer {hr.proc.case.id} run {k} {plane}")
    # a GIF: frontal | lateral, every acquisition frame and every 4th fluoroscopy pulse
    pairs: list[np.ndarray] = []
    last: dict[str, np.ndarray] = {}
    n_fluoro = 0
    for k, fr in hr.frames:
        last[fr.plane] = np.asarray(fr.display)
        if fr.plane != "lateral":
            continue
        if k < 0:
            n_fluoro += 1
            if n_fluoro % 4:
                continue
        if "frontal" in last:
            pairs.append(np.hstack([last["frontal"], last["lateral"]]))
    if not pairs:
        return
    pairs = pairs[:: max(1, len(pairs) // 600)]  # at most ~600 frames
    imgs = [Image.fromarray((np.clip(p, 0, 1) * 255).astype(np.uint8)) for p in pairs]
    imgs[0].save(folder / "procedure.gif", save_all=True, append_images=imgs[1:], duration=120, loop=0)
