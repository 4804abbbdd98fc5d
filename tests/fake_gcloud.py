"""A fake ``gcloud`` for tests/test_deploy_script.py: a small, stateful model of one GCP project.

deploy.sh cannot reach Google Cloud here, so its logic runs against this model of what it touches:
APIs, Pub/Sub topics and subscriptions with their messages and pushes, service accounts, IAM
policies, Cloud Storage buckets and objects, an Artifact Registry repository, secrets, the Cloud Run
service, and an earlier Cloud Functions function. Each call reads the project's state from a JSON
file, changes it as the service would and answers as gcloud 528 does: output goes through gcloud's
own resource printer and ``--filter`` through its own filter, with the caller's expressions.

What it enforces, each from gcloud's source or the documentation (docs/deploy.md):

- Prompts: it runs as if on a terminal, so a call without ``CLOUDSDK_CORE_DISABLE_PROMPTS`` fails
  (exit 97). An IAM edit of a policy holding conditions fails without ``--condition``
  (``iam/iam_util.py``); a command of a disabled API fails with Service Usage's error.
- Time: every call is one tick. A grant takes ``propagation`` ticks to apply (IAM's 2 to 7
  minutes), a new service account is unknown to IAM for its first binding if ``unpropagated``.
- Pushes: a push subscription delivers each message to the service whose URL its endpoint starts
  with, once per tick, until the service accepts it: only if the push identity may invoke the
  service, the Pub/Sub service agent may sign as it, and the audience is the service URL. A refused
  or failed push counts as a delivery attempt; with a dead-letter policy, Pub/Sub forwards the
  message after the last one, adding its ``CloudPubSubDeadLetter*`` attributes. A subscription
  without a push endpoint keeps messages until it gets one.
- The function (``function_behaviour``): ``predict`` publishes a prediction to PUBLISH_STREAM,
  ``reject`` a dead letter with ``dlq_reason`` to DEAD_LETTER_STREAM, ``fail`` answers 500; both
  outputs keep the ``deploy_verify`` attribute, and publishing needs the runtime account's grant.
- The build runs as ``--build-service-account`` and fails unless it may write logs, push to the
  ``--image`` repository and read the sources bucket; a deploy fails if the runtime account may
  not read a secret it names.
- Faults: ``faults`` make a matching call fail a number of times with a given error.

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
SECRET_PERMISSION_ERROR = (
    "Revision failed: Permission denied on secret: projects/{number}/secrets/{secret}/versions/"
    "latest for Revision service account {account}."
)
DEFAULT_APIS = ["serviceusage.googleapis.com", "storage.googleapis.com"]
GROUP_APIS = {
    "pubsub": "pubsub.googleapis.com",
    "iam": "iam.googleapis.com",
    "run": "run.googleapis.com",
    "functions": "cloudfunctions.googleapis.com",
    "artifacts": "artifactregistry.googleapis.com",
    "secrets": "secretmanager.googleapis.com",
    "projects": "cloudresourcemanager.googleapis.com",
}
# Pub/Sub commands take no --condition (their IAM policies hold no conditions).
NO_CONDITION_KINDS = {"topic", "subscription"}
DAY = 86400
PREDICTION = {"ride_duration": 18}
DLQ_REASON = "ride.trip_distance must be >= 0, got -3"
# Google's grant to the Pub/Sub service agent (projects from after 8 April 2021): always applied.
LONG_AGO = -(10**9)

CLIENT_SOURCE = """\
#!{python} -I
# The fake gcloud's client: forwards the call to tests/fake_gcloud.py's server.
import json, os, socket, sys

args = sys.argv[1:]
if args == ["meta", "list-files-for-upload", "."] and os.environ.get("FAKE_GCLOUD_UPLOAD_LIST"):
    with open(os.environ["FAKE_GCLOUD_UPLOAD_LIST"]) as upload_list:
        sys.stdout.write(upload_list.read())
    sys.exit(0)
if args[:1] == ["meta"]:
    os.execv(os.environ["FAKE_GCLOUD_REAL"], ["gcloud", *args])
env = {{k: v for k, v in os.environ.items() if k.startswith(("CLOUDSDK_", "FAKE_GCLOUD_"))}}
stdin = sys.stdin.read() if "-" in args else ""
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


def new_project(project: str, number: str, region: str) -> dict[str, Any]:
    """A brand-new project: default APIs, nothing else."""
    return {
        "project": project,
        "number": number,
        "region": region,
        "apis": list(DEFAULT_APIS),
        "pubsub_agent": False,
        "topics": {},
        "subscriptions": {},
        "messages": {},
        "pending": [],
        "service_accounts": {},
        "policies": {},
        "granted_at": {},
        "buckets": {},
        "objects": {},
        "repositories": {},
        "secrets": [],
        "services": {},
        "functions": {},
        "faults": [],
        "unpropagated": [],
        "propagation": 0,
        "function_behaviour": "predict",
        "clock": 0,
        "next_id": 1,
        "refused_pushes": 0,
        "calls": [],
        "warnings": [],
    }


