"""The ``nii`` command line.

Every subcommand hands off to the same library functions the service and
batch re-analysis use; this module only parses arguments and prints.
"""

from __future__ import annotations

import argparse
import getpass
import json
import math
import os
import signal
import sys
import warnings
from pathlib import Path
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from nii.ingest import ReadLimits, ScanReadError, ScanSource, find_scans, read_source

__all__ = ["main"]


def _format_line(info: dict[str, Any]) -> str:
    """One human line per scan, as ``nii info`` prints it."""
    shape = "x".join(str(n) for n in info["shape"])
    energies = "/".join(f"{e:g}" for e in info["energies_kv"]) + " kV" if info["energies_kv"] else "-"
    spacing = "x".join(f"{s:g}" for s in info["spacing_mm"]) + " mm" if info["spacing_mm"] else "-"
    return (
        f"{info['path']}  {info['format']} {info['modality']} {info['kind']} {shape} {info['dtype']}"
        f"  energies {energies}  spacing {spacing}  id {info['scan_id']}"
    )


def _scans_under(paths: Sequence[str]) -> Iterator[ScanSource]:
    """The scans under ``paths``; none at all is an error, not a silent success."""
    found = False
    for source in find_scans(paths):
        found = True
        yield source
    if not found:
        raise ValueError(f"no scans found under {', '.join(paths)}")


def cmd_info(args: argparse.Namespace) -> int:
    """Describe each scan found under the given paths; 1 if any is refused."""
    limits = ReadLimits(max_pixels=args.max_pixels)
    refused = 0
    for source in _scans_under(args.paths):
        try:
            info = read_source(source, limits=limits).describe()
        except ScanReadError as err:
            refused += 1
            info = {"path": str(source.path), "error": err.reason}
        if args.json:
            print(json.dumps(info), flush=True)
        elif "error" in info:
            print(f"{info['path']}  REFUSED: {info['error']}", flush=True)
        else:
            print(_format_line(info), flush=True)
    return 1 if refused else 0


def cmd_simulate(args: argparse.Namespace) -> int:
    """Simulate scans (or a scanner's calibration acquisitions) into --out."""
    from nii.simulate.engine import default_scene, simulate_dataset, write_calibration_acquisitions
    from nii.simulate.scanner import load_scanner

    if args.calibration:  # a new day's acquisitions replace the last beside the profile they built
        written = write_calibration_acquisitions(args.out, scanner=args.scanner, seed=args.seed)
        print(f"wrote {len(written)} calibration acquisitions to {args.out}")
        return 0
    _require_new_or_empty(args.out)
    scene = args.scene or default_scene(load_scanner(args.scanner))
    path = simulate_dataset(
        args.out, scanner=args.scanner, n=args.n, seed=args.seed, scene=scene, threat_rate=args.threat_rate,
        clear_bag_rate=args.clear_rate, fmt=args.format, workers=args.workers, progress=not args.quiet,
    )
    print(f"wrote {args.n} {scene} scans and {path}")
    return 0


def _require_new_or_empty(out: str) -> None:
    """Refuse an output folder that already holds files: a data set written
    over another is neither, its annotations naming scans it lost."""
    folder = Path(out)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ValueError(f"--out {out} already holds files; write the data set into a new or empty folder")


def cmd_tip(args: argparse.Namespace) -> int:
    """Project threats into clear bags: training data and operator-training images."""
    from nii.simulate.composites import tip_dataset

    _require_new_or_empty(args.out)
    path = tip_dataset(args.out, args.backgrounds, signatures=args.signatures, n=args.n, seed=args.seed,
                       scanner=args.scanner, attenuation_scale=args.attenuation_scale, progress=not args.quiet)
    print(f"wrote TIP composites and {path}")
    return 0


def cmd_calibrate_build(args: argparse.Namespace) -> int:
    """Build a scanner's calibration profile from its acquisitions."""
    from nii.calibrate.profile import build_profile, default_profile_path, next_version, save_profile

    folder = args.acquisitions or f"calibration/{args.scanner}"
    out = args.out or default_profile_path(args.scanner)
    version = args.version if args.version is not None else next_version(out)
    profile = build_profile(folder, scanner_id=args.scanner, version=version)
    path = save_profile(profile, out)
    print(f"wrote {path}: {profile.profile_id}")
    return 0


