from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from store.settings import Settings, get_settings


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[pytest.MonkeyPatch]:
    """No THALAMUS_* variable from the caller's shell, and a scratch working directory."""
    for key in [k for k in os.environ if k.startswith("THALAMUS_")]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def test_job_liveness_defaults_and_lost_after_must_span_two_heartbeats() -> None:
    settings = Settings(_env_file=None)
    assert (settings.job_heartbeat_seconds, settings.job_lost_after_seconds, settings.job_max_attempts) == (30, 150, 3)
    with pytest.raises(ValidationError, match="at least twice"):
        Settings(job_heartbeat_seconds=10, job_lost_after_seconds=15)
    with pytest.raises(ValidationError):
        Settings(job_max_attempts=0)


def test_defaults_put_everything_under_a_local_home(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings = Settings()
    assert settings.home == tmp_path / "var"  # ./var, made absolute
    assert settings.db_url == f"sqlite:///{tmp_path / 'var' / 'thalamus.db'}" and settings.is_sqlite
    assert settings.celery_broker_url == f"sqla+sqlite:///{tmp_path / 'var' / 'broker.db'}"
    assert (settings.experts_dir, settings.routers_dir, settings.spool_dir) == (
        tmp_path / "var" / "experts", tmp_path / "var" / "routers", tmp_path / "var" / "spool")
    assert (settings.host, settings.port, settings.label_share, settings.max_loss) == ("127.0.0.1", 8700, 0.1, 100.0)
    assert (settings.auto_approve, settings.spool, settings.default_lambdas) == (False, True, {})
    assert (settings.train_epochs, settings.train_holdout_share, settings.train_loss) == (4, 0.2, "huber")
    assert settings.backbone is None and settings.backbone_path.endswith("model")


def test_environment_variables_are_parsed_into_types(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("THALAMUS_HOME", "~/th")
    clean_env.setenv("HOME", str(tmp_path))
    clean_env.setenv("THALAMUS_DATABASE_URL", "postgresql+psycopg://u@db:5432/th")
    clean_env.setenv("THALAMUS_DEFAULT_LAMBDAS", '{"cost": 0.5}')
    clean_env.setenv("THALAMUS_AUTO_APPROVE", "true")
    clean_env.setenv("THALAMUS_LABEL_SHARE", "0.25")
    clean_env.setenv("THALAMUS_UNKNOWN_THING", "ignored")
    settings = Settings()
    assert settings.home == tmp_path / "th"
    assert settings.db_url == "postgresql+psycopg://u@db:5432/th" and not settings.is_sqlite
    assert settings.default_lambdas == {"cost": 0.5} and settings.auto_approve is True
    assert settings.label_share == 0.25


@pytest.mark.parametrize("field, value", [
    ("label_share", 1.5), ("label_share", -0.1), ("max_loss", 0), ("max_loss", float("inf")),
    ("train_holdout_share", 1.0), ("train_holdout_share", 0.0), ("train_epochs", 0), ("port", "eighty"),
    ("max_prompt_chars", 0), ("log_batch_size", 0), ("train_max_length", 8), ("gate_growth", 1.0),
    ("gate_growth", 0.5), ("gate_growth", -1), ("explore_top", -1),
])
def test_out_of_range_values_are_refused(clean_env: pytest.MonkeyPatch, field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=field):
        Settings(**{field: value})


def test_a_bad_environment_variable_is_refused_by_name(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("THALAMUS_MAX_LOSS", "nan")
    with pytest.raises(ValidationError, match="max_loss"):
        Settings()


def test_as_env_hands_exactly_these_settings_to_a_child(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("THALAMUS_PORT", "9999")  # the parent's own variable must not leak past the settings
    clean_env.setenv("THALAMUS_STALE", "x")
    settings = Settings(home=tmp_path / "h", port=8123, default_lambdas={"cost": 1.5}, auto_approve=True)
    env = settings.as_env()
    assert env["THALAMUS_PORT"] == "8123" and env["THALAMUS_DEFAULT_LAMBDAS"] == '{"cost": 1.5}'
    assert env["THALAMUS_AUTO_APPROVE"] == "true" and env["THALAMUS_HOME"] == str(tmp_path / "h")
    assert "THALAMUS_STALE" not in env and "THALAMUS_DATABASE_URL" not in env  # None is left unset
    assert env["PATH"] == os.environ["PATH"]
    for key in [k for k in os.environ if k.startswith("THALAMUS_")]:
        clean_env.delenv(key)
    for key, value in env.items():
        if key.startswith("THALAMUS_"):
            clean_env.setenv(key, value)
    assert Settings() == settings


def test_get_settings_is_cached_until_cleared(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("THALAMUS_PORT", "8111")
    first = get_settings()
    clean_env.setenv("THALAMUS_PORT", "8222")
    assert get_settings() is first and first.port == 8111
    get_settings.cache_clear()
    assert get_settings().port == 8222


def test_ensure_home_creates_the_folders(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "new")
    settings.ensure_home()
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["experts", "routers"]


def test_explore_defaults_and_opt_out_apps_from_the_environment(clean_env: pytest.MonkeyPatch) -> None:
    settings = Settings()
    assert (settings.explore, settings.explore_margin, settings.explore_opt_out_apps) == ("epsilon:0.1", 1.0, [])
    assert settings.explore_policy.as_dict() == {"policy": "epsilon:0.1", "kind": "epsilon", "value": 0.1,
                                                 "margin": 1.0, "scope": "margin", "top": 0}
    clean_env.setenv("THALAMUS_EXPLORE", " Softmax:0.20 ")
    clean_env.setenv("THALAMUS_EXPLORE_MARGIN", "0.5")
    clean_env.setenv("THALAMUS_EXPLORE_OPT_OUT_APPS", "batch, billing")
    clean_env.setenv("THALAMUS_EXPLORE_SCOPE", "overlap")
    settings = Settings()
    assert (settings.explore, settings.explore_policy.margin) == ("softmax:0.2", 0.5)
    assert settings.explore_policy.scope == "overlap"
    clean_env.setenv("THALAMUS_EXPLORE_TOP", "2")
    assert Settings().explore_policy.top == 2
    assert settings.explore_opt_out_apps == ["batch", "billing"]
    assert Settings(**{k.removeprefix("THALAMUS_").lower(): v for k, v in settings.as_env().items()
                       if k.startswith("THALAMUS_EXPLORE")}).explore_opt_out_apps == ["batch", "billing"]
    clean_env.setenv("THALAMUS_EXPLORE_OPT_OUT_APPS", '["a b"]')
    assert Settings().explore_opt_out_apps == ["a b"]


@pytest.mark.parametrize(("name", "value", "sentence"), [
    ("EXPLORE", "sometimes", "THALAMUS_EXPLORE must be 'off', 'epsilon:ε' (0 <= ε <= 1) or 'softmax:τ' (τ > 0), "
                             "got 'sometimes'."),
    ("EXPLORE", "epsilon:-0.1", "THALAMUS_EXPLORE epsilon must lie in [0, 1], got -0.1."),
    ("EXPLORE", "softmax:0", "THALAMUS_EXPLORE softmax temperature must be a finite number > 0, got 0."),
    ("EXPLORE_MARGIN", "-1", "THALAMUS_EXPLORE_MARGIN: Input should be greater than or equal to 0."),
    ("EXPLORE_SCOPE", "both", "THALAMUS_EXPLORE_SCOPE must be 'margin' or 'overlap', got 'both'."),
])
def test_a_bad_explore_setting_fails_with_one_sentence(clean_env: pytest.MonkeyPatch, name: str, value: str,
                                                       sentence: str) -> None:
    from store.settings import settings_problem

    clean_env.setenv(f"THALAMUS_{name}", value)
    with pytest.raises(ValidationError) as info:
        Settings()
    assert settings_problem(info.value) == sentence
