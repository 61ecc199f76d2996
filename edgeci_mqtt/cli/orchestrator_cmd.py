"""``edgeci orchestrator``: the auctioneer that plans, scatters, gathers and answers."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from edgeci_mqtt.cli.device_cmd import stop_on_signals
from edgeci_mqtt.cli.runtime_args import add_broker, broker_address, broker_bus
from edgeci_mqtt.core.link import Link
from edgeci_mqtt.models import HAND_CUT, MODEL_NAMES
from edgeci_mqtt.models.held import ModelStore, model_files, parse_model_specs
from edgeci_mqtt.orchestrator.service import IN_FLIGHT, PER_CLIENT, Orchestrator
from edgeci_mqtt.planner.strategy import STRATEGY_NAMES, Strategy
from edgeci_mqtt.profiling import measure_profile

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "orchestrator",
        help="run an orchestrator (auctioneer)",
        description="Keep the live device table, plan with a strategy, run AWAS auctions, scatter tiles, "
        "gather and stitch results, run the tail and answer inference requests.",
    )
    add_broker(parser)
    parser.add_argument(
        "--model",
        action="append",
        help=f"model to serve, NAME or NAME=weights.pth (repeatable; default: {', '.join(HAND_CUT)}; "
        f"any of {', '.join(MODEL_NAMES)})",
    )
    parser.add_argument("--weights", type=Path, help="weights file for a single --model")
    parser.add_argument(
        "--model-file",
        action="append",
        type=Path,
        help="an ONNX file to serve under its stem's name (repeatable; the devices serving it need the "
        "same file); alone, no built-in model is served",
    )
    parser.add_argument(
        "--strategy", choices=list(STRATEGY_NAMES), default="flow", help="default strategy (a request may name another)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of random weights (must match the devices')")
    parser.add_argument("--auction-ms", type=float, default=500.0, help="bid deadline of an auction round")
    parser.add_argument("--broker-mbit", type=float, default=1000.0, help="bandwidth of the broker host's link")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--in-flight", type=int, default=IN_FLIGHT, help=f"requests served at once (default {IN_FLIGHT})"
    )
    parser.add_argument(
        "--per-client",
        type=int,
        default=PER_CLIENT,
        help=f"requests one client may have waiting; more are refused as busy (default {PER_CLIENT})",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    files = model_files(args.model_file)
    specs = args.model or ([] if files else list(HAND_CUT))
    if args.weights is not None and len(specs) == 1 and "=" not in specs[0]:
        specs = [f"{specs[0]}={args.weights}"]
    store = ModelStore(parse_model_specs(specs), args.seed, files=files)
    address = broker_address(args)  # its user name is its id
    torch.set_num_threads(args.threads)
    orchestrator = Orchestrator(
        str(address.username),
        broker_bus(args, address=address, in_role=True),
        store,
        measure_profile(args.threads),
        Strategy.parse(args.strategy),
        Link(args.broker_mbit, 0.1),
        args.auction_ms / 1e3,
        in_flight=args.in_flight,
        per_client=args.per_client,
    )
    orchestrator.run(stop_on_signals())
    return 0
