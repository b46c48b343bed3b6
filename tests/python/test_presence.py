"""Presence over HTTP and WebSocket: `GET /v1/topics/{name}/subscribers` lists who receives a
topic (connection, client name, protocol, shard), 404 for a topic that does not exist; a topic
created over REST with `"presence": true` announces joins and leaves on
`$sys.presence.<topic>`, which a WebSocket client reads as JSON.
"""

import json

from corebus_testing import fastapi_subscribe, fiber_subscribe, http, native_publish, unique


def subscribers(broker, topic):
    return http(broker, "GET", f"/v1/topics/{topic}/subscribers")


def test_subscribers_of_a_topic_are_listed_with_their_protocol_and_shard(broker):
    topic = unique("presence.rest")
    native_publish(broker, topic, b"made")
    with broker.fiber() as ws, broker.fastapi() as other:
        fiber_subscribe(ws, topic, client_id="fiber-client")
        fastapi_subscribe(other, topic)
        response = subscribers(broker, topic)
        assert response.status == 200, response
        body = response.json()
        assert body["topic"] == topic and body["partial"] is False, body
        listed = body["subscribers"]
        assert len(listed) == 2, listed
        names = sorted(entry["client_name"] for entry in listed)
        assert names == sorted(["fiber-client", other.client_id]), listed
        for entry in listed:
            assert entry["protocol"] == "websocket", entry
            assert entry["subject"] == topic, entry
            assert entry["shard"] in (0, 1), entry
            assert "." in entry["connection"] and entry["peer"].startswith("127.0.0.1:"), entry

    missing = subscribers(broker, unique("presence.nobody"))
    assert missing.status == 404, missing
    assert missing.json() == {"error": "topic not found"}
    assert subscribers(broker, "presence.*").status == 404
    assert http(broker, "POST", f"/v1/topics/{topic}/subscribers").status == 405


def create_presence_topic(broker, topic):
    created = http(broker, "POST", "/v1/topics",
                   body=json.dumps({"name": topic, "presence": True}).encode(),
                   headers={"Content-Type": "application/json"})
    assert created.status == 201, created


def test_a_topic_created_with_presence_announces_joins_and_leaves(broker):
    topic = unique("presence.room")
    create_presence_topic(broker, topic)
    with broker.fiber() as watcher:
        fiber_subscribe(watcher, f"$sys.presence.{topic}")
        with broker.fiber() as member:
            fiber_subscribe(member, topic)
            join = watcher.expect("event")
            assert join["topic"] == f"$sys.presence.{topic}", join
            event = join["message"]["payload"]
            assert event["event"] == "join" and event["topic"] == topic, event
            assert event["protocol"] == "websocket", event
        leave = watcher.expect("event")["message"]["payload"]
        assert leave["event"] == "leave" and leave["connection"] == event["connection"], leave


def test_client_names_are_bounded_so_presence_events_fit_the_message_limit(broker):
    """Regression (audit): a Fiber `client_id` of 1,048,490 bytes made a join event above the
    1 MiB message limit, and a watcher with default `websockets` settings was closed with 1009.
    Client names are at most 255 bytes in every protocol; a longer one is a BAD_REQUEST (Redis:
    `-ERR`) and never reaches an event."""
    import redis

    topic = unique("presence.long")
    create_presence_topic(broker, topic)
    with broker.fiber() as watcher:
        fiber_subscribe(watcher, f"$sys.presence.{topic}")
        with broker.fiber() as member:
            member.send({"type": "subscribe", "topic": topic, "client_id": "c" * 1_048_490,
                         "request_id": "too-long"})
            error = member.expect("error")
            assert error["request_id"] == "too-long", error
            assert error["error"]["code"] == "BAD_REQUEST", error
            assert "at most 255" in error["error"]["message"], error
            watcher.expect_silence()
            # The longest allowed name joins, and the event names it.
            fiber_subscribe(member, topic, client_id="c" * 255)
            join = watcher.expect("event")["message"]["payload"]
            assert join["event"] == "join" and join["client_name"] == "c" * 255, join
        assert watcher.expect("event")["message"]["payload"]["event"] == "leave"

    host, port = broker.resp
    client = redis.Redis(host=host, port=port, socket_timeout=5, socket_connect_timeout=5)
    try:
        client.client_setname("n" * 256)
        raise AssertionError("a 256-byte CLIENT SETNAME was accepted")
    except redis.exceptions.ResponseError as error:
        assert "at most 255 bytes" in str(error), error
    assert client.client_setname("n" * 255) is True
    assert client.client_getname() in ("n" * 255, b"n" * 255)
    client.close()
