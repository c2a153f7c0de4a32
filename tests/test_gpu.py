"""The learned models on a GPU give the CPU's answers (skipped where there is no CUDA device).

CI has no GPU; these run on a lent GPU machine (``pytest tests/test_gpu.py``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import REPO
from tests.test_detect import TINY_CONFIG

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")

SAMPLES = [REPO / "sample_scans" / name for name in ("bag-threat.raw", "bag-clear.raw", "bag-threat-console.png")]


def _regions(detector, calibrated):
    return sorted(((r.class_name, r.score, r.box) for r in detector.detect(calibrated)), key=lambda r: -r[1])


@pytest.mark.parametrize("name", ["contraband-fcos", "anomaly"])
def test_shipped_models_on_the_gpu_find_what_they_find_on_the_cpu(name):
    from nii.calibrate.correct import calibrate_with_scanner_profile
    from nii.detect.registry import load_detector
    from nii.ingest import read_scan

    on_cpu = load_detector(name, device="cpu", min_score=0.05)
    on_gpu = load_detector(name, device="cuda", min_score=0.05)
    found = 0
    for path in SAMPLES:
        calibrated = calibrate_with_scanner_profile(read_scan(path), REPO / "calibration")
        cpu, gpu = _regions(on_cpu, calibrated), _regions(on_gpu, calibrated)
        # cuDNN picks other convolution algorithms: scores agree to float
        # rounding, so a candidate right at min_score may come or go.
        strong = [r for r in cpu if r[1] > 0.1]
        found += len(strong)
        for class_name, score, box in strong:
            match = [g for g in gpu if g[0] == class_name and np.allclose(g[2], box, atol=1.0)]
            assert match, f"{path.name}: {class_name} {score:.3f} at {box} found on the CPU only"
            assert abs(match[0][1] - score) < 1e-3
    assert found, "the samples hold threats the shipped models find"


def test_pipeline_and_batch_worker_on_the_gpu_decide_as_on_the_cpu(tmp_path):
    from nii.batch.analyse import ScanAnalyser
    from nii.batch.sources import ArchiveItem
    from nii.ingest import find_scans
    from nii.pipeline import Pipeline

    cpu, gpu = Pipeline.from_config(device="cpu"), Pipeline.from_config(device="cuda")
    for path in SAMPLES:
        a, b = cpu.analyze(path), gpu.analyze(path)
        assert a.decision == b.decision, path.name
        assert [x.class_name for x in a.alerts] == [x.class_name for x in b.alerts], path.name
    worker = ScanAnalyser(device="cuda")
    items = [ArchiveItem.from_source(s) for s in find_scans([SAMPLES[0]])]
    record = worker.analyse(items[0])
    assert record["scan"]["error"] is None
    assert record["scan"]["decision"] == cpu.analyze(SAMPLES[0]).decision


def test_training_runs_on_the_gpu(tmp_path):
    from nii.detect.registry import open_artifact
    from nii.detect.train import train

    config = tmp_path / "tiny.toml"
    config.write_text(TINY_CONFIG.replace("[train]", "[train]\nema_decay = 0.9\nattenuation_jitter = 0.5"))
    train(config, models_root=tmp_path / "models", max_steps=3, device="cuda", cache=tmp_path / "cache",
          progress=False)
    card = open_artifact("tiny", root=tmp_path / "models").card
    assert card["training"]["device"] == "cuda"
    assert card["training"]["steps"] == 3
