"""The all-in cost model's arithmetic (bench/cost.py), on hand-computed cases.

Every price and size is written here, not read from the code: a change of a formula (a
minimum missed, a rate swapped, a month of the wrong length) fails a case.
"""

from __future__ import annotations

import math

import pytest

from bench import cost
from bench.cost import (
    Instance,
    Prices,
    Scenario,
    Shape,
    billed_bytes,
    billed_histogram_bytes,
    busy_fraction,
    compute_month,
    instances,
)

# Round prices, so that every expected figure below can be checked with pencil and paper.
PRICES = Prices(
    request_vcpu_second=0.00002,
    request_gib_second=0.000004,
    per_million_requests=0.5,
    idle_vcpu_second=0.000002,
    idle_gib_second=0.000001,
    instance_vcpu_second=0.00001,
    instance_gib_second=0.000002,
    billing_granularity_seconds=0.1,
    pubsub_per_tib=40.0,
    pubsub_min_request_bytes=1000,
    pubsub_timestamp_bytes=20,
    bigquery_subscription_per_tib=50.0,
    bigquery_storage_gib_month=0.02,
    logging_per_gib=0.5,
    dataflow_vcpu_hour=0.05,
    dataflow_gib_hour=0.004,
    dataflow_disk_gib_month=0.04,
    dataflow_streaming_engine_per_gib=0.02,
)
ONE_VCPU_ONE_GIB = Instance(vcpu=1, memory_gib=1)
MONTH = 2_592_000  # seconds in 30 days
TIB, GIB = 2**40, 2**30


def shape(**changes: object) -> Shape:
    """A single-ride shape: 100 msg/s per instance, 20 ms alone; RPCs of 1 message below
    50 msg/s per instance and of 5 messages from there; 250-byte predictions."""
    base = Shape(
        name="single",
        rides_per_message=1,
        capacity=100.0,
        latency_s=0.02,
        cpu_s=0.004,
        framework_cpu_s=0.001,
        push_message_bytes=130.0,
        publish=(
            (10.0, {"1": {"rpcs": 4, "payload_bytes": 1000, "request_bytes": 1200}}),
            (50.0, {"5": {"rpcs": 2, "payload_bytes": 2500, "request_bytes": 2800}}),
        ),
        log_line_bytes=300.0,
        log_envelope_bytes=200.0,
        request_log_bytes=1000.0,
        dead_letter_bytes=400.0,
    )
    return Shape(**{**base.__dict__, **changes})


def test_a_pubsub_request_is_billed_at_least_1000_bytes_and_each_message_20_more() -> None:
    assert billed_bytes(130, 1, PRICES) == 1000  # 150 bytes billed as 1,000
    assert billed_bytes(130, 10, PRICES) == 1500  # 10 x (130 + 20)
    assert billed_bytes(980, 1, PRICES) == 1000
    assert billed_bytes(981, 1, PRICES) == 1001


def test_publish_rpcs_are_billed_per_rpc_with_timestamp_and_message_id() -> None:
    histogram = {
        "1": {"rpcs": 3, "payload_bytes": 750},  # 250 + 36 = 286 per RPC: billed 1,000 each
        "5": {"rpcs": 2, "payload_bytes": 2500},  # 1,250 + 5 x 36 = 1,430 per RPC
    }
    assert billed_histogram_bytes(histogram, PRICES, message_id_bytes=16) == (5860, 13)
    assert billed_histogram_bytes(histogram, PRICES, message_id_bytes=16, minimum=False) == (
        3 * 286 + 2 * 1430,
        13,
    )
    assert cost.pubsub_dollars(TIB, 40.0) == 40.0


def test_request_based_cost_per_million_rides_is_busy_instance_time_plus_fees() -> None:
    single = cost.per_million_rides(500.0, 1, Instance(vcpu=1, memory_gib=0.5), PRICES)
    # 1,000,000 rides at 500 rides/s keep one instance billed for 2,000 s.
    assert single["instance_seconds"] == pytest.approx(2000)
    assert single["compute"] == pytest.approx(2000 * (0.00002 + 0.5 * 0.000004))  # $0.044
    assert single["requests"] == pytest.approx(0.5)
    assert single["total"] == pytest.approx(0.544)

    batched = cost.per_million_rides(20_000.0, 1000, Instance(vcpu=2, memory_gib=1), PRICES)
    assert batched["instance_seconds"] == pytest.approx(50)
    assert batched["compute"] == pytest.approx(50 * (2 * 0.00002 + 0.000004))
    assert batched["requests"] == pytest.approx(1000 * 0.5 / 1_000_000)


