"""Scanner models: what a given scanner's beam and detector do to a scene.

A :class:`ScannerModel` is read from a small TOML file (bundled ones live in
``nii/simulate/scanners/``). Its heart is ``channel_weights``: the expected
detector signal per energy bin for each channel, so that the polychromatic
transmission of any stack of materials is

    T_c = sum_E W[c, E] exp(-sum_m (mu/rho)_m(E) a_m) / sum_E W[c, E]

with a_m the areal densities (g/cm^2). :func:`transmission` evaluates it for
whole images as two matrix products and one exponential, so beam hardening
comes for free.

Channel weights are built on a fine energy grid (``energy_grid.fine_step_kev``)
and summed into the coarse bins that :func:`transmission` uses; each coarse
bin is then represented by its signal-weighted mean energy, which keeps
32 bins within 1% of a 0.25 keV calculation (``tests/test_physics.py``).

For energy-integrating detectors the signal per bin is

    W(E) = S(E) * exp(-sum_f mu_f(E) t_f) * (1 - exp(-mu_abs(E) t_abs)) * E

with S the source spectrum, f the layers crossed before the absorbing
scintillator (a sandwich detector's front layer and copper filter) and
``abs`` the scintillator itself. All the energy of an interacting photon is
counted as deposited (escape of Compton and pair products is ignored, which
flatters MeV detectors a little).
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from nii.config import read_toml
from nii.simulate import physics

__all__ = ["ScannerModel", "load_scanner", "list_scanners", "transmission", "effective_energy_kev"]

_BUNDLED = Path(__file__).resolve().parent / "scanners"
_KINDS = ("line", "cargo", "ct")
# Pixels per block in transmission(): the (E, block) float32 line integrals
# (256 KiB at 32 bins) stay in L2 cache between the matmul, the exponential
# and the weighting; larger blocks measured up to 2x slower.
_BLOCK_PIXELS = 2048


@dataclasses.dataclass(frozen=True, eq=False)
class ScannerModel:
    """One scanner: source spectra, detector response and detector defects.

    Attributes
    ----------
    name, kind, description : str
        ``kind`` is ``"line"`` (baggage/parcel line scanner), ``"cargo"``
        (MeV linac portal) or ``"ct"``.
    energies_kev : ndarray, shape (E,)
        Representative energy of each coarse bin, keV.
    channel_names : tuple of str
        ``("low", "high")`` for dual-energy scanners.
    channel_weights : ndarray of float64, shape (C, E)
        Expected detector signal per energy bin (source spectrum x detector
        absorption x energy), relative.
    nominal_kv : tuple of float
        Nominal tube voltage per channel for ``Scan.energies_kv`` (a linac's
        MV given in kV: 6 MV = 6000).
    air_counts, dark_counts : tuple of float
        Mean counts per channel through air (above dark) and with the beam off.
    detector_elements : int
        Detector columns.
    pixel_mm : float
        Detector pitch at the object plane, mm.
    belt_mm_per_line : float
        Belt travel per detector line (belt speed / line rate), mm.
    bits : int
        ADC bits; counts clip at 2**bits - 1.
    electronic_noise_counts : float
        Standard deviation of the readout noise, counts.
    gain_nonuniformity : float
        Relative standard deviation of the element gains.
    offset_nonuniformity_counts : float
        Standard deviation of the element dark offsets, counts.
    dead_pixel_fraction, hot_pixel_fraction : float
        Fraction of elements stuck at their offset / at full scale.
    drift_per_1000_lines : float
        Initial relative gain drift per 1000 lines (see
        :func:`nii.simulate.detector.acquire`).
    drift_period_lines : int
        Period of the slow, bounded gain wander, lines.
    defect_seed : int
        Seed of the fixed pattern (gains, offsets, dead and hot elements):
        the same scanner always has the same defects.
    ct_voxel_mm : tuple of float or None
        CT voxel size ``(slice, row, col)``, mm.
    ct_noise_hu : float
        Standard deviation of CT image noise, HU.
    ct_stored_gain, ct_stored_offset : float
        The CT's true stored-value map, ``stored = gain * HU + offset``. It
        deliberately differs from the nominal ``HU + 1024`` a DICOM header
        claims, so that calibration has to fit HU from air and water scans.
    """

    name: str
    kind: str
    description: str
    energies_kev: np.ndarray
    channel_names: tuple[str, ...]
    channel_weights: np.ndarray
    nominal_kv: tuple[float, ...]
    air_counts: tuple[float, ...]
    dark_counts: tuple[float, ...]
    detector_elements: int
    pixel_mm: float
    belt_mm_per_line: float
    bits: int
    electronic_noise_counts: float
    gain_nonuniformity: float
    offset_nonuniformity_counts: float
    dead_pixel_fraction: float
    hot_pixel_fraction: float
    drift_per_1000_lines: float
    drift_period_lines: int
    defect_seed: int
    ct_voxel_mm: tuple[float, float, float] | None = None
    ct_noise_hu: float = 0.0
    ct_stored_gain: float = 1.0
    ct_stored_offset: float = 1024.0

    @property
    def channels(self) -> int:
        """Number of energy channels."""
        return len(self.channel_names)


# -- TOML reading ------------------------------------------------------------

_MISSING = object()


def _check_keys(table: Mapping[str, Any], where: str, required: set[str], optional: set[str] = frozenset()) -> None:
    unknown = sorted(set(table) - required - optional)
    if unknown:
        expected = ", ".join(sorted(required | optional))
        raise ValueError(f"scanner key '{where}{unknown[0]}' is unknown; expected {expected}")
    missing = sorted(required - set(table))
    if missing:
        raise ValueError(f"scanner key '{where}{missing[0]}' is missing")


def _value(table: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in table:
        raise ValueError(f"scanner key '{where}{key}' is missing")
    return table[key]


def _table(table: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = _value(table, key, where)
    if not isinstance(value, Mapping):
        raise ValueError(f"scanner key '{where}{key}' must be a table, got {value!r}")
    return value


def _number(
    table: Mapping[str, Any],
    key: str,
    where: str,
    *,
    lo: float = -math.inf,
    hi: float = math.inf,
    lo_open: bool = False,
    integer: bool = False,
    default: Any = _MISSING,
) -> Any:
    """A number from a TOML table, refused with the key's full name when out of range."""
    if key not in table and default is not _MISSING:
        return default
    value = _value(table, key, where)
    kind = "an integer" if integer else "a number"
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    ok = ok and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > lo if lo_open else value >= lo) and value <= hi
    if not ok:
        bounds = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
        raise ValueError(f"scanner key '{where}{key}' must be {kind} in {bounds}, got {value!r}")
    return int(value) if integer else float(value)


