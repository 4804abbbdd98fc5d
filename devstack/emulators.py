"""The Google Pub/Sub emulator and gcp-storage-emulator, each on a free port."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from devstack.processes import LocalService, http_status

STARTUP_TIMEOUT_SECONDS = 90.0


class PubSubEmulator(LocalService):
    """``gcloud beta emulators pubsub start`` on 127.0.0.1; ready once it answers the REST API."""

    service_name = "pubsub-emulator"

    def __init__(
        self,
        project_id: str,
        log_dir: Path,
        port: int | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(port)
        self.project_id = project_id
        self.log_dir = log_dir
        self.extra_env = dict(extra_env or {})

    @property
    def host(self) -> str:
        """What ``PUBSUB_EMULATOR_HOST`` must hold."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> PubSubEmulator:
        """Start the emulator (it runs as a Java child of gcloud) and wait until it lists topics."""
        data_dir = self.log_dir / f"pubsub-data-{self.port}"
        data_dir.mkdir(parents=True, exist_ok=True)
        topics_url = f"http://{self.host}/v1/projects/{self.project_id}/topics"
        self._launch(
            [
                "gcloud",
                "beta",
                "emulators",
                "pubsub",
                "start",
                f"--host-port={self.host}",
                f"--project={self.project_id}",
                f"--data-dir={data_dir}",
                "--quiet",
            ],
            self.log_dir / "pubsub-emulator.log",
            {**os.environ, **self.extra_env},
            lambda: http_status(topics_url) == 200,
            STARTUP_TIMEOUT_SECONDS,
        )
        return self


class StorageEmulator(LocalService):
    """gcp-storage-emulator (in memory) on 127.0.0.1; ready once it lists buckets."""

    service_name = "storage-emulator"

    def __init__(
        self,
        log_dir: Path,
        port: int | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(port)
        self.log_dir = log_dir
        self.extra_env = dict(extra_env or {})

    @property
    def url(self) -> str:
        """What ``STORAGE_EMULATOR_HOST`` must hold."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> StorageEmulator:
        """Start the emulator and wait until it answers the JSON API."""
        self._launch(
            [
                sys.executable,
                "-m",
                "gcp_storage_emulator",
                "start",
                "--host=127.0.0.1",
                f"--port={self.port}",
                "--in-memory",
            ],
            self.log_dir / "storage-emulator.log",
            {**os.environ, "PYTHONUNBUFFERED": "1", **self.extra_env},
            lambda: http_status(f"{self.url}/storage/v1/b") == 200,
            STARTUP_TIMEOUT_SECONDS,
        )
        return self
