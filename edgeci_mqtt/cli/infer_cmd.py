"""``edgeci infer``: run fused tiles in-process and compare with the whole model."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from edgeci_mqtt.cli.common import add_model_import, model_chain
from edgeci_mqtt.cli.runtime_args import add_broker, broker_bus
from edgeci_mqtt.cli.table import format_table, human_count
from edgeci_mqtt.client import EdgeCIClient
from edgeci_mqtt.core.blocks import TileGrid, balanced_blocks, block_tile_flops, parse_blocks
from edgeci_mqtt.core.chain import whole_map_flops
from edgeci_mqtt.core.fused import run_fused
from edgeci_mqtt.errors import EdgeCIError, GeometryError
from edgeci_mqtt.imaging import SAMPLE_IMAGE, load_input
from edgeci_mqtt.labels import top_k
from edgeci_mqtt.models import MODEL_NAMES, load_chain, model_size
from edgeci_mqtt.models.imported import DEFAULT_SIZE
from edgeci_mqtt.planner.strategy import STRATEGY_NAMES

__all__ = ["register", "run"]


def tile_grid_arg(text: str) -> TileGrid:
    """argparse type: a ``ROWSxCOLS`` grid, reported as a usage error when malformed."""
    try:
        return TileGrid.parse(text)
    except GeometryError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "infer",
        help="classify an image: on a cluster (--broker) or with fused tiles in-process",
        description="With --broker: send the image to the cluster and print the top-5 classes and the "
        "latency. Without: cut the model into fused blocks, run every block tile by tile in this "
        "process, stitch the tiles, run the tail, and print the top-5 classes with the "
        "maximum absolute difference from running the whole model at once.",
    )
    parser.add_argument(
        "--model",
        default="vgg16",
        help=f"a built-in model ({', '.join(MODEL_NAMES)}; default vgg16), or with --broker any model the "
        "cluster serves",
    )
    parser.add_argument("--weights", type=Path, help="torchvision-format state_dict (.pth); default: seeded random")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    parser.add_argument(
        "--input",
        type=Path,
        default=SAMPLE_IMAGE,
        help="image file or normalised .npy array (default: the shipped sample image)",
    )
    parser.add_argument(
        "--size", type=int, help="image side after preprocessing (default 224, or an imported model's own size)"
    )
    add_model_import(parser)
    parser.add_argument(
        "--blocks",
        help="fused blocks as START-STOP,... covering every stage, e.g. 0-10,10-23,23-31 "
        "(default: 3 blocks of about equal FLOPs)",
    )
    parser.add_argument("--tiles", type=tile_grid_arg, default=TileGrid(3, 3), help="tile grid per block (default 3x3)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--output", type=Path, help="save the logits as .npy")
    add_broker(parser, required=False)
    parser.add_argument("--strategy", choices=list(STRATEGY_NAMES), help="with --broker: ask for this strategy")
    parser.add_argument("--timeout", type=float, default=60.0, help="with --broker: seconds to wait (default 60)")
    parser.set_defaults(run=run)


def answer_text(output: torch.Tensor) -> str:
    """The top five classes of logits; of an output map (a detector's, a segmenter's), its shape."""
    if output.dim() != 2:
        return f"output map {list(output.shape)}, values {output.min().item():.4g} .. {output.max().item():.4g}"
    return format_table(
        ["rank", "class", "label", "probability"],
        [[i + 1, p.index, p.label, f"{p.probability:.4f}"] for i, p in enumerate(top_k(output))],
    )


def run_remote(args: argparse.Namespace) -> int:
    """Ask the cluster behind ``--broker`` and print the answer (a ``--model-file`` is asked
    for by its stem's name, at its own input size: the cluster serves it from its copies)."""
    if args.model_module:
        raise EdgeCIError("a cluster serves models by name: start it with --model-file, ask with --model-file")
    model, size = args.model, args.size or DEFAULT_SIZE
    if args.model_file is not None:
        model, size = args.model_file.stem, model_chain(args)[2]
    x = load_input(args.input, size)
    with EdgeCIClient(broker_bus(args, "client", in_role=True)) as client:
        result = client.infer(x, model, args.strategy or "", args.timeout, size=size)
    print(
        f"model {model}, strategy {result.strategy}, orchestrator {result.orchestrator}, "
        f"devices {', '.join(result.devices) or '(none)'}"
    )
    print(
        f"latency {result.latency_s * 1e3:.1f} ms ("
        + ", ".join(f"{k.removesuffix('_s')} {v * 1e3:.1f}" for k, v in result.timings.items() if k.endswith("_s"))
        + " ms)"
    )
    print(answer_text(result.logits))
    if args.output:
        np.save(args.output, result.logits.numpy())
    return 0


def run(args: argparse.Namespace) -> int:
    if args.broker:
        return run_remote(args)
    if args.model_file is None and args.model_module is None and args.model not in MODEL_NAMES:
        raise EdgeCIError(f"unknown model {args.model!r}; choose from {', '.join(MODEL_NAMES)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model_file is None and args.model_module is None:
        source = f"random weights, seed {args.seed}" if args.weights is None else str(args.weights)
        print(f"building {args.model} ({source}) ...", file=sys.stderr, flush=True)
        chain = load_chain(args.model, args.weights, args.seed, size=args.size)
        name, size = args.model, args.size or model_size(args.model)
    else:
        print(f"importing {args.model_file or args.model_module} ...", file=sys.stderr, flush=True)
        name, chain, size = model_chain(args)
    x = load_input(args.input, size)
    shapes = chain.check_input(x)
    blocks = parse_blocks(args.blocks, len(chain)) if args.blocks else balanced_blocks(chain.stages, shapes, 3)

    with torch.inference_mode():
        print("running the whole model ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        reference = chain.model(x)
        whole_s = time.perf_counter() - started
        print(f"running {len(blocks)} fused blocks as {args.tiles} tiles ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        logits = chain.tail(run_fused(chain.kernels, shapes, blocks, args.tiles, x))
        tiled_s = time.perf_counter() - started

    stage_flops = whole_map_flops(chain.stages, shapes)
    rows = []
    for block in blocks:
        whole = sum(stage_flops[block.start : block.stop])
        tiled = sum(block_tile_flops(chain.stages, shapes, block, r) for r in args.tiles.regions(shapes[block.stop]))
        rows.append(
            [str(block), str(shapes[block.start]), str(shapes[block.stop]), human_count(whole), f"{tiled / whole:.3f}"]
        )
    print(f"model {name}, input {shapes[0]} from {args.input}")
    print(format_table(["block", "input", "output", "FLOPs", "tiled/whole FLOPs"], rows))
    print(
        f"whole model {whole_s * 1000:.1f} ms, fused tiles {tiled_s * 1000:.1f} ms "
        f"({tiled_s / whole_s:.2f}x) on {torch.get_num_threads()} thread(s)"
    )
    print(f"max abs difference from the whole model: {(logits - reference).abs().max().item():.3g}")
    print(answer_text(logits))
    if args.output:
        np.save(args.output, logits.numpy())
        print(f"output saved to {args.output}")
    return 0