def test_instance_based_cost_per_million_runs_instances_at_the_autoscaler_target() -> None:
    # 500 msg/s at full concurrency, run at 60%: 300 msg/s per instance, $0.000012 a second.
    per_million = cost.instance_based_per_million(500.0, ONE_VCPU_ONE_GIB, PRICES)
    assert per_million == pytest.approx(1_000_000 / 300 * 0.000012)  # $0.04


def test_the_autoscaler_runs_enough_instances_at_60_percent_and_keeps_the_minimum() -> None:
    assert instances(100.0, 50.0) == 4  # 100 / 30 = 3.33
    assert instances(90.0, 50.0) == 3  # exactly 3: no fourth
    assert instances(1.0, 50.0) == 1
    assert instances(0.0, 50.0) == 0
    assert instances(0.0, 50.0, min_instances=2) == 2
    assert instances(1.0, 50.0, min_instances=3) == 3


def test_a_sparse_instance_is_billed_for_at_least_100_ms_per_request() -> None:
    # 1 msg/s of 20 ms requests: each bills 100 ms, overlapping at random: 1 - e^-0.1.
    assert busy_fraction(1.0, 0.02, 0.1) == pytest.approx(1 - math.exp(-0.1))
    # Requests longer than the granularity count at their length.
    assert busy_fraction(2.0, 0.5, 0.1) == pytest.approx(1 - math.exp(-1.0))
    assert busy_fraction(0.0, 0.02, 0.1) == 0.0


def test_request_based_month_bills_busy_time_fees_and_idle_minimum_instances() -> None:
    # 10 msg/s on one instance: busy 1 - e^-1 of the month at $0.000024 a second.
    steady = compute_month(shape(), Scenario("s", 10.0), "request", ONE_VCPU_ONE_GIB, PRICES)
    assert steady["instances"] == 1
    assert steady["compute"] == pytest.approx((1 - math.exp(-1)) * MONTH * 0.000024)
    assert steady["requests"] == pytest.approx(10 * MONTH * 0.5 / 1_000_000)  # $12.96

    # 8 busy hours a day, one minimum instance: idle 16 h at $0.000003 a second, and during
    # the busy hours for the part of the time it has no request in flight.
    bursty = Scenario("b", 10.0, busy_hours=8, min_instances=1)
    month = compute_month(shape(), bursty, "request", ONE_VCPU_ONE_GIB, PRICES)
    busy_seconds, idle_seconds = 8 * 3600 * 30, 16 * 3600 * 30
    busy = 1 - math.exp(-1)
    assert month["compute"] == pytest.approx(
        busy * busy_seconds * 0.000024 + ((1 - busy) * busy_seconds + idle_seconds) * 0.000003
    )


def test_instance_based_month_bills_each_instance_all_the_time_and_no_fee() -> None:
    # 100 msg/s at 100 per instance at 60%: 2 instances, all month, $0.000012 a second each.
    month = compute_month(shape(), Scenario("s", 100.0), "instance", ONE_VCPU_ONE_GIB, PRICES)
    assert month["instances"] == 2
    assert month["compute"] == pytest.approx(2 * MONTH * 0.000012)  # $62.21
    assert month["requests"] == 0.0

    bursty = Scenario("b", 100.0, busy_hours=8, min_instances=1)
    month = compute_month(shape(), bursty, "instance", ONE_VCPU_ONE_GIB, PRICES)
    assert month["compute"] == pytest.approx((2 * 8 + 1 * 16) * 3600 * 30 * 0.000012)

    with pytest.raises(ValueError, match="billing"):
        compute_month(shape(), bursty, "always-on", ONE_VCPU_ONE_GIB, PRICES)


