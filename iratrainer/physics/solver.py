"""The constraint solver of the rod model: extended position-based dynamics (XPBD), numba.

Every device is a chain of nodes (node 0 = the tip). One call of :func:`solve` runs
Gauss-Seidel iterations over, in order:

* **stretch** (inextensibility): ``|x_j - x_i| = rest``, zero compliance;
* **bending**: the discrete curvature binormal of each node,
  ``κb = 2 (e1 × e2) / (|e1||e2| + e1·e2)``, held to its rest value (the shaped tip, turned
  by the material twist) with compliance ``α = h / EI``, i.e. the energy
  ``EI/(2h) |κb - κb_rest|²`` of a Kirchhoff rod (Bergou et al., *Discrete elastic rods*,
  SIGGRAPH 2008, eq. 1 and the gradient of κb);
* **coaxial links**: an inner device stays inside the outer device's lumen,
  ``|x_in - x_out(s)| <= gap``, two-way;
* **wall contact**: each node stays behind the tangent plane of the lumen wall found by
  the tree's signed-distance query at the start of the step, ``n·x <= d``.

Then Coulomb friction on the wall contacts (static and kinetic, position-level, as in
Müller et al., *Detailed rigid body simulation with XPBD*, 2020). The Lagrange
multipliers give the constraint forces: wall force = λ / dt² (N).

Units: mm, s, N; masses in N·s²/mm (1 kg = 1e-3 N·s²/mm).
"""

from __future__ import annotations

import numba as nb
import numpy as np

__all__ = ["solve", "curvature_binormal", "bending_energy"]


@nb.njit(cache=True, inline="always", error_model="numpy")
def _cross(a0, a1, a2, b0, b1, b2):  # pragma: no cover - numba
    return a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0


@nb.njit(cache=True, error_model="numpy")
def curvature_binormal(e1, e2):  # pragma: no cover - numba
    """κb of two consecutive edges (incoming e1, outgoing e2); |κb| = 2 tan(turning angle / 2)."""
    c0, c1, c2 = _cross(e1[0], e1[1], e1[2], e2[0], e2[1], e2[2])
    n1 = np.sqrt(e1[0] ** 2 + e1[1] ** 2 + e1[2] ** 2)
    n2 = np.sqrt(e2[0] ** 2 + e2[1] ** 2 + e2[2] ** 2)
    D = n1 * n2 + e1[0] * e2[0] + e1[1] * e2[1] + e1[2] * e2[2]
    D = max(D, 1e-9 * n1 * n2 + 1e-300)  # a full fold (antiparallel edges) has no finite κb
    out = np.empty(3)
    out[0] = 2.0 * c0 / D
    out[1] = 2.0 * c1 / D
    out[2] = 2.0 * c2 / D
    return out


@nb.njit(cache=True, error_model="numpy")
def _bend_jacobians(e1, e2, kb, J1, J2):  # pragma: no cover - numba
    """∂κb/∂e1 -> J1, ∂κb/∂e2 -> J2 (3x3)."""
    n1 = np.sqrt(e1[0] ** 2 + e1[1] ** 2 + e1[2] ** 2)
    n2 = np.sqrt(e2[0] ** 2 + e2[1] ** 2 + e2[2] ** 2)
    D = n1 * n2 + e1[0] * e2[0] + e1[1] * e2[1] + e1[2] * e2[2]
    D = max(D, 1e-9 * n1 * n2 + 1e-300)
    n1 = max(n1, 1e-12)
    n2 = max(n2, 1e-12)
    g1 = np.empty(3)
    g2 = np.empty(3)
    for a in range(3):
        g1[a] = n2 / n1 * e1[a] + e2[a]
        g2[a] = n1 / n2 * e2[a] + e1[a]
    # -2[e2]x and 2[e1]x
    S2 = np.array([[0.0, -e2[2], e2[1]], [e2[2], 0.0, -e2[0]], [-e2[1], e2[0], 0.0]])
    S1 = np.array([[0.0, -e1[2], e1[1]], [e1[2], 0.0, -e1[0]], [-e1[1], e1[0], 0.0]])
    for a in range(3):
        for b in range(3):
            J1[a, b] = (-2.0 * S2[a, b] - kb[a] * g1[b]) / D
            J2[a, b] = (2.0 * S1[a, b] - kb[a] * g2[b]) / D