def _string(table: Mapping[str, Any], key: str, where: str, *, choices: Sequence[str] | None = None) -> str:
    value = _value(table, key, where)
    if not isinstance(value, str) or not value or (choices is not None and value not in choices):
        expected = f"one of {', '.join(choices)}" if choices else "a non-empty string"
        raise ValueError(f"scanner key '{where}{key}' must be {expected}, got {value!r}")
    return value


def _thicknesses(table: Mapping[str, Any], key: str, where: str) -> dict[str, float]:
    """A {material: mm} table, every material known and every thickness >= 0."""
    layers = _table(table, key, where) if key in table else {}
    out = {}
    for material in layers:
        if material not in physics.MATERIALS:
            known = ", ".join(physics.MATERIALS)
            raise ValueError(f"scanner key '{where}{key}.{material}' is not a material; use one of {known}")
        out[material] = _number(layers, material, f"{where}{key}.", lo=0.0, hi=1000.0)
    return out


def _energy_grid(table: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Coarse bin edges and the fine grid's centres, from ``[energy_grid]``."""
    where = "energy_grid."
    _check_keys(table, where, {"segments_kev", "fine_step_kev"})
    step = _number(table, "fine_step_kev", where, lo=0.0, hi=100.0, lo_open=True)
    segments = _value(table, "segments_kev", where)
    if not isinstance(segments, list) or not segments:
        raise ValueError(f"scanner key '{where}segments_kev' must be a list of [from, to, width] in keV")
    edges = [float("nan")]
    for i, segment in enumerate(segments):
        if not (isinstance(segment, list) and len(segment) == 3 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in segment)):
            raise ValueError(
                f"scanner key '{where}segments_kev[{i}]' must be [from, to, width] in keV, got {segment!r}"
            )
        start, stop, width = (float(v) for v in segment)
        n = round((stop - start) / width) if width > 0 else 0
        contiguous = math.isnan(edges[-1]) or math.isclose(start, edges[-1])
        if not (1.0 <= start < stop <= 20_000.0 and n >= 1 and math.isclose(start + n * width, stop) and contiguous):
            raise ValueError(
                f"scanner key '{where}segments_kev[{i}]' must be contiguous [from, to, width] in 1-20000 keV "
                f"with (to - from) a multiple of width, got {segment!r}"
            )
        edges = edges[:-1] + list(start + width * np.arange(n + 1))
    coarse = np.asarray(edges)
    fine_n = (coarse[-1] - coarse[0]) / step
    on_grid = np.abs((coarse - coarse[0]) / step - np.round((coarse - coarse[0]) / step)) < 1e-6
    if not on_grid.all() or round(fine_n) < 2:
        raise ValueError(f"scanner key '{where}fine_step_kev' must divide every bin edge offset, got {step:g}")
    fine = coarse[0] + step * (np.arange(round(fine_n)) + 0.5)
    return coarse, fine


