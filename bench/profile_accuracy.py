"""How well a measured device profile predicts real stage times on this machine.

Measures the host profile (as a device agent does on boot, timing it), then for every
stage of VGG-16 and ResNet-34 at 224x224 compares the profile's prediction with the
measured median time of running that stage on its whole map (one torch thread), and
does the same for row strips of fused blocks such as plans contain. Writes the tables
into docs/BENCHMARKS.md.

    python -m bench.profile_accuracy [--repeats 5]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from functools import partial

import torch

from bench.report import machine_line, median_seconds, write_section
from edgeci_mqtt.core.blocks import FusedBlock
from edgeci_mqtt.core.fused import run_block_tile
from edgeci_mqtt.core.geometry import Span, TileRegion
from edgeci_mqtt.models import load_chain
from edgeci_mqtt.planner.costs import TaskWork, make_task
from edgeci_mqtt.profiling import measure_profile


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    profile = measure_profile(threads=1)
    took = time.perf_counter() - started
    lines = [
        "## Device profile: predicted vs. measured stage times",
        "",
        f"`python -m bench.profile_accuracy --repeats {args.repeats}` on {machine_line()}. The profile took "
        f"{took:.2f} s to measure. Each stage runs on its whole 224x224-input map; measured = median of "
        f"{args.repeats} runs after a warm-up; error = (predicted - measured) / measured.",
        "",
    ]
    summary = []
    gen = torch.Generator().manual_seed(0)
    for name in ("vgg16", "resnet34"):
        chain = load_chain(name)
        shapes = chain.shapes(224, 224)
        lines += [f"### {name}", "", "| # | stage | kind | output | measured (ms) | predicted (ms) | error |",
                  "|---:|---|---|---|---:|---:|---:|"]  # fmt: skip
        total_m = total_p = 0.0
        errors = []
        with torch.inference_mode():
            for k, kernel in enumerate(chain.kernels):
                stage = kernel.stage
                print(f"{name} stage {k} ...", file=sys.stderr, flush=True)
                x = torch.randn(1, shapes[k].channels, shapes[k].height, shapes[k].width, generator=gen)
                whole_in = TileRegion.whole(shapes[k].height, shapes[k].width)
                out = TileRegion.whole(shapes[k + 1].height, shapes[k + 1].width)
                measured = median_seconds(lambda s=kernel, x=x, i=whole_in, o=out, sh=shapes[k]: s.run(x, i, o, sh),
                                    args.repeats)  # fmt: skip
                predicted = profile.work_seconds(stage.ops(out, shapes[k]))
                total_m, total_p = total_m + measured, total_p + predicted
                errors.append(abs(predicted - measured) / measured)
                lines.append(f"| {k} | {stage.name} | {stage.kind} | {shapes[k + 1]} | {measured * 1e3:.2f} | "
                             f"{predicted * 1e3:.2f} | {100 * (predicted - measured) / measured:+.0f}% |")  # fmt: skip
            lines.append(f"| | **all stages** | | | **{total_m * 1e3:.1f}** | **{total_p * 1e3:.1f}** | "
                         f"**{100 * (total_p - total_m) / total_m:+.1f}%** |")  # fmt: skip
            # strips of fused blocks, as AWAS hands them out
            work = TaskWork(chain.stages, shapes)
            rng = random.Random(1)
            strip_errors = []
            for _ in range(12):
                i = rng.randrange(len(chain))
                j = rng.randrange(i + 1, min(len(chain), i + 8) + 1)
                block, height = FusedBlock(i, j), shapes[j].height
                a = rng.randrange(height)
                b = rng.randrange(a + 1, min(height, a + max(1, height // 3)) + 1)
                task = make_task(chain.stages, shapes, block, TileRegion(Span(a, b), Span(0, shapes[j].width)), "")
                x = torch.randn(1, shapes[i].channels, task.in_region.height, task.in_region.width, generator=gen)
                measured = median_seconds(
                    partial(run_block_tile, chain.kernels, shapes, block, x, task.in_region, task.out_region),
                    args.repeats,
                )
                predicted = profile.work_seconds(work(block, task.out_region))
                strip_errors.append((predicted - measured) / measured)
        lines += ["", f"Mean absolute error per stage {100 * statistics.mean(errors):.1f}%, median "
                  f"{100 * statistics.median(errors):.1f}%, worst {100 * max(errors):.0f}%. Twelve random row strips "
                  f"of fused blocks (up to 8 stages): mean absolute error "
                  f"{100 * statistics.mean(abs(e) for e in strip_errors):.1f}%, worst "
                  f"{100 * max(abs(e) for e in strip_errors):.0f}%.", ""]  # fmt: skip
        summary.append(f"{name}: all stages {100 * (total_p - total_m) / total_m:+.1f}%")
    lines.append("Whole-chain error: " + "; ".join(summary) + ".")
    write_section("profile_accuracy", "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
