import pytest

from router.flags import FLAG_WEIGHT, FlagError, parse_flags


@pytest.mark.parametrize("flag, key", [
    ("smallest model", "size"), ("cheapest", "cost"), ("fastest", "latency"), ("newest", "recency"),
])
def test_named_flags_set_a_strong_weight(flag: str, key: str) -> None:
    text, lambdas = parse_flags(f"Summarise this text [Flag: {flag}] please")
    assert text == "Summarise this text please"
    assert lambdas == {key: FLAG_WEIGHT}


def test_case_insensitive_and_whitespace_tidied() -> None:
    text, lambdas = parse_flags("  [FLAG:   Smallest   Model ]   Translate\tthis  [flag: CHEAPEST]")
    assert text == "Translate this"
    assert lambdas == {"size": FLAG_WEIGHT, "cost": FLAG_WEIGHT}


def test_explicit_values_and_comma_lists() -> None:
    text, lambdas = parse_flags("[Flag: size=2.5] hi [Flag: cost = 1, fastest]")
    assert text == "hi"
    assert lambdas == {"size": 2.5, "cost": 1.0, "latency": FLAG_WEIGHT}


def test_best_quality_zeroes_all_and_later_flags_override() -> None:
    _, lambdas = parse_flags("[Flag: cheapest] x [Flag: best quality]")
    assert lambdas == {"size": 0.0, "cost": 0.0, "latency": 0.0, "recency": 0.0}
    _, lambdas = parse_flags("[Flag: best quality] x [Flag: size=3]")
    assert lambdas["size"] == 3.0 and lambdas["cost"] == 0.0


def test_no_flags_leaves_prompt_untouched() -> None:
    prompt = "  keep   my [brackets]\n and spacing "
    assert parse_flags(prompt) == (prompt, {})


def test_newlines_survive() -> None:
    text, _ = parse_flags("line one [Flag: fastest]\nline two")
    assert text == "line one\nline two"


@pytest.mark.parametrize("prompt, fragment", [
    ("[Flag: prettiest] x", "unknown flag"),
    ("[Flag: size=big] x", "not a number"),
    ("[Flag: size=-1] x", ">= 0"),
    ("[Flag: size=inf] x", "finite"),
    ("[Flag: colour=3] x", "unknown constraint 'colour'"),
    ("[Flag: ] x", "empty flag"),
])
def test_bad_flags_raise(prompt: str, fragment: str) -> None:
    with pytest.raises(FlagError, match=fragment):
        parse_flags(prompt)
    assert issubclass(FlagError, ValueError)
