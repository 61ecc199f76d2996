"""A strategy as a value: parsed once from text, given back as the same text, asked what it means."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeci_mqtt.errors import PlanningError
from edgeci_mqtt.planner.strategy import FLOW_WORDS, STRATEGY_NAMES, FlowOptions, Strategy

pytestmark = pytest.mark.pure

ABLATIONS = tuple(
    "flow:" + "+".join(words) for n in range(1, len(FLOW_WORDS) + 1) for words in itertools.combinations(FLOW_WORDS, n)
)
"""Every ablation in canonical form (words in FLOW_WORDS order)."""


@pytest.mark.parametrize("text", [*STRATEGY_NAMES, *ABLATIONS])
def test_the_canonical_text_comes_back_unchanged(text: str) -> None:
    strategy = Strategy.parse(text)
    assert str(strategy) == text and f"{strategy}" == text
    assert Strategy.parse(str(strategy)) == strategy


@given(st.lists(st.sampled_from(list(FLOW_WORDS)), min_size=1, max_size=5))
def test_flow_options_in_any_order_name_one_strategy(words: list[str]) -> None:
    strategy = Strategy.parse("flow:" + "+".join(words))
    canonical = "flow:" + "+".join(w for w in FLOW_WORDS if w in words)
    assert str(strategy) == canonical and strategy == Strategy.parse(canonical)
    assert strategy.ablation and hash(strategy) == hash(Strategy.parse(canonical))


def test_flow_options_switch_what_flow_adds() -> None:
    assert Strategy.parse("flow").options == FlowOptions() == FlowOptions.parse("")
    bare = Strategy.parse("flow:barrier+raw+orchestrator-tail").options
    assert bare == FlowOptions(barrier=True, compress=False, place_tail=False)
    assert str(FlowOptions()) == "" and str(bare) == "barrier+raw+orchestrator-tail"
    assert Strategy.parse("flow:") == Strategy("flow")  # no words: flow in full


def test_what_each_strategy_means() -> None:
    def names(prop: str) -> set[str]:
        return {n for n in STRATEGY_NAMES if getattr(Strategy(n), prop)}

    assert names("gathers") == {"edgeci", "modnn", "aofl", "deepthings"}
    assert names("whole") == {"local", "replicas"}
    assert names("alone") == {"local"}
    assert names("keeps_rows") == {"flow"}
    assert names("may_serve_whole") == {"local", "replicas", "flow"}
    assert names("places_tail") == {"flow"}
    assert names("ablation") == set()
    for text in ABLATIONS:
        ablation = Strategy.parse(text)
        assert ablation.ablation and ablation.keeps_rows and not ablation.may_serve_whole and not ablation.gathers
        assert ablation.places_tail == ("orchestrator-tail" not in text)


def test_text_that_names_no_strategy_is_refused_with_why() -> None:
    with pytest.raises(PlanningError, match=r"unknown strategy 'magic'; choose one of local, replicas, modnn"):
        Strategy.parse("magic")
    with pytest.raises(PlanningError, match=r"strategy edgeci takes no options \(only flow does"):
        Strategy.parse("edgeci:barrier")
    with pytest.raises(PlanningError, match="unknown flow option 'turbo'; choose from barrier, raw, orchestrator-tail"):
        Strategy.parse("flow:raw+turbo")
    with pytest.raises(PlanningError, match="unknown strategy"):
        Strategy("magic")  # type: ignore[arg-type]
    with pytest.raises(PlanningError, match="takes no options"):
        Strategy("local", FlowOptions(barrier=True))
