"""A picture of a vessel tree for people: three orthogonal projections, coloured by branch.

Top row: the whole model (frontal, lateral, axial). Bottom row: the head, with the main
branches labelled. Drawn with matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from iratrainer.anatomy.io import atomic_write_bytes
from iratrainer.anatomy.tree import VesselTree

__all__ = ["render_preview_png", "save_preview"]

_LABELLED = (
    "L_ICA R_ICA L_MCA_M1 R_MCA_M1 L_ACA_A1 R_ACA_A1 BA L_VA R_VA L_ECA R_ECA L_OPH R_OPH "
    "L_MCA_M2_SUP L_MCA_M2_INF L_PCOM"
).split()

# (horizontal axis, vertical axis, flip vertical, title)
_VIEWS = (
    (0, 2, False, "frontal (AP): patient's right on the left"),
    (1, 2, False, "lateral: anterior on the left"),
    (0, 1, True, "axial: anterior at the top"),
)


def _colour(label: str) -> tuple[float, float, float]:
    from matplotlib import colormaps

    h = sum((i + 1) * ord(c) for i, c in enumerate(label)) % 20
    return colormaps["tab20"](h)[:3]


def render_preview_png(tree: VesselTree, title: str | None = None, dpi: int = 100) -> bytes:
    """Render the preview and return PNG bytes (1500 x 1000 pixels at the default dpi)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 10), dpi=dpi)
    axes = fig.subplots(2, 3)
    lo, hi = tree.bounds_mm()
    head = [b for b in tree.branches if b.points_mm[:, 2].max() > hi[2] - 90]
    for row, subset in enumerate((tree.branches, head)):
        for col, (h, v, flip, name) in enumerate(_VIEWS):
            ax = axes[row, col]
            for b in subset:
                pts = b.points_mm
                if row == 1:
                    pts = pts[pts[:, 2] > hi[2] - 90]
                    if len(pts) < 2:
                        continue
                lw = float(np.clip(np.median(b.radii_mm) * (0.35 if row == 0 else 1.2), 0.4, 8))
                ax.plot(pts[:, h], pts[:, v], color=_colour(b.label), lw=lw,
                        solid_capstyle="round")
                if row == 1 and b.label in _LABELLED and col < 2:
                    m = pts[len(pts) // 2]
                    ax.annotate(b.label, (m[h], m[v]), fontsize=7, color="k")
            ax.set_aspect("equal", adjustable="datalim")
            if flip:
                ax.invert_yaxis()
            axis = "xyz"
            ax.set_xlabel(f"{axis[h]} (mm, LPS)")
            ax.set_ylabel(f"{axis[v]} (mm, LPS)")
            ax.set_title(("whole model: " if row == 0 else "head: ") + name, fontsize=9)
            ax.grid(alpha=0.3)
    fig.suptitle(title or f"{len(tree)} branches, {tree.total_length_mm:.0f} mm of centerline")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def save_preview(tree: VesselTree, path: str | os.PathLike[str], title: str | None = None) -> Path:
    """Write the preview PNG atomically; raises :class:`iratrainer.errors.OutputError`."""
    return atomic_write_bytes(path, render_preview_png(tree, title))
