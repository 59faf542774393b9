"""A deterministic train / val split for datasets exported without split lists.

Items are ranked by the SHA-1 of their key (an image's path relative to the dataset folder,
``/``-separated) and the first ``round(n * val_fraction)`` of them, at least one, form the
validation split. The split depends on the keys only: not on the order the file system lists
them in, the platform, Python's hash seed or the run's seed; adding images moves only those
whose rank crosses the cut.
"""

from __future__ import annotations

import hashlib
from typing import Sequence


def check_val_fraction(val_fraction: float) -> float:
    """``val_fraction`` when it is in (0, 1); a ``ValueError`` otherwise."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    return float(val_fraction)


def holdout_split(keys: Sequence[str], val_fraction: float) -> list[bool]:
    """For each key, whether it belongs to the validation split (see the module docstring).

    One key alone stays in training; two or more give at least one validation item and at
    least one training item.
    """
    check_val_fraction(val_fraction)
    if len(keys) < 2:
        return [False] * len(keys)
    num_val = min(max(1, round(len(keys) * val_fraction)), len(keys) - 1)
    ranked = sorted(range(len(keys)), key=lambda i: (hashlib.sha1(keys[i].encode()).hexdigest(), keys[i]))
    chosen = set(ranked[:num_val])
    return [i in chosen for i in range(len(keys))]
