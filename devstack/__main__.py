"""Command line of the local stack: ``python -m devstack demo|up|down|env``.

* ``demo``: bring the stack up, publish the tutorial's ride and a few more to Stream A, print each
  prediction pulled from Stream B (model version 1), promote a version 2 trained on other rides
  while rides keep flowing, print the predictions of version 2 and how many rides each version
  predicted, tear everything down.
* ``up``: bring the stack up and leave it running (detached); print the ``export`` lines.
* ``down``: stop a stack left running by ``up``.
* ``serve``: like ``up`` but in the foreground, until Ctrl-C.
* ``env``: print the ``export`` lines of the running stack.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from devstack.processes import exit_on_sigterm
from devstack.pubsub_admin import ReceivedMessage
from devstack.stack import (
    DEFAULT_WORK_DIR,
    NO_TELEMETRY,
    LocalStack,
    StackConfig,
    load_state,
    step,
    stop_detached,
    trained_model,
)

TUTORIAL_RIDE = {
    "ride": {"PULocationID": 130, "DOLocationID": 205, "trip_distance": 3.66},
    "ride_id": 123,
}
MORE_RIDES = [
    {"ride": {"PULocationID": 43, "DOLocationID": 238, "trip_distance": 1.2}, "ride_id": 124},
    {"ride": {"PULocationID": 132, "DOLocationID": 161, "trip_distance": 17.9}, "ride_id": 125},
    {"ride": {"PULocationID": 264, "DOLocationID": 264, "trip_distance": 0.4}, "ride_id": "r-126"},
]
# Shows dead-lettering: a ride with a negative distance can never be predicted.
INVALID_RIDE = {
    "ride": {"PULocationID": 130, "DOLocationID": 205, "trip_distance": -3},
    "ride_id": 127,
}
PREDICTION_TIMEOUT_SECONDS = 90.0
# The most rides the demo publishes while it waits for the function to switch versions.
MAX_RIDES_DURING_SWAP = 500


def _by_ride_id(received: list[ReceivedMessage]) -> list[dict[str, Any]]:
    return sorted(
        (json.loads(message.data) for message in received),
        key=lambda message: str(message["prediction"]["ride_id"]),
    )


def _promotion(stack: LocalStack, rides: list[dict[str, Any]]) -> tuple[list[Any], int]:
    """Promote version 2 while rides flow; return every prediction of the rides published
    after the promotion, and how many rides were published."""
    config = stack.config
    model_v2 = trained_model(config, "model-v2")
    step(f"registering version 2 and moving {config.alias} to it (python -m training.promote)")
    old, new = stack.promote(model_dir=model_v2)
    print(f"\nPromoted {config.registered_model}@{config.alias}: version {old} -> {new}")
    step(f"publishing rides one by one until version {new} answers")
    predictions: list[dict[str, Any]] = []
    published = 0
    while published < MAX_RIDES_DURING_SWAP:
        ride = rides[published % len(rides)]
        published += 1
        ride_event = {**ride, "ride_id": f"swap-{published}"}
        stack.admin.publish(config.input_topic, json.dumps(ride_event).encode())
        received = stack.admin.pull(config.output_subscription, 1, PREDICTION_TIMEOUT_SECONDS)
        predictions += [json.loads(message.data) for message in received]
        if predictions and predictions[-1]["version"] == new:
            break
    during = [f"{p['prediction']['ride_id']} by version {p['version']}" for p in predictions]
    shown = ", ".join(during if len(during) <= 8 else [*during[:3], "…", *during[-4:]])
    print(f"Rides published one at a time during the switch: {shown}")
    step(f"publishing the same {len(rides)} rides again")
    for ride in rides:
        ride_event = {**ride, "ride_id": f"v{new}-{ride['ride_id']}"}
        stack.admin.publish(config.input_topic, json.dumps(ride_event).encode())
    received = stack.admin.pull(config.output_subscription, len(rides), PREDICTION_TIMEOUT_SECONDS)
    after = _by_ride_id(received)
    print(f"\nPredictions after the promotion (ride_id v{new}-<ride_id>):")
    for prediction in after:
        print(json.dumps(prediction))
    return predictions + after, published + len(rides)


def demo(config: StackConfig) -> int:
    """The tutorial's whole workflow, locally, then a promotion; exit status 0 only if every
    prediction arrived."""
    with LocalStack(config) as stack:
        rides = [TUTORIAL_RIDE, *MORE_RIDES]
        step(f"publishing {len(rides)} rides and 1 invalid ride to {config.input_topic}")
        for ride_event in [*rides, INVALID_RIDE]:
            stack.admin.publish(config.input_topic, json.dumps(ride_event).encode())

        step(f"waiting for predictions on {config.output_subscription}")
        received = stack.admin.pull(
            config.output_subscription, len(rides), PREDICTION_TIMEOUT_SECONDS
        )
        predictions = _by_ride_id(received)
        print(f"\nPredictions from {config.output_subscription} (Stream B):")
        for prediction in predictions:
            print(json.dumps(prediction, indent=2))
        dead_letters = stack.admin.pull(config.dead_letter_subscription, 1, 30)
        for message in dead_letters:
            print(f"\nDead-lettered on {config.dead_letter_topic}: {message.data.decode()!r}")
            print(f"  reason: {message.attributes.get('dlq_reason')}")

        predicted_ids = {p["prediction"]["ride_id"] for p in predictions}
        missing = [r["ride_id"] for r in rides if r["ride_id"] not in predicted_ids]
        print(
            f"\n{len(predictions)}/{len(rides)} predictions received, "
            f"model version {stack.state.model_version}"
        )
        if missing:
            print(f"missing predictions for ride ids {missing}; see {config.log_dir}")
            return 1

        promoted, published = _promotion(stack, rides)
        all_predictions = predictions + promoted
        extra = stack.admin.drain(config.output_subscription)  # any prediction made twice?
        all_predictions += [json.loads(message.data) for message in extra]
        counts = Counter(p["version"] for p in all_predictions)
        unique_rides = len({p["prediction"]["ride_id"] for p in all_predictions})
        per_version = ", ".join(f"version {v}: {n}" for v, n in sorted(counts.items()))
        print(f"\nRides predicted by each version: {per_version}")
        published += len(rides)
        print(
            f"{unique_rides}/{published} rides predicted, "
            f"{len(all_predictions) - unique_rides} twice, {published - unique_rides} lost"
        )
        if unique_rides != published:
            print(f"rides were lost; see {config.log_dir}")
            return 1
    step("stack stopped")
    return 0


def up(config: StackConfig) -> int:
    """Start the stack and leave it running for exploration."""
    if (state := load_state(config.work_dir)) is not None:
        print("A stack is already running (stop it with `make down`):")
        print("\n".join(state.export_lines()))
        return 1
    stack = LocalStack(config)
    try:
        stack.start()
        stack.save_state()
    except BaseException:
        stack.stop()
        raise
    print("\nThe stack is running. Point the Google clients and gcloud at it:\n")
    print("\n".join(stack.state.export_lines()))
    print(f"\n(or: source {config.work_dir / 'env.sh'})")
    print("Stop it with `make down`.")
    return 0


def serve(config: StackConfig) -> int:
    """Run the stack in the foreground until Ctrl-C (or SIGTERM), then tear it down."""
    try:
        with LocalStack(config) as stack:
            print("\n".join(stack.state.export_lines()), flush=True)
            print("\nThe stack is running; Ctrl-C stops it.", flush=True)
            signal.pause()
    except KeyboardInterrupt:  # the expected way out; the with block has torn everything down
        step("stack stopped")
    return 0


def down(config: StackConfig) -> int:
    """Stop a detached stack."""
    stopped = stop_detached(config.work_dir)
    print(f"stopped: {', '.join(stopped)}" if stopped else "no stack was running")
    return 0


def env(config: StackConfig) -> int:
    """Print the export lines of the running stack."""
    state = load_state(config.work_dir)
    if state is None:
        print("no stack is running; start one with `make up`", file=sys.stderr)
        return 1
    print("\n".join(state.export_lines()))
    return 0


COMMANDS = {"demo": demo, "up": up, "serve": serve, "down": down, "env": env}


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run a command."""
    parser = argparse.ArgumentParser(
        prog="python -m devstack",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=DEFAULT_WORK_DIR,
        help="logs, cached model and state (default: .stack)",
    )
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=None,
        help="serve this MLflow model directory instead of training one",
    )
    args = parser.parse_args(argv)
    exit_on_sigterm()
    os.environ.update(NO_TELEMETRY)  # for the training this process may do (see NO_TELEMETRY)
    config = StackConfig(work_dir=args.work_dir, model_dir=args.model_dir)
    return COMMANDS[args.command](config)


if __name__ == "__main__":
    sys.exit(main())
