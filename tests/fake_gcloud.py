"""A fake ``gcloud`` for tests/test_deploy_script.py: a small model of one GCP project.

deploy.sh cannot reach Google Cloud here, so its logic runs against this model of the resources it
touches: APIs, Pub/Sub topics and subscriptions (with messages), service accounts, IAM policies,
buckets, an Artifact Registry repository, secrets, the function with its Cloud Run service and
Eventarc trigger. Each call reads the project's state from a JSON file, changes it as the real
service would, and answers as gcloud 528 would: queries are printed by gcloud's own resource
printer with the caller's ``--format``, so the script's projections are exercised as in the cloud.

What the model enforces, each from gcloud's source or the documentation (see docs/deploy.md):

- Prompts: the fake runs as if on a terminal, so a call without ``CLOUDSDK_CORE_DISABLE_PROMPTS``
  could prompt and fails (exit 97). With prompts off it does what gcloud does unattended: the
  Pub/Sub Token Creator check of ``functions deploy`` only warns (``v2/deploy_util.py``), an IAM
  edit of a policy holding conditions fails without ``--condition`` (``iam/iam_util.py``), a new
  function without ``--runtime`` fails, and a deploy without ``--build-service-account`` builds as
  the default account, which in a new project cannot build (the build fails).
- APIs: a command of a disabled API fails with Service Usage's error.
- IAM: a binding for a service account IAM does not know fails; the build fails unless its account
  may write logs, push to the repository and read the source; a push is delivered only if the
  trigger's account may invoke the service and the Pub/Sub service agent may sign as it.
- Faults: ``faults`` in the state make a matching call fail a number of times with a given error
  (the Eventarc propagation error of a brand-new project, say); ``unpropagated`` service accounts
  are unknown to IAM for their first binding.

The server runs under gcloud's bundled Python (for its resource printer) on a Unix socket; the
``gcloud`` on the script's PATH is ``CLIENT_SOURCE``, which forwards each call, except the local
``gcloud meta`` commands, which the real gcloud answers (``list-files-for-upload`` once per test
session: the repository does not change meanwhile). Only the standard library and
gcloud's own code are used here.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import os
import re
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

# gcloud's "prompts are possible" exit code in this fake: any other error is 1 (gcloud) or 2
# (argument error).
PROMPT_EXIT = 97
EVENTARC_PROPAGATION_ERROR = (
    "ResponseError: status=[400], code=[Ok], message=[Validation failed for trigger "
    'projects/{project}/locations/{region}/triggers/{trigger}: Invalid resource state for "": '
    "Permission denied while using the Eventarc Service Agent. If you recently started to use "
    "Eventarc, it may take a few minutes before all necessary permissions are propagated to the "
    "Service Agent. Otherwise, verify that it has Eventarc Service Agent role.]"
)
# What a build says when its account's fresh grants have not reached Cloud Storage yet.
BUILD_PERMISSION_ERROR = (
    "OperationError: code=3, message=Build failed with status: FAILURE. "
    "{build_account} does not have storage.objects.get access to the Google Cloud Storage object."
)
# What a deploy says when the function's account may not read a secret (yet).
SECRET_PERMISSION_ERROR = (
    "OperationError: code=7, message=Permission denied on secret: "
    "projects/{number}/secrets/{secret}/versions/latest for Revision service account."
)
# APIs a new project has enabled (the ones deploy.sh does not enable itself).
DEFAULT_APIS = ["serviceusage.googleapis.com", "storage.googleapis.com"]
# The API each command group calls.
GROUP_APIS = {
    "pubsub": "pubsub.googleapis.com",
    "iam": "iam.googleapis.com",
    "functions": "cloudfunctions.googleapis.com",
    "run": "run.googleapis.com",
    "eventarc": "eventarc.googleapis.com",
    "artifacts": "artifactregistry.googleapis.com",
    "secrets": "secretmanager.googleapis.com",
    "projects": "cloudresourcemanager.googleapis.com",
}
# What `functions deploy` needs besides Cloud Functions (gcloud checks the first three).
DEPLOY_APIS = [
    "run.googleapis.com",
    "cloudbuild.googleapis.com",
    "artifactregistry.googleapis.com",
    "eventarc.googleapis.com",
]
# IAM policy kinds whose gcloud commands take --condition (and refuse, unattended, to edit a
# policy holding conditions without it).
CONDITION_KINDS = {"project", "bucket", "secret", "repository", "runService", "serviceAccount"}
DAY = 86400
PUBSUB_DEFAULT_RETENTION = 7 * DAY
PUBSUB_DEFAULT_TTL = 31 * DAY
# What the deployed function does with a ride pushed to it: "predict", "reject" or "silent".
PREDICTION = {"ride_duration": 18}
DLQ_REASON = "ride.trip_distance must be >= 0, got -3"

CLIENT_SOURCE = """\
#!{python} -I
# The fake gcloud's client: forwards the call to tests/fake_gcloud.py's server.
import json, os, socket, sys

args = sys.argv[1:]
if args == ["meta", "list-files-for-upload", "."] and os.environ.get("FAKE_GCLOUD_UPLOAD_LIST"):
    # What the real gcloud said about this repository's .gcloudignore (asked once per session).
    with open(os.environ["FAKE_GCLOUD_UPLOAD_LIST"]) as upload_list:
        sys.stdout.write(upload_list.read())
    sys.exit(0)
if args[:1] == ["meta"]:
    # Local and read-only: the real gcloud answers.
    os.execv(os.environ["FAKE_GCLOUD_REAL"], ["gcloud", *args])
