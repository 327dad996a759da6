"""The routing decision carries the router's calibrated spread (issue 14): the daemon's batcher runs
``Router.predict_stacked`` (losses and spreads side by side) and the decision splits them."""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np

from daemon.batcher import MicroBatcher
from daemon.holder import LoadedRouter


def loaded(stacked: list[float]) -> LoadedRouter:
    """A LoadedRouter over three experts whose batcher answers ``stacked`` for every prompt."""
    batcher = MicroBatcher(lambda texts: np.array([stacked] * len(texts)))
    router: Any = None  # route() only reads the batcher and the expert order
    return LoadedRouter(version_id=1, sha256="x", router=router, expert_names=("a", "b", "c"), experts=(),
                        constraints=np.zeros((3, 4)), loaded_at=dt.datetime.now(dt.UTC), batcher=batcher)


def test_the_decision_carries_the_spread_of_every_predicted_loss() -> None:
    decision = loaded([0.3, 0.1, 0.5, 0.05, 0.2, float("nan")]).route("a prompt", {})
    assert decision.expert == "b" and decision.predicted == {"a": 0.3, "b": 0.1, "c": 0.5}
    assert decision.spread == {"a": 0.05, "b": 0.2, "c": None}  # NaN: no calibrated spread for c


def test_a_router_without_spreads_gives_none() -> None:
    nan = float("nan")
    decision = loaded([0.3, 0.1, 0.5, nan, nan, nan]).route("a prompt", {})
    assert decision.expert == "b" and decision.spread is None
    predicted, spread = loaded([0.3, 0.1, 0.5, nan, nan, nan]).predict_with_spread(["x", "y"])
    assert predicted.shape == spread.shape == (2, 3) and np.isnan(spread).all()


def test_the_overlap_scope_explores_with_the_spreads_the_batcher_gave() -> None:
    """The route passes the row's spreads to the policy: with ``scope="overlap"`` an expert whose
    interval is separated from the argmin's gets probability 0, one that overlaps shares ε."""
    from router.exploration import ExplorePolicy

    policy = ExplorePolicy("epsilon", 0.1, margin=1.0, scope="overlap")
    # b is the argmin (0.1 ± 0.05); a (0.3 ± 0.2) overlaps it; c (0.5 ± 0.01) does not.
    decision = loaded([0.3, 0.1, 0.5, 0.2, 0.05, 0.01]).route("a prompt", {}, policy, 0.05)
    assert decision.action_probs == {"a": 0.1, "b": 0.9, "c": 0.0}
    assert (decision.expert, decision.explored) == ("a", True)
    margin = loaded([0.3, 0.1, 0.5, 0.2, 0.05, 0.01]).route("a prompt", {}, ExplorePolicy("epsilon", 0.1, 1.0), 0.99)
    assert margin.action_probs["c"] == 0.05  # the margin scope ignores the spreads
