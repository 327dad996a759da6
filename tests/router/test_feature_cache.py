import numpy as np
import pytest

from router.feature_cache import FEATURES, FeatureCache
from router.model import Router, RouterConfig

TEXTS = ["short one", "a considerably longer prompt about databases and indexes", "mid length text here"]


def test_only_the_texts_not_remembered_are_computed() -> None:
    cache = FeatureCache()
    asked: list[list[str]] = []

    def compute(texts):  # type: ignore[no-untyped-def]
        asked.append(list(texts))
        return np.array([[len(t), ord(t[0])] for t in texts], dtype=np.float32)

    first = cache.get("space", ["ab", "c", "ab"], compute)
    assert asked == [["ab", "c"]]  # a repeated prompt is computed once
    np.testing.assert_array_equal(first, [[2, 97], [1, 99], [2, 97]])
    again = cache.get("space", ["c", "dd", "ab"], compute)
    assert asked[-1] == ["dd"] and cache.hits == 2 and cache.misses == 4
    np.testing.assert_array_equal(again, [[1, 99], [2, 100], [2, 97]])
    cache.get("other", ["c"], compute)  # another space never answers from this one
    assert asked[-1] == ["c"]


def test_the_least_recently_used_rows_go_first_past_the_byte_bound() -> None:
    cache = FeatureCache(max_bytes=3 * 16)  # three rows of four float32

    def compute(texts):  # type: ignore[no-untyped-def]
        return np.ones((len(texts), 4), dtype=np.float32)

    cache.get("s", ["a", "b", "c"], compute)
    cache.get("s", ["a"], compute)  # "a" is now the most recently used
    cache.get("s", ["d"], compute)  # evicts "b"
    assert len(cache) == 3
    misses = cache.misses
    cache.get("s", ["a", "c", "d"], compute)
    assert cache.misses == misses
    cache.get("s", ["b"], compute)
    assert cache.misses == misses + 1


@pytest.mark.parametrize("lora_r", [0, 4])
def test_a_router_predicts_the_same_with_and_without_remembered_features(tiny_bert: str, lora_r: int) -> None:
    router = Router.from_config(RouterConfig(backbone=tiny_bert, expert_names=["a", "b"], lora_r=lora_r,
                                             pool_layers=2))
    FEATURES.clear()
    cold = router.predict(TEXTS)
    remembered = len(FEATURES)
    warm = router.predict(TEXTS[::-1])[::-1]
    np.testing.assert_allclose(warm, cold, atol=1e-6)
    np.testing.assert_allclose(router.predict_stacked(TEXTS)[:, :2], cold, atol=1e-6)
    # A head-only router's pooled states never change with training, so they are remembered; a LoRA
    # router's upper layers do change, so its are always computed.
    assert remembered == (len(TEXTS) if lora_r == 0 else 0)
    assert router.predict([]).shape == (0, 2) and router.pooled_features([]).shape == (0, 2 * 32)


def test_head_only_routers_pooling_fewer_states_share_the_remembered_rows(tiny_bert: str) -> None:
    def make(pool_layers: int) -> Router:
        return Router.from_config(RouterConfig(backbone=tiny_bert, expert_names=["a"], lora_r=0,
                                               pool_layers=pool_layers))

    FEATURES.clear()
    three = make(3).pooled_features(TEXTS)
    misses = FEATURES.misses
    one = make(1)
    sliced = one.pooled_features(TEXTS)
    assert FEATURES.misses == misses  # head selection's 1-state router reads the 3-state rows
    np.testing.assert_allclose(sliced, three[:, -32:], atol=1e-6)
    computed = one._batched(TEXTS, 8, lambda ids, mask: one.upper(one.lower(ids, mask), mask))  # what the head sees
    np.testing.assert_allclose(sliced, computed, atol=1e-5)