env = {{k: v for k, v in os.environ.items() if k.startswith(("CLOUDSDK_", "FAKE_GCLOUD_"))}}
request = json.dumps({{"args": args, "env": env, "cwd": os.getcwd()}}).encode()
with socket.socket(socket.AF_UNIX) as connection:
    connection.connect(os.environ["FAKE_GCLOUD_SOCKET"])
    connection.sendall(request)
    connection.shutdown(socket.SHUT_WR)
    reply = json.loads(b"".join(iter(lambda: connection.recv(65536), b"")))
sys.stdout.write(reply["stdout"])
sys.stderr.write(reply["stderr"])
sys.exit(reply["code"])
"""


class GcloudError(Exception):
    """A failed call: what gcloud prints on stderr, and its exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


# ------------------------------------------------------------------------------ the project


def new_project(project: str, number: str, region: str) -> dict[str, Any]:
    """The state of a brand-new project: default APIs only, nothing else."""
    return {
        "project": project,
        "number": number,
        "region": region,
        "apis": list(DEFAULT_APIS),
        "pubsub_agent": False,
        # Projects created after 8 April 2021: the Pub/Sub service agent gets Pub/Sub Service
        # Agent on the project when it is created (docs: pubsub/docs/push#authentication).
        "pubsub_agent_project_role": True,
        "topics": {},
        "subscriptions": {},
        "messages": {},
        "service_accounts": {},
        "policies": {},
        "buckets": [],
        "repositories": {},
        "secrets": [],
        "functions": {},
        "run_services": {},
        "triggers": {},
        "faults": [],
        "unpropagated": [],
        "function_behaviour": "predict",
        "recreate_trigger_on_deploy": False,
        "deploy_resets_cpu_boost": False,
        "calls": [],
        "warnings": [],
        "undelivered": 0,
        "next_id": 1,
    }


def sa_email(project: str, name: str) -> str:
    """The email of service account ``name`` in ``project``."""
    return f"{name}@{project}.iam.gserviceaccount.com"


def pubsub_agent(state: dict[str, Any]) -> str:
    """The Pub/Sub service agent's member string."""
    return f"serviceAccount:service-{state['number']}@gcp-sa-pubsub.iam.gserviceaccount.com"


def policy_key(kind: str, name: str) -> str:
    """Where a resource's IAM policy lives in the state."""
    return f"{kind}:{name}"


def bindings(state: dict[str, Any]) -> set[tuple[str, str, str, str]]:
    """Every unconditional (kind, resource, role, member) binding in the project."""
    found = set()
    for key, policy in state["policies"].items():
        kind, name = key.split(":", 1)
        for binding in policy["bindings"]:
            if "condition" in binding:
                continue
            for member in binding["members"]:
                found.add((kind, name, binding["role"], member))
    return found


def has_role(state: dict[str, Any], kind: str, name: str, roles: set[str], member: str) -> bool:
    """Whether ``member`` holds one of ``roles`` on the resource, without a condition."""
    granted = bindings(state)
    return any((kind, name, role, member) in granted for role in roles)


def seconds(duration: str) -> int:
    """A gcloud duration (``10s``, ``10m``, ``31d``, a bare number of seconds) in seconds."""
    match = re.fullmatch(r"(\d+)([smhd]?)", duration)
    if not match:
        raise GcloudError(f"argument: Invalid duration [{duration}]", 2)
    number, unit = match.groups()
    return int(number) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": DAY}[unit]


# ------------------------------------------------------------------------------ one call


class Call:
    """One gcloud invocation against the project state."""

    def __init__(self, state: dict[str, Any], args: list[str], env: dict[str, str], cwd: str):
        self.state = state
        self.args = args
        self.env = env
        self.cwd = cwd
        self.words: list[str] = []
        self.flags: dict[str, list[str | bool]] = {}
        for arg in args:
            if arg.startswith("--"):
                name, _, value = arg[2:].partition("=")
                self.flags.setdefault(name, []).append(value if "=" in arg else True)
            elif self.flags:
                raise GcloudError(f"fake gcloud: positional argument after flags: {arg}", 2)
            else:
                self.words.append(arg)
        self.stdout = io.StringIO()
        self.stderr = io.StringIO()

    # -- arguments

    def flag(self, name: str, default: Any = None) -> Any:
        """The last value of ``--name``."""
        return self.flags.get(name, [default])[-1]

    def require(self, name: str) -> str:
        """A flag the command needs."""
        value = self.flag(name)
        if not isinstance(value, str) or not value:
            raise GcloudError(f"argument --{name}: must be specified", 2)
        return value

    def project(self) -> str:
        """The project of a project-scoped command (it must be the fake's)."""
        project = self.require("project")
        if project != self.state["project"]:
            raise GcloudError(f"PERMISSION_DENIED: project {project} is not the fake's project")
        return project

    def region(self, flag: str = "region") -> str:
        """The region (or location) flag, which must be the fake's region."""
        region = self.require(flag)
        if region != self.state["region"]:
            raise GcloudError(f"fake gcloud: unexpected {flag} {region}")
        return region

    # -- output

    def print(self, resources: list[Any]) -> None:
        """Print resources with the call's --format, through gcloud's own printer."""
        from googlecloudsdk.core.resource import resource_printer

        resource_printer.Print(resources, self.flag("format", "default"), out=self.stdout)

    def warn(self, message: str) -> None:
        """A warning as gcloud prints it, also kept in the state for the tests."""
        self.stderr.write(f"WARNING: {message}\n")
        self.state["warnings"].append(message)

    def not_found(self, what: str) -> GcloudError:
        """The error gcloud reports for a missing resource."""
        return GcloudError(f"NOT_FOUND: Resource not found ({what}).")

    def next_id(self) -> int:
        """A fresh number for ids."""
        self.state["next_id"] += 1
        return int(self.state["next_id"])


# ------------------------------------------------------------------------------ commands


