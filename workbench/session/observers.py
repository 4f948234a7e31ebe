"""Observer lists: callbacks by event name, called safely from worker threads."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["Observers"]


class Observers:
    """Callbacks for each of ``events``. :meth:`add` returns a remover; :meth:`notify` calls
    every callback of an event and logs (never raises) an observer's error, so a broken panel
    cannot kill the thread that reports."""

    def __init__(self, events: Sequence[str], logger: logging.Logger):
        self.events = tuple(events)
        self._lists: dict[str, list[Callable]] = {e: [] for e in self.events}
        self._log = logger

    def add(self, callback: Callable[[Any], None], event: str) -> Callable[[], None]:
        if event not in self._lists:
            raise ValueError(f"unknown event {event!r}; choose one of {list(self.events)}")
        self._lists[event].append(callback)

        def remove():
            if callback in self._lists[event]:
                self._lists[event].remove(callback)

        return remove

    def notify(self, event: str, payload) -> None:
        for cb in list(self._lists[event]):
            try:
                cb(payload)
            except Exception:  # noqa: BLE001 - an observer must never kill the caller
                self._log.exception("workbench observer %r failed on %r", cb, event)
