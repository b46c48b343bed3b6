"""The Redis (RESP) port, spoken by redis-py in RESP2 and RESP3 and by redis-cli.

Also native and WebSocket clients on the same topics, Redis's framing errors, and the
slow-subscriber cut. redis-cli is used when it is installed; without it the same exchange is
made over a raw socket in RESP2, so no test skips. (`tools/redis-peers` runs redis-cli,
redis-benchmark and redis-py's own pub/sub tests.)
"""

import base64
import contextlib
import shutil
import socket
import subprocess
import threading
import time

import pytest
import redis

from corebus_testing import (
    WAIT,
    CliChild,
    LineReader,
    clean_env,
    fiber_publish,
    fiber_subscribe,
    http,
    native_publish,
    unique,
)


@pytest.fixture(scope="module")
def resp(broker):
    assert broker.resp is not None, f"no resp= in the ready line {broker.ready_line!r}"
    return broker.resp


@pytest.fixture(params=[2, 3], ids=["resp2", "resp3"])
def protocol(request):
    return request.param


def client(resp, protocol, **options):
    host, port = resp
    options.setdefault("socket_timeout", WAIT)
    options.setdefault("socket_connect_timeout", WAIT)
    return redis.Redis(host=host, port=port, protocol=protocol, **options)


def next_message(pubsub, timeout=WAIT):
    """The next pub/sub message (subscribe confirmations included unless ignored)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=max(deadline - time.monotonic(), 0.01))
        if message is not None:
            return message
    raise AssertionError(f"no pub/sub message within {timeout}s")


def expect_no_message(pubsub, duration=0.5):
    message = pubsub.get_message(timeout=duration)
    assert message is None, message


def test_subscribe_get_message_and_publish_count(resp, protocol):
    channel = unique("redis.sub")
    with client(resp, protocol) as publisher, client(resp, protocol) as subscriber:
        pubsub = subscriber.pubsub()
        pubsub.subscribe(channel)
        assert next_message(pubsub) == {
            "type": "subscribe", "pattern": None, "channel": channel.encode(), "data": 1,
        }
        assert publisher.publish(channel, "hello") == 1
        assert next_message(pubsub) == {
            "type": "message", "pattern": None, "channel": channel.encode(), "data": b"hello",
        }
        assert publisher.publish(unique("redis.nobody"), "x") == 0
        pubsub.unsubscribe(channel)
        assert next_message(pubsub) == {
            "type": "unsubscribe", "pattern": None, "channel": channel.encode(), "data": 0,
        }
        assert publisher.publish(channel, "gone") == 0
        expect_no_message(pubsub)
        pubsub.close()


def test_psubscribe_with_a_redis_glob(resp, protocol):
    base = unique("redis.psub")
    pattern = f"{base}.*"
    with client(resp, protocol) as publisher, client(resp, protocol) as subscriber:
        pubsub = subscriber.pubsub()
        pubsub.psubscribe(pattern)
        assert next_message(pubsub) == {
            "type": "psubscribe", "pattern": None, "channel": pattern.encode(), "data": 1,
        }
        assert publisher.publish(f"{base}.created", b"\x00\xffbin") == 1
        assert next_message(pubsub) == {
            "type": "pmessage",
            "pattern": pattern.encode(),
            "channel": f"{base}.created".encode(),
            "data": b"\x00\xffbin",
        }
        assert publisher.publish(f"{unique('redis.other')}", "no") == 0
        expect_no_message(pubsub)
        pubsub.close()


def test_publish_counts_every_receiver(resp, protocol):
    base = unique("redis.count")
    channel = f"{base}.a"
    with client(resp, protocol) as publisher, client(resp, protocol) as one, \
            client(resp, protocol) as two, client(resp, protocol) as patterned:
        subscriptions = []
        for connection in (one, two):
            pubsub = connection.pubsub()
            pubsub.subscribe(channel)
            assert next_message(pubsub)["type"] == "subscribe"
            subscriptions.append(pubsub)
        pattern_sub = patterned.pubsub()
        pattern_sub.psubscribe(f"{base}.*")
        assert next_message(pattern_sub)["type"] == "psubscribe"
        # Redis counts a client once per matching subscription, pattern ones included.
        assert publisher.publish(channel, "m") == 3
        for pubsub in subscriptions:
            assert next_message(pubsub)["data"] == b"m"
        assert next_message(pattern_sub)["type"] == "pmessage"
        for pubsub in subscriptions + [pattern_sub]:
            pubsub.close()


def test_a_publisher_switching_between_look_alike_channels_reaches_each(start_broker, protocol):
    """A publishing connection remembers where its last publish found its channel: names of
    one length with the same first and last eight bytes must still reach their own
    subscribers (each its own connection, so a message on the wrong topic shows), in order,
    and a mapped name (`:`) beside them its own. One shard, so the publisher's shard owns
    every channel and its hint is used, whatever the names hash to."""
    resp = start_broker("--shards", "1").resp
    base = unique("redis.look")
    channels = [f"{base}.AAA.created", f"{base}.BBB.created", f"{base}:AAA.created"]
    with contextlib.ExitStack() as stack:
        publisher = stack.enter_context(client(resp, protocol))
        subscriptions = []
        for channel in channels:
            pubsub = stack.enter_context(client(resp, protocol)).pubsub()
            pubsub.subscribe(channel)
            assert next_message(pubsub)["type"] == "subscribe"
            subscriptions.append(pubsub)
        plan = [0, 0, 0, 1, 1, 2, 2, 0, 1, 0, 2, 1, 1]
        for n, which in enumerate(plan):
            assert publisher.publish(channels[which], str(n)) == 1
        for which, pubsub in enumerate(subscriptions):
            expected = [str(n).encode() for n, w in enumerate(plan) if w == which]
            got = [next_message(pubsub) for _ in expected]
            assert [(m["channel"], m["data"]) for m in got] == [
                (channels[which].encode(), data) for data in expected]
            expect_no_message(pubsub)
            pubsub.close()


def test_listen(resp, protocol):
    channel = unique("redis.listen")
    with client(resp, protocol) as publisher, client(resp, protocol) as subscriber:
        pubsub = subscriber.pubsub()
        pubsub.subscribe(channel)
        stream = pubsub.listen()  # socket_timeout bounds each read
        assert next(stream)["type"] == "subscribe"
        for n in range(3):
            assert publisher.publish(channel, f"m{n}") == 1
        got = [next(stream) for _ in range(3)]
        assert [(m["type"], m["data"]) for m in got] == [
            ("message", b"m0"), ("message", b"m1"), ("message", b"m2")]
        pubsub.close()


def test_run_in_thread(resp, protocol):
    channel = unique("redis.thread")
    received = []
    arrived = threading.Event()

    def handler(message):
        received.append(message["data"])
        if len(received) == 2:
            arrived.set()

    with client(resp, protocol) as publisher, client(resp, protocol) as subscriber:
        pubsub = subscriber.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(**{channel: handler})
        worker = pubsub.run_in_thread(sleep_time=0.01, daemon=True)
        try:
            deadline = time.monotonic() + WAIT
            while publisher.pubsub_numsub(channel) != [(channel.encode(), 1)]:
                assert time.monotonic() < deadline, "the subscription never took effect"
                time.sleep(0.02)
            assert publisher.publish(channel, "a") == 1
            assert publisher.publish(channel, "b") == 1
            assert arrived.wait(WAIT), received
            assert received == [b"a", b"b"]
        finally:
            worker.stop()
            worker.join(WAIT)
        pubsub.close()


def test_pubsub_channels_and_numsub(resp, protocol):
    base = unique("redis.intro")
    with client(resp, protocol) as admin, client(resp, protocol) as a, client(resp, protocol) as b:
        first, second = a.pubsub(), b.pubsub()
        first.subscribe(f"{base}.x", f"{base}.y")
        second.subscribe(f"{base}.x")
        for pubsub, count in ((first, 2), (second, 1)):
            for _ in range(count):
                assert next_message(pubsub)["type"] == "subscribe"
        assert sorted(admin.pubsub_channels(f"{base}.*")) == [
            f"{base}.x".encode(), f"{base}.y".encode()]
        assert admin.pubsub_numsub(f"{base}.x", f"{base}.y", f"{base}.z") == [
            (f"{base}.x".encode(), 2), (f"{base}.y".encode(), 1), (f"{base}.z".encode(), 0)]
        first.close()
        second.close()
        deadline = time.monotonic() + WAIT
        while admin.pubsub_channels(f"{base}.*"):
            assert time.monotonic() < deadline, "closed subscribers still listed"
            time.sleep(0.05)


def test_ping_while_subscribed_and_health_checks(resp, protocol):
    channel = unique("redis.health")
    with client(resp, protocol) as publisher, \
            client(resp, protocol, health_check_interval=1) as subscriber:
        pubsub = subscriber.pubsub()
        pubsub.subscribe(channel)
        assert next_message(pubsub)["type"] == "subscribe"
        pubsub.ping()
        pong = next_message(pubsub)
        assert pong["type"] == "pong", pong
        # Past the interval, redis-py sends `PING redis-py-health-check` before reading and
        # drops the matching reply; any other reply would surface here instead.
        time.sleep(1.3)
        assert publisher.publish(channel, "after-check") == 1
        message = next_message(pubsub)
        assert (message["type"], message["data"]) == ("message", b"after-check"), message
        time.sleep(1.3)
        expect_no_message(pubsub)
        pubsub.close()


def test_plain_commands_clients_send(resp, protocol):
    with client(resp, protocol) as connection:
        assert connection.ping() is True
        assert connection.echo("hi") == b"hi"


def test_redis_and_websocket_share_messages(broker, resp, protocol):
    topic = unique("redis.cross")
    with client(resp, protocol) as connection, broker.fiber() as fiber:
        fiber_subscribe(fiber, topic)
        pubsub = connection.pubsub()
        pubsub.subscribe(topic)
        assert next_message(pubsub)["type"] == "subscribe"

        # Redis payloads are bytes: UTF-8 reaches WebSocket as a string, other bytes as base64.
        connection.publish(topic, "plain text")
        connection.publish(topic, b"\xff\xfe")
        assert fiber.expect("event")["message"]["payload"] == "plain text"
        assert fiber.expect("event")["message"]["payload"] == {
            "$base64": base64.b64encode(b"\xff\xfe").decode()}
        # A WebSocket JSON payload reaches Redis as its compact JSON text.
        fiber_publish(fiber, topic, {"a": [1, 2]})
        fiber.expect("event")
        data = [next_message(pubsub)["data"] for _ in range(3)]
        assert data == [b"plain text", b"\xff\xfe", b'{"a":[1,2]}']
        pubsub.close()


# ------------------------------------------------------------------------------------------
# redis-cli (or, without it, the same exchange in raw RESP2)


def test_redis_cli_subscribe_and_publish(resp):
    host, port = resp
    channel = unique("redis.cli")
    cli = shutil.which("redis-cli")
    if cli is None:
        raw_resp2_exchange(resp, channel)
        return
    base = [cli, "-h", host, "-p", str(port)]
    sub = subprocess.Popen(
        base + ["SUBSCRIBE", channel],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env(),
    )
    lines = LineReader(sub.stdout, "redis-cli-sub")
    try:
        # Not a terminal: redis-cli prints each element of a reply on its own line.
        assert [lines.next_line(WAIT) for _ in range(3)] == ["subscribe", channel, "1"]
        published = subprocess.run(base + ["PUBLISH", channel, "from cli"], capture_output=True,
                                   timeout=WAIT, env=clean_env())
        assert published.returncode == 0 and published.stdout.decode().strip() == "1", published
        assert [lines.next_line(WAIT) for _ in range(3)] == ["message", channel, "from cli"]
        ping = subprocess.run(base + ["PING"], capture_output=True, timeout=WAIT, env=clean_env())
        assert ping.stdout.decode().strip() == "PONG", ping
    finally:
        sub.kill()
        sub.wait(WAIT)


def read_exactly(sock, expected):
    """Reads len(expected) bytes from a raw socket and checks they are exactly those."""
    data = b""
    while len(data) < len(expected):
        chunk = sock.recv(len(expected) - len(data))
        assert chunk, f"closed after {data!r}; expected {expected!r}"
        data += chunk
    assert data == expected


def switch_to_resp3(sock):
    """HELLO 3 on a raw socket, reading its whole answer (an ECHO after it marks the end)."""
    sock.sendall(b"HELLO 3\r\nECHO hello-done\r\n")
    data = b""
    while not data.endswith(b"$10\r\nhello-done\r\n"):
        chunk = sock.recv(4096)
        assert chunk, f"closed after {data!r}"
        data += chunk


def raw_resp2_exchange(resp, channel):
    def command(*parts):
        encoded = [part.encode() if isinstance(part, str) else part for part in parts]
        return b"*%d\r\n" % len(encoded) + b"".join(
            b"$%d\r\n%s\r\n" % (len(part), part) for part in encoded)

    with socket.create_connection(resp, timeout=WAIT) as sub, \
            socket.create_connection(resp, timeout=WAIT) as pub:
        name = channel.encode()
        pub.sendall(b"PING\r\n")  # an inline command, as redis-cli and telnet users send
        read_exactly(pub, b"+PONG\r\n")
        sub.sendall(command("SUBSCRIBE", channel))
        read_exactly(sub, b"*3\r\n$9\r\nsubscribe\r\n$%d\r\n%s\r\n:1\r\n" % (len(name), name))
        pub.sendall(command("PUBLISH", channel, "from raw"))
        read_exactly(pub, b":1\r\n")
        read_exactly(sub, b"*3\r\n$7\r\nmessage\r\n$%d\r\n%s\r\n$8\r\nfrom raw\r\n"
                     % (len(name), name))


def test_resp3_publish_to_its_own_channel_sends_the_message_before_the_reply(resp):
    """As Redis runs a command whole: the message a PUBLISH delivers to the publishing
    (subscribed, RESP3) connection itself comes before that PUBLISH's `:1`, whichever shard
    owns the channel. (Pipelined publishes to a channel another shard owns may still see
    their first `:1` ahead of its message: see the README.)"""
    channel = unique("selfpub").encode()
    with socket.create_connection(resp, timeout=WAIT) as sock:
        switch_to_resp3(sock)
        name = b"$%d\r\n%s\r\n" % (len(channel), channel)
        sock.sendall(b"SUBSCRIBE %s\r\n" % channel)
        read_exactly(sock, b">3\r\n$9\r\nsubscribe\r\n" + name + b":1\r\n")
        for word in (b"one", b"two"):
            sock.sendall(b"PUBLISH %s %s\r\n" % (channel, word))
            read_exactly(sock, b">3\r\n$7\r\nmessage\r\n" + name + b"$3\r\n%s\r\n:1\r\n" % word)


def test_every_redis_subscriber_of_a_message_gets_its_own_versions_frame(resp):
    """One message, many Redis subscribers: the frame is worded once per RESP version and
    shared from the second subscriber on, so each must still get exactly its version's
    frame, with the channel's Redis name (here with `:`, which corebus holds escaped), in
    publish order, beside a pattern subscription on the same connection."""
    channel = b"fan:out:" + unique("share").encode()
    name = b"$%d\r\n%s\r\n" % (len(channel), channel)

    def subscriber(version, pattern=None):
        sock = socket.create_connection(resp, timeout=WAIT)
        if version == 3:
            switch_to_resp3(sock)
        push = b">" if version == 3 else b"*"
        sock.sendall(b"SUBSCRIBE %s\r\n" % channel)
        read_exactly(sock, push + b"3\r\n$9\r\nsubscribe\r\n" + name + b":1\r\n")
        if pattern is not None:
            sock.sendall(b"PSUBSCRIBE %s\r\n" % pattern)
            read_exactly(sock, push + b"3\r\n$10\r\npsubscribe\r\n$%d\r\n%s\r\n:2\r\n"
                         % (len(pattern), pattern))
        return sock, push, pattern

    pattern = b"fan:out:*"
    subscribers = [subscriber(2), subscriber(3), subscriber(2), subscriber(3, pattern),
                   subscriber(3), subscriber(2, pattern)]
    payloads = [b"first", b"second" * 20, b"", b"x" * 300]
    with socket.create_connection(resp, timeout=WAIT) as pub:
        pub.sendall(b"".join(b"*3\r\n$7\r\nPUBLISH\r\n" + name + b"$%d\r\n%s\r\n"
                             % (len(payload), payload) for payload in payloads))
        read_exactly(pub, b":8\r\n" * len(payloads))
    try:
        for sock, push, with_pattern in subscribers:
            expected = b""
            for payload in payloads:
                body = b"$%d\r\n%s\r\n" % (len(payload), payload)
                frames = [push + b"3\r\n$7\r\nmessage\r\n" + name + body]
                if with_pattern:
                    frames.append(push + b"4\r\n$8\r\npmessage\r\n$%d\r\n%s\r\n"
                                  % (len(with_pattern), with_pattern) + name + body)
                expected += b"".join(frames)
            data = b""
            while len(data) < len(expected):
                chunk = sock.recv(len(expected) - len(data))
                assert chunk, f"closed after {data!r}"
                data += chunk
            # Each subscription's frames in publish order; a channel's and a pattern's
            # frames of one publish may come in either order.
            for kind in (b"$7\r\nmessage\r\n", b"$8\r\npmessage\r\n"):
                assert [f for f in split_frames(data, push) if kind in f[:16]] == \
                    [f for f in split_frames(expected, push) if kind in f[:16]]
            assert len(data) == len(expected)
    finally:
        for sock, _, _ in subscribers:
            sock.close()


def split_frames(data, push):
    """The top-level frames of a stream of `message`/`pmessage` pushes (bulk strings only)."""
    frames, at = [], 0
    while at < len(data):
        assert data[at:at + 1] == push, data[at:]
        count_end = data.index(b"\r\n", at)
        count = int(data[at + 1:count_end])
        end = count_end + 2
        for _ in range(count):
            length_end = data.index(b"\r\n", end)
            end = length_end + 2 + int(data[end + 1:length_end]) + 2
        frames.append(data[at:end])
        at = end
    return frames


# ------------------------------------------------------------------------------------------
# Native clients and Redis clients share topics, patterns on either side.


def test_native_publisher_reaches_redis_subscribers_and_patterns(broker, resp, protocol):
    base = unique("redis.fromnative")
    with client(resp, protocol) as connection:
        exact = connection.pubsub()
        exact.subscribe(f"{base}.a")
        assert next_message(exact)["type"] == "subscribe"
        glob = connection.pubsub()
        glob.psubscribe(f"{base}.[ab]")
        assert next_message(glob)["type"] == "psubscribe"
        native_publish(broker, f"{base}.a", b"from native")
        native_publish(broker, f"{base}.c", b"nobody's")
        assert next_message(exact)["data"] == b"from native"
        message = next_message(glob)
        assert (message["type"], message["channel"], message["data"]) == (
            "pmessage", f"{base}.a".encode(), b"from native")
        expect_no_message(glob)
        exact.close()
        glob.close()


def test_redis_publisher_reaches_native_subscribers_and_patterns(broker, resp, corebus_bin):
    base = unique("redis.tonative")
    exact = CliChild(corebus_bin, "sub", "--addr", broker.native_addr(), f"{base}.a",
                     "--count", "1")
    pattern = CliChild(corebus_bin, "sub", "--addr", broker.native_addr(), f"{base}.>",
                       "--count", "2")
    try:
        exact.await_stderr(f"subscribed to {base}.a")
        pattern.await_stderr(f"subscribed to {base}.>")
        with client(resp, 3) as connection:
            assert connection.publish(f"{base}.a", "one") == 2
            assert connection.publish(f"{base}.b.c", "two") == 1
        assert exact.stdout_line() == f"{base}.a seq=1 one"
        assert [pattern.stdout_line(), pattern.stdout_line()] == [
            f"{base}.a seq=1 one", f"{base}.b.c seq=1 two"]
        assert exact.wait() == 0 and pattern.wait() == 0
    finally:
        exact.kill()
        pattern.kill()


def test_redis_names_that_are_not_topic_names_are_mapped_not_refused(broker, resp, corebus_bin):
    """`user:42` is the topic `user--3a42`: native clients reach it under that name, and a
    Redis pattern sees native publishes under the Redis name."""
    tag = unique("u")
    channel = f"{tag}:42"
    with client(resp, 2) as connection:
        pubsub = connection.pubsub()
        pubsub.psubscribe(f"{tag}:*")
        assert next_message(pubsub)["type"] == "psubscribe"
        native_publish(broker, f"{tag}--3a42", b"mapped")
        message = next_message(pubsub)
        assert (message["channel"], message["data"]) == (channel.encode(), b"mapped")
        assert connection.pubsub_numpat() >= 1
        pubsub.close()


def test_websocket_pattern_and_redis_pattern_see_each_others_publishes(broker, resp):
    base = unique("redis.wspat")
    with client(resp, 3) as connection, broker.fiber() as fiber:
        fiber_subscribe(fiber, f"{base}.*")
        pubsub = connection.pubsub()
        pubsub.psubscribe(f"{base}.*")
        assert next_message(pubsub)["type"] == "psubscribe"
        assert connection.publish(f"{base}.x", "from redis") == 2
        assert fiber.expect("event")["message"]["payload"] == "from redis"
        fiber_publish(fiber, f"{base}.y", "from ws")
        assert fiber.expect("event")["message"]["payload"] == "from ws"
        data = [next_message(pubsub)["data"] for _ in range(2)]
        assert data == [b"from redis", b'"from ws"']
        pubsub.close()


# ------------------------------------------------------------------------------------------
# Bad input gets Redis's answer, and the broker keeps serving.


def raw_reply(resp, payload, read_until_close=True):
    with socket.create_connection(resp, timeout=WAIT) as sock:
        sock.sendall(payload)
        data = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            data += chunk
            if not read_until_close and data.endswith(b"\r\n"):
                break
        return data


@pytest.mark.parametrize("payload, expected", [
    (b"*2\r\n$4\r\nECHO\r\nxx\r\n", b"-ERR Protocol error: expected '$', got 'x'\r\n"),
    (b"*1\r\n$-5\r\n", b"-ERR Protocol error: invalid bulk length\r\n"),
    (b"*99999999999\r\n", b"-ERR Protocol error: invalid multibulk length\r\n"),
    (b"*1\r\n$536870912\r\n", b"-ERR Protocol error: invalid bulk length\r\n"),
    (b"*x\r\n", b"-ERR Protocol error: invalid multibulk length\r\n"),
    (b'PING "unbalanced\r\n', b"-ERR Protocol error: unbalanced quotes in request\r\n"),
], ids=["unbalanced-multibulk", "negative-bulk", "huge-multibulk", "512MiB-bulk",
        "garbage-count", "unbalanced-inline"])
def test_framing_errors_get_redis_errors_and_close(broker, resp, payload, expected):
    assert raw_reply(resp, payload) == expected
    with client(resp, 2) as connection:
        assert connection.ping() is True


def test_unknown_commands_and_wrong_mode_get_redis_errors_and_stay_open(resp):
    with socket.create_connection(resp, timeout=WAIT) as sock:
        reader = sock.makefile("rb")
        sock.sendall(b"GET key\r\n")
        assert reader.readline() == (
            b"-ERR unknown command 'GET', with args beginning with: 'key' \r\n")
        sock.sendall(b"*1\r\n$7\r\nPUBLISH\r\n")
        assert reader.readline() == b"-ERR wrong number of arguments for 'publish' command\r\n"
        sock.sendall(b"SELECT 3\r\n")
        assert reader.readline() == b"-ERR DB index is out of range\r\n"
        sock.sendall(b"SUBSCRIBE wrong.mode\r\n")
        assert [reader.readline() for _ in range(6)][-1] == b":1\r\n"
        sock.sendall(b"ECHO x\r\n")
        assert reader.readline().startswith(b"-ERR Can't execute 'echo': only (P|S)SUBSCRIBE")
        sock.sendall(b"PING\r\n")
        assert [reader.readline() for _ in range(5)] == [
            b"*2\r\n", b"$4\r\n", b"pong\r\n", b"$0\r\n", b"\r\n"]


def test_a_slow_redis_subscriber_is_cut_with_an_error_and_others_keep_getting(start_broker):
    broker = start_broker("--outbound-bytes-max", "65536", "--message-bytes-max", "8192")
    channel = unique("redis.slow")
    # Far more than the kernel's socket buffers (several MiB) and the 64 KiB queue hold. (A
    # small SO_RCVBUF would fill sooner but make the final read crawl past the close linger.)
    payload, count = b"x" * 8000, 5000
    with socket.create_connection(broker.resp, timeout=WAIT) as stalled, \
            client(broker.resp, 3) as healthy, client(broker.resp, 3) as publisher:
        stalled.sendall(b"SUBSCRIBE %s\r\n" % channel.encode())
        pubsub = healthy.pubsub()
        pubsub.subscribe(channel)
        assert next_message(pubsub)["type"] == "subscribe"
        # In step with the healthy subscriber, so only the stalled one falls behind.
        for sent in range(count):
            assert publisher.publish(channel, payload) >= 1
            message = next_message(pubsub)
            assert (message["type"], len(message["data"])) == ("message", len(payload))
            if sent % 50 == 0 and publisher.info("corebus")["slow_consumer_disconnects"] >= 1:
                break
        else:
            raise AssertionError("the stalled subscriber was never cut")
        # Read at once, inside the close linger: the stream ends with a Redis error, then EOF.
        data = b""
        stalled.settimeout(WAIT)
        while chunk := stalled.recv(1 << 16):
            data += chunk
        assert data.rstrip(b"\r\n").rsplit(b"\r\n", 1)[-1].startswith(b"-ERR"), data[-200:]
        assert publisher.publish(channel, "after") == 1
        assert next_message(pubsub)["data"] == b"after"
        assert publisher.info("corebus")["slow_consumer_disconnects"] == 1
        pubsub.close()


# Found by an audit: ordering, half-closed peers, and a pipeline of stats requests.


def read_resp_frame(reader):
    """One RESP2 frame from a binary file object, as nested Python values."""
    line = reader.readline()
    assert line.endswith(b"\r\n"), f"truncated frame {line!r}"
    kind, rest = line[:1], line[1:-2]
    if kind in (b"+", b"-"):
        return kind + rest
    if kind == b":":
        return int(rest)
    if kind == b"$":
        length = int(rest)
        return None if length < 0 else reader.read(length + 2)[:-2]
    if kind == b"*":
        return [read_resp_frame(reader) for _ in range(int(rest))]
    raise AssertionError(f"unexpected frame {line!r}")


@contextlib.contextmanager
def publishing_flood(resp, channels):
    """Publishes to `channels` in pipelined batches on a thread until the block ends."""
    batch = b"".join(
        b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n$1\r\nm\r\n" % (len(channel), channel.encode())
        for channel in channels
    )
    batch *= max(1, 200 // len(channels))
    stop = threading.Event()

    def flood():
        with socket.create_connection(resp, timeout=WAIT) as publisher:
            while not stop.is_set():
                publisher.sendall(batch)
                publisher.recv(1 << 20)

    flooder = threading.Thread(target=flood, daemon=True)
    flooder.start()
    try:
        yield
    finally:
        stop.set()
        flooder.join(timeout=WAIT)


def test_messages_never_overtake_the_replies_before_them(broker, resp):
    """A channel's messages come after its `subscribe` confirmation, and no message comes
    ahead of the reply to an earlier request, even while the confirmations wait on other
    shards (the test broker has two) and publishers keep the channels busy."""
    channels = [unique("order.c%d" % index) for index in range(20)]
    with publishing_flood(resp, channels):
        for _ in range(15):
            with socket.create_connection(resp, timeout=WAIT) as sock:
                reader = sock.makefile("rb")
                request = b"*1\r\n$4\r\nPING\r\n*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n"
                request += b"*%d\r\n$9\r\nSUBSCRIBE\r\n" % (len(channels) + 1)
                for channel in channels:
                    request += b"$%d\r\n%s\r\n" % (len(channel), channel.encode())
                sock.sendall(request)
                assert read_resp_frame(reader) == b"+PONG"
                info = read_resp_frame(reader)
                assert isinstance(info, bytes) and b"redis_version" in info, info
                confirmed = set()
                while len(confirmed) < len(channels):
                    frame = read_resp_frame(reader)
                    assert frame[0] == b"subscribe", f"{frame!r} before every confirmation"
                    confirmed.add(frame[1].decode())
                    assert frame[2] == len(confirmed)
                assert confirmed == set(channels)
                # Messages follow, only for channels already confirmed.
                frame = read_resp_frame(reader)
                assert frame[0] == b"message" and frame[1].decode() in confirmed


def metric_total(broker, name):
    """The sum of one counter's samples over the shards, from `/metrics`."""
    response = http(broker, "GET", "/metrics")
    assert response.status == 200, response
    lines = response.body.decode().splitlines()
    return sum(float(line.split()[-1]) for line in lines if line.startswith(name + "{"))


