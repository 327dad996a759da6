"""Off-policy estimators on hand-computed logged sets, bootstrap coverage on a synthetic environment,
and cross-fitting that never scores the rows a model was fit on."""

from __future__ import annotations

import numpy as np
import pytest

from router.offpolicy import (
    Logged,
    compare,
    cross_fit,
    doubly_robust,
    effective_sample_size,
    estimate,
    folds_by_key,
    greedy,
    importance_weights,
    ips,
    ridge_fit,
    snips,
    support,
)

# Four logged requests over three experts: (served expert, its propensity, its observed loss).
LOGGED = Logged(losses=np.array([0.2, 0.8, 0.4, 0.6]), actions=np.array([0, 1, 2, 0]),
                propensities=np.array([0.5, 0.25, 0.25, 0.5]), n_actions=3)
TARGET = greedy(np.array([[0, 1, 1], [0, 1, 1], [1, 1, 0], [1, 0, 1]]))  # chooses 0, 0, 2, 1
DIRECT = np.array([[0.3, 0.7, 0.5], [0.4, 0.6, 0.5], [0.3, 0.3, 0.5], [0.5, 0.2, 0.9]])


def test_greedy_is_one_hot_on_the_argmin_with_ties_to_the_lower_index() -> None:
    assert greedy(np.array([[0.5, 0.5, 0.1], [0.2, 0.2, 0.3]])).tolist() == [[0, 0, 1], [1, 0, 0]]
    assert greedy(np.array([[0.1, 0.5, 0.3]]), allowed=np.array([False, True, True])).tolist() == [[0, 0, 1]]


def test_ips_snips_dr_and_ess_by_hand() -> None:
    # w = π(a|x)/p = [1/0.5, 0, 1/0.25, 0] = [2, 0, 4, 0]
    assert importance_weights(LOGGED, TARGET).tolist() == [2.0, 0.0, 4.0, 0.0]
    # IPS = (2·0.2 + 4·0.4) / 4 = 0.5;  SNIPS = 2.0 / (2 + 4) = 1/3
    assert ips(LOGGED, TARGET) == pytest.approx(0.5)
    assert snips(LOGGED, TARGET) == pytest.approx(1 / 3)
    # DR rows: 0.3 + 2(0.2 − 0.3) = 0.1;  0.4 + 0 = 0.4;  0.5 + 4(0.4 − 0.5) = 0.1;  0.2 + 0 = 0.2  → mean 0.2
    assert doubly_robust(LOGGED, TARGET, DIRECT) == pytest.approx(0.2)
    # ESS = (2 + 4)² / (2² + 4²) = 36 / 20
    assert effective_sample_size(importance_weights(LOGGED, TARGET)) == pytest.approx(1.8)


