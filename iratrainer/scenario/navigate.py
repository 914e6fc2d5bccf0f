"""A scripted operator that navigates the rod physics with hub inputs and fluoroscopy only.

``navigate(arch, target)`` drives coaxial stacks (:class:`~iratrainer.physics.stack.DeviceStack`)
from the right femoral sheath to a target vessel of the reference atlas: a 5F diagnostic
catheter over a 0.035 in wire through the arch and the neck, then (over an exchange) an
intermediate catheter, a microcatheter and a microwire to an intracranial target. The operator
knows what an interventionalist knows: the roadmap (the route's centreline projected on
the frontal and lateral detectors), the hub readings (inserted lengths, hub angles) and,
at every fluoroscopy pulse, the projected position of each device tip and the direction
its bent tip points in each image. It never reads the 3-D state or the vessel label of
the tip; the result's ``reached`` is then checked against the ground truth.

What the operator does:

* **follow**: the lead device advances; the others keep fixed offsets from its inserted
  length (hub advances from the hub readings).
* **aim** before each junction on the route (a branch leaving the route, or the route
  leaving its vessel): stop short of it, turn the lead's hub in 45° steps over a full
  turn, wait for the twist to reach the tip, score how well the projected tip points
  along the route past the junction on both planes, and come back to the best step. The
  torque lags and whips (friction): the score is read at the tip, not at the hub.
* **select** a branch that leaves backwards (more than 75° from the way in, like the arch
  vessels seen from the descending aorta) with the wire, as operators select the arch
  vessels. First the wire is **hooked** with the catheter waiting behind it: taken past
  the ostium, pointed along the branch, pulled back until its tip drops in, pushed up
  spinning; its slack is then taken up and the catheter advanced over the still wire (a
  shaped catheter in the arch keeps its curve along the arch's, and cannot be turned to
  point up into the ostia itself). Failing that, the wire is **probed** from the catheter
  parked just short of the ostium. Without a shaped catheter the lead itself is hooked.
  Where the vessel ends in its branches (the carotid terminus) there is no going past:
  the branch is aimed at like any junction.
* **form a Simmons** (a reverse-curve catheter, type III): the arch vessels leave the
  steep ascending side of a tall arch, backwards from the descending aorta. The wire-led
  stack goes on round the arch and down the ascending aorta; the wire is drawn back and the
  catheter pushed against the valve until its tip is seen turned back (the loop formed);
  it is then drawn back, tip first, to just short of the first arch vessel (pushed first,
  its loop going down, if its tip is already past that point). From its tip the arch
  vessels lie ahead, and the wire goes out of it and selects the vessel as at any
  junction, aimed only with its angled tip out of the catheter and never pulled back
  inside it; if it has not within a minute, it comes back inside and the catheter is drawn
  on to the next parking. The exchange is then made over the wire.
* **change the catheter** (types I and II): when three selections of the arch vessel (a
  hook, then the probes) have failed with the vertebral catheter, it is changed for a
  Simmons 2 over the wire where it lies, and the Simmons is formed and used as above.
* **wire first** (the distal stack): at each junction the aimed microwire goes across
  alone, its catheters held, then the microcatheter is brought up over it.
* **recover**: when the projected tip leaves the roadmap by more than the vessel's
  half-width plus a margin on either plane, pull back to before the junction (to the
  roadmap only, past a selected branch), aim again, and try again (at most
  ``max_attempts`` at one place: the count is over once the tip is seen 20 mm past the
  farthest of them).
* **unstick**: when the tip is seen to go less than 3 mm along the roadmap over 1 s of
  pushing (the device bows or loops behind it), pull back 10 mm and aim again; retries at
  one place go through the best aim, a quarter turn either side and the opposite side. A
  lead seen turned back on itself is pulled back into its catheter instead, and the
  catheters behind it back to their usual distance from it.
* **puff**: once a catheter is seen up a branch it selected, a puff of contrast through it
  shows which vessel it is in (the one place the operator learns a vessel's name, as a
  puff shows it); not the vessel on the roadmap (a subclavian artery taken for the carotid
  beside it), catheter and wire are drawn back and the selection tried again.
* **start again**: the tries at one place used up, the lead is pulled back 60 mm short of
  the trouble, its hub turned by a random number of eighths of a turn (the seed's draw), and
  that stretch is started again with its counts cleared (twice at most per stack) before
  the operator gives up.

Vessel selection is therefore the physics' doing: the shaped tip, the torque reaching
it, the wall contacts. The operator only chooses hub inputs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from iratrainer.anatomy.atlas import AtlasParams, build_atlas
from iratrainer.anatomy.tree import VesselTree
from iratrainer.imaging.geometry import CArmPlane, frontal, lateral
from iratrainer.physics.catalogue import DeviceSpec, default_catalogue
from iratrainer.physics.stack import DeviceStack, HubCommand, PhysicsError

__all__ = ["NavigateResult", "navigate", "ARCH_CATHETER", "DISTAL_STACK"]

PULSE_STEPS = 50  # physics steps (1 ms) per fluoroscopy pulse: 20 pulses/s
AIM_STEP_DEG = 45.0
AIM_SETTLE_S = 0.2
LEAD_MM = 10.0  # stop this far (along the route) before a junction to aim
AIM_AHEAD_MM = 20.0  # the operator aims at the route this far past the junction

#: the arch-and-neck stack by arch type (catheter, then the 0.035 wire inside it)
ARCH_CATHETER = {"I": "vertebral_5F", "II": "vertebral_5F", "III": "simmons2_5F"}
#: the intracranial stack laid in over an exchange, outermost first, and each one's offset (mm)
#: from the microwire's inserted length
DISTAL_STACK = (("intermediate_6F", -60.0), ("microcatheter_021", -25.0), ("microwire_014", 0.0))
NECK_MM = 40.0  # how far up the internal carotid artery the diagnostic catheter goes before the exchange
PROBE_BACK_MM = (5.0, 10.0, 0.0)  # where the catheter tip parks short of the ostium, by attempt
PROBE_WIRE_IN_MM = 15.0  # the wire tip waits this far inside the catheter between probes
PROBE_OUT_MM = 30.0  # each probe pushes the wire this far out of the catheter
PROBE_TIP_OUT_MM = 8.0  # between probes the wire's angled tip stays this far out, to be aimed
PROBE_TRIES = 4  # probes per parking of the catheter
WIRE_HOOK_BACK_MM = (35.0, 25.0, 45.0)  # where the catheter waits short of the ostium while the wire is hooked
WIRE_HOOK_DEEPER_MM = 40.0  # a hooked wire goes this much further up before the catheter follows
PROBE_DEEPER_MM = 20.0  # once in, the wire goes this much further before the catheter follows
PROBE_FOLLOW_MM = 40.0  # then catheter and wire go up the branch together this far
STALL_PULSES = 20  # pushing this many pulses (1 s) ...
STALL_MM = 3.0  # ... with the tip seen to go less than this far along the roadmap: it is stuck
HOOK_PAST_MM = 15.0  # a hook takes the tip this far past the ostium before it is aimed and pulled back
HOOK_SPIN_DEG_S = 360.0  # a hooked wire is pushed up the branch turning at this rate
RETRY_SKIPS = (0, 1, 3, 2)  # quarter turns past the best aim, by retry at one place
STALL_BACK_MM = 10.0  # then the tip is pulled back this far along the roadmap and aimed again
TRIES_RESET_MM = 20.0  # the tries at a place are over once the tip is this far past it (mm of route)
MAX_RESTARTS = 2  # times the operator starts a stretch again when the tries at one place are used up
RESTART_BACK_MM = 60.0  # it pulls back this far short of the trouble first
CROSS_MM = 10.0  # a microwire crossing a junction alone must be seen this far past it
CROSS_GOAL_MM = 20.0  # a goal this close past the last junction is reached by the microwire alone
CROSS_TRIES = 3  # pushes of the microwire alone across a junction before the stack goes on as one
FOLD_OUT_MM = 10.0  # a lead seen turned back is pulled back to this far out of its catheter
#: a reverse-curve catheter (Simmons) is one with a curve of more than this (degrees)
REVERSE_CURVE_DEG = 150.0
SIMMONS_VALVE_MM = 40.0  # the wire-led stack goes down the ascending aorta to this far above the valve
SIMMONS_WIRE_BACK_MM = 200.0  # the wire is then drawn back this far, out of the catheter's curves
SIMMONS_PUSH_MAX_MM = 500.0  # the catheter is pushed on against the valve at most this far to form its loop
SIMMONS_SEAT_MM = 60.0  # and this much further once its tip is seen turned back (the loop formed)
SIMMONS_UNLOAD_MM = 10.0  # then drawn back this far, to take the push out of the shaft
#: the formed catheter is drawn back until its tip is this far short of the first arch branch
#: (negative: past it), one parking after the other while the wire fails to take the vessel
SIMMONS_PARK_MM = (18.0, 8.0, -2.0, -12.0)
SIMMONS_PARKING_S = 60.0  # simulated time the wire is given at one parking before the catheter is moved on
SIMMONS_MOUTH_MM = 40.0  # from a parking, the wire must be seen this far into the selected vessel; then on to the neck
SIMMONS_WIRE_IN_MM = 100.0  # between parkings the wire waits this far inside the catheter (out of its loop)
#: from the formed catheter the wire is aimed only with its tip this far out (its 3-11 mm angled
#: segment out of the catheter's tip), and its pull-backs stop there: turned inside the catheter
#: the wire's tip did not move, and each push went where the catheter pointed
SIMMONS_TIP_OUT_MM = 12.0
SIMMONS_PARK_PUSH_MM = 80.0  # a formed catheter whose tip is past its parking is pushed at most this far to bring it back
SIMMONS_FALLBACK = "simmons2_5F"  # the reverse-curve catheter changed for a vertebral that will not take the vessel
SELECT_TRIES_BEFORE_CHANGE = 3  # selections (hook, then probes) tried with the vertebral catheter before the change


@dataclass
class NavigateResult:
    """What ``iratrainer navigate`` writes to ``result.json``."""

    arch: str
    target: str
    seed: int
    stack: list[str]
    reached: bool
    tip_branch: str
    sim_time_s: float
    path_length_mm: float
    max_wall_force_n: float
    junctions: int
    attempts: int
    outcome: str
    events: dict[str, int] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)

    def write(self, out_dir: Path) -> Path:
        """Write ``result.json`` under ``out_dir`` (created); returns its path."""
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "result.json"
        path.write_text(json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return path


class _Route:
    """The roadmap: the route's centreline, its projections on both planes (mm at the isocentre)."""

    def __init__(self, tree: VesselTree, start: str, target: str, planes: list[CArmPlane]) -> None:
        if target != start and target in tree.ancestors(start):
            # a vessel upstream of the access (the aorta from the groin): climb it to its start
            pts, rad, lab = tree.path_polyline(start, tree.root, with_labels=True)
            if target == tree.root:  # on down the root vessel (the ascending aorta) to its start (the valve)
                b = tree[target]
                pts = np.vstack([pts, b.points_mm[-2::-1]])
                rad = np.concatenate([rad, b.radii_mm[-2::-1]])
                lab = np.concatenate([lab, np.full(len(b.points_mm) - 1, tree.index(target))])
            last = int(np.nonzero(lab == tree.index(target))[0][-1])
            pts, rad, lab = pts[:last + 1], rad[:last + 1], lab[:last + 1]
        else:
            pts, rad, lab = tree.path_polyline(start, target, with_labels=True)
        self.start = start
        self.pts, self.rad, self.lab = pts, rad, lab
        self.arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
        self.planes = planes
        self.proj = [self._px(p, pts) for p in planes]
        self.target_arc = float(self.arc[np.argmax(lab == tree.index(target))])
        route = {tree.labels[i] for i in np.unique(lab)}
        #: the vessels the route goes through
        self.labels = frozenset(route)
        junctions = []
        for label in tree.labels:
            b = tree[label]
            if b.parent is None or b.parent not in route or label in route:
                continue
            j = tree[b.parent].points_mm[b.parent_index]
            k = int(np.argmin(np.linalg.norm(pts - j, axis=1)))
            if np.linalg.norm(pts[k] - j) < 1.0 and b.radii_mm[0] > 0.6:
                junctions.append(float(self.arc[k]))
        #: where a side branch leaves the route (not where the route changes vessel), mm
        self.side_branches = sorted(set(round(s, 1) for s in junctions))
        # where the route leaves a vessel for one of its branches, the alternative is to go on
        # along that vessel
        change = np.nonzero(np.diff(lab) != 0)[0]
        self.hooks: set[float] = set()
        for k in change:
            sj = float(self.arc[k])
            junctions.append(sj)
            # a branch that leaves backwards (more than 75° from the way in) is caught on a
            # pull-back, past its ostium; where the vessel ends in the branches (the carotid
            # terminus) there is no past: the tip is aimed at the branch instead
            nxt = tree.branches[int(lab[k + 1])]
            parent = tree[nxt.parent] if nxt.parent is not None else None
            if parent is None or nxt.parent_index >= len(parent.points_mm) - 1:
                continue
            if math.degrees(math.acos(np.clip(self.direction(sj - 10.0, sj) @ self.direction(sj, sj + 10.0),
                                              -1.0, 1.0))) > 75.0:
                self.hooks.add(round(sj, 1))
        self.junctions = sorted(set(round(s, 1) for s in junctions))

    def direction(self, s0: float, s1: float) -> np.ndarray:
        """Unit 3-D direction of the route from arc ``s0`` to arc ``s1`` (for the junction geometry)."""
        p = [np.array([np.interp(v, self.arc, self.pts[:, i]) for i in range(3)]) for v in (s0, s1)]
        d = p[1] - p[0]
        return d / max(float(np.linalg.norm(d)), 1e-9)

    @staticmethod
    def _px(plane: CArmPlane, x: np.ndarray) -> np.ndarray:
        uv, _ = plane.project(x)
        return uv * plane.pixel_mm / plane.magnification

    def point(self, s: float) -> list[np.ndarray]:
        """The route point at arc ``s`` projected on each plane (mm)."""
        i = int(np.clip(np.searchsorted(self.arc, s), 0, len(self.arc) - 1))
        return [pr[i] for pr in self.proj]

    def locate(self, tip_px: list[np.ndarray], s_hint: float, window: tuple[float, float]) -> tuple[float, float]:
        """(arc, excess): where the projected tip is along the route near ``s_hint``.

        A route point's distance to the tip is the larger of its two projected distances,
        measured in units of the lumen radius there (a tip against the wall of a wide arch
        is in the arch, not in the narrow branch that projects nearer). ``excess`` is the
        distance beyond the roadmap's edge (1.2 radii + 2 mm) at the chosen point, > 0 off it.
        """
        lo = np.searchsorted(self.arc, s_hint + window[0])
        hi = max(np.searchsorted(self.arc, s_hint + window[1]), lo + 1)
        d = np.max([np.linalg.norm(pr[lo:hi] - t, axis=1) for pr, t in zip(self.proj, tip_px, strict=True)], axis=0)
        edge = 1.2 * self.rad[lo:hi] + 2.0
        k = int(np.argmin(d / edge))
        return float(self.arc[lo + k]), float(d[k] - edge[k])

    def radius(self, s: float) -> float:
        """Lumen radius of the route at arc ``s`` (mm)."""
        return float(np.interp(s, self.arc, self.rad))

    def depth(self, s_junction: float) -> float:
        """How far into a branch the projected tip must be seen before it counts as in (mm):
        the parent's radius plus 10 mm (a tip against the wall of a wide parent can project
        that far along the first millimetres of the branch)."""
        return self.radius(s_junction - 5.0) + 10.0