def sa_email(project: str, name: str) -> str:
    """The email of service account ``name``."""
    return f"{name}@{project}.iam.gserviceaccount.com"


def pubsub_agent(state: dict[str, Any]) -> str:
    """The Pub/Sub service agent's member string."""
    return f"serviceAccount:service-{state['number']}@gcp-sa-pubsub.iam.gserviceaccount.com"


def bindings(state: dict[str, Any]) -> set[tuple[str, str, str, str]]:
    """Every unconditional (kind, resource, role, member) binding, applied or not."""
    found = set()
    for key, policy in state["policies"].items():
        kind, name = key.split(":", 1)
        for binding in policy["bindings"]:
            if "condition" not in binding:
                found.update((kind, name, binding["role"], m) for m in binding["members"])
    return found


def applies(state: dict[str, Any], kind: str, name: str, roles: set[str], member: str) -> bool:
    """Whether ``member`` holds one of ``roles`` on the resource, with the grant propagated."""
    for role in roles:
        if (kind, name, role, member) in bindings(state):
            since = state["granted_at"].get(f"{kind}|{name}|{role}|{member}", LONG_AGO)
            if state["clock"] >= since + state["propagation"]:
                return True
    return False


def seconds(duration: str) -> int:
    """A gcloud duration (``10s``, ``10m``, ``31d``, a bare number) in seconds."""
    match = re.fullmatch(r"(\d+)([smhd]?)", duration)
    if not match:
        raise GcloudError(f"argument: Invalid duration [{duration}]", 2)
    return int(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": DAY}[match.group(2)]


def labels_of(value: str | None) -> dict[str, str]:
    """``--labels=a=b,c=d`` as a dict."""
    return dict(pair.split("=", 1) for pair in value.split(",")) if value else {}


class Call:
    """One gcloud invocation against the project state."""

    def __init__(self, state: dict[str, Any], request: dict[str, Any]) -> None:
        self.state = state
        self.args: list[str] = request["args"]
        self.env: dict[str, str] = request["env"]
        self.cwd: str = request["cwd"]
        self.stdin: str = request.get("stdin", "")
        self.words: list[str] = []
        self.flags: dict[str, list[str | bool]] = {}
        for arg in self.args:
            if arg.startswith("--"):
                name, _, value = arg[2:].partition("=")
                self.flags.setdefault(name, []).append(value if "=" in arg else True)
            else:
                self.words.append(arg)
        self.stdout = io.StringIO()
        self.stderr = io.StringIO()

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
        """The project flag, which must be the fake's."""
        if self.require("project") != self.state["project"]:
            raise GcloudError("PERMISSION_DENIED: not the fake's project")
        return str(self.state["project"])

    def region(self, flag: str = "region") -> str:
        """The region (or location) flag, which must be the fake's."""
        if self.require(flag) != self.state["region"]:
            raise GcloudError(f"fake gcloud: unexpected --{flag}")
        return str(self.state["region"])

    def print(self, resources: list[Any]) -> None:
        """Print through gcloud's own printer, after the call's --filter."""
        from googlecloudsdk.core.resource import resource_filter, resource_printer

        if self.flag("filter"):
            matcher = resource_filter.Compile(self.flag("filter"))
            resources = [r for r in resources if matcher.Evaluate(r)]
        resource_printer.Print(resources, self.flag("format", "default"), out=self.stdout)

    def next_id(self) -> int:
        """A fresh number."""
        self.state["next_id"] += 1
        return int(self.state["next_id"])


def find(collection: str, what: str, index: int = 3) -> Callable[[Call], str]:
    """A finder: the name at ``words[index]`` of a resource that must exist in ``collection``."""

    def finder(call: Call) -> str:
        name = call.words[index].removeprefix("gs://")
        if collection not in {"buckets"}:
            call.project()
        if collection == "repositories":
            call.region("location")
        if collection == "services":
            call.region()
        if name not in call.state[collection]:
            if collection == "services":
                raise GcloudError(f"Cannot find service [{name}]")
            if collection == "buckets":
                raise GcloudError(f"gs://{name} not found: 404.")
            raise GcloudError(f"NOT_FOUND: Resource not found ({what} {name}).")
        return str(name)

    return finder


# ------------------------------------------------------------------------------ IAM


def _policy(state: dict[str, Any], kind: str, name: str) -> dict[str, Any]:
    return state["policies"].setdefault(f"{kind}:{name}", {"bindings": [], "etag": "BwX="})


def add_binding(state: dict[str, Any], kind: str, name: str, role: str, member: str) -> None:
    """Grant ``role`` to ``member`` on a resource, applying after the propagation delay."""
    policy = _policy(state, kind, name)
    state["granted_at"][f"{kind}|{name}|{role}|{member}"] = state["clock"]
    for binding in policy["bindings"]:
        if binding["role"] == role and "condition" not in binding:
            if member not in binding["members"]:
                binding["members"].append(member)
            return
    policy["bindings"].append({"role": role, "members": [member]})


def iam(kind: str, finder: Callable[[Call], str]) -> Callable[[Call], None]:
    """get-iam-policy / add-iam-policy-binding / remove-iam-policy-binding for one kind."""

    def handle(call: Call) -> None:
        name = finder(call)
        verb = next(w for w in call.words if w.endswith(("iam-policy", "iam-policy-binding")))
        state = call.state
        policy = _policy(state, kind, name)
        if verb == "get-iam-policy":
            call.print([policy])
            return
        condition = call.flag("condition")
        if condition is not None and kind in NO_CONDITION_KINDS:
            raise GcloudError(f"unrecognized arguments: --condition={condition}", 2)
        if any("condition" in b for b in policy["bindings"]) and condition is None:
            raise GcloudError(
                "Adding a binding without specifying a condition to a policy containing "
                "conditions is prohibited in non-interactive mode. Run the command again with "
                "`--condition=None`"
            )
        role, member = call.require("role"), call.require("member")
        email = member.removeprefix("serviceAccount:")
        if verb == "add-iam-policy-binding":
            known = (
                state["pubsub_agent"]
                if member == pubsub_agent(state)
                else email in state["service_accounts"]
                or not email.endswith(".iam.gserviceaccount.com")
            )
            if not known or email in state["unpropagated"]:
                if email in state["unpropagated"]:
                    state["unpropagated"].remove(email)
                raise GcloudError(f"INVALID_ARGUMENT: Service account {email} does not exist.")
            add_binding(state, kind, name, role, member)
        else:
            matching = [
                b
                for b in policy["bindings"]
                if b["role"] == role and "condition" not in b and member in b["members"]
            ]
            if not matching:
                raise GcloudError(
                    "Policy binding with the specified principal, role, and condition not found!"
                )
            matching[0]["members"].remove(member)
            policy["bindings"] = [b for b in policy["bindings"] if b["members"]]
        call.stderr.write(f"Updated IAM policy for {kind} [{name}].\n")

    return handle


# ------------------------------------------------------------------------------ Pub/Sub


def topic_path(state: dict[str, Any], topic: str) -> str:
    """``projects/P/topics/T``."""
    return topic if topic.startswith("projects/") else f"projects/{state['project']}/topics/{topic}"


def _filter_matches(subscription: dict[str, Any], attributes: dict[str, str]) -> bool:
    expression = subscription.get("filter")
    if not expression:
        return True
    match = re.fullmatch(r'attributes\.([\w-]+) = "([^"]*)"', expression)
    if not match:
        raise GcloudError(f"fake gcloud: filter not modelled: {expression}", 2)
    return attributes.get(match.group(1)) == match.group(2)


def publish(state: dict[str, Any], topic: str, data: bytes, attributes: dict[str, str]) -> str:
    """Publish: each attached subscription whose filter matches gets a copy (pushed at once)."""
    state["next_id"] += 1
    message_id = str(state["next_id"])
    message = {
        "data": base64.b64encode(data).decode(),
        "attributes": attributes,
        "messageId": message_id,
    }
    for name, subscription in list(state["subscriptions"].items()):
        if subscription["topic"] == topic_path(state, topic) and _filter_matches(
            subscription, attributes
        ):
            state["messages"].setdefault(name, []).append(
                {"ackId": f"ack-{message_id}-{name}", "message": message, "attempts": 0}
            )
            if subscription.get("pushConfig", {}).get("pushEndpoint"):
                deliver(state, name)
    return message_id


def deliver(state: dict[str, Any], name: str) -> None:
    """One push attempt for each message a push subscription holds."""
    subscription = state["subscriptions"][name]
    for entry in list(state["messages"].get(name, [])):
        if _pushed(state, subscription, entry["message"]):
            state["messages"][name].remove(entry)
            continue
        entry["attempts"] += 1
        policy = subscription.get("deadLetterPolicy")
        agent = pubsub_agent(state)
        if (
            policy
            and entry["attempts"] >= policy["maxDeliveryAttempts"]
            and applies(state, "topic", policy["deadLetterTopic"].rsplit("/", 1)[1],
                        {"roles/pubsub.publisher"}, agent)
            and applies(state, "subscription", name, {"roles/pubsub.subscriber"}, agent)
        ):  # fmt: skip
            state["messages"][name].remove(entry)
            attributes = {
                **entry["message"]["attributes"],
                "CloudPubSubDeadLetterSourceDeliveryCount": str(entry["attempts"]),
                "CloudPubSubDeadLetterSourceSubscription": name,
                "CloudPubSubDeadLetterSourceSubscriptionProject": state["project"],
            }
            data = base64.b64decode(entry["message"]["data"])
            publish(state, policy["deadLetterTopic"].rsplit("/", 1)[1], data, attributes)


def _pushed(state: dict[str, Any], subscription: dict[str, Any], message: dict[str, Any]) -> bool:
    """Whether the service accepted the push (HTTP 2xx)."""
    push = subscription["pushConfig"]
    service = next(
        (
            s
            for s in state["services"].values()
            if push["pushEndpoint"].startswith(s["status"]["url"])
        ),
        None,
    )
    if service is None:
        return False
    token = push.get("oidcToken", {})
    invoker = f"serviceAccount:{token.get('serviceAccountEmail')}"
    agent = pubsub_agent(state)
    may_sign = state["pubsub_agent"] and (
        applies(state, "service-account", token.get("serviceAccountEmail", ""),
                {"roles/iam.serviceAccountTokenCreator"}, agent)
        or applies(state, "project", state["project"], {"roles/pubsub.serviceAgent"}, agent)
    )  # fmt: skip
    name = service["metadata"]["name"]
    if not (
        may_sign
        and applies(state, "service", name, {"roles/run.invoker"}, invoker)
        and token.get("audience") == service["status"]["url"]
    ):
        state["refused_pushes"] += 1
        return False
    container = service["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value", "") for e in container["env"]}
    runtime = f"serviceAccount:{service['spec']['template']['spec']['serviceAccountName']}"
    behaviour = state["function_behaviour"]
    output = env["PUBLISH_STREAM"] if behaviour == "predict" else env["DEAD_LETTER_STREAM"]
    if behaviour == "fail" or not applies(
        state, "topic", output, {"roles/pubsub.publisher"}, runtime
    ):
        return False
    attributes = message["attributes"]
    marker = {"deploy_verify": attributes["deploy_verify"]} if "deploy_verify" in attributes else {}
    ride = json.loads(base64.b64decode(message["data"]))
    if behaviour == "predict":
        body = {
            "model": env["MODEL_NAME"],
            "version": "v1",
            "prediction": {**PREDICTION, "ride_id": ride["ride_id"]},
        }
        publish(state, output, json.dumps(body).encode(),
                {"ride_id": str(ride["ride_id"]), "model_version": "v1",
                 "source_message_id": message["messageId"], **marker})  # fmt: skip
    else:
        reasons = {"dlq_reason": DLQ_REASON, "dlq_source_subscription": env["SOURCE_SUBSCRIPTION"]}
        publish(state, output, base64.b64decode(message["data"]), {**attributes, **reasons})
    return True


