"""Node-space (primal) banded Gauss-Newton solve of one device chain.

The same energy as :mod:`iratrainer.physics.chain` (inertia + bending + stretch + wall),

    E(x) = |x - x_pred|²_M / (2 dt²) + Σ_rows C_r(x)² / (2 α_r),

minimised over the node positions with Gauss-Newton steps
``(M/dt² + Σ Jᵀ J / α) Δx = -(M (x - x_pred)/dt² + Σ Jᵀ C / α)``. Bending at node c
couples nodes c-1..c+1, so with 3 unknowns per node the matrix is banded with
half-bandwidth 8 (block pentadiagonal in 3×3 node blocks, factorised by a block Cholesky), five times less work
than the dual form with its five multipliers per node. Wall contact is a one-sided
penalty (active while violated), whose force ``C / α`` is the wall force in newtons,
solved as an active set: a plane the Newton step would carry a node across joins the
model as reached and the step is solved again (without it, the step ignored the plane,
the node landed deep in the wall, and the penalty reported tens of newtons for a
fraction of a millimetre of overshoot). Coaxial links to the devices around and inside
this one are part of the same energy (see :func:`solve_chain_primal`).
The result at convergence is the XPBD fixed point (Macklin et al. 2016: XPBD is a
Gauss-Seidel solve of the same optimality conditions).

Node 0 is the tip; nodes with ``w = 0`` are kinematic.
"""

from __future__ import annotations

import numba as nb
import numpy as np

__all__ = ["solve_chain_primal", "PRIMAL_HALF_BAND", "NO_LINKS", "NO_CYLINDERS", "NO_FRICTION", "NO_TENSION"]

PRIMAL_HALF_BAND = 8
MAX_ITERATIONS = 8
CONVERGED_MM = 0.02  # largest node step of a converged Gauss-Newton iteration (4 N against the wall)
#: the link arguments of :func:`solve_chain_primal` for a device alone
NO_LINKS = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), np.zeros(0), np.zeros((0, 3)), np.zeros((0, 3)),
            np.zeros(0), 0.0)
#: the wall arguments of :func:`solve_chain_primal` for fixed planes (no cylinders)
NO_CYLINDERS = (np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0), np.zeros(0), np.zeros(0), np.zeros((0, 3)),
                np.zeros((0, 3)), np.zeros(0), np.zeros(0), 0.0)
#: no wall friction: (mu, stick stiffness, normal force per node, anchor per node)
NO_FRICTION = (0.0, 0.0, np.zeros(0), np.zeros((0, 3)))
#: no lagged edge tension (Gauss-Newton without the taut edges' geometric stiffness)
NO_TENSION = np.zeros(0)


@nb.njit(cache=True, inline="always", error_model="numpy")
def _add_block(H, i, j, B, bw, scale):  # pragma: no cover - numba
    """H[3i:3i+3, 3j:3j+3] += scale * B (banded storage H[r, c - r + bw]), only c >= r kept.

    The two cases of a chain (a diagonal block from its diagonal up; a block one or two nodes
    off the diagonal, all of it in the band) are written without a test per entry."""
    if i == j:
        for a in range(3):
            r = 3 * i + a
            for b in range(a, 3):
                H[r, b - a + bw] += scale * B[a, b]
    elif i < j and 3 * (j - i) + 2 <= bw:
        for a in range(3):
            r = 3 * i + a
            for b in range(3):
                H[r, 3 * j + b - r + bw] += scale * B[a, b]
    else:
        for a in range(3):
            r = 3 * i + a
            for b in range(3):
                c = 3 * j + b
                if c >= r and c - r <= bw:
                    H[r, c - r + bw] += scale * B[a, b]


