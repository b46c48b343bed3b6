"""The Go/Fiber WebSocket dialect on `GET /v1/ws`, spoken by a real client (`websockets`).

Shapes are those of `src/protocol/ws_fiber.rs`: `ack {request_id?, topic, status, timestamp}`,
`event {topic, message: {id, payload}, timestamp, seq?}`, `error {request_id?, error: {code,
message, retry_after_ms?}, timestamp}`, `pong {request_id?, timestamp}`.
"""

import json
import threading
import time

import pytest

from corebus_testing import (
    DERIVED_ID,
    QUIET,
    WAIT,
    RawHttp,
    WsClient,
    assert_timestamp,
    fiber_publish,
    fiber_subscribe,
    http,
    unique,
    ws_expect_close,
    ws_frame,
    ws_handshake,
    ws_read_frame,
)


def assert_error(message, code, request_id=None):
    assert message["type"] == "error", message
    assert message["error"]["code"] == code, message
    assert isinstance(message["error"]["message"], str) and message["error"]["message"], message
    assert_timestamp(message["timestamp"])
    if request_id is None:
        assert "request_id" not in message, message
    else:
        assert message["request_id"] == request_id, message


def assert_still_open(ws):
    ws.send({"type": "ping", "request_id": "still-open"})
    pong = ws.expect("pong")
    assert pong["request_id"] == "still-open", pong


# ------------------------------------------------------------------------------------------
# subscribe / publish / unsubscribe / ping


def test_subscribe_is_acked_with_request_id_and_timestamp(broker):
    topic = unique("fiber.sub")
    with broker.fiber() as ws:
        ws.send({"type": "subscribe", "topic": topic, "client_id": "c-1", "request_id": "r-1"})
        ack = ws.expect("ack")
        assert set(ack) == {"type", "request_id", "topic", "status", "timestamp"}, ack
        assert (ack["request_id"], ack["topic"], ack["status"]) == ("r-1", topic, "ok")
        assert_timestamp(ack["timestamp"])

        # Without a request_id, the ack has none.
        other = unique("fiber.sub")
        ws.send({"type": "subscribe", "topic": other})
        ack = ws.expect("ack")
        assert set(ack) == {"type", "topic", "status", "timestamp"}, ack
        assert ack["topic"] == other


PAYLOADS = [
    {"order": 17, "items": [{"sku": "a-1", "qty": 2}], "paid": True, "note": None},
    [1, "two", 3.5, None, False, {"k": []}],
    "a plain string with unicode: \u00e9\u4e2d\U0001f600 and \"quotes\"",
    "",
    42,
    -0.125,
    12345678901234567,
    None,
    True,
    {},
    [],
]


@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda p: type(p).__name__ + ":" + json.dumps(p)[:20])
def test_publish_reaches_another_subscriber_with_the_publishers_id(broker, payload):
    topic = unique("fiber.pub")
    with broker.fiber() as subscriber, broker.fiber() as publisher:
        fiber_subscribe(subscriber, topic)
        ack = fiber_publish(publisher, topic, payload, message_id="m-1", request_id="p-1")
        assert set(ack) == {"type", "request_id", "topic", "status", "timestamp"}, ack
        assert_timestamp(ack["timestamp"])

        event = subscriber.expect("event")
        assert set(event) == {"type", "topic", "message", "timestamp"}, event
        assert event["topic"] == topic
        assert event["message"] == {"id": "m-1", "payload": payload}
        assert_timestamp(event["timestamp"])
        # The publisher is not subscribed: it gets its ack only.
        publisher.expect_silence()
        subscriber.expect_silence()


def test_a_publisher_subscribed_to_its_topic_gets_the_ack_before_the_event(broker):
    # Topics land on both shards of the test broker: the order must hold for the publisher's
    # own shard and for a topic owned by the other one.
    with broker.fiber() as ws:
        topics = [unique(f"fiber.own.{index}") for index in range(16)]
        for topic in topics:
            fiber_subscribe(ws, topic)
        for index, topic in enumerate(topics):
            fiber_publish(ws, topic, {"n": index}, request_id=f"own-{index}")
            event = ws.expect("event")
            assert event["topic"] == topic and event["message"]["payload"] == {"n": index}
        ws.expect_silence()


