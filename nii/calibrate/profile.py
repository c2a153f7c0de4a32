"""Calibration profiles: what a scanner's own calibration acquisitions give.

A profile is built from the scanner's dark (offset) frames, air (gain,
flat) frames and step-wedge scans — or, for CT, air and water phantom
scans — and stored as one ``.npz`` file under ``calibration/<scanner>/``.
It carries scanner id, version, creation time and a sha256 content hash;
loading re-computes the hash, so a modified profile is refused.

Every calibrated result names its profile by :attr:`CalibrationProfile.profile_id`.
A profile replaced by a rebuild is kept under ``superseded/`` beside it, so
the calibration behind an old result can still be produced in evidence
(:func:`find_profile`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from nii.calibrate import material as materials
from nii.files import replace_file
from nii.ingest import ScanReadError, read_scan
from nii.scan import Scan, ScanKind

__all__ = ["PROFILE_FORMAT", "CalibrationProfile", "ProfileError", "build_profile", "load_profile", "save_profile",
           "check_profile", "default_profile_path", "find_profile", "next_version", "CALIBRATION_ROOT"]

#: The shipped scanner profiles, beside the package (as ``models/`` holds the
#: shipped models), so that reading them does not depend on the working folder.
CALIBRATION_ROOT = Path(__file__).resolve().parents[2] / "calibration"

PROFILE_FORMAT = 1
# Profiles are read by every scanner lane's service, whoever runs it.
_PROFILE_MODE = 0o644
# An element whose air signal is below this share of the median is dead;
# one whose dark level sits this many MADs above the median is hot.
_DEAD_SHARE = 0.2
_HOT_MADS = 12.0
# A pixel is opaque when its signal above dark is within this many dark-noise
# sigmas of nothing, or under 1e-4 of the air signal, whichever is larger.
_OPAQUE_SIGMAS = 5.0
_MIN_TRANSMISSION = 1e-4


class ProfileError(ValueError):
    """A profile is missing, damaged, or does not fit the scan. One line."""


@dataclasses.dataclass(frozen=True, eq=False)
class CalibrationProfile:
    """One scanner's calibration.

    Parameters
    ----------
    scanner_id : str
        The scanner it belongs to; scans from other scanners are refused.
    version : int
        Profile revision for this scanner (increase on each recalibration).
    created_at : datetime
        When it was built (UTC).
    kind : {"projection", "ct"}
        Line/cargo scanners or CT.
    channels : int
        Energy channels (1 or 2); 0 for CT.
    dark, air : ndarray of float32, shape (channels, detector elements)
        Mean dark (offset) and air (flat) signal per element, in counts.
    bad_pixels : ndarray of bool, shape (channels, detector elements)
        Dead and hot elements; corrected by interpolation.
    min_transmission : ndarray of float32, shape (channels,)
        Below this normalised signal a pixel is opaque.
    pixel_mm, belt_mm_per_line : float
        Detector pitch and belt advance per line, for aspect correction.
    material : MaterialCalibration, optional
        Dual-energy Zeff and areal-density calibration from step wedges.
    hu_slope, hu_intercept : float, optional
        CT: HU = slope * stored value + intercept, from air and water.
    check_air : ndarray of uint16, optional
        Air lines held out of the gain estimate, so ``check`` can measure the
        residual non-uniformity honestly.
    check_wedges : mapping of str to ndarray, optional
        Per wedge material, ``(steps, 3)`` rows of thickness (cm), A_low and
        A_high measured on lines held out of the material fit: ``check``
        measures the Zeff error on them.
    content_hash : str
        sha256 of everything above; computed when empty.
    """

    scanner_id: str
    version: int
    created_at: datetime
    kind: str
    channels: int
    dark: np.ndarray
    air: np.ndarray
    bad_pixels: np.ndarray
    min_transmission: np.ndarray
    pixel_mm: float
    belt_mm_per_line: float
    material: materials.MaterialCalibration | None = None
    hu_slope: float | None = None
    hu_intercept: float | None = None
    check_air: np.ndarray | None = None
    check_wedges: Mapping[str, np.ndarray] | None = None
    content_hash: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("projection", "ct"):
            raise ProfileError(f"profile kind must be projection or ct, got {self.kind!r}")
        if self.kind == "projection":
            shape = (self.channels, self.dark.shape[-1])
            for name in ("dark", "air", "bad_pixels"):
                if getattr(self, name).shape != shape:
                    raise ProfileError(f"profile {name} has shape {getattr(self, name).shape}, expected {shape}")
        elif self.hu_slope is None or self.hu_intercept is None:
            raise ProfileError("a CT profile needs hu_slope and hu_intercept")
        if not self.content_hash:
            object.__setattr__(self, "content_hash", _digest(self._arrays(), self._header()))

    @property
    def detector_elements(self) -> int:
        return int(self.dark.shape[-1])

    @property
    def profile_id(self) -> str:
        """``scanner/v<version>/<first 12 hex of the hash>``: what results record."""
        return f"{self.scanner_id}/v{self.version}/{self.content_hash[:12]}"

    def _header(self) -> dict[str, Any]:
        return {
            "format": PROFILE_FORMAT,
            "scanner_id": self.scanner_id,
            "version": self.version,
            "created_at": self.created_at.isoformat(),
            "kind": self.kind,
            "channels": self.channels,
            "pixel_mm": self.pixel_mm,
            "belt_mm_per_line": self.belt_mm_per_line,
            "hu_slope": self.hu_slope,
            "hu_intercept": self.hu_intercept,
        }

    def _arrays(self) -> dict[str, np.ndarray]:
        arrays = {"dark": self.dark, "air": self.air, "bad_pixels": self.bad_pixels,
                  "min_transmission": self.min_transmission}
        if self.check_air is not None:
            arrays["check_air"] = self.check_air
        if self.material is not None:
            arrays.update({f"material.{k}": v for k, v in self.material.to_arrays().items()})
        for name, rows in (self.check_wedges or {}).items():
            arrays[f"check_wedge.{name}"] = rows
        return arrays


def _digest(arrays: Mapping[str, np.ndarray], header: Mapping[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(dict(header), sort_keys=True).encode())
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def default_profile_path(scanner_id: str, root: str | os.PathLike = "calibration") -> Path:
    """Where a scanner's profile lives: ``calibration/<scanner>/profile.npz``."""
    return Path(root) / scanner_id / "profile.npz"


