"""A fake ``gcloud`` for tests/test_deploy_script.py: a small, stateful model of one GCP project.

deploy.sh cannot reach Google Cloud here, so its logic runs against this model of what it touches.
Each call reads the project's state from a JSON file, changes it as the service would, and answers
as gcloud 528 does: output goes through gcloud's own printer, ``--filter`` through its own filter.

What it enforces (from gcloud's source or the documentation, see docs/deploy.md):

- Prompts: it runs as if on a terminal, so a call without ``CLOUDSDK_CORE_DISABLE_PROMPTS`` fails
  (exit 97); an IAM edit of a policy holding conditions fails without ``--condition``
  (``iam/iam_util.py``); a command of a disabled API fails with Service Usage's error.
- Time: each call is one tick. A grant applies ``propagation`` ticks after it is made; a new
  service account is unknown to IAM for its first binding when ``new_accounts_unpropagated``.
- Pushes: each tick, a push subscription offers each message it holds to the service whose URL
  starts its endpoint. The service accepts only if the push identity may invoke it, the Pub/Sub
  service agent may sign as that identity and the audience is the service URL; a refusal or a
  failure is a delivery attempt, and after the last one a dead-letter policy forwards the message
  with Pub/Sub's ``CloudPubSubDeadLetter*`` attributes. Without an endpoint it keeps messages.
- The function (``function_behaviour``): ``predict`` publishes a prediction to PUBLISH_STREAM,
  ``reject`` a dead letter with ``dlq_reason`` to DEAD_LETTER_STREAM (both keep the attribute
  ``deploy_verify``, and need the runtime account's grant), ``fail`` answers 500.
- The build runs as ``--build-service-account`` and fails unless it may write logs, push to the
  ``--image`` repository and read the sources bucket; a deploy fails if the runtime account may
  not read a secret it names. ``faults`` make a matching call fail a number of times.

The server runs under gcloud's bundled Python on a Unix socket; the ``gcloud`` on the script's PATH
is ``CLIENT_SOURCE``, which forwards each call, except ``gcloud meta``, which the real gcloud
answers (``list-files-for-upload`` once per test session).
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

PROMPT_EXIT = 97
BUILD_PERMISSION_ERROR = (
    "Build failed; check build logs for details: {account} does not have storage.objects.get "
    "access to the Google Cloud Storage object."
)
SECRET_PERMISSION_ERROR = "Revision failed: Permission denied on secret {secret} for {account}."
GROUP_APIS = {
    "pubsub": "pubsub.googleapis.com",
    "iam": "iam.googleapis.com",
    "run": "run.googleapis.com",
    "functions": "cloudfunctions.googleapis.com",
    "artifacts": "artifactregistry.googleapis.com",
    "secrets": "secretmanager.googleapis.com",
    "projects": "cloudresourcemanager.googleapis.com",
    "monitoring": "monitoring.googleapis.com",
    "logging": "logging.googleapis.com",
    "bq": "bigquery.googleapis.com",
}
# What `gcloud components install` would add; without one, its commands fail as gcloud 528 does
# unattended (update_manager.py: it will not install without asking).
COMPONENTS = {"alpha": "2025.06.20", "beta": "2025.06.20", "bq": "2.1.18", "core": "2025.06.20"}
MISSING_COMPONENT = (
    "The following components are required to run this command, but are not\ncurrently "
    "installed:\n  [{0}]\n\nTo install them, re-run the command and choose 'yes' at the "
    "installation prompt, or run:\n  $ gcloud components install {0}"
)
BIGQUERY_SUBSCRIPTION_DENIED = (
    "Failed to create subscription [projects/{project}/subscriptions/{name}]: "
    "The caller does not have permission."
)
DAY = 86400
PREDICTION = {"ride_duration": 18}
DLQ_REASON = "ride.trip_distance must be >= 0, got -3"
LONG_AGO = -(10**9)  # when Google's own grants were made: always applied
Json = dict[str, Any]

CLIENT_SOURCE = """\
#!{python} -I
# The fake gcloud's client: forwards the call to tests/fake_gcloud.py's server.
import json, os, socket, sys

args = sys.argv[1:]
tool = os.path.basename(sys.argv[0])  # gcloud or bq
if args == ["meta", "list-files-for-upload", "."] and os.environ.get("FAKE_GCLOUD_UPLOAD_LIST"):
    with open(os.environ["FAKE_GCLOUD_UPLOAD_LIST"]) as upload_list:
        sys.stdout.write(upload_list.read())
    sys.exit(0)
if args[:1] == ["meta"]:
    os.execv(os.environ["FAKE_GCLOUD_REAL"], ["gcloud", *args])
env = {{k: v for k, v in os.environ.items() if k.startswith(("CLOUDSDK_", "FAKE_GCLOUD_"))}}
stdin = sys.stdin.read() if any(a == "-" or a.endswith("=-") for a in args) else ""
if tool == "bq":
    args = ["bq", *args]
request = json.dumps({{"args": args, "env": env, "cwd": os.getcwd(), "stdin": stdin}}).encode()
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


def new_project(project: str, number: str, region: str) -> Json:
    """A brand-new project: two default APIs, nothing else."""
    collections = "topics subscriptions messages service_accounts policies granted_at buckets"
    collections += " objects repositories services functions log_metrics alert_policies channels"
    collections += " dashboards datasets tables"
    return {
        **{name: {} for name in collections.split()},
        "project": project,
        "number": number,
        "region": region,
        "apis": ["serviceusage.googleapis.com", "storage.googleapis.com"],
        "secrets": [],
        "faults": [],
        "unpropagated": [],
        "calls": [],
        "pubsub_agent": False,
        "propagation": 0,
        "function_behaviour": "predict",
        "clock": 0,
        "next_id": 1,
        "refused_pushes": 0,
        "components": dict(COMPONENTS),
        "sinks": {"_Default": {"name": "_Default", "exclusions": []}},  # every project has it
    }


def sa_email(project: str, name: str) -> str:
    """The email of service account ``name``."""
    return f"{name}@{project}.iam.gserviceaccount.com"


def pubsub_agent(state: Json) -> str:
    """The Pub/Sub service agent's member string."""
    return f"serviceAccount:service-{state['number']}@gcp-sa-pubsub.iam.gserviceaccount.com"


