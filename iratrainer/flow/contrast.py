"""Contrast transport on the flow network: 1-D advection, mixing, stagnant dispersion, washout.

Every vessel cell of :class:`~iratrainer.flow.network.FlowNetwork` is a finite volume
with the iodine concentration c (mg/mL). Per sub-step (explicit, stable step from the
largest rate, Courant ≤ 0.9):

* **junctions mix**: a node's concentration is the flow-weighted mean of the cells
  that flow into it (complete mixing; injected contrast mixes within ~8 diameters, less
  than one junction-to-junction distance in the head);
* **advection**: first-order upwind, ``dc/dt = |Q|/V (c_upstream − c)`` (the bolus
  centroid travels at the mean velocity exactly; the scheme's numerical dispersion,
  ``u·Δx/2``, stands for the Taylor dispersion of pulsatile flow);
* **stagnant dispersion**: where the cell Péclet number is below 2 (a stump before a
  clot, a dead-end), pulsatile mixing with D = 40 mm²/s fills the column up to the clot
  face, which is where the meniscus shows;
* **capillary beds** are mixed compartments of volume ``Q_bed × MTT`` (MTT 3 s), giving
  the capillary blush and the washout after the arterial phase;
* **collateral links** are chains of three cells whose volume sets their transit time
  (late, retrograde filling of an occluded territory);
* **injections** from a catheter tip displace the blood at the tip at the injection
  rate; when the rate exceeds the vessel's own flow the excess refluxes: it fills the
  cells upstream of the tip against the flow until it reaches a vessel whose flow
  exceeds the rate, where it joins that flow (so an aggressive ICA injection also
  opacifies the ECA).

Blocked cells (clot) hold no contrast: the clot is a filling defect.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba as nb
import numpy as np

from iratrainer.flow.network import FlowNetwork, FlowSolution

__all__ = ["ContrastField", "Injection", "IODINE_MG_ML", "BED_MTT_S", "STAGNANT_DISPERSION_MM2_S"]

IODINE_MG_ML = 300.0  # iohexol 300 (Omnipaque 300), the usual neuro contrast
BED_MTT_S = 3.0  # capillary mean transit time
STAGNANT_DISPERSION_MM2_S = 40.0
LINK_TRANSIT_S = 2.5  # collateral transit at the link's nominal flow
LINK_CELLS = 3
SOURCE_REFRESH_S = 0.05


@dataclass(frozen=True)
class Injection:
    """An injection in progress: where, how fast, how concentrated, for how long.

    Attributes:
        cell: network cell of the catheter tip.
        rate_ml_s: injection rate, mL/s.
        duration_s: how long it lasts, s.
        iodine_mg_ml: iodine concentration of the syringe, mg/mL.
    """

    cell: int
    rate_ml_s: float
    duration_s: float
    iodine_mg_ml: float = IODINE_MG_ML

    @property
    def volume_ml(self) -> float:
        """Contrast volume, mL."""
        return self.rate_ml_s * self.duration_s


@nb.njit(cache=True)
def _advance(c, a, b, q, vol, lam_d, n_nodes, src_rate, src_conc, dt, n_sub,
             blocked, displaced):  # pragma: no cover - numba
    n_cells = len(c)
    inflow = np.zeros(n_nodes)
    outflow = np.zeros(n_nodes)
    mass = np.zeros(n_nodes)
    dsum = np.zeros(n_nodes)
    dcnt = np.zeros(n_nodes)
    cn = np.zeros(n_nodes)
    for _ in range(n_sub):
        inflow[:] = 0.0
        outflow[:] = 0.0
        mass[:] = 0.0
        dsum[:] = 0.0
        dcnt[:] = 0.0
        for i in range(n_cells):
            if blocked[i]:
                continue
            qi = q[i]
            if qi > 0.0:
                inflow[b[i]] += qi
                mass[b[i]] += qi * c[i]
                outflow[a[i]] += qi
            elif qi < 0.0:
                inflow[a[i]] -= qi
                mass[a[i]] -= qi * c[i]
                outflow[b[i]] -= qi
            w = vol[i]
            dsum[a[i]] += w * c[i]
            dcnt[a[i]] += w
            dsum[b[i]] += w * c[i]
            dcnt[b[i]] += w
        for n in range(n_nodes):
            if inflow[n] > 1e-6:
                cn[n] = mass[n] / inflow[n]
            elif outflow[n] > 1e-6:  # an inlet: fresh blood
                cn[n] = 0.0
            elif dcnt[n] > 0.0:
                cn[n] = dsum[n] / dcnt[n]
            else:
                cn[n] = 0.0
        for i in range(n_cells):
            if blocked[i]:
                c[i] = 0.0
                continue
            qi = q[i]
            ci = c[i]
            up = cn[a[i]] if qi >= 0.0 else cn[b[i]]
            d = (abs(qi) - displaced[i]) / vol[i] * (up - ci)
            if lam_d[i] > 0.0:
                d += lam_d[i] * (cn[a[i]] + cn[b[i]] - 2.0 * ci)
            if src_rate[i] > 0.0:
                d += src_rate[i] / vol[i] * (src_conc[i] - ci)
            c[i] = ci + dt * d


class ContrastField:
    """Iodine in every vessel cell, bed and collateral link of a :class:`FlowNetwork`.

    Call :meth:`set_flow` whenever the flow solution changes, :meth:`inject` to start an
    injection, :meth:`advance` to move time on, :meth:`segment_iodine` for the renderer.
    """

    def __init__(self, net: FlowNetwork) -> None:
        self.net = net
        n_cells = len(net.cell_a)
        n_beds = len(net.bed_label)
        n_links = len(net.link_a)
        self.n_vessel_cells = n_cells
        # element layout: vessel cells | link cells (LINK_CELLS each) | beds
        self._n_nodes = net.n_nodes + n_links * (LINK_CELLS - 1) + 1
        sink = self._n_nodes - 1
        a = list(net.cell_a)
        b = list(net.cell_b)
        vol = list(net.cell_volume_mm3)
        nxt = net.n_nodes
        base = net.baseline
        for k in range(n_links):
            na = int(net.bed_node[net.link_a[k]])
            nb_ = int(net.bed_node[net.link_b[k]])
            chain = [nb_] + [nxt + j for j in range(LINK_CELLS - 1)] + [na]  # donor → MCA end
            nxt += LINK_CELLS - 1
            nominal = 0.1 * float(base.bed_q[net.link_a[k]])  # a tenth of the bed it feeds
            for j in range(LINK_CELLS):
                a.append(chain[j])
                b.append(chain[j + 1])
                vol.append(max(nominal * LINK_TRANSIT_S / LINK_CELLS, 1e-3))
        for k in range(n_beds):
            a.append(int(net.bed_node[k]))
            b.append(sink)
            vol.append(max(float(base.bed_q[k]) * BED_MTT_S, 1e-3))
        self._a = np.array(a, dtype=np.int64)
        self._b = np.array(b, dtype=np.int64)
        self._vol = np.array(vol, dtype=np.float64)
        self._len = np.concatenate([net.cell_len_mm, np.ones(len(vol) - n_cells)])
        self._bed0 = n_cells + n_links * LINK_CELLS
        self.c = np.zeros(len(vol))
        self.time_s = 0.0
        self.injections: list[tuple[Injection, float]] = []  # (injection, start time)
        self.set_flow(base)

    # ------------------------------------------------------------------ state
    def set_flow(self, sol: FlowSolution) -> None:
        """Use the flows of ``sol`` from now on."""
        net = self.net
        q = [sol.cell_q]
        if len(net.link_a):
            lq = sol.link_q if len(sol.link_q) else np.zeros(len(net.link_a))
            q.append(np.repeat(-lq, LINK_CELLS))  # link_q > 0 flows MCA → donor; chains run donor → MCA
        q.append(sol.bed_q)
        self._q = np.concatenate(q)
        self._sol = sol
        blocked = np.zeros(len(self._q), dtype=bool)
        blocked[: self.n_vessel_cells] = net.blocked
        self._blocked = blocked
        nv = self.n_vessel_cells
        length = self._len[:nv]
        vel = np.abs(self._q[:nv]) / (self._vol[:nv] / length)
        pe = vel * length / STAGNANT_DISPERSION_MM2_S  # cell Péclet number
        lam = np.zeros(len(self._q))
        lam[:nv] = np.where(pe < 2.0, STAGNANT_DISPERSION_MM2_S / length ** 2, 0.0)
        self._lam = lam

    def inject(self, inj: Injection) -> None:
        """Start an injection now."""
        self.injections.append((inj, self.time_s))

    def _sources(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cells: list[int] = []
        rates: list[float] = []
        concs: list[float] = []
        for inj, t0 in self.injections:
            if not (t0 <= self.time_s < t0 + inj.duration_s):
                continue
            rate = inj.rate_ml_s * 1000.0
            for cell, r in self.reflux_path(inj.cell, rate, self.time_s - t0):
                cells.append(cell)
                rates.append(r)
                concs.append(inj.iodine_mg_ml)
        return (np.array(cells, dtype=np.int64), np.array(rates, dtype=np.float64),
                np.array(concs, dtype=np.float64))

    def reflux_path(self, cell: int, rate_mm3_s: float, elapsed_s: float = math.inf) -> list[tuple[int, float]]:
        """Cells receiving an injection at ``cell`` and their rates: the tip, then reflux upstream.

        The reflux front moves up at the excess rate over the lumen area, so after
        ``elapsed_s`` it has reached ``excess / area × elapsed`` mm above the tip.
        """
        net = self.net
        q = self._sol.cell_q
        out = [(cell, rate_mm3_s)]
        cur = cell
        excess = rate_mm3_s - abs(q[cur])
        travelled = 0.0
        for _ in range(400):
            if excess <= 0.0:
                break
            area = self._vol[cur] / self._len[cur]
            travelled += self._len[cur]
            if travelled > excess / area * elapsed_s + self._len[cur]:
                break
            node = net.cell_a[cur] if q[cur] >= 0 else net.cell_b[cur]
            feeding = [int(k) for k in np.flatnonzero((net.cell_b == node) & (q > 0))]
            feeding += [int(k) for k in np.flatnonzero((net.cell_a == node) & (q < 0))]
            feeding = [k for k in feeding if not net.blocked[k]]
            if not feeding:
                break
            cur = max(feeding, key=lambda k: abs(q[k]))
            out.append((cur, excess))
            excess = rate_mm3_s - abs(q[cur])
        return out

    def advance(self, dt_s: float) -> None:
        """Move the contrast on by ``dt_s`` seconds (sub-stepped for stability)."""
        end = self.time_s + dt_s
        # split at injection start/stop so that sources are constant within a call
        marks_set = {end} | {t for inj, t0 in self.injections for t in (t0, t0 + inj.duration_s)
                             if self.time_s < t < end}
        for inj, t0 in self.injections:  # while injecting, refresh the sources (reflux front) every 50 ms
            a, b = max(t0, self.time_s), min(t0 + inj.duration_s, end)
            marks_set |= {float(x) for x in np.arange(a + SOURCE_REFRESH_S, b, SOURCE_REFRESH_S)}
        marks = sorted(marks_set)
        for t_next in marks:
            span = t_next - self.time_s
            if span <= 0:
                continue
            cells, rates, concs = self._sources()
            active = len(cells) > 0
            if not active and not np.any(self.c > 1e-4):
                self.c[:] = 0.0
                self.time_s = t_next
                continue
            rate = np.abs(self._q) / self._vol + 4.0 * self._lam
            if active:
                np.add.at(rate, cells, rates / self._vol[cells])
            rmax = float(np.max(rate[~self._blocked])) if np.any(~self._blocked) else 1.0
            n_sub = max(1, int(math.ceil(span * rmax / 0.9)))
            displaced = np.zeros(len(self._q))
            src_rate = np.zeros(len(self._q))
            src_conc = np.zeros(len(self._q))
            if active:  # injected contrast displaces the blood arriving at the tip (up to its flow)
                np.maximum.at(displaced, cells, np.minimum(rates, np.abs(self._q[cells])))
                np.add.at(src_rate, cells, rates)
                np.add.at(src_conc, cells, rates * concs)
                src_conc = np.divide(src_conc, src_rate, out=np.zeros_like(src_conc), where=src_rate > 0)
            _advance(self.c, self._a, self._b, self._q, self._vol, self._lam, self._n_nodes, src_rate,
                     src_conc, span / n_sub, n_sub, self._blocked, displaced)
            self.time_s = t_next
        self.injections = [(inj, t0) for inj, t0 in self.injections if t0 + inj.duration_s > self.time_s]

    # ------------------------------------------------------------------ readouts
    @property
    def cell_iodine(self) -> np.ndarray:
        """Iodine in each vessel cell, mg/mL."""
        return self.c[: self.n_vessel_cells]

    @property
    def bed_iodine(self) -> np.ndarray:
        """Iodine in each capillary bed (blood), mg/mL."""
        return self.c[self._bed0:]

    @property
    def link_iodine(self) -> np.ndarray:
        """Iodine in the collateral link cells, mg/mL (3 per link, donor side first)."""
        return self.c[self.n_vessel_cells: self._bed0]

    def segment_iodine(self, open_fraction: np.ndarray | None = None) -> np.ndarray:
        """Iodine per tree centerline segment, mg/mL (what :class:`~iratrainer.imaging.scene.Scene` takes).

        Args:
            open_fraction: (n_segments,) lumen fraction not taken by clot (1 = free); the
                clot's filling defect.
        """
        seg = self.cell_iodine[self.net.seg_cell]
        if open_fraction is not None:
            seg = seg * open_fraction
        return seg

    def total_iodine_mg(self) -> float:
        """Iodine in the vessels, links and beds, mg."""
        return float(np.dot(self.c, self._vol) / 1000.0)
