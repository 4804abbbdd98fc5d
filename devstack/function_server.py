"""functions-framework serving ``main.predict_duration`` as a local process."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from devstack.processes import LocalService, http_status

REPO_ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT_SECONDS = 60.0


class FunctionServer(LocalService):
    """``functions-framework --target predict_duration --signature-type cloudevent`` on 127.0.0.1.

    ``env`` is the function's configuration (``docs/design.md``); it is added to this process's
    environment. Pub/Sub push requests to ``push_endpoint(...)`` become CloudEvents.
    """

    service_name = "function"
    # gunicorn's graceful stop waits up to 30 s for the emulator's keep-alive push connections
    # to close, which they never do; the function has nothing to save, so it is killed sooner.
    stop_grace_seconds = 2.0

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
        super().__init__(port)
        self.env = dict(env)
        self.log_dir = log_dir
        self.source = source
        self.target = target
        self.python = python
        self.log_path = log_dir / log_name

    @property
    def url(self) -> str:
        """Base URL of the function."""
        return f"http://127.0.0.1:{self.port}"

    def push_endpoint(self, project_id: str, topic: str) -> str:
        """The push endpoint for a subscription on ``topic``: functions-framework reads the
        topic from the path when it turns the push request into a CloudEvent."""
        return f"{self.url}/projects/{project_id}/topics/{topic}"

    def start(self) -> FunctionServer:
        """Start the server and wait until it answers HTTP."""
        self._launch(
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
            {**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
            # Any HTTP answer means the server is up (a GET on a CloudEvent function is a 4xx).
            lambda: http_status(self.url) is not None,
            STARTUP_TIMEOUT_SECONDS,
            cwd=self.source.parent,
        )
        return self
