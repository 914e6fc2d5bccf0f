"""The procedure's device model: a coaxial stack riding one rail through the vessel tree.

Real time for a whole thrombectomy (tens of minutes of simulated time, many times faster
than real time for the autopilots and the tests) needs a reduced model beside the rod
physics of :mod:`iratrainer.physics.stack`. Here every device of the stack lies on a
common **rail**: the centerline route from the access sheath, one point every 0.5 mm. A
device is its inserted length along the rail (its tip), its rotation at the hub, and its
catalogue entry. The rail ends at the most distal tip; when the leading tip crosses a
junction, the branch it enters is decided by **its tip shape and the torque**:

* the tip points along ``cos β · t + sin β · n(φ)``, where t is the direction of travel,
  β the angle of the distal curve (45° for an angled wire, 0 for a straight catheter) and
  n(φ) the bend plane turned by the hub rotation φ (zero toward the patient's front);
* every way on from the junction (straight on, a side branch, the parent or a sibling
  when climbing against the flow) has an opening direction (the chord to 8 mm along it);
  at a division the tip takes the way it points into best; along a vessel a bent tip
  catches a side branch when its bend faces the ostium (within 35°), otherwise it goes
  straight on;
* a way is open to a device only if the device fits (vessel diameter ≥ 1.25 × the outer
  diameter for catheters, ≥ the diameter for wires and microcatheters) and if it turns no
  more than the device can reach: 110° (wires 90°) + the total angle of its shaped curves
  within 100 mm of the tip (a vertebral catheter enters type I and most type II arch
  vessels; a type III arch needs the Simmons reverse curve). A reverse-curve catheter
  works only after it has been **formed** (its tip taken into the ascending aorta), and
  engages a vessel **on pull-back**, as in practice.

Pushing a tip that cannot go on (a dead end, a vessel too small, a clot a catheter cannot
cross) builds axial force at the hub (to the 3 N a hand can push); the procedure turns
that into wall-force exposure and complications. Retracting a device behind the others
shortens the rail, so the next advance decides the junctions again.

Hub rotation transmits 1:1 here (the rod model shows the lag and whip).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from iratrainer.anatomy.tree import VesselTree
from iratrainer.physics.catalogue import DeviceSpec

__all__ = ["RailStack", "TrackDevice", "Way", "TrackError", "STEP_MM"]

STEP_MM = 0.5
CONTINUE_BONUS = 0.25
CATCH_COS = math.cos(math.radians(35.0))
HUB_FORCE_MAX_N = 3.0
OPENING_MM = 8.0


class TrackError(ValueError):
    """An impossible stack operation (a device that does not fit, removing a device with another inside)."""


@dataclass
class TrackDevice:
    """One device of the stack: catalogue entry, inserted length (mm beyond the sheath), hub angle."""

    spec: DeviceSpec
    inserted_mm: float = 0.0
    phi_deg: float = 0.0
    formed: bool = False  # reverse-curve catheters: loop formed
    push_n: float = 0.0  # axial force at the hub when blocked, N

    @property
    def name(self) -> str:
        """Catalogue name."""
        return self.spec.name

    @property
    def bend_deg(self) -> float:
        """Angle of the distal-most curve (what points the tip), degrees."""
        return abs(self.spec.curves[0].angle_deg) if self.spec.curves else 0.0

    @property
    def reach_deg(self) -> float:
        """Largest turn into a side branch the tip can make, degrees."""
        total = sum(abs(c.angle_deg) for c in self.spec.curves if c.start_mm < 100.0)
        if self.reverse_curve and not self.formed:
            total = self.bend_deg
        return min(180.0, (90.0 if self.is_wire else 110.0) + total)

    @property
    def reverse_curve(self) -> bool:
        """A catheter whose shape turns back on itself (Simmons)."""
        return any(abs(c.angle_deg) >= 120.0 for c in self.spec.curves)

    @property
    def is_wire(self) -> bool:
        """Wires and stent retrievers (no lumen)."""
        return not self.spec.has_lumen


@dataclass(frozen=True)
class Way:
    """One way on from a junction: branch, arc where it starts, direction (+1 with the flow)."""

    label: str
    s: float
    direction: int
    opening: np.ndarray = field(compare=False)
    straight_on: bool = False


class RailStack:
    """The rail and the devices on it.

    Args:
        tree: the vessels.
        access_label: the branch holding the sheath; devices enter at its distal end and
            climb against the flow (femoral, radial).
        antegrade: enter at the branch's start and go with the flow instead (a segmented
            head model, whose root is the cervical artery the guide sits in).
        blocked_ranges: (label, s0, s1) stretches a catheter cannot pass (occlusive clots);
            wires and microcatheters over them can.
    """

    def __init__(self, tree: VesselTree, access_label: str, antegrade: bool = False) -> None:
        self.tree = tree
        self.access_label = access_label
        self.devices: list[TrackDevice] = []  # outermost first
        b = tree[access_label]
        self._lab: list[int] = [tree.index(access_label)]
        self._s: list[float] = [0.0 if antegrade else b.length_mm]
        self._dir: list[int] = [1 if antegrade else -1]
        self._pts: list[np.ndarray] = [(b.points_mm[0] if antegrade else b.points_mm[-1]).copy()]
        self.clot_ranges: list[tuple[str, float, float]] = []
        self.visited: list[str] = [access_label]  # branches the rail entered, in order (events)
        self._junctions = self._build_junctions()

    # ------------------------------------------------------------------ topology
    def _build_junctions(self) -> dict[str, list[tuple[float, str]]]:
        t = self.tree
        out: dict[str, list[tuple[float, str]]] = {lab: [] for lab in t.labels}
        for b in t.branches[1:]:
            out[b.parent].append((float(t[b.parent].arc_mm[b.parent_index]), b.label))  # type: ignore[index]
        for lab in out:
            out[lab].sort()
        return out

    def _opening(self, label: str, s: float, direction: int) -> np.ndarray:
        t = self.tree
        p0 = t.point_at(label, s)
        p1 = t.point_at(label, s + direction * OPENING_MM)
        d = p1 - p0
        n = float(np.linalg.norm(d))
        return d / n if n > 1e-9 else np.zeros(3)

    def ways(self, label: str, s: float, direction: int) -> list[Way]:
        """Every way on from point ``s`` of ``label`` for a device moving in ``direction``."""
        t = self.tree
        length = t.length_mm(label)
        out: list[Way] = []
        at_start = s <= 1e-9 and direction < 0
        at_end = s >= length - 1e-9 and direction > 0
        if not (at_start or at_end):
            out.append(Way(label, s, direction, self._opening(label, s, direction), True))
        for s_j, child in self._junctions[label]:
            if abs(s_j - s) < 1e-6:
                out.append(Way(child, 0.0, 1, self._opening(child, 0.0, 1)))
        if at_start and t[label].parent is not None:
            par = t[label].parent
            sp = float(t[par].arc_mm[t[label].parent_index])  # type: ignore[index]
            if sp > 1e-9:
                out.append(Way(par, sp, -1, self._opening(par, sp, -1), True))
            if sp < t.length_mm(par) - 1e-9:  # type: ignore[arg-type]
                out.append(Way(par, sp, 1, self._opening(par, sp, 1)))  # type: ignore[arg-type]
            for s_j, sib in self._junctions[par]:  # type: ignore[index]
                if sib != label and abs(s_j - sp) < 1e-6:
                    out.append(Way(sib, 0.0, 1, self._opening(sib, 0.0, 1)))
        return out

    # ------------------------------------------------------------------ rail
    @property
    def rail_length_mm(self) -> float:
        """Length of the rail beyond the sheath, mm."""
        return (len(self._pts) - 1) * STEP_MM

    @property
    def rail_points(self) -> np.ndarray:
        """(K, 3) rail points from the sheath on, mm."""
        return np.array(self._pts)

    def label_at(self, arc_mm: float) -> str:
        """Branch at ``arc_mm`` along the rail."""
        k = int(np.clip(round(arc_mm / STEP_MM), 0, len(self._lab) - 1))
        return self.tree.labels[self._lab[k]]

    def branch_arc_at(self, arc_mm: float) -> tuple[str, float, int]:
        """(branch, arc along it, direction) at ``arc_mm`` along the rail."""
        k = int(np.clip(round(arc_mm / STEP_MM), 0, len(self._lab) - 1))
        return self.tree.labels[self._lab[k]], self._s[k], self._dir[k]

    def point_at(self, arc_mm: float) -> np.ndarray:
        """Rail point at ``arc_mm`` (interpolated), mm."""
        x = arc_mm / STEP_MM
        k = int(np.clip(math.floor(x), 0, len(self._pts) - 1))
        if k >= len(self._pts) - 1:
            return self._pts[-1].copy()
        f = x - k
        return (1 - f) * self._pts[k] + f * self._pts[k + 1]

    def direction_at(self, arc_mm: float) -> np.ndarray:
        """Unit direction of travel at ``arc_mm``."""
        a = self.point_at(max(arc_mm - 3.0, 0.0))
        b = self.point_at(arc_mm)
        if np.linalg.norm(b - a) < 1e-9:
            lab, s, d = self.branch_arc_at(arc_mm)
            return self._opening(lab, s, d)
        v = b - a
        return v / np.linalg.norm(v)

    def _trim(self, arc_mm: float) -> None:
        k = max(1, int(math.ceil(arc_mm / STEP_MM - 1e-9)) + 1)
        if k < len(self._pts):
            del self._pts[k:], self._lab[k:], self._s[k:], self._dir[k:]

    def tip_vector(self, dev: TrackDevice, travel: np.ndarray | None = None) -> np.ndarray:
        """Where the tip of ``dev`` points (unit vector), from its curve and hub angle."""
        t, n = self._frame(dev, travel)
        beta = math.radians(dev.bend_deg)
        return math.cos(beta) * t + math.sin(beta) * n

    def _frame(self, dev: TrackDevice, travel: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(direction of travel, the side the tip bends to) at the tip of ``dev``."""
        t = self.direction_at(dev.inserted_mm) if travel is None else travel
        ref = np.array([0.0, -1.0, 0.0])  # the patient's front (LPS: -y is anterior)
        if abs(float(ref @ t)) > 0.95:
            ref = np.array([1.0, 0.0, 0.0])
        n0 = ref - (ref @ t) * t
        n0 /= np.linalg.norm(n0)
        b0 = np.cross(t, n0)
        phi = math.radians(dev.phi_deg)
        return t, math.cos(phi) * n0 + math.sin(phi) * b0

    def _fits(self, dev: TrackDevice, label: str, s: float, direction: int) -> bool:
        t = self.tree
        probe = np.clip(s + direction * np.array([2.0, 5.0, 8.0]), 0.0, t.length_mm(label))
        dia = 2.0 * float(np.min(t.radius_at(label, probe)))
        need = dev.spec.outer_diameter_mm * (1.0 if dev.is_wire or dev.spec.kind == "microcatheter" else 1.25)
        return dia >= need

    def choose(self, dev: TrackDevice, ways: list[Way], travel: np.ndarray) -> Way | None:
        """The way the tip of ``dev`` takes (None: nowhere to go).

        At a division (no straight on) the tip takes the way it points into best. Along a
        vessel, a side branch is caught when the tip is bent (≥ 10°) and turned toward the
        ostium (the bend side within 35° of the branch's side), or when the branch leaves
        at a shallow angle and the tip points into it better than straight on.
        """
        t, n = self._frame(dev, travel)
        beta = math.radians(dev.bend_deg)
        v = math.cos(beta) * t + math.sin(beta) * n
        feasible = []
        for w in ways:
            turn = math.degrees(math.acos(float(np.clip(travel @ w.opening, -1.0, 1.0))))
            if not w.straight_on and turn > dev.reach_deg:
                continue
            if not self._fits(dev, w.label, w.s, w.direction):
                continue
            feasible.append(w)
        if not feasible:
            return None
        straight = [w for w in feasible if w.straight_on and w.label == ways[0].label]
        side = [w for w in feasible if w not in straight]
        if not any(w.straight_on for w in ways):  # a division: the best-pointed way
            return max(feasible, key=lambda w: float(v @ w.opening))
        caught: list[tuple[float, Way]] = []
        for w in side:
            o_perp = w.opening - (w.opening @ t) * t
            norm = float(np.linalg.norm(o_perp))
            side_score = float(n @ o_perp) / norm if norm > 1e-9 else -1.0
            if dev.bend_deg >= 10.0 and side_score >= CATCH_COS:
                caught.append((side_score, w))
            elif straight and float(v @ w.opening) > float(v @ straight[0].opening) + CONTINUE_BONUS:
                caught.append((float(v @ w.opening), w))
        if caught:
            return max(caught, key=lambda c: c[0])[1]
        if straight:
            return straight[0]
        return max(feasible, key=lambda w: float(v @ w.opening))

    def _extend(self, dev: TrackDevice, target_mm: float) -> float:
        """Grow the rail under the leading ``dev`` toward ``target_mm``; returns the reachable length."""
        t = self.tree
        while self.rail_length_mm < target_mm - 1e-9:
            lab, s, d = t.labels[self._lab[-1]], self._s[-1], self._dir[-1]
            length = t.length_mm(lab)
            s_next = s + d * STEP_MM
            crossed = [sj for sj, _ in self._junctions[lab] if (s < sj <= s_next if d > 0 else s_next <= sj < s)]
            boundary = (d < 0 and s_next <= 0.0) or (d > 0 and s_next >= length)
            if crossed or boundary:
                sj = (min(crossed) if d > 0 else max(crossed)) if crossed else (0.0 if d < 0 else length)
                travel = self.direction_at(self.rail_length_mm)
                way = self.choose(dev, self.ways(lab, sj, d), travel)
                if way is None:
                    return self.rail_length_mm
                if not way.straight_on or way.label != lab:
                    self.visited.append(way.label)
                # step the remainder along the chosen way
                rem = STEP_MM - abs(sj - s)
                lab2, s2, d2 = way.label, way.s + way.direction * rem, way.direction
                s2 = float(np.clip(s2, 0.0, t.length_mm(lab2)))
            else:
                lab2, s2, d2 = lab, s_next, d
            if not self._passable(dev, lab2, s2):
                return self.rail_length_mm
            self._lab.append(t.index(lab2))
            self._s.append(s2)
            self._dir.append(d2)
            self._pts.append(t.point_at(lab2, s2))
        return target_mm

    def _passable(self, dev: TrackDevice, label: str, s: float) -> bool:
        """Catheters stop at an occlusive clot's face; wires and microcatheters go through."""
        if dev.is_wire or dev.spec.kind == "microcatheter":
            return True
        return not any(lab == label and s0 <= s <= s1 for lab, s0, s1 in self.clot_ranges)

    # ------------------------------------------------------------------ devices
    def insert(self, spec: DeviceSpec) -> TrackDevice:
        """Put ``spec`` in as the innermost device (it must fit the lumen around it)."""
        if self.devices:
            outer = self.devices[-1]
            if not outer.spec.has_lumen:
                raise TrackError(f"{spec.name} cannot go in: the innermost device ({outer.name}) has no lumen")
            if spec.outer_diameter_mm > outer.spec.inner_diameter_mm + 1e-6:
                raise TrackError(f"{spec.name} ({spec.outer_diameter_mm:.2f} mm) does not fit the lumen of "
                                 f"{outer.name} ({outer.spec.inner_diameter_mm:.2f} mm)")
        if any(d.name == spec.name for d in self.devices):
            raise TrackError(f"{spec.name} is already in")
        dev = TrackDevice(spec)
        self.devices.append(dev)
        return dev

    def remove(self, name: str) -> None:
        """Take ``name`` out (only when it is withdrawn to the sheath and nothing is inside it)."""
        k = self.index(name)
        dev = self.devices[k]
        if dev.inserted_mm > 1.0:
            raise TrackError(f"{name} must be withdrawn to the sheath before it comes out ({dev.inserted_mm:.0f} mm in)")
        inner = [d.name for d in self.devices[k + 1:]]
        if inner:
            raise TrackError(f"{name} still holds {', '.join(inner)}")
        del self.devices[k]

    def index(self, name: str) -> int:
        """Position of ``name`` in the stack (0 = outermost)."""
        for k, d in enumerate(self.devices):
            if d.name == name:
                return k
        raise TrackError(f"{name} is not in the patient")

    def move(self, name: str, advance_mm: float, rotate_deg: float = 0.0) -> float:
        """Advance (or retract, < 0) and rotate one device; returns how far it actually moved, mm.

        Devices slide freely inside each other; whichever tip is most distal leads and
        steers the rail on. ``push_n`` is set when the tip could not go as far as asked.
        """
        dev = self.devices[self.index(name)]
        dev.phi_deg = (dev.phi_deg + rotate_deg) % 360.0
        if dev.reverse_curve and not dev.formed and self._tip_in(dev, "AO_ASC", 10.0):
            dev.formed = True
        old = dev.inserted_mm
        want = max(0.0, old + advance_mm)
        dev.push_n = 0.0
        if want > self.rail_length_mm - 1e-9:  # this device leads: it steers the rail on
            reach = self._extend(dev, want)
            if reach < want - 1e-6:
                dev.push_n = min(HUB_FORCE_MAX_N, (want - reach) * 0.6)
                want = reach
        if advance_mm < 0 and dev.reverse_curve and dev.formed and self._leads(dev):
            if self._engage_on_pullback(dev, want):
                self._trim(max(d.inserted_mm for d in self.devices))
                return dev.inserted_mm - old
        dev.inserted_mm = want
        self._trim(max(d.inserted_mm for d in self.devices))
        return dev.inserted_mm - old

    def _leads(self, dev: TrackDevice) -> bool:
        return all(d.inserted_mm <= dev.inserted_mm + 1e-9 for d in self.devices)

    def _tip_in(self, dev: TrackDevice, label: str, beyond_mm: float) -> bool:
        lab, s, d = self.branch_arc_at(dev.inserted_mm)
        return lab == label and dev.inserted_mm > 0 and (self.tree.length_mm(label) - s) > beyond_mm

    def hook_vector(self, dev: TrackDevice) -> np.ndarray:
        """Where a formed reverse curve's tip points: back along the shaft, 60° toward n(φ)."""
        t = self.direction_at(dev.inserted_mm)
        v = self.tip_vector(dev)
        n = v - (v @ t) * t
        nn = float(np.linalg.norm(n))
        n = n / nn if nn > 1e-9 else np.zeros(3)
        return -0.5 * t + math.sqrt(3.0) / 2.0 * n

    def _engage_on_pullback(self, dev: TrackDevice, new_arc: float) -> bool:
        """A formed reverse curve pulled back past a vessel origin it hooks into engages it."""
        k_new = int(round(new_arc / STEP_MM))
        k_old = int(round(dev.inserted_mm / STEP_MM))
        hook = self.hook_vector(dev)
        for k in range(k_old - 1, k_new - 1, -1):
            if k < 0 or k + 1 >= len(self._lab) or self._lab[k] != self._lab[k + 1]:
                continue
            lab = self.tree.labels[self._lab[k]]
            lo, hi = sorted((self._s[k], self._s[k + 1]))
            for sj, child in self._junctions[lab]:
                if not (lo <= sj <= hi) or child in self.tree.ancestors(lab):
                    continue
                opening = self._opening(child, 0.0, 1)
                if float(hook @ opening) > 0.7 and self._fits(dev, child, 0.0, 1):
                    t = self.tree
                    self._trim(k * STEP_MM)
                    self._lab.append(t.index(child))
                    self._s.append(0.0)
                    self._dir.append(1)
                    self._pts.append(t.point_at(child, 0.0))
                    for _ in range(6):  # the tip drops 3 mm into the origin
                        s2 = self._s[-1] + STEP_MM
                        self._lab.append(t.index(child))
                        self._s.append(s2)
                        self._dir.append(1)
                        self._pts.append(t.point_at(child, s2))
                    self.visited.append(child)
                    for d in self.devices:
                        d.inserted_mm = min(d.inserted_mm, self.rail_length_mm)
                    dev.inserted_mm = self.rail_length_mm
                    return True
        return False

    def tip_label(self, name: str) -> str:
        """Branch holding the tip of ``name``."""
        return self.label_at(self.devices[self.index(name)].inserted_mm)

    def shape(self, name: str) -> np.ndarray:
        """(N, 3) points of ``name`` from the sheath to its tip, mm."""
        dev = self.devices[self.index(name)]
        k = int(math.floor(dev.inserted_mm / STEP_MM))
        pts = self._pts[: k + 1]
        tip = self.point_at(dev.inserted_mm)
        if len(pts) == 0:
            return tip[None, :]
        return np.vstack([np.array(pts), tip[None, :]])