def _source_spectrum(table: Mapping[str, Any], where: str, energies: np.ndarray) -> np.ndarray:
    source_type = _string(table, "type", where, choices=("tube", "linac"))
    if source_type == "tube":
        _check_keys(table, where, {"type", "kvp"}, {"filtration_mm", "anode_angle_deg"})
        kvp = _number(table, "kvp", where, lo=20.0, hi=600.0)
        angle = _number(table, "anode_angle_deg", where, lo=1.0, hi=45.0, default=12.0)
        filtration = _thicknesses(table, "filtration_mm", where)
        return physics.tube_spectrum(kvp, energies_kev=energies, filtration_mm=filtration, anode_angle_deg=angle)
    _check_keys(table, where, {"type", "mv"}, {"filtration_mm"})
    mv = _number(table, "mv", where, lo=0.5, hi=20.0)
    return physics.linac_spectrum(mv, energies_kev=energies, filtration_mm=_thicknesses(table, "filtration_mm", where))


def _detector_response(table: Mapping[str, Any], where: str, energies: np.ndarray) -> np.ndarray:
    """Fraction of photons absorbed in the scintillator, after any front layers."""
    _check_keys(table, where, {"material", "thickness_mm"}, {"front_mm"})
    material = _string(table, "material", where, choices=tuple(physics.MATERIALS))
    thickness = _number(table, "thickness_mm", where, lo=0.0, hi=1000.0, lo_open=True)
    front = sum((physics.linear_attenuation(m, energies) * (mm / 10.0)
                 for m, mm in _thicknesses(table, "front_mm", where).items()), np.zeros_like(energies))
    return np.exp(-front) * -np.expm1(-physics.linear_attenuation(material, energies) * (thickness / 10.0))


