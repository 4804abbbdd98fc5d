"""The whole local flow: Stream A → push → functions-framework → Stream B, on emulators.

``LocalStack`` starts the Pub/Sub emulator, gcp-storage-emulator and an MLflow tracking server
(``mlflow server``, registry in SQLite, artifacts in the GCS emulator's bucket) on free ports,
registers the MLflow model as version 1 of ``ride-duration`` with the alias ``champion`` (its
files land in ``gs://<bucket>/mlflow/…``), creates the topics and subscriptions, serves the
function with ``MODEL_URI=models:/ride-duration@champion`` and the environment of
``docs/design.md``, and connects Stream A to it with a push subscription. Used as a context
manager it tears everything down on normal exit, on Ctrl-C and on error. The push subscription is
production's (``push-subscription.env``): ack deadline, backoff, dead-letter policy, no expiry.

The GCS emulator keeps its data in memory, so the registry is rebuilt at every start (a fresh
SQLite file): the two always agree, across ``make up``/``make down`` and reruns.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from devstack.emulators import PubSubEmulator, StorageEmulator
from devstack.function_server import REPO_ROOT, FunctionServer
from devstack.mlflow_server import MlflowServer
from devstack.processes import ManagedProcess, group_members, stop_process_group
from devstack.pubsub_admin import PubSubAdmin
from devstack.push_subscription import PushSettings, load_push_settings
from devstack.storage import storage_client

DEFAULT_WORK_DIR = REPO_ROOT / ".stack"
# MLflow's usage telemetry: nothing to send from a local stack, and its flush at exit waits for
# a network that is not there, which would hold every stop for seconds.
NO_TELEMETRY = {"MLFLOW_DISABLE_TELEMETRY": "true"}
# Every process of a stack (and whatever it spawns) carries this variable, set to the stack's
# work dir, so that leftovers can be found: see ``stack_processes``.
STACK_TAG_VARIABLE = "DEVSTACK_WORK_DIR"


@dataclass(frozen=True)
class StackConfig:
    """Names and places of the local stack (the defaults are the tutorial's names)."""

    project_id: str = "local-project"
    input_topic: str = "taxi-ride-streaming"
    output_topic: str = "ride-predictions"
    output_subscription: str = "ride-predictions-sub"
    dead_letter_topic: str = "ride-predictions-dead-letter"
    dead_letter_subscription: str = "ride-predictions-dead-letter-sub"
    push_subscription: str = "taxi-ride-streaming-push"
    bucket: str = "mlflow-artifacts"
    registered_model: str = "ride-duration"
    alias: str = "champion"
    work_dir: Path = DEFAULT_WORK_DIR
    # An MLflow model directory to serve; None: reuse the stack's cached one or train it.
    model_dir: Path | None = None
    # The function's MODEL_REFRESH_SECONDS: short, so that a promotion shows within seconds.
    model_refresh_seconds: float = 1.0
    function_env: dict[str, str] = field(default_factory=dict)
    # Stream A's push subscription: production's settings (push-subscription.env, which
    # deploy.sh reads too); tests may shorten the delays.
    push_settings: PushSettings = field(default_factory=load_push_settings)

    @property
    def model_uri(self) -> str:
        """What the function serves: the registry alias."""
        return f"models:/{self.registered_model}@{self.alias}"

    @property
    def artifact_root(self) -> str:
        """The tracking server's ``--default-artifact-root``: the GCS emulator's bucket."""
        return f"gs://{self.bucket}/mlflow"

    @property
    def log_dir(self) -> Path:
        """Where every service writes its log."""
        return self.work_dir / "logs"


def step(message: str) -> None:
    """Progress for the slow steps, on stderr so stdout stays the demo's output."""
    print(f"… {message}", file=sys.stderr, flush=True)


# The stack's two models: the one it serves first, and the one the demo promotes (trained on
# other rides, so that its predictions differ).
MODEL_TRAINING_ARGS = {"model": ["--seed=42"], "model-v2": ["--seed=2024", "--zones=40"]}


def trained_model(config: StackConfig, name: str = "model") -> Path:
    """``work_dir/<name>``: an MLflow model directory trained with ``MODEL_TRAINING_ARGS[name]``
    on the first run, reused after."""
    cached = config.work_dir / name
    if (cached / "MLmodel").exists():
        step(f"reusing the model in {cached}")
        return cached
    step(f"training {name} on synthetic rides (first run only)")
    from training.train import main as train_main

    mlflow_dir = config.work_dir / "mlflow"
    mlflow_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.redirect_stdout(sys.stderr):  # stdout is the demo's output
        logged = train_main(
            [
                f"--tracking-uri=sqlite:///{mlflow_dir / 'mlflow.db'}",
                f"--artifact-location={mlflow_dir / 'artifacts'}",
                "--experiment=local-stack",
                *MODEL_TRAINING_ARGS[name],
            ]
        )
    shutil.copytree(logged.artifact_location, cached)
    return cached


def prepare_model(config: StackConfig) -> Path:
    """The model directory to serve: the configured one, the cached one, or a fresh one."""
    if config.model_dir is not None:
        return config.model_dir
    return trained_model(config)


@dataclass(frozen=True)
class StackState:
    """What ``make down`` and the tests need to find a running stack again."""

    project_id: str
    pubsub_host: str
    storage_url: str
    mlflow_url: str
    function_url: str
    model_uri: str
    model_version: str
    process_groups: dict[str, int]
    log_dir: str

    def export_lines(self) -> list[str]:
        """Shell lines pointing the Google clients, MLflow and the tutorial's gcloud commands
        here."""
        return [
            f"export PUBSUB_EMULATOR_HOST={self.pubsub_host}",
            f"export STORAGE_EMULATOR_HOST={self.storage_url}",
            f"export MLFLOW_TRACKING_URI={self.mlflow_url}",
            f"export CLOUDSDK_API_ENDPOINT_OVERRIDES_PUBSUB=http://{self.pubsub_host}/",
            "export CLOUDSDK_AUTH_ACCESS_TOKEN=local-emulator-token",
            f"export CLOUDSDK_CORE_PROJECT={self.project_id}",
            f"export FUNCTION_URL={self.function_url}",
        ]

    def gcloud_env(self) -> dict[str, str]:
        """The same settings as a dict, for running gcloud as a subprocess."""
        return dict(line.removeprefix("export ").split("=", 1) for line in self.export_lines())


class LocalStack:
    """Start with ``start()`` (or ``with LocalStack(...) as stack``); stop with ``stop()``."""

    def __init__(self, config: StackConfig | None = None) -> None:
        self.config = config or StackConfig()
        tag = {STACK_TAG_VARIABLE: str(self.config.work_dir.resolve())}
        self.pubsub_emulator = PubSubEmulator(
            self.config.project_id, self.config.log_dir, extra_env=tag
        )
        self.storage_emulator = StorageEmulator(self.config.log_dir, extra_env=tag)
        self.mlflow_server = MlflowServer(
            self.config.work_dir / "registry" / "mlflow.db",
            self.config.artifact_root,
            self.config.log_dir,
            extra_env={**tag, **NO_TELEMETRY},
        )
        self.function: FunctionServer | None = None
        self._admin: PubSubAdmin | None = None
        self._state: StackState | None = None

    @property
    def admin(self) -> PubSubAdmin:
        """Pub/Sub admin on the stack's emulator."""
        if self._admin is None:
            raise RuntimeError("the stack is not running")
        return self._admin

    @property
    def state(self) -> StackState:
        """Addresses, model and process groups of the running stack."""
        if self._state is None:
            raise RuntimeError("the stack is not running")
        return self._state

    def __enter__(self) -> LocalStack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> LocalStack:
        """Bring every part up, in dependency order; see the module docstring."""
        config = self.config
        config.log_dir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        step("starting the Pub/Sub emulator, the GCS emulator and the MLflow tracking server")
        # Side by side: each spends most of its start-up importing, on its own core. A fresh
        # registry at every start: the GCS emulator's bucket starts empty too.
        with ThreadPoolExecutor(3) as pool:
            starts = [
                pool.submit(self.pubsub_emulator.start),
                pool.submit(self.storage_emulator.start),
                pool.submit(self.mlflow_server.start, fresh=True),
            ]
            for started_service in starts:
                started_service.result()
        storage_client(self.storage_emulator.url, config.project_id).create_bucket(config.bucket)

        model_dir = prepare_model(config)
        step(f"registering the model as {config.model_uri}")
        model_version = self.promote(model_dir=model_dir)[1]

        step("creating Stream A, Stream B, the dead-letter topic and their subscriptions")
        admin = self._admin = PubSubAdmin(self.pubsub_emulator.host, config.project_id)
        for topic in (config.input_topic, config.output_topic, config.dead_letter_topic):
            admin.create_topic(topic)
        admin.create_subscription(config.output_subscription, config.output_topic)
        admin.create_subscription(config.dead_letter_subscription, config.dead_letter_topic)

        step("serving main.predict_duration with functions-framework")
        push_path = admin.subscription_path(config.push_subscription)
        self.function = FunctionServer(
            {
                "MODEL_URI": config.model_uri,
                "MODEL_REFRESH_SECONDS": str(config.model_refresh_seconds),
                "MLFLOW_TRACKING_URI": self.mlflow_server.url,
                **NO_TELEMETRY,
                "PROJECT_ID": config.project_id,
                "PUBLISH_STREAM": config.output_topic,
                "DEAD_LETTER_STREAM": config.dead_letter_topic,
                # functions-framework drops a raw push's `subscription`: dead letters name it
                # from here, as deploy.sh sets it.
                "SOURCE_SUBSCRIPTION": push_path,
                "PUBSUB_EMULATOR_HOST": self.pubsub_emulator.host,
                "STORAGE_EMULATOR_HOST": self.storage_emulator.url,
                STACK_TAG_VARIABLE: str(config.work_dir.resolve()),
                **config.function_env,
            },
            config.log_dir,
        ).start()
        admin.create_push_subscription(
            config.push_subscription,
            config.input_topic,
            self.function.push_endpoint(config.project_id, config.input_topic),
            config.push_settings,
            config.dead_letter_topic,
        )
        self._state = StackState(
            project_id=config.project_id,
            pubsub_host=self.pubsub_emulator.host,
            storage_url=self.storage_emulator.url,
            mlflow_url=self.mlflow_server.url,
            function_url=self.function.url,
            model_uri=config.model_uri,
            model_version=model_version,
            process_groups={process.name: process.pid for process in self.processes()},
            log_dir=str(config.log_dir),
        )
        step(f"stack ready in {time.perf_counter() - started:.1f}s (logs in {config.log_dir})")
        return self

    def registry_env(self) -> dict[str, str]:
        """What an MLflow client needs to change this stack's registry and write its models."""
        return {
            "MLFLOW_TRACKING_URI": self.mlflow_server.url,
            "STORAGE_EMULATOR_HOST": self.storage_emulator.url,
            **NO_TELEMETRY,
        }

    def promote(
        self, version: str | None = None, model_dir: Path | None = None
    ) -> tuple[str | None, str]:
        """Move the alias to ``version``, or to a new version registered from ``model_dir``,
        with ``python -m training.promote``; return the (old, new) versions it printed."""
        option = f"--version={version}" if version is not None else f"--model-dir={model_dir}"
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "training.promote",
                f"--name={self.config.registered_model}",
                f"--alias={self.config.alias}",
                option,
            ],
            env={
                **os.environ,
                **self.registry_env(),
                STACK_TAG_VARIABLE: str(self.config.work_dir.resolve()),
            },
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise RuntimeError(f"training.promote {option} failed:\n{result.stderr[-2000:]}")
        printed = dict(
            line.split("=", 1)
            for line in result.stdout.splitlines()
            if line.startswith(("old_", "new_"))
        )
        return printed["old_version"] or None, printed["new_version"]

    def processes(self) -> list[ManagedProcess]:
        """The stack's running service processes."""
        parts = (self.pubsub_emulator, self.storage_emulator, self.mlflow_server, self.function)
        return [part.process for part in parts if part is not None and part.process is not None]

    def stop(self) -> None:
        """Stop the function first (so nothing publishes into stopped emulators), then the rest."""
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        parts = (self.function, self.mlflow_server, self.storage_emulator, self.pubsub_emulator)
        for part in parts:
            if part is not None:
                part.stop()

    def save_state(self) -> Path:
        """Write the state and an ``env.sh`` to source, for ``make down`` and the user's shell."""
        state_path = self.config.work_dir / "state.json"
        state_path.write_text(json.dumps(asdict(self.state), indent=2))
        (self.config.work_dir / "env.sh").write_text("\n".join(self.state.export_lines()) + "\n")
        return state_path


