"""Helpers for the real-client tests: a running broker, WebSocket clients of both JSON
dialects, raw HTTP and WebSocket sockets for byte-level exchanges, a minimal native-protocol
publisher, and the CLI.

Every wait here is bounded: each receive has a timeout (`WAIT`, a few seconds), so a test
that expects something the broker never sends fails instead of hanging.
"""

import base64
import datetime
import hashlib
import json
import os
import queue
import re
import signal
import socket
import struct
import subprocess
import threading
import time
import uuid
from pathlib import Path

import websockets.exceptions
import websockets.sync.client

REPO = Path(__file__).resolve().parents[2]
# Any single expected event: a line, a message, a response.
WAIT = 5.0
# How long to listen to make sure that nothing (more) arrives.
QUIET = 0.5
# A broker's start-up and its exit after SIGTERM.
START_WAIT = 15.0
STOP_WAIT = 15.0

RFC3339_MILLIS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
DERIVED_ID = re.compile(r"^[0-9a-f]{16}-(\d+)$")


def binary_path():
    configured = os.environ.get("COREBUS_BIN")
    return Path(configured) if configured else REPO / "target" / "release" / "corebus"


def unique(prefix):
    """A topic name of its own for one test: `prefix.<12 hex digits>`."""
    return f"{prefix}.{uuid.uuid4().hex[:12]}"


