"""The exploration policy (router/exploration.py): parsing, distributions, margin, draws."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from router.exploration import (
    OFF,
    ExploreError,
    ExplorePolicy,
    action_probabilities,
    choose,
    draw,
    explore_fraction,
    parse_policy,
    parse_scope,
)

# χ² critical values at α = 0.01 by degrees of freedom (any table of the χ² distribution).
CHI2_CRITICAL_01 = {1: 6.635, 2: 9.210, 3: 11.345, 4: 13.277, 5: 15.086, 6: 16.812, 7: 18.475, 8: 20.090}


def _critical(df: int) -> float:
    try:
        from scipy.stats import chi2
    except ImportError:
        return CHI2_CRITICAL_01[df]
    return float(chi2.ppf(0.99, df))


def test_parse_accepts_the_three_forms() -> None:
    assert parse_policy("off") == ExplorePolicy("off", 0.0, 1.0)
    assert parse_policy("epsilon:0.05", 0.5) == ExplorePolicy("epsilon", 0.05, 0.5)
    assert parse_policy(" Softmax : 0.2 ") == ExplorePolicy("softmax", 0.2, 1.0)
    assert parse_policy("epsilon:1").spec == "epsilon:1" and parse_policy("epsilon:0").active is False
    assert parse_policy("softmax:0.1").as_dict() == {"policy": "softmax:0.1", "kind": "softmax", "value": 0.1,
                                                     "margin": 1.0, "scope": "margin", "top": 0}


@pytest.mark.parametrize(("text", "margin", "words"), [
    ("bogus", 0.25, "must be 'off', 'epsilon:ε'"),
    ("", 0.25, "must be 'off'"),
    ("epsilon:-0.1", 0.25, "epsilon must lie in [0, 1], got -0.1"),
    ("epsilon:1.5", 0.25, "epsilon must lie in [0, 1]"),
    ("epsilon:nan", 0.25, "epsilon must lie in [0, 1]"),
    ("epsilon", 0.25, "needs a parameter"),
    ("epsilon:abc", 0.25, "is not a number"),
    ("softmax:0", 0.25, "temperature must be a finite number > 0, got 0"),
    ("softmax:-1", 0.25, "temperature must be a finite number > 0"),
    ("softmax:inf", 0.25, "temperature must be a finite number > 0"),
    ("off:0.1", 0.25, "takes no parameter"),
    ("epsilon:0.1", -1.0, "THALAMUS_EXPLORE_MARGIN must be a finite number >= 0"),
])
def test_parse_refuses_bad_input_with_one_sentence(text: str, margin: float, words: str) -> None:
    with pytest.raises(ExploreError) as info:
        parse_policy(text, margin)
    message = str(info.value)
    assert words in message and "\n" not in message and message.startswith("THALAMUS_EXPLORE")


def test_epsilon_spreads_epsilon_over_the_eligible_alternatives() -> None:
    objective = np.array([0.30, 0.20, 0.40, 0.90])  # best: index 1; gaps 0.1, 0.2, 0.7
    probs = action_probabilities(objective, ExplorePolicy("epsilon", 0.1, 0.25))
    assert probs == pytest.approx([0.05, 0.90, 0.05, 0.0])
    assert probs.sum() == pytest.approx(1.0)
    # The margin is in units of the loss scale: with s = 0.5 only the 0.1 gap (0.2 s) is eligible.
    assert action_probabilities(objective, ExplorePolicy("epsilon", 0.1, 0.25), scale=0.5) == pytest.approx(
        [0.1, 0.9, 0.0, 0.0])
    # Nothing within the margin: the argmin gets everything; the same for off.
    assert action_probabilities(objective, ExplorePolicy("epsilon", 0.1, 0.05)) == pytest.approx([0, 1, 0, 0])
    assert action_probabilities(objective, OFF) == pytest.approx([0, 1, 0, 0])


def test_top_limits_the_explored_experts_to_the_nearest_eligible_ones() -> None:
    objective = np.array([[0.30, 0.20, 0.25, 0.40, 0.21], [0.5, 0.5, 0.1, 0.5, 0.9]])
    probs = action_probabilities(objective, ExplorePolicy("epsilon", 0.1, 0.25, top=2))
    # Row 0: argmin index 1; nearest alternatives 4 (gap 0.01) and 2 (0.05); 0 and 3 are eligible but not kept.
    assert probs[0] == pytest.approx([0.0, 0.9, 0.05, 0.0, 0.05])
    # Row 1: three alternatives tied at gap 0.4 > margin: none eligible, so top changes nothing.
    assert probs[1] == pytest.approx([0, 0, 1, 0, 0])
    wide = ExplorePolicy("epsilon", 0.1, 1.0, top=2)  # ties within the margin go to the lower index
    assert action_probabilities(objective[1], wide) == pytest.approx([0.05, 0.05, 0.9, 0.0, 0.0])
    # Softmax: the weights of the argmin and the two kept alternatives, normalised over those three.
    soft = action_probabilities(objective[0], ExplorePolicy("softmax", 0.1, 0.25, top=2))
    weights = np.exp(-np.array([0.0, 0.05, 0.01]) / 0.1)
    assert soft[[1, 2, 4]] == pytest.approx(weights / weights.sum()) and soft[[0, 3]] == pytest.approx([0, 0])
    # Warm-up still reaches an unproven expert outside the top.
    unproven = np.array([False, False, False, True, False])
    warm = ExplorePolicy("epsilon", 0.1, 0.25, warmup_share=0.2, warmup_rows=30, top=2)
    assert action_probabilities(objective[0], warm, unproven=unproven)[3] == pytest.approx(0.2)


def test_softmax_weights_by_the_standardised_gap_within_the_margin() -> None:
    objective = np.array([0.30, 0.20, 0.40, 0.90])
    probs = action_probabilities(objective, ExplorePolicy("softmax", 0.1, 0.25), scale=2.0)
    gaps = np.array([0.05, 0.0, 0.1])  # (o − min) / s; index 3's gap 0.35 > 0.25 is ineligible
    weights = np.exp(-gaps / 0.1)
    assert probs[:3] == pytest.approx(weights / weights.sum()) and probs[3] == 0.0
    assert probs.sum() == pytest.approx(1.0)


def test_batched_rows_match_single_rows_and_ties_go_to_the_lower_index() -> None:
    rng = np.random.default_rng(0)
    objective = rng.uniform(0, 1, size=(50, 5))
    objective[0] = [0.2, 0.2, 0.9, 0.9, 0.9]
    policy = ExplorePolicy("softmax", 0.2, 0.3)
    batch = action_probabilities(objective, policy, scale=0.5)
    for row, probs in zip(objective, batch, strict=True):
        assert probs == pytest.approx(action_probabilities(row, policy, scale=0.5))
    assert batch.sum(axis=1) == pytest.approx(np.ones(50))
    assert choose(objective[0], OFF, 0.99).index == 0


def test_margin_is_respected_by_every_draw() -> None:
    """An expert outside the margin has probability 0 and is never drawn, whatever the uniform."""
    objective = np.array([0.5, 0.1, 0.3, 0.2])
    for policy in (ExplorePolicy("epsilon", 1.0, 0.15), ExplorePolicy("softmax", 10.0, 0.15)):
        probs = action_probabilities(objective, policy)
        assert probs[0] == 0.0 and probs[2] == 0.0
        drawn = {draw(probs, u) for u in np.linspace(0, 1, 1001, endpoint=False)}
        assert drawn == {1, 3} if policy.kind == "softmax" else drawn == {3}  # ε = 1: the argmin gets 0


@pytest.mark.parametrize("policy", [ExplorePolicy("epsilon", 0.3, 0.5), ExplorePolicy("softmax", 0.15, 0.5)])
def test_empirical_frequencies_of_10000_seeded_draws_match_the_distribution(policy: ExplorePolicy) -> None:
    """The draw from (prompt, request id) follows the logged distribution: χ² test at α = 0.01."""
    objective = np.array([0.42, 0.30, 0.55, 0.35, 1.20])
    probs = action_probabilities(objective, policy)
    counts = np.zeros(objective.size)
    for i in range(10_000):
        choice = choose(objective, policy, explore_fraction(f"prompt {i % 97}", f"request-{i}"))
        assert choice.propensity == probs[choice.index]
        assert choice.explored == (choice.index != 1)
        counts[choice.index] += 1
    support = probs > 0
    assert counts[~support].sum() == 0, "never an expert of probability 0"
    expected = 10_000 * probs[support]
    statistic = float(((counts[support] - expected) ** 2 / expected).sum())
    assert statistic < _critical(int(support.sum()) - 1), (counts, expected)


def test_the_draw_is_fixed_by_prompt_and_request_id() -> None:
    objective = np.array([0.2, 0.25, 0.3])
    policy = ExplorePolicy("epsilon", 0.5, 1.0)
    first = [choose(objective, policy, explore_fraction("same prompt", f"id-{i}")) for i in range(200)]
    again = [choose(objective, policy, explore_fraction("same prompt", f"id-{i}")) for i in range(200)]
    assert [(c.index, c.propensity) for c in first] == [(c.index, c.propensity) for c in again]
    assert len({c.index for c in first}) == 3, "different request ids draw differently"
    assert explore_fraction("a", "id") != explore_fraction("b", "id")
    assert 0.0 <= explore_fraction("a", "id") < 1.0


def test_draw_never_returns_a_zero_probability_index_at_the_top_end() -> None:
    probs = np.array([0.3, 0.7 - 1e-17, 0.0])
    assert draw(probs, 0.9999999999) == 1 and draw(probs, 0.0) == 0 and draw(probs, 0.3) == 1


def test_unproven_experts_share_the_warm_up_whatever_their_objective() -> None:
    """A new expert (or every expert at a cold start) is tried even outside the margin; the mixture is exact."""
    from dataclasses import replace

    from router.exploration import action_probabilities, choose, parse_policy

    policy = replace(parse_policy("epsilon:0.1", 0.25), warmup_share=0.2, warmup_rows=30)
    objective = np.array([0.1, 0.2, 5.0, 9.0])  # 1 within the margin; 2 and 3 far outside it
    unproven = np.array([False, False, True, True])
    probs = action_probabilities(objective, policy, 1.0, unproven)
    assert probs.sum() == pytest.approx(1.0)
    assert probs[2] == pytest.approx(0.1) and probs[3] == pytest.approx(0.1)  # 0.2 shared by the two
    assert probs[1] == pytest.approx(0.8 * 0.1) and probs[0] == pytest.approx(0.8 * 0.9)
    # The argmin in warm-up is not "explored"; no warm-up with the policy off or every expert proven.
    assert action_probabilities(objective, policy, 1.0, np.array([True, False, False, False]))[2] == 0.0
    assert action_probabilities(objective, replace(policy, kind="off", value=0.0), 1.0, unproven)[0] == 1.0
    picks = [choose(objective, policy, u, 1.0, unproven).index for u in np.linspace(0, 0.999, 1000)]
    assert 0.15 < np.mean(np.isin(picks, [2, 3])) < 0.25


def test_overlap_scope_explores_only_where_the_intervals_overlap_the_argmins() -> None:
    # Objectives 0.0 / 0.1 / 0.2, all within the margin 0.5 (scale 1). Spreads 0.05: the argmin's
    # interval [−0.05, 0.05] meets expert 1's [0.05, 0.15] at its edge, not expert 2's [0.15, 0.25].
    objective = np.array([0.0, 0.1, 0.2])
    policy = ExplorePolicy("epsilon", 0.2, 0.5, scope="overlap")
    probs = action_probabilities(objective, policy, spread=np.array([0.05, 0.05, 0.05]))
    assert probs.tolist() == pytest.approx([0.8, 0.2, 0.0])
    # Narrow intervals: nothing overlaps, so the argmin gets every request (no exploration at all).
    narrow = action_probabilities(objective, policy, spread=np.array([0.01, 0.01, 0.01]))
    assert narrow.tolist() == pytest.approx([1.0, 0.0, 0.0])
    # Wide intervals: every expert within the margin overlaps, as in the margin scope.
    wide = action_probabilities(objective, policy, spread=np.array([0.2, 0.2, 0.2]))
    margin_only = action_probabilities(objective, dataclasses.replace(policy, scope="margin"))
    assert np.allclose(wide, margin_only) and np.allclose(wide, [0.8, 0.1, 0.1])
    # The margin still bounds the overlap scope: wide intervals do not admit an expert beyond it.
    far = action_probabilities(np.array([0.0, 0.1, 0.9]), policy, spread=np.array([1.0, 1.0, 1.0]))
    assert far.tolist() == pytest.approx([0.8, 0.2, 0.0])


def test_overlap_scope_treats_an_unknown_spread_as_uncertain() -> None:
    objective = np.array([[0.0, 0.1, 0.2], [0.0, 0.1, 0.2]])
    policy = ExplorePolicy("epsilon", 0.2, 0.5, scope="overlap")
    spread = np.array([[0.01, np.nan, 0.01],  # expert 1 unknown: eligible; expert 2 separated
                       [np.nan, 0.01, 0.01]])  # the argmin's spread unknown: every expert eligible
    probs = action_probabilities(objective, policy, spread=spread)
    assert probs[0].tolist() == pytest.approx([0.8, 0.2, 0.0])
    assert probs[1].tolist() == pytest.approx([0.8, 0.1, 0.1])
    # Without any spread the overlap scope is the margin scope.
    assert np.allclose(action_probabilities(objective, policy), [[0.8, 0.1, 0.1]] * 2)
    choice = choose(objective[0], policy, 0.9, spread=spread[0])
    assert (choice.index, choice.propensity, choice.explored) == (1, pytest.approx(0.2), True)


def test_parse_scope_accepts_the_two_scopes_and_refuses_others_in_one_sentence() -> None:
    assert (parse_scope(" Overlap "), parse_scope("margin")) == ("overlap", "margin")
    with pytest.raises(ExploreError, match=r"^THALAMUS_EXPLORE_SCOPE must be 'margin' or 'overlap', got 'both'$"):
        parse_scope("both")
