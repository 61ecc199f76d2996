"""``edgeci models``: each model's stage chain with shapes, FLOPs and output bytes."""

from __future__ import annotations

import argparse

from edgeci_mqtt.cli.common import add_model_import, model_chain
from edgeci_mqtt.cli.table import format_table, human_bytes, human_count
from edgeci_mqtt.core.chain import whole_map_flops
from edgeci_mqtt.core.geometry import TileRegion
from edgeci_mqtt.models import HAND_CUT, MODEL_NAMES, StageChain, load_chain, model_size

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "models",
        help="list the models and their stages",
        description="Print each model's spatial stages (index, kind, geometry, output shape, "
        "FLOPs and output bytes for the whole map) and its tail.",
    )
    parser.add_argument("--model", choices=MODEL_NAMES, action="append", help="only this model (repeatable)")
    parser.add_argument(
        "--size", type=int, help="input height and width (default 224, or an imported model's own size)"
    )
    add_model_import(parser)
    parser.set_defaults(run=run)


def _chains(args: argparse.Namespace) -> list[tuple[str, StageChain, int]]:
    if args.model_file is not None or args.model_module is not None:
        return [model_chain(args)]
    names = args.model or HAND_CUT
    return [(name, load_chain(name, size=args.size), args.size or model_size(name)) for name in names]


def run(args: argparse.Namespace) -> int:
    for name, chain, size in _chains(args):
        shapes = chain.shapes(size, size)
        flops = whole_map_flops(chain.stages, shapes)
        rows = []
        for k, stage in enumerate(chain.stages):
            out = shapes[k + 1]
            row_w, col_w = stage.windows
            geometry = str(row_w) if row_w == col_w else f"{row_w}/{col_w}"
            rows.append(
                [
                    k,
                    stage.name,
                    stage.kind,
                    geometry,
                    str(out),
                    human_count(flops[k]),
                    human_bytes(stage.output_bytes(TileRegion.whole(out.height, out.width), shapes[k])),
                ]
            )
        total = sum(flops)
        params = sum(p.numel() for p in chain.model.parameters())
        print(
            f"{name}: {len(chain)} stages, input {shapes[0]}, {human_count(total)} FLOPs, "
            f"{human_count(params)} parameters"
        )
        print(format_table(["#", "name", "kind", "window", "output", "FLOPs", "out bytes"], rows))
        print(f"tail (on the orchestrator): {', '.join(chain.tail_modules())}\n")
    return 0
