"""The HTTP port's REST endpoints in both flavours, and its behaviour on malformed HTTP and
WebSocket input, over raw sockets (so every status, header and close is seen as sent).

- `/v1/...` imitates the Go/Fiber service: errors are `{"error": "..."}`, POST /v1/topics is
  201 then 409, DELETE /v1/topics/{name} is 200 then 404.
- Unprefixed paths imitate the FastAPI service: errors are `{"detail": "..."}`, POST /topics
  is idempotent (201 `{"name","created"}`), DELETE /topics/{name} is 204.
- A request the parser refuses is answered (body with both keys) and the connection closed;
  a broken WebSocket frame gets a close frame with the RFC 6455 code. In every case a second
  client is served at once: one bad client never stalls the broker.
"""

import json
import time

import pytest

from corebus_testing import (
    QUIET,
    WAIT,
    RawHttp,
    assert_broker_serves,
    fastapi_publish,
    fastapi_subscribe,
    fiber_publish,
    fiber_subscribe,
    http,
    unique,
    ws_expect_close,
    ws_frame,
    ws_handshake,
    ws_read_frame,
)


def eventually(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def assert_nothing_more(connection):
    """Nothing more arrives for a while, and the connection stays open."""
    assert not connection.closed_by_peer(timeout=QUIET), "the broker closed the connection"
    assert connection.buffer == b"", connection.buffer[:200]
    connection.sock.settimeout(WAIT)


def give_back(broker, topic):
    """Deletes a topic a test made: the module's one broker lets clients make at most
    --created-topics-max (100) topics, a share of it on each shard."""
    deleted = http(broker, "DELETE", f"/v1/topics/{topic}")
    assert deleted.status == 200, deleted


def fiber_error(response, status):
    assert response.status == status, response
    assert response.header("content-type") == "application/json", response
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], body
    return body


def fastapi_error(response, status):
    assert response.status == status, response
    assert response.header("content-type") == "application/json", response
    body = response.json()
    assert set(body) == {"detail"} and isinstance(body["detail"], str) and body["detail"], body
    return body


# ------------------------------------------------------------------------------------------
# Go/Fiber flavour: /v1/...


def test_v1_create_topic_201_then_409(broker):
    topic = unique("rest.v1create")
    created = http(broker, "POST", "/v1/topics", {"name": topic})
    assert created.status == 201, created
    assert created.header("content-type") == "application/json"
    assert isinstance(created.json(), dict)
    fiber_error(http(broker, "POST", "/v1/topics", {"name": topic}), 409)


@pytest.mark.parametrize(
    "body",
    [b"{", b"[]", b"{}", b'{"name": null}', b'{"name": 5}', b'{"name": ""}', b'{"name": "a..b"}',
     b'{"name": "a.*"}', b'{"name": "a.>"}', b'{"name": "$sys.x"}', b'{"name": "sp ace"}'],
)
def test_v1_create_topic_bad_body_is_400(broker, body):
    fiber_error(
        http(broker, "POST", "/v1/topics", body, headers={"Content-Type": "application/json"}), 400
    )


def test_v1_list_topics_counts_subscribers(broker):
    topic = unique("rest.v1list")
    assert http(broker, "POST", "/v1/topics", {"name": topic}).status == 201

    def entry():
        response = http(broker, "GET", "/v1/topics")
        assert response.status == 200, response
        body = response.json()
        assert set(body) == {"topics"} and isinstance(body["topics"], list), body
        for item in body["topics"]:
            assert set(item) == {"name", "subscribers"}, item
        return next((item for item in body["topics"] if item["name"] == topic), None)

    assert entry() == {"name": topic, "subscribers": 0}
    with broker.fiber() as first, broker.fastapi() as second:
        fiber_subscribe(first, topic)
        fastapi_subscribe(second, topic)
        assert eventually(lambda: entry() == {"name": topic, "subscribers": 2}), entry()
    assert eventually(lambda: entry() == {"name": topic, "subscribers": 0}), entry()


