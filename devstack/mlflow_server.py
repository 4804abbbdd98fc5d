"""An MLflow tracking server (``mlflow server``) with its registry in SQLite and its artifacts
in the GCS emulator's bucket, on a free port."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from importlib.metadata import version
from pathlib import Path

from devstack.processes import LocalService, http_status

STARTUP_TIMEOUT_SECONDS = 120.0


class MlflowServer(LocalService):
    """``mlflow server`` on 127.0.0.1; ready once its registry API answers a search.

    ``--no-serve-artifacts``: clients read and write ``artifact_root`` (``gs://…``) directly, as
    the function does in GCP with its bucket grant, so the server never touches the bucket.
    """

    service_name = "mlflow-server"

    def __init__(
        self,
        backend_db: Path,
        artifact_root: str,
        log_dir: Path,
        port: int | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(port)
        self.backend_db = backend_db
        self.artifact_root = artifact_root
        self.log_dir = log_dir
        self.extra_env = dict(extra_env or {})

    @property
    def url(self) -> str:
        """What ``MLFLOW_TRACKING_URI`` must hold."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def empty_db(self) -> Path:
        """A copy of a freshly created registry, beside ``backend_db``: creating the tables
        (about fifty migrations) takes seconds of every fresh start otherwise. One per MLflow
        version, since the server refuses a database of another schema."""
        return self.backend_db.with_name(f"empty-mlflow-{version('mlflow')}.db")

    def start(self, fresh: bool = False) -> MlflowServer:
        """Start the server on the SQLite file ``backend_db`` and wait until it answers;
        ``fresh``: on an empty registry (whatever ``backend_db`` held is deleted)."""
        self.backend_db.parent.mkdir(parents=True, exist_ok=True)
        make_empty_db = False
        if fresh:
            self.backend_db.unlink(missing_ok=True)
            if self.empty_db.exists():
                shutil.copyfile(self.empty_db, self.backend_db)
            else:
                make_empty_db = True
        self._launch(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--host=127.0.0.1",
                f"--port={self.port}",
                f"--backend-store-uri=sqlite:///{self.backend_db}",
                f"--default-artifact-root={self.artifact_root}",
                "--no-serve-artifacts",
                "--workers=1",
            ],
            self.log_dir / "mlflow-server.log",
            {
                **os.environ,
                "PYTHONUNBUFFERED": "1",
                # The server's background job runner (a dozen huey consumers for GenAI
                # evaluation jobs) is of no use to a model registry and costs CPU at start.
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                **self.extra_env,
            },
            lambda: http_status(f"{self.url}/api/2.0/mlflow/registered-models/search") == 200,
            STARTUP_TIMEOUT_SECONDS,
        )
        if make_empty_db:  # nothing has written to it yet but the server's own set-up
            shutil.copyfile(self.backend_db, self.empty_db)
        return self