def _prompt_guard(call: Call) -> None:
    if call.env.get("CLOUDSDK_CORE_DISABLE_PROMPTS", "").lower() not in {"1", "true"}:
        raise GcloudError(
            "fake gcloud: prompts are enabled, so gcloud may ask questions here (on a terminal, "
            "or answer them with their defaults nobody chose): " + " ".join(call.args),
            PROMPT_EXIT,
        )


def _api_guard(call: Call) -> None:
    group = call.words[1] if call.words[:1] == ["beta"] else call.words[0]
    api = GROUP_APIS.get(group)
    if api and api not in call.state["apis"]:
        raise GcloudError(
            f"PERMISSION_DENIED: {api} has not been used in project {call.state['number']} before "
            "or it is disabled. Enable it by visiting the console, then retry. If you enabled "
            "this API recently, wait a few minutes for the action to propagate to our systems "
            "and retry."
        )


def _fault_guard(call: Call) -> None:
    line = " ".join(call.args)
    for fault in call.state["faults"]:
        if fault["times"] > 0 and fault["match"] in line:
            fault["times"] -= 1
            details = {**call.state, "trigger": "t", "build_account": "the build account"}
            raise GcloudError(fault["error"].format(**details), fault.get("code", 1))


# -- Service Usage, projects


def services_list(call: Call) -> None:
    call.project()
    call.print([{"config": {"name": api}, "state": "ENABLED"} for api in call.state["apis"]])


def services_enable(call: Call) -> None:
    call.project()
    for api in call.words[2:]:
        if api not in call.state["apis"]:
            call.state["apis"].append(api)


def services_identity_create(call: Call) -> None:
    call.project()
    if call.require("service") != "pubsub.googleapis.com":
        raise GcloudError("fake gcloud: only the Pub/Sub service agent is modelled", 2)
    state = call.state
    if not state["pubsub_agent"]:
        state["pubsub_agent"] = True
        if state["pubsub_agent_project_role"]:
            _add_binding(
                state, "project", state["project"], "roles/pubsub.serviceAgent", pubsub_agent(state)
            )
    call.stderr.write(f"Service identity created: {pubsub_agent(state).split(':')[1]}\n")


def projects_describe(call: Call) -> None:
    if call.words[2] != call.state["project"]:
        raise call.not_found(call.words[2])
    call.print([{"projectId": call.state["project"], "projectNumber": call.state["number"]}])


# -- IAM policies of any resource


def _policy(state: dict[str, Any], kind: str, name: str) -> dict[str, Any]:
    return state["policies"].setdefault(policy_key(kind, name), {"bindings": [], "etag": "BwX="})


def _add_binding(state: dict[str, Any], kind: str, name: str, role: str, member: str) -> None:
    policy = _policy(state, kind, name)
    for binding in policy["bindings"]:
        if binding["role"] == role and "condition" not in binding:
            if member not in binding["members"]:
                binding["members"].append(member)
            return
    policy["bindings"].append({"role": role, "members": [member]})


def _member_exists(state: dict[str, Any], member: str) -> bool:
    if member == pubsub_agent(state):
        return bool(state["pubsub_agent"])
    email = member.removeprefix("serviceAccount:")
    if email.endswith(f"@{state['project']}.iam.gserviceaccount.com"):
        return email in state["service_accounts"]
    return True


def iam_policy_command(kind: str, exists: Callable[[Call], str]) -> Callable[[Call], None]:
    """get-iam-policy / add-iam-policy-binding / remove-iam-policy-binding for one kind."""

    def handle(call: Call) -> None:
        name = exists(call)
        verb = next(word for word in call.words if word.endswith("iam-policy") or "binding" in word)
        state = call.state
        policy = _policy(state, kind, name)
        if verb == "get-iam-policy":
            call.print([policy])
            return
        if "condition" in call.flags and kind not in CONDITION_KINDS:
            raise GcloudError(f"unrecognized arguments: --condition={call.flag('condition')}", 2)
        condition = call.flag("condition")
        if any("condition" in b for b in policy["bindings"]) and condition is None:
            raise GcloudError(
                "Adding a binding without specifying a condition to a policy containing "
                "conditions is prohibited in non-interactive mode. Run the command again with "
                "`--condition=None`"
            )
        if condition not in (None, "None"):
            raise GcloudError("fake gcloud: conditional grants are not modelled", 2)
        role, member = call.require("role"), call.require("member")
        if verb == "add-iam-policy-binding":
            email = member.removeprefix("serviceAccount:")
            if email in state["unpropagated"]:
                state["unpropagated"].remove(email)
                raise GcloudError(f"INVALID_ARGUMENT: Service account {email} does not exist.")
            if not _member_exists(state, member):
                raise GcloudError(f"INVALID_ARGUMENT: Service account {email} does not exist.")
            _add_binding(state, kind, name, role, member)
        else:
            for binding in policy["bindings"]:
                if (
                    binding["role"] == role
                    and "condition" not in binding
                    and member in binding["members"]
                ):
                    binding["members"].remove(member)
                    policy["bindings"] = [b for b in policy["bindings"] if b["members"]]
                    break
            else:
                raise GcloudError(
                    "Policy binding with the specified principal, role, and condition not found!"
                )
        call.stderr.write(f"Updated IAM policy for {kind} [{name}].\n")

    return handle


# -- finding resources


def _existing(
    collection: str, what: str, index: int = 3, location: str | None = None
) -> Callable[[Call], str]:
    """A finder: the name at ``words[index]`` of a resource that must exist in ``collection``."""

    def find(call: Call) -> str:
        call.project()
        if location:
            call.region(location)
        name = call.words[index]
        if name not in call.state[collection]:
            raise call.not_found(f"{what} {name}")
        return str(name)

    return find


