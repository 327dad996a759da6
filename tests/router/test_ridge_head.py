"""The closed-form ridge head (TrainConfig.head_ridge): hand-computed solutions and its use in training."""

import numpy as np
import pytest

from router.training import TrainConfig, _Data, _Throttle, ridge_solution, train_router

from .test_training import domain_data, make


def test_ridge_solution_by_hand() -> None:
    # One feature x = [0, 1, 2], y = [1, 3, 5]: centred x = [-1, 0, 1], centred y = [-2, 0, 2].
    # w = Σxy / (Σx² + α) = 4 / (2 + α); bias = ȳ − x̄·w = 3 − w.
    x = np.array([[0.0], [1.0], [2.0]])
    y = np.array([[1.0], [3.0], [5.0]])
    w, b = ridge_solution(x, y, alpha=2.0)
    assert w[0, 0] == pytest.approx(1.0) and b[0] == pytest.approx(2.0)
    w, b = ridge_solution(x, y, alpha=1e-12)
    assert w[0, 0] == pytest.approx(2.0) and b[0] == pytest.approx(1.0)  # least squares: y = 2x + 1


def test_ridge_solution_uses_only_observed_rows() -> None:
    x = np.array([[0.0], [1.0], [2.0], [3.0]])
    y = np.array([[1.0, 0.0], [3.0, np.nan], [5.0, 4.0], [np.nan, np.nan]])
    w, b = ridge_solution(x, y, alpha=1e-12)
    assert w[0, 0] == pytest.approx(2.0) and b[0] == pytest.approx(1.0)
    # Second expert sees rows 0 and 2 only: slope (4 − 0) / 2 = 2, bias 0.
    assert w[1, 0] == pytest.approx(2.0) and b[1] == pytest.approx(0.0, abs=1e-9)
    w, b = ridge_solution(x, np.full((4, 1), np.nan), alpha=1.0)
    assert w.tolist() == [[0.0]] and b.tolist() == [0.0]


def test_head_ridge_sets_the_head_to_the_ridge_fit(tiny_bert: str) -> None:
    prompts, targets = domain_data()
    router = make(tiny_bert, lora_r=0)
    config = TrainConfig(epochs=1, learning_rate=1e-12, head_ridge=3.0, val_share=0.0, normalize=True)
    train_router(router, prompts, targets, config)
    # Recompute by hand from the frozen pooled embeddings and the normalised targets.
    data = _Data(router, prompts, config, _Throttle(None), (0.0, 0.0))
    pooled = data.pooled(list(range(len(prompts)))).double().numpy()
    normalized = (targets - router.loss_mean.numpy()) / router.loss_std.numpy()
    w, b = ridge_solution(pooled, normalized, 3.0)
    np.testing.assert_allclose(router.head.last.weight.detach().numpy(), w, atol=1e-4)
    np.testing.assert_allclose(router.head.last.bias.detach().numpy(), b, atol=1e-4)
    # And the router routes the two domains apart like the targets do.
    chosen = router.predict(prompts).argmin(axis=1)
    truth = np.repeat([0, 1], len(prompts) // 2)  # code prompts → "code", cooking prompts → "food"
    assert (chosen == truth).mean() >= 0.9


def test_head_ridge_is_validated(tiny_bert: str) -> None:
    prompts, targets = domain_data(6)
    with pytest.raises(ValueError, match="head_ridge"):
        train_router(make(tiny_bert, lora_r=0), prompts, targets, TrainConfig(head_ridge=-1.0))
    with pytest.raises(ValueError, match="linear head"):
        train_router(make(tiny_bert, lora_r=0, head_hidden=8), prompts, targets, TrainConfig(head_ridge=1.0))
