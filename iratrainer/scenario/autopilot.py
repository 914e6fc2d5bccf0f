"""Autopilots: an expert and a novice operator that drive a :class:`Procedure` headless.

They act only on what a trainee has: the case (its target and devices), the roadmap
(the route to the target drawn on the vessel image, projected on both planes), the hub
readings (how far each device is in, how much it has been turned) and, at each
fluoroscopy pulse, the projected position of each device tip and the direction its
bent tip points in the image. They never read the 3-D state or the branch a tip is in:
to know whether a tip went the right way they compare its projection with the route on
both planes; to steer they turn the hub and watch the tip's image until it points
along the route ahead.

* **expert**: roadmap before navigating, orientation sweeps with few pulses, the right
  stack (Simmons for a type III arch), balloon guide inflated and aspiration through
  the distal catheter during retrieval, 3 minutes of stent integration, one control
  DSA per pass, fluoroscopy only while steering;
* **novice**: slower, hesitant, the pedal held whenever a device moves, sloppy torque
  that sends the tip into wrong vessels (and back), shorter waits, more DSA runs, the
  balloon sometimes forgotten.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from iratrainer.flow.thrombectomy import TICI_GRADES
from iratrainer.scenario.procedure import Controls, Procedure

__all__ = ["Autopilot", "Style", "STYLES"]


@dataclass(frozen=True)
class Style:
    """How an operator works."""

    name: str
    speed_mm_s: float
    fine_speed_mm_s: float
    sweep_step_deg: float
    torque_error_deg: float  # sd of the error added to the chosen hub angle
    fluoro_always: bool
    wait_s: float
    balloon: bool
    extra_dsa: bool
    hesitation_s: float
    max_passes: int


STYLES = {
    "expert": Style("expert", 60.0, 15.0, 30.0, 0.0, False, 180.0, True, False, 0.0, 4),
    "novice": Style("novice", 25.0, 6.0, 45.0, 60.0, True, 75.0, False, True, 4.0, 5),
}


class _Route:
    """The route to the target as the operator sees it on the roadmap (projected on both planes)."""

    def __init__(self, proc: Procedure, target: str) -> None:
        t = proc.tree
        acc = proc.access
        if proc.case.access == "model_root":  # entering at the root with the flow: the route starts there
            pts, _, lab = t.path_polyline(acc, target, with_labels=True)
            if not np.allclose(pts[0], t[acc].points_mm[0]):
                pts = np.vstack([t[acc].points_mm[:1], pts])
                lab = np.concatenate([[t.index(acc)], lab])
        else:
            pts, _, lab = t.path_polyline(acc, target, with_labels=True)
        seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
        self.arc = np.concatenate([[0.0], np.cumsum(seg)])
        self.pts = pts
        chg = np.flatnonzero(np.diff(lab) != 0)
        self.junctions = [float(self.arc[k + 1]) for k in chg]  # where the route changes vessel
        self.length = float(self.arc[-1])
        self.labels = [t.labels[i] for i in lab]

    def point(self, s: float) -> np.ndarray:
        return np.array([np.interp(s, self.arc, self.pts[:, k]) for k in range(3)])

    def label_at(self, s: float) -> str:
        """The vessel at route arc ``s`` (what the operator reads on the roadmap)."""
        return self.labels[int(np.clip(np.searchsorted(self.arc, s), 0, len(self.labels) - 1))]

    def arc_of(self, label: str, end: bool = False) -> float:
        """Route arc where ``label`` starts (or ends)."""
        idx = [k for k, lab in enumerate(self.labels) if lab == label]
        if not idx:
            raise KeyError(label)
        return float(self.arc[idx[-1] if end else idx[0]])


class Autopilot:
    """Drives a procedure; :meth:`controls` gives the next step's controls.

    Args:
        proc: the procedure.
        style: ``"expert"`` or ``"novice"``.
        seed: the operator's own generator (hesitation, torque errors).
    """

    def __init__(self, proc: Procedure, style: str = "expert", seed: int = 0) -> None:
        if style not in STYLES:
            raise ValueError(f"unknown autopilot {style!r} (expert or novice)")
        self.proc = proc
        self.style = STYLES[style]
        self.rng = np.random.default_rng([7, seed])
        self.case = proc.case
        self.tip_px: dict[str, dict[str, np.ndarray]] = {}
        self.dir_px: dict[str, dict[str, np.ndarray]] = {}
        self._pulses = 0
        self._distal_from = self._supra_aortic_arc()
        self._script = self._run()
        self.done = False

    # ------------------------------------------------------------------ what the operator sees
    def _see(self) -> None:
        """After a fluoroscopy pulse: the tips and their pointing in each image."""
        p = self.proc
        if not p.exposures_this_step:
            return
        self._pulses += 1
        for name, plane in p.planes.items():
            self.tip_px[name] = {}
            self.dir_px[name] = {}
            for d in p.stack.devices:
                tip = p.stack.point_at(d.inserted_mm)
                v = p.stack.hook_vector(d) if (d.reverse_curve and d.formed) else p.stack.tip_vector(d)
                uv, _ = plane.project(np.vstack([tip, tip + 5.0 * v]))
                self.tip_px[name][d.name] = uv[0]
                dv = uv[1] - uv[0]
                n = float(np.linalg.norm(dv))
                self.dir_px[name][d.name] = dv / n if n > 1e-9 else np.zeros(2)

    def _route_dir_px(self, route: _Route, s0: float, s1: float) -> dict[str, np.ndarray]:
        out = {}
        for name, plane in self.proc.planes.items():
            uv, _ = plane.project(np.vstack([route.point(s0), route.point(s1)]))
            d = uv[1] - uv[0]
            n = float(np.linalg.norm(d))
            out[name] = d / n if n > 1e-9 else np.zeros(2)
        return out

    def _off_route_px(self, route: _Route, name: str, s_hint: float, window: tuple[float, float] = (-40.0, 40.0)) -> float:
        """Distance (pixels, worst plane) from the tip's image to the route's image near ``s_hint``."""
        worst = 0.0
        lo, hi = max(0.0, s_hint + window[0]), min(route.length, s_hint + window[1])
        ss = np.linspace(lo, hi, 161)
        pts = np.array([route.point(s) for s in ss])
        for plane_name, plane in self.proc.planes.items():
            tip = self.tip_px.get(plane_name, {}).get(name)
            if tip is None:
                return 0.0
            uv, _ = plane.project(pts)
            worst = max(worst, float(np.min(np.linalg.norm(uv - tip, axis=1))))
        return worst

    # ------------------------------------------------------------------ primitives (generators of Controls)
    def controls(self) -> Controls:
        """The next step's controls (``end`` when the script is over)."""
        self._see()
        try:
            return next(self._script)
        except StopIteration:
            self.done = True
            return Controls(action="end")

    def _wait(self, seconds: float, fluoro: bool = False) -> Iterator[Controls]:
        for _ in range(int(round(seconds / self.proc.dt))):
            yield Controls(fluoro=fluoro)

    def _hesitate(self) -> Iterator[Controls]:
        if self.style.hesitation_s > 0:
            yield from self._wait(float(self.rng.uniform(0.5, 1.5)) * self.style.hesitation_s, self.style.fluoro_always)

    def _act(self, action: str) -> Iterator[Controls]:
        yield Controls(action=action)

    def _angio(self, view: str, seconds: float, fov_cm: float = 30.0) -> Iterator[Controls]:
        """A biplane DSA run framed on the head or the neck, then the working field again.

        Diagnostic and control runs take the whole head (a 30 cm field: about 19 cm at the
        isocentre); navigation works in the automatic field that follows the tip.
        """
        yield from self._act(f"table:{view}")
        for plane in self.proc.planes:
            yield from self._act(f"zoom:{plane}:{fov_cm:g}")
        yield from self._act(f"dsa:{seconds:g}")
        yield from self._wait(seconds + 0.5)
        for plane in self.proc.planes:
            yield from self._act(f"zoom:{plane}:auto")
        yield from self._act("table:auto")

    def _inserted(self, name: str) -> float:
        d = self.proc.device(name)
        return d.inserted_mm if d is not None else 0.0

    def _move_to(self, name: str, target_mm: float, speed: float | None = None, fluoro: bool = False) -> Iterator[Controls]:
        """Move the hub until the device is ``target_mm`` in (stops when it no longer moves).

        A move that ends beyond the arch (in the neck or the head) is watched under
        fluoroscopy and made at most at twice the fine speed, as in a real suite; in the aorta,
        and when a device is taken out, the expert moves quickly and blind.
        """
        speed = speed or self.style.speed_mm_s
        fluoro = fluoro or self.style.fluoro_always
        watch = target_mm > self._distal_from  # a move that ends beyond the arch (a removal is quick)
        stuck = 0
        while True:
            cur = self._inserted(name)
            err = target_mm - cur
            if abs(err) < 0.3 or self.proc.terminated:
                return
            distal = watch and max(cur, target_mm) > self._distal_from
            v_max = min(speed, 2.0 * self.style.fine_speed_mm_s) if distal else speed
            v = math.copysign(min(v_max, abs(err) / self.proc.dt), err)
            yield Controls(device=name, advance_mm_s=v, fluoro=fluoro or distal)
            stuck = stuck + 1 if abs(self._inserted(name) - cur) < 1e-6 else 0
            if stuck > 15:
                return

    def _rotate_to(self, name: str, phi: float, fluoro: bool = False) -> Iterator[Controls]:
        d = self.proc.device(name)
        while d is not None:
            err = (phi - d.phi_deg + 180.0) % 360.0 - 180.0
            if abs(err) < 0.5:
                return
            yield Controls(device=name, rotate_deg_s=math.copysign(min(720.0, abs(err) / self.proc.dt), err),
                           fluoro=fluoro)

    def _pulse(self) -> Iterator[Controls]:
        """Hold the pedal until one pulse has been seen."""
        n = self._pulses
        while self._pulses == n and not self.proc.terminated:
            yield Controls(fluoro=True)

    def _orient(self, name: str, route: _Route, s_from: float, s_to: float, hook: bool = False) -> Iterator[Controls]:
        """Turn the hub, watching the tip, until it points along the route from ``s_from`` to ``s_to``."""
        want = self._route_dir_px(route, s_from, s_to)
        best_phi, best = 0.0, -np.inf
        step = self.style.sweep_step_deg
        d = self.proc.device(name)
        if d is None:
            return
        start = d.phi_deg
        for k in range(int(round(360.0 / step))):
            phi = (start + k * step) % 360.0
            yield from self._rotate_to(name, phi)
            yield from self._pulse()
            score = float(np.mean([self.dir_px[p][name] @ want[p] for p in want if name in self.dir_px.get(p, {})]))
            if score > best:
                best, best_phi = score, phi
        err = float(self.rng.normal(0.0, self.style.torque_error_deg)) if self.style.torque_error_deg else 0.0
        yield from self._rotate_to(name, (best_phi + err) % 360.0)
        del hook

    def _navigate(self, lead: str, route: _Route, s_goal: float, followers: tuple[tuple[str, float], ...] = (),
                  tries: int = 8) -> Iterator[Controls]:
        """Advance ``lead`` along the route to arc ``s_goal``, steering at each junction; followers trail by their gap.

        Between junctions the tip goes in chunks, each checked with a pulse; a tip off the
        route (a side branch caught) is pulled back under fluoroscopy until it is on the
        route again, turned away and advanced again.
        """
        failures = 0
        oriented: set[float] = set()
        while not self.proc.terminated and self._inserted(lead) < s_goal - 0.5 and failures < tries:
            cur = self._inserted(lead)
            ahead = [j for j in route.junctions if cur - 2.0 < j <= s_goal]
            sj = ahead[0] if ahead else None
            if sj is not None and cur >= sj - 12.0:
                if sj not in oriented:
                    yield from self._move_to(lead, max(cur, sj - 6.0))
                    yield from self._orient(lead, route, sj, min(sj + 10.0, route.length))
                    oriented.add(sj)
                target = min(sj + 8.0, s_goal)
                yield from self._move_to(lead, target, speed=self.style.fine_speed_mm_s, fluoro=True)
            else:
                stop = (sj - 10.0) if sj is not None else s_goal
                target = min(stop, cur + 40.0, s_goal)
                yield from self._move_to(lead, target)
            yield from self._pulse()
            now = self._inserted(lead)
            off = self._off_route_px(route, lead, now)
            if off > 6.0:
                failures += 1
                yield from self._hesitate()
                yield from self._back_on_route(lead, route)
                if sj is not None:
                    oriented.discard(sj)
                d = self.proc.device(lead)
                if d is not None:
                    yield from self._rotate_to(lead, (d.phi_deg + 90.0 + 45.0 * failures) % 360.0)
            elif now < target - 2.0:  # stuck
                failures += 1
                yield from self._move_to(lead, max(0.0, now - 10.0), fluoro=True)
                d = self.proc.device(lead)
                if d is not None:
                    yield from self._rotate_to(lead, (d.phi_deg + 60.0) % 360.0)
            for name, gap in followers:
                want = min(self._inserted(lead) - gap, s_goal - gap)
                if want > self._inserted(name):
                    yield from self._move_to(name, want)

    def _back_on_route(self, lead: str, route: _Route) -> Iterator[Controls]:
        """Pull back under fluoroscopy until the tip's image is on the route again."""
        for _ in range(40):
            yield from self._move_to(lead, max(0.0, self._inserted(lead) - 3.0), fluoro=True)
            yield from self._pulse()
            if self._off_route_px(route, lead, self._inserted(lead)) <= 3.0:
                break
        yield from self._move_to(lead, max(0.0, self._inserted(lead) - 4.0), fluoro=True)

    # ------------------------------------------------------------------ the procedure
    def _pick(self, *kinds: str) -> str:
        cat = self.proc.catalogue
        for k in kinds:
            for name in self.case.devices:
                if name == k or cat[name].kind == k:
                    return name
        return ""

    def _run(self) -> Iterator[Controls]:
        case = self.case
        goal = case.goal
        if goal.kind == "navigate":
            yield from self._navigate_case()
            return
        yield from self._thrombectomy()

    def _supra_aortic_arc(self) -> float:
        """Insertion (mm) past which a tip is beyond the arch on the way to the target (0 from a head model)."""
        if self.case.access == "model_root":
            return 0.0
        try:
            route = self._route_to(self.case.goal.target)
        except (KeyError, ValueError):
            return math.inf
        for k, lab in enumerate(route.labels):
            if lab.endswith(("_CCA", "_ICA", "_VA")) or lab.startswith("BCT"):
                return float(route.arc[k])
        return math.inf

    def _arch_catheter(self) -> str:
        arch = self.case.anatomy.get("arch", "I")
        if arch == "III" and "simmons2_5F" in self.case.devices:
            return "simmons2_5F"
        return self._pick("vertebral_5F", "multipurpose_5F", "diagnostic")

    def _supra_aortic(self, route: _Route) -> str:
        """The first vessel of the route after the aortic arch (what the roadmap shows)."""
        seen_arch = False
        for lab in route.labels:
            if lab == "AO_ARCH":
                seen_arch = True
            elif seen_arch and not lab.startswith("AO"):
                return lab
        return route.labels[-1]

    def _to_arch(self, wire: str, cath: str, guide: str) -> Iterator[Controls]:
        route = self._route_to("AO_ARCH")
        s_arch = route.length - 20.0 if "AO_ARCH" in route.labels else route.length
        # the arch comes after climbing the aorta: everything up together, wire first
        yield from self._navigate(wire, route, s_arch, followers=((cath, 20.0),) + (((guide, 60.0),) if guide else ()))

    def _route_to(self, label: str) -> _Route:
        return _Route(self.proc, label)

    def _select_vessel(self, cath: str, wire: str, target: str) -> Iterator[Controls]:
        """Catheter leads from the arch into the vessel that leads to ``target``."""
        route = self._route_to(target)
        sup = self._supra_aortic(route)
        yield from self._move_to(wire, self._inserted(cath) - 5.0)
        if cath.startswith("simmons"):
            yield from self._simmons(cath, route, sup)
        else:  # into the vessel, short of the next division on the way
            nxt = [j for j in route.junctions if j > route.arc_of(sup) + 1.0]
            s_in = route.arc_of(sup) + 15.0
            if nxt:
                s_in = min(s_in, max(route.arc_of(sup) + 4.0, nxt[0] - 6.0))
            yield from self._navigate(cath, route, s_in)
        if self.style.extra_dsa:
            yield from self._act("dsa:4")
            yield from self._wait(4.5)

    def _simmons(self, cath: str, route: _Route, sup: str) -> Iterator[Controls]:
        """Form the reverse curve in the ascending aorta, then pull back into the vessel's origin."""
        # the route to the arch ends where the descending aorta joins it; the ascending aorta
        # begins one arch length further
        arch_end = self._route_to("AO_ARCH").length + self.proc.tree.length_mm("AO_ARCH")
        for attempt in range(6):
            yield from self._move_to(cath, arch_end + 25.0, fluoro=True)  # the loop forms in the ascending aorta
            want = self._route_dir_px(route, route.arc_of(sup) - 1.0, route.arc_of(sup) + 10.0)
            best_phi, best = 0.0, -np.inf
            for k in range(int(360 / self.style.sweep_step_deg)):
                phi = k * self.style.sweep_step_deg + 15.0 * attempt
                yield from self._rotate_to(cath, phi)
                yield from self._pulse()
                sc = float(np.mean([self.dir_px[p][cath] @ want[p] for p in want]))
                if sc > best:
                    best, best_phi = sc, phi
            yield from self._rotate_to(cath, best_phi)
            start = self._inserted(cath)
            last_fix = start
            while self._inserted(cath) > start - 90.0 and not self.proc.terminated:
                yield Controls(device=cath, advance_mm_s=-self.style.fine_speed_mm_s, fluoro=True)
                if last_fix - self._inserted(cath) >= 4.0:  # keep the hook facing the origin while pulling back
                    last_fix = self._inserted(cath)
                    d = self.proc.device(cath)
                    base = d.phi_deg if d is not None else 0.0
                    scores = []
                    for dphi in (0.0, -20.0, 20.0):
                        yield from self._rotate_to(cath, (base + dphi) % 360.0)
                        yield from self._pulse()
                        scores.append((float(np.mean([self.dir_px[p][cath] @ want[p] for p in want])), dphi))
                    yield from self._rotate_to(cath, (base + max(scores)[1]) % 360.0)
                if self.proc.stack.devices and self._inserted(cath) < start - 5.0:
                    yield from self._pulse()
                    inside = self._off_route_px(route, cath, route.arc_of(sup), window=(1.5, 12.0))
                    if inside < 3.0:  # the tip's image sits in the vessel's first centimetre
                        wire = self._pick("guidewire")
                        yield from self._navigate(wire, route, route.arc_of(sup) + 40.0)
                        yield from self._move_to(cath, route.arc_of(sup) + 25.0)
                        return
            yield from self._hesitate()

    def _navigate_case(self) -> Iterator[Controls]:
        goal = self.case.goal
        p = self.proc
        route = self._route_to(goal.target)
        s_goal = min(route.length - 5.0, route.arc_of(goal.target) + 25.0)
        micro = goal.device in ("microwire", "microcatheter") or p.catalogue.get(goal.device) is not None and \
            p.catalogue[goal.device].kind in ("microwire", "microcatheter")
        if micro:  # siphon work: guide in the neck, then the microcatheter and microwire
            neck = self._neck_vessel(route)
            yield from self._prepare(route, route.arc_of(neck) + 30.0)
            mw, mc = self._pick("microwire"), self._pick("microcatheter")
            yield from self._navigate(mw, route, s_goal, followers=((mc, 15.0),))
            yield from self._move_to(mc, s_goal - 8.0, speed=self.style.fine_speed_mm_s, fluoro=True)
            yield from self._wait(goal.hold_s + 0.5)
            return
        wire = self._pick("guidewire")
        cath = self._arch_catheter()
        yield from self._act(f"insert:{cath}")
        yield from self._act(f"insert:{wire}")
        yield from self._to_arch(wire, cath, "")
        if "AO_ARCH" in route.labels and goal.target not in ("AO_ARCH", "AO_ASC"):
            yield from self._select_vessel(cath, wire, goal.target)
            yield from self._act("roadmap")
            yield from self._wait(2.5)
        yield from self._navigate(wire, route, s_goal)
        kind = p.catalogue[cath].kind
        if goal.device in (cath, kind):
            yield from self._move_to(cath, s_goal - 10.0)
        yield from self._wait(goal.hold_s + 0.5)

    def _prepare(self, route: _Route, guide_limit: float) -> Iterator[Controls]:
        """Access to the neck vessel: the guide there, a distal catheter, microcatheter and microwire in it."""
        p = self.proc
        guide, dac = self._pick("guide"), self._pick("catheter")
        mc, mw = self._pick("microcatheter"), self._pick("microwire")
        wire = self._pick("guidewire")
        cath = self._arch_catheter()
        neck = self._neck_vessel(route)
        s_neck = route.arc_of(neck)
        if self.case.access == "model_root":  # a head model: the guide is brought to the model's root
            yield from self._act(f"insert:{guide}")
            yield from self._move_to(guide, min(20.0, guide_limit))
        else:
            for name in (guide, cath, wire):
                yield from self._act(f"insert:{name}")
            yield from self._to_arch(wire, cath, guide)
            yield from self._select_vessel(cath, wire, route.labels[-1])
            yield from self._move_to(wire, max(0.0, self._inserted(cath) - 40.0))  # free the lumen to inject
            yield from self._act("roadmap")
            yield from self._wait(2.5)
            wire_to = min(s_neck + 60.0, guide_limit + 30.0)
            yield from self._navigate(wire, route, wire_to)
            yield from self._move_to(cath, min(s_neck + 45.0, guide_limit + 15.0))
            yield from self._move_to(guide, min(s_neck + 30.0, guide_limit), fluoro=True)
            for name in (wire, cath):
                yield from self._move_to(name, 0.0)
                yield from self._act(f"remove:{name}")
        for name in (dac, mc, mw):
            yield from self._act(f"insert:{name}")
        g = self._inserted(guide)
        for name in (mw, mc, dac):
            yield from self._move_to(name, g - 5.0)
        # diagnostic runs from the guide: the neck (unless a head model), then the whole head
        # (the occlusion's cut-off, the collaterals, the venous phase)
        if self.case.access != "model_root":
            yield from self._angio("neck", 6.0)
        yield from self._angio("head", 12.0)
        if self.style.extra_dsa:
            yield from self._angio("head", 8.0)
        del p

    def _thrombectomy(self) -> Iterator[Controls]:
        p = self.proc
        guide = self._pick("guide")
        clots = sorted(range(len(self.case.occlusions)), key=lambda k: self._clot_arcs(k)[0])
        route = self._clot_route(clots[-1])
        neck = self._neck_vessel(route)
        first = self._clot_arcs(clots[0])
        guide_limit = route.arc_of(neck) + 30.0
        if self.case.occlusions[clots[0]].branch == neck:  # a cervical lesion: the guide stays below it
            guide_limit = min(guide_limit, first[0] - 25.0)
        yield from self._prepare(route, guide_limit)
        for k in clots:
            if p.terminated:
                return
            if self.case.occlusions[k].branch == neck:
                yield from self._aspirate(k)
            else:
                yield from self._stent_passes(k)
        # final angiogram from the guide (the micro devices out first), then everything out
        for name in [d.name for d in reversed(p.stack.devices) if d.spec.kind in ("microwire", "microcatheter",
                                                                                  "stent_retriever")]:
            yield from self._move_to(name, 0.0)
            yield from self._act(f"remove:{name}")
        dac = self._pick("catheter")
        yield from self._move_to(dac, max(0.0, self._inserted(guide) - 10.0))
        yield from self._angio("head", 15.0)  # arterial to venous phase
        if self.case.access != "model_root":  # the neck: no dissection where the guide sat
            yield from self._angio("neck", 6.0)
        for name in [d.name for d in reversed(p.stack.devices)]:
            yield from self._move_to(name, 0.0)
            yield from self._act(f"remove:{name}")
        yield from self._wait(1.0)

    def _clot_route(self, k: int) -> _Route:
        p = self.proc
        clot = self.case.occlusions[k]
        kids = p.tree.children(clot.branch)
        land = max(kids, key=lambda c: p.tree[c].radii_mm[0]) if kids else clot.branch
        return self._route_to(land)

    def _clot_arcs(self, k: int) -> tuple[float, float]:
        """Route arcs of the clot's faces (read off the DSA's cut-off)."""
        clot = self.case.occlusions[k]
        r = self._clot_route(k)
        s0 = r.arc_of(clot.branch) + clot.start_mm
        return s0, s0 + clot.length_mm

    def _aspirate(self, k: int) -> Iterator[Controls]:
        """Direct aspiration: the distal catheter's face on the clot, suction, withdraw; control run."""
        p = self.proc
        s = self.style
        dac, mc, mw = self._pick("catheter"), self._pick("microcatheter"), self._pick("microwire")
        s0, _ = self._clot_arcs(k)
        for _ in range(s.max_passes):
            for name in (mw, mc):
                if p.device(name) is not None:
                    yield from self._move_to(name, max(0.0, s0 - 40.0))
            yield from self._move_to(dac, s0 - 0.5, speed=s.fine_speed_mm_s, fluoro=True)
            yield from self._act("aspiration:on")
            yield from self._wait(6.0)
            yield from self._move_to(dac, s0 - 30.0, speed=s.fine_speed_mm_s / 2, fluoro=s.fluoro_always)
            yield from self._act("aspiration:off")
            yield from self._angio("head", 12.0)
            if k not in p.dsa_defects:
                return

    def _stent_passes(self, k: int) -> Iterator[Controls]:
        s = self.style
        p = self.proc
        guide, dac, mc = self._pick("guide"), self._pick("catheter"), self._pick("microcatheter")
        mw, sr = self._pick("microwire"), self._pick("stent_retriever")
        route = self._clot_route(k)
        s_clot0, s_clot1 = self._clot_arcs(k)
        passes = 0
        while passes < s.max_passes and not p.terminated:
            # microwire across the clot, microcatheter over it, distal catheter to the clot face
            if p.device(mc) is None:
                yield from self._act(f"insert:{mc}")
                if p.device(mw) is None:
                    yield from self._act(f"insert:{mw}")
                yield from self._move_to(mc, self._inserted(dac) - 5.0)
            if p.device(mw) is None:
                yield from self._act(f"insert:{mw}")
            yield from self._move_to(dac, max(self._inserted(dac), s_clot0 - 40.0))
            yield from self._move_to(mw, self._inserted(mc) - 2.0)
            yield from self._navigate(mw, route, s_clot1 + 25.0, followers=((mc, 12.0),))
            yield from self._move_to(mc, s_clot1 + 12.0, speed=s.fine_speed_mm_s, fluoro=True)
            yield from self._move_to(dac, s_clot0 - 1.0, speed=s.fine_speed_mm_s, fluoro=True)
            yield from self._move_to(mw, 0.0)
            yield from self._act(f"remove:{mw}")
            # a microcatheter run: its tip is beyond the clot in open lumen, not in a perforator
            yield from self._act("dsa:4")
            yield from self._wait(4.5)
            yield from self._act(f"insert:{sr}")
            yield from self._move_to(sr, self._inserted(mc) - 1.0)
            # unsheathe: hold the stent, pull the microcatheter back over it
            st = p.catalogue[sr].extra.get("stent", {})
            span = float(st.get("working_length_mm", 40.0)) + float(st.get("from_tip_mm", 2.0)) + 3.0
            yield from self._move_to(mc, self._inserted(sr) - span, speed=s.fine_speed_mm_s, fluoro=True)
            yield from self._hesitate()
            yield from self._wait(s.wait_s, fluoro=False)
            if s.balloon and guide:
                yield from self._act("balloon:on")
            yield from self._act("aspiration:on")
            # withdraw stent and microcatheter together into the distal catheter, then out
            out_to = max(0.0, self._inserted(sr) - 120.0)
            while self._inserted(sr) > out_to + 0.5 and not p.terminated:
                yield Controls(device=sr, advance_mm_s=-s.speed_mm_s / 3, fluoro=s.fluoro_always)
                yield Controls(device=mc, advance_mm_s=-s.speed_mm_s / 3, fluoro=s.fluoro_always)
            passes += 1
            for name in (sr, mc):
                yield from self._move_to(name, 0.0)
                yield from self._act(f"remove:{name}")
            if s.balloon and guide:
                yield from self._act("balloon:off")
            yield from self._act("aspiration:off")
            if s.name == "expert":  # the distal catheter back to the siphon, not to slow the flow it judges
                yield from self._move_to(dac, s_clot0 - 40.0)
            yield from self._angio("head", 12.0)
            shown = p.tici_shown
            if shown and TICI_GRADES.index(shown) >= TICI_GRADES.index("2c" if s.name == "expert" else "2b"):
                break
            if shown and passes >= 2 and TICI_GRADES.index(shown) >= TICI_GRADES.index(self.case.goal.tici_success):
                break

    def _neck_vessel(self, route: _Route) -> str:
        for lab in route.labels:
            if lab.endswith("_ICA") or lab.endswith("_VA"):
                return lab
        return route.labels[-1]
