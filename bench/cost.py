"""What a million predictions cost, all in: pure arithmetic over measured figures (bench only).

Every price is a field of ``Prices`` and has its page, the date it was read and whether the
figure was read on the page itself in ``PRICE_SOURCES``; nothing here measures or reads a file.
The measured inputs (throughput, latency, CPU per message, request and log sizes) come in as
a ``Shape``; ``bench/cost_report.py`` builds them from a bench run.

**Compute.** A Cloud Run function (2nd gen) is a Cloud Run service.

* *Request-based billing* (the default) bills the allocated vCPU and memory while an instance
  has a request in flight, rounded up to 100 ms, plus a fee per request. One instance kept busy
  at concurrency ``c`` is billed all the time, so a busy instance costs 1 ÷ (messages per second
  it serves) instance-seconds per message (``per_million_rides``). At a given rate the model
  counts the instances the autoscaler runs (``instances``) and the fraction of time each has a
  request in flight: requests arriving at random, each keeping its instance billed for its
  latency or the 100 ms granularity, whichever is longer (``busy_fraction``). Idle minimum
  instances are billed at the idle rate.
* *Instance-based billing* bills each instance for its whole life at a lower rate, with no
  request fee: ``instances`` times the time.

``instances``: the autoscaler aims at 60% of the maximum concurrency and 60% CPU
(https://cloud.google.com/run/docs/about-instance-autoscaling); at full concurrency an instance
serves X messages per second (measured, concurrency- or CPU-bound), so it runs ⌈rate ÷ (0.6 X)⌉.

**Pub/Sub** bills the bytes of each publish, push and pull request: per message its data, its
attributes, 20 bytes for the timestamp and its message id, at least 1,000 bytes per request
(``billed_bytes``, ``billed_histogram_bytes``). A BigQuery subscription bills its own rate on
the bytes it writes. **Cloud Logging** bills the bytes of each entry; **BigQuery storage** the
rows the subscription writes, per month kept. Free tiers are not deducted.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

GiB, TiB = 2**30, 2**40
MONTH_SECONDS = 30 * 24 * 3600
MILLION = 1_000_000

PRICES_READ = "2026-12-07"
CLOUD_RUN_PAGE = "https://cloud.google.com/run/pricing"
PUBSUB_PAGE = "https://cloud.google.com/pubsub/pricing"
BIGQUERY_PAGE = "https://cloud.google.com/bigquery/pricing"
LOGGING_PAGE = "https://cloud.google.com/stackdriver/pricing"
DATAFLOW_PAGE = "https://cloud.google.com/dataflow/pricing"
AUTOSCALING_PAGE = "https://cloud.google.com/run/docs/about-instance-autoscaling"

# A level's total cost per million rides may exceed the cheapest level's by this much and still
# be the default: past that point more concurrency saves little and adds latency and memory
# (see ``choose_default``).
DEFAULT_TOLERANCE = 0.05
# The project ÷ framework throughput the default should reach (issue 10).
FRAMEWORK_RATIO_AIM = 0.75
# The autoscaler's target: 60% of the maximum concurrency, 60% CPU (AUTOSCALING_PAGE).
AUTOSCALER_UTILISATION = 0.6
# Pub/Sub message ids as the service writes them: 16 to 17 decimal digits (assumed, not read;
# the emulator's and the bench's ids are of other lengths).
MESSAGE_ID_BYTES = 16
# A BigQuery subscription row beyond the message's bytes (write_metadata: subscription name,
# message id, publish time, attributes as JSON; string and JSON overheads): an estimate.
BIGQUERY_ROW_OVERHEAD_BYTES = 120


@dataclass(frozen=True)
class Prices:
    """List prices in US dollars (Tier 1 regions for Cloud Run), beyond any free tier."""

    # Cloud Run, request-based billing (busy instance time and requests; idle minimum instances)
    request_vcpu_second: float = 0.000024
    request_gib_second: float = 0.0000025
    per_million_requests: float = 0.40
    idle_vcpu_second: float = 0.0000025
    idle_gib_second: float = 0.0000025
    # Cloud Run, instance-based billing (an instance's whole life, no request fee)
    instance_vcpu_second: float = 0.000018
    instance_gib_second: float = 0.000002
    billing_granularity_seconds: float = 0.1
    # Pub/Sub
    pubsub_per_tib: float = 40.0
    pubsub_min_request_bytes: int = 1000
    pubsub_timestamp_bytes: int = 20
    bigquery_subscription_per_tib: float = 50.0
    # BigQuery active logical storage, Cloud Logging ingestion (30 days of storage included)
    bigquery_storage_gib_month: float = 0.02
    logging_per_gib: float = 0.50
    # Dataflow streaming worker, Persistent Disk, Streaming Engine data processed
    dataflow_vcpu_hour: float = 0.069
    dataflow_gib_hour: float = 0.003557
    dataflow_disk_gib_month: float = 0.04
    dataflow_streaming_engine_per_gib: float = 0.018

    @property
    def per_request(self) -> float:
        """Cloud Run's fee per request, request-based billing."""
        return self.per_million_requests / MILLION