def cmd_calibrate_check(args: argparse.Namespace) -> int:
    """Report a profile's quality figures."""
    from nii.calibrate.profile import check_profile, load_profile

    report = check_profile(load_profile(args.profile))
    if args.json:
        print(json.dumps(report))
        return 0
    for key, value in report.items():
        shown = f"{value:.4%}" if key == "residual_nonuniformity" and value is not None else value
        shown = f"{value:.3f}" if key == "zeff_mae" and value is not None else shown
        print(f"{key:>24}: {shown}")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    """Calibrate scans and write the operator's rendering as PNG."""
    from nii.calibrate.correct import calibrate_scan, calibrate_with_scanner_profile
    from nii.calibrate.profile import load_profile
    from nii.calibrate.render import render
    from nii.ingest.image import encode_image

    if args.window and args.window[0] >= args.window[1]:
        raise ValueError(f"--window LOW HIGH: LOW must be below HIGH, got {args.window[0]:g} {args.window[1]:g}")
    refused, used = 0, set()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for source in _scans_under(args.paths):
        try:
            scan = read_source(source)
        except ScanReadError as err:
            print(f"{source.path}  REFUSED: {err.reason}")
            refused += 1
            continue
        if args.profile:
            calibrated = calibrate_scan(scan, load_profile(args.profile))
        else:
            calibrated = calibrate_with_scanner_profile(scan)
        if calibrated.attenuation.ndim != 3 or scan.kind.value == "ct_volume":
            print(f"{source.path}  SKIPPED: the rendering tools take 2D projections; CT slice views are not built yet")
            continue
        rgb = render(calibrated, tool=args.tool, window=tuple(args.window) if args.window else None)
        # The whole name (suffix too), so bag.jpg and bag.png do not overwrite
        # each other; -2, -3... when two inputs share a name, as in analyze.
        target = out / f"{_output_folder(out, Path(source.path), used).name}-{args.tool}.png"
        target.write_bytes(encode_image(rgb))
        print(f"{target}  {calibrated.profile_id}")
    return 1 if refused else 0


def _output_folder(out: Path, source: Path, used: set[str]) -> Path:
    """A folder per scan named after its file (dots to dashes, so bag.png and
    bag.jpg differ), with -2, -3... when two inputs share a name."""
    stem = source.name.replace(".", "-") or "scan"
    name, n = stem, 1
    while name in used:
        n += 1
        name = f"{stem}-{n}"
    used.add(name)
    return out / name


def cmd_analyze(args: argparse.Namespace) -> int:
    """Analyse scans with the pipeline and write each one's outputs; 1 if any is refused."""
    from nii.annotate.result import result_record, summary_line, write_outputs
    from nii.pipeline import AnalysisError, Pipeline

    pipeline = Pipeline.from_config(args.config)
    out = Path(args.out)
    refused, used = 0, set()
    for source in _scans_under(args.paths):
        try:
            result = pipeline.analyze(source)
        except AnalysisError as err:
            refused += 1
            line = json.dumps({"path": str(source.path), "error": str(err)}) if args.json else \
                f"{source.path}  REFUSED: {err}"
            print(line, flush=True)
            continue
        paths = write_outputs(result, _output_folder(out, Path(source.path), used))
        if args.json:
            print(json.dumps({**result_record(result), "outputs": {k: str(v) for k, v in paths.items()}}), flush=True)
        else:
            print(f"{source.path}  {summary_line(result)}  -> {paths['result'].parent}", flush=True)
    return 1 if refused else 0