def bindings(state: Json) -> set[tuple[str, str, str, str]]:
    """Every unconditional (kind, resource, role, member) binding, applied or not."""
    return {
        (*key.split(":", 1), binding["role"], member)  # type: ignore[misc]
        for key, policy in state["policies"].items()
        for binding in policy["bindings"]
        if "condition" not in binding
        for member in binding["members"]
    }


def applies(state: Json, kind: str, name: str, roles: set[str], member: str) -> bool:
    """Whether ``member`` holds one of ``roles`` on the resource, with the grant propagated."""
    granted = bindings(state)
    return any(
        (kind, name, role, member) in granted
        and state["clock"]
        >= state["granted_at"].get(f"{kind}|{name}|{role}|{member}", LONG_AGO)
        + state["propagation"]
        for role in roles
    )


def add_binding(state: Json, kind: str, name: str, role: str, member: str, since: int = 0) -> None:
    """Grant ``role`` to ``member`` on a resource; it applies after the propagation delay."""
    policy = state["policies"].setdefault(f"{kind}:{name}", {"bindings": [], "etag": "BwX="})
    state["granted_at"][f"{kind}|{name}|{role}|{member}"] = since or state["clock"]
    binding = next(
        (b for b in policy["bindings"] if b["role"] == role and "condition" not in b), None
    )
    if binding is None:
        policy["bindings"].append({"role": role, "members": [member]})
    elif member not in binding["members"]:
        binding["members"].append(member)


def seconds(duration: str) -> int:
    """A gcloud duration (``10s``, ``10m``, ``31d``, a bare number) in seconds."""
    number, unit = re.fullmatch(r"(\d+)([smhd]?)", duration).groups()  # type: ignore[union-attr]
    return int(number) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": DAY}[unit]


def labels_of(value: str | None) -> dict[str, str]:
    """``--labels=a=b,c=d`` as a dict."""
    return dict(pair.split("=", 1) for pair in value.split(",")) if value else {}


def next_id(state: Json) -> int:
    """A fresh number."""
    state["next_id"] += 1
    return int(state["next_id"])


class Call:
    """One gcloud invocation against the project state."""

    def __init__(self, state: Json, request: Json) -> None:
        self.state, self.args, self.env = state, request["args"], request["env"]
        self.cwd, self.stdin = request["cwd"], request.get("stdin", "")
        self.words = [arg for arg in self.args if not arg.startswith("--")]
        self.flags: dict[str, Any] = {}
        self.repeated: dict[str, list[str]] = {}  # bq's --label, given once per label
        for arg in self.args:
            if arg.startswith("--"):
                name, equals, value = arg[2:].partition("=")
                self.flags[name] = value if equals else True
                self.repeated.setdefault(name, []).append(value)
        self.stdout, self.stderr = io.StringIO(), io.StringIO()

    def flag(self, name: str, default: Any = None) -> Any:
        """The value of ``--name``."""
        return self.flags.get(name, default)

    def require(self, name: str) -> str:
        """A flag the command needs."""
        if not isinstance(self.flag(name), str) or not self.flag(name):
            raise GcloudError(f"argument --{name}: must be specified", 2)
        return str(self.flag(name))

    def print(self, resources: list[Any]) -> None:
        """Print through gcloud's own printer, after the call's --filter."""
        from googlecloudsdk.core.resource import resource_filter, resource_printer

        if self.flag("filter"):
            matcher = resource_filter.Compile(self.flag("filter"))
            resources = [r for r in resources if matcher.Evaluate(r)]
        resource_printer.Print(resources, self.flag("format", "default"), out=self.stdout)


# ------------------------------------------------------------------------------ Pub/Sub


def topic_path(state: Json, topic: str) -> str:
    """``projects/P/topics/T``."""
    return topic if topic.startswith("projects/") else f"projects/{state['project']}/topics/{topic}"


def publish(state: Json, topic: str, data: bytes, attributes: dict[str, str]) -> str:
    """Publish: each attached subscription whose filter matches gets a copy (pushed at once)."""
    message_id = str(next_id(state))
    message = {
        "data": base64.b64encode(data).decode(),
        "attributes": attributes,
        "messageId": message_id,
    }
    for name, subscription in list(state["subscriptions"].items()):
        if subscription["topic"] == topic_path(state, topic) and _matches(subscription, attributes):
            if _written_to_bigquery(state, subscription, message):
                continue
            entry = {"ackId": f"ack-{message_id}-{name}", "message": message, "attempts": 0}
            state["messages"].setdefault(name, []).append(entry)
            if subscription.get("pushConfig", {}).get("pushEndpoint"):
                deliver(state, name)
    return message_id


def _matches(subscription: Json, attributes: dict[str, str]) -> bool:
    """Whether the subscription's filter (``attributes.KEY = "VALUE"`` or ``NOT attributes:KEY``)
    lets them through."""
    if "filter" not in subscription:
        return True
    if absent := re.fullmatch(r"NOT attributes:([\w-]+)", subscription["filter"]):
        return absent.group(1) not in attributes
    key, value = re.fullmatch(r'attributes\.([\w-]+) = "([^"]*)"', subscription["filter"]).groups()  # type: ignore[union-attr]
    return attributes.get(key) == value


def deliver(state: Json, name: str) -> None:
    """One push attempt for each message a push subscription holds."""
    subscription, agent = state["subscriptions"][name], pubsub_agent(state)
    for entry in list(state["messages"].get(name, [])):
        if _pushed(state, subscription, entry["message"]):
            state["messages"][name].remove(entry)
            continue
        entry["attempts"] += 1
        policy = subscription.get("deadLetterPolicy")
        if not policy or entry["attempts"] < policy["maxDeliveryAttempts"]:
            continue
        dead_letters = policy["deadLetterTopic"].rsplit("/", 1)[1]
        if applies(state, "topic", dead_letters, {"roles/pubsub.publisher"}, agent) and applies(
            state, "subscription", name, {"roles/pubsub.subscriber"}, agent
        ):
            state["messages"][name].remove(entry)
            forwarded = {
                "CloudPubSubDeadLetterSourceDeliveryCount": str(entry["attempts"]),
                "CloudPubSubDeadLetterSourceSubscription": name,
                "CloudPubSubDeadLetterSourceSubscriptionProject": state["project"],
            }
            data = base64.b64decode(entry["message"]["data"])
            publish(state, dead_letters, data, {**entry["message"]["attributes"], **forwarded})


