"""``edgeci device``: the agent a device runs on boot."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from edgeci_mqtt.cli.runtime_args import add_broker, broker_address, broker_bus
from edgeci_mqtt.core.link import Medium
from edgeci_mqtt.device.agent import DeviceAgent, inbox_limits
from edgeci_mqtt.device.heap import keep_heap_small, release_heap
from edgeci_mqtt.errors import EdgeCIError, WireError
from edgeci_mqtt.models import HAND_CUT, MODEL_NAMES
from edgeci_mqtt.models.held import ModelStore, model_files, parse_model_specs
from edgeci_mqtt.models.stage_weights import WeightCache
from edgeci_mqtt.profiling import measure_profile
from edgeci_mqtt.wire.topics import check_segment

__all__ = ["held_models", "register", "run", "stop_on_signals"]

log = logging.getLogger("edgeci.device")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "device",
        help="run a device agent",
        description="Profile this device, announce it on the broker, bid in auctions and compute tile tasks "
        "until SIGTERM/SIGINT (then announce it offline). Options override the --config YAML file.",
    )
    add_broker(parser, required=False)
    parser.add_argument("--id", help="device id: its broker user name (default: the user of --credentials)")
    parser.add_argument(
        "--config",
        type=Path,
        help="YAML with any of: id, broker, credentials, models, threads, seed, fetch_weights, cache_dir, "
        "tail_memory_mb, calibrate, medium",
    )
    parser.add_argument(
        "--model",
        action="append",
        help=f"model to hold, NAME or NAME=weights.pth (repeatable, as for the orchestrator; default: "
        f"{', '.join(HAND_CUT)}; any of {', '.join(MODEL_NAMES)})",
    )
    parser.add_argument("--models", help="the same, comma-separated (NAME,NAME=weights.pth,...)")
    parser.add_argument(
        "--model-file",
        action="append",
        type=Path,
        help="an ONNX file to serve under its stem's name (repeatable; every orchestrator and device "
        "serving it has the same file); alone, no built-in model is held",
    )
    parser.add_argument("--threads", type=int, help="torch threads (default 1)")
    parser.add_argument("--seed", type=int, help="seed of random weights (default 0)")
    parser.add_argument(
        "--fetch-weights",
        action="store_true",
        default=None,
        help="hold no weights: fetch each stage's weights from the orchestrator over the broker",
    )
    parser.add_argument("--cache-dir", type=Path, help="where fetched weights are cached (default ~/.cache/edgeci)")
    parser.add_argument(
        "--tail-memory-mb",
        type=float,
        help="MB of fully connected weights this device may be asked to use for a model's tail "
        "(announced in its birth; default: half the memory available once its models are built; "
        "0: never run a tail)",
    )
    parser.add_argument(
        "--calibrate",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="correct the announced speed by the time this device's work really takes (default: on)",
    )
    parser.add_argument(
        "--medium",
        help="NAME:MBIT: the shared medium this device sits behind (one Wi-Fi access point, one uplink) and "
        "its bandwidth; devices behind it name it alike, so plans and bids price each device's share of it",
    )
    parser.set_defaults(run=run)


def merged(args: argparse.Namespace, keys: tuple[str, ...]) -> dict[str, Any]:
    """Command-line options over the --config file over defaults."""
    config: dict[str, Any] = {}
    if args.config is not None:
        try:
            loaded = yaml.safe_load(args.config.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise EdgeCIError(f"cannot read {args.config}: {exc}".splitlines()[0]) from exc
        if not isinstance(loaded, dict):
            raise EdgeCIError(f"{args.config} must hold a mapping")
        unknown = sorted(set(loaded) - set(keys))
        if unknown:
            raise EdgeCIError(f"{args.config}: unknown key(s) {', '.join(unknown)}")
        config = loaded
    for key in keys:
        value = getattr(args, key, None)
        if value is not None:
            config[key] = value
    return config


def stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def run(args: argparse.Namespace) -> int:
    keys = (
        "id",
        "broker",
        "credentials",
        "models",
        "threads",
        "seed",
        "fetch_weights",
        "cache_dir",
        "tail_memory_mb",
        "calibrate",
        "medium",
    )
    config = merged(args, keys)
    if not config.get("broker"):
        raise EdgeCIError("a device needs --broker (or broker in --config)")
    args.broker = config["broker"]
    args.credentials = Path(config["credentials"]) if config.get("credentials") else None
    address = broker_address(args, config.get("id"))
    if config.get("id") and config["id"] != address.username:
        raise EdgeCIError(f"device id {config['id']!r} is not its broker user {address.username!r}")
    listed = args.models if args.model else config.get("models")  # the command line wins
    files = model_files(args.model_file)
    specs = [] if files and not args.model and not listed else held_models(args.model, listed)
    fetch = bool(config.get("fetch_weights", False))
    memory = config.get("tail_memory_mb")
    keep_heap_small()  # before torch starts its threads and paho its own
    device, threads = str(address.username), int(config.get("threads", 1))
    torch.set_num_threads(threads)
    log.info("%s: profiling (%d thread(s))", device, threads)
    profile = measure_profile(threads)  # before the models: their memory and its buffers never add up
    release_heap()
    # the tail's weights are made only when a part of it is given to this device
    store = ModelStore(parse_model_specs(specs), int(config.get("seed", 0)), fetch=fetch, tail=False, files=files)
    default_cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgeci" / "weights"
    cache = WeightCache(Path(config.get("cache_dir") or default_cache)) if fetch else None
    bus = broker_bus(args, address=address, in_role=True, queued_limits=inbox_limits(device))
    release_heap()
    tail_bytes = default_tail_memory() if memory is None else int(float(memory) * 1e6)
    if tail_bytes is not None:
        log.info("%s: up to %.0f MB of tail weights may be given to it", device, tail_bytes / 1e6)
    calibrate = bool(config.get("calibrate", True))
    medium = parse_medium(config["medium"]) if config.get("medium") else None
    agent = DeviceAgent(
        device, bus, store, profile, threads, cache, tail_memory_bytes=tail_bytes, calibrate=calibrate, medium=medium
    )
    agent.run(stop_on_signals())
    return 0


def parse_medium(text: object) -> Medium:
    """``NAME:MBIT`` (command line or config) as a :class:`Medium`, or a clear error."""
    name, _, mbit = str(text).rpartition(":")
    try:
        bandwidth = float(mbit)
        if not 0 < bandwidth <= 1e6:
            raise ValueError(mbit)
        return Medium(check_segment(name, "medium name"), bandwidth)
    except (ValueError, WireError) as exc:
        raise EdgeCIError(f"medium {text!r}: expected NAME:MBIT with 0 < MBIT <= 1e6 ({exc})") from None


def held_models(
    repeated: list[str] | None, listed: str | list[str] | None, default: Sequence[str] = HAND_CUT
) -> list[str]:
    """The models a device holds: every ``--model``, plus ``--models`` or the config's
    ``models`` (comma-separated or a list); ``default`` when none is named. ``--model`` is
    repeatable as the orchestrator's is; ``--models a,b`` keeps working."""
    specs = list(repeated or [])
    if listed:
        specs += [m.strip() for m in listed.split(",")] if isinstance(listed, str) else [str(m) for m in listed]
    return list(dict.fromkeys(specs)) or list(default)


def default_tail_memory(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """Half the memory this machine has available now (its models built): what a device
    offers for fully connected weights unless told. Without a limit, a board would be
    handed VGG-16's whole 411 MB first classifier layer whatever its RAM (a Raspberry Pi 3
    has 1 GB); without any, it would never help with a tail. None where the kernel does
    not say (no limit)."""
    try:
        fields = dict(line.split(":", 1) for line in meminfo.read_text().splitlines() if ":" in line)
        return int(fields["MemAvailable"].split()[0]) * 1024 // 2
    except (OSError, KeyError, ValueError, IndexError):
        return None
