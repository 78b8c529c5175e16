"""Test DICOM files made with pydicom, with patient-identifying attributes set.

One builder for every test area (components, web app): tests/conftest.py puts tests/ on
the import path.
"""

import io

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

PATIENT_NAME = "Doe^Jane"
PATIENT_ID = "PID-SECRET-1"


def dicom_bytes(pixels: np.ndarray, bits_stored: int = 12, *, frames: int = 1,
                with_pixels: bool = True, **attributes) -> bytes:
    """An uncompressed MONOCHROME2 DICOM Part 10 file of ``pixels`` (uint16 [rows, cols]).

    Args:
        pixels: uint16 array [rows, cols]; repeated ``frames`` times in PixelData.
        bits_stored: Bits used per pixel (BitsAllocated stays 16).
        frames: NumberOfFrames to claim (set only when not 1).
        with_pixels: False leaves out PixelData.
        attributes: set by DICOM keyword last, e.g. ``Modality="DX"``,
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
    if frames != 1:
        ds.NumberOfFrames = frames
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    if with_pixels:
        ds.PixelData = np.ascontiguousarray(pixels.astype("<u2")).tobytes() * frames
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def ramp(bits: int = 12, rows: int = 16, cols: int = 64) -> np.ndarray:
    """uint16 values rising left to right from 0 to 2**bits - 1."""
    return np.tile(np.linspace(0, 2**bits - 1, cols), (rows, 1)).round().astype(np.uint16)
