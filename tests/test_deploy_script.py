"""deploy.sh: its dry run against the real gcloud parser, its logic against a fake GCP project.

No cloud account is needed. The real gcloud CLI (with an empty configuration, so no credentials)
checks that every command the script would run parses. The fake gcloud (tests/fake_gcloud.py)
models one project: resources, IAM policies and their propagation, Pub/Sub messages and pushes,
the deployed function. The tests run deploy.sh on a brand-new project, again, from drifted states,
through verify and destroy, and check each run makes exactly the calls it should.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devstack.processes import ManagedProcess, wait_until
from tests import fake_gcloud
from tests.fake_gcloud import bindings, new_project, sa_email

REPO = Path(__file__).resolve().parent.parent
DEPLOY_SH = REPO / "deploy.sh"
REAL_GCLOUD = shutil.which("gcloud")
PROJECT, NUMBER, REGION = "test-proj", "123456789012", "europe-west1"
WHERE = ("--project", PROJECT, "--region", REGION)
MODEL_BUCKET = "models-bucket"
MODEL_URI = f"gs://{MODEL_BUCKET}/1/0123456789abcdef/artifacts/model"
REGISTRY = ("--model-uri", "models:/ride-duration@champion", "--model-bucket", MODEL_BUCKET)
FUNCTION = "ride-prediction"
FN = f"serviceAccount:{sa_email(PROJECT, 'ride-prediction-fn')}"
INVOKER_EMAIL = sa_email(PROJECT, "ride-prediction-invoker")
INVOKER = f"serviceAccount:{INVOKER_EMAIL}"
BUILD = f"serviceAccount:{sa_email(PROJECT, 'ride-prediction-build')}"
AGENT = f"serviceAccount:service-{NUMBER}@gcp-sa-pubsub.iam.gserviceaccount.com"
SOURCES = f"run-sources-{PROJECT}-{REGION}"
LEDGER = f"gs://{SOURCES}/deploy-sh/{FUNCTION}/grants.tsv"
PUSH, DLQ, DLQ_SUB = (
    "ride-prediction-push",
    "ride-prediction-dead-letter",
    "ride-prediction-dead-letter-sub",
)
REPOSITORY = "ride-prediction-images"
LOG_METRICS = sorted(path.stem for path in (REPO / "monitoring" / "log-metrics").glob("*.json"))
LOG_SUB, LOG_DLQ = "ride-prediction-prediction-log", "ride-prediction-prediction-log-dead-letter"
TABLE = f"{PROJECT}:ride_prediction.predictions"
# Every subscription a deployment keeps (verify's are gone).
SUBSCRIPTIONS = {PUSH, "ride-predictions-sub", DLQ_SUB, LOG_SUB, f"{LOG_DLQ}-sub"}
URL = f"https://{FUNCTION}-{NUMBER}.{REGION}.run.app"
RUN_ID = "deploy-verify-test"
PICKLE_MLMODEL = (
    "flavors:\n  sklearn:\n    pickled_model: model.pkl\n    serialization_format: cloudpickle\n"
)
SKOPS_MLMODEL = (
    "flavors:\n  sklearn:\n    pickled_model: model.skops\n    serialization_format: skops\n"
)
# A model MLflow loads with no deserialization gate (its native format, not a pickle).
XGBOOST_MLMODEL = "flavors:\n  xgboost:\n    data: model.xgb\n    model_format: xgb\n"
MUTATING = {"create", "enable", "deploy", "update", "delete", "publish", "detach", "cp", "rm", "mk"}
MUTATING |= {"add-iam-policy-binding", "remove-iam-policy-binding", "set-cleanup-policies"}
# Every grant of a deployment from a gs:// model (kind, resource, role, member).
LEAST_PRIVILEGE = {
    ("topic", "ride-predictions", "roles/pubsub.publisher", FN),
    ("topic", DLQ, "roles/pubsub.publisher", FN),
    ("bucket", MODEL_BUCKET, "roles/storage.objectViewer", FN),
    ("repository", REPOSITORY, "roles/artifactregistry.writer", BUILD),
    ("bucket", SOURCES, "roles/storage.objectViewer", BUILD),
    ("project", PROJECT, "roles/logging.logWriter", BUILD),
    ("service-account", INVOKER_EMAIL, "roles/iam.serviceAccountTokenCreator", AGENT),
    ("topic", DLQ, "roles/pubsub.publisher", AGENT),
    ("subscription", PUSH, "roles/pubsub.subscriber", AGENT),
    ("service", FUNCTION, "roles/run.invoker", INVOKER),
    ("project", PROJECT, "roles/monitoring.metricWriter", FN),
    ("table", TABLE, "roles/bigquery.dataEditor", AGENT),
    ("topic", LOG_DLQ, "roles/pubsub.publisher", AGENT),
    ("subscription", LOG_SUB, "roles/pubsub.subscriber", AGENT),
}
GOOGLES_OWN = ("project", PROJECT, "roles/pubsub.serviceAgent", AGENT)
PREDICTION = {
    "model": "ride_duration_prediction_model",
    "version": "v1",
    "prediction": {"ride_duration": 18, "ride_id": RUN_ID},
}

pytestmark = [
    pytest.mark.gcloud,
    pytest.mark.skipif(REAL_GCLOUD is None, reason="needs the gcloud CLI"),
]


def _base_env(tmp_path: Path, path_prefix: Path | None = None) -> dict[str, str]:
    """A clean environment (prompts not turned off: deploy.sh must do that itself)."""
    config = tmp_path / "gcloud-config"
    config.mkdir(exist_ok=True)
    path = os.environ["PATH"]
    return {
        "PATH": f"{path_prefix}{os.pathsep}{path}" if path_prefix else path,
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
        "CLOUDSDK_CONFIG": str(config),
    }


# ------------------------------------------------------------------------------ the fake


@pytest.fixture(scope="session")
def gcloud_sdk(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """gcloud's bundled Python and its SDK root."""
    info = subprocess.run(
        [str(REAL_GCLOUD), "info", "--format=value(basic.python_location,installation.sdk_root)"],
        capture_output=True,
        text=True,
        env=_base_env(tmp_path_factory.mktemp("gcloud-info")),
        timeout=60,
        check=True,
    )
    python, sdk_root = info.stdout.strip().split("\t")
    return python, sdk_root


@pytest.fixture(scope="session")
def parsers(tmp_path_factory: pytest.TempPathFactory, gcloud_sdk: tuple[str, str]) -> list[str]:
    """bq's own entry point, once the real gcloud has every component deploy.sh calls (CI
    installs them: .github/workflows/ci.yml); without one, the parser checks are skipped."""
    info = subprocess.run(
        [str(REAL_GCLOUD), "info", "--format=json(installation.components)"],
        capture_output=True,
        text=True,
        env=_base_env(tmp_path_factory.mktemp("gcloud-components")),
        timeout=60,
        check=True,
    )
    missing = {"alpha", "beta", "bq"} - set(json.loads(info.stdout)["installation"]["components"])
    if missing:
        pytest.skip(
            f"gcloud lacks {sorted(missing)}: gcloud components install {' '.join(missing)}"
        )
    python, sdk_root = gcloud_sdk
    return [python, f"{sdk_root}/platform/bq/bq.py"]


def _answers(socket_path: str) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as connection:
            connection.connect(socket_path)
            connection.sendall(b'{"ping": true}')
            connection.shutdown(socket.SHUT_WR)
            return connection.recv(100) == b'{"pong": true}'
    except OSError:
        return False


@pytest.fixture(scope="session")
def fake_gcloud_server(
    tmp_path_factory: pytest.TempPathFactory, gcloud_sdk: tuple[str, str]
) -> Iterator[str]:
    """The fake's server, under gcloud's Python, on a Unix socket (its path is yielded)."""
    python, sdk_root = gcloud_sdk
    directory = tmp_path_factory.mktemp("fake-gcloud")
    socket_path = str(directory / "gcloud.sock")
    server = ManagedProcess(
        "fake gcloud",
        [python, fake_gcloud.__file__, "serve", socket_path],
        directory / "server.log",
        env={"FAKE_GCLOUD_SDK_ROOT": sdk_root, "PATH": os.environ["PATH"]},
    )
    try:
        wait_until(lambda: _answers(socket_path), "fake gcloud", 60, alive=server.is_running)
        yield socket_path
    finally:
        server.stop()


