"""deploy.sh: its dry run against the real gcloud parser, and its logic against a fake gcloud.

No cloud account is needed. The real gcloud CLI (with an empty configuration, so it has no
credentials) checks that every command the script would run parses; a fake ``gcloud`` first on
``PATH`` records the calls and answers "exists" or "not found", to show that a second run
changes nothing and that a failure stops the script.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
DEPLOY_SH = REPO / "deploy.sh"
REAL_GCLOUD = shutil.which("gcloud")
PROJECT = "test-proj"
REGION = "europe-west1"
MODEL_URI = "gs://models-bucket/1/0123456789abcdef/artifacts/model"
SA = f"serviceAccount:ride-prediction-fn@{PROJECT}.iam.gserviceaccount.com"
TRIGGER_SA = f"serviceAccount:ride-prediction-invoker@{PROJECT}.iam.gserviceaccount.com"
PUBSUB_AGENT = "serviceAccount:service-123456789012@gcp-sa-pubsub.iam.gserviceaccount.com"
TRIGGER_SUBSCRIPTION = "eventarc-europe-west1-ride-prediction-000000-sub-123"
REQUIRED_APIS = [
    "artifactregistry.googleapis.com",
    "cloudbuild.googleapis.com",
    "cloudfunctions.googleapis.com",
    "eventarc.googleapis.com",
    "iam.googleapis.com",
    "logging.googleapis.com",
    "pubsub.googleapis.com",
    "run.googleapis.com",
]
# gcloud verbs that change something; every other call the script makes only reads.
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
}
QUERY_VERBS = ("describe", "list", "get-iam-policy", "pull", "read", "get-value")

pytestmark = pytest.mark.skipif(REAL_GCLOUD is None, reason="needs the gcloud CLI")

FAKE_GCLOUD = """\
#!{python}
# A fake gcloud for tests/test_deploy_script.py: logs each call, answers from a state file.
import json, os, sys

