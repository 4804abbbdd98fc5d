"""deploy.sh: its dry run against the real gcloud parser, its logic against a fake GCP project.

No cloud account is needed. The real gcloud CLI (with an empty configuration, so it has no
credentials) checks that every command the script would run parses. The fake gcloud
(tests/fake_gcloud.py) models one project: what exists, its IAM policies, its Pub/Sub messages,
the deployed function; it answers queries through gcloud's own resource printer, fails calls that
could prompt, and can inject the errors a brand-new project gives. The tests run deploy.sh on a
brand-new project, then from drifted states, and check each run makes exactly the fixing calls.
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
from tests.fake_gcloud import bindings, new_project, pubsub_agent, sa_email

REPO = Path(__file__).resolve().parent.parent
DEPLOY_SH = REPO / "deploy.sh"
REAL_GCLOUD = shutil.which("gcloud")
PROJECT = "test-proj"
NUMBER = "123456789012"
REGION = "europe-west1"
MODEL_BUCKET = "models-bucket"
MODEL_URI = f"gs://{MODEL_BUCKET}/1/0123456789abcdef/artifacts/model"
FUNCTION = "ride-prediction"
SA = f"serviceAccount:{sa_email(PROJECT, 'ride-prediction-fn')}"
TRIGGER_EMAIL = sa_email(PROJECT, "ride-prediction-invoker")
TRIGGER_SA = f"serviceAccount:{TRIGGER_EMAIL}"
BUILD_EMAIL = sa_email(PROJECT, "ride-prediction-build")
BUILD_SA = f"serviceAccount:{BUILD_EMAIL}"
PUBSUB_AGENT = f"serviceAccount:service-{NUMBER}@gcp-sa-pubsub.iam.gserviceaccount.com"
SOURCES_BUCKET = f"gcf-v2-sources-{NUMBER}-{REGION}"
DLQ = "ride-prediction-dead-letter"
DLQ_SUB = "ride-prediction-dead-letter-sub"
REPOSITORY = "ride-prediction-images"
RIDE_ID = "deploy-verify-test"
MUTATING_VERBS = {
    "create",
    "enable",
    "add-iam-policy-binding",
    "remove-iam-policy-binding",
    "deploy",
    "update",
    "delete",
    "publish",
    "ack",
    "set-cleanup-policies",
}

pytestmark = pytest.mark.skipif(REAL_GCLOUD is None, reason="needs the gcloud CLI")


def _base_env(tmp_path: Path, path_prefix: Path | None = None) -> dict[str, str]:
    """A clean environment: none of the caller's PROJECT_ID, MODEL_URI, ... leaks in.

    Prompts are not turned off here: deploy.sh must do that itself.
    """
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
    env = _base_env(tmp_path_factory.mktemp("gcloud-info"))
    info = subprocess.run(
        [str(REAL_GCLOUD), "info", "--format=value(basic.python_location,installation.sdk_root)"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    python, sdk_root = info.stdout.strip().split("\t")
    return python, sdk_root


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
    env = {**_base_env(directory), "CLOUDSDK_CORE_DISABLE_PROMPTS": "1"}
    listing = subprocess.run(
        [str(REAL_GCLOUD), "meta", "list-files-for-upload", "."],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
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
        """Edit the state in place (drift), forgetting the calls so far."""
        state = self.state
        edit(state)
        self.save(state)

    def calls(self) -> list[list[str]]:
        """Every gcloud call of the last run."""
        return list(self.state["calls"])

    def changes(self) -> list[list[str]]:
        """The calls that changed something."""
        return [call for call in self.calls() if _verb(call) in MUTATING_VERBS]

    def env(self, **overrides: str) -> dict[str, str]:
        """deploy.sh's environment: the fake first on PATH, retries without waiting."""
        env = _base_env(self.tmp_path, self.bin_dir)
        env.update(
            FAKE_GCLOUD_SOCKET=self.socket_path,
            FAKE_GCLOUD_STATE=str(self.state_path),
            FAKE_GCLOUD_REAL=str(REAL_GCLOUD),
            FAKE_GCLOUD_UPLOAD_LIST=str(self.upload_list),
            PROJECT_ID=PROJECT,
            REGION=REGION,
            DEPLOY_RETRY_DELAY_SECONDS="0",
            VERIFY_POLL_SECONDS="0",
            VERIFY_RIDE_ID=RIDE_ID,
        )
        env.update(overrides)
        return env

    def run(self, *args: str, stdin: str = "", **env: str) -> subprocess.CompletedProcess[str]:
        """Run deploy.sh against the fake project (``calls`` then holds this run's calls)."""
        self.save(self.state)
        return subprocess.run(
            [str(DEPLOY_SH), *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env(**env),
            cwd=self.tmp_path,  # deploy.sh must not depend on the caller's directory
            timeout=240,
            check=False,
        )


def brand_new_project() -> dict[str, Any]:
    """A project where nothing exists but the model's bucket; first uses are slow to propagate.

    The first deploy fails once with Eventarc's propagation error, and each new service account
    is unknown to IAM for its first binding.
    """
    state = new_project(PROJECT, NUMBER, REGION)
    state["buckets"] = [MODEL_BUCKET]
    state["propagation_delays"] = True
    state["faults"] = [
        {"match": "functions deploy", "times": 1, "error": fake_gcloud.EVENTARC_PROPAGATION_ERROR}
    ]
    return state


def _fake_project(tmp_path: Path, socket_path: str, upload_list: Path) -> FakeProject:
    """A brand-new fake project in ``tmp_path``, and the fake gcloud to put first on PATH."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    client = bin_dir / "gcloud"
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
    """The state after deploy.sh's first run on a brand-new project (verify included)."""
    fake = _fake_project(tmp_path_factory.mktemp("deployed"), fake_gcloud_server, upload_list)
    result = fake.run(MODEL_URI=MODEL_URI)
    assert result.returncode == 0, result.stderr
    return fake.state


@pytest.fixture
def deployed(project: FakeProject, deployed_state: dict[str, Any]) -> FakeProject:
    """A fake project where deploy.sh already ran once."""
    project.save(copy.deepcopy(deployed_state))
    return project


def _verb(call: Sequence[str]) -> str | None:
    """The gcloud verb of a call: the first of its words that is a verb."""
    for word in call:
        if word.startswith("-"):
            return None
        if word in MUTATING_VERBS or word.endswith(("describe", "list", "get-iam-policy", "pull")):
            return word
    return None


def _flag(call: Sequence[str], name: str) -> str | None:
    """The value of ``--name=value`` in a call."""
    for arg in call:
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
    return None


def _positional(call: Sequence[str]) -> list[str]:
    """A call's command words and arguments, up to its first flag."""
    words = []
    for arg in call:
        if arg.startswith("-"):
            break
        words.append(arg)
    return words


def _deploys(calls: list[list[str]]) -> list[list[str]]:
    return [call for call in calls if call[:2] == ["functions", "deploy"]]


def _env_vars(deploy: Sequence[str]) -> dict[str, str]:
    """Decode ``--set-env-vars=^DELIM^K=V...`` as gcloud does (`gcloud topic escaping`)."""
    value = _flag(deploy, "set-env-vars")
    assert value is not None
    match = re.fullmatch(r"\^([^^]+)\^(.*)", value, re.DOTALL)
    assert match, value
    delimiter, pairs = match.groups()
    return dict(pair.split("=", 1) for pair in pairs.split(delimiter))


def _trigger_subscription(state: dict[str, Any]) -> str:
    (trigger,) = state["triggers"].values()
    return str(trigger["transport"]["pubsub"]["subscription"].rsplit("/", 1)[1])


def _ours(state: dict[str, Any]) -> set[tuple[str, str, str, str]]:
    """The bindings of the accounts deploy.sh works with (the project's owners aside)."""
    members = {SA, TRIGGER_SA, BUILD_SA, PUBSUB_AGENT}
    return {binding for binding in bindings(state) if binding[3] in members}


def _least_privilege(trigger_subscription: str) -> set[tuple[str, str, str, str]]:
    return {
        ("topic", "ride-predictions", "roles/pubsub.publisher", SA),
        ("topic", DLQ, "roles/pubsub.publisher", SA),
        ("bucket", MODEL_BUCKET, "roles/storage.objectViewer", SA),
        ("runService", FUNCTION, "roles/run.invoker", TRIGGER_SA),
        ("repository", REPOSITORY, "roles/artifactregistry.writer", BUILD_SA),
        ("project", PROJECT, "roles/logging.logWriter", BUILD_SA),
        ("bucket", SOURCES_BUCKET, "roles/storage.objectAdmin", BUILD_SA),
        ("serviceAccount", TRIGGER_EMAIL, "roles/iam.serviceAccountTokenCreator", PUBSUB_AGENT),
        ("topic", DLQ, "roles/pubsub.publisher", PUBSUB_AGENT),
        ("subscription", trigger_subscription, "roles/pubsub.subscriber", PUBSUB_AGENT),
        # Google's own grant when the agent is created in a project from after April 2021.
        ("project", PROJECT, "roles/pubsub.serviceAgent", PUBSUB_AGENT),
    }


PREDICTION = {
    "model": "ride_duration_prediction_model",
    "version": "v1",
    "prediction": {"ride_duration": 18, "ride_id": RIDE_ID},
}


# ------------------------------------------------------------------------------ first run


def test_a_brand_new_project_is_deployed_unattended_and_verified(project: FakeProject) -> None:
    result = project.run(MODEL_URI=MODEL_URI)

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == PREDICTION
    assert f"VERIFIED: ride {RIDE_ID}" in result.stderr
    state = project.state
    # The propagation errors of a new project were retried, with a message per attempt.
    assert len(_deploys(project.calls())) == 2
    assert (
        "attempt 1 of 6 failed (a propagation delay: 'If you recently started to use Eventarc"
        in result.stderr
    )
    assert "(a propagation delay: 'Service account [^ ]+ does not exist')" in result.stderr
    # No warning from gcloud (say, a role it wanted to grant) or from the fake (a dead-letter
    # policy set before the service agent could forward).
    assert state["warnings"] == []
    # Every grant on one resource; at project level only the build's Logs Writer.
    subscription = _trigger_subscription(state)
    assert _ours(state) == _least_privilege(subscription)

    (function,) = state["functions"].values()
    assert function["buildConfig"]["serviceAccount"] == (
        f"projects/{PROJECT}/serviceAccounts/{BUILD_EMAIL}"
    )
    assert function["buildConfig"]["dockerRepository"] == (
        f"projects/{PROJECT}/locations/{REGION}/repositories/{REPOSITORY}"
    )
    service = function["serviceConfig"]
    assert service["availableCpu"] == "1"
    assert service["maxInstanceRequestConcurrency"] == 32
    assert service["environmentVariables"] == {
        "MODEL_URI": MODEL_URI,
        "PROJECT_ID": PROJECT,
        "PUBLISH_STREAM": "ride-predictions",
        "DEAD_LETTER_STREAM": DLQ,
        "MODEL_NAME": "ride_duration_prediction_model",
        "THREADS": "32",
    }
    assert service["secretEnvironmentVariables"] == []
    assert service["timeoutSeconds"] == 60
    assert (service["minInstanceCount"], service["maxInstanceCount"]) == (0, 10)
    assert service["serviceAccountEmail"] == SA.removeprefix("serviceAccount:")
    assert function["eventTrigger"]["serviceAccountEmail"] == TRIGGER_EMAIL
    assert function["eventTrigger"]["retryPolicy"] == "RETRY_POLICY_RETRY"

    trigger_subscription = state["subscriptions"][subscription]
    assert trigger_subscription["ackDeadlineSeconds"] == 60
    assert trigger_subscription["retryPolicy"] == {"minimumBackoff": "10s", "maximumBackoff": "60s"}
    assert trigger_subscription["deadLetterPolicy"] == {
        "deadLetterTopic": f"projects/{PROJECT}/topics/{DLQ}",
        "maxDeliveryAttempts": 10,
    }
    assert trigger_subscription["expirationPolicy"] == {}
    dead_letters = state["subscriptions"][DLQ_SUB]
    assert dead_letters["expirationPolicy"] == {}
    assert dead_letters["messageRetentionDuration"] == f"{31 * 86400}s"

    repository = state["repositories"][REPOSITORY]
    assert repository["cleanupPolicies"]["keep-recent"]["mostRecentVersions"] == {"keepCount": 5}
    assert repository["cleanupPolicies"]["delete-old"]["condition"] == {"olderThan": "2592000s"}
    assert repository["cleanupPolicyDryRun"] is False
    # What deploy.sh created carries its mark; verify's subscriptions are gone again.
    for kind in ("topics", "repositories"):
        assert all(r["labels"] == {"managed-by": "deploy-sh"} for r in state[kind].values())
    assert set(state["subscriptions"]) == {"ride-predictions-sub", DLQ_SUB, subscription}
    assert all(
        "managed-by=deploy-sh" in a["description"] for a in state["service_accounts"].values()
    )


def test_the_dead_letter_policy_comes_after_the_service_agents_grants(
    project: FakeProject,
) -> None:
    result = project.run("--no-verify", MODEL_URI=MODEL_URI)

    assert result.returncode == 0, result.stderr
    calls = project.changes()
    (update,) = [call for call in calls if call[:3] == ["pubsub", "subscriptions", "update"]]
    settings = calls.index(update)
    grants = [
        calls.index(call)
        for call in calls
        if "add-iam-policy-binding" in call and _flag(call, "member") == PUBSUB_AGENT
    ]
    assert len(grants) == 3
    assert max(grants) < settings
    # One update holds every setting of the trigger's subscription.
    assert {arg.split("=")[0] for arg in update[4:]} == {
        "--project",
        "--ack-deadline",
        "--min-retry-delay",
        "--max-retry-delay",
        "--dead-letter-topic",
        "--max-delivery-attempts",
        "--expiration-period",
    }


def test_a_project_from_before_april_2021_gets_no_project_level_grant(
    project: FakeProject,
) -> None:
    # The Pub/Sub service agent exists without its project-level role: gcloud would offer to
    # grant Token Creator on the project; unattended it only warns, and the grant deploy.sh
    # made on the trigger's account is what lets Pub/Sub sign the pushes (verify passes).
    project.change(lambda state: state.update(pubsub_agent=True, pubsub_agent_project_role=False))

    result = project.run(MODEL_URI=MODEL_URI)

    assert result.returncode == 0, result.stderr
    state = project.state
    assert state["warnings"] == ["Manual binding of above role may be necessary."] * 2
    assert state["undelivered"] == 0
    project_roles = {b for b in _ours(state) if b[0] == "project"}
    assert project_roles == {("project", PROJECT, "roles/logging.logWriter", BUILD_SA)}


def test_a_project_policy_with_conditions_is_edited_without_a_prompt(
    project: FakeProject,
) -> None:
    def add_conditional_binding(state: dict[str, Any]) -> None:
        state["policies"][f"project:{PROJECT}"] = {
            "bindings": [
                {
                    "role": "roles/viewer",
                    "members": ["user:auditor@example.com"],
                    "condition": {"title": "until", "expression": "request.time < x"},
                }
            ]
        }

    project.change(add_conditional_binding)

    result = project.run("--no-verify", MODEL_URI=MODEL_URI)

    assert result.returncode == 0, result.stderr
    assert ("project", PROJECT, "roles/logging.logWriter", BUILD_SA) in bindings(project.state)


def test_the_fake_fails_any_call_that_could_prompt(project: FakeProject) -> None:
    env = project.env()
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
        env=env,
        timeout=60,
        check=False,
    )

    assert result.returncode == fake_gcloud.PROMPT_EXIT
    assert "prompts are enabled" in result.stderr


