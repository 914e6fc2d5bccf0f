"""Devices in the patient: a coaxial stack of elastic rods driven at their hubs.

Each device is a chain of nodes from the tip (node 0, material coordinate ``σ = 0``) to
the access point, spaced ``h`` along the device; the two last nodes are kinematic: one
at the access point (the sheath) and one ``h`` outside it along the sheath's axis, so the
device enters along the sheath. Advancing the hub lengthens the inserted part: the edge
at the access point grows, pushing the device in, and a new node is created there once
it exceeds ``1.2 h`` (retraction removes nodes). Rotating the hub turns the material
frame at the access point; the twist travels along the device (torsion stiffness GJ),
held back by wall friction (μ · wall force · radius per node), so the tip lags and then
whips when the stored twist releases. A shaped tip bends in its material frame, so the
torque turns the tip's bend and selects vessels.

Per step (``dt``, default 1 ms): hub inputs are clamped and applied; the lumen is queried
for every node (one batched call); each chain is solved directly (stretch, bending with
the rest shape, wall contact: :mod:`iratrainer.physics.chain`); inner devices are held
inside the lumen of the device around them (coaxial links, two-way); torsion is solved
with Coulomb stick-slip; wall forces and safety events are derived.

Divergence (NaN, a node far outside every lumen) raises :class:`PhysicsError`.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

import numba as nb
import numpy as np

from iratrainer import libm
from iratrainer.anatomy.tree import VesselTree
from iratrainer.errors import IratrainerError
from iratrainer.physics.catalogue import DeviceSpec
from iratrainer.physics.chain import ROWS_PER_NODE, solve_chain
from iratrainer.physics.primal import solve_chain_primal
from iratrainer.physics.solver import solve as solve_links

__all__ = ["PhysicsError", "StackError", "HubCommand", "Rod", "DeviceStack", "SafetyEvent", "SafetyThresholds"]

MAX_ADVANCE_MM_S = 60.0
HUB_FORCE_MAX_N = 3.0  # the most a hand pushes or pulls a device through the valve before it slips
MAX_ROTATE_DEG_S = 720.0
KG = 1e-3  # 1 kg in N·s²/mm


class PhysicsError(IratrainerError):
    """The device simulation diverged (NaN or a node far outside the vessels); reset the procedure."""


class StackError(IratrainerError):
    """An impossible device stack (an inner device larger than the outer lumen, unknown device)."""


#: How far the wall gives at the rim of an ostium (mm). The lumen is a union of tubes, so
#: where a branch leaves its parent the wall has a sharp edge, and each node's wall is the
#: one tube it is deepest in. A wire lying over such an edge, half in each tube, was held
#: there: pulled along its length with the hand's 3 N, its node at the edge pressed the side
#: of the branch's tube with 30-100 N (type II arch, the 0.035 in wire's tip in the
#: brachiocephalic trunk). A node within this distance of the joined vessel's lumen may go
#: up to this much further out of its own tube, as over an edge rounded off by this much,
#: and passes into the other tube. By default the rounding is taken once per step, from the
#: start-of-step query; with :attr:`DeviceStack.rim_in_solve` (primal solver only) at every
#: iteration of the solve, from where the node then is.
CREST_MM = 1.0
CREST_LIMIT_MM = 3.0  # nodes deeper than this in their own vessel are not near a rim


def rim_allowance(related_sd_mm: np.ndarray) -> np.ndarray:
    """How far (mm) the wall gives for nodes at ``related_sd_mm`` from the lumen of the vessel
    joined to theirs (:meth:`~iratrainer.anatomy.lumen.LumenIndex.related_depth`): all of
    ``CREST_MM`` within ``CREST_MM`` of it, none beyond twice that, linear between."""
    sd = np.ascontiguousarray(related_sd_mm, dtype=np.float64)
    return _rim_allowance_kernel(sd.ravel(), CREST_MM).reshape(sd.shape)


@nb.njit(cache=True, error_model="numpy")
def _rim_allowance_kernel(sd, crest):  # pragma: no cover - numba
    """:func:`rim_allowance` element by element (one pass, no temporaries; the per-step hot path)."""
    out = np.empty_like(sd)
    for k in range(sd.shape[0]):
        v = 2.0 - sd[k] / crest
        if v != v:  # NaN stays NaN, as np.clip
            out[k] = v
        else:
            out[k] = crest * min(max(v, 0.0), 1.0)
    return out


def outside_rounded_mm(tree: VesselTree, points_mm: np.ndarray) -> np.ndarray:
    """Signed distance (mm, > 0 outside) of each point to the lumen with its ostia rounded off
    (:data:`CREST_MM`): the union of tubes' own distance, less the wall's give at a rim."""
    q = tree.query(points_mm)
    related = tree.lumen_index.related_depth(points_mm, q.segment, q.signed_distance_mm, CREST_LIMIT_MM)
    return q.signed_distance_mm - rim_allowance(related)


HANDLE_MM = 50.0  # length of a device outside the sheath at full insertion: the hub and the hand (mm)
MAX_TRAVEL_MM = 2.0  # no node travels farther in one step's solve (2 m/s): a snap unfolds over steps


@dataclass(frozen=True)
class HubCommand:
    """What the hand does at one hub: advance (mm/s, < 0 retracts) and rotate (deg/s)."""

    advance_mm_s: float = 0.0
    rotate_deg_s: float = 0.0


@dataclass(frozen=True)
class SafetyEvent:
    """A safety signal: kind, device, node position, force (N), vessel label, simulation time."""

    kind: str
    device: str
    time_s: float
    force_n: float
    branch: str
    position_mm: tuple[float, float, float]


@dataclass(frozen=True)
class SafetyThresholds:
    """Wall-force thresholds (N), scaled by the local lumen radius over 1.5 mm (an M1).

    Assumed values in the range of tip loads that bend floppy to stiff wires (1 to 20 g,
    REFERENCE.md): a small vessel tolerates less. ``dissection`` is a tip pushed end-on
    into the wall (tip within 30 degrees of the wall normal) above its threshold.
    """

    perforation_risk_n: float = 0.08
    perforation_n: float = 0.20
    dissection_n: float = 0.12


@nb.njit(cache=True, error_model="numpy")
def _torsion_kernel(theta, theta0, gj_edge, tau_bend, k_bend, tau_max, n_iter):  # pragma: no cover - numba
    """Quasi-static torsion with Coulomb stick-slip, solved directly (the last node is prescribed).

    The angles minimise ``Σ gj/2 (Δθ)² - Σ τ_bend θ + Σ k_bend/2 (θ - θ0)² + Σ τ_max |θ - θ0|``:
    elastic twist, the shaped tip's coupling torque linearised at ``theta0`` (its
    Gauss-Newton stiffness ``k_bend``, N·mm/rad: without it a soft shaped tip, whose
    twist stiffness is of the order of its bend coupling, overshoots and flips side every
    step), and Coulomb friction (a node sticks at ``theta0``
    while the elastic torque on it is below ``tau_max``, and slips against ``tau_max``
    otherwise). An active-set iteration: with the stick/slip state fixed, the optimality
    conditions are a tridiagonal system (Thomas algorithm, O(N)); nodes whose slip would
    reverse stick, stuck nodes whose torque exceeds friction slip; repeat until the state
    holds (``n_iter`` solves after the first at most). The first solve is frictionless, and
    each node then slips the way it turned in it. A node that friction cannot hold
    (``tau_max = 0``: off the wall, or inside another device) is never stuck. It used to be
    stuck whenever it turned against the first guess of a forward slip, then freed one node
    per iteration from the hub: a wire turned backwards stood still but for the 20 nodes
    next to the hub (a frictionless wire's tip turned -0.17° in 40 steps while its hub turned
    -14.4°, and followed at once the other way). The hub's rotation reaches the tip in one step along a
    frictionless wire, either way; a Gauss-Seidel sweep would move it ~one node per sweep.
    """
    n = theta.shape[0]
    if n < 2:
        return
    # the friction's sign per node: +1/-1 slipping forwards/backwards (friction against it), 0
    # free (no friction: the first, frictionless solve, and nodes friction cannot hold)
    state = np.zeros(n, np.int64)
    stuck = np.zeros(n, np.bool_)
    a = np.zeros(n)
    b = np.zeros(n)
    c = np.zeros(n)
    d = np.zeros(n)
    cp = np.zeros(n)
    dp = np.zeros(n)
    m = n - 1  # unknowns 0 .. n-2; node n-1 prescribed
    first = True
    for _ in range(max(n_iter, 1) + 1):
        for k in range(m):
            gp = gj_edge[k]
            gd = gj_edge[k - 1] if k > 0 else 0.0
            if stuck[k] or gp + gd <= 0.0:
                a[k] = 0.0
                b[k] = 1.0
                c[k] = 0.0
                d[k] = theta0[k]
                continue
            a[k] = -gd
            b[k] = gp + gd + k_bend[k]
            c[k] = -gp
            d[k] = tau_bend[k] + k_bend[k] * theta0[k] - tau_max[k] * state[k]
        d[m - 1] -= c[m - 1] * theta[m]  # the prescribed node
        c[m - 1] = 0.0
        # Thomas algorithm
        cp[0] = c[0] / b[0]
        dp[0] = d[0] / b[0]
        for k in range(1, m):
            den = b[k] - a[k] * cp[k - 1]
            cp[k] = c[k] / den
            dp[k] = (d[k] - a[k] * dp[k - 1]) / den
        theta[m - 1] = dp[m - 1]
        for k in range(m - 2, -1, -1):
            theta[k] = dp[k] - cp[k] * theta[k + 1]
        changed = False
        if first:
            # each node that friction can hold slips the way it turned without friction (or
            # sticks, if it did not turn)
            first = False
            for k in range(m):
                if tau_max[k] > 0.0 and gj_edge[k] + (gj_edge[k - 1] if k > 0 else 0.0) > 0.0:
                    dth = theta[k] - theta0[k]
                    if dth == 0.0:
                        stuck[k] = True
                    else:
                        state[k] = 1 if dth > 0.0 else -1
                    changed = True
            if not changed:
                break
            continue
        for k in range(m):
            gp = gj_edge[k]
            gd = gj_edge[k - 1] if k > 0 else 0.0
            if gp + gd <= 0.0 or tau_max[k] <= 0.0:  # a free node stays free
                continue
            if not stuck[k]:
                if (theta[k] - theta0[k]) * state[k] <= 0.0:  # the slip would reverse: stick
                    stuck[k] = True
                    changed = True
            else:
                # the torque the wall must hold at a stuck node
                r = tau_bend[k] + k_bend[k] * (theta0[k] - theta[k]) + gp * (theta[k + 1] - theta[k])
                if k > 0:
                    r += gd * (theta[k - 1] - theta[k])
                if abs(r) > tau_max[k] * (1.0 + 1e-9) + 1e-15:
                    stuck[k] = False
                    state[k] = 1 if r > 0.0 else -1
                    changed = True
        if not changed:
            break


@nb.njit(cache=True, error_model="numpy")
def _frames_kernel(x, t0, u0, theta):  # pragma: no cover - numba
    """Tangent of the incoming edge and material normal at every node (Bishop frame + twist)."""
    N = x.shape[0]
    tn = np.empty((N, 3))
    nrm = np.empty((N, 3))
    ct0, ct1, ct2 = t0[0], t0[1], t0[2]
    cu0, cu1, cu2 = u0[0], u0[1], u0[2]
    for k in range(N - 1, -1, -1):
        if k < N - 1:
            n0 = x[k, 0] - x[k + 1, 0]
            n1 = x[k, 1] - x[k + 1, 1]
            n2 = x[k, 2] - x[k + 1, 2]
            ln = np.sqrt(n0 ** 2 + n1 ** 2 + n2 ** 2)
            if ln > 1e-12:
                n0, n1, n2 = n0 / ln, n1 / ln, n2 / ln
                c = ct0 * n0 + ct1 * n1 + ct2 * n2
                vx = ct1 * n2 - ct2 * n1
                vy = ct2 * n0 - ct0 * n2
                vz = ct0 * n1 - ct1 * n0
                if vx * vx + vy * vy + vz * vz > 1e-20 and c > -0.999999:
                    # rotate the reference normal with the tangent (Rodrigues, parallel transport)
                    vu = vx * cu0 + vy * cu1 + vz * cu2
                    cx = vy * cu2 - vz * cu1
                    cy = vz * cu0 - vx * cu2
                    cz = vx * cu1 - vy * cu0
                    f = vu / (1.0 + c)
                    cu0, cu1, cu2 = cu0 * c + cx + vx * f, cu1 * c + cy + vy * f, cu2 * c + cz + vz * f
                ct0, ct1, ct2 = n0, n1, n2
        tn[k, 0], tn[k, 1], tn[k, 2] = ct0, ct1, ct2
        vx = ct1 * cu2 - ct2 * cu1
        vy = ct2 * cu0 - ct0 * cu2
        vz = ct0 * cu1 - ct1 * cu0
        cs, sn = np.cos(theta[k]), np.sin(theta[k])
        nrm[k, 0] = cs * cu0 + sn * vx
        nrm[k, 1] = cs * cu1 + sn * vy
        nrm[k, 2] = cs * cu2 + sn * vz
    return tn, nrm


@nb.njit(cache=True, error_model="numpy")
def _rest_kb(tn, nrm, mag):  # pragma: no cover - numba
    """Rest κb = 2 tan(φ/2) (t × n) at every node; zero at the tip and the outer kinematic node."""
    N = tn.shape[0]
    kb = np.empty((N, 3))
    for k in range(N):
        kb[k, 0] = mag[k] * (tn[k, 1] * nrm[k, 2] - tn[k, 2] * nrm[k, 1])
        kb[k, 1] = mag[k] * (tn[k, 2] * nrm[k, 0] - tn[k, 0] * nrm[k, 2])
        kb[k, 2] = mag[k] * (tn[k, 0] * nrm[k, 1] - tn[k, 1] * nrm[k, 0])
    kb[0, :] = 0.0
    kb[N - 1, :] = 0.0
    return kb


@nb.njit(cache=True, error_model="numpy")
def _rest_state(x, t0, u0, theta, mag):  # pragma: no cover - numba
    """Rest κb (N,3) and material normals (N,3): :func:`_frames_kernel` then :func:`_rest_kb` in one call."""
    tn, nrm = _frames_kernel(x, t0, u0, theta)
    return _rest_kb(tn, nrm, mag), nrm


@nb.njit(cache=True, error_model="numpy")
def _torsion_terms(x, t0, u0, theta, mag, alpha, wall_force, mu, radius):  # pragma: no cover - numba
    """The torsion solve's inputs from the current shape: the shaped tip's coupling torque
    (N·mm), its Gauss-Newton stiffness ``mag²/α`` (N·mm/rad, zero at both ends) and the
    Coulomb limit ``μ · wall force · radius`` per node (N·mm)."""
    kb, nrm = _rest_state(x, t0, u0, theta, mag)
    tau = _shape_torque(x, kb, mag, nrm, alpha)
    N = x.shape[0]
    k_bend = np.empty(N)
    tau_max = np.empty(N)
    for k in range(N):
        k_bend[k] = mag[k] * mag[k] / alpha[k]
        tau_max[k] = mu * wall_force[k] * radius
    k_bend[0] = 0.0
    k_bend[N - 1] = 0.0
    return tau, k_bend, tau_max


@nb.njit(cache=True, error_model="numpy")
def _rod_torsion(theta, hub_angle, x, t0, u0, mag, alpha, gj, wall_force, mu, radius):  # pragma: no cover - numba
    """One device's twist update in place on ``theta``: the shaped tip's coupling torque
    -dE/dθ = (κb - κb_rest)·(2 tan(φ/2) n) / α, its Gauss-Newton stiffness
    |d κb_rest / dθ|² / α = mag² / α (N·mm/rad) and the Coulomb limit from the wall force
    (:func:`_torsion_terms`), the sheath nodes turned to ``hub_angle`` (rad), then
    :func:`_torsion_kernel`."""
    tau, k_bend, tau_max = _torsion_terms(x, t0, u0, theta, mag, alpha, wall_force, mu, radius)
    theta0 = theta.copy()
    N = theta.shape[0]
    theta[N - 2] = hub_angle
    theta[N - 1] = hub_angle
    _torsion_kernel(theta, theta0, gj, tau, k_bend, tau_max, 20)


@nb.njit(cache=True, error_model="numpy")
def _stack_torsion(thetas, hub_angles, xs, t0s, u0s, mags, alphas, gjs, wall_forces, mus, radii):  # pragma: no cover
    """:func:`_rod_torsion` for every device of the stack in one call (tuples over the devices)."""
    for k in range(len(xs)):
        _rod_torsion(thetas[k], hub_angles[k], xs[k], t0s[k], u0s[k], mags[k], alphas[k], gjs[k], wall_forces[k],
                     mus[k], radii[k])


@nb.njit(cache=True, error_model="numpy")
def _coaxial_solve(xs, ws, ks_t, o1_t, o2_t, beta_t, js, plays, dt):  # pragma: no cover - numba
    """The coaxial links of the whole stack solved together, in place on the devices' nodes
    ``xs`` (inverse masses ``ws``): pair ``p`` holds the nodes ``ks_t[p]`` of device
    ``js[p]`` on the edges ``o1_t[p]``-``o2_t[p]`` (at ``beta_t[p]``) of device ``js[p] - 1``,
    within ``plays[p]`` mm of its axis (4 XPBD iterations of :func:`iratrainer.physics.solver.solve`)."""
    n_dev = len(xs)
    offs = np.zeros(n_dev + 1, np.int64)
    for d in range(n_dev):
        offs[d + 1] = offs[d] + xs[d].shape[0]
    allx = np.empty((offs[n_dev], 3))
    w = np.empty(offs[n_dev])
    for d in range(n_dev):
        allx[offs[d]:offs[d + 1]] = xs[d]
        w[offs[d]:offs[d + 1]] = ws[d]
    m = 0
    for p in range(len(ks_t)):
        m += ks_t[p].shape[0]
    li = np.empty(m, np.int64)
    lo1 = np.empty(m, np.int64)
    lo2 = np.empty(m, np.int64)
    lb = np.empty(m)
    lg = np.empty(m)
    r = 0
    for p in range(len(ks_t)):
        j = js[p]
        for q in range(ks_t[p].shape[0]):
            li[r] = offs[j] + ks_t[p][q]
            lo1[r] = offs[j - 1] + o1_t[p][q]
            lo2[r] = offs[j - 1] + o2_t[p][q]
            lb[r] = beta_t[p][q]
            lg[r] = plays[p]
            r += 1
    e = np.zeros(0, np.int64)
    z = np.zeros(0)
    z3 = np.zeros((0, 3))
    solve_links(allx, allx.copy(), w, e, e, z, e, e, e, z3, z, e, z3, z, z, li, lo1, lo2, lb, lg, 4, dt, z3, z)
    for d in range(n_dev):
        xs[d][:] = allx[offs[d]:offs[d + 1]]


@nb.njit(cache=True, error_model="numpy")
def _farthest_outside(sd, ends):  # pragma: no cover - numba
    """Largest signed distance (mm) over the nodes of all devices, the two kinematic nodes at
    the sheath of each device (the two before each of ``ends``) left out."""
    worst = -np.inf
    d = 0
    for k in range(sd.shape[0]):
        while d < ends.shape[0] - 1 and k >= ends[d]:
            d += 1
        if k >= ends[d] - 2:
            continue
        worst = max(worst, sd[k])
    return worst


@nb.njit(cache=True)
def _first_nonfinite(xs, thetas):  # pragma: no cover - numba
    """Index of the first device whose positions or twist hold a NaN or an infinity; -1 if none."""
    for k in range(len(xs)):
        x = xs[k]
        for i in range(x.shape[0]):
            for c in range(3):
                if not np.isfinite(x[i, c]):
                    return k
        th = thetas[k]
        for i in range(th.shape[0]):
            if not np.isfinite(th[i]):
                return k
    return -1


@nb.njit(cache=True, error_model="numpy")
def _total_turn(x):  # pragma: no cover - numba
    """Sum of the turning angles (rad) between successive edges of the chain ``x``."""
    N = x.shape[0]
    total = 0.0
    p0 = p1 = p2 = 0.0
    for k in range(N - 1):
        d0 = x[k, 0] - x[k + 1, 0]
        d1 = x[k, 1] - x[k + 1, 1]
        d2 = x[k, 2] - x[k + 1, 2]
        ln = max(np.sqrt(d0 * d0 + d1 * d1 + d2 * d2), 1e-12)
        d0 /= ln
        d1 /= ln
        d2 /= ln
        if k > 0:
            c = min(max(p0 * d0 + p1 * d1 + p2 * d2, -1.0), 1.0)
            total += np.arccos(c)
        p0, p1, p2 = d0, d1, d2
    return total


@nb.njit(cache=True, error_model="numpy")
def _total_turns(xs):  # pragma: no cover - numba
    """:func:`_total_turn` of every device (a tuple of chains) in one call (rad each)."""
    out = np.empty(len(xs))
    for k in range(len(xs)):
        out[k] = _total_turn(xs[k])
    return out


@nb.njit(cache=True, error_model="numpy")
def _shape_torque(x, kb, mag, nrm, alpha):  # pragma: no cover - numba
    """Coupling torque of the shaped tip on the twist: -dE/dθ = (κb - κb_rest)·(2 tan(φ/2) n) / α."""
    N = x.shape[0]
    tau = np.zeros(N)
    for c in range(1, N - 1):
        # the two edges as scalars (row slices would allocate two arrays per node)
        a0 = x[c, 0] - x[c + 1, 0]
        a1 = x[c, 1] - x[c + 1, 1]
        a2 = x[c, 2] - x[c + 1, 2]
        b0 = x[c - 1, 0] - x[c, 0]
        b1 = x[c - 1, 1] - x[c, 1]
        b2 = x[c - 1, 2] - x[c, 2]
        n1 = np.sqrt(a0 ** 2 + a1 ** 2 + a2 ** 2)
        n2 = np.sqrt(b0 ** 2 + b1 ** 2 + b2 ** 2)
        D = max(n1 * n2 + a0 * b0 + a1 * b1 + a2 * b2, 1e-9 * n1 * n2 + 1e-300)
        k0 = 2.0 * (a1 * b2 - a2 * b1) / D
        k1 = 2.0 * (a2 * b0 - a0 * b2) / D
        k2 = 2.0 * (a0 * b1 - a1 * b0) / D
        tau[c] = -((k0 - kb[c, 0]) * nrm[c, 0] + (k1 - kb[c, 1]) * nrm[c, 1]
                   + (k2 - kb[c, 2]) * nrm[c, 2]) * mag[c] / alpha[c]
    return tau


@nb.njit(cache=True, error_model="numpy")
def _contact_solve(x, x0, closest, axis, start, end, R, r_dev, kb, alpha, rest, mass, s_alpha, c_alpha, n_iter, dt,
                   max_step, mu, l_i1, l_i2, l_w1, l_w2, l_t, l_tan, l_gap, k_link, fn_prev,
                   k_stick, rel_a, rel_b, rel_ra, rel_rb):  # pragma: no cover - numba
    """One device's solve with its wall: cylinders, Coulomb friction, Gauss-Newton.

    Every free node carries its wall (inactive unless violated): the cylinder of the segment
    it is in (``closest`` point, unit ``axis``, closed ``end`` mm along it), whose tangent
    plane the Gauss-Newton iterations take afresh, so a node that moves far in one step (a
    whip) cannot cross the wall unconstrained. Friction (coefficient ``mu``) is part of the
    same solve: a node on the wall that pressed it with ``fn_prev`` (N) at the previous step
    is held across the wall to where it was at the start of the step (``x0``) by a spring of
    ``k_stick`` N/mm whose force is capped at ``mu · fn_prev``: it sticks below the cap
    (creeping at most ``mu · fn_prev / k_stick`` per step) and slides above it. The spring
    starts unloaded every step, so friction only takes energy out. ``r_dev`` (N,) is each node's
    clearance from the wall: the device's own radius, or the radius of the catheter it runs
    in. ``l_*``: the coaxial links to the devices around and inside this one (see
    :func:`solve_chain_primal`). ``rel_*``: the segment of the vessel joined to each node's own
    at a junction, whose tube rounds off the rim there (see :data:`CREST_MM`). Returns the wall
    force per node (N).
    """
    N = x.shape[0]
    n = np.zeros((N, 3))
    near = np.ones(N, dtype=np.bool_)
    near[N - 2:] = False
    w = np.full(N, 1.0 / mass)
    w[N - 2:] = 0.0
    rho = np.empty(N)  # the cylinder's radius: the lumen's less the node's clearance
    for k in range(N):
        rho[k] = max(R[k] - r_dev[k], 0.05)
    # the planes are the cylinders' tangent planes, which the solve takes at its first
    # iteration; a node on its axis is far from the wall: n = 0 and plane_d = rho keep its
    # plane inactive
    plane_d = rho.copy()
    force = np.zeros(N)
    # each edge's tension at the end of the previous step, for its geometric stiffness
    tension = np.empty(N - 1)
    ks = 1.0 / s_alpha
    for k in range(N - 1):
        L = np.sqrt((x0[k + 1, 0] - x0[k, 0]) ** 2 + (x0[k + 1, 1] - x0[k, 1]) ** 2 + (x0[k + 1, 2] - x0[k, 2]) ** 2)
        tension[k] = max(ks * (L - rest[k]), 0.0)
    solve_chain_primal(x, x.copy(), w, rest, kb, alpha, s_alpha, near, n, plane_d, c_alpha, n_iter, dt, max_step,
                       force, l_i1, l_i2, l_w1, l_w2, l_t, l_tan, l_gap, k_link, MAX_TRAVEL_MM,
                       closest, axis, rho, start, end, rel_a, rel_b, rel_ra, rel_rb, CREST_MM, mu, k_stick, fn_prev,
                       x0, tension)
    return force


@nb.njit(cache=True, error_model="numpy")
def _wall_cylinders(seg, closest, seg_axis, seg_a, seg_b, seg_last, seg_root_first):  # pragma: no cover - numba
    """Each node's wall cylinder from its lumen query: the unit axis of its segment, and where
    the cylinder is closed (mm along the axis from the closest point): past the end of its
    vessel's last segment, before the start of a vessel without a parent (±inf elsewhere)."""
    M = seg.shape[0]
    axis = np.empty((M, 3))
    start = np.empty(M)
    end = np.empty(M)
    for k in range(M):
        s = seg[k]
        a0, a1, a2 = seg_axis[s, 0], seg_axis[s, 1], seg_axis[s, 2]
        axis[k, 0], axis[k, 1], axis[k, 2] = a0, a1, a2
        if seg_last[s]:
            end[k] = ((seg_b[s, 0] - closest[k, 0]) * a0 + (seg_b[s, 1] - closest[k, 1]) * a1
                      + (seg_b[s, 2] - closest[k, 2]) * a2)
        else:
            end[k] = np.inf
        if seg_root_first[s]:
            start[k] = ((seg_a[s, 0] - closest[k, 0]) * a0 + (seg_a[s, 1] - closest[k, 1]) * a1
                        + (seg_a[s, 2] - closest[k, 2]) * a2)
        else:
            start[k] = -np.inf
    return axis, start, end


