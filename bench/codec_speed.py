"""How well and how fast the wire codecs pack VGG-16 feature maps, against a ReLU pass.

Runs VGG-16 (seeded random weights: about half of each post-ReLU map is exact zeros,
trained weights give more) on a seeded random 224x224 input and on the sample image,
and at several block boundaries times encoding and decoding each codec of
:mod:`edgeci_mqtt.wire.compression` (best of --repeats) next to one ``torch.relu`` over
the same map. The ``... / relu`` columns are what ``ZEROS_ENCODE_PASSES`` and
``ZEROS_DECODE_PASSES`` encode. zlib level 1 on the packed map is shown for reference,
it is not a codec (see the module's docstring). Writes docs/bench/codec_speed.md.

    python -m bench.codec_speed [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import zlib
from collections.abc import Callable
from functools import partial

import numpy as np
import torch

from bench.report import DOCS, machine_line, run_seconds
from edgeci_mqtt.imaging import SAMPLE_IMAGE, load_input
from edgeci_mqtt.models import build_model
from edgeci_mqtt.wire.compression import CODECS, PackedArray, decode_packed, encode_packed

BOUNDARIES = (2, 5, 10, 16, 23, 30, 31)
"""Stage indices of VGG-16 (``features.k``) whose input map is measured: after ReLUs and after pools."""


def best_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Best of ``repeats`` (after a warm-up): the codec's speed, not the machine's noise."""
    return min(run_seconds(fn, repeats))


def boundary_maps(x: torch.Tensor) -> dict[int, np.ndarray]:
    model = build_model("vgg16", seed=0)
    maps = {}
    with torch.no_grad():
        for k, layer in enumerate(model.features):
            x = layer(x)
            if k + 1 in BOUNDARIES:
                maps[k + 1] = x.numpy().copy()
    return maps


def map_rows(head: str, array: np.ndarray, repeats: int, passes: dict[str, list[float]]) -> list[str]:
    """One row per codec for this map, then zlib's reference row."""
    relu = best_seconds(partial(torch.relu, torch.from_numpy(array)), repeats)
    mb = array.nbytes / 1e6
    lines = []
    for codec in CODECS:
        encoded = encode_packed(PackedArray(array, codec))
        back = decode_packed(encoded)
        assert back.codec == codec and back.array.tobytes() == array.tobytes()
        enc = best_seconds(lambda c=codec: encode_packed(PackedArray(array, c)), repeats)
        dec = best_seconds(partial(decode_packed, encoded), repeats)
        passes.setdefault(f"{codec} encode", []).append(enc / relu)
        passes.setdefault(f"{codec} decode", []).append(dec / relu)
        lines.append(
            f"{head} {codec} | {array.nbytes / len(encoded['data']):.2f} | {mb / enc:.0f} | {mb / dec:.0f} "
            f"| {enc / relu:.1f} | {dec / relu:.1f} |"
        )
    packed = encode_packed(PackedArray(array, "zeros"))["data"]
    squeezed = zlib.compress(packed, 1)
    enc = best_seconds(partial(zlib.compress, packed, 1), 1)
    return [*lines, f"{head} zeros+zlib-1 (reference) | {array.nbytes / len(squeezed):.2f} | {mb / enc:.0f} | | | |"]


def rows(label: str, maps: dict[int, np.ndarray], repeats: int, passes: dict[str, list[float]]) -> list[str]:
    return [
        line
        for k, array in maps.items()
        for line in map_rows(
            f"| {label} | {k} | {'x'.join(map(str, array.shape[1:]))} | {np.mean(array == 0):.0%} |",
            array,
            repeats,
            passes,
        )
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    noise = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    passes: dict[str, list[float]] = {}
    table = rows("random", boundary_maps(noise), args.repeats, passes)
    table += rows("sample.png", boundary_maps(load_input(SAMPLE_IMAGE)), args.repeats, passes)
    medians = ", ".join(f"{name} {statistics.median(v):.1f}x" for name, v in passes.items() if "zeros" in name)
    lines = [
        "# Wire codecs on VGG-16 feature maps",
        "",
        f"`python -m bench.codec_speed --repeats {args.repeats}` on {machine_line()}. ",
        "Seeded random weights (about half of a post-ReLU map is exact zeros), a seeded random input and ",
        "the sample image. Boundary k is the input of `features.k`. MB/s are of the map's raw bytes, best of ",
        "the repeats; `/ relu` is the time over one `torch.relu` of the same map. ",
        f"Medians over all maps: {medians}.",
        "",
        "| input | boundary | map | zeros | codec | ratio | encode MB/s | decode MB/s | encode / relu "
        "| decode / relu |",
        "|---|---:|---|---:|---|---:|---:|---:|---:|---:|",
        *table,
    ]
    path = DOCS / "bench" / "codec_speed.md"
    path.write_text("\n".join(lines) + "\n")
    print(path.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
