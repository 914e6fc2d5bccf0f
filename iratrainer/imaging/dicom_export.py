"""DICOM export of a simulated run: X-Ray Angiographic Image (multi-frame), pydicom.

The file carries what a real biplane run carries and what the project's own reader
needs to close the loop: positioner angles (primary/secondary), source-detector and
source-patient distances, imager pixel spacing, kVp, tube current and exposure, the
frame time, dose attributes (area dose product, entrance dose) and, for DSA, the mask
subtraction attributes. The patient is a synthetic one ("SIMULATED^PATIENT"); no real
identity is ever written.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
from pathlib import Path

import numpy as np

from iratrainer import __version__
from iratrainer.errors import OutputError
from iratrainer.imaging.chain import Frame
from iratrainer.imaging.geometry import CArmPlane
from iratrainer.imaging.xray import TECHNIQUES

__all__ = ["write_xa_run", "XA_SOP_CLASS_UID"]

XA_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.12.1"
_ROOT = "1.2.826.0.1.3680043.10.1215."  # iratrainer's UID prefix (deterministic suffixes)


def _uid(*parts: object) -> str:
    """A deterministic UID from ``parts`` (same run, same UIDs; bit-for-bit reproducible files)."""
    h = hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()
    return (_ROOT + str(int(h[:24], 16)))[:64]


def write_xa_run(
    path: str | os.PathLike[str],
    frames: list[Frame],
    plane: CArmPlane,
    *,
    series_description: str = "iratrainer simulated run",
    study_key: str = "iratrainer",
    frame_time_ms: float | None = None,
    bits: int = 10,
) -> Path:
    """Write ``frames`` (same plane) as one multi-frame XA object.

    Pixel values are the displayed images scaled to ``bits`` bits (0 = black). For a DSA
    run the first frame is the mask and the object says so (Mask Subtraction Sequence,
    AVG_SUB). Raises :class:`OutputError` when the path cannot be written.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian

    if not frames:
        raise OutputError(f"{path}: no frames to write")
    n = frames[0].display.shape[0]
    kinds = {f.kind for f in frames}
    is_dsa = bool(kinds & {"dsa", "dsa_mask"})
    tech = TECHNIQUES["dsa"] if is_dsa else TECHNIQUES["fluoro_normal"]
    maxv = (1 << bits) - 1
    pix = np.stack([np.clip(np.rint(f.display * maxv), 0, maxv) for f in frames]).astype(np.uint16)

    study_uid = _uid("study", study_key)
    series_uid = _uid("series", study_key, plane.name, series_description, len(frames))
    sop_uid = _uid("sop", series_uid, pix.tobytes()[:4096], pix.sum())
    now = _dt.datetime(2026, 1, 1, 12, 0, 0)  # fixed: simulated, reproducible content

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = XA_SOP_CLASS_UID
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = _ROOT + "1"
    meta.ImplementationVersionName = f"IRATRAINER_{__version__}"[:16]

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "SINGLE PLANE"]
    ds.SOPClassUID = XA_SOP_CLASS_UID
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = now.strftime("%H%M%S")
    ds.AccessionNumber = ""
    ds.Modality = "XA"
    ds.Manufacturer = "iratrainer (simulation)"
    ds.InstitutionName = "Simulation"
    ds.ReferringPhysicianName = ""
    ds.StationName = "IRATRAINER"
    ds.StudyDescription = "Simulated neuro-angiography"
    ds.SeriesDescription = series_description[:64]
    ds.ManufacturerModelName = "iratrainer"
    ds.SoftwareVersions = __version__
    ds.PatientName = "SIMULATED^PATIENT"
    ds.PatientID = "SIM0001"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "synthetic patient, no real data"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 1 if plane.name == "frontal" else 2
    ds.InstanceNumber = 1
    ds.PatientOrientation = ["L", "F"] if plane.name == "frontal" else ["P", "F"]
    ds.BodyPartExamined = "HEAD"
    ds.PositionerMotion = "STATIC"
    ds.PositionerPrimaryAngle = round(float(plane.lao_deg), 2)
    ds.PositionerSecondaryAngle = round(float(plane.cran_deg), 2)
    ds.DistanceSourceToDetector = round(float(plane.sid_mm), 2)
    ds.DistanceSourceToPatient = round(float(plane.sod_mm), 2)
    ds.ImagerPixelSpacing = [round(plane.pixel_mm, 6)] * 2
    ds.EstimatedRadiographicMagnificationFactor = round(plane.magnification, 4)
    ds.KVP = round(tech.kv, 1)
    ds.RadiationSetting = "GR" if is_dsa else "SC"
    ft = frame_time_ms
    if ft is None:
        if len(frames) > 1:
            ft = 1000.0 * float(np.median(np.diff([f.time_s for f in frames]))) or 100.0
        else:
            ft = 100.0
    ds.ExposureTime = 10
    ds.XRayTubeCurrent = int(round(tech.mas / 0.01))
    ds.Exposure = int(round(tech.mas * len(frames)))
    ds.ExposureInuAs = int(round(tech.mas * 1000 * len(frames)))
    ds.AveragePulseWidth = 10.0
    ds.IntensifierSize = round(plane.fov_cm * 10 * np.sqrt(2), 1)
    ds.FieldOfViewShape = "ROUND"
    ds.FieldOfViewDimensions = [int(round(plane.fov_cm * 10 * plane.collimation))]
    dap = sum(f.exposure.dap_gy_cm2 for f in frames if f.exposure is not None)
    kar = sum(f.exposure.kar_ugy for f in frames if f.exposure is not None)
    ds.ImageAndFluoroscopyAreaDoseProduct = round(dap * 10.0, 6)  # dGy·cm²
    ds.ImageComments = f"Ka,r {kar * 1e-3:.6f} mGy at the interventional reference point (simulated)"
    ds.NumberOfFrames = len(frames)
    ds.FrameIncrementPointer = (0x0018, 0x1063)  # Frame Time
    ds.FrameTime = round(float(ft), 3)
    ds.CineRate = int(round(1000.0 / float(ft)))
    ds.RecommendedDisplayFrameRate = ds.CineRate
    ds.StartTrim = 1
    ds.StopTrim = len(frames)
    ds.PreferredPlaybackSequencing = 0
    ds.PixelIntensityRelationship = "LOG" if is_dsa else "LIN"
    if is_dsa:  # Modality LUT macro: required when the pixel relationship is LOG
        ds.RescaleIntercept = 0
        ds.RescaleSlope = 1
        ds.RescaleType = "US"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = n
    ds.Columns = n
    ds.BitsAllocated = 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.LossyImageCompression = "00"
    ds.ShutterShape = "CIRCULAR"
    ds.CenterOfCircularShutter = [n // 2, n // 2]
    ds.RadiusOfCircularShutter = int(round(plane.collimation * n / 2))
    ds.ShutterPresentationValue = 0
    ds.WindowCenter = maxv // 2
    ds.WindowWidth = maxv + 1
    if is_dsa:
        item = Dataset()
        item.MaskOperation = "AVG_SUB"
        item.SubtractionItemID = 1
        item.MaskFrameNumbers = [1]
        item.ContrastFrameAveraging = 1
        ds.MaskSubtractionSequence = Sequence([item])
        ds.RecommendedViewingMode = "SUB"
    ds.PixelData = pix.tobytes()
    p = Path(path)
    if not p.parent.is_dir():
        raise OutputError(f"{p}: folder {p.parent} does not exist")
    tmp = p.with_name(f".{p.name}.tmp")
    try:
        ds.save_as(tmp, enforce_file_format=True)
        os.replace(tmp, p)
    except OSError as exc:
        if tmp.exists():
            tmp.unlink()
        raise OutputError(f"{p}: cannot write: {exc.strerror or exc}") from None
    return p