_existing_topic = _existing("topics", "topic")
_existing_subscription = _existing("subscriptions", "subscription")
_existing_service_account = _existing("service_accounts", "service account")
_existing_repository = _existing("repositories", "repository", location="location")
_existing_secret = _existing("secrets", "secret", index=2)
_existing_service = _existing("run_services", "service", location="region")


# -- Pub/Sub


def _topic_path(state: dict[str, Any], topic: str) -> str:
    return topic if topic.startswith("projects/") else f"projects/{state['project']}/topics/{topic}"


def _labels(value: str | None) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in value.split(",")) if value else {}


def topics(call: Call) -> None:
    verb = call.words[2]
    state = call.state
    if verb == "create":
        call.project()
        topic = call.words[3]
        if topic in state["topics"]:
            raise GcloudError(
                f"ALREADY_EXISTS: Resource already exists in the project (topic {topic})."
            )
        state["topics"][topic] = {
            "name": _topic_path(state, topic),
            "labels": _labels(call.flag("labels")),
        }
    elif verb == "describe":
        call.print([state["topics"][_existing_topic(call)]])
    elif verb == "delete":
        topic = _existing_topic(call)
        del state["topics"][topic]
        state["policies"].pop(policy_key("topic", topic), None)
    elif verb == "publish":
        topic = _existing_topic(call)
        attributes = dict(
            str(pair).split("=", 1) for pair in call.flags.get("attribute", []) if pair is not True
        )
        message_id = publish(state, topic, call.require("message").encode(), attributes)
        deliver_to_function(call, topic, message_id)
        call.stdout.write(f"messageIds:\n- '{message_id}'\n")
    else:
        iam_policy_command("topic", _existing_topic)(call)


def _filter_matches(subscription: dict[str, Any], attributes: dict[str, str]) -> bool:
    expression = subscription.get("filter")
    if not expression:
        return True
    match = re.fullmatch(r'attributes\.([\w-]+) = "([^"]*)"', expression)
    if not match:
        raise GcloudError(f"fake gcloud: filter not modelled: {expression}", 2)
    return attributes.get(match.group(1)) == match.group(2)


def publish(state: dict[str, Any], topic: str, data: bytes, attributes: dict[str, str]) -> str:
    """Publish to a topic: every attached subscription whose filter matches gets a copy."""
    state["next_id"] += 1
    message_id = str(state["next_id"])
    for name, subscription in state["subscriptions"].items():
        if subscription["topic"] == _topic_path(state, topic) and _filter_matches(
            subscription, attributes
        ):
            state["messages"].setdefault(name, []).append(
                {
                    "ackId": f"ack-{message_id}-{name}",
                    "message": {
                        "data": base64.b64encode(data).decode(),
                        "attributes": attributes,
                        "messageId": message_id,
                    },
                }
            )
    return message_id


def _may_push(state: dict[str, Any], function: dict[str, Any]) -> bool:
    trigger_sa = function["eventTrigger"]["serviceAccountEmail"]
    service = function["serviceConfig"]["service"].rsplit("/", 1)[1]
    invoker = has_role(
        state, "runService", service, {"roles/run.invoker"}, f"serviceAccount:{trigger_sa}"
    )
    agent = pubsub_agent(state)
    signs = state["pubsub_agent"] and (
        has_role(
            state,
            "project",
            state["project"],
            {"roles/iam.serviceAccountTokenCreator", "roles/pubsub.serviceAgent"},
            agent,
        )
        or has_role(
            state, "serviceAccount", trigger_sa, {"roles/iam.serviceAccountTokenCreator"}, agent
        )
    )
    return bool(invoker and signs)


def deliver_to_function(call: Call, topic: str, message_id: str) -> None:
    """What the deployed function does with a ride published to its trigger's topic."""
    state = call.state
    for function in state["functions"].values():
        if function["eventTrigger"]["pubsubTopic"] != _topic_path(state, topic):
            continue
        if not _may_push(state, function):
            state["undelivered"] += 1
            continue
        env = function["serviceConfig"]["environmentVariables"]
        behaviour = state["function_behaviour"]
        attributes = dict(
            str(pair).split("=", 1) for pair in call.flags.get("attribute", []) if pair is not True
        )
        ride = json.loads(call.require("message"))
        if behaviour == "predict":
            prediction = {
                "model": env["MODEL_NAME"],
                "version": "v1",
                "prediction": {**PREDICTION, "ride_id": ride["ride_id"]},
            }
            publish(
                state,
                env["PUBLISH_STREAM"],
                json.dumps(prediction).encode(),
                {
                    "ride_id": str(ride["ride_id"]),
                    "model_version": "v1",
                    "source_message_id": message_id,
                },
            )
        elif behaviour == "reject":
            publish(
                state,
                env["DEAD_LETTER_STREAM"],
                call.require("message").encode(),
                {**attributes, "dlq_reason": DLQ_REASON, "dlq_source_message_id": message_id},
            )