@nb.njit(cache=True, error_model="numpy")
def _solve3(A, r):  # pragma: no cover - numba
    """Solve the 3x3 system A y = r (Cramer)."""
    det = (A[0, 0] * (A[1, 1] * A[2, 2] - A[1, 2] * A[2, 1])
           - A[0, 1] * (A[1, 0] * A[2, 2] - A[1, 2] * A[2, 0])
           + A[0, 2] * (A[1, 0] * A[2, 1] - A[1, 1] * A[2, 0]))
    y = np.zeros(3)
    if abs(det) < 1e-300:
        return y
    inv = 1.0 / det
    y[0] = inv * (r[0] * (A[1, 1] * A[2, 2] - A[1, 2] * A[2, 1]) - A[0, 1] * (r[1] * A[2, 2] - A[1, 2] * r[2])
                  + A[0, 2] * (r[1] * A[2, 1] - A[1, 1] * r[2]))
    y[1] = inv * (A[0, 0] * (r[1] * A[2, 2] - A[1, 2] * r[2]) - r[0] * (A[1, 0] * A[2, 2] - A[1, 2] * A[2, 0])
                  + A[0, 2] * (A[1, 0] * r[2] - r[1] * A[2, 0]))
    y[2] = inv * (A[0, 0] * (A[1, 1] * r[2] - r[1] * A[2, 1]) - A[0, 1] * (A[1, 0] * r[2] - r[1] * A[2, 0])
                  + r[0] * (A[1, 0] * A[2, 1] - A[1, 1] * A[2, 0]))
    return y