def _pushed(state: Json, subscription: Json, message: Json) -> bool:
    """Whether the service accepted the push (HTTP 2xx)."""
    push, agent = subscription["pushConfig"], pubsub_agent(state)
    url = push["pushEndpoint"]
    service = next(
        (s for s in state["services"].values() if url.startswith(s["status"]["url"])), None
    )
    token = push.get("oidcToken", {})
    invoker = token.get("serviceAccountEmail", "")
    may_sign = state["pubsub_agent"] and (
        applies(state, "service-account", invoker, {"roles/iam.serviceAccountTokenCreator"}, agent)
        or applies(state, "project", state["project"], {"roles/pubsub.serviceAgent"}, agent)
    )
    if service is None or not (
        may_sign
        and applies(state, "service", service["metadata"]["name"], {"roles/run.invoker"},
                    f"serviceAccount:{invoker}")
        and token.get("audience") == service["status"]["url"]
    ):  # fmt: skip
        state["refused_pushes"] += 1
        return False
    spec = service["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value", "") for e in spec["containers"][0]["env"]}
    behaviour, attributes = state["function_behaviour"], message["attributes"]
    output = env["PUBLISH_STREAM"] if behaviour == "predict" else env["DEAD_LETTER_STREAM"]
    runtime = f"serviceAccount:{spec['serviceAccountName']}"
    if behaviour == "fail" or not applies(
        state, "topic", output, {"roles/pubsub.publisher"}, runtime
    ):
        return False
    data = base64.b64decode(message["data"])
    if behaviour == "predict":
        ride_id = json.loads(data)["ride_id"]
        body = {
            "model": env["MODEL_NAME"],
            "version": "v1",
            "prediction": {**PREDICTION, "ride_id": ride_id},
        }
        marker = {k: v for k, v in attributes.items() if k == "deploy_verify"}
        outgoing = {
            "ride_id": str(ride_id),
            "model_version": "v1",
            "source_message_id": message["messageId"],
        }
        publish(state, output, json.dumps(body).encode(), {**outgoing, **marker})
    else:
        reasons = {"dlq_reason": DLQ_REASON, "dlq_source_subscription": env["SOURCE_SUBSCRIPTION"]}
        publish(state, output, data, {**attributes, **reasons})
    return True


def _subscription_settings(call: Call, name: str) -> None:
    state, subscription = call.state, call.state["subscriptions"][name]
    if call.flag("ack-deadline"):
        subscription["ackDeadlineSeconds"] = int(call.flag("ack-deadline"))
    if call.flag("min-retry-delay") or call.flag("max-retry-delay"):
        subscription["retryPolicy"] = {
            "minimumBackoff": f"{seconds(call.flag('min-retry-delay', '10s'))}s",
            "maximumBackoff": f"{seconds(call.flag('max-retry-delay', '600s'))}s",
        }
    if call.flag("message-retention-duration"):
        subscription["messageRetentionDuration"] = (
            f"{seconds(call.flag('message-retention-duration'))}s"
        )
    if call.flag("expiration-period"):
        period = call.flag("expiration-period")
        subscription["expirationPolicy"] = (
            {} if period == "never" else {"ttl": f"{seconds(period)}s"}
        )
    if call.flag("push-endpoint"):  # the whole push config is replaced
        subscription["pushConfig"] = {"pushEndpoint": call.flag("push-endpoint")}
        if call.flag("push-auth-service-account"):
            subscription["pushConfig"]["oidcToken"] = {
                "serviceAccountEmail": call.flag("push-auth-service-account"),
                "audience": call.flag("push-auth-token-audience", call.flag("push-endpoint")),
            }
    if call.flag("dead-letter-topic"):
        subscription["deadLetterPolicy"] = {
            "deadLetterTopic": topic_path(
                state, existing(call, "topics", call.flag("dead-letter-topic"))
            ),
            "maxDeliveryAttempts": int(call.flag("max-delivery-attempts", "5")),
        }
    if call.flag("bigquery-table"):  # gcloud leaves unset booleans out of the request
        booleans = {"use-table-schema": "useTableSchema", "write-metadata": "writeMetadata",
                    "drop-unknown-fields": "dropUnknownFields"}  # fmt: skip
        subscription["bigqueryConfig"] = {
            "table": call.flag("bigquery-table"),
            **{field: True for flag, field in booleans.items() if flag in call.flags},
        }
    if subscription.get("pushConfig", {}).get("pushEndpoint"):
        deliver(state, name)


def table_key(reference: str) -> str:
    """``P:DS.T`` for ``P:DS.T`` or ``P.DS.T`` (bq's form and the API's)."""
    return reference if ":" in reference else reference.replace(".", ":", 1)


def may_write_table(state: Json, table: str) -> bool:
    """Whether the Pub/Sub service agent may write the table (a grant on it, applied)."""
    return table_key(table) in state["tables"] and applies(
        state, "table", table_key(table), {"roles/bigquery.dataEditor"}, pubsub_agent(state)
    )


def _written_to_bigquery(state: Json, subscription: Json, message: Json) -> bool:
    """A BigQuery subscription writes a message as a row, if its agent may; else it waits."""
    config = subscription.get("bigqueryConfig")
    if not config or not may_write_table(state, config["table"]):
        return False
    row = {**json.loads(base64.b64decode(message["data"])), "attributes": message["attributes"]}
    state["tables"][table_key(config["table"])]["rows"].append(row)
    return True


# ------------------------------------------------------------------------------ resources


def existing(call: Call, collection: str, name: str) -> str:
    """``name``, which must exist in ``collection``; else gcloud's not-found error."""
    if name not in call.state[collection]:
        if collection == "services":
            raise GcloudError(f"Cannot find service [{name}]")
        if collection == "buckets":
            raise GcloudError(f"gs://{name} not found: 404.")
        raise GcloudError(f"NOT_FOUND: Resource not found ({collection} {name}).")
    return name