class _Operator:
    """The scripted hands and eyes (see the module docstring)."""

    def __init__(self, stack: DeviceStack, route: _Route, offsets_mm: list[float], rng: np.random.Generator,
                 max_sim_s: float, max_attempts: int) -> None:
        self.st = stack
        self.route = route
        self.rng = rng  # the operator's own draws (the starting hub angles, the turns when starting again)
        self.max_sim_s = max_sim_s
        self.max_attempts = max_attempts
        self.set_lead(len(stack.rods) - 1, offsets_mm)
        self.s = 0.0
        self.s, _ = self.where((0.0, float(route.arc[-1])))  # the first look: where on the roadmap
        self.attempts = 0
        self.path_length = 0.0
        self.max_force = 0.0
        self.log: list[str] = []
        self._last_tip = self.lead.x[0].copy()
        self._retries: dict[int, int] = {}  # retries so far per 10 mm of the route (see _skip)
        self.successor: _Operator | None = None  # the operator this one handed over to (another roadmap)
        self.restarts = 0  # stretches started again (see _start_again)
        self.select_tries: int | None = None  # selections at a branch before run() returns "not_selected"
        #: (catheter index, mm): the lead is aimed only with its tip at least this far out of that
        #: catheter (pushed out first), and its pull-backs stop there (a wire out of a formed Simmons)
        self.keep_out: tuple[int, float] | None = None

    def set_lead(self, index: int, offsets_mm: list[float | None]) -> None:
        """Steer device ``index``; device k's hub keeps ``inserted_k = inserted_lead + offsets_mm[k]``
        (``None``: that hub is held still)."""
        self.lead_index = index
        self.lead = self.st.rods[index]
        self.offsets = list(offsets_mm)
        self._last_tip = self.lead.x[0].copy()

    def settle_offsets(self, max_pulses: int = 100, follow_mm_s: float = 40.0) -> None:
        """Move the other hubs to their offsets with the lead held (e.g. after a change of lead),
        at up to ``follow_mm_s``."""
        for _ in range(max_pulses):
            lead_ins = self.lead.inserted_mm
            if all(abs(r.inserted_mm - (lead_ins + o)) < 1.0 for k, (r, o) in enumerate(zip(self.st.rods, self.offsets,
                                                                                         strict=True))
                   if k != self.lead_index and o is not None):
                return
            self.pulse(follow_mm_s=follow_mm_s)

    def _out_mm(self) -> float:
        """How far (mm) the lead's tip is out of the ``keep_out`` catheter's, from the hub readings
        (+inf when no catheter is kept)."""
        if self.keep_out is None:
            return math.inf
        return self.lead.inserted_mm - self.st.rods[self.keep_out[0]].inserted_mm

    def _kept_in(self) -> bool:
        """True when a pull-back must stop: the lead's tip is back to ``keep_out``'s distance out
        of its catheter."""
        return self.keep_out is not None and self._out_mm() <= self.keep_out[1] + 0.5

    # ---------------------------------------------------------------- eyes
    def see(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Projected tip position and tip direction (unit, image plane) on each plane."""
        x = self.lead.x
        tips = [self.route._px(p, x[:1])[0] for p in self.route.planes]
        back = [self.route._px(p, x[3:4])[0] for p in self.route.planes]
        dirs = []
        for t, b in zip(tips, back, strict=True):
            d = t - b
            n = float(np.linalg.norm(d))
            dirs.append(d / n if n > 1e-6 else d)
        return tips, dirs

    def where(self, window: tuple[float, float] = (-30.0, 40.0)) -> tuple[float, bool]:
        """Update the route position; True when the tip is off the roadmap."""
        tips, _ = self.see()
        s, excess = self.route.locate(tips, self.s, window)
        self.s = s
        return s, excess > 0.0

    # ---------------------------------------------------------------- hands
    def pulse(self, advance_mm_s: float = 0.0, rotate_deg_s: float = 0.0, steps: int = PULSE_STEPS,
              follow_mm_s: float = 40.0) -> None:
        """Hold the hub inputs for one pulse; the other devices keep their offsets from the lead
        (moved at up to ``follow_mm_s`` to get there)."""
        if self.st.time_s > self.max_sim_s:
            raise TimeoutError
        lead_ins = self.lead.inserted_mm + advance_mm_s * steps * self.st.dt
        cmds: dict[str, HubCommand] = {}
        for k, (rod, off) in enumerate(zip(self.st.rods, self.offsets, strict=True)):
            if k == self.lead_index:
                continue
            if off is None:
                cmds[rod.name] = HubCommand(0.0, 0.0)
                continue
            v = float(np.clip((lead_ins + off - rod.inserted_mm) / (steps * self.st.dt), -follow_mm_s, follow_mm_s))
            cmds[rod.name] = HubCommand(v, 0.0)
        cmds[self.lead.name] = HubCommand(advance_mm_s, rotate_deg_s)
        top = self.max_force
        for _ in range(steps):
            self.st.step(cmds)
            for f in self.st.wall_force:  # every step's, not only what the pulse ends on
                if len(f):
                    top = max(top, float(f.max()))
        self.max_force = top
        tip = self.lead.x[0]
        self.path_length += float(np.linalg.norm(tip - self._last_tip))
        self._last_tip = tip.copy()

    def aim(self, s_junction: float, skip: int = 0, along: bool = False) -> None:
        """Turn the lead's hub over a full turn in 45° steps, then back to the best step (+ ``skip`` quarters).

        The score: the projected tip direction against the way to the route ``AIM_AHEAD_MM``
        past the junction (or, ``along``, against the route's own direction there), on both
        planes, each weighted by how long that way looks in projection (up to 10 mm).
        """
        if self.keep_out is not None and self._out_mm() < self.keep_out[1]:
            # the angled tip out of the catheter first: turned inside it, it does not move
            self.advance_by(self.keep_out[1] - self._out_mm(), 10.0)
            self.where((-20.0, 40.0))
        ahead = self.route.point(min(s_junction + AIM_AHEAD_MM, self.route.arc[-1]))
        start = self.route.point(s_junction)
        n_steps = int(round(360.0 / AIM_STEP_DEG))
        rate = AIM_STEP_DEG / (2 * PULSE_STEPS * self.st.dt)  # 450°/s: two pulses per step
        settle = max(1, int(round(AIM_SETTLE_S / (PULSE_STEPS * self.st.dt))))
        scores = []
        for _ in range(n_steps):
            self.pulse(0.0, rate)
            self.pulse(0.0, rate)
            for _ in range(settle):
                self.pulse()
            tips, dirs = self.see()
            score = 0.0
            for t, d, a, a0 in zip(tips, dirs, ahead, start, strict=True):
                want = a - a0 if along else a - t
                L = float(np.linalg.norm(want))
                if L > 1e-6:
                    score += float(d @ want) / L * min(L, 10.0)  # foreshortened views count less
            scores.append(score)
        best = (int(np.argmax(scores)) + 1 + 2 * skip) % n_steps  # steps turned when the best was seen
        for _ in range(2 * best):
            self.pulse(0.0, rate)
        for _ in range(settle):
            self.pulse()
        where = "along the route at" if along else "before the junction at"
        self.log.append(f"t={self.st.time_s:.2f}s aim {where} {s_junction:.0f} mm: "
                        f"{best * AIM_STEP_DEG:.0f}° (scores {', '.join(f'{v:.1f}' for v in scores)})")

    def advance_by(self, mm: float, speed: float = 20.0, rotate_deg_s: float = 0.0) -> None:
        """Push (or pull, ``mm`` < 0) the lead's hub by ``mm`` of inserted length, turning it at
        ``rotate_deg_s`` meanwhile (spinning a wire keeps its tip from catching on the wall)."""
        target = self.lead.inserted_mm + mm
        sign = 1.0 if mm > 0 else -1.0
        for _ in range(int(abs(mm) / (speed * PULSE_STEPS * self.st.dt)) + 40):
            if (target - self.lead.inserted_mm) * sign <= 0.5:
                break
            self.pulse(sign * speed, rotate_deg_s)

    def hook(self, j: float, skip: int) -> bool:
        """Catch a branch that leaves backwards with the lead alone (no shaped catheter): go past
        it, point the tip along it, pull back slowly until the tip drops in, then push it up
        spinning.
        Returns True when the tip is seen going up the branch after the push."""
        s, _ = self.where()
        self.advance_by(max(j - s, 0.0) + HOOK_PAST_MM)
        self.aim(j, skip=skip, along=True)
        win = (j - self.s - 25.0, j - self.s + 30.0)
        s0 = self.s
        for _ in range(int(40.0 / (5.0 * PULSE_STEPS * self.st.dt))):
            self.pulse(-5.0)
            tips, _ = self.see()
            s2, excess = self.route.locate(tips, s0, win)
            if s2 > j + 3.0 and excess < 0.0:
                self.s = s2
                self.log.append(f"t={self.st.time_s:.2f}s the tip dropped into the branch at {j:.0f} mm on the "
                                "pull-back")
                depth = self.route.depth(j)
                # pushed up spinning: pushed straight, the tip caught on the wall a few
                # millimetres in and the wire fed behind it bowed back out into the arch
                self.advance_by(depth + 5.0, 10.0, HOOK_SPIN_DEG_S)
                s3, off = self.where((-20.0, depth + 20.0))
                return s3 > j + depth and not off
            if s2 < j - 12.0 or self._kept_in():
                break
        return False

    def probe(self, j: float, attempt: int, wire: int, catheter: int) -> bool:
        """Select a branch that leaves backwards with the wire, as operators do in the arch.

        The shaped catheter is parked just short of the ostium (``PROBE_BACK_MM``) and turned
        to point at the branch, the wire waiting inside it; the wire's angled tip is put out
        ``PROBE_TIP_OUT_MM`` and turned to point at the branch (as :meth:`aim`), then pushed out
        ``PROBE_OUT_MM``; if the projected wire tip is not seen up the branch on both planes,
        it is pulled back to its tip, aimed again with a quarter turn more, and pushed again
        (``PROBE_TRIES`` at most). Once in,
        the wire goes ``PROBE_DEEPER_MM`` further, then catheter and wire are advanced
        together ``PROBE_FOLLOW_MM``: a catheter pushed alone over the wire backs out of the
        ostium and drags the wire with it along the arch; advanced with the wire it follows
        it up the branch. Returns True when the wire is seen up the branch at the end.
        """
        wire_rod, cath = self.st.rods[wire], self.st.rods[catheter]
        back = PROBE_BACK_MM[attempt % len(PROBE_BACK_MM)]
        self._park(j, back, wire, catheter)
        self.aim(j)
        held: list[float | None] = [None] * len(self.offsets)
        self.set_lead(wire, held)
        depth = self.route.depth(j)
        # the wire's angled tip just out of the catheter, turned to point at the branch
        self.advance_by(cath.inserted_mm - wire_rod.inserted_mm + PROBE_TIP_OUT_MM, 10.0)
        for k in range(PROBE_TRIES):
            self.aim(j, skip=k)
            out = cath.inserted_mm - wire_rod.inserted_mm + PROBE_OUT_MM
            self.advance_by(out, 10.0)
            tips, _ = self.see()
            s2, excess = self.route.locate(tips, j, (-10.0, depth + 60.0))
            if s2 > j + depth and excess < 0.0:
                self.s = s2
                self.log.append(f"t={self.st.time_s:.2f}s the wire went up the branch at {j:.0f} mm "
                                f"(probe {k + 1}, catheter {back:.0f} mm short of it)")
                self.advance_by(PROBE_DEEPER_MM, 10.0)
                return self._follow(j, wire, catheter)
            self.advance_by(-(wire_rod.inserted_mm - cath.inserted_mm - PROBE_TIP_OUT_MM), 20.0)
        self.advance_by(-(wire_rod.inserted_mm - cath.inserted_mm + PROBE_WIRE_IN_MM), 20.0)
        self.log.append(f"t={self.st.time_s:.2f}s no probe of the wire found the branch at {j:.0f} mm")
        return False

    def _park(self, j: float, back_mm: float, wire: int, catheter: int) -> None:
        """The catheter leads to ``back_mm`` short of the junction at ``j``, the wire
        ``PROBE_WIRE_IN_MM`` inside it."""
        offsets = [0.0] * len(self.offsets)
        offsets[wire] = -PROBE_WIRE_IN_MM
        self.set_lead(catheter, offsets)
        self.settle_offsets()
        self.s, _ = self.where((-60.0, 60.0))
        self.advance_by(j - back_mm - self.s, 10.0)

    def _follow(self, j: float, wire: int, catheter: int) -> bool:
        """The wire is up the branch at ``j``: catheter and wire advance together ``PROBE_FOLLOW_MM``
        (a catheter pushed alone over the wire backs out of the ostium and drags the wire with
        it along the arch). Returns True when the wire is seen up the branch at the end."""
        wire_rod, cath = self.st.rods[wire], self.st.rods[catheter]
        follow: list[float | None] = [None] * len(self.offsets)
        follow[catheter] = cath.inserted_mm - wire_rod.inserted_mm
        self.set_lead(wire, follow)
        self.advance_by(PROBE_FOLLOW_MM, 10.0)
        depth = self.route.depth(j)
        s3, off = self.where((j - self.s - 20.0, depth + 120.0))
        ok = s3 > j + depth and not off
        self.log.append(f"t={self.st.time_s:.2f}s catheter and wire {'went' if ok else 'did not go'} up "
                        "the branch together")
        return ok

    def _arc_of(self, index: int, s_hint: float, window: tuple[float, float]) -> tuple[float, float]:
        """(arc, excess) of device ``index``'s projected tip along the roadmap (see :meth:`_Route.locate`)."""
        x = self.st.rods[index].x[:1]
        return self.route.locate([self.route._px(p, x)[0] for p in self.route.planes], s_hint, window)

    def _catheter_over_wire(self, j: float, wire: int, catheter: int) -> bool:
        """Bring the catheter up a branch over a wire hooked into it from afar.

        The wire goes ``WIRE_HOOK_DEEPER_MM`` further up (spinning), for purchase; its slack in the
        parent is then taken up (pulled back until its tip is seen to come back 3 mm); then
        the catheter is advanced over the still wire until its own tip is seen up the branch.
        Pushed together at once, catheter and wire prolapsed into the ascending aorta with the
        wire's loop, and the wire came out of the branch. Returns True when both tips are
        seen up the branch.
        """
        depth = self.route.depth(j)
        win = (-40.0, depth + 150.0)
        self.advance_by(WIRE_HOOK_DEEPER_MM, 10.0, HOOK_SPIN_DEG_S)
        s_top, _ = self._arc_of(wire, j, win)
        for _ in range(int(60.0 / (5.0 * PULSE_STEPS * self.st.dt))):
            self.pulse(-5.0)
            s_w, _ = self._arc_of(wire, j, win)
            if s_w < s_top - 3.0:
                break
        held: list[float | None] = [None] * len(self.offsets)
        self.set_lead(catheter, held)
        cath = self.st.rods[catheter]
        start = cath.inserted_mm
        ok = False
        while cath.inserted_mm - start < WIRE_HOOK_BACK_MM[-1] + depth + 30.0:
            self.pulse(10.0)
            s_c, _ = self._arc_of(catheter, j, win)
            s_w, off_w = self._arc_of(wire, j, win)
            if s_w < j + 3.0 or off_w > 0.0:
                break  # the wire came out of the branch
            if s_c > j + depth:
                ok = True
                break
        self.set_lead(wire, held)
        self.s, _ = self.where((j - self.s - 20.0, depth + 150.0))
        self.log.append(f"t={self.st.time_s:.2f}s the catheter {'went' if ok else 'did not go'} up the branch "
                        "over the wire")
        return ok

    def wire_hook(self, j: float, attempt: int, wire: int, catheter: int) -> bool:
        """Select a branch that leaves backwards with the wire alone, the catheter behind it for support.

        The catheter is parked ``WIRE_HOOK_BACK_MM`` short of the ostium with the wire inside it;
        the wire is then hooked (:meth:`hook`: taken past the ostium, its angled tip turned to
        point along the branch, pulled back slowly until it drops in, pushed up), and the
        catheter is brought up over it (:meth:`_catheter_over_wire`). A shaped catheter in the arch lies with its
        curve along the arch's own (its bending energy is least there), its tip pointing on
        along the arch rather than up into the ostia on the roof, and the torque that would
        turn it up is stored in the shaft until the tip whips back; the wire's short soft tip
        turns where the catheter's cannot. Returns True when the wire is seen up the branch.
        """
        wire_rod, cath = self.st.rods[wire], self.st.rods[catheter]
        back = WIRE_HOOK_BACK_MM[attempt % len(WIRE_HOOK_BACK_MM)]
        self._park(j, back, wire, catheter)
        self.set_lead(wire, [None] * len(self.offsets))
        self.s, _ = self.where((-60.0, 60.0))
        if self.hook(j, attempt):
            self.log.append(f"t={self.st.time_s:.2f}s the wire went up the branch at {j:.0f} mm on a hook "
                            f"(catheter {back:.0f} mm short of it)")
            return self._catheter_over_wire(j, wire, catheter)
        self.advance_by(-(wire_rod.inserted_mm - cath.inserted_mm + PROBE_WIRE_IN_MM), 20.0)
        self.log.append(f"t={self.st.time_s:.2f}s the wire did not catch the branch at {j:.0f} mm on a hook")
        return False

    def _puff(self, j: float, wire: int, catheter: int) -> bool:
        """A puff of contrast through the catheter just taken up the branch at ``j``: the vessel that
        fills is the one its tip is in, and the operator knows the arch vessels by their shape.

        Returns True when that vessel is on the route. Otherwise (a subclavian artery taken
        for the carotid next to it: both project along the roadmap at first) the wire is
        drawn back into the catheter, the catheter back by as much as it went in, and False is
        returned: the selection failed. The only place the operator learns a vessel's name,
        and only as a puff would show it.
        """
        filled = self.st.tip_branch(catheter)
        on_route = filled in self.route.labels
        self.log.append(f"t={self.st.time_s:.2f}s a puff of contrast through the catheter fills {filled}"
                        + ("" if on_route else ": not the vessel on the roadmap, both drawn back"))
        if not on_route:
            # out by as much as it was taken in (seen up to the branch's depth past the ostium,
            # from where the hook or the probe had parked it), the wire first into it
            offsets: list[float | None] = [None] * len(self.offsets)
            offsets[wire] = -PROBE_WIRE_IN_MM
            self.set_lead(catheter, offsets)
            self.settle_offsets()
            self.advance_by(-(self.route.depth(j) + WIRE_HOOK_BACK_MM[-1] + 10.0), 20.0)
            self.s, _ = self.where((-80.0, 20.0))
        return on_route

    def _cross_alone(self, j: float, past_mm: float = CROSS_MM) -> bool:
        """Take the microwire alone across the junction at ``j``, its catheters held, then bring
        the microcatheter up over it (the wire leads, the catheter follows, junction by junction).
        The wire is seen across when ``past_mm`` past the junction (``CROSS_MM``, or as far as the
        goal when it lies just beyond the last junction).

        The wire is pushed at 10 mm/s until its tip is seen ``past_mm`` past the junction on
        the roadmap; seen off it, or turned back, it is pulled back to where it started, aimed
        again and pushed again (``CROSS_TRIES`` in all). Pushed as one with the stack, the
        wire 25 mm out of the microcatheter met the dome of the carotid terminus, folded back
        down the ICA, and the microcatheter was pushed on into the dome. Returns True when the
        wire crossed.
        """
        offsets = list(self.offsets)
        self.set_lead(self.lead_index, [None] * len(self.offsets))
        ok = False
        for _ in range(CROSS_TRIES):
            start = self.lead.inserted_mm
            while self.lead.inserted_mm - start < LEAD_MM + past_mm + 10.0:
                self.pulse(10.0)
                s2, off = self.where((-20.0, 40.0))
                if off or self._turned_back():
                    break
                if s2 > j + past_mm:
                    ok = True
                    break
            if ok:
                break
            self.advance_by(start - self.lead.inserted_mm, 10.0)
            self.s, _ = self.where((-60.0, 20.0))
            self.aim(j, skip=self._skip(j))
        # the catheter just behind the wire comes up to its place; the ones behind it stay where
        # they are and follow from there (a 6F intermediate catheter pushed on into the siphon
        # behind the microcatheter was pressed through its wall with hundreds of newtons)
        lead_ins = self.lead.inserted_mm
        self.set_lead(self.lead_index, [o if (k == self.lead_index - 1 or o is None) else r.inserted_mm - lead_ins
                                        for k, (r, o) in enumerate(zip(self.st.rods, offsets, strict=True))])
        self.settle_offsets(follow_mm_s=10.0)
        self.s, _ = self.where((-60.0, 40.0))
        self.log.append(f"t={self.st.time_s:.2f}s the wire alone {'crossed' if ok else 'did not cross'} the junction "
                        f"at {j:.0f} mm; the catheters brought up behind it")
        return ok

    def _turned_back(self) -> bool:
        """True when the lead's projected tip points back down the roadmap on both planes
        (a wire folded back on itself, as it does against the dome of the carotid terminus)."""
        _, dirs = self.see()
        ahead = self.route.point(self.s + 5.0)
        back = self.route.point(max(self.s - 5.0, 0.0))
        votes = 0
        for d, a, b in zip(dirs, ahead, back, strict=True):
            v = a - b
            n = float(np.linalg.norm(v))
            if n > 1.0 and float(d @ v) / n < -0.3:
                votes += 1
        return votes == len(dirs)

    def _back_into_catheter(self) -> None:
        """The lead (a wire out of its catheter, seen turned back) pulled back alone into its
        catheter to ``FOLD_OUT_MM`` out of it. The catheters behind it then go back to their
        usual distance from it (its offsets) where they are now closer: a catheter left 10 mm
        behind the wire points the wire where its own tip points (into the external carotid
        artery: seven pushes in a row, type I seed 1), and leaves it no room to be steered."""
        outer = self.st.rods[self.lead_index - 1]
        lead_offsets = list(self.offsets)
        self.set_lead(self.lead_index, [None] * len(self.offsets))
        self.advance_by(-(self.lead.inserted_mm - outer.inserted_mm - FOLD_OUT_MM), 10.0)
        self.set_lead(self.lead_index, [None if o is None else min(r.inserted_mm - self.lead.inserted_mm, o)
                                        for r, o in zip(self.st.rods, lead_offsets, strict=True)])
        self.log.append(f"t={self.st.time_s:.2f}s the tip is seen turned back: the lead pulled back into its "
                        f"catheter to {FOLD_OUT_MM:.0f} mm out, the catheters behind it back to their usual distance")
        self.s, _ = self.where((-60.0, 20.0))

    def _skip(self, where_mm: float) -> int:
        """Quarter turns past the best aim for the next retry at ``where_mm`` along the route.

        Retries at one place (10 mm bins; the count is kept for the whole run) go through the
        best aim again, a quarter turn either side, then the opposite side. With one fixed
        offset the operator repeated the same stall at the carotid terminus until the time ran
        out (the same scores, the same turn, every 8 s).
        """
        key = int(where_mm // 10.0)
        n = self._retries.get(key, 0)
        self._retries[key] = n + 1
        return RETRY_SKIPS[n % len(RETRY_SKIPS)]

    def _attempt(self, tries: int, what: str) -> bool:
        """Count and log a recovery (``what`` happened); False once the tries are used up."""
        self.attempts += 1
        self.log.append(f"t={self.st.time_s:.2f}s {what} (attempt {tries})")
        return tries <= self.max_attempts

    def _start_again(self, s: float, trouble: float) -> bool:
        """The tries at one place used up: pull the lead (the others keeping their offsets) back
        on the roadmap to ``RESTART_BACK_MM`` short of the ``trouble`` (arc, mm), turn its hub by
        a random number of eighths of a turn (the operator's draw) and start that stretch again,
        its counts cleared. False once ``MAX_RESTARTS`` are used (the operator gives up)."""
        if self.restarts >= MAX_RESTARTS:
            return False
        self.restarts += 1
        back = min(s, trouble) - RESTART_BACK_MM
        self.s, _ = self.where((-60.0, 20.0))
        self._pull_back(lambda s2, off2: not off2 and s2 < back, 400)
        turn = int(self.rng.integers(1, 8))
        rate = AIM_STEP_DEG / (2 * PULSE_STEPS * self.st.dt)
        for _ in range(2 * turn):
            self.pulse(0.0, rate)
        self._retries.clear()
        self.log.append(f"t={self.st.time_s:.2f}s the tries near {trouble:.0f} mm used up: pulled back to "
                        f"{self.s:.0f} mm, the hub turned {turn * AIM_STEP_DEG:.0f}°, that stretch started again "
                        f"(restart {self.restarts} of {MAX_RESTARTS})")
        return True

    def _pull_back(self, done: Callable[[float, bool], bool], max_pulses: int) -> None:
        """Pull the lead back at 20 mm/s, pulse by pulse, until ``done(arc, off the roadmap)``, or
        until its tip is back to ``keep_out``'s distance out of its catheter."""
        for _ in range(max_pulses):
            self.pulse(-20.0)
            s2, off2 = self.where((-60.0, 10.0))
            if done(s2, off2) or self._kept_in():
                break

    def run(self, goal: float, catheter: int | None = None) -> str:
        """Navigate the lead to route arc ``goal``; returns "reached" or "gave_up" (TimeoutError past the limit),
        or "not_selected" when ``select_tries`` is set and that many selections of a branch failed.

        ``catheter``: the index of a shaped catheter that takes the lead for the hook at a
        branch leaving backwards (the wire waits inside it, 10 mm behind its curve), then hands
        back to the wire.
        """
        route = self.route

        def ahead() -> list[float]:
            """The junctions still to pass on the way to the goal, from where the tip is seen."""
            return [x for x in route.junctions if self.s - 5.0 < x < goal]

        pending = ahead()
        tries = _Tries()
        pushed: list[float] = []  # where the tip was seen over the last pulses of pushing
        while True:
            s, off = self.where()
            if off:
                pushed.clear()
                j = max([x for x in route.junctions if x < s + 5.0], default=None)
                if not self._attempt(tries.add(s), f"off the roadmap near {s:.0f} mm: pull back"):
                    if not self._start_again(s, j if j is not None else s):
                        return "gave_up"
                    pending = ahead()
                    tries.reset()
                    continue
                if j is not None and j in route.hooks:
                    # past a branch that had to be selected (hooked or probed): pull back only
                    # to the roadmap, not out of the branch; lost below its ostium, select it again
                    self._pull_back(lambda _s2, off2: not off2, 200)
                    if self.s < j + 3.0:
                        pending = sorted({x for x in pending if x > j} | {j})
                    else:
                        self.aim(self.s, skip=self._skip(self.s), along=True)
                    continue
                # pull back until the tip is on the roadmap short of the junction
                self._pull_back(lambda s2, off2, j=j: not off2 and (j is None or s2 < j - LEAD_MM), 200)
                if j is not None:
                    self.aim(j, skip=self._skip(j))
                    pending = [x for x in pending if x > j]
                continue
            if s >= goal:
                return "reached"
            nxt = pending[0] if pending else None
            if nxt is not None and s >= nxt - LEAD_MM:
                pushed.clear()
                if nxt in route.hooks and catheter is not None:
                    wire, wire_offsets = self.lead_index, list(self.offsets)
                    for k in range(self.max_attempts):
                        if ((self.wire_hook(nxt, k, wire, catheter) or self.probe(nxt, k, wire, catheter))
                                and self._puff(nxt, wire, catheter)):
                            break
                        self.attempts += 1
                        self.log.append(f"t={self.st.time_s:.2f}s the branch at {nxt:.0f} mm not selected "
                                        f"(attempt {k + 1})")
                        if self.select_tries is not None and k + 1 >= self.select_tries:
                            self.set_lead(wire, wire_offsets)
                            return "not_selected"
                    else:
                        self.set_lead(wire, wire_offsets)
                        if not self._start_again(s, nxt):
                            return "gave_up"
                        pending = ahead()
                        tries.reset()
                        continue
                    # the wire leads again, the catheter follows where it now is, or closer: taken
                    # back to its usual distance it left the wire without support in the ostium
                    gap = self.st.rods[catheter].inserted_mm - self.st.rods[wire].inserted_mm
                    held = wire_offsets[catheter]
                    wire_offsets[catheter] = gap if held is None else max(held, gap)
                    self.set_lead(wire, wire_offsets)
                    self.s, _ = self.where((-40.0, 40.0))
                elif nxt in route.hooks:  # no shaped catheter: the lead itself is hooked on a pull-back
                    for k in range(self.max_attempts):
                        if self.hook(nxt, k):
                            break
                        self.attempts += 1
                        self.log.append(f"t={self.st.time_s:.2f}s the branch at {nxt:.0f} mm not caught "
                                        f"(attempt {k + 1})")
                        s_now, _ = self.where((-60.0, 40.0))
                        self.advance_by(min(nxt - LEAD_MM - s_now, 0.0))
                    else:
                        if not self._start_again(s, nxt):
                            return "gave_up"
                        pending = ahead()
                        tries.reset()
                        continue
                else:
                    self.aim(nxt)
                    if self.lead.spec.kind == "microwire" and self.lead_index > 0:
                        # the goal just past the last junction: the wire alone goes on to it (the
                        # stack pushed on behind a wire 10 mm into the M1 sent the microcatheter
                        # into the ophthalmic artery and the wire back out of the M1, type II)
                        last = goal - nxt <= CROSS_GOAL_MM and len(pending) == 1  # pending: junctions short of the goal
                        self._cross_alone(nxt, max(CROSS_MM, goal - nxt + 0.5) if last else CROSS_MM)
                pending.pop(0)
                continue
            near = nxt is not None and s > nxt - LEAD_MM - 15.0
            self.pulse(10.0 if near else 30.0)
            pushed.append(s)
            if len(pushed) > STALL_PULSES:
                pushed.pop(0)
                if max(pushed) - pushed[0] < STALL_MM:
                    # the hub goes in, the tip does not: the device bows or loops somewhere
                    # behind it; pull back, turn, push again
                    if not self._attempt(tries.add(s), f"the tip does not follow the hub near {s:.0f} mm: pull back"):
                        if not self._start_again(s, s):
                            return "gave_up"
                        pending = ahead()
                        tries.reset()
                        pushed.clear()
                        continue
                    if self.lead_index > 0 and self._turned_back():
                        # a wire turned back on itself out of its catheter: pushing only
                        # feeds the loop; the wire alone back into its catheter, then aim again
                        self._back_into_catheter()
                    else:
                        self._pull_back(lambda s2, _off, s=s: s2 < s - STALL_BACK_MM, 100)
                    passed = [x for x in route.junctions if x < s + 5.0]
                    if passed and s - passed[-1] < AIM_AHEAD_MM:
                        self.aim(passed[-1], skip=self._skip(passed[-1]))
                    else:
                        self.aim(s, skip=self._skip(s), along=True)
                    pushed.clear()
                    continue
            tries.passed(s)


class _Tries:
    """The operator's recoveries at one place (see :meth:`_Operator.run`): counted from the
    first, and over once the tip is seen ``TRIES_RESET_MM`` past the farthest of them (the
    tries there succeeded). Before, the count was cleared at every pulse once the last
    junction before the goal was passed, and a wire that went into the external carotid
    artery time after time was pulled back without end."""

    def __init__(self) -> None:
        self.n = 0
        self.at = -math.inf  # route arc (mm) of the farthest recovery counted

    def add(self, s: float) -> int:
        """One more recovery, the tip seen at route arc ``s`` (mm); returns the count."""
        self.n += 1
        self.at = s if self.n == 1 else max(self.at, s)
        return self.n

    def reset(self) -> None:
        """A new stretch (started again): nothing counted."""
        self.n = 0

    def passed(self, s: float) -> None:
        """The tip seen at ``s``: the count is cleared once it is well past the recoveries."""
        if self.n and s > self.at + TRIES_RESET_MM:
            self.n = 0


def _reverse_curve(spec: DeviceSpec) -> bool:
    """True for a reverse-curve catheter (Simmons): one of its curves turns more than ``REVERSE_CURVE_DEG``."""
    return any(abs(c.angle_deg) > REVERSE_CURVE_DEG for c in spec.curves)


def _hand_over(old: _Operator, new: _Operator) -> _Operator:
    """The same hands and eyes on another roadmap: carry the log and the tallies over."""
    new.log, new.attempts = old.log, old.attempts
    new.path_length, new.max_force = old.path_length, old.max_force
    new.restarts = old.restarts
    old.successor = new
    return new


def _latest(op: _Operator) -> _Operator:
    """The operator at the end of ``op``'s chain of hand-overs (whose tallies are the run's)."""
    while op.successor is not None:
        op = op.successor
    return op


def _change_catheter(op: _Operator, tree: VesselTree, spec: DeviceSpec, rng: np.random.Generator) -> _Operator:
    """Change the diagnostic catheter for ``spec`` over the wire, where it lies (an exchange,
    not simulated: the new catheter and the same wire are laid along the longer of the two
    devices' shapes, at the same inserted lengths, their hubs at drawn angles), then lead with
    the wire 30 mm out of the new catheter. Returns the operator on the new stack, its
    tallies and log carried over (the old stack's events are the caller's to keep)."""
    st = op.st
    cath, wire = st.rods[0], st.rods[-1]
    longer = wire if wire.inserted_mm > cath.inserted_mm else cath
    st2 = DeviceStack(tree, [spec, wire.spec], inserted_mm=[cath.inserted_mm, wire.inserted_mm],
                      path_mm=longer.x[:-1][::-1])
    st2.time_s = st.time_s
    for rod in st2.rods:
        rod.hub_angle = float(rng.uniform(0.0, 2.0 * math.pi))
        rod.theta[:] = rod.hub_angle
    new = _hand_over(op, _Operator(st2, op.route, [cath.inserted_mm - wire.inserted_mm, 0.0], rng, op.max_sim_s,
                                   op.max_attempts))
    new.log.append(f"t={st.time_s:.2f}s {cath.name} changed for {spec.name} over the wire "
                   f"({op.select_tries} selections of the branch failed)")
    new.set_lead(1, [-30.0, 0.0])
    new.settle_offsets()
    new.s, _ = new.where((-80.0, 40.0))
    return new


def _form_simmons(op: _Operator, tree: VesselTree, target: str, rng: np.random.Generator, max_sim_s: float,
                  max_attempts: int) -> tuple[_Operator, str]:
    """Form a reverse-curve (Simmons) catheter against the aortic valve and draw it back, tip
    first, to just short of the arch vessels (steps 1-3 of :func:`_simmons`).

    Returns the operator on the roadmap from the valve to ``target``, the catheter leading
    (the wire waiting inside it), and "reached" when the loop was seen formed and the tip
    parked; otherwise the operator on the way up and "gave_up" (TimeoutError past the time
    limit).
    """
    st = op.st
    planes = op.route.planes
    cath, wire = st.rods[0], st.rods[-1]
    up = _hand_over(op, _Operator(st, _Route(tree, op.route.start, tree.root, planes), list(op.offsets), rng,
                                  max_sim_s, max_attempts))
    outcome = up.run(float(up.route.arc[-1]) - SIMMONS_VALVE_MM)
    if outcome != "reached":
        return up, outcome
    up.log.append(f"t={st.time_s:.2f}s {cath.name} in the ascending aorta: the wire drawn back "
                  f"{SIMMONS_WIRE_BACK_MM:.0f} mm, the catheter pushed on against the valve to form its loop")
    up.set_lead(len(st.rods) - 1, [None] * len(st.rods))
    up.advance_by(-SIMMONS_WIRE_BACK_MM, 20.0)
    gap = wire.inserted_mm - cath.inserted_mm
    up.set_lead(0, [0.0, gap])
    start = cath.inserted_mm
    seen_at = None
    while cath.inserted_mm - start < SIMMONS_PUSH_MAX_MM:
        if cath.inserted_mm >= cath.max_inserted_mm - 0.5:
            # fully inserted (the hub at the sheath): the push goes no further
            up.log.append(f"t={st.time_s:.2f}s {cath.name} fully inserted: the push stops there")
            break
        up.pulse(10.0)
        up.where((-40.0, 10.0))
        if seen_at is None and up._turned_back():
            seen_at = cath.inserted_mm
            up.log.append(f"t={st.time_s:.2f}s the catheter's tip is seen turned back after "
                          f"{seen_at - start:.0f} mm of push: its loop formed")
        if seen_at is not None and cath.inserted_mm - seen_at >= SIMMONS_SEAT_MM:
            break
    if seen_at is None:
        up.log.append(f"t={st.time_s:.2f}s the loop did not form in {SIMMONS_PUSH_MAX_MM:.0f} mm of push")
        return up, "gave_up"
    # from the valve: the formed catheter's tip, and the wire out of it, go with the flow
    route = _Route(tree, tree.root, target, planes)
    asc = _hand_over(up, _Operator(st, route, [0.0, gap], rng, max_sim_s, max_attempts))
    asc.set_lead(0, [0.0, gap])
    asc.s = 0.0
    asc.where((0.0, 120.0))
    asc.advance_by(-SIMMONS_UNLOAD_MM, 5.0)
    _park_simmons(asc, SIMMONS_PARK_MM[0])
    return asc, "reached"


def _park_simmons(asc: _Operator, short_mm: float) -> None:
    """Draw the formed catheter (the lead) back at 5 mm/s, tip first, until its tip is seen
    ``short_mm`` short of the first side branch on the roadmap from the valve.

    A tip already past that point (drawing a formed catheter back takes its tip up the arch;
    in type II seed 2 the unloading alone left it 12 mm past the first arch branch) is
    brought back first: the catheter pushed at 5 mm/s, its loop going down into the
    ascending aorta, ``SIMMONS_PARK_PUSH_MM`` at most and never past the catheter's full
    length (that catheter was fully inserted: unbounded, the push ran on to the time limit)."""
    route, st = asc.route, asc.st
    first = min(route.side_branches, default=float(route.arc[-1]))
    s_c, _ = asc.where((-20.0, 40.0))
    if s_c > first - short_mm + 3.0:
        start = asc.lead.inserted_mm
        for _ in range(int(SIMMONS_PARK_PUSH_MM / (5.0 * PULSE_STEPS * st.dt)) + 1):
            # (the hub at the sheath, or slipping in the fingers, the push goes no further)
            if asc.lead.inserted_mm - start >= SIMMONS_PARK_PUSH_MM or \
                    asc.lead.inserted_mm >= asc.lead.max_inserted_mm - 0.5:
                break
            asc.pulse(5.0)
            s_c, _ = asc.where((-40.0, 20.0))
            if s_c <= first - short_mm:
                break
        asc.log.append(f"t={st.time_s:.2f}s the formed catheter's tip past its parking: pushed "
                       f"{asc.lead.inserted_mm - start:.0f} mm, its tip seen at {asc.s:.0f} mm from the valve")
    for _ in range(int(400.0 / (5.0 * PULSE_STEPS * st.dt))):
        s_c, _ = asc.where((-20.0, 40.0))
        if s_c >= first - short_mm:
            break
        asc.pulse(-5.0)
    asc.log.append(f"t={st.time_s:.2f}s the formed catheter drawn back, its tip seen at {asc.s:.0f} mm from the "
                   f"valve ({first - asc.s:.0f} mm short of the first arch branch)")


def _simmons(op: _Operator, tree: VesselTree, target: str, goal_name: str, goal_past_mm: float,
             rng: np.random.Generator, max_sim_s: float, max_attempts: int) -> tuple[_Operator, str]:
    """Select an arch vessel that leaves backwards with a reverse-curve (Simmons) catheter.

    The catheter is formed against the aortic valve, then its wire goes on from its tip, to
    which the arch vessels now lie ahead:

    1. The wire-led stack goes round the arch and down the ascending aorta to
       ``SIMMONS_VALVE_MM`` above the valve (the roadmap of an arch run, root included).
    2. The wire is drawn back ``SIMMONS_WIRE_BACK_MM``, out of the catheter's curves, and the
       catheter is pushed on: its tip meets the valve, the shaft prolapses and the loop forms,
       its tip turned back up the ascending aorta. The operator sees the tip turned back on
       both planes and pushes ``SIMMONS_SEAT_MM`` more.
    3. The catheter is drawn back ``SIMMONS_UNLOAD_MM`` (the push out of its shaft), then on,
       tip first, until its tip is seen the first of ``SIMMONS_PARK_MM`` short of the first
       arch branch.
    4. The wire goes out of its tip, the catheter held: from here the arch vessels leave
       forwards, and are aimed at like any junction, the wire's tip first put
       ``SIMMONS_TIP_OUT_MM`` out of the catheter, its pull-backs stopping there (the
       operator's ``keep_out``). Seen ``SIMMONS_MOUTH_MM`` into the
       vessel the route takes within ``SIMMONS_PARKING_S``, it goes on to ``goal_past_mm``
       into ``goal_name``; otherwise it comes back ``SIMMONS_WIRE_IN_MM`` inside the
       catheter, the catheter is drawn on to the next parking, and the wire tries again.

    Returns the operator on the roadmap from the valve to ``target`` and its outcome
    ("reached", "gave_up"; TimeoutError past the time limit).
    """
    asc, outcome = _form_simmons(op, tree, target, rng, max_sim_s, max_attempts)
    if outcome != "reached":
        return asc, outcome
    st, route = asc.st, asc.route
    cath, wire = st.rods[0], st.rods[-1]
    goal = float(route.arc[np.argmax(route.lab == tree.index(goal_name))]) + goal_past_mm
    # the vessel that leaves the arch: where the route changes vessel past the first side branch
    first = min(route.side_branches, default=float(route.arc[-1]))
    leave = min((j for j in route.junctions if j > first and j not in route.side_branches), default=goal)
    for k, short in enumerate(SIMMONS_PARK_MM):
        if k:
            # the wire back inside, out of the loop; the catheter drawn on to the next parking
            asc.set_lead(len(st.rods) - 1, [None, 0.0])
            asc.advance_by(cath.inserted_mm - wire.inserted_mm - SIMMONS_WIRE_IN_MM, 40.0)
            asc.set_lead(0, [0.0, wire.inserted_mm - cath.inserted_mm])
            asc.s = 0.0
            asc.where((0.0, float(route.arc[-1])))
            _park_simmons(asc, short)
        # the wire out of the held catheter, then on: first into the vessel the route takes, within
        # SIMMONS_PARKING_S of simulated time
        asc.set_lead(len(st.rods) - 1, [None, 0.0])
        asc.advance_by(cath.inserted_mm - wire.inserted_mm - 5.0, 40.0)
        asc.s = 0.0
        asc.where((0.0, float(route.arc[-1])))
        asc.keep_out = (0, SIMMONS_TIP_OUT_MM)
        deadline = asc.max_sim_s
        asc.max_sim_s = min(deadline, st.time_s + SIMMONS_PARKING_S)
        try:
            outcome = asc.run(min(leave + SIMMONS_MOUTH_MM, goal))
        except TimeoutError:
            if st.time_s > deadline:
                raise
            outcome = "gave_up"
        finally:
            asc.max_sim_s = deadline
            asc.keep_out = None
        if outcome == "reached":
            asc.log.append(f"t={st.time_s:.2f}s the wire is seen {SIMMONS_MOUTH_MM:.0f} mm up the vessel it "
                           f"selected from the formed catheter (parking {k + 1})")
            return asc, asc.run(goal)
        asc.log.append(f"t={st.time_s:.2f}s the wire has not taken the vessel from parking {k + 1} "
                       f"({SIMMONS_PARKING_S:.0f} s at most)")
    return asc, outcome


def navigate(arch: str = "I", target: str = "L_MCA_M1", seed: int = 0, max_sim_s: float = 600.0,
             max_attempts: int = 6, progress: Callable[[str], None] | None = None) -> NavigateResult:
    """Navigate the rod physics from the right femoral sheath to ``target`` (see the module docstring).

    Two stacks, as in a thrombectomy: a 5F diagnostic catheter (vertebral for arch types I
    and II, Simmons 2 for type III) over a 0.035 in angled wire through the arch and up the
    neck to the internal carotid artery; then, over an exchange (not simulated: the new
    devices are laid along the diagnostic catheter's shape), a 6F intermediate catheter, a
    0.021 in microcatheter and a shaped 0.014 in microwire, the microwire leading to the target.

    Args:
        arch: aortic arch type of the atlas, "I", "II" or "III".
        target: label of the target vessel in the atlas (downstream of the left or right ICA
            for the intracranial stack; any vessel otherwise).
        seed: seeds the operator's draws: the starting hub angles, the turns when starting again (the
            anatomy is the reference atlas).
        max_sim_s: simulated time limit, s.
        max_attempts: tries at one junction before the operator gives up.
    """
    tree = build_atlas(AtlasParams(arch=arch))
    if target not in tree:
        raise KeyError(target)
    cat = default_catalogue()
    rng = np.random.default_rng(seed)
    route = _Route(tree, "R_CFA", target, [frontal(), lateral()])
    neck = next((lab for lab in ("L_ICA", "R_ICA") if lab in tree.path("R_CFA", target)[:-1]), None)
    specs = [cat[ARCH_CATHETER[arch]], cat["guidewire_035_angled"]]
    st = DeviceStack(tree, specs, inserted_mm=[120.0, 150.0])
    for rod in st.rods:
        rod.hub_angle = float(rng.uniform(0.0, 2.0 * math.pi))
        rod.theta[:] = rod.hub_angle
    op = _Operator(st, route, [-30.0, 0.0], rng, max_sim_s, max_attempts)
    stacks = [[s.name for s in specs]]
    outcome = "reached"
    path_length, max_force = 0.0, 0.0
    events: list[object] = []
    try:
        neck_goal = np.inf
        if neck is not None:
            neck_goal = float(route.arc[np.argmax(route.lab == tree.index(neck))]) + NECK_MM
        final = min(route.target_arc + route.depth(route.target_arc), float(route.arc[-1]) - 2.0)
        simmons = _reverse_curve(specs[0]) and bool(route.hooks) and neck is not None
        if simmons:
            op, outcome = _simmons(op, tree, target, str(neck), NECK_MM, rng, max_sim_s, max_attempts)
        else:
            if neck is not None and route.hooks:
                # a vertebral catheter that will not take the arch vessel is changed for a Simmons
                op.select_tries = SELECT_TRIES_BEFORE_CHANGE
            outcome = op.run(min(neck_goal, final), catheter=0)
            if outcome == "not_selected":
                events.extend(st.events)
                op = _change_catheter(op, tree, cat[SIMMONS_FALLBACK], rng)
                st = op.st
                stacks.append([r.name for r in st.rods])
                simmons = True
                op, outcome = _simmons(op, tree, target, str(neck), NECK_MM, rng, max_sim_s, max_attempts)
        if outcome == "reached" and neck is not None:
            cath = st.rods[0]
            if simmons:
                # exchange over the wire: the Simmons out, the wire's redundant loop in the
                # ascending aorta drawn out as the wire is held, the new devices in along the
                # shortest way up to the wire (the roadmap's centreline), 20 mm short of its tip
                k0 = int(np.argmax(route.lab == tree.index(neck)))
                k1 = int(np.argmax(op.route.lab == tree.index(neck)))
                s_wire = op.s - float(op.route.arc[k1]) + float(route.arc[k0])
                ins = s_wire - 20.0
                way = route.pts[:int(np.searchsorted(route.arc, ins)) + 2]
                op.s = ins
            else:
                # exchange: the diagnostic catheter's shape is the way in for the distal stack
                way = cath.x[:-1][::-1]
                ins = cath.inserted_mm
            path_length, max_force = op.path_length, op.max_force
            events.extend(st.events)
            op.log.append(f"t={st.time_s:.2f}s exchange over a wire: {cath.name} and the 0.035 wire out, "
                          + ", ".join(n for n, _ in DISTAL_STACK)
                          + (" in along the roadmap up to the wire" if simmons else " in along the catheter's shape"))
            distal = [cat[n] for n, _ in DISTAL_STACK]
            distal[-1] = distal[-1].with_tip_shape(45.0, length_mm=4.0, start_mm=2.0)
            st2 = DeviceStack(tree, distal, inserted_mm=[ins + o for _, o in DISTAL_STACK], path_mm=way)
            st2.time_s = st.time_s
            for rod in st2.rods:
                rod.hub_angle = float(rng.uniform(0.0, 2.0 * math.pi))
                rod.theta[:] = rod.hub_angle
            log = op.log
            s_now = op.s
            op = _Operator(st2, route, [o for _, o in DISTAL_STACK], rng, max_sim_s, max_attempts)
            op.log, op.s = log, s_now
            st = st2
            stacks.append([s.name for s in distal])
            outcome = op.run(final)
    except TimeoutError:
        outcome = "time_limit"
    except PhysicsError as exc:
        outcome = "diverged"
        op.log.append(str(exc))
    op = _latest(op)
    tip_branch = st.tip_branch()
    downstream = target not in tree.ancestors("R_CFA")  # else the subtree holds the way in itself
    reached = outcome == "reached" and (tip_branch == target or (downstream and tip_branch in tree.subtree(target)))
    counts: dict[str, int] = {}
    for e in events + list(st.events):
        counts[e.kind] = counts.get(e.kind, 0) + 1  # type: ignore[attr-defined]
    if progress:
        progress(f"{outcome}: tip in {tip_branch} after {st.time_s:.1f} s")
    return NavigateResult(arch, target, seed, [n for group in stacks for n in group], bool(reached), tip_branch,
                          round(st.time_s, 3), round(path_length + op.path_length, 1),
                          round(max(max_force, op.max_force), 4), len(route.junctions), op.attempts, outcome,
                          counts, op.log + st.log[-20:])
