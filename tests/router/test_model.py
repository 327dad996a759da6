import json

import numpy as np
import pytest
import torch

from router.model import Router, RouterConfig, expand_experts, init_head_cold_start, renormalize

TEXTS = ["short one", "a considerably longer prompt about databases and indexes", "mid length text here"]


def make(path: str, names: list[str] | None = None, **kw) -> Router:  # type: ignore[no-untyped-def]
    return Router.from_config(RouterConfig(backbone=path, expert_names=names or ["a", "b", "c"], **kw))


def test_config_json_round_trip_and_validation(tiny_bert: str) -> None:
    config = RouterConfig(backbone=tiny_bert, expert_names=["x", "y"], lora_targets=["query", "key"], head_hidden=8)
    again = RouterConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    for bad in [{"expert_names": []}, {"expert_names": ["x", "x"]}, {"pooling": "max"}, {"lora_r": -1},
                {"lora_layers": 0}]:
        with pytest.raises(ValueError):
            RouterConfig(**{"backbone": tiny_bert, "expert_names": ["x"], **bad})
    with pytest.raises(ValueError, match="unknown RouterConfig fields"):
        RouterConfig.from_dict({**config.to_dict(), "colour": 1})


def test_lora_only_on_top_layers_and_base_frozen(tiny_bert: str) -> None:
    router = make(tiny_bert, lora_layers=1)
    assert router.num_layers == 2 and router.split == 1
    trainable = {n for n, p in router.named_parameters() if p.requires_grad}
    lora = {n for n in trainable if "lora_" in n}
    assert lora and all(".layer.1." in n for n in lora)
    assert {n.split(".")[-4] for n in lora} == {"query", "value"}
    assert trainable == lora | {"head.last.weight", "head.last.bias"}
    assert router.expert_names == ["a", "b", "c"]
    assert router.tokenize(TEXTS)["input_ids"].shape[0] == len(TEXTS)


def test_staged_forward_equals_hf_forward(tiny_bert: str) -> None:
    router = make(tiny_bert)
    with torch.no_grad():
        for p in router.trainable_parameters():
            p.normal_(0, 0.3)  # LoRA B starts at 0: make the adapted layer differ from the base
    batch = router.tokenize(TEXTS)
    with torch.no_grad():
        reference = router.backbone(**batch).last_hidden_state
        ours = router._layers(router.lower(**batch), batch["attention_mask"], router.split, router.num_layers)[-1]
    keep = batch["attention_mask"].bool()
    torch.testing.assert_close(ours[keep], reference[keep], atol=1e-5, rtol=1e-5)


def test_predict_shapes_order_and_head_only(tiny_bert: str) -> None:
    router = make(tiny_bert, lora_r=0, head_hidden=16)
    assert not any("lora_" in n for n, _ in router.named_parameters())
    out = router.predict(TEXTS, batch_size=2)
    assert out.shape == (3, 3) and out.dtype == np.float32
    one_by_one = np.concatenate([router.predict([t]) for t in TEXTS])
    np.testing.assert_allclose(out, one_by_one, atol=1e-5)
    assert router.embed(TEXTS).shape == (3, 32)
    assert router.predict([]).shape == (0, 3)


def test_forward_is_in_original_units(tiny_bert: str) -> None:
    router = make(tiny_bert)
    base = router.predict(TEXTS)
    with torch.no_grad():
        router.loss_mean.fill_(10.0)
        router.loss_std.fill_(2.0)
    np.testing.assert_allclose(router.predict(TEXTS), base * 2.0 + 10.0, rtol=1e-5, atol=1e-5)


def test_cold_start_without_data_prefers_the_largest_expert(tiny_bert: str) -> None:
    router = make(tiny_bert)
    init_head_cold_start(router, [None, None, None], [1e9, 7e9, None])
    out = router.predict(TEXTS)
    np.testing.assert_allclose(out, np.tile([1 - 1 / 7, 0.0, 1.0], (3, 1)), atol=1e-6)
    assert (out.argmin(axis=1) == 1).all()


