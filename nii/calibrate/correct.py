"""Corrections: raw counts to calibrated attenuation, Zeff and material class.

:class:`Calibrator` is configured once with a profile (the per-element
tables are precomputed there) and applied to scans; :func:`calibrate_scan`
is the one-call form. The steps, as real scanners do them:

1. offset and gain, per detector element: ``I_n = (I - D) / (F - D)``;
2. bad elements replaced by interpolation between good neighbours;
3. attenuation ``A = -ln(I_n)``, clipped where photons run out, and those
   pixels flagged *opaque* (the operator must be told);
4. dual energy: Zeff, areal density and material class from the profile's
   step-wedge calibration;
5. geometry: the line-scan aspect (belt advance against detector pitch)
   resampled to square pixels;
6. CT: stored values to Hounsfield units from the air/water calibration.

Scans without a profile take a clearly labelled uncalibrated path
(:data:`~nii.calibrate.calibrated.UNCALIBRATED`): normalised from their own
air region, with no Zeff, never silently wrong numbers.
"""

from __future__ import annotations

import functools
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from nii.calibrate import material as materials
from nii.calibrate.calibrated import UNCALIBRATED, CalibratedScan, classify_zeff
from nii.calibrate.profile import (
    CALIBRATION_ROOT,
    CalibrationProfile,
    ProfileError,
    default_profile_path,
    load_profile,
)
from nii.scan import Scan, ScanKind

__all__ = ["Calibrator", "calibrate_scan", "calibrate_with_scanner_profile", "calibrate_uncalibrated"]

# The uncalibrated path takes each element's air level as a high percentile
# of its own line: line scans always start and end on the empty belt.
_SELF_AIR_PERCENTILE = 99.5
_SELF_MIN_TRANSMISSION = 1e-3