@nb.njit(cache=True, inline="always", error_model="numpy")
def _bend_terms(e1, e2, kb, J1, J2):  # pragma: no cover - numba
    """κb of the edges (e1 incoming, e2 outgoing) into ``kb`` and its Jacobians ∂κb/∂e1, ∂κb/∂e2.

    ``κb = 2 (e1 × e2) / (|e1||e2| + e1·e2)``; no allocation (this runs for every node of
    every device at every iteration).
    """
    n1 = np.sqrt(e1[0] ** 2 + e1[1] ** 2 + e1[2] ** 2)
    n2 = np.sqrt(e2[0] ** 2 + e2[1] ** 2 + e2[2] ** 2)
    D = n1 * n2 + e1[0] * e2[0] + e1[1] * e2[1] + e1[2] * e2[2]
    D = max(D, 1e-9 * n1 * n2 + 1e-300)  # a full fold has no finite κb
    kb[0] = 2.0 * (e1[1] * e2[2] - e1[2] * e2[1]) / D
    kb[1] = 2.0 * (e1[2] * e2[0] - e1[0] * e2[2]) / D
    kb[2] = 2.0 * (e1[0] * e2[1] - e1[1] * e2[0]) / D
    n1 = max(n1, 1e-12)
    n2 = max(n2, 1e-12)
    r12 = n2 / n1
    r21 = n1 / n2
    inv = 1.0 / D
    for a in range(3):
        for b in range(3):
            g1 = r12 * e1[b] + e2[b]
            g2 = r21 * e2[b] + e1[b]
            J1[a, b] = -kb[a] * g1 * inv
            J2[a, b] = -kb[a] * g2 * inv
    # -2[e2]x / D and 2[e1]x / D (skew matrices of the cross products)
    J1[0, 1] += 2.0 * e2[2] * inv
    J1[0, 2] -= 2.0 * e2[1] * inv
    J1[1, 0] -= 2.0 * e2[2] * inv
    J1[1, 2] += 2.0 * e2[0] * inv
    J1[2, 0] += 2.0 * e2[1] * inv
    J1[2, 1] -= 2.0 * e2[0] * inv
    J2[0, 1] -= 2.0 * e1[2] * inv
    J2[0, 2] += 2.0 * e1[1] * inv
    J2[1, 0] += 2.0 * e1[2] * inv
    J2[1, 2] -= 2.0 * e1[0] * inv
    J2[2, 0] -= 2.0 * e1[1] * inv
    J2[2, 1] += 2.0 * e1[0] * inv


@nb.njit(cache=True, error_model="numpy")
def _block_cholesky_solve(A, b, N, bw, Ld, L1, L2, inv):  # pragma: no cover - numba
    """Solve A y = b in place on ``b`` for a chain's matrix: SPD, block pentadiagonal in 3×3
    node blocks (a node couples to its neighbours up to two away: bending), read from the
    upper half of the band storage A[r, c - r + bw] (c >= r; the lower half is never read, so
    the assembly writes the upper half only and no transposed copy is made).

    The block Cholesky factor has the same block structure: per node i, L[i, i-2] (``L2``),
    L[i, i-1] (``L1``) and the lower-triangular L[i, i] (``Ld``, pivots inverted in
    ``inv``); every product is a small dense 3×3 one, whose independent multiply-adds keep the
    processor busy where the scalar band factorisation waits on each dependent sum (twice
    as fast for a 200-node device, same result to rounding). A tiny pivot (a row dependent
    on earlier ones) gets a large one, as in :func:`iratrainer.physics.chain._cholesky_band_solve`.
    """
    T = np.empty((3, 3))
    S = np.empty((3, 3))
    for i in range(N):
        r0 = 3 * i
        # L_i,i-2 = A_i,i-2 L_{i-2,i-2}^-T  (row by row: forward substitution against L_{i-2,i-2})
        if i >= 2:
            c0 = 3 * (i - 2)
            for a in range(3):
                for bb in range(3):
                    s = A[c0 + bb, r0 + a - c0 - bb + bw]
                    for k in range(bb):
                        s -= L2[i, a, k] * Ld[i - 2, bb, k]
                    L2[i, a, bb] = s * inv[i - 2, bb]
        if i >= 1:
            c0 = 3 * (i - 1)
            for a in range(3):
                for bb in range(3):
                    s = A[c0 + bb, r0 + a - c0 - bb + bw]
                    if i >= 2:
                        for k in range(3):
                            s -= L2[i, a, k] * L1[i - 1, bb, k]
                    T[a, bb] = s
            for a in range(3):
                for bb in range(3):
                    s = T[a, bb]
                    for k in range(bb):
                        s -= L1[i, a, k] * Ld[i - 1, bb, k]
                    L1[i, a, bb] = s * inv[i - 1, bb]
        for a in range(3):
            for bb in range(a + 1):
                s = A[r0 + bb, a - bb + bw]
                if i >= 1:
                    for k in range(3):
                        s -= L1[i, a, k] * L1[i, bb, k]
                if i >= 2:
                    for k in range(3):
                        s -= L2[i, a, k] * L2[i, bb, k]
                S[a, bb] = s
        for a in range(3):
            for bb in range(a + 1):
                s = S[a, bb]
                for k in range(bb):
                    s -= Ld[i, a, k] * Ld[i, bb, k]
                if a == bb:
                    d = A[r0 + a, bw]
                    p = np.sqrt(s) if s > 1e-9 * d else np.sqrt(d) * 1e3 + 1e-150
                    Ld[i, a, a] = p
                    inv[i, a] = 1.0 / p
                else:
                    Ld[i, a, bb] = s * inv[i, bb]
    # forward: L y = b
    for i in range(N):
        r0 = 3 * i
        for a in range(3):
            s = b[r0 + a]
            if i >= 1:
                for k in range(3):
                    s -= L1[i, a, k] * b[r0 - 3 + k]
            if i >= 2:
                for k in range(3):
                    s -= L2[i, a, k] * b[r0 - 6 + k]
            for k in range(a):
                s -= Ld[i, a, k] * b[r0 + k]
            b[r0 + a] = s * inv[i, a]
    # back: L^T x = y
    for i in range(N - 1, -1, -1):
        r0 = 3 * i
        for a in range(2, -1, -1):
            s = b[r0 + a]
            if i + 1 < N:
                for k in range(3):
                    s -= L1[i + 1, k, a] * b[r0 + 3 + k]
            if i + 2 < N:
                for k in range(3):
                    s -= L2[i + 2, k, a] * b[r0 + 6 + k]
            for k in range(a + 1, 3):
                s -= Ld[i, k, a] * b[r0 + k]
            b[r0 + a] = s * inv[i, a]


