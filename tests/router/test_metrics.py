import numpy as np
import pytest

from router.metrics import paired_bootstrap, pareto_front, routing_metrics

NAN = np.nan
TRUE = np.array([[1.0, 2.0, 3.0], [3.0, 1.0, 2.0], [2.0, 3.0, 1.0], [NAN, 1.0, 1.0]])
PRED = np.array([[0.9, 2.0, 3.0], [1.0, 2.0, 3.0], [2.0, 3.0, 1.0], [0.0, 0.0, 0.0]])


def test_routing_metrics_hand_computed() -> None:
    m = routing_metrics(PRED, TRUE, params=np.array([1.0, 2.0, 4.0]))
    # chosen on the 3 complete rows: 0, 0, 2 → true losses 1, 3, 1; oracle 1, 1, 1
    assert m["n_rows"] == 3
    assert m["hit_rate"] == pytest.approx(2 / 3)
    assert m["routed_loss"] == pytest.approx(5 / 3)
    assert m["oracle_loss"] == pytest.approx(1.0)
    assert m["best_single_loss"] == pytest.approx(2.0)  # all experts average 2
    assert m["regret"] == pytest.approx(2 / 3)
    assert m["gap_captured"] == pytest.approx(1 / 3)
    assert m["mean_params"] == pytest.approx(2.0)  # (1 + 1 + 4) / 3
    # 11 observed entries, absolute errors 0.1 + (2 + 1 + 1) + 0 + (1 + 1)
    assert m["loss_mae"] == pytest.approx(6.1 / 11)
    assert all(isinstance(v, float) for v in m.values())


def test_ties_count_as_hits_and_best_single_given() -> None:
    true = np.array([[1.0, 1.0], [2.0, 0.0]])
    pred = np.array([[0.5, 0.0], [0.0, 1.0]])  # picks 1 (tie → hit), then 0 (miss)
    m = routing_metrics(pred, true, best_single=0)
    assert m["hit_rate"] == 0.5
    assert m["best_single_loss"] == pytest.approx(1.5)
    assert m["routed_loss"] == pytest.approx(1.5)
    assert m["gap_captured"] == pytest.approx(0.0)


def test_constraints_change_the_route() -> None:
    c = np.array([[0.0, 0, 0, 0], [1.0, 0, 0, 0], [1.0, 0, 0, 0]])
    m = routing_metrics(PRED, TRUE, constraints=c, lambdas={"size": 10.0})
    assert m["routed_loss"] == pytest.approx(2.0)  # always expert 0


def test_no_complete_rows_and_degenerate_gap() -> None:
    m = routing_metrics(np.zeros((1, 2)), np.array([[1.0, NAN]]))
    assert m == {"loss_mae": 1.0, "n_rows": 0.0}
    same = np.array([[1.0, 2.0], [1.0, 2.0]])
    assert routing_metrics(same, same)["gap_captured"] == 1.0
    with pytest.raises(ValueError):
        routing_metrics(np.zeros((2, 2)), np.zeros((2, 3)))


def test_pareto_front() -> None:
    points = [(1.0, 5.0), (2.0, 3.0), (3.0, 4.0), (0.5, 6.0), (2.0, 3.0), (4.0, 1.0)]
    assert pareto_front(points) == [3, 0, 1, 4, 5]
    assert pareto_front([]) == []


def test_paired_bootstrap() -> None:
    b = np.linspace(0, 1, 50)
    assert paired_bootstrap(b + 1.0, b) == pytest.approx((1.0, 1.0, 1.0))
    rng = np.random.default_rng(1)
    a = rng.normal(0.3, 1.0, size=400)
    mean, low, high = paired_bootstrap(a, np.zeros(400), n=1000, seed=3)
    assert low < mean < high and low > 0
    assert paired_bootstrap(a, np.zeros(400), n=1000, seed=3) == (mean, low, high)
