"""Arguments and helpers shared by several subcommands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from edgeci_mqtt.core.profile import DeviceProfile
from edgeci_mqtt.errors import EdgeCIError
from edgeci_mqtt.models import MODEL_NAMES
from edgeci_mqtt.profiling import measure_profile

__all__ = ["add_host_profile", "add_model", "host_profile", "load_profile"]


def add_model(parser: argparse.ArgumentParser, default: str | None = "vgg16") -> None:
    parser.add_argument("--model", choices=MODEL_NAMES, default=default, required=default is None)
    parser.add_argument("--size", type=int, default=224, help="input height and width (default 224)")


def add_host_profile(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--profile",
        type=Path,
        help="host profile YAML from 'edgeci profile --output' (default: measure this machine, ~2 s); "
        "each device runs at its cluster 'cpu' share of it",
    )


def load_profile(path: Path) -> DeviceProfile:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise EdgeCIError(f"cannot read profile {path}: {exc}".splitlines()[0]) from exc
    if not isinstance(data, dict):
        raise EdgeCIError(f"{path} does not hold a device profile")
    return DeviceProfile.from_dict(data)


def host_profile(args: argparse.Namespace) -> DeviceProfile:
    if args.profile is not None:
        return load_profile(args.profile)
    print("profiling this machine (one thread) ...", file=sys.stderr, flush=True)
    return measure_profile(threads=1)
