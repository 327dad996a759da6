"""A miniature demo library (same code path as the real build, tiny sizes and steps)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experts.corpus import DOMAINS, snippets, split_of
from experts.demo import DemoLibrary, build_demo_library, load_demo_library, specialisation_problems
from tests.conftest import BuiltDemo, mini_demo_spec

MINI = mini_demo_spec()


@pytest.fixture
def built(mini_demo: BuiltDemo) -> tuple[DemoLibrary, list[tuple[float, str]]]:
    return mini_demo.library, mini_demo.progress


def test_manifest_lists_real_experts_of_two_sizes(built) -> None:  # type: ignore[no-untyped-def]
    library, calls = built
    manifest = json.loads((library.root / "library.json").read_text())
    kinds = {"code-small": "causal-lm", "docs-small": "causal-lm", "legal-small": "causal-lm",
             "general-large": "causal-lm", "general-tiny": "masked-lm"}
    assert [e["name"] for e in manifest["experts"]] == list(kinds)
    assert {e["name"]: e["kind"] for e in library.experts} == kinds
    for expert in library.experts:
        uri = Path(expert["uri"])
        assert uri.is_absolute() and (uri / "config.json").is_file() and (uri / "tokenizer.json").is_file()
        attrs = expert["attributes"]
        assert isinstance(attrs["params"], int) and attrs["latency_ms"] > 0 and attrs["release_date"]
    params = {e["name"]: e["attributes"]["params"] for e in library.experts}
    costs = {e["name"]: e["attributes"]["cost"] for e in library.experts}
    assert params["general-large"] > 1.5 * params["code-small"] > 1.5 * params["general-tiny"]
    assert costs["general-large"] / costs["code-small"] == pytest.approx(
        params["general-large"] / params["code-small"], rel=1e-3)
    assert set(manifest["quality"]) == set(params)
    fractions = [f for f, _ in calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_experts_load_share_a_tokenization_and_differ(built) -> None:  # type: ignore[no-untyped-def]
    from experts.local import LocalExpert

    library, _ = built
    loaded = [LocalExpert.load(e["name"], e["kind"], e["uri"]) for e in library.experts]
    assert len({tuple(sorted(x.tokenizer.get_vocab().items())) for x in loaded}) == 1
    prompts = [p["prompt"] for p in library.prompts(split="heldout")][:6]
    causal, masked = loaded[0].tokenizer, loaded[4].tokenizer
    for prompt in prompts:  # the same token ids; the causal-LM's template is [CLS] + text, with no [SEP] after
        ids = masked(prompt)["input_ids"]
        assert causal(prompt)["input_ids"] == ids[:-1] and ids[-1] == masked.sep_token_id
    losses = [tuple(round(v, 4) for v in x.losses(prompts)) for x in loaded]
    assert len(set(losses)) == len(loaded) and all(v > 0 for row in losses for v in row)


def test_the_causal_expert_continues_a_prompt(built) -> None:  # type: ignore[no-untyped-def]
    from experts.local import LocalExpert

    library, _ = built
    entry = next(e for e in library.experts if e["kind"] == "causal-lm")
    out = LocalExpert.load(entry["name"], entry["kind"], entry["uri"]).infer("Permission is hereby granted", 5)
    assert out["kind"] == "generation" and out["tokens"] == 5 and out["text"].strip()


def test_domain_experts_specialise(built) -> None:  # type: ignore[no-untyped-def]
    """Even the miniature build specialises: each small expert is the best small expert on its own
    domain. (Its 40 steps are too few for the premise against the generalist; the full build's
    ≥ 0.3 nats is checked by `thalamus bench demo-dataset` and the demo, which fail without it.)"""
    library, _ = built
    quality = library.quality
    for domain in DOMAINS:
        own = quality[f"{domain}-small"][domain]
        others = [quality[f"{d}-small"][domain] for d in DOMAINS if d != domain]
        assert own < min(others), (domain, quality)


def test_specialisation_problems_name_each_failure() -> None:
    good = {"code-small": {"code": 1.5, "docs": 7.0, "legal": 7.0, "all": 5.3},
            "docs-small": {"code": 7.0, "docs": 2.0, "legal": 7.0, "all": 5.5},
            "legal-small": {"code": 8.0, "docs": 8.0, "legal": 1.0, "all": 5.7},
            "general-large": {"code": 2.5, "docs": 3.0, "legal": 1.5, "all": 2.3}}
    assert specialisation_problems(good) == []
    assert specialisation_problems(good, margin=0.6) == ["legal-small beats general-large on legal by 0.500 nats, "
                                                         "less than 0.6"]
    bad = {**good, "code-small": {"code": 2.3, "docs": 2.9, "legal": 7.0, "all": 2.0}}
    assert specialisation_problems(bad) == ["code-small beats general-large on code by 0.200 nats, less than 0.3",
                                            "code-small does not lose to general-large on docs"]


def test_prompt_splits_are_disjoint_and_by_hash(built) -> None:  # type: ignore[no-untyped-def]
    library, _ = built
    rows = library.prompts()
    assert {r["domain"] for r in rows} == set(DOMAINS)
    assert {r["split"] for r in rows} == {"train", "traffic", "heldout"}
    train = {r["prompt"] for r in library.prompts(split="train")}
    heldout = library.prompts(split="heldout")
    assert heldout and not train & {r["prompt"] for r in heldout}
    assert all(r["split"] == split_of(r["prompt"]) for r in rows)
    assert all(r["domain"] == "legal" for r in library.prompts(domain="legal", split="heldout"))
    assert len({r["prompt"] for r in rows}) == len(rows)


def test_cached_build_is_returned_and_a_new_seed_rebuilds_atomically(built) -> None:  # type: ignore[no-untyped-def]
    library, _ = built
    manifest = library.root / "library.json"
    before = manifest.stat().st_mtime_ns
    calls: list[str] = []
    again = build_demo_library(library.root, seed=0, spec=MINI, progress=lambda f, m: calls.append(m))
    assert manifest.stat().st_mtime_ns == before and calls == ["demo library cached"]
    assert again.experts == library.experts == load_demo_library(library.root).experts

    def fail(fraction: float, message: str) -> None:
        if message.startswith("training docs-small"):
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        build_demo_library(library.root, seed=1, spec=MINI, progress=fail, verbose=False)
    assert manifest.stat().st_mtime_ns == before  # the old library is untouched
    assert sorted(p.name for p in library.root.parent.iterdir()) == [".lib.lock", "lib"]  # no temp dir left


def test_snippets_are_whole_lines_of_bounded_size() -> None:
    text = "\n".join(f"line {i} with a few more words in it to be long enough" for i in range(200))
    parts = snippets(text)
    assert parts and all(200 <= len(p) <= 600 for p in parts)
    assert all(line in text.splitlines() for p in parts for line in p.splitlines())


def test_build_is_deterministic_and_relocatable(built, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import shutil

    from experts.registry import content_hash

    library, _ = built
    twin = build_demo_library(tmp_path / "twin", seed=0, spec=MINI, verbose=False)
    for a, b in zip(library.experts, twin.experts):
        assert content_hash(Path(a["uri"])) == content_hash(Path(b["uri"]))
    assert twin.prompts() == library.prompts() and twin.quality == library.quality
    moved = tmp_path / "moved"
    shutil.move(tmp_path / "twin", moved)
    assert all(Path(e["uri"]).parent == moved.resolve() for e in load_demo_library(moved).experts)