def topics(call: Call) -> None:
    verb, state = call.words[2], call.state
    if verb == "create":
        topic = call.words[3]
        call.project()
        if topic in state["topics"]:
            raise GcloudError(f"ALREADY_EXISTS: Resource already exists (topic {topic}).")
        state["topics"][topic] = {
            "name": topic_path(state, topic),
            "labels": labels_of(call.flag("labels")),
        }
    elif verb == "list":
        call.project()
        call.print(list(state["topics"].values()))
    elif verb == "describe":
        call.print([state["topics"][find("topics", "topic")(call)]])
    elif verb == "delete":
        topic = find("topics", "topic")(call)
        del state["topics"][topic]
        state["policies"].pop(f"topic:{topic}", None)
    elif verb == "publish":
        topic = find("topics", "topic")(call)
        attributes = dict(str(p).split("=", 1) for p in call.require("attribute").split(","))
        message_id = publish(state, topic, call.require("message").encode(), attributes)
        call.stdout.write(f"messageIds:\n- '{message_id}'\n")
    else:
        iam("topic", find("topics", "topic"))(call)


def subscriptions(call: Call) -> None:
    verb, state = call.words[2], call.state
    if verb == "create":
        call.project()
        name, topic = call.words[3], call.require("topic")
        if name in state["subscriptions"]:
            raise GcloudError(f"ALREADY_EXISTS: Resource already exists (subscription {name}).")
        if topic not in state["topics"]:
            raise GcloudError(f"NOT_FOUND: Resource not found (topic {topic}).")
        state["subscriptions"][name] = {
            "name": f"projects/{state['project']}/subscriptions/{name}",
            "topic": topic_path(state, topic),
            "ackDeadlineSeconds": 10,
            "messageRetentionDuration": f"{7 * DAY}s",
            "expirationPolicy": {"ttl": f"{31 * DAY}s"},
            "labels": labels_of(call.flag("labels")),
            **({"filter": call.flag("message-filter")} if call.flag("message-filter") else {}),
        }
        _update_subscription(call, name)
    elif verb == "update":
        _update_subscription(call, find("subscriptions", "subscription")(call))
    elif verb == "list":
        call.project()
        call.print(list(state["subscriptions"].values()))
    elif verb == "describe":
        call.print([state["subscriptions"][find("subscriptions", "subscription")(call)]])
    elif verb == "delete":
        name = find("subscriptions", "subscription")(call)
        del state["subscriptions"][name]
        state["messages"].pop(name, None)
        state["policies"].pop(f"subscription:{name}", None)
    elif verb == "pull":
        name = find("subscriptions", "subscription")(call)
        call.print(state["messages"].get(name, [])[: int(call.flag("limit", "1"))])
    else:
        iam("subscription", find("subscriptions", "subscription"))(call)