@nb.njit(cache=True, error_model="numpy")
def _worst_node(force, radius):  # pragma: no cover - numba
    """The free node closest to its own safety threshold (thresholds scale with the lumen
    radius over 1.5 mm, at least 0.2): its index, its wall force (N) and its scale."""
    N = force.shape[0]
    best = 0
    best_ratio = -np.inf
    for k in range(max(N - 2, 1)):
        ratio = force[k] / max(radius[k] / 1.5, 0.2)
        if ratio > best_ratio:
            best, best_ratio = k, ratio
    return best, force[best], max(radius[best] / 1.5, 0.2)


@nb.njit(cache=True, error_model="numpy")
def _clearance_kernel(n_nodes, r_dev, sigma, inserted, outer_inserted, r_in):  # pragma: no cover - numba
    """One device's clearance from the wall per node (mm; see :meth:`DeviceStack._clearances`):
    its radius ``r_dev``, raised to ``r_in`` where the node lies inside the outer device
    (``r_in = -inf``: no outer device). Returns the clearances and their largest value."""
    r = np.full(n_nodes, r_dev)
    for k in range(sigma.shape[0]):
        if inserted - sigma[k] <= outer_inserted and r_in > r[k]:
            r[k] = r_in
    top = r_dev
    for k in range(n_nodes):
        top = max(top, r[k])
    return r, top


