"""Test DICOM files made with pydicom, with patient-identifying attributes set."""

import io

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

PATIENT_NAME = "Doe^Jane"
PATIENT_ID = "PID-SECRET-1"


def dicom_bytes(pixels: np.ndarray, bits_stored: int = 12, **attributes) -> bytes:
    """An uncompressed single-frame MONOCHROME2 DICOM of ``pixels`` (uint16 [rows, cols]).

    ``attributes`` are set by DICOM keyword last, e.g. ``Modality="DX"``,
    ``ImageLaterality="L"``, ``PhotometricInterpretation="MONOCHROME1"``.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.PixelData = np.ascontiguousarray(pixels.astype("<u2")).tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def ramp(bits: int = 12, rows: int = 16, cols: int = 64) -> np.ndarray:
    """uint16 values rising left to right from 0 to 2**bits - 1."""
    return np.tile(np.linspace(0, 2**bits - 1, cols), (rows, 1)).round().astype(np.uint16)
