"""Graceful shutdown on the HTTP port: after SIGTERM, for the grace period
(`--shutdown-grace-ms`), WebSocket sessions get their queued events and then close 1001, and
every new REST request, on a keep-alive connection or a new one, is answered
`503 Service Unavailable` with the dialect's JSON error body and `Connection: close`.

One shard, so the keep-alive connection, the WebSocket and the new connection all meet the
same shard's grace period and listener (with several, a shard left with no connection stops
at once and its listener goes with it).
"""

import signal

from corebus_testing import (
    Broker,
    RawHttp,
    fiber_publish,
    fiber_subscribe,
    unique,
)

# Long enough for the requests below, short enough that the idle connection's wait is quick.
GRACE_MS = 3000


class OneShardBroker(Broker):
    BASE_FLAGS = (
        "--shards", "1", "--no-pin",
        "--listen", "127.0.0.1:0",
        "--http-listen", "127.0.0.1:0",
    )


def assert_refused_for_shutdown(response, key):
    assert response.status == 503, response
    assert response.header("content-type") == "application/json", response
    assert response.header("connection") == "close", response
    body = response.json()
    assert set(body) == {key} and "shutting down" in body[key], body


def test_sigterm_answers_new_http_requests_503_and_closes_websockets_1001(corebus_bin):
    broker = OneShardBroker.start(corebus_bin, ["--shutdown-grace-ms", GRACE_MS])
    try:
        topic = unique("shutdown.http")
        subscriber = broker.fiber()
        fiber_subscribe(subscriber, topic)
        publisher = broker.fiber()
        for n in range(3):
            fiber_publish(publisher, topic, f"queued-{n}")

        keep_alive = RawHttp(broker.http)
        assert keep_alive.request("GET", "/v1/health").status == 200
        # Holds the shard's grace period open after the keep-alive connection is refused.
        idle = RawHttp(broker.http)

        broker.signal(signal.SIGTERM)

        # The WebSocket gets what was queued for it, then "going away".
        code, seen = subscriber.expect_closed(timeout=10)
        assert code == 1001, f"close code {code}"
        payloads = [m["message"]["payload"] for m in seen if m.get("type") == "event"]
        assert payloads == ["queued-0", "queued-1", "queued-2"], seen

        # A new request on a keep-alive connection: 503 in the Fiber dialect, then closed.
        assert_refused_for_shutdown(keep_alive.request("GET", "/v1/health"), "error")
        assert keep_alive.closed_by_peer(timeout=5)

        # A new connection while the listener is still open: 503 in the FastAPI dialect.
        with RawHttp(broker.http) as fresh:
            assert_refused_for_shutdown(fresh.request("POST", "/topics", {"name": topic}), "detail")
            assert fresh.closed_by_peer(timeout=5)

        idle.close()
        keep_alive.close()
        publisher.close()
        subscriber.close()
        assert broker.wait() == 0, broker.stderr_text()
    finally:
        if not broker.stopped:
            broker.kill()