PRICES = Prices()

# Where each price comes from: (page, read on, how). "page" = read on the page's stored copy
# through the `search` tool; anything else says what was read instead.
_RUN_CUT = (
    "not readable: the stored copy of the page cuts this row off; "
    "the figure as the page is quoted elsewhere"
)
PRICE_SOURCES: dict[str, tuple[str, str]] = {
    "request_vcpu_second": (CLOUD_RUN_PAGE, "page"),
    "request_gib_second": (CLOUD_RUN_PAGE, _RUN_CUT),
    "per_million_requests": (CLOUD_RUN_PAGE, _RUN_CUT),
    "idle_vcpu_second": (CLOUD_RUN_PAGE, _RUN_CUT),
    "idle_gib_second": (CLOUD_RUN_PAGE, _RUN_CUT),
    "instance_vcpu_second": (CLOUD_RUN_PAGE, "page"),
    "instance_gib_second": (CLOUD_RUN_PAGE, _RUN_CUT),
    "billing_granularity_seconds": (CLOUD_RUN_PAGE, "page"),
    "pubsub_per_tib": (PUBSUB_PAGE, "page"),
    "pubsub_min_request_bytes": (PUBSUB_PAGE, "page"),
    "pubsub_timestamp_bytes": (PUBSUB_PAGE, "page"),
    "bigquery_subscription_per_tib": (
        PUBSUB_PAGE,
        "not in the stored copy (cut off); read in a transcription of the page dated 2026-09-20",
    ),
    "bigquery_storage_gib_month": (
        BIGQUERY_PAGE,
        "an older stored copy of the page ($0.02 per GB per month); "
        "the current table is not stored",
    ),
    "logging_per_gib": (LOGGING_PAGE, "page"),
    "dataflow_vcpu_hour": (DATAFLOW_PAGE, "not readable: the stored copy has no rate table"),
    "dataflow_gib_hour": (DATAFLOW_PAGE, "not readable: the stored copy has no rate table"),
    "dataflow_disk_gib_month": (DATAFLOW_PAGE, "not readable: Persistent Disk's list price"),
    "dataflow_streaming_engine_per_gib": (
        DATAFLOW_PAGE,
        "not readable: the stored copy has no rate table",
    ),
}


@dataclass(frozen=True)
class Instance:
    """What one instance is allocated (and billed for): the deploy's ``--cpu`` and ``--memory``."""

    vcpu: float
    memory_gib: float

    @property
    def label(self) -> str:
        """E.g. ``1 vCPU, 1 GiB``."""
        if self.memory_gib >= 1:
            memory = f"{self.memory_gib:g} GiB"
        else:
            memory = f"{self.memory_gib * 1024:g} MiB"
        return f"{self.vcpu:g} vCPU, {memory}"


# The deploy this table assumes (--cpu 1 --memory 1Gi), and the same with 512Mi: the function's
# memory (PSS, see docs/speed.md) fits in either.
INSTANCES = (Instance(vcpu=1, memory_gib=1), Instance(vcpu=1, memory_gib=0.5))
DEPLOY = INSTANCES[0]


