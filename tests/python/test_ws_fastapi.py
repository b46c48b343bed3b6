"""The FastAPI WebSocket dialect on `GET /ws`, spoken by a real client (`websockets`).

Shapes are those of `src/protocol/ws_fastapi.rs`: `info` on connect, `ack {request_type,
topic, message}`, `event {topic, data, message_id}`, `error {code, message, details}`,
`pong`.
"""

import json
import time

import pytest

from corebus_testing import (
    DERIVED_ID,
    fastapi_publish,
    fastapi_subscribe,
    unique,
)


def assert_error(message, code, details=...):
    assert set(message) == {"type", "code", "message", "details"}, message
    assert message["type"] == "error" and message["code"] == code, message
    assert isinstance(message["message"], str) and message["message"], message
    if details is not ...:
        assert message["details"] == details, message


def assert_still_open(ws):
    ws.send({"type": "ping"})
    assert ws.recv() == {"type": "pong"}


def test_info_on_connect_names_a_client_id(broker):
    with broker.fastapi() as first, broker.fastapi() as second:
        for client in (first, second):
            assert set(client.info) == {"type", "message"}, client.info
            assert client.client_id, client.info
        assert first.client_id != second.client_id


def test_subscribe_publish_unsubscribe_are_acked(broker):
    topic = unique("fastapi.acks")
    with broker.fastapi() as subscriber, broker.fastapi() as publisher:
        fastapi_subscribe(subscriber, topic)
        fastapi_publish(publisher, topic, {"hello": "world"})
        event = subscriber.expect("event")
        assert set(event) == {"type", "topic", "data", "message_id"}, event
        assert (event["topic"], event["data"]) == (topic, {"hello": "world"})
        assert DERIVED_ID.match(event["message_id"]), event

        subscriber.send({"type": "unsubscribe", "topic": topic})
        assert subscriber.recv() == {
            "type": "ack",
            "request_type": "unsubscribe",
            "topic": topic,
            "message": f"Unsubscribed from {topic}",
        }
        fastapi_publish(publisher, topic, "after")
        subscriber.expect_silence()
        publisher.expect_silence()


@pytest.mark.parametrize(
    "data",
    [{"a": [1, {"b": None}]}, [1, 2.5, "x"], "text \u00e9", 0, -7.25, None, False, {}, []],
    ids=lambda d: json.dumps(d)[:20],
)
def test_event_data_round_trips(broker, data):
    topic = unique("fastapi.data")
    with broker.fastapi() as subscriber, broker.fastapi() as publisher:
        fastapi_subscribe(subscriber, topic)
        fastapi_publish(publisher, topic, data)
        event = subscriber.expect("event")
        assert event["data"] == data and type(event["data"]) is type(data), event


def test_message_ids_are_distinct_and_stable_in_replay(broker):
    topic = unique("fastapi.ids")
    with broker.fastapi() as live, broker.fastapi() as publisher:
        fastapi_subscribe(live, topic)
        for n in range(3):
            fastapi_publish(publisher, topic, n)
        ids = [e["message_id"] for e in live.collect(3)]
        assert len(set(ids)) == 3
        with broker.fastapi() as late:
            late.send({"type": "subscribe", "topic": topic, "last_n": 3})
            replayed = [m for m in late.collect(4) if m["type"] == "event"]
            assert [e["message_id"] for e in replayed] == ids
            assert [e["data"] for e in replayed] == [0, 1, 2]


def test_ping_pong(broker):
    with broker.fastapi() as ws:
        ws.send({"type": "ping"})
        assert ws.recv() == {"type": "pong"}


ERRORS = [
    ("{nope", "INVALID_JSON", None),
    ("", "INVALID_JSON", None),
    ("[1, 2]", "INVALID_MESSAGE", None),
    ('"ping"', "INVALID_MESSAGE", None),
    ('{"topic":"a.b"}', "INVALID_MESSAGE", None),
    ('{"type":5}', "INVALID_MESSAGE", None),
    ('{"type":"ping","type":"ping"}', "INVALID_MESSAGE", None),
    ('{"type":"jump"}', "UNKNOWN_MESSAGE_TYPE", {"type": "jump"}),
    ('{"type":"Subscribe","topic":"a"}', "UNKNOWN_MESSAGE_TYPE", {"type": "Subscribe"}),
    ('{"type":"subscribe"}', "VALIDATION_ERROR", {"field": "topic"}),
    ('{"type":"subscribe","topic":7}', "VALIDATION_ERROR", {"field": "topic"}),
    ('{"type":"subscribe","topic":"a..b"}', "VALIDATION_ERROR", {"field": "topic"}),
    ('{"type":"subscribe","topic":"ok.t","last_n":-1}', "VALIDATION_ERROR", {"field": "last_n"}),
    ('{"type":"subscribe","topic":"ok.t","last_n":"5"}', "VALIDATION_ERROR", {"field": "last_n"}),
    ('{"type":"unsubscribe"}', "VALIDATION_ERROR", {"field": "topic"}),
    ('{"type":"publish","topic":"ok.t"}', "VALIDATION_ERROR", {"field": "data"}),
    ('{"type":"publish","data":1}', "VALIDATION_ERROR", {"field": "topic"}),
    ('{"type":"publish","topic":"a.*","data":1}', "VALIDATION_ERROR", {"field": "topic"}),
    ('{"type":"publish","topic":"$sys.x","data":1}', "VALIDATION_ERROR", {"field": "topic"}),
]