def subscriptions(call: Call) -> None:
    verb = call.words[2]
    state = call.state
    if verb == "create":
        call.project()
        name = call.words[3]
        if name in state["subscriptions"]:
            raise GcloudError(
                f"ALREADY_EXISTS: Resource already exists in the project (subscription {name})."
            )
        topic = call.require("topic")
        if topic not in state["topics"]:
            raise call.not_found(f"topic {topic}")
        subscription: dict[str, Any] = {
            "name": f"projects/{state['project']}/subscriptions/{name}",
            "topic": _topic_path(state, topic),
            "ackDeadlineSeconds": 10,
            "messageRetentionDuration": f"{PUBSUB_DEFAULT_RETENTION}s",
            "expirationPolicy": {"ttl": f"{PUBSUB_DEFAULT_TTL}s"},
            "labels": _labels(call.flag("labels")),
        }
        if call.flag("message-filter"):
            subscription["filter"] = call.flag("message-filter")
        state["subscriptions"][name] = subscription
        _update_subscription(call, subscription)
    elif verb == "update":
        name = _existing_subscription(call)
        _update_subscription(call, state["subscriptions"][name])
    elif verb == "describe":
        call.print([state["subscriptions"][_existing_subscription(call)]])
    elif verb == "delete":
        name = _existing_subscription(call)
        del state["subscriptions"][name]
        state["messages"].pop(name, None)
        state["policies"].pop(policy_key("subscription", name), None)
    elif verb == "pull":
        name = _existing_subscription(call)
        limit = int(call.flag("limit", "1"))
        call.print(state["messages"].get(name, [])[:limit])
    else:
        iam_policy_command("subscription", _existing_subscription)(call)


def _update_subscription(call: Call, subscription: dict[str, Any]) -> None:
    state = call.state
    if call.flag("ack-deadline"):
        deadline = int(call.flag("ack-deadline"))
        if not 10 <= deadline <= 600:
            raise GcloudError("INVALID_ARGUMENT: ack deadline must be 10 to 600 seconds")
        subscription["ackDeadlineSeconds"] = deadline
    if call.flag("min-retry-delay") or call.flag("max-retry-delay"):
        subscription["retryPolicy"] = {
            "minimumBackoff": f"{seconds(call.flag('min-retry-delay', '10s'))}s",
            "maximumBackoff": f"{seconds(call.flag('max-retry-delay', '600s'))}s",
        }
    if call.flag("message-retention-duration"):
        retention = seconds(call.flag("message-retention-duration"))
        if not 600 <= retention <= 31 * DAY:
            raise GcloudError("INVALID_ARGUMENT: retention must be 10 minutes to 31 days")
        subscription["messageRetentionDuration"] = f"{retention}s"
    if call.flag("expiration-period"):
        period = call.flag("expiration-period")
        subscription["expirationPolicy"] = (
            {} if period == "never" else {"ttl": f"{seconds(period)}s"}
        )
    if call.flag("dead-letter-topic"):
        topic = call.flag("dead-letter-topic")
        if topic not in state["topics"]:
            raise call.not_found(f"topic {topic}")
        subscription["deadLetterPolicy"] = {
            "deadLetterTopic": _topic_path(state, topic),
            "maxDeliveryAttempts": int(call.flag("max-delivery-attempts", "5")),
        }
        # Pub/Sub itself forwards dead letters: without these grants they would be lost (the
        # console warns the same way when the policy is set).
        name = subscription["name"].rsplit("/", 1)[1]
        agent = pubsub_agent(state)
        if not (
            has_role(state, "topic", topic, {"roles/pubsub.publisher"}, agent)
            and has_role(state, "subscription", name, {"roles/pubsub.subscriber"}, agent)
        ):
            call.warn(f"dead-letter policy on {name} set before the Pub/Sub service agent's grants")
    if call.flag("update-labels"):
        subscription["labels"].update(_labels(call.flag("update-labels")))


# -- IAM service accounts


def service_accounts(call: Call) -> None:
    verb = call.words[2]
    state = call.state
    if verb == "create":
        project = call.project()
        email = sa_email(project, call.words[3])
        if email in state["service_accounts"]:
            raise GcloudError(f"ALREADY_EXISTS: Service account {email} already exists.")
        state["service_accounts"][email] = {
            "email": email,
            "name": f"projects/{project}/serviceAccounts/{email}",
            "displayName": call.flag("display-name", ""),
            "description": call.flag("description", ""),
        }
        if state.get("propagation_delays"):
            state["unpropagated"].append(email)
    elif verb == "describe":
        call.print([state["service_accounts"][_existing_service_account(call)]])
    elif verb == "delete":
        email = _existing_service_account(call)
        del state["service_accounts"][email]
        state["policies"].pop(policy_key("serviceAccount", email), None)
        # IAM keeps a deleted account's bindings, renamed.
        for policy in state["policies"].values():
            for binding in policy["bindings"]:
                binding["members"] = [
                    f"deleted:{m}?uid=1" if m == f"serviceAccount:{email}" else m
                    for m in binding["members"]
                ]
    else:
        iam_policy_command("serviceAccount", _existing_service_account)(call)


# -- Cloud Storage, Artifact Registry, Secret Manager, Resource Manager


def _existing_bucket(call: Call) -> str:
    url = call.words[3]
    bucket = url.removeprefix("gs://")
    if bucket not in call.state["buckets"]:
        raise GcloudError(f"gs://{bucket} not found: 404.")
    return bucket


def buckets(call: Call) -> None:
    if call.words[2] == "describe":
        call.print([{"name": _existing_bucket(call)}])
    else:
        iam_policy_command("bucket", _existing_bucket)(call)


def repositories(call: Call) -> None:
    verb = call.words[2]
    state = call.state
    if verb == "create":
        call.project()
        region = call.region("location")
        name = call.words[3]
        if name in state["repositories"]:
            raise GcloudError(f"ALREADY_EXISTS: the repository already exists ({name}).")
        if call.require("repository-format") != "docker":
            raise GcloudError("fake gcloud: only docker repositories are modelled", 2)
        state["repositories"][name] = {
            "name": f"projects/{state['project']}/locations/{region}/repositories/{name}",
            "format": "DOCKER",
            "labels": _labels(call.flag("labels")),
            "description": call.flag("description", ""),
        }
    elif verb == "describe":
        call.print([state["repositories"][_existing_repository(call)]])
    elif verb == "delete":
        name = _existing_repository(call)
        del state["repositories"][name]
        state["policies"].pop(policy_key("repository", name), None)
    elif verb == "set-cleanup-policies":
        name = _existing_repository(call)
        repository = state["repositories"][name]
        if call.flag("policy"):
            repository["cleanupPolicies"] = _cleanup_policies(call, call.flag("policy"))
        if "dry-run" in call.flags or "no-dry-run" in call.flags:
            repository["cleanupPolicyDryRun"] = "dry-run" in call.flags
    else:
        iam_policy_command("repository", _existing_repository)(call)


