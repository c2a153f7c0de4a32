"""The ``nii`` command line.

Every subcommand hands off to the same library functions the service and
batch re-analysis use; this module only parses arguments and prints.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from typing import Any, Sequence

from nii.ingest import ReadLimits, ScanReadError, find_scans, read_source

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


def cmd_info(args: argparse.Namespace) -> int:
    """Describe each scan found under the given paths; 1 if any is refused."""
    limits = ReadLimits(max_pixels=args.max_pixels)
    refused = 0
    for source in find_scans(args.paths):
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


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


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
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `nii info ... | head` closed the pipe
        return 0


if __name__ == "__main__":
    sys.exit(main())
