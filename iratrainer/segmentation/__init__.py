"""Segmentation: DICOM import with de-identification, vessel extraction, phantoms with truth."""
