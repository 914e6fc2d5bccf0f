"""The deterministic core: one procedure from groin puncture to the final angiogram.

:class:`Procedure` is built from a :class:`~iratrainer.scenario.case.Case` and a seed. Each
``step(controls)`` advances a fixed ``dt`` (1/30 s): the hand on one device (advance,
torque), the fluoroscopy pedal, one-shot actions (insert or remove a device, DSA run,
roadmap, injection, balloon, aspiration, C-arm angles, end). It moves the stack on its
rail (:mod:`iratrainer.scenario.track`), updates the circulation (flow, contrast, clot),
decides thrombectomy passes from what the devices did, tallies dose and contrast, logs
events in simulation time and recognises the procedure's phases.

Same case, seed and control log give the same event log, bit for bit: all randomness
comes from one ``numpy.random.Generator`` seeded from (case seed, session seed), and
nothing depends on wall-clock time or on rendering.

The renderers read :meth:`Procedure.snapshot` (a frozen :class:`~iratrainer.imaging.scene.Scene`)
and the exposures listed in ``exposures_this_step``; they never change the procedure.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from iratrainer.anatomy.tree import VesselTree
from iratrainer.errors import IratrainerError
from iratrainer.flow.circulation import Circulation, InjectionError
from iratrainer.flow.network import FlowNetwork
from iratrainer.flow.thrombectomy import COMPOSITION, TICI_GRADES, PassTechnique, pass_outcome
from iratrainer.imaging.dose import DoseMeter
from iratrainer.imaging.geometry import FOV_CM, CArmPlane, frontal, lateral
from iratrainer.imaging.phantom import default_phantom
from iratrainer.imaging.scene import DeviceShape, Scene
from iratrainer.imaging.xray import TECHNIQUES
from iratrainer.physics.catalogue import DeviceSpec, default_catalogue
from iratrainer.scenario.case import Case
from iratrainer.scenario.track import STEP_MM, RailStack, TrackError

__all__ = ["Controls", "Event", "Procedure", "PHASES", "PULSE_RATES", "ProcedureError", "save_control_log",
           "load_control_log"]

DT_S = 1.0 / 30.0
MAX_ADVANCE_MM_S = 60.0
MAX_ROTATE_DEG_S = 720.0
FLUORO_PPS = 7.5
PULSE_RATES = (3.75, 7.5, 15.0, 30.0)  # pulses/s a fluoroscopy pedal can run at (REFERENCE.md)
DSA_FPS = 3.0
#: Table positions (isocentre, mm, and the automatic field of view, cm): the head (the circle
#: of Willis near the isocentre) and the neck (carotid bifurcations and the siphons' origin).
TABLE_VIEWS: dict[str, tuple[tuple[float, float, float], float]] = {
    "head": ((0.0, 5.0, 215.0), 22.0),
    "neck": ((0.0, 0.0, 60.0), 30.0),
}
PHASES = ("access", "arch_navigation", "cca_access_roadmap", "guide_placement", "crossing", "deployment",
          "retrieval", "control_dsa", "full_angiogram", "device_removal")
WALL_FORCE_THRESHOLDS_N = (1.0, 2.0)
DEVICE_FLOW_UPDATE_S = 0.25


class ProcedureError(IratrainerError):
    """A control log that does not fit the case, or a broken log file."""


@dataclass(frozen=True)
class Controls:
    """What the operator does during one step.

    Attributes:
        device: catalogue name of the device in hand ("" for none).
        advance_mm_s: push (> 0) or pull (< 0) at the hub, mm/s (clamped to ±60).
        rotate_deg_s: torque at the hub, deg/s (clamped to ±720).
        fluoro: fluoroscopy pedal down.
        biplane: fluoroscopy on both planes (else frontal only).
        action: a one-shot action, ``verb[:arg[:arg]]``: ``insert:NAME``, ``remove:NAME``,
            ``dsa[:SECONDS]``, ``roadmap``, ``inject:ML:ML_S`` (hand injection),
            ``balloon:on|off``, ``aspiration:on|off``, ``carm:PLANE:LAO:CRAN``,
            ``zoom:PLANE:FOV_CM|auto`` (detector field of view: 30, 22, 16, 11 cm, or back to the
            automatic field that follows the tip), ``collimate:PLANE:FRACTION`` (iris radius as
            a fraction of the half field, 0.2-1),
            ``pulse:PPS`` (fluoroscopy pulse rate, one of 3.75, 7.5, 15, 30; the dose per pulse
            does not change, so the dose rate does), ``table:head|neck|auto`` (move the table so
            that the field frames the head or the neck, e.g. for an intracranial or a cervical run;
            ``auto``: the table follows the leading tip again), ``end``.
    """

    device: str = ""
    advance_mm_s: float = 0.0
    rotate_deg_s: float = 0.0
    fluoro: bool = False
    biplane: bool = True
    action: str = ""


@dataclass(frozen=True)
class Event:
    """Something that happened, at simulation time ``t_s``."""

    t_s: float
    kind: str
    data: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"t_s": round(self.t_s, 6), "kind": self.kind, **self.data}


@dataclass
class _Deployment:
    t_deploy: float
    arc_mm: float  # stent tip on the rail at deployment
    coverage: float
    clot_index: int


_NETWORK_CACHE: dict[tuple[Any, ...], tuple[VesselTree, FlowNetwork]] = {}


def _tree_and_network(case: Case) -> tuple[VesselTree, FlowNetwork]:
    key = (str(case.path.resolve()), case.content_hash, case.collateral_grade)
    hit = _NETWORK_CACHE.get(key)
    if hit is None:
        tree = case.load_tree()
        hit = (tree, FlowNetwork(tree, collateral_grade=case.collateral_grade))
        if len(_NETWORK_CACHE) > 8:
            _NETWORK_CACHE.clear()
        _NETWORK_CACHE[key] = hit
    return hit


_BACKGROUND_CACHE: dict[tuple[Any, ...], Any] = {}


def _background(case: Case, tree: VesselTree) -> Any:
    """The case's CT background, loaded once per case file version."""
    if not case.anatomy.get("background_ct"):
        return None
    key = (str(case.path.resolve()), case.content_hash)
    if key not in _BACKGROUND_CACHE:
        _BACKGROUND_CACHE.clear()
        _BACKGROUND_CACHE[key] = case.load_background(tree)
    return _BACKGROUND_CACHE[key]


