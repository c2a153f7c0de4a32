"""Annotate: what the officer and other systems receive for a scan.

The annotated image (PNG), the result JSON (with its JSON Schema) and the
DICOS Threat Detection Report, all written from one
:class:`~nii.pipeline.ScanResult`.
"""