def _cleanup_policies(call: Call, path: str) -> dict[str, Any]:
    """The policy file as Artifact Registry stores it (parsed by gcloud's own code)."""
    from googlecloudsdk.command_lib.artifacts import cleanup_policy_util

    parsed = cleanup_policy_util.ParseCleanupPolicy(str(Path(call.cwd, path)))
    stored = {}
    for name, policy in parsed.items():
        entry: dict[str, Any] = {"id": name, "action": policy["action"].upper()}
        if policy["condition"]:
            entry["condition"] = {
                key: f"{int(float(value[:-1]))}s" if key.endswith("Than") else value
                for key, value in policy["condition"].items()
            }
        if policy["mostRecentVersions"]:
            entry["mostRecentVersions"] = policy["mostRecentVersions"]
        stored[name] = entry
    return stored


def secrets(call: Call) -> None:
    if call.words[1] == "describe":
        name = _existing_secret(call)
        call.print([{"name": f"projects/{call.state['number']}/secrets/{name}"}])
    else:
        iam_policy_command("secret", _existing_secret)(call)


def _this_project(call: Call) -> str:
    if call.words[2] != call.state["project"]:
        raise call.not_found(call.words[2])
    return str(call.words[2])


# -- Cloud Functions, Cloud Run, Eventarc


def _existing_function(call: Call) -> str:
    call.project()
    call.region()
    name = call.words[2]
    if name not in call.state["functions"]:
        raise GcloudError(
            f"NOT_FOUND: Resource 'projects/{call.state['project']}/locations/"
            f"{call.state['region']}/functions/{name}' was not found"
        )
    return name


def _env_vars(value: str) -> dict[str, str]:
    match = re.fullmatch(r"\^([^^]+)\^(.*)", value, re.DOTALL)
    delimiter, pairs = match.groups() if match else (",", value)
    return dict(pair.split("=", 1) for pair in pairs.split(delimiter))


def _build_may_run(call: Call, build_account: str, repository: str) -> list[str]:
    """What the build account lacks (docs: functions/docs/securing/build-custom-sa)."""
    state = call.state
    member = f"serviceAccount:{build_account}"
    sources = f"gcf-v2-sources-{state['number']}-{state['region']}"
    project = state["project"]
    missing = []
    if not has_role(state, "project", project, {"roles/logging.logWriter"}, member):
        missing.append("roles/logging.logWriter on the project")
    if not (
        has_role(state, "repository", repository, {"roles/artifactregistry.writer"}, member)
        or has_role(state, "project", project, {"roles/artifactregistry.writer"}, member)
    ):
        missing.append(f"roles/artifactregistry.writer on {repository}")
    if not (
        has_role(state, "bucket", sources, {"roles/storage.objectAdmin"}, member)
        or has_role(state, "project", project, {"roles/storage.objectAdmin"}, member)
    ):
        missing.append(f"roles/storage.objectAdmin on gs://{sources}")
    return missing


def functions_deploy(call: Call) -> None:
    state = call.state
    project = call.project()
    region = call.region()
    name = call.words[2]
    existing = state["functions"].get(name)
    if "gen2" not in call.flags:
        raise GcloudError("fake gcloud: only 2nd gen functions are modelled", 2)
    if existing is None and not call.flag("runtime"):
        raise GcloudError("Flag `--runtime` is required for new functions.", 2)
    for api in DEPLOY_APIS:
        if api not in state["apis"]:
            call.warn(f"Service {api} is not enabled. This operation may not succeed.")
            raise GcloudError(f"PERMISSION_DENIED: {api} is disabled")
    # ensure_pubsub_sa_has_token_creator_role(): project level only; unattended it only warns.
    agent = pubsub_agent(state)
    if not has_role(
        state,
        "project",
        project,
        {"roles/iam.serviceAccountTokenCreator", "roles/pubsub.serviceAgent"},
        agent,
    ):
        call.stderr.write(
            f"Service account [{agent.split(':')[1]}] is missing the role "
            "[roles/iam.serviceAccountTokenCreator].\n"
        )
        call.warn("Manual binding of above role may be necessary.")
    for account_flag in ("service-account", "trigger-service-account"):
        email = call.require(account_flag)
        if email not in state["service_accounts"]:
            raise GcloudError(f"INVALID_ARGUMENT: Service account {email} does not exist.")
    # The upload creates the sources bucket; then the build runs as the build account.
    sources = f"gcf-v2-sources-{state['number']}-{region}"
    if sources not in state["buckets"]:
        state["buckets"].append(sources)
    build_flag = call.flag("build-service-account")
    if build_flag is None:
        # ValidateDefaultBuildServiceAccountAndPromptWarning() cannot prompt: the build runs as
        # the default account, which a project created since July 2024 lets build nothing.
        raise GcloudError(
            "OperationError: code=3, message=Build failed: the default build service account "
            f"{state['number']}-compute@developer.gserviceaccount.com lacks "
            "roles/cloudbuild.builds.builder"
        )
    build_account = build_flag.rsplit("/", 1)[1]
    if build_account not in state["service_accounts"]:
        raise GcloudError(f"INVALID_ARGUMENT: Service account {build_account} does not exist.")
    repository_path = call.require("docker-repository")
    repository = repository_path.rsplit("/", 1)[1]
    if repository not in state["repositories"]:
        raise GcloudError(f"NOT_FOUND: repository {repository_path} not found")
    missing = _build_may_run(call, build_account, repository)
    if missing:
        raise GcloudError(
            "OperationError: code=3, message=Build failed: build service account "
            f"{build_account} lacks {', '.join(missing)}"
        )
    _fault_guard(call)  # the Eventarc trigger is created after the build
    _write_function(call, name, existing)


