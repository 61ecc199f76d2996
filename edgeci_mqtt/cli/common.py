"""Arguments and helpers shared by several subcommands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from edgeci_mqtt.core.profile import DeviceProfile
from edgeci_mqtt.errors import EdgeCIError
from edgeci_mqtt.graph.stage import GraphStage
from edgeci_mqtt.models import MODEL_NAMES, StageChain, load_chain, model_size, skeleton_chain
from edgeci_mqtt.models.imported import DEFAULT_SIZE, import_file, import_module
from edgeci_mqtt.profiling import measure_profile

__all__ = ["add_host_profile", "add_model", "add_model_import", "host_profile", "load_profile", "model_chain"]


def add_model(parser: argparse.ArgumentParser, default: str | None = "vgg16") -> None:
    parser.add_argument("--model", choices=MODEL_NAMES, default=default)
    parser.add_argument(
        "--size", type=int, help="input height and width (default 224, or an imported model's own size)"
    )
    add_model_import(parser)


def add_model_import(parser: argparse.ArgumentParser) -> None:
    """``--model-file`` and ``--model-module``: a model of one's own instead of a built-in one."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--model-file", type=Path, help="an ONNX file to split instead of a built-in model")
    group.add_argument(
        "--model-module", help="a PyTorch module to trace and split, as package.module:factory (no arguments)"
    )


def model_chain(args: argparse.Namespace, skeleton: bool = False) -> tuple[str, StageChain, int]:
    """The model the arguments name (built-in, ``--model-file`` or ``--model-module``), its
    chain and the input side to run it at. ``skeleton``: a built-in model's geometry only."""
    if args.model_file is not None:
        chain = import_file(args.model_file, args.size)
    elif args.model_module is not None:
        chain = import_module(args.model_module, args.size)
    else:
        chain = skeleton_chain(args.model, args.size) if skeleton else load_chain(args.model, size=args.size)
        return args.model, chain, args.size or model_size(args.model)
    fixed = chain.stages[0]
    side = args.size or (fixed.in_shape.height if isinstance(fixed, GraphStage) else DEFAULT_SIZE)
    return chain.model_name, chain, side


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