def _superseded_path(path: Path, profile_id: str) -> Path:
    """Where the profile ``profile_id``, once at ``path``, is kept after a rebuild replaced it."""
    return path.parent / "superseded" / (profile_id.replace("/", "-") + ".npz")


def _existing_profile(path: Path) -> CalibrationProfile | None:
    """The profile at ``path``, None when there is no file; anything else there is refused."""
    if not path.exists():
        return None
    try:
        return load_profile(path)
    except (ValueError, OSError):  # ProfileError is a ValueError; a folder is an OSError
        raise ProfileError(f"{path} exists and is not a calibration profile; it is left alone "
                           "(choose another --out)") from None


def next_version(path: str | os.PathLike) -> int:
    """The version a profile rebuilt into ``path`` gets by default: one above the one there, or 1.

    Raises
    ------
    ProfileError
        ``path`` holds something that is not a calibration profile.
    """
    existing = _existing_profile(Path(path))
    return 1 if existing is None else existing.version + 1


def save_profile(profile: CalibrationProfile, path: str | os.PathLike) -> Path:
    """Write ``profile`` as one ``.npz`` (arrays, JSON header, content hash).

    Only a profile is replaced, and never half-written: the file goes in
    whole by a rename, so a scanner lane reading it meanwhile sees the old
    profile or the new one. The profile it replaces is first kept as
    ``superseded/<scanner>-v<version>-<hash>.npz`` beside it: results made
    with it name it, and evidence must be able to produce it.

    Raises
    ------
    ProfileError
        ``path`` holds something that is not a calibration profile, or
        another profile of the same scanner and this or a later version (a
        rebuild is a new, higher version, so that two never share a name in
        results).
    """
    path = Path(path)
    existing = _existing_profile(path)
    if existing is not None and existing.content_hash != profile.content_hash:
        if existing.scanner_id == profile.scanner_id and profile.version <= existing.version:
            # Versions only go up: an older number again would, at the next
            # default rebuild, give two different profiles one name.
            what = "another build of version" if profile.version == existing.version else "a newer profile than version"
            raise ProfileError(f"{path} holds {existing.profile_id}, {what} {profile.version}; "
                               f"give the rebuild a new version (--version {existing.version + 1})")
        kept = _superseded_path(path, existing.profile_id)
        if not kept.exists():
            replace_file(kept, path.read_bytes(), mode=_PROFILE_MODE)
    header = {**profile._header(), "content_hash": profile.content_hash}
    buffer = io.BytesIO()
    np.savez_compressed(buffer, header=np.array(json.dumps(header, sort_keys=True)), **profile._arrays())
    replace_file(path, buffer.getvalue(), mode=_PROFILE_MODE)
    return path