def test_a_pipeline_waiting_on_its_own_answers_is_not_counted_as_backpressure(start_broker):
    """A Redis client's pipeline of stats requests is read one gather at a time, pausing the
    connection between them; those pauses are its own, not a full ring's, and stay out of
    `ring_full_pauses`."""
    broker = start_broker()
    requests = 200
    with socket.create_connection(broker.resp, timeout=WAIT) as sock:
        reader = sock.makefile("rb")
        sock.sendall(b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n" * requests)
        for _ in range(requests):
            assert b"redis_version" in read_resp_frame(reader)
    assert metric_total(broker, "corebus_ring_full_pauses_total") == 0


def test_a_pipeline_with_too_many_replies_owed_is_not_counted_as_backpressure(start_broker):
    """Past 64 Ki replies owed (PINGs behind a stats request), reading pauses until some are
    out; read in large turns, the limit is met inside one read loop, which pauses too."""
    broker = start_broker("--read-bytes-per-turn-max", "67108864",
                          "--read-chunk-bytes", "4194304")
    pings = 300_000
    with socket.create_connection(broker.resp, timeout=WAIT) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        payload = b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n" * 2 + b"PING\r\n" * pings
        sending = threading.Thread(target=sock.sendall, args=(payload,))
        sending.start()
        reader = sock.makefile("rb")
        for _ in range(2):
            assert b"redis_version" in read_resp_frame(reader)
        for _ in range(pings):
            assert reader.readline() == b"+PONG\r\n"
        sending.join(timeout=WAIT)
    assert metric_total(broker, "corebus_ring_full_pauses_total") == 0


def test_messages_lined_up_behind_replies_count_as_delivered(start_broker):
    """Messages that wait behind a reply (here, stats requests pipelined by a subscribed
    RESP3 client while a publisher keeps its channel busy) count in `delivered` like any
    other, so the broker's figures add up to what the subscriber read."""
    broker = start_broker()
    channel = unique("lined.up")
    published, infos = 5000, 500
    with socket.create_connection(broker.resp, timeout=WAIT) as subscriber, \
            client(broker.resp, 2) as publisher:
        reader = subscriber.makefile("rb")
        subscriber.sendall(b"HELLO 3\r\nSUBSCRIBE %s\r\n" % channel.encode())
        assert b"proto" in read_resp_frame_3(reader)
        assert read_resp_frame_3(reader)[0] == b"subscribe"

        def publish():
            pipe = publisher.pipeline(transaction=False)
            for index in range(published):
                pipe.publish(channel, b"m%d" % index)
                if index % 100 == 99:
                    pipe.execute()
            pipe.execute()

        sending = threading.Thread(target=publish)
        sending.start()
        subscriber.sendall(b"*2\r\n$4\r\nINFO\r\n$7\r\ncorebus\r\n" * infos)
        messages = answers = 0
        while messages < published or answers < infos:
            frame = read_resp_frame_3(reader)
            if isinstance(frame, list):
                assert frame[:2] == [b"message", channel.encode()], frame
                messages += 1
            else:
                assert b"delivered:" in frame, frame
                answers += 1
        sending.join(timeout=WAIT)
        assert messages == published
        assert publisher.info("corebus")["delivered"] == published


@pytest.mark.parametrize("request_bytes, reply", [
    (b"PING\r\n", b"+PONG\r\n"),
    (b"*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\n", b"$2\r\nhi\r\n"),
    (b"*3\r\n$7\r\nPUBLISH\r\n$9\r\nhalf.shut\r\n$1\r\nx\r\n", b":0\r\n"),
], ids=["ping", "echo", "publish"])
def test_a_client_that_shuts_its_write_side_still_gets_its_replies(resp, request_bytes, reply):
    with socket.create_connection(resp, timeout=WAIT) as sock:
        sock.sendall(request_bytes)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
        assert data == reply


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_pipeline_of_stats_requests_costs_one_at_a_time(start_broker):
    """Thousands of stats requests (`CLIENT LIST`, `PUBSUB NUMPAT`, `INFO`) sent without
    reading the answers: the broker gathers stats for one request of a connection at a time
    and stops reading it once its unread answers pass --outbound-bytes-max, so its memory
    stays near where it was (it grew by gigabytes before), other clients are answered
    promptly, and every request is answered in order once read."""
    broker = start_broker()
    client_lists, numpat, infos = 300, 2000, 20
    pipeline = b"*2\r\n$6\r\nCLIENT\r\n$4\r\nLIST\r\n" * client_lists
    pipeline += b"*2\r\n$6\r\nPUBSUB\r\n$6\r\nNUMPAT\r\n" * numpat
    pipeline += b"*1\r\n$4\r\nINFO\r\n" * infos
    # Every gather carries each connection's CLIENT LIST line (with its name, at most 255
    # bytes): many named connections make each snapshot larger.
    named = [socket.create_connection(broker.resp, timeout=WAIT) for _ in range(200)]
    for index, sock in enumerate(named):
        name = b"%03d" % index + b"n" * 252
        sock.sendall(b"*3\r\n$6\r\nCLIENT\r\n$7\r\nSETNAME\r\n$255\r\n%s\r\n" % name)
    for sock in named:
        assert sock.recv(16) == b"+OK\r\n"
    with client(broker.resp, 2) as other, \
            socket.create_connection(broker.resp, timeout=WAIT) as flood:
        before = rss_kib(broker.process.pid)
        peak, sampling = [before], threading.Event()

        def sample_rss():
            while not sampling.is_set():
                peak[0] = max(peak[0], rss_kib(broker.process.pid))
                time.sleep(0.005)

        sampler = threading.Thread(target=sample_rss, daemon=True)
        sampler.start()
        flood.setblocking(False)
        sent, deadline = 0, time.monotonic() + 3
        while sent < len(pipeline) and time.monotonic() < deadline:
            try:
                sent += flood.send(pipeline[sent:])
            except BlockingIOError:
                time.sleep(0.01)
        started = time.monotonic()
        assert other.ping() is True
        ping_s = time.monotonic() - started
        time.sleep(0.5)
        sampling.set()
        sampler.join(timeout=WAIT)
        grown = peak[0] - before
        assert grown < 64 * 1024, f"the broker grew by {grown} KiB"
        assert ping_s < 1.0, f"another client's PING took {ping_s:.2f} s"
        flood.setblocking(True)
        flood.settimeout(WAIT)
        # Then the rest, read as it is answered.
        remaining = pipeline[sent:]
        writer = threading.Thread(target=flood.sendall, args=(remaining,), daemon=True)
        writer.start()
        reader = flood.makefile("rb")
        for _ in range(client_lists):
            assert read_resp_frame(reader).count(b"\n") >= len(named)
        for _ in range(numpat):
            assert reader.readline() == b":0\r\n"
        for _ in range(infos):
            assert b"redis_version" in read_resp_frame(reader)
        writer.join(timeout=WAIT)
    for sock in named:
        sock.close()


def test_client_kill_answers_as_redis_7_2(resp, protocol):
    """Both forms, every filter, across the broker's two shards: the filter form counts the
    clients closed (0 for none), the address form answers OK or "No such client"."""
    with client(resp, protocol) as admin, client(resp, protocol) as plain, \
            client(resp, protocol) as subscribed_client:
        pubsub = subscribed_client.pubsub()
        channels = [unique("kill.c%d" % index) for index in range(4)]
        pubsub.subscribe(*channels)
        for _ in channels:
            assert next_message(pubsub)["type"] == "subscribe"
        assert admin.client_kill_filter(_id=999_999_999) == 0
        assert admin.execute_command("CLIENT", "KILL", "ADDR", "1.2.3.4:5") == 0
        assert admin.execute_command("CLIENT", "KILL", "TYPE", "master") == 0
        assert admin.execute_command("CLIENT", "KILL", "USER", "default", "ID", "999999") == 0
        for args, text in [
            (("ID", "-1"), "client-id should be greater than 0"),
            (("ID", "x"), "client-id should be greater than 0"),
            (("TYPE", "robot"), "Unknown client type 'robot'"),
            (("USER", "bob"), "No such user 'bob'"),
            (("ID", "1", "SKIPME"), "syntax error"),
            (("1.2.3.4:5",), "No such client"),
        ]:
            with pytest.raises(redis.ResponseError, match=text):
                admin.execute_command("CLIENT", "KILL", *args)
        # TYPE pubsub closes the subscriber (wherever its shard), and only it.
        assert admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub") == 1
        assert plain.ping() is True
        # By id, and by address (the old form), from a client on either shard.
        victim = client(resp, protocol)
        victim_id = victim.client_id()
        # LADDR is the address the client connected to.
        laddr = "%s:%d" % resp
        assert admin.execute_command("CLIENT", "KILL", "LADDR", "127.0.0.1:1", "ID", victim_id) == 0
        assert admin.execute_command("CLIENT", "KILL", "LADDR", laddr, "ID", victim_id) == 1
        deadline = time.monotonic() + WAIT
        while any(line["id"] == str(victim_id) for line in admin.client_list()):
            assert time.monotonic() < deadline, "the killed client is still listed"
            time.sleep(0.01)
        victim.close()
        addr = next(line["addr"] for line in admin.client_list() if line["id"] == str(plain.client_id()))
        assert admin.execute_command("CLIENT", "KILL", addr) in (b"OK", "OK", True)
        # Nothing to flush, but Redis's arguments are checked as Redis checks them.
        assert admin.execute_command("FLUSHDB", "ASYNC") in (b"OK", "OK", True)
        with pytest.raises(redis.ResponseError, match="syntax error"):
            admin.execute_command("FLUSHALL", "x")
        # SKIPME no: the asker may close itself, after its answer.
        own = admin.client_id()
        assert admin.execute_command("CLIENT", "KILL", "ID", str(own), "SKIPME", "no") == 1
        pubsub.close()


def test_nothing_follows_quits_ok_while_confirmations_wait(resp):
    """Messages keep coming for a subscribed channel while a SUBSCRIBE to channels owned by
    other shards waits for its confirmations, then QUIT: its `+OK` is the last frame, as in
    Redis (messages lined up behind the waiting replies used to follow it)."""
    busy = unique("quit.busy")
    with publishing_flood(resp, [busy]):
        for trial in range(10):
            with socket.create_connection(resp, timeout=WAIT) as sock:
                reader = sock.makefile("rb")
                sock.sendall(b"SUBSCRIBE %s\r\n" % busy.encode())
                assert read_resp_frame(reader)[0] == b"subscribe"
                time.sleep(0.05)
                others = [unique("quit.q%d.%d" % (trial, k)).encode() for k in range(30)]
                sock.sendall(b"SUBSCRIBE " + b" ".join(others) + b"\r\nQUIT\r\n")
                frames = []
                while (frame := read_resp_frame(reader)) != b"+OK":
                    frames.append(frame)
                assert sum(frame[0] == b"subscribe" for frame in frames) == len(others)
                assert sock.recv(1 << 16) == b"", "frames after QUIT's +OK"


def test_a_message_owed_before_quit_comes_before_its_ok(resp):
    """A RESP3 client subscribes, publishes to the channel (owned, for some of the names, by
    the other shard, so replies wait) and quits in one write: its own message arrives, and
    `+OK` is the last frame."""
    for trial in range(20):
        channel = unique("own.q%d" % trial).encode()
        with socket.create_connection(resp, timeout=WAIT) as sock:
            reader = sock.makefile("rb")
            sock.sendall(b"HELLO 3\r\n")
            assert reader.readline().startswith(b"%")  # the HELLO map
            for _ in range(14):  # its seven pairs
                read_resp_frame_3(reader)
            sock.sendall(b"SUBSCRIBE %s\r\nPUBLISH %s hi\r\nQUIT\r\n" % (channel, channel))
            frames = []
            while (frame := read_resp_frame_3(reader)) != b"+OK":
                frames.append(frame)
            assert [b"message", channel, b"hi"] in frames, frames
            assert sock.recv(1 << 16) == b""


def read_resp_frame_3(reader):
    """One RESP3 frame (pushes and maps as lists), enough for the replies these tests read."""
    line = reader.readline()
    assert line.endswith(b"\r\n"), f"truncated frame {line!r}"
    kind, rest = line[:1], line[1:-2]
    if kind in (b">", b"*"):
        return [read_resp_frame_3(reader) for _ in range(int(rest))]
    if kind == b"%":
        return [read_resp_frame_3(reader) for _ in range(2 * int(rest))]
    if kind in (b"+", b"-"):
        return kind + rest
    if kind == b":":
        return int(rest)
    if kind in (b"$", b"="):
        return reader.read(int(rest) + 2)[:-2]
    raise AssertionError(f"unexpected frame {line!r}")
