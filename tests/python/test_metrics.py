"""`GET /metrics` read the way Prometheus reads it: parsed with `prometheus_client`'s text
parser, so a format slip (a bad escape, a sample without its family) fails here.

- every per-shard family has one sample per shard, labelled `shard="N"`;
- published and delivered move after messages flow (summed over the shards);
- open connections are reported per shard and protocol;
- per-topic series exist only for the `--metrics-topics-max` topics with the most messages;
- replays are counted;
- the in-broker latency is a histogram per shard (buckets, sum, count) plus quantile gauges,
  and its count moves as deliveries are written;
- `corebus_build_info` carries the version;
- Redis `INFO corebus` carries the latency quantiles too;
- refusals are counted by error code, on every protocol.
"""

import time

import redis
from prometheus_client.parser import text_string_to_metric_families

from corebus_testing import fastapi_subscribe, fiber_subscribe, http, native_publish, unique

SHARDS = 2


def scrape(broker):
    """{family name: [samples]} of one scrape."""
    response = http(broker, "GET", "/metrics")
    assert response.status == 200, response
    assert response.header("content-type") == "text/plain; version=0.0.4; charset=utf-8"
    families = {}
    for family in text_string_to_metric_families(response.body.decode("utf-8")):
        families[family.name] = family.samples
    return families


def total(families, family, sample_name):
    return sum(s.value for s in families[family] if s.name == sample_name)


def test_counters_have_a_series_per_shard_and_move_as_messages_flow(broker):
    before = scrape(broker)
    for family in ("corebus_published", "corebus_delivered", "corebus_bytes_in",
                   "corebus_bytes_out", "corebus_dropped", "corebus_slow_consumer_disconnects",
                   "corebus_dead_lettered", "corebus_rate_limited", "corebus_protocol_errors",
                   "corebus_connections_accepted", "corebus_connections_refused",
                   "corebus_acks", "corebus_nacks", "corebus_redelivered", "corebus_gaps",
                   "corebus_gap_missed", "corebus_replayed",
                   "corebus_topics", "corebus_retained_messages", "corebus_retained_bytes"):
        shards = sorted(s.labels["shard"] for s in before[family] if not s.name.endswith("_created"))
        assert shards == [str(n) for n in range(SHARDS)], (family, before[family])

    topic = unique("metrics.flow")
    with broker.fiber() as ws:
        fiber_subscribe(ws, topic)
        for n in range(5):
            native_publish(broker, topic, f"m{n}".encode())
        for _ in range(5):
            ws.expect("event")
        after = scrape(broker)
        websockets = [s for s in after["corebus_connections"] if s.labels["protocol"] == "websocket"]
        assert sorted(s.labels["shard"] for s in websockets) == ["0", "1"], websockets
        assert sum(s.value for s in websockets) >= 1, websockets

    published = ("corebus_published", "corebus_published_total")
    delivered = ("corebus_delivered", "corebus_delivered_total")
    assert total(after, *published) >= total(before, *published) + 5
    assert total(after, *delivered) >= total(before, *delivered) + 5
    mine = [s for s in after["corebus_topic_messages"] if s.labels["topic"] == topic]
    assert len(mine) == 1 and mine[0].value == 5, mine
    assert mine[0].labels["shard"] in ("0", "1")

    build = after["corebus_build_info"]
    assert len(build) == 1 and build[0].value == 1 and build[0].labels["version"], build
    reasons = {s.labels["reason"] for s in after["corebus_connections_closed"]}
    assert {"peer_closed", "slow_consumer", "shutdown"} <= reasons, reasons