@pytest.fixture(scope="session")
def upload_list(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the real gcloud would upload from the repository (``gcloud meta`` is local)."""
    directory = tmp_path_factory.mktemp("upload-list")
    listing = subprocess.run(
        [str(REAL_GCLOUD), "meta", "list-files-for-upload", "."],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**_base_env(directory), "CLOUDSDK_CORE_DISABLE_PROMPTS": "1"},
        timeout=120,
        check=True,
    )
    path = directory / "upload-list.txt"
    path.write_text(listing.stdout)
    return path


@dataclass
class FakeProject:
    """One test's fake project: its state file, the fake gcloud on PATH, and deploy.sh."""

    tmp_path: Path
    state_path: Path
    bin_dir: Path
    socket_path: str
    upload_list: Path

    @property
    def state(self) -> dict[str, Any]:
        """The project as it is now."""
        return dict(json.loads(self.state_path.read_text()))

    def save(self, state: dict[str, Any]) -> None:
        """Replace the project's state (calls and warnings are forgotten)."""
        self.state_path.write_text(json.dumps({**state, "calls": [], "warnings": []}))

    def change(self, edit: Callable[[dict[str, Any]], object]) -> None:
        """Edit the state in place (drift, faults), forgetting the calls so far."""
        state = self.state
        edit(state)
        self.save(state)

    def calls(self) -> list[list[str]]:
        """Every gcloud call of the last run."""
        return list(self.state["calls"])

    def changes(self) -> list[list[str]]:
        """The calls of the last run that changed something."""
        return [call for call in self.calls() if _verb(call) in MUTATING]

    def env(self, **extra: str) -> dict[str, str]:
        """deploy.sh's environment: the fake first on PATH, retries and polls without waiting."""
        return {
            **_base_env(self.tmp_path, self.bin_dir),
            "FAKE_GCLOUD_SOCKET": self.socket_path,
            "FAKE_GCLOUD_STATE": str(self.state_path),
            "FAKE_GCLOUD_REAL": str(REAL_GCLOUD),
            "FAKE_GCLOUD_UPLOAD_LIST": str(self.upload_list),
            "DEPLOY_RETRY_DELAY_SECONDS": "0",
            "DEPLOY_VERIFY_POLL_SECONDS": "0",
            "DEPLOY_VERIFY_RUN_ID": RUN_ID,
            **extra,
        }

    def run(self, *args: str, stdin: str = "", **env: str) -> subprocess.CompletedProcess[str]:
        """Run ``deploy.sh ARGS --project P --region R`` against the fake project."""
        self.save(self.state)
        return subprocess.run(
            [str(DEPLOY_SH), *args, *WHERE],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env(**env),
            cwd=self.tmp_path,  # deploy.sh must not depend on the caller's directory
            timeout=300,
            check=False,
        )

    def deploy(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """``deploy.sh deploy --model-uri MODEL_URI ARGS``; the run must succeed."""
        result = self.run("deploy", "--model-uri", MODEL_URI, *args, **env)
        assert result.returncode == 0, result.stderr
        return result


def brand_new_project() -> dict[str, Any]:
    """Only the model's bucket; grants apply 12 calls after they are made; new accounts are
    unknown to IAM for their first binding."""
    state = new_project(PROJECT, NUMBER, REGION)
    state["buckets"] = {MODEL_BUCKET: {"name": MODEL_BUCKET, "labels": {}}}
    state["objects"] = {f"{MODEL_URI}/MLmodel": PICKLE_MLMODEL}
    state["propagation"] = 12
    state["new_accounts_unpropagated"] = True
    return state


def _fake_project(tmp_path: Path, socket_path: str, upload_list: Path) -> FakeProject:
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    for tool in ("gcloud", "bq"):  # the client tells which by its name
        client = bin_dir / tool
        client.write_text(fake_gcloud.CLIENT_SOURCE.format(python=sys.executable))
        client.chmod(0o755)
    fake = FakeProject(tmp_path, tmp_path / "project.json", bin_dir, socket_path, upload_list)
    fake.save(brand_new_project())
    return fake


@pytest.fixture
def project(tmp_path: Path, fake_gcloud_server: str, upload_list: Path) -> FakeProject:
    """A brand-new fake project."""
    return _fake_project(tmp_path, fake_gcloud_server, upload_list)


@pytest.fixture(scope="module")
def deployed_state(
    tmp_path_factory: pytest.TempPathFactory, fake_gcloud_server: str, upload_list: Path
) -> dict[str, Any]:
    """The state after deploy.sh's first run on a brand-new project."""
    fake = _fake_project(tmp_path_factory.mktemp("deployed"), fake_gcloud_server, upload_list)
    fake.deploy()
    return fake.state


@pytest.fixture
def deployed(project: FakeProject, deployed_state: dict[str, Any]) -> FakeProject:
    """A fake project where deploy.sh already ran once (grants apply at once from now on)."""
    project.save({**copy.deepcopy(deployed_state), "propagation": 0})
    return project


def _verb(call: Sequence[str]) -> str | None:
    for word in call:
        if word.startswith("-") and word != "-":
            return None
        if word in MUTATING:
            return word
    return None


def _flag(call: Sequence[str], name: str) -> str | None:
    """The value of ``--name=value`` in a call."""
    return next((arg.split("=", 1)[1] for arg in call if arg.startswith(f"--{name}=")), None)


def _words(call: Sequence[str]) -> list[str]:
    """A call's command words and arguments, up to its first flag."""
    words = []
    for arg in call:
        if arg.startswith("--"):
            break
        words.append(arg)
    return words


def _env_vars(call: Sequence[str]) -> dict[str, str]:
    """Decode ``--set-env-vars=^DELIM^K=V...`` as gcloud does (`gcloud topic escaping`)."""
    match = re.fullmatch(r"\^([^^]+)\^(.*)", _flag(call, "set-env-vars") or "", re.DOTALL)
    assert match
    delimiter, pairs = match.groups()
    return dict(pair.split("=", 1) for pair in pairs.split(delimiter))


def _ours(state: dict[str, Any]) -> set[tuple[str, str, str, str]]:
    """The bindings of the accounts deploy.sh works with (the project's owners aside)."""
    return {b for b in bindings(state) if b[3] in {FN, INVOKER, BUILD, AGENT}}


def _service_env(state: dict[str, Any]) -> dict[str, str]:
    container = state["services"][FUNCTION]["spec"]["template"]["spec"]["containers"][0]
    return {
        e["name"]: e.get("value") or e["valueFrom"]["secretKeyRef"]["name"]
        for e in container["env"]
    }


# ------------------------------------------------------------------------------ first run


def test_a_brand_new_project_is_deployed_least_privilege_and_verified(project: FakeProject) -> None:
    result = project.deploy()

    assert json.loads(result.stdout) == PREDICTION
    assert f"VERIFIED: ride {RUN_ID}" in result.stderr
    state, calls = project.state, project.calls()
    # Grants took a while to apply: the first pushes were refused, but no ride was dead-lettered,
    # since the dead-letter policy came only once the verify ride had gone through.
    assert state["refused_pushes"] > 0
    assert state["messages"].get(DLQ_SUB, []) == []
    dead_letter_policy = next(
        i for i, c in enumerate(calls) if _flag(c, "dead-letter-topic") == DLQ
    )
    published = next(i for i, c in enumerate(calls) if c[:3] == ["pubsub", "topics", "publish"])
    assert published < dead_letter_policy
    assert "(a propagation delay: '[Ss]ervice account [^ ]+ does not exist')" in result.stderr
    # Each grant on one resource; never a project-level Storage role, not even for a moment.
    assert _ours(state) == LEAST_PRIVILEGE | {GOOGLES_OWN}
    assert not [c for c in calls if c[0] == "projects" and "storage" in (_flag(c, "role") or "")]
    # The ledger records exactly those grants.
    ledger = {tuple(line.split("\t")) for line in state["objects"][LEDGER].splitlines()}
    assert ledger == LEAST_PRIVILEGE
    # The function: a Cloud Run function, built as its own account into deploy.sh's repository.
    (deploy,) = [c for c in calls if c[:2] == ["run", "deploy"]]
    assert (_flag(deploy, "function"), _flag(deploy, "base-image")) == (
        "predict_duration",
        "python312",
    )
    assert _flag(deploy, "image") == f"{REGION}-docker.pkg.dev/{PROJECT}/{REPOSITORY}/{FUNCTION}"
    assert (
        _flag(deploy, "build-service-account") == f"projects/{PROJECT}/serviceAccounts/{BUILD[15:]}"
    )
    assert "--no-allow-unauthenticated" in deploy
    assert not [c for c in calls if c[0] in {"functions", "eventarc"}]
    assert _service_env(state) == {
        "MODEL_URI": MODEL_URI,
        "PROJECT_ID": PROJECT,
        "PUBLISH_STREAM": "ride-predictions",
        "DEAD_LETTER_STREAM": DLQ,
        "MODEL_NAME": "ride_duration_prediction_model",
        "THREADS": "32",
        "PUBLISH_MAX_RPCS_IN_FLIGHT": "4",
        "MESSAGE_LOG_LEVEL": "INFO",
        "SOURCE_SUBSCRIPTION": f"projects/{PROJECT}/subscriptions/{PUSH}",
        "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true",  # the model is a cloudpickle
    }
    service = state["services"][FUNCTION]
    template = service["spec"]["template"]
    assert service["metadata"]["annotations"]["run.googleapis.com/ingress"] == "internal"
    assert template["metadata"]["annotations"]["run.googleapis.com/cpu-throttling"] == "True"
    assert template["spec"]["containerConcurrency"] == 32
    # Stream A's push subscription: OIDC, backoff, dead letters, no expiry.
    push = state["subscriptions"][PUSH]
    assert push["pushConfig"] == {
        "pushEndpoint": f"{URL}/projects/{PROJECT}/topics/taxi-ride-streaming",
        "oidcToken": {"serviceAccountEmail": INVOKER_EMAIL, "audience": URL},
    }
    assert (push["ackDeadlineSeconds"], push["expirationPolicy"]) == (60, {})
    assert push["retryPolicy"] == {"minimumBackoff": "10s", "maximumBackoff": "60s"}
    assert push["deadLetterPolicy"] == {
        "deadLetterTopic": f"projects/{PROJECT}/topics/{DLQ}",
        "maxDeliveryAttempts": 10,
    }
    for name in ("ride-predictions-sub", DLQ_SUB):
        assert state["subscriptions"][name]["expirationPolicy"] == {}
    assert state["subscriptions"][DLQ_SUB]["messageRetentionDuration"] == f"{31 * 86400}s"
    assert set(state["subscriptions"]) == SUBSCRIPTIONS  # verify's are gone
    assert state["buckets"][SOURCES]["labels"] == {"managed-by": "deploy-sh"}
    repository = state["repositories"][REPOSITORY]
    assert repository["cleanupPolicies"]["keep-recent"]["mostRecentVersions"] == {"keepCount": 5}
    assert repository["cleanupPolicyDryRun"] is False


def test_the_push_subscription_and_the_settings_file_agree(project: FakeProject) -> None:
    settings = dict(
        line.split("=", 1)
        for line in (REPO / "push-subscription.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    result = project.run("deploy", "--dry-run", "--model-uri", MODEL_URI)

    (create,) = [
        shlex.split(line)
        for line in result.stdout.splitlines()
        if f"subscriptions create {PUSH}" in line
    ]
    assert _flag(create, "ack-deadline") == settings["ACK_DEADLINE_SECONDS"]
    assert _flag(create, "min-retry-delay") == settings["MIN_RETRY_DELAY_SECONDS"] + "s"
    assert _flag(create, "max-retry-delay") == settings["MAX_RETRY_DELAY_SECONDS"] + "s"
    assert settings["MAX_DELIVERY_ATTEMPTS"] in result.stdout.split("--max-delivery-attempts=")[1]


# ------------------------------------------------------------------------------ later runs


def test_a_second_run_changes_and_publishes_nothing(deployed: FakeProject) -> None:
    result = deployed.deploy()

    assert deployed.changes() == []
    assert "nothing changed, so nothing is published" in result.stderr
    # --verify asks for the ride anyway.
    deployed.deploy("--verify")
    assert [c[:3] for c in deployed.changes()].count(["pubsub", "topics", "publish"]) == 1


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--memory", "2Gi"), {"memory": "2Gi"}),
        (("--billing", "instance"), {"no-cpu-throttling": True}),
        (("--concurrency", "8"), {"concurrency": "8", "THREADS": "8"}),
    ],
)
def test_one_changed_setting_updates_the_service_and_nothing_else(
    deployed: FakeProject, args: tuple[str, ...], expected: dict[str, Any]
) -> None:
    result = deployed.deploy(*args)

    changes = [
        c for c in deployed.changes() if RUN_ID not in " ".join(c)
    ]  # verify's own calls aside
    (update,) = changes
    assert _words(update) == ["run", "services", "update", FUNCTION]
    for key, value in expected.items():
        if key.isupper():
            assert _env_vars(update)[key] == value
        elif value is True:
            assert f"--{key}" in update
        else:
            assert _flag(update, key) == value
    assert "drift:" in result.stderr
    assert f"VERIFIED: ride {RUN_ID}" in result.stderr  # a change: verified


def test_a_source_change_rebuilds(deployed: FakeProject) -> None:
    deployed.deploy("--base-image", "python313", "--no-verify")

    (deploy,) = deployed.changes()
    assert _words(deploy) == ["run", "deploy", FUNCTION]
    assert _flag(deploy, "base-image") == "python313"


def _service(*path: str | int, value: Any) -> Callable[[dict[str, Any]], None]:
    """Set one field of the service, as a change in the console would."""

    def edit(state: dict[str, Any]) -> None:
        node = state["services"][FUNCTION]
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value(node[path[-1]]) if callable(value) else value

    return edit


def _sub(name: str, **settings: Any) -> Callable[[dict[str, Any]], None]:
    return lambda state: state["subscriptions"][name].update(settings)


def _revoke(kind: str, name: str, role: str, member: str) -> Callable[[dict[str, Any]], None]:
    def edit(state: dict[str, Any]) -> None:
        for binding in state["policies"][f"{kind}:{name}"]["bindings"]:
            if binding["role"] == role:
                binding["members"].remove(member)

    return edit


CONTAINER = ("spec", "template", "spec", "containers", 0)
TEMPLATE_ANNOTATIONS = ("spec", "template", "metadata", "annotations")
SERVICE_FIX = [["run", "services", "update", FUNCTION]]
PUSH_FIX = [["pubsub", "subscriptions", "update", PUSH]]
# (drift made in the console, the fixing calls)
DRIFTS: dict[str, tuple[Callable[[dict[str, Any]], None], list[list[str]]]] = {
    "memory": (_service(*CONTAINER, "resources", "limits", "memory", value="4Gi"), SERVICE_FIX),
    "an environment variable added": (
        _service(*CONTAINER, "env", value=lambda env: [*env, {"name": "DEBUG", "value": "1"}]),
        SERVICE_FIX,
    ),
    "identity": (
        _service("spec", "template", "spec", "serviceAccountName", value="x@y"),
        SERVICE_FIX,
    ),
    "ingress": (
        _service("metadata", "annotations", "run.googleapis.com/ingress", value="all"),
        SERVICE_FIX,
    ),
    "max instances": (
        _service(*TEMPLATE_ANNOTATIONS, "autoscaling.knative.dev/maxScale", value="100"),
        SERVICE_FIX,
    ),
    "CPU boost off": (
        _service(*TEMPLATE_ANNOTATIONS, "run.googleapis.com/startup-cpu-boost", value="False"),
        SERVICE_FIX,
    ),
    "ack deadline": (_sub(PUSH, ackDeadlineSeconds=10), PUSH_FIX),
    "push identity": (_sub(PUSH, pushConfig={"pushEndpoint": f"{URL}/"}), PUSH_FIX),
    "dead letters after 5 attempts": (
        lambda s: s["subscriptions"][PUSH]["deadLetterPolicy"].update(maxDeliveryAttempts=5),
        PUSH_FIX,
    ),
    "push subscription expires": (_sub(PUSH, expirationPolicy={"ttl": "2678400s"}), PUSH_FIX),
    "Stream B's subscription expires": (
        _sub("ride-predictions-sub", expirationPolicy={"ttl": "2678400s"}),
        [["pubsub", "subscriptions", "update", "ride-predictions-sub"]],
    ),
    "invoker grant gone": (
        _revoke("service", FUNCTION, "roles/run.invoker", INVOKER),
        [["run", "services", "add-iam-policy-binding", FUNCTION]],
    ),
    "cleanup policy gone": (
        lambda s: s["repositories"][REPOSITORY].pop("cleanupPolicies"),
        [["artifacts", "repositories", "set-cleanup-policies", REPOSITORY]],
    ),
    "alert policy deleted": (
        lambda s: s["alert_policies"].pop(
            next(
                k
                for k, p in s["alert_policies"].items()
                if p["userLabels"]["policy"] == "error-rate"
            )
        ),
        [["alpha", "monitoring", "policies", "create"]],
    ),
    "dashboard definition changed": (
        lambda s: s["dashboards"][f"{FUNCTION}-operations"]["labels"].update(definition="old"),
        [["monitoring", "dashboards", "update", f"{FUNCTION}-operations"]],
    ),
    "log-based metric deleted": (
        lambda s: s["log_metrics"].pop(f"{FUNCTION}-rejected-rides"),
        [["logging", "metrics", "create", f"{FUNCTION}-rejected-rides"]],
    ),
    "table's schema older": (
        lambda s: s["tables"][TABLE]["labels"].update({"deploy-sh-schema": "old"}),
        [["bq", "update"]],
    ),
    "table grant gone": (
        _revoke("table", TABLE, "roles/bigquery.dataEditor", AGENT),
        [["bq", "add-iam-policy-binding"]],
    ),
    "prediction log's dead letters off": (
        lambda s: s["subscriptions"][LOG_SUB].pop("deadLetterPolicy"),
        [["pubsub", "subscriptions", "update", LOG_SUB]],
    ),
}


@pytest.mark.parametrize("drift", DRIFTS, ids=list(DRIFTS))
def test_drift_is_put_back_with_exactly_the_fixing_calls(deployed: FakeProject, drift: str) -> None:
    edit, expected = DRIFTS[drift]
    deployed.change(edit)

    result = deployed.deploy("--no-verify")

    assert [_words(c) for c in deployed.changes()] == expected, result.stderr
    if expected in (SERVICE_FIX, PUSH_FIX):
        assert "drift:" in result.stderr
    deployed.deploy("--no-verify")
    assert deployed.changes() == []
    assert _ours(deployed.state) == LEAST_PRIVILEGE | {GOOGLES_OWN}


# ------------------------------------------------------------------------------ failures


def test_an_unrelated_permission_denied_stops_at_once(project: FakeProject) -> None:
    failing = "pubsub topics create ride-predictions"
    project.change(
        lambda s: s["faults"].append(
            {"match": failing, "times": 1, "error": "PERMISSION_DENIED: no"}
        )
    )

    result = project.run("deploy", "--model-uri", MODEL_URI)

    assert result.returncode == 1
    assert "PERMISSION_DENIED: no" in result.stderr
    assert "'create topic ride-predictions' failed (exit 1)" in result.stderr
    assert "retrying" not in result.stderr
    calls = project.calls()
    assert " ".join(calls[-1]).startswith(failing)  # nothing ran after it


def test_propagation_retries_are_bounded(project: FakeProject) -> None:
    error = "PERMISSION_DENIED: If you enabled this API recently, wait a few minutes for it"
    project.change(
        lambda s: s["faults"].append(
            {"match": "pubsub topics describe", "times": 100, "error": error}
        )
    )

    result = project.run("deploy", "--model-uri", MODEL_URI, DEPLOY_RETRY_ATTEMPTS="3")

    assert result.returncode == 1
    assert "attempt 3 of 3 failed (a propagation delay" in result.stderr
    assert len([c for c in project.calls() if c[:3] == ["pubsub", "topics", "describe"]]) == 3


def test_a_build_refused_without_fresh_grants_stops_at_once(deployed: FakeProject) -> None:
    error = fake_gcloud.BUILD_PERMISSION_ERROR.format(account="b")
    deployed.change(
        lambda s: s["faults"].append({"match": "run deploy", "times": 1, "error": error})
    )

    result = deployed.run("deploy", "--model-uri", MODEL_URI, "--base-image", "python313")

    assert result.returncode == 1
    assert "retrying" not in result.stderr


# ------------------------------------------------------------------------------ inputs


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--input-topic", "--help"), "--input-topic needs a value"),
        (("--input-topic", "goog-rides"), "not valid"),
        (("--function-name", "Ride_Prediction"), "function name 'Ride_Prediction' is not valid"),
        (("--cpu", "0.5"), "--cpu below 1 needs --concurrency 1"),
        (("--timeout", "120", "--ack-deadline", "60"), "at least --timeout (120)"),
        (("--dead-letter-retention", "32d"), "10m to 31d"),
        (("--billing", "always"), "--billing must be request or instance"),
        (("--mlflow-tracking-uri", "https://me:s3cret@mlflow.example.com"), "holds credentials"),
        (("--env", "MLFLOW_TRACKING_PASSWORD=hunter2"), "--mlflow-tracking-password-secret"),
        (
            ("--mlflow-tracking-token-secret", "a", "--mlflow-tracking-username-secret", "b"),
            "not both",
        ),
        (("--env", "THREADS=4"), "set by deploy.sh"),
        (("--env", "MESSAGE_LOG_LEVEL=DEBUG"), "set by deploy.sh"),
        (("--expected-rate", "fast"), "expected rate 'fast' is not valid"),
        (("--message-log-level", "TRACE"), "message log level 'TRACE' is not valid"),
        (("--alert-email", 'me"@example.com'), "alert email"),
        (("--alert-error-ratio", "1.5"), "--alert-error-ratio '1.5' is not valid"),
        (("--alert-no-predictions-seconds", "90"), "whole minutes from 120"),
        (("--prediction-log-dataset", "my-log"), "--prediction-log-dataset 'my-log'"),
    ],
)
def test_bad_inputs_are_refused_before_any_call(
    project: FakeProject, args: tuple[str, ...], message: str
) -> None:
    result = project.run("deploy", "--model-uri", MODEL_URI, *args)

    assert result.returncode == 1
    assert message in result.stderr
    assert project.calls() == []


