"""`corebus inspect` and `corebus top` against a running broker.

- `inspect --json` prints the STATS answer: topics with their owner shard, retained range and
  consumers with their lag; `--topic` adds who receives that topic; the table names them too;
- `top` in a real terminal (tmux: `new-session`, `capture-pane`, `send-keys`) draws its
  full-screen view with the topics and their rates, and `q` ends it;
- `top` with stdout not a terminal prints one block of `key=value` lines per refresh.

Skipped only when tmux is missing (`shutil.which`); `.ci/run` installs it.
"""

import json
import shutil
import subprocess
import time

import pytest

from corebus_testing import CliChild, native_publish, run_cli, unique


def eventually(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def addr(broker):
    host, port = broker.native
    return f"{host}:{port}"


def test_inspect_json_lists_topics_consumers_and_subscribers(broker, corebus_bin):
    topic = unique("watch.inspect")
    for n in range(3):
        native_publish(broker, topic, f"m{n}".encode())
    # A durable consumer without acks that got all three: nothing in flight, no lag.
    consumer = CliChild(corebus_bin, "sub", "--addr", addr(broker), topic, "--all",
                        "--consumer", "audit")
    try:
        for _ in range(3):
            consumer.stdout_line()
        result = run_cli(corebus_bin, "inspect", "--addr", addr(broker), "--json",
                         "--topic", topic)
        assert result.returncode == 0, result.stderr
        stats = json.loads(result.stdout)
        info = stats["topics"][topic]
        assert info["messages"] == 3
        assert (info["retained_first_seq"], info["retained_last_seq"]) == (1, 3)
        (audit,) = info["consumers"]
        assert audit["name"] == "audit" and audit["members"] == 1, audit
        assert (audit["lag"], audit["in_flight"], audit["group"]) == (0, 0, False), audit
        assert stats["topic"] == topic
        (subscriber,) = stats["subscribers"]
        assert subscriber["consumer"] == "audit" and subscriber["protocol"] == "native"
        assert stats["latency"]["delivery"]["count"] >= 1

        table = run_cli(corebus_bin, "inspect", "--addr", addr(broker), "--topic", topic)
        assert table.returncode == 0, table.stderr
        text = table.stdout.decode()
        assert "\nTopics\n" in text and topic in text, text
        assert "\nConsumers\n" in text and "audit" in text, text
        assert f"\nSubscribers of {topic}\n" in text, text
    finally:
        consumer.process.kill()
        consumer.process.wait()


def test_top_without_a_terminal_prints_key_value_blocks(broker, corebus_bin):
    topic = unique("watch.plain")
    native_publish(broker, topic, b"x")
    result = run_cli(corebus_bin, "top", "--addr", addr(broker), "--interval", "200ms",
                     "--count", "2")
    assert result.returncode == 0, result.stderr
    blocks = result.stdout.decode().strip().split("\n\n")
    assert len(blocks) == 2, blocks
    for block in blocks:
        lines = block.splitlines()
        assert lines[0].startswith("top uptime_s="), lines
        assert "delivery_p99_us=" in lines[0], lines
        assert any(line.startswith("shard=0 ") for line in lines), lines
        assert any(line.startswith("shard=1 ") for line in lines), lines


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_top_draws_a_live_view_in_a_terminal_and_q_quits(broker, corebus_bin):
    topic = unique("watch.tty")
    native_publish(broker, topic, b"x")
    session = unique("corebus-top").replace(".", "-")
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "160", "-y", "40",
                    f"{corebus_bin} top --addr {addr(broker)} --interval 200ms; "
                    "echo top-exited=$?; sleep 30"],
                   check=True)
    try:
        def screen():
            return subprocess.run(["tmux", "capture-pane", "-p", "-t", session],
                                  capture_output=True, text=True).stdout

        publisher = CliChild(corebus_bin, "pub", "--addr", addr(broker), topic, "y",
                             "--count", "100000000", "--rate", "2000")
        try:
            assert eventually(lambda: "corebus top" in screen() and topic in screen()), screen()
            assert "Shards" in screen() and "Topics, busiest first" in screen(), screen()
            assert "delivery" in screen(), screen()
            # The topic's rate shows once two answers are apart.
            assert eventually(lambda: any(topic in line and "/s" in line and " 0/s" not in line
                                          for line in screen().splitlines())), screen()
        finally:
            publisher.process.kill()
            publisher.process.wait()
        subprocess.run(["tmux", "send-keys", "-t", session, "q"], check=True)
        assert eventually(lambda: "top-exited=0" in screen()), screen()
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