def test_delivery_latency_is_a_histogram_and_quantiles_per_shard(broker):
    def count(families):
        return total(families, "corebus_delivery_latency_seconds",
                     "corebus_delivery_latency_seconds_count")

    before = scrape(broker)
    topic = unique("metrics.latency")
    with broker.fiber() as ws:
        fiber_subscribe(ws, topic)
        for n in range(5):
            native_publish(broker, topic, f"m{n}".encode())
            ws.expect("event")
    after = scrape(broker)
    # Each publish was written on its own, so each is a sample.
    assert count(after) >= count(before) + 5

    for name in ("corebus_delivery_latency_seconds", "corebus_ack_latency_seconds"):
        samples = after[name]
        for shard in map(str, range(SHARDS)):
            buckets = [s for s in samples
                       if s.name == name + "_bucket" and s.labels["shard"] == shard]
            bounds = [float(s.labels["le"]) for s in buckets]
            assert bounds == sorted(bounds) and bounds[-1] == float("inf"), bounds
            counts = [s.value for s in buckets]
            assert counts == sorted(counts), counts
            (last,) = [s.value for s in samples
                       if s.name == name + "_count" and s.labels["shard"] == shard]
            assert counts[-1] == last
        quantiles = after[name.replace("_seconds", "_quantile_seconds")]
        assert {s.labels["quantile"] for s in quantiles} == {"0.5", "0.9", "0.99", "0.999", "1"}
        assert len(quantiles) == 5 * SHARDS
    delivering = [s for s in after["corebus_delivery_latency_quantile_seconds"]
                  if s.labels["quantile"] == "1" and s.value > 0]
    assert delivering, after["corebus_delivery_latency_quantile_seconds"]
    # In-broker latency on an idle loopback broker: well under a second.
    assert all(s.value < 1.0 for s in delivering), delivering


def test_replays_are_counted(broker):
    topic = unique("metrics.replay")
    for n in range(3):
        native_publish(broker, topic, f"m{n}".encode())
    before = total(scrape(broker), "corebus_replayed", "corebus_replayed_total")
    with broker.fastapi() as ws:
        fastapi_subscribe(ws, topic, last_n=3)
        for _ in range(3):
            ws.expect("event")
    after = total(scrape(broker), "corebus_replayed", "corebus_replayed_total")
    assert after == before + 3


def test_only_the_top_topics_by_messages_get_series(start_broker):
    broker = start_broker("--metrics-topics-max", "3")
    counts = {unique("metrics.top"): n for n in (1, 2, 3, 4, 5, 6)}
    for topic, count in counts.items():
        for n in range(count):
            native_publish(broker, topic, f"m{n}".encode())
    families = scrape(broker)
    for family in ("corebus_topic_messages", "corebus_topic_subscribers",
                   "corebus_topic_retained_messages", "corebus_topic_retained_bytes"):
        topics = {s.labels["topic"] for s in families[family]}
        assert len(topics) == 3, (family, families[family])
    seen = {s.labels["topic"]: s.value for s in families["corebus_topic_messages"]}
    busiest = sorted(counts, key=counts.get, reverse=True)[:3]
    assert seen == {topic: counts[topic] for topic in busiest}
    # The topic gauges still count every topic.
    assert sum(s.value for s in families["corebus_topics"]) == len(counts)


def test_the_scrape_is_quick_and_stable(broker):
    """Two scrapes in a row parse and name the same families (nothing appears or vanishes
    with the traffic)."""
    first = scrape(broker)
    time.sleep(0.05)
    second = scrape(broker)
    assert set(first) == set(second)


def test_redis_info_reports_the_latency(broker):
    topic = unique("metrics.info")
    with broker.fiber() as ws:
        fiber_subscribe(ws, topic)
        native_publish(broker, topic, b"x")
        ws.expect("event")
    host, port = broker.resp
    info = redis.Redis(host=host, port=port).info("corebus")
    assert info["delivery_latency_samples"] >= 1, info
    assert 0 < info["delivery_latency_p50_us"] <= info["delivery_latency_max_us"], info
    for name in ("p90", "p99", "p999"):
        assert f"delivery_latency_{name}_us" in info and f"ack_latency_{name}_us" in info, info


def test_refusals_are_counted_by_error_code(broker):
    def refused(families, code):
        return sum(s.value for s in families["corebus_errors"]
                   if s.name == "corebus_errors_total" and s.labels["code"] == code)

    before = scrape(broker)
    assert {s.labels["shard"] for s in before["corebus_errors"]} == {"0", "1"}
    assert "corebus_ring_full_pauses" in before
    host, port = broker.resp
    client = redis.Redis(host=host, port=port)
    for _ in range(3):
        # `$` names are the broker's own: a client may read them, never publish there.
        try:
            client.publish("$dlq.metrics", "x")
        except redis.ResponseError as error:
            assert "reserved" in str(error).lower() or "$" in str(error), error
        else:
            raise AssertionError("a publish to a reserved name was accepted")
    after = scrape(broker)
    assert refused(after, "BAD_TOPIC") == refused(before, "BAD_TOPIC") + 3
