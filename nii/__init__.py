"""nii: non-intrusive inspection image analysis for customs and border scanners.

The pipeline's stages are sub-packages, in order: ``ingest`` (read any scan
format into a :class:`Scan`), then calibrate, detect, annotate, serve and
batch as they land.
"""

from nii.ingest import (
    CorruptScanError,
    ReadLimits,
    ScanReadError,
    ScanTooLargeError,
    UnsupportedScanError,
    find_scans,
    read_scan,
    write_scan,
)
from nii.scan import Scan, ScanFormat, ScanKind

__all__ = [
    "CorruptScanError",
    "ReadLimits",
    "Scan",
    "ScanFormat",
    "ScanKind",
    "ScanReadError",
    "ScanTooLargeError",
    "UnsupportedScanError",
    "find_scans",
    "read_scan",
    "write_scan",
]
__version__ = "0.1.0"
