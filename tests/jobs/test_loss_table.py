from __future__ import annotations

import numpy as np

from jobs.loss_table import holdout_mask, load_loss_table
from store.db import session_scope
from store.queries import ensure_prompts, upsert_losses
from store.schema import Expert


def test_matrix_has_nan_for_unobserved_and_averages_sources(sqlite_settings) -> None:  # type: ignore[no-untyped-def]
    with session_scope(sqlite_settings) as session:
        a = Expert(name="a", kind="external", version=2)
        b = Expert(name="b", kind="external", version=1)
        session.add_all([a, b])
        h1, h2 = ensure_prompts(session, ["one", "two"])
        upsert_losses(session, [
            {"prompt_hash": h1, "expert": "a", "expert_version": 2, "loss": 1.0, "source": "computed"},
            {"prompt_hash": h1, "expert": "a", "expert_version": 2, "loss": 3.0, "source": "reported"},
            {"prompt_hash": h1, "expert": "a", "expert_version": 1, "loss": 9.0, "source": "computed"},  # stale
            {"prompt_hash": h2, "expert": "b", "expert_version": 1, "loss": 0.5, "source": "reported"},
        ])
        session.flush()
        table = load_loss_table(session, [a, b])
    by_prompt = dict(zip(table.prompts, table.targets.tolist()))
    assert by_prompt["one"][0] == 2.0 and np.isnan(by_prompt["one"][1])
    assert np.isnan(by_prompt["two"][0]) and by_prompt["two"][1] == 0.5
    assert table.mean_losses() == [2.0, 0.5]


def test_holdout_split_is_stable_and_close_to_the_share() -> None:
    hashes = [f"{i:064x}" for i in range(4000)]
    mask = holdout_mask(hashes, 0.2)
    assert abs(mask.mean() - 0.2) < 0.03
    assert (holdout_mask(hashes[:100], 0.2) == mask[:100]).all()
