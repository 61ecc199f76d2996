"""Write a benchmark's results into its own section of a Markdown file in docs/.

Each benchmark owns the text between ``<!-- bench:NAME -->`` and
``<!-- /bench:NAME -->``, so several benchmarks share docs/BENCHMARKS.md and a re-run
replaces only its own section.
"""

from __future__ import annotations

import platform
import re
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from edgeci_mqtt.cli.common import load_profile
from edgeci_mqtt.core.profile import DeviceProfile
from edgeci_mqtt.profiling import measure_profile

__all__ = [
    "DOCS",
    "MemorySamples",
    "host_profile",
    "machine_line",
    "median_seconds",
    "resident_mb",
    "run_seconds",
    "sampled_rss",
    "write_section",
]

DOCS = Path(__file__).resolve().parent.parent / "docs"


def resident_mb(pid: int, field: str = "VmRSS") -> float:
    """A process's resident memory (``VmRSS``) or its peak so far (``VmHWM``) in MB; 0 once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    line = next((line for line in status.splitlines() if line.startswith(f"{field}:")), None)
    return int(line.split()[1]) / 1024 if line is not None else 0.0  # an exited, unreaped process has none


@dataclass
class MemorySamples:
    before: float
    peak: float


@contextmanager
def sampled_rss(pid: int, every_s: float = 0.02) -> Iterator[MemorySamples]:
    """``pid``'s RSS before the block and its highest sample (every 20 ms) while it runs."""
    samples = MemorySamples(resident_mb(pid), resident_mb(pid))
    done = threading.Event()

    def sample() -> None:
        while not done.wait(every_s):
            samples.peak = max(samples.peak, resident_mb(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield samples
    finally:
        done.set()
        sampler.join()


def run_seconds(fn: Callable[[], object], repeats: int) -> list[float]:
    """Wall times of ``repeats`` runs after one warm-up (allocator, kernel choice)."""
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` runs after one warm-up."""
    return statistics.median(run_seconds(fn, repeats))


def host_profile(path: Path | None) -> DeviceProfile:
    """The host's profile from a file (``edgeci profile --output``), or measured now."""
    return load_profile(path) if path else measure_profile(1)


def machine_line() -> str:
    return (
        f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} torch thread(s)"
    )


def write_section(name: str, markdown: str, path: Path = DOCS / "BENCHMARKS.md") -> None:
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{begin}\n{markdown.strip()}\n{end}"
    text = (
        path.read_text() if path.exists() else "# Benchmarks\n\nEvery figure here was measured by a script in bench/.\n"
    )
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
