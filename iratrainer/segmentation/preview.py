"""Segmentation preview: maximum-intensity projections with the centerlines and radii drawn over them.

Only pixels and the project's own labels are drawn: nothing from the DICOM header.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from iratrainer.anatomy.io import atomic_write_bytes
from iratrainer.anatomy.tree import VesselTree
from iratrainer.segmentation.dicom_io import Volume

__all__ = ["save_segmentation_preview"]


def save_segmentation_preview(volume: Volume, tree: VesselTree, path: str | os.PathLike[str]) -> Path:
    """Three MIPs (axial, coronal, sagittal in voxel axes) with centerlines coloured by branch."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    v = volume.voxels
    lo, hi = np.percentile(v, [50, 99.9])
    fig = Figure(figsize=(15, 5.4), dpi=100)
    axes = fig.subplots(1, 3)
    cmap = colormaps["tab20"]
    for ax, axis, (h, w), name in zip(axes, (0, 1, 2), ((0, 1), (0, 2), (1, 2)),
                                       ("MIP along slices (z)", "MIP along rows (y)", "MIP along columns (x)"),
                                       strict=True):
        ax.imshow(v.max(axis=axis), cmap="gray", vmin=lo, vmax=hi, origin="lower")
        for i, b in enumerate(tree.branches):
            ijk = volume.lps_to_index(b.points_mm)  # x, y, z
            xyz = {0: ijk[:, 0], 1: ijk[:, 1], 2: ijk[:, 2]}
            # image axes: rows are the first remaining array axis, columns the second
            arr_axes = [a for a in (0, 1, 2) if a != axis]  # array axes z=0, y=1, x=2
            to_xyz = {0: 2, 1: 1, 2: 0}
            rows = xyz[to_xyz[arr_axes[0]]]
            cols = xyz[to_xyz[arr_axes[1]]]
            ax.plot(cols, rows, color=cmap(i % 20), lw=max(0.6, float(np.median(b.radii_mm)) * 0.8))
        ax.set_title(name, fontsize=9)
        ax.axis("off")
        _ = (h, w)
    radii = np.concatenate([b.radii_mm for b in tree.branches])
    fig.suptitle(f"{len(tree)} branches, {tree.total_length_mm:.0f} mm of centerline, radius "
                 f"{radii.min():.2f}-{radii.max():.2f} mm")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": "iratrainer"})
    return atomic_write_bytes(path, buf.getvalue())


def save_run_preview(run: object, seg: object, path: str | os.PathLike[str]) -> Path:
    """The angiogram (peak frame) and its subtraction with the 2-D centerlines drawn over them."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    frames = run.frames  # type: ignore[attr-defined]
    peak = frames[seg.peak_frame]  # type: ignore[attr-defined]
    px = seg.pixel_mm  # type: ignore[attr-defined]
    tree = seg.tree  # type: ignore[attr-defined]
    fig = Figure(figsize=(14, 7.4), dpi=100)
    axes = fig.subplots(1, 2)
    axes[0].imshow(peak, cmap="gray")
    axes[0].set_title("angiogram (peak opacification frame)", fontsize=10)
    axes[1].imshow(seg.subtracted, cmap="gray_r")  # type: ignore[attr-defined]
    cmap = colormaps["tab20"]
    for i, b in enumerate(tree.branches):
        xy = b.points_mm[:, :2] / px
        axes[1].plot(xy[:, 0], xy[:, 1], color=cmap(i % 20), lw=1.2)
    axes[1].set_title(f"vessels found: {len(tree)} branches", fontsize=10)
    for a in axes:
        a.axis("off")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": "iratrainer"})
    return atomic_write_bytes(path, buf.getvalue())