@dataclass(frozen=True)
class DataflowWorker:
    """One Dataflow streaming worker: the machine Streaming Engine works best with
    (n1-standard-2, https://cloud.google.com/dataflow/docs/streaming-engine) and its boot disk."""

    vcpu: float = 2
    memory_gib: float = 7.5
    disk_gib: float = 30


# --- Pub/Sub ------------------------------------------------------------------------------


def billed_bytes(message_bytes: float, messages: int, prices: Prices = PRICES) -> float:
    """Billed bytes of one Pub/Sub request carrying ``messages`` messages of ``message_bytes``
    each (data, attributes and message id; the timestamp is added here): at least the minimum."""
    volume = messages * (message_bytes + prices.pubsub_timestamp_bytes)
    return max(float(prices.pubsub_min_request_bytes), volume)


def billed_histogram_bytes(
    histogram: Mapping[str, Mapping[str, float]],
    prices: Prices = PRICES,
    message_id_bytes: int = MESSAGE_ID_BYTES,
    minimum: bool = True,
) -> tuple[float, int]:
    """(billed bytes, messages) of the Publish RPCs of a ``bench.publish_meter`` histogram:
    per bucket of RPCs carrying n messages, each RPC at its mean payload plus n times (timestamp
    + message id), at least the minimum per request (unless ``minimum`` is false)."""
    total, messages = 0.0, 0
    for size, bucket in histogram.items():
        count, rpcs = int(size), bucket["rpcs"]
        if not rpcs:
            continue
        volume = bucket["payload_bytes"] / rpcs + count * (
            prices.pubsub_timestamp_bytes + message_id_bytes
        )
        if minimum:
            volume = max(float(prices.pubsub_min_request_bytes), volume)
        total += rpcs * volume
        messages += rpcs * count
    return total, messages


def pubsub_dollars(byte_count: float, per_tib: float) -> float:
    """Dollars for ``byte_count`` bytes at a price per TiB."""
    return byte_count / TiB * per_tib


# --- Compute ------------------------------------------------------------------------------


def per_million_rides(
    rides_per_second: float, rides_per_request: int, instance: Instance, prices: Prices = PRICES
) -> dict[str, float]:
    """Billed instance seconds and dollars per million rides (request-based billing), for an
    instance kept busy at ``rides_per_second`` by requests of ``rides_per_request`` rides."""
    if not rides_per_second or rides_per_second != rides_per_second:
        nan = float("nan")
        return {"instance_seconds": nan, "compute": nan, "requests": nan, "total": nan}
    instance_seconds = MILLION / rides_per_second
    compute = instance_seconds * (
        instance.vcpu * prices.request_vcpu_second + instance.memory_gib * prices.request_gib_second
    )
    requests = (MILLION / rides_per_request) * prices.per_request
    return {
        "instance_seconds": instance_seconds,
        "compute": compute,
        "requests": requests,
        "total": compute + requests,
    }


def instance_based_per_million(
    rides_per_second: float,
    instance: Instance,
    prices: Prices = PRICES,
    utilisation: float = AUTOSCALER_UTILISATION,
) -> float:
    """Dollars per million rides under instance-based billing, for instances that serve
    ``rides_per_second`` at full concurrency and run at ``utilisation`` of it on average."""
    if not rides_per_second or rides_per_second != rides_per_second:
        return float("nan")
    return MILLION / (rides_per_second * utilisation) * instance_rate(instance, prices)


def instance_rate(instance: Instance, prices: Prices) -> float:
    """Dollars per second of one instance under instance-based billing."""
    return (
        instance.vcpu * prices.instance_vcpu_second
        + instance.memory_gib * prices.instance_gib_second
    )


def busy_rate(instance: Instance, prices: Prices) -> float:
    """Dollars per billed second of one busy instance under request-based billing."""
    return (
        instance.vcpu * prices.request_vcpu_second + instance.memory_gib * prices.request_gib_second
    )


