"""``iratrainer validate physics``: the rod model against beam theory and conservation laws.

Each check yields ``{"check", "value", "reference", "error", "tolerance", "passed", ...}``:

* ``cantilever_small_deflection``: tip deflection of a clamped rod under a tip load,
  against δ = F·L³ / (3·E·I) (Euler-Bernoulli), within 3%.
* ``cantilever_elastica``: tip rotation under a large load (F·L²/EI = 3), against the
  elastica, θ'' = -(F/EI)·cos θ, θ(0) = 0, θ'(L) = 0, solved by shooting (scipy).
* ``torque_transmission``, ``torque_transmission_backwards``: a wire in a straight tube, no
  friction: after the hub turns by +90° (or -90°), the tip has turned by as much (steady
  state, one to one).
* ``no_energy_gain``: a shaped wire released inside a curved tube with no hub input: its
  elastic energy never increases from one step to the next.
* ``fuzz``: seeded random hub inputs at full speed in the atlas: no NaN, no node outside
  every lumen by more than 0.5 mm, for the requested simulated time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np

from iratrainer.anatomy.tree import Branch, VesselTree
from iratrainer.physics.catalogue import default_catalogue
from iratrainer.physics.chain import ROWS_PER_NODE, solve_chain
from iratrainer.physics.primal import NO_CYLINDERS, NO_FRICTION, NO_LINKS, NO_TENSION, solve_chain_primal
from iratrainer.physics.stack import (
    MAX_ADVANCE_MM_S,
    MAX_ROTATE_DEG_S,
    DeviceStack,
    HubCommand,
    PhysicsError,
    outside_rounded_mm,
)

__all__ = ["run_checks", "cantilever", "elastica_tip_angle"]


def cantilever(F_n: float, L_mm: float = 100.0, EI: float = 100.0, N: int = 41, steps: int = 4000,
               mass: float = 1e-7, solver: str = "primal") -> np.ndarray:
    """Static shape of a clamped rod with a vertical tip load F (N), via the chain solver.

    The clamp is the middle of the fixed first edge, at x = 0; the tip starts at x = L.
    ``solver``: ``"primal"`` (the one the device stack uses) or ``"dual"``.
    Returns the node positions (tip first).
    """
    h = L_mm / (N - 1.5)
    x = np.zeros((N, 3))
    x[:, 0] = L_mm - np.arange(N) * h
    w = np.full(N, 1.0 / mass)
    w[-2:] = 0.0
    rest = np.full(N - 1, h)
    kb = np.zeros((N, 3))
    alpha = np.full(N, h / EI)
    on = np.zeros(N, np.bool_)
    lam = np.zeros(ROWS_PER_NODE * N)
    f = np.zeros((N, 3))
    f[0, 2] = -F_n
    dt = 1e-3
    force = np.zeros(N)
    for _ in range(steps):
        x = x + dt * dt * w[:, None] * f
        if solver == "primal":
            solve_chain_primal(x, x.copy(), w, rest, kb, alpha, 0.0, on, np.zeros((N, 3)), np.zeros(N), 0.0, 4,
                               dt, 1.0, force, *NO_LINKS, np.inf, *NO_CYLINDERS, *NO_FRICTION,
                               NO_TENSION)
        else:
            solve_chain(x, w, rest, kb, alpha, on, np.zeros((N, 3)), np.zeros(N), 4, dt, lam)
    return x


def elastica_tip_angle(load: float) -> float:
    """Tip rotation (radians) of the elastica cantilever with F·L²/EI = ``load``."""
    from scipy.integrate import solve_ivp
    from scipy.optimize import brentq

    def end(k0: float) -> tuple[float, float]:
        sol = solve_ivp(lambda s, y: [y[1], -load * math.cos(y[0])], [0.0, 1.0], [0.0, k0], rtol=1e-10,
                        atol=1e-12)
        return float(sol.y[1, -1]), float(sol.y[0, -1])

    k0 = brentq(lambda k: end(k)[0], 1e-6, 10.0)
    return end(k0)[1]


def _tube(length: float = 250.0, r: float = 2.0, bend_deg: float = 0.0) -> VesselTree:
    """A tube along +z from the origin (entry at z = length: devices enter downwards)."""
    n = int(length / 1.0) + 1
    s = np.linspace(0.0, length, n)
    if bend_deg == 0:
        pts = np.stack([np.zeros(n), np.zeros(n), s], 1)
    else:
        R = length / math.radians(bend_deg)
        th = s / R
        pts = np.stack([R * (1 - np.cos(th)), np.zeros(n), R * np.sin(th)], 1)
    # the tree's points run with the flow; the device enters at the last point (like R_CFA)
    return VesselTree([Branch("TUBE", None, 0, pts, np.full(n, r))])


def _check(name: str, value: float, reference: float, tol: float, **extra: Any) -> dict[str, Any]:
    err = abs(value - reference) / max(abs(reference), 1e-12)
    return {"check": name, "value": value, "reference": reference, "error": err, "tolerance": tol,
            "passed": bool(err <= tol), **extra}


def check_cantilever() -> Iterator[dict[str, Any]]:
    """Small and large deflection of a cantilever against beam theory, with both solvers."""
    F, L, EI = 0.001, 100.0, 100.0
    for solver in ("primal", "dual"):
        x = cantilever(F, L, EI, steps=3000, mass=1e-9, solver=solver)
        yield _check("cantilever_small_deflection", float(-x[0, 2]), F * L ** 3 / (3 * EI), 0.03, unit="mm",
                     solver=solver, workload="41 nodes, L 100 mm, EI 100 N·mm², F 1 mN (δ/L 3%)")
    load = 3.0
    for solver in ("primal", "dual"):
        x = cantilever(load * EI / L ** 2, L, EI, steps=20000, solver=solver)
        t = x[0] - x[1]
        tip = math.atan2(-t[2], t[0])
        yield _check("cantilever_elastica", math.degrees(tip), math.degrees(elastica_tip_angle(load)), 0.03,
                     unit="deg", solver=solver,
                     workload="F·L²/EI = 3, tip rotation against the elastica (shooting method)")


def check_torque() -> Iterator[dict[str, Any]]:
    """One-to-one torque transmission in a straight tube without friction, turned either way."""
    spec = replace(default_catalogue()["microwire_014"], friction=0.0, curves=())
    tree = _tube()
    for name, deg_s in (("torque_transmission", 180.0), ("torque_transmission_backwards", -180.0)):
        st = DeviceStack(tree, [spec], access_label="TUBE", inserted_mm=[150.0])
        rod = st.rods[0]
        for _ in range(500):
            st.step({spec.name: HubCommand(0.0, deg_s)})  # 90 degrees in 0.5 s
        for _ in range(500):
            st.step()
        turn = math.copysign(90.0, deg_s)
        yield _check(name, math.degrees(rod.theta[0]), math.degrees(rod.hub_angle), 0.01, unit="deg",
                     workload=f"0.014 in wire, 150 mm in a straight 4 mm tube, hub turned {turn:+.0f} deg")


def check_energy() -> Iterator[dict[str, Any]]:
    """A shaped tip released in a curved tube: elastic energy never increases."""
    spec = default_catalogue()["guidewire_035_angled"]
    tree = _tube(bend_deg=60.0, r=3.0)
    st = DeviceStack(tree, [spec], access_label="TUBE", inserted_mm=[120.0])
    energies = []
    for _ in range(400):
        st.step()
        energies.append(st.elastic_energy())
    e = np.array(energies)
    rise = float(np.max(np.diff(e) / np.maximum(e[:-1], 1e-12))) if len(e) > 1 else 0.0
    yield {"check": "no_energy_gain", "value": max(rise, 0.0), "reference": 0.0, "error": max(rise, 0.0),
           "tolerance": 1e-6, "passed": bool(rise <= 1e-6), "unit": "relative rise per step",
           "workload": "0.035 in angled wire, 120 mm in a 60-degree curved tube, 400 steps without input",
           "energy_start_n_mm": float(e[0]), "energy_end_n_mm": float(e[-1])}


def check_fuzz(seconds: float = 20.0, seed: int = 0) -> Iterator[dict[str, Any]]:
    """Random hub inputs at full speed in the atlas: no divergence, no escape from the lumen."""
    from iratrainer.anatomy.atlas import build_atlas

    tree = build_atlas()
    cat = default_catalogue()
    st = DeviceStack(tree, [cat["vertebral_5F"], cat["guidewire_035_angled"]], inserted_mm=[80.0, 120.0])
    rng = np.random.default_rng(seed)
    steps = int(seconds / st.dt)
    worst = -np.inf
    t0 = time.perf_counter()
    error = ""
    cmds: dict[str, HubCommand] = {}
    try:
        for i in range(steps):
            if i % 250 == 0:  # new random command every 0.25 s
                cmds = {r.name: HubCommand(float(rng.uniform(-1, 1) * MAX_ADVANCE_MM_S),
                                           float(rng.uniform(-1, 1) * MAX_ROTATE_DEG_S)) for r in st.rods}
            st.step(cmds)
            if i % 50 == 0:
                sd = outside_rounded_mm(tree, np.vstack([r.x[:-2] for r in st.rods]))  # ostia rounded, as in contact
                worst = max(worst, float(sd.max()))
    except PhysicsError as exc:
        error = str(exc)
    except Exception as exc:  # any other failure is a failed check, reported, not a crash
        error = f"{type(exc).__name__}: {exc}"
    ok = not error and worst <= 0.5
    yield {"check": "fuzz", "value": worst, "reference": 0.0, "error": max(worst, 0.0), "tolerance": 0.5,
           "passed": bool(ok), "unit": "mm (worst node outside the lumen, its ostia rounded as the contact has them)",
           "workload": f"{seconds:g} s of seeded random hub inputs at full speed (seed {seed}), 5F catheter "
                       f"over a 0.035 in wire from the right femoral artery",
           "wall_s": round(time.perf_counter() - t0, 2), "divergence": error}


def run_checks(fuzz_seconds: float = 20.0) -> Iterator[dict[str, Any]]:
    """All checks, in order."""
    yield from check_cantilever()
    yield from check_torque()
    yield from check_energy()
    yield from check_fuzz(fuzz_seconds)
