"""The inference export: written into the bundle with its checksum, checked against PyTorch, refused when it disagrees."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import router.export as export_module
from router.checkpoint import BundleError, save_bundle, verify_bundle
from router.config import RouterConfig
from router.export import ExportCheckFailed, export_inference
from router.inference import OnnxRouter, has_export
from router.model import Router
from router.serving import inference_of, load_for_serving
from tests.router.conftest import two_domains

EXPERTS = ["code", "law", "general"]


def _trained_router(backbone: str, **config: object) -> Router:
    """A router with a fitted-looking head and a neighbour memory: predictions that differ per prompt."""
    router = Router.from_config(RouterConfig(backbone=backbone, expert_names=EXPERTS, lora_r=4, lora_layers=1,
                                             **config))  # type: ignore[arg-type]
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        router.head.last.weight.copy_(torch.randn(router.head.last.weight.shape, generator=generator))
        router.loss_mean.copy_(torch.tensor([1.0, 1.2, 1.1]))
        router.loss_std.copy_(torch.tensor([0.5, 0.5, 0.5]))
    if router.config.head_neighbors > 0:
        code, law = two_domains(20)
        prompts = code + law
        losses = torch.tensor([[0.5, 2.0, 1.0]] * len(code) + [[2.0, 0.5, 1.0]] * len(law))
        losses[::3, 2] = float("nan")  # unobserved entries, as bandit feedback leaves them
        router.set_memory(torch.tensor(router.embed(prompts)), losses)
        router.spread_scale.copy_(torch.tensor([1.0, 1.5, float("nan")]))
    return router


@pytest.fixture(params=["linear", "neighbours", "shrunk neighbours"])
def router(request: pytest.FixtureRequest, tiny_bert: str) -> Router:
    if request.param == "linear":
        return _trained_router(tiny_bert)
    shrink = 3.0 if request.param == "shrunk neighbours" else 0.0
    return _trained_router(tiny_bert, head_neighbors=5, spread_neighbors=5, pool_layers=2, head_shrink=shrink)


def _prompts() -> list[str]:
    code, law = two_domains(12, offset=100)
    return code + law + ["a prompt " * 200]  # one longer than max_length: truncated the same way


def test_the_export_serves_what_the_pytorch_router_predicts(router: Router, tmp_path: Path) -> None:
    sha = save_bundle(router, tmp_path / "b", export=lambda model, d: export_inference(model, d, _prompts()))
    manifest = verify_bundle(tmp_path / "b", sha)
    record = manifest["inference"]
    assert has_export(tmp_path / "b") and manifest["files"]["inference.onnx"]
    assert record["check"]["passed"] and record["precision"] in ("int8", "fp32")
    assert record["check"]["agreement"] >= 0.99 and record["check"]["prompts"] >= len(_prompts())
    served, _ = load_for_serving(tmp_path / "b", sha, EXPERTS, [{}, {}, {}])
    assert isinstance(served, OnnxRouter) and inference_of(served) == f"onnx-{record['precision']}"
    expected, actual = router.predict_stacked(_prompts()), served.predict_stacked(_prompts())
    assert actual.shape == expected.shape == (len(_prompts()), 2 * len(EXPERTS))
    assert np.array_equal(np.isnan(actual), np.isnan(expected))
    assert np.nanmax(np.abs(actual - expected)) <= record["tolerance"]
    n = len(EXPERTS)
    assert np.mean(actual[:, :n].argmin(1) == expected[:, :n].argmin(1)) >= 0.99


def test_forcing_torch_serves_the_pytorch_router_from_the_same_bundle(router: Router, tmp_path: Path) -> None:
    sha = save_bundle(router, tmp_path / "b", export=lambda model, d: export_inference(model, d))
    served, _ = load_for_serving(tmp_path / "b", sha, EXPERTS, [{}, {}, {}], inference="torch")
    assert isinstance(served, Router) and inference_of(served) == "torch"


def test_a_tampered_export_is_refused_at_load(router: Router, tmp_path: Path) -> None:
    sha = save_bundle(router, tmp_path / "b", export=lambda model, d: export_inference(model, d))
    with open(tmp_path / "b" / "inference.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(BundleError, match="inference.onnx"):
        load_for_serving(tmp_path / "b", sha, EXPERTS, [{}, {}, {}])


def test_an_export_that_disagrees_is_refused_and_nothing_is_written(tiny_bert: str, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    router = _trained_router(tiny_bert)
    other = _trained_router(tiny_bert)
    with torch.no_grad():  # a different model: its head prefers the experts in reverse order
        other.head.last.weight.mul_(-1.0)
    real_export = export_module._export_fp32
    monkeypatch.setattr(export_module, "_export_fp32", lambda model, path: real_export(other, path))
    with pytest.raises(ExportCheckFailed, match="does not reproduce") as raised:
        save_bundle(router, tmp_path / "b", export=lambda model, d: export_inference(model, d, _prompts()))
    assert "int8" in str(raised.value) and "fp32" in str(raised.value)
    assert not (tmp_path / "b").exists() and list(tmp_path.iterdir()) == []


def test_a_bundle_without_an_export_is_served_by_pytorch(router: Router, tmp_path: Path) -> None:
    sha = save_bundle(router, tmp_path / "b")
    assert "inference" not in json.loads((tmp_path / "b" / "manifest.json").read_text())
    served, _ = load_for_serving(tmp_path / "b", sha, EXPERTS, [{}, {}, {}])
    assert isinstance(served, Router)


def test_a_memory_searched_by_an_approximate_index_is_checked_with_it(tiny_bert: str, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Above the exact-scan threshold the check runs the faiss index the daemon will run, and the exact scan
    stays as the last option (here the threshold is lowered so that a 40-row memory is indexed)."""
    import router.inference
    import router.neighbours

    monkeypatch.setattr(router.neighbours, "EXACT_UP_TO", 8)
    monkeypatch.setattr(router.inference, "EXACT_UP_TO", 8)
    model = _trained_router(tiny_bert, head_neighbors=5, spread_neighbors=5)
    assert export_module._options(model) == [("int8", "index"), ("fp32", "index"), ("fp32", "exact")]
    sha = save_bundle(model, tmp_path / "b", export=lambda m, d: export_inference(m, d, _prompts()))
    record = verify_bundle(tmp_path / "b", sha)["inference"]
    served, _ = load_for_serving(tmp_path / "b", sha, EXPERTS, [{}, {}, {}])
    assert isinstance(served, OnnxRouter)
    assert served.index is not None and served.index.kind == ("exact" if record["neighbours"] == "exact" else "faiss-ivf")
    tried = [(c["precision"], c["neighbours"]) for c in record["tried"]]
    assert tried == export_module._options(model)[:len(tried)] and record["check"]["passed"]


