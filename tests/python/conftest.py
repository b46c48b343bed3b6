"""Fixtures that run the real `corebus` binary for the Python client tests.

The broker is started exactly as a user would start it:

    corebus serve --shards 2 --no-pin --listen 127.0.0.1:0 --http-listen 127.0.0.1:0

and announces its bound addresses on its first stdout line,
`corebus ready native=127.0.0.1:P http=127.0.0.1:P [resp=127.0.0.1:P]`. It is stopped with
SIGTERM and must exit 0 within a bound; whatever happens, it is killed at the end.

- `broker` (module scope): one broker shared by a test module (tests use unique topic names).
- `start_broker` (function scope): a factory for fresh brokers with extra flags
  (`start_broker("--auto-create-topics", "false")`), each stopped after the test.

The binary is `$COREBUS_BIN`, else `target/release/corebus` (build it with
`cargo build --release`). A missing binary fails the tests loudly: nothing is skipped for it.
"""

import signal

import pytest

from corebus_testing import Broker, binary_path

# Every receive already has its own timeout; this bounds a whole test whatever happens.
TEST_SECONDS_MAX = 180


@pytest.fixture(autouse=True)
def hard_timeout():
    def expired(signum, frame):
        raise TimeoutError(f"test ran past {TEST_SECONDS_MAX} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(TEST_SECONDS_MAX)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="session")
def corebus_bin():
    path = binary_path()
    if not path.is_file():
        pytest.fail(
            f"no corebus binary at {path}: run `cargo build --release` or set COREBUS_BIN",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="module")
def broker(corebus_bin):
    """A broker for the whole module; stopped with SIGTERM (exit 0 expected) afterwards."""
    running = Broker.start(corebus_bin)
    try:
        yield running
    finally:
        code = running.stop()
    assert code == 0, f"broker exited with {code} after SIGTERM; stderr:\n{running.stderr_text()}"


@pytest.fixture
def start_broker(corebus_bin):
    """Starts fresh brokers with extra flags; each is stopped (exit 0 expected) after the test."""
    started = []

    def start(*flags):
        running = Broker.start(corebus_bin, flags)
        started.append(running)
        return running

    yield start
    failures = []
    for running in started:
        if running.stopped:
            continue
        code = running.stop()
        if code != 0:
            failures.append(f"{running.command}: exit {code}; stderr:\n{running.stderr_text()}")
    assert not failures, "\n".join(failures)