# ------------------------------------------------------------------------------ later runs


def test_a_second_run_changes_nothing(deployed: FakeProject) -> None:
    result = deployed.run(MODEL_URI=MODEL_URI)

    assert result.returncode == 0, result.stderr
    # Only verify's own subscriptions come and go.
    assert [_positional(call)[:3] for call in deployed.changes()] == [
        ["pubsub", "subscriptions", "create"],
        ["pubsub", "subscriptions", "create"],
        ["pubsub", "topics", "publish"],
        ["pubsub", "subscriptions", "delete"],
        ["pubsub", "subscriptions", "delete"],
    ]
    assert "function is ACTIVE with this code and configuration" in result.stderr
    assert deployed.state["warnings"] == []


def _update_trigger_subscription(**settings: Any) -> Callable[[dict[str, Any]], None]:
    def edit(state: dict[str, Any]) -> None:
        state["subscriptions"][_trigger_subscription(state)].update(settings)

    return edit


def _update_subscription(name: str, **settings: Any) -> Callable[[dict[str, Any]], None]:
    def edit(state: dict[str, Any]) -> None:
        state["subscriptions"][name].update(settings)

    return edit


def _revoke(kind: str, resource: str, role: str, member: str) -> Callable[[dict[str, Any]], None]:
    def edit(state: dict[str, Any]) -> None:
        resource_name = _trigger_subscription(state) if kind == "subscription" else resource
        policy = state["policies"][f"{kind}:{resource_name}"]
        for binding in policy["bindings"]:
            if binding["role"] == role:
                binding["members"].remove(member)

    return edit


