"""Any plan through the real executor in one process: the orchestrator's attempt machine and
holdings, every device's program check, store and step kernels, every message through the
wire codec, delivered in a random order."""

from __future__ import annotations

import random

import torch

from edgeci_mqtt.device.programs import ValidProgram, outgoing, run_step, validate_program
from edgeci_mqtt.device.store import FlowStore
from edgeci_mqtt.models.held import ModelStore
from edgeci_mqtt.orchestrator.actions import (
    Action,
    Compute,
    Finish,
    Go,
    Keep,
    SendProgram,
    SendRows,
)
from edgeci_mqtt.orchestrator.attempt import Arrived, Attempt, Begin, Computed
from edgeci_mqtt.orchestrator.attempt_edge import Holdings, program_message
from edgeci_mqtt.orchestrator.programs import compile_plan
from edgeci_mqtt.planner.plan import Plan
from edgeci_mqtt.wire import (
    CODECS,
    DoneMessage,
    PackedArray,
    ProgramMessage,
    RowsMessage,
    VectorMessage,
    decode,
    encode,
)

ORCH = "orch-1"


def wire(message: object) -> object:
    return decode(encode(message))  # type: ignore[arg-type]


class _Cluster:
    """The devices' stores and the messages in flight."""

    def __init__(self, plan: Plan, store: ModelStore, x: torch.Tensor, rng: random.Random) -> None:
        self.plan, self.store, self.rng = plan, store, rng
        self.held = store.get(plan.model)
        self.shapes = self.held.shapes(x.shape[2], x.shape[3])
        self.work = compile_plan(plan, ORCH)
        self.holdings = Holdings(self.shapes, x.numpy())
        self.machine = Attempt(
            self.work,
            "r1",
            ORCH,
            deadline=1e9,
            channels=tuple(s.channels for s in self.shapes),
            classes=self.held.chain.output_size,
        )
        self.stores: dict[str, FlowStore[ValidProgram]] = {}
        self.runnable: list[tuple[str, str]] = []  # (device, program)
        self.in_flight: list[tuple[str, RowsMessage | VectorMessage | DoneMessage]] = []
        self.finished = False

    def perform(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, SendProgram):
                self._install(action)
            elif isinstance(action, SendRows):
                f = action.forward
                rows = PackedArray(self.holdings.cut(f.boundary, f.region), "raw")
                message = wire(RowsMessage(action.program, ORCH, f.boundary, f.region, rows))
                assert isinstance(message, RowsMessage)
                self.in_flight.append((f.to, message))
            elif isinstance(action, Keep):
                if action.answer is not None:
                    self.holdings.answers[action.answer] = action.array
                else:
                    assert action.region is not None
                    self.holdings.keep(action.boundary, action.region, action.array)
            elif isinstance(action, Compute):
                self.holdings.compute(self.held.chain, action.block)
                self.perform(self.machine.handle(Computed(action.block.stop, 0.0)))
            elif isinstance(action, Go):
                for device in action.devices:
                    if self.stores[device].go(action.program, action.boundary):
                        self.runnable.append((device, action.program))
            elif isinstance(action, Finish):
                self.finished = True
            else:
                raise AssertionError(f"a fault-free run took {action}")

    def _install(self, action: SendProgram) -> None:
        sent = program_message(
            action, self.plan, self.holdings, orchestrator=ORCH, digest=self.held.digest, expires_s=60
        )
        message = wire(sent)
        assert isinstance(message, ProgramMessage)
        valid = validate_program(message, action.device, self.store, lambda *_: True)
        store = self.stores.setdefault(action.device, FlowStore(action.device))
        if store.install(message, valid.shapes, valid, 0.0):
            self.runnable.append((action.device, action.program))

    def deliver(self) -> None:
        target, message = self.in_flight.pop(self.rng.randrange(len(self.in_flight)))
        if target != ORCH:
            if self.stores[target].add_rows(message, message.sender, 0.0):  # type: ignore[arg-type]
                self.runnable.append((target, message.request))
            return
        self.perform(self.machine.handle(Arrived(message, 0.0)))

    def compute(self) -> None:
        device, program = self.runnable.pop(self.rng.randrange(len(self.runnable)))
        store = self.stores[device]
        while (ready := store.next_step(program, 0.0)) is not None:
            output = run_step(ready)
            message = ready.context.message
            for to, sent in outgoing(message, ready.item, output, device, lambda _: self.rng.choice(CODECS)):
                received = wire(sent)
                assert isinstance(received, RowsMessage | VectorMessage | DoneMessage)
                self.in_flight.append((to, received))
            store.computed(program, ready.index, output)


def run_attempt(plan: Plan, store: ModelStore, x: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """The logits of ``x`` as ``plan`` computes them, through every holder's real code."""
    cluster = _Cluster(plan, store, x, rng)
    devices = {d for b in plan.blocks for t in b.tasks for d in [t.device] if d} | set(plan.tail.devices)
    cluster.perform(cluster.machine.handle(Begin(0.0, frozenset(devices or {"a", "b", "c"}))))
    while cluster.runnable or cluster.in_flight:
        if cluster.in_flight and (not cluster.runnable or rng.random() < 0.5):
            cluster.deliver()
        else:
            cluster.compute()
    assert cluster.finished, "the attempt did not finish"
    assert all(not s.requests() and s.stored_bytes == 0 for s in cluster.stores.values()), "a store kept rows"
    return cluster.holdings.logits(cluster.held.chain, cluster.work)