def _channel_weights(
    config: Mapping[str, Any], fine: np.ndarray, coarse_edges: np.ndarray
) -> tuple[tuple[dict[str, Any], ...], np.ndarray, np.ndarray]:
    """Per-channel settings, coarse weights (C, E) and representative energies (E,)."""
    channels = _value(config, "channels", "")
    if not isinstance(channels, list) or not 1 <= len(channels) <= 2:
        raise ValueError("scanner key 'channels' must list 1 or 2 [[channels]] tables")
    default_source = _table(config, "source", "") if "source" in config else None
    settings, fine_weights = [], []
    for i, channel in enumerate(channels):
        where = f"channels[{i}]."
        if not isinstance(channel, Mapping):
            raise ValueError(f"scanner key 'channels[{i}]' must be a table, got {channel!r}")
        _check_keys(channel, where, {"name", "nominal_kv", "air_counts", "dark_counts", "detector"}, {"source"})
        if "source" in channel:
            spectrum = _source_spectrum(_table(channel, "source", where), f"{where}source.", fine)
        elif default_source is not None:
            spectrum = _source_spectrum(default_source, "source.", fine)
        else:
            raise ValueError(f"scanner key '{where}source' is missing (and there is no top-level [source])")
        response = _detector_response(_table(channel, "detector", where), f"{where}detector.", fine)
        fine_weights.append(spectrum * response * fine)
        settings.append({
            "name": _string(channel, "name", where),
            "nominal_kv": _number(channel, "nominal_kv", where, lo=1.0, hi=20_000.0),
            "air_counts": _number(channel, "air_counts", where, lo=1.0, hi=2.0**32),
            "dark_counts": _number(channel, "dark_counts", where, lo=0.0, hi=2.0**32),
        })
    names = [s["name"] for s in settings]
    if len(set(names)) != len(names):
        raise ValueError(f"scanner key 'channels[].name' must be unique, got {names}")
    per_fine = np.asarray(fine_weights)  # (C, F)
    if np.any(per_fine.sum(axis=1) <= 0):
        raise ValueError("scanner key 'channels' gives a channel no signal inside energy_grid")
    bins = np.searchsorted(coarse_edges, fine, side="right") - 1
    n_bins = coarse_edges.size - 1
    weights = np.stack([np.bincount(bins, w, minlength=n_bins) for w in per_fine])
    # Each bin is represented by its mean energy under the channels' signal,
    # every channel counting equally; empty bins keep their centre.
    share = (per_fine / per_fine.sum(axis=1, keepdims=True)).sum(axis=0)
    mass = np.bincount(bins, share, minlength=n_bins)
    moment = np.bincount(bins, share * fine, minlength=n_bins)
    centres = (coarse_edges[1:] + coarse_edges[:-1]) / 2
    energies = np.where(mass > 0, moment / np.where(mass > 0, mass, 1.0), centres)
    return tuple(settings), weights, energies