def _update_subscription(call: Call, name: str) -> None:
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
        topic = call.flag("dead-letter-topic")
        if topic not in state["topics"]:
            raise GcloudError(f"NOT_FOUND: Resource not found (topic {topic}).")
        subscription["deadLetterPolicy"] = {
            "deadLetterTopic": topic_path(state, topic),
            "maxDeliveryAttempts": int(call.flag("max-delivery-attempts", "5")),
        }
    if call.flag("update-labels"):
        subscription["labels"].update(labels_of(call.flag("update-labels")))
    if subscription.get("pushConfig", {}).get("pushEndpoint"):
        deliver(state, name)


# ------------------------------------------------------------------ IAM, storage, registry


def service_accounts(call: Call) -> None:
    verb, state = call.words[2], call.state
    if verb == "create":
        email = sa_email(call.project(), call.words[3])
        if email in state["service_accounts"]:
            raise GcloudError(f"ALREADY_EXISTS: Service account {email} already exists.")
        state["service_accounts"][email] = {
            "email": email,
            "description": call.flag("description", ""),
            "displayName": call.flag("display-name", ""),
        }
        if state.get("new_accounts_unpropagated"):
            state["unpropagated"].append(email)
    elif verb == "list":
        call.project()
        call.print(list(state["service_accounts"].values()))
    elif verb == "describe":
        call.print([state["service_accounts"][find("service_accounts", "service account")(call)]])
    elif verb == "delete":
        email = find("service_accounts", "service account")(call)
        del state["service_accounts"][email]
        state["policies"].pop(f"service-account:{email}", None)
        for policy in state["policies"].values():  # IAM keeps a deleted account's bindings
            for binding in policy["bindings"]:
                binding["members"] = [
                    f"deleted:{m}?uid=1" if m == f"serviceAccount:{email}" else m
                    for m in binding["members"]
                ]
    else:
        iam("service-account", find("service_accounts", "service account"))(call)


