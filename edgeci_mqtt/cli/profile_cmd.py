"""``edgeci profile``: measure this device's speeds as a device agent does on boot."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import yaml

from edgeci_mqtt.cli.table import format_table
from edgeci_mqtt.profiling import measure_profile

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "profile",
        help="micro-benchmark this device (about 2 s)",
        description="Run real convolutions, elementwise ops and pools at a few shapes and print the "
        "throughputs the planner uses to price work on this device.",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as device agents use)")
    parser.add_argument("--output", type=Path, help="also write the profile as YAML (for --profile elsewhere)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    profile = measure_profile(args.threads)
    took = time.perf_counter() - started
    print(
        f"profiled in {took:.2f} s with {profile.threads} thread(s); per-op overhead "
        f"{profile.op_overhead_s * 1e6:.1f} us"
    )
    print("\nconvolution GFLOP/s by reduction depth (rows) and output side (columns):")
    rows = [
        [depth, *(f"{r / 1e9:.1f}" for r in rates)]
        for depth, rates in zip(profile.conv_depths, profile.conv_rates, strict=True)
    ]
    print(format_table(["depth", *(str(s) for s in profile.conv_sides)], rows))
    print("\nelementwise GB/s: " + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in profile.rates.items()))
    print(
        "pooling G window-elements/s: "
        + ", ".join(
            f"{kind} " + " ".join(f"{area}:{r / 1e9:.2f}" for area, r in table)
            for kind, table in profile.pool_rates.items()
        )
    )
    if args.output:
        args.output.write_text(yaml.safe_dump(profile.to_dict(), sort_keys=False))
        print(f"\nwritten to {args.output}")
    return 0
