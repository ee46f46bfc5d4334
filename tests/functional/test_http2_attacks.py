"""HTTP/2 attacks on a real loopback server, over h2c prior knowledge and over TLS (ALPN h2), each bounded
in frames and time (tests/support/h2_attackers.py), most with an ordinary h2 client timing its requests
meanwhile. The server must cut each attacker off (or hold it back) with bounded memory and keep answering
everyone else: rapid reset gets GOAWAY ENHANCE_YOUR_CALM (CVE-2023-44487), endless CONTINUATION is cut off
at the header size limit (CVE-2024-27316), an HPACK bomb is refused before the app, control-frame floods
are cut off or throttled (CVE-2019-9512/9515/9518), a zero-window reader is held back and then dropped, a
jump to the last stream id is harmless, and a slow body stalls only its own stream."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("h2", reason="the h2 package is not installed (pip install h2)")
pytest.importorskip(
    "kestrelpy.protocols.http2", reason="kestrelpy.protocols.http2 is not available: this kestrelpy serves no HTTP/2"
)

import trustme

from kestrelpy.config import Limits, TlsOptions
from tests.support.h2_attackers import (
    ENHANCE_YOUR_CALM,
    MAX_STREAM_ID,
    PROTOCOL_ERROR,
    H2Target,
    Observed,
    client_tls_context,
    continuation_flood,
    control_flood,
    hpack_bomb,
    ordinary_client,
    rapid_reset,
    repeated,
    slow_body_beside_normal_streams,
    stream_id_exhaustion,
    zero_window_reader,
)
from tests.support.live_server import LiveServer

# Each attack loads the machine and measures an ordinary client's latency meanwhile: one at a time.
pytestmark = pytest.mark.xdist_group("attacks")

MiB = 2**20
# The ordinary client's 99th percentile while an attack runs, on a shared 2-CPU machine.
P99_BOUND_S = 1.0
# How far the server's resident memory may grow during an attack that would cost it tens of MiB undefended.
MEMORY_BOUND = 24 * MiB
BIG_RESPONSE = 64 * MiB
# How long an attack that the server cuts off quickly is repeated on new connections.
ATTACK_S = 3.0
BIG_PART = 64 * 1024

HEADER_BYTES_SEEN: list[int] = []  # what /headers saw, per request: the app must never see a bomb


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """/ok answers "ok"; /slow after 2 s (or the client's disconnect); /headers records the size of the
    headers it got; /upload reads the whole body; /big streams 64 MiB in 64 KiB parts."""
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    path = scope["path"]
    if path == "/slow":
        await wait_for_disconnect(receive, 2.0)
    elif path == "/headers":
        HEADER_BYTES_SEEN.append(sum(len(name) + len(value) for name, value in scope["headers"]))
    elif path == "/upload":
        while (message := await receive())["type"] == "http.request" and message.get("more_body"):
            pass
    elif path == "/big":
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % BIG_RESPONSE)]}
        )
        part = b"z" * BIG_PART
        for i in range(BIG_RESPONSE // BIG_PART):
            await send({"type": "http.response.body", "body": part, "more_body": i < BIG_RESPONSE // BIG_PART - 1})
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


async def wait_for_disconnect(receive: Any, seconds: float) -> None:
    async def disconnected() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    try:
        await asyncio.wait_for(disconnected(), seconds)
    except asyncio.TimeoutError:
        pass


# -- the server under attack ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Attacked:
    target: H2Target
    pid: int  # whose memory the attacks watch: this process, since the server runs in a thread here


@dataclass(frozen=True)
class CertFiles:
    ca: Path
    cert: Path
    key: Path


@pytest.fixture(scope="module")
def cert_files(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    where = tmp_path_factory.mktemp("h2-certs")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "::1", "localhost")
    ca.cert_pem.write_to_path(str(where / "ca.pem"))
    server.cert_chain_pems[0].write_to_path(str(where / "cert.pem"))
    server.private_key_pem.write_to_path(str(where / "key.pem"))
    return CertFiles(where / "ca.pem", where / "cert.pem", where / "key.pem")


@pytest.fixture(params=["h2c", "tls"])
def h2_server(
    request: pytest.FixtureRequest, serve_app: Callable[..., LiveServer], cert_files: CertFiles
) -> Callable[..., Attacked]:
    """`h2_server(**config)`: the attack app served over h2c prior knowledge or TLS with ALPN h2."""

    def start(**config: Any) -> Attacked:
        context = None
        if request.param == "tls":
            config["tls"] = TlsOptions(ssl_certfile=str(cert_files.cert), ssl_keyfile=str(cert_files.key))
            context = client_tls_context(str(cert_files.ca))
        live = serve_app(app, **config)
        return Attacked(H2Target("127.0.0.1", live.port, context), os.getpid())

    return start


def repeated_and_shown(attack: Callable[[], Observed]) -> list[Observed]:
    observed = repeated(attack, ATTACK_S)
    for each in observed:
        print(each.summary())
    return observed


def assert_memory_bounded(observed: Observed) -> None:
    assert observed.server_rss_growth is not None
    assert observed.server_rss_growth < MEMORY_BOUND, observed.summary()


def assert_ordinary_client_served(ordinary: Any, attack: str) -> None:
    assert not ordinary.failures, ordinary.failures[:3]
    assert len(ordinary.latencies) > 10, f"only {len(ordinary.latencies)} ordinary requests during the {attack}"
    p99 = ordinary.p99()
    print(f"ordinary h2 client during the {attack}: {len(ordinary.latencies)} requests, p99 {p99 * 1000:.1f} ms")
    assert p99 < P99_BOUND_S


# -- the attacks ---------------------------------------------------------------------------------------


def test_rapid_reset_gets_goaway_enhance_your_calm(h2_server: Callable[..., Attacked]) -> None:
    """HEADERS then RST_STREAM for up to 20 000 streams whose app takes 2 s: the server counts the streams
    it starts while too many are still running, and ends the connection with GOAWAY ENHANCE_YOUR_CALM
    long before the attack ends, with bounded memory, while an ordinary client is served."""
    server = h2_server()
    with ordinary_client(server.target) as ordinary:
        attacks = repeated_and_shown(lambda: rapid_reset(server.target, server_pid=server.pid))
    for observed in attacks:
        assert observed.goaway_code == ENHANCE_YOUR_CALM, observed.summary()
        # Cut off after a few hundred streams (the last one it took names it), whatever the client managed
        # to push into the socket buffers meanwhile.
        assert observed.goaway_last_stream is not None and observed.goaway_last_stream < 4_000, observed.summary()
        assert_memory_bounded(observed)
    assert_ordinary_client_served(ordinary, "rapid reset")


def test_continuation_flood_is_cut_off_at_the_header_size_limit(h2_server: Callable[..., Attacked]) -> None:
    """A header block that never ends (up to 64 MiB of CONTINUATION): the server stops at its header
    size limit and ends the connection (its GOAWAY may be lost to the reset that closing a connection
    with unread input causes), within seconds and without buffering the block."""
    server = h2_server()
    with ordinary_client(server.target) as ordinary:
        attacks = repeated_and_shown(lambda: continuation_flood(server.target, server_pid=server.pid))
    for observed in attacks:
        assert observed.cut_off, observed.summary()
        assert observed.cut_off_after is not None and observed.cut_off_after < 5.0
        assert_memory_bounded(observed)
    assert_ordinary_client_served(ordinary, "CONTINUATION flood")


def test_hpack_bomb_is_refused_before_the_app(h2_server: Callable[..., Attacked]) -> None:
    """Ten requests whose 16 KB header block decodes to about 48 MB: the decoded size counts against the
    header size limit, so each is refused (RST_STREAM, 431 or GOAWAY), the app sees none of them, and
    an ordinary client is served meanwhile."""
    server = h2_server()
    HEADER_BYTES_SEEN.clear()
    with ordinary_client(server.target) as ordinary:
        attacks = repeated_and_shown(lambda: hpack_bomb(server.target, server_pid=server.pid))
    assert not HEADER_BYTES_SEEN, f"the app got header lists of {HEADER_BYTES_SEEN[:3]} bytes"
    for observed in attacks:
        assert 200 not in observed.statuses.values(), observed.summary()
        refused = observed.cut_off or observed.rst_codes or 431 in observed.statuses.values()
        assert refused, observed.summary()
        assert_memory_bounded(observed)
    assert_ordinary_client_served(ordinary, "HPACK bomb")


@pytest.mark.parametrize("kind", ["settings", "ping", "empty-data", "window-update"])
def test_control_frame_flood_is_cut_off_or_held_back(h2_server: Callable[..., Attacked], kind: str) -> None:
    """Up to a million frames that cost work and achieve nothing, the answers never read: the server
    either ends the connection (GOAWAY ENHANCE_YOUR_CALM, RFC 9113 section 10.5) or stops reading it
    while its unsent answers are bounded; it never keeps reading and queueing. Frames that need no
    answer (empty DATA, WINDOW_UPDATE) leave only the first. Ordinary clients are served meanwhile. The
    keep-alive timeout is long, so that closing an idle connection does not pass for a defence."""
    server = h2_server(limits=Limits(keep_alive_timeout=60))
    with ordinary_client(server.target) as ordinary:
        attacks = repeated_and_shown(lambda: control_flood(server.target, kind, server_pid=server.pid))
    for observed in attacks:
        assert observed.cut_off or observed.stalled, observed.summary()
        if observed.goaway_code is not None:
            assert observed.goaway_code == ENHANCE_YOUR_CALM, observed.summary()
        assert_memory_bounded(observed)
    assert_ordinary_client_served(ordinary, f"{kind} flood")


def test_zero_window_reader_is_held_back_then_cut_off(h2_server: Callable[..., Attacked]) -> None:
    """A 64 MiB response to a client that grants no flow-control window: the app's send waits (the
    server buffers a bounded amount, not the response) and, below the minimum response data rate once
    the grace period is over, the stream is reset or the connection ended."""
    server = h2_server(limits=Limits(min_response_rate=4096, min_response_grace=1.5))
    observed = zero_window_reader(server.target, server_pid=server.pid)
    print(observed.summary())
    assert observed.statuses.get(1) == 200, observed.summary()  # the response had started
    assert observed.data_received == 0
    assert observed.cut_off_after is not None and observed.cut_off_after < 8.0, observed.summary()
    assert observed.rst_codes or observed.cut_off, observed.summary()
    assert_memory_bounded(observed)


def test_stream_id_jump_to_the_last_id_is_harmless(h2_server: Callable[..., Attacked]) -> None:
    """Streams 1 and 2^31-1 are both answered; stream 3 after them is a connection error (GOAWAY
    PROTOCOL_ERROR, RFC 9113 section 5.1.1); nothing is kept for the two billion ids skipped."""
    server = h2_server()
    observed = stream_id_exhaustion(server.target, server_pid=server.pid)
    print(observed.summary())
    assert observed.statuses.get(1) == 200 and observed.statuses.get(MAX_STREAM_ID) == 200, observed.summary()
    assert observed.goaway_code == PROTOCOL_ERROR, observed.summary()
    assert observed.goaway_last_stream == MAX_STREAM_ID
    assert_memory_bounded(observed)


def test_a_slow_body_stalls_only_its_own_stream(h2_server: Callable[..., Attacked]) -> None:
    """One stream sends its body a byte every 0.2 s while ordinary GETs run on the same connection: they
    are answered promptly throughout, and below the minimum request body rate the slow stream alone is
    ended (408 or RST_STREAM) while the connection stays up."""
    server = h2_server(limits=Limits(min_request_body_rate=1000, min_request_body_grace=1.5))
    result = slow_body_beside_normal_streams(server.target, server_pid=server.pid)
    observed = result.slow
    print(observed.summary())
    assert not result.failures, result.failures[:3]
    assert len(result.latencies) > 20
    print(f"streams beside the slow body: {len(result.latencies)}, p99 {result.p99() * 1000:.1f} ms")
    assert result.p99() < P99_BOUND_S
    assert not observed.cut_off, observed.summary()
    assert observed.rst_codes or observed.statuses.get(1) == 408, observed.summary()
    assert result.slow_ended_after is not None and result.slow_ended_after < 6.0
