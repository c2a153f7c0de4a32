"""Remake sample_scans/ and calibration/ with the simulator.

Run ``make samples`` (or ``.venv/bin/python sample_scans/make_samples.py``).
Every file here comes from the virtual scanners with fixed seeds, so anyone
can regenerate the same bytes. See sample_scans/README.md for what each
file holds and what a correct analysis finds.
"""

from __future__ import annotations

import argparse
import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from nii import Scan, ScanKind, write_scan
from nii.calibrate.correct import Calibrator
from nii.calibrate.profile import build_profile, default_profile_path, save_profile
from nii.calibrate.render import render
from nii.ingest.raw import write_raw
from nii.simulate.engine import SimulatedScan, simulate_scan, write_calibration_acquisitions
from nii.simulate.scanner import list_scanners, load_scanner

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_scans"
CALIBRATION = ROOT / "calibration"


def first_scan(scanner_name: str, scene: str, *, want_threat: bool, seed: int,
               shape: tuple[int, ...] | None = None, mismatch: str | None = None) -> SimulatedScan:
    """The first draw from ``seed`` on whose scene has (or lacks) a threat
    (and, for cargo, the given manifest ``mismatch``)."""
    scanner = load_scanner(scanner_name)
    for offset in range(100):
        result = simulate_scan(scanner, np.random.default_rng([seed, offset]), scene=scene,
                               threat_rate=1.0 if want_threat else 0.0, index=offset, shape=shape)
        if bool(result.threats) == want_threat and (mismatch is None or result.manifest_truth["mismatch"] == mismatch):
            return result
    raise RuntimeError(f"no {scene} scene with threat={want_threat} in 100 tries")


def truth(result: SimulatedScan) -> list[dict]:
    """Ground truth for the README and ground_truth.json (masks left out)."""
    keep = ("category", "dicos_category", "bbox_rc", "box_zyx", "mass_g", "materials", "material")
    return [{k: (list(v) if isinstance(v, tuple) else v) for k, v in t.items() if k in keep} for t in result.threats]


README = """# Sample scans

Small scans a newcomer can open, all made by the simulator from
`make samples` (`sample_scans/make_samples.py`, fixed seeds). Exact ground
truth for every file is in `ground_truth.json`; boxes are
`(row0, col0, row1, col1)` in the scan's pixels (CT: `(z0, y0, x0, z1, y1, x1)`
in voxels), masses in grams. Try `nii info sample_scans`.

| file | what it holds | what a correct analysis finds |
| --- | --- | --- |
{rows}

The scanners' own calibration acquisitions (dark, air and step-wedge frames;
air and water phantoms for CT) and the profiles built from them
(`profile.npz`) are in `calibration/<scanner>/`, made by the same command.
"""


def describe(threats: list[dict]) -> str:
    if not threats:
        return "CLEAR: no threat"
    items = ", ".join(f"{t['category']} ({t['dicos_category']}, {t['mass_g']:.0f} g)" for t in threats)
    return f"ALARM: {items}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=Path, default=SAMPLES, help="output folder for the scans")
    parser.add_argument("--calibration", type=Path, default=CALIBRATION, help="output folder for acquisitions")
    args = parser.parse_args()
    make(args.samples, args.calibration)


