"""Shared fixtures. Services are real: PostgreSQL and Redis must be reachable, or the tests fail."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ADMIN_URL = os.environ.get("THALAMUS_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("THALAMUS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def make_settings(home: Path, **env: str):  # type: ignore[no-untyped-def]
    """Settings for a test, also exported to the environment so child processes see the same.

    Auth is off (every test daemon listens on loopback) unless the test passes ``auth="on"``: the
    tests of keys, scopes and rate limits (tests/daemon/test_auth.py, tests/daemon/test_gateway.py)
    run with the production default.
    """
    from store.settings import Settings, get_settings

    env = {"auth": "off", **env}
    os.environ["THALAMUS_HOME"] = str(home)
    for key, value in env.items():
        os.environ[f"THALAMUS_{key.upper()}"] = value
    get_settings.cache_clear()
    return Settings()


@pytest.fixture
def thalamus_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Restore every THALAMUS_* variable a test sets."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("THALAMUS_") and "TEST" not in k}
    yield
    for key in [k for k in os.environ if k.startswith("THALAMUS_") and "TEST" not in k]:
        del os.environ[key]
    os.environ.update(saved)
    from store.db import dispose_engines
    from store.settings import get_settings

    dispose_engines()
    get_settings.cache_clear()


@pytest.fixture
def sqlite_settings(tmp_path: Path, thalamus_env: None):  # type: ignore[no-untyped-def]
    """A migrated SQLite database in a fresh THALAMUS_HOME."""
    from store.migrate import upgrade

    settings = make_settings(tmp_path / "home")
    upgrade(settings)
    return settings


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test, dropped afterwards."""
    from sqlalchemy import create_engine, text

    name = f"thalamus_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # fail loudly: integration tests never skip
        pytest.fail(f"PostgreSQL at {ADMIN_URL} cannot be reached: {exc}")
    url = ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        from store.db import dispose_engines

        dispose_engines()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def pg_settings(tmp_path: Path, pg_url: str, thalamus_env: None):  # type: ignore[no-untyped-def]
    from store.migrate import upgrade

    settings = make_settings(tmp_path / "home", database_url=pg_url)
    upgrade(settings)
    return settings


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL).ping()
    except Exception as exc:
        pytest.fail(f"Redis at {REDIS_URL} cannot be reached: {exc}")
    return REDIS_URL


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 2-layer, 32-wide BERT with MiniLM's tokenizer: a real encoder, small enough for fast loop tests."""
    from benchmarks.stack import build_tiny_backbone

    return build_tiny_backbone(tmp_path_factory.mktemp("tiny-backbone"))


def make_masked_lm(path: Path, tokenizer_dir: str, hidden: int, seed: int, layers: int = 1) -> str:
    """A tiny random BERT masked-LM (a real local expert) saved at ``path``; returns the path."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=2 * hidden)
    BertForMaskedLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def make_causal_lm(path: Path, texts: list[str], hidden: int, seed: int, layers: int = 1) -> str:
    """A tiny random GPT-2 causal-LM with a word-level tokenizer over ``texts`` saved at ``path``; returns the path."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = sorted({word for text in texts for word in text.split()})
    vocab = {"<|endoftext|>": 0, "<unk>": 1, **{word: i + 2 for i, word in enumerate(words)}}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                        unk_token="<unk>")
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(vocab), n_positions=64, n_embd=hidden, n_layer=layers, n_head=2,
                        bos_token_id=0, eos_token_id=0)
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@dataclass(frozen=True)
class BuiltDemo:
    """The miniature demo library and the progress calls its build made."""

    library: Any  # experts.demo.DemoLibrary (imported lazily: torch is heavy)
    progress: list[tuple[float, str]]


def mini_demo_spec() -> Any:
    """The real demo build's code path at tiny sizes and steps: four causal-LMs and a masked-LM, three sizes."""
    from experts.corpus import DOMAINS
    from experts.demo import DemoSpec
    from experts.training import ExpertRecipe

    return DemoSpec(
        vocab_size=800, max_length=64, batch_size=16, max_snippets=150,
        experts=(
            ExpertRecipe("code-small", ("code",), 32, 1, 40, lr=3e-3, kind="causal-lm"),
            ExpertRecipe("docs-small", ("docs",), 32, 1, 40, lr=3e-3, kind="causal-lm"),
            ExpertRecipe("legal-small", ("legal",), 32, 1, 40, lr=3e-3, kind="causal-lm"),
            ExpertRecipe("general-large", DOMAINS, 64, 2, 40, lr=3e-3, kind="causal-lm"),
            ExpertRecipe("general-tiny", DOMAINS, 16, 1, 20),
        ),
    )


@pytest.fixture(scope="session")
def mini_demo(tmp_path_factory: pytest.TempPathFactory) -> BuiltDemo:
    """The miniature demo library, built once per test run (at ``<tmp>/lib``; read it, do not change it)."""
    from experts.demo import build_demo_library

    calls: list[tuple[float, str]] = []
    library = build_demo_library(tmp_path_factory.mktemp("demo") / "lib", seed=0, spec=mini_demo_spec(),
                                 progress=lambda f, m: calls.append((f, m)), verbose=False)
    return BuiltDemo(library, calls)


def make_gpt2_expert(path: Path, tokenizer_dir: str, seed: int = 0) -> str:
    """A tiny random GPT-2 causal-LM (a real local expert that generates text) saved at ``path``."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=tokenizer.vocab_size, n_embd=32, n_layer=1, n_head=2, n_positions=256,
                        bos_token_id=None, eos_token_id=None,  # no end token: every answer is non-empty
                        pad_token_id=tokenizer.pad_token_id)
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)