def test_payload_text_round_trips_exactly_minus_whitespace(broker):
    """The stored payload is the publisher's own tokens (key order, number spelling, string
    escapes), only insignificant whitespace dropped."""
    topic = unique("fiber.exact")
    with broker.fiber() as subscriber, broker.fiber() as publisher:
        fiber_subscribe(subscriber, topic)
        publisher.send_text(
            '{"type":"publish","topic":"%s","request_id":"x","message":'
            '{"id":"exact-1","payload": {"z": 1, "a" : [1.50, 2e3, "caf\\u00e9 \\"q\\""],'
            ' "m": {}}}}' % topic
        )
        publisher.expect("ack")
        text = subscriber.recv_text()
        assert '"payload":{"z":1,"a":[1.50,2e3,"caf\\u00e9 \\"q\\""],"m":{}}' in text, text


def test_publish_without_an_id_gets_one_derived_from_epoch_and_seq(broker):
    topic = unique("fiber.id")
    with broker.fiber() as subscriber, broker.fiber() as publisher:
        fiber_subscribe(subscriber, topic, seq=True)
        fiber_publish(publisher, topic, {"n": 1})
        fiber_publish(publisher, topic, {"n": 2}, message_id="")
        events = subscriber.collect(2)
        ids = [event["message"]["id"] for event in events]
        for event in events:
            match = DERIVED_ID.match(event["message"]["id"])
            assert match, event
            assert int(match.group(1)) == event["seq"], event
        assert ids[0] != ids[1]
        # One topic incarnation: the same epoch prefix.
        assert ids[0].split("-")[0] == ids[1].split("-")[0]


def test_unsubscribe_stops_events(broker):
    topic = unique("fiber.unsub")
    with broker.fiber() as leaving, broker.fiber() as staying, broker.fiber() as publisher:
        fiber_subscribe(leaving, topic)
        fiber_subscribe(staying, topic)
        fiber_publish(publisher, topic, "before")
        assert leaving.expect("event")["message"]["payload"] == "before"
        assert staying.expect("event")["message"]["payload"] == "before"

        leaving.send({"type": "unsubscribe", "topic": topic, "client_id": "c", "request_id": "u-1"})
        ack = leaving.expect("ack")
        assert (ack["request_id"], ack["topic"], ack["status"]) == ("u-1", topic, "ok"), ack
        assert_timestamp(ack["timestamp"])

        fiber_publish(publisher, topic, "after")
        assert staying.expect("event")["message"]["payload"] == "after"
        leaving.expect_silence()
        assert_still_open(leaving)


def test_ping_pong(broker):
    with broker.fiber() as ws:
        ws.send({"type": "ping", "request_id": "p-9"})
        pong = ws.expect("pong")
        assert set(pong) == {"type", "request_id", "timestamp"} and pong["request_id"] == "p-9"
        assert_timestamp(pong["timestamp"])
        ws.send({"type": "ping"})
        pong = ws.expect("pong")
        assert set(pong) == {"type", "timestamp"}, pong
        # WebSocket-level ping (a control frame) is answered too.
        assert ws.ws.ping(b"hb").wait(WAIT), "no pong frame for a ping frame"


def test_pattern_subscription_gets_matching_topics(broker):
    base = unique("fiber.pat")
    with broker.fiber() as subscriber, broker.fiber() as publisher:
        fiber_subscribe(subscriber, f"{base}.*")
        fiber_publish(publisher, f"{base}.created", 1)
        fiber_publish(publisher, f"{base}.deep.not", 2)
        fiber_publish(publisher, f"{base}.updated", 3)
        events = subscriber.collect(2)
        assert [(e["topic"], e["message"]["payload"]) for e in events] == [
            (f"{base}.created", 1),
            (f"{base}.updated", 3),
        ]
        subscriber.expect_silence()


# ------------------------------------------------------------------------------------------
# Replay