def _grant(kind: str, resource: str, role: str, member: str) -> Callable[[dict[str, Any]], None]:
    def edit(state: dict[str, Any]) -> None:
        policy = state["policies"].setdefault(f"{kind}:{resource}", {"bindings": []})
        policy["bindings"].append({"role": role, "members": [member]})

    return edit


def _set_cpu_boost(value: str) -> Callable[[dict[str, Any]], None]:
    def edit(state: dict[str, Any]) -> None:
        annotations = state["run_services"][FUNCTION]["spec"]["template"]["metadata"]
        annotations["annotations"]["run.googleapis.com/startup-cpu-boost"] = value

    return edit


def _other_dead_letter_topic(state: dict[str, Any]) -> None:
    state["topics"]["other-dlq"] = {"name": f"projects/{PROJECT}/topics/other-dlq", "labels": {}}
    subscription = state["subscriptions"][_trigger_subscription(state)]
    subscription["deadLetterPolicy"]["deadLetterTopic"] = f"projects/{PROJECT}/topics/other-dlq"


TRIGGER_SUBSCRIPTION_FIX = [["pubsub", "subscriptions", "update", "TRIGGER_SUBSCRIPTION"]]

# (drift, extra deploy.sh arguments, the fixing calls)
DRIFTS: dict[str, tuple[Callable[[dict[str, Any]], None], tuple[str, ...], list[list[str]]]] = {
    "dead letters to another topic": (_other_dead_letter_topic, (), TRIGGER_SUBSCRIPTION_FIX),
    "dead letters after 5 attempts": (
        lambda state: state["subscriptions"][_trigger_subscription(state)][
            "deadLetterPolicy"
        ].update(maxDeliveryAttempts=5),
        (),
        TRIGGER_SUBSCRIPTION_FIX,
    ),
    "no dead-letter policy": (
        lambda state: state["subscriptions"][_trigger_subscription(state)].pop("deadLetterPolicy"),
        (),
        TRIGGER_SUBSCRIPTION_FIX,
    ),
    "ack deadline 10s": (
        _update_trigger_subscription(ackDeadlineSeconds=10),
        (),
        TRIGGER_SUBSCRIPTION_FIX,
    ),
    "retry delays up to 600s": (
        _update_trigger_subscription(
            retryPolicy={"minimumBackoff": "10s", "maximumBackoff": "600s"}
        ),
        (),
        TRIGGER_SUBSCRIPTION_FIX,
    ),
    "trigger subscription expires": (
        _update_trigger_subscription(expirationPolicy={"ttl": "2678400s"}),
        (),
        TRIGGER_SUBSCRIPTION_FIX,
    ),
    "dead-letter subscription expires": (
        _update_subscription(DLQ_SUB, expirationPolicy={"ttl": "2678400s"}),
        (),
        [["pubsub", "subscriptions", "update", DLQ_SUB]],
    ),
    "dead letters kept 7 days": (
        _update_subscription(DLQ_SUB, messageRetentionDuration="604800s"),
        (),
        [["pubsub", "subscriptions", "update", DLQ_SUB]],
    ),
    "function may not publish predictions": (
        _revoke("topic", "ride-predictions", "roles/pubsub.publisher", SA),
        (),
        [["pubsub", "topics", "add-iam-policy-binding", "ride-predictions"]],
    ),
    "trigger may not invoke": (
        _revoke("runService", FUNCTION, "roles/run.invoker", TRIGGER_SA),
        (),
        [["run", "services", "add-iam-policy-binding", FUNCTION]],
    ),
    "Pub/Sub may not sign as the trigger": (
        _revoke(
            "serviceAccount", TRIGGER_EMAIL, "roles/iam.serviceAccountTokenCreator", PUBSUB_AGENT
        ),
        (),
        [
            ["beta", "services", "identity", "create"],
            ["iam", "service-accounts", "add-iam-policy-binding", TRIGGER_EMAIL],
        ],
    ),
    "Pub/Sub may not forward from the trigger's subscription": (
        _revoke("subscription", "", "roles/pubsub.subscriber", PUBSUB_AGENT),
        (),
        [
            ["beta", "services", "identity", "create"],
            ["pubsub", "subscriptions", "add-iam-policy-binding", "TRIGGER_SUBSCRIPTION"],
        ],
    ),
    "build may not push images": (
        _revoke("repository", REPOSITORY, "roles/artifactregistry.writer", BUILD_SA),
        (),
        [["artifacts", "repositories", "add-iam-policy-binding", REPOSITORY]],
    ),
    "build has object admin on the whole project": (
        _grant("project", PROJECT, "roles/storage.objectAdmin", BUILD_SA),
        (),
        [["projects", "remove-iam-policy-binding", PROJECT]],
    ),
    "repository without cleanup policy": (
        lambda state: state["repositories"][REPOSITORY].pop("cleanupPolicies"),
        (),
        [["artifacts", "repositories", "set-cleanup-policies", REPOSITORY]],
    ),
    "CPU boost on, --no-cpu-boost asked": (
        _set_cpu_boost("True"),
        ("--no-cpu-boost",),
        [["run", "services", "update", FUNCTION]],
    ),
    "CPU boost off, --cpu-boost asked": (
        _set_cpu_boost("False"),
        ("--cpu-boost",),
        [["run", "services", "update", FUNCTION]],
    ),
}


