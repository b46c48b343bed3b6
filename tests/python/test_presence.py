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


def test_a_topic_created_with_presence_announces_joins_and_leaves(broker):
    topic = unique("presence.room")
    created = http(broker, "POST", "/v1/topics",
                   body=json.dumps({"name": topic, "presence": True}).encode(),
                   headers={"Content-Type": "application/json"})
    assert created.status == 201, created
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