def test_last_n_replays_in_order_then_live_with_no_gap_or_duplicate(broker):
    topic = unique("fiber.replay")
    total = 1500
    head_start = 300
    published = {"count": 0}
    enough = threading.Event()
    failure = []

    def publish_all():
        try:
            with broker.fiber() as publisher:
                for first in range(1, total + 1, 50):
                    batch = range(first, min(first + 50, total + 1))
                    for n in batch:
                        publisher.send({"type": "publish", "topic": topic,
                                        "message": {"payload": {"n": n}}, "request_id": str(n)})
                    for n in batch:
                        ack = publisher.expect("ack")
                        assert ack["request_id"] == str(n), ack
                    published["count"] = batch[-1]
                    if batch[-1] >= head_start:
                        enough.set()
        except BaseException as error:  # reported by the main thread
            failure.append(error)
            enough.set()

    thread = threading.Thread(target=publish_all, daemon=True)
    thread.start()
    with broker.fiber() as subscriber:
        assert enough.wait(30), "the publisher did not get going"
        assert not failure, failure
        at_subscribe = published["count"]
        subscriber.send({"type": "subscribe", "topic": topic, "last_n": 100, "seq": True,
                         "request_id": "replay"})
        acks, numbers, seqs = 0, [], []
        while not numbers or numbers[-1] < total:
            message = subscriber.recv(timeout=10)
            if message["type"] == "ack":
                assert message["request_id"] == "replay", message
                acks += 1
                continue
            assert message["type"] == "event", message
            numbers.append(message["message"]["payload"]["n"])
            seqs.append(message["seq"])
        thread.join(30)
        assert not failure, failure
        assert acks == 1 or (acks == 0 and subscriber.expect("ack")["request_id"] == "replay")
        assert numbers == list(range(numbers[0], total + 1)), "gap or duplicate at the seam"
        assert seqs == numbers, "a fresh topic numbers its messages 1, 2, 3, ..."
        assert len(numbers) >= 100, "fewer than last_n messages"
        # Exactly the last 100 before the subscription took effect, then every later one.
        assert numbers[0] >= at_subscribe - 99, (numbers[0], at_subscribe)
        subscriber.expect_silence()


def test_from_seq_starts_at_that_sequence_number(broker):
    topic = unique("fiber.fromseq")
    with broker.fiber() as publisher, broker.fiber() as subscriber:
        for n in range(1, 6):
            fiber_publish(publisher, topic, n)
        subscriber.send({"type": "subscribe", "topic": topic, "from_seq": 3, "seq": True,
                         "request_id": "f"})
        got = [m for m in subscriber.collect(4) if m["type"] == "event"]
        assert [(e["seq"], e["message"]["payload"]) for e in got] == [(3, 3), (4, 4), (5, 5)]
        fiber_publish(publisher, topic, 6)
        event = subscriber.expect("event")
        assert (event["seq"], event["message"]["payload"]) == (6, 6)


def test_seq_extra_makes_events_carry_seq(broker):
    topic = unique("fiber.seq")
    with broker.fiber() as plain, broker.fiber() as numbered, broker.fiber() as publisher:
        fiber_subscribe(plain, topic)
        fiber_subscribe(numbered, topic, seq=True)
        for n in range(3):
            fiber_publish(publisher, topic, n)
        assert [e["seq"] for e in numbered.collect(3)] == [1, 2, 3]
        for event in plain.collect(3):
            assert "seq" not in event, event


# ------------------------------------------------------------------------------------------
# Durable consumers and acks (corebus extras)


def subscribe_consumer(broker, topic, consumer, expected_events):
    """Connects and subscribes as `consumer` with acks, retrying while the broker still sees
    the previous connection attached; returns (client, events received with the ack)."""
    deadline = time.monotonic() + WAIT
    while True:
        ws = broker.fiber()
        ws.send({"type": "subscribe", "topic": topic, "consumer": consumer, "ack": True,
                 "request_id": "c"})
        first = ws.recv()
        if first["type"] == "error" and time.monotonic() < deadline:
            ws.close()
            time.sleep(0.1)
            continue
        messages = [first] + ws.collect(expected_events)
        acks = [m for m in messages if m["type"] == "ack"]
        events = [m for m in messages if m["type"] == "event"]
        assert len(acks) == 1 and acks[0]["request_id"] == "c", messages
        assert len(events) == expected_events, messages
        return ws, events


def expect_no_event(ws):
    """Nothing but (if the broker answers acks at all) an ack arrives for a while: an
    acknowledged message is not redelivered and an ack is not refused."""
    deadline = time.monotonic() + QUIET
    while (left := deadline - time.monotonic()) > 0:
        try:
            data = ws.ws.recv(timeout=left)
        except TimeoutError:
            return
        assert json.loads(data)["type"] == "ack", data