def idle_rate(instance: Instance, prices: Prices) -> float:
    """Dollars per second of one idle minimum instance under request-based billing."""
    return instance.vcpu * prices.idle_vcpu_second + instance.memory_gib * prices.idle_gib_second


def instances(
    rate: float,
    capacity: float,
    min_instances: int = 0,
    utilisation: float = AUTOSCALER_UTILISATION,
) -> int:
    """Instances the autoscaler runs for ``rate`` messages per second when one serves
    ``capacity`` at full concurrency: ⌈rate ÷ (utilisation · capacity)⌉, at least
    ``min_instances`` (and one while messages arrive)."""
    if rate <= 0:
        return min_instances
    return max(min_instances, 1, math.ceil(rate / (utilisation * capacity) - 1e-9))


def busy_fraction(rate_per_instance: float, latency_s: float, granularity_s: float) -> float:
    """The fraction of time an instance has a request in flight (so is billed, request-based):
    requests arriving at random (Poisson), each keeping it billed for ``max(latency,
    granularity)``: 1 - exp(-rate · that)."""
    if rate_per_instance <= 0:
        return 0.0
    return 1.0 - math.exp(-rate_per_instance * max(latency_s, granularity_s))


# --- Scenarios ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """What one message shape measured: the inputs of the all-in cost (see ``bench/sizes.py``,
    ``bench/publish_meter.py`` and ``bench/concurrency.py`` for how each was measured)."""

    name: str
    rides_per_message: int
    # Messages per second one instance serves at the deploy's concurrency (closed loop).
    capacity: float
    # One request alone, from arrival to answer (concurrency 1): seconds.
    latency_s: float
    # The function's CPU per message at the deploy's concurrency, and the framework's alone.
    cpu_s: float
    framework_cpu_s: float
    # Pub/Sub data volume of the pushed message (data, attributes, id; no timestamp).
    push_message_bytes: float
    # Publish RPC histograms (``bench.publish_meter``) by per-instance rate: [(msgs/s, hist)],
    # ascending; a rate uses the histogram measured at the nearest rate below it (the first
    # one below all of them).
    publish: tuple[tuple[float, Mapping[str, Mapping[str, float]]], ...]
    # Bytes of the function's log lines per message (at MESSAGE_LOG_LEVEL=INFO), and the
    # estimated envelope Cloud Logging adds per entry and request log entry per push.
    log_line_bytes: float
    log_envelope_bytes: float
    request_log_bytes: float
    # The dead letter of one rejected ride (data and attributes).
    dead_letter_bytes: float


@dataclass(frozen=True)
class Scenario:
    """A traffic pattern: ``rate`` messages per second for ``busy_hours`` a day, idle the rest."""

    name: str
    rate: float
    busy_hours: float = 24.0
    min_instances: int = 0
    reject_fraction: float = 0.01
    # The function's per-message log line (MESSAGE_LOG_LEVEL=INFO), Cloud Run's request log
    # (kept unless a log exclusion drops it).
    log_lines: bool = True
    request_log: bool = True

    @property
    def busy_seconds(self) -> float:
        """Busy seconds in a 30-day month."""
        return self.busy_hours * 3600 * 30

    def messages(self) -> float:
        """Messages in a 30-day month."""
        return self.rate * self.busy_seconds


def publish_histogram(shape: Shape, rate_per_instance: float) -> Mapping[str, Mapping[str, float]]:
    """The Publish RPC histogram measured at the nearest rate at or below ``rate_per_instance``
    (the lowest measured one if none is)."""
    chosen = shape.publish[0][1]
    for measured_rate, histogram in shape.publish:
        if measured_rate <= rate_per_instance:
            chosen = histogram
    return chosen


PUBSUB_HOPS = ("producer", "push", "publish", "pull", "dead_letters", "bigquery")


def pubsub_month(shape: Shape, scenario: Scenario, n: int, prices: Prices) -> dict[str, float]:
    """Pub/Sub dollars a month, by hop."""
    messages = scenario.messages()
    if not messages:
        return dict.fromkeys(PUBSUB_HOPS, 0.0)
    push = messages * billed_bytes(shape.push_message_bytes, 1, prices)
    histogram = publish_histogram(shape, scenario.rate / max(n, 1))
    published, published_messages = billed_histogram_bytes(histogram, prices)
    per_output = published / published_messages if published_messages else 0.0
    outputs = messages * shape.rides_per_message * (1 - scenario.reject_fraction)
    rejected_per_message = shape.rides_per_message * scenario.reject_fraction
    letters = dead_letter_bytes_per_message(shape, rejected_per_message, prices)
    raw_output = _raw_bytes_per_output(histogram, prices)
    return {
        # The producer's publish to Stream A, one message per request (not caused by the function).
        "producer": pubsub_dollars(push, prices.pubsub_per_tib),
        "push": pubsub_dollars(push, prices.pubsub_per_tib),
        "publish": pubsub_dollars(outputs * per_output, prices.pubsub_per_tib),
        # A consumer pulls Stream B in the batches it was published in.
        "pull": pubsub_dollars(outputs * per_output, prices.pubsub_per_tib),
        # Dead letters published and pulled off the dead-letter subscription.
        "dead_letters": 2 * pubsub_dollars(messages * letters, prices.pubsub_per_tib),
        "bigquery": pubsub_dollars(outputs * raw_output, prices.bigquery_subscription_per_tib),
    }


def dead_letter_bytes_per_message(shape: Shape, rejected: float, prices: Prices) -> float:
    """Billed bytes of the dead letters of one input message with ``rejected`` rides rejected on
    average: a message's dead letters go out in one request."""
    if rejected <= 0:
        return 0.0
    if shape.rides_per_message == 1:  # a rejected message, the fraction ``rejected`` of them
        return rejected * billed_bytes(shape.dead_letter_bytes + MESSAGE_ID_BYTES, 1, prices)
    volume = rejected * (shape.dead_letter_bytes + MESSAGE_ID_BYTES + prices.pubsub_timestamp_bytes)
    return max(float(prices.pubsub_min_request_bytes), volume)