def test_int8_that_disagrees_falls_back_to_fp32(tiny_bert: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    router = _trained_router(tiny_bert)
    other = _trained_router(tiny_bert)
    with torch.no_grad():
        other.head.last.weight.mul_(-1.0)
    real_export = export_module._export_fp32
    # the "int8" graph is another model's: its decisions disagree, so the check must refuse it and go on
    monkeypatch.setattr(export_module, "_quantize_int8", lambda source, target, **options: real_export(other, target))
    sha = save_bundle(router, tmp_path / "b", export=lambda m, d: export_inference(m, d, _prompts()))
    record = verify_bundle(tmp_path / "b", sha)["inference"]
    assert record["precision"] == "fp32" and record["check"]["passed"]
    assert [(t["precision"], t["passed"]) for t in record["tried"]] == [("int8", False), ("fp32", True)]
    assert record["tried"][0]["agreement"] < 0.99


def test_a_step_that_raises_is_a_failed_try_not_a_failed_export(tiny_bert: str, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(source: Path, target: Path, **options: object) -> None:
        raise RuntimeError("quantiser unavailable")

    monkeypatch.setattr(export_module, "_quantize_int8", broken)
    sha = save_bundle(_trained_router(tiny_bert), tmp_path / "b", export=lambda m, d: export_inference(m, d))
    record = verify_bundle(tmp_path / "b", sha)["inference"]
    assert record["precision"] == "fp32" and "quantiser unavailable" in record["tried"][0]["error"]


def test_serving_an_export_never_imports_torch(router: Router, tmp_path: Path) -> None:
    import subprocess
    import sys

    sha = save_bundle(router, tmp_path / "b", export=lambda m, d: export_inference(m, d))
    code = ("import sys; from pathlib import Path; from router.serving import load_for_serving; "
            f"r, _ = load_for_serving(Path({str(tmp_path / 'b')!r}), {sha!r}, {EXPERTS!r}, [{{}}, {{}}, {{}}]); "
            "r.predict_stacked(['hello']); print(type(r).__name__, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["OnnxRouter", "False"]


def _stacked(rows: int = 272, experts: int = 9, seed: int = 0) -> np.ndarray:
    """A (rows, 2E) predict_stacked output: distinct predicted losses in [0, 1] and spreads."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.uniform(0, 1, (rows, experts)), rng.uniform(0.1, 0.5, (rows, experts))], axis=1)


def test_one_spread_swapped_by_a_near_tied_neighbour_still_passes() -> None:
    # the bench loop case: every predicted loss reproduced, one spread of 272 × 9 jumped (4.29 against 0.40)
    expected = _stacked()
    actual = expected + 1e-4
    actual[208, 9 + 7] = expected[208, 9 + 7] + 3.9
    diff, within, agreement, passed = export_module.compare_outputs(expected, actual, 9, 0.1171)
    assert passed and diff < 1e-3 and agreement == 1.0 and within == pytest.approx(1 - 1 / (272 * 9))


def test_a_predicted_loss_beyond_the_tolerance_fails_even_when_the_argmin_agrees() -> None:
    expected = _stacked()
    actual = expected.copy()
    row = 3
    worst = int(np.argmax(expected[row, :9]))  # raising the largest loss keeps the argmin
    actual[row, worst] += 0.2
    diff, _, agreement, passed = export_module.compare_outputs(expected, actual, 9, 0.1171)
    assert not passed and diff == pytest.approx(0.2) and agreement == 1.0


def test_spreads_beyond_the_tolerance_on_more_than_one_percent_fail() -> None:
    expected = _stacked()
    actual = expected.copy()
    actual[:30, 9] += 1.0  # 30 of 2,448 spreads: 1.2 %
    _, within, _, passed = export_module.compare_outputs(expected, actual, 9, 0.1171)
    assert not passed and within == pytest.approx(1 - 30 / (272 * 9))
    actual[10:30, 9] = expected[10:30, 9]  # 10 of them: 0.4 %
    assert export_module.compare_outputs(expected, actual, 9, 0.1171)[3]


def test_unknown_spreads_must_stay_unknown() -> None:
    expected = _stacked()
    expected[:, 9] = np.nan
    actual = expected.copy()
    actual[0, 9] = 0.3
    assert not export_module.compare_outputs(expected, actual, 9, 0.1171)[3]
    assert export_module.compare_outputs(expected, expected.copy(), 9, 0.1171)[3]
