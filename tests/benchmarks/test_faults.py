"""bench faults: how requests are counted, and a real short swap scenario (daemon process, PostgreSQL, load)."""

from __future__ import annotations

import pytest

from benchmarks.faults import FaultRow, Plan, Setup, main, swap, table, tally
from benchmarks.loadgen import Sent
from tests.conftest import ADMIN_URL


def test_tally_excuses_only_the_expected_errors() -> None:
    down, db_down = (10.0, 20.0), (30.0, 40.0)
    sent = [
        Sent(1.0, 1.1, 200, "a", feedback_status=202, feedback_at=1.2),
        Sent(9.0, 10.5, None),  # in flight at the kill: the daemon was down
        Sent(12.0, 12.0, None),  # refused while down
        Sent(21.0, 21.5, None),  # refused after the restart was healthy: a failure
        Sent(31.0, 31.1, 200, "b", feedback_status=503, feedback_at=31.2),  # database away: expected
        Sent(41.0, 41.1, 200, "c", feedback_status=503, feedback_at=41.2),  # database back: a failure
        Sent(42.0, 42.1, 500),
        Sent(43.0, 43.1, 200, "d", feedback_status=404, feedback_at=43.2),  # an answered request unknown
    ]
    row = FaultRow("x", "y")
    assert tally(row, sent, down=down, db_down=db_down) == ["a", "b", "c", "d"]
    assert (row.sent, row.answered, row.refused, row.failed) == (8, 4, 2, 4)
    assert (row.feedback_accepted, row.feedback_503) == (1, 1)
    assert not row.passed
    assert FaultRow("k", "spool off", answered=5, written=4, lost=1, loss_expected=True).passed
    assert not FaultRow("k", "spool on", answered=5, written=4, lost=1).passed
    assert "1 (expected)" in table([FaultRow("k", "spool off", lost=1, loss_expected=True)])


def test_unknown_scenario_is_one_sentence_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--scenarios", "swap,reboot"])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("unknown scenario(s) reboot;") and len(err.splitlines()) == 1


@pytest.mark.integration
def test_swaps_under_load_fail_no_request_and_lose_no_row(tiny_backbone: str) -> None:
    """A real ``thalamus serve`` on a fresh PostgreSQL database: 4 swaps at 10 req/s, every one served."""
    plan = Plan(rate=10.0, steady_s=1.0, swap_cycles=2, swap_interval_s=1.0)
    [row] = swap(plan, Setup(tiny_backbone, ADMIN_URL, log=lambda _: None))
    assert row.problems == [] and row.detail.startswith("4 swaps served (daemon counted 4)")
    assert row.sent >= 40 and row.answered == row.sent and row.failed == 0
    assert row.written == row.answered and row.lost == 0
    assert row.feedback_accepted >= row.answered // 5 - 1 and row.feedback_503 == 0
    assert row.recovery_s is not None and 0 < row.recovery_s < 30
    assert row.passed
