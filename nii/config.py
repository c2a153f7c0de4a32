"""Reading the small TOML files that configure nii (pipeline, training, rules)."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

__all__ = ["read_toml"]


def read_toml(path: str | os.PathLike, what: str) -> dict[str, Any]:
    """The TOML file at ``path`` as a dict.

    Raises
    ------
    ValueError
        One line naming the file and ``what`` it should have been ("the
        pipeline config"), when it cannot be read or is not valid TOML.
    """
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except OSError as err:
        raise ValueError(f"{path}: cannot read {what} ({err.strerror or err})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: {what} is not valid TOML ({err})") from None
