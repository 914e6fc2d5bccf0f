"""Direct (banded) XPBD solve of one device chain: stretch, bending and wall contact together.

Gauss-Seidel position-based dynamics transmits force through a long stiff chain only a
few nodes per iteration, so a wire pushed at its hub would feel far softer than it is.
Here all the constraints of one device are solved together each iteration (Deul et al.,
*Direct position-based solver for stiff rods*, 2018): with ``J`` the constraint gradient
and ``W`` the inverse masses,

    (J W Jᵀ + α̃) Δλ = -C(x) - α̃ λ,    x += W Jᵀ Δλ,    λ += Δλ,

a Gauss-Newton step on the constrained energy (``α̃ = α / dt²``). Rows are ordered along
the chain, five per node (wall contact of node k, stretch of edge k, bending at node
k+1), so the matrix is banded (half-bandwidth 14) and a banded Cholesky solves it in
O(N). Contacts are inequalities: a contact row is active while its constraint is
violated or pushing; rows that would pull are released.

Node 0 is the tip. Units: mm, s, N; masses in N·s²/mm.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from iratrainer.physics.solver import _bend_jacobians, curvature_binormal

__all__ = ["solve_chain", "ROWS_PER_NODE", "HALF_BAND"]

ROWS_PER_NODE = 5
HALF_BAND = 14


@nb.njit(cache=True, error_model="numpy")
def _cholesky_band_solve(A, b, n, bw, L):  # pragma: no cover - numba
    """Solve A y = b in place on ``b``; A SPD in band storage A[i, j - i + bw]; ``L`` is scratch.

    Each inner product is summed in two interleaved partial sums, and the pivots are
    inverted once: the factorisation of a chain's band is bound by the latency of these
    dependent sums, and this takes a quarter off it (same result to rounding).
    """
    inv = np.empty(n)
    for i in range(n):
        j0 = max(0, i - bw)
        for j in range(j0, i + 1):
            s0 = A[i, j - i + bw]
            s1 = 0.0
            k = max(j0, j - bw)
            while k + 1 < j:
                s0 -= L[i, k - i + bw] * L[j, k - j + bw]
                s1 -= L[i, k + 1 - i + bw] * L[j, k + 1 - j + bw]
                k += 2
            if k < j:
                s0 -= L[i, k - i + bw] * L[j, k - j + bw]
            s = s0 + s1
            if i == j:
                # a row dependent on earlier ones (e.g. a contact along a stretched edge) leaves a
                # tiny pivot: give it a large one, so that its multiplier stays ~0 this iteration
                d = A[i, bw]
                p = np.sqrt(s) if s > 1e-9 * d else np.sqrt(d) * 1e3 + 1e-150
                L[i, bw] = p
                inv[i] = 1.0 / p
            else:
                L[i, j - i + bw] = s * inv[j]
    for i in range(n):
        s0 = b[i]
        s1 = 0.0
        k = max(0, i - bw)
        while k + 1 < i:
            s0 -= L[i, k - i + bw] * b[k]
            s1 -= L[i, k + 1 - i + bw] * b[k + 1]
            k += 2
        if k < i:
            s0 -= L[i, k - i + bw] * b[k]
        b[i] = (s0 + s1) * inv[i]
    for i in range(n - 1, -1, -1):
        s0 = b[i]
        s1 = 0.0
        ke = min(n, i + bw + 1)
        k = i + 1
        while k + 1 < ke:
            s0 -= L[k, i - k + bw] * b[k]
            s1 -= L[k + 1, i - k - 1 + bw] * b[k + 1]
            k += 2
        if k < ke:
            s0 -= L[k, i - k + bw] * b[k]
        b[i] = (s0 + s1) * inv[i]


@nb.njit(cache=True, error_model="numpy")
def _banded_cholesky_solve(A, b, n, bw):  # pragma: no cover - numba
    """Solve A y = b, A symmetric positive definite stored as A[i, j - i + bw] for |i - j| <= bw."""
    y = b.copy()
    _cholesky_band_solve(A, y, n, bw, np.zeros((n, 2 * bw + 1)))
    return y


@nb.njit(cache=True, error_model="numpy")
def solve_chain(x, w, rest, b_rest, b_alpha, c_on, c_n, c_d, n_iter, dt, lam, s_alpha=0.0, c_alpha=0.0,
                max_step=1.0):  # pragma: no cover - numba
    """Solve one chain in place.

    Args:
        x: (N, 3) positions, modified in place (predicted positions on entry).
        w: (N,) inverse masses (0 = kinematic node, e.g. at the access point).
        rest: (N-1,) rest length of edge k (nodes k, k+1).
        b_rest: (N, 3) rest curvature binormal at node k (used for 1 <= k <= N-2).
        b_alpha: (N,) bending compliance h / EI at node k.
        c_on: (N,) 1 where node k has a wall contact plane this step.
        c_n, c_d: (N, 3), (N,): plane ``n·x <= d`` of node k.
        n_iter: Gauss-Newton iterations.
        dt: time step, s.
        s_alpha: stretch compliance h / EA (mm/N); 0 = inextensible.
        c_alpha: wall compliance (mm/N): 1 / contact stiffness; keeps the system regular
            when linearised wall planes and inextensible edges disagree.
        max_step: largest node displacement per iteration (mm); a longer Gauss-Newton step
            is scaled down (trust region).
        lam: (5N,) multipliers, zeroed here and accumulated (row 5k: contact of node k,
            5k+1: stretch k, 5k+2..4: bending at node k+1).
    """
    N = x.shape[0]
    R = ROWS_PER_NODE
    n = R * N
    bw = HALF_BAND
    inv_dt2 = 1.0 / (dt * dt)
    lam[:] = 0.0
    # per row: up to 3 nodes, 3 gradient components each
    rn = np.full((n, 3), -1, np.int64)
    rg = np.zeros((n, 3, 3))
    C = np.zeros(n)
    at = np.zeros(n)
    active = np.zeros(n, np.bool_)
    J1 = np.empty((3, 3))
    J2 = np.empty((3, 3))
    e1 = np.empty(3)
    e2 = np.empty(3)
    A = np.zeros((n, 2 * bw + 1))
    rhs = np.zeros(n)
    for _it in range(n_iter):
        rn[:, :] = -1
        rg[:, :, :] = 0.0
        active[:] = False
        for k in range(N):
            r0 = R * k
            # contact of node k
            if c_on[k] and w[k] > 0.0:
                Cc = c_n[k, 0] * x[k, 0] + c_n[k, 1] * x[k, 1] + c_n[k, 2] * x[k, 2] - c_d[k]
                if Cc > 0.0 or lam[r0] < 0.0:
                    active[r0] = True
                    C[r0] = Cc
                    at[r0] = c_alpha * inv_dt2
                    rn[r0, 0] = k
                    for a in range(3):
                        rg[r0, 0, a] = c_n[k, a]
            # stretch of edge k
            if k < N - 1:
                r = r0 + 1
                dx = x[k + 1, 0] - x[k, 0]
                dy = x[k + 1, 1] - x[k, 1]
                dz = x[k + 1, 2] - x[k, 2]
                L = np.sqrt(dx * dx + dy * dy + dz * dz)
                if L > 1e-12 and (w[k] > 0.0 or w[k + 1] > 0.0):
                    active[r] = True
                    C[r] = L - rest[k]
                    at[r] = s_alpha * inv_dt2
                    rn[r, 0] = k
                    rn[r, 1] = k + 1
                    rg[r, 0, 0], rg[r, 0, 1], rg[r, 0, 2] = -dx / L, -dy / L, -dz / L
                    rg[r, 1, 0], rg[r, 1, 1], rg[r, 1, 2] = dx / L, dy / L, dz / L
            # bending at node c = k + 1 (edges from c+1 -> c -> c-1, flow towards the tip)
            c = k + 1
            if 1 <= c <= N - 2 and (w[c - 1] > 0.0 or w[c] > 0.0 or w[c + 1] > 0.0):
                for a in range(3):
                    e1[a] = x[c, a] - x[c + 1, a]
                    e2[a] = x[c - 1, a] - x[c, a]
                kb = curvature_binormal(e1, e2)
                _bend_jacobians(e1, e2, kb, J1, J2)
                for q in range(3):
                    r = r0 + 2 + q
                    active[r] = True
                    C[r] = kb[q] - b_rest[c, q]
                    at[r] = b_alpha[c] * inv_dt2
                    rn[r, 0] = c + 1
                    rn[r, 1] = c
                    rn[r, 2] = c - 1
                    for a in range(3):
                        rg[r, 0, a] = -J1[q, a]
                        rg[r, 1, a] = J1[q, a] - J2[q, a]
                        rg[r, 2, a] = J2[q, a]
        # assemble and solve; a contact row whose multiplier would pull is released and the
        # system solved again without it (active-set iteration, at most 4 passes)
        for _attempt in range(4):
            A[:, :] = 0.0
            for i in range(n):
                if not active[i]:
                    A[i, bw] = 1.0
                    rhs[i] = 0.0
                    continue
                rhs[i] = -C[i] - at[i] * lam[i]
                for j in range(i, min(n, i + bw + 1)):
                    if not active[j]:
                        continue
                    s = 0.0
                    for p in range(3):
                        ni = rn[i, p]
                        if ni < 0:
                            continue
                        for q in range(3):
                            if rn[j, q] == ni:
                                s += w[ni] * (rg[i, p, 0] * rg[j, q, 0] + rg[i, p, 1] * rg[j, q, 1]
                                              + rg[i, p, 2] * rg[j, q, 2])
                    if j == i:
                        s += at[i] + 1e-12
                    A[i, j - i + bw] = s
                    A[j, i - j + bw] = s
            dl = _banded_cholesky_solve(A, rhs, n, bw)
            released = False
            for i in range(0, n, R):
                if active[i] and lam[i] + dl[i] > 0.0:
                    active[i] = False
                    released = True
            if not released:
                break
        for i in range(0, n, R):
            if active[i] and lam[i] + dl[i] > 0.0:
                dl[i] = -lam[i]
        for i in range(n):
            if not active[i]:
                dl[i] = 0.0
        dx = np.zeros((N, 3))
        for i in range(n):
            d = dl[i]
            if d == 0.0:
                continue
            for p in range(3):
                ni = rn[i, p]
                if ni < 0:
                    continue
                for a in range(3):
                    dx[ni, a] += w[ni] * rg[i, p, a] * d
        big = 0.0
        for k in range(N):
            m = np.sqrt(dx[k, 0] ** 2 + dx[k, 1] ** 2 + dx[k, 2] ** 2)
            if m > big:
                big = m
        scale = 1.0 if big <= max_step else max_step / big
        for i in range(n):
            lam[i] += scale * dl[i]
        for k in range(N):
            for a in range(3):
                x[k, a] += scale * dx[k, a]