def load_state(work_dir: Path = DEFAULT_WORK_DIR) -> StackState | None:
    """The state a detached stack left behind, if any."""
    state_path = work_dir / "state.json"
    if not state_path.exists():
        return None
    return StackState(**json.loads(state_path.read_text()))


def stop_detached(work_dir: Path = DEFAULT_WORK_DIR) -> list[str]:
    """Stop the process groups of a detached stack; return the names of what was running."""
    state = load_state(work_dir)
    if state is None:
        return []
    stopped = []
    for name, group in state.process_groups.items():
        if group_members(group):
            stopped.append(name)
            stop_process_group(group)
    (work_dir / "state.json").unlink()
    (work_dir / "env.sh").unlink(missing_ok=True)
    return stopped


def stack_processes(work_dir: Path) -> list[int]:
    """Pids of live processes started by the stack in ``work_dir`` (found by their tag)."""
    tag = f"{STACK_TAG_VARIABLE}={work_dir.resolve()}".encode()
    pids = []
    for environ_path in Path("/proc").glob("[0-9]*/environ"):
        try:
            if tag not in environ_path.read_bytes().split(b"\0"):
                continue
            stat = (environ_path.parent / "stat").read_text()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] != "Z":
            pids.append(int(environ_path.parent.name))
    return pids
