"""Phantoms with known truth, for the segmentation tests: CT angiography volumes and DICOM series.

:func:`cta_volume` voxelises a :class:`VesselTree` (the atlas, a part of it, or a random
tree) into a CTA-like volume: partial volume at the lumen boundary (voxel coverage from
the exact signed distance), contrast that fades with the distance along the tree from
its root, optional bone plates and blobs (the skull base, vertebrae), Gaussian noise.
:func:`write_ct_series` writes it as a DICOM CT series whose files are named in random
order (so a reader must sort by position), optionally with identifying values planted in
every attribute that the de-identification must remove (tests).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from iratrainer.anatomy.lumen import LumenIndex
from iratrainer.anatomy.tree import Branch, VesselTree

__all__ = ["CtaPhantom", "cta_volume", "write_ct_series", "subtree", "random_tree", "PLANTED_PHI"]


@dataclass(frozen=True)
class CtaPhantom:
    """A phantom volume and its truth.

    Attributes:
        hu: (Z, Y, X) float32 volume in HU.
        affine: (4, 4) voxel index (x, y, z) to LPS mm.
        tree: the true vessel tree.
        voxel_mm: isotropic voxel size.
    """

    hu: np.ndarray
    affine: np.ndarray
    tree: VesselTree
    voxel_mm: float


def subtree(tree: VesselTree, root: str, depth: int | None = None) -> VesselTree:
    """The branches downstream of ``root`` (to ``depth`` generations), as a tree of their own."""
    keep: list[str] = []
    frontier = [(root, 0)]
    while frontier:
        lab, d = frontier.pop(0)
        keep.append(lab)
        if depth is None or d < depth:
            frontier.extend((c, d + 1) for c in tree.children(lab))
    out = []
    for lab in keep:
        b = tree[lab]
        parent = None if lab == root else b.parent
        out.append(Branch(lab, parent, 0 if parent is None else b.parent_index, b.points_mm, b.radii_mm))
    return VesselTree(out, metadata={"source": f"subtree of {root}"})


def random_tree(seed: int, n_branches: int = 7, box_mm: float = 60.0, clearance_mm: float = 1.0,
                stump_radii: float = 3.0) -> VesselTree:
    """A random smooth branching tree inside a cube (radii 1-3 mm), for tests not tuned on the atlas.

    Args:
        seed: the tree's seed.
        n_branches: branches wanted, the root included (fewer when the cube is too crowded).
        box_mm: edge of the cube, mm.
        clearance_mm: least wall-to-wall gap between a new branch and every vessel already
            drawn, except the parent at the branch's own origin, mm. Two lumens that run into
            each other over a length are not a tree: their true centerlines cannot be told apart
            in any image. 1 mm is two 0.5 mm voxels of background between the walls, the least
            that separates them once the partial volume blurs each wall over a voxel; 0 or less
            lets branches overlap.
        stump_radii: a branch leaves its parent at least this many of the parent's radii + 2 mm
            before the parent's end. A parent that ends a millimetre or two past a branch point
            is one curved tube in any image: its stump is shorter than the junction, where the
            cross-section holds both vessels. 0 lets branches leave anywhere.
    """
    from iratrainer.anatomy.atlas import resample_curve

    rng = np.random.default_rng(seed)
    branches: list[Branch] = []
    start = np.array([0.0, 0.0, -box_mm / 2 + 5])
    ctrl = [start]
    d = np.array([0.0, 0.0, 1.0])
    for _ in range(4):
        d = d + rng.normal(0, 0.35, 3)
        d /= np.linalg.norm(d)
        ctrl.append(ctrl[-1] + d * box_mm / 5)
    pts, rad = resample_curve(np.array(ctrl), np.linspace(3.0, 2.4, len(ctrl)), 0.5)
    branches.append(Branch("ROOT", None, 0, pts, rad))
    attempts = 0
    while len(branches) < n_branches and attempts < 8 * n_branches:
        attempts += 1
        par = branches[int(rng.integers(0, len(branches)))]
        k = int(rng.integers(len(par.points_mm) // 3, len(par.points_mm) - 2))
        if stump_radii > 0:
            # the parent goes on for a resolvable length past the branch point
            beyond = float(np.sum(np.linalg.norm(np.diff(par.points_mm[k:], axis=0), axis=1)))
            if beyond < stump_radii * float(par.radii_mm[k]) + 2.0:
                continue
        p0 = par.points_mm[k]
        r0 = float(par.radii_mm[k]) * rng.uniform(0.6, 0.85)
        if r0 < 1.0:
            continue
        t = par.points_mm[min(k + 1, len(par.points_mm) - 1)] - par.points_mm[k]
        side = np.cross(t, rng.normal(size=3))
        side /= np.linalg.norm(side)
        c = [p0]
        dd = 0.5 * t / np.linalg.norm(t) + side
        for _ in range(3):
            dd = dd / np.linalg.norm(dd) + rng.normal(0, 0.25, 3)
            c.append(c[-1] + dd / np.linalg.norm(dd) * box_mm / 6)
        c_arr = np.clip(np.array(c), -box_mm / 2 + 4, box_mm / 2 - 4)
        c_arr[0] = p0
        if np.min(np.linalg.norm(np.diff(c_arr, axis=0), axis=1)) < 2.0:
            continue
        pts, rad = resample_curve(c_arr, np.linspace(r0, max(0.7 * r0, 1.0), len(c_arr)), 0.5)
        if clearance_mm > 0 and _crowds(pts, rad, branches, par.label, float(par.radii_mm[k]), clearance_mm):
            continue
        branches.append(Branch(f"B{len(branches)}", par.label, k, pts, rad))
    return VesselTree(branches, metadata={"source": f"random tree, seed {seed}"})


def _crowds(pts: np.ndarray, rad: np.ndarray, branches: list[Branch], parent: str, r_parent: float,
            clearance_mm: float) -> bool:
    """Whether a new branch (points, radii in mm) comes closer than ``clearance_mm`` wall to wall
    to a vessel already drawn. Its first part, within its own and its parent's radius plus the
    clearance of its origin (along the curve), is where it leaves the parent and is only tested
    against the other vessels."""
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
    leaving = arc < 2.0 * (r_parent + float(rad[0])) + clearance_mm
    for b in branches:
        mine = ~leaving if b.label == parent else np.ones(len(pts), bool)
        if not np.any(mine):
            continue
        d = np.linalg.norm(pts[mine, None, :] - b.points_mm[None, :, :], axis=2)
        gap = d - rad[mine, None] - b.radii_mm[None, :]
        if gap.min() < clearance_mm:
            return True
    return False


def cta_volume(tree: VesselTree, voxel_mm: float = 0.5, margin_mm: float = 6.0, background_hu: float = 40.0,
               contrast_hu: float = 170.0, fade: float = 0.35, noise_hu: float = 30.0, bone: bool = True,
               seed: int = 0) -> CtaPhantom:
    """Voxelise ``tree`` (see the module docstring).

    ``contrast_hu`` above background at the root, decreasing linearly by the fraction
    ``fade`` at the farthest point of the tree (contrast fading distally).
    """
    lo, hi = tree.bounds_mm()
    lo = lo - margin_mm
    hi = hi + margin_mm
    shape_xyz = np.ceil((hi - lo) / voxel_mm).astype(int) + 1
    nx, ny, nz = (int(v) for v in shape_xyz)
    idx = LumenIndex(tree, cell_mm=max(2.0, 2 * voxel_mm), band_mm=2.0 * voxel_mm + 1.0)
    xs = lo[0] + np.arange(nx) * voxel_mm
    ys = lo[1] + np.arange(ny) * voxel_mm
    hu = np.empty((nz, ny, nx), np.float32)
    canal = np.zeros((nz, ny, nx), bool)  # within 1.5 mm of a vessel's wall: bone leaves room (a canal)
    # distance along the tree from the root, per segment, for the fading contrast
    depth = {tree.root: 0.0}
    for b in tree.branches:
        if b.parent is not None:
            depth[b.label] = depth[b.parent] + float(tree[b.parent].arc_mm[b.parent_index])
    seg_depth = np.array([depth[tree.labels[i]] for i in tree.seg_branch]) + tree.seg_s0
    far = max(float(seg_depth.max()), 1.0)
    X, Y = np.meshgrid(xs, ys)
    for k in range(nz):
        z = lo[2] + k * voxel_mm
        pts = np.stack([X.ravel(), Y.ravel(), np.full(X.size, z)], axis=1)
        sd = idx.signed_distance_banded(pts)
        frac = np.clip(0.5 - sd / voxel_mm, 0.0, 1.0)
        inside = frac > 0
        c = np.full(len(pts), contrast_hu)
        if np.any(inside):
            q = tree.query(pts[inside])
            c[inside] = contrast_hu * (1.0 - fade * (seg_depth[q.segment] / far))
        hu[k] = (background_hu + frac * c).reshape(ny, nx)
        canal[k] = (sd < 1.5).reshape(ny, nx)
    rng = np.random.default_rng(seed)
    if bone:
        # a skull-base-like plate and vertebra-like blobs, dense cortical bone (~1000 HU)
        zz, yy, xx = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
        plate = np.abs(zz - nz * 0.12) < max(2, int(2.0 / voxel_mm))
        # the plate is crossed through canals: bone never takes a vessel's lumen (a vessel under
        # bone would be unobservable, and real arteries cross the skull base in canals)
        hu[plate & (xx < nx * 0.35) & ~canal] = 900.0
        for _ in range(3):
            c = rng.uniform(0.15, 0.85, 3) * np.array([nz, ny, nx])
            r = rng.uniform(3.0, 5.0) / voxel_mm
            blob = (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 < r ** 2
            far_from_vessels = hu[blob].max() < background_hu + 20
            if far_from_vessels:
                hu[blob] = 1100.0
    hu += rng.normal(0.0, noise_hu, hu.shape).astype(np.float32)
    aff = np.eye(4)
    aff[:3, :3] *= voxel_mm
    aff[:3, 3] = lo
    return CtaPhantom(hu, aff, tree, voxel_mm)


#: Identifying values planted by :func:`write_ct_series` (``plant_phi=True``) for the de-identification test.
PLANTED_PHI = {
    "PatientName": "DUPONT^MARIE^PHI",
    "PatientID": "PHI-ID-991234",
    "PatientBirthDate": "19470312",
    "PatientAddress": "12 RUE DES PHI, 75001 PARIS",
    "InstitutionName": "CHU PHI-HOSPITAL",
    "InstitutionAddress": "1 AVENUE PHI-INSTITUTION",
    "ReferringPhysicianName": "MARTIN^PHI-REFERRER",
    "PerformingPhysicianName": "BERNARD^PHI-PERFORMER",
    "OperatorsName": "PETIT^PHI-OPERATOR",
    "AccessionNumber": "PHIACC5521",
    "StudyID": "PHISTUDY77",
    "StationName": "PHI-STATION-9",
    "StudyDescription": "PHI-DESCRIPTION ANGIO",
    "PatientTelephoneNumbers": "0142PHI42",
    "OtherPatientIDs": "PHI-OTHER-ID",
    "DeviceSerialNumber": "PHI-SERIAL-123",
}
PLANTED_PRIVATE = "PHI-PRIVATE-TAG-VALUE"


def write_ct_series(ph: CtaPhantom, folder: str | os.PathLike[str], plant_phi: bool = False, seed: int = 0,
                    compress: str | None = None) -> list[Path]:
    """Write the phantom as a DICOM CT series (one file per slice, names in random order).

    ``compress``: ``None`` (explicit VR little endian), ``"rle"`` (RLE lossless, encoded by
    pydicom), ``"j2k"`` (JPEG 2000 lossless, encoded through pylibjpeg-openjpeg) or ``"jls"``
    (JPEG-LS lossless, encoded through pyjpegls, a test dependency).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        CTImageStorage,
        ExplicitVRLittleEndian,
        JPEG2000Lossless,
        JPEGLSLossless,
        RLELossless,
        generate_uid,
    )

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    nz, ny, nx = ph.hu.shape
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    rng = np.random.default_rng(seed)
    names = rng.permutation(nz)
    paths = []
    for k in range(nz):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        uid = generate_uid()
        meta.MediaStorageSOPInstanceUID = uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = uid
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality = "CT"
        ds.PatientName = "PHANTOM"
        ds.PatientID = "PHANTOM"
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [float(v) for v in ph.affine[:3, 3] + np.array([0.0, 0.0, k * ph.voxel_mm])]
        ds.PixelSpacing = [ph.voxel_mm, ph.voxel_mm]
        ds.SliceThickness = ph.voxel_mm
        ds.KVP = 100
        ds.InstanceNumber = int(names[k]) + 1
        ds.Rows, ds.Columns = ny, nx
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        stored = np.clip(np.rint(ph.hu[k] + 1024), -32768, 32767).astype(np.int16)
        ds.PixelData = stored.tobytes()
        if plant_phi:
            for kw, v in PLANTED_PHI.items():
                setattr(ds, kw, v)
            block = ds.private_block(0x0009, "PHI PRIVATE CREATOR", create=True)
            block.add_new(0x01, "LO", PLANTED_PRIVATE)
        if compress == "rle":
            ds.compress(RLELossless, stored)
        elif compress == "j2k":
            ds.compress(JPEG2000Lossless, stored)
        elif compress == "jls":
            ds.compress(JPEGLSLossless, stored)
        p = out / f"img{int(names[k]):04d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths
