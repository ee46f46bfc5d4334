"""TimeoutControl alone: one running timeout with its reason, and the two minimum data rates."""

from __future__ import annotations

import pytest

from kestrelpy.protocols.timeouts import (
    LINGER_TIMEOUT,
    DataRates,
    TimeoutControl,
    TimeoutReason,
    timeout_durations,
)

DURATIONS = timeout_durations(keep_alive=5.0, request_headers=10.0, ping=2.0)
NO_RATES = DataRates(0, 0, 0, 0)


def control(rates: DataRates = NO_RATES, now: float = 100.0) -> TimeoutControl:
    return TimeoutControl(DURATIONS, rates, now)


def test_a_timeout_expires_once_after_its_reasons_length() -> None:
    timeouts = control()
    timeouts.set_timeout(TimeoutReason.KEEP_ALIVE, 100.0)
    assert timeouts.expired(105.0) is None  # exactly at the limit: still waiting
    assert timeouts.expired(105.5) is TimeoutReason.KEEP_ALIVE
    assert timeouts.expired(200.0) is None  # reported once, then cancelled


def test_changing_the_reason_keeps_the_start() -> None:
    timeouts = control()
    timeouts.set_timeout(TimeoutReason.KEEP_ALIVE, 100.0)
    timeouts.change_reason(TimeoutReason.LINGER)
    assert timeouts.expired(100.0 + LINGER_TIMEOUT) is None
    assert timeouts.expired(100.0 + LINGER_TIMEOUT + 0.1) is TimeoutReason.LINGER


def test_changing_the_reason_of_no_timeout_starts_none() -> None:
    timeouts = control()
    timeouts.change_reason(TimeoutReason.LINGER)
    assert timeouts.reason is None and timeouts.expired(1e9) is None


def test_a_cancelled_or_restarted_timeout_does_not_fire_early() -> None:
    timeouts = control()
    timeouts.set_timeout(TimeoutReason.PING, 100.0)
    timeouts.cancel_timeout()
    assert timeouts.expired(1e9) is None
    timeouts.set_timeout(TimeoutReason.REQUEST_HEADERS, 100.0)
    timeouts.set_timeout(TimeoutReason.REQUEST_HEADERS, 109.0)  # restarted
    assert timeouts.expired(110.5) is None
    assert timeouts.expired(119.5) is TimeoutReason.REQUEST_HEADERS


def test_a_request_cancels_the_timeout_and_resets_the_body_timing() -> None:
    timeouts = control(DataRates(100, 2, 0, 0))
    timeouts.set_timeout(TimeoutReason.KEEP_ALIVE, 100.0)
    timeouts.start_timing_read()
    timeouts.check_rates(101.0, 0, 0, False)
    timeouts.start_request()
    assert timeouts.reason is None
    assert timeouts.read_elapsed == 0.0 and not timeouts.read_timing


@pytest.mark.parametrize(("bytes_read", "too_slow"), [(350, False), (150, True)])
def test_body_rate_is_averaged_over_the_time_the_app_waited(bytes_read: int, too_slow: bool) -> None:
    timeouts = control(DataRates(100, 2, 0, 0))
    timeouts.start_timing_read()
    results = [timeouts.check_rates(100.0 + beat, bytes_read, 0, False) for beat in (1, 2, 3)]
    assert results[:2] == [None, None]  # inside the 2 s grace period nothing is judged
    # after 3 s of waiting: 350 B is 117 B/s (enough), 150 B is 50 B/s (not)
    assert results[2] is (TimeoutReason.READ_DATA_RATE if too_slow else None)


def test_body_rate_counts_a_late_beat_as_one_and_stops_after_the_wait() -> None:
    timeouts = control(DataRates(100, 2, 0, 0))
    timeouts.start_timing_read()
    assert timeouts.check_rates(130.0, 0, 0, False) is None  # a 30 s stall of the server counts 1 s
    assert timeouts.read_elapsed == 1.0
    timeouts.stop_timing_read()
    timeouts.check_rates(131.0, 0, 0, False)  # the beat in which the wait ended still counts
    assert timeouts.check_rates(140.0, 0, 0, False) is None  # then nothing is counted
    assert timeouts.read_elapsed == 2.0


def test_response_rate_fires_only_while_the_peer_holds_output_back() -> None:
    timeouts = control(DataRates(0, 0, 1000, 2))
    assert timeouts.check_rates(101.0, 0, 5000, True) is None  # 5 s of output at 1000 B/s: deadline 106
    assert [timeouts.check_rates(now, 0, 0, True) for now in (102.0, 103.0, 104.0, 105.0, 106.0)] == [None] * 5
    assert timeouts.check_rates(107.0, 0, 0, False) is None  # past it, but the peer is reading
    assert timeouts.check_rates(108.0, 0, 0, True) is TimeoutReason.WRITE_DATA_RATE


def test_response_rate_does_not_hold_a_starved_server_against_the_peer() -> None:
    timeouts = control(DataRates(0, 0, 1000, 2))
    timeouts.check_rates(101.0, 0, 2000, True)  # deadline 103
    assert timeouts.check_rates(150.0, 0, 0, True) is None  # a 49 s beat moves it by 48 s, to 151
    assert timeouts.check_rates(151.0, 0, 0, True) is None
    assert timeouts.check_rates(152.0, 0, 0, True) is TimeoutReason.WRITE_DATA_RATE


def test_at_limit_expires_when_the_length_is_reached() -> None:
    timeouts = control()
    timeouts.set_timeout(TimeoutReason.PING, 100.0)
    assert timeouts.expired(102.0) is None
    assert timeouts.expired(102.0, at_limit=True) is TimeoutReason.PING