def test_consumer_with_acks_gets_unacked_messages_again(broker):
    topic = unique("fiber.acks")
    with broker.fiber() as publisher:
        first, events = subscribe_consumer(broker, topic, "worker-1", 0)
        fiber_publish(publisher, topic, "m1", message_id="id-1")
        fiber_publish(publisher, topic, "m2", message_id="id-2")
        got = first.collect(2)
        assert [(e["message"]["id"], e["message"]["payload"]) for e in got] == [
            ("id-1", "m1"), ("id-2", "m2")]
        assert all("seq" in e for e in got), "acked events carry seq"
        first.send({"type": "ack", "topic": topic, "seq": got[0]["seq"]})
        expect_no_event(first)
        first.close()

        # m2 was never acked: the consumer gets it again (same seq, same id), m1 not.
        second, events = subscribe_consumer(broker, topic, "worker-1", 1)
        assert events[0]["seq"] == got[1]["seq"]
        assert events[0]["message"] == {"id": "id-2", "payload": "m2"}
        second.send({"type": "ack", "topic": topic, "seq": events[0]["seq"]})
        expect_no_event(second)
        second.close()

        third, _ = subscribe_consumer(broker, topic, "worker-1", 0)
        third.expect_silence()
        fiber_publish(publisher, topic, "m3")
        assert third.expect("event")["message"]["payload"] == "m3"
        third.close()


def test_group_members_split_the_messages(broker):
    topic = unique("fiber.group")
    with broker.fiber() as first, broker.fiber() as second, broker.fiber() as publisher:
        fiber_subscribe(first, topic, group="workers")
        fiber_subscribe(second, topic, group="workers")
        for n in range(20):
            fiber_publish(publisher, topic, n)
        got = []
        deadline = time.monotonic() + WAIT
        while len(got) < 20 and time.monotonic() < deadline:
            for member in (first, second):
                try:
                    data = member.ws.recv(timeout=0.05)
                except TimeoutError:
                    continue
                event = json.loads(data)
                assert event["type"] == "event", event
                got.append(event["message"]["payload"])
        # Each message to exactly one member.
        assert sorted(got) == list(range(20)), got
        first.expect_silence()
        second.expect_silence()


# ------------------------------------------------------------------------------------------
# Errors: each gets its error message and the connection stays open.


BAD_REQUESTS = [
    ("{not json", None),
    ("[1, 2]", None),
    ("42", None),
    ('{"type":"ping","request_id":7}', None),
    ('{"request_id":"r-type"}', "r-type"),
    ('{"type":5,"request_id":"r-type5"}', "r-type5"),
    ('{"type":"jump","request_id":"r-jump"}', "r-jump"),
    ('{"type":"subscribe","request_id":"r-notopic"}', "r-notopic"),
    ('{"type":"subscribe","request_id":"r-topic1","topic":1}', "r-topic1"),
    ('{"type":"subscribe","request_id":"r-empty","topic":""}', "r-empty"),
    ('{"type":"subscribe","request_id":"r-dots","topic":"a..b"}', "r-dots"),
    ('{"type":"subscribe","request_id":"r-space","topic":"a b"}', "r-space"),
    ('{"type":"subscribe","request_id":"r-long","topic":"%s"}' % ("a" * 256), "r-long"),
    ('{"type":"subscribe","request_id":"r-lastn","topic":"ok.t","last_n":-1}', "r-lastn"),
    ('{"type":"subscribe","request_id":"r-ack","topic":"ok.t","ack":true}', "r-ack"),
    ('{"type":"subscribe","request_id":"r-both","topic":"ok.t","last_n":1,"from_seq":2}', "r-both"),
    ('{"type":"unsubscribe","request_id":"r-unsub"}', "r-unsub"),
    ('{"type":"publish","request_id":"r-pubtopic","message":{"payload":1}}', "r-pubtopic"),
    ('{"type":"publish","request_id":"r-wild","topic":"a.*","message":{"payload":1}}', "r-wild"),
    ('{"type":"publish","request_id":"r-sys","topic":"$sys.a","message":{"payload":1}}', "r-sys"),
    ('{"type":"publish","request_id":"r-nomsg","topic":"ok.t"}', "r-nomsg"),
    ('{"type":"publish","request_id":"r-msgstr","topic":"ok.t","message":"x"}', "r-msgstr"),
    ('{"type":"publish","request_id":"r-nopayload","topic":"ok.t","message":{}}', "r-nopayload"),
    ('{"type":"publish","request_id":"r-id","topic":"ok.t","message":{"id":1,"payload":1}}', "r-id"),
    ('{"type":"ack","request_id":"r-seq","topic":"ok.t"}', "r-seq"),
]


