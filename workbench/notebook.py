"""The notebooks' size knob: full-size runs for people, small ones for the test command.

``python3 dev.py test`` sets ``WORKBENCH_NOTEBOOK_SMALL=1`` so that nbval runs every notebook
top to bottom in seconds; the notebooks read their sizes through :func:`sized`, so the full
value is what a reader sees and gets::

    N_STEPS = wb.sized(4000, small=400)   # 4000 steps; 400 under the test command
"""

from __future__ import annotations

import os
from typing import TypeVar

__all__ = ["SMALL_ENV", "small_mode", "sized"]

SMALL_ENV = "WORKBENCH_NOTEBOOK_SMALL"

T = TypeVar("T")


def small_mode() -> bool:
    """True when ``$WORKBENCH_NOTEBOOK_SMALL`` is ``1``/``true``/``yes`` (the test command)."""
    value = os.environ.get(SMALL_ENV, "").strip().lower()
    if value in ("", "0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise ValueError(f"{SMALL_ENV}={os.environ[SMALL_ENV]!r}: use 1 (small runs) or 0 (full size)")


def sized(full: T, small: T) -> T:
    """``full``, or ``small`` in small mode (:func:`small_mode`)."""
    return small if small_mode() else full
