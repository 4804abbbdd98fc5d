"""The Google Pub/Sub emulator and gcp-storage-emulator, each on a free port."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from devstack.processes import ManagedProcess, free_port, http_status, wait_until

STARTUP_TIMEOUT_SECONDS = 90.0


class PubSubEmulator:
    """``gcloud beta emulators pubsub start`` on 127.0.0.1; ready once it answers the REST API."""

    def __init__(
        self,
        project_id: str,
        log_dir: Path,
        port: int | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.project_id = project_id
        self.log_dir = log_dir
        self.port = port or free_port()
        self.extra_env = dict(extra_env or {})
        self._process: ManagedProcess | None = None

    @property
    def host(self) -> str:
        """What ``PUBSUB_EMULATOR_HOST`` must hold."""
        return f"127.0.0.1:{self.port}"

    @property
    def process(self) -> ManagedProcess | None:
        """The running emulator process, if started."""
        return self._process

    def start(self) -> PubSubEmulator:
        """Start the emulator and wait until it lists topics."""
        data_dir = self.log_dir / f"pubsub-data-{self.port}"
        data_dir.mkdir(parents=True, exist_ok=True)
        self._process = ManagedProcess(
            "pubsub-emulator",
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
            env={**os.environ, **self.extra_env},
        )
        topics_url = f"http://{self.host}/v1/projects/{self.project_id}/topics"
        wait_until(
            lambda: http_status(topics_url) == 200,
            "the Pub/Sub emulator",
            STARTUP_TIMEOUT_SECONDS,
            alive=self._process.is_running,
        )
        return self

    def stop(self) -> None:
        """Stop the emulator and its Java process."""
        if self._process is not None:
            self._process.stop()
            self._process = None


class StorageEmulator:
    """gcp-storage-emulator (in memory) on 127.0.0.1; ready once it lists buckets."""

    def __init__(
        self,
        log_dir: Path,
        port: int | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.log_dir = log_dir
        self.port = port or free_port()
        self.extra_env = dict(extra_env or {})
        self._process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        """What ``STORAGE_EMULATOR_HOST`` must hold."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def process(self) -> ManagedProcess | None:
        """The running emulator process, if started."""
        return self._process

    def start(self) -> StorageEmulator:
        """Start the emulator and wait until it answers the JSON API."""
        self._process = ManagedProcess(
            "storage-emulator",
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
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.extra_env},
        )
        wait_until(
            lambda: http_status(f"{self.url}/storage/v1/b") == 200,
            "the GCS emulator",
            STARTUP_TIMEOUT_SECONDS,
            alive=self._process.is_running,
        )
        return self

    def stop(self) -> None:
        """Stop the emulator."""
        if self._process is not None:
            self._process.stop()
            self._process = None
