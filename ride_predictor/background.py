"""Periodic background work (a model refresh, a metrics export), started by the caller when due.

Under Cloud Run's request-based billing the CPU is throttled between requests, so no timer
thread would run reliably: instead, the service asks for the work that is due after each
message (``PeriodicWork.start_if_due``), which starts it in a thread of its own and returns at
once. A request never runs the work, never waits for it, and never sees it fail: the work
reports its own failures, and this module logs any exception it lets through.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

logger = logging.getLogger("ride_predictor.background")


class PeriodicWork:
    """``work`` run in a background thread at most once per ``period_seconds``, one run at a time.

    Nothing is due until ``schedule()`` is called; then the work is due ``period_seconds`` later
    and, once started by ``start_if_due``, due again ``period_seconds`` after the run ends (a
    run slower than the period starts no other at once behind it). ``stop()`` ends it.
    """

    def __init__(
        self,
        name: str,
        work: Callable[[], None],
        period_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.period_seconds = period_seconds
        self._work = work
        self._clock = clock
        self._lock = threading.Lock()
        self._due: float | None = None  # clock time; None: not scheduled
        self._running = False
        self._stopped = False

    @property
    def running(self) -> bool:
        """Whether a run is under way."""
        return self._running

    def schedule(self) -> None:
        """Make the work due one period from now (unless stopped)."""
        with self._lock:
            if not self._stopped:
                self._due = self._clock() + self.period_seconds

    def stop(self) -> None:
        """No run starts after this one (a run under way finishes)."""
        with self._lock:
            self._stopped = True
            self._due = None

    def start_if_due(self) -> bool:
        """Start one run in the background if the work is due and none runs; never waits for
        it and never raises. Returns whether a run was started."""
        due = self._due
        if due is None or self._clock() < due:  # the usual case: no lock taken
            return False
        with self._lock:
            if self._running or self._due is None or self._clock() < self._due:
                return False
            self._running = True
        try:
            threading.Thread(target=self._run, name=self.name, daemon=True).start()
        except RuntimeError as error:  # no thread to be had: the next period tries again
            logger.warning(
                "background work not started",
                extra={"fields": {"work": self.name, "reason": repr(error)}},
            )
            self._finish()
            return False
        return True

    def _run(self) -> None:
        try:
            self._work()
        except Exception as error:  # the work logs its own failures; this is a net
            logger.error(
                "background work failed",
                extra={"fields": {"work": self.name, "reason": repr(error)}},
            )
        finally:
            self._finish()

    def _finish(self) -> None:
        with self._lock:
            self._running = False
            if not self._stopped:
                self._due = self._clock() + self.period_seconds