def _objects(state: dict[str, Any], url: str) -> list[str]:
    prefix = url.removesuffix("**")
    return sorted(key for key in state["objects"] if key.startswith(prefix.rstrip("/") + "/"))


def storage(call: Call) -> None:
    state, words = call.state, call.words
    if words[1] == "buckets":
        verb = words[2]
        if verb == "create":
            bucket = words[3].removeprefix("gs://")
            if bucket in state["buckets"]:
                raise GcloudError(
                    f"HTTPError 409: The requested bucket name {bucket} is not available."
                )
            state["buckets"][bucket] = {
                "name": bucket,
                "labels": {},
                "location": call.flag("location"),
            }
        elif verb == "describe":
            call.print([state["buckets"][find("buckets", "bucket")(call)]])
        elif verb == "update":
            state["buckets"][find("buckets", "bucket")(call)]["labels"].update(
                labels_of(call.flag("update-labels"))
            )
        else:
            iam("bucket", find("buckets", "bucket"))(call)
        return
    url = words[-1] if words[1] != "rm" else words[2]
    bucket = url.removeprefix("gs://").split("/", 1)[0]
    if words[1] == "cat":
        if url not in state["objects"]:
            raise GcloudError(f"The following URLs matched no objects or files:\n-{url}")
        call.stdout.write(state["objects"][url])
    elif words[1] == "cp":
        if bucket not in state["buckets"]:
            raise GcloudError(f"gs://{bucket} not found: 404.")
        state["objects"][url] = call.stdin
    elif words[1] == "ls":
        found = _objects(state, url)
        if not found:
            raise GcloudError("One or more URLs matched no objects.")
        call.stdout.write("".join(f"{key}\n" for key in found))
    elif words[1] == "rm":
        for key in _objects(state, url) or [url]:
            if key not in state["objects"] and url.count("/") > 2:
                raise GcloudError(f"The following URLs matched no objects or files:\n-{url}")
            state["objects"].pop(key, None)
        if url.rstrip("/") == f"gs://{bucket}":
            del state["buckets"][bucket]
            state["policies"].pop(f"bucket:{bucket}", None)