def cmd_batch_run(args: argparse.Namespace) -> int:
    """Re-analyse archives into RESULTS (Parquet), resumably; 1 if any scan was refused."""
    from nii.batch import run_batch

    # A scheduler's or a shell's `kill` stops the run as Ctrl-C does: the
    # scans analysed so far are committed and the workers stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        summary = run_batch(args.archives, args.out, config=args.config, engine=args.engine, workers=args.workers,
                            outputs=args.outputs, chunk_size=args.chunk_size, ray_address=args.ray_address,
                            progress=not (args.quiet or args.json))
    except KeyboardInterrupt:
        from nii.batch.results import summarise_manifest

        kept = summarise_manifest(args.out).scans_done
        print(f"interrupted: {args.out} keeps {kept} scans; run the same command again to carry on", file=sys.stderr)
        return 130
    print(json.dumps(summary.to_dict()) if args.json else summary.text())
    return 1 if summary.errors else 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def cmd_batch_diff(args: argparse.Namespace) -> int:
    """Compare two batch runs scan by scan: alerts new, removed and changed."""
    from nii.batch import diff_runs, diff_text

    diff = diff_runs(args.results_a, args.results_b, min_iou=args.min_iou, score_tolerance=args.score_tolerance)
    print(json.dumps(diff.to_dict()) if args.json else diff_text(diff))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Time the pipeline on the standard workloads, with Faster R-CNN beside it."""
    from nii.bench import bench_table, run_bench

    report = run_bench(args.workloads or None, config=args.config, repeats=args.repeats, progress=not args.json)
    print(json.dumps(report) if args.json else bench_table(report))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train a detector from a config and publish it to the registry."""
    from nii.detect.registry import MODELS_ROOT
    from nii.detect.rule_registry import is_rules_config, publish_rules
    from nii.detect.train import load_config, train
    from nii.detect.train_anomaly import is_anomaly_config, train_anomaly

    if is_rules_config(args.config):  # rules learn nothing: evaluate them and publish
        identities = publish_rules(args.config, models_root=args.models or MODELS_ROOT, only=args.only,
                                   progress=not args.quiet)
    else:
        recipe = train_anomaly if is_anomaly_config(load_config(args.config)) else train
        identities = [recipe(args.config, models_root=args.models or MODELS_ROOT, max_steps=args.max_steps,
                             device=args.device, progress=not args.quiet)]
    for identity in identities:
        print(f"published {identity.name} {identity.version} sha256 {identity.sha256}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate a model on a box or image-level data set."""
    from nii.detect.datasets import is_image_level, read_box_dataset, read_image_level
    from nii.detect.evaluate import evaluate_image_level, evaluate_samples
    from nii.detect.registry import MODELS_ROOT, load_detector, open_artifact
    from nii.detect.rules import RuleDetector
    from nii.detect.truth import evaluate_against_truth, read_truth

    if not Path(args.dataset).exists():
        raise ValueError(f"{args.dataset}: no such data set")
    progress = not (args.quiet or args.json)
    if args.pipeline is not None:
        return _evaluate_pipeline(args, progress)
    detector = load_detector(args.model, args.version, args.models or MODELS_ROOT)
    threshold = args.threshold
    if threshold is None:
        threshold = getattr(detector, "operating_points", {}).get("default", {}).get("threshold")
    if isinstance(detector, RuleDetector):
        # Rules are judged against exact truth: a simulated set with its targets.
        card = open_artifact(args.model, args.version, args.models or MODELS_ROOT).card
        result = evaluate_against_truth(detector, read_truth(args.dataset), targets=card["targets"],
                                        min_mass_g=card.get("min_target_mass_g", 0.0), progress=progress)
    elif is_image_level(args.dataset):
        result = evaluate_image_level(detector, read_image_level(args.dataset), threshold=threshold, progress=progress)
    else:
        samples = read_box_dataset(args.dataset, args.split)
        if not samples:
            raise ValueError(f"{args.dataset}: the data set holds no scans")
        result = evaluate_samples(detector, samples, threshold=threshold, progress=progress)
    result = {"dataset": str(args.dataset), "model": f"{detector.identity.name} {detector.identity.version}",
              "model_sha256": detector.identity.sha256, **result}
    _print_metrics(result, args.json)
    return 0


def _evaluate_pipeline(args: argparse.Namespace, progress: bool) -> int:
    """``nii evaluate --pipeline``: the pipeline's decision on an image-level set."""
    from nii.detect.datasets import is_image_level, read_image_level
    from nii.detect.evaluate import evaluate_decisions
    from nii.pipeline import Pipeline

    if not is_image_level(args.dataset):
        raise ValueError(f"{args.dataset}: the pipeline's decision is judged on an image-level set "
                         "(clear/ and threat/ sub-folders)")
    labels = read_image_level(args.dataset)
    if not labels:
        raise ValueError(f"{args.dataset}: clear/ and threat/ hold no scans")
    pipeline = Pipeline.from_config(args.pipeline or None)
    result = evaluate_decisions(pipeline, labels, progress=progress)
    models = [f"{m.name} {m.version}" for m in pipeline.identities]
    _print_metrics({"dataset": str(args.dataset), "pipeline": str(pipeline.config.source), "models": models,
                    **result}, args.json)
    return 0


def _print_metrics(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:>16}: {json.dumps(value) if isinstance(value, (dict, list)) else value}")


def cmd_models(args: argparse.Namespace) -> int:
    """List registered models, verifying each artifact."""
    from nii.detect.registry import MODELS_ROOT, ModelArtifactError, list_models, open_artifact

    root = args.models or MODELS_ROOT
    registered = list_models(root)
    if not registered:
        raise ValueError(f"{root}: no models registered there (no {Path(root) / 'registry.json'})")
    broken = 0
    for name, versions in sorted(registered.items()):
        for version in sorted(versions):
            try:
                artifact = open_artifact(name, version, root)
                status = f"ok  {artifact.card.get('kind')}  classes: {', '.join(artifact.card.get('classes', []))}"
            except ModelArtifactError as err:
                status, broken = f"REFUSED: {err}", broken + 1
            print(f"{name} {version}  sha256 {versions[version][:16]}  {status}")
    return 1 if broken else 0


def _service_config(args: argparse.Namespace):
    import dataclasses

    from nii.serve.service import load_service_config

    config = load_service_config(args.service_config)
    overrides = {key: getattr(args, key) for key in ("host", "port", "dicom_port", "workers", "hot_folder")
                 if getattr(args, key, None) is not None}
    if "hot_folder" in overrides:
        overrides["hot_folder"] = Path(overrides["hot_folder"])
    return dataclasses.replace(config, **overrides)


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the operator service (web viewer and API, DICOM SCP, hot folder, workers)."""
    from nii.serve.run import serve

    return serve(args.data, _service_config(args), database_url=args.database, samples=args.samples or ())


def _open_store(args: argparse.Namespace, *, existing: bool = False):
    """The store of ``--data``; with ``existing``, one that is already there.

    Commands that only read (audit, report, evidence) must not make a new,
    empty store out of a mistyped --data and report on it.
    """
    from nii.serve.store import Store

    if existing:
        _check_data_folder(args)
    return Store.open(args.data, args.database, existing=existing)


def _check_data_folder(args: argparse.Namespace) -> None:
    if getattr(args, "database", None) is None and not (Path(args.data) / "nii.sqlite3").is_file():
        raise ValueError(f"{args.data}: not an nii data folder (no nii.sqlite3); check --data")


def cmd_users(args: argparse.Namespace) -> int:
    """Add a user (or reset one's password and role); the password comes from stdin or a prompt."""
    from nii.serve import audit
    from nii.serve.auth import add_user

    if sys.stdin.isatty():
        password = getpass.getpass(f"password for {args.user}: ")
        if getpass.getpass("again: ") != password:
            raise ValueError("the two passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    store = _open_store(args)
    with store.transaction() as conn:
        user = add_user(store, conn, args.user, password, args.role)
        audit.append(store, conn, username=None, action="add_user", target=user.username,
                     detail={"role": user.role, "via": "cli"})
    print(f"user {user.username} ({user.role}) saved in {args.data}")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    """Check the audit log's hash chain; 1 at the first broken link.

    With ``--package``, also that the log still holds the entry each
    evidence package recorded as its head: the chain alone cannot show a
    log cut off at its end or rebuilt whole.
    """
    from nii.evidence import site_key, verify_package
    from nii.serve.audit import AuditEntry, check_recorded_entry, verify_chain
    from nii.serve.store import audit as audit_table

    store = _open_store(args, existing=True)
    with store.engine.connect() as conn:
        rows = conn.execution_options(yield_per=1000).execute(audit_table.select().order_by(audit_table.c.seq))
        checked, broken = verify_chain(AuditEntry(**row._mapping) for row in rows)
    if broken is not None:
        print(f"audit log BROKEN at entry {broken.seq}: {broken.reason} ({checked} entries before it are intact)")
        return 1
    print(f"audit log intact: {checked} entries")
    disagreements = 0
    trusted = site_key(args.data, create=False).public_key() if args.package else None
    for package in args.package or ():
        # Only a package this site signed, unchanged, is a record to hold the log to.
        verified = verify_package(package, trusted_key=trusted)
        chain = verified.audit_chain or {}
        if not verified.ok:
            problem = verified.problems[0] if verified.problems else "not signed by this site's key"
            print(f"{package}: not compared, the package does not verify ({problem})")
        elif not chain.get("through_hash"):
            print(f"{package}: not compared, the package records no audit entry hash")
            continue
        else:
            with store.read() as conn:
                differs = check_recorded_entry(conn, int(chain["through_seq"]), chain["through_hash"])
            if differs is None:
                print(f"{package}: agrees (entry {chain['through_seq']} as exported)")
                continue
            print(f"{package}: DISAGREES: {differs}")
        disagreements += 1
    return 1 if disagreements else 0


def cmd_report(args: argparse.Namespace) -> int:
    """Supervisors' figures for a period: scans, alarms, decisions, agreement, decision times, seizures."""
    import dataclasses

    from nii.serve.report import TABLES, build_report, parse_period, report_csv, report_text
    from nii.serve.service import load_service_config

    config = load_service_config(args.service_config).reporting
    if args.timezone:
        config = dataclasses.replace(config, timezone=args.timezone)
    period = parse_period(args.start, args.end, timezone=config.timezone)
    with _open_store(args, existing=True).read() as conn:
        report = build_report(conn, period, by=args.by, config=config)
    tables = [args.table] if args.table else list(TABLES)
    if args.format == "json":
        print(json.dumps(report.to_dict(), indent=2))
    elif args.format == "csv":
        # One table is plain CSV; several are blocks, each after a "# name" line.
        print("\n".join(report_csv(report, t) if len(tables) == 1 else f"# {t}\n{report_csv(report, t)}"
                        for t in tables), end="")
    else:
        print(report_text(report, tables))
    return 0


def cmd_evidence_export(args: argparse.Namespace) -> int:
    """Write a case's signed evidence package."""
    from nii.evidence import export_case, load_private_key, site_key
    from nii.pipeline import load_pipeline_config

    _check_data_folder(args)  # before a mistyped --data gets a new site key
    if Path(args.out).exists():  # a package already handed out is not silently replaced
        raise ValueError(f"--out {args.out} exists; give the new package another name")
    key = load_private_key(args.key) if args.key else site_key(args.data)
    config = load_pipeline_config(args.pipeline)
    store = _open_store(args, existing=True)
    # The audit log names who handed evidence out: here, the account that ran the command.
    exported = export_case(store, args.case, args.out, key=key, models_root=config.models_root,
                           calibration_root=config.calibration_root, exported_by=f"{getpass.getuser()}@cli"[:64])
    print(f"wrote {exported.path}: {exported.files} files, manifest sha256 {exported.manifest_sha256}, "
          f"signed by {exported.fingerprint}")
    warnings = [f"WARNING: {_broken_chain(exported.audit_chain)}; the package records it"] \
        if not exported.audit_chain["intact"] else []
    warnings += [f"WARNING: {what} is not enclosed ({why})" for what, why in exported.not_enclosed]
    for line in warnings:
        print(line, file=sys.stderr)
    return 1 if warnings else 0


def _broken_chain(chain: Mapping[str, Any]) -> str:
    return f"the site's audit log was BROKEN at entry {chain.get('broken_at')} ({chain.get('reason')}) when exported"


def cmd_evidence_verify(args: argparse.Namespace) -> int:
    """Check an evidence package: 0 intact, 1 a mismatch or an untrusted signer, 2 unreadable."""
    from nii.evidence import fingerprint, load_public_key, site_key, verify_package

    trusted = None
    if args.public_key:
        trusted = load_public_key(args.public_key)
    elif args.data:
        trusted = site_key(args.data, create=False).public_key()
    result = verify_package(args.package, trusted_key=trusted)
    for problem in result.problems:
        print(problem)
    if result.problems:
        return 1
    if result.trusted is False:
        print(f"UNTRUSTED: signed by {result.fingerprint}, not by the trusted key {fingerprint(trusted)}")
        return 1
    print(f"OK: {result.files} files, signed by {result.fingerprint}")
    if result.audit_chain is not None and not result.audit_chain.get("intact", True):
        print(f"WARNING: the package is intact, but {_broken_chain(result.audit_chain)}")
    if result.trusted is None:
        print("NOTE: no trusted key given (--public-key or --data): the signature proves the package is unchanged "
              "since it was signed, not who signed it; compare the fingerprint with the site's published one")
    return 0


def cmd_evidence_key(args: argparse.Namespace) -> int:
    """Print the site key's public half and fingerprint, for publishing."""
    from nii.evidence import fingerprint, load_private_key, site_key
    from nii.evidence.keys import public_pem

    if not args.key:
        _check_data_folder(args)  # a mistyped --data must not make a new key "for publishing"
    key = (load_private_key(args.key) if args.key else site_key(args.data)).public_key()
    sys.stdout.write(public_pem(key).decode())
    print(f"fingerprint {fingerprint(key)}")
    return 0


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be within 0 and 1, got {value}")
    return value


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _positive_number(text: str) -> float:
    value = _finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {value:g}")
    return value


def _whole_number(text: str, low: int, high: int | None = None) -> int:
    """An argparse value: a bad one is refused in the usage line, before anything starts."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < low or (high is not None and value > high):
        limits = f"within {low}-{high}" if high is not None else f"at least {low}"
        raise argparse.ArgumentTypeError(f"must be {limits}, got {value}")
    return value


def _positive_int(text: str) -> int:
    return _whole_number(text, 1)


def _case_number(text: str) -> int:
    from nii.serve.store import MAX_ROW_ID

    return _whole_number(text, 1, MAX_ROW_ID)


def _port(text: str) -> int:
    return _whole_number(text, 0, 65535)


def _data_options(parser: argparse.ArgumentParser) -> None:
    import os

    parser.add_argument("--data", default="nii-data", help="the service's data folder (default %(default)s)")
    parser.add_argument("--database", default=os.environ.get("NII_DATABASE_URL"),
                        help="database URL, e.g. postgresql+psycopg://user@host/nii (default: SQLite in --data; "
                             "or $NII_DATABASE_URL)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, kept apart from :func:`main` so it can be tested."""
    parser = argparse.ArgumentParser(prog="nii", description="Non-intrusive inspection image analysis.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = commands.add_parser("info", help="describe scans: format, modality, shape, energies, spacing, id")
    info.add_argument("paths", nargs="+", metavar="PATH", help="scan files or folders (walked recursively)")
    info.add_argument("--json", action="store_true", help="print one JSON object per scan")
    info.add_argument(
        "--max-pixels",
        type=_positive_int,
        default=ReadLimits().max_pixels,
        help="refuse scans whose header claims more samples than this (default %(default)s)",
    )
    info.set_defaults(run=cmd_info)

    sim = commands.add_parser("simulate", help="simulate scans with exact ground truth (the data engine)")
    sim.add_argument("--scanner", default="baggage-dual-kvp",
                     help="bundled virtual scanner name or a scanner TOML file (default %(default)s)")
    sim.add_argument("--n", type=_positive_int, default=10, help="number of scans (default %(default)s)")
    sim.add_argument("--seed", type=int, default=0, help="run seed; the same seed gives the same bytes")
    sim.add_argument("--out", required=True, help="output folder: scans/ and annotations.json go here")
    sim.add_argument("--scene", choices=["bag", "parcel", "cargo", "ct"],
                     help="what to scan (default: ct for CT scanners, cargo for cargo scanners, else bag)")
    sim.add_argument("--threat-rate", type=_rate, default=0.5, help="share of scans holding a threat")
    sim.add_argument("--clear-rate", type=_rate, default=0.1, help="share of clear (see-through) bags")
    sim.add_argument("--format", choices=["raw", "dicos"], default="raw",
                     help="raw dump + JSON sidecar, or DICOS DX (CT is always DICOS CT)")
    sim.add_argument("--workers", type=_positive_int, help="processes (default: all cores)")
    sim.add_argument("--calibration", action="store_true",
                     help="write the scanner's dark, air and step-wedge (or CT phantom) acquisitions instead")
    sim.add_argument("--quiet", action="store_true", help="no progress bar")
    sim.set_defaults(run=cmd_simulate)

    tip = commands.add_parser("tip", help="threat image projection: insert threats into clear bags")
    tip.add_argument("backgrounds", nargs="+", metavar="BACKGROUND",
                     help="clear-bag scans or folders (pseudo-colour images or raw dual-energy scans)")
    tip.add_argument("--signatures", default="simulated",
                     help="'simulated' or a folder of isolated-threat images, one sub-folder per class")
    tip.add_argument("--scanner", default="baggage-dual-kvp", help="virtual scanner for signatures and raw backgrounds")
    tip.add_argument("--n", type=_positive_int, default=10, help="number of composites (default %(default)s)")
    tip.add_argument("--seed", type=int, default=0, help="the same seed and inputs give the same files")
    tip.add_argument("--out", required=True, help="output folder: scans/ and annotations.json")
    tip.add_argument("--attenuation-scale", type=_positive_number, default=1.0,
                     help="scale threat attenuation on rendered backgrounds (0.6 suits GDXray on SIXray)")
    tip.add_argument("--quiet", action="store_true", help="no progress bar")
    tip.set_defaults(run=cmd_tip)

    calibrate = commands.add_parser("calibrate", help="build and check scanner calibration profiles")
    steps = calibrate.add_subparsers(dest="step", required=True, metavar="STEP")
    build = steps.add_parser("build", help="build a profile from dark, air and step-wedge acquisitions")
    build.add_argument("--scanner", required=True, help="scanner id; acquisitions from others are refused")
    build.add_argument("--acquisitions", help="folder of acquisitions (default calibration/SCANNER)")
    build.add_argument("--version", type=_positive_int,
                       help="profile revision (default: one above the profile it replaces, or 1); "
                            "the replaced profile is kept under superseded/")
    build.add_argument("--out", help="profile file (default calibration/SCANNER/profile.npz)")
    build.set_defaults(run=cmd_calibrate_build)
    check = steps.add_parser("check", help="report residual non-uniformity, dead pixels and Zeff error")
    check.add_argument("profile", metavar="PROFILE", help="a profile .npz file")
    check.add_argument("--json", action="store_true", help="one JSON object")
    check.set_defaults(run=cmd_calibrate_check)

    from nii.calibrate.render import TOOLS

    render = commands.add_parser("render", help="calibrate scans and write the operator's view as PNG")
    render.add_argument("paths", nargs="+", metavar="PATH", help="scan files or folders")
    render.add_argument("--out", required=True, help="output folder")
    render.add_argument("--tool", choices=TOOLS, default="colour", help="rendering tool (default %(default)s)")
    render.add_argument("--window", type=_finite, nargs=2, metavar=("LOW", "HIGH"),
                        help="attenuation window for the window tool")
    render.add_argument("--profile", help="profile file (default calibration/<scanner>/profile.npz if present)")
    render.set_defaults(run=cmd_render)

    analyze = commands.add_parser("analyze", help="analyse scans: annotated image, result JSON and DICOS TDR per scan")
    analyze.add_argument("paths", nargs="+", metavar="PATH", help="scan files or folders (walked recursively)")
    analyze.add_argument("--out", required=True, help="folder for the outputs, one sub-folder per scan")
    analyze.add_argument("--config", help="pipeline config (default: configs/pipeline.toml)")
    analyze.add_argument("--json", action="store_true", help="print one result object per scan")
    analyze.set_defaults(run=cmd_analyze)

    bench = commands.add_parser("bench", help="pipeline speed on the standard workloads, beside Faster R-CNN")
    bench.add_argument("workloads", nargs="*", metavar="WORKLOAD",
                       help="baggage, rendered, cargo, ct (default all)")
    bench.add_argument("--config", help="pipeline config (default: configs/pipeline.toml)")
    bench.add_argument("--repeats", type=_positive_int, help="scans per workload (default per workload)")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.set_defaults(run=cmd_bench)

    batch = commands.add_parser("batch", help="re-analyse archived scans into Parquet tables; compare two runs")
    batch_steps = batch.add_subparsers(dest="step", required=True, metavar="STEP")
    batch_run = batch_steps.add_parser(
        "run", help="analyse every scan of the archives into RESULTS; run it again after a stop to carry on")
    batch_run.add_argument("archives", nargs="+", metavar="ARCHIVE",
                           help="scan folders (walked recursively), list files of paths (.txt, .lst, .list), "
                                "or service data folders (holding nii.sqlite3)")
    batch_run.add_argument("--out", required=True, metavar="RESULTS",
                           help="folder for scans.parquet, alerts.parquet and the manifest")
    batch_run.add_argument("--config", help="pipeline config (default: configs/pipeline.toml)")
    batch_run.add_argument("--engine", choices=["local", "ray"], default="local",
                           help="local: a process pool here; ray: Ray Data on a cluster (default %(default)s)")
    batch_run.add_argument("--workers", type=_positive_int,
                           help="processes or Ray actors (default: the cores, or the cluster's GPUs)")
    batch_run.add_argument("--ray-address", help="Ray cluster to join (default: start a local instance)")
    batch_run.add_argument("--outputs", action="store_true",
                           help="also write each scan's result.json, annotated.png and tdr.dcm under RESULTS/outputs/")
    batch_run.add_argument("--chunk-size", type=_positive_int, default=256,
                           help="scans per committed part: the most work a kill can lose (default %(default)s)")
    batch_run.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    batch_run.add_argument("--quiet", action="store_true", help="no progress bars")
    batch_run.set_defaults(run=cmd_batch_run)
    batch_diff = batch_steps.add_parser("diff", help="per scan, the alerts new, removed or changed from run A to B")
    batch_diff.add_argument("results_a", metavar="RESULTS_A", help="the earlier run (e.g. model v1)")
    batch_diff.add_argument("results_b", metavar="RESULTS_B", help="the later run (e.g. model v2)")
    batch_diff.add_argument("--min-iou", type=_rate, default=0.5,
                            help="box IoU from which alerts of one class are the same object (default %(default)s)")
    batch_diff.add_argument("--score-tolerance", type=_rate, default=1e-3,
                            help="score differences up to this are not a change (default %(default)s)")
    batch_diff.add_argument("--json", action="store_true", help="print one JSON object")
    batch_diff.set_defaults(run=cmd_batch_diff)

    train = commands.add_parser("train", help="train a detector (or evaluate the physics rules) and publish it under models/")
    train.add_argument("config", metavar="CONFIG",
                       help="training config (TOML), e.g. configs/contraband-fcos.toml, or configs/rules.toml")
    train.add_argument("--device", choices=["cpu", "cuda"], help="default: the GPU when there is one")
    train.add_argument("--max-steps", type=_positive_int, help="stop after this many steps (quick checks)")
    train.add_argument("--models", help="registry folder to publish into (default the repository's models/)")
    train.add_argument("--only", metavar="RULE", help="rules config: publish only this rule")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(run=cmd_train)

    evaluate = commands.add_parser("evaluate", help="mAP, Pd/Pfa and speed of a model on a data set")
    evaluate.add_argument("dataset", metavar="DATASET",
                          help="Pascal VOC, YOLO or COCO set, a simulated set, or a folder with clear/ and threat/")
    evaluate.add_argument("--model", default="contraband-fcos", help="registered model (default %(default)s)")
    evaluate.add_argument("--pipeline", nargs="?", const="", metavar="CONFIG",
                          help="judge the whole pipeline's ALARM/CLEAR decision instead of one model "
                               "(image-level sets; CONFIG defaults to configs/pipeline.toml)")
    evaluate.add_argument("--version", help="model version (default the newest)")
    evaluate.add_argument("--split", help="Pascal VOC split (ImageSets/Main/SPLIT.txt); default all")
    evaluate.add_argument("--threshold", type=_rate, help="alarm threshold in [0, 1] (default the model's operating point)")
    evaluate.add_argument("--models", help="registry folder (default the repository's models/)")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bar")
    evaluate.set_defaults(run=cmd_evaluate)

    serve = commands.add_parser("serve", help="run the operator service: viewer, API, DICOM SCP, hot folder")
    _data_options(serve)
    serve.add_argument("--host", help="address to listen on (default from the service config: 127.0.0.1)")
    serve.add_argument("--port", type=_port, help="HTTP port (default 8000)")
    serve.add_argument("--dicom-port", type=_port, help="DICOM C-STORE port (default 11112; 0 for none)")
    serve.add_argument("--workers", type=_positive_int, help="analysis workers (default 2)")
    serve.add_argument("--hot-folder", help="folder scanners drop files into")
    serve.add_argument("--service-config", help="service config (default: configs/service.toml)")
    serve.add_argument("--samples", nargs="*", metavar="PATH", help="scans to submit at start (the sample scans)")
    serve.set_defaults(run=cmd_serve)

    users_cmd = commands.add_parser("users", help="manage the service's users")
    users_steps = users_cmd.add_subparsers(dest="step", required=True, metavar="STEP")
    add = users_steps.add_parser("add", help="add a user or reset their password and role (password on stdin)")
    add.add_argument("user", metavar="USER")
    add.add_argument("--role", required=True, choices=["operator", "supervisor", "model_developer", "admin"])
    _data_options(add)
    add.set_defaults(run=cmd_users)

    audit_cmd = commands.add_parser("audit", help="check the service's audit log")
    audit_steps = audit_cmd.add_subparsers(dest="step", required=True, metavar="STEP")
    verify = audit_steps.add_parser("verify", help="check the hash chain; exit 1 at the first broken link")
    verify.add_argument("--package", action="append", metavar="FILE",
                        help="an evidence package this site exported: check the log still holds the entry it "
                             "recorded (shows a log cut off at its end or rebuilt); may be repeated")
    _data_options(verify)
    verify.set_defaults(run=cmd_audit)

    report = commands.add_parser(
        "report", help="supervisors' figures for a period by day, shift, lane or scanner (as the viewer's report page)")
    report.add_argument("--from", dest="start", required=True, metavar="DATE",
                        help="first day of the period, YYYY-MM-DD (or a time YYYY-MM-DDTHH:MM), site time zone")
    report.add_argument("--to", dest="end", required=True, metavar="DATE",
                        help="end of the period, not included: --from 2026-03-01 --to 2026-03-08 is one week")
    report.add_argument("--by", choices=["day", "shift", "lane", "scanner"], default="day",
                        help="one group per (default %(default)s)")
    report.add_argument("--format", choices=["table", "csv", "json"], default="table",
                        help="table: for people (default); csv: for spreadsheets; json: every figure")
    report.add_argument("--table", choices=["scans", "decisions", "confusion", "decision_time", "seizures"],
                        help="show one table only (default all; with --format csv, all comes as blocks "
                             "each after a '# NAME' line)")
    report.add_argument("--timezone", help="IANA time zone for days and shifts (default: the service config's)")
    report.add_argument("--service-config", help="service config with the [reporting] shifts and time zone "
                                                 "(default: configs/service.toml)")
    _data_options(report)
    report.set_defaults(run=cmd_report)

    evidence = commands.add_parser("evidence", help="export a case as a signed evidence package; verify one")
    evidence_steps = evidence.add_subparsers(dest="step", required=True, metavar="STEP")
    export = evidence_steps.add_parser("export", help="write the case's scans, results, TDRs, decisions, audit "
                                                      "excerpt, models, calibration and report, signed")
    export.add_argument("case", type=_case_number, metavar="CASE", help="the case number")
    export.add_argument("--out", required=True, metavar="FILE", help="the package to write (a zip)")
    export.add_argument("--key", metavar="FILE",
                        help="Ed25519 private key (PEM) to sign with "
                             "(default: DATA/site-signing-key.pem, made if missing)")
    export.add_argument("--pipeline", metavar="FILE",
                        help="pipeline config naming the models and calibration folders (default: the shipped one)")
    _data_options(export)
    export.set_defaults(run=cmd_evidence_export)
    check = evidence_steps.add_parser("verify", help="check every hash and the signature; exit 1 at a mismatch")
    check.add_argument("package", metavar="FILE")
    trust = check.add_mutually_exclusive_group()
    trust.add_argument("--public-key", metavar="FILE", help="the site's published public key (PEM) to trust")
    trust.add_argument("--data", help="trust the site key of this service data folder")
    check.set_defaults(run=cmd_evidence_verify)
    key_step = evidence_steps.add_parser("key", help="print the site's public key and fingerprint, for publishing")
    key_step.add_argument("--key", metavar="FILE", help="another private key (PEM) than the site's")
    key_step.add_argument("--data", default="nii-data", help="the service's data folder (default %(default)s)")
    key_step.set_defaults(run=cmd_evidence_key)

    models = commands.add_parser("models", help="list registered models and verify their hashes")
    models.add_argument("--models", help="registry folder (default the repository's models/)")
    models.set_defaults(run=cmd_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nii`` console script."""
    args = build_parser().parse_args(argv)
    # Decoders warn about oddities they tolerate; the user sees our one line
    # per scan instead. Run with python -W default to see them.
    if not sys.warnoptions:
        warnings.simplefilter("ignore")
    try:
        return args.run(args)
    except BrokenPipeError:  # `nii info ... | head` closed the pipe (an OSError: caught first)
        # Python would fail again flushing stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ValueError, OSError) as err:  # bad values the library found, or an unwritable --out
        print(f"nii {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # an input no check foresaw: still one line; NII_DEBUG=1 shows the traceback
        if os.environ.get("NII_DEBUG"):
            raise
        print(f"nii {args.command}: error: unexpected {type(err).__name__}: {_one_line(err)} "
              "(NII_DEBUG=1 shows where)", file=sys.stderr)
        return 1


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
