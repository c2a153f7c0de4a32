"""Publish the physics rules to the model registry, each with its measured Pd/Pfa.

Rules learn nothing, but they are versioned like models: an alert must name
the rule and the thresholds that made it, and a court may ask how often that
rule is right. ``nii train configs/rules.toml`` evaluates every rule on the
simulated sets its config names (against the simulator's exact truth) and
publishes ``models/rule-<name>/<version>/`` with a card holding its
thresholds, targets, metrics per set, and the hash of each set.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nii.config import read_toml
from nii.detect.evaluate import round_metrics
from nii.detect.registry import MODELS_ROOT, check_model_identity, publish_artifact
from nii.detect.regions import ModelIdentity, dicos_category
from nii.detect.rules import RuleDetector, build_rule
from nii.detect.train import CACHE, metrics_markdown, simulated_set
from nii.detect.truth import evaluate_against_truth, read_truth

__all__ = ["is_rules_config", "load_rules_config", "publish_rules", "rule_model_name"]


def rule_model_name(rule: str) -> str:
    """Registry name of a rule: ``rule-<name>``."""
    return f"rule-{rule}"


def is_rules_config(path: str | os.PathLike) -> bool:
    """True for a rules config (it has a ``[rules]`` table), False for a training config."""
    try:
        return "rules" in read_toml(path, "the config")
    except ValueError:  # unreadable: the training config's reader says why
        return False


def load_rules_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a rules config: every rule known, its thresholds and sets valid."""
    path = Path(path)
    config = read_toml(path, "the rules config")
    for table in ("sets", "rules"):
        value = config.get(table, {})
        if not isinstance(value, dict) or not all(isinstance(entry, dict) for entry in value.values()):
            raise ValueError(f"{path}: {table} must be tables, [{table}.<name>]")
    sets = config.get("sets", {})
    for name, entry in config.get("rules", {}).items():
        build_rule(name, entry.get("parameters"))  # unknown rule or threshold: a clear error now
        missing = [s for s in entry.get("sets", []) if s not in sets]
        if missing:
            raise ValueError(f"{path}: rule {name!r} names unknown sets {', '.join(missing)}")
        if not entry.get("targets"):
            raise ValueError(f"{path}: rule {name!r} needs targets (what its Pd is measured on)")
    if "version" not in config:
        raise ValueError(f"{path}: the rules config needs a version")
    for name, entry in config.get("rules", {}).items():
        try:
            check_model_identity(f"rule-{name}", str(entry.get("version", config["version"])))
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
    return config


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def publish_rules(config_path: str | os.PathLike, *, models_root: str | os.PathLike = MODELS_ROOT,
                  only: str | None = None, cache: str | os.PathLike = CACHE,
                  progress: bool = True) -> list[ModelIdentity]:
    """Evaluate and publish every rule of a rules config (or just ``only``).

    Returns
    -------
    list of ModelIdentity
        What was published.
    """
    config = load_rules_config(config_path)
    rules = config["rules"]
    if only is not None:
        if only not in rules:
            raise ValueError(f"{config_path}: no rule {only!r} (rules: {', '.join(rules)})")
        rules = {only: rules[only]}
    published = []
    for name, entry in rules.items():
        rule = build_rule(name, entry.get("parameters"))
        model_name = rule_model_name(name)
        # A rule whose logic changed gets its own version; the others keep the config's.
        version = str(entry.get("version", config["version"]))
        detector = RuleDetector(rule, ModelIdentity(model_name, version, "unpublished"))
        min_mass = float(entry.get("min_target_mass_g", 0.0))
        metrics, data = {}, {}
        for set_name in entry.get("sets", []):
            spec = config["sets"][set_name]
            annotations = simulated_set(spec, cache=cache, progress=progress)
            data[set_name] = {**spec, "annotations_sha256": _file_sha256(annotations)}
            metrics[set_name] = round_metrics(evaluate_against_truth(
                detector, read_truth(annotations), targets=entry["targets"], min_mass_g=min_mass, progress=progress))
        card = {
            "kind": "physics-rule",
            "rule": name,
            "detects": entry.get("description", ""),
            "classes": [rule.class_name],
            "dicos_categories": {rule.class_name: dicos_category(rule.class_name)},
            "parameters": {k: v for k, v in vars(rule).items()},
            "targets": list(entry["targets"]),
            "min_target_mass_g": min_mass,
            "evaluation_data": data,
            "metrics": metrics,
        }
        files = {"config.toml": Path(config_path).read_bytes()}
        published.append(publish_artifact(model_name, version, files, card, models_root,
                                          card_markdown=_card_markdown(card, model_name, version)))
    return published


def _card_markdown(card: Mapping[str, Any], name: str, version: str) -> str:
    lines = [f"# Model card: {name} {version} (physics rule)", "", card["detects"], "",
             f"Class `{card['classes'][0]}`, DICOS threat category {card['dicos_categories'][card['classes'][0]]}.", "",
             "## Thresholds", "", "| threshold | value |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in card["parameters"].items()]
    lines += ["", "## Evaluation", "",
              f"Targets: {', '.join(card['targets'])}" + (f" of at least {card['min_target_mass_g']:g} g"
                                                         if card["min_target_mass_g"] else "") + ".",
              "Pd counts targets found (a region overlapping the target); Pfa counts clear scans (no threat, "
              "honest manifest) with any alert. Simulated sets, exact truth:", ""]
    lines += metrics_markdown(card["metrics"])
    return "\n".join(lines)