@nb.njit(cache=True, inline="always", error_model="numpy")
def _cylinder_planes(x, c_on, w, cyl_c, cyl_axis, cyl_rho, cyl_start, cyl_end, rel_a, rel_b, rel_ra, rel_rb, crest,
                     c_n, c_d):  # pragma: no cover - numba
    """The tangent plane, at each node's position, of its wall cylinder (see
    :func:`solve_chain_primal`), closed by spheres before ``cyl_start`` and past ``cyl_end`` mm
    along the axis; a node on the axis keeps the plane it had.

    Where a node has a joined vessel's segment (``rel_a`` to ``rel_b``, radii ``rel_ra``,
    ``rel_rb``; ``rel_ra = -inf``: none), the wall gives by ``A = crest · clip(2 - s/crest, 0, 1)``
    where ``s`` is the node's signed distance to that segment's tube: the rim of the ostium
    rounded off by ``crest`` mm, as :func:`iratrainer.physics.stack.rim_allowance`. The
    constraint ``g = dist - rho - A <= 0`` is linearised at the current iterate (normal
    ``∇g / |∇g|``), so the rounding moves with the node within the solve; where ``∇g`` nearly
    vanishes (between two tubes facing each other, at a flow divider) the cylinder's normal is
    kept and only ``A`` is taken at the iterate."""
    has_rel = rel_ra.shape[0] == x.shape[0]
    for k in range(x.shape[0]):
        if not c_on[k] or w[k] == 0.0:
            continue
        d0 = x[k, 0] - cyl_c[k, 0]
        d1 = x[k, 1] - cyl_c[k, 1]
        d2 = x[k, 2] - cyl_c[k, 2]
        a0, a1, a2 = cyl_axis[k, 0], cyl_axis[k, 1], cyl_axis[k, 2]
        along = max(min(d0 * a0 + d1 * a1 + d2 * a2, cyl_end[k]), cyl_start[k])
        d0 -= along * a0
        d1 -= along * a1
        d2 -= along * a2
        dist = np.sqrt(d0 * d0 + d1 * d1 + d2 * d2)
        if dist < 1e-6:
            continue
        n0, n1, n2 = d0 / dist, d1 / dist, d2 / dist
        give = 0.0
        slope = False
        r0 = r1 = r2 = 0.0
        if has_rel and rel_ra[k] > -np.inf:
            # the node's signed distance to the joined vessel's segment (a tapered tube)
            e0 = rel_b[k, 0] - rel_a[k, 0]
            e1 = rel_b[k, 1] - rel_a[k, 1]
            e2 = rel_b[k, 2] - rel_a[k, 2]
            q0 = x[k, 0] - rel_a[k, 0]
            q1 = x[k, 1] - rel_a[k, 1]
            q2 = x[k, 2] - rel_a[k, 2]
            L2 = e0 * e0 + e1 * e1 + e2 * e2
            t = 0.0 if L2 <= 0.0 else min(max((q0 * e0 + q1 * e1 + q2 * e2) / L2, 0.0), 1.0)
            q0 -= t * e0
            q1 -= t * e1
            q2 -= t * e2
            qd = np.sqrt(q0 * q0 + q1 * q1 + q2 * q2)
            s = qd - (rel_ra[k] + t * (rel_rb[k] - rel_ra[k]))
            give = crest * min(max(2.0 - s / crest, 0.0), 1.0)
            if crest < s < 2.0 * crest and qd > 1e-6:
                slope = True  # dA/dx = -(the joined tube's outward normal)
                r0, r1, r2 = q0 / qd, q1 / qd, q2 / qd
        p0, p1, p2 = cyl_c[k, 0] + along * a0, cyl_c[k, 1] + along * a1, cyl_c[k, 2] + along * a2
        if slope:
            g0, g1, g2 = n0 + r0, n1 + r1, n2 + r2
            gn = np.sqrt(g0 * g0 + g1 * g1 + g2 * g2)
            if gn > 0.3:
                gval = dist - cyl_rho[k] - give
                c_n[k, 0], c_n[k, 1], c_n[k, 2] = g0 / gn, g1 / gn, g2 / gn
                c_d[k] = c_n[k, 0] * x[k, 0] + c_n[k, 1] * x[k, 1] + c_n[k, 2] * x[k, 2] - gval / gn
                continue
        c_n[k, 0], c_n[k, 1], c_n[k, 2] = n0, n1, n2
        c_d[k] = n0 * p0 + n1 * p1 + n2 * p2 + cyl_rho[k] + give


