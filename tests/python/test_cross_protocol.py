"""Messages crossing protocols: the two WebSocket dialects, the native protocol (through the
`corebus pub` / `corebus sub` CLI, and a minimal native publisher for bytes the CLI cannot
take), all on one broker.

The payload mapping (`src/protocol/payload.rs`): a payload published as JSON (WebSocket)
reaches WebSocket clients as that JSON value and native clients as its compact JSON text; a
native payload (no content type) reaches WebSocket clients as a string when it is UTF-8 (even
if it looks like JSON) and as `{"$base64": ...}` otherwise.
"""

import base64
import re

import pytest

from corebus_testing import (
    DERIVED_ID,
    CliChild,
    fastapi_publish,
    fastapi_subscribe,
    fiber_publish,
    fiber_subscribe,
    native_publish,
    run_cli,
    unique,
)


def test_fiber_publisher_to_fastapi_subscriber(broker):
    topic = unique("cross.f2p")
    payload = {"order": 9, "lines": [{"sku": "s", "qty": 1.5}], "gift": None}
    with broker.fastapi() as subscriber, broker.fiber() as publisher:
        fastapi_subscribe(subscriber, topic)
        fiber_publish(publisher, topic, payload, message_id="order-9")
        event = subscriber.expect("event")
        assert event == {"type": "event", "topic": topic, "data": payload, "message_id": "order-9"}


def test_fastapi_publisher_to_fiber_subscriber(broker):
    topic = unique("cross.p2f")
    with broker.fiber() as subscriber, broker.fastapi() as publisher:
        fiber_subscribe(subscriber, topic, seq=True)
        fastapi_publish(publisher, topic, ["a", 1, None, {"k": True}])
        event = subscriber.expect("event")
        assert event["message"]["payload"] == ["a", 1, None, {"k": True}]
        match = DERIVED_ID.match(event["message"]["id"])
        assert match and int(match.group(1)) == event["seq"] == 1, event


def test_both_dialects_subscribed_see_the_same_messages(broker):
    topic = unique("cross.both")
    with broker.fiber() as fiber, broker.fastapi() as fastapi, broker.fiber() as publisher:
        fiber_subscribe(fiber, topic)
        fastapi_subscribe(fastapi, topic)
        for n in range(5):
            fiber_publish(publisher, topic, {"n": n})
        fiber_events = fiber.collect(5)
        fastapi_events = fastapi.collect(5)
        assert [e["message"]["payload"] for e in fiber_events] == [{"n": n} for n in range(5)]
        assert [e["data"] for e in fastapi_events] == [{"n": n} for n in range(5)]
        assert [e["message"]["id"] for e in fiber_events] == [
            e["message_id"] for e in fastapi_events
        ]


@pytest.mark.parametrize(
    "text",
    ["hello world", '{"looks": "like json"}', "42", "caf\u00e9 \u4e2d"],
    ids=["plain", "json-looking", "number-looking", "unicode"],
)
def test_cli_publisher_reaches_websockets_as_a_string(broker, corebus_bin, text):
    topic = unique("cross.cli")
    with broker.fiber() as fiber, broker.fastapi() as fastapi:
        fiber_subscribe(fiber, topic)
        fastapi_subscribe(fastapi, topic)
        result = run_cli(corebus_bin, "pub", "--addr", broker.native_addr(), topic, text)
        assert result.returncode == 0, result.stderr.decode()
        # `pub` prints the sequence number the broker gave the message.
        assert re.fullmatch(rf"published {re.escape(topic)} seq=\d+", result.stdout.decode().strip())
        fiber_event = fiber.expect("event")
        assert fiber_event["message"]["payload"] == text, fiber_event
        assert DERIVED_ID.match(fiber_event["message"]["id"]), fiber_event
        fastapi_event = fastapi.expect("event")
        assert fastapi_event["data"] == text, fastapi_event
        assert fastapi_event["message_id"] == fiber_event["message"]["id"]


@pytest.mark.parametrize(
    "payload",
    [b"\xff\x00\xfe binary", b"\x80", bytes(range(256))],
    ids=["mixed", "lone-continuation", "all-bytes"],
)
def test_native_non_utf8_payload_reaches_websockets_as_base64(broker, payload):
    topic = unique("cross.bin")
    expected = {"$base64": base64.b64encode(payload).decode()}
    with broker.fiber() as fiber, broker.fastapi() as fastapi:
        fiber_subscribe(fiber, topic)
        fastapi_subscribe(fastapi, topic)
        native_publish(broker, topic, payload)
        assert fiber.expect("event")["message"]["payload"] == expected
        assert fastapi.expect("event")["data"] == expected


def test_native_empty_payload_is_an_empty_string(broker):
    topic = unique("cross.empty")
    with broker.fiber() as fiber:
        fiber_subscribe(fiber, topic)
        native_publish(broker, topic, b"")
        assert fiber.expect("event")["message"]["payload"] == ""


def test_websocket_publishers_to_cli_subscriber(broker, corebus_bin):
    topic = unique("cross.sub")
    sub = CliChild(corebus_bin, "sub", "--addr", broker.native_addr(), topic, "--count", "5")
    try:
        sub.await_stderr(f"subscribed to {topic}")
        with broker.fiber() as fiber, broker.fastapi() as fastapi:
            fiber_publish(fiber, topic, {"x": 1, "y": [True, None]})
            fiber_publish(fiber, topic, "hi")
            fastapi_publish(fastapi, topic, [1, 2, 3])
            fastapi_publish(fastapi, topic, None)
            fiber_publish(fiber, topic, 2.5)
        lines = [sub.stdout_line() for _ in range(5)]
        # Native subscribers get the stored bytes: the compact JSON text.
        assert lines == [
            f'{topic} seq=1 {{"x":1,"y":[true,null]}}',
            f'{topic} seq=2 "hi"',
            f"{topic} seq=3 [1,2,3]",
            f"{topic} seq=4 null",
            f"{topic} seq=5 2.5",
        ]
        assert sub.wait() == 0, sub.stderr.text()
    finally:
        sub.kill()


def test_cli_pattern_subscriber_gets_websocket_publishes(broker, corebus_bin):
    base = unique("cross.pat")
    sub = CliChild(corebus_bin, "sub", "--addr", broker.native_addr(), f"{base}.>", "--count", "2")
    try:
        sub.await_stderr(f"subscribed to {base}.>")
        with broker.fiber() as fiber:
            fiber_publish(fiber, f"{base}.a", "one")
            fiber_publish(fiber, f"{base}.b.c", "two")
        assert [sub.stdout_line(), sub.stdout_line()] == [
            f'{base}.a seq=1 "one"',
            f'{base}.b.c seq=1 "two"',
        ]
        assert sub.wait() == 0, sub.stderr.text()
    finally:
        sub.kill()
