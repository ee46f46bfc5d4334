"""TimeoutControl: a connection's one running timeout and its minimum data rates, checked by the heartbeat.

Kestrel's TimeoutControl is the model. A connection has at most one timeout running at a time, named by
a TimeoutReason (waiting for the next request, for a request head, for a peer's close frame, ...); the
protocol sets, changes or cancels it as it moves between states, and the heartbeat's `check(now)` says
which reason expired, if any. The protocol alone decides what an expired reason means for it (close,
answer 408, abort, close a WebSocket with 1011), so the same object serves HTTP/1.1, WebSocket and, one
per stream, HTTP/2.

A timeout is stored as (reason, since) and its length is looked up when checked: a connection that
starts draining keeps the moment it went idle and only trades KEEP_ALIVE for the shorter LINGER.

The two minimum data rates (Kestrel's MinRequestBodyDataRate and MinResponseDataRate):
- request body: the seconds the app spends waiting in receive() for body bytes are summed, one beat at
  a time (a beat longer than the interval counts as one: a starved server is not the client's fault);
  once that sum passes the grace period, an average rate (body bytes / sum) below the minimum expires
  READ_DATA_RATE. While the app is busy, or reading is paused because it is behind, nothing is counted.
- response: each beat, the bytes written since the last one push a deadline out by bytes / rate, and to
  at least `grace` from now; while the peer is not reading (the transport's buffer is over its
  high-water mark), a deadline passed expires WRITE_DATA_RATE. A reader that keeps up with the minimum
  keeps the deadline ahead of the clock, however long the response.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

# The heartbeat's interval (heartbeat.INTERVAL): the most one beat adds to a data-rate measurement.
TICK = 1.0

LINGER_TIMEOUT = 1.0  # seconds a closing connection waits for its peer: after a refusal, during a drain
CLOSE_HANDSHAKE_TIMEOUT = 10.0  # seconds a WebSocket peer has to answer our close frame

# `read_timing`: whether the request body's rate is being measured. The app waiting in receive() turns
# it on; its wait ending asks for it to stop, which the next beat does after counting that beat, so a
# wait shorter than a beat is still counted.
TIMING_OFF, TIMING_ON, TIMING_STOPPING = 0, 1, 2


class TimeoutReason(Enum):
    """What a connection is waiting for when its timeout runs out."""

    KEEP_ALIVE = "the next request on an idle connection"
    REQUEST_HEADERS = "the rest of a request head"
    LINGER = "the peer to close after our last answer (or a drain)"
    READ_DATA_RATE = "request body bytes at the minimum rate"
    WRITE_DATA_RATE = "the peer to read the response at the minimum rate"
    CLOSE_HANDSHAKE = "the peer's WebSocket close frame"
    PING = "the pong to a WebSocket keep-alive ping"


def timeout_durations(keep_alive: float, request_headers: float, ping: float) -> dict[TimeoutReason, float]:
    """How long each reason waits, for one server (the data rates have their own rule)."""
    return {
        TimeoutReason.KEEP_ALIVE: keep_alive,
        TimeoutReason.REQUEST_HEADERS: request_headers,
        TimeoutReason.LINGER: LINGER_TIMEOUT,
        TimeoutReason.CLOSE_HANDSHAKE: CLOSE_HANDSHAKE_TIMEOUT,
        TimeoutReason.PING: ping,
    }


class DataRates:
    """The minimum data rates of a server (bytes/s; 0 turns one off) and their grace periods."""

    __slots__ = ("body_grace", "body_rate", "response_grace", "response_rate")

    def __init__(self, body_rate: float, body_grace: float, response_rate: float, response_grace: float) -> None:
        self.body_rate = body_rate
        self.body_grace = body_grace
        self.response_rate = response_rate
        self.response_grace = response_grace


class TimeoutControl:
    """One running timeout with its reason, and the data-rate counters of one connection (or stream)."""

    __slots__ = (
        "_durations",
        "_last_check",
        "_rates",
        "_write_deadline",
        "read_elapsed",
        "read_timing",
        "reason",
        "since",
    )

    def __init__(self, durations: Mapping[TimeoutReason, float], rates: DataRates, now: float) -> None:
        self._durations = durations  # seconds each reason allows; shared by every connection of a server
        self._rates = rates
        self.reason: TimeoutReason | None = None
        self.since = now
        self._last_check = now
        self.read_timing = TIMING_OFF
        self.read_elapsed = 0.0  # seconds the app has waited for body bytes, counted one beat at a time
        self._write_deadline = 0.0  # when what was written should have been read by a peer at the minimum rate

    # -- the one timeout -------------------------------------------------------------------------

    def set_timeout(self, reason: TimeoutReason, now: float) -> None:
        self.reason = reason
        self.since = now

    def change_reason(self, reason: TimeoutReason) -> None:
        """Keep the running timeout's start, with another reason's length (KEEP_ALIVE -> LINGER)."""
        if self.reason is not None:
            self.reason = reason

    def cancel_timeout(self) -> None:
        self.reason = None

    def expired(self, now: float, *, at_limit: bool = False) -> TimeoutReason | None:
        """The reason whose time has run out (it is cancelled), or None. A timeout runs out once its
        length has passed (Kestrel's rule); with `at_limit`, already when it is reached (the WebSocket
        ping and close-handshake timeouts have always been read that way)."""
        reason = self.reason
        if reason is not None:
            elapsed, limit = now - self.since, self._durations[reason]
            if elapsed > limit or (at_limit and elapsed == limit):
                self.reason = None
                return reason
        return None

    # -- data rates ------------------------------------------------------------------------------

    def start_request(self) -> None:
        """A request is being answered: no connection timeout runs, and its body's rate starts from nothing."""
        self.reason = None
        self.read_timing = TIMING_OFF
        self.read_elapsed = 0.0

    def start_timing_read(self) -> None:
        self.read_timing = TIMING_ON

    def stop_timing_read(self) -> None:
        self.read_timing = TIMING_STOPPING

    def check_rates(self, now: float, bytes_read: int, bytes_written: int, write_paused: bool) -> TimeoutReason | None:
        """One beat of both data rates: `bytes_read` is the current request body's total so far,
        `bytes_written` what was written since the previous beat."""
        gap = now - self._last_check
        self._last_check = now
        rates = self._rates
        if rates.response_rate and self._response_too_slow(now, gap, bytes_written, write_paused):
            return TimeoutReason.WRITE_DATA_RATE
        if self.read_timing and rates.body_rate and self._body_too_slow(gap, bytes_read):
            return TimeoutReason.READ_DATA_RATE
        return None

    def _body_too_slow(self, gap: float, bytes_read: int) -> bool:
        """Count one beat of the app waiting for body bytes; True when, past the grace period, the body's
        average rate is below the minimum (Kestrel's CheckForReadDataRateTimeout)."""
        elapsed = self.read_elapsed + min(gap, TICK)  # a late beat counts as one: the server was starved
        self.read_elapsed = elapsed
        if self.read_timing == TIMING_STOPPING:  # the wait ended since the last beat, which still counted
            self.read_timing = TIMING_OFF
        rates = self._rates
        return elapsed > rates.body_grace and bytes_read / elapsed < rates.body_rate

    def _response_too_slow(self, now: float, gap: float, written: int, write_paused: bool) -> bool:
        """Move the write deadline by what was written since the last beat; True when the peer holds
        output back past it (Kestrel's BytesWrittenToBuffer and CheckForWriteDataRateTimeout)."""
        rates = self._rates
        deadline = self._write_deadline
        if gap > TICK:  # time the server was starved of is not held against the peer
            deadline += gap - TICK
        if written:
            needed = written / rates.response_rate
            deadline = max(now + max(rates.response_grace, needed), deadline + needed)
        self._write_deadline = deadline
        return write_paused and now > deadline
