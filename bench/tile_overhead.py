"""What halo recomputation costs: whole model vs. fused 3x3 tiles, in-process, one thread.

For VGG-16 and ResNet-34 at 224x224 and several block choices, times the plain
model and the fused tiled run (median of --repeats after a warm-up) and counts the
FLOPs each does. Writes the table into docs/BENCHMARKS.md.

    python -m bench.tile_overhead [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
from functools import partial

import torch

from bench.report import machine_line, median_seconds, write_section
from edgeci_mqtt.core.blocks import FusedBlock, TileGrid, balanced_blocks, block_tile_flops, parse_blocks
from edgeci_mqtt.core.chain import whole_map_flops
from edgeci_mqtt.core.fused import run_fused
from edgeci_mqtt.core.geometry import FeatureShape
from edgeci_mqtt.models import StageChain, load_chain

GRID = TileGrid(3, 3)


def tiled_run(chain: StageChain, shapes: list[FeatureShape], blocks: list[FusedBlock], x: torch.Tensor) -> object:
    return chain.tail(run_fused(chain.kernels, shapes, blocks, GRID, x))


def choices(chain: StageChain, shapes: list[FeatureShape]) -> dict[str, list[FusedBlock]]:
    n = len(chain)
    options = {
        "one block (all stages fused)": [FusedBlock(0, n)],
        "2 blocks, equal FLOPs": balanced_blocks(chain.stages, shapes, 2),
        "3 blocks, equal FLOPs": balanced_blocks(chain.stages, shapes, 3),
        "5 blocks, equal FLOPs": balanced_blocks(chain.stages, shapes, 5),
        "no fusion (one block per stage)": [FusedBlock(k, k + 1) for k in range(n)],
    }
    if chain.model_name == "vgg16":
        options["0-10,10-23,23-31"] = parse_blocks("0-10,10-23,23-31", n)
    return options


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lines = [
        "## Halo recomputation: whole model vs. fused 3x3 tiles (in-process)",
        "",
        f"`python -m bench.tile_overhead --repeats {args.repeats} --threads {args.threads}` on {machine_line()}. ",
        "Times are medians after one warm-up run; the tiled run includes stitching and the tail. ",
        "FLOPs ratio = FLOPs of all tiles (halo included) / FLOPs of the whole maps.",
        "",
        "| model | blocks | whole (ms) | tiled (ms) | time ratio | FLOPs ratio |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name in ("vgg16", "resnet34"):
        chain = load_chain(name)
        x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
        shapes = chain.check_input(x)
        total = sum(whole_map_flops(chain.stages, shapes))
        with torch.inference_mode():
            whole = median_seconds(partial(chain.model, x), args.repeats)
            for label, blocks in choices(chain, shapes).items():
                print(f"{name}: {label} ...", file=sys.stderr, flush=True)
                tiled = median_seconds(partial(tiled_run, chain, shapes, blocks, x), args.repeats)
                flops = sum(
                    block_tile_flops(chain.stages, shapes, b, r) for b in blocks for r in GRID.regions(shapes[b.stop])
                )
                spec = ",".join(str(b) for b in blocks) if len(blocks) <= 5 else f"{len(blocks)} blocks"
                lines.append(
                    f"| {name} | {label}: `{spec}` | {whole * 1e3:.0f} | {tiled * 1e3:.0f} | "
                    f"{tiled / whole:.2f} | {flops / total:.2f} |"
                )
                print(lines[-1], flush=True)
    write_section("tile_overhead", "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
