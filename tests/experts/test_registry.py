"""register_experts on an in-memory SQLite database."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from experts.local import ExpertError
from experts.registry import register_experts
from store.schema import Base, Expert


@pytest.fixture()
def session() -> Iterator[Session]:
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as db:
        yield db
    engine.dispose()


@pytest.fixture()
def model_dir(tmp_path: Path, masked_lm_dir: Path) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(masked_lm_dir, copy)
    return copy


def test_insert_then_identical_reregister_keeps_version(session: Session, model_dir: Path) -> None:
    spec = {"name": "m", "kind": "masked-lm", "uri": str(model_dir), "attributes": {"params": 10}}
    (first,) = register_experts(session, [spec])
    assert first.version == 1 and first.status == "active" and first.attributes["params"] == 10
    assert first.uri == str(model_dir.resolve()) and len(first.attributes["content_hash"]) == 64
    (again,) = register_experts(session, [{**spec, "attributes": {"params": 11}}])
    assert again.id == first.id and again.version == 1 and again.attributes["params"] == 11
    assert session.in_transaction()  # flushed, not committed: the caller owns the transaction


def test_changed_weights_or_uri_bump_the_version(session: Session, model_dir: Path, tmp_path: Path) -> None:
    spec = {"name": "m", "kind": "masked-lm", "uri": str(model_dir)}
    register_experts(session, [spec])
    (model_dir / "README.md").write_text("a model card edit is not a new model")
    assert register_experts(session, [spec])[0].version == 1
    weights = next(model_dir.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert register_experts(session, [spec])[0].version == 2
    moved = tmp_path / "moved"
    shutil.copytree(model_dir, moved)
    assert register_experts(session, [{**spec, "uri": str(moved)}])[0].version == 3


def test_external_experts_need_no_local_path(session: Session) -> None:
    (api,) = register_experts(session, [{"name": "gpt-x", "kind": "external", "uri": "https://api.example/v1",
                                         "attributes": {"cost": 10}}])
    assert api.kind == "external" and api.version == 1 and "content_hash" not in api.attributes


def test_validation_is_all_or_nothing(session: Session, model_dir: Path, tmp_path: Path) -> None:
    good = {"name": "ok", "kind": "masked-lm", "uri": str(model_dir)}
    for bad, message in [
        ({"name": "x", "kind": "seq2seq", "uri": str(model_dir)}, "kind must be one of"),
        ({"name": "x", "kind": "masked-lm", "uri": str(tmp_path / "nope")}, "does not exist"),
        ({"name": "x", "kind": "causal-lm", "uri": str(model_dir)}, "not a causal-lm"),
        ({"name": "", "kind": "external"}, "name"),
    ]:
        with pytest.raises(ExpertError, match=message):
            register_experts(session, [good, bad])
    assert session.scalars(select(Expert)).all() == []