@nb.njit(cache=True, error_model="numpy")
def _link_pair_kernel(sigma_i, ins_i, sigma_o, ins_o):  # pragma: no cover - numba
    """The inner device's nodes inside the outer one (σ of each: ``sigma_i``, ``sigma_o``;
    inserted lengths ``ins_i``, ``ins_o``, mm): their indices, the outer edge (o1, o2) each
    sits in and the fraction β along it (see :meth:`DeviceStack._link_pairs`)."""
    K = sigma_o.shape[0]
    n = sigma_i.shape[0]
    so = np.empty(n)
    m = 0
    for k in range(n):
        so[k] = ins_o - (ins_i - sigma_i[k])  # the node's σ on the outer device
        if so[k] >= 0.0 and so[k] <= ins_o - 0.1:
            m += 1
    ks = np.empty(m, np.int64)
    q = 0
    for k in range(n):
        if so[k] >= 0.0 and so[k] <= ins_o - 0.1:
            ks[q] = k
            q += 1
    xp = np.empty(K + 1)
    xp[:K] = sigma_o
    xp[K] = ins_o
    pos = np.interp(so[ks], xp, np.arange(K + 1.0))
    o1 = np.minimum(np.floor(pos).astype(np.int64), K)
    o2 = np.minimum(o1 + 1, K)
    beta = pos - o1
    return ks, o1, o2, beta