def create(call: Call, collection: str, name: str) -> Json:
    """The resource ``create`` makes (``name`` must be new)."""
    state, labels = call.state, labels_of(call.flag("labels"))
    if name in state[collection]:
        raise GcloudError(f"ALREADY_EXISTS: Resource already exists ({collection} {name}).")
    if collection == "topics":
        return {"name": topic_path(state, name), "labels": labels}
    if collection == "subscriptions":
        topic = existing(call, "topics", call.require("topic"))
        if call.flag("bigquery-table") and not may_write_table(state, call.flag("bigquery-table")):
            raise GcloudError(
                BIGQUERY_SUBSCRIPTION_DENIED.format(project=state["project"], name=name)
            )
        filtered = {"filter": call.flag("message-filter")} if call.flag("message-filter") else {}
        path = f"projects/{state['project']}/subscriptions/{name}"
        defaults = {"ackDeadlineSeconds": 10, "messageRetentionDuration": f"{7 * DAY}s"}
        expiry = {"expirationPolicy": {"ttl": f"{31 * DAY}s"}}  # Pub/Sub's defaults
        return {"name": path, "topic": topic_path(state, topic), **defaults, **expiry,
                "labels": labels, **filtered}  # fmt: skip
    if collection == "service_accounts":
        if state.get("new_accounts_unpropagated"):
            state["unpropagated"].append(name)
        return {"email": name, "description": call.flag("description", "")}
    if collection == "buckets":
        return {"name": name, "labels": {}, "location": call.require("location")}
    return {  # repositories
        "name": f"projects/{state['project']}/locations/{state['region']}/repositories/{name}",
        "format": call.require("repository-format").upper(),
        "labels": labels,
    }


def iam(call: Call, kind: str, name: str, verb: str) -> None:
    """get-iam-policy, add-iam-policy-binding, remove-iam-policy-binding."""
    state = call.state
    policy = state["policies"].setdefault(f"{kind}:{name}", {"bindings": [], "etag": "BwX="})
    if verb == "get-iam-policy":
        call.print([policy])
        return
    if "condition" in call.flags and kind in {"topic", "subscription"}:
        raise GcloudError(f"unrecognized arguments: --condition={call.flag('condition')}", 2)
    if (
        kind != "table"
        and any("condition" in b for b in policy["bindings"])
        and "condition" not in call.flags
    ):
        raise GcloudError(
            "Adding a binding without specifying a condition to a policy containing conditions is "
            "prohibited in non-interactive mode. Run the command again with `--condition=None`"
        )
    role, member = call.require("role"), call.require("member")
    email = member.removeprefix("serviceAccount:")
    if verb == "add-iam-policy-binding":
        known = (
            state["pubsub_agent"]
            if member == pubsub_agent(state)
            else email in state["service_accounts"]
        )
        if not known or email in state["unpropagated"]:
            state["unpropagated"] = [e for e in state["unpropagated"] if e != email]
            raise GcloudError(f"INVALID_ARGUMENT: Service account {email} does not exist.")
        add_binding(state, kind, name, role, member)
    else:
        binding = next(
            (b for b in policy["bindings"] if b["role"] == role and member in b["members"]), None
        )
        if binding is None or "condition" in binding:
            raise GcloudError(
                "Policy binding with the specified principal, role, and condition not found!"
            )
        binding["members"].remove(member)
        policy["bindings"] = [b for b in policy["bindings"] if b["members"]]
    call.stderr.write(f"Updated IAM policy for {kind} [{name}].\n")


# command words -> (state collection, IAM kind, index of the resource's name in the words)
RESOURCES = {
    ("pubsub", "topics"): ("topics", "topic", 3),
    ("pubsub", "subscriptions"): ("subscriptions", "subscription", 3),
    ("iam", "service-accounts"): ("service_accounts", "service-account", 3),
    ("storage", "buckets"): ("buckets", "bucket", 3),
    ("artifacts", "repositories"): ("repositories", "repository", 3),
    ("run", "services"): ("services", "service", 3),
    ("secrets",): ("secrets", "secret", 2),
    ("functions",): ("functions", "function", 2),
}


def resource_command(call: Call, prefix: tuple[str, ...]) -> None:
    """Any command on one of RESOURCES: the common verbs here, the others in VERBS."""
    collection, kind, index = RESOURCES[prefix]
    state, verb = call.state, call.words[len(prefix)]
    if "project" in call.flags and call.flag("project") != state["project"]:
        raise GcloudError("PERMISSION_DENIED: not the fake's project")
    for flag in ("region", "location"):
        if flag in call.flags and call.flag(flag) != state["region"]:
            raise GcloudError(f"fake gcloud: unexpected --{flag}")
    if verb == "list":
        call.print(list(state[collection].values()))
        return
    if verb == "logs":
        index += 1
    name = call.words[index].removeprefix("gs://")
    if collection == "service_accounts" and verb == "create":
        name = sa_email(state["project"], name)
    if verb == "create":
        state[collection][name] = create(call, collection, name)
        VERBS.get((collection, verb), lambda call, name: None)(call, name)
        return
    existing(call, collection, name)
    if verb == "describe":
        call.print([state[collection][name] if collection != "secrets" else {"name": name}])
    elif verb == "delete":
        del state[collection][name]
        state["policies"].pop(f"{kind}:{name}", None)
        state["messages"].pop(name, None)
        for policy in state["policies"].values():  # IAM keeps a deleted account's bindings
            for binding in policy["bindings"]:
                binding["members"] = [f"deleted:{m}?uid=1" if m == f"serviceAccount:{name}" else m
                                      for m in binding["members"]]  # fmt: skip
    elif "iam-policy" in verb:
        iam(call, kind, name, verb)
    else:
        VERBS[(collection, verb)](call, name)


def _publish(call: Call, topic: str) -> None:
    attributes = dict(pair.split("=", 1) for pair in call.require("attribute").split(","))
    message_id = publish(call.state, topic, call.require("message").encode(), attributes)
    call.stdout.write(f"messageIds:\n- '{message_id}'\n")


def _pull(call: Call, name: str) -> None:
    call.print(call.state["messages"].get(name, [])[: int(call.flag("limit", "1"))])