def test_cold_start_with_data_prefers_the_lowest_mean_loss(tiny_bert: str) -> None:
    router = make(tiny_bert)
    init_head_cold_start(router, [2.0, 1.5, None], [7e9, 1e9, 1e10])
    out = router.predict(TEXTS)
    assert (out.argmin(axis=1) == 1).all()
    np.testing.assert_allclose(out[0, :2], [2.0, 1.5], atol=1e-6)
    assert out[0, 2] > 2.0  # unobserved expert: above the worst observed mean
    with pytest.raises(ValueError):
        init_head_cold_start(router, [1.0], [1.0])


def test_renormalize_keeps_predictions(tiny_bert: str) -> None:
    router = make(tiny_bert)
    before = router.predict(TEXTS)
    renormalize(router, [1.0, -2.0, 3.0], [0.5, 2.0, 4.0])
    np.testing.assert_allclose(router.predict(TEXTS), before, atol=1e-5)


def test_expand_experts_keeps_old_rows(tiny_bert: str) -> None:
    router = make(tiny_bert, names=["a", "b"])
    with torch.no_grad():
        router.head.last.weight.normal_()
        router.loss_mean.copy_(torch.tensor([1.0, 2.0]))
    before = router.predict(TEXTS)
    bigger = expand_experts(router, ["b", "new", "a"], [None, 0.7, None])
    after = bigger.predict(TEXTS)
    assert bigger.expert_names == ["b", "new", "a"] and router.expert_names == ["a", "b"]
    np.testing.assert_allclose(after[:, [2, 0]], before, atol=1e-5)
    np.testing.assert_allclose(after[:, 1], 0.7, atol=1e-6)
    np.testing.assert_allclose(router.predict(TEXTS), before)  # the original is untouched
    unseen = expand_experts(router, ["a", "ghost"], [None, None])
    assert (unseen.predict(TEXTS)[:, 1] > 2.0).all()


def test_pool_layers_concatenates_the_top_hidden_states(tiny_bert: str) -> None:
    """The tiny encoder has 2 layers of width 32: 3 hidden states (embeddings + 2 layers) can be pooled."""
    router = make(tiny_bert, lora_r=0, pool_layers=3)
    batch = router.tokenize(TEXTS)
    with torch.no_grad():
        states = router.backbone(**batch, output_hidden_states=True).hidden_states
    weights = batch["attention_mask"].unsqueeze(-1).float()
    mean = [((s * weights).sum(1) / weights.sum(1)).numpy() for s in states]
    embedded = router.embed(TEXTS)
    assert embedded.shape == (3, 3 * 32) and router.head.last.in_features == 3 * 32 and router.split == 0
    np.testing.assert_allclose(embedded, np.concatenate(mean, axis=1), atol=1e-5)
    top_two = make(tiny_bert, lora_r=0, pool_layers=2)
    assert top_two.split == 1
    np.testing.assert_allclose(top_two.embed(TEXTS), np.concatenate(mean[1:], axis=1), atol=1e-5)
    lora = make(tiny_bert, lora_r=4, lora_layers=1, pool_layers=2)
    np.testing.assert_allclose(lora.embed(TEXTS), top_two.embed(TEXTS), atol=1e-5)  # LoRA B starts at zero
    deep = make(tiny_bert, lora_r=4, lora_layers=1, pool_layers=3)  # pools below the LoRA layer (1) too
    assert deep.split == 0
    np.testing.assert_allclose(deep.embed(TEXTS), embedded, atol=1e-5)
    with pytest.raises(ValueError, match="exceeds"):
        make(tiny_bert, lora_r=0, pool_layers=4)