@nb.njit(cache=True, error_model="numpy")
def _rod_contact_solve(x, x0, closest, axis, start, end, R, r_dev, t0, u0, theta, mag, alpha, h, rest_last, mass,
                       s_alpha, c_alpha, n_iter, dt, max_step, mu, l_i1, l_i2, l_w1, l_w2, l_t, l_tan, l_gap, k_link,
                       fn_prev, k_stick, inside, rel_a, rel_b, rel_ra, rel_rb):  # pragma: no cover - numba
    """One device's whole contact solve in one call: its rest curvature from its material
    frames (:func:`_rest_state`), its rest lengths (``h``, the access edge ``rest_last``),
    :func:`_contact_solve`, then the friction state for the next step (``fn_prev`` is
    overwritten with this step's wall force) and the wall force with the nodes ``inside``
    another device set to zero (they touch that device, not the vessel). Returns the wall
    force per node (N)."""
    kb, _ = _rest_state(x, t0, u0, theta, mag)
    N = x.shape[0]
    rest = np.full(N - 1, h)
    rest[N - 3] = rest_last
    force = _contact_solve(x, x0, closest, axis, start, end, R, r_dev, kb, alpha, rest, mass, s_alpha, c_alpha,
                           n_iter, dt, max_step, mu, l_i1, l_i2, l_w1, l_w2, l_t, l_tan, l_gap, k_link, fn_prev,
                           k_stick, rel_a, rel_b, rel_ra, rel_rb)
    fn_prev[:] = force
    for k in inside:
        force[k] = 0.0
    return force


@nb.njit(cache=True)
def _link_rows_kernel(xo, ks, o1, o2, beta, play, xk, xi, ks2, p1, p2, beta2, play2):  # pragma: no cover
    """Link rows of one device (for :func:`_stack_contact_solve`): first as the inner device
    (its nodes ``ks`` to the axis of the device around it, ``xo``, edges ``o1``-``o2`` at
    ``beta``), then as the outer one (its edges ``p1``-``p2`` at ``beta2`` to the inner
    device's nodes ``ks2`` of ``xi``). The axis direction of each link is the outer edge's."""
    m1 = ks.shape[0]
    m = m1 + ks2.shape[0]
    i1 = np.empty(m, np.int64)
    i2 = np.empty(m, np.int64)
    w1 = np.empty(m)
    w2 = np.empty(m)
    t = np.empty((m, 3))
    tan = np.empty((m, 3))
    gap = np.empty(m)
    for r in range(m):
        if r < m1:
            a, b, be, X, gp = o1[r], o2[r], beta[r], xo, play
        else:
            q = r - m1
            a, b, be, X, gp = p1[q], p2[q], beta2[q], xk, play2
        ea = max(a - 1, 0) if a == b else a
        tv0 = X[b, 0] - X[ea, 0]
        tv1 = X[b, 1] - X[ea, 1]
        tv2 = X[b, 2] - X[ea, 2]
        nn = max(np.sqrt(tv0 * tv0 + tv1 * tv1 + tv2 * tv2), 1e-12)
        tan[r, 0], tan[r, 1], tan[r, 2] = tv0 / nn, tv1 / nn, tv2 / nn
        gap[r] = gp
        if r < m1:
            i1[r] = ks[r]
            i2[r] = -1
            w1[r] = 1.0
            w2[r] = 0.0
            for c in range(3):
                t[r, c] = (1.0 - be) * xo[a, c] + be * xo[b, c]
        else:
            q = r - m1
            if a == b:
                i1[r], i2[r], w1[r], w2[r] = a, -1, 1.0, 0.0
            else:
                i1[r], i2[r], w1[r], w2[r] = a, b, 1.0 - be, be
            for c in range(3):
                t[r, c] = xi[ks2[q], c]
    return i1, i2, w1, w2, t, tan, gap


@nb.njit(cache=True, error_model="numpy")
def _stack_contact_solve(xs, x0s, closest, axis, start, end, R, clears, t0s, u0s, thetas, mags, alphas, hs,
                         rest_lasts, masses, s_alphas, c_alpha, n_iter, dt, max_step, mus, in_ks, in_o1, in_o2,
                         in_beta, in_play, k_link, fn_prevs, k_stick, insides, rel_a, rel_b, rel_ra,
                         rel_rb):  # pragma: no cover - numba
    """The contact solve of every device of the stack, outermost first, in one call: per device
    its link rows (:func:`_link_rows_kernel`, against the devices around it as they now are
    and inside it as they were: one Gauss-Seidel sweep) and :func:`_rod_contact_solve`.

    Per-device arguments are tuples over the devices (``xs`` solved in place); the per-node
    wall arguments (``closest`` ... ``R``, and ``rel_*`` unless empty) run over all the
    devices' nodes in order. ``in_ks[k]``, ``in_o1[k]``, ``in_o2[k]``, ``in_beta[k]``,
    ``in_play[k]``: device k's nodes inside device k-1 and where they sit (empty for none; see
    :meth:`DeviceStack._link_pairs`). Returns the wall force per node (N), all devices in order.
    """
    n_dev = len(xs)
    total = 0
    for k in range(n_dev):
        total += xs[k].shape[0]
    force = np.empty(total)
    has_rel = rel_ra.shape[0] == total
    off = 0
    for k in range(n_dev):
        x = xs[k]
        N = x.shape[0]
        e = off + N
        ks = in_ks[k]
        outer_x = xs[k - 1] if k > 0 and ks.shape[0] > 0 else x
        if k + 1 < n_dev:
            ks2, p1, p2, beta2, play2, xi = in_ks[k + 1], in_o1[k + 1], in_o2[k + 1], in_beta[k + 1], in_play[k + 1], \
                xs[k + 1]
        else:  # the innermost device: nothing inside it
            none = ks[:0]
            ks2, p1, p2, beta2, play2, xi = none, none, none, in_beta[k][:0], 0.0, x
        l_i1, l_i2, l_w1, l_w2, l_t, l_tan, l_gap = _link_rows_kernel(outer_x, ks, in_o1[k], in_o2[k], in_beta[k],
                                                                      in_play[k], x, xi, ks2, p1, p2, beta2, play2)
        if has_rel:
            ra, rb, rra, rrb = rel_a[off:e], rel_b[off:e], rel_ra[off:e], rel_rb[off:e]
        else:
            ra, rb, rra, rrb = rel_a, rel_b, rel_ra, rel_rb
        f = _rod_contact_solve(x, x0s[k], closest[off:e], axis[off:e], start[off:e], end[off:e], R[off:e], clears[k],
                               t0s[k], u0s[k], thetas[k], mags[k], alphas[k], hs[k], rest_lasts[k], masses[k],
                               s_alphas[k], c_alpha, n_iter, dt, max_step, mus[k], l_i1, l_i2, l_w1, l_w2, l_t, l_tan,
                               l_gap, k_link, fn_prevs[k], k_stick, insides[k], ra, rb, rra, rrb)
        force[off:e] = f
        off = e
    return force


