"""The off-policy interval benchmark at a small size: one row per estimator, widths shrink with more rows."""

from __future__ import annotations

from benchmarks.offpolicy import run, table


def test_widths_shrink_with_more_logged_rows_and_the_table_lists_every_estimator() -> None:
    rows = run(sizes=(300, 2400), epsilons=(0.2,), repetitions=6, n_boot=200)
    assert [(r.n_rows, r.estimator) for r in rows] == [(300, "ips"), (300, "snips"), (300, "dr"),
                                                       (2400, "ips"), (2400, "snips"), (2400, "dr")]
    small, large = rows[:3], rows[3:]
    for a, b in zip(small, large, strict=True):
        assert b.difference_width < 0.6 * a.difference_width  # ~1/√8 ≈ 0.35 expected
        assert 0 <= a.coverage <= 1 and a.repetitions == 6
    assert small[2].difference_width < small[0].difference_width  # DR narrower than IPS
    assert table(rows).count("\n") == 2 + len(rows) - 1
