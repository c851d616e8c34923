"""The knee's honesty: capped to the server's slots; noise said when the spread is
larger than what the knee rests on, or when throughput falls as concurrency rises."""

from __future__ import annotations

from familiar.fleetcheck.knee import cap_to_server, find_knee, noise
from familiar.fleetcheck.results import Level


def lv(c: int, tok: float, runs: tuple[float, ...] = ()) -> Level:
    return Level(c, ok=10, failed=0, duration_s=1.0, output_tokens=round(tok), runs_tok_per_s=runs)


def test_cap_to_server() -> None:
    knee = find_knee([lv(1, 10), lv(2, 20), lv(4, 40), lv(8, 80), lv(16, 82)])
    assert knee.suggested == 8
    capped = cap_to_server(knee, 4)
    assert (capped.suggested, capped.capped_at) == (4, 4)
    assert cap_to_server(knee, 8) == knee and cap_to_server(knee, None) == knee
    assert cap_to_server(knee, 16) == knee


def test_noise_when_the_spread_is_larger_than_the_margin() -> None:
    # knee at 4 (40 >= 0.9 x 42 = 37.8; 2 gives 30): margin min(2.2, 7.8) = 2.2
    quiet = [
        lv(1, 10, (9.9, 10.1)),
        lv(2, 30, (29.5, 30.5)),
        lv(4, 40, (39, 41)),
        lv(8, 42, (41.5, 42.5)),
    ]
    knee = find_knee(quiet)
    assert knee.suggested == 4
    assert noise(quiet, knee, {x.concurrency: x.spread for x in quiet}) == ""
    loud = [*quiet[:2], lv(4, 40, (34, 46)), quiet[3]]
    said = noise(loud, find_knee(loud), {x.concurrency: x.spread for x in loud})
    assert "spread between runs (12.0 tok/s)" in said and "(2.2 tok/s)" in said


def test_noise_without_repeats_is_throughput_falling() -> None:
    falling = [lv(1, 50), lv(2, 30), lv(4, 35)]
    knee = find_knee(falling)
    assert knee.suggested == 1
    assert "throughput fell as concurrency rose" in noise(falling, knee, {})
    rising = [lv(1, 10), lv(2, 19), lv(4, 30)]
    assert noise(rising, find_knee(rising), {}) == ""