def clean_env():
    """The environment without `COREBUS_*` (flags alone configure the brokers under test)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("COREBUS_")}


def assert_timestamp(text):
    assert isinstance(text, str) and RFC3339_MILLIS.match(text), f"not RFC 3339 UTC: {text!r}"
    when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    now = datetime.datetime.now(datetime.timezone.utc)
    assert abs((now - when).total_seconds()) < 300, f"timestamp {text} is far from now ({now})"


class LineReader:
    """Reads a pipe line by line on its own thread, so a chatty child never blocks and every
    read has a timeout."""

    def __init__(self, pipe, name):
        self.lines = queue.Queue()
        self.log = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, args=(pipe,), name=name, daemon=True)
        self._thread.start()

    def _run(self, pipe):
        for raw in iter(pipe.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            with self._lock:
                self.log.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def next_line(self, timeout=WAIT):
        """The next line, or None at EOF; raises `queue.Empty` after `timeout`."""
        return self.lines.get(timeout=timeout)

    def text(self):
        with self._lock:
            return "\n".join(self.log)


class Broker:
    """A `corebus serve` child process on ephemeral loopback ports."""

    BASE_FLAGS = (
        "--shards", "2", "--no-pin",
        "--listen", "127.0.0.1:0",
        "--http-listen", "127.0.0.1:0",
        "--resp-listen", "127.0.0.1:0",
    )

    def __init__(self, process, command):
        self.process = process
        self.command = command
        self.addresses = {}
        self.stopped = False
        self.stdout = LineReader(process.stdout, "broker-stdout")
        self.stderr = LineReader(process.stderr, "broker-stderr")

    @classmethod
    def start(cls, binary, extra_flags=()):
        extra_flags = [str(flag) for flag in extra_flags]
        base_flags = list(cls.BASE_FLAGS)
        if "--shards" in extra_flags:  # a test's own shard count replaces the base's
            at = base_flags.index("--shards")
            del base_flags[at:at + 2]
        command = [str(binary), "serve", *base_flags, *extra_flags]
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=clean_env(),
        )
        broker = cls(process, " ".join(command))
        try:
            broker._await_ready()
        except BaseException:
            broker.kill()
            raise
        return broker

    def _await_ready(self):
        try:
            line = self.stdout.next_line(timeout=START_WAIT)
        except queue.Empty:
            raise AssertionError(
                f"no ready line from `{self.command}` within {START_WAIT}s; stderr:\n"
                f"{self.stderr.text()}"
            ) from None
        if line is None:
            code = self.process.wait(timeout=STOP_WAIT)
            time.sleep(0.1)
            raise AssertionError(
                f"`{self.command}` exited ({code}) without a ready line; stderr:\n"
                f"{self.stderr.text()}"
            )
        assert line.startswith("corebus ready "), f"unexpected first line: {line!r}"
        self.ready_line = line
        for token in line.split()[2:]:
            name, _, address = token.partition("=")
            host, _, port = address.rpartition(":")
            self.addresses[name] = (host, int(port))
        assert "native" in self.addresses, f"no native= in {line!r}"
        assert "http" in self.addresses, (
            f"no http= in the ready line {line!r}: the HTTP port is not serving"
        )

    # Addresses.
    @property
    def native(self):
        return self.addresses["native"]

    @property
    def http(self):
        return self.addresses["http"]

    @property
    def resp(self):
        return self.addresses.get("resp")

    def native_addr(self):
        host, port = self.native
        return f"{host}:{port}"

    def ws_url(self, path):
        host, port = self.http
        return f"ws://{host}:{port}{path}"

    def fiber(self, **kwargs):
        return WsClient.connect(self.ws_url("/v1/ws"), **kwargs)

    def fastapi(self, **kwargs):
        return FastApiClient.connect(self.ws_url("/ws"), **kwargs)

    # Lifecycle.
    def signal(self, signum=signal.SIGTERM):
        self.process.send_signal(signum)

    def wait(self, timeout=STOP_WAIT):
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"broker did not exit within {timeout}s of SIGTERM; stderr:\n{self.stderr_text()}"
            ) from None
        self.stopped = True
        return code

    def stop(self):
        """SIGTERM, then the exit code (killed if it does not exit in time)."""
        if self.stopped:
            return self.process.returncode
        if self.process.poll() is None:
            self.signal(signal.SIGTERM)
        return self.wait()

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=STOP_WAIT)
        self.stopped = True

    def stderr_text(self):
        return self.stderr.text()


# --------------------------------------------------------------------------------------------
# WebSocket clients (the `websockets` library, sync API).


class WsClient:
    """A JSON WebSocket client: every receive has a timeout."""

    def __init__(self, connection):
        self.ws = connection

    @classmethod
    def connect(cls, url, **kwargs):
        options = dict(open_timeout=WAIT, close_timeout=2, max_size=64 * 1024 * 1024, proxy=None)
        options.update(kwargs)
        connection = websockets.sync.client.connect(url, **options)
        # Entering it marks it as used the documented way (websockets >= 17.1 warns otherwise);
        # `close()` is the exit.
        return cls(connection.__enter__())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        try:
            self.ws.close()
        except Exception:
            pass

    def send(self, message):
        self.ws.send(json.dumps(message))

    def send_text(self, text):
        self.ws.send(text)

    def recv_text(self, timeout=WAIT):
        try:
            data = self.ws.recv(timeout=timeout)
        except TimeoutError:
            raise AssertionError(f"no message within {timeout}s") from None
        assert isinstance(data, str), f"expected a text frame, got binary {data!r}"
        return data

    def recv(self, timeout=WAIT):
        return json.loads(self.recv_text(timeout))

    def expect(self, kind, timeout=WAIT):
        message = self.recv(timeout)
        assert message.get("type") == kind, f"expected a {kind!r} message, got {message}"
        return message

    def expect_silence(self, duration=QUIET):
        try:
            data = self.ws.recv(timeout=duration)
        except TimeoutError:
            return
        raise AssertionError(f"expected nothing, got {data!r}")

    def collect(self, count, timeout=WAIT):
        """The next `count` messages, each within `timeout` of the previous one."""
        return [self.recv(timeout) for _ in range(count)]

    def expect_closed(self, timeout=WAIT):
        """Reads until the broker closes; returns (close code, messages read before it)."""
        seen = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"connection still open after {timeout}s; read {seen[-3:]}")
            try:
                data = self.ws.recv(timeout=left)
            except TimeoutError:
                continue
            except websockets.exceptions.ConnectionClosed as closed:
                code = closed.rcvd.code if closed.rcvd is not None else None
                return code, seen
            seen.append(json.loads(data) if isinstance(data, str) else data)


class FastApiClient(WsClient):
    """A `/ws` client; the `info` message sent on connect is read and kept."""

    @classmethod
    def connect(cls, url, **kwargs):
        client = super().connect(url, **kwargs)
        client.info = client.expect("info")
        prefix = "Connected with client_id: "
        assert client.info["message"].startswith(prefix), client.info
        client.client_id = client.info["message"][len(prefix):]
        return client


def fiber_subscribe(ws, topic, request_id=None, **extras):
    """Subscribes on `/v1/ws` and returns the ack (events that come first are an error)."""
    message = {"type": "subscribe", "topic": topic, **extras}
    request_id = request_id or f"sub-{uuid.uuid4().hex[:8]}"
    message["request_id"] = request_id
    ws.send(message)
    ack = ws.expect("ack")
    assert ack["request_id"] == request_id and ack["topic"] == topic and ack["status"] == "ok", ack
    return ack


def fiber_publish(ws, topic, payload, message_id=None, request_id=None):
    """Publishes on `/v1/ws` and waits for the ack."""
    message = {"payload": payload}
    if message_id is not None:
        message["id"] = message_id
    request_id = request_id or f"pub-{uuid.uuid4().hex[:8]}"
    ws.send({"type": "publish", "topic": topic, "message": message, "request_id": request_id})
    ack = ws.expect("ack")
    assert ack["request_id"] == request_id and ack["topic"] == topic and ack["status"] == "ok", ack
    return ack


def fastapi_subscribe(ws, topic, last_n=None):
    message = {"type": "subscribe", "topic": topic}
    if last_n is not None:
        message["last_n"] = last_n
    ws.send(message)
    ack = ws.expect("ack")
    assert ack == {
        "type": "ack",
        "request_type": "subscribe",
        "topic": topic,
        "message": f"Subscribed to {topic}",
    }, ack
    return ack


def fastapi_publish(ws, topic, data):
    ws.send({"type": "publish", "topic": topic, "data": data})
    ack = ws.expect("ack")
    assert ack == {
        "type": "ack",
        "request_type": "publish",
        "topic": topic,
        "message": f"Published to {topic}",
    }, ack
    return ack


# --------------------------------------------------------------------------------------------
# HTTP.


class HttpResponse:
    def __init__(self, status, reason, headers, body):
        self.status = status
        self.reason = reason
        self.headers = headers  # lower-case name -> value (last one wins)
        self.body = body

    def header(self, name):
        return self.headers.get(name.lower())

    def json(self):
        assert self.header("content-type") is not None, f"no Content-Type: {self}"
        return json.loads(self.body)

    def __repr__(self):
        return f"<{self.status} {self.reason} {self.headers} {self.body[:200]!r}>"


class RawHttp:
    """One TCP connection speaking HTTP/1.1 by hand (requests as bytes, responses parsed)."""

    def __init__(self, address, timeout=WAIT, rcvbuf=None):
        if rcvbuf is None:
            self.sock = socket.create_connection(address, timeout=timeout)
        else:
            # Set before connecting, so the window the broker sees stays small.
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.sock.settimeout(timeout)
            self.sock.connect(address)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data):
        self.sock.sendall(data)

    def request(self, method, path, body=None, headers=None, version="HTTP/1.1"):
        lines = [f"{method} {path} {version}", "Host: 127.0.0.1"]
        extra = dict(headers or {})
        if body is not None:
            if not isinstance(body, bytes):
                body = json.dumps(body).encode()
                extra.setdefault("Content-Type", "application/json")
            extra.setdefault("Content-Length", str(len(body)))
        lines += [f"{name}: {value}" for name, value in extra.items()]
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b""))
        return self.read_response(head_only=(method == "HEAD"))

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("the broker closed the connection")
        self.buffer += chunk

    def read_response(self, head_only=False):
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        version, status, reason = (status_line.split(" ", 2) + [""])[:3]
        assert version == "HTTP/1.1", f"status line {status_line!r}"
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        status = int(status)
        length = 0 if head_only else int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            self._fill()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return HttpResponse(status, reason, headers, body)

    def closed_by_peer(self, timeout=WAIT):
        """Whether the broker closes the connection (EOF or reset) within `timeout`; bytes
        it sends first are kept in the buffer."""
        self.sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buffer += chunk
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False
        return False


def http(broker, method, path, body=None, headers=None):
    """One request on a fresh connection."""
    with RawHttp(broker.http) as connection:
        return connection.request(method, path, body=body, headers=headers)


def assert_broker_serves(broker):
    """A fresh client still gets an answer: the broker did not stall."""
    response = http(broker, "GET", "/v1/health")
    assert response.status == 200, response


# --------------------------------------------------------------------------------------------
# Raw WebSocket (client side of RFC 6455 by hand, for frames no library sends).


def ws_handshake(connection, path, key=None):
    key = key or base64.b64encode(os.urandom(16)).decode()
    response = connection_request_raw(
        connection,
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode(),
    )
    assert response.status == 101, response
    accept = base64.b64encode(
        hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
    ).decode()
    assert response.header("sec-websocket-accept") == accept, response
    return response


def connection_request_raw(connection, request_bytes):
    connection.send(request_bytes)
    # A 101 has no body: read only the head.
    return connection.read_response(head_only=True)


def ws_frame(opcode, payload, mask=True, fin=True, length=None):
    """A client frame; `length` overrides the announced payload length (to lie about it)."""
    length = len(payload) if length is None else length
    first = (0x80 if fin else 0) | opcode
    mask_bit = 0x80 if mask else 0
    if length < 126:
        header = struct.pack("!BB", first, mask_bit | length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", first, mask_bit | 126, length)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, length)
    if not mask:
        return header + payload
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return header + key + masked


def ws_read_frame(connection):
    """The next server frame as (opcode, payload); server frames are never masked."""
    def need(count):
        while len(connection.buffer) < count:
            connection._fill()

    need(2)
    first, second = connection.buffer[0], connection.buffer[1]
    assert second & 0x80 == 0, "a server frame is masked"
    length, offset = second & 0x7F, 2
    if length == 126:
        need(4)
        length, offset = struct.unpack("!H", connection.buffer[2:4])[0], 4
    elif length == 127:
        need(10)
        length, offset = struct.unpack("!Q", connection.buffer[2:10])[0], 10
    need(offset + length)
    payload = connection.buffer[offset:offset + length]
    connection.buffer = connection.buffer[offset + length:]
    return first & 0x0F, payload


def ws_expect_close(connection, timeout=WAIT):
    """Reads frames until a close frame; returns its code (text frames before it are kept in
    the returned list)."""
    connection.sock.settimeout(timeout)
    seen = []
    while True:
        opcode, payload = ws_read_frame(connection)
        if opcode == 0x8:
            code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
            return code, seen
        seen.append((opcode, payload))


# --------------------------------------------------------------------------------------------
# The native protocol: just enough to publish arbitrary bytes (the CLI takes UTF-8 arguments).


def _native_frame(opcode, request_id, body):
    return struct.pack("!IBBHI", 8 + len(body), opcode, 0, 0, request_id) + body


def _native_read(sock):
    def exactly(count):
        data = b""
        while len(data) < count:
            chunk = sock.recv(count - len(data))
            if not chunk:
                raise EOFError("native connection closed")
            data += chunk
        return data

    length, opcode, _flags, _reserved, frame_id = struct.unpack("!IBBHI", exactly(12))
    return opcode, frame_id, exactly(length - 8)


def native_publish(broker, topic, payload):
    """Publishes `payload` (bytes) over the native protocol (v1) and returns its seq."""
    with socket.create_connection(broker.native, timeout=WAIT) as sock:
        name = b"pytest"
        sock.sendall(_native_frame(0x01, 1, b"CBUS" + struct.pack("!HB", 1, len(name)) + name))
        opcode, frame_id, body = _native_read(sock)
        assert (opcode, frame_id) == (0x80, 1), f"HELLO answered {opcode:#x} {body!r}"
        topic_bytes = topic.encode()
        publish = struct.pack("!B", len(topic_bytes)) + topic_bytes + b"\x00" + payload
        sock.sendall(_native_frame(0x02, 2, publish))
        opcode, frame_id, body = _native_read(sock)
        assert (opcode, frame_id) == (0x80, 2), f"PUBLISH answered {opcode:#x} {body!r}"
        return struct.unpack("!Q", body[:8])[0]


# --------------------------------------------------------------------------------------------
# The CLI.


def run_cli(binary, *args, timeout=WAIT * 2):
    result = subprocess.run(
        [str(binary), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
        env=clean_env(),
    )
    return result


class CliChild:
    """A long-running CLI command (`corebus sub ...`) with its output read line by line."""

    def __init__(self, binary, *args):
        self.process = subprocess.Popen(
            [str(binary), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=clean_env(),
        )
        self.stdout = LineReader(self.process.stdout, "cli-stdout")
        self.stderr = LineReader(self.process.stderr, "cli-stderr")

    def stdout_line(self, timeout=WAIT):
        try:
            line = self.stdout.next_line(timeout)
        except queue.Empty:
            raise AssertionError(
                f"no stdout line within {timeout}s; stderr:\n{self.stderr.text()}"
            ) from None
        assert line is not None, f"stdout closed; stderr:\n{self.stderr.text()}"
        return line

    def await_stderr(self, needle, timeout=WAIT):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise queue.Empty
                line = self.stderr.next_line(left)
            except queue.Empty:
                line = None
                left = 0
            if line is not None and needle in line:
                return line
            if line is None:
                raise AssertionError(
                    f"no stderr line with {needle!r} within {timeout}s (or stderr closed); "
                    f"stderr:\n{self.stderr.text()}"
                )

    def wait(self, timeout=WAIT):
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"CLI did not exit within {timeout}s") from None

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=STOP_WAIT)