@pytest.mark.parametrize("drift", DRIFTS, ids=list(DRIFTS))
def test_a_drifted_project_gets_exactly_the_fixing_calls(deployed: FakeProject, drift: str) -> None:
    edit, args, expected = DRIFTS[drift]
    deployed.change(edit)
    subscription = _trigger_subscription(deployed.state)

    first = deployed.run("--no-verify", *args, MODEL_URI=MODEL_URI)

    assert first.returncode == 0, first.stderr
    fixes = [_positional(call) for call in deployed.changes()]
    assert fixes == [
        [subscription if word == "TRIGGER_SUBSCRIPTION" else word for word in call]
        for call in expected
    ]
    assert deployed.state["warnings"] == []
    if "cpu-boost" in " ".join(args):
        (update,) = deployed.changes()
        assert update[-1] == args[0]
    again = deployed.run("--no-verify", *args, MODEL_URI=MODEL_URI)
    assert again.returncode == 0, again.stderr
    assert deployed.changes() == [], again.stderr
    assert _ours(deployed.state) == _least_privilege(subscription)


def test_the_fixed_trigger_subscription_has_every_setting(deployed: FakeProject) -> None:
    deployed.change(DRIFTS["dead letters to another topic"][0])

    assert deployed.run("--no-verify", MODEL_URI=MODEL_URI).returncode == 0
    (update,) = deployed.changes()
    assert _flag(update, "dead-letter-topic") == DLQ
    assert _flag(update, "max-delivery-attempts") == "10"
    assert _flag(update, "ack-deadline") == "60"
    assert (_flag(update, "min-retry-delay"), _flag(update, "max-retry-delay")) == ("10s", "60s")
    assert _flag(update, "expiration-period") == "never"


