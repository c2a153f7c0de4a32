"""The model registry: versioned, hash-verified artifacts under ``models/``.

Layout::

    models/
      registry.json                 {"<name>": {"<version>": "<sha256>"}}
      <name>/<version>/
        weights.pt                  the parameters (a torch state dict)
        config.toml                 the config that trained them (retrains them)
        card.json, card.md          the model card: classes, training data and
                                    its hash, metrics per evaluation set,
                                    operating points
        SHA256SUMS                  sha256 of every file above

The artifact's identity hash is the sha256 of its ``SHA256SUMS``, so it
covers every file, and ``registry.json`` records it when the artifact is
published. Loading checks both: a changed byte anywhere, a file missing, or
an artifact that is not the one the registry lists is refused with a
:class:`ModelArtifactError` naming the file. Alerts carry (name, version,
sha256) from here.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nii.detect.regions import ModelIdentity
from nii.files import fsync_dir, replace_file, written_temp_file

__all__ = [
    "MODELS_ROOT",
    "ModelArtifactError",
    "ModelArtifact",
    "list_models",
    "resolve_model",
    "open_artifact",
    "publish_artifact",
    "check_unpublished",
    "load_detector",
    "detector_from_artifact",
]

# Shipped models live in the repository's models/ folder.
MODELS_ROOT = Path(__file__).resolve().parents[2] / "models"
SUMS = "SHA256SUMS"
INDEX = "registry.json"
# A model is published to <root>/<name>/<version>: neither may climb out of
# the registry (a config's version = "../.." would empty the folder above it).
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_MODEL_VERSION = re.compile(r"\d{1,6}\.\d{1,6}\.\d{1,6}")


class ModelArtifactError(ValueError):
    """A model artifact is missing, tampered with, or not the registered one."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ModelArtifact:
    """A verified artifact folder: its identity, card and files.

    Made by :func:`open_artifact`; reading files through :meth:`read` gives
    the bytes that were verified, not whatever is on disk a moment later.
    """

    def __init__(self, folder: Path, identity: ModelIdentity, card: dict[str, Any], files: Mapping[str, bytes]):
        self.folder = folder
        self.identity = identity
        self.card = card
        self._files = dict(files)

    def read(self, name: str) -> bytes:
        if name not in self._files:
            raise ModelArtifactError(f"{self.folder}: the artifact has no file {name!r}")
        return self._files[name]

    def state_dict(self) -> dict[str, Any]:
        """The verified ``weights.pt`` as a torch state dict, on the CPU (tensors only, no pickled code)."""
        import torch  # here, not at the top: the registry also serves the rules, which need no torch

        return torch.load(io.BytesIO(self.read("weights.pt")), map_location="cpu", weights_only=True)

    def __repr__(self) -> str:
        return f"ModelArtifact({self.identity})"


def _index(root: Path) -> dict[str, dict[str, str]]:
    path = root / INDEX
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ModelArtifactError(f"{path}: not valid JSON ({err.msg})") from None


def list_models(root: str | os.PathLike = MODELS_ROOT) -> dict[str, dict[str, str]]:
    """Registered models: ``{name: {version: sha256}}``."""
    return _index(Path(root))


def _version_key(version: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in version.split("."))


def resolve_model(name: str, version: str | None = None, root: str | os.PathLike = MODELS_ROOT) -> tuple[str, str]:
    """``(name, version)`` with the newest registered version when none is given."""
    models = list_models(root)
    if name not in models:
        known = ", ".join(sorted(models)) or "none"
        raise ModelArtifactError(f"no model {name!r} in {root} (registered: {known})")
    if version is None:
        version = max(models[name], key=_version_key)
    elif version not in models[name]:
        raise ModelArtifactError(f"model {name!r} has no version {version!r} (registered: {', '.join(sorted(models[name]))})")
    return name, version


def open_artifact(name: str, version: str | None = None, root: str | os.PathLike = MODELS_ROOT) -> ModelArtifact:
    """Read and verify one artifact.

    Raises
    ------
    ModelArtifactError
        Unknown model or version; a file listed in SHA256SUMS missing or
        changed; a file present but not listed; SHA256SUMS not the one the
        registry lists; a card naming another model or version.
    """
    root = Path(root)
    name, version = resolve_model(name, version, root)
    folder = root / name / version
    sums_path = folder / SUMS
    try:
        sums = sums_path.read_bytes()
    except OSError:
        raise ModelArtifactError(f"{sums_path}: missing; the artifact cannot be verified") from None
    expected = list_models(root)[name][version]
    if _sha256(sums) != expected:
        raise ModelArtifactError(f"{sums_path}: sha256 {_sha256(sums)[:12]} is not the registered {expected[:12]}; "
                                 "the artifact was changed after it was published")
    files: dict[str, bytes] = {}
    for line in sums.decode().splitlines():
        digest, _, file_name = line.partition("  ")
        try:
            data = (folder / file_name).read_bytes()
        except OSError:
            raise ModelArtifactError(f"{folder / file_name}: missing from the artifact") from None
        if _sha256(data) != digest:
            raise ModelArtifactError(f"{folder / file_name}: sha256 mismatch (file changed or corrupt); refusing to load")
        files[file_name] = data
    extra = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != SUMS and p.name not in files)
    if extra:
        raise ModelArtifactError(f"{folder}: files not covered by {SUMS}: {', '.join(extra)}")
    card = json.loads(files["card.json"])
    if (card.get("name"), card.get("version")) != (name, version):
        raise ModelArtifactError(f"{folder}/card.json describes {card.get('name')} {card.get('version')}, not {name} {version}")
    return ModelArtifact(folder, ModelIdentity(name, version, expected), card, files)