@pytest.mark.parametrize("text, request_id", BAD_REQUESTS, ids=[t[:40] for t, _ in BAD_REQUESTS])
def test_malformed_messages_are_bad_requests_and_the_connection_stays(broker, text, request_id):
    with broker.fiber() as ws:
        ws.send_text(text)
        assert_error(ws.recv(), "BAD_REQUEST", request_id)
        assert_still_open(ws)


def test_binary_frame_is_a_bad_request(broker):
    with broker.fiber() as ws:
        ws.ws.send(b'{"type":"ping"}')
        assert_error(ws.recv(), "BAD_REQUEST")
        assert_still_open(ws)


def test_payload_too_large(start_broker):
    broker = start_broker("--message-bytes-max", "1024")
    topic = unique("fiber.big")
    with broker.fiber() as subscriber, broker.fiber() as publisher:
        fiber_subscribe(subscriber, topic)
        # Stored as compact JSON text: a string of n characters is n + 2 bytes.
        fiber_publish(publisher, topic, "x" * 1022)  # 1024 bytes: at the limit
        assert subscriber.expect("event")["message"]["payload"] == "x" * 1022
        publisher.send({"type": "publish", "topic": topic, "request_id": "big",
                        "message": {"payload": "x" * 1023}})  # 1025 bytes
        assert_error(publisher.recv(), "PAYLOAD_TOO_LARGE", "big")
        subscriber.expect_silence()
        assert_still_open(publisher)
        fiber_publish(publisher, topic, "small")
        assert subscriber.expect("event")["message"]["payload"] == "small"


def test_topic_not_found_when_auto_create_is_off(start_broker):
    broker = start_broker("--auto-create-topics", "false")
    topic = unique("fiber.absent")
    with broker.fiber() as ws:
        ws.send({"type": "subscribe", "topic": topic, "request_id": "s"})
        assert_error(ws.recv(), "TOPIC_NOT_FOUND", "s")
        ws.send({"type": "publish", "topic": topic, "message": {"payload": 1}, "request_id": "p"})
        assert_error(ws.recv(), "TOPIC_NOT_FOUND", "p")
        assert_still_open(ws)

        created = http(broker, "POST", "/v1/topics", {"name": topic})
        assert created.status == 201, created
        fiber_subscribe(ws, topic)
        with broker.fiber() as publisher:
            fiber_publish(publisher, topic, "now it exists")
        assert ws.expect("event")["message"]["payload"] == "now it exists"


def test_rate_limited_with_a_retry_hint(start_broker):
    broker = start_broker("--publish-rate", "10")
    topic = unique("fiber.rate")
    attempts = 100
    with broker.fiber() as subscriber, broker.fiber() as publisher:
        fiber_subscribe(subscriber, topic)
        for n in range(attempts):
            publisher.send({"type": "publish", "topic": topic, "message": {"payload": n},
                            "request_id": f"r{n}"})
        acked, limited, retry_ms = [], [], []
        for _ in range(attempts):
            reply = publisher.recv()
            if reply["type"] == "ack":
                acked.append(int(reply["request_id"][1:]))
                continue
            assert_error(reply, "RATE_LIMITED", reply.get("request_id"))
            assert reply["request_id"].startswith("r"), reply
            hint = reply["error"]["retry_after_ms"]
            assert isinstance(hint, int) and 0 < hint <= 60_000, reply
            limited.append(int(reply["request_id"][1:]))
            retry_ms.append(hint)
        assert sorted(acked + limited) == list(range(attempts))
        assert acked and limited, (acked, limited)
        # Only accepted publishes reach subscribers, in order.
        events = subscriber.collect(len(acked))
        assert [e["message"]["payload"] for e in events] == sorted(acked)
        subscriber.expect_silence()
        assert_still_open(publisher)
        # After the hinted wait, publishing works again.
        time.sleep(max(retry_ms) / 1000 + 0.3)
        fiber_publish(publisher, topic, "later")
        assert subscriber.expect("event")["message"]["payload"] == "later"


