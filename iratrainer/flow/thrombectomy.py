"""The clot, what the devices do to it, and the reperfusion grade.

**The clot** sits on one branch (proximal face at ``start_mm`` along it, ``length_mm``
long) and fills the lumen. Its composition sets its mechanics (:data:`COMPOSITION`):
red-cell-rich clots are soft, integrate quickly into a stent and are ingested by an
aspiration catheter, but shed fragments; fibrin-rich clots are stiff, resist crossing,
integrate slowly and tend to cork the catheter tip. (Qualitative trends from clot
histology and bench studies; the numbers are model parameters, calibrated as below.)

**A pass** is decided when the device is withdrawn (:func:`pass_outcome`), from what the
trainee did: for a stent retriever the fraction of the clot covered by the working
length, the waiting time (integration ``1 − exp(−t/τ)``), aspiration through a distal
catheter, balloon-guide flow arrest; for direct aspiration the seal (catheter face on
the clot, catheter-to-vessel size) and the composition. Outcomes are drawn from the
procedure's own generator (seeded, deterministic): full capture, partial capture (a
shortened residual clot that lets some flow through) or none, then fragment loss on the
way back (lower with flow arrest and aspiration): fragments lodge in a distal cortical
branch of the same territory, or, without flow arrest, in a new territory.

**Calibration.** With ideal technique on a mixed clot in M1 (full coverage, 3 minutes'
wait), the first-pass effect (mTICI ≥ 2c after one pass) lands on the published figures
(REFERENCE.md: stent retriever 28.8 % with a conventional guide, 56.1 % with a balloon
guide and distal aspiration; ~25 % in registries; aspiration first) — checked over 200
seeded passes per technique by ``iratrainer validate flow``.

**Reperfusion grade** (:func:`tici_grade`): the reperfused fraction of the territory at
risk, weighted by baseline bed flow, counting antegrade flow only (collaterals are not
reperfusion): 0 none; 1 flow past the occlusion with minimal distal filling (< 10 %);
2a < 50 %; 2b ≥ 50 %; 2c ≥ 90 % or distal emboli in a few cortical branches; 3 complete.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field

import numpy as np

from iratrainer.anatomy.tree import VesselTree
from iratrainer.errors import IratrainerError

__all__ = [
    "COMPOSITION", "ClotError", "ClotSpec", "PassTechnique", "PassOutcome", "pass_outcome", "tici_grade",
    "TICI_GRADES", "integration",
]


class ClotError(IratrainerError):
    """A clot that cannot be placed (unknown branch, beyond the branch, larger than the vessel)."""


@dataclass(frozen=True)
class Composition:
    """Mechanical parameters of a clot type.

    Attributes:
        crossing_force_n: axial force a microwire needs to pass through it, N.
        integration_tau_s: time constant of integration into a stent's struts, s.
        stent_grip: capture factor of a fully integrated stent, 0-1.
        ingestion: probability that aspiration ingests it whole rather than corking, 0-1.
        fragility: fragment-loss probability on a pass without flow arrest or aspiration.
    """

    crossing_force_n: float
    integration_tau_s: float
    stent_grip: float
    ingestion: float
    fragility: float


COMPOSITION: dict[str, Composition] = {
    "red": Composition(0.15, 60.0, 1.00, 0.90, 0.45),
    "mixed": Composition(0.30, 90.0, 0.90, 0.75, 0.35),
    "fibrin": Composition(0.60, 180.0, 0.65, 0.45, 0.20),
}

TICI_GRADES = ("0", "1", "2a", "2b", "2c", "3")


@dataclass(frozen=True)
class ClotSpec:
    """Where the clot is and what it is made of.

    Attributes:
        branch: branch label.
        start_mm: arc length of the proximal face along the branch, mm.
        length_mm: clot length, mm.
        composition: ``"red"``, ``"mixed"`` or ``"fibrin"``.
        diameter_mm: clot diameter, mm; default the lumen's. A clot wider than the
            lumen at its position cannot lodge there.
    """

    branch: str
    start_mm: float
    length_mm: float
    composition: str = "mixed"
    diameter_mm: float | None = None

    def validate(self, tree: VesselTree, where: str = "clot") -> None:
        """Raise :class:`ClotError` naming ``where`` and the field when the clot does not fit."""
        if self.branch not in tree:
            near = ", ".join(difflib.get_close_matches(self.branch, tree.labels, n=3, cutoff=0.0))
            raise ClotError(f"{where}.branch: unknown branch '{self.branch}' (closest: {near})")
        if self.composition not in COMPOSITION:
            raise ClotError(f"{where}.composition: expected one of {', '.join(COMPOSITION)}, got '{self.composition}'")
        blen = tree.length_mm(self.branch)
        if not (math.isfinite(self.start_mm) and self.start_mm >= 0):
            raise ClotError(f"{where}.start_mm: must be >= 0 mm, got {self.start_mm}")
        if not (math.isfinite(self.length_mm) and self.length_mm > 0):
            raise ClotError(f"{where}.length_mm: must be > 0 mm, got {self.length_mm}")
        if self.start_mm + self.length_mm > blen + 1e-6:
            raise ClotError(f"{where}: {self.start_mm:g} + {self.length_mm:g} mm runs beyond the end of "
                            f"{self.branch} ({blen:.1f} mm long)")
        if self.diameter_mm is not None:
            lumen = 2.0 * float(np.min(tree.radius_at(self.branch, np.linspace(self.start_mm,
                                                                              self.start_mm + self.length_mm, 9))))
            if not (math.isfinite(self.diameter_mm) and 0 < self.diameter_mm <= lumen * 1.05):
                raise ClotError(f"{where}.diameter_mm: {self.diameter_mm:g} mm is larger than the lumen of "
                                f"{self.branch} there ({lumen:.2f} mm)")


def integration(wait_s: float, composition: str) -> float:
    """Fraction of full stent integration after ``wait_s`` seconds deployed: 1 − exp(−t/τ)."""
    return 1.0 - math.exp(-max(wait_s, 0.0) / COMPOSITION[composition].integration_tau_s)


@dataclass(frozen=True)
class PassTechnique:
    """What the operator did on one pass.

    Attributes:
        kind: ``"stent_retriever"`` or ``"aspiration"``.
        coverage: fraction of the clot length covered by the stent's working length, 0-1.
        wait_s: time from unsheathing to withdrawal, s.
        balloon_inflated: balloon guide inflated (flow arrest) during withdrawal.
        distal_aspiration: aspiration through the intermediate catheter during withdrawal.
        seal: aspiration: catheter face on the clot with a seal, 0-1 (1: flow stopped).
        catheter_ratio: aspiration: catheter inner diameter / vessel diameter.
    """

    kind: str
    coverage: float = 1.0
    wait_s: float = 180.0
    balloon_inflated: bool = False
    distal_aspiration: bool = False
    seal: float = 1.0
    catheter_ratio: float = 0.6


@dataclass(frozen=True)
class PassOutcome:
    """What a pass did to the clot.

    Attributes:
        captured: fraction of the clot removed, 0-1.
        fragments: number of fragments lost on the way back.
        new_territory: fragment(s) went to a new territory (no flow arrest).
        p_capture: the model's capture probability for this pass (for the debrief).
        corked: aspiration: the clot corked the catheter tip (removed with the catheter).
    """

    captured: float
    fragments: int
    new_territory: bool
    p_capture: float
    corked: bool = False
    notes: tuple[str, ...] = field(default=())


# Base capture probabilities (ideal technique, before composition factors), calibrated so
# that first-pass effects land on the published figures (see the module docstring).
SR_BASE = 0.50
SR_ASPIRATION_BOOST = 0.35
SR_BALLOON_BOOST = 0.22
ASP_BASE = 0.56
PARTIAL_SHARE = 0.5  # of failed captures, the share that still removes part of the clot


def pass_outcome(tech: PassTechnique, composition: str, rng: np.random.Generator) -> PassOutcome:
    """Draw the outcome of one pass (four draws from ``rng``, always, for determinism)."""
    comp = COMPOSITION[composition]
    u_cap, u_part, u_frag, u_terr = rng.random(4)
    notes: list[str] = []
    corked = False
    if tech.kind == "stent_retriever":
        cov = float(np.clip(tech.coverage, 0.0, 1.0))
        integ = integration(tech.wait_s, composition)
        p = SR_BASE * comp.stent_grip * cov * integ
        p *= 1.0 + SR_ASPIRATION_BOOST * tech.distal_aspiration
        p *= 1.0 + SR_BALLOON_BOOST * tech.balloon_inflated
        if cov < 0.8:
            notes.append("coverage")
        if tech.wait_s < 120.0:
            notes.append("wait")
        frag = comp.fragility * (0.3 if tech.balloon_inflated else 1.0) * (0.6 if tech.distal_aspiration else 1.0)
    elif tech.kind == "aspiration":
        seal = float(np.clip(tech.seal, 0.0, 1.0))
        size = float(np.clip(tech.catheter_ratio / 0.55, 0.0, 1.0))
        p = ASP_BASE * seal * size * (0.55 + 0.45 * comp.ingestion)
        corked = bool(u_part < 1.0 - comp.ingestion)
        if seal < 0.5:
            notes.append("seal")
        frag = comp.fragility * (0.4 if tech.balloon_inflated else 1.0) * 0.8
    else:
        raise ValueError(f"unknown pass technique '{tech.kind}'")
    p = float(np.clip(p, 0.0, 0.98))
    if u_cap < p:
        captured = 1.0
    elif u_part < PARTIAL_SHARE:
        captured = 0.5
    else:
        captured = 0.0
    fragments = 0
    new_territory = False
    if captured > 0.0 and u_frag < frag:
        fragments = 1 if u_frag > 0.3 * frag else 2
        new_territory = bool(not tech.balloon_inflated and u_terr < 0.25)
    return PassOutcome(captured, fragments, new_territory, p, corked, tuple(notes))


def tici_grade(reperfused_fraction: float, flow_past_occlusion: bool, distal_emboli: int) -> str:
    """mTICI from the reperfused fraction of the territory at risk (see the module docstring)."""
    f = float(reperfused_fraction)
    if f < 0.02:
        return "1" if flow_past_occlusion else "0"
    if f < 0.10:
        return "1"
    if f < 0.50:
        return "2a"
    if f < 0.90:
        return "2b"
    if f < 0.99 or distal_emboli > 0:
        return "2c"
    return "3"