def test_pubsub_bills_every_hop_at_the_rpc_sizes_measured_near_the_rate() -> None:
    one = Scenario("s", 10.0, reject_fraction=0.0)  # 10 msg/s: RPCs of 1 message
    messages = 10 * MONTH
    hops = cost.pubsub_month(shape(), one, 1, PRICES)
    dollars = messages * 1000 / TIB * 40  # every request billed 1,000 bytes
    assert hops["push"] == pytest.approx(dollars)
    assert hops["producer"] == pytest.approx(dollars)
    assert hops["publish"] == pytest.approx(dollars)  # 250 + 36 bytes, billed 1,000
    assert hops["pull"] == pytest.approx(dollars)
    assert hops["dead_letters"] == 0.0
    assert hops["bigquery"] == pytest.approx(messages * 286 / TIB * 50)  # no minimum

    # 60 msg/s per instance: RPCs of 5 messages, 1,430 bytes each, 286 a message.
    busy = cost.pubsub_month(shape(), Scenario("s", 60.0, reject_fraction=0.0), 1, PRICES)
    assert busy["publish"] == pytest.approx(60 * MONTH * 286 / TIB * 40)

    # 1% rejected: one dead letter per rejected message, 1,000 bytes published and pulled.
    rejecting = cost.pubsub_month(shape(), Scenario("s", 10.0, reject_fraction=0.01), 1, PRICES)
    assert rejecting["dead_letters"] == pytest.approx(2 * 0.01 * messages * 1000 / TIB * 40)
    assert rejecting["publish"] == pytest.approx(0.99 * dollars)


def test_a_batch_sends_its_dead_letters_in_one_request() -> None:
    batch = shape(rides_per_message=1000, dead_letter_bytes=400.0)
    # 10 of 1,000 rides rejected: 10 x (400 + 16 + 20) = 4,360 bytes in one request.
    assert cost.dead_letter_bytes_per_message(batch, 10.0, PRICES) == pytest.approx(4360)
    # One rejected: still a whole request's minimum.
    assert cost.dead_letter_bytes_per_message(batch, 1.0, PRICES) == 1000
    # Single rides: the rejected fraction of messages, 1,000 bytes each.
    assert cost.dead_letter_bytes_per_message(shape(), 0.01, PRICES) == pytest.approx(10)


def test_logging_bills_the_line_with_its_envelope_and_the_request_log() -> None:
    logs = cost.logging_month(shape(), Scenario("s", 10.0), PRICES)
    messages = 10 * MONTH
    assert logs["function_lines"] == pytest.approx(messages * 500 / GIB * 0.5)
    assert logs["request_log"] == pytest.approx(messages * 1000 / GIB * 0.5)
    lean = cost.logging_month(
        shape(), Scenario("s", 10.0, log_lines=False, request_log=False), PRICES
    )
    assert lean == {"function_lines": 0.0, "request_log": 0.0}


def test_bigquery_storage_keeps_a_month_of_rows_a_month() -> None:
    # 286 bytes a prediction (the busiest histogram) + 120 of metadata columns.
    storage = cost.bigquery_storage_month(shape(), Scenario("s", 10.0, reject_fraction=0), PRICES)
    assert storage == pytest.approx(10 * MONTH * 406 / GIB * 0.02)


def test_a_bill_adds_every_item_and_divides_by_predictions() -> None:
    scenario = Scenario("s", 10.0, reject_fraction=0.0)
    one = cost.bill(shape(), scenario, "instance", ONE_VCPU_ONE_GIB, PRICES)
    messages = 10 * MONTH
    expected = (
        MONTH * 0.000012  # one instance
        + 4 * messages * 1000 / TIB * 40  # producer, push, publish, pull at 1,000 bytes
        + messages * 286 / TIB * 50  # BigQuery subscription
        + messages * 406 / GIB * 0.02  # BigQuery storage
        + messages * 1500 / GIB * 0.5  # log line, envelope, request log
    )
    assert one.total == pytest.approx(expected)
    assert one.per_million == pytest.approx(expected / messages * 1_000_000)
    assert one.predictions == messages
    assert one.instances == 1


def test_instance_based_becomes_cheaper_at_the_rate_where_fees_pay_for_an_instance() -> None:
    # Request-based bills only the fee ($1 per million); an always-busy instance costs
    # $0.00001 a second: equal at 10 msg/s. Nothing else differs between the two modes.
    prices = Prices(
        request_vcpu_second=0.0,
        request_gib_second=0.0,
        per_million_requests=1.0,
        instance_vcpu_second=0.00001,
        instance_gib_second=0.0,
    )
    wide = shape(capacity=1e9)
    rate = cost.break_even_rate(wide, prices)
    assert rate == pytest.approx(10.0, rel=0.005)
    # Never, when instance time costs more than fees can reach below 20,000 msg/s.
    dear = Prices(request_vcpu_second=0.0, request_gib_second=0.0, instance_vcpu_second=1.0)
    assert cost.break_even_rate(wide, dear) is None