#: no node index (a shared empty argument, never written)
_NO_NODES = np.zeros(0, np.int64)
_NO_REL_POINTS = np.zeros((0, 3))  # no joined vessel's segments: the rims are rounded once per step
_NO_REL_RADII = np.zeros(0)
#: no nodes inside an outer device: (nodes, outer edges o1, o2, fraction β), read-only
_NO_PAIR = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))


class Rod:
    """One device in the patient (see the module docstring)."""

    def __init__(self, spec: DeviceSpec, access_mm: np.ndarray, access_dir: np.ndarray, inserted_mm: float,
                 path_mm: np.ndarray | None = None, h_mm: float | None = None, damping: float = 0.0) -> None:
        self.spec = spec
        self.name = spec.name
        # node spacing: 2 mm for wires and microcatheters, coarser for the stiff large catheters
        default_h = 2.0 if spec.outer_diameter_mm < 1.2 else (3.0 if spec.outer_diameter_mm < 2.0 else 4.0)
        self.h = float(h_mm if h_mm is not None else default_h)
        self.access = np.asarray(access_mm, dtype=np.float64)
        t = np.asarray(access_dir, dtype=np.float64)
        self.access_dir = t / np.linalg.norm(t)
        self.inserted_mm = float(np.clip(inserted_mm, 0.0, self.max_inserted_mm))
        self.hub_angle = 0.0
        self.damping = float(damping)
        # reference vector of the material frame at the access point (perpendicular to the sheath)
        ref = np.cross(self.access_dir, [0.0, 0.0, 1.0])
        if np.linalg.norm(ref) < 1e-6:
            ref = np.cross(self.access_dir, [1.0, 0.0, 0.0])
        self.u_ref = ref / np.linalg.norm(ref)
        # linear mass: material density over the annulus (nitinol 6.45, polymer 1.3 g/cm³) plus blood drag
        rho = 6.45 if spec.material == "nitinol" else 1.3
        area = math.pi * (spec.outer_radius_mm ** 2 - spec.inner_radius_mm ** 2)  # mm²
        self.mass_node = max(rho * area * 1e-6 * self.h * KG, 2e-9)  # kg/mm³ -> N·s²/mm
        # axial stiffness EA (N): nitinol 50 GPa, braided polymer 2 GPa, over the annulus
        ea = (50_000.0 if spec.material == "nitinol" else 2_000.0) * area
        self.stretch_compliance = self.h / ea
        self._uniform_from = spec.uniform_from_mm
        self._init_nodes(path_mm)

    # ------------------------------------------------------------------ geometry
    def _init_nodes(self, path_mm: np.ndarray | None) -> None:
        K = max(2, int(math.floor(self.inserted_mm / self.h)) + 1)
        sig = np.arange(K) * self.h
        sig = sig[sig < self.inserted_mm - 0.2 * self.h] if self.inserted_mm > 0.3 * self.h else sig[:1]
        if len(sig) < 1:
            sig = np.array([0.0])
        depth = self.inserted_mm - sig  # arc from the access point inwards
        if path_mm is not None and len(path_mm) > 1:
            seg = np.linalg.norm(np.diff(path_mm, axis=0), axis=1)
            arc = np.concatenate([[0.0], np.cumsum(seg)])
            d = np.clip(depth, 0.0, arc[-1])
            pts = np.stack([np.interp(d, arc, path_mm[:, i]) for i in range(3)], axis=1)
            over = depth - d
            pts += over[:, None] * (path_mm[-1] - path_mm[-2]) / max(seg[-1], 1e-9)
        else:
            pts = self.access + depth[:, None] * self.access_dir
        self.sigma = sig
        self.x = np.vstack([pts, self.access, self.access - self.h * self.access_dir])
        self.v = np.zeros_like(self.x)
        self.theta = np.zeros(len(self.x))

    @property
    def max_inserted_mm(self) -> float:
        """The longest length (mm) of the device that can be in the patient: its length less
        the 50 mm held in the hand and the hub outside the sheath."""
        return self.spec.length_mm - HANDLE_MM

    @property
    def n_material(self) -> int:
        """Number of free (material) nodes; the last two nodes are kinematic."""
        return len(self.sigma)

    @property
    def tip_mm(self) -> np.ndarray:
        """Tip position, LPS mm."""
        return self.x[0].copy()

    @property
    def tip_dir(self) -> np.ndarray:
        """Unit direction of the tip (from node 1 to node 0)."""
        d = self.x[0] - self.x[1]
        return d / max(float(np.linalg.norm(d)), 1e-12)

    def remesh(self) -> None:
        """Add or remove nodes at the access point after the inserted length changed."""
        K = self.n_material
        last = self.sigma[-1] if K else 0.0
        gap = self.inserted_mm - last
        if 0.2 * self.h <= gap <= 1.2 * self.h or (gap < 0.2 * self.h and K <= 2):
            # no node added or removed: the two sheath nodes stay put, their twist follows the hub
            self.theta[-2:] = self.hub_angle
            return
        mat = self.x[:K]
        th = self.theta[:K]
        v = self.v[:K]
        while gap > 1.2 * self.h:
            s_new = last + self.h
            depth = self.inserted_mm - s_new
            p = self.access + depth * self.access_dir
            mat = np.vstack([mat, p])
            th = np.append(th, self.hub_angle)
            v = np.vstack([v, np.zeros(3)])
            self.sigma = np.append(self.sigma, s_new)
            last = s_new
            gap = self.inserted_mm - last
        while gap < 0.2 * self.h and len(self.sigma) > 2:
            mat, th, v = mat[:-1], th[:-1], v[:-1]
            self.sigma = self.sigma[:-1]
            last = self.sigma[-1]
            gap = self.inserted_mm - last
        self.x = np.vstack([mat, self.access, self.access - self.h * self.access_dir])
        self.theta = np.concatenate([th, [self.hub_angle, self.hub_angle]])
        self.v = np.vstack([v, np.zeros((2, 3))])

    def inverse_masses(self) -> np.ndarray:
        """(N,) inverse node masses, mm/(N·s²); zero at the two kinematic sheath nodes."""
        w = getattr(self, "_w_cache", None)
        if w is None or len(w) != len(self.x):
            w = np.full(len(self.x), 1.0 / self.mass_node)
            w[-2:] = 0.0
            self._w_cache = w
        return w

    def rest_lengths(self) -> np.ndarray:
        """(N-1,) rest length of each edge (the edge at the access point follows the hub)."""
        K = self.n_material
        rest = np.full(len(self.x) - 1, self.h)
        rest[K - 1] = max(self.inserted_mm - self.sigma[-1], 1e-3)
        return rest

    def frames(self) -> tuple[np.ndarray, np.ndarray]:
        """Unit tangents of the incoming edge (towards the tip) and material normals at every node.

        The reference (Bishop) frame is parallel-transported from the sheath to the tip; the
        material normal is that frame turned by the node's twist angle.
        """
        return _frames_kernel(self.x, self.access_dir, self._u0(), self.theta)

    def _u0(self) -> np.ndarray:
        """The reference frame's normal at the access point (constant: the sheath does not move)."""
        cu = getattr(self, "_u0_cache", None)
        if cu is None:
            cu = self.u_ref - (self.u_ref @ self.access_dir) * self.access_dir
            cu /= np.linalg.norm(cu)
            self._u0_cache = cu
        return cu

    def _profiles(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Bending compliance h/EI (N,), rest turning 2 tan(φ/2) (N,) and GJ/h per edge (N-1,).

        The material nodes' values depend only on their σ, which changes only when a node is
        added or removed: they are cached; the two nodes at the sheath follow the hub. The
        arrays are reused: their sheath entries are rewritten in place when the inserted
        length changes, so a caller that keeps them past a step must copy them.
        """
        K = self.n_material
        # beyond the soft tip and the curves, the sheath nodes' values do not depend on where
        # they are: the cache then holds for any inserted length
        key = (K, -1.0 if self.sigma[-1] >= self._uniform_from else self.inserted_mm)
        if getattr(self, "_prof_key", None) == key:
            return self._prof_last
        if getattr(self, "_prof_k", -1) != K:
            sig = self.sigma
            # the material nodes' part, with room for the two sheath nodes' values (filled below)
            alpha = np.empty(K + 2)
            mag = np.empty(K + 2)
            gj = np.empty(K + 1)
            alpha[:K] = self.h / self.spec.ei_at(sig)
            mag[:K] = 2.0 * libm.tan(0.5 * self.spec.rest_curvature(sig) * self.h)  # the C library's (iratrainer.libm)
            gj[:K - 1] = self.spec.gj_at(0.5 * (sig[:-1] + sig[1:])) / self.h
            self._prof_full = (alpha, mag, gj)
            self._prof_k = K
        spec, h = self.spec, self.h
        gj_ratio = spec.torsional_stiffness_n_mm2 / spec.bending_stiffness_n_mm2
        alpha, mag, gj = self._prof_full
        tail = (self.inserted_mm, self.inserted_mm + h)
        mids = (0.5 * (self.sigma[-1] + tail[0]), 0.5 * (tail[0] + tail[1]))
        for i in range(2):
            alpha[K + i] = h / spec.ei_scalar(tail[i])
            mag[K + i] = 2.0 * math.tan(0.5 * spec.rest_curvature_scalar(tail[i]) * h)
            gj[K - 1 + i] = spec.ei_scalar(mids[i]) * gj_ratio / h
        self._prof_key, self._prof_last = key, (alpha, mag, gj)
        return alpha, mag, gj

    def rest_binormals(self, with_normals: bool = False) -> tuple[np.ndarray, ...]:
        """Rest κb (N,3), compliance h/EI (N,), the rest turning factor 2 tan(φ/2) (N,), and with
        ``with_normals`` the material normals (N,3) used for them (frames are transported once)."""
        alpha, mag, _ = self._profiles()
        # frames at node c: the incoming edge is edge c (node c+1 -> c), stored at index c
        kb, n = _rest_state(self.x, self.access_dir, self._u0(), self.theta, mag)
        return (kb, alpha, mag, n) if with_normals else (kb, alpha, mag)


@dataclass(frozen=True)
class _StackConstants:
    """Per-device values that do not change while the stack runs, as arrays and tuples over the
    devices (outermost first): sheath direction and frame, node spacing (mm), node mass
    (N·s²/mm), stretch compliance (mm/N), wall friction coefficient, outer radius (mm)."""

    rods: tuple[Rod, ...]
    t0s: tuple[np.ndarray, ...]
    u0s: tuple[np.ndarray, ...]
    hs: np.ndarray
    masses: np.ndarray
    stretch: np.ndarray
    mus: np.ndarray
    radii: np.ndarray


class DeviceStack:
    """A coaxial stack in a vessel tree, outermost first; driven by :class:`HubCommand` per device.

    Args:
        tree: the vessel model.
        specs: the devices, outermost first (e.g. guide, intermediate, microcatheter, microwire).
        access_label: branch whose last point is the puncture (the device enters against the flow).
        inserted_mm: initial inserted length of each device, mm.
        dt: time step, s.
        thresholds: safety thresholds.
        path_mm: where the devices lie at the start, from the access point inwards (default:
            the tree's route from the access branch towards the root).
    """

    def __init__(self, tree: VesselTree, specs: list[DeviceSpec], access_label: str = "R_CFA",
                 inserted_mm: list[float] | None = None, dt: float = 1e-3,
                 thresholds: SafetyThresholds | None = None, iterations: int = 2, solver: str = "primal",
                 path_mm: np.ndarray | None = None) -> None:
        if not specs:
            raise StackError("a stack needs at least one device")
        for outer, inner in zip(specs, specs[1:], strict=False):
            if not outer.has_lumen:
                raise StackError(f"'{inner.name}' cannot go inside '{outer.name}': it has no lumen")
            if inner.outer_diameter_mm > outer.inner_diameter_mm:
                raise StackError(f"'{inner.name}' ({inner.outer_diameter_mm:.3g} mm) does not fit the lumen of "
                                 f"'{outer.name}' ({outer.inner_diameter_mm:.3g} mm)")
        self.tree = tree
        self.dt = float(dt)
        self.iterations = int(iterations)
        if solver not in ("primal", "dual"):
            raise StackError(f"solver: expected 'primal' or 'dual', got {solver!r}")
        #: "primal": node-space banded Newton (fast); "dual": banded XPBD multipliers
        self.solver = solver
        #: wall compliance, mm/N (1 / 200 N/mm: a stiff arterial wall against a device)
        self.wall_compliance_mm_n = 1.0 / 200.0
        #: stiffness of the coaxial links inside each device's solve, N/mm (stiffer than any
        #: device's bending over a node spacing, softer than would spoil the conditioning)
        self.link_stiffness = 1000.0
        #: largest node displacement per Gauss-Newton iteration, mm (a trust region: the wall
        #: planes are linearised, so a node must not travel far along one in a single step)
        self.max_step_mm = 1.0
        #: where the rims of the ostia are rounded (see :data:`CREST_MM`): False, once per step
        #: from the start-of-step query (the default, which the navigations are tested with);
        #: True, at every iteration of the solve, from where each node then is. Rounded once
        #: per step, the rounding lags a step behind a node near a rim, which shakes a wire
        #: lying there (docs/physics.md, "Rims rounded in the solve")
        self.rim_in_solve = False
        self.thresholds = thresholds or SafetyThresholds()
        self.time_s = 0.0
        self.log: list[str] = []
        self.events: list[SafetyEvent] = []
        acc = tree[access_label]
        self.access = acc.points_mm[-1].copy()
        # the way in: from the access branch's last point against the flow towards the root
        if access_label == tree.root:
            path = acc.points_mm[::-1].copy()
        else:
            path, _ = tree.path_polyline(access_label, tree.root)
        if path_mm is not None:  # lay the devices along a given way in (e.g. an exchange over a catheter)
            path = np.asarray(path_mm, dtype=np.float64)
            if len(path) < 4 or np.linalg.norm(path[0] - self.access) > 1.0:
                raise StackError("path_mm must start at the access point and hold at least 4 points")
        self.path = path
        inward = path[min(3, len(path) - 1)] - path[0]
        inward /= np.linalg.norm(inward)
        # the sheath: 10 mm in the artery
        self.access = path[0] + 0.0 * inward
        ins = inserted_mm or [100.0 - 10.0 * i for i in range(len(specs))]
        self.rods = [Rod(s, self.access, inward, L, path) for s, L in zip(specs, ins, strict=True)]
        self.wall_force = [np.zeros(len(r.x)) for r in self.rods]
        ax = np.asarray(tree.seg_b, dtype=np.float64) - np.asarray(tree.seg_a, dtype=np.float64)
        #: unit axis of every centerline segment (the wall cylinder of the nodes in it)
        self._seg_axis = ax / np.maximum(np.linalg.norm(ax, axis=1), 1e-12)[:, None]
        self._seg_b = np.asarray(tree.seg_b, dtype=np.float64)
        br = np.asarray(tree.seg_branch)
        #: whether each segment is the last of its vessel, or the first of a vessel without a parent
        self._seg_last = np.append(br[1:] != br[:-1], True)
        self._seg_a = np.asarray(tree.seg_a, dtype=np.float64)
        self._seg_ra = np.asarray(tree.seg_ra, dtype=np.float64)
        self._seg_rb = np.asarray(tree.seg_rb, dtype=np.float64)
        first = np.insert(br[1:] != br[:-1], 0, True)
        self._seg_root_first = first & np.array([tree.branches[int(b)].parent is None for b in br])
        self._node_radius = [np.ones(len(r.x)) for r in self.rods]
        self._active_events: set[tuple[str, str, int]] = set()
        # (time, inserted length, tip arc along the way in) per device, for buckling detection
        self._push_history: list[deque[tuple[float, float, tuple[float, ...]]]] = [deque() for _ in self.rods]
        self._shape_flags: dict[tuple[str, str], bool] = {}
        self._pushed_blocked: dict[str, int] = {}
        self._commanded: dict[str, float] = {}
        self._query_cache: tuple[np.ndarray, Any] | None = None
        #: stiffness of a sticking contact across the wall, N/mm (as the wall's own)
        self.friction_stiffness = 200.0
        #: the most a hand pushes or pulls at a hub before the device slips in the fingers (N)
        self.hub_force_max_n = HUB_FORCE_MAX_N
        self._fn_prev = [np.zeros(len(r.x)) for r in self.rods]
        self._const: _StackConstants | None = None

    # ------------------------------------------------------------------ inputs
    def _clamp(self, name: str, cmd: HubCommand) -> tuple[float, float]:
        a, r = float(cmd.advance_mm_s), float(cmd.rotate_deg_s)
        if not math.isfinite(a) or not math.isfinite(r):
            self.log.append(f"t={self.time_s:.3f}s {name}: non-finite hub command ({a}, {r}) ignored")
            return 0.0, 0.0
        ca = min(max(a, -MAX_ADVANCE_MM_S), MAX_ADVANCE_MM_S)
        cr = min(max(r, -MAX_ROTATE_DEG_S), MAX_ROTATE_DEG_S)
        if (ca, cr) != (a, r):
            self.log.append(f"t={self.time_s:.3f}s {name}: hub command ({a:g} mm/s, {r:g} deg/s) clamped")
        return ca, cr

    # ------------------------------------------------------------------ the step
    def step(self, commands: dict[str, HubCommand] | None = None) -> None:
        """Advance the simulation by ``dt``; raises :class:`PhysicsError` on divergence."""
        commands = commands or {}
        dt = self.dt
        for rod in self.rods:
            cmd = commands.get(rod.name, HubCommand())
            a, r = self._clamp(rod.name, cmd)
            self._commanded[rod.name] = self._commanded.get(rod.name, 0.0) + a * dt
            new_len = rod.inserted_mm + a * dt
            top = rod.max_inserted_mm
            if new_len > top:
                if a > 0:
                    self.log.append(f"t={self.time_s:.3f}s {rod.name}: fully inserted, advance refused")
                new_len = top
            rod.inserted_mm = max(new_len, 1.0)
            rod.hub_angle += math.radians(r) * dt
            rod.remesh()
        # predicted positions (damped velocity); x0: the start of the step (friction, velocity)
        x0 = [rod.x.copy() for rod in self.rods]
        for rod in self.rods:
            if rod.damping != 0.0:
                rod.x[:-2] += rod.damping * rod.v[:-2] * dt
        # one round: wall and rod constraints per device, then the coaxial links (whatever the
        # links leave unsatisfied is taken up by the next step's solve)
        pairs = self._link_pairs()  # the arcs do not change within the step
        self._contacts_and_solve(x0, final=True, pairs=pairs)
        self._coaxial(pairs)
        for k, rod in enumerate(self.rods):
            rod.v = (rod.x - x0[k]) / dt
        self._torsion_all()
        self._limit_hub_force()
        self.time_s += dt
        self._check()
        self._safety()
        self._shape_events()

    def _clearances(self) -> list[np.ndarray]:
        """Each node's clearance from the vessel wall (mm): its device's radius, or, inside an
        outer device, that device's clearance less the play between them (a wire inside a
        catheter cannot ride closer to the wall than the catheter around it)."""
        out: list[np.ndarray] = []
        r_max = 0.0
        for j, rod in enumerate(self.rods):
            if j == 0:
                r, r_max = _clearance_kernel(len(rod.x), rod.spec.outer_radius_mm, rod.sigma, rod.inserted_mm,
                                             0.0, -np.inf)
            else:
                outer = self.rods[j - 1]
                play = max(outer.spec.inner_radius_mm - rod.spec.outer_radius_mm, 0.0)
                r, r_max = _clearance_kernel(len(rod.x), rod.spec.outer_radius_mm, rod.sigma, rod.inserted_mm,
                                             outer.inserted_mm, r_max - play)
            out.append(r)
        return out

    def _link_pairs(self) -> list[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]]:
        """For each inner device j: (j, its nodes inside device j-1, the outer edge (o1, o2) and
        fraction β where each sits, the play in mm). The outer chain runs up to its access
        node (index n_material, kinematic): an inner node in the outer's access edge follows
        that edge, not its last free node."""
        out = []
        for j in range(1, len(self.rods)):
            inner, outer = self.rods[j], self.rods[j - 1]
            ks, o1, o2, beta = _link_pair_kernel(inner.sigma, inner.inserted_mm, outer.sigma, outer.inserted_mm)
            if len(ks) == 0:
                continue
            out.append((j, ks, o1, o2, beta, max(outer.spec.inner_radius_mm - inner.spec.outer_radius_mm, 0.0)))
        return out

    def _contacts_and_solve(self, x0: list[np.ndarray], final: bool,
                            pairs: list[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]] | None = None
                            ) -> None:
        allx = np.vstack([r.x for r in self.rods])
        cached = self._query_cache
        # the end-of-step check queried the same positions (no damping, no node added): reuse it
        if cached is not None and cached[0].shape == allx.shape and np.array_equal(cached[0], allx):
            q = cached[1]
        else:
            q = self.tree.query(allx)
        self._query_cache = None
        # the wall: the cylinder of the segment each node is in, closed by a sphere past the end
        # of its vessel's last segment and before the start of a vessel without a parent
        axis, start, end = _wall_cylinders(q.segment, q.closest_mm, self._seg_axis, self._seg_a, self._seg_b,
                                           self._seg_last, self._seg_root_first)
        clear = self._clearances()
        # the vessel joined at a junction, for the nodes near their own wall (see CREST_MM)
        crest, rel = self.tree.lumen_index.related_depth(allx, q.segment, q.signed_distance_mm, CREST_LIMIT_MM,
                                                         with_segment=True)
        if self.rim_in_solve:
            # the joined vessel's segment per node, whose tube the solve rounds the rim with
            has_rel = rel >= 0
            rel_i = np.where(has_rel, rel, 0)
            rel_a, rel_b = self._seg_a[rel_i], self._seg_b[rel_i]
            rel_ra = np.where(has_rel, self._seg_ra[rel_i], -np.inf)
            rel_rb = self._seg_rb[rel_i]
        else:
            rel_a = rel_b = _NO_REL_POINTS
            rel_ra = rel_rb = _NO_REL_RADII
        if pairs is None:
            pairs = self._link_pairs()
        # at the rim of an ostium the node's cylinder is widened (see CREST_MM)
        widen = self.solver != "primal" or not self.rim_in_solve
        give = rim_allowance(crest) if widen else None
        inside = [_NO_NODES] * len(self.rods)
        for j, ks, *_ in pairs:
            inside[j] = ks
        if self.solver == "primal":
            self._primal_solve(x0, q, axis, start, end, clear, give, rel_a, rel_b, rel_ra, rel_rb, pairs, inside, final)
            return
        off = 0
        # the dual form (kept for comparison), device by device in the same order
        for k, rod in enumerate(self.rods):
            N = len(rod.x)
            sl = slice(off, off + N)
            off += N
            R = q.radius_mm[sl]
            if give is not None:
                R = R + give[sl]
            kb, alpha, _ = rod.rest_binormals()
            force = self._contact_solve_dual(rod, x0[k], q.closest_mm[sl], R - (clear[k] - rod.spec.outer_radius_mm),
                                             kb, alpha, rod.rest_lengths())
            force[inside[k]] = 0.0
            if final:
                self.wall_force[k] = force
                self._node_radius[k] = q.radius_mm[sl]

    def _primal_solve(self, x0: list[np.ndarray], q: Any, axis: np.ndarray, start: np.ndarray, end: np.ndarray,
                      clear: list[np.ndarray], give: np.ndarray | None, rel_a: np.ndarray, rel_b: np.ndarray,
                      rel_ra: np.ndarray, rel_rb: np.ndarray,
                      pairs: list[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]],
                      inside: list[np.ndarray], final: bool) -> None:
        """Every device's primal contact solve in one compiled call (:func:`_stack_contact_solve`):
        per device the rest shape, the solve with its wall, its coaxial links and friction, the
        friction state for the next step and the wall force; a node inside another device
        touches that device, not the vessel: the wall force there belongs to the outer device's
        node."""
        rods = self.rods
        n = len(rods)
        R = q.radius_mm if give is None else q.radius_mm + give
        profiles = [rod._profiles() for rod in rods]
        in_side: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = [_NO_PAIR] * n
        play = np.zeros(n)
        for j, ks, o1, o2, beta, gap in pairs:
            in_side[j] = (ks, o1, o2, beta)
            play[j] = gap
        c = self._constants()
        force = _stack_contact_solve(
            tuple(rod.x for rod in rods), tuple(x0), q.closest_mm, axis, start, end, R, tuple(clear),
            c.t0s, c.u0s, tuple(rod.theta for rod in rods),
            tuple(p[1] for p in profiles), tuple(p[0] for p in profiles), c.hs,
            np.array([max(rod.inserted_mm - rod.sigma[-1], 1e-3) for rod in rods]),
            c.masses, c.stretch, self.wall_compliance_mm_n, self.iterations, self.dt, self.max_step_mm,
            c.mus, tuple(s[0] for s in in_side), tuple(s[1] for s in in_side),
            tuple(s[2] for s in in_side), tuple(s[3] for s in in_side), play, self.link_stiffness,
            tuple(self._friction_state(k) for k in range(n)), self.friction_stiffness, tuple(inside),
            rel_a, rel_b, rel_ra, rel_rb)
        if final:
            off = 0
            for k, rod in enumerate(rods):
                N = len(rod.x)
                self.wall_force[k] = force[off:off + N]
                self._node_radius[k] = q.radius_mm[off:off + N]
                off += N

    def _friction_state(self, k: int) -> np.ndarray:
        """Device k's wall force at the previous step (N, per node), carried over by node index
        (node 0 is the tip; nodes come and go at the sheath, where there is no wall)."""
        N = len(self.rods[k].x)
        fn = self._fn_prev[k]
        if len(fn) != N:
            m = max(min(len(fn), N) - 2, 0)
            new_fn = np.zeros(N)
            new_fn[:m] = fn[:m]
            self._fn_prev[k] = new_fn
        return self._fn_prev[k]

    def _contact_solve_dual(self, rod: Rod, x0: np.ndarray, c: np.ndarray, R: np.ndarray, kb: np.ndarray,
                            alpha: np.ndarray, rest: np.ndarray) -> np.ndarray:
        """The dual (XPBD multiplier) form of :func:`_contact_solve` (kept for comparison)."""
        N = len(rod.x)
        d = rod.x - c
        dist = np.linalg.norm(d, axis=1)
        n = d / np.maximum(dist, 1e-9)[:, None]
        near = np.ones(N, dtype=bool)
        near[-2:] = False
        plane_d = np.einsum("ij,ij->i", n, c) + np.maximum(R - rod.spec.outer_radius_mm, 0.05)
        w = np.full(N, 1.0 / rod.mass_node)
        w[-2:] = 0.0
        lam = np.zeros(ROWS_PER_NODE * N)
        solve_chain(rod.x, w, rest, kb, alpha, near, n, plane_d, self.iterations, self.dt, lam,
                    rod.stretch_compliance, self.wall_compliance_mm_n, 1.0)
        lc = lam[0::ROWS_PER_NODE]
        force = np.abs(lc) / (self.dt * self.dt)
        disp = rod.x - x0
        dn = np.einsum("ij,ij->i", disp, n)
        tang = disp - dn[:, None] * n
        tl = np.linalg.norm(tang, axis=1)
        lim = rod.spec.friction * np.abs(lc) / rod.mass_node
        f = np.where(tl <= lim, 1.0, lim / np.maximum(tl, 1e-15))
        f[lc == 0.0] = 0.0
        f[-2:] = 0.0
        rod.x -= f[:, None] * tang
        solve_chain(rod.x, w, rest, kb, alpha, near, n, plane_d, 1, self.dt, np.zeros(ROWS_PER_NODE * N),
                    rod.stretch_compliance, self.wall_compliance_mm_n, 1.0)
        return force

    def _coaxial(self, pairs: list[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]]) -> None:
        if len(self.rods) < 2 or not pairs:
            return
        _coaxial_solve(tuple(r.x for r in self.rods), tuple(r.inverse_masses() for r in self.rods),
                       tuple(p[1] for p in pairs), tuple(p[2] for p in pairs), tuple(p[3] for p in pairs),
                       tuple(p[4] for p in pairs), np.array([p[0] for p in pairs], np.int64),
                       np.array([p[5] for p in pairs]), self.dt)

    def _torsion_all(self) -> None:
        """Every device's twist update (:func:`_rod_torsion`) in one compiled call."""
        rods = self.rods
        profiles = [rod._profiles() for rod in rods]
        c = self._constants()
        _stack_torsion(tuple(rod.theta for rod in rods), np.array([rod.hub_angle for rod in rods]),
                       tuple(rod.x for rod in rods), c.t0s, c.u0s, tuple(p[1] for p in profiles),
                       tuple(p[0] for p in profiles), tuple(p[2] for p in profiles), tuple(self.wall_force), c.mus,
                       c.radii)

    def _constants(self) -> _StackConstants:
        """The devices' fixed values as the compiled calls take them, gathered once."""
        c = self._const
        rods = tuple(self.rods)
        if c is None or c.rods != rods:  # (a device is equal only to itself)
            c = _StackConstants(rods, tuple(r.access_dir for r in rods), tuple(r._u0() for r in rods),
                                np.array([r.h for r in rods]), np.array([r.mass_node for r in rods]),
                                np.array([r.stretch_compliance for r in rods]),
                                np.array([r.spec.friction for r in rods]),
                                np.array([r.spec.outer_radius_mm for r in rods]))
            self._const = c
        return c

    # ------------------------------------------------------------------ checks and signals
    def _check(self) -> None:
        bad = _first_nonfinite(tuple(r.x for r in self.rods), tuple(r.theta for r in self.rods))
        if bad >= 0:
            raise PhysicsError(f"t={self.time_s:.3f}s: '{self.rods[bad].name}' diverged (NaN in the state)")
        allx = np.vstack([r.x for r in self.rods])
        q = self.tree.query(allx)
        self._query_cache = (allx, q)  # the next step starts where this one ended
        ends = np.cumsum([len(r.x) for r in self.rods])
        worst = _farthest_outside(q.signed_distance_mm, ends)  # the kinematic nodes at the sheath left out
        if worst > 5.0:
            raise PhysicsError(f"t={self.time_s:.3f}s: a device node is {worst:.1f} mm outside every vessel")

    def _limit_hub_force(self) -> None:
        """A hand cannot push or pull harder than ``hub_force_max_n``: beyond it the device slips
        in the fingers.

        The axial force at the sheath is the compression (or tension) of the access edge times
        EA/h; the inserted length is taken back to the length that this force allows. Without
        the limit in tension, a wire whose tip was caught (in a small branch, or held by
        friction round a bend) and pulled back at a set speed was stretched without bound,
        and the tension pressed it into the rims it passed with a hundred newtons and more.
        """
        limit = self.hub_force_max_n
        for rod in self.rods:
            K = rod.n_material
            rest = rod.inserted_mm - rod.sigma[-1]
            actual = math.dist(*rod.x[K - 1:K + 1].tolist())
            force = (rest - actual) / rod.stretch_compliance
            if abs(force) > limit:
                pushing = force > 0.0
                rod.inserted_mm -= (rest - actual) - math.copysign(limit, force) * rod.stretch_compliance
                self._pushed_blocked[rod.name] = self._pushed_blocked.get(rod.name, 0) + 1
                if self._pushed_blocked[rod.name] == 1:
                    self.log.append(f"t={self.time_s:.3f}s {rod.name}: {'pushing' if pushing else 'pulling'} against "
                                    f"{abs(force):.1f} N, the device slips in the fingers")
            else:
                self._pushed_blocked[rod.name] = 0

    def _shape_events(self) -> None:
        """Buckling (the hub goes in, the tip does not) and looping (the device turns back on itself)."""
        turns = _total_turns(tuple(rod.x for rod in self.rods)).tolist()
        for k, rod in enumerate(self.rods):
            hist = self._push_history[k]
            hist.append((self.time_s, self._commanded.get(rod.name, 0.0), tuple(rod.x[0].tolist())))
            while hist and self.time_s - hist[0][0] > 0.5:
                hist.popleft()
            buckled = False
            if len(hist) > 10:
                pushed = hist[-1][1] - hist[0][1]
                tip_moved = math.dist(hist[-1][2], hist[0][2])
                buckled = pushed > 5.0 and tip_moved < 0.2 * pushed
            # looping: the total turning of the inserted device exceeds 360 degrees between two
            # points less than 3 device diameters apart
            looped = bool(turns[k] > 2 * np.pi + 0.5 and self._self_contact(rod))
            for kind, on in (("buckling", buckled), ("loop", looped)):
                key = (kind, rod.name)
                if on and not self._shape_flags.get(key, False):
                    q = self.tree.query(rod.x[:1])
                    self.events.append(SafetyEvent(kind, rod.name, self.time_s, float(np.max(self.wall_force[k])),
                                                   self.tree.labels[int(q.branch[0])],
                                                   tuple(float(v) for v in rod.x[0])))
                self._shape_flags[key] = on

    @staticmethod
    def _self_contact(rod: Rod) -> bool:
        """True when two nodes far apart along the device come within 3 diameters of each other."""
        x = rod.x[:-2]
        if len(x) < 20:
            return False
        from scipy.spatial import cKDTree

        pairs = cKDTree(x).query_pairs(3.0 * rod.spec.outer_diameter_mm)
        return any(abs(i - j) * rod.h > 8.0 * np.pi * rod.spec.outer_diameter_mm + 20.0 for i, j in pairs)

    def _safety(self) -> None:
        th = self.thresholds
        for k, rod in enumerate(self.rods):
            f = self.wall_force[k]
            if len(f) == 0:
                continue
            # thresholds scale with the local lumen radius (a small vessel tolerates less): the
            # node closest to its own threshold decides
            radius = self._node_radius[k]
            if len(radius) != len(f):
                continue
            i, fmax, scale = _worst_node(f, radius)
            kinds = []
            if fmax > th.perforation_n * scale:
                kinds.append("perforation")
            elif fmax > th.perforation_risk_n * scale:
                kinds.append("perforation_risk")
            if i == 0 and fmax > th.dissection_n * scale:
                kinds.append("dissection")
            for kind in kinds:
                key = (kind, rod.name, i // 5)
                if key in self._active_events:
                    continue
                self._active_events.add(key)
                q = self.tree.query(rod.x[i:i + 1])
                self.events.append(SafetyEvent(kind, rod.name, self.time_s, fmax,
                                               self.tree.labels[int(q.branch[0])],
                                               tuple(float(v) for v in rod.x[i])))
            if not kinds:
                self._active_events = {e for e in self._active_events if e[1] != rod.name}

    # ------------------------------------------------------------------ queries
    def tip_branch(self, k: int = -1) -> str:
        """Label of the branch the tip of device ``k`` (default: innermost) is in."""
        q = self.tree.query(self.rods[k].x[:1])
        return self.tree.labels[int(q.branch[0])]

    def elastic_energy(self) -> float:
        """Elastic energy of all devices (bending + torsion + stretch), N·mm."""
        from iratrainer.physics.solver import bending_energy

        E = 0.0
        for rod in self.rods:
            kb, alpha, _ = rod.rest_binormals()
            N = len(rod.x)
            c = np.arange(1, N - 1)
            E += bending_energy(rod.x, c + 1, c, c - 1, kb[c], alpha[c])
            sig = np.concatenate([rod.sigma, [rod.inserted_mm, rod.inserted_mm + rod.h]])
            gj = rod.spec.gj_at(0.5 * (sig[:-1] + sig[1:])) / rod.h
            E += float(0.5 * np.sum(gj * np.diff(rod.theta) ** 2))
            ext = np.linalg.norm(np.diff(rod.x, axis=0), axis=1) - rod.rest_lengths()
            E += float(0.5 * np.sum(ext[:-1] ** 2) / rod.stretch_compliance)
        return float(E)