def _secret_env(call: Call) -> list[dict[str, str]]:
    if "clear-secrets" in call.flags or not call.flag("set-secrets"):
        return []
    found = []
    for pair in str(call.flag("set-secrets")).split(","):
        key, reference = pair.split("=", 1)
        secret, version = reference.split(":")
        if secret not in call.state["secrets"]:
            raise GcloudError(f"NOT_FOUND: secret {secret} not found")
        # Cloud Run checks at deploy time that the function's account may read each secret.
        runtime = f"serviceAccount:{call.flag('service-account')}"
        if not has_role(
            call.state, "secret", secret, {"roles/secretmanager.secretAccessor"}, runtime
        ):
            raise GcloudError(SECRET_PERMISSION_ERROR.format(secret=secret, **call.state))
        found.append(
            {"key": key, "projectId": call.state["project"], "secret": secret, "version": version}
        )
    return found


def _write_function(call: Call, name: str, existing: dict[str, Any] | None) -> None:
    state = call.state
    project, region = state["project"], state["region"]
    labels = dict(existing["labels"]) if existing else {}
    labels.update(_labels(call.flag("update-labels")))
    function = {
        "name": f"projects/{project}/locations/{region}/functions/{name}",
        "state": "ACTIVE",
        "environment": "GEN_2",
        "labels": labels,
        "buildConfig": {
            "runtime": call.flag("runtime"),
            "entryPoint": call.flag("entry-point"),
            "serviceAccount": call.flag("build-service-account"),
            "dockerRepository": call.flag("docker-repository"),
        },
        "serviceConfig": {
            "service": f"projects/{project}/locations/{region}/services/{name}",
            "serviceAccountEmail": call.flag("service-account"),
            "availableCpu": call.flag("cpu"),
            "availableMemory": call.flag("memory"),
            "maxInstanceRequestConcurrency": int(call.flag("concurrency", "1")),
            "timeoutSeconds": seconds(call.flag("timeout", "60s")),
            "minInstanceCount": int(call.flag("min-instances", "0")),
            "maxInstanceCount": int(call.flag("max-instances", "100")),
            "ingressSettings": call.flag("ingress-settings"),
            "environmentVariables": _env_vars(call.require("set-env-vars")),
            "secretEnvironmentVariables": _secret_env(call),
        },
        "eventTrigger": {
            "pubsubTopic": _topic_path(state, call.require("trigger-topic")),
            "serviceAccountEmail": call.flag("trigger-service-account"),
            "retryPolicy": "RETRY_POLICY_RETRY"
            if "retry" in call.flags
            else "RETRY_POLICY_DO_NOT_RETRY",
        },
    }
    old_trigger = existing["eventTrigger"]["trigger"] if existing else None
    if old_trigger and not state["recreate_trigger_on_deploy"]:
        function["eventTrigger"]["trigger"] = old_trigger
    else:
        if old_trigger:
            _delete_trigger(state, old_trigger)
        function["eventTrigger"]["trigger"] = _create_trigger(call, name, function)
    state["functions"][name] = function
    service = state["run_services"].setdefault(
        name,
        {
            "apiVersion": "serving.knative.dev/v1",
            "kind": "Service",
            "metadata": {"name": name},
            "spec": {"template": {"metadata": {"annotations": {}}}},
        },
    )
    if existing and state["deploy_resets_cpu_boost"]:
        service["spec"]["template"]["metadata"]["annotations"].pop(
            "run.googleapis.com/startup-cpu-boost", None
        )


def _create_trigger(call: Call, name: str, function: dict[str, Any]) -> str:
    """Eventarc's trigger and its push subscription, with Eventarc's defaults."""
    state = call.state
    number = call.next_id()
    trigger_id = f"{name}-{number:06d}"
    subscription = f"eventarc-{state['region']}-{trigger_id}-sub-{number:03d}"
    state["subscriptions"][subscription] = {
        "name": f"projects/{state['project']}/subscriptions/{subscription}",
        "topic": function["eventTrigger"]["pubsubTopic"],
        "ackDeadlineSeconds": 10,
        "retryPolicy": {"minimumBackoff": "10s", "maximumBackoff": "600s"},
        "messageRetentionDuration": f"{DAY}s",
        "expirationPolicy": {"ttl": f"{PUBSUB_DEFAULT_TTL}s"},
        "pushConfig": {
            "pushEndpoint": f"https://{name}-abc-uc.a.run.app",
            "oidcToken": {"serviceAccountEmail": function["eventTrigger"]["serviceAccountEmail"]},
        },
        "labels": {"goog-eventarc": ""},
    }
    path = f"projects/{state['project']}/locations/{state['region']}/triggers/{trigger_id}"
    state["triggers"][trigger_id] = {
        "name": path,
        "transport": {
            "pubsub": {
                "topic": function["eventTrigger"]["pubsubTopic"],
                "subscription": f"projects/{state['project']}/subscriptions/{subscription}",
            }
        },
    }
    return path


def _delete_trigger(state: dict[str, Any], path: str) -> None:
    trigger = state["triggers"].pop(path.rsplit("/", 1)[1])
    subscription = trigger["transport"]["pubsub"]["subscription"].rsplit("/", 1)[1]
    state["subscriptions"].pop(subscription, None)
    state["policies"].pop(policy_key("subscription", subscription), None)