class Procedure:
    """One procedure on one case (see the module docstring).

    Args:
        case: the case.
        seed: the session seed (outcomes, emboli, complications).
    """

    def __init__(self, case: Case, seed: int = 0) -> None:
        self.case = case
        self.seed = int(seed)
        self.tree, net = _tree_and_network(case)
        self.phantom = _background(case, self.tree) or default_phantom()
        self.rng = np.random.default_rng([case.seed, self.seed])
        self.catalogue = default_catalogue()
        self.circ = Circulation(net, list(case.occlusions), self.rng)
        self.access = case.access_label(self.tree)
        self.stack = RailStack(self.tree, self.access, antegrade=case.access == "model_root")
        self.stack.clot_ranges = [(c.spec.branch, c.start_mm, c.start_mm + c.length_mm) for c in self.circ.clots]
        self.dose = DoseMeter()
        cm = case.carm
        self.planes: dict[str, CArmPlane] = {
            "frontal": frontal(lao_deg=cm.get("frontal_lao_deg", 0.0), cran_deg=cm.get("frontal_cran_deg", 0.0),
                               fov_cm=cm.get("fov_cm", 22.0), matrix=256),
            "lateral": lateral(lao_deg=cm.get("lateral_lao_deg", 90.0), cran_deg=cm.get("lateral_cran_deg", 0.0),
                               fov_cm=cm.get("fov_cm", 22.0), matrix=256),
        }
        self.dt = DT_S
        self.step_index = 0
        self.time_s = 0.0
        self.events: list[Event] = []
        self.phases: dict[str, float] = {}
        self.contrast_ml = 0.0
        self.dsa_runs = 0
        self.roadmaps = 0
        self.roadmap_planes: set[str] = set()
        self.passes: list[dict[str, Any]] = []
        self.tici = "0" if case.occlusions else "3"
        self.tici_shown = ""  # the grade of the last control DSA
        self.dsa_defects: list[int] = list(range(len(case.occlusions)))  # clots the last DSA showed
        self.balloon = False
        self.aspiration = False
        self.outcome: str | None = None  # success | complication | ended | time_limit | dose_limit
        self.wall_force_s = [0.0 for _ in WALL_FORCE_THRESHOLDS_N]
        self.wrong_vessel_entries = 0
        self.exposures_this_step: list[tuple[str, str]] = []
        self._dsa_until = -1.0
        self._dsa_next = 0.0
        self._dsa_kind = ""
        self._dsa_frames = 0
        self._pulse_next = 0.0
        self.pulse_pps = FLUORO_PPS
        self.fov_user: dict[str, float] = {}  # planes the operator zoomed (else the field follows the tip)
        self.table_user = ""  # "head" or "neck" when the operator placed the table (else it follows the tip)
        self._last_visited = len(self.stack.visited)
        self._on_path = self._route_labels()
        self._goal_labels = set(self.tree.subtree(case.goal.target))
        self._deploy: _Deployment | None = None
        self._clot_range_cache: dict[int, tuple[Any, Any]] = {}
        self._stent_was_sheathed = False
        self._asp_contact_since: float | None = None
        self._asp_contact_arc = 0.0
        self._goal_since: float | None = None
        self._last_device_flow = -1.0
        self._pass_pending_dsa = False
        self._control_since_pass = False
        self.log(0.0, "start", case=case.id, seed=self.seed, case_hash=case.content_hash)

    # ------------------------------------------------------------------ helpers
    def log(self, t: float, kind: str, **data: Any) -> None:
        """Append an event."""
        self.events.append(Event(round(t, 6), kind, data))

    def _route_labels(self) -> set[str]:
        t = self.tree
        target = self.case.goal.target
        acc = self.case.access_label(t)
        labels = set(t.path(acc, target))
        labels |= set(t.subtree(target))
        for c in self.case.occlusions:
            labels |= set(t.path(acc, c.branch)) | set(t.subtree(c.branch))
        return labels

    def spec(self, name: str) -> DeviceSpec:
        """Catalogue entry of ``name`` (must be on the case's table)."""
        if name not in self.case.devices:
            raise TrackError(f"{name} is not among this case's devices ({', '.join(self.case.devices)})")
        return self.catalogue[name]

    def device(self, name: str) -> Any:
        """The device ``name`` in the patient, or None."""
        for d in self.stack.devices:
            if d.name == name:
                return d
        return None

    def _device_of_kind(self, *kinds: str) -> Any:
        for d in self.stack.devices:
            if d.spec.kind in kinds:
                return d
        return None

    def tip_mm(self, name: str) -> np.ndarray:
        """Tip position of ``name``, LPS mm."""
        return self.stack.point_at(self.stack.devices[self.stack.index(name)].inserted_mm)

    def _injecting_catheter(self) -> Any:
        """The catheter contrast goes through: the innermost catheter whose tip is furthest in."""
        min_in = 5.0 if self.case.access == "model_root" else 50.0  # beyond the sheath
        cands = [d for d in self.stack.devices if d.spec.has_lumen and d.inserted_mm > min_in]
        if not cands:
            return None
        return max(cands, key=lambda d: (d.inserted_mm, d.spec.inner_diameter_mm))

    @property
    def terminated(self) -> bool:
        """The procedure has ended (any outcome)."""
        return self.outcome is not None

    # ------------------------------------------------------------------ step
    def step(self, controls: Controls) -> None:
        """Advance one ``dt`` under ``controls``."""
        if self.outcome is not None:
            return
        self.exposures_this_step = []
        if controls.action:
            self._action(controls.action)
        if self.outcome is not None:
            return
        if controls.device and (controls.advance_mm_s or controls.rotate_deg_s):
            self._hand(controls)
        self._thrombectomy()
        self._imaging(controls)
        self.circ.advance(self.dt)
        self.step_index += 1
        self.time_s = self.step_index * self.dt
        self._phases()
        self._limits()

    def _hand(self, c: Controls) -> None:
        dev = self.device(c.device)
        if dev is None:
            self.log(self.time_s, "refused", action="move", device=c.device, reason="not in the patient")
            return
        adv = float(np.clip(c.advance_mm_s, -MAX_ADVANCE_MM_S, MAX_ADVANCE_MM_S)) * self.dt
        rot = float(np.clip(c.rotate_deg_s, -MAX_ROTATE_DEG_S, MAX_ROTATE_DEG_S)) * self.dt
        clot = self._clot_at_tip(dev)
        if clot is not None and adv > 0 and dev.is_wire:  # crossing: the clot resists
            adv *= 1.0 - COMPOSITION[clot.spec.composition].crossing_force_n / 1.5
        self.stack.move(c.device, adv, rot)
        lead = max(self.stack.devices, key=lambda d: d.inserted_mm)
        for k, thr in enumerate(WALL_FORCE_THRESHOLDS_N):
            if dev.push_n > thr:
                self.wall_force_s[k] += self.dt
        if len(self.stack.visited) > self._last_visited:
            for lab in self.stack.visited[self._last_visited:]:
                wrong = lab not in self._on_path and not (lab == "AO_ASC" and lead.reverse_curve)
                self.log(self.time_s, "enter", branch=lab, device=lead.name, wrong_vessel=wrong)
                if wrong:
                    self.wrong_vessel_entries += 1
            self._last_visited = len(self.stack.visited)
        self._safety(dev)
        if self.time_s - self._last_device_flow >= DEVICE_FLOW_UPDATE_S:
            self._update_device_flow()

    def _update_device_flow(self) -> None:
        shapes = []
        for d in self.stack.devices:
            if d.spec.has_lumen and d.inserted_mm > 0:
                pts = self.stack.shape(d.name)[-200:]  # the distal 100 mm is where it matters
                shapes.append((pts, d.spec.outer_radius_mm))
        self.circ.set_devices(shapes)
        self._last_device_flow = self.time_s

    def _clot_at_tip(self, dev: Any) -> Any:
        lab, s, _ = self.stack.branch_arc_at(dev.inserted_mm)
        for c in self.circ.clots:
            if c.present and c.spec.branch == lab and c.start_mm - 0.5 <= s <= c.start_mm + c.length_mm:
                return c
        return None

    def _safety(self, dev: Any) -> None:
        """Complications from pushing against what does not yield (seeded)."""
        if dev.push_n <= 1.0:
            return
        lab, s, _ = self.stack.branch_arc_at(dev.inserted_mm)
        r = float(self.tree.radius_at(lab, s))
        u = float(self.rng.random())
        if dev.is_wire and r < 0.8 and u < 0.5 * self.dt * dev.push_n:
            point = self.stack.point_at(dev.inserted_mm)
            self.circ.perforate(point)
            self.log(self.time_s, "complication", type="perforation", branch=lab, device=dev.name,
                     force_n=round(dev.push_n, 2))
            self.outcome = "complication"
        elif not dev.is_wire and u < 0.05 * self.dt * dev.push_n:
            self.circ.dissect(self.stack.point_at(dev.inserted_mm))
            self.log(self.time_s, "complication", type="dissection", branch=lab, device=dev.name,
                     force_n=round(dev.push_n, 2))

    # ------------------------------------------------------------------ actions
    def _action(self, action: str) -> None:
        verb, *args = action.split(":")
        try:
            if verb == "insert":
                spec = self.spec(args[0])
                self.stack.insert(spec)
                if "access" not in self.phases:
                    self.phases["access"] = self.time_s
                    self.log(self.time_s, "phase", phase="access")
                self.log(self.time_s, "insert", device=spec.name)
            elif verb == "remove":
                self.stack.remove(args[0])
                self.log(self.time_s, "remove", device=args[0])
                self._update_device_flow()
            elif verb in ("dsa", "roadmap"):
                self._start_run(verb, float(args[0]) if args else (8.0 if verb == "dsa" else 2.0))
            elif verb == "inject":
                self._inject(float(args[0]), float(args[1]), "hand")
            elif verb == "balloon":
                self._balloon(args[0] == "on")
            elif verb == "aspiration":
                on = args[0] == "on"
                dac = self._device_of_kind("catheter")
                if on and dac is None:
                    raise TrackError("no aspiration catheter in the patient")
                self.aspiration = on
                self.log(self.time_s, "aspiration", on=on)
            elif verb == "carm":
                plane, lao, cran = args[0], float(args[1]), float(args[2])
                if plane not in self.planes:
                    raise TrackError(f"unknown plane {plane!r}")
                p, notes = replace(self.planes[plane], lao_deg=lao, cran_deg=cran).clamped()
                self.planes[plane] = p
                self.roadmap_planes.discard(plane)
                self.log(self.time_s, "carm", plane=plane, lao_deg=p.lao_deg, cran_deg=p.cran_deg,
                         clamped=[str(n) for n in notes])
            elif verb in ("zoom", "collimate"):
                plane = args[0]
                if plane not in self.planes:
                    raise TrackError(f"unknown plane {plane!r}")
                p = self.planes[plane]
                if verb == "zoom":
                    if args[1] == "auto":
                        self.fov_user.pop(plane, None)
                        self._follow_tip()
                        p = self.planes[plane]
                    else:
                        fov = float(args[1])
                        if fov not in FOV_CM:
                            raise TrackError(f"field of view {args[1]} cm not one of "
                                             f"{', '.join(f'{f:g}' for f in FOV_CM)} or auto")
                        self.fov_user[plane] = fov
                        p = replace(p, fov_cm=fov)
                else:
                    p = replace(p, collimation=float(args[1]))
                p, notes = p.clamped()
                self.planes[plane] = p
                self.roadmap_planes.discard(plane)
                self.log(self.time_s, verb, plane=plane, fov_cm=p.fov_cm, collimation=p.collimation,
                         clamped=[str(n) for n in notes])
            elif verb == "table":
                if args[0] not in (*TABLE_VIEWS, "auto"):
                    raise TrackError(f"table position {args[0]!r} not one of {', '.join(TABLE_VIEWS)} or auto")
                self.table_user = "" if args[0] == "auto" else args[0]
                self._follow_tip()
                self.log(self.time_s, "table", view=args[0],
                         isocentre_mm=[round(float(x), 1) for x in self.planes["frontal"].isocentre_mm])
            elif verb == "pulse":
                pps = float(args[0])
                if pps not in PULSE_RATES:
                    raise TrackError(f"pulse rate {args[0]} not one of {', '.join(f'{r:g}' for r in PULSE_RATES)}")
                self.pulse_pps = pps
                self._pulse_next = min(self._pulse_next, self.time_s + 1.0 / pps)
                self.log(self.time_s, "pulse_rate", pps=pps)
            elif verb == "end":
                self._end()
            else:
                raise TrackError(f"unknown action {verb!r}")
        except (TrackError, InjectionError, IndexError, ValueError) as exc:
            self.log(self.time_s, "refused", action=action, reason=str(exc))

    def _balloon(self, on: bool) -> None:
        guide = self._device_of_kind("guide")
        if on and guide is None:
            raise TrackError("no balloon guide catheter in the patient")
        self.balloon = on
        self.circ.set_balloon(self.tip_mm(guide.name) if on else None)
        self.log(self.time_s, "balloon", on=on)

    def _inject(self, volume_ml: float, rate_ml_s: float, syringe: str) -> None:
        cath = self._injecting_catheter()
        if cath is None:
            raise InjectionError("no catheter in place to inject through")
        lumen_free = not any(d.inserted_mm > cath.inserted_mm - 30.0 for d in self.stack.devices
                             if self.stack.index(d.name) > self.stack.index(cath.name) and not d.spec.has_lumen
                             and d.spec.outer_diameter_mm > 0.5 * cath.spec.inner_diameter_mm)
        self.circ.inject(self.tip_mm(cath.name), volume_ml, rate_ml_s, syringe, lumen=lumen_free)
        self.contrast_ml += volume_ml
        self.log(self.time_s, "inject", catheter=cath.name, volume_ml=volume_ml, rate_ml_s=rate_ml_s,
                 branch=self.stack.label_at(cath.inserted_mm))

    def _start_run(self, kind: str, duration_s: float) -> None:
        if self._dsa_until > self.time_s:
            raise TrackError("a run is already in progress")
        cath = self._injecting_catheter()
        if cath is None:
            raise InjectionError("no catheter in place to inject through")
        lab = self.stack.label_at(cath.inserted_mm)
        big = lab.startswith("AO")
        micro = cath.spec.kind == "microcatheter"
        if micro:  # a gentle hand injection through the microcatheter (the distal bed)
            vol, rate = (2.0, 1.0) if kind == "dsa" else (1.0, 1.0)
        else:
            vol, rate = ((20.0, 15.0) if big else (7.0, 5.0)) if kind == "dsa" else (4.0, 3.0)
        self._inject(vol, rate, "hand" if micro else "power")
        self._dsa_until = self.time_s + duration_s
        self._dsa_next = self.time_s
        self._dsa_kind = kind
        self._dsa_frames = 0
        if kind == "dsa":
            self.dsa_runs += 1
        else:
            self.roadmaps += 1
        self.log(self.time_s, kind, catheter=cath.name, branch=lab, duration_s=duration_s)
        if kind == "dsa" and self.circ.clots:
            self._dsa_reading()

    def _dsa_reading(self) -> None:
        """What a control DSA shows: the reperfusion grade (graded on the run) and the filling defects."""
        frac, grade = self.circ.reperfusion()
        self.tici = grade
        self.dsa_defects = [k for k, c in enumerate(self.circ.clots) if c.present]
        if self.passes and self._pass_pending_dsa:
            self.tici_shown = grade
            self._pass_pending_dsa = False
            self._control_since_pass = True
            self.log(self.time_s, "control_dsa", tici=grade, reperfused_fraction=round(frac, 4), passes=len(self.passes))
            if "control_dsa" not in self.phases:
                self._phase("control_dsa")
        elif self._control_since_pass and TICI_GRADES.index(grade) >= TICI_GRADES.index(self.case.goal.tici_success):
            if "full_angiogram" not in self.phases:
                self._phase("full_angiogram")

    def _end(self) -> None:
        self.log(self.time_s, "end", tici=self.tici, passes=len(self.passes))
        self.outcome = "ended"

    # ------------------------------------------------------------------ thrombectomy
    def _thrombectomy(self) -> None:
        stent = self._device_of_kind("stent_retriever")
        mc = self._device_of_kind("microcatheter")
        if stent is not None and mc is not None:
            w = stent.spec.extra.get("stent", {})
            wl = float(w.get("working_length_mm", 40.0))
            off = float(w.get("from_tip_mm", 2.0))
            prox = stent.inserted_mm - off - wl
            if mc.inserted_mm >= stent.inserted_mm - 1.0:
                self._stent_was_sheathed = True
            unsheathed = self._stent_was_sheathed and mc.inserted_mm <= prox + 1.0
            if self._deploy is None and unsheathed and prox > 0.0:
                cov, k = self._coverage(prox, stent.inserted_mm - off)
                self._deploy = _Deployment(self.time_s, stent.inserted_mm, cov, k)
                self.log(self.time_s, "deploy", coverage=round(cov, 3), branch=self.stack.label_at(stent.inserted_mm - off))
                if cov > 0 and "deployment" not in self.phases:
                    self._phase("deployment")
            if self._deploy is not None and stent.inserted_mm < self._deploy.arc_mm - 15.0:
                d = self._deploy
                dac = self._device_of_kind("catheter")
                distal_asp = bool(self.aspiration and dac is not None and d.coverage > 0 and
                                  dac.inserted_mm > d.arc_mm - 80.0)
                tech = PassTechnique("stent_retriever", coverage=d.coverage, wait_s=self.time_s - d.t_deploy,
                                     balloon_inflated=self.balloon, distal_aspiration=distal_asp)
                self._pass(tech, d.clot_index)
                self._deploy = None
                self._stent_was_sheathed = False
        # direct aspiration: the catheter face on the clot, aspiration on, then pulled back
        dac = self._device_of_kind("catheter")
        if dac is not None and self.aspiration:
            clot_k, dist = self._distance_to_clot_face(dac.inserted_mm)
            if self._asp_contact_since is None and clot_k >= 0 and 0.0 <= dist <= 2.0:
                self._asp_contact_since = self.time_s
                self._asp_contact_arc = dac.inserted_mm
                self.log(self.time_s, "seal", catheter=dac.name, distance_mm=round(dist, 2))
            elif self._asp_contact_since is not None and dac.inserted_mm < self._asp_contact_arc - 15.0:
                k, _ = self._distance_to_clot_face(self._asp_contact_arc)
                held = self.time_s - self._asp_contact_since
                lab, s, _ = self.stack.branch_arc_at(self._asp_contact_arc)
                ratio = dac.spec.inner_diameter_mm / (2.0 * float(self.tree.radius_at(lab, s)))
                tech = PassTechnique("aspiration", seal=min(1.0, held / 5.0), catheter_ratio=ratio,
                                     balloon_inflated=self.balloon)
                if k >= 0 and (stent is None or self._deploy is None):
                    self._pass(tech, k)
                self._asp_contact_since = None
        elif self._asp_contact_since is not None and not self.aspiration:
            self._asp_contact_since = None

    def _clot_rail_range(self, k: int) -> tuple[float, float] | None:
        """Rail arcs (mm) where clot ``k`` lies, None when the rail does not reach it (cached per rail state)."""
        c = self.circ.clots[k]
        st = self.stack
        key = (k, len(st._lab), st._lab[-1], st._s[-1], c.start_mm, c.length_mm)
        hit = self._clot_range_cache.get(k)
        if hit is not None and hit[0] == key:
            return hit[1]
        lab = np.asarray(st._lab)
        s = np.asarray(st._s)
        idx = np.flatnonzero((lab == self.tree.index(c.spec.branch)) & (s >= c.start_mm)
                             & (s <= c.start_mm + c.length_mm))
        out = None if idx.size == 0 else (float(idx[0]) * STEP_MM, float(idx[-1]) * STEP_MM)
        self._clot_range_cache[k] = (key, out)
        return out

    def _coverage(self, s0: float, s1: float) -> tuple[float, int]:
        best, best_k = 0.0, -1
        for k, c in enumerate(self.circ.clots):
            if not c.present:
                continue
            r = self._clot_rail_range(k)
            if r is None:
                continue
            lo, hi = r
            span = max(hi - lo, STEP_MM)
            cov = max(0.0, min(hi, s1) - max(lo, s0)) / span
            if cov > best or best_k < 0:
                best, best_k = min(cov, 1.0), k
        return best, best_k

    def _distance_to_clot_face(self, arc: float) -> tuple[int, float]:
        """(clot index, distance from ``arc`` to its proximal face along the rail, mm) or (-1, inf)."""
        best = (-1, math.inf)
        for k, c in enumerate(self.circ.clots):
            if not c.present:
                continue
            lab, s, d = self.stack.branch_arc_at(arc)
            if lab == c.spec.branch and d > 0:
                dist = c.start_mm - s
                if -0.5 <= dist < best[1]:
                    best = (k, max(dist, 0.0))
        return best

    def _pass(self, tech: PassTechnique, k: int) -> None:
        clot = self.circ.clots[k] if k >= 0 else None
        if clot is None or not clot.present:
            self.log(self.time_s, "pass", number=len(self.passes) + 1, technique=tech.kind, captured=0.0,
                     note="no clot in reach")
            self.passes.append({"t_s": self.time_s, "number": len(self.passes) + 1, "technique": tech.kind,
                                "captured": 0.0, "tici_after": self.tici})
            return
        out = pass_outcome(tech, clot.spec.composition, self.rng)
        lodged = self.circ.apply_pass(clot, out)
        frac, grade = self.circ.reperfusion()
        self.tici = grade
        rec = {"t_s": round(self.time_s, 6), "number": len(self.passes) + 1, "technique": tech.kind,
               "coverage": round(tech.coverage, 3), "wait_s": round(tech.wait_s, 2),
               "balloon": tech.balloon_inflated, "distal_aspiration": tech.distal_aspiration,
               "seal": round(tech.seal, 3), "p_capture": round(out.p_capture, 4), "captured": out.captured,
               "fragments": out.fragments, "emboli": lodged, "new_territory": out.new_territory,
               "tici_after": grade, "notes": list(out.notes)}
        self.passes.append(rec)
        self._pass_pending_dsa = True
        self.log(self.time_s, "pass", **rec)
        if out.new_territory and lodged:
            self.log(self.time_s, "complication", type="embolisation_new_territory", branches=lodged)
        if "retrieval" not in self.phases:
            self._phase("retrieval")

    # ------------------------------------------------------------------ imaging bookkeeping
    def _follow_tip(self) -> None:
        """Place the table: where the operator put it (``table:`` action), else following the
        leading tip (abdomen/chest, neck or head field)."""
        if self.table_user:
            iso, fov = TABLE_VIEWS[self.table_user]
        else:
            if not self.stack.devices:
                return
            tip = self.stack.point_at(max(d.inserted_mm for d in self.stack.devices))
            z = float(tip[2])
            z_table = 50.0 * round(z / 50.0)  # the table is moved in 5 cm steps (and the images' background cached)
            iso, fov = (TABLE_VIEWS["head"] if z > 150 else TABLE_VIEWS["neck"] if z > -20 else
                        ((0.0, 0.0, z_table), 30.0))
        for name, p in self.planes.items():
            want = self.fov_user.get(name, self.case.carm.get("fov_cm", fov))  # the operator's zoom wins
            if p.isocentre_mm != iso or p.fov_cm != want:
                self.planes[name] = replace(p, isocentre_mm=iso, fov_cm=want)

    def _imaging(self, c: Controls) -> None:
        planes = ("frontal", "lateral") if c.biplane else ("frontal",)
        if c.fluoro:
            self._follow_tip()
            if self.time_s + 1e-9 >= self._pulse_next:
                for name in planes:
                    exp = self.dose.exposure(self.planes[name], TECHNIQUES["fluoro_normal"], "fluoro")
                    self.dose.record(exp, 1.0 / self.pulse_pps)
                    self.exposures_this_step.append((name, "fluoro"))
                self._pulse_next = self.time_s + 1.0 / self.pulse_pps
        if self._dsa_until > self.time_s and self.time_s + 1e-9 >= self._dsa_next:
            kind = self._dsa_kind + ("_mask" if self._dsa_frames == 0 else "")
            for name in ("frontal", "lateral"):
                exp = self.dose.exposure(self.planes[name], TECHNIQUES["dsa"], "acquisition")
                self.dose.record(exp)
                self.exposures_this_step.append((name, kind))
            self._dsa_frames += 1
            self._dsa_next = self.time_s + 1.0 / DSA_FPS
            if self._dsa_kind == "roadmap" and self._dsa_frames == 3:
                self.roadmap_planes = {"frontal", "lateral"}

    # ------------------------------------------------------------------ phases and ends
    def _phase(self, name: str) -> None:
        self.phases[name] = self.time_s
        self.log(self.time_s, "phase", phase=name)

    def _supra_aortic(self, lab: str) -> bool:
        """A vessel of the route that leaves the aortic arch (CCA, subclavian, vertebral...)."""
        anc = self.tree.ancestors(lab)
        return (lab in self._on_path and "AO_ARCH" in anc[1:]
                and not anc[anc.index("AO_ARCH") - 1].startswith("AO"))

    def _phases(self) -> None:
        if not self.stack.devices:
            if self.passes and "device_removal" not in self.phases and "retrieval" in self.phases:
                self._phase("device_removal")
                if TICI_GRADES.index(self.tici) >= TICI_GRADES.index(self.case.goal.tici_success):
                    self.log(self.time_s, "success", tici=self.tici)
                    self.outcome = "success"
            return
        lead = max(self.stack.devices, key=lambda d: d.inserted_mm)
        lab = self.stack.label_at(lead.inserted_mm)
        if "arch_navigation" not in self.phases and self._supra_aortic(lab):
            self._phase("arch_navigation")  # the tip is in a supra-aortic vessel on the way
        cath = self._injecting_catheter()
        if "cca_access_roadmap" not in self.phases and cath is not None and self.roadmap_planes \
                and self._supra_aortic(self.stack.label_at(cath.inserted_mm)):
            self._phase("cca_access_roadmap")
        guide = self._device_of_kind("guide")
        if guide is not None and "guide_placement" not in self.phases:
            glab = self.stack.label_at(guide.inserted_mm)
            if glab.endswith("_ICA") or (glab.endswith("VA") and "BA" in self._on_path):
                self._phase("guide_placement")
        mc = self._device_of_kind("microcatheter")
        if mc is not None and "crossing" not in self.phases:
            for k in range(len(self.circ.clots)):
                r = self._clot_rail_range(k)
                if r is not None and mc.inserted_mm > r[1] + 2.0:
                    self._phase("crossing")
                    break
        goal = self.case.goal
        if goal.kind == "navigate":
            devs = [d for d in self.stack.devices if goal.device in ("", d.name, d.spec.kind)]
            inside = any(self.stack.label_at(d.inserted_mm) in self._goal_labels for d in devs)
            if inside:
                if self._goal_since is None:
                    self._goal_since = self.time_s
                    self.log(self.time_s, "goal_reached", target=goal.target)
                elif self.time_s - self._goal_since >= goal.hold_s:
                    self.log(self.time_s, "success", target=goal.target)
                    self.outcome = "success"
            else:
                self._goal_since = None

    def _limits(self) -> None:
        if self.outcome is not None:
            return
        if self.time_s >= self.case.time_limit_min * 60.0:
            self.log(self.time_s, "truncated", reason="time_limit")
            self.outcome = "time_limit"
        elif self.dose.dap_gy_cm2 >= self.case.dose_limit_gy_cm2:
            self.log(self.time_s, "truncated", reason="dose_limit")
            self.outcome = "dose_limit"

    # ------------------------------------------------------------------ read-outs
    def device_shapes(self) -> tuple[DeviceShape, ...]:
        """The devices as the X-ray sees them."""
        out = []
        for d in self.stack.devices:
            if d.inserted_mm <= 0.5:
                continue
            s = d.spec
            out.append(DeviceShape(s.name, self.stack.shape(d.name), s.outer_radius_mm, s.inner_radius_mm,
                                   s.material, s.markers, s.radiopaque_tip_mm))
        return tuple(out)

    def snapshot(self) -> Scene:
        """A frozen scene for the renderers: vessels with iodine, blush, devices, time."""
        c, r, io = self.circ.blobs()
        return Scene(self.tree, self.circ.segment_iodine(), self.device_shapes(), self.phantom, self.time_s,
                     c, r, io)

    def metrics(self) -> dict[str, Any]:
        """Every metric the event log supports so far (JSON-ready)."""
        t0 = self.phases.get("access", 0.0)
        reperf = next((p["t_s"] for p in self.passes if TICI_GRADES.index(p["tici_after"])
                       >= TICI_GRADES.index("2b")), None) if self.passes else None
        comps = [e.data for e in self.events if e.kind == "complication"]
        return {
            "case": self.case.id, "case_hash": self.case.content_hash, "seed": self.seed,
            "outcome": self.outcome, "time_s": round(self.time_s, 3),
            "procedure_time_s": round(self.time_s - t0, 3),
            "groin_to_reperfusion_s": None if reperf is None else round(reperf - t0, 3),
            "phases": {k: round(v, 3) for k, v in self.phases.items()},
            "phases_completed": len(self.phases),
            "passes": len(self.passes), "pass_details": self.passes,
            "first_pass_effect": bool(self.passes and self.passes[0]["tici_after"] in ("2c", "3")),
            "tici": self.tici,
            "complications": comps,
            "fluoro_time_s": round(self.dose.fluoro_time_s, 3),
            "dap_gy_cm2": round(self.dose.dap_gy_cm2, 4), "kar_mgy": round(self.dose.kar_mgy, 3),
            "contrast_ml": round(self.contrast_ml, 2),
            "dsa_runs": self.dsa_runs, "roadmaps": self.roadmaps,
            "wrong_vessel_entries": self.wrong_vessel_entries,
            "wall_force_s_above_n": {str(t): round(s, 3) for t, s in zip(WALL_FORCE_THRESHOLDS_N,
                                                                         self.wall_force_s, strict=True)},
            "refused_actions": sum(1 for e in self.events if e.kind == "refused"),
        }

    def event_log(self) -> list[dict[str, Any]]:
        """The events as JSON-ready dicts."""
        return [e.as_dict() for e in self.events]


