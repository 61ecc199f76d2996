"""Check the emulated cluster itself: CPU quotas and shaped, delayed links (root only).

1. The same convolution loop runs in a cgroup with a quota of 1.0 and of 0.25 CPU for a
   few seconds each; the throughput ratio should be about 4.
2. The device profile (``edgeci profile``) measured in a cgroup of 1.0 and of 0.25 CPU:
   every convolution rate should shrink by the same factor of about 4 (the profile's
   shape must not depend on where short probes fall in the scheduler period).
3. A device on a 20 Mbit/s, 10 ms link sends 1 MB to the broker host through its relay
   and waits for a one-byte acknowledgement; expected about 0.4 s + the round trip.

Writes the measurements into docs/BENCHMARKS.md.

    python -m bench.emulation_check
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.report import machine_line, write_section
from edgeci_mqtt.emulation.network import CgroupRoot, down, up
from edgeci_mqtt.planner.cluster import parse_cluster

PREFIX = "ecchk"
CONV_LOOP = """
import time, torch
torch.set_num_threads(1)
x, w = torch.randn(1, 64, 58, 58), torch.randn(64, 64, 3, 3)
torch.conv2d(x, w)
runs, start = 0, time.perf_counter()
while time.perf_counter() - start < {seconds}:
    torch.conv2d(x, w)
    runs += 1
print(runs / (time.perf_counter() - start))
"""
SINK = """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 5000)); s.listen(1); c, _ = s.accept(); n = 0
while n < {size}:
    n += len(c.recv(1 << 16))
c.sendall(b"k"); c.close()
"""
SEND = """
import socket, time
s = socket.create_connection(("127.0.0.1", 5001)); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
start = time.perf_counter(); s.sendall(b"x" * {size}); s.recv(1); print(time.perf_counter() - start)
"""


def in_cgroup(root: CgroupRoot, share: float, *args: str) -> str:
    """Run ``python args`` in a fresh cgroup with ``share`` CPU; its stdout."""
    root.create(f"{PREFIX}-cpu", share)
    out = subprocess.run(
        root.command(f"{PREFIX}-cpu", sys.executable, *args),
        capture_output=True,
        text=True,
        check=True,
    )
    root.remove(f"{PREFIX}-cpu")
    return out.stdout.strip()


def conv_rate(root: CgroupRoot, share: float, seconds: float) -> float:
    return float(in_cgroup(root, share, "-c", CONV_LOOP.format(seconds=seconds)))


def profile_ratios(root: CgroupRoot) -> list[float]:
    """Per (depth, side) cell: convolution rate at cpu 1.0 over the rate at cpu 0.25."""
    rates = []
    with tempfile.TemporaryDirectory() as tmp:
        for share in (1.0, 0.25):
            out = Path(tmp) / f"{share}.yaml"
            in_cgroup(root, share, "-m", "edgeci_mqtt", "profile", "--output", str(out))
            rates.append(yaml.safe_load(out.read_text())["conv_rates"])
    return [a / b for row_a, row_b in zip(*rates, strict=True) for a, b in zip(row_a, row_b, strict=True)]


def main() -> int:
    down(PREFIX)
    root = CgroupRoot.find()
    full, quarter = conv_rate(root, 1.0, 3.0), conv_rate(root, 0.25, 6.0)
    ratios = sorted(profile_ratios(root))
    spec = parse_cluster(
        {
            "name": "check",
            "broker": {"cpu": 1.0, "bandwidth_mbit": 1000, "latency_ms": 0},
            "devices": [{"name": "d", "cpu": 1.0, "bandwidth_mbit": 20, "latency_ms": 10}],
        }
    )
    cluster = up(spec, PREFIX, net=99)
    size = 1_000_000
    try:
        sink = subprocess.Popen(["ip", "netns", "exec", cluster.hub, sys.executable, "-c", SINK.format(size=size)])
        relay = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                cluster.namespace(0),
                sys.executable,
                "-m",
                "edgeci_mqtt.emulation.relay",
                "--listen",
                "127.0.0.1:5001",
                "--target",
                f"{cluster.hub_address}:5000",
                "--delay-ms",
                "10",
            ]
        )
        time.sleep(1.0)
        sent = subprocess.run(
            ["ip", "netns", "exec", cluster.namespace(0), sys.executable, "-c", SEND.format(size=size)],
            capture_output=True,
            text=True,
            check=True,
        )
        seconds = float(sent.stdout.strip())
        sink.wait(10)
        relay.terminate()
    finally:
        down(PREFIX)
    expected = size * 8 / 20e6
    lines = [
        "## Emulated cluster: does it emulate?",
        "",
        f"`python -m bench.emulation_check` on {machine_line()}, cgroup v{root.version}.",
        "",
        "| check | expected | measured |",
        "|---|---|---|",
        f"| 3x3 conv 64->64 on 56x56, one thread: rate at cpu 1.0 / rate at cpu 0.25 | about 4 | "
        f"{full / quarter:.2f} ({full:.0f} vs {quarter:.0f} convs/s) |",
        f"| device profile at cpu 1.0 / at cpu 0.25, each of its {len(ratios)} convolution rates "
        f"(depth x tile side) | about 4 everywhere | median {statistics.median(ratios):.2f}, "
        f"range {ratios[0]:.2f} - {ratios[-1]:.2f} |",
        f"| 1 MB over a 20 Mbit/s, 10 ms link, until a 1-byte ack returns | {expected:.2f} s + 0.02 s round trip | "
        f"{seconds:.3f} s |",
    ]
    write_section("emulation_check", "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
