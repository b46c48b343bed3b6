"""What the tools that start their own broker share: building it, starting it on loopback ports
it picks itself (read back from its ready line), reading its memory, and stopping it.

Imported by `tools/scaling` and `tools/soak` (they put this folder on `sys.path`).
"""

import os
import select
import signal
import subprocess
import sys
from pathlib import Path

READY_TIMEOUT_S = 30

ROOT = Path(__file__).resolve().parent.parent


def log(tool, *parts):
    print(f"{tool}:", *parts, file=sys.stderr, flush=True)


def build(profile):
    """Builds corebus with cargo profile `profile`; returns the binary's path."""
    subprocess.run(["cargo", "build", "--profile", profile, "--quiet"], cwd=ROOT, check=True)
    target_dir = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    # Cargo writes the `dev` profile to `debug`.
    return target_dir / ("debug" if profile == "dev" else profile) / "corebus"


def start_broker(binary, flags, log_file):
    """Starts `corebus serve` with `flags` (listeners on 127.0.0.1 port 0 unless the flags say
    otherwise); returns the process and its ready line's fields (`native=ADDR`, ...)."""
    command = [str(binary), "serve", "--listen", "127.0.0.1:0", "--log-level", "warn", *flags]
    # Not the caller's COREBUS_* settings: the tool's flags are the whole configuration.
    env = {k: v for k, v in os.environ.items() if not k.startswith("COREBUS_")}
    # The log goes to a file: a pipe nobody reads could fill and stall the broker.
    with log_file.open("w") as log:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True,
                                   start_new_session=True, env=env)
    # A broker that never gets ready must not hang the tool.
    ready, _, _ = select.select([process.stdout], [], [], READY_TIMEOUT_S)
    line = process.stdout.readline() if ready else ""
    if not line.startswith("corebus ready"):
        stop(process)
        raise RuntimeError(f"the broker did not start: {log_file.read_text()[-2000:]}")
    fields = dict(part.split("=", 1) for part in line.split()[2:])
    return process, fields


def stop(process, timeout_s=10):
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def vm_rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS line")


def cpu_list(cpus):
    """`[0, 1, 2]` as the `--cores` syntax, `0,1,2`."""
    return ",".join(str(cpu) for cpu in cpus)