def _cleanup_policies(call: Call, name: str) -> None:
    """The policy file as Artifact Registry stores it (parsed by gcloud's own code)."""
    from googlecloudsdk.command_lib.artifacts import cleanup_policy_util

    stored = {}
    for policy_name, policy in cleanup_policy_util.ParseCleanupPolicy(
        str(Path(call.cwd, call.require("policy")))
    ).items():
        entry: Json = {"id": policy_name, "action": policy["action"].upper()}
        if policy["condition"]:
            entry["condition"] = {k: f"{int(float(v[:-1]))}s" if k.endswith("Than") else v
                                  for k, v in policy["condition"].items()}  # fmt: skip
        if policy["mostRecentVersions"]:
            entry["mostRecentVersions"] = policy["mostRecentVersions"]
        stored[policy_name] = entry
    repository = call.state["repositories"][name]
    repository.update(cleanupPolicies=stored, cleanupPolicyDryRun="dry-run" in call.flags)


def _logs(call: Call, name: str) -> None:
    call.stdout.write(f"LEVEL  NAME  TIME_UTC  LOG\nI  {name}  ...  prediction\n")


def _service_update(call: Call, name: str) -> None:
    service = copy.deepcopy(call.state["services"][name])
    _apply_settings(call, service)
    call.state["services"][name] = service


VERBS: dict[tuple[str, str], Callable[[Call, str], None]] = {
    ("topics", "publish"): _publish,
    ("subscriptions", "create"): _subscription_settings,
    ("subscriptions", "update"): _subscription_settings,
    ("subscriptions", "pull"): _pull,
    ("buckets", "update"): lambda call, name: call.state["buckets"][name]["labels"].update(
        labels_of(call.flag("update-labels"))
    ),
    ("repositories", "set-cleanup-policies"): _cleanup_policies,
    ("services", "update"): _service_update,
    ("services", "logs"): _logs,
    ("functions", "detach"): lambda call, name: call.state["functions"].pop(name),
}


def storage_objects(call: Call) -> None:
    """``gcloud storage cat|cp|ls|rm`` on the objects of the project's buckets."""
    state, verb = call.state, call.words[1]
    url = call.words[-1]
    bucket = url.removeprefix("gs://").split("/", 1)[0]
    below = sorted(
        key for key in state["objects"] if key.startswith(url.removesuffix("**").rstrip("/") + "/")
    )
    missing = url not in state["objects"] if verb == "cat" else not below and url.count("/") > 2
    if verb != "cp" and missing:
        raise GcloudError(f"The following URLs matched no objects or files:\n-{url}")
    if verb == "cat":
        call.stdout.write(state["objects"][url])
    elif verb == "cp":
        state["objects"][url] = call.stdin if existing(call, "buckets", bucket) else ""
    elif verb == "ls":
        call.stdout.write("".join(f"{key}\n" for key in below))
    else:  # rm --recursive: the objects, and the bucket if the URL names it
        for key in below:
            del state["objects"][key]
        if url.rstrip("/") == f"gs://{bucket}":
            del state["buckets"][existing(call, "buckets", bucket)]
            state["policies"].pop(f"bucket:{bucket}", None)


# ------------------------------------------------------------------------------ Cloud Run


def _apply_settings(call: Call, service: Json) -> None:
    """The settings flags, as gcloud's config changes write them (command_lib/run)."""
    template, flag = service["spec"]["template"], call.flag
    annotations, container = template["metadata"]["annotations"], template["spec"]["containers"][0]
    limits = container["resources"]["limits"]
    template["spec"]["serviceAccountName"] = flag(
        "service-account", template["spec"].get("serviceAccountName")
    )
    limits.update(
        {"cpu": f"{round(float(flag('cpu', 1)) * 1000)}m", "memory": flag("memory", "512Mi")}
    )
    template["spec"]["containerConcurrency"] = int(flag("concurrency", 80))
    template["spec"]["timeoutSeconds"] = seconds(flag("timeout", "300"))
    annotations.pop("autoscaling.knative.dev/minScale", None)  # --min-instances=0 deletes it
    if flag("min-instances", "0") != "0":
        annotations["autoscaling.knative.dev/minScale"] = flag("min-instances")
    if flag("max-instances"):
        annotations["autoscaling.knative.dev/maxScale"] = flag("max-instances")
    service["metadata"]["annotations"]["run.googleapis.com/ingress"] = flag("ingress", "all")
    for name, key in (("cpu-throttling", "cpu-throttling"), ("cpu-boost", "startup-cpu-boost")):
        for value in (True, False):
            if f"{'' if value else 'no-'}{name}" in call.flags:
                annotations[f"run.googleapis.com/{key}"] = str(value)
    env = [e for e in container["env"] if "valueFrom" in e]
    if flag("set-env-vars"):
        match = re.fullmatch(r"\^([^^]+)\^(.*)", flag("set-env-vars"), re.DOTALL)
        delimiter, pairs = match.groups() if match else (",", flag("set-env-vars"))
        env = [
            dict(zip(("name", "value"), p.split("=", 1), strict=True))
            for p in pairs.split(delimiter)
        ] + env
    if "clear-secrets" in call.flags or flag("set-secrets"):
        env = [e for e in env if "valueFrom" not in e]
    for pair in flag("set-secrets").split(",") if flag("set-secrets") else []:
        key, reference = pair.split("=", 1)
        secret, version = reference.split(":")
        account = template["spec"]["serviceAccountName"]
        if secret not in call.state["secrets"]:
            raise GcloudError(f"NOT_FOUND: secret {secret}")
        if not applies(
            call.state,
            "secret",
            secret,
            {"roles/secretmanager.secretAccessor"},
            f"serviceAccount:{account}",
        ):
            raise GcloudError(SECRET_PERMISSION_ERROR.format(secret=secret, account=account))
        env.append({"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": version}}})
    container["env"] = env
    service["metadata"]["labels"].update(labels_of(flag("update-labels")))


BOOST = "run.googleapis.com/startup-cpu-boost"