@nb.njit(cache=True, error_model="numpy")
def solve_chain_primal(x, x_pred, w, rest, b_rest, b_alpha, s_alpha, c_on, c_n, c_d, c_alpha, n_iter, dt,
                       max_step, force, l_i1, l_i2, l_w1, l_w2, l_t, l_tan, l_gap, k_link,
                       max_travel, cyl_c, cyl_axis, cyl_rho, cyl_start, cyl_end, rel_a, rel_b, rel_ra, rel_rb, crest,
                       fr_mu, fr_k, fr_fn, fr_anchor, s_tension):  # pragma: no cover - numba
    """Minimise the chain's energy in place on ``x``; ``force`` (N,) receives the wall force (N).

    ``w``: inverse masses (0 = kinematic); ``x_pred``: inertial prediction; other arrays as in
    :func:`iratrainer.physics.chain.solve_chain` (``s_alpha`` stretch compliance mm/N,
    ``c_alpha`` wall compliance mm/N). ``max_step``: largest node step per iteration (mm);
    ``max_travel``: largest distance any node may travel in the whole solve (mm): a
    snap-through then unfolds over several steps, each taking its wall planes afresh
    (``np.inf``: no limit).

    Wall as cylinders (``cyl_c`` (N, 3) with N rows; (0, 3) for fixed planes): node k stays
    within ``cyl_rho[k]`` mm of the line through ``cyl_c[k]`` along the unit ``cyl_axis[k]``
    (the vessel segment it is in, less the device's clearance), a line closed by spheres
    ``cyl_start[k]`` (<= 0) and ``cyl_end[k]`` mm along the axis from ``cyl_c[k]``: the end of
    a vessel, or a division (past it the children's tubes, narrower, take over), and the
    start of a vessel that has no parent; ``-np.inf``, ``np.inf`` elsewhere. The plane
    ``c_n, c_d`` is then the tangent plane of that cylinder at the current iterate, taken
    afresh at every Gauss-Newton iteration: a node sliding round the wall (a shaped tip
    turning in a vessel, a tip pressed at an ostium) keeps a true wall. A plane fixed at the
    start of the step let the next step's plane, taken elsewhere on the round wall, move the
    equilibrium, and a stiff tip pressed there alternated between two positions from one
    step to the next (the inertia of a rod is too small to damp that).
    ``rel_a``, ``rel_b`` (N, 3), ``rel_ra``, ``rel_rb`` (N,) and ``crest`` (mm): the segment of the
    vessel joined to each node's own at a junction (``rel_ra = -inf``: none), whose tube
    rounds off the rim of the ostium in the same way, at every iteration (see
    :func:`_cylinder_planes`); (0, 3) and (0,) for none. Taken once per step, the rounding
    lagged a step behind the node: a wire lying over a rim was shaken by it from one step to
    the next (0.1-0.5 mm a step) and its nodes were kicked into the wall with tens of newtons.

    Coaxial links (M rows): the point ``p = w1·x[i1] + w2·x[i2]`` (``i2 < 0``: ``x[i1]``
    alone) must stay within ``gap`` mm of the fixed point ``t`` (the other device's axis
    or node) across the outer device's axis direction ``tan`` (sliding along it is free),
    a one-sided penalty ``k_link/2 · max(|P (p - t)| - gap, 0)²`` (N/mm): the device
    is solved knowing where the devices around it, or inside it, are. Links join
    neighbouring nodes only, so the matrix stays banded.

    Coulomb friction with the wall, in the same solve (``fr_fn`` (N,) the node's normal force
    at the previous step, N, this iterate's penalty where it was 0; ``fr_anchor`` (N, 3)
    where it sticks; (0,) and (0, 3) for none): while a node presses its wall at the current
    iterate, it is held across the wall's tangent plane ``P`` to its anchor by a spring
    ``fr_k`` (N/mm) whose force is capped at ``fr_mu · fr_fn``: below the cap it sticks (energy ``fr_k/2 ·
    |P (x - a)|²``), above it it slides against the constant force ``fr_mu · fr_fn``
    (energy ``fr_mu · fr_fn · |P (x - a)|``, its Hessian taken as ``fr_mu · fr_fn / |P (x - a)| · P``,
    positive). The static limit is then the force a node bears, not an impulse: with the
    rod's tiny node masses an impulse limit held every node in contact still.

    ``s_tension`` (N - 1,) (or (0,): none): the tension of each edge at the end of the
    previous step (N). A taut edge resists being turned, with the transverse (geometric)
    stiffness ``T/L · (I - u uᵀ)`` of a string; Gauss-Newton drops that term. Without it a
    wire pulled taut round a bend (held by friction at a tip, pulled at the hub) got
    proposals of 15-30 mm sideways, the solve stopped unconverged on a stretched iterate,
    and the penalty forces of that iterate were reported as wall forces (the spikes of a
    hundred newtons) and fed the friction cap that held the wire. The tension is lagged by
    a step, not that of the current iterate: an iterate stretched by the linearisation
    itself (a nearly inextensible edge turned by a linear step grows by d²/2L) would carry a
    spurious tension of ``ks · C`` and stiffen the edge against the very turn it needs.
    """
    N = x.shape[0]
    n = 3 * N
    bw = PRIMAL_HALF_BAND
    inv_dt2 = 1.0 / (dt * dt)
    H = np.zeros((n, 2 * bw + 1))
    f_d = np.zeros((N, 3, 3))  # the block Cholesky factor (see _block_cholesky_solve)
    f_1 = np.zeros((N, 3, 3))
    f_2 = np.zeros((N, 3, 3))
    inv_piv = np.zeros((N, 3))
    g = np.zeros(n)
    kb = np.empty(3)
    J1 = np.empty((3, 3))
    J2 = np.empty((3, 3))
    e1 = np.empty(3)
    e2 = np.empty(3)
    G = np.empty((3, 3, 3))  # per bending row q: gradient blocks for nodes (c+1, c, c-1)
    B = np.empty((3, 3))
    ks = 1.0 / s_alpha if s_alpha > 0.0 else 1e9
    kc = 1.0 / c_alpha if c_alpha > 0.0 else 1e9
    g2 = np.zeros(n)
    x_start = x.copy()
    active = np.zeros(N, dtype=np.bool_)
    for k in range(N):
        force[k] = 0.0
    relin = cyl_c.shape[0] == N
    for _it in range(max(n_iter, MAX_ITERATIONS)):
        if relin:
            _cylinder_planes(x, c_on, w, cyl_c, cyl_axis, cyl_rho, cyl_start, cyl_end, rel_a, rel_b, rel_ra, rel_rb,
                             crest, c_n, c_d)
        H[:, :] = 0.0
        g[:] = 0.0
        # inertia
        for k in range(N):
            if w[k] > 0.0:
                m = inv_dt2 / w[k]
                for a in range(3):
                    H[3 * k + a, bw] += m
                    g[3 * k + a] += m * (x[k, a] - x_pred[k, a])
        # stretch: C = |x_{k+1} - x_k| - rest, grad = ∓u
        for k in range(N - 1):
            dx = x[k + 1, 0] - x[k, 0]
            dy = x[k + 1, 1] - x[k, 1]
            dz = x[k + 1, 2] - x[k, 2]
            L = np.sqrt(dx * dx + dy * dy + dz * dz)
            if L < 1e-12:
                continue
            u0, u1, u2 = dx / L, dy / L, dz / L
            C = L - rest[k]
            B[0, 0], B[0, 1], B[0, 2] = u0 * u0, u0 * u1, u0 * u2
            B[1, 0], B[1, 1], B[1, 2] = u1 * u0, u1 * u1, u1 * u2
            B[2, 0], B[2, 1], B[2, 2] = u2 * u0, u2 * u1, u2 * u2
            _add_block(H, k, k, B, bw, ks)
            _add_block(H, k + 1, k + 1, B, bw, ks)
            _add_block(H, k, k + 1, B, bw, -ks)
            if s_tension.shape[0] == N - 1 and s_tension[k] > 0.0:
                # the taut edge's transverse (geometric) stiffness T/L·(I - u uᵀ), with the
                # tension T the edge carried at the end of the previous step (see above)
                gs = s_tension[k] / L
                B[0, 0], B[0, 1], B[0, 2] = 1.0 - u0 * u0, -u0 * u1, -u0 * u2
                B[1, 0], B[1, 1], B[1, 2] = -u1 * u0, 1.0 - u1 * u1, -u1 * u2
                B[2, 0], B[2, 1], B[2, 2] = -u2 * u0, -u2 * u1, 1.0 - u2 * u2
                _add_block(H, k, k, B, bw, gs)
                _add_block(H, k + 1, k + 1, B, bw, gs)
                _add_block(H, k, k + 1, B, bw, -gs)
            g[3 * k] -= ks * C * u0
            g[3 * k + 1] -= ks * C * u1
            g[3 * k + 2] -= ks * C * u2
            g[3 * k + 3] += ks * C * u0
            g[3 * k + 4] += ks * C * u1
            g[3 * k + 5] += ks * C * u2
        # bending at node c: rows q = 0..2, nodes (c+1, c, c-1)
        for c in range(1, N - 1):
            for a in range(3):
                e1[a] = x[c, a] - x[c + 1, a]
                e2[a] = x[c - 1, a] - x[c, a]
            _bend_terms(e1, e2, kb, J1, J2)
            kbend = 1.0 / b_alpha[c]
            for q in range(3):
                for a in range(3):
                    G[q, 0, a] = -J1[q, a]
                    G[q, 1, a] = J1[q, a] - J2[q, a]
                    G[q, 2, a] = J2[q, a]
            # the blocks (ni, nj), ni <= nj, of kbend·GᵀG straight into the band's upper half
            # (the (nj, ni) block is its transpose; a diagonal block only from its diagonal up)
            for p in range(3):
                ni = c + 1 - p  # nodes (c+1, c, c-1)
                for s in range(p + 1):
                    nj = c + 1 - s
                    for a in range(3):
                        r = 3 * ni + a
                        for b in range(a if s == p else 0, 3):
                            v = 0.0
                            for q in range(3):
                                v += G[q, p, a] * G[q, s, b]
                            H[r, 3 * nj + b - r + bw] += kbend * v
            for q in range(3):
                Cq = kb[q] - b_rest[c, q]
                for p in range(3):
                    ni = c + 1 - p
                    for a in range(3):
                        g[3 * ni + a] += kbend * Cq * G[q, p, a]
        # coaxial links: ½ k |P (p - t)|² beyond the play, P = I - τ τᵀ the projection across
        # the outer device's axis (the inner device slides freely along it); its Hessian k·P
        # in full even inside the play (a Newton model without it would throw the node across
        # the lumen in one step)
        for m in range(l_i1.shape[0]):
            i1 = l_i1[m]
            i2 = l_i2[m]
            w1 = l_w1[m]
            w2 = l_w2[m] if i2 >= 0 else 0.0
            d0 = w1 * x[i1, 0] - l_t[m, 0]
            d1 = w1 * x[i1, 1] - l_t[m, 1]
            d2 = w1 * x[i1, 2] - l_t[m, 2]
            if i2 >= 0:
                d0 += w2 * x[i2, 0]
                d1 += w2 * x[i2, 1]
                d2 += w2 * x[i2, 2]
            t0, t1, t2 = l_tan[m, 0], l_tan[m, 1], l_tan[m, 2]
            dt_ = d0 * t0 + d1 * t1 + d2 * t2
            d0 -= dt_ * t0
            d1 -= dt_ * t1
            d2 -= dt_ * t2
            Ld = np.sqrt(d0 * d0 + d1 * d1 + d2 * d2)
            Cl = max(Ld - l_gap[m], 0.0)
            f = k_link * Cl / Ld if Ld > 1e-12 else 0.0  # gradient k·C·u = f·(P d)
            B[0, 0], B[0, 1], B[0, 2] = 1.0 - t0 * t0, -t0 * t1, -t0 * t2
            B[1, 0], B[1, 1], B[1, 2] = -t1 * t0, 1.0 - t1 * t1, -t1 * t2
            B[2, 0], B[2, 1], B[2, 2] = -t2 * t0, -t2 * t1, 1.0 - t2 * t2
            _add_block(H, i1, i1, B, bw, k_link * w1 * w1)
            g[3 * i1] += f * w1 * d0
            g[3 * i1 + 1] += f * w1 * d1
            g[3 * i1 + 2] += f * w1 * d2
            if i2 >= 0:
                _add_block(H, i2, i2, B, bw, k_link * w2 * w2)
                if i2 > i1:
                    _add_block(H, i1, i2, B, bw, k_link * w1 * w2)
                elif i2 < i1:
                    _add_block(H, i2, i1, B, bw, k_link * w1 * w2)
                g[3 * i2] += f * w2 * d0
                g[3 * i2 + 1] += f * w2 * d1
                g[3 * i2 + 2] += f * w2 * d2
        # wall friction: a capped tangential spring to each node's anchor, while it is on the wall
        if fr_mu > 0.0 and fr_fn.shape[0] == N:
            for k in range(N):
                if w[k] == 0.0 or not c_on[k]:
                    continue
                n0, n1, n2 = c_n[k, 0], c_n[k, 1], c_n[k, 2]
                # off the wall at this iterate: no friction (else a node leaving the wall sticks to it)
                pen = n0 * x[k, 0] + n1 * x[k, 1] + n2 * x[k, 2] - c_d[k]
                if pen <= 0.0:
                    continue
                fn = fr_fn[k] if fr_fn[k] > 0.0 else kc * pen
                if fn <= 0.0:
                    continue
                if n0 * n0 + n1 * n1 + n2 * n2 < 0.5:
                    continue
                d0 = x[k, 0] - fr_anchor[k, 0]
                d1 = x[k, 1] - fr_anchor[k, 1]
                d2 = x[k, 2] - fr_anchor[k, 2]
                dn = d0 * n0 + d1 * n1 + d2 * n2
                d0 -= dn * n0
                d1 -= dn * n1
                d2 -= dn * n2
                Lt = np.sqrt(d0 * d0 + d1 * d1 + d2 * d2)
                cap = fr_mu * fn
                kt = fr_k if fr_k * Lt <= cap else cap / Lt  # stick, or slide at the cap
                B[0, 0], B[0, 1], B[0, 2] = 1.0 - n0 * n0, -n0 * n1, -n0 * n2
                B[1, 0], B[1, 1], B[1, 2] = -n1 * n0, 1.0 - n1 * n1, -n1 * n2
                B[2, 0], B[2, 1], B[2, 2] = -n2 * n0, -n2 * n1, 1.0 - n2 * n2
                _add_block(H, k, k, B, bw, kt)
                g[3 * k] += kt * d0
                g[3 * k + 1] += kt * d1
                g[3 * k + 2] += kt * d2
        # kinematic nodes: no motion
        for k in range(N):
            if w[k] == 0.0:
                for a in range(3):
                    r = 3 * k + a
                    for j in range(2 * bw + 1):
                        H[r, j] = 0.0
                    H[r, bw] = 1.0
                    g[r] = 0.0
                    # clear the coupling columns of other rows
                    for rr in range(max(0, r - bw), r):
                        H[rr, r - rr + bw] = 0.0
        # wall contact, an active-set Newton step: the planes already crossed, then any plane
        # the step would carry a node across, modelled as reached (½ kc (n·x - d)², which is
        # the energy if the node ends beyond it), and the step solved again
        for k in range(N):
            active[k] = False
            if c_on[k] and w[k] > 0.0:
                Cc = c_n[k, 0] * x[k, 0] + c_n[k, 1] * x[k, 1] + c_n[k, 2] * x[k, 2] - c_d[k]
                active[k] = Cc > 0.0
        # each pass adds the active walls' diagonal blocks to the band (its upper half, which
        # the Cholesky reads) and takes them back after the solve
        for _as in range(4):
            for r in range(n):
                g2[r] = g[r]
            for k in range(N):
                if not active[k]:
                    continue
                Cc = c_n[k, 0] * x[k, 0] + c_n[k, 1] * x[k, 1] + c_n[k, 2] * x[k, 2] - c_d[k]
                for a in range(3):
                    g2[3 * k + a] += kc * Cc * c_n[k, a]
                    for b in range(a + 1):
                        H[3 * k + b, a - b + bw] += kc * c_n[k, a] * c_n[k, b]
            for r in range(n):
                g2[r] = -g2[r]
            _block_cholesky_solve(H, g2, N, bw, f_d, f_1, f_2, inv_piv)
            for k in range(N):
                if active[k]:
                    for a in range(3):
                        for b in range(a + 1):
                            H[3 * k + b, a - b + bw] -= kc * c_n[k, a] * c_n[k, b]
            more = False
            for k in range(N):
                if active[k] or not c_on[k] or w[k] == 0.0:
                    continue
                Cn = (c_n[k, 0] * (x[k, 0] + g2[3 * k]) + c_n[k, 1] * (x[k, 1] + g2[3 * k + 1])
                      + c_n[k, 2] * (x[k, 2] + g2[3 * k + 2]) - c_d[k])
                if Cn > 0.0:
                    active[k] = True
                    more = True
            if not more:
                break
        dx = g2
        big = 0.0
        for k in range(N):
            mm = np.sqrt(dx[3 * k] ** 2 + dx[3 * k + 1] ** 2 + dx[3 * k + 2] ** 2)
            if mm > big:
                big = mm
        scale = 1.0 if big <= max_step else max_step / big
        if max_travel < np.inf:
            moved = 0.0
            for k in range(N):
                d0 = x[k, 0] - x_start[k, 0]
                d1 = x[k, 1] - x_start[k, 1]
                d2 = x[k, 2] - x_start[k, 2]
                moved = max(moved, np.sqrt(d0 * d0 + d1 * d1 + d2 * d2))
            budget = max_travel - moved
            if budget <= 1e-9:
                break
            if scale * big > budget:
                scale = budget / big
        for k in range(N):
            for a in range(3):
                x[k, a] += scale * dx[3 * k + a]
        # at least n_iter iterations; more (to MAX_ITERATIONS) while nodes still move: a
        # transient (a shaped tip freed by its wire) is not solved in two, and the wall force
        # of an unconverged solve is the penalty of its overshoot, not the wall's reaction
        if _it + 1 >= n_iter and big * scale < CONVERGED_MM:
            break
    # wall forces at the final positions
    if relin:
        _cylinder_planes(x, c_on, w, cyl_c, cyl_axis, cyl_rho, cyl_start, cyl_end, rel_a, rel_b, rel_ra, rel_rb,
                             crest, c_n, c_d)
    for k in range(N):
        if c_on[k] and w[k] > 0.0:
            Cc = c_n[k, 0] * x[k, 0] + c_n[k, 1] * x[k, 1] + c_n[k, 2] * x[k, 2] - c_d[k]
            if Cc > 0.0:
                force[k] = kc * Cc