def test_the_floor_is_the_push_minimum_the_published_bytes_and_framework_cpu() -> None:
    floor = cost.floor_month(shape(), Scenario("s", 10.0, reject_fraction=0.0), PRICES)
    messages = 10 * MONTH
    assert floor.items == pytest.approx(
        {
            "compute": messages * 0.001 * 0.000012,
            "pubsub_push": messages * 1000 / TIB * 40,
            "pubsub_publish": messages * 286 / TIB * 40,
            "pubsub_pull": messages * 286 / TIB * 40,
            "pubsub_bigquery": messages * 286 / TIB * 50,
            "bigquery_storage": messages * 406 / GIB * 0.02,
        }
    )


def test_dataflow_runs_always_on_workers_for_the_cpu_and_pulls_in_batches() -> None:
    # 1,000 msg/s x 4 ms = 4 vCPUs at 60%: 6.67 -> 4 workers of 2 vCPUs.
    scenario = Scenario("s", 1000.0, reject_fraction=0.0)
    paper = cost.dataflow_month(shape(), scenario, PRICES)
    assert paper.instances == 4
    worker_month = 720 * (2 * 0.05 + 7.5 * 0.004) + 30 * 0.04
    assert paper.items["compute"] == pytest.approx(4 * worker_month)
    messages = 1000 * MONTH
    assert paper.items["streaming_engine"] == pytest.approx(messages * 150 / GIB * 0.02)
    assert paper.items["pubsub_pull_input"] == pytest.approx(messages * 150 / TIB * 40)
    assert paper.items["pubsub_publish"] == pytest.approx(messages * 286 / TIB * 40)
    assert cost.dataflow_month(shape(), Scenario("s", 1.0), PRICES).instances == 1


def test_a_scenario_uses_the_rpcs_measured_at_the_nearest_rate_below_its_own() -> None:
    measured = shape()
    assert cost.publish_histogram(measured, 5.0) == measured.publish[0][1]
    assert cost.publish_histogram(measured, 49.0) == measured.publish[0][1]
    assert cost.publish_histogram(measured, 50.0) == measured.publish[1][1]
    assert cost.publish_histogram(measured, 5000.0) == measured.publish[1][1]


def test_the_default_concurrency_is_the_smallest_within_tolerance_of_the_cheapest() -> None:
    totals = {1: 1.02, 8: 0.494, 16: 0.448, 32: 0.427, 80: 0.418}
    assert cost.choose_default(totals, tolerance=0.05) == 32
    assert cost.choose_default(totals, tolerance=0.10) == 16
    assert cost.choose_default(totals, tolerance=0.0) == 80
    assert cost.choose_default({1: float("nan"), 4: 0.0}) is None


def test_every_price_names_its_page_and_how_it_was_read() -> None:
    for name in Prices.__dataclass_fields__:
        page, how = cost.PRICE_SOURCES[name]
        assert page.startswith("https://cloud.google.com/"), name
        assert how == "page" or how.startswith(("not ", "an older")), name


def test_the_rpcs_default_is_the_cap_with_the_smallest_worst_case_over_both_shapes() -> None:
    from bench.cost_report import minimax_rpcs

    def row(level: int, rpcs: int, single: float, batch: float) -> dict[str, float]:
        return {"concurrency": level, "rpcs": rpcs, "instance": single, "batch_instance": batch}

    rows = [
        # single rides: 1 is cheapest; 1,000-ride messages: 1 costs twice as much as 4
        row(32, 1, 1.00, 2.00), row(32, 4, 1.10, 1.00), row(32, 8, 1.20, 1.10),
        row(80, 1, 1.00, 1.50), row(80, 4, 1.05, 1.00), row(80, 8, 1.15, 1.00),
        row(16, 1, 9.00, 9.00), row(16, 4, 1.00, 1.00),  # two caps only: not compared
    ]  # fmt: skip
    cap, excess = minimax_rpcs(rows, "instance")
    assert cap == 4
    assert excess == pytest.approx(0.10)  # 1.10 / 1.00 at 32
    assert minimax_rpcs([], "instance") is None


def test_results_say_other_work_shared_the_cpus_only_when_the_run_started_busy() -> None:
    from bench.report import _load_sentence

    how = "1-minute load average (os.getloadavg) at the start and the end"
    quiet = _load_sentence({"start": 0.2, "end": 3.2, "how": how})
    busy = _load_sentence({"start": 3.4, "end": 8.4, "how": how})
    assert "start 0.2, end 3.2" in quiet
    assert "quiet when the run started" in quiet
    assert "slower than on a quiet machine" not in quiet
    assert "other work was running" in busy
    assert "slower than on a quiet machine" in busy
    assert _load_sentence(None) == ""
