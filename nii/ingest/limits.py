"""Limits a reader checks from the header, before it allocates anything."""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable

from nii.ingest.errors import CorruptScanError, ScanTooLargeError

__all__ = ["ReadLimits", "check_pixel_budget"]


@dataclasses.dataclass(frozen=True)
class ReadLimits:
    """What a reader accepts.

    Parameters
    ----------
    max_pixels : int
        Most samples (pixels x channels x frames) one scan may hold. The
        default, 300 million, admits a 1000-slice 512x512 CT volume and any
        cargo radiograph, and refuses a header claiming 60000x60000 before a
        byte is allocated.
    max_side : int
        Longest image side accepted, in pixels.
    """

    max_pixels: int = 300_000_000
    max_side: int = 65_535

    def __post_init__(self) -> None:
        if self.max_pixels < 1 or self.max_side < 1:
            raise ValueError(f"limits must be positive, got {self}")


def check_pixel_budget(shape: Iterable[int], limits: ReadLimits) -> tuple[int, ...]:
    """Refuse zero, negative or absurd dimensions before allocating.

    Parameters
    ----------
    shape : iterable of int
        Dimensions claimed by a header, channels and frames included.
    limits : ReadLimits
        The budget.

    Returns
    -------
    tuple of int
        The shape, as ints.

    Raises
    ------
    CorruptScanError
        If any dimension is zero or negative.
    ScanTooLargeError
        If a side or the total exceeds the budget.
    """
    dims = tuple(int(d) for d in shape)
    if not dims or any(d <= 0 for d in dims):
        raise CorruptScanError(f"header claims empty or negative dimensions {dims}")
    if max(dims) > limits.max_side:
        raise ScanTooLargeError(f"header claims dimensions {dims}; a side exceeds the limit of {limits.max_side}")
    total = math.prod(dims)
    if total > limits.max_pixels:
        raise ScanTooLargeError(
            f"header claims {total:,} samples {dims}, over the pixel budget of {limits.max_pixels:,}"
        )
    return dims