def test_v1_delete_topic_200_then_404_and_subscribers_are_told(broker):
    topic = unique("rest.v1delete")
    assert http(broker, "POST", "/v1/topics", {"name": topic}).status == 201
    with broker.fiber() as fiber, broker.fastapi() as fastapi, broker.fiber() as publisher:
        fiber_subscribe(fiber, topic)
        fastapi_subscribe(fastapi, topic)
        fiber_publish(publisher, topic, "before")
        assert fiber.expect("event")["message"]["payload"] == "before"
        assert fastapi.expect("event")["data"] == "before"

        deleted = http(broker, "DELETE", f"/v1/topics/{topic}")
        assert deleted.status == 200, deleted
        # Each subscriber is told its subscription ended (an error message in its dialect),
        # and its connection stays open.
        told = fiber.expect("error")
        assert isinstance(told["error"]["code"], str) and told["error"]["message"], told
        told = fastapi.expect("error")
        assert isinstance(told["code"], str) and told["message"], told
        fiber.send({"type": "ping", "request_id": "after"})
        assert fiber.expect("pong")["request_id"] == "after"

        fiber_error(http(broker, "DELETE", f"/v1/topics/{topic}"), 404)
        listed = http(broker, "GET", "/v1/topics").json()["topics"]
        assert topic not in [item["name"] for item in listed]

        # The ended subscriptions get nothing from the topic's next incarnation.
        fiber_publish(publisher, topic, "after")
        fiber.expect_silence()
        fastapi.expect_silence()


def test_v1_delete_takes_a_percent_encoded_name(broker):
    topic = unique("rest.v1pct")
    assert http(broker, "POST", "/v1/topics", {"name": topic}).status == 201
    encoded = topic.replace(".", "%2E")
    assert http(broker, "DELETE", f"/v1/topics/{encoded}").status == 200
    fiber_error(http(broker, "DELETE", f"/v1/topics/{encoded}"), 404)
    fiber_error(http(broker, "DELETE", "/v1/topics/bad%zz"), 400)


def test_v1_health(broker):
    response = http(broker, "GET", "/v1/health")
    assert response.status == 200, response
    body = response.json()
    assert set(body) == {"uptime_seconds", "topics", "subscribers"}, body
    for key in body:
        assert isinstance(body[key], (int, float)) and body[key] >= 0, body


def test_v1_stats(broker):
    topic = unique("rest.v1stats")
    with broker.fiber() as ws:
        fiber_publish(ws, topic, 1)
    response = http(broker, "GET", "/v1/stats")
    assert response.status == 200, response
    assert isinstance(response.json(), dict), response


# ------------------------------------------------------------------------------------------
# FastAPI flavour: unprefixed


def test_create_topic_is_idempotent(broker):
    topic = unique("rest.create")
    first = http(broker, "POST", "/topics", {"name": topic})
    assert first.status == 201, first
    assert first.json() == {"name": topic, "created": True}
    again = http(broker, "POST", "/topics", {"name": topic})
    assert again.status == 201, again
    assert again.json() == {"name": topic, "created": False}


@pytest.mark.parametrize(
    "body, status",
    [(b"{", 422), (b"[]", 422), (b"{}", 422), (b'{"name": 5}', 422),
     (b'{"name": "a..b"}', 400), (b'{"name": "a.*"}', 400), (b'{"name": "$sys.x"}', 400)],
)
def test_create_topic_bad_body(broker, body, status):
    fastapi_error(
        http(broker, "POST", "/topics", body, headers={"Content-Type": "application/json"}), status
    )


def test_list_and_delete_topics(broker):
    topic = unique("rest.list")
    assert http(broker, "POST", "/topics", {"name": topic}).status == 201
    listed = http(broker, "GET", "/topics")
    assert listed.status == 200, listed
    names = listed.json()
    assert isinstance(names, list) and all(isinstance(n, str) for n in names), names
    assert topic in names

    deleted = http(broker, "DELETE", f"/topics/{topic}")
    assert deleted.status == 204, deleted
    assert deleted.body == b"" and deleted.header("content-length") in (None, "0"), deleted
    assert topic not in http(broker, "GET", "/topics").json()


def test_health(broker):
    response = http(broker, "GET", "/health")
    assert response.status == 200, response
    body = response.json()
    assert set(body) == {"status", "uptime_seconds", "topic_count", "active_subscriber_count"}
    assert body["status"] == "healthy"
    for key in ("uptime_seconds", "topic_count", "active_subscriber_count"):
        assert isinstance(body[key], (int, float)) and body[key] >= 0, body