def _raw_bytes_per_output(histogram: Mapping[str, Mapping[str, float]], prices: Prices) -> float:
    volume, messages = billed_histogram_bytes(histogram, prices, minimum=False)
    return volume / messages if messages else 0.0


def bigquery_storage_month(shape: Shape, scenario: Scenario, prices: Prices) -> float:
    """BigQuery storage of a month of prediction rows, kept for a month."""
    histogram = shape.publish[-1][1]
    row = _raw_bytes_per_output(histogram, prices) + BIGQUERY_ROW_OVERHEAD_BYTES
    outputs = scenario.messages() * shape.rides_per_message * (1 - scenario.reject_fraction)
    return outputs * row / GiB * prices.bigquery_storage_gib_month


def logging_month(shape: Shape, scenario: Scenario, prices: Prices) -> dict[str, float]:
    """Cloud Logging dollars a month: the function's lines, Cloud Run's request log."""
    messages = scenario.messages()
    lines = shape.log_line_bytes + shape.log_envelope_bytes if scenario.log_lines else 0.0
    requests = shape.request_log_bytes if scenario.request_log else 0.0
    return {
        "function_lines": messages * lines / GiB * prices.logging_per_gib,
        "request_log": messages * requests / GiB * prices.logging_per_gib,
    }


def compute_month(
    shape: Shape,
    scenario: Scenario,
    billing: str,
    instance: Instance = DEPLOY,
    prices: Prices = PRICES,
) -> dict[str, float]:
    """Cloud Run dollars a month under ``billing`` ("request" or "instance"), and the
    instances it takes while busy."""
    n = instances(scenario.rate, shape.capacity, scenario.min_instances)
    idle_seconds = MONTH_SECONDS - scenario.busy_seconds
    if billing == "instance":
        busy = n * scenario.busy_seconds * instance_rate(instance, prices)
        idle = scenario.min_instances * idle_seconds * instance_rate(instance, prices)
        return {"instances": n, "compute": busy + idle, "requests": 0.0}
    if billing != "request":
        raise ValueError(f"billing is 'request' or 'instance', not {billing!r}")
    per_instance = scenario.rate / n if n else 0.0
    fraction = busy_fraction(per_instance, shape.latency_s, prices.billing_granularity_seconds)
    billed = n * fraction
    busy = billed * scenario.busy_seconds * busy_rate(instance, prices)
    idle_instances_busy = max(0.0, scenario.min_instances - billed) * scenario.busy_seconds
    idle = (idle_instances_busy + scenario.min_instances * idle_seconds) * idle_rate(
        instance, prices
    )
    return {
        "instances": n,
        "compute": busy + idle,
        "requests": scenario.messages() * prices.per_request,
    }