def test_neighbour_head_answers_from_memory_and_falls_back_to_the_head(tiny_bert: str) -> None:
    router = make(tiny_bert, head_neighbors=1)
    init_head_cold_start(router, [5.0, 6.0, 7.0], [None, None, None])
    assert router.memory_keys.shape[0] == 0
    np.testing.assert_allclose(router.predict(TEXTS), [[5.0, 6.0, 7.0]] * 3, atol=1e-6)  # empty memory
    pooled = torch.tensor(router.embed(TEXTS))
    losses = torch.tensor([[0.1, 0.2, float("nan")], [1.1, 1.2, 1.3], [2.1, float("nan"), 2.3]])
    router.set_memory(pooled, losses)
    predicted = router.predict(TEXTS)  # each prompt's nearest neighbour is itself
    np.testing.assert_allclose(predicted, [[0.1, 0.2, 7.0], [1.1, 1.2, 1.3], [2.1, 6.0, 2.3]], atol=1e-5)
    # the memory travels with the trainable state, whatever its size, and old states load empty
    clone = make(tiny_bert, head_neighbors=1)
    clone.load_trainable_state_dict(router.trainable_state_dict())
    np.testing.assert_allclose(clone.predict(TEXTS), predicted, atol=1e-6)
    old = {k: v for k, v in router.trainable_state_dict().items() if not k.startswith("memory_")}
    clone.load_trainable_state_dict(old)
    assert clone.memory_keys.shape[0] == 0
    # adding an expert keeps the memory, with nothing observed for the newcomer
    grown = expand_experts(router, ["c", "a", "new"], [None, None, 9.0])
    np.testing.assert_allclose(grown.predict(TEXTS)[:, :2], predicted[:, [2, 0]], atol=1e-5)
    np.testing.assert_allclose(grown.predict(TEXTS)[:, 2], 9.0, atol=1e-5)


def test_neighbour_losses_average_observed_entries_of_the_k_nearest() -> None:
    from router.layer import neighbour_losses

    keys = torch.eye(3)
    losses = torch.tensor([[1.0, float("nan")], [3.0, float("nan")], [5.0, 4.0]])
    query = torch.tensor([[1.0, 0.2, 0.0], [0.0, 1.0, 0.9]])
    # query 0: nearest rows 0 then 1; query 1: rows 1 then 2
    np.testing.assert_allclose(neighbour_losses(query, keys, losses, 1).numpy(), [[1.0, np.nan], [3.0, np.nan]])
    np.testing.assert_allclose(neighbour_losses(query, keys, losses, 2).numpy(), [[2.0, np.nan], [4.0, 4.0]])
    np.testing.assert_allclose(neighbour_losses(query, keys, losses, 99).numpy(), [[3.0, 4.0], [3.0, 4.0]])


def test_a_shrunk_neighbour_head_leans_on_the_parametric_head_where_few_neighbours_observed(tiny_bert: str) -> None:
    """head_shrink κ: (Σ observed + κ · parametric) / (count + κ) over the k neighbours, in original units
    the same as in normalised ones; the parametric head alone where no neighbour observed an expert."""
    router = make(tiny_bert, head_neighbors=3, head_shrink=2.0)
    init_head_cold_start(router, [5.0, 6.0, 7.0], [None, None, None])  # the parametric head: these means
    pooled = torch.tensor(router.embed(TEXTS))
    losses = torch.tensor([[1.0, 2.0, float("nan")], [3.0, float("nan"), float("nan")], [5.0, 4.0, float("nan")]])
    router.set_memory(pooled, losses)  # k = 3 = every row: each prompt's neighbours are the whole memory
    expected = [(1.0 + 3.0 + 5.0 + 2 * 5.0) / (3 + 2), (2.0 + 4.0 + 2 * 6.0) / (2 + 2), 7.0]
    np.testing.assert_allclose(router.predict(TEXTS), [expected] * 3, atol=1e-4)
    with pytest.raises(ValueError, match="head_shrink"):
        make(tiny_bert, head_shrink=-1.0)