def find_profile(profile_id: str, root: str | os.PathLike = CALIBRATION_ROOT) -> Path | None:
    """The file of the profile ``profile_id`` under ``root``: the current one or a superseded one.

    Returns None when neither is there (the profile was built elsewhere, or
    its file was removed). The file found is not verified: load it with
    :func:`load_profile`, which checks its content hash.
    """
    scanner = profile_id.split("/", 1)[0]
    current = default_profile_path(scanner, root)
    try:
        if current.is_file() and load_profile(current).profile_id == profile_id:
            return current
    except ProfileError:
        pass
    kept = _superseded_path(current, profile_id)
    return kept if kept.is_file() else None


def load_profile(path: str | os.PathLike) -> CalibrationProfile:
    """Read a profile and verify its content hash.

    Raises
    ------
    ProfileError
        Missing or unreadable file, or a hash that does not match (the file
        was changed after it was built).
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
        header = json.loads(str(arrays.pop("header")))
    except FileNotFoundError:
        raise ProfileError(f"{path}: no calibration profile there (build one with 'nii calibrate build')") from None
    except Exception as exc:  # noqa: BLE001 - any damage to the file is one kind of refusal
        raise ProfileError(f"{path}: not a readable calibration profile ({type(exc).__name__}: {exc})") from None
    if header.get("format") != PROFILE_FORMAT:
        raise ProfileError(f"{path}: profile format {header.get('format')!r}, this nii reads {PROFILE_FORMAT}")
    stored = header.pop("content_hash", "")
    header.pop("format")
    if _digest(arrays, {"format": PROFILE_FORMAT, **header}) != stored:
        raise ProfileError(f"{path}: content hash does not match; the profile was modified after it was built")
    material_arrays = {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith("material.")}
    check_wedges = {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith("check_wedge.")}
    return CalibrationProfile(
        scanner_id=header["scanner_id"],
        version=int(header["version"]),
        created_at=datetime.fromisoformat(header["created_at"]),
        kind=header["kind"],
        channels=int(header["channels"]),
        dark=arrays["dark"],
        air=arrays["air"],
        bad_pixels=arrays["bad_pixels"],
        min_transmission=arrays["min_transmission"],
        pixel_mm=float(header["pixel_mm"]),
        belt_mm_per_line=float(header["belt_mm_per_line"]),
        material=materials.MaterialCalibration.from_arrays(material_arrays) if material_arrays else None,
        hu_slope=header["hu_slope"],
        hu_intercept=header["hu_intercept"],
        check_air=arrays.get("check_air"),
        check_wedges=check_wedges or None,
        content_hash=stored,
    )


# -- building -------------------------------------------------------------------


def _channels_first(scan: Scan) -> np.ndarray:
    return np.asarray(scan.channels, dtype=np.float32)


def _read(folder: Path, name: str) -> Scan:
    for candidate in (folder / f"{name}.json", folder / f"{name}.dcm"):
        if candidate.exists():
            try:
                return read_scan(candidate)
            except ScanReadError as err:
                raise ProfileError(f"calibration acquisition {err}") from None
    raise ProfileError(f"{folder}: no '{name}' acquisition (expected {name}.json + .raw, or {name}.dcm)")


def _bad_elements(dark_frames: np.ndarray, air_frames: np.ndarray) -> np.ndarray:
    """Dead (no response to the beam) and hot (high dark level) elements."""
    dark = np.median(dark_frames, axis=1)
    signal = np.median(air_frames, axis=1) - dark
    median_signal = np.median(signal, axis=1, keepdims=True)
    dead = signal < _DEAD_SHARE * median_signal
    centre = np.median(dark, axis=1, keepdims=True)
    mad = np.median(np.abs(dark - centre), axis=1, keepdims=True) + 1.0
    hot = dark > centre + _HOT_MADS * mad
    return dead | hot


def build_profile(
    acquisitions: str | os.PathLike,
    *,
    scanner_id: str | None = None,
    version: int = 1,
    created_at: datetime | None = None,
) -> CalibrationProfile:
    """Build a profile from a folder of calibration acquisitions.

    Parameters
    ----------
    acquisitions : path-like
        Line/cargo scanners: ``dark``, ``air`` and ``wedge-<material>`` raw
        dumps with sidecars (as ``nii simulate --calibration`` writes, and
        whose sidecars list each step's thickness). CT: ``air.dcm`` and
        ``water.dcm`` phantom volumes.
    scanner_id : str, optional
        Expected scanner; acquisitions from another scanner are refused.
    version : int
        Profile revision.
    created_at : datetime, optional
        Build time (default now, UTC); fixed values make reproducible files.

    Raises
    ------
    ProfileError
        Missing or unreadable acquisitions, acquisitions from different
        scanners, or wedges too few to calibrate.
    """
    folder = Path(acquisitions)
    if not folder.is_dir():
        raise ProfileError(f"{folder}: not a folder of calibration acquisitions")
    created_at = created_at or datetime.now(timezone.utc).replace(microsecond=0)
    air_scan = _read(folder, "air")
    found_id = air_scan.scanner_id or scanner_id
    if scanner_id and air_scan.scanner_id and air_scan.scanner_id != scanner_id:
        raise ProfileError(f"{folder}: acquisitions are from scanner {air_scan.scanner_id!r}, not {scanner_id!r}")
    if not found_id:
        raise ProfileError(f"{folder}: acquisitions name no scanner; pass --scanner")
    if air_scan.kind is ScanKind.CT_VOLUME:
        return _build_ct(folder, air_scan, found_id, version, created_at)

    dark_scan = _read(folder, "dark")
    _same_scanner(found_id, dark_scan, folder)
    dark_frames, air_frames = _channels_first(dark_scan), _channels_first(air_scan)
    if dark_frames.shape[::2] != air_frames.shape[::2]:
        raise ProfileError(f"{folder}: dark {dark_frames.shape} and air {air_frames.shape} frames do not match")
    # Half the air lines set the gain; the other half are kept to check it.
    half = air_frames.shape[1] // 2
    dark = dark_frames.mean(axis=1)
    air = air_frames[:, :half].mean(axis=1)
    bad = _bad_elements(dark_frames, air_frames)
    noise = dark_frames.std(axis=1)
    signal = np.maximum(air - dark, 1.0)
    good = ~bad
    min_t = np.array([max(_MIN_TRANSMISSION, float(np.median((_OPAQUE_SIGMAS * noise[c] / signal[c])[good[c]])))
                      for c in range(dark.shape[0])], dtype=np.float32)
    material, check_wedges = None, None
    if dark.shape[0] == 2:
        steps, check_wedges = {}, {}
        for path in sorted(folder.glob("wedge-*.json")):
            wedge = read_scan(path)
            _same_scanner(found_id, wedge, folder)
            name = wedge.metadata.get("material") or path.stem.removeprefix("wedge-")
            thickness, lines = _step_wedge_plan(path, wedge)
            # The first half of each step's lines fits the curves; the second
            # half is kept to check them (a fit checked on its own data lies).
            fit, held = _split_steps(_channels_first(wedge), len(thickness), lines)
            options = {"dark": dark, "air": air, "bad": bad, "thickness_cm": thickness, "lines_per_step": lines // 2}
            steps[name] = (thickness, materials.wedge_attenuation(fit, **options))
            held_attenuation = materials.wedge_attenuation(held, **options)
            check_wedges[name] = np.column_stack([thickness, held_attenuation]).astype(np.float32)
        if not steps:
            raise ProfileError(f"{folder}: no step-wedge acquisitions (wedge-<material>.json) for dual energy")
        try:
            material = materials.fit_material_calibration(steps)
        except ValueError as err:
            raise ProfileError(f"{folder}: {err}") from None
    belt_mm, pixel_mm = air_scan.spacing_mm or (1.0, 1.0)
    return CalibrationProfile(
        scanner_id=found_id, version=version, created_at=created_at, kind="projection",
        channels=int(dark.shape[0]), dark=dark.astype(np.float32), air=air.astype(np.float32), bad_pixels=bad,
        min_transmission=min_t, pixel_mm=float(pixel_mm), belt_mm_per_line=float(belt_mm), material=material,
        check_air=np.asarray(air_frames[:, half:], dtype=np.uint16), check_wedges=check_wedges,
    )


def _step_wedge_plan(path: Path, wedge: Scan) -> tuple[np.ndarray, int]:
    """The step thicknesses (cm) and lines per step a wedge's sidecar lists, checked against its lines.

    The sidecar's ``metadata.step_wedge`` is ``{"thickness_cm": [...],
    "lines_per_step": n}``, the steps' lines in that order.
    """
    plan = wedge.metadata.get("step_wedge")
    example = '"step_wedge": {"thickness_cm": [0.5, 1, 2, 4], "lines_per_step": 8}'
    if not isinstance(plan, Mapping):
        raise ProfileError(f"{path}: its sidecar needs metadata {example}, not {plan!r}")
    thickness, lines = plan.get("thickness_cm"), plan.get("lines_per_step")
    if not (isinstance(thickness, list) and thickness
            and all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in thickness)):
        raise ProfileError(f"{path}: step_wedge thickness_cm must be a list of numbers (cm), not {thickness!r}")
    if isinstance(lines, bool) or not isinstance(lines, int) or lines < 2:
        raise ProfileError(f"{path}: step_wedge lines_per_step must be a whole number >= 2, not {lines!r}")
    found = _channels_first(wedge).shape[1]
    if found != lines * len(thickness):
        raise ProfileError(f"{path}: step_wedge lists {len(thickness)} steps of {lines} lines, "
                           f"but the acquisition has {found} lines")
    return np.asarray(thickness, dtype=float), lines


def _split_steps(counts: np.ndarray, steps: int, lines: int) -> tuple[np.ndarray, np.ndarray]:
    """Each step's first and second half of lines, as two wedge acquisitions."""
    channels, _, cols = counts.shape
    blocks = counts.reshape(channels, steps, lines, cols)
    half = lines // 2
    first = blocks[:, :, :half].reshape(channels, steps * half, cols)
    second = blocks[:, :, half:2 * half].reshape(channels, steps * half, cols)
    return first, second