def run_deploy(call: Call) -> None:
    """``gcloud run deploy --source --function``: upload, build as the build account, deploy."""
    state, name, region = call.state, call.words[2], call.state["region"]
    for api in (
        "run.googleapis.com",
        "artifactregistry.googleapis.com",
        "cloudbuild.googleapis.com",
    ):
        if api not in state["apis"]:
            raise GcloudError(
                f"PERMISSION_DENIED: {api} has not been used in project {state['number']}"
            )
    image = call.require("image")
    repository = image.split("/")[2]
    if repository not in state["repositories"] or image.split("/")[3] != name:
        raise GcloudError(
            f"Invalid value for [--image]: the repository provided does not exist: {image}.", 2
        )
    if not call.flag("build-service-account"):  # the default account builds nothing in new projects
        account = f"{state['number']}-compute@developer.gserviceaccount.com"
        raise GcloudError(f"Build failed: {account} lacks roles/run.builder")
    account = call.require("build-service-account").rsplit("/", 1)[1]
    if account not in state["service_accounts"]:
        raise GcloudError(
            f"Build service account {call.flag('build-service-account')} does not exist."
        )
    sources = f"run-sources-{state['project']}-{region}"
    state["buckets"].setdefault(sources, {"name": sources, "labels": {}, "location": region})
    state["objects"][f"gs://{sources}/services/{name}/{next_id(state)}.zip"] = "source"
    member, builder = f"serviceAccount:{account}", {"roles/run.builder"}
    project = (state, "project", state["project"])
    if not (
        applies(*project, {"roles/logging.logWriter"} | builder, member)
        and (applies(state, "repository", repository, {"roles/artifactregistry.writer"}, member)
             or applies(*project, builder, member))
        and (applies(state, "bucket", sources, {"roles/storage.objectViewer"}, member)
             or applies(*project, builder, member))
    ):  # fmt: skip
        raise GcloudError(BUILD_PERMISSION_ERROR.format(account=account))
    existing(call, "service_accounts", call.require("service-account"))
    service = copy.deepcopy(state["services"].get(name)) or {
        "metadata": {"name": name, "labels": {}, "annotations": {}},
        "spec": {"template": {"metadata": {"annotations": {BOOST: "True"}},  # new services: on
                              "spec": {"containers": [{"resources": {"limits": {}}, "env": []}]}}},
        "status": {"url": f"https://{name}-{state['number']}.{region}.run.app"},
    }  # fmt: skip
    service["spec"]["template"]["spec"]["containers"][0]["image"] = (
        f"{image}@sha256:{next_id(state):064d}"
    )
    service["metadata"]["annotations"]["run.googleapis.com/build-function-target"] = call.require(
        "function"
    )
    _apply_settings(call, service)
    state["services"][name] = service


def services_identity_create(call: Call) -> None:
    """The Pub/Sub service agent; projects from after 8 April 2021 give it a project role."""
    state = call.state
    if not state["pubsub_agent"]:
        state["pubsub_agent"] = True
        add_binding(
            state,
            "project",
            state["project"],
            "roles/pubsub.serviceAgent",
            pubsub_agent(state),
            LONG_AGO,
        )
    call.stderr.write(f"Service identity created: {pubsub_agent(state).split(':')[1]}\n")


def project_command(call: Call) -> None:
    """``gcloud projects describe|*-iam-policy*``."""
    if call.words[2] != call.state["project"]:
        raise GcloudError(f"NOT_FOUND: project {call.words[2]}")
    if call.words[1] == "describe":
        call.print([{"projectId": call.words[2], "projectNumber": call.state["number"]}])
    else:
        iam(call, "project", call.words[2], call.words[1])


# ------------------------------------------------------------------------------ operations
#
# Cloud Monitoring, log-based metrics and BigQuery, as far as deploy.sh uses them. The files are
# read with gcloud's own code (command_lib/monitoring/util.MessageFromString, api_lib/logging/
# util.CreateLogMetric and UpdateLogMetric, bq's ReadSchema and ParseLabels) and stored as the API
# returns them, with the server's names, etags and mutation records.


def _messages(api: str, version: str) -> Any:
    from googlecloudsdk.api_lib.util import apis

    return apis.GetMessagesModule(api, version)


def _as_dict(message: Any) -> Json:
    from apitools.base.py import encoding

    return dict(encoding.MessageToPyValue(message))


def _monitoring_message(call: Call, kind: str) -> Json:
    """The stdin of ``--policy-from-file=-`` (or the channel's), as gcloud reads it."""
    from googlecloudsdk.command_lib.monitoring import util

    remap = util.CHANNELS_FIELD_REMAPPINGS if kind == "NotificationChannel" else None
    message_type = getattr(_messages("monitoring", "v3"), kind)
    return _as_dict(util.MessageFromString(call.stdin, message_type, kind, field_remappings=remap))


