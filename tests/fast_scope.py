"""What ``make test-fast`` (``pytest --fast``) leaves out, and a guard that it starts none of it.

The fast run is for the edit-test loop: tests that need nothing but the virtual environment
(in-process fakes, functions-framework's test client, a model trained in the session, small
Python subprocesses). It leaves out every test marked with one of ``LEFT_OUT``:

- ``emulator`` is set here on every test that uses, directly or through other fixtures, one
  of ``PROCESS_FIXTURES``: a new test on those fixtures is left out without anyone marking it.
  Tests that start the stack or a server themselves carry the mark by hand.
- ``gcloud`` and ``network`` are marked by hand, where a test runs the gcloud CLI or asks PyPI.
- ``slow``, by hand, on tests that take seconds by design: they wait out real timeouts (the
  publisher's), repeat many model swaps (the refresh's memory and consistency tests) or run
  pytest again (this scope's own tests). ``make test-fast`` lists its slowest tests, so that
  new ones show.

A test that slips through unmarked fails under ``--fast`` instead of quietly running slow:
the run puts stand-ins for ``gcloud`` and ``java`` first on ``PATH`` (its subprocesses inherit
them), lets no ``devstack`` process start, and sets ``PIP_NO_INDEX``.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import pytest

from devstack.processes import ManagedProcess

# The conftest fixtures that start a process (every emulator and server fixture builds on one).
PROCESS_FIXTURES = frozenset({"pubsub_emulator", "storage_emulator", "moto_server"})
LEFT_OUT = ("emulator", "gcloud", "network", "slow")
# What the stand-ins exit with: not 0, and not 1 or 127, which tests may expect of a real tool.
STAND_IN_EXIT_STATUS = 97
_STAND_IN = """#!/bin/sh
echo "make test-fast runs no $(basename "$0"): the test that ran it needs the marker of" \\
     "what it uses (emulator, gcloud or network; tests/fast_scope.py)" >&2
exit {status}
"""


class NotInTheFastRunError(RuntimeError):
    """A test run by ``--fast`` started what the fast run leaves out: it needs a marker."""


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fast",
        action="store_true",
        help="leave out the tests marked " + ", ".join(LEFT_OUT) + " (make test-fast)",
    )


def is_left_out(item: pytest.Item) -> bool:
    """Whether the fast run leaves ``item`` out."""
    return any(item.get_closest_marker(name) is not None for name in LEFT_OUT)


# Before pytest's own -m selection, so that `-m "not emulator"` sees the marks set here.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.emulator)
    if config.getoption("fast"):
        kept = [item for item in items if not is_left_out(item)]
        left_out = [item for item in items if is_left_out(item)]
        if left_out:
            config.hook.pytest_deselected(items=left_out)
        items[:] = kept


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("fast"):
        patch = pytest.MonkeyPatch()
        stand_in_dir = Path(tempfile.mkdtemp(prefix="test-fast-"))
        guard_the_fast_run(patch, stand_in_dir)
        config.add_cleanup(lambda: shutil.rmtree(stand_in_dir, ignore_errors=True))
        config.add_cleanup(patch.undo)


def guard_the_fast_run(patch: pytest.MonkeyPatch, stand_in_dir: Path) -> None:
    """Make what the fast run leaves out fail at once, in this process and its children."""
    for tool in ("gcloud", "java"):
        stand_in = stand_in_dir / tool
        stand_in.write_text(_STAND_IN.format(status=STAND_IN_EXIT_STATUS))
        stand_in.chmod(stand_in.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    patch.setenv("PATH", f"{stand_in_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    patch.setenv("PIP_NO_INDEX", "1")

    def refuse(
        self: ManagedProcess, name: str, command: Sequence[str], *args: Any, **kwargs: Any
    ) -> NoReturn:
        raise NotInTheFastRunError(
            f"make test-fast starts no {name} ({' '.join(command)}): mark the test `emulator` "
            "or have it use an emulator fixture (tests/fast_scope.py)"
        )

    patch.setattr(ManagedProcess, "__init__", refuse)