# ---------------------------------------------------------------------- control logs
def save_control_log(path: str | Path, case: Case, seed: int, log: list[tuple[int, Controls]],
                     steps: int | None = None) -> Path:
    """Write the control log (only the steps where the controls change) as JSON.

    ``steps``: how many steps the session ran (the last controls hold until then).
    """
    from iratrainer.anatomy.io import atomic_write_bytes

    payload = {"format": 1, "case": case.id, "case_hash": case.content_hash, "seed": seed, "dt_s": DT_S,
               "steps": steps, "controls": [[k, asdict(c)] for k, c in log]}
    return atomic_write_bytes(path, json.dumps(payload, separators=(",", ":")).encode())


def load_control_log(path: str | Path) -> tuple[dict[str, Any], list[tuple[int, Controls]]]:
    """Read a control log: (header, [(step, Controls)])."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
        rows = [(int(k), Controls(**c)) for k, c in data["controls"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ProcedureError(f"{p}: not a control log ({exc})") from None
    return {k: v for k, v in data.items() if k != "controls"}, rows


def replay(case: Case, seed: int, log: list[tuple[int, Controls]], until_step: int | None = None) -> Procedure:
    """Run a procedure from its control log (the controls hold until the next entry).

    ``until_step``: stop there (default: one step after the last entry, or the end of the
    procedure, whichever comes first).
    """
    proc = Procedure(case, seed)
    cur = Controls()
    idx = 0
    last = log[-1][0] if log else 0
    end = last + 1 if until_step is None else until_step
    while proc.step_index < end and not proc.terminated:
        while idx < len(log) and log[idx][0] == proc.step_index:
            cur = log[idx][1]
            idx += 1
        proc.step(cur)
        if cur.action:
            cur = replace(cur, action="")
    return proc
