"""Pure bench arithmetic: percentiles, per-level aggregates, the knee."""

from __future__ import annotations

import pytest

from familiar.fleetcheck.knee import find_knee, ttft_climbs_at
from familiar.fleetcheck.results import Level, Sample, summarize
from familiar.fleetcheck.stats import Summary, percentile


def test_percentile_interpolates_linearly_like_numpy() -> None:
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == 2.5
    assert percentile(values, 100) == 4.0
    assert percentile(values, 99) == pytest.approx(3.97)
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_summary_in_milliseconds_and_back() -> None:
    s = Summary.of_seconds([0.010, 0.020, 0.030])
    assert s.mean == pytest.approx(20.0)
    assert s.p50 == pytest.approx(20.0)
    assert s.p99 == pytest.approx(29.8)
    assert Summary.from_json(s.to_json()) == Summary(20.0, 20.0, 29.8)
    assert Summary.of_seconds([]).to_json() == {"mean": None, "p50": None, "p99": None}
    with pytest.raises(ValueError):
        Summary.from_json({"mean": "fast"})


def _ok(ttft: float, e2e: float, tokens: int, gaps: tuple[float, ...] = ()) -> Sample:
    return Sample(
        ok=True, e2e_s=e2e, ttft_s=ttft, itl_s=gaps, output_tokens=tokens, prompt_tokens=10
    )


def test_summarize_counts_only_finished_requests() -> None:
    samples = [
        _ok(0.1, 0.5, 5, (0.1, 0.1, 0.1, 0.1)),
        _ok(0.2, 0.6, 5, (0.1, 0.1, 0.1, 0.1)),
        Sample(ok=False, e2e_s=0.05, error="HTTP 500"),
        Sample(ok=False, e2e_s=0.05, error="HTTP 500"),
        Sample(ok=False, e2e_s=1.0, error="no finish_reason (cut off)"),
    ]
    lv = summarize(4, samples, duration_s=2.0)
    assert (lv.ok, lv.failed, lv.requests) == (2, 3, 5)
    assert lv.pass_rate == pytest.approx(0.4)
    assert lv.output_tokens == 10
    assert lv.output_tok_per_s == pytest.approx(5.0)
    assert lv.req_per_s == pytest.approx(1.0)
    assert lv.tpot.mean == pytest.approx(100.0)  # (0.5-0.1)/4 and (0.6-0.2)/4
    assert lv.itl.p50 == pytest.approx(100.0)
    assert lv.e2e.p50 == pytest.approx(550.0)
    assert lv.input_tokens_mean == 10
    assert dict(lv.errors) == {"HTTP 500": 2, "no finish_reason (cut off)": 1}
    data = lv.to_json()
    for key in ("concurrency", "ok", "failed", "req_per_s", "output_tok_per_s"):
        assert key in data
    for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
        assert set(data[key]) == {"mean", "p50", "p99"}
    assert Level.from_json(data).to_json() == data


def test_a_one_token_answer_has_no_tpot() -> None:
    assert _ok(0.1, 0.1, 1).tpot_s is None
    assert Sample(ok=False, e2e_s=1.0).tpot_s is None


def _level(c: int, tok_s: float, ttft_p99: float, *, ok: int = 10, failed: int = 0) -> Level:
    return Level(
        concurrency=c,
        ok=ok,
        failed=failed,
        duration_s=1.0,
        output_tokens=round(tok_s),
        ttft=Summary(ttft_p99 / 2, ttft_p99 / 2, ttft_p99),
    )


def test_the_knee_is_the_smallest_level_near_peak_throughput() -> None:
    levels = [
        _level(16, 400, 400),
        _level(1, 100, 20),
        _level(2, 200, 21),
        _level(4, 390, 22),
        _level(8, 400, 150),
    ]
    knee = find_knee(levels)
    assert knee.suggested == 4
    assert knee.peak_tok_per_s == 400 and knee.peak_concurrency in (8, 16)
    assert knee.ttft_climbs_at == 8
    assert knee.saturated
    assert knee.to_json()["suggested_parallel"] == 4


def test_levels_with_failures_do_not_count_and_nothing_passed_means_no_knee() -> None:
    levels = [_level(1, 100, 20), _level(2, 190, 20), _level(4, 500, 30, ok=5, failed=5)]
    assert find_knee(levels).suggested == 2
    assert find_knee([_level(1, 0, 0, ok=0, failed=8)]).suggested is None
    assert find_knee([]).suggested is None


def test_still_rising_at_the_top_is_not_saturated() -> None:
    knee = find_knee([_level(1, 100, 20), _level(2, 200, 20), _level(4, 400, 20)])
    assert knee.suggested == 4 and not knee.saturated


def test_share_is_checked_and_changes_the_answer() -> None:
    levels = [_level(1, 100, 20), _level(2, 170, 20), _level(4, 200, 20)]
    assert find_knee(levels, share=0.9).suggested == 4
    assert find_knee(levels, share=0.8).suggested == 2
    with pytest.raises(ValueError):
        find_knee(levels, share=0)


def test_ttft_climb_needs_both_a_factor_and_an_absolute_step() -> None:
    tiny = [_level(1, 1, 0.5), _level(2, 1, 2.0), _level(4, 1, 3.0)]
    assert ttft_climbs_at(tiny) is None  # 4x, but only 2.5 ms: noise on a fast server
    assert ttft_climbs_at(tiny, floor_ms=1.0) == 2
    assert ttft_climbs_at([]) is None
