import numpy as np
import pytest
import torch

from router.model import Router, RouterConfig, init_head_cold_start
from router.training import TrainConfig, _Data, _Throttle, hash_split, train_router

from .conftest import two_domains


def make(path: str, **kw) -> Router:  # type: ignore[no-untyped-def]
    return Router.from_config(RouterConfig(backbone=path, expert_names=["code", "food"], **kw))


def domain_data(n: int = 24, offset: int = 0) -> tuple[list[str], np.ndarray]:
    code, food = two_domains(n, offset)
    targets = np.array([[0.5, 2.0]] * n + [[2.0, 0.5]] * n)
    targets[::3, 1] = np.nan  # some rows only have one expert's loss
    return code + food, targets


@pytest.mark.parametrize("lora_r, cache_dtype, atol, pool_layers", [
    (8, "float32", 1e-5, 1), (0, "float32", 1e-5, 1), (8, "float16", 5e-3, 1), (8, "float32", 1e-5, 3), (0, "float32", 1e-5, 3)])
def test_cached_forward_equals_full_forward(tiny_bert: str, lora_r: int, cache_dtype: str, atol: float,
                                            pool_layers: int) -> None:
    router = make(tiny_bert, lora_r=lora_r, lora_layers=1, pool_layers=pool_layers)
    with torch.no_grad():
        for p in router.trainable_parameters():
            p.normal_(0, 0.3)  # LoRA B starts at 0; make the top layer really differ from the base
    prompts, _ = domain_data(6)
    data = _Data(router, prompts, TrainConfig(cache_dtype=cache_dtype, eval_batch_size=5), _Throttle(None), (0, 0))
    router.eval()
    with torch.no_grad():
        cached = router.denormalize(router.normalized(data.pooled(list(range(len(prompts))))))
    np.testing.assert_allclose(cached.numpy(), router.predict(prompts), atol=atol)


def test_hash_split_is_stable_and_never_empty() -> None:
    prompts = [f"prompt {i}" for i in range(200)]
    mask = hash_split(prompts, 0.1)
    assert 5 < mask.sum() < 40
    np.testing.assert_array_equal(mask, hash_split(list(reversed(prompts)), 0.1)[::-1])
    assert hash_split(["a", "b"], 0.1).sum() == 1
    assert hash_split(["same", "same"], 0.1).sum() == 0
    assert hash_split(prompts, 0.0).sum() == 0


