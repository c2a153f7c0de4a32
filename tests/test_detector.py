"""Detector model: noise, fixed pattern, calibration frames and CT stored values."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from nii.simulate.detector import (
    DetectorState,
    acquire,
    air_frames,
    ct_phantom,
    ct_reconstruct,
    dark_frames,
    detector_state,
    step_wedge,
)
from nii.simulate.scanner import load_scanner, transmission
from nii.simulate.scene import VolumeObject, VolumeScene


@pytest.fixture(scope="module")
def scanner():
    # More defects than the real line has, so every test sees some.
    base = load_scanner("baggage-dual-kvp")
    return dataclasses.replace(base, detector_elements=256, dead_pixel_fraction=0.02, hot_pixel_fraction=0.02)


@pytest.fixture(scope="module")
def state(scanner) -> DetectorState:
    return detector_state(scanner)


@pytest.fixture(scope="module")
def good(state) -> np.ndarray:
    """(C, cols) elements that are neither dead nor hot."""
    return ~(state.dead | state.hot)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_fixed_pattern_comes_from_the_scanner(scanner, state):
    again = detector_state(scanner)
    for name in ("gain", "offset", "dead", "hot"):
        np.testing.assert_array_equal(getattr(state, name), getattr(again, name))
    assert state.gain.shape == (2, 256)
    assert 0.02 < state.gain.std() < 0.08  # gain_nonuniformity = 0.05
    assert state.dead.any() and state.hot.any() and not (state.dead & state.hot).any()
    other = detector_state(dataclasses.replace(scanner, defect_seed=scanner.defect_seed + 1))
    assert not np.array_equal(other.gain, state.gain)


def test_acquire_is_deterministic_for_a_seed(scanner):
    trans = np.linspace(0.001, 1.0, 2 * 50 * 256, dtype=np.float32).reshape(2, 50, 256)
    first = acquire(trans, scanner, rng(5))
    assert first.dtype == np.uint16 and first.shape == trans.shape
    np.testing.assert_array_equal(first, acquire(trans, scanner, rng(5)))
    assert not np.array_equal(first, acquire(trans, scanner, rng(6)))


def test_air_frames_mean_is_air_counts_times_gain(scanner, state, good):
    air = air_frames(scanner, rng(1), lines=64, state=state).astype(np.float64)
    assert air.shape == (2, 64, 256)
    for c in range(2):
        above_dark = air[c].mean(axis=0) - state.offset[c]
        expected = scanner.air_counts[c] * state.gain[c]
        np.testing.assert_allclose(above_dark[good[c]], expected[good[c]], rtol=0.01)


def test_dark_frames_sit_at_the_offset(scanner, state, good):
    dark = dark_frames(scanner, rng(2), lines=64, state=state).astype(np.float64)
    for c in range(2):
        mean = dark[c].mean(axis=0)[good[c]]
        assert np.abs(mean - state.offset[c][good[c]]).max() < 5 * scanner.electronic_noise_counts / 8
        # Beam off: only electronic noise.
        assert dark[c][:, good[c]].std(axis=0).mean() == pytest.approx(scanner.electronic_noise_counts, rel=0.1)


def test_dead_and_hot_elements(scanner, state):
    frames = air_frames(scanner, rng(3), lines=16, state=state)
    for c in range(2):
        dead = frames[c][:, state.dead[c]]
        assert np.all(dead == np.rint(state.offset[c][state.dead[c]]).astype(np.uint16))
        assert np.all(frames[c][:, state.hot[c]] == 2**scanner.bits - 1)


def test_noise_variance_grows_with_signal(scanner, state, good):
    levels = [0.0, 0.05, 0.25, 1.0]
    variances = []
    for level in levels:
        frames = acquire(np.full((2, 400, 256), level, np.float32), scanner, rng(4), state=state)
        variances.append(frames[0][:, good[0]].astype(np.float64).var(axis=0).mean())
    assert np.all(np.diff(variances) > 0)
    # Poisson: variance above the electronic floor ~ gain * signal, so x4 signal -> ~x4.
    quantum = np.array(variances[1:]) - scanner.electronic_noise_counts**2
    assert quantum[2] / quantum[1] == pytest.approx(4.0, rel=0.15)
    assert quantum[2] == pytest.approx(scanner.air_counts[0] * float(np.mean(state.gain[0][good[0]] ** 2)), rel=0.1)


def test_few_quanta_keep_their_mean(scanner, state, good):
    # 3 quanta per pixel: exact Poisson draws, mean preserved.
    level = 3.0 / scanner.air_counts[0]
    frames = acquire(np.full((2, 2000, 256), level, np.float32), scanner, rng(7), state=state)
    quanta = (frames[0][:, good[0]] - state.offset[0][good[0]]) / state.gain[0][good[0]]
    assert quanta.mean() == pytest.approx(3.0, abs=0.1)


def test_few_quanta_are_poisson_not_gaussian(scanner):
    # Unit gains and no readout noise: counts - offset is the quantum count
    # (to rounding). At 0.5 quanta Poisson gives P(0) = exp(-0.5) = 0.61; a
    # Gaussian N(0.5, 0.5) would put only 0.42 within half a count of 0.
    quiet = dataclasses.replace(scanner, gain_nonuniformity=0.0, electronic_noise_counts=0.0)
    state = detector_state(quiet)
    keep = ~(state.dead[0] | state.hot[0])
    level = 0.5 / quiet.air_counts[0]
    frames = acquire(np.full((2, 400, 256), level, np.float32), quiet, rng(7), state=state)
    quanta = np.rint(frames[0][:, keep] - state.offset[0][keep])
    assert np.all(quanta >= 0)
    assert np.mean(quanta == 0) == pytest.approx(math.exp(-0.5), abs=0.01)
    assert quanta.var() == pytest.approx(0.5, rel=0.05)


def test_counts_clip_to_the_adc_range(scanner, state, good):
    frames = acquire(np.full((2, 8, 256), 5.0, np.float32), scanner, rng(8), state=state)
    assert np.all(frames[0][:, good[0]] == 2**scanner.bits - 1)  # five times air saturates


def test_drift_is_slow_and_bounded(scanner, state, good):
    d, period = scanner.drift_per_1000_lines, scanner.drift_period_lines
    start = period // 4  # the top of the wander
    early = air_frames(scanner, rng(9), lines=64, state=state).astype(np.float64)
    late = acquire(np.ones((2, 64, 256), np.float32), scanner, rng(9), first_line=start, state=state)
    ratio = (late[0].mean(0) - state.offset[0]) / (early[0].mean(0) - state.offset[0])
    expected = 1 + d * period / (2000 * math.pi)
    assert np.median(ratio[good[0]]) == pytest.approx(expected, rel=0.003)
    assert expected - 1 > 0.01  # large enough for the check to mean something


def test_fewer_columns_use_the_first_elements(scanner, state, good):
    frames = acquire(np.ones((2, 64, 100), np.float32), scanner, rng(10), state=state)
    above_dark = frames[1].mean(axis=0) - state.offset[1][:100]
    keep = good[1][:100]
    np.testing.assert_allclose(above_dark[keep], (scanner.air_counts[1] * state.gain[1][:100])[keep], rtol=0.01)


@pytest.mark.parametrize(
    ("shape", "fill", "match"),
    [
        ((3, 4, 256), 1.0, "shape"),
        ((2, 4, 257), 1.0, "shape"),
        ((2, 4, 16), -0.5, ">= 0"),
        ((2, 4, 16), np.nan, ">= 0"),
    ],
)
def test_acquire_refuses_bad_input(scanner, shape, fill, match):
    with pytest.raises(ValueError, match=match):
        acquire(np.full(shape, fill, np.float32), scanner, rng())


def test_step_wedge_counts_fall_with_thickness(scanner, state, good):
    cm = [0.0, 0.5, 1.0, 2.0, 4.0]
    counts = step_wedge(scanner, "aluminium", cm, rng(11), lines_per_step=8, state=state)
    assert counts.shape == (2, len(cm) * 8, 256)
    means = counts[:, :, good[0] & good[1]].reshape(2, len(cm), -1).mean(axis=2)
    assert np.all(np.diff(means, axis=1) < 0)
    with pytest.raises(ValueError, match="material"):
        step_wedge(scanner, "vibranium", cm, rng())


def test_flat_field_of_a_uniform_slab_is_column_flat(scanner, state, good):
    dark = dark_frames(scanner, rng(12), lines=64, state=state).mean(axis=1)
    air = air_frames(scanner, rng(13), lines=64, state=state).mean(axis=1)
    slab = step_wedge(scanner, "water", [5.0], rng(14), lines_per_step=64, state=state).mean(axis=1)
    expected = transmission(np.array([[5.0]], np.float32), ["water"], scanner)[:, 0]
    for c in range(2):
        keep = good[c]
        flat = (slab[c][keep] - dark[c][keep]) / (air[c][keep] - dark[c][keep])
        assert flat.std() / flat.mean() < 0.01
        assert flat.mean() == pytest.approx(float(expected[c]), rel=0.01)
    # Uncorrected, the gain pattern shows: what calibration exists to remove.
    raw = slab[0][good[0]] - state.offset[0][good[0]]
    assert raw.std() / raw.mean() > 0.02


# -- CT -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ct():
    return load_scanner("ct-baggage")


def to_hu(stored: np.ndarray, ct) -> np.ndarray:
    return (stored.astype(np.float64) - ct.ct_stored_offset) / ct.ct_stored_gain


def test_water_phantom_reads_0_hu_inside_and_minus_1000_outside(ct):
    stored = ct_phantom(ct, rng(20), material="water")
    assert stored.dtype == np.uint16 and stored.shape == (16, 64, 64)
    hu = to_hu(stored, ct)
    inside, outside = hu[:, 22:42, 22:42], hu[:, :6, :6]
    assert inside.mean() == pytest.approx(0.0, abs=3.0)
    assert outside.mean() == pytest.approx(-1000.0, abs=3.0)
    assert inside.std() == pytest.approx(ct.ct_noise_hu, rel=0.15)
    # The stored map is not the nominal HU + 1024 the header claims.
    assert abs(np.median(stored[:, 22:42, 22:42]) - 1024) > 5


def test_ct_reconstruct_uses_object_density(ct):
    shape = (4, 20, 20)
    block = np.ones((4, 10, 10), np.float32)
    scene = VolumeScene(shape=shape, voxel_mm=ct.ct_voxel_mm, objects=[
        VolumeObject("bottle", "water", (0, 0, 0, 4, 10, 10), block),
        VolumeObject("bottle", "water", (0, 10, 10, 4, 20, 20), block, density_g_cm3=2.0),
    ])
    hu = to_hu(ct_reconstruct(scene, dataclasses.replace(ct, ct_noise_hu=0.0), rng()), ct)
    assert hu[:, :10, :10].mean() == pytest.approx(0.0, abs=1.0)
    assert hu[:, 10:, 10:].mean() == pytest.approx(1000.0, rel=0.01)  # twice water's mu
    assert hu[:, :10, 10:].mean() == pytest.approx(-1000.0, abs=1.0)


def test_ct_needs_a_ct_scanner(scanner):
    with pytest.raises(ValueError, match="not ct"):
        ct_phantom(scanner, rng(), material="water")
