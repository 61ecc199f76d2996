"""Each room imports only what sits below it (docs/ARCHITECTURE.md, "What each room may touch").

Read from the source (every ``import`` and ``from … import`` of every module, at any
depth), so a forbidden import fails here whether or not a test ever runs it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.pure

PACKAGE = Path(__file__).resolve().parent.parent / "edgeci_mqtt"

FORBIDDEN: dict[str, tuple[str, ...]] = {
    "core": (
        "planner",
        "wire",
        "sim",
        "device",
        "orchestrator",
        "bus",
        "broker",
        "watch",
        "client",
        "cli",
        "models",
        "graph",
    ),
    "graph": ("planner", "wire", "sim", "device", "orchestrator", "bus", "broker", "watch", "client", "cli", "models"),
    "wire": ("planner", "sim", "device", "orchestrator", "bus", "broker", "watch", "client", "cli", "models"),
    "planner": ("device", "orchestrator", "bus", "broker", "watch", "client", "cli", "models", "sim"),
    "sim": ("device", "orchestrator", "bus", "broker", "watch", "client", "cli", "models"),
    "bus": ("planner", "device", "orchestrator", "broker", "watch", "client", "cli", "models"),
    "broker": ("planner", "device", "orchestrator", "watch", "client", "cli", "models"),
    "device": ("orchestrator", "broker", "client", "cli"),
    "orchestrator": ("device", "broker", "client", "cli"),
    "watch": ("device", "orchestrator", "broker", "client", "cli", "planner"),
}
"""By room (a folder of ``edgeci_mqtt``, or ``client`` for client.py): the rooms it may not import."""
ROOMS = {*FORBIDDEN, "client", "cli", "models", "emulation"}


def _room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "edgeci_mqtt" and parts[1] in ROOMS else None


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_every_room_imports_only_what_sits_below_it() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        room = _room(".".join(relative.parts)) or ("client" if relative.parts[1:] == ("client",) else None)
        for module in sorted(_imports(path)):
            target = _room(module)
            if room in FORBIDDEN and target in FORBIDDEN[room]:
                wrong.append(f"{relative}: imports {module}")
    assert not wrong, "\n".join(wrong)


def test_the_rule_catches_a_forbidden_import(tmp_path: Path) -> None:
    """The check above would see a device importing the orchestrator."""
    module = tmp_path / "agent.py"
    module.write_text("from edgeci_mqtt.orchestrator.run import Run\n")
    assert _room("edgeci_mqtt.orchestrator.run.Run") in FORBIDDEN["device"]
    assert "edgeci_mqtt.orchestrator.run" in _imports(module)
