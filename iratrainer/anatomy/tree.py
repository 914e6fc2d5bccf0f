"""The vessel tree: named branches with centerlines and lumen radii, in DICOM LPS millimetres.

Every other part of iratrainer (segmentation, device physics, flow, imaging, cases)
works on one :class:`VesselTree`. Coordinates are DICOM patient coordinates (LPS):
+x towards the patient's left, +y posterior, +z superior, all in millimetres.

A branch is a polyline ``points_mm`` (N, 3) with a lumen radius ``radii_mm`` (N,) at
every point. It leaves its parent at ``parent.points_mm[parent_index]``; its first point
lies in the parent's lumen there (the atlas puts it exactly on the parent's centerline).
Points run in the direction of antegrade flow (from the root outwards).

The lumen is modelled as the union, over all centerline segments, of the tapered tube
around each segment; the signed distance of a point to the wall for one segment is
``|p - c(t)| - r(t)``, where ``c(t)`` is the closest point of the segment and ``r(t)``
the radius interpolated linearly at that point. The signed distance to the lumen is
the minimum over segments: negative inside, positive outside, in mm. This is the usual
"sphere-swept" approximation of a vessel; it is exact for cylinders.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from iratrainer.errors import VesselTreeError

__all__ = ["Branch", "LumenQuery", "VesselTree"]

#: How far (mm) a child's first point may lie from its parent's point, beyond the parent's radius.
ATTACH_TOLERANCE_MM = 1e-6


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.flags.writeable = False
    return a


@dataclass(frozen=True)
class Branch:
    """One named vessel segment.

    Attributes:
        label: unique name, e.g. ``"L_MCA_M1"``.
        parent: label of the parent branch, ``None`` for the root.
        parent_index: index of the parent's point where this branch leaves (0 for the root).
        points_mm: (N, 3) centerline points, LPS, mm, in the direction of flow.
        radii_mm: (N,) lumen radius at each point, mm.
    """

    label: str
    parent: str | None
    parent_index: int
    points_mm: np.ndarray
    radii_mm: np.ndarray
    arc_mm: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        pts = np.asarray(self.points_mm, dtype=np.float64)
        rad = np.asarray(self.radii_mm, dtype=np.float64)
        object.__setattr__(self, "points_mm", _frozen(pts))
        object.__setattr__(self, "radii_mm", _frozen(rad))
        if pts.ndim == 2 and pts.shape[1] == 3 and len(pts) >= 1:
            seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
            arc = np.concatenate([[0.0], np.cumsum(seg)])
        else:
            arc = np.zeros(0)
        object.__setattr__(self, "arc_mm", _frozen(arc))

    @property
    def length_mm(self) -> float:
        """Centerline length of the branch, mm."""
        return float(self.arc_mm[-1]) if len(self.arc_mm) else 0.0


@dataclass(frozen=True)
class LumenQuery:
    """Result of :meth:`VesselTree.query` for M points (all arrays have length M).

    Attributes:
        branch: index into :attr:`VesselTree.labels` of the nearest branch.
        arc_mm: arc length along that branch of the nearest centerline point, mm.
        signed_distance_mm: signed distance to the lumen wall, mm (negative inside).
        closest_mm: (M, 3) nearest centerline point, LPS mm.
        radius_mm: lumen radius at that centerline point, mm.
        segment: index of the global centerline segment that attains the minimum.
    """

    branch: np.ndarray
    arc_mm: np.ndarray
    signed_distance_mm: np.ndarray
    closest_mm: np.ndarray
    radius_mm: np.ndarray
    segment: np.ndarray


class VesselTree:
    """A validated, immutable tree of vessel branches (see module docstring for conventions).

    Args:
        branches: the branches, in any order; exactly one has ``parent=None``.
        metadata: free-form provenance (source, method, de-identified origin).
        anastomoses: pairs of labels joined outside the tree (e.g. ``("ACOM", "R_ACA_A1")``),
            used by the flow model for collateral links; geometry lives in the tree.
    """

    def __init__(
        self,
        branches: Sequence[Branch],
        metadata: dict[str, Any] | None = None,
        anastomoses: Iterable[tuple[str, str]] = (),
    ) -> None:
        self.metadata: dict[str, Any] = dict(metadata or {})
        self._validate_and_order(list(branches))
        self.anastomoses: tuple[tuple[str, str], ...] = tuple(
            (str(a), str(b)) for a, b in anastomoses
        )
        for a, b in self.anastomoses:
            for lab in (a, b):
                if lab not in self._index:
                    raise VesselTreeError(f"anastomosis names unknown branch '{lab}'")
        self._build_segments()
        self._index_cache: Any = None

    # ------------------------------------------------------------------ validation
    def _validate_and_order(self, branches: list[Branch]) -> None:
        if not branches:
            raise VesselTreeError("the tree has no branches")
        by_label: dict[str, Branch] = {}
        for b in branches:
            if not isinstance(b.label, str) or not b.label:
                raise VesselTreeError("a branch has an empty label")
            if b.label in by_label:
                raise VesselTreeError(f"branch '{b.label}': label: duplicated")
            by_label[b.label] = b
            self._check_geometry(b)
        roots = [b.label for b in branches if b.parent is None]
        if len(roots) != 1:
            raise VesselTreeError(
                f"the tree must have exactly one root (parent null), found {len(roots)}: "
                + ", ".join(roots[:5])
            )
        for b in branches:
            if b.parent is None:
                continue
            if b.parent not in by_label:
                raise VesselTreeError(f"branch '{b.label}': parent: unknown branch '{b.parent}'")
            par = by_label[b.parent]
            n = len(par.points_mm)
            if not (0 <= b.parent_index < n):
                raise VesselTreeError(
                    f"branch '{b.label}': parent_index: {b.parent_index} is outside "
                    f"0..{n - 1} of parent '{b.parent}'"
                )
        # cycles: walk up from every branch
        for b in branches:
            seen = {b.label}
            cur = b
            while cur.parent is not None:
                if cur.parent in seen:
                    raise VesselTreeError(f"branch '{b.label}': parent: cycle through '{cur.parent}'")
                seen.add(cur.parent)
                cur = by_label[cur.parent]
        for b in branches:
            if b.parent is None:
                continue
            par = by_label[b.parent]
            gap = float(np.linalg.norm(b.points_mm[0] - par.points_mm[b.parent_index]))
            if gap > par.radii_mm[b.parent_index] + ATTACH_TOLERANCE_MM:
                raise VesselTreeError(
                    f"branch '{b.label}': points_mm[0]: {gap:.3g} mm from parent "
                    f"'{b.parent}' point {b.parent_index}, outside its lumen "
                    f"(radius {par.radii_mm[b.parent_index]:.3g} mm)"
                )
        # topological order: parents first, siblings in the given order
        children: dict[str, list[str]] = {b.label: [] for b in branches}
        for b in branches:
            if b.parent is not None:
                children[b.parent].append(b.label)
        order: list[str] = []
        stack = [roots[0]]
        while stack:
            lab = stack.pop()
            order.append(lab)
            stack.extend(reversed(children[lab]))
        self.branches: tuple[Branch, ...] = tuple(by_label[lab] for lab in order)
        self.labels: tuple[str, ...] = tuple(order)
        self._index: dict[str, int] = {lab: i for i, lab in enumerate(order)}
        self._children: dict[str, tuple[str, ...]] = {k: tuple(v) for k, v in children.items()}
        self.root: str = roots[0]

    @staticmethod
    def _check_geometry(b: Branch) -> None:
        pts, rad = b.points_mm, b.radii_mm
        if pts.ndim != 2 or pts.shape[1] != 3:
            raise VesselTreeError(f"branch '{b.label}': points_mm: expected an (N, 3) array")
        if len(pts) < 2:
            raise VesselTreeError(f"branch '{b.label}': points_mm: needs at least 2 points")
        if rad.shape != (len(pts),):
            raise VesselTreeError(
                f"branch '{b.label}': radii_mm: expected {len(pts)} values, got {rad.size}"
            )
        if not np.all(np.isfinite(pts)):
            raise VesselTreeError(f"branch '{b.label}': points_mm: NaN or infinite coordinate")
        if not np.all(np.isfinite(rad)):
            raise VesselTreeError(f"branch '{b.label}': radii_mm: NaN or infinite radius")
        if np.any(rad <= 0):
            raise VesselTreeError(f"branch '{b.label}': radii_mm: radius must be > 0 mm")
        if np.any(np.diff(b.arc_mm) <= 0):
            i = int(np.argmin(np.diff(b.arc_mm)))
            raise VesselTreeError(
                f"branch '{b.label}': points_mm: points {i} and {i + 1} coincide"
            )
        if not isinstance(b.parent_index, (int, np.integer)):
            raise VesselTreeError(f"branch '{b.label}': parent_index: expected an integer")

    # ------------------------------------------------------------------ structure
    def __len__(self) -> int:
        return len(self.branches)

    def __contains__(self, label: object) -> bool:
        return label in self._index

    def __getitem__(self, label: str) -> Branch:
        return self.branches[self.index(label)]

    def index(self, label: str) -> int:
        """Index of ``label`` in :attr:`labels`; raises :class:`VesselTreeError` if unknown."""
        try:
            return self._index[label]
        except KeyError:
            raise VesselTreeError(f"unknown branch '{label}'") from None

    def children(self, label: str) -> tuple[str, ...]:
        """Labels of the branches leaving ``label``, in file order."""
        self.index(label)
        return self._children[label]

    def ancestors(self, label: str) -> list[str]:
        """Labels from ``label`` (included) up to the root (included)."""
        out = [label]
        cur = self[label]
        while cur.parent is not None:
            out.append(cur.parent)
            cur = self[cur.parent]
        return out

    def subtree(self, label: str) -> list[str]:
        """``label`` and every branch downstream of it, parents before children."""
        out: list[str] = []
        stack = [label]
        self.index(label)
        while stack:
            lab = stack.pop()
            out.append(lab)
            stack.extend(reversed(self._children[lab]))
        return out

    def path(self, start: str, end: str) -> list[str]:
        """Branch labels on the way from ``start`` to ``end`` through the tree (both included)."""
        up = self.ancestors(start)
        down = self.ancestors(end)
        common = set(up) & set(down)
        lca_up = next(i for i, lab in enumerate(up) if lab in common)
        lca_down = down.index(up[lca_up])
        return up[: lca_up + 1] + list(reversed(down[:lca_down]))

    def path_polyline(self, start: str, end: str, with_labels: bool = False) -> tuple[np.ndarray, ...]:
        """A continuous centerline from ``start`` to the distal end of ``end``, the way a device goes.

        When ``start`` is not upstream of ``end``, the route begins at the distal end of
        ``start`` and climbs against the flow to the common ancestor; otherwise it begins
        at the first point of ``start``. It then follows the flow down to the last point
        of ``end``.

        Returns:
            points (K, 3) in mm and radii (K,) in mm, without repeated points; with
            ``with_labels`` also (K,) branch indices, each point labelled with the branch
            it was taken from (a junction point belongs to the vessel the route leaves).
        """
        labels = self.path(start, end)
        up = self.ancestors(start)
        down = set(self.ancestors(end))
        lca = next(lab for lab in up if lab in down)
        k0 = labels.index(lca)
        pts: list[np.ndarray] = []
        rad: list[np.ndarray] = []
        lab: list[np.ndarray] = []
        entry = 0
        if k0 > 0:
            entry = len(self[start].points_mm) - 1
            for k in range(k0):
                b = self[labels[k]]
                idx = np.arange(entry, -1, -1)
                pts.append(b.points_mm[idx])
                rad.append(b.radii_mm[idx])
                lab.append(np.full(len(idx), self.index(labels[k])))
                entry = b.parent_index
        for k in range(k0, len(labels)):
            b = self[labels[k]]
            stop = self[labels[k + 1]].parent_index if k + 1 < len(labels) else len(b.points_mm) - 1
            step = 1 if stop >= entry else -1
            idx = np.arange(entry, stop + step, step)
            pts.append(b.points_mm[idx])
            rad.append(b.radii_mm[idx])
            lab.append(np.full(len(idx), self.index(labels[k])))
            entry = 0
        p = np.concatenate(pts)
        r = np.concatenate(rad)
        keep = np.concatenate([[True], np.linalg.norm(np.diff(p, axis=0), axis=1) > 1e-9])
        if with_labels:
            return p[keep], r[keep], np.concatenate(lab)[keep]
        return p[keep], r[keep]

    # ------------------------------------------------------------------ arc length
    def point_at(self, label: str, arc_mm: float | np.ndarray) -> np.ndarray:
        """Centerline point(s) at arc length(s) ``arc_mm`` along ``label`` (clamped), LPS mm."""
        b = self[label]
        s = np.clip(np.asarray(arc_mm, dtype=np.float64), 0.0, b.length_mm)
        out = np.stack([np.interp(s, b.arc_mm, b.points_mm[:, k]) for k in range(3)], axis=-1)
        return out

    def radius_at(self, label: str, arc_mm: float | np.ndarray) -> np.ndarray:
        """Lumen radius (mm) at arc length(s) ``arc_mm`` along ``label`` (clamped)."""
        b = self[label]
        s = np.clip(np.asarray(arc_mm, dtype=np.float64), 0.0, b.length_mm)
        return np.interp(s, b.arc_mm, b.radii_mm)

    def tangent_at(self, label: str, arc_mm: float | np.ndarray) -> np.ndarray:
        """Unit tangent(s) in the direction of flow at arc length(s) ``arc_mm`` along ``label``."""
        b = self[label]
        s = np.clip(np.atleast_1d(np.asarray(arc_mm, dtype=np.float64)), 0.0, b.length_mm)
        seg = np.clip(np.searchsorted(b.arc_mm, s, side="right") - 1, 0, len(b.arc_mm) - 2)
        d = b.points_mm[seg + 1] - b.points_mm[seg]
        t = d / np.linalg.norm(d, axis=1, keepdims=True)
        return t[0] if np.ndim(arc_mm) == 0 else t

    def length_mm(self, label: str) -> float:
        """Centerline length of branch ``label``, mm."""
        return self[label].length_mm

    @property
    def total_length_mm(self) -> float:
        """Summed centerline length of all branches, mm."""
        return float(sum(b.length_mm for b in self.branches))

    def bounds_mm(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned bounds of the lumen (centerlines padded by radii): (min xyz, max xyz), mm."""
        lo = np.min([np.min(b.points_mm - b.radii_mm[:, None], axis=0) for b in self.branches], 0)
        hi = np.max([np.max(b.points_mm + b.radii_mm[:, None], axis=0) for b in self.branches], 0)
        return lo, hi

    # ------------------------------------------------------------------ segments
    def _build_segments(self) -> None:
        a, b, ra, rb, br, s0 = [], [], [], [], [], []
        for i, bra in enumerate(self.branches):
            p, r = bra.points_mm, bra.radii_mm
            a.append(p[:-1])
            b.append(p[1:])
            ra.append(r[:-1])
            rb.append(r[1:])
            br.append(np.full(len(p) - 1, i, dtype=np.int32))
            s0.append(bra.arc_mm[:-1])
        self.seg_a = _frozen(np.concatenate(a))
        self.seg_b = _frozen(np.concatenate(b))
        self.seg_ra = _frozen(np.concatenate(ra))
        self.seg_rb = _frozen(np.concatenate(rb))
        self.seg_branch = _frozen(np.concatenate(br))
        self.seg_s0 = _frozen(np.concatenate(s0))
        self.seg_len = _frozen(np.linalg.norm(self.seg_b - self.seg_a, axis=1))

    @property
    def n_segments(self) -> int:
        """Number of centerline segments over all branches."""
        return len(self.seg_a)

    # ------------------------------------------------------------------ spatial queries
    @property
    def lumen_index(self) -> Any:
        """The spatial index used by :meth:`query` (built on first use, then cached)."""
        if self._index_cache is None:
            from iratrainer.anatomy.lumen import LumenIndex

            self._index_cache = LumenIndex(self)
        return self._index_cache

    def query(self, points_mm: np.ndarray) -> LumenQuery:
        """Nearest centerline point and signed wall distance for many points at once.

        Args:
            points_mm: (M, 3) or (3,) points, LPS mm.

        Returns:
            a :class:`LumenQuery` with arrays of length M.
        """
        return self.lumen_index.query(points_mm)

    def signed_distance(self, points_mm: np.ndarray) -> np.ndarray:
        """Signed distance (mm) of each point to the lumen wall; negative inside the lumen."""
        return self.lumen_index.signed_distance(points_mm)

    def contains(self, points_mm: np.ndarray, margin_mm: float = 0.0) -> np.ndarray:
        """True where a point lies inside the lumen by at least ``margin_mm``."""
        return self.signed_distance(points_mm) <= -margin_mm

    def __repr__(self) -> str:
        return (
            f"VesselTree({len(self)} branches, root {self.root!r}, "
            f"{self.total_length_mm:.0f} mm of centerline)"
        )