@dataclass
class Bill:
    """One scenario under one billing mode: dollars a month by item."""

    scenario: str
    shape: str
    billing: str
    instances: int
    predictions: float
    items: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        """Dollars a month, all items."""
        return sum(self.items.values())

    @property
    def per_million(self) -> float:
        """Dollars per million predictions."""
        return self.total / self.predictions * MILLION if self.predictions else float("nan")

    def as_dict(self) -> dict[str, Any]:
        """Plain data for results.json."""
        return asdict(self) | {"total": self.total, "per_million": self.per_million}


def bill(
    shape: Shape,
    scenario: Scenario,
    billing: str,
    instance: Instance = DEPLOY,
    prices: Prices = PRICES,
) -> Bill:
    """Everything one scenario costs a month under ``billing``."""
    compute = compute_month(shape, scenario, billing, instance, prices)
    pubsub = pubsub_month(shape, scenario, int(compute["instances"]), prices)
    logs = logging_month(shape, scenario, prices)
    items = {
        "compute": compute["compute"],
        "requests": compute["requests"],
        **{f"pubsub_{hop}": dollars for hop, dollars in pubsub.items()},
        "bigquery_storage": bigquery_storage_month(shape, scenario, prices),
        **{f"logging_{kind}": dollars for kind, dollars in logs.items()},
    }
    return Bill(
        scenario=scenario.name,
        shape=shape.name,
        billing=billing,
        instances=int(compute["instances"]),
        predictions=scenario.messages() * shape.rides_per_message,
        items=items,
    )


def rate_above(
    cheaper: Callable[[float], bool],
    low: float = 0.01,
    high: float = 20_000.0,
    steps: int = 4000,
) -> float | None:
    """The lowest rate on a log grid from ``low`` to ``high`` from which ``cheaper(rate)`` holds
    up to ``high``; None if it does not hold at ``high``."""
    rates = [low * (high / low) ** (i / (steps - 1)) for i in range(steps)]
    holds = [cheaper(rate) for rate in rates]
    if not holds[-1]:
        return None
    index = len(rates) - 1
    while index > 0 and holds[index - 1]:
        index -= 1
    return rates[index]


def break_even_rate(shape: Shape, prices: Prices = PRICES) -> float | None:
    """The steady rate (messages/s) above which instance-based billing stays cheaper than
    request-based (up to 20,000 msg/s; None if it never is by then)."""

    def instance_cheaper(rate: float) -> bool:
        steady = Scenario("steady", rate)
        return (
            bill(shape, steady, "instance", prices=prices).total
            <= bill(shape, steady, "request", prices=prices).total
        )

    return rate_above(instance_cheaper)


# --- Dataflow, on paper -------------------------------------------------------------------


def batched_predictions_month(shape: Shape, scenario: Scenario, prices: Prices) -> dict[str, float]:
    """The predictions of a month published, pulled by a consumer and written to BigQuery at
    their own bytes (batches past the 1,000-byte minimum), and stored: what a batching
    implementation pays for them."""
    outputs = scenario.messages() * shape.rides_per_message * (1 - scenario.reject_fraction)
    out_bytes = outputs * _raw_bytes_per_output(shape.publish[-1][1], prices)
    return {
        "pubsub_publish": pubsub_dollars(out_bytes, prices.pubsub_per_tib),
        "pubsub_pull": pubsub_dollars(out_bytes, prices.pubsub_per_tib),
        "pubsub_bigquery": pubsub_dollars(out_bytes, prices.bigquery_subscription_per_tib),
        "bigquery_storage": bigquery_storage_month(shape, scenario, prices),
    }