@pytest.mark.parametrize("text, code, details", ERRORS, ids=[t[:40] or "empty" for t, _, _ in ERRORS])
def test_each_malformed_message_gets_its_error_and_the_connection_stays(broker, text, code, details):
    with broker.fastapi() as ws:
        ws.send_text(text)
        error = ws.recv()
        if code == "INVALID_JSON":
            assert_error(error, code)
            assert set(error["details"]) == {"error"} and isinstance(error["details"]["error"], str)
        else:
            assert_error(error, code, details)
        assert_still_open(ws)


def test_binary_frame_is_invalid_json(broker):
    with broker.fastapi() as ws:
        ws.ws.send(b'{"type":"ping"}')
        error = ws.recv()
        assert_error(error, "INVALID_JSON")
        assert set(error["details"]) == {"error"}, error
        assert_still_open(ws)


def test_not_subscribed(broker):
    topic = unique("fastapi.notsub")
    with broker.fastapi() as ws:
        ws.send({"type": "unsubscribe", "topic": topic})
        assert_error(ws.recv(), "NOT_SUBSCRIBED", {"topic": topic})
        assert_still_open(ws)
        # Subscribed then unsubscribed twice: the second is NOT_SUBSCRIBED too.
        fastapi_subscribe(ws, topic)
        ws.send({"type": "unsubscribe", "topic": topic})
        assert ws.expect("ack")["request_type"] == "unsubscribe"
        ws.send({"type": "unsubscribe", "topic": topic})
        assert_error(ws.recv(), "NOT_SUBSCRIBED", {"topic": topic})


def test_topic_not_found_when_auto_create_is_off(start_broker):
    broker = start_broker("--auto-create-topics", "false")
    topic = unique("fastapi.absent")
    with broker.fastapi() as ws:
        ws.send({"type": "subscribe", "topic": topic})
        assert_error(ws.recv(), "TOPIC_NOT_FOUND", {"topic": topic})
        ws.send({"type": "publish", "topic": topic, "data": 1})
        assert_error(ws.recv(), "TOPIC_NOT_FOUND", {"topic": topic})
        assert_still_open(ws)


def test_payload_over_the_limit_is_a_validation_error(start_broker):
    broker = start_broker("--message-bytes-max", "1024")
    topic = unique("fastapi.big")
    with broker.fastapi() as ws:
        ws.send({"type": "publish", "topic": topic, "data": "x" * 1023})  # 1025 bytes stored
        assert_error(ws.recv(), "VALIDATION_ERROR")
        assert_still_open(ws)
        fastapi_publish(ws, topic, "x" * 1022)  # 1024 bytes: at the limit


def test_rate_limited_with_retry_after_seconds(start_broker):
    broker = start_broker("--publish-rate", "10")
    topic = unique("fastapi.rate")
    attempts = 100
    with broker.fastapi() as subscriber, broker.fastapi() as publisher:
        fastapi_subscribe(subscriber, topic)
        for n in range(attempts):
            publisher.send({"type": "publish", "topic": topic, "data": n})
        acked, hints = 0, []
        for _ in range(attempts):
            reply = publisher.recv()
            if reply["type"] == "ack":
                assert reply["request_type"] == "publish", reply
                acked += 1
                continue
            assert_error(reply, "RATE_LIMITED")
            assert set(reply["details"]) == {"retry_after_seconds"}, reply
            hint = reply["details"]["retry_after_seconds"]
            assert isinstance(hint, (int, float)) and 0 < hint <= 60, reply
            hints.append(hint)
        assert acked and hints, (acked, hints)
        assert len(subscriber.collect(acked)) == acked
        subscriber.expect_silence()
        assert_still_open(publisher)
        time.sleep(max(hints) + 0.3)
        fastapi_publish(publisher, topic, "later")
        assert subscriber.expect("event")["data"] == "later"


def test_last_n_replays_in_order_and_is_capped_at_1000(broker):
    topic = unique("fastapi.lastn")
    total = 1005
    with broker.fastapi() as publisher:
        for first in range(1, total + 1, 100):
            batch = range(first, min(first + 100, total + 1))
            for n in batch:
                publisher.send({"type": "publish", "topic": topic, "data": n})
            for _ in batch:
                assert publisher.expect("ack")["request_type"] == "publish"

    with broker.fastapi() as few:
        few.send({"type": "subscribe", "topic": topic, "last_n": 3})
        messages = few.collect(4)
        assert sum(m["type"] == "ack" for m in messages) == 1, messages
        assert [m["data"] for m in messages if m["type"] == "event"] == [1003, 1004, 1005]
        few.expect_silence()

    with broker.fastapi() as many:
        many.send({"type": "subscribe", "topic": topic, "last_n": 5000})
        messages = many.collect(1001, timeout=10)
        assert sum(m["type"] == "ack" for m in messages) == 1
        data = [m["data"] for m in messages if m["type"] == "event"]
        assert data == list(range(total - 999, total + 1)), "not the last 1000, in order"
        many.expect_silence()
        # Live messages follow the replay.
        with broker.fastapi() as publisher:
            fastapi_publish(publisher, topic, "live")
        assert many.expect("event")["data"] == "live"