def test_a_stochastic_target_by_hand() -> None:
    target = np.array([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    # w = [0.5/0.5, 1/0.25, 1/0.25, 1/0.5] = [1, 4, 4, 2]
    assert importance_weights(LOGGED, target).tolist() == [1.0, 4.0, 4.0, 2.0]
    # IPS = (0.2 + 3.2 + 1.6 + 1.2) / 4 = 1.55;  SNIPS = 6.2 / 11
    assert ips(LOGGED, target) == pytest.approx(1.55)
    assert snips(LOGGED, target) == pytest.approx(6.2 / 11)
    # DR rows: (0.15 + 0.35) + 1(0.2 − 0.3) = 0.4;  0.6 + 4(0.8 − 0.6) = 1.4;  0.5 + 4(−0.1) = 0.1;
    #          0.5 + 2(0.6 − 0.5) = 0.7  → mean 2.6 / 4
    assert doubly_robust(LOGGED, target, DIRECT) == pytest.approx(0.65)


def test_the_logging_policy_itself_is_estimated_by_the_mean_observed_loss() -> None:
    logging = np.zeros((4, 3))
    logging[np.arange(4), LOGGED.actions] = 1.0
    deterministic = Logged(LOGGED.losses, LOGGED.actions, np.ones(4), 3)
    for estimator in (ips, snips):
        assert estimator(deterministic, logging) == pytest.approx(0.5)
    assert doubly_robust(deterministic, logging, DIRECT) == pytest.approx(0.5)


def test_snips_is_undefined_without_support_and_support_says_so() -> None:
    deterministic = Logged(LOGGED.losses, LOGGED.actions, np.ones(4), 3)
    elsewhere = greedy(np.array([[1, 0, 1], [0, 1, 1], [0, 1, 1], [1, 1, 0]]))  # never the served expert
    assert ips(deterministic, elsewhere) == 0.0  # optimistic for a loss: why the gate uses DR
    assert snips(deterministic, elsewhere) is None
    served = np.zeros((4, 3))
    served[np.arange(4), LOGGED.actions] = 1.0
    assert support(served, elsewhere) == 0.0 and support(served, served) == 1.0
    result = estimate(deterministic, elsewhere, DIRECT, n_boot=50)
    assert result.estimates["snips"].value is None and result.estimates["snips"].low is None
    assert result.estimates["dr"].value == pytest.approx(np.mean(DIRECT[[0, 1, 2, 3], [1, 0, 0, 2]]))


def test_bad_logged_sets_are_refused() -> None:
    with pytest.raises(ValueError, match="propensities"):
        Logged(np.array([0.1]), np.array([0]), np.array([0.0]), 2)
    with pytest.raises(ValueError, match="actions"):
        Logged(np.array([0.1]), np.array([2]), np.array([1.0]), 2)
    with pytest.raises(ValueError, match="finite"):
        Logged(np.array([np.nan]), np.array([0]), np.array([1.0]), 2)
    with pytest.raises(ValueError, match="shape"):
        ips(LOGGED, np.ones((4, 2)))


def test_the_bootstrap_is_seeded_and_the_difference_is_paired() -> None:
    first = compare(LOGGED, TARGET, TARGET, DIRECT, n_boot=200, seed=3)
    again = compare(LOGGED, TARGET, TARGET, DIRECT, n_boot=200, seed=3)
    assert first.as_dict() == again.as_dict()
    # The same policy on both sides: every paired replicate difference is exactly 0.
    assert first.difference["dr"].as_dict() == {"value": 0.0, "low": 0.0, "high": 0.0}
    assert first.candidate.estimates["dr"].low < first.candidate.estimates["dr"].high


# ---- a synthetic environment: the intervals cover the truth ----------------------------------

MEANS = np.array([[0.2, 0.5, 0.7], [0.6, 0.3, 0.5], [0.4, 0.6, 0.2], [0.5, 0.4, 0.6]])  # context × expert
LOGGING = np.array([[0.6, 0.2, 0.2], [0.2, 0.2, 0.6], [0.3, 0.5, 0.2], [0.1, 0.3, 0.6]])  # p(expert | context)
CANDIDATE = MEANS.argmin(axis=1)  # the best expert per context: 0, 1, 2, 1
ACTIVE = np.array([1, 2, 0, 0])


def _environment(rng: np.random.Generator, n: int) -> tuple[Logged, np.ndarray, np.ndarray, np.ndarray]:
    contexts = rng.integers(0, len(MEANS), n)
    cumulative = LOGGING[contexts].cumsum(axis=1)
    actions = (rng.random(n)[:, None] > cumulative).sum(axis=1)
    losses = np.clip(MEANS[contexts, actions] + rng.uniform(-0.2, 0.2, n), 0, 1)
    logged = Logged(losses, actions, LOGGING[contexts, actions], 3)
    return logged, contexts, np.eye(3)[CANDIDATE[contexts]], np.eye(3)[ACTIVE[contexts]]


def test_bootstrap_intervals_cover_the_truth_in_at_least_90_percent_of_200_repetitions() -> None:
    weights = np.full(len(MEANS), 1 / len(MEANS))
    truth = {"candidate": float(weights @ MEANS[np.arange(4), CANDIDATE]),
             "active": float(weights @ MEANS[np.arange(4), ACTIVE])}
    truth["difference"] = truth["candidate"] - truth["active"]
    covered = {(who, name): 0 for who in truth for name in ("ips", "snips", "dr")}
    for repetition in range(200):
        rng = np.random.default_rng(repetition)
        logged, contexts, candidate, active = _environment(rng, 300)
        observed = np.full((len(logged), 3), np.nan)
        observed[np.arange(len(logged)), logged.actions] = logged.losses
        folds = folds_by_key([f"{repetition}-{i}" for i in range(len(logged))], k=5)
        direct = cross_fit(folds, ridge_fit(np.eye(len(MEANS))[contexts], observed), 3)
        result = compare(logged, candidate, active, direct, n_boot=300, seed=repetition)
        for name in ("ips", "snips", "dr"):
            for who, interval in (("candidate", result.candidate.estimates[name]),
                                  ("active", result.active.estimates[name]), ("difference", result.difference[name])):
                covered[who, name] += interval.low <= truth[who] <= interval.high
    rates = {key: count / 200 for key, count in covered.items()}
    assert min(rates.values()) >= 0.90, rates


# ---- cross-fitting ---------------------------------------------------------------------------

def test_cross_fitting_never_scores_a_row_it_was_fit_on() -> None:
    keys = [f"prompt {i % 37}" for i in range(200)]  # repeated prompts: one prompt, one fold
    folds = folds_by_key(keys, k=5)
    assert {fold for fold in folds} == {0, 1, 2, 3, 4}
    for key in set(keys):
        assert len({int(folds[i]) for i, k in enumerate(keys) if k == key}) == 1
    calls: list[tuple[set[int], set[int]]] = []

    def fit(train: np.ndarray):  # type: ignore[no-untyped-def]
        fitted = {int(i) for i in train}

        def score(rows: np.ndarray) -> np.ndarray:
            calls.append((fitted, {int(i) for i in rows}))
            return np.tile(rows[:, None].astype(float), (1, 2))

        return score

    out = cross_fit(folds, fit, 2)
    assert len(calls) == 5
    scored = [rows for _, rows in calls]
    assert sorted(i for rows in scored for i in rows) == list(range(200))  # each row scored exactly once
    for fitted, rows in calls:
        assert not fitted & rows
        assert {keys[i] for i in fitted}.isdisjoint({keys[i] for i in rows})  # nor any of its prompts
        assert fitted | rows == set(range(200))
    assert out[:, 0].tolist() == list(range(200))


def test_the_ridge_direct_model_learns_per_context_losses_and_falls_back_to_means() -> None:
    rng = np.random.default_rng(0)
    contexts = rng.integers(0, 4, 400)
    observed = MEANS[contexts] + rng.normal(0, 0.01, (400, 3))
    observed[:, 2] = np.nan
    observed[:3, 2] = [0.1, 0.2, 0.3]  # fewer than min_rows: predicted by their mean
    score = ridge_fit(np.eye(4)[contexts], observed)(np.arange(400))
    predicted = score(np.arange(4))
    assert np.abs(predicted[:, :2] - MEANS[contexts[:4], :2]).max() < 0.02
    assert predicted[:, 2] == pytest.approx([0.2] * 4)


def test_the_ridge_direct_model_never_predicts_outside_the_training_losses() -> None:
    # Few rows in many dimensions: an unclipped ridge extrapolates to far-away prompts well outside [0, 1]
    # (bench loop saw DR values of -0.7); the fit is clipped to the range of the losses it was trained on.
    rng = np.random.default_rng(1)
    features = rng.normal(0, 1, (40, 200))
    observed = np.clip(features[:, :3] * 0.3 + 0.5, 0, 1)
    far = np.vstack([features, 25 * rng.normal(0, 1, (20, 200))])
    score = ridge_fit(far, np.vstack([observed, np.full((20, 3), np.nan)]))(np.arange(40))
    predicted = score(np.arange(40, 60))
    assert predicted.min() >= observed.min() - 1e-12 and predicted.max() <= observed.max() + 1e-12
    unclipped_spread = np.ptp(score(np.arange(40)))
    assert unclipped_spread > 0.3  # the rows it was fitted on keep their (in-range) predictions