args = sys.argv[1:]
with open(os.environ["FAKE_GCLOUD_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
with open(os.environ["FAKE_GCLOUD_STATE"]) as state_file:
    state = json.load(state_file)
if args[:1] == ["meta"]:
    # Local and read-only: let the real gcloud say what .gcloudignore lets through.
    os.execv(state["real_gcloud"], ["gcloud", *args])
line = " ".join(args)
if state.get("fail") and state["fail"] in line:
    print("ERROR: (gcloud) PERMISSION_DENIED: the fake refuses: " + line, file=sys.stderr)
    sys.exit(1)
for pattern, answer in state.get("answers", []):
    if pattern in line:
        print(answer)
        sys.exit(0)
verbs = [word for word in args if word in {query_verbs!r}]
if not verbs:
    sys.exit(0)  # a change: succeed silently
if state["mode"] == "exists":
    print("exists")
elif verbs[0] == "describe":
    print("ERROR: (gcloud) NOT_FOUND: Resource not found", file=sys.stderr)
    sys.exit(1)
# "not found" for a list, an IAM policy or a pull: empty output.
"""


@dataclass
class FakeGcloud:
    """The fake gcloud's directory, state and call log."""

    bin_dir: Path
    state_path: Path
    log_path: Path
    state: dict[str, Any] = field(default_factory=dict)

    def set_state(
        self,
        mode: str,
        answers: Sequence[tuple[str, str]] = (),
        fail: str | None = None,
    ) -> None:
        """``mode`` "exists" or "not found"; ``answers``: (substring of the call, output)."""
        self.state = {
            "mode": mode,
            "answers": [list(answer) for answer in answers],
            "fail": fail,
            "real_gcloud": REAL_GCLOUD,
        }
        self.state_path.write_text(json.dumps(self.state))
        self.log_path.write_text("")

    def calls(self) -> list[list[str]]:
        """Every call since the last ``set_state``, as argument lists."""
        return [json.loads(line) for line in self.log_path.read_text().splitlines()]

    def changes(self) -> list[list[str]]:
        """The calls that would change something in the project."""
        return [call for call in self.calls() if _verb(call) in MUTATING_VERBS]


def _verb(call: Sequence[str]) -> str | None:
    """The gcloud verb of a call: the first word after the command groups."""
    for word in call:
        if word in MUTATING_VERBS or word in QUERY_VERBS or word == "list-files-for-upload":
            return word
    return None


@pytest.fixture
def fake_gcloud(tmp_path: Path) -> FakeGcloud:
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    script = bin_dir / "gcloud"
    script.write_text(FAKE_GCLOUD.format(python=sys.executable, query_verbs=set(QUERY_VERBS)))
    script.chmod(0o755)
    fake = FakeGcloud(bin_dir, tmp_path / "fake-state.json", tmp_path / "fake-calls.log")
    fake.set_state("not found")
    return fake


def _base_env(tmp_path: Path, path_prefix: Path | None = None) -> dict[str, str]:
    """A clean environment: none of the caller's PROJECT_ID, MODEL_URI, ... leaks in."""
    config = tmp_path / "gcloud-config"
    config.mkdir(exist_ok=True)
    path = os.environ["PATH"]
    return {
        "PATH": f"{path_prefix}{os.pathsep}{path}" if path_prefix else path,
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
        "CLOUDSDK_CONFIG": str(config),
        "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
    }


@pytest.fixture
def run_deploy(
    fake_gcloud: FakeGcloud, tmp_path: Path
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run deploy.sh with the fake gcloud first on PATH."""

    def run(*args: str, stdin: str = "", **env: str) -> subprocess.CompletedProcess[str]:
        full_env = _base_env(tmp_path, fake_gcloud.bin_dir)
        full_env.update(
            FAKE_GCLOUD_STATE=str(fake_gcloud.state_path),
            FAKE_GCLOUD_LOG=str(fake_gcloud.log_path),
            PROJECT_ID=PROJECT,
            REGION=REGION,
            RETRY_DELAY_SECONDS="0",
            VERIFY_POLL_SECONDS="0",
        )
        full_env.update(env)
        return subprocess.run(
            [str(DEPLOY_SH), *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=full_env,
            cwd=tmp_path,  # deploy.sh must not depend on the caller's directory
            timeout=120,
            check=False,
        )

    return run


def _after_deploy_answers() -> list[tuple[str, str]]:
    """What gcloud says about resources that exist once the function is deployed."""
    return [
        ("projectNumber", "123456789012"),
        (
            "serviceConfig.service,eventTrigger.trigger",
            f"projects/{PROJECT}/locations/{REGION}/services/ride-prediction\t"
            f"projects/{PROJECT}/locations/{REGION}/triggers/ride-prediction-000000",
        ),
        (
            "transport.pubsub.subscription",
            f"projects/{PROJECT}/subscriptions/{TRIGGER_SUBSCRIPTION}",
        ),
    ]


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


def _created(changes: list[list[str]]) -> set[tuple[str, str]]:
    """(command group, name) for every ``create`` in ``changes``."""
    created = set()
    for call in changes:
        if "create" in call:
            verb_at = call.index("create")
            created.add((" ".join(call[:verb_at]), call[verb_at + 1]))
    return created


def _bindings(changes: list[list[str]]) -> set[tuple[str, ...]]:
    """(resource kind, resource, role, member) for every IAM grant in ``changes``."""
    granted = set()
    for call in changes:
        if "add-iam-policy-binding" in call:
            verb_at = call.index("add-iam-policy-binding")
            kind = " ".join(call[:verb_at])
            granted.add((kind, call[verb_at + 1], _flag(call, "role"), _flag(call, "member")))
    return granted


def _deploy_fingerprint(changes: list[list[str]]) -> str:
    (deploy,) = [call for call in changes if call[:2] == ["functions", "deploy"]]
    labels = dict(label.split("=") for label in (_flag(deploy, "update-labels") or "").split(","))
    return labels["deploy-config"]


def _existing_project_answers(fingerprint: str) -> list[tuple[str, str]]:
    """A project where a previous run did everything (the fake answers "exists" otherwise)."""
    return [
        ("services list", "\n".join(REQUIRED_APIS)),
        ("labels.deploy-config,state", f"{fingerprint}\tACTIVE"),
        (
            "deadLetterPolicy",
            f"projects/{PROJECT}/topics/ride-prediction-dead-letter\t10",
        ),
        *_after_deploy_answers(),
    ]


def test_first_run_creates_everything_with_least_privilege(
    fake_gcloud: FakeGcloud, run_deploy: Callable[..., Any]
) -> None:
    fake_gcloud.set_state("not found", _after_deploy_answers())

    result = run_deploy("--no-verify", MODEL_URI=MODEL_URI)

    assert result.returncode == 0, result.stderr
    changes = fake_gcloud.changes()
    assert _created(changes) == {
        ("pubsub topics", "taxi-ride-streaming"),
        ("pubsub topics", "ride-predictions"),
        ("pubsub topics", "ride-prediction-dead-letter"),
        ("pubsub subscriptions", "ride-predictions-sub"),
        ("pubsub subscriptions", "ride-prediction-dead-letter-sub"),
        ("iam service-accounts", "ride-prediction-fn"),
        ("iam service-accounts", "ride-prediction-invoker"),
        ("beta services identity", "--service=pubsub.googleapis.com"),
    }
    (enable,) = [call for call in changes if call[:2] == ["services", "enable"]]
    assert sorted(arg for arg in enable if arg.endswith(".googleapis.com")) == REQUIRED_APIS
    # Each grant is on one resource, never on the project.
    assert _bindings(changes) == {
        ("pubsub topics", "ride-predictions", "roles/pubsub.publisher", SA),
        ("pubsub topics", "ride-prediction-dead-letter", "roles/pubsub.publisher", SA),
        ("storage buckets", "gs://models-bucket", "roles/storage.objectViewer", SA),
        ("run services", "ride-prediction", "roles/run.invoker", TRIGGER_SA),
        ("pubsub topics", "ride-prediction-dead-letter", "roles/pubsub.publisher", PUBSUB_AGENT),
        ("pubsub subscriptions", TRIGGER_SUBSCRIPTION, "roles/pubsub.subscriber", PUBSUB_AGENT),
        (
            "iam service-accounts",
            f"ride-prediction-invoker@{PROJECT}.iam.gserviceaccount.com",
            "roles/iam.serviceAccountTokenCreator",
            PUBSUB_AGENT,
        ),
    }
    (deploy,) = [call for call in changes if call[:2] == ["functions", "deploy"]]
    assert deploy[2] == "ride-prediction"
    assert {"--gen2", "--retry", "--source=.", "--entry-point=predict_duration"} <= set(deploy)
    assert _flag(deploy, "runtime") == "python312"
    assert _flag(deploy, "region") == REGION
    assert _flag(deploy, "trigger-topic") == "taxi-ride-streaming"
    assert _flag(deploy, "service-account") == SA.removeprefix("serviceAccount:")
    assert _flag(deploy, "trigger-service-account") == TRIGGER_SA.removeprefix("serviceAccount:")
    assert _flag(deploy, "min-instances") == "0"
    assert _flag(deploy, "max-instances") == "10"
    assert _flag(deploy, "memory") == "1Gi"
    assert _flag(deploy, "timeout") == "60s"
    assert _env_vars(deploy) == {
        "MODEL_URI": MODEL_URI,
        "PROJECT_ID": PROJECT,
        "PUBLISH_STREAM": "ride-predictions",
        "DEAD_LETTER_STREAM": "ride-prediction-dead-letter",
        "MODEL_NAME": "ride_duration_prediction_model",
    }
    (dead_letter,) = [call for call in changes if call[:3] == ["pubsub", "subscriptions", "update"]]
    assert dead_letter[3] == TRIGGER_SUBSCRIPTION
    assert _flag(dead_letter, "dead-letter-topic") == "ride-prediction-dead-letter"
    assert _flag(dead_letter, "max-delivery-attempts") == "10"
    # No key files, and the CPU boost is left alone unless asked for.
    assert not any("key" in arg for call in fake_gcloud.calls() for arg in call)
    assert not [call for call in changes if call[:2] == ["run", "services"] and "update" in call]


def _env_vars(deploy: Sequence[str]) -> dict[str, str]:
    """Decode ``--set-env-vars=^DELIM^K=V...`` as gcloud does (`gcloud topic escaping`)."""
    value = _flag(deploy, "set-env-vars")
    assert value is not None
    match = re.fullmatch(r"\^([^^]+)\^(.*)", value, re.DOTALL)
    assert match, value
    delimiter, pairs = match.groups()
    return dict(pair.split("=", 1) for pair in pairs.split(delimiter))


def test_second_run_changes_nothing(
    fake_gcloud: FakeGcloud, run_deploy: Callable[..., Any]
) -> None:
    fake_gcloud.set_state("not found", _after_deploy_answers())
    assert run_deploy("--no-verify", MODEL_URI=MODEL_URI).returncode == 0
    fingerprint = _deploy_fingerprint(fake_gcloud.changes())

    fake_gcloud.set_state("exists", _existing_project_answers(fingerprint))
    second = run_deploy("--no-verify", MODEL_URI=MODEL_URI)

    assert second.returncode == 0, second.stderr
    assert fake_gcloud.changes() == []
    assert fake_gcloud.calls()  # it did look
    assert "function is ACTIVE with this code and configuration" in second.stderr


def test_new_model_uri_redeploys_only_the_function(
    fake_gcloud: FakeGcloud, run_deploy: Callable[..., Any]
) -> None:
    fake_gcloud.set_state("not found", _after_deploy_answers())
    assert run_deploy("--no-verify", MODEL_URI=MODEL_URI).returncode == 0
    fingerprint = _deploy_fingerprint(fake_gcloud.changes())
    new_model = MODEL_URI.replace("0123456789abcdef", "fedcba9876543210")

    fake_gcloud.set_state("exists", _existing_project_answers(fingerprint))
    result = run_deploy("--no-verify", "--model-uri", new_model)

    assert result.returncode == 0, result.stderr
    (deploy,) = fake_gcloud.changes()
    assert deploy[:2] == ["functions", "deploy"]
    assert _env_vars(deploy)["MODEL_URI"] == new_model
    assert _deploy_fingerprint([deploy]) != fingerprint


def test_a_failure_stops_the_script_with_a_clear_message(
    fake_gcloud: FakeGcloud, run_deploy: Callable[..., Any]
) -> None:
    failing = "pubsub topics create ride-predictions"
    fake_gcloud.set_state("not found", _after_deploy_answers(), fail=failing)

    result = run_deploy(MODEL_URI=MODEL_URI)

    assert result.returncode != 0
    assert "PERMISSION_DENIED" in result.stderr  # gcloud's own reason is shown
    assert "'create topic ride-predictions' failed (exit 1)" in result.stderr
    assert "re-running is safe" in result.stderr
    calls = fake_gcloud.calls()
    assert " ".join(calls[-1]).startswith(failing)  # nothing ran after the failure
    assert not [call for call in calls if call[:2] == ["functions", "deploy"]]


def test_a_failed_check_is_not_taken_for_absence(
    fake_gcloud: FakeGcloud, run_deploy: Callable[..., Any]
) -> None:
    # "Permission denied (or it may not exist)": creating it anyway could clobber or duplicate.
    fake_gcloud.set_state("not found", _after_deploy_answers(), fail="topics describe")

    result = run_deploy(MODEL_URI=MODEL_URI)

    assert result.returncode == 1
    assert "could not check the current state" in result.stderr
    assert not [call for call in fake_gcloud.changes() if call[:2] == ["pubsub", "topics"]]


def test_model_uri_is_required(fake_gcloud: FakeGcloud, run_deploy: Callable[..., Any]) -> None:
    result = run_deploy()

    assert result.returncode == 1
    assert "MODEL_URI is required" in result.stderr
    assert fake_gcloud.calls() == []


def test_a_local_model_path_is_refused(
    fake_gcloud: FakeGcloud, run_deploy: Callable[..., Any]
) -> None:
    result = run_deploy(MODEL_URI="mlruns/1/abc/artifacts/model")

    assert result.returncode == 1
    assert "not a URI the cloud can reach" in result.stderr
    assert fake_gcloud.calls() == []


def test_env_values_with_commas_and_at_signs_reach_the_function_intact(
    fake_gcloud: FakeGcloud, run_deploy: Callable[..., Any]
) -> None:
    fake_gcloud.set_state("not found", _after_deploy_answers())

    result = run_deploy(
        "--no-verify",
        "--model-uri",
        "models:/ride-duration@champion",
        "--model-bucket",
        "mlflow-artifacts",
        "--mlflow-tracking-uri",
        "https://mlflow.example.com/?a=1,b=2",
        "--env",
        "LOG_LEVEL=DEBUG",
    )

    assert result.returncode == 0, result.stderr
    (deploy,) = [call for call in fake_gcloud.changes() if call[:2] == ["functions", "deploy"]]
    env_vars = _env_vars(deploy)
    assert env_vars["MODEL_URI"] == "models:/ride-duration@champion"
    assert env_vars["MLFLOW_TRACKING_URI"] == "https://mlflow.example.com/?a=1,b=2"
    assert env_vars["LOG_LEVEL"] == "DEBUG"
    assert (
        "storage buckets",
        "gs://mlflow-artifacts",
        "roles/storage.objectViewer",
        SA,
    ) in _bindings(fake_gcloud.changes())


def test_cpu_boost_and_min_instances(
    fake_gcloud: FakeGcloud, run_deploy: Callable[..., Any]
) -> None:
    fake_gcloud.set_state("not found", _after_deploy_answers())

    result = run_deploy("--no-verify", "--cpu-boost", "--min-instances", "1", MODEL_URI=MODEL_URI)

    assert result.returncode == 0, result.stderr
    changes = fake_gcloud.changes()
    (deploy,) = [call for call in changes if call[:2] == ["functions", "deploy"]]
    assert _flag(deploy, "min-instances") == "1"
    (boost,) = [call for call in changes if call[:3] == ["run", "services", "update"]]
    assert boost[3] == "ride-prediction"
    assert "--cpu-boost" in boost

    # Already boosted: nothing to do.
    fake_gcloud.set_state(
        "exists",
        [("startup-cpu-boost", "true"), *_existing_project_answers(_deploy_fingerprint(changes))],
    )
    again = run_deploy("--no-verify", "--cpu-boost", "--min-instances", "1", MODEL_URI=MODEL_URI)
    assert again.returncode == 0, again.stderr
    assert fake_gcloud.changes() == []


def test_verify_publishes_the_sample_ride_and_finds_its_prediction(
    fake_gcloud: FakeGcloud, run_deploy: Callable[..., Any]
) -> None:
    ride_id = "deploy-verify-test"
    prediction = {
        "model": "ride_duration_prediction_model",
        "version": "0123456789abcdef",
        "prediction": {"ride_duration": 18, "ride_id": ride_id},
    }
    other = {"prediction": {"ride_duration": 5, "ride_id": 7}}
    pulled = f"ACK-OTHER\t7\t{json.dumps(other)}\nACK-OURS\t{ride_id}\t{json.dumps(prediction)}"
    fake_gcloud.set_state("not found", [("subscriptions pull", pulled)])

    result = run_deploy("verify", VERIFY_RIDE_ID=ride_id)

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == prediction
    assert "VERIFIED" in result.stderr
    publish, ack = fake_gcloud.changes()
    assert publish[:4] == ["pubsub", "topics", "publish", "taxi-ride-streaming"]
    assert json.loads(_flag(publish, "message") or "") == {
        "ride": {"PULocationID": 130, "DOLocationID": 205, "trip_distance": 3.66},
        "ride_id": ride_id,
    }
    # Only our prediction is acknowledged; the other consumer's message is left alone.
    assert ack[:4] == ["pubsub", "subscriptions", "ack", "ride-predictions-sub"]
    assert _flag(ack, "ack-ids") == "ACK-OURS"


def test_verify_fails_when_no_prediction_arrives(
    fake_gcloud: FakeGcloud, run_deploy: Callable[..., Any]
) -> None:
    fake_gcloud.set_state("not found")

    result = run_deploy("verify", VERIFY_TIMEOUT="0")

    assert result.returncode == 1
    assert "NOT VERIFIED" in result.stderr
    assert "./deploy.sh logs" in result.stderr
    assert [call[2] for call in fake_gcloud.changes()] == ["publish"]


def test_logs_reads_the_functions_logs(
    fake_gcloud: FakeGcloud, run_deploy: Callable[..., Any]
) -> None:
    fake_gcloud.set_state("not found", [("logs read", "LEVEL  NAME  TIME_UTC  LOG")])

    result = run_deploy("logs")

    assert result.returncode == 0, result.stderr
    assert "LEVEL" in result.stdout
    (call,) = fake_gcloud.calls()
    assert call[:4] == ["functions", "logs", "read", "ride-prediction"]
    assert "--gen2" in call
    assert _flag(call, "region") == REGION


def test_destroy_needs_confirmation(
    fake_gcloud: FakeGcloud, run_deploy: Callable[..., Any]
) -> None:
    fake_gcloud.set_state("exists", [("value(labels)", "managed-by=deploy-sh")])

    result = run_deploy("destroy", stdin="no\n")

    assert result.returncode == 1
    assert "nothing was deleted" in result.stderr
    assert fake_gcloud.calls() == []


def test_destroy_removes_only_what_deploy_sh_created(
    fake_gcloud: FakeGcloud, run_deploy: Callable[..., Any]
) -> None:
    # The input topic existed before deploy.sh (the tutorial created it): no label.
    fake_gcloud.set_state(
        "exists",
        [
            ("topics describe taxi-ride-streaming", ""),
            ("value(labels)", "deploy-config=abc;managed-by=deploy-sh"),
            ("value(description)", "runtime identity of ... (managed-by=deploy-sh)"),
        ],
    )

    result = run_deploy("destroy", stdin=f"{PROJECT}\n", MODEL_URI=MODEL_URI)

    assert result.returncode == 0, result.stderr
    assert [_positional(call) for call in fake_gcloud.changes()] == [
        ["functions", "delete", "ride-prediction"],
        ["pubsub", "subscriptions", "delete", "ride-predictions-sub"],
        ["pubsub", "subscriptions", "delete", "ride-prediction-dead-letter-sub"],
        ["pubsub", "topics", "delete", "ride-predictions"],
        ["pubsub", "topics", "delete", "ride-prediction-dead-letter"],
        ["storage", "buckets", "remove-iam-policy-binding", "gs://models-bucket"],
        [
            "iam",
            "service-accounts",
            "delete",
            f"ride-prediction-fn@{PROJECT}.iam.gserviceaccount.com",
        ],
        [
            "iam",
            "service-accounts",
            "delete",
            f"ride-prediction-invoker@{PROJECT}.iam.gserviceaccount.com",
        ],
    ]
    assert "kept: topic taxi-ride-streaming was not created by deploy.sh" in result.stderr


# ---------------------------------------------------------------------------------- dry run

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
        "--env",
        "LOG_LEVEL=DEBUG",
        "--min-instances",
        "1",
        "--no-cpu-boost",
        "--dead-letter-topic",
        "rides-dlq",
        "--build-service-account",
        "builder",
    ),
    ("verify",),
    ("logs",),
    ("destroy", "--model-uri", MODEL_URI),
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


def test_dry_run_runs_nothing(fake_gcloud: FakeGcloud, tmp_path: Path) -> None:
    env = _base_env(tmp_path, fake_gcloud.bin_dir)
    env.update(
        FAKE_GCLOUD_STATE=str(fake_gcloud.state_path), FAKE_GCLOUD_LOG=str(fake_gcloud.log_path)
    )

    for args in DRY_RUNS:
        lines = _dry_run(args, env)
        assert lines, args
        assert all(shlex.split(line)[0] == "gcloud" for line in lines), lines

    assert fake_gcloud.calls() == []


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


def test_every_dry_run_command_passes_gclouds_parser(tmp_path: Path) -> None:
    env = _base_env(tmp_path)  # the real gcloud, with an empty configuration
    lines: list[str] = []
    for args in DRY_RUNS:
        lines.extend(line for line in _dry_run(args, env) if line not in lines)
    assert len(lines) > 40

    # gcloud takes about a second to start; two cores, so a few in parallel.
    with ThreadPoolExecutor(max_workers=3) as pool:
        verdicts = list(pool.map(lambda line: _gcloud_verdict(line, env), lines))

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


# The script reads gcloud's output through --format projections, which gcloud only evaluates
# once an API answered, so the parser test above cannot see them. This runs each projection in
# gcloud's own formatting code (its bundled Python) over resources shaped as the APIs return them.
_FORMAT_RUNNER = """
import io, json, sys
sys.path[:0] = [sys.argv[1] + "/lib", sys.argv[1] + "/lib/third_party"]
from googlecloudsdk.core.resource import resource_printer
results = []
for fmt, resource in json.load(sys.stdin):
    out = io.StringIO()
    resource_printer.Print([resource], fmt, out=out)
    results.append(out.getvalue().rstrip("\\n"))
print(json.dumps(results))
"""


def _format_of(line: str) -> str:
    (value,) = [arg.split("=", 1)[1] for arg in shlex.split(line) if arg.startswith("--format=")]
    return value


def test_check_projections_read_what_deploy_sh_expects(tmp_path: Path) -> None:
    env = _base_env(tmp_path)
    info = subprocess.run(
        ["gcloud", "info", "--format=value(basic.python_location,installation.sdk_root)"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    python, sdk_root = info.stdout.strip().split("\t")
    lines = _dry_run(("deploy", "--model-uri", MODEL_URI, "--cpu-boost"), env)
    lines += _dry_run(("destroy", "--model-uri", MODEL_URI), env)
    formats = {_format_of(line) for line in lines if "--format=" in line}

    def find(fragment: str) -> str:
        (fmt,) = [fmt for fmt in formats if fragment in fmt and "bindings" not in fmt]
        return fmt

    publisher_check = next(
        _format_of(line) for line in lines if "topics get-iam-policy ride-predictions " in line
    )
    function = {
        "name": f"projects/{PROJECT}/locations/{REGION}/functions/ride-prediction",
        "state": "ACTIVE",
        "labels": {"deploy-config": "f00d", "managed-by": "deploy-sh"},
        "serviceConfig": {"service": f"projects/{PROJECT}/locations/{REGION}/services/rp"},
        "eventTrigger": {"trigger": f"projects/{PROJECT}/locations/{REGION}/triggers/rp-1"},
    }
    prediction = '{"prediction": {"ride_duration": 18, "ride_id": "r-1"}}'
    cases = [
        # (format, resource, what deploy.sh must read)
        (
            publisher_check,
            {"bindings": [{"role": "roles/pubsub.publisher", "members": ["user:a@b.c", SA]}]},
            "roles/pubsub.publisher",
        ),
        (
            publisher_check,
            {"bindings": [{"role": "roles/pubsub.publisher", "members": [TRIGGER_SA]}]},
            "",
        ),
        (publisher_check, {"bindings": [{"role": "roles/pubsub.viewer", "members": [SA]}]}, ""),
        (publisher_check, {"etag": "BwX="}, ""),
        (find("labels.deploy-config"), function, "f00d\tACTIVE"),
        (
            find("serviceConfig.service"),
            function,
            f"{function['serviceConfig']['service']}\t{function['eventTrigger']['trigger']}",
        ),
        (
            find("transport.pubsub.subscription"),
            {"transport": {"pubsub": {"subscription": "projects/p/subscriptions/s"}}},
            "projects/p/subscriptions/s",
        ),
        (
            find("deadLetterPolicy"),
            {
                "deadLetterPolicy": {
                    "deadLetterTopic": "projects/p/topics/d",
                    "maxDeliveryAttempts": 10,
                }
            },
            "projects/p/topics/d\t10",
        ),
        (
            find("startup-cpu-boost"),
            {
                "spec": {
                    "template": {
                        "metadata": {
                            "annotations": {"run.googleapis.com/startup-cpu-boost": "true"}
                        }
                    }
                }
            },
            "true",
        ),
        (find("value(labels)"), function, "deploy-config=f00d;managed-by=deploy-sh"),
        (find("config.name"), {"config": {"name": "run.googleapis.com"}}, "run.googleapis.com"),
        (
            find("ackId"),
            {
                "ackId": "ACK-1",
                "message": {
                    "attributes": {"ride_id": "r-1"},
                    "data": base64.b64encode(prediction.encode()).decode(),
                },
            },
            f"ACK-1\tr-1\t{prediction}",
        ),
    ]
    result = subprocess.run(
        [python, "-c", _FORMAT_RUNNER, sdk_root],
        input=json.dumps([[fmt, resource] for fmt, resource, _ in cases]),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    outputs = json.loads(result.stdout)
    assert outputs == [expected for _, _, expected in cases]
