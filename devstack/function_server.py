"""functions-framework serving ``main.predict_duration`` as a local process."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from devstack.processes import ManagedProcess, free_port, http_status, wait_until

REPO_ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT_SECONDS = 60.0


class FunctionServer:
    """``functions-framework --target predict_duration --signature-type cloudevent`` on 127.0.0.1.

    ``env`` is the function's configuration (``DESIGN.md``); it is added to this process's
    environment. Pub/Sub push requests to ``push_endpoint(...)`` become CloudEvents.
    """

    def __init__(
        self,
        env: Mapping[str, str],
        log_dir: Path,
        port: int | None = None,
        source: Path = REPO_ROOT / "main.py",
        target: str = "predict_duration",
        python: str = sys.executable,
        log_name: str = "function.log",
    ) -> None:
        self.env = dict(env)
        self.log_dir = log_dir
        self.port = port or free_port()
        self.source = source
        self.target = target
        self.python = python
        self.log_path = log_dir / log_name
        self._process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        """Base URL of the function."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def process(self) -> ManagedProcess | None:
        """The running server process, if started."""
        return self._process

    def push_endpoint(self, project_id: str, topic: str) -> str:
        """The push endpoint for a subscription on ``topic``: functions-framework reads the
        topic from the path when it turns the push request into a CloudEvent."""
        return f"{self.url}/projects/{project_id}/topics/{topic}"

    def start(self) -> FunctionServer:
        """Start the server and wait until it answers HTTP."""
        self._process = ManagedProcess(
            "function",
            [
                self.python,
                "-m",
                "functions_framework",
                f"--target={self.target}",
                f"--source={self.source}",
                "--signature-type=cloudevent",
                "--host=127.0.0.1",
                f"--port={self.port}",
            ],
            self.log_path,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
            cwd=self.source.parent,
        )
        # Any HTTP answer means the server is up (a GET on a CloudEvent function is a 4xx).
        wait_until(
            lambda: http_status(self.url) is not None,
            "functions-framework",
            STARTUP_TIMEOUT_SECONDS,
            alive=self._process.is_running,
        )
        return self

    def stop(self) -> None:
        """Stop the server (gunicorn's master and workers: the whole process group)."""
        if self._process is not None:
            self._process.stop()
            self._process = None