def check_model_identity(name: object, version: object) -> None:
    """Refuse a model name or version that is not a plain folder name.

    Raises
    ------
    ValueError
        One line: names are letters, digits, ``-`` and ``_``; versions are
        ``MAJOR.MINOR.PATCH``.
    """
    if not isinstance(name, str) or not _MODEL_NAME.fullmatch(name):
        raise ValueError(f"model name {name!r} must be letters, digits, '-' and '_' (at most 64)")
    if not isinstance(version, str) or not _MODEL_VERSION.fullmatch(version):
        raise ValueError(f"model version {version!r} must be MAJOR.MINOR.PATCH numbers, like 1.2.0")


def publish_artifact(
    name: str,
    version: str,
    files: Mapping[str, bytes],
    card: Mapping[str, Any],
    root: str | os.PathLike = MODELS_ROOT,
    *,
    card_markdown: str | None = None,
) -> ModelIdentity:
    """Write an artifact folder, its SHA256SUMS, and register it.

    ``files`` holds everything but the card (weights, config...). The card
    gets ``name``/``version`` set. A published version is never replaced:
    alerts name it by its sha256, so other content needs another version.
    The folder is written aside and renamed into place, so a full disk
    leaves no half-written artifact.

    Raises
    ------
    ValueError
        A name or version that is not a plain folder name (``MAJOR.MINOR.PATCH``
        for versions), or a version already published with other content,
        before anything is written.
    """
    check_model_identity(name, version)
    root = Path(root)
    folder = root / name / version
    contents = dict(files)
    contents["card.json"] = (json.dumps({**card, "name": name, "version": version}, indent=2) + "\n").encode()
    if card_markdown is not None:
        contents["card.md"] = card_markdown.encode()
    sums = "".join(f"{_sha256(data)}  {file_name}\n" for file_name, data in sorted(contents.items())).encode()
    same_again = folder.exists() and (folder / SUMS).is_file() and (folder / SUMS).read_bytes() == sums
    if folder.exists() and not same_again:
        check_unpublished(name, version, root)
    if not same_again:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{version}-"))
        try:
            for file_name, data in {**contents, SUMS: sums}.items():
                written = written_temp_file(staging, data, prefix=f".{file_name}.")  # on disk, fsynced
                written.chmod(0o644)
                written.rename(staging / file_name)
            fsync_dir(staging)  # one for all the names
            staging.chmod(0o755)
            staging.rename(folder)
            fsync_dir(folder.parent)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    # Registered here even for the same artifact again: a publish cut off
    # between the rename and this line is completed by running it again.
    index = _index(root)
    if index.get(name, {}).get(version) != _sha256(sums):
        index.setdefault(name, {})[version] = _sha256(sums)
        replace_file(root / INDEX, (json.dumps(index, indent=2, sort_keys=True) + "\n").encode(), mode=0o644)
    return ModelIdentity(name, version, _sha256(sums))


def check_unpublished(name: str, version: str, root: str | os.PathLike = MODELS_ROOT) -> None:
    """Raise ValueError when ``name`` ``version`` is already in the registry at ``root``.

    Trainers call it before training, not after an hour of it.
    """
    if Path(root).exists() and not Path(root).is_dir():
        raise ValueError(f"{root} is not a folder: the registry to publish into is a folder (--models)")
    if (Path(root) / name / version).exists():
        raise ValueError(f"{name} {version} is already published in {root}; a new model needs a new version "
                         "([model] version in its config)")


def load_detector(name: str, version: str | None = None, root: str | os.PathLike = MODELS_ROOT, **options: Any):
    """A :class:`~nii.detect.regions.Detector` from a verified artifact.

    The card's ``kind`` says which loader builds it; ``options`` go to that
    loader (for the contraband detector: ``device``, ``min_score``; for a
    physics rule: threshold overrides such as ``min_mass_g``; for the anomaly
    model: ``device``, ``min_score``, ``region_threshold``).
    """
    return detector_from_artifact(open_artifact(name, version, root), **options)


def detector_from_artifact(artifact: ModelArtifact, **options: Any):
    """The detector an opened artifact holds; see :func:`load_detector`."""
    kind = artifact.card.get("kind")
    if kind == "contraband-fcos":
        from nii.detect.contraband import ContrabandDetector

        return ContrabandDetector.from_artifact(artifact, **options)
    if kind == "physics-rule":
        from nii.detect.rules import RuleDetector

        return RuleDetector.from_artifact(artifact, **options)
    if kind == "anomaly":
        from nii.detect.anomaly import AnomalyDetector

        return AnomalyDetector.from_artifact(artifact, **options)
    raise ModelArtifactError(f"{artifact.folder}: unknown model kind {kind!r}")