def make(samples: Path, calibration: Path) -> None:
    """Write every sample scan, its ground truth and README, and the acquisitions."""
    samples.mkdir(parents=True, exist_ok=True)
    for old in samples.iterdir():
        if old.name not in ("make_samples.py",):
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    profiles = {}
    for name in list_scanners():
        target = calibration / name
        shutil.rmtree(target, ignore_errors=True)
        write_calibration_acquisitions(target, scanner=name, seed=1, lines=32)
        # A fixed build time keeps the profile's bytes (and hash) reproducible.
        profile = build_profile(target, scanner_id=name, version=1, created_at=datetime(2026, 1, 5, tzinfo=timezone.utc))
        save_profile(profile, default_profile_path(name, calibration))
        profiles[name] = profile

    ground_truth: dict[str, object] = {}
    rows: list[str] = []

    # Short scans (but the full detector width, so the committed profiles
    # calibrate them) keep the folder under 10 MB; the physics is the same.
    threat_bag = first_scan("baggage-dual-kvp", "bag", want_threat=True, seed=101, shape=(400, 1024))
    clear_bag = first_scan("baggage-dual-kvp", "bag", want_threat=False, seed=202, shape=(400, 1024))
    write_raw(threat_bag.scan, samples / "bag-threat.raw")
    write_raw(clear_bag.scan, samples / "bag-clear.raw", layout="side_by_side")
    ground_truth["bag-threat.json"] = truth(threat_bag)
    ground_truth["bag-clear.json"] = truth(clear_bag)
    rows.append(f"| `bag-threat.json` + `.raw` | raw dual-energy (80/160 kVp) line-scanner dump with its JSON "
                f"sidecar, planar layout | {describe(truth(threat_bag))} |")
    rows.append(f"| `bag-clear.json` + `.raw` | the same kind of bag, no threat; channels side by side "
                f"`[low\\|high]` as some consoles write | {describe(truth(clear_bag))} |")

    parcel = first_scan("parcel-sandwich", "parcel", want_threat=True, seed=303, shape=(360, 896))
    write_scan(parcel.scan, samples / "parcel-dicos-dx.dcm")
    ground_truth["parcel-dicos-dx.dcm"] = truth(parcel)
    rows.append(f"| `parcel-dicos-dx.dcm` | DICOS DX for processing, two frames LOW/HIGH, from the 160 kVp "
                f"sandwich-detector parcel scanner | {describe(truth(parcel))} |")

    ct = first_scan("ct-baggage", "ct", want_threat=True, seed=404, shape=(48, 96, 96))
    write_scan(ct.scan, samples / "bag-dicos-ct.dcm")
    ground_truth["bag-dicos-ct.dcm"] = truth(ct)
    rows.append(f"| `bag-dicos-ct.dcm` | DICOS CT, one multi-frame volume of a bag; stored values need the "
                f"air/water HU calibration | {describe(truth(ct))} |")

    # A container declared empty that is not: what manifest checks are for.
    cargo = first_scan("cargo-linac", "cargo", want_threat=False, seed=505, shape=(1240, 640), mismatch="false_empty")
    write_raw(cargo.scan, samples / "container.raw")
    ground_truth["container.json"] = {"threats": truth(cargo), "manifest_declared": cargo.scan.metadata["manifest"],
                                      "manifest_truth": cargo.manifest_truth}
    declared, real = cargo.scan.metadata["manifest"], cargo.manifest_truth
    holds = f"holds {', '.join(real['goods']) or 'nothing'}, {real['gross_kg']:.0f} kg gross"
    verdict = (f"consistent with the manifest ({holds}); {describe(truth(cargo))}" if real["mismatch"] == "none"
               else f"ALARM on the manifest check ({real['mismatch']}): {holds}; {describe(truth(cargo))}")
    rows.append(f"| `container.json` + `.raw` | 6 MV / 4 MV dual-energy cargo radiograph of container "
                f"{declared['container_number']}, declared {declared['goods']}, {declared['gross_kg']:.0f} kg gross "
                f"| {verdict} |")

    # What a vendor console archives: the threat bag rendered in operator colours.
    calibrated = Calibrator(profiles["baggage-dual-kvp"])(threat_bag.scan)
    rendered = Scan(render(calibrated, tool="colour"), kind=ScanKind.PSEUDO_COLOUR, scanner_id=threat_bag.scan.scanner_id,
                    acquired_at=threat_bag.scan.acquired_at,
                    metadata={**threat_bag.scan.metadata, "rendered_from": threat_bag.scan.scan_id,
                              "profile_id": calibrated.profile_id})
    write_scan(rendered, samples / "bag-threat-console.png")
    write_scan(rendered, samples / "bag-threat-console.jpg")
    ground_truth["bag-threat-console.png"] = ground_truth["bag-threat.json"]
    ground_truth["bag-threat-console.jpg"] = ground_truth["bag-threat.json"]
    rows.append("| `bag-threat-console.png`, `.jpg` | `bag-threat` as a vendor console archives it: 8-bit "
                "pseudo-colour (orange organic, green mixed, blue metal), no raw counts | same as `bag-threat` |")

    (samples / "ground_truth.json").write_text(json.dumps(ground_truth, indent=1, sort_keys=True) + "\n")
    (samples / "README.md").write_text(README.format(rows="\n".join(rows)))




if __name__ == "__main__":
    main()
