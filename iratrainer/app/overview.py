"""The small 3-D overview for beginners: the vessel tree, the devices and the clot.

An orthographic view that turns slowly about the patient's long axis (so that depth
reads from the motion), fitted once to the whole tree, drawn as lines whose width
follows the lumen. It is an aid a real suite does not have: off in exam mode, and the
trainee can switch it off. Coordinates are the patient's (LPS, mm): seen from the front,
the patient's left is on the viewer's right, as on a frontal angiogram.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from iratrainer.anatomy.tree import VesselTree

__all__ = ["Overview", "project"]

DEVICE_COLOURS = {"guide": (255, 210, 80), "diagnostic": (255, 170, 60), "catheter": (80, 220, 255),
                  "microcatheter": (255, 110, 230), "guidewire": (230, 230, 230), "microwire": (255, 255, 255),
                  "stent_retriever": (140, 255, 140)}
TURN_DEG_S = 12.0  # rotation of the view, degrees per second of simulation time
ELEVATION_DEG = 12.0


def project(points_mm: np.ndarray, azimuth_deg: float, elevation_deg: float = ELEVATION_DEG) -> np.ndarray:
    """Orthographic view coordinates of LPS points, mm: (N, 3) -> (N, 3) as (right, down, depth).

    Azimuth 0 looks at the patient from the front (anterior): ``right`` is the patient's
    left (+L), ``down`` is caudal (−S). Positive azimuth turns the viewer towards the
    patient's left (a LAO-like view); positive elevation looks from above.
    """
    p = np.asarray(points_mm, dtype=np.float64)
    a, e = np.radians(azimuth_deg), np.radians(elevation_deg)
    # camera axes in LPS: right, up, and toward the viewer
    right = np.array([np.cos(a), np.sin(a), 0.0])
    fwd = np.array([np.sin(a), -np.cos(a), 0.0])  # from the patient toward the viewer (anterior at a = 0)
    up = np.array([0.0, 0.0, 1.0])
    up_e = np.cos(e) * up - np.sin(e) * fwd
    fwd_e = np.cos(e) * fwd + np.sin(e) * up
    return np.stack([p @ right, -(p @ up_e), p @ fwd_e], axis=-1)


class Overview:
    """Draws the tree and the devices into a square panel of a pygame surface.

    The panel shows a cube of ``view_mm`` about the focus (the leading device tip, else the
    clot), centred on the patient's midline, so that the arch, the neck or the circle of
    Willis fill it as the devices climb.
    """

    def __init__(self, tree: VesselTree, size_px: int = 240, view_mm: float = 300.0) -> None:
        self.size = size_px
        pts = np.concatenate([b.points_mm for b in tree.branches])
        # every branch's points in one array (projected once a frame), every ~2 mm
        keep = [np.unique(np.r_[np.arange(0, len(b.points_mm), max(1, len(b.points_mm) // max(
            2, int(b.length_mm / 2.0)))), len(b.points_mm) - 1]) for b in tree.branches]
        self._pts = np.concatenate([b.points_mm[k] for b, k in zip(tree.branches, keep, strict=True)])
        self._splits = np.cumsum([len(k) for k in keep])[:-1]
        self._radius = np.array([float(np.median(b.radii_mm)) for b in tree.branches])
        self.lo, self.hi = pts.min(axis=0), pts.max(axis=0)
        self.centre = 0.5 * (self.lo + self.hi)
        self.scale = size_px / view_mm
        self.view_mm = view_mm
        self.tree = tree

    def centre_for(self, focus_mm: np.ndarray | None) -> np.ndarray:
        """The view centre: the tree's midline at the focus height, kept inside the tree's extent."""
        c = self.centre.copy()
        if focus_mm is not None:
            half = 0.5 * self.view_mm * 0.8
            z_lo, z_hi = self.lo[2] + half, self.hi[2] - half
            c[2] = float(np.clip(focus_mm[2], min(z_lo, z_hi), max(z_lo, z_hi)))
        return c

    def to_px(self, points_mm: np.ndarray, azimuth_deg: float, x0: int, y0: int,
              centre: np.ndarray | None = None) -> np.ndarray:
        """Panel pixel coordinates (N, 2) of LPS points for a panel whose corner is (x0, y0)."""
        v = project(np.asarray(points_mm) - (self.centre if centre is None else centre), azimuth_deg)
        return np.stack([x0 + self.size / 2 + self.scale * v[:, 0], y0 + self.size / 2 + self.scale * v[:, 1]], 1)

    def draw(self, pg: Any, surface: Any, x0: int, y0: int, t_s: float, devices: list[tuple[str, np.ndarray]],
             clots: list[np.ndarray], label: str = "", focus_mm: np.ndarray | None = None) -> None:
        """Draw the panel at (x0, y0); ``devices``: (kind, points) pairs; ``clots``: centre points, mm."""
        az = (TURN_DEG_S * t_s) % 360.0 - 180.0
        centre = self.centre_for(focus_mm)
        clip = surface.get_clip()
        surface.set_clip(pg.Rect(x0, y0, self.size, self.size))
        try:
            pg.draw.rect(surface, (12, 14, 20), (x0, y0, self.size, self.size))
            xy_all = self.to_px(self._pts, az, x0, y0, centre)
            inside = (xy_all[:, 0] > x0 - 20) & (xy_all[:, 0] < x0 + self.size + 20) & \
                     (xy_all[:, 1] > y0 - 20) & (xy_all[:, 1] < y0 + self.size + 20)
            widths = np.clip(np.round(self._radius * self.scale * 2.0), 1, 5).astype(int)
            for xy, ins, width in zip(np.split(xy_all, self._splits), np.split(inside, self._splits), widths,
                                      strict=True):
                if len(xy) >= 2 and ins.any():
                    pg.draw.lines(surface, (130, 45, 50), False, xy.tolist(), int(width))
            for kind, pts in devices:
                if len(pts) >= 2:
                    xy = self.to_px(pts, az, x0, y0, centre)
                    pg.draw.lines(surface, DEVICE_COLOURS.get(kind, (230, 230, 230)), False, xy.tolist(), 2)
            for c in clots:
                x, y = self.to_px(np.asarray(c)[None], az, x0, y0, centre)[0]
                pg.draw.circle(surface, (255, 40, 40), (int(x), int(y)), 4)
            pg.draw.rect(surface, (70, 80, 100), (x0, y0, self.size, self.size), 1)
            if label:
                font = pg.font.Font(None, 18)
                surface.blit(font.render(label, True, (180, 190, 210)), (x0 + 5, y0 + 4))
        finally:
            surface.set_clip(clip)