def repositories(call: Call) -> None:
    verb, state = call.words[2], call.state
    finder = find("repositories", "repository")
    if verb == "create":
        call.project()
        call.region("location")
        name = call.words[3]
        if name in state["repositories"]:
            raise GcloudError(f"ALREADY_EXISTS: the repository already exists ({name}).")
        state["repositories"][name] = {
            "name": f"projects/{state['project']}/locations/{state['region']}/repositories/{name}",
            "format": call.require("repository-format").upper(),
            "labels": labels_of(call.flag("labels")),
        }
    elif verb == "list":
        call.project()
        call.region("location")
        call.print(list(state["repositories"].values()))
    elif verb == "describe":
        call.print([state["repositories"][finder(call)]])
    elif verb == "delete":
        name = finder(call)
        del state["repositories"][name]
        state["policies"].pop(f"repository:{name}", None)
    elif verb == "set-cleanup-policies":
        repository = state["repositories"][finder(call)]
        repository["cleanupPolicies"] = _cleanup_policies(call, call.require("policy"))
        repository["cleanupPolicyDryRun"] = "dry-run" in call.flags
    else:
        iam("repository", finder)(call)


def _cleanup_policies(call: Call, path: str) -> dict[str, Any]:
    """The policy file as Artifact Registry stores it (parsed by gcloud's own code)."""
    from googlecloudsdk.command_lib.artifacts import cleanup_policy_util

    stored = {}
    for name, policy in cleanup_policy_util.ParseCleanupPolicy(str(Path(call.cwd, path))).items():
        entry: dict[str, Any] = {"id": name, "action": policy["action"].upper()}
        if policy["condition"]:
            entry["condition"] = {
                k: f"{int(float(v[:-1]))}s" if k.endswith("Than") else v
                for k, v in policy["condition"].items()
            }
        if policy["mostRecentVersions"]:
            entry["mostRecentVersions"] = policy["mostRecentVersions"]
        stored[name] = entry
    return stored


def secrets(call: Call) -> None:
    name = find("secrets", "secret", index=2)(call)
    if call.words[1] == "describe":
        call.print([{"name": f"projects/{call.state['number']}/secrets/{name}"}])
    else:
        iam("secret", find("secrets", "secret", index=2))(call)


def _this_project(call: Call) -> str:
    if call.words[2] != call.state["project"]:
        raise GcloudError(f"NOT_FOUND: project {call.words[2]}")
    return str(call.words[2])


def services_identity_create(call: Call) -> None:
    call.project()
    state = call.state
    if not state["pubsub_agent"]:
        state["pubsub_agent"] = True
        # Projects from after 8 April 2021: Google grants the agent this role on the project.
        add_binding(
            state, "project", state["project"], "roles/pubsub.serviceAgent", pubsub_agent(state)
        )
        state["granted_at"][
            f"project|{state['project']}|roles/pubsub.serviceAgent|{pubsub_agent(state)}"
        ] = LONG_AGO
    call.stderr.write(f"Service identity created: {pubsub_agent(state).split(':')[1]}\n")


# ------------------------------------------------------------------------------ Cloud Run


def _build_missing(state: dict[str, Any], account: str, repository: str) -> list[str]:
    """What the build account lacks (docs: run/docs/configuring/services/build-service-account)."""
    member, project = f"serviceAccount:{account}", state["project"]
    builder = {"roles/run.builder", "roles/cloudbuild.builds.builder"}
    sources = f"run-sources-{project}-{state['region']}"
    checks = {
        "roles/logging.logWriter on the project": applies(
            state, "project", project, {"roles/logging.logWriter"} | builder, member
        ),
        f"roles/artifactregistry.writer on {repository}": applies(
            state, "repository", repository, {"roles/artifactregistry.writer"}, member
        )
        or applies(state, "project", project, {"roles/artifactregistry.writer"} | builder, member),
        f"read on gs://{sources}": applies(
            state,
            "bucket",
            sources,
            {"roles/storage.objectViewer", "roles/storage.objectAdmin"},
            member,
        )
        or applies(state, "project", project, {"roles/storage.objectViewer"} | builder, member),
    }
    return [what for what, ok in checks.items() if not ok]