def dataflow_month(
    shape: Shape,
    scenario: Scenario,
    prices: Prices = PRICES,
    worker: DataflowWorker | None = None,
) -> Bill:
    """The same traffic on always-on Dataflow streaming workers (Streaming Engine), on paper:
    workers enough for the function's CPU per message at 60% of their vCPUs (Beam's own cost
    per element not measured), Streaming Engine on the bytes read, Pub/Sub pulled in batches
    (no 1,000-byte minimum per message) and no Cloud Run request log or per-message line."""
    worker = worker or DataflowWorker()
    messages = scenario.messages()
    cpus = scenario.rate * shape.cpu_s / AUTOSCALER_UTILISATION
    workers = max(1, math.ceil(cpus / worker.vcpu))
    hours = MONTH_SECONDS / 3600
    worker_dollars = (
        workers
        * hours
        * (worker.vcpu * prices.dataflow_vcpu_hour + worker.memory_gib * prices.dataflow_gib_hour)
    )
    disk = workers * worker.disk_gib * prices.dataflow_disk_gib_month
    read_bytes = messages * (shape.push_message_bytes + prices.pubsub_timestamp_bytes)
    items = {
        "compute": worker_dollars + disk,
        "streaming_engine": read_bytes / GiB * prices.dataflow_streaming_engine_per_gib,
        "pubsub_producer": pubsub_month(shape, scenario, 1, prices)["producer"],
        "pubsub_pull_input": pubsub_dollars(read_bytes, prices.pubsub_per_tib),
        **batched_predictions_month(shape, scenario, prices),
    }
    return Bill(
        scenario=scenario.name,
        shape=shape.name,
        billing="dataflow",
        instances=workers,
        predictions=messages * shape.rides_per_message,
        items=items,
    )


# --- The physical floor -------------------------------------------------------------------


def floor_month(shape: Shape, scenario: Scenario, prices: Prices = PRICES) -> Bill:
    """What no implementation of this design (a function fed by a push subscription) can avoid:
    one push per message at its billed size (the 1,000-byte minimum), the predictions
    published, pulled and written to BigQuery at their bytes (perfect batching; rejected rides
    publish nothing), their storage, and functions-framework's own CPU per message on fully
    used instances (instance-based rates: the request fee is avoidable). No dead letters, no
    logs (both can be turned off)."""
    messages = scenario.messages()
    items = {
        "compute": messages * shape.framework_cpu_s * instance_rate(DEPLOY, prices),
        "pubsub_push": pubsub_dollars(
            messages * billed_bytes(shape.push_message_bytes, 1, prices), prices.pubsub_per_tib
        ),
        **batched_predictions_month(shape, scenario, prices),
    }
    return Bill(
        scenario=scenario.name,
        shape=shape.name,
        billing="floor",
        instances=0,
        predictions=messages * shape.rides_per_message,
        items=items,
    )


# --- The default concurrency (request-based, from the concurrency table) -------------------


def choose_default(
    total_cost: dict[int, float],
    tolerance: float = DEFAULT_TOLERANCE,
) -> int | None:
    """The smallest concurrency whose total cost per million rides (instance time and request
    fees) is within ``tolerance`` of the cheapest level's.

    The fee per request does not depend on concurrency, so once the instance time per ride is
    small beside it, more concurrency hardly changes the bill, while requests in flight on the
    same CPU wait longer (latency grows with concurrency) and the instance holds more memory.
    """
    measured = {level: cost for level, cost in total_cost.items() if cost == cost and cost > 0}
    if not measured:
        return None
    cheapest = min(measured.values())
    return min(level for level, cost in measured.items() if cost <= cheapest * (1 + tolerance))