def test_a_redeploy_that_recreates_the_trigger_gets_its_settings_again(
    deployed: FakeProject,
) -> None:
    deployed.change(lambda state: state.update(recreate_trigger_on_deploy=True))
    new_model = MODEL_URI.replace("0123456789abcdef", "fedcba9876543210")

    result = deployed.run("--no-verify", MODEL_URI=new_model)

    assert result.returncode == 0, result.stderr
    subscription = _trigger_subscription(deployed.state)
    assert [_positional(call) for call in deployed.changes()] == [
        ["functions", "deploy", FUNCTION],
        ["beta", "services", "identity", "create"],
        ["pubsub", "subscriptions", "add-iam-policy-binding", subscription],
        ["pubsub", "subscriptions", "update", subscription],
    ]
    assert deployed.state["warnings"] == []
    assert _ours(deployed.state) == _least_privilege(subscription)


def test_a_new_model_uri_redeploys_only_the_function(deployed: FakeProject) -> None:
    new_model = MODEL_URI.replace("0123456789abcdef", "fedcba9876543210")

    result = deployed.run("--no-verify", "--model-uri", new_model)

    assert result.returncode == 0, result.stderr
    (deploy,) = deployed.changes()
    assert deploy[:2] == ["functions", "deploy"]
    assert _env_vars(deploy)["MODEL_URI"] == new_model


@pytest.mark.parametrize(
    ("args", "cpu", "concurrency"),
    [(("--concurrency", "8", "--cpu", "2"), "2", "8"), (("--concurrency", "1"), "1", "1")],
)
def test_cpu_and_concurrency_redeploy_with_threads_to_match(
    deployed: FakeProject, args: tuple[str, ...], cpu: str, concurrency: str
) -> None:
    result = deployed.run("--no-verify", *args, MODEL_URI=MODEL_URI)

    assert result.returncode == 0, result.stderr
    (deploy,) = deployed.changes()  # the fingerprint changed
    assert (_flag(deploy, "cpu"), _flag(deploy, "concurrency")) == (cpu, concurrency)
    assert _env_vars(deploy)["THREADS"] == concurrency


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CONCURRENCY": "4", "CPU": "0.5"}, "CONCURRENCY above 1 needs CPU of at least 1"),
        ({"CONCURRENCY": "1001"}, "CONCURRENCY must be 1 to 1000"),
        ({"TIMEOUT": "120s", "ACK_DEADLINE": "60"}, "at least TIMEOUT (120)"),
        ({"DEAD_LETTER_RETENTION": "32d"}, "DEAD_LETTER_RETENTION must be 10m to 31d"),
        ({"MIN_RETRY_DELAY": "90", "MAX_RETRY_DELAY": "60"}, "MIN_RETRY_DELAY <= MAX_RETRY_DELAY"),
    ],
)
def test_settings_out_of_range_are_refused_before_any_call(
    project: FakeProject, env: dict[str, str], message: str
) -> None:
    result = project.run(MODEL_URI=MODEL_URI, **env)

    assert result.returncode == 1
    assert message in result.stderr
    assert project.calls() == []


# ------------------------------------------------------------------------------ failures


def test_a_failure_stops_the_script_at_once_with_a_clear_message(project: FakeProject) -> None:
    failing = "pubsub topics create ride-predictions"
    project.change(
        lambda state: state["faults"].append(
            {"match": failing, "times": 1, "error": "PERMISSION_DENIED: the fake refuses"}
        )
    )

    result = project.run(MODEL_URI=MODEL_URI)

    assert result.returncode == 1
    assert "PERMISSION_DENIED: the fake refuses" in result.stderr  # gcloud's own reason
    assert "'create topic ride-predictions' failed (exit 1)" in result.stderr
    assert "re-running is safe" in result.stderr
    assert "retrying" not in result.stderr
    calls = project.calls()
    assert " ".join(calls[-1]).startswith(failing)  # nothing ran after the failure
    assert len([call for call in calls if " ".join(call).startswith(failing)]) == 1


def test_propagation_errors_are_retried_a_bounded_number_of_times(project: FakeProject) -> None:
    project.change(lambda state: state["faults"][0].update(times=100))

    result = project.run(MODEL_URI=MODEL_URI, DEPLOY_RETRY_ATTEMPTS="3")

    assert result.returncode == 1
    assert len(_deploys(project.calls())) == 3
    assert "attempt 1 of 3 failed" in result.stderr
    assert "retrying in 0s" in result.stderr
    assert "attempt 3 of 3 failed (a propagation delay" in result.stderr
    assert "giving up" in result.stderr
    assert "'deploy function ride-prediction' failed" in result.stderr


def test_propagation_retries_stop_when_their_time_is_up(project: FakeProject) -> None:
    def only_eventarc(state: dict[str, Any]) -> None:
        state["faults"][0].update(times=100)
        state["propagation_delays"] = False

    project.change(only_eventarc)

    result = project.run(
        MODEL_URI=MODEL_URI, DEPLOY_RETRY_DELAY_SECONDS="5", DEPLOY_RETRY_TIMEOUT_SECONDS="4"
    )

    assert result.returncode == 1
    assert len(_deploys(project.calls())) == 1
    assert "giving up after" in result.stderr


# The build fails once for want of a permission.
BUILD_REFUSED = {
    "match": "functions deploy",
    "times": 1,
    "error": fake_gcloud.BUILD_PERMISSION_ERROR,
}


def test_a_build_refused_right_after_its_grants_is_retried(project: FakeProject) -> None:
    project.change(lambda state: state["faults"].append(dict(BUILD_REFUSED)))

    result = project.run("--no-verify", MODEL_URI=MODEL_URI)

    assert result.returncode == 0, result.stderr
    assert len(_deploys(project.calls())) == 3  # Eventarc, the build, then success
    assert "does not have storage.objects.get access" in result.stderr


def test_a_build_refused_without_fresh_grants_stops_at_once(deployed: FakeProject) -> None:
    deployed.change(lambda state: state["faults"].append(dict(BUILD_REFUSED)))
    new_model = MODEL_URI.replace("0123456789abcdef", "fedcba9876543210")

    result = deployed.run("--no-verify", MODEL_URI=new_model)

    assert result.returncode == 1
    assert len(_deploys(deployed.calls())) == 1
    assert "retrying" not in result.stderr