def _neighbours(bad: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For each bad element: nearest good element left and right, and weights."""
    good = np.flatnonzero(~bad)
    if good.size == 0:
        raise ProfileError("every detector element is marked bad")
    columns = np.flatnonzero(bad)
    right_pos = np.clip(np.searchsorted(good, columns), 0, good.size - 1)
    left_pos = np.clip(right_pos - 1, 0, good.size - 1)
    left, right = good[left_pos], good[right_pos]
    span = np.maximum(right - left, 1)
    weight_right = np.where(right == left, 0.5, (columns - left) / span).astype(np.float32)
    return columns, left, right, weight_right


class Calibrator:
    """Calibrate scans with one profile (a composable transform).

    Parameters
    ----------
    profile : CalibrationProfile
        The scanner's profile.
    workers : int
        Threads that split the rows of one scan (NumPy and OpenCV release
        the GIL, so 2 uses both cores of a 2-core machine).

    Examples
    --------
    >>> calibrate = Calibrator(load_profile("calibration/baggage-dual-kvp/profile.npz"))  # doctest: +SKIP
    >>> calibrated = calibrate(read_scan("sample_scans/bag-threat.json"))  # doctest: +SKIP
    """

    def __init__(self, profile: CalibrationProfile, *, workers: int = 1) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.profile = profile
        self.workers = workers
        if profile.kind != "projection":
            return
        signal = np.maximum(profile.air - profile.dark, 1.0)
        # A = ln(F - D) - ln(I - D): a per-element constant minus a table look-up.
        # max(I, D + 1) - D is max(I - D, 1) without wrapping below zero;
        # D is held below 65535 so that D + 1 fits in uint16.
        self._dark = np.minimum(np.rint(profile.dark), 65534).astype(np.uint16)
        self._dark_plus_one = self._dark + np.uint16(1)
        self._ln_signal = np.log(signal).astype(np.float32)
        self._a_max = (-np.log(profile.min_transmission)).astype(np.float32)
        self._bad = [_neighbours(profile.bad_pixels[c]) for c in range(profile.channels)]
        self._lookup = materials.material_lookup(profile.material) if profile.material is not None else None

    def __call__(self, scan: Scan) -> CalibratedScan:
        """Calibrate one scan; see the module docstring for the steps.

        Raises
        ------
        ProfileError
            The profile is for another scanner, another detector width, or
            another kind of scan.
        """
        if scan.kind is ScanKind.PSEUDO_COLOUR:
            from nii.calibrate.archive import calibrate_archive

            return calibrate_archive(scan)
        self._check_fits(scan)
        if scan.kind is ScanKind.CT_VOLUME:
            hounsfield = (scan.counts.astype(np.float32) * np.float32(self.profile.hu_slope)
                          + np.float32(self.profile.hu_intercept))
            return CalibratedScan(scan, hounsfield, np.zeros(scan.counts.shape, bool), scan.spacing_mm,
                                  self.profile.profile_id)
        counts = scan.channels
        attenuation = np.empty(counts.shape, np.float32)
        opaque = np.empty(counts.shape[1:], bool)
        dual = counts.shape[0] == 2 and self._lookup is not None
        zeff = np.empty(counts.shape[1:], np.float32) if dual else None
        areal = np.empty(counts.shape[1:], np.float32) if dual else None
        classes = np.empty(counts.shape[1:], np.uint8) if dual else None
        rows = counts.shape[1]
        chunk = math.ceil(rows / self.workers)
        blocks = [slice(start, min(start + chunk, rows)) for start in range(0, rows, chunk)]

        def run(block: slice) -> None:
            self._rows(counts[:, block], attenuation[:, block], opaque[block],
                       zeff[block] if dual else None, areal[block] if dual else None,
                       classes[block] if dual else None)

        if len(blocks) == 1:
            run(blocks[0])
        else:
            with ThreadPoolExecutor(max_workers=self.workers) as pool:
                list(pool.map(run, blocks))
        return _square_pixels(scan, attenuation, opaque, zeff, areal, classes, self.profile.profile_id,
                              belt_mm=self.profile.belt_mm_per_line, pitch_mm=self.profile.pixel_mm)

    def _check_fits(self, scan: Scan) -> None:
        profile = self.profile
        if scan.scanner_id and scan.scanner_id != profile.scanner_id:
            raise ProfileError(f"profile {profile.profile_id} is for scanner {profile.scanner_id!r}; "
                               f"scan {scan.scan_id} comes from {scan.scanner_id!r}")
        if (scan.kind is ScanKind.CT_VOLUME) != (profile.kind == "ct"):
            raise ProfileError(f"profile {profile.profile_id} is a {profile.kind} profile; "
                               f"scan {scan.scan_id} is {scan.kind.value}")
        if profile.kind == "projection":
            channels = 2 if scan.kind is ScanKind.DUAL_ENERGY else 1
            cols = scan.spatial_shape[1]
            if channels != profile.channels or cols != profile.detector_elements:
                raise ProfileError(
                    f"profile {profile.profile_id} has {profile.channels} channel(s) x "
                    f"{profile.detector_elements} detector elements; scan {scan.scan_id} has {channels} x {cols}"
                )

    def _rows(self, counts: np.ndarray, attenuation: np.ndarray, opaque: np.ndarray,
              zeff: np.ndarray | None, areal: np.ndarray | None, classes: np.ndarray | None) -> None:
        """Steps 1-4 on a block of lines, into preallocated outputs."""
        for c in range(counts.shape[0]):
            a = attenuation[c]
            # In uint16, counts above dark and at least one (no photons above
            # dark: opaque anyway); then ln in float32, where OpenCV's SIMD
            # passes are 2-5x faster than NumPy's, and ln beats a 64k-entry
            # table gather by ~5x.
            signal = np.maximum(counts[c], self._dark_plus_one[c])
            np.subtract(signal, self._dark[c], out=signal)
            np.copyto(a, signal)
            cv2.log(a, dst=a)
            np.subtract(self._ln_signal[c], a, out=a)
            columns, left, right, weight = self._bad[c]
            if columns.size:
                a[:, columns] = a[:, left] * (1 - weight) + a[:, right] * weight
            cv2.min(a, float(self._a_max[c]), dst=a)  # photons ran out: clip (and flag below)
        np.greater_equal(attenuation[-1], self._a_max[-1], out=opaque)
        if zeff is not None and areal is not None and classes is not None and self._lookup is not None:
            materials.lookup_zeff(attenuation[0], attenuation[1], self._lookup, out=(zeff, areal))
            classes[...] = classify_zeff(zeff, opaque)


def _square_pixels(scan: Scan, attenuation: np.ndarray, opaque: np.ndarray, zeff: np.ndarray | None,
                   areal: np.ndarray | None, classes: np.ndarray | None, profile_id: str, *, belt_mm: float,
                   pitch_mm: float) -> CalibratedScan:
    """Step 5: resample lines so pixels are square (classes follow Zeff)."""
    if not math.isclose(belt_mm, pitch_mm, rel_tol=1e-3):
        attenuation, zeff, areal, opaque = _resample_rows(attenuation, zeff, areal, opaque, belt_mm / pitch_mm)
        classes = classify_zeff(zeff, opaque) if zeff is not None else None
    return CalibratedScan(scan, attenuation, opaque, (pitch_mm, pitch_mm), profile_id, zeff, areal, classes)


def _resample_rows(attenuation: np.ndarray, zeff: np.ndarray | None, areal: np.ndarray | None,
                   opaque: np.ndarray, factor: float):
    """Lines resampled by ``factor`` (belt advance over pitch), all maps alike."""
    rows = max(1, round(attenuation.shape[1] * factor))
    size = (attenuation.shape[2], rows)

    def resize(image: np.ndarray) -> np.ndarray:
        return cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)

    attenuation = np.stack([resize(a) for a in attenuation])
    opaque = cv2.resize(opaque.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
    return (attenuation, resize(zeff) if zeff is not None else None,
            resize(areal) if areal is not None else None, opaque)


def calibrate_scan(scan: Scan, profile: CalibrationProfile | None, *, workers: int = 1) -> CalibratedScan:
    """Calibrate ``scan`` with ``profile``; with ``None``, the uncalibrated path.

    Raises
    ------
    ProfileError
        If the profile does not fit the scan (scanner, width, kind).
    """
    if profile is None:
        return calibrate_uncalibrated(scan)
    return Calibrator(profile, workers=workers)(scan)


@functools.lru_cache(maxsize=8)
def _scanner_calibrator(path: str, mtime_ns: int, size: int) -> Calibrator:
    # Building a Calibrator tabulates the material lookup (~0.8 s); a scan
    # takes ~20 ms after that. Keyed on the file's mtime and size, so a
    # rebuilt profile is picked up.
    return Calibrator(load_profile(path))


def calibrate_with_scanner_profile(scan: Scan, profile_root: str | os.PathLike = CALIBRATION_ROOT) -> CalibratedScan:
    """Calibrate ``scan`` with its scanner's profile under ``profile_root``.

    The profile is ``profile_root/<scanner_id>/profile.npz`` (the shipped
    profiles by default, wherever the command runs); scans with no
    scanner id, or whose scanner has no profile there, take the labelled
    uncalibrated path (pseudo-colour archives: the palette estimate). This is
    how the CLI, training and evaluation all turn a scan into what the
    detectors see, so they agree.
    """
    path = default_profile_path(scan.scanner_id, profile_root) if scan.scanner_id else None
    if path is None or not path.exists():
        return calibrate_scan(scan, None)
    stat = path.stat()
    return _scanner_calibrator(str(path.resolve()), stat.st_mtime_ns, stat.st_size)(scan)


def warm_scanner_profiles(profile_root: str | os.PathLike = CALIBRATION_ROOT) -> list[str]:
    """Build the calibrator of every scanner profile under ``profile_root`` now.

    A service calls this at start, so the first scan of each scanner is not
    the one that waits for the material lookup to be tabulated. Returns the
    scanner ids warmed.
    """
    warmed = []
    for path in sorted(Path(profile_root).glob("*/profile.npz")):
        stat = path.stat()
        _scanner_calibrator(str(path.resolve()), stat.st_mtime_ns, stat.st_size)
        warmed.append(path.parent.name)
    return warmed


def calibrate_uncalibrated(scan: Scan) -> CalibratedScan:
    """Normalise a scan from its own air region, with no profile.

    Each detector element's air level is a high percentile of its own line
    (line scans start and end on the empty belt); no dark is subtracted, no
    bad element is known, and no Zeff is given because there is no material
    calibration. The result's ``profile_id`` is ``UNCALIBRATED`` so every
    output says so. CT volumes are passed through the file's own rescale.
    """
    if scan.kind is ScanKind.PSEUDO_COLOUR:
        from nii.calibrate.archive import calibrate_archive

        return calibrate_archive(scan)
    if scan.kind is ScanKind.CT_VOLUME:
        slope, intercept = scan.rescale
        values = scan.counts.astype(np.float32) * np.float32(slope) + np.float32(intercept)
        return CalibratedScan(scan, values, np.zeros(values.shape, bool), scan.spacing_mm, UNCALIBRATED)
    counts = scan.channels.astype(np.float32)
    air = np.percentile(counts, _SELF_AIR_PERCENTILE, axis=1, keepdims=True)
    transmission = np.clip(counts / np.maximum(air, 1.0), _SELF_MIN_TRANSMISSION, 1.0)
    attenuation = -np.log(transmission)
    opaque = transmission[-1] <= _SELF_MIN_TRANSMISSION
    belt_mm, pitch_mm = scan.spacing_mm or (1.0, 1.0)
    return _square_pixels(scan, attenuation.astype(np.float32), opaque, None, None, None, UNCALIBRATED,
                          belt_mm=belt_mm, pitch_mm=pitch_mm)
