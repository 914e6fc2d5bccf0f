"""De-identification on import (DICOM PS3.15 Annex E, Basic Application Level Confidentiality Profile).

iratrainer never writes a DICOM dataset read from a patient: segmentation keeps pixels,
geometry and the few non-identifying facts of :meth:`Pseudonymizer.provenance`. So the
profile is applied by construction, and :func:`deidentify_dataset` exists for the
one place a dataset may be kept (a de-identified copy for a case's background CT):

* removed or emptied: names, IDs, birth date, addresses, telephone numbers, institution,
  department, station, physicians and operators, accession number, study ID, comments,
  dates and times (moved to a fixed date), device serial numbers, all private tags;
* UIDs (study, series, instance, frame of reference, referenced instances) remapped to
  new UIDs by HMAC-SHA256 with a per-import secret: consistent within an import (the
  same original UID always maps to the same new one), unlinkable across imports.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any

__all__ = ["Pseudonymizer", "deidentify_dataset", "PHI_KEYWORDS", "UID_KEYWORDS", "PROFILE"]

PROFILE = "DICOM PS3.15 Basic Application Level Confidentiality Profile (iratrainer import)"

#: Attributes removed (PS3.15 Table E.1-1, the identifying ones found in angiography objects).
PHI_KEYWORDS = (
    "PatientName", "PatientID", "IssuerOfPatientID", "OtherPatientIDs", "OtherPatientNames",
    "OtherPatientIDsSequence", "PatientBirthDate", "PatientBirthTime", "PatientAddress", "PatientTelephoneNumbers",
    "PatientMotherBirthName", "MilitaryRank", "BranchOfService", "MedicalRecordLocator", "EthnicGroup",
    "Occupation", "AdditionalPatientHistory", "PatientComments", "PatientInsurancePlanCodeSequence",
    "CountryOfResidence", "RegionOfResidence", "PatientReligiousPreference", "ResponsiblePerson",
    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "InstitutionCodeSequence",
    "ReferringPhysicianName", "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers",
    "PhysiciansOfRecord", "PerformingPhysicianName", "NameOfPhysiciansReadingStudy", "OperatorsName",
    "RequestingPhysician", "ScheduledPerformingPhysicianName", "AccessionNumber", "StudyID", "StationName",
    "DeviceSerialNumber", "StudyDescription", "SeriesDescription", "ImageComments", "RequestedProcedureID",
    "PerformedProcedureStepID", "PerformedProcedureStepDescription", "ScheduledProcedureStepID",
    "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "StudyTime", "SeriesTime", "AcquisitionTime",
    "ContentTime", "AcquisitionDateTime", "InstanceCreationDate", "InstanceCreationTime",
    "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime", "ProtocolName", "RequestAttributesSequence",
    "ReferencedPatientSequence", "ReferencedStudySequence", "PatientAge", "PatientWeight", "PatientSize",
    "FrameComments", "DerivationDescription", "SourceImageSequence", "ReferencedImageSequence",
)

UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID",
                "MediaStorageSOPInstanceUID", "ReferencedSOPInstanceUID", "SynchronizationFrameOfReferenceUID")


class Pseudonymizer:
    """Consistent, keyed pseudonyms for one import (HMAC-SHA256 with a secret salt)."""

    def __init__(self, salt: bytes | None = None) -> None:
        self._salt = salt if salt is not None else os.urandom(32)

    def token(self, value: str, n: int = 12) -> str:
        """A short pseudonym (hex) of ``value``."""
        return hmac.new(self._salt, value.encode("utf-8"), hashlib.sha256).hexdigest()[:n]

    def uid(self, value: str) -> str:
        """A new UID (2.25 form) that stands for ``value`` within this import."""
        digest = hmac.new(self._salt, value.encode("utf-8"), hashlib.sha256).digest()
        return "2.25." + str(int.from_bytes(digest[:16], "big"))

    def provenance(self, ds: Any, n_images: int, shape: tuple[int, ...], spacing_mm: Any) -> dict[str, Any]:
        """Non-identifying facts about an imported series (safe to write into models and cases)."""
        def num(name: str) -> float | None:
            v = getattr(ds, name, None)
            try:
                return round(float(v), 3) if v not in (None, "") else None
            except (TypeError, ValueError):
                return None

        return {
            "modality": str(getattr(ds, "Modality", "OT")),
            "series": self.token(str(getattr(ds, "SeriesInstanceUID", ""))),
            "images": int(n_images),
            "shape": [int(s) for s in shape],
            "spacing_mm": [round(float(s), 5) for s in spacing_mm] if spacing_mm is not None else None,
            "kvp": num("KVP"),
            "positioner_primary_deg": num("PositionerPrimaryAngle"),
            "positioner_secondary_deg": num("PositionerSecondaryAngle"),
            "deidentification": PROFILE,
        }


def deidentify_dataset(ds: Any, pseudo: Pseudonymizer) -> Any:
    """A de-identified copy of a pydicom dataset (see the module docstring)."""
    import copy

    out = copy.deepcopy(ds)
    out.remove_private_tags()

    def scrub(d: Any) -> None:
        for kw in PHI_KEYWORDS:
            if kw in d:
                delattr(d, kw)
        for kw in UID_KEYWORDS:
            if kw in d and str(getattr(d, kw)):
                setattr(d, kw, pseudo.uid(str(getattr(d, kw))))
        for elem in list(d):
            if elem.VR == "SQ":
                for item in elem.value:
                    scrub(item)
            elif elem.VR in ("PN", "DA", "DT", "TM") and elem.keyword not in ("",):
                del d[elem.tag]

    scrub(out)
    if hasattr(out, "file_meta") and "MediaStorageSOPInstanceUID" in out.file_meta:
        out.file_meta.MediaStorageSOPInstanceUID = pseudo.uid(str(out.file_meta.MediaStorageSOPInstanceUID))
    out.PatientIdentityRemoved = "YES"
    out.DeidentificationMethod = PROFILE
    out.PatientName = "ANONYMOUS"
    out.PatientID = "ANON-" + pseudo.token(str(getattr(ds, "PatientID", "")), 8)
    return out
