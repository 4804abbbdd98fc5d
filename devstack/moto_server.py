"""moto's standalone server: a local AWS API (Kinesis, S3, …) on a free port.

boto3 reaches it through ``AWS_ENDPOINT_URL_KINESIS`` / ``AWS_ENDPOINT_URL_S3`` (MLflow's S3
artifact repository through ``MLFLOW_S3_ENDPOINT_URL``), with any credentials.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from devstack.processes import ManagedProcess, free_port, http_status, wait_until

STARTUP_TIMEOUT_SECONDS = 60.0
REGION = "us-east-1"


class MotoServer:
    """``python -m moto.server`` on 127.0.0.1; ready once its own API answers."""

    def __init__(self, log_dir: Path, port: int | None = None) -> None:
        self.log_dir = log_dir
        self.port = port or free_port()
        self._process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        """The endpoint URL for every AWS service moto serves."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def process(self) -> ManagedProcess | None:
        """The running server process, if started."""
        return self._process

    def client_environment(self) -> dict[str, str]:
        """Environment variables that point boto3 and MLflow at this server."""
        return {
            "AWS_ENDPOINT_URL_KINESIS": self.url,
            "AWS_ENDPOINT_URL_S3": self.url,
            "MLFLOW_S3_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
        }

    def start(self) -> MotoServer:
        """Start the server and wait until ``/moto-api/data.json`` answers."""
        self._process = ManagedProcess(
            "moto-server",
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            self.log_dir / "moto-server.log",
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        wait_until(
            lambda: http_status(f"{self.url}/moto-api/data.json") == 200,
            "the moto server",
            STARTUP_TIMEOUT_SECONDS,
            alive=self._process.is_running,
        )
        return self

    def stop(self) -> None:
        """Stop the server."""
        if self._process is not None:
            self._process.stop()
            self._process = None