def _apply_settings(call: Call, service: dict[str, Any]) -> None:
    """The settings flags, as gcloud's config changes write them (command_lib/run)."""
    template = service["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    container = template["spec"]["containers"][0]
    if call.flag("service-account"):
        template["spec"]["serviceAccountName"] = call.flag("service-account")
    if call.flag("cpu"):
        container["resources"]["limits"]["cpu"] = f"{round(float(call.flag('cpu')) * 1000)}m"
    if call.flag("memory"):
        container["resources"]["limits"]["memory"] = call.flag("memory")
    if call.flag("concurrency"):
        template["spec"]["containerConcurrency"] = int(call.flag("concurrency"))
    if call.flag("timeout"):
        template["spec"]["timeoutSeconds"] = seconds(call.flag("timeout"))
    if call.flag("min-instances") == "0":
        annotations.pop("autoscaling.knative.dev/minScale", None)
    elif call.flag("min-instances"):
        annotations["autoscaling.knative.dev/minScale"] = call.flag("min-instances")
    if call.flag("max-instances"):
        annotations["autoscaling.knative.dev/maxScale"] = call.flag("max-instances")
    if call.flag("ingress"):
        service["metadata"]["annotations"]["run.googleapis.com/ingress"] = call.flag("ingress")
    for flag, key in (("cpu-throttling", "cpu-throttling"), ("cpu-boost", "startup-cpu-boost")):
        for value in (True, False):
            if f"{'' if value else 'no-'}{flag}" in call.flags:
                annotations[f"run.googleapis.com/{key}"] = str(value)
    env = [e for e in container["env"] if "valueFrom" in e]
    if call.flag("set-env-vars"):
        match = re.fullmatch(r"\^([^^]+)\^(.*)", call.flag("set-env-vars"), re.DOTALL)
        delimiter, pairs = match.groups() if match else (",", call.flag("set-env-vars"))
        literal = [
            dict(zip(("name", "value"), p.split("=", 1), strict=True))
            for p in pairs.split(delimiter)
        ]
        env = literal + env
    if "clear-secrets" in call.flags or call.flag("set-secrets"):
        env = [e for e in env if "valueFrom" not in e]
    for pair in (call.flag("set-secrets") or "").split(",") if call.flag("set-secrets") else []:
        key, reference = pair.split("=", 1)
        secret, version = reference.split(":")
        if secret not in call.state["secrets"]:
            raise GcloudError(f"NOT_FOUND: secret {secret}")
        account = template["spec"]["serviceAccountName"]
        if not applies(
            call.state,
            "secret",
            secret,
            {"roles/secretmanager.secretAccessor"},
            f"serviceAccount:{account}",
        ):
            raise GcloudError(
                SECRET_PERMISSION_ERROR.format(
                    number=call.state["number"], secret=secret, account=account
                )
            )
        env.append({"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": version}}})
    container["env"] = env
    service["metadata"]["labels"].update(labels_of(call.flag("update-labels")))


def run_deploy(call: Call) -> None:
    state, name = call.state, call.words[2]
    project, region = call.project(), call.region()
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
            f"Invalid value for [--image]: The artifact repository provided does not exist: {image}.",
            2,
        )
    build_path = call.flag("build-service-account")
    if (
        not build_path
    ):  # gcloud would build as the default account, which a new project lets build nothing
        raise GcloudError(
            f"Build failed: {state['number']}-compute@developer.gserviceaccount.com lacks roles/run.builder"
        )
    account = build_path.rsplit("/", 1)[1]
    if account not in state["service_accounts"]:
        raise GcloudError(f"Build service account {build_path} does not exist.")
    sources = f"run-sources-{project}-{region}"
    state["buckets"].setdefault(sources, {"name": sources, "labels": {}, "location": region})
    state["objects"][f"gs://{sources}/services/{name}/{call.next_id()}.zip"] = "source"
    missing = _build_missing(state, account, repository)
    if missing:
        raise GcloudError(
            BUILD_PERMISSION_ERROR.format(account=account) + " Missing: " + ", ".join(missing)
        )
    if call.require("service-account") not in state["service_accounts"]:
        raise GcloudError(f"Service account {call.flag('service-account')} does not exist.")
    service = copy.deepcopy(state["services"].get(name)) or {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": {}, "annotations": {"run.googleapis.com/ingress": "all"}},
        "spec": {"template": {"metadata": {"annotations": {"run.googleapis.com/startup-cpu-boost": "True"}},
                              "spec": {"containers": [{"resources": {"limits": {}}, "env": []}]}}},
        "status": {"url": f"https://{name}-{state['number']}.{region}.run.app"},
    }  # fmt: skip
    service["spec"]["template"]["spec"]["containers"][0]["image"] = (
        f"{image}@sha256:{call.next_id():064d}"
    )
    service["metadata"]["annotations"]["run.googleapis.com/build-function-target"] = call.require(
        "function"
    )
    service["metadata"]["annotations"]["run.googleapis.com/base-images"] = call.require(
        "base-image"
    )
    _apply_settings(call, service)
    state["services"][name] = service


