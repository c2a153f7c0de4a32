"""What the recipe scripts here share: run ``main`` with bad input as one line."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path


def run(main: Callable[[], int]) -> None:
    """Exit with ``main()``'s status; a bad config, model or folder (ValueError,
    OSError) exits 1 with one line naming the script, and no traceback."""
    try:
        sys.exit(main())
    except (ValueError, OSError) as err:
        sys.exit(f"{Path(sys.argv[0]).name}: {err}")