def test_a_failed_check_is_not_taken_for_absence(project: FakeProject) -> None:
    # "Permission denied (or it may not exist)": creating it anyway could clobber or duplicate.
    project.change(
        lambda state: state["faults"].append(
            {"match": "topics describe", "times": 1, "error": "PERMISSION_DENIED: no"}
        )
    )

    result = project.run(MODEL_URI=MODEL_URI)

    assert result.returncode == 1
    assert "could not check the current state" in result.stderr
    assert not [call for call in project.changes() if call[:2] == ["pubsub", "topics"]]


def test_model_uri_is_required(project: FakeProject) -> None:
    result = project.run()

    assert result.returncode == 1
    assert "MODEL_URI is required" in result.stderr
    assert project.calls() == []


def test_a_local_model_path_is_refused(project: FakeProject) -> None:
    result = project.run(MODEL_URI="mlruns/1/abc/artifacts/model")

    assert result.returncode == 1
    assert "not a URI the cloud can reach" in result.stderr
    assert project.calls() == []


# ------------------------------------------------------------------------------ identities, secrets


def test_a_build_account_of_your_own_only_gets_the_repository_grant(
    deployed: FakeProject,
) -> None:
    builder = sa_email(PROJECT, "my-builder")

    def add_builder(state: dict[str, Any]) -> None:
        state["service_accounts"][builder] = {"email": builder, "description": ""}
        for role in ("roles/logging.logWriter", "roles/storage.objectAdmin"):
            _grant("project", PROJECT, role, f"serviceAccount:{builder}")(state)

    deployed.change(add_builder)

    result = deployed.run(
        "--no-verify", "--build-service-account", "my-builder", MODEL_URI=MODEL_URI
    )

    assert result.returncode == 0, result.stderr
    changes = deployed.changes()
    assert [_positional(call) for call in changes] == [
        ["artifacts", "repositories", "add-iam-policy-binding", REPOSITORY],
        ["functions", "deploy", FUNCTION],
    ]
    assert _flag(changes[0], "member") == f"serviceAccount:{builder}"
    assert _flag(changes[1], "build-service-account") == (
        f"projects/{PROJECT}/serviceAccounts/{builder}"
    )


def test_a_missing_build_account_of_your_own_stops_the_deploy(project: FakeProject) -> None:
    result = project.run("--no-verify", MODEL_URI=MODEL_URI, BUILD_SERVICE_ACCOUNT="nobody-here")

    assert result.returncode == 1
    assert "build service account nobody-here@test-proj.iam.gserviceaccount.com not found" in (
        result.stderr
    )
    assert _deploys(project.calls()) == []


@pytest.mark.parametrize(
    ("args", "secret_env"),
    [
        (
            ("--mlflow-tracking-token-secret", "mlflow-token"),
            {"MLFLOW_TRACKING_TOKEN": ("mlflow-token", "latest")},
        ),
        (
            (
                "--mlflow-tracking-username-secret",
                "mlflow-user:2",
                "--mlflow-tracking-password-secret",
                "mlflow-password",
            ),
            {
                "MLFLOW_TRACKING_USERNAME": ("mlflow-user", "2"),
                "MLFLOW_TRACKING_PASSWORD": ("mlflow-password", "latest"),
            },
        ),
    ],
)
def test_mlflow_credentials_come_from_secret_manager(
    deployed: FakeProject, args: tuple[str, ...], secret_env: dict[str, tuple[str, str]]
) -> None:
    deployed.change(
        lambda state: state.update(
            secrets=["mlflow-token", "mlflow-user", "mlflow-password", "unrelated"]
        )
    )

    result = deployed.run(
        "--no-verify",
        *args,
        "--model-uri",
        "models:/ride-duration@champion",
        "--model-bucket",
        MODEL_BUCKET,
        "--mlflow-tracking-uri",
        "https://mlflow.example.com",
    )

    assert result.returncode == 0, result.stderr
    state = deployed.state
    assert "secretmanager.googleapis.com" in state["apis"]
    # The runtime identity may read these secrets and no others.
    secret_grants = {b for b in bindings(state) if b[0] == "secret"}
    assert secret_grants == {
        ("secret", secret, "roles/secretmanager.secretAccessor", SA)
        for secret, _ in secret_env.values()
    }
    (deploy,) = _deploys(deployed.calls())
    assert not [
        key
        for key in _env_vars(deploy)
        if key.startswith("MLFLOW_TRACKING_") and key != "MLFLOW_TRACKING_URI"
    ]
    (function,) = state["functions"].values()
    assert {
        entry["key"]: (entry["secret"], entry["version"])
        for entry in function["serviceConfig"]["secretEnvironmentVariables"]
    } == secret_env
    # Without the options again, the function's secrets are cleared.
    assert deployed.run("--no-verify", MODEL_URI=MODEL_URI).returncode == 0
    (function,) = deployed.state["functions"].values()
    assert function["serviceConfig"]["secretEnvironmentVariables"] == []


def test_a_deploy_refused_right_after_a_secret_grant_is_retried(deployed: FakeProject) -> None:
    def new_secret(state: dict[str, Any]) -> None:
        state["secrets"] = ["mlflow-token"]
        state["faults"].append(
            {
                "match": "functions deploy",
                "times": 1,
                "error": fake_gcloud.SECRET_PERMISSION_ERROR.replace("{secret}", "mlflow-token"),
            }
        )

    deployed.change(new_secret)

    result = deployed.run(
        "--no-verify", "--mlflow-tracking-token-secret", "mlflow-token", MODEL_URI=MODEL_URI
    )

    assert result.returncode == 0, result.stderr
    assert len(_deploys(deployed.calls())) == 2
    assert "(a propagation delay: 'Permission denied on secret')" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("--env", "MLFLOW_TRACKING_PASSWORD=hunter2"),
            "must not be a plain environment value",
        ),
        (
            ("--mlflow-tracking-username-secret", "mlflow-user"),
            "MLFLOW_TRACKING_USERNAME_SECRET and MLFLOW_TRACKING_PASSWORD_SECRET go together",
        ),
        (
            ("--mlflow-tracking-token-secret", "a", "--mlflow-tracking-username-secret", "b"),
            "a token or with a username and password, not both",
        ),
        (("--mlflow-tracking-token-secret", "bad/name"), "must be SECRET or SECRET:VERSION"),
    ],
)
def test_credentials_in_plain_sight_are_refused(
    project: FakeProject, args: tuple[str, ...], message: str
) -> None:
    result = project.run("--no-verify", *args, MODEL_URI=MODEL_URI)

    assert result.returncode == 1
    assert message in result.stderr
    assert project.calls() == []