def _build(config: Mapping[str, Any]) -> ScannerModel:
    _check_keys(config, "", {"name", "kind", "description", "energy_grid", "channels", "detector"}, {"source", "ct"})
    kind = _string(config, "kind", "", choices=_KINDS)
    coarse_edges, fine = _energy_grid(_table(config, "energy_grid", ""))
    settings, weights, energies = _channel_weights(config, fine, coarse_edges)
    det = _table(config, "detector", "")
    where = "detector."
    _check_keys(det, where, {
        "elements", "pixel_mm", "belt_mm_per_line", "bits", "electronic_noise_counts", "gain_nonuniformity",
        "offset_nonuniformity_counts", "dead_pixel_fraction", "hot_pixel_fraction", "drift_per_1000_lines",
        "drift_period_lines", "defect_seed"})
    bits = _number(det, "bits", where, lo=8, hi=16, integer=True)
    full_scale = 2.0**bits - 1
    for i, s in enumerate(settings):
        if s["air_counts"] + s["dark_counts"] > full_scale:
            raise ValueError(
                f"scanner key 'channels[{i}].air_counts' plus dark_counts exceeds the {bits}-bit full scale"
            )
    ct: dict[str, Any] = {}
    if kind == "ct":
        if "ct" not in config:
            raise ValueError("scanner key 'ct' is missing (kind = \"ct\" needs a [ct] table)")
        table, where = _table(config, "ct", ""), "ct."
        _check_keys(table, where, {"voxel_mm", "noise_hu", "stored_gain", "stored_offset"})
        voxel = _value(table, "voxel_mm", where)
        if not (isinstance(voxel, list) and len(voxel) == 3):
            raise ValueError(f"scanner key 'ct.voxel_mm' must be [slice, row, col] in mm, got {voxel!r}")
        ct = {
            "ct_voxel_mm": tuple(_number({"voxel_mm": v}, "voxel_mm", where, lo=0.0, hi=100.0, lo_open=True)
                                 for v in voxel),
            "ct_noise_hu": _number(table, "noise_hu", where, lo=0.0, hi=1000.0),
            "ct_stored_gain": _number(table, "stored_gain", where, lo=0.0, hi=100.0, lo_open=True),
            "ct_stored_offset": _number(table, "stored_offset", where, lo=0.0, hi=full_scale),
        }
    elif "ct" in config:
        raise ValueError(f"scanner key 'ct' is only for kind = \"ct\", not {kind!r}")
    energies.flags.writeable = False
    weights.flags.writeable = False
    return ScannerModel(
        name=_string(config, "name", ""),
        kind=kind,
        description=_string(config, "description", ""),
        energies_kev=energies,
        channel_names=tuple(s["name"] for s in settings),
        channel_weights=weights,
        nominal_kv=tuple(s["nominal_kv"] for s in settings),
        air_counts=tuple(s["air_counts"] for s in settings),
        dark_counts=tuple(s["dark_counts"] for s in settings),
        detector_elements=_number(det, "elements", where, lo=1, hi=100_000, integer=True),
        pixel_mm=_number(det, "pixel_mm", where, lo=0.0, hi=100.0, lo_open=True),
        belt_mm_per_line=_number(det, "belt_mm_per_line", where, lo=0.0, hi=100.0, lo_open=True),
        bits=bits,
        electronic_noise_counts=_number(det, "electronic_noise_counts", where, lo=0.0, hi=full_scale),
        gain_nonuniformity=_number(det, "gain_nonuniformity", where, lo=0.0, hi=0.3),
        offset_nonuniformity_counts=_number(det, "offset_nonuniformity_counts", where, lo=0.0, hi=full_scale),
        dead_pixel_fraction=_number(det, "dead_pixel_fraction", where, lo=0.0, hi=0.5),
        hot_pixel_fraction=_number(det, "hot_pixel_fraction", where, lo=0.0, hi=0.5),
        drift_per_1000_lines=_number(det, "drift_per_1000_lines", where, lo=-0.1, hi=0.1),
        drift_period_lines=_number(det, "drift_period_lines", where, lo=1000, hi=10**9, integer=True),
        defect_seed=_number(det, "defect_seed", where, lo=0, hi=2**63 - 1, integer=True),
        **ct,
    )


def list_scanners() -> list[str]:
    """Names of the bundled scanner models (TOML stems in ``nii/simulate/scanners``)."""
    return sorted(path.stem for path in _BUNDLED.glob("*.toml"))


def load_scanner(name_or_path: str | os.PathLike = "baggage-dual-kvp") -> ScannerModel:
    """Load a scanner model by bundled name or from a TOML file.

    Parameters
    ----------
    name_or_path : str or path-like
        A name from :func:`list_scanners` or the path of a TOML file (a
        path-like object, or a string ending in ``.toml``).

    Returns
    -------
    ScannerModel

    Raises
    ------
    ValueError
        For an unknown name (the message lists the valid ones), a file that
        is not valid TOML, or a value out of range (the message names its key).
    """
    text = os.fspath(name_or_path)
    if isinstance(name_or_path, os.PathLike) or text.endswith(".toml"):
        path = Path(text)
    else:
        valid = list_scanners()
        if text not in valid:
            raise ValueError(f"unknown scanner {text!r}; valid names: {', '.join(valid)}")
        path = _BUNDLED / f"{text}.toml"
    if not path.is_file():
        raise ValueError(f"scanner file {path} does not exist")
    return _build(read_toml(path, "the scanner file"))


# -- fast transmission ---------------------------------------------------------


