"""The dashboard at `GET /`, loaded by a real browser: headless Chromium (`.ci/run` installs
Debian's `chromium`) dumps the DOM after the page has polled the broker a few times.

- the page loads from the binary alone (no external assets) and renders a topic this test
  created, with its message count;
- the publish rate it shows moves once messages flow: one dump with no traffic, one while a
  publisher runs;
- a screenshot is written under `target/dashboard-test/` as a test artefact (not committed).

Chromium runs with a virtual time budget: its timers run ahead of the wall clock, so a few
seconds of the page's polling take a fraction of that. The page measures rates by the
broker's clock (`time_ms` in `/v1/stats`), so they are real rates, but over gaps of a few
milliseconds: only whether they are zero or not is checked.

Skipped only when no Chromium is installed (`shutil.which`); CI installs it.
"""

import html
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from corebus_testing import REPO, fiber_subscribe, http, native_publish, unique

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (CI installs it)")

# Virtual milliseconds the page runs for: three or four polls.
BUDGET_MS = 3500
BROWSER_SECONDS_MAX = 60
ARTEFACTS = REPO / "target" / "dashboard-test"


def chromium(url, *action):
    with tempfile.TemporaryDirectory(prefix="corebus-chromium-") as profile:
        result = subprocess.run(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-dev-shm-usage", f"--user-data-dir={profile}",
             f"--virtual-time-budget={BUDGET_MS}", *action, url],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=BROWSER_SECONDS_MAX,
        )
    assert result.returncode == 0, result.stderr.decode("utf-8", "replace")[-2000:]
    return result.stdout.decode("utf-8")


def messages_of(broker, topic):
    stats = http(broker, "GET", "/v1/stats").json()
    return stats["topics"].get(topic, {}).get("messages", 0)


def eventually(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def dashboard_url(broker):
    host, port = broker.http
    return f"http://{host}:{port}/"


def text_of(dom, element_id):
    match = re.search(rf'id="{element_id}"[^>]*>([^<]*)<', dom)
    assert match, f"no #{element_id} in the page:\n{dom[:3000]}"
    return html.unescape(match.group(1))


def number(text):
    """A number as the page formats it (`12`, `3.5`, `12.3 k`, `1.20 M`)."""
    value, _, unit = text.strip().partition(" ")
    return float(value) * {"": 1, "k": 1e3, "M": 1e6, "G": 1e9}[unit]


def topic_row(dom, topic):
    match = re.search(rf'<tr data-topic="{re.escape(topic)}">(.*?)</tr>', dom)
    assert match, f"topic {topic} is not on the page:\n{dom[:3000]}"
    return [html.unescape(c) for c in re.findall(r"<td[^>]*>([^<]*)</td>", match.group(1))]


def latency_row(dom, name):
    match = re.search(rf'<tr data-latency="{name}">(.*?)</tr>', dom)
    assert match, f"latency {name} is not on the page:\n{dom[:3000]}"
    return [html.unescape(c) for c in re.findall(r"<td[^>]*>([^<]*)</td>", match.group(1))]


def test_the_page_shows_a_topic_and_its_rate_moves_with_traffic(start_broker, corebus_bin):
    broker = start_broker()
    topic = unique("dashboard.orders")
    with broker.fiber() as ws:
        fiber_subscribe(ws, topic)
        for n in range(7):
            native_publish(broker, topic, f"m{n}".encode())
            ws.expect("event")

    quiet = chromium(dashboard_url(broker), "--dump-dom")
    # Each of the 7 deliveries went out in a write of its own: 7 latency samples.
    delivery = latency_row(quiet, "delivery")
    assert number(delivery[1]) >= 7 and delivery[2].endswith("s"), delivery
    assert latency_row(quiet, "ack")[2] == "–"
    assert "latency-chart" in quiet
    assert int(text_of(quiet, "polls")) >= 2, "the page did not poll the broker"
    assert "cannot reach" not in text_of(quiet, "status"), text_of(quiet, "status")
    row = topic_row(quiet, topic)
    assert row[0] == topic and row[2] == "7", row
    assert number(text_of(quiet, "publish-rate")) == 0
    published_before = number(text_of(quiet, "published-total"))

    # A publisher that outlasts the next page load; stopped once the DOM is dumped.
    host, port = broker.native
    publisher = subprocess.Popen(
        [str(corebus_bin), "pub", "--addr", f"{host}:{port}", topic, "x", "--count", "50000000"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        flowing = messages_of(broker, topic) + 1000
        assert eventually(lambda: messages_of(broker, topic) > flowing), "the publisher is stuck"
        # Under virtual time the page's polls are milliseconds apart on the wall clock; on a
        # loaded machine one such gap may see no publish, so a zero is retried a few times.
        for _ in range(3):
            busy = chromium(dashboard_url(broker), "--dump-dom")
            if number(text_of(busy, "publish-rate")) > 0:
                break
        ARTEFACTS.mkdir(parents=True, exist_ok=True)
        screenshot = ARTEFACTS / "dashboard.png"
        chromium(dashboard_url(broker), f"--screenshot={screenshot}", "--window-size=1280,1000")
    finally:
        publisher.kill()
        publisher.wait()
    assert number(text_of(busy, "publish-rate")) > 0, text_of(busy, "publish-rate")
    assert number(text_of(busy, "published-total")) > published_before
    assert number(topic_row(busy, topic)[2]) > 7
    assert screenshot.stat().st_size > 0


def test_the_page_is_self_contained(broker):
    """No external assets: nothing is loaded from anywhere but the broker."""
    page = http(broker, "GET", "/").body.decode("utf-8")
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page), "external asset"
    assert "@import" not in page and "url(" not in page