def test_head_only_training_learns_and_reports(tiny_bert: str) -> None:
    router = make(tiny_bert, lora_r=0)
    prompts, targets = domain_data()
    calls: list[tuple[float, str]] = []
    report = train_router(router, prompts, targets, TrainConfig(epochs=30, learning_rate=5e-2, patience=30,
                                                                 val_share=0.2), progress=lambda f, m: calls.append((f, m)))
    assert report.epochs_run == 30 and len(report.train_losses) == 30 and len(report.val_losses) == 31
    assert report.val_losses[report.best_epoch] == min(report.val_losses) == report.best_val_loss
    assert report.train_losses[-1] < report.train_losses[0]
    assert report.n_train + report.n_val == len(prompts) and report.examples_per_second > 0
    fractions = [f for f, _ in calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(calls) >= 3
    assert not router.training


def test_training_is_deterministic(tiny_bert: str) -> None:
    prompts, targets = domain_data(8)
    config = TrainConfig(epochs=2, batch_size=8, seed=7)
    outputs = []
    for _ in range(2):
        router = make(tiny_bert, lora_layers=1)
        report = train_router(router, prompts, targets, config)
        outputs.append((router.predict(prompts), report.train_losses))
    np.testing.assert_array_equal(outputs[0][0], outputs[1][0])
    assert outputs[0][1] == outputs[1][1]


def test_uncached_path_trains_the_same_way(tiny_bert: str) -> None:
    prompts, targets = domain_data(8)
    results = []
    for cache in (True, False):
        router = make(tiny_bert, lora_layers=1)
        report = train_router(router, prompts, targets, TrainConfig(epochs=2, cache=cache, cache_dtype="float32"))
        results.append(report.train_losses)
    np.testing.assert_allclose(results[0], results[1], rtol=1e-4)


def test_bad_targets_are_refused(tiny_bert: str) -> None:
    router = make(tiny_bert, lora_r=0)
    with pytest.raises(ValueError, match="shape"):
        train_router(router, ["a", "b"], np.zeros((2, 3)), TrainConfig())
    with pytest.raises(ValueError, match="no observed"):
        train_router(router, ["a", "b"], np.full((2, 2), np.nan), TrainConfig())
    with pytest.raises(ValueError, match="infinite"):
        train_router(router, ["a", "b"], np.array([[np.inf, 1.0], [1.0, 1.0]]), TrainConfig())
    with pytest.raises(ValueError, match="loss must be"):
        train_router(router, ["a", "b"], np.ones((2, 2)), TrainConfig(loss="kl"))


def test_bce_training_on_scores(tiny_bert: str) -> None:
    """Losses in [0, 1] (1 − score), trained as the production recipe does (ridge-initialised head):
    the objective is BCE, it falls, and the router learns which expert suits each domain."""
    router = make(tiny_bert, lora_r=0)
    prompts, targets = domain_data(8)
    scores = targets / 2.0  # code: (0.25, 1.0), food: (1.0, 0.25); 10 of 26 observed entries are 1.0
    report = train_router(router, prompts, scores, TrainConfig(loss="bce", epochs=10, val_share=0.0, head_ridge=1.0))
    assert report.epochs_run == 10 and report.train_losses[-1] < report.train_losses[0]
    # BCE is bounded below by the targets' entropy: H(0.25) = 0.5623 nats on 13 of the 26 observed entries,
    # 0 on the others. A squared or Huber loss would sit far below this bound.
    floor = 13 / 26 * 0.5623
    assert floor <= report.train_losses[-1] < floor + 0.15, report.train_losses
    predicted = router.predict(prompts)
    np.testing.assert_array_equal(predicted.argmin(axis=1), [0] * 8 + [1] * 8)
    assert ((predicted > 0) & (predicted < 1)).all()


@pytest.mark.slow
def test_minilm_lora_training_routes_each_domain_to_its_expert(minilm_path: str) -> None:
    """Real LoRA training on the real MiniLM: expert "code" is good on code, "food" on recipes."""
    router = make(minilm_path, lora_r=8, lora_layers=2)
    init_head_cold_start(router, [1.25, 1.25], [1e9, 2e9])
    prompts, targets = domain_data(24)
    report = train_router(router, prompts, targets, TrainConfig(epochs=4, learning_rate=2e-3, val_share=0.15))
    assert report.n_val >= 3
    assert report.best_val_loss is not None and report.best_val_loss < 0.5 * report.val_losses[0]
    assert report.best_epoch >= 1
    code, food = two_domains(5, offset=1000)
    code = [c.replace("compute", "transform") for c in code]
    food = [f.replace("cake", "bread") for f in food]
    chosen = router.predict(code + food).argmin(axis=1)
    np.testing.assert_array_equal(chosen, [0] * 5 + [1] * 5)


def test_neighbour_head_remembers_every_observed_row_and_routes_by_domain(tiny_bert: str) -> None:
    prompts, targets = domain_data(12)
    targets[0] = np.nan  # a row with nothing observed is dropped before training
    router = make(tiny_bert, lora_r=0, head_neighbors=3, pool_layers=2)
    report = train_router(router, prompts, targets, TrainConfig(epochs=2, head_ridge=1.0, val_share=0.25))
    assert router.memory_keys.shape == (len(prompts) - 1, router.head.last.in_features)
    assert report.n_val > 0 and len(report.val_losses) >= 2
    fresh_code, fresh_food = two_domains(4, offset=100)
    predicted = router.predict(fresh_code + fresh_food)
    assert (predicted[:4, 0] < predicted[:4, 1]).all() and (predicted[4:, 1] < predicted[4:, 0]).all()


def test_lora_training_refreshes_the_neighbour_memory_with_the_adapted_encoder(tiny_bert: str) -> None:
    prompts, targets = domain_data(10)
    router = make(tiny_bert, lora_r=4, lora_layers=1, pool_layers=2, head_neighbors=5)
    train_router(router, prompts, targets, TrainConfig(epochs=2, learning_rate=5e-2, val_share=0.0))
    assert any(float(p.detach().abs().max()) > 0 for n, p in router.named_parameters() if "lora_B" in n)  # trained
    keys = router.memory_keys.float()
    fresh = torch.tensor(router.embed(prompts))
    fresh = fresh / fresh.norm(dim=1, keepdim=True)
    assert keys.shape[0] == len(prompts)
    torch.testing.assert_close(keys, fresh, atol=2e-3, rtol=0)  # the memory holds the final embeddings


@pytest.mark.parametrize("family", ["mlp", "blend", "shrink", "ridge", "shared"])
def test_every_selectable_head_becomes_what_the_router_serves(tiny_bert: str, family: str) -> None:
    """apply_selection turns each family into the router's own configuration: its predictions on the
    training prompts equal what the head fitted on the pooled features predicts, and a bundle-shaped
    state round-trips (the head's shape and the spread buffers follow the selection)."""
    from router.selection import Candidate, RidgePath, Selection, fit_mlp, mlp_apply, top_layers
    from router.training import apply_selection

    router = make(tiny_bert, lora_r=0, pool_layers=3)
    prompts, targets = domain_data()
    features = router.embed(prompts).astype(np.float64)
    chosen = {"mlp": Candidate("mlp", 2, hidden=8), "blend": Candidate("blend", 1, alpha=1.0, k=5),
              "shrink": Candidate("shrink", 1, alpha=1.0, k=5, kappa=4.0),
              "ridge": Candidate("ridge", 3, alpha=1.0), "shared": Candidate("shared", 2, alpha=10.0, shared_alpha=0.1)}[family]
    selection = Selection(chosen=chosen, table=[], objective="routed_loss", best=chosen.label, threshold=0.0,
                          folds=np.zeros(len(prompts), dtype=int), spread_k=5, spread_scale=np.ones(2),
                          spread_floor=np.full(2, 0.01), oof_coverage=None, ridge_alpha=1.0)
    mean, std = np.nanmean(targets, axis=0), np.nanstd(targets, axis=0)
    router.loss_mean, router.loss_std = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
    apply_selection(router, selection, features, targets, TrainConfig(seed=0))
    assert (router.config.pool_layers, router.config.head_hidden) == (chosen.pool_layers, chosen.hidden or 0)
    x = top_layers(features, chosen.pool_layers, 3)
    normalized = (targets - mean) / std
    if family == "mlp":
        from router.training import selection_epochs

        expected = mlp_apply(*fit_mlp(x, normalized, 8, selection_epochs(TrainConfig(selection=None)), 0), x)
        assert router.config.head_neighbors == 0
    elif family == "shared":
        [(weight, bias)] = RidgePath(x, normalized).shared([(0.1, 10.0)])
        expected = x @ weight.T + bias
        assert router.config.head_neighbors == 0
    else:
        weight, bias = RidgePath(x, normalized).solution(1.0)
        expected = x @ weight.T + bias
    np.testing.assert_allclose(router.head_normalized(torch.tensor(x, dtype=torch.float32)).detach().numpy(),
                               expected, atol=2e-3)
    assert router.config.head_shrink == (4.0 if family == "shrink" else 0.0)
    predicted, spread = router.predict_with_spread(prompts)
    assert predicted.shape == spread.shape == (len(prompts), 2) and np.isfinite(spread).all()
    if family == "shrink":  # the neighbour sums of the memory (the training rows), shrunk toward the ridge head
        unit = x / np.linalg.norm(x, axis=1, keepdims=True)
        nearest = np.argsort(-(unit @ unit.T), axis=1, kind="stable")[:, :5]
        values = targets[nearest]
        seen = ~np.isnan(values)
        total, count = np.where(seen, values, 0.0).sum(1), seen.sum(1)
        shrunk = (total + 4.0 * (expected * std + mean)) / (count + 4.0)
        np.testing.assert_allclose(predicted, shrunk, atol=5e-3)
    fresh = make(tiny_bert, **{k: v for k, v in router.config.to_dict().items()
                               if k in ("lora_r", "pool_layers", "head_hidden", "head_neighbors", "head_blend",
                                        "head_shrink", "spread_neighbors")})
    fresh.load_trainable_state_dict(router.trainable_state_dict())
    np.testing.assert_allclose(fresh.predict_with_spread(prompts)[1], spread, atol=1e-5)


def test_with_lora_the_head_is_selected_on_the_adapted_embeddings(tiny_bert: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import router.training as training
    from router.selection import SelectionConfig

    router = make(tiny_bert, lora_r=8, lora_layers=1, pool_layers=2)
    prompts, targets = domain_data()
    frozen = make(tiny_bert, lora_r=0, pool_layers=2).embed(prompts)
    seen: dict[str, np.ndarray] = {}
    select = training.select_head

    def spy(features, values, config, max_pool=None):  # type: ignore[no-untyped-def]
        seen["features"] = features
        return select(features, values, config, max_pool=max_pool)

    monkeypatch.setattr(training, "select_head", spy)
    report = train_router(router, prompts, targets, TrainConfig(
        epochs=2, learning_rate=5e-2, val_share=0.0, cache_dtype="float32",
        selection=SelectionConfig(pool_layers=(1, 2), neighbors=(3, 10), folds=3, mlp_hidden=0)))
    assert report.selection is not None and report.selection["rows"] == len(prompts)
    features = seen["features"]
    width = features.shape[1] // 2
    adapted = router.embed(prompts)  # the trained router's own encoder, LoRA included
    np.testing.assert_allclose(features[:, -width:], adapted[:, -width:], atol=1e-4)
    assert np.abs(features[:, -width:] - frozen[:, -width:]).max() > 1e-3  # LoRA moved the embeddings
    assert router.config.spread_neighbors in (3, 10)
