"""Measure a published detector's card again on this machine's data, and re-publish it.

A detector trained on a lent GPU machine learned from shrunk copies of the
real sets (``references/shrink_data.py``), so the metrics and the alarm
threshold in its card were measured on those copies too. This runs the
config's ``[[evaluate]]`` sets again on the full-size data here, with the
same weights, and publishes the artifact again with what it measured: the
threshold officers get is then set on scans as the pipeline sees them. The
card's ``training`` record is kept as it was; ``evaluated`` says where the
metrics come from.

    python references/evaluate_card.py contraband-fcos 1.2.0
"""

from __future__ import annotations

import argparse
import os
import tomllib

import torch

from nii.detect.contraband import ContrabandDetector
from nii.detect.evaluate import evaluate_sets
from nii.detect.registry import MODELS_ROOT, open_artifact, publish_artifact
from nii.detect.train import card_markdown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("version")
    parser.add_argument("--models", default=MODELS_ROOT, help="registry folder (default the repository's models/)")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: the GPU when there is one")
    args = parser.parse_args(argv)
    artifact = open_artifact(args.name, args.version, args.models)
    config = tomllib.loads(artifact.read("config.toml").decode())
    detector = ContrabandDetector.from_artifact(artifact, device=args.device)
    metrics, operating_points = evaluate_sets(detector, config)
    card = {**artifact.card, "metrics": metrics, "operating_points": operating_points,
            "evaluated": {"device": str(detector.device), "data": os.environ.get("NII_DATA", "../shared/data"),
                          "torch": torch.__version__}}
    files = {"weights.pt": artifact.read("weights.pt"), "config.toml": artifact.read("config.toml")}
    identity = publish_artifact(args.name, args.version, files, card, args.models,
                                card_markdown=card_markdown(card, args.name, args.version))
    print(f"re-published {identity.name} {identity.version} sha256 {identity.sha256}")
    return 0


if __name__ == "__main__":
    from recipe import run  # references/recipe.py, beside this script

    run(main)