def _short(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def _found(call: Call, collection: str, name: str) -> Json:
    if _short(name) not in call.state[collection]:
        raise GcloudError(f"NOT_FOUND: Requested entity was not found: {name}")
    return call.state[collection][_short(name)]  # type: ignore[no-any-return]


def _channel_names(call: Call, value: str | None) -> list[str]:
    """``--notification-channels``: IDs or names, each an existing channel's full name."""
    names = [f"projects/{call.state['project']}/notificationChannels/{_short(v)}"
             for v in (value or "").split(",") if v]  # fmt: skip
    for name in names:
        _found(call, "channels", name)
    return names


def monitoring_command(call: Call) -> None:
    """``gcloud [alpha|beta] monitoring policies|channels|dashboards VERB``."""
    track = call.words[0] if call.words[0] in {"alpha", "beta"} else ""
    noun, verb = call.words[2 if track else 1 : 4 if track else 3]
    state, project = call.state, call.state["project"]
    if call.flag("project") != project:
        raise GcloudError("PERMISSION_DENIED: not the fake's project")
    collection = {"policies": "alert_policies", "channels": "channels", "dashboards": "dashboards"}[
        noun
    ]
    if (noun == "policies" and track != "alpha") or (noun == "channels" and not track):
        raise GcloudError(f"Invalid choice: '{noun}'.", 2)  # gcloud 528's tracks
    target = call.words[4 if track else 3] if len(call.words) > (4 if track else 3) else ""
    if verb == "list":
        call.print(list(state[collection].values()))
    elif verb == "describe":
        call.print([_found(call, collection, target)])
    elif verb == "delete":
        _found(call, collection, target)
        in_use = [
            policy
            for policy in state["alert_policies"].values()
            if _short(target) in map(_short, policy.get("notificationChannels", []))
        ]
        if noun == "channels" and in_use and "force" not in call.flags:
            raise GcloudError("FAILED_PRECONDITION: the channel is used by alert policies")
        for policy in in_use:  # --force: the policies no longer name it
            policy["notificationChannels"] = [
                c for c in policy["notificationChannels"] if _short(c) != _short(target)
            ]
        del state[collection][_short(target)]
    elif noun == "dashboards":
        _dashboard(call, verb, target)
    else:
        kind = "AlertPolicy" if noun == "policies" else "NotificationChannel"
        resource = _monitoring_message(call, kind)
        if verb == "create":
            ident = str(next_id(state))
            plural = "alertPolicies" if noun == "policies" else "notificationChannels"
            resource["name"] = f"projects/{project}/{plural}/{ident}"
        else:
            ident, resource["name"] = _short(target), _found(call, collection, target)["name"]
        if noun == "policies":
            channels = call.flag(
                "notification-channels" if verb == "create" else "set-notification-channels"
            )
            resource["notificationChannels"] = _channel_names(call, channels)
            resource.setdefault("enabled", True)  # create's --enabled defaults to true
            resource["mutationRecord"] = {"mutateTime": str(state["clock"])}
        state[collection][ident] = resource


def _dashboard(call: Call, verb: str, target: str) -> None:
    """create (the id is the file's name) and update (with the etag it read, if any)."""
    from apitools.base.py import encoding
    from googlecloudsdk.core import yaml

    state, body = call.state, dict(yaml.load(call.stdin))
    encoding.PyValueToMessage(_messages("monitoring", "v1").Dashboard, body)  # gcloud's processor
    ident = _short(body.get("name", "")) if verb == "create" else _short(target)
    if verb == "create" and (not ident or ident in state["dashboards"]):
        raise GcloudError(f"ALREADY_EXISTS or no name: dashboard {ident!r}")
    if (
        verb == "update"
        and body.get("etag", _found(call, "dashboards", target)["etag"])
        != state["dashboards"][ident]["etag"]
    ):
        raise GcloudError("ABORTED: the dashboard changed since its etag was read")
    body.update(
        name=f"projects/{state['project']}/dashboards/{ident}", etag=f"etag{next_id(state)}"
    )
    state["dashboards"][ident] = body


def logging_metrics(call: Call) -> None:
    """``gcloud logging metrics create|update|describe|delete NAME``."""
    from googlecloudsdk.api_lib.logging import util

    state, verb = call.state, call.words[2]
    name = call.words[3]
    if call.flag("project") != state["project"]:
        raise GcloudError("PERMISSION_DENIED: not the fake's project")
    if verb == "create":
        if name in state["log_metrics"]:
            raise GcloudError(f"ALREADY_EXISTS: Metric {name} already exists.")
        metric = util.CreateLogMetric(name, data=call.stdin)
    elif name not in state["log_metrics"]:
        raise GcloudError(f"NOT_FOUND: Metric {name} does not exist.")
    elif verb == "update":
        from apitools.base.py import encoding

        live = encoding.PyValueToMessage(util.GetMessages().LogMetric, state["log_metrics"][name])
        metric = util.UpdateLogMetric(live, data=call.stdin)
    elif verb == "describe":
        call.print([state["log_metrics"][name]])
        return
    else:
        del state["log_metrics"][name]
        return
    state["log_metrics"][name] = {**_as_dict(metric), "updateTime": str(state["clock"])}


def logging_sinks(call: Call) -> None:
    """``gcloud logging sinks describe|update SINK``: its exclusions (``--add-exclusion`` is an
    ArgDict: KEY=VALUE pairs split on commas, surface/logging/sinks/update.py)."""
    if call.flag("project") != call.state["project"]:
        raise GcloudError("PERMISSION_DENIED: not the fake's project")
    sink = call.state["sinks"].get(call.words[3])
    if sink is None:
        raise GcloudError(f"NOT_FOUND: Sink {call.words[3]} does not exist")
    if call.words[2] == "describe":
        call.print([sink])
        return
    for name in (call.flag("remove-exclusions") or "").split(","):
        if name and name not in [e["name"] for e in sink["exclusions"]]:
            raise GcloudError(
                f"Invalid value for [--remove-exclusions]: Exclusions {name} do not exist"
            )
        sink["exclusions"] = [e for e in sink["exclusions"] if e["name"] != name]
    if call.flag("add-exclusion"):
        pairs = (pair.partition("=") for pair in call.flag("add-exclusion").split(","))
        sink["exclusions"].append({key: value for key, _, value in pairs})


def gcloud_info(call: Call) -> None:
    """``gcloud info``: the installed components."""
    call.print([{"installation": {"components": call.state["components"]}}])


def bq_labels(values: list[str]) -> dict[str, str]:
    """``--label KEY:VALUE`` flags, as bq's frontend/utils.ParseLabels reads them."""
    return {k.strip(): v.strip() for k, _, v in (value.partition(":") for value in values)}


def bq_command(call: Call) -> None:
    """``bq show|mk|update|rm|get-iam-policy|add-iam-policy-binding|remove-iam-policy-binding``."""
    sdk_bq = f"{os.environ['FAKE_GCLOUD_SDK_ROOT']}/platform/bq"
    if sdk_bq not in sys.path:
        sys.path += [sdk_bq, f"{sdk_bq}/third_party"]
    from clients import utils as bq_client_utils  # bq's own schema reader

    state, verb, reference = call.state, call.words[1], call.words[-1]
    if call.flag("project_id") != state["project"]:
        raise GcloudError("fake bq: --project_id is not the fake's project")
    dataset = reference.split(".")[0]
    is_table = "." in reference
    collection, key = ("tables", table_key(reference)) if is_table else ("datasets", dataset)
    found = state[collection].get(key)
    missing = (
        f"BigQuery error in {verb} operation: Not found: {'Table' if is_table else 'Dataset'} {key}"
    )
    labels = bq_labels(call.repeated.get("label", []))
    if verb == "mk":
        if found is not None or (is_table and dataset not in state["datasets"]):
            raise GcloudError(f"BigQuery error in mk operation: cannot create {key}", 2)
        schema = (
            bq_client_utils.ReadSchema(str(Path(call.cwd, call.require("schema"))))
            if is_table
            else None
        )
        state[collection][key] = {"id": key, "labels": labels, "location": call.flag("location"),
                                  "description": call.flag("description"), "rows": []}  # fmt: skip
        if is_table:
            state[collection][key].update(
                schema={"fields": schema},
                timePartitioning={"type": call.flag("time_partitioning_type"),
                                  "field": call.flag("time_partitioning_field")},
                clustering={"fields": call.flag("clustering_fields", "").split(",")},
            )  # fmt: skip
        return
    if found is None:
        raise GcloudError(missing, 2)
    if verb == "show":
        if call.flag("format") == "json":
            call.stdout.write(
                json.dumps({k: v for k, v in found.items() if k != "rows"}, separators=(",", ":"))
            )
    elif verb == "update":
        schema = bq_client_utils.ReadSchema(str(Path(call.cwd, call.require("schema"))))
        names = [field["name"] for field in schema]
        if [f["name"] for f in found["schema"]["fields"]] != names[
            : len(found["schema"]["fields"])
        ]:
            raise GcloudError(
                "BigQuery error in update operation: Provided Schema does not match Table"
            )
        found["schema"]["fields"] = schema
        found["labels"].update(bq_labels(call.repeated.get("set_label", [])))
    elif verb == "rm":
        for table in [t for t in state["tables"] if t.startswith(f"{dataset}.")]:
            if "recursive" not in call.flags:
                raise GcloudError("BigQuery error in rm operation: Dataset still in use", 2)
            del state["tables"][table]
            state["policies"].pop(f"table:{table}", None)
        del state["datasets"][dataset]
    elif verb == "get-iam-policy":
        policy = state["policies"].get(f"table:{key}", {"bindings": [], "etag": "BwX="})
        call.stdout.write(json.dumps(policy, separators=(",", ":")))
    else:
        iam(call, "table", key, verb)


COMMANDS: dict[tuple[str, ...], Callable[[Call], None]] = {
    ("config", "get-value"): lambda call: call.stdout.write(call.state["project"] + "\n"),
    ("services", "list"): lambda call: call.print(
        [{"config": {"name": a}} for a in call.state["apis"]]
    ),
    ("services", "enable"): lambda call: call.state["apis"].extend(
        a for a in call.words[2:] if a not in call.state["apis"]
    ),
    ("beta", "services", "identity", "create"): services_identity_create,
    ("alpha", "services", "identity", "create"): services_identity_create,
    ("projects",): project_command,
    ("storage",): storage_objects,
    ("run", "deploy"): run_deploy,
    ("info",): gcloud_info,
    ("logging", "metrics"): logging_metrics,
    ("logging", "sinks"): logging_sinks,
    ("bq",): bq_command,
    **{
        (*track, "monitoring", noun): monitoring_command
        for track in ((), ("alpha",), ("beta",))
        for noun in ("policies", "channels", "dashboards")
    },
    **{prefix: lambda call, prefix=prefix: resource_command(call, prefix) for prefix in RESOURCES},
}


def handle(state: Json, request: Json) -> Json:
    """Run one call against ``state`` (changed in place); the reply for the client."""
    state["calls"].append(request["args"])
    state["clock"] += 1  # time passes: held pushes are offered again
    for name, subscription in list(state["subscriptions"].items()):
        if subscription.get("pushConfig", {}).get("pushEndpoint"):
            deliver(state, name)
    call = Call(state, request)
    try:
        if call.env.get("CLOUDSDK_CORE_DISABLE_PROMPTS", "").lower() not in {"1", "true"}:
            raise GcloudError(
                "fake gcloud: prompts are enabled, gcloud may ask questions", PROMPT_EXIT
            )
        track = call.words[0] if call.words[0] in {"alpha", "beta"} else None
        if track and track not in state["components"]:
            raise GcloudError(MISSING_COMPONENT.format(track))
        api = GROUP_APIS.get(call.words[1] if track else call.words[0])
        if api and api not in state["apis"]:
            raise GcloudError(
                f"PERMISSION_DENIED: {api} has not been used in project {state['number']} before "
                "or it is disabled. If you enabled this API recently, wait a few minutes for the "
                "action to propagate to our systems and retry."
            )
        for fault in state["faults"]:
            if fault["times"] > 0 and fault["match"] in " ".join(call.args):
                fault["times"] -= 1
                raise GcloudError(fault["error"])
        prefixes = sorted(COMMANDS, key=len, reverse=True)
        prefix = next((p for p in prefixes if tuple(call.words[: len(p)]) == p), None)
        if prefix is None:
            raise GcloudError(f"fake gcloud: command not modelled: {' '.join(call.args)}", 2)
        COMMANDS[prefix](call)
        code = 0
    except GcloudError as error:
        name = ".".join(w for w in call.words[:4] if not w.startswith(("gs:", "projects/")))
        call.stderr.write(
            f"{error}\n" if call.words[0] == "bq" else f"ERROR: (gcloud.{name}) {error}\n"
        )
        code = error.code
    return {"stdout": call.stdout.getvalue(), "stderr": call.stderr.getvalue(), "code": code}


def serve(socket_path: str) -> None:
    """Answer calls on a Unix socket, one at a time, until terminated."""
    sdk_root = os.environ["FAKE_GCLOUD_SDK_ROOT"]
    sys.path[:0] = [f"{sdk_root}/lib", f"{sdk_root}/lib/third_party"]
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(socket_path)
        server.listen()
        while True:
            connection, _ = server.accept()
            with connection:
                chunks = []
                while chunk := connection.recv(65536):
                    chunks.append(chunk)
                request = json.loads(b"".join(chunks))
                if request.get("ping"):
                    connection.sendall(b'{"pong": true}')
                    continue
                state_path = Path(request["env"]["FAKE_GCLOUD_STATE"])
                state = json.loads(state_path.read_text())
                before = copy.deepcopy(state)
                try:
                    reply = handle(state, request)
                except Exception as error:  # a bug in the fake: say so, loudly
                    state = {**before, "calls": [*before["calls"], request["args"]]}
                    reply = {
                        "stdout": "",
                        "stderr": f"fake gcloud crashed: {error!r}\n",
                        "code": 99,
                    }
                state_path.write_text(json.dumps(state))
                connection.sendall(json.dumps(reply).encode())


if __name__ == "__main__":
    serve(sys.argv[2] if sys.argv[1:2] == ["serve"] else sys.argv[1])
