"""The Scan model: its rules are refusals, so test that they refuse."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pytest

from nii.scan import Scan, ScanKind, content_hash
from tests.conftest import make_scan


@pytest.mark.parametrize(
    ("kind", "shape"),
    [
        (ScanKind.SINGLE_ENERGY, (2, 4, 4)),
        (ScanKind.DUAL_ENERGY, (3, 4, 4)),
        (ScanKind.DUAL_ENERGY, (4, 4)),
        (ScanKind.PSEUDO_COLOUR, (4, 4, 4)),
        (ScanKind.CT_VOLUME, (4, 4)),
    ],
)
def test_shape_must_fit_kind(kind: ScanKind, shape: tuple[int, ...]) -> None:
    dtype = np.uint8 if kind is ScanKind.PSEUDO_COLOUR else np.uint16
    with pytest.raises(ValueError, match=kind.value):
        Scan(np.zeros(shape, dtype), kind=kind)


def test_refuses_empty_nan_and_wrong_types() -> None:
    with pytest.raises(ValueError, match="empty"):
        Scan(np.zeros((0, 4), np.uint16), kind="single_energy")
    with pytest.raises(ValueError, match="NaN or inf"):
        Scan(np.array([[1.0, np.nan]]), kind="single_energy")
    with pytest.raises(ValueError, match="NaN or inf"):
        Scan(np.array([[1.0, np.inf]], np.float32), kind="single_energy")
    with pytest.raises(TypeError, match="ndarray"):
        Scan([[1, 2]], kind="single_energy")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="uint8 RGB"):
        Scan(np.zeros((4, 4, 3), np.uint16), kind="pseudo_colour")
    with pytest.raises(TypeError, match="integer or float"):
        Scan(np.zeros((4, 4), bool), kind="single_energy")
    with pytest.raises(ValueError):
        Scan(np.zeros((4, 4), np.uint16), kind="infrared")


def test_refuses_bad_geometry_and_energies() -> None:
    counts = np.zeros((2, 4, 4), np.uint16)
    with pytest.raises(ValueError, match="spacing_mm"):
        Scan(counts, kind="dual_energy", spacing_mm=(1.0,))
    with pytest.raises(ValueError, match="spacing_mm"):
        Scan(counts, kind="dual_energy", spacing_mm=(1.0, 0.0))
    with pytest.raises(ValueError, match="energies_kv"):
        Scan(counts, kind="dual_energy", energies_kv=(80.0,))
    with pytest.raises(TypeError, match="JSON"):
        Scan(counts, kind="dual_energy", metadata={"when": datetime.now()})


def test_counts_are_read_only_and_channels_are_views() -> None:
    scan = make_scan(ScanKind.DUAL_ENERGY)
    with pytest.raises(ValueError):
        scan.counts[0, 0, 0] = 1
    np.testing.assert_array_equal(scan.low, scan.counts[0])
    np.testing.assert_array_equal(scan.high, scan.counts[1])
    with pytest.raises(ValueError, match="not dual_energy"):
        _ = make_scan(ScanKind.SINGLE_ENERGY).low


def test_scan_id_is_a_content_hash_independent_of_byte_order() -> None:
    counts = np.arange(12, dtype="<u2").reshape(3, 4)
    a = Scan(counts, kind="single_energy")
    b = Scan(counts.astype(">u2"), kind="single_energy")
    c = Scan(counts + 1, kind="single_energy")
    assert a.scan_id == b.scan_id == content_hash(counts)
    assert a.scan_id.startswith("sha256:") and len(a.scan_id) == 7 + 64
    assert c.scan_id != a.scan_id
    # Same values, different shape: a different scan.
    assert Scan(counts.reshape(4, 3), kind="single_energy").scan_id != a.scan_id


def test_header_round_trips_every_field(any_scan: Scan) -> None:
    again = Scan.from_header(np.asarray(any_scan.counts), any_scan.header())
    for field in ("kind", "modality", "spacing_mm", "energies_kv", "scanner_id", "acquired_at", "scan_id",
                  "bits_stored", "rescale"):
        assert getattr(again, field) == getattr(any_scan, field), field
    assert dict(again.metadata) == dict(any_scan.metadata)


def test_defaults_fill_modality_by_kind() -> None:
    assert make_scan(ScanKind.CT_VOLUME).modality == "CT"
    assert make_scan(ScanKind.DUAL_ENERGY).modality == "DX"
    assert make_scan(ScanKind.PSEUDO_COLOUR).modality == "OT"
    assert make_scan(ScanKind.CT_VOLUME).spatial_shape == (5, 12, 17)
    assert make_scan(ScanKind.PSEUDO_COLOUR).spatial_shape == (12, 17)


def test_replace_rehashes_new_pixels_but_keeps_a_uid() -> None:
    scan = make_scan(ScanKind.SINGLE_ENERGY)
    brighter = scan.replace(counts=np.asarray(scan.counts) // 2)
    assert brighter.scan_id == content_hash(brighter.counts) != scan.scan_id
    dicom = scan.replace(scan_id="1.2.3.4")
    assert dicom.replace(counts=np.asarray(scan.counts) // 2).scan_id == "1.2.3.4"
