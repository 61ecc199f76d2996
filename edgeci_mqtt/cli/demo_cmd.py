"""``edgeci demo``: a whole cluster on this machine, every strategy, checked against the exact answer."""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import torch

from edgeci_mqtt.broker.launch import BrokerProcess, ProcessGroup
from edgeci_mqtt.bus.mqtt import MqttBus
from edgeci_mqtt.cli.device_cmd import held_models
from edgeci_mqtt.cli.table import format_table
from edgeci_mqtt.client import EdgeCIClient
from edgeci_mqtt.errors import EdgeCIError
from edgeci_mqtt.exactness import faithful, float64_model, max_abs_diff
from edgeci_mqtt.imaging import SAMPLE_IMAGE, load_input
from edgeci_mqtt.models import MODEL_NAMES, load_chain
from edgeci_mqtt.planner.strategy import STRATEGY_NAMES
from edgeci_mqtt.watch.view import device_states

__all__ = ["DEMO_MODELS", "register", "run", "wait_for_devices", "warm_then_time"]

DEMO_MODELS = ("vgg16", "resnet34")
T = TypeVar("T")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "demo",
        help="run a local cluster and compare every strategy",
        description="Start Mosquitto with the project's configuration on a free port, N device agents and one "
        "orchestrator as separate processes; classify the sample image with each model and strategy, check "
        "that every result is as close to the model's float64 answer as the float32 model's own, print a "
        "table, and stop everything (also on Ctrl-C).",
    )
    parser.add_argument("--devices", type=int, default=4, help="device agents (default 4, one torch thread each)")
    parser.add_argument(
        "--model", action="append", choices=MODEL_NAMES, help="model to run (repeatable; default vgg16 and resnet34)"
    )
    parser.add_argument("--models", help="the same, comma-separated")
    parser.add_argument("--strategies", default="all", help="comma-separated, or all (default)")
    parser.add_argument("--input", type=Path, default=SAMPLE_IMAGE, help="image to classify")
    parser.add_argument("--logs", type=Path, help="keep the processes' logs in this directory")
    parser.set_defaults(run=run)


def wait_for_devices(
    broker: BrokerProcess, names: set[str], timeout: float = 120.0, group: ProcessGroup | None = None
) -> None:
    """Block until every device in ``names`` has published an online birth (fail fast if
    a process of ``group`` exits meanwhile)."""

    def check() -> None:
        dead = [n for n, p in (group.processes.items() if group else []) if p.poll() is not None]
        if dead and group is not None:
            raise EdgeCIError(f"{', '.join(dead)} exited: {group.log_text(dead[0])[-800:]}")

    watcher = MqttBus(broker.address("watcher"))
    online = device_states(watcher, lambda states: names <= states.keys(), timeout, check)
    if not names <= online.keys():
        raise EdgeCIError(f"devices {', '.join(sorted(names - online.keys()))} did not come online")


def warm_then_time(strategies: Sequence[str], infer: Callable[[str], T]) -> dict[str, T]:
    """Every strategy once, untimed, then each again for the table. Warming only the
    first left the others cold: the first strategy timed paid the cold start, which showed
    as a large speed-up between strategies running the same model (docs/RUNTIME.md,
    deployment)."""
    for strategy in strategies:
        print(f"  warming {strategy} ...", file=sys.stderr, flush=True)
        infer(strategy)
    timed = {}
    for strategy in strategies:
        print(f"  timing {strategy} ...", file=sys.stderr, flush=True)
        timed[strategy] = infer(strategy)
    return timed


def run(args: argparse.Namespace) -> int:
    strategies = list(STRATEGY_NAMES) if args.strategies == "all" else args.strategies.split(",")
    models = held_models(args.model, args.models, DEMO_MODELS)
    devices = [f"dev-{i}" for i in range(1, args.devices + 1)]
    workdir = Path(tempfile.mkdtemp(prefix="edgeci-demo-")) if args.logs is None else args.logs
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"starting mosquitto and {len(devices)} device agents (logs in {workdir}) ...", file=sys.stderr, flush=True)
    broker = BrokerProcess(workdir / "broker", devices)
    group = ProcessGroup(workdir)
    try:
        for name in devices:
            group.start(name, "device", "--broker", broker.url(name), "--models", ",".join(models))
        group.start(
            "orchestrator",
            "orchestrator",
            "--broker",
            broker.url("orchestrator"),
            *(a for m in models for a in ("--model", m)),
        )
        wait_for_devices(broker, set(devices), group=group)
        group.wait_for_log("orchestrator", "ready")
        time.sleep(0.5)
        rows = []
        with EdgeCIClient(broker.address("client")) as client:
            for model in models:
                chain = load_chain(model)
                x = load_input(args.input)
                with torch.inference_mode():
                    ref32 = chain.model(x)
                    ref64 = float64_model(chain.model)(x.double())
                print(f"{model}: warming up every strategy ...", file=sys.stderr, flush=True)
                ask = functools.partial(client.infer, x, model, timeout=300)
                results = warm_then_time(strategies, ask)
                latencies: dict[str, float] = {}
                for strategy, result in results.items():
                    latencies[strategy] = result.latency_s
                    diff = max_abs_diff(result.logits, ref64)
                    verdict = "yes" if faithful(result.logits, ref32, ref64) else "NO"
                    rows.append(
                        [
                            model,
                            strategy,
                            f"{result.latency_s * 1e3:.0f}",
                            diff,
                            verdict,
                            ", ".join(result.devices) or "-",
                        ]
                    )
                local = latencies.get("local")
                for row in rows:
                    if row[0] == model:
                        row.insert(3, f"{local / latencies[str(row[1])]:.2f}x" if local else "-")
        print(
            format_table(
                [
                    "model",
                    "strategy",
                    "latency (ms)",
                    "speed-up vs local",
                    "max abs diff",
                    "within float32 error",
                    "devices",
                ],
                [[*r[:4], f"{r[4]:.2e}", *r[5:]] for r in rows],
            )
        )
        print(
            "max abs diff: from the model run in float64; within float32 error: no further from it "
            "than the float32 model's own answer allows"
        )
        bad = [r for r in rows if r[5] != "yes"]
        if bad:
            raise EdgeCIError(f"{len(bad)} result(s) are further from the exact answer than float32 rounding explains")
        return 0
    finally:
        print("stopping ...", file=sys.stderr, flush=True)
        group.close()
        broker.stop()