def test_stats_counts_messages_and_subscribers(broker):
    topic = unique("rest.stats")
    with broker.fastapi() as subscriber, broker.fastapi() as publisher:
        fastapi_subscribe(subscriber, topic)
        for n in range(3):
            fastapi_publish(publisher, topic, n)
        subscriber.collect(3)

        def entry():
            response = http(broker, "GET", "/stats")
            assert response.status == 200, response
            body = response.json()
            assert set(body) == {"topics"} and isinstance(body["topics"], dict), body
            return body["topics"].get(topic)

        want = {"message_count": 3, "subscriber_count": 1}
        assert eventually(lambda: entry() == want), entry()


def test_metrics_and_dashboard(broker):
    metrics = http(broker, "GET", "/metrics")
    assert metrics.status == 200, metrics
    assert metrics.header("content-type") == "text/plain; version=0.0.4; charset=utf-8"
    assert metrics.body.decode("utf-8")
    dashboard = http(broker, "GET", "/")
    assert dashboard.status == 200, dashboard
    assert dashboard.header("content-type") == "text/html; charset=utf-8"


# ------------------------------------------------------------------------------------------
# Routing errors


@pytest.mark.parametrize(
    "path", ["/nope", "/topics/", "/topics/a/b", "/health/", "/v1", "/v1/nope", "/v1/topics/",
             "/v1/topics/a/b", "/v1/health/", "/V1/health"],
)
def test_unknown_path_is_404_in_the_paths_dialect(broker, path):
    response = http(broker, "GET", path)
    if path == "/v1" or path.startswith("/v1/"):
        assert fiber_error(response, 404) == {"error": "Not Found"}
    else:
        assert fastapi_error(response, 404) == {"detail": "Not Found"}


@pytest.mark.parametrize(
    "method, path, allow",
    [("PUT", "/v1/topics", "GET, HEAD, POST"), ("DELETE", "/v1/topics", "GET, HEAD, POST"),
     ("POST", "/v1/health", "GET, HEAD"), ("DELETE", "/v1/stats", "GET, HEAD"),
     ("GET", "/v1/topics/some.topic", "DELETE"), ("POST", "/v1/ws", "GET"),
     ("PATCH", "/topics", "GET, HEAD, POST"), ("POST", "/health", "GET, HEAD"),
     ("PUT", "/stats", "GET, HEAD"), ("GET", "/topics/some.topic", "DELETE"),
     ("POST", "/ws", "GET"), ("POST", "/metrics", "GET, HEAD"), ("DELETE", "/", "GET, HEAD"),
     ("POST", "/v1/topics/some.topic/subscribers", "GET, HEAD")],
)
def test_wrong_method_is_405_with_allow(broker, method, path, allow):
    response = http(broker, method, path, body=b"" if method in ("POST", "PUT", "PATCH") else None)
    assert response.header("allow") == allow, response
    if path == "/v1" or path.startswith("/v1/"):
        fiber_error(response, 405)
    else:
        fastapi_error(response, 405)


# ------------------------------------------------------------------------------------------
# HEAD: wherever GET reads something, the same status and headers without the body


READABLE_PATHS = ["/", "/metrics", "/v1/health", "/health", "/v1/topics", "/topics",
                  "/v1/stats", "/stats"]


@pytest.mark.parametrize("path", READABLE_PATHS)
def test_head_answers_as_get_does_without_the_body(broker, path):
    with RawHttp(broker.http) as connection:
        get = connection.request("GET", path)
        head = connection.request("HEAD", path)
        assert head.status == get.status == 200, (get, head)
        assert set(head.headers) == set(get.headers), (get, head)
        for name, value in get.headers.items():
            # Stats and metrics may change between the two requests; the unit tests pin the
            # length of one answer against its GET byte for byte.
            if name != "content-length":
                assert head.header(name) == value, (get, head)
        assert int(head.header("content-length")) > 0, head
        if path == "/":
            assert head.header("content-length") == str(len(get.body)), (get, head)
        # No body followed the head: nothing more comes, and the next answer parses.
        assert_nothing_more(connection)
        assert connection.request("GET", "/v1/health").status == 200


def test_a_pipelined_head_leaves_the_next_answer_intact(broker):
    with RawHttp(broker.http) as connection:
        connection.send(
            b"HEAD /v1/health HTTP/1.1\r\nHost: h\r\n\r\nGET /v1/health HTTP/1.1\r\nHost: h\r\n\r\n"
        )
        head = connection.read_response(head_only=True)
        assert head.status == 200 and int(head.header("content-length")) > 0, head
        get = connection.read_response()
        assert set(get.json()) == {"uptime_seconds", "topics", "subscribers"}, get
        assert_nothing_more(connection)