def test_a_missing_secret_stops_the_deploy_with_how_to_create_it(project: FakeProject) -> None:
    result = project.run(
        "--no-verify", "--mlflow-tracking-token-secret", "mlflow-token", MODEL_URI=MODEL_URI
    )

    assert result.returncode == 1
    assert "secret mlflow-token does not exist" in result.stderr
    assert "gcloud secrets create mlflow-token --data-file=-" in result.stderr
    assert _deploys(project.calls()) == []


def test_env_values_with_commas_and_at_signs_reach_the_function_intact(
    deployed: FakeProject,
) -> None:
    deployed.change(lambda state: state["buckets"].append("mlflow-artifacts"))

    result = deployed.run(
        "--no-verify",
        "--model-uri",
        "models:/ride-duration@champion",
        "--model-bucket",
        "mlflow-artifacts",
        "--mlflow-tracking-uri",
        "https://mlflow.example.com/?a=1,b=2",
        "--model-refresh-seconds",
        "30",
        "--env",
        "LOG_LEVEL=DEBUG",
    )

    assert result.returncode == 0, result.stderr
    (deploy,) = _deploys(deployed.calls())
    env_vars = _env_vars(deploy)
    assert env_vars["MODEL_URI"] == "models:/ride-duration@champion"
    assert env_vars["MLFLOW_TRACKING_URI"] == "https://mlflow.example.com/?a=1,b=2"
    assert env_vars["MODEL_REFRESH_SECONDS"] == "30"
    assert env_vars["LOG_LEVEL"] == "DEBUG"
    assert ("bucket", "mlflow-artifacts", "roles/storage.objectViewer", SA) in bindings(
        deployed.state
    )


# ------------------------------------------------------------------------------ verify, logs


def _verify_subscriptions(state: dict[str, Any]) -> list[str]:
    return [name for name in state["subscriptions"] if "verify" in name]


def test_verify_sees_only_its_own_ride(deployed: FakeProject) -> None:
    # Someone else's predictions wait on Stream B's subscription: verify never pulls them.
    deployed.change(
        lambda state: fake_gcloud.publish(state, "ride-predictions", b"{}", {"ride_id": "7"})
    )
    waiting = len(deployed.state["messages"]["ride-predictions-sub"])

    result = deployed.run("verify")

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == PREDICTION
    calls = deployed.changes()
    creates = [call for call in calls if call[:3] == ["pubsub", "subscriptions", "create"]]
    assert {_flag(call, "topic") for call in creates} == {"ride-predictions", DLQ}
    for create in creates:
        assert _flag(create, "message-filter") == f'attributes.ride_id = "{RIDE_ID}"'
        assert _flag(create, "expiration-period") == "1d"
    (publish,) = [call for call in calls if call[:3] == ["pubsub", "topics", "publish"]]
    assert calls.index(publish) > max(calls.index(create) for create in creates)
    assert _flag(publish, "attribute") == f"ride_id={RIDE_ID}"
    assert json.loads(_flag(publish, "message") or "") == {
        "ride": {"PULocationID": 130, "DOLocationID": 205, "trip_distance": 3.66},
        "ride_id": RIDE_ID,
    }
    state = deployed.state
    assert _verify_subscriptions(state) == []
    assert not [call for call in deployed.calls() if "ride-predictions-sub" in call]
    # Those messages and our prediction stay for Stream B's consumers.
    assert len(state["messages"]["ride-predictions-sub"]) == waiting + 1


def test_verify_fails_at_once_when_the_ride_is_dead_lettered(deployed: FakeProject) -> None:
    deployed.change(lambda state: state.update(function_behaviour="reject"))

    result = deployed.run("verify")

    assert result.returncode == 1
    assert f"NOT VERIFIED: the function rejected ride {RIDE_ID}" in result.stderr
    assert fake_gcloud.DLQ_REASON in result.stderr
    pulls = [call for call in deployed.calls() if "pull" in call]
    assert len(pulls) == 2  # one look for the prediction, one at the dead letters
    assert _verify_subscriptions(deployed.state) == []


def test_verify_fails_when_no_prediction_arrives(deployed: FakeProject) -> None:
    deployed.change(lambda state: state.update(function_behaviour="silent"))

    result = deployed.run("verify", VERIFY_TIMEOUT="0")

    assert result.returncode == 1
    assert "NOT VERIFIED" in result.stderr
    assert "./deploy.sh logs" in result.stderr
    assert _verify_subscriptions(deployed.state) == []  # cleaned up on the way out


def test_verify_fails_when_pushes_are_not_authorized(deployed: FakeProject) -> None:
    deployed.change(_revoke("runService", FUNCTION, "roles/run.invoker", TRIGGER_SA))

    result = deployed.run("verify", VERIFY_TIMEOUT="0")

    assert result.returncode == 1
    assert deployed.state["undelivered"] == 1


def test_logs_reads_the_functions_logs(deployed: FakeProject) -> None:
    result = deployed.run("logs")

    assert result.returncode == 0, result.stderr
    assert "LEVEL" in result.stdout
    (call,) = deployed.calls()
    assert call[:4] == ["functions", "logs", "read", FUNCTION]
    assert "--gen2" in call
    assert _flag(call, "region") == REGION


# ------------------------------------------------------------------------------ destroy


def test_destroy_needs_confirmation(deployed: FakeProject) -> None:
    result = deployed.run("destroy", stdin="no\n")

    assert result.returncode == 1
    assert "nothing was deleted" in result.stderr
    assert deployed.calls() == []


