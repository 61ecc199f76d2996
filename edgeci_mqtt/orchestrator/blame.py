"""Who held a late attempt up (pure), from what each device said as it was released.

The devices named are given up and held out of the next requests
(:mod:`~edgeci_mqtt.orchestrator.penalties`), so a device that only waited for another
must not be named.
"""

from __future__ import annotations

from collections.abc import Mapping

from edgeci_mqtt.orchestrator.programs import Compiled
from edgeci_mqtt.wire import FinishRole, ProgramStep, TailRole

__all__ = ["blame"]


def _sources(item: ProgramStep | TailRole | FinishRole) -> set[str]:
    """The senders whose rows or slices ``item`` reads."""
    if isinstance(item, FinishRole):
        return {s.source for s in item.slices}
    return {p.source for p in item.inputs}


def _forwarded(work: Compiled, device: str) -> bool:
    """The orchestrator sends ``device`` rows after the attempt's start (it may wait for them)."""
    return any(f.to == device for forwards in work.forwards.values() for f in forwards)


def blame(work: Compiled, reports: Mapping[str, tuple[int, tuple[str, ...]]], orchestrator: str) -> set[str]:
    """Who held a late attempt up, from what each device said when it was released.

    A device that did not answer (stopped, gone quiet, or hostile) is to blame, and so is
    one that had every piece of its next item and had not finished it (slow, or never
    computing). A device that was waiting for others is not, if its claim holds: the
    senders it names are ones its next item reads (the orchestrator only where it forwards
    rows to that device, or says go behind a barrier). A claim on a sender that says it
    finished cannot be settled from here (rows lost on the way, or one of them lying): both
    are blamed, for a short hold. Nobody is blamed when every device finished: the
    lateness was the orchestrator's or the broker's."""
    programs = work.programs
    finished = {d for d, r in reports.items() if d in programs and r[0] >= len(programs[d].items)}
    blamed = set()
    for device, program in programs.items():
        items, report = program.items, reports.get(device)
        if report is None or report[0] < 0:
            blamed.add(device)  # silent, or its program never reached it
            continue
        item, waiting_for = report
        if item >= len(items):
            continue
        claims = set(waiting_for)
        readable = _sources(items[item]) - {device, orchestrator}
        if work.barrier or _forwarded(work, device):
            readable.add(orchestrator)
        if not claims or not claims <= readable:
            blamed.add(device)
        elif claims & finished:
            blamed |= {device, *(claims & finished)}
    return blamed