@nb.njit(cache=True, error_model="numpy")
def solve(x, x0, w, s_i, s_j, s_rest, b_p, b_c, b_d, b_rest, b_alpha, c_node, c_n, c_d, c_mu,
          x_in, x_o1, x_o2, x_beta, x_gap, n_iter, dt, lam_b, lam_c):  # pragma: no cover - numba
    """Run ``n_iter`` XPBD iterations in place on ``x``; friction against ``x0`` (start of step).

    Arrays: stretch (s_i, s_j, s_rest); bending (proximal, centre, distal node, rest κb (B,3),
    compliance); contact (node, normal (C,3), offset, friction); coaxial (inner node, outer
    nodes o1 and o2, weight of o2, allowed gap). ``lam_b`` (B,3) and ``lam_c`` (C,) receive
    the accumulated multipliers (zeroed here).
    """
    inv_dt2 = 1.0 / (dt * dt)
    lam_b[:] = 0.0
    lam_c[:] = 0.0
    J1 = np.empty((3, 3))
    J2 = np.empty((3, 3))
    Jp = np.empty((3, 3))
    Jc = np.empty((3, 3))
    Jd = np.empty((3, 3))
    A = np.empty((3, 3))
    e1 = np.empty(3)
    e2 = np.empty(3)
    r = np.empty(3)
    for _ in range(n_iter):
        # ---- stretch
        for k in range(s_i.shape[0]):
            i, j = s_i[k], s_j[k]
            wi, wj = w[i], w[j]
            ws = wi + wj
            if ws == 0.0:
                continue
            dx = x[j, 0] - x[i, 0]
            dy = x[j, 1] - x[i, 1]
            dz = x[j, 2] - x[i, 2]
            L = np.sqrt(dx * dx + dy * dy + dz * dz)
            if L < 1e-12:
                continue
            C = (L - s_rest[k]) / (ws * L)
            x[i, 0] += wi * C * dx
            x[i, 1] += wi * C * dy
            x[i, 2] += wi * C * dz
            x[j, 0] -= wj * C * dx
            x[j, 1] -= wj * C * dy
            x[j, 2] -= wj * C * dz
        # ---- bending (3-vector constraint per node)
        for k in range(b_c.shape[0]):
            p, c, d = b_p[k], b_c[k], b_d[k]
            for a in range(3):
                e1[a] = x[c, a] - x[p, a]
                e2[a] = x[d, a] - x[c, a]
            kb = curvature_binormal(e1, e2)
            _bend_jacobians(e1, e2, kb, J1, J2)
            for a in range(3):
                for b in range(3):
                    Jp[a, b] = -J1[a, b]
                    Jc[a, b] = J1[a, b] - J2[a, b]
                    Jd[a, b] = J2[a, b]
            at = b_alpha[k] * inv_dt2
            for a in range(3):
                for b in range(3):
                    s = 0.0
                    for m in range(3):
                        s += w[p] * Jp[a, m] * Jp[b, m] + w[c] * Jc[a, m] * Jc[b, m] + w[d] * Jd[a, m] * Jd[b, m]
                    A[a, b] = s + (at if a == b else 0.0)
                r[a] = -(kb[a] - b_rest[k, a]) - at * lam_b[k, a]
            dl = _solve3(A, r)
            for a in range(3):
                lam_b[k, a] += dl[a]
            for m in range(3):
                sp = 0.0
                sc = 0.0
                sd = 0.0
                for a in range(3):
                    sp += Jp[a, m] * dl[a]
                    sc += Jc[a, m] * dl[a]
                    sd += Jd[a, m] * dl[a]
                x[p, m] += w[p] * sp
                x[c, m] += w[c] * sc
                x[d, m] += w[d] * sd
        # ---- coaxial links: inner node within `gap` of the outer centreline point
        for k in range(x_in.shape[0]):
            i, o1, o2, be = x_in[k], x_o1[k], x_o2[k], x_beta[k]
            q0 = (1.0 - be) * x[o1, 0] + be * x[o2, 0]
            q1 = (1.0 - be) * x[o1, 1] + be * x[o2, 1]
            q2 = (1.0 - be) * x[o1, 2] + be * x[o2, 2]
            dx, dy, dz = x[i, 0] - q0, x[i, 1] - q1, x[i, 2] - q2
            L = np.sqrt(dx * dx + dy * dy + dz * dz)
            C = L - x_gap[k]
            if C <= 0.0 or L < 1e-12:
                continue
            wo1 = w[o1] * (1.0 - be) ** 2
            wo2 = w[o2] * be ** 2
            ws = w[i] + wo1 + wo2
            if ws == 0.0:
                continue
            f = C / (ws * L)
            x[i, 0] -= w[i] * f * dx
            x[i, 1] -= w[i] * f * dy
            x[i, 2] -= w[i] * f * dz
            x[o1, 0] += w[o1] * (1.0 - be) * f * dx
            x[o1, 1] += w[o1] * (1.0 - be) * f * dy
            x[o1, 2] += w[o1] * (1.0 - be) * f * dz
            x[o2, 0] += w[o2] * be * f * dx
            x[o2, 1] += w[o2] * be * f * dy
            x[o2, 2] += w[o2] * be * f * dz
        # ---- wall contact: n·x <= d
        for k in range(c_node.shape[0]):
            i = c_node[k]
            if w[i] == 0.0:
                continue
            C = c_n[k, 0] * x[i, 0] + c_n[k, 1] * x[i, 1] + c_n[k, 2] * x[i, 2] - c_d[k]
            if C <= 0.0:
                continue
            dl = -C / w[i]
            lam_c[k] += dl
            x[i, 0] += w[i] * dl * c_n[k, 0]
            x[i, 1] += w[i] * dl * c_n[k, 1]
            x[i, 2] += w[i] * dl * c_n[k, 2]
    # ---- Coulomb friction on the wall contacts (position level)
    for k in range(c_node.shape[0]):
        i = c_node[k]
        if lam_c[k] == 0.0 or w[i] == 0.0:
            continue
        nx, ny, nz = c_n[k, 0], c_n[k, 1], c_n[k, 2]
        dx, dy, dz = x[i, 0] - x0[i, 0], x[i, 1] - x0[i, 1], x[i, 2] - x0[i, 2]
        dn = dx * nx + dy * ny + dz * nz
        tx, ty, tz = dx - dn * nx, dy - dn * ny, dz - dn * nz
        tl = np.sqrt(tx * tx + ty * ty + tz * tz)
        if tl < 1e-15:
            continue
        # normal impulse as a displacement: |λ| w
        lim = c_mu[k] * abs(lam_c[k]) * w[i]
        f = 1.0 if tl <= lim else lim / tl
        x[i, 0] -= f * tx
        x[i, 1] -= f * ty
        x[i, 2] -= f * tz


@nb.njit(cache=True, error_model="numpy")
def bending_energy(x, b_p, b_c, b_d, b_rest, b_alpha):  # pragma: no cover - numba
    """Σ |κb - κb_rest|² / (2 α): the elastic bending energy (N·mm)."""
    e1 = np.empty(3)
    e2 = np.empty(3)
    E = 0.0
    for k in range(b_c.shape[0]):
        for a in range(3):
            e1[a] = x[b_c[k], a] - x[b_p[k], a]
            e2[a] = x[b_d[k], a] - x[b_c[k], a]
        kb = curvature_binormal(e1, e2)
        s = 0.0
        for a in range(3):
            s += (kb[a] - b_rest[k, a]) ** 2
        E += 0.5 * s / b_alpha[k]
    return E