def test_the_callers_environment_changes_nothing(project: FakeProject) -> None:
    env = {
        "REGION": "asia-east1",
        "CPU": "4",
        "MEMORY": "8Gi",
        "VERIFY": "0",
        "MODEL_URI": "gs://x/y",
    }

    result = project.run("deploy", "--dry-run", "--model-uri", MODEL_URI, **env)

    assert result.returncode == 0, result.stderr
    (deploy,) = [shlex.split(line) for line in result.stdout.splitlines() if " run deploy " in line]
    assert (_flag(deploy, "cpu"), _flag(deploy, "memory"), _flag(deploy, "region")) == (
        "1",
        "1Gi",
        REGION,
    )
    assert _env_vars(deploy)["MODEL_URI"] == MODEL_URI


@pytest.mark.parametrize(
    ("mlmodel", "args", "allowed"),
    [
        (PICKLE_MLMODEL, (), "true"),
        # MLflow 3.17 gates skops behind the switch too: false would never load it.
        (SKOPS_MLMODEL, (), "true"),
        (XGBOOST_MLMODEL, (), "false"),
        (PICKLE_MLMODEL, ("--no-allow-pickle",), "false"),
    ],
)
def test_pickles_are_allowed_only_where_the_model_needs_them(
    project: FakeProject, mlmodel: str, args: tuple[str, ...], allowed: str
) -> None:
    project.change(lambda s: s["objects"].update({f"{MODEL_URI}/MLmodel": mlmodel}))

    project.deploy(*args)

    assert _service_env(project.state)["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] == allowed


def test_a_registry_model_needs_an_explicit_pickle_choice(project: FakeProject) -> None:
    result = project.run("deploy", *REGISTRY)

    assert result.returncode == 1
    assert "--allow-pickle" in result.stderr
    assert not project.changes()


# ------------------------------------------------------------------------------ secrets, identities


def test_secrets_are_granted_one_by_one_and_revoked_when_dropped(deployed: FakeProject) -> None:
    deployed.change(lambda s: s.update(secrets=["mlflow-token", "unrelated"]))
    deployed.deploy("--mlflow-tracking-token-secret", "mlflow-token:3", "--no-verify")

    state = deployed.state
    assert {b for b in bindings(state) if b[0] == "secret"} == {
        ("secret", "mlflow-token", "roles/secretmanager.secretAccessor", FN)
    }
    assert _service_env(state)["MLFLOW_TRACKING_TOKEN"] == "mlflow-token"
    # Without the option again: the secret leaves the function and its grant goes (the ledger).
    deployed.deploy("--no-verify")
    assert {b for b in bindings(deployed.state) if b[0] == "secret"} == set()
    assert "MLFLOW_TRACKING_TOKEN" not in _service_env(deployed.state)


def test_a_missing_secret_stops_the_deploy_with_how_to_create_it(project: FakeProject) -> None:
    project.change(lambda s: s["apis"].append("secretmanager.googleapis.com"))
    result = project.run(
        "deploy", "--model-uri", MODEL_URI, "--mlflow-tracking-token-secret", "nope"
    )

    assert result.returncode == 1
    assert "gcloud secrets create nope --data-file=-" in result.stderr


def test_a_build_account_of_your_own_gets_only_the_narrow_grants(deployed: FakeProject) -> None:
    builder = sa_email(PROJECT, "my-builder")

    def mine(state: dict[str, Any]) -> None:
        state["service_accounts"][builder] = {"email": builder, "description": ""}
        fake_gcloud.add_binding(
            state, "project", PROJECT, "roles/logging.logWriter", f"serviceAccount:{builder}"
        )

    deployed.change(mine)

    deployed.deploy("--build-service-account", "my-builder", "--no-verify")

    grants = [c for c in deployed.changes() if "add-iam-policy-binding" in c]
    assert {(_words(c)[0], _flag(c, "member")) for c in grants} == {
        ("artifacts", f"serviceAccount:{builder}"),
        ("storage", f"serviceAccount:{builder}"),
    }


def test_a_project_policy_with_conditions_is_edited_without_a_prompt(project: FakeProject) -> None:
    conditional = {"role": "roles/viewer", "members": ["user:a@b.c"], "condition": {"title": "t"}}
    policy = {f"project:{PROJECT}": {"bindings": [conditional]}}
    project.change(lambda s: s["policies"].update(policy))

    project.deploy()

    assert ("project", PROJECT, "roles/logging.logWriter", BUILD) in bindings(project.state)


def test_the_fake_fails_any_call_that_could_prompt(project: FakeProject) -> None:
    result = subprocess.run(
        [
            str(project.bin_dir / "gcloud"),
            "pubsub",
            "topics",
            "delete",
            "t",
            f"--project={PROJECT}",
        ],
        capture_output=True,
        text=True,
        env=project.env(),
        timeout=60,
        check=False,
    )

    assert result.returncode == fake_gcloud.PROMPT_EXIT


# ------------------------------------------------------------------------------ verify, logs


def test_verify_sees_only_its_own_ride_and_marks_it(deployed: FakeProject) -> None:
    deployed.change(lambda s: fake_gcloud.publish(s, "ride-predictions", b"{}", {"ride_id": "7"}))

    result = deployed.run("verify")

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == PREDICTION
    calls = deployed.changes()
    (publish,) = [c for c in calls if c[:3] == ["pubsub", "topics", "publish"]]
    assert _flag(publish, "attribute") == f"deploy_verify={RUN_ID},ride_id={RUN_ID}"
    for create in [c for c in calls if c[:3] == ["pubsub", "subscriptions", "create"]]:
        assert _flag(create, "message-filter") == f'attributes.deploy_verify = "{RUN_ID}"'
        assert calls.index(create) < calls.index(publish)
    state = deployed.state
    assert set(state["subscriptions"]) == SUBSCRIPTIONS
    # The prediction stays for Stream B's consumers, marked so they can drop it.
    marked = [m["message"]["attributes"] for m in state["messages"]["ride-predictions-sub"]]
    assert {"ride_id": "7"} in marked
    assert any(a.get("deploy_verify") == RUN_ID for a in marked)


@pytest.mark.parametrize(
    ("behaviour", "message"),
    [
        (
            "reject",
            f"rejected ride {RUN_ID} as permanently bad (dlq_reason: {fake_gcloud.DLQ_REASON})",
        ),
        ("fail", f"Pub/Sub gave up on ride {RUN_ID} after 10 delivery attempts"),
    ],
)
def test_verify_fails_at_once_on_a_dead_letter_and_says_which_kind(
    deployed: FakeProject, behaviour: str, message: str
) -> None:
    deployed.change(lambda s: s.update(function_behaviour=behaviour))

    result = deployed.run("verify")

    assert result.returncode == 1
    assert message in result.stderr
    assert set(deployed.state["subscriptions"]) == SUBSCRIPTIONS


def test_verify_gives_up_when_no_prediction_arrives(deployed: FakeProject) -> None:
    deployed.change(_revoke("service", FUNCTION, "roles/run.invoker", INVOKER))

    result = deployed.run("verify", "--verify-timeout", "0")

    assert result.returncode == 1
    assert "NOT VERIFIED: no prediction" in result.stderr
    assert deployed.state["refused_pushes"] > 0


def test_logs_reads_the_services_logs(deployed: FakeProject) -> None:
    result = deployed.run("logs")

    assert result.returncode == 0, result.stderr
    (call,) = deployed.calls()
    assert call[:5] == ["run", "services", "logs", "read", FUNCTION]


# ------------------------------------------------------------------------------ operations


def _policies(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The alert policies by their ``policy`` label."""
    policies = {p["userLabels"]["policy"]: p for p in state["alert_policies"].values()}
    assert len(policies) == len(state["alert_policies"]), "two policies with one label"
    return policies


def _threshold(policy: dict[str, Any]) -> Any:
    return policy["conditions"][0]["conditionThreshold"]["thresholdValue"]


def test_a_brand_new_project_gets_its_metrics_alerts_dashboard_and_prediction_log(
    deployed_state: dict[str, Any],
) -> None:
    state = deployed_state
    for api in ("monitoring", "telemetry", "bigquery"):
        assert f"{api}.googleapis.com" in state["apis"]
    assert set(state["log_metrics"]) == {f"{FUNCTION}-{name}" for name in LOG_METRICS}
    policies = _policies(state)
    assert set(policies) == {"dead-letters", "error-rate", "input-backlog-age", "no-predictions"}
    # The defaults docs/operations.md justifies; no channel without --alert-email.
    assert _threshold(policies["input-backlog-age"]) == 300
    assert _threshold(policies["error-rate"]) == 0.05
    assert policies["no-predictions"]["conditions"][0]["conditionAbsent"]["duration"] == "600s"
    assert all(p["notificationChannels"] == [] and p["enabled"] for p in policies.values())
    assert state["channels"] == {}
    assert list(state["dashboards"]) == [f"{FUNCTION}-operations"]
    assert state["sinks"]["_Default"]["exclusions"] == []  # no rate stated: the request log kept
    # The table: the generated schema, partitioned by day on publish_time, deploy.sh's labels.
    table = state["tables"][TABLE]
    schema = json.loads((REPO / "monitoring" / "prediction-log.bigquery.json").read_text())
    assert table["schema"]["fields"] == schema
    assert table["timePartitioning"] == {"type": "DAY", "field": "publish_time"}
    assert table["labels"]["deploy-sh-function"] == FUNCTION
    assert state["datasets"][f"{PROJECT}:ride_prediction"]["location"] == REGION
    log = state["subscriptions"][LOG_SUB]
    assert log["topic"] == f"projects/{PROJECT}/topics/ride-predictions"
    assert log["filter"] == "NOT attributes:deploy_verify"
    assert log["bigqueryConfig"] == {
        "table": TABLE,
        "useTableSchema": True,
        "writeMetadata": True,
        "dropUnknownFields": True,
    }
    assert log["deadLetterPolicy"] == {
        "deadLetterTopic": f"projects/{PROJECT}/topics/{LOG_DLQ}",
        "maxDeliveryAttempts": 5,
    }
    assert log["expirationPolicy"] == {}
    assert table["rows"] == []  # verify's ride went through, and stayed out of the log


def test_the_prediction_log_keeps_each_prediction_with_its_ride_id(deployed: FakeProject) -> None:
    ride = {"ride": {"PULocationID": 1, "DOLocationID": 2, "trip_distance": 1.0}, "ride_id": 7}
    deployed.change(
        lambda s: fake_gcloud.publish(s, "taxi-ride-streaming", json.dumps(ride).encode(), {})
    )

    (row,) = deployed.state["tables"][TABLE]["rows"]

    assert row["prediction"]["ride_duration"] == 18
    assert row["attributes"]["ride_id"] == "7"  # the column comes from the attribute


def test_alerts_are_updated_in_place_and_never_duplicated(deployed: FakeProject) -> None:
    names = {stem: p["name"] for stem, p in _policies(deployed.state).items()}

    deployed.deploy("--alert-email", "oncall@example.com", "--no-verify")

    (channel,) = deployed.state["channels"].values()
    assert channel["labels"] == {"email_address": "oncall@example.com"}
    policies = _policies(deployed.state)
    assert {stem: p["name"] for stem, p in policies.items()} == names
    assert all(p["notificationChannels"] == [channel["name"]] for p in policies.values())
    assert [_words(c)[:4] for c in deployed.changes()] == [
        ["beta", "monitoring", "channels", "create"],
        *[["alpha", "monitoring", "policies", "update"]] * 4,
    ]
    deployed.deploy("--alert-email", "oncall@example.com", "--no-verify")
    assert deployed.changes() == []

    # Another address and threshold: the channel and that policy change in place, and the
    # dashboard, which draws the threshold.
    deployed.deploy(
        "--alert-email", "team@example.com", "--alert-backlog-age-seconds", "900", "--no-verify"
    )

    (same,) = deployed.state["channels"].values()
    assert (same["name"], same["labels"]["email_address"]) == (channel["name"], "team@example.com")
    policies = _policies(deployed.state)
    assert _threshold(policies["input-backlog-age"]) == 900
    assert {stem: p["name"] for stem, p in policies.items()} == names
    assert sorted(" ".join(_words(c)) for c in deployed.changes()) == [
        f"alpha monitoring policies update {names['input-backlog-age']}",
        f"beta monitoring channels update {channel['name']}",
        f"monitoring dashboards update {FUNCTION}-operations",
    ]

    # Without --alert-email the channel goes; the policies stay, naming no channel.
    deployed.deploy("--alert-backlog-age-seconds", "900", "--no-verify")
    assert deployed.state["channels"] == {}
    assert all(p["notificationChannels"] == [] for p in _policies(deployed.state).values())
    assert len(deployed.state["alert_policies"]) == 4


def test_a_channel_you_added_to_a_policy_stays(deployed: FakeProject) -> None:
    yours = f"projects/{PROJECT}/notificationChannels/9999"

    def add_yours(state: dict[str, Any]) -> None:
        state["channels"]["9999"] = {"name": yours, "type": "slack", "userLabels": {}}
        for policy in state["alert_policies"].values():
            policy["notificationChannels"] = [yours]

    deployed.change(add_yours)

    deployed.deploy(
        "--alert-email", "oncall@example.com", "--alert-error-ratio", "0.1", "--no-verify"
    )

    ours = next(c["name"] for c in deployed.state["channels"].values() if c["name"] != yours)
    for policy in _policies(deployed.state).values():
        assert sorted(policy["notificationChannels"]) == sorted([yours, ours])
    assert _threshold(_policies(deployed.state)["error-rate"]) == 0.1


def test_without_the_alpha_component_nothing_changes_and_the_fix_is_said(
    project: FakeProject,
) -> None:
    project.change(lambda s: s["components"].pop("alpha"))

    result = project.run("deploy", "--model-uri", MODEL_URI)

    assert result.returncode == 1
    assert "gcloud components install alpha" in result.stderr
    assert "--no-alerts" in result.stderr
    assert [c[0] for c in project.calls()] == ["info"]  # only the look at the components

    # --no-alerts deploys everything else, and leaves alert policies alone.
    project.deploy("--no-alerts")
    assert project.state["alert_policies"] == project.state["channels"] == {}
    assert project.state["log_metrics"]
    assert project.state["dashboards"]


def test_without_beta_alpha_does_its_part(project: FakeProject) -> None:
    project.change(lambda s: s["components"].pop("beta"))

    project.deploy("--alert-email", "oncall@example.com")

    tracks = {c[0] for c in project.calls() if c[0] in {"alpha", "beta"}}
    assert tracks == {"alpha"}
    assert len(project.state["channels"]) == 1
    project.change(lambda s: s["components"].pop("alpha"))
    result = project.run("deploy", "--model-uri", MODEL_URI, "--no-alerts")
    assert result.returncode == 1  # the Pub/Sub service agent needs one of them
    assert "gcloud components install beta" in result.stderr


def test_the_request_log_is_excluded_from_a_steady_rate_and_kept_again_below(
    deployed: FakeProject,
) -> None:
    deployed.deploy("--expected-rate", "50", "--no-verify")

    (exclusion,) = deployed.state["sinks"]["_Default"]["exclusions"]
    assert exclusion["name"] == f"{FUNCTION}-request-log"
    assert exclusion["filter"] == (
        f'resource.type="cloud_run_revision" AND resource.labels.service_name="{FUNCTION}"'
        ' AND log_id("run.googleapis.com/requests")'
    )
    deployed.deploy("--expected-rate", "50", "--no-verify")
    assert deployed.changes() == []
    deployed.deploy("--expected-rate", "2", "--no-verify")
    assert deployed.state["sinks"]["_Default"]["exclusions"] == []
    deployed.deploy("--request-log", "exclude", "--no-verify")
    assert deployed.run("destroy", "--yes").returncode == 0
    assert deployed.state["sinks"]["_Default"]["exclusions"] == []


def test_no_prediction_log_stops_writing_it_and_keeps_its_history(deployed: FakeProject) -> None:
    deployed.change(lambda s: s["tables"][TABLE]["rows"].append({"version": "v1"}))

    deployed.deploy("--no-prediction-log", "--no-verify")

    state = deployed.state
    assert set(state["subscriptions"]) == SUBSCRIPTIONS - {LOG_SUB, f"{LOG_DLQ}-sub"}
    assert LOG_DLQ not in state["topics"]
    assert state["tables"][TABLE]["rows"] == [{"version": "v1"}]
    assert not [b for b in _ours(state) if b[0] == "table" or LOG_DLQ in b[1]]
    # On again: everything is back, the history with it.
    deployed.deploy("--no-verify")
    assert set(deployed.state["subscriptions"]) == SUBSCRIPTIONS
    assert _ours(deployed.state) == LEAST_PRIVILEGE | {GOOGLES_OWN}


def test_a_bigquery_subscription_refused_just_after_its_grant_is_retried(
    deployed: FakeProject,
) -> None:
    refused = {
        "match": f"pubsub subscriptions create {LOG_SUB} --topic=ride-predictions",
        "error": fake_gcloud.BIGQUERY_SUBSCRIPTION_DENIED.format(project=PROJECT, name=LOG_SUB),
    }
    deployed.deploy("--no-prediction-log", "--no-verify")
    deployed.change(lambda s: s["faults"].append({**refused, "times": 2}))

    result = deployed.deploy("--no-verify")  # the table grant is made again in this run

    assert "attempt 2 of 6 failed (a propagation delay: 'The caller does not have" in result.stderr
    assert set(deployed.state["subscriptions"]) == SUBSCRIPTIONS
    # Without a grant just made, the same refusal is a real one: the run stops at once.
    deployed.change(lambda s: s["subscriptions"].pop(LOG_SUB) and s["faults"].append(
        {**refused, "times": 1}
    ))  # fmt: skip
    result = deployed.run("deploy", "--model-uri", MODEL_URI, "--no-verify")
    assert result.returncode == 1
    assert "retrying" not in result.stderr


@pytest.mark.parametrize(
    ("args", "throttled", "min_instances", "message_log_level", "request_log_excluded"),
    [
        ((), True, "0", "INFO", False),
        (("--expected-rate", "9.9"), True, "0", "INFO", False),
        (("--expected-rate", "10"), False, "1", "DEBUG", True),
        (("--expected-rate", "250", "--billing", "request"), True, "0", "DEBUG", True),
        (("--expected-rate", "0.5", "--billing", "instance", "--min-instances", "0"), False, "0",
         "INFO", False),
        (("--billing", "instance"), False, "1", "INFO", False),
        (("--expected-rate", "50", "--message-log-level", "info", "--request-log", "keep"), False,
         "1", "INFO", False),
    ],
)  # fmt: skip
def test_the_stated_rate_picks_billing_min_instances_and_the_logs(
    project: FakeProject,
    args: tuple[str, ...],
    throttled: bool,
    min_instances: str,
    message_log_level: str,
    request_log_excluded: bool,
) -> None:
    result = project.run("deploy", "--dry-run", "--model-uri", MODEL_URI, *args)

    assert result.returncode == 0, result.stderr
    assert ("--add-exclusion=name=ride-prediction-request-log," in result.stdout) == (
        request_log_excluded
    )
    (deploy,) = [_command(line)[1] for line in result.stdout.splitlines() if " run deploy " in line]
    assert ("--cpu-throttling" in deploy, "--no-cpu-throttling" in deploy) == (
        throttled,
        not throttled,
    )
    assert _flag(deploy, "min-instances") == min_instances
    env = _env_vars(deploy)
    assert env["MESSAGE_LOG_LEVEL"] == message_log_level
    assert env["PUBLISH_MAX_RPCS_IN_FLIGHT"] == "4"  # in both modes (docs/cost.md)


# ------------------------------------------------------------------------------ moving, destroying


def test_the_eventarc_version_is_moved_over_without_losing_stream_a(deployed: FakeProject) -> None:
    trigger = f"projects/{PROJECT}/locations/{REGION}/triggers/{FUNCTION}-123"

    def earlier_version(state: dict[str, Any]) -> None:
        state["apis"].append("cloudfunctions.googleapis.com")
        state["functions"][FUNCTION] = {"name": FUNCTION, "eventTrigger": {"trigger": trigger}}
        del state["subscriptions"][PUSH]

    deployed.change(earlier_version)

    result = deployed.deploy()

    order = [" ".join(_words(c)) for c in deployed.changes()]
    create = order.index(f"pubsub subscriptions create {PUSH}")
    assert create < order.index(f"functions detach {FUNCTION}")
    assert f"gcloud eventarc triggers delete {FUNCTION}-123 --location={REGION}" in result.stderr
    assert deployed.state["functions"] == {}


def test_destroy_with_only_project_region_and_yes_removes_everything(deployed: FakeProject) -> None:
    deployed.change(
        lambda s: (
            s.update(secrets=["mlflow-token"])
            or s["topics"]["taxi-ride-streaming"].update(labels={})
        )
    )
    deployed.run(
        "deploy", *REGISTRY, "--allow-pickle", "--mlflow-tracking-token-secret", "mlflow-token"
    )

    deployed.change(lambda s: s["tables"][TABLE]["rows"].append({"version": "v1"}))

    result = deployed.run("destroy", "--yes")

    assert result.returncode == 0, result.stderr
    state = deployed.state
    assert state["services"] == {}
    for collection in ("log_metrics", "alert_policies", "channels", "dashboards"):
        assert state[collection] == {}, collection
    # The prediction log's dataset, its table and rows go too: every resource deploy.sh made.
    assert state["datasets"] == state["tables"] == {}
    assert list(state["topics"]) == ["taxi-ride-streaming"]  # made by the tutorial, not deploy.sh
    assert state["subscriptions"] == state["repositories"] == state["service_accounts"] == {}
    assert SOURCES not in state["buckets"]
    assert _ours(state) == {GOOGLES_OWN}
    assert not [
        m
        for p in state["policies"].values()
        for b in p["bindings"]
        for m in b["members"]
        if m.startswith("deleted:")
    ]


def test_destroy_deletes_only_its_own_dataset_and_keeps_the_history_when_asked(
    deployed: FakeProject,
) -> None:
    deployed.change(lambda s: s["datasets"].update(other={"id": "other", "labels": {}}))
    deployed.change(lambda s: s["tables"][TABLE]["rows"].append({"version": "v1"}))

    kept = deployed.run("destroy", "--yes", "--keep-prediction-log")

    assert kept.returncode == 0, kept.stderr
    # The prediction history stays (and says so), without the agent's grant on it.
    assert deployed.state["tables"][TABLE]["rows"] == [{"version": "v1"}]
    assert f"kept: dataset {PROJECT}:ride_prediction" in kept.stderr

    result = deployed.run("destroy", "--yes")

    assert result.returncode == 0, result.stderr
    assert list(deployed.state["datasets"]) == ["other"]  # not deploy.sh's: kept
    assert deployed.state["tables"] == {}


def test_destroy_without_yes_off_a_terminal_refuses_and_reads_nothing(
    deployed: FakeProject,
) -> None:
    result = deployed.run("destroy", stdin=f"{PROJECT}\n")

    assert result.returncode == 1
    assert "--yes" in result.stderr
    assert deployed.calls() == []


# ------------------------------------------------------------------------------ dry run

DRY_RUNS: list[tuple[str, ...]] = [
    ("deploy", "--model-uri", MODEL_URI),
    ("deploy", *REGISTRY, "--allow-pickle", "--mlflow-tracking-uri", "https://mlflow.example.com",
     "--mlflow-tracking-token-secret", "mlflow-token:3", "--model-refresh-seconds", "60",
     "--env", "LOG_LEVEL=DEBUG", "--billing", "instance", "--min-instances", "1", "--no-cpu-boost",
     "--build-service-account", "builder", "--timeout", "120", "--dead-letter-retention", "7d",
     "--alert-email", "oncall@example.com", "--alert-error-ratio", "0.2"),
    ("deploy", "--model-uri", MODEL_URI, "--no-allow-pickle", "--concurrency", "1", "--cpu", "0.5",
     "--ingress", "all", "--max-delivery-attempts", "5", "--min-retry-delay", "0",
     "--no-prediction-log", "--no-alerts", "--expected-rate", "0.5"),
    ("deploy", "--model-uri", MODEL_URI, "--mlflow-tracking-username-secret", "user",
     "--mlflow-tracking-password-secret", "password:latest", "--expected-rate", "250"),
    ("verify",),
    ("logs",),
    ("destroy",),
    ("destroy", "--keep-prediction-log"),
]  # fmt: skip


def _dry_run(args: Sequence[str], env: dict[str, str]) -> list[str]:
    result = subprocess.run(
        [str(DEPLOY_SH), "--dry-run", *args, *WHERE],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def _command(line: str) -> tuple[list[str], list[str]]:
    """A dry-run line as (the render_template words that make its stdin, the command)."""
    words = shlex.split(line)
    if "|" not in words:
        return [], words
    pipe = words.index("|")
    return words[:pipe], words[pipe + 1 :]


def test_dry_run_runs_nothing_and_shows_the_plan(project: FakeProject) -> None:
    for args in DRY_RUNS:
        lines = _dry_run(args, project.env())
        assert lines, args
        for render, command in map(_command, lines):
            assert command[0] in {"gcloud", "bq"}, command
            assert render[:1] in ([], ["render_template"]), render
    assert project.calls() == []

    plan = [_command(line)[1] for line in _dry_run(DRY_RUNS[0], project.env())]
    assert not [line for line in plan if line[1] in {"functions", "eventarc"}]
    (deploy,) = [line for line in plan if line[1:3] == ["run", "deploy"]]
    assert _flag(deploy, "function") == "predict_duration"
    push = [
        line
        for line in plan
        if line[1:4]
        in (["pubsub", "subscriptions", "create"], ["pubsub", "subscriptions", "update"])
        and PUSH in line
    ]
    flags = {arg.split("=")[0] for line in push for arg in line}
    wanted = ["push-endpoint", "push-auth-service-account", "push-auth-token-audience"]
    wanted += ["min-retry-delay", "dead-letter-topic", "max-delivery-attempts", "expiration-period"]
    for flag in wanted:
        assert f"--{flag}" in flags
    # The operations: what the "done when" lists, each created once.
    made = [
        " ".join(word for word in line if not word.startswith("-"))
        for line in plan
        if _verb(line) in {"create", "mk"}
    ]
    for resource in (
        *(f"gcloud logging metrics create {FUNCTION}-{name}" for name in LOG_METRICS),
        *(["gcloud alpha monitoring policies create"] * 4),
        "gcloud monitoring dashboards create",
        f"bq mk {PROJECT}:ride_prediction",
        f"bq mk {TABLE}",
        f"gcloud pubsub subscriptions create {LOG_SUB}",
    ):
        assert resource in made, resource
        made.remove(resource)


# What gcloud says when it parsed the arguments but has no account to call the API with
# (`artifacts repositories list` trips over its own NoActiveAccountException).
_NO_CREDENTIALS = re.compile(
    r"You do not currently have an active account selected|gcloud auth login"
    r"|NoActiveAccountException"
)
_ARGUMENT_ERROR = re.compile(
    r"unrecognized arguments|argument --?[\w-]+:|Invalid value|Bad syntax|invalid choice"
    r"|must be specified|is required|Usage: gcloud"
)
# bq parses its flags (absl) before it asks gcloud for a token: with no account, a command whose
# flags and command name parse fails only on the token.
_BQ_NO_CREDENTIALS = re.compile(r"Error\s+retrieving\s+auth\s+credentials\s+from\s+gcloud")
_BQ_ARGUMENT_ERROR = re.compile(r"FATAL|Flags parsing error|Unknown command|USAGE")


def _verdict(line: str, env: dict[str, str], bq: list[str]) -> tuple[str, int, str]:
    """Run a dry-run line as the real tools would, offline: its stdin rendered by render.bash,
    a bq command through bq's own Python entry point (the `bq` wrapper checks credentials first)."""
    render, command = _command(line)
    stdin = ""
    if render:
        rendered = subprocess.run(
            ["bash", "-c", 'source monitoring/render.bash && "$@"', "render", *render],
            capture_output=True, text=True, cwd=REPO, timeout=60, check=True,
        )  # fmt: skip
        stdin = rendered.stdout
    if command[0] == "bq":
        command = [*bq, *command[1:]]
    result = subprocess.run(
        command, input=stdin, capture_output=True, text=True, env=env, cwd=REPO, timeout=120,
        check=False,
    )  # fmt: skip
    return line, result.returncode, result.stdout + result.stderr  # bq's errors: on stdout


_COMMAND_VERBS = MUTATING | {"describe", "list", "get-iam-policy", "pull", "cat", "ls", "show"}


def _parser_signature(line: str) -> tuple[Any, ...]:
    """Lines alike for the parsers: the same command (its words up to its verb: the resource's
    name aside) with the same flags (deploys and service updates are all kept: their values have
    validators of their own)."""
    words = _command(line)[1]
    if words[1:3] in (["run", "deploy"], ["run", "services"]) and "update" in words[:4]:
        return (line,)
    positional = [word for word in words if not word.startswith("-")]
    verb = next((i for i, word in enumerate(positional) if word in _COMMAND_VERBS), 3)
    return (*positional[: verb + 1], *sorted(w.split("=")[0] for w in words if w.startswith("-")))


def _problem(line: str, code: int, stderr: str) -> bool:
    if _command(line)[1][0] == "bq":
        return bool(_BQ_ARGUMENT_ERROR.search(stderr)) or not _BQ_NO_CREDENTIALS.search(stderr)
    return (
        code == 2
        or bool(_ARGUMENT_ERROR.search(stderr))
        or (code != 0 and not _NO_CREDENTIALS.search(stderr))
    )


def test_every_dry_run_command_passes_gclouds_and_bqs_parsers(
    tmp_path: Path, parsers: list[str]
) -> None:
    env = {**_base_env(tmp_path), "CLOUDSDK_CORE_DISABLE_PROMPTS": "1"}  # the real gcloud
    bq = parsers
    lines: dict[tuple[Any, ...], str] = {}
    for args in DRY_RUNS:
        for line in _dry_run(args, env):
            lines.setdefault(_parser_signature(line), line)
    assert len(lines) > 55
    assert len([line for line in lines.values() if line.startswith("bq ")]) >= 6

    with ThreadPoolExecutor(max_workers=3) as pool:  # gcloud takes about a second to start
        verdicts = list(pool.map(lambda line: _verdict(line, env, bq), lines.values()))

    problems = [
        f"{line}\n  exit {code}: {stderr.strip()[:400]}"
        for line, code, stderr in verdicts
        if _problem(line, code, stderr)
    ]
    assert not problems, "\n".join(problems)
    for broken in (  # the checks have teeth
        "gcloud pubsub topics create t1234 --no-such-flag",
        "bq mk --project_id=p --no_such_flag --dataset p:d",
        "bq mkk --project_id=p p:d",
        "bq add-iam-policy-binding --project_id=p --role=roles/x --table p:d.t",  # no --member
    ):
        assert _problem(*_verdict(broken, env, bq)), broken


def test_every_change_of_a_redeploy_and_a_destroy_passes_the_parsers(
    deployed: FakeProject, tmp_path: Path, parsers: list[str]
) -> None:
    """The updates, revokes and deletes a dry run (which plans for an empty project) never
    prints, as deploy.sh ran them against the fake, through the real parsers."""

    def older(state: dict[str, Any]) -> None:  # each is then updated
        state["tables"][TABLE]["labels"]["deploy-sh-schema"] = "old"
        state["dashboards"][f"{FUNCTION}-operations"]["labels"]["definition"] = "old"
        state["log_metrics"][f"{FUNCTION}-model-swaps"]["description"] = "old"
        state["subscriptions"][LOG_SUB].pop("deadLetterPolicy")

    deployed.change(older)
    lines: dict[tuple[Any, ...], str] = {}
    for args in (
        (
            "deploy",
            "--model-uri",
            MODEL_URI,
            "--alert-email",
            "a@example.com",
            "--no-verify",
            "--expected-rate",
            "50",
        ),
        ("deploy", "--model-uri", MODEL_URI, "--no-verify", "--memory", "2Gi"),
        ("deploy", "--model-uri", MODEL_URI, "--no-verify", "--no-prediction-log"),
        ("destroy", "--yes"),
    ):
        result = deployed.run(*args)
        assert result.returncode == 0, result.stderr
        for call in deployed.changes():  # what a dry run prints is checked above
            if _verb(call) in {"update", "delete", "remove-iam-policy-binding", "rm"}:
                line = shlex.join(call if call[0] == "bq" else ["gcloud", *call])
                lines.setdefault(_parser_signature(line), line)
    verbs = {_verb(shlex.split(line)) for line in lines.values()}
    assert {"update", "delete", "remove-iam-policy-binding", "rm"} <= verbs
    for command in ("logging metrics update", "subscriptions update", "bq update", "--remove-excl"):
        assert [line for line in lines.values() if command in line], command
    env = {**_base_env(tmp_path), "CLOUDSDK_CORE_DISABLE_PROMPTS": "1"}
    bq = parsers

    with ThreadPoolExecutor(max_workers=3) as pool:
        verdicts = list(pool.map(lambda line: _verdict(line, env, bq), lines.values()))

    problems = [f"{line}\n  exit {code}: {out.strip()[:400]}" for line, code, out in verdicts
                if _problem(line, code, out)]  # fmt: skip
    assert not problems, "\n".join(problems)