# ------------------------------------------------------------------------------------------
# Slow consumers and shutdown


def topic_subscribers(broker, topic):
    response = http(broker, "GET", "/v1/topics")
    assert response.status == 200, response
    for entry in response.json()["topics"]:
        if entry["name"] == topic:
            return entry["subscribers"]
    return 0


def test_slow_consumer_is_told_and_closed_while_others_get_everything(start_broker):
    broker = start_broker(
        "--outbound-bytes-max", "65536",
        "--message-bytes-max", "16384",
        # The slow client reads its SLOW_CONSUMER only after publishing stops.
        "--close-linger-ms", "10000",
    )
    topic = unique("fiber.slow")
    pad = "p" * 4000

    # A subscriber that never reads, with a small receive window.
    slow = RawHttp(broker.http, timeout=WAIT, rcvbuf=4096)
    ws_handshake(slow, "/v1/ws")
    slow.send(ws_frame(0x1, json.dumps(
        {"type": "subscribe", "topic": topic, "request_id": "slow"}).encode()))
    opcode, payload = ws_read_frame(slow)
    assert opcode == 0x1 and json.loads(payload)["type"] == "ack", payload

    # A subscriber that keeps up, reading on its own thread.
    fast = WsClient.connect(broker.ws_url("/v1/ws"), max_queue=4096)
    fiber_subscribe(fast, topic)
    received = []
    done = threading.Event()
    target = {"last": None}
    failure = []

    def read_fast():
        try:
            deadline = time.monotonic() + 120
            while target["last"] is None or not received or received[-1] < target["last"]:
                assert time.monotonic() < deadline, "the fast subscriber stopped getting events"
                try:
                    data = fast.ws.recv(timeout=0.2)
                except TimeoutError:
                    continue
                event = json.loads(data)
                assert event["type"] == "event", event
                received.append(event["message"]["payload"]["n"])
        except BaseException as error:
            failure.append(error)
        finally:
            done.set()

    reader = threading.Thread(target=read_fast, daemon=True)
    reader.start()
    deadline = time.monotonic() + WAIT
    while topic_subscribers(broker, topic) != 2:
        assert time.monotonic() < deadline, "GET /v1/topics never counted both subscribers"
        time.sleep(0.05)

    published = 0
    deadline = time.monotonic() + 60
    with broker.fiber() as publisher:
        while topic_subscribers(broker, topic) == 2:
            assert time.monotonic() < deadline, "the slow subscriber was never cut"
            assert published < 20_000, "80 MB published and the slow subscriber is still on"
            assert not failure, failure
            batch = range(published + 1, published + 51)
            for n in batch:
                publisher.send({"type": "publish", "topic": topic, "request_id": str(n),
                                "message": {"payload": {"n": n, "pad": pad}}})
            for n in batch:
                assert publisher.expect("ack", timeout=10)["request_id"] == str(n)
            published = batch[-1]
    target["last"] = published
    assert done.wait(60), "the fast subscriber fell behind"
    reader.join(5)
    assert not failure, failure
    assert received == list(range(1, published + 1)), "the fast subscriber missed messages"
    fast.close()

    # The slow one: whatever was queued, then SLOW_CONSUMER, then a close (policy violation).
    code, frames = ws_expect_close(slow, timeout=15)
    texts = [json.loads(p) for op, p in frames if op == 0x1]
    errors = [m for m in texts if m["type"] == "error"]
    assert errors, "no SLOW_CONSUMER error before the close"
    assert errors[-1]["error"]["code"] == "SLOW_CONSUMER", errors[-1]
    assert texts[-1] is errors[-1], "the error is the last message before the close"
    assert code == 1008, f"close code {code}"
    slow.close()


def test_sigterm_closes_websockets_with_going_away(start_broker):
    broker = start_broker()
    topic = unique("fiber.term")
    fiber = broker.fiber()
    fastapi = broker.fastapi()
    fiber_subscribe(fiber, topic)
    fastapi.send({"type": "subscribe", "topic": topic})
    fastapi.expect("ack")

    broker.signal()
    for client in (fiber, fastapi):
        code, _ = client.expect_closed(timeout=10)
        assert code == 1001, f"close code {code}"
    assert broker.wait() == 0, broker.stderr_text()
