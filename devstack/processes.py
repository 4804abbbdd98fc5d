"""Start local services as process groups, wait until they answer, and stop them for good."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

_PR_SET_CHILD_SUBREAPER = 36  # from <linux/prctl.h>
# Interval between readiness probes: the wait ends as soon as a probe succeeds.
_POLL_INTERVAL_SECONDS = 0.05


class ServiceError(RuntimeError):
    """A local service failed to start or to answer in time."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so context managers and ``finally`` blocks tear down.

    Python's default for SIGTERM kills the process at once; a command that owns emulators and
    servers (``python -m devstack``, ``python -m bench``) must stop them first.
    """

    def handler(signum: int, frame: Any) -> NoReturn:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def wait_until(
    ready: Callable[[], bool],
    what: str,
    timeout_seconds: float = 60.0,
    alive: Callable[[], bool] = lambda: True,
) -> None:
    """Poll ``ready`` until it returns True; fail if ``alive`` turns False or time runs out."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        if ready():
            return
        if not alive():
            raise ServiceError(f"{what} exited before it was ready")
        if time.monotonic() > deadline:
            raise ServiceError(f"{what} not ready after {timeout_seconds:.0f}s")
        time.sleep(_POLL_INTERVAL_SECONDS)


def http_status(url: str, timeout_seconds: float = 2.0) -> int | None:
    """The HTTP status ``url`` answers with, or None if nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_seconds) as response:  # noqa: S310
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except (OSError, urllib.error.URLError):
        return None


def _adopt_orphans() -> None:
    """Make this process the reaper of its orphaned descendants (Linux's child subreaper).

    When a group leader exits before its children (gcloud before the emulator's Java), the
    children are re-parented to us instead of to PID 1, so ``group_members`` can reap them: in
    containers whose PID 1 never reaps, they would otherwise linger as zombies.
    """
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


class ManagedProcess:
    """A child process in its own process group, logging to a file; ``stop`` kills the group.

    Killing the whole group matters: ``gcloud beta emulators pubsub start`` runs the emulator
    as a Java grandchild that outlives its parent if only the parent is signalled.
    """

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.command = list(command)
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        _adopt_orphans()
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            self.command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        """The leader's pid, which is also the process group id."""
        return self.process.pid

    def is_running(self) -> bool:
        """Whether the group leader is still running."""
        return self.process.poll() is None

    def stop(self, grace_seconds: float = 10.0) -> None:
        """Stop the whole process group (see ``stop_process_group``) and reap the leader."""
        stop_process_group(self.pid, grace_seconds)
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._log.close()


class LocalService:
    """Base of the stack's services: one ``ManagedProcess`` on ``port``, ready when it answers."""

    service_name = "service"
    # How long ``stop`` lets the service shut down on SIGTERM before it is killed.
    stop_grace_seconds = 10.0

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._process: ManagedProcess | None = None

    @property
    def process(self) -> ManagedProcess | None:
        """The running process, if started."""
        return self._process

    def _launch(
        self,
        command: Sequence[str],
        log_path: Path,
        env: Mapping[str, str],
        ready: Callable[[], bool],
        timeout_seconds: float,
        cwd: Path | None = None,
    ) -> None:
        """Start ``command`` and wait until ``ready``; stop it again if it never gets there."""
        self._process = ManagedProcess(self.service_name, command, log_path, env=env, cwd=cwd)
        try:
            wait_until(ready, self.service_name, timeout_seconds, alive=self._process.is_running)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the service's whole process group (idempotent)."""
        if self._process is not None:
            self._process.stop(self.stop_grace_seconds)
            self._process = None


def stop_process_group(process_group_id: int, grace_seconds: float = 10.0) -> None:
    """SIGTERM every process of the group, then SIGKILL what is left after ``grace_seconds``.

    Returns once no live process of the group remains.
    """
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process_group_id, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace_seconds
        while group_members(process_group_id):
            if time.monotonic() > deadline:
                break
            time.sleep(_POLL_INTERVAL_SECONDS)
        else:
            return


def group_members(process_group_id: int) -> list[int]:
    """Pids of the live (non-zombie) processes in a process group, read from ``/proc``."""
    try:
        while os.waitpid(-process_group_id, os.WNOHANG)[0] > 0:  # reap our own exited children
            pass
    except ChildProcessError:
        pass
    members = []
    for stat_path in Path("/proc").glob("[0-9]*/stat"):
        try:
            stat = stat_path.read_text()
        except OSError:
            continue
        # Fields after the parenthesised command: state, ppid, pgrp, ...
        state, _ppid, pgrp = stat.rsplit(")", 1)[1].split()[:3]
        if int(pgrp) == process_group_id and state != "Z":
            members.append(int(stat_path.parent.name))
    return members


def group_alive(process_group_id: int) -> bool:
    """Whether any live process of the group remains."""
    return bool(group_members(process_group_id))