def _same_scanner(scanner_id: str, scan: Scan, folder: Path) -> None:
    if scan.scanner_id and scan.scanner_id != scanner_id:
        raise ProfileError(f"{folder}: {Path(scan.source_path or '').name} is from scanner {scan.scanner_id!r}, "
                           f"the others from {scanner_id!r}")


def _build_ct(folder: Path, air_scan: Scan, scanner_id: str, version: int, created_at: datetime) -> CalibrationProfile:
    water_scan = _read(folder, "water")
    _same_scanner(scanner_id, water_scan, folder)
    air_level = float(np.median(air_scan.counts))
    water = np.asarray(water_scan.counts, dtype=np.float64)
    # The water phantom is a cylinder on the volume's axis: its core is water.
    _, rows, cols = water.shape
    y, x = np.ogrid[:rows, :cols]
    core = np.hypot(y - rows / 2, x - cols / 2) < min(rows, cols) / 8
    water_level = float(np.median(water[:, core]))
    if water_level - air_level < 1.0:
        raise ProfileError(f"{folder}: water ({water_level:g}) is not denser than air ({air_level:g}) in the phantoms")
    slope = 1000.0 / (water_level - air_level)
    empty = np.zeros((0, 0), np.float32)
    spacing = water_scan.spacing_mm or (1.0, 1.0, 1.0)
    return CalibrationProfile(
        scanner_id=scanner_id, version=version, created_at=created_at, kind="ct", channels=0,
        dark=empty, air=empty, bad_pixels=np.zeros((0, 0), bool), min_transmission=np.zeros(0, np.float32),
        pixel_mm=float(spacing[-1]), belt_mm_per_line=float(spacing[0]),
        hu_slope=slope, hu_intercept=-slope * water_level,
    )