def functions(call: Call) -> None:
    verb = call.words[1]
    state = call.state
    if verb == "deploy":
        functions_deploy(call)
    elif verb == "describe":
        call.print([state["functions"][_existing_function(call)]])
    elif verb == "delete":
        name = _existing_function(call)
        function = state["functions"].pop(name)
        _delete_trigger(state, function["eventTrigger"]["trigger"])
        state["run_services"].pop(name, None)
        state["policies"].pop(policy_key("runService", name), None)
    elif call.words[1:3] == ["logs", "read"]:
        call.project()
        call.region()
        call.stdout.write("LEVEL  NAME  TIME_UTC  LOG\nI  ride-prediction  ...  prediction\n")
    else:
        raise GcloudError(f"fake gcloud: unknown functions command {verb}", 2)


def run_services(call: Call) -> None:
    verb = call.words[2]
    state = call.state
    if verb == "describe":
        call.print([state["run_services"][_existing_service(call)]])
    elif verb == "update":
        name = _existing_service(call)
        annotations = state["run_services"][name]["spec"]["template"]["metadata"]["annotations"]
        for flag, value in (("cpu-boost", True), ("no-cpu-boost", False)):
            if flag in call.flags:
                # config_changes.StartupCpuBoostChange writes str(bool).
                annotations["run.googleapis.com/startup-cpu-boost"] = str(value)
    else:
        iam_policy_command("runService", _existing_service)(call)


def eventarc_triggers(call: Call) -> None:
    call.project()
    call.region("location")
    path = call.words[3]
    trigger = call.state["triggers"].get(path.rsplit("/", 1)[1])
    if trigger is None:
        raise call.not_found(f"trigger {path}")
    call.print([trigger])


# The commands deploy.sh may run, by their leading words.
COMMANDS: dict[tuple[str, ...], Callable[[Call], None]] = {
    ("config", "get-value"): lambda call: call.stdout.write(call.state["project"] + "\n"),
    ("services", "list"): services_list,
    ("services", "enable"): services_enable,
    ("beta", "services", "identity", "create"): services_identity_create,
    ("projects", "describe"): projects_describe,
    ("projects", "get-iam-policy"): iam_policy_command("project", _this_project),
    ("projects", "add-iam-policy-binding"): iam_policy_command("project", _this_project),
    ("projects", "remove-iam-policy-binding"): iam_policy_command("project", _this_project),
    ("pubsub", "topics"): topics,
    ("pubsub", "subscriptions"): subscriptions,
    ("iam", "service-accounts"): service_accounts,
    ("storage", "buckets"): buckets,
    ("artifacts", "repositories"): repositories,
    ("secrets",): secrets,
    ("functions",): functions,
    ("run", "services"): run_services,
    ("eventarc", "triggers", "describe"): eventarc_triggers,
}


def handle(state: dict[str, Any], args: list[str], env: dict[str, str], cwd: str) -> dict[str, Any]:
    """Run one call against ``state`` (changed in place); the reply for the client."""
    state["calls"].append(args)
    try:
        call = Call(state, args, env, cwd)
    except GcloudError as error:
        return {"stdout": "", "stderr": f"ERROR: (gcloud) {error}\n", "code": error.code}
    try:
        _prompt_guard(call)
        matches = [
            command
            for prefix, command in sorted(COMMANDS.items(), key=lambda item: -len(item[0]))
            if tuple(call.words[: len(prefix)]) == prefix
        ]
        if not matches:
            raise GcloudError(f"fake gcloud: command not modelled: {' '.join(args)}", 2)
        command = matches[0]
        _api_guard(call)
        if call.words[:2] != ["functions", "deploy"]:
            _fault_guard(call)
        command(call)
        code = 0
    except GcloudError as error:
        name = ".".join(
            word for word in call.words[:4] if not word.startswith(("gs:", "projects/"))
        )
        call.stderr.write(f"ERROR: (gcloud.{name}) {error}\n")
        code = error.code
    return {"stdout": call.stdout.getvalue(), "stderr": call.stderr.getvalue(), "code": code}


# ------------------------------------------------------------------------------ the server


def _read_all(connection: socket.socket) -> bytes:
    chunks = []
    while chunk := connection.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def serve(socket_path: str) -> None:
    """Answer calls on a Unix socket, one at a time, until terminated."""
    sdk_root = os.environ["FAKE_GCLOUD_SDK_ROOT"]
    sys.path[:0] = [f"{sdk_root}/lib", f"{sdk_root}/lib/third_party"]
    from googlecloudsdk.core.resource import resource_printer  # noqa: F401

    with socket.socket(socket.AF_UNIX) as server:
        server.bind(socket_path)
        server.listen()
        while True:
            connection, _ = server.accept()
            with connection:
                request = json.loads(_read_all(connection))
                if request.get("ping"):
                    connection.sendall(b'{"pong": true}')
                    continue
                state_path = Path(request["env"]["FAKE_GCLOUD_STATE"])
                state = json.loads(state_path.read_text())
                before = copy.deepcopy(state)
                try:
                    reply = handle(state, request["args"], request["env"], request["cwd"])
                except Exception as error:  # a bug in the fake: say so, loudly
                    before["calls"].append(request["args"])
                    state = before
                    reply = {
                        "stdout": "",
                        "stderr": f"fake gcloud crashed: {error!r}\n",
                        "code": 99,
                    }
                state_path.write_text(json.dumps(state))
                connection.sendall(json.dumps(reply).encode())


if __name__ == "__main__":
    serve(sys.argv[2] if sys.argv[1:2] == ["serve"] else sys.argv[1])