def test_head_refusals_have_no_body_either(broker):
    topic = unique("rest.head")
    assert http(broker, "POST", "/v1/topics", {"name": topic}).status == 201
    with RawHttp(broker.http) as connection:
        present = connection.request("HEAD", f"/v1/topics/{topic}/subscribers")
        assert present.status == 200, present
        absent = connection.request("HEAD", f"/v1/topics/{unique('rest.head')}/subscribers")
        assert absent.status == 404 and int(absent.header("content-length")) > 0, absent
        unknown = connection.request("HEAD", "/v1/nope")
        assert unknown.status == 404 and int(unknown.header("content-length")) > 0, unknown
        delete_only = connection.request("HEAD", "/v1/topics/some.topic")
        assert delete_only.status == 405 and delete_only.header("allow") == "DELETE", delete_only
        assert_nothing_more(connection)
        assert connection.request("GET", "/health").status == 200
    give_back(broker, topic)


@pytest.mark.parametrize("path", ["/v1/ws", "/ws"])
def test_head_on_a_websocket_path_is_no_upgrade(broker, path):
    with RawHttp(broker.http) as connection:
        connection.send(upgrade_request(path).replace(b"GET ", b"HEAD ", 1))
        response = connection.read_response(head_only=True)
        assert response.status == 405 and response.header("allow") == "GET", response
        assert "sec-websocket-accept" not in response.headers, response
        assert_nothing_more(connection)
        # Still plain HTTP on this connection.
        assert connection.request("GET", "/health").status == 200


# ------------------------------------------------------------------------------------------
# Expect: 100-continue