def transmission(areal_density_g_cm2: np.ndarray, materials: Sequence[str], scanner: ScannerModel) -> np.ndarray:
    """Polychromatic transmission per channel, normalised so that air gives 1.

    Parameters
    ----------
    areal_density_g_cm2 : ndarray, shape (M, ...)
        Areal density (g/cm^2, >= 0) of each of ``M`` materials per pixel;
        float32 preferred (other dtypes are converted).
    materials : sequence of str
        The ``M`` material keys of :data:`nii.simulate.physics.MATERIALS`.
    scanner : ScannerModel
        Provides the energy grid and channel weights.

    Returns
    -------
    ndarray of float32, shape (C, ...)
        T_c = sum_E w_c(E) exp(-sum_m (mu/rho)_m(E) a_m), weights normalised
        per channel.

    Notes
    -----
    Pixels go through in blocks of 2048: line integrals (E, P) =
    table^T (E, M) @ A (M, P) in float32 BLAS, ``exp`` in place, then the
    normalised weights (C, E) @ that. A block with no material (air) is filled with
    1 directly, and a block that is mostly air only computes its non-air
    pixels.

    Raises
    ------
    ValueError
        If the shapes disagree, a material is unknown, or an areal density is
        negative, NaN or inf.
    """
    areal = np.asarray(areal_density_g_cm2)
    if areal.ndim < 1 or areal.shape[0] != len(materials):
        raise ValueError(
            f"areal_density_g_cm2 must have shape (M, ...) with M = len(materials) = {len(materials)}, "
            f"got {areal.shape}"
        )
    spatial = areal.shape[1:]
    n_channels = scanner.channel_weights.shape[0]
    pixels = math.prod(spatial)
    out = np.ones((n_channels, pixels), dtype=np.float32)
    if len(materials) == 0 or pixels == 0:
        return out.reshape((n_channels,) + spatial)
    flat = np.ascontiguousarray(areal.reshape(len(materials), pixels), dtype=np.float32)
    if not (float(flat.min()) >= 0):  # NaN fails this too
        raise ValueError("areal_density_g_cm2 must be finite and >= 0 g/cm^2")
    # Per pixel "the beam meets something": areal densities are >= 0, so the
    # max over materials is > 0 exactly there (and inf shows up here).
    thickest = flat.max(axis=0)
    if not math.isfinite(float(thickest.max())):
        raise ValueError("areal_density_g_cm2 must be finite and >= 0 g/cm^2")
    occupied = thickest > 0
    # Layout (E, block): energies on rows, so both products are plain BLAS
    # calls on contiguous memory and the exponential runs in place.
    table_t = -np.stack([physics.mass_attenuation(m, scanner.energies_kev) for m in materials], axis=1)
    table_t = table_t.astype(np.float32)  # (E, M), negated: the matmul yields the exponent
    weights = scanner.channel_weights / scanner.channel_weights.sum(axis=1, keepdims=True)
    weights = weights.astype(np.float32)  # (C, E)
    spectral = np.empty((table_t.shape[0], _BLOCK_PIXELS), dtype=np.float32)
    for start in range(0, pixels, _BLOCK_PIXELS):
        stop = min(start + _BLOCK_PIXELS, pixels)
        mask = occupied[start:stop]
        hits = int(np.count_nonzero(mask))
        if hits == 0:
            continue  # all air: already 1
        if hits <= (stop - start) // 2:
            index = np.flatnonzero(mask)
            block, target = flat[:, start + index], None
        else:
            block, target = flat[:, start:stop], out[:, start:stop]
        work = spectral[:, : block.shape[1]]
        np.matmul(table_t, block, out=work)
        np.exp(work, out=work)
        if target is None:
            out[:, start + index] = weights @ work
        else:
            np.matmul(weights, work, out=target)
    return out.reshape((n_channels,) + spatial)


def effective_energy_kev(scanner: ScannerModel, channel: int | str = 0) -> float:
    """Signal-weighted mean energy of one channel, keV.

    Parameters
    ----------
    scanner : ScannerModel
    channel : int or str
        Channel index or name.
    """
    if isinstance(channel, str):
        if channel not in scanner.channel_names:
            raise ValueError(f"channel must be one of {', '.join(scanner.channel_names)}, got {channel!r}")
        channel = scanner.channel_names.index(channel)
    if not (isinstance(channel, (int, np.integer)) and 0 <= channel < len(scanner.channel_names)):
        raise ValueError(f"channel must be an index below {len(scanner.channel_names)} or a name, got {channel!r}")
    w = scanner.channel_weights[channel]
    return float(np.sum(w * scanner.energies_kev) / np.sum(w))
