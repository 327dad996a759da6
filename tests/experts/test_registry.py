"""register_experts on an in-memory SQLite database."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from experts.local import ExpertError
from experts.registry import register_experts, update_attributes
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


def test_attributes_follow_the_typed_schema(session: Session, model_dir: Path) -> None:
    good = {"name": "ok", "kind": "external"}
    for attributes, message in [
        ({"params": -5}, "attribute params must be a number > 0, not -5"),
        ({"params": 0}, "attribute params must be a number > 0"),
        ({"params": True}, "attribute params must be a number"),
        ({"cost": -0.1}, "attribute cost must be a number >= 0"),
        ({"latency_ms": "fast"}, "attribute latency_ms must be a number"),
        ({"release_date": "notadate"}, "attribute release_date must be an ISO date"),
        ({"release_date": 20240101}, "attribute release_date must be an ISO date"),
        ({"license": ""}, "attribute license must be a non-empty string"),
        ({"benchmark": float("nan")}, "attribute benchmark must be a plain JSON value"),
        ([("params", 1)], "attributes must be a mapping"),
    ]:
        with pytest.raises(ExpertError, match=message):
            register_experts(session, [good, {"name": "x", "kind": "external", "attributes": attributes}])
    assert session.scalars(select(Expert)).all() == []

    (expert,) = register_experts(session, [{
        "name": "m", "kind": "masked-lm", "uri": str(model_dir),
        "attributes": {"params": "51e9", "cost": 0, "latency_ms": 12.5, "release_date": "2025-06-01T12:00:00",
                       "license": "MIT", "domain": "code", "layers": 2, "tags": ["a", "b"]},
    }])
    attributes = {k: v for k, v in expert.attributes.items() if k != "content_hash"}
    assert attributes == {"params": 51e9, "cost": 0, "latency_ms": 12.5, "release_date": "2025-06-01",
                          "license": "MIT", "domain": "code", "layers": 2, "tags": ["a", "b"]}


def test_a_stored_invalid_attribute_must_be_fixed_before_a_merge(session: Session) -> None:
    """A row written before the schema existed (or by hand) does not survive a re-registration unfixed."""
    session.add(Expert(name="old", kind="external", version=1, attributes={"params": 7e9, "release_date": "soon"}))
    session.flush()
    with pytest.raises(ExpertError, match=r"'old': attribute release_date must be an ISO date \(YYYY-MM-DD\), not 'soon'"):
        register_experts(session, [{"name": "old", "kind": "external", "attributes": {"cost": 1}}])
    (fixed,) = register_experts(session, [{"name": "old", "kind": "external",
                                           "attributes": {"release_date": "2024-05-01"}}])
    assert fixed.attributes == {"params": 7e9, "release_date": "2024-05-01"}


def test_max_loss_attribute_is_typed() -> None:
    """``max_loss`` bounds the losses accepted for an expert (store/loss_bounds.py): a positive number."""
    from experts.attributes import validate_attributes
    from experts.local import ExpertError

    assert validate_attributes("e", {"max_loss": "500"}) == {"max_loss": 500.0}
    for bad in (0, -1, "wide", float("inf")):
        with pytest.raises(ExpertError, match="attribute max_loss must be"):
            validate_attributes("e", {"max_loss": bad})


def test_update_attributes_validates_every_change_first_and_keeps_version_and_status(session: Session) -> None:
    a, b = register_experts(session, [{"name": "a", "kind": "external", "attributes": {"cost": 1}},
                                      {"name": "b", "kind": "external"}])
    b.status = "retired"
    with pytest.raises(ExpertError, match="'b': attribute cost must be a number >= 0"):
        update_attributes(session, {"a": {"cost": 0.5}, "b": {"cost": -1}})
    assert a.attributes == {"cost": 1}
    with pytest.raises(ExpertError, match="'c' is not registered"):
        update_attributes(session, {"c": {"cost": 1}})
    update_attributes(session, {"a": {"cost": 0.5, "latency_ms": 20}, "b": {"cost": 2}})
    assert a.attributes == {"cost": 0.5, "latency_ms": 20} and (a.version, a.status) == (1, "active")
    assert b.attributes == {"cost": 2} and (b.version, b.status) == (1, "retired")