# -- checking -------------------------------------------------------------------


def check_profile(profile: CalibrationProfile) -> dict[str, Any]:
    """Quality figures of a profile.

    Returns
    -------
    dict
        ``profile_id``, ``scanner_id``, ``version``, ``created_at``;
        ``residual_nonuniformity``: RMS of the flat-fielded held-out air
        lines across good elements, as a fraction of their mean (a perfect
        gain correction leaves only quantum noise averaged over the lines);
        ``dead_pixels``: bad elements (dead or hot) over all channels;
        ``zeff_mae``: mean absolute Zeff error of the dual-energy
        calibration on its own step wedges; for CT, ``hu_air`` and
        ``hu_water`` of the calibration itself.
    """
    report: dict[str, Any] = {
        "profile_id": profile.profile_id,
        "scanner_id": profile.scanner_id,
        "version": profile.version,
        "created_at": profile.created_at.isoformat(),
        "kind": profile.kind,
    }
    if profile.kind == "ct":
        report.update(dead_pixels=0, residual_nonuniformity=0.0, zeff_mae=None,
                      hu_slope=profile.hu_slope, hu_intercept=profile.hu_intercept)
        return report
    report["dead_pixels"] = int(profile.bad_pixels.sum())
    report["residual_nonuniformity"] = None
    if profile.check_air is not None and profile.check_air.size:
        flat = (profile.check_air.astype(np.float64).mean(axis=1) - profile.dark) / np.maximum(
            profile.air - profile.dark, 1.0)
        values = flat[~profile.bad_pixels]
        report["residual_nonuniformity"] = float(np.sqrt(np.mean((values / values.mean() - 1.0) ** 2)))
    report["zeff_mae"] = _zeff_error(profile) if profile.material and profile.check_wedges else None
    return report


def _zeff_error(profile: CalibrationProfile) -> float | None:
    """Mean |Zeff error| on held-out wedge lines of the calibrated materials."""
    assert profile.material is not None and profile.check_wedges is not None
    reference = dict(zip(profile.material.materials, profile.material.zeff.tolist()))
    errors = []
    for name, rows in profile.check_wedges.items():
        if name not in reference:
            continue  # e.g. lead: outside the Zeff curves, it counts only as opaque
        _, a_low, a_high = rows.T
        usable = (a_high > 0.02) & (a_high < profile.material.a_high_max)
        zeff, _ = materials.estimate_zeff(a_low[usable], a_high[usable], profile.material)
        errors.extend(np.abs(zeff - reference[name]).tolist())
    return float(np.mean(errors)) if errors else None