def expecting_head(path, body, version="HTTP/1.1", expect="Expect: 100-continue"):
    return (
        f"POST {path} {version}\r\nHost: h\r\nContent-Type: application/json\r\n{expect}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()


def read_continue(connection):
    go_ahead = connection.read_response(head_only=True)
    assert (go_ahead.status, go_ahead.reason, go_ahead.headers) == (100, "Continue", {}), go_ahead


@pytest.mark.parametrize("expect", ["Expect: 100-continue", "expect: 100-Continue"])
def test_a_client_that_expects_100_continue_gets_it_once_per_request(broker, expect):
    topic = unique("rest.expect")
    body = json.dumps({"name": topic}).encode()
    with RawHttp(broker.http) as connection:
        # Only the head, as curl sends it: the client waits for the go-ahead.
        connection.send(expecting_head("/v1/topics", body, expect=expect))
        read_continue(connection)
        # A body in two parts gets one go-ahead.
        connection.send(body[:5])
        assert_nothing_more(connection)
        connection.send(body[5:])
        assert connection.read_response().status == 201
        # The next request on the connection gets its own.
        connection.send(expecting_head("/topics", body, expect=expect))
        read_continue(connection)
        connection.send(body)
        assert connection.read_response().json() == {"name": topic, "created": False}
        assert_nothing_more(connection)
    give_back(broker, topic)


def test_expect_with_the_body_already_sent_gets_the_final_answer_alone(broker):
    topic = unique("rest.expect")
    body = json.dumps({"name": topic}).encode()
    with RawHttp(broker.http) as connection:
        connection.send(expecting_head("/v1/topics", body) + body)
        assert connection.read_response().status == 201
        assert_nothing_more(connection)
    give_back(broker, topic)


def test_expect_from_an_http_1_0_client_is_ignored(broker):
    topic = unique("rest.expect")
    body = json.dumps({"name": topic}).encode()
    with RawHttp(broker.http) as connection:
        connection.send(expecting_head("/v1/topics", body, version="HTTP/1.0"))
        assert_nothing_more(connection)
        connection.send(body)
        created = connection.read_response()
        assert created.status == 201 and created.header("connection") == "close", created
        assert connection.closed_by_peer()
    give_back(broker, topic)


@pytest.mark.parametrize(
    "head, status",
    [
        (b"POST /v1/topics HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n"
         b"Content-Length: 70000\r\n\r\n", 413),
        (b"POST /v1/topics HTTP/1.1\r\nHost: h\r\nExpect: 200-ok\r\n"
         b"Content-Length: 5\r\n\r\n", 417),
    ],
    ids=["body-over-the-limit", "unknown-expectation"],
)
def test_expect_refused_from_the_head_gets_the_final_answer_instead(broker, head, status):
    with RawHttp(broker.http) as connection:
        connection.send(head)
        response = connection.read_response()
        assert response.status == status, response
        assert connection.closed_by_peer()
    assert_broker_serves(broker)


# ------------------------------------------------------------------------------------------
# Keep-alive


def test_keep_alive_serves_several_requests_on_one_connection(broker):
    with RawHttp(broker.http) as connection:
        first = connection.request("GET", "/v1/health")
        assert first.status == 200 and first.header("connection") != "close", first
        second = connection.request("GET", "/topics")
        assert second.status == 200, second
        # Pipelined: two requests in one write, two responses in order.
        connection.send(
            b"GET /health HTTP/1.1\r\nHost: h\r\n\r\nGET /v1/stats HTTP/1.1\r\nHost: h\r\n\r\n"
        )
        assert connection.read_response().json()["status"] == "healthy"
        assert isinstance(connection.read_response().json(), dict)
        last = connection.request("GET", "/v1/health", headers={"Connection": "close"})
        assert last.status == 200 and last.header("connection") == "close", last
        assert connection.closed_by_peer()


def test_http_1_0_closes_unless_keep_alive(broker):
    with RawHttp(broker.http) as connection:
        connection.send(b"GET /health HTTP/1.0\r\n\r\n")
        response = connection.read_response()
        assert response.status == 200 and response.header("connection") == "close", response
        assert connection.closed_by_peer()
    with RawHttp(broker.http) as connection:
        connection.send(b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        response = connection.read_response()
        assert response.header("connection") == "keep-alive", response
        connection.send(b"GET /v1/health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        assert connection.read_response().status == 200


# ------------------------------------------------------------------------------------------
# Malformed HTTP: answered, closed, and the broker keeps serving others.


MALFORMED = [
    (b"GET foo HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    (b"G@T / HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHo st: h\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: h\x01\r\n\r\n", 400),
    (b"GET / HTTP/1.2\r\nHost: h\r\n\r\n", 505),
    (b"POST /topics HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n", 411),
    (b"POST /topics HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    (b"POST /topics HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\nhi", 400),
    (b"POST /topics HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nhi", 400),
    (b"POST /topics HTTP/1.1\r\nHost: h\r\nContent-Length: +1\r\n\r\nh", 400),
    (b"POST /topics HTTP/1.1\r\nHost: h\r\nContent-Length: 70000\r\n\r\n", 413),
    (b"GET / HTTP/1.1\r\nHost: h\r\nExpect: 200-ok\r\n\r\n", 417),
]


@pytest.mark.parametrize("request_bytes, status", MALFORMED, ids=[repr(r[:40]) for r, _ in MALFORMED])
def test_malformed_request_is_answered_then_closed(broker, request_bytes, status):
    with RawHttp(broker.http) as connection:
        connection.send(request_bytes)
        response = connection.read_response()
        assert response.status == status, response
        assert response.header("connection") == "close", response
        body = response.json()
        assert set(body) == {"error", "detail"} and body["error"] == body["detail"], body
        assert connection.closed_by_peer()
    assert_broker_serves(broker)


@pytest.mark.parametrize(
    "head",
    [
        b"GET /v1/health HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
        b"GET /v1/health HTTP/1.1\r\nHost: h\r\n"
        + b"".join(b"X-H%d: v\r\n" % n for n in range(40)) + b"\r\n",
        # Still incomplete past the limit: refused without waiting for the end of the head.
        b"GET /v1/health HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 9000,
    ],
    ids=["one-huge-header", "too-many-headers", "incomplete-huge-head"],
)
def test_huge_headers_are_431(broker, head):
    with RawHttp(broker.http) as connection:
        connection.send(head)
        response = connection.read_response()
        assert response.status == 431, response
        assert connection.closed_by_peer()
    assert_broker_serves(broker)


def test_partial_request_left_idle_is_closed_after_the_header_deadline(start_broker):
    # Assumption: the HTTP header deadline is the broker's handshake deadline
    # (--handshake-timeout-ms); 30 s bounds the wait whatever its value.
    broker = start_broker("--handshake-timeout-ms", "1000")
    with RawHttp(broker.http) as idle:
        idle.send(b"GET /v1/health HTTP/1.1\r\nHost: h\r\n")
        assert_broker_serves(broker)
        started = time.monotonic()
        assert idle.closed_by_peer(timeout=30), "an idle partial request was kept for 30 s"
        assert time.monotonic() - started < 30
        if idle.buffer:
            assert idle.buffer.startswith(b"HTTP/1.1 408 "), idle.buffer[:100]
    assert_broker_serves(broker)


# ------------------------------------------------------------------------------------------
# WebSocket upgrades and frames


def upgrade_request(path, version="HTTP/1.1", upgrade="websocket", connection="Upgrade",
                    key="dGhlIHNhbXBsZSBub25jZQ==", ws_version="13"):
    lines = [f"GET {path} {version}", "Host: h"]
    if upgrade is not None:
        lines.append(f"Upgrade: {upgrade}")
    if connection is not None:
        lines.append(f"Connection: {connection}")
    if key is not None:
        lines.append(f"Sec-WebSocket-Key: {key}")
    if ws_version is not None:
        lines.append(f"Sec-WebSocket-Version: {ws_version}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


BAD_UPGRADES = [
    ("no-upgrade-header", dict(upgrade=None, connection=None), 426),
    ("upgrade-not-websocket", dict(upgrade="h2c"), 426),
    ("version-8", dict(ws_version="8"), 426),
    ("no-version", dict(ws_version=None), 426),
    ("connection-without-upgrade", dict(connection="keep-alive"), 400),
    ("no-key", dict(key=None), 400),
    ("short-key", dict(key="c2hvcnQ="), 400),
    ("key-not-base64", dict(key="not base64!!"), 400),
    ("http-1.0", dict(version="HTTP/1.0"), 400),
]


@pytest.mark.parametrize("path", ["/v1/ws", "/ws"])
@pytest.mark.parametrize("name, changes, status", BAD_UPGRADES, ids=[b[0] for b in BAD_UPGRADES])
def test_bad_upgrade_is_refused(broker, path, name, changes, status):
    with RawHttp(broker.http) as connection:
        connection.send(upgrade_request(path, **changes))
        response = connection.read_response()
        if path == "/v1/ws":
            fiber_error(response, status)
        else:
            fastapi_error(response, status)
        if status == 426:
            assert response.header("upgrade") == "websocket", response
            assert response.header("sec-websocket-version") == "13", response
        assert connection.closed_by_peer()
    assert_broker_serves(broker)


def raw_fiber(broker):
    connection = RawHttp(broker.http)
    response = ws_handshake(connection, "/v1/ws")
    assert response.header("upgrade").lower() == "websocket", response
    assert "sec-websocket-extensions" not in response.headers, "no extension is ever accepted"
    return connection


def test_handshake_then_json_over_raw_frames(broker):
    with raw_fiber(broker) as connection:
        connection.send(ws_frame(0x9, b"hb"))
        assert ws_read_frame(connection) == (0xA, b"hb")
        # A fragmented message is one message.
        text = b'{"type":"ping","request_id":"frag"}'
        connection.send(ws_frame(0x1, text[:10], fin=False) + ws_frame(0x0, text[10:]))
        opcode, payload = ws_read_frame(connection)
        assert opcode == 0x1 and json.loads(payload)["request_id"] == "frag"
        connection.send(ws_frame(0x8, b"\x03\xe8"))
        code, _ = ws_expect_close(connection)
        assert code == 1000
        assert connection.closed_by_peer()


@pytest.mark.parametrize(
    "frame, code",
    [
        (ws_frame(0x1, b'{"type":"ping"}', mask=False), 1002),
        (bytes([0xC1]) + ws_frame(0x1, b'{"type":"ping"}')[1:], 1002),  # RSV1 set
        (ws_frame(0x3, b"x"), 1002),  # reserved opcode
        (ws_frame(0x9, b"x" * 126), 1002),  # control frame over 125 bytes
        (ws_frame(0x1, b"\xff\xfe"), 1007),  # text that is not UTF-8
        (ws_frame(0x1, b"", length=8 * 1024 * 1024), 1009),  # announced size over the limit
    ],
    ids=["unmasked", "rsv1", "reserved-opcode", "long-control", "bad-utf8", "oversized"],
)
def test_broken_frames_get_a_close_with_the_rfc_code(broker, frame, code):
    with raw_fiber(broker) as connection:
        connection.send(frame)
        got, _ = ws_expect_close(connection)
        assert got == code
        assert connection.closed_by_peer()
    assert_broker_serves(broker)
    with broker.fiber() as ws:
        ws.send({"type": "ping", "request_id": "ok"})
        assert ws.expect("pong")["request_id"] == "ok"
