import numpy as np
import pytest

from router.constraints import CONSTRAINTS, LambdaError, choose, constraint_matrix, objective, validate_lambdas


def test_constraint_matrix_hand_computed() -> None:
    experts = [
        {"params": 1e9, "cost": 0.5, "latency_ms": 100, "release_date": "2024-01-01"},
        {"params": 2e9, "cost": 2.0, "latency_ms": 50, "release_date": "2023-01-01"},
        {"params": 4e9, "cost": 1.0, "release_date": None},
    ]
    m = constraint_matrix(experts)
    assert CONSTRAINTS == ("size", "cost", "latency", "recency")
    expected = np.array([
        [0.25, 0.25, 1.0, 0.0],
        [0.5, 1.0, 0.5, 1.0],   # 365 days older than the newest = the max age
        [1.0, 0.5, 1.0, 1.0],   # missing latency/date → penalised as the column max
    ])
    np.testing.assert_allclose(m, expected)


def test_constraint_matrix_edge_cases() -> None:
    m = constraint_matrix([{"params": 0, "release_date": "2024-05-01"}, {"params": 0, "release_date": "2024-05-01"}])
    np.testing.assert_allclose(m[:, 0], [0.0, 0.0])  # max 0 → zeros
    np.testing.assert_allclose(m[:, 3], [0.0, 0.0])  # same date → age 0
    np.testing.assert_allclose(m[:, 1], [1.0, 1.0])  # nobody has a cost
    with pytest.raises(ValueError, match="expert 1"):
        constraint_matrix([{"params": 1}, {"params": -3}])
    with pytest.raises(ValueError, match="ISO date"):
        constraint_matrix([{"release_date": "last tuesday"}])


def test_validate_lambdas() -> None:
    assert validate_lambdas({"size": 1, "cost": np.float32(0.5)}) == {"size": 1.0, "cost": 0.5}
    for bad, key in [({"colour": 1}, "colour"), ({"size": "1"}, "size"), ({"cost": -1}, "cost"),
                     ({"latency": float("nan")}, "latency"), ({"recency": float("inf")}, "recency"),
                     ({"size": True}, "size"), ({"cost": 1e308}, "cost")]:
        with pytest.raises(LambdaError, match=key):
            validate_lambdas(bad)
    assert issubclass(LambdaError, ValueError)


def test_objective_hand_computed() -> None:
    c = np.array([[0.25, 1.0, 0.0, 0.0], [1.0, 0.0, 0.5, 0.0]])
    predicted = np.array([1.0, 0.5])
    np.testing.assert_allclose(objective(predicted, c, {}), [1.0, 0.5])
    np.testing.assert_allclose(objective(predicted, c, {"size": 2.0, "latency": 1.0}), [1.5, 3.0])
    batch = np.array([[1.0, 0.5], [0.0, 2.0]])
    np.testing.assert_allclose(objective(batch, c, {"cost": 1.0}), [[2.0, 0.5], [1.0, 2.0]])


def test_choose_flips_with_lambda() -> None:
    c = np.array([[0.1, 0, 0, 0], [1.0, 0, 0, 0]])
    index, scores = choose(np.array([1.0, 0.8]), c, {})
    assert index == 1 and isinstance(index, int)
    index, _ = choose(np.array([1.0, 0.8]), c, {"size": 1.0})
    assert index == 0
    indices, scores = choose(np.array([[1.0, 0.8], [0.1, 0.9]]), c, {})
    np.testing.assert_array_equal(indices, [1, 0])
    assert scores.shape == (2, 2)
    with pytest.raises(LambdaError):
        choose(np.array([1.0, 0.8]), c, {"size": -1})
