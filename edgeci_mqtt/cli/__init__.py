"""The ``edgeci`` command: one subcommand per module, each with its own ``--help``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from edgeci_mqtt import __version__
from edgeci_mqtt.cli import (
    broker_cmd,
    cluster_cmd,
    demo_cmd,
    device_cmd,
    infer_cmd,
    models_cmd,
    orchestrator_cmd,
    plan_cmd,
    profile_cmd,
    provision_cmd,
    simulate_cmd,
    watch_cmd,
)
from edgeci_mqtt.errors import EdgeCIError
from edgeci_mqtt.text import SafeFormatter

__all__ = ["build_parser", "main"]

_COMMANDS = (
    demo_cmd,
    models_cmd,
    infer_cmd,
    profile_cmd,
    plan_cmd,
    simulate_cmd,
    broker_cmd,
    provision_cmd,
    device_cmd,
    orchestrator_cmd,
    watch_cmd,
    cluster_cmd,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeci",
        description="Distributed CNN inference on a cluster of edge devices over MQTT (EdgeCI).",
    )
    parser.add_argument("--version", action="version", version=f"edgeci-mqtt {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in _COMMANDS:
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(SafeFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, handlers=[handler])
    try:
        return int(args.run(args))
    except EdgeCIError as exc:
        print(f"edgeci {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"edgeci {args.command}: interrupted", file=sys.stderr)
        return 130
