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

``--as-version`` publishes the same weights under a new version instead,
leaving the measured artifact as it was: alerts already made name its
sha256, so a card measured again with changed code (an inference fix, an
exact threshold) becomes the next patch version, with ``weights_from``
naming where the weights come from. The config's ``version`` line follows,
so the config in the new artifact retrains the new version.

    python references/evaluate_card.py anomaly 1.0.0 --as-version 1.0.1
"""

from __future__ import annotations

import argparse
import os
import re
import tomllib

import torch

from nii.detect.evaluate import evaluate_sets
from nii.detect.registry import MODELS_ROOT, detector_from_artifact, open_artifact, publish_artifact
from nii.detect.train import card_markdown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("version")
    parser.add_argument("--models", default=MODELS_ROOT, help="registry folder (default the repository's models/)")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: the GPU when there is one")
    parser.add_argument("--as-version", help="publish the same weights as this new version instead")
    args = parser.parse_args(argv)
    artifact = open_artifact(args.name, args.version, args.models)
    if artifact.card.get("kind") == "physics-rule":
        raise ValueError(f"{args.name} is a physics rule: `nii train configs/rules.toml` measures rules")
    config_text = artifact.read("config.toml").decode()
    config = tomllib.loads(config_text)
    detector = detector_from_artifact(artifact, device=args.device)
    metrics, operating_points = evaluate_sets(detector, config)
    version = args.as_version or args.version
    card = {**artifact.card, "metrics": metrics, "operating_points": operating_points,
            "evaluated": {"device": str(detector.device), "data": os.environ.get("NII_DATA", "../shared/data"),
                          "torch": torch.__version__}}
    if args.as_version:
        card["weights_from"] = {"version": args.version, "sha256": artifact.identity.sha256}
        config_text, found = re.subn(r'(?m)^version = "[^"]*"$', f'version = "{version}"', config_text, count=1)
        if not found:
            raise ValueError(f"{args.name} {args.version}: its config.toml has no version line to change")
    files = {"weights.pt": artifact.read("weights.pt"), "config.toml": config_text.encode()}
    identity = publish_artifact(args.name, version, files, card, args.models,
                                card_markdown=card_markdown(card, args.name, version))
    print(f"published {identity.name} {identity.version} sha256 {identity.sha256}")
    return 0


if __name__ == "__main__":
    from recipe import run  # references/recipe.py, beside this script

    run(main)