def run_services(call: Call) -> None:
    verb, state = call.words[2], call.state
    finder = find("services", "service")
    if verb == "describe":
        call.print([state["services"][finder(call)]])
    elif verb == "update":
        service = copy.deepcopy(state["services"][finder(call)])
        _apply_settings(call, service)
        state["services"][service["metadata"]["name"]] = service
    elif verb == "delete":
        name = finder(call)
        del state["services"][name]
        state["policies"].pop(f"service:{name}", None)
    elif verb == "logs":
        find("services", "service", index=4)(call)
        call.stdout.write("LEVEL  NAME  TIME_UTC  LOG\nI  ride-prediction  ...  prediction\n")
    else:
        iam("service", finder)(call)


def functions(call: Call) -> None:
    name = find("functions", "function", index=2)(call)
    call.region()
    if call.words[1] == "describe":
        call.print([call.state["functions"][name]])
    elif call.words[1] == "detach":
        del call.state["functions"][name]  # the service stays, now a plain Cloud Run service
    else:
        raise GcloudError(f"fake gcloud: functions {call.words[1]} not modelled", 2)


# The commands deploy.sh may run, by their leading words.
COMMANDS: dict[tuple[str, ...], Callable[[Call], None]] = {
    ("config", "get-value"): lambda call: call.stdout.write(call.state["project"] + "\n"),
    ("services", "list"): lambda call: call.print(
        [{"config": {"name": api}} for api in call.state["apis"]]
    ),
    ("services", "enable"): lambda call: call.state["apis"].extend(
        api for api in call.words[2:] if api not in call.state["apis"]
    ),
    ("beta", "services", "identity", "create"): services_identity_create,
    ("projects", "describe"): lambda call: call.print(
        [{"projectId": _this_project(call), "projectNumber": call.state["number"]}]
    ),
    ("projects",): iam("project", _this_project),
    ("pubsub", "topics"): topics,
    ("pubsub", "subscriptions"): subscriptions,
    ("iam", "service-accounts"): service_accounts,
    ("storage",): storage,
    ("artifacts", "repositories"): repositories,
    ("secrets",): secrets,
    ("run", "deploy"): run_deploy,
    ("run", "services"): run_services,
    ("functions",): functions,
}


def handle(state: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    """Run one call against ``state`` (changed in place); the reply for the client."""
    state["calls"].append(request["args"])
    state["clock"] += 1  # time passes: pending pushes are tried again
    for name, subscription in list(state["subscriptions"].items()):
        if subscription.get("pushConfig", {}).get("pushEndpoint"):
            deliver(state, name)
    call = Call(state, request)
    try:
        if call.env.get("CLOUDSDK_CORE_DISABLE_PROMPTS", "").lower() not in {"1", "true"}:
            raise GcloudError(
                "fake gcloud: prompts are enabled, gcloud may ask questions", PROMPT_EXIT
            )
        group = call.words[1] if call.words[:1] == ["beta"] else call.words[0]
        api = GROUP_APIS.get(group)
        if api and api not in state["apis"]:
            raise GcloudError(
                f"PERMISSION_DENIED: {api} has not been used in project {state['number']} before or "
                "it is disabled. If you enabled this API recently, wait a few minutes for the "
                "action to propagate to our systems and retry."
            )
        line = " ".join(call.args)
        for fault in state["faults"]:
            if fault["times"] > 0 and fault["match"] in line:
                fault["times"] -= 1
                raise GcloudError(fault["error"], fault.get("code", 1))
        command = next(
            (
                c
                for p, c in sorted(COMMANDS.items(), key=lambda i: -len(i[0]))
                if tuple(call.words[: len(p)]) == p
            ),
            None,
        )
        if command is None:
            raise GcloudError(f"fake gcloud: command not modelled: {line}", 2)
        command(call)
        code = 0
    except GcloudError as error:
        name = ".".join(w for w in call.words[:4] if not w.startswith(("gs:", "projects/")))
        call.stderr.write(f"ERROR: (gcloud.{name}) {error}\n")
        code = error.code
    return {"stdout": call.stdout.getvalue(), "stderr": call.stderr.getvalue(), "code": code}


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
                request = json.loads(b"".join(iter(lambda: connection.recv(65536), b"")))
                if request.get("ping"):
                    connection.sendall(b'{"pong": true}')
                    continue
                state_path = Path(request["env"]["FAKE_GCLOUD_STATE"])
                state = json.loads(state_path.read_text())
                before = copy.deepcopy(state)
                try:
                    reply = handle(state, request)
                except Exception as error:  # a bug in the fake: say so, loudly
                    state = before
                    state["calls"].append(request["args"])
                    reply = {
                        "stdout": "",
                        "stderr": f"fake gcloud crashed: {error!r}\n",
                        "code": 99,
                    }
                state_path.write_text(json.dumps(state))
                connection.sendall(json.dumps(reply).encode())


if __name__ == "__main__":
    serve(sys.argv[2] if sys.argv[1:2] == ["serve"] else sys.argv[1])