def test_destroy_removes_only_what_deploy_sh_created(deployed: FakeProject) -> None:
    # The input topic existed before deploy.sh (the tutorial created it): no label.
    deployed.change(lambda state: state["topics"]["taxi-ride-streaming"].update(labels={}))

    result = deployed.run("destroy", stdin=f"{PROJECT}\n", MODEL_URI=MODEL_URI)

    assert result.returncode == 0, result.stderr
    state = deployed.state
    assert state["functions"] == {}
    assert state["triggers"] == {}
    assert list(state["topics"]) == ["taxi-ride-streaming"]
    assert state["subscriptions"] == {}
    assert state["service_accounts"] == {}
    assert state["repositories"] == {}
    # No grant to deploy.sh's accounts is left on what stays (project, buckets).
    assert [b for b in bindings(state) if b[3] in {SA, TRIGGER_SA, BUILD_SA}] == []
    assert not [
        m
        for p in state["policies"].values()
        for b in p["bindings"]
        for m in b["members"]
        if m.startswith("deleted:")
    ]
    assert "kept: topic taxi-ride-streaming was not created by deploy.sh" in result.stderr
    assert pubsub_agent(state) == PUBSUB_AGENT


# ------------------------------------------------------------------------------ dry run

DRY_RUNS: list[tuple[str, ...]] = [
    ("deploy", "--model-uri", MODEL_URI, "--cpu-boost"),
    (
        "deploy",
        "--model-uri",
        "models:/ride-duration@champion",
        "--model-bucket",
        "mlflow-artifacts",
        "--mlflow-tracking-uri",
        "https://mlflow.example.com",
        "--mlflow-tracking-token-secret",
        "mlflow-token:3",
        "--model-refresh-seconds",
        "60",
        "--env",
        "LOG_LEVEL=DEBUG",
        "--min-instances",
        "1",
        "--no-cpu-boost",
        "--dead-letter-topic",
        "rides-dlq",
        "--dead-letter-retention",
        "7d",
        "--build-service-account",
        "builder",
        "--concurrency",
        "1",
        "--cpu",
        "0.5",
        "--timeout",
        "120s",
    ),
    (
        "deploy",
        "--model-uri",
        MODEL_URI,
        "--mlflow-tracking-username-secret",
        "mlflow-user",
        "--mlflow-tracking-password-secret",
        "mlflow-password:latest",
    ),
    ("verify",),
    ("logs",),
    ("destroy", "--model-uri", MODEL_URI, "--mlflow-tracking-token-secret", "mlflow-token"),
]


def _dry_run(args: Sequence[str], env: dict[str, str]) -> list[str]:
    result = subprocess.run(
        [str(DEPLOY_SH), "--dry-run", *args],
        capture_output=True,
        text=True,
        env={**env, "PROJECT_ID": PROJECT, "REGION": REGION},
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_dry_run_runs_nothing(project: FakeProject) -> None:
    env = project.env()
    for args in DRY_RUNS:
        lines = _dry_run(args, env)
        assert lines, args
        assert all(shlex.split(line)[0] == "gcloud" for line in lines), lines

    assert project.calls() == []


def test_dry_run_shows_the_plan(project: FakeProject) -> None:
    lines = [shlex.split(line) for line in _dry_run(DRY_RUNS[0], project.env())]

    (deploy,) = [line for line in lines if line[1:3] == ["functions", "deploy"]]
    assert _flag(deploy, "build-service-account")
    assert (_flag(deploy, "cpu"), _flag(deploy, "concurrency")) == ("1", "32")
    assert _env_vars(deploy)["THREADS"] == "32"
    (update,) = [line for line in lines if line[1:4] == ["pubsub", "subscriptions", "update"]]
    assert {"--ack-deadline=60", "--min-retry-delay=10s", "--max-retry-delay=60s"} <= set(update)
    agent_grants = [
        index
        for index, line in enumerate(lines)
        if "add-iam-policy-binding" in line and "gcp-sa-pubsub" in (_flag(line, "member") or "")
    ]
    assert max(agent_grants) < lines.index(update)
    (dead_letters,) = [
        line
        for line in lines
        if line[1:4] == ["pubsub", "subscriptions", "create"] and DLQ_SUB in line
    ]
    assert "--expiration-period=never" in dead_letters
    verify = [line for line in lines if _flag(line, "message-filter")]
    assert len(verify) == 2


# What gcloud says when it parsed the arguments but has no account to call the API with.
_NO_CREDENTIALS = re.compile(
    r"You do not currently have an active account selected|gcloud auth login"
)
# What gcloud says when the arguments themselves are wrong.
_ARGUMENT_ERROR = re.compile(
    r"unrecognized arguments|argument --?[\w-]+:|Invalid value|Bad syntax|invalid choice"
    r"|must be specified|is required|Usage: gcloud",
)


def _gcloud_verdict(line: str, env: dict[str, str]) -> tuple[str, int, str]:
    result = subprocess.run(
        shlex.split(line),
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    return line, result.returncode, result.stderr


def _parser_signature(line: str) -> tuple[Any, ...]:
    """Lines alike for gcloud's parser: the same command with the same flags.

    Deploy lines are all kept: their values (CPU, secrets, env) have validators of their own.
    """
    words = shlex.split(line)
    if words[1:3] == ["functions", "deploy"]:
        return (line,)
    positional = [word for word in words if not word.startswith("-")]
    return (*positional[:4], *sorted(word.split("=")[0] for word in words if word.startswith("-")))


def test_every_dry_run_command_passes_gclouds_parser(tmp_path: Path) -> None:
    env = {**_base_env(tmp_path), "CLOUDSDK_CORE_DISABLE_PROMPTS": "1"}  # the real gcloud
    lines: dict[tuple[Any, ...], str] = {}
    for args in DRY_RUNS:
        for line in _dry_run(args, env):
            lines.setdefault(_parser_signature(line), line)
    assert len(lines) > 40

    # gcloud takes about a second to start; two cores, so a few in parallel.
    with ThreadPoolExecutor(max_workers=3) as pool:
        verdicts = list(pool.map(lambda line: _gcloud_verdict(line, env), lines.values()))

    problems = [
        f"{line}\n  exit {code}: {stderr.strip()[:400]}"
        for line, code, stderr in verdicts
        if code == 2
        or _ARGUMENT_ERROR.search(stderr)
        or (code != 0 and not _NO_CREDENTIALS.search(stderr))
    ]
    assert not problems, "\n".join(problems)
    # The check has teeth: a bad flag is reported as an argument error.
    _, code, stderr = _gcloud_verdict("gcloud pubsub topics create t1234 --no-such-flag", env)
    assert code == 2
    assert _ARGUMENT_ERROR.search(stderr)
