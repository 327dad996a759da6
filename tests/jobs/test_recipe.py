"""TrainRecipe: every training setting reaches the router and training configuration."""

from __future__ import annotations

from dataclasses import fields

from jobs.recipe import TrainRecipe
from store.settings import Settings


def test_every_train_setting_is_in_the_recipe() -> None:
    names = {f.name for f in fields(TrainRecipe)}
    settings_names = {name.removeprefix("train_") for name in Settings.model_fields if name.startswith("train_")}
    assert names == settings_names - {"interval_minutes"} | {"backbone"}


def test_from_settings_to_router_and_train_config() -> None:
    settings = Settings(backbone="/models/tiny", train_max_length=64, train_lora_r=4, train_lora_layers=1,
                        train_pool_layers=2, train_head_neighbors=7, train_head_ridge=3.0, train_epochs=9,
                        train_batch_size=5, train_learning_rate=0.5, train_loss="bce", train_holdout_share=0.3,
                        train_seed=11, train_head_select=False)
    recipe = TrainRecipe.from_settings(settings)
    assert recipe.holdout_share == 0.3
    router = recipe.router_config(["a", "b"])
    assert (router.backbone, router.expert_names, router.max_length, router.lora_r, router.lora_layers,
            router.pool_layers, router.head_neighbors) == ("/models/tiny", ["a", "b"], 64, 4, 1, 2, 7)
    train = recipe.train_config()
    assert (train.epochs, train.batch_size, train.learning_rate, train.loss, train.seed, train.head_ridge) == (
        9, 5, 0.5, "bce", 11, 3.0)
    overridden = recipe.train_config({"seed": 3, "val_share": 0.2, "not_a_field": 1})
    assert (overridden.seed, overridden.val_share, overridden.epochs) == (3, 0.2, 9)


def test_head_selection_settings_reach_the_training_config() -> None:
    """On by default: the router pools the most states a candidate needs and the training run gets the
    grid (seeded by the run's seed); off, the fixed head's settings apply and nothing is selected."""
    settings = Settings(backbone="/models/tiny", train_select_alphas=[0.5, 5.0], train_select_neighbors=[7, 70],
                        train_select_pool_layers=[1, 4], train_select_folds=3, train_spread_coverage=0.9,
                        train_pool_layers=2)
    recipe = TrainRecipe.from_settings(settings)
    assert recipe.router_config(["a"]).pool_layers == 4
    selection = recipe.train_config({"seed": 5}).selection
    assert selection is not None
    assert (selection.alphas, selection.neighbors, selection.pool_layers, selection.folds, selection.coverage,
            selection.seed) == ((0.5, 5.0), (7, 70), (1, 4), 3, 0.9, 5)
    fixed = TrainRecipe.from_settings(settings.model_copy(update={"train_head_select": False}))
    assert fixed.router_config(["a"]).pool_layers == 2 and fixed.train_config().selection is None
