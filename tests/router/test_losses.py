import math

import numpy as np
import pytest
import torch

from router.losses import Normalizer, masked_divergence

PRED = torch.tensor([[1.0, 2.0], [0.0, 5.0]])
TARGET = torch.tensor([[0.0, float("nan")], [2.0, 5.0]])
MASK = ~torch.isnan(TARGET)


def test_mse_and_huber_over_observed_entries_only() -> None:
    # observed errors: 1, -2, 0
    assert masked_divergence(PRED, TARGET, MASK, "mse").item() == pytest.approx((1 + 4 + 0) / 3)
    assert masked_divergence(PRED, TARGET, MASK, "huber").item() == pytest.approx((0.5 + 1.5 + 0) / 3)


def test_bce_on_losses_in_unit_interval() -> None:
    pred = torch.tensor([[0.8, 0.3]], requires_grad=True)
    target = torch.tensor([[1.0, float("nan")]])
    value = masked_divergence(pred, target, ~torch.isnan(target), "bce")
    assert value.item() == pytest.approx(-math.log(0.8), rel=1e-5)
    value.backward()
    assert pred.grad is not None and pred.grad[0, 1] == 0
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        masked_divergence(torch.zeros(1, 1), torch.tensor([[3.0]]), torch.ones(1, 1, dtype=torch.bool), "bce")


def test_nothing_observed_gives_zero_with_graph() -> None:
    pred = torch.ones(2, 2, requires_grad=True)
    value = masked_divergence(pred, torch.full((2, 2), float("nan")), torch.zeros(2, 2, dtype=torch.bool))
    assert value.item() == 0.0
    value.backward()  # still differentiable


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown divergence"):
        masked_divergence(PRED, TARGET, MASK, "kl")
    with pytest.raises(ValueError, match="differ"):
        masked_divergence(PRED, TARGET[:1], MASK[:1])


def test_normalizer() -> None:
    targets = np.array([[1.0, np.nan, 4.0], [3.0, np.nan, 4.0], [np.nan, np.nan, 4.0]])
    norm = Normalizer.fit(targets)
    np.testing.assert_allclose(norm.mean, [2.0, 0.0, 4.0])
    np.testing.assert_allclose(norm.std, [1.0, 1.0, 1.0])  # constant column → std 1
    np.testing.assert_array_equal(norm.count, [2, 0, 3])
    out = norm.transform(targets)
    np.testing.assert_allclose(out[:, 0], [-1.0, 1.0, np.nan])
    np.testing.assert_allclose(norm.inverse(out), targets)
    wide = Normalizer.fit(np.array([[0.0], [4.0]]))
    assert wide.mean[0] == 2.0 and wide.std[0] == 2.0
