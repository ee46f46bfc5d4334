"""kestrelpy's HTTP/2 driven by real clients, over TLS (ALPN h2) and over cleartext with prior knowledge (h2c):
curl (`--http2` with the test CA, `--http2-prior-knowledge`), h2load (Debian nghttp2-client), httpx with
http2, and the conformance suite h2spec (`h2spec` on PATH or at $H2SPEC; .ci/run puts it on PATH when
the machine has it). A client that is missing is a skip with the reason, never a failure."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import ssl
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("h2", reason="the h2 package is not installed (pip install h2)")
pytest.importorskip(
    "kestrelpy.protocols.http2", reason="kestrelpy.protocols.http2 is not available: this kestrelpy serves no HTTP/2"
)

import httpx
import trustme

from tests.support.interop import Process, kestrelpy, listening_urls, require_tool

# h2load and h2spec load the machine: one server at a time, in one worker.
pytestmark = pytest.mark.xdist_group("http2-interop")

# h2spec's 146 cases (RFC 9113 and RFC 7541), the strict ones left out as h2spec does by default: all pass
# over TLS, all but one over h2c, where case 3.5 (an invalid preface must get GOAWAY) cannot pass by
# design: a cleartext connection that does not open with the preface is HTTP/1.1.
# For scale, hypercorn 0.18 passes 144/145 over h2c and 145/145 over TLS; granian 2.8 144 and 143.
H2LOAD_REQUESTS = 2000


@dataclass(frozen=True)
class H2Endpoint:
    """A kestrelpy process serving tests/interop/interop_apps.py over h2c or TLS."""

    transport: str  # "h2c" or "tls"
    port: int
    ca: Path  # the CA that issued the server's certificate (unused for h2c)

    @property
    def tls(self) -> bool:
        return self.transport == "tls"

    def url(self, path: str = "/") -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}{path}"


def serve_over(transport: str, work: Path) -> Process:
    """kestrelpy on an ephemeral loopback port; with TLS, a certificate from a CA made for this run."""
    if transport != "tls":
        return kestrelpy("--urls", "http://127.0.0.1:0", "--no-access-log")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(work / "ca.pem"))
    issued = ca.issue_cert("127.0.0.1", "localhost")
    issued.cert_chain_pems[0].write_to_path(str(work / "cert.pem"))
    issued.private_key_pem.write_to_path(str(work / "key.pem"))
    tls = ["--ssl-certfile", str(work / "cert.pem"), "--ssl-keyfile", str(work / "key.pem")]
    return kestrelpy("--urls", "https://127.0.0.1:0", "--no-access-log", *tls)


@pytest.fixture(scope="module", params=["h2c", "tls"])
def endpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[H2Endpoint]:
    work = tmp_path_factory.mktemp(f"h2-{request.param}")
    with serve_over(request.param, work) as server:
        port = int(listening_urls(server)[0].rsplit(":", 1)[1])
        yield H2Endpoint(request.param, port, work / "ca.pem")
        assert server.stop() == 0, server.output
        assert "Traceback" not in server.output, server.output


# -- curl ------------------------------------------------------------------------------------------------


def curl(endpoint: H2Endpoint, path: str, *args: str) -> tuple[str, int, bytes]:
    """One request by curl speaking HTTP/2 only: (HTTP version curl used, status, body)."""
    binary = require_tool("curl", "curl")
    mode = ["--http2", "--cacert", str(endpoint.ca)] if endpoint.tls else ["--http2-prior-knowledge"]
    argv = [binary, "-sS", "--max-time", "10", *mode, *args, "-w", r"\n%{http_version} %{http_code}"]
    done = subprocess.run([*argv, endpoint.url(path)], capture_output=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    body, _, trailer = done.stdout.rpartition(b"\n")
    version, status = trailer.decode().split()
    return version, int(status), body


def test_curl_gets_an_answer_over_http2(endpoint: H2Endpoint) -> None:
    version, status, body = curl(endpoint, "/whoami")
    assert (version, status) == ("2", 200)
    seen = json.loads(body)
    assert seen["scheme"] == ("https" if endpoint.tls else "http")
    assert seen["host"] == f"127.0.0.1:{endpoint.port}"  # :authority becomes the host header


def test_curl_uploads_a_body_over_http2(endpoint: H2Endpoint, tmp_path: Path) -> None:
    """A 3 MiB POST: more than the initial stream window, so the server must open it as the app reads."""
    payload = os.urandom(3 * 2**20)
    (tmp_path / "payload").write_bytes(payload)
    version, status, body = curl(endpoint, "/upload", "--data-binary", f"@{tmp_path / 'payload'}")
    assert (version, status) == ("2", 200)
    assert json.loads(body) == {"length": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}


# -- h2load ----------------------------------------------------------------------------------------------

H2LOAD_REQUESTS_LINE = re.compile(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed")
H2LOAD_STATUS_LINE = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")


def test_h2load_gets_every_request_answered(endpoint: H2Endpoint) -> None:
    """2000 requests on 4 connections with 10 concurrent streams each: all succeed with 2xx, over h2."""
    binary = require_tool("h2load", "nghttp2-client")
    argv = [binary, "-n", str(H2LOAD_REQUESTS), "-c", "4", "-m", "10", "-T", "10", endpoint.url("/")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    expected = "h2" if endpoint.tls else "h2c"
    assert f"Application protocol: {expected}\n" in output, output  # not a fallback to HTTP/1.1
    requests = H2LOAD_REQUESTS_LINE.search(output)
    statuses = H2LOAD_STATUS_LINE.search(output)
    assert requests is not None and statuses is not None, output
    total, _, done_count, succeeded, failed = map(int, requests.groups())
    assert (total, done_count, succeeded, failed) == (H2LOAD_REQUESTS, H2LOAD_REQUESTS, H2LOAD_REQUESTS, 0), output
    assert int(statuses.group(1)) == H2LOAD_REQUESTS, output


# -- httpx -----------------------------------------------------------------------------------------------


def test_httpx_speaks_http2(endpoint: H2Endpoint) -> None:
    """Twenty GETs and a POST on one httpx client: one connection, HTTP/2 throughout."""
    # Over cleartext, httpx uses prior knowledge only when HTTP/1.1 is switched off.
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(endpoint.ca)) if endpoint.tls else False
    with httpx.Client(http1=endpoint.tls, http2=True, verify=verify, timeout=10) as client:
        for _ in range(20):
            response = client.get(endpoint.url("/"))
            assert (response.http_version, response.status_code, response.content) == ("HTTP/2", 200, b"ok")
        posted = client.post(endpoint.url("/upload"), content=b"x" * 100_000)
    assert posted.http_version == "HTTP/2"
    assert posted.json()["length"] == 100_000


# -- h2spec ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class H2specScore:
    passed: int
    failed: int
    skipped: int
    failures: list[str]

    @property
    def run(self) -> int:
        return self.passed + self.failed


def find_h2spec() -> str:
    candidate = os.environ.get("H2SPEC") or shutil.which("h2spec")
    if not candidate or not os.access(candidate, os.X_OK):
        pytest.skip("h2spec is not installed: put it on PATH or point $H2SPEC at it (.ci/run does when it can)")
    return candidate


def parse_junit(report: Path) -> H2specScore:
    """h2spec's JUnit report: a testcase with a <failure> or <error> failed, one with <skipped> was not run."""
    passed = failed = skipped = 0
    failures = []
    for case in ET.parse(report).getroot().iter("testcase"):
        if case.find("skipped") is not None:
            skipped += 1
        elif case.find("failure") is not None or case.find("error") is not None:
            failed += 1
            failures.append(f"{case.get('package', '')} {case.get('classname', '')}: {case.get('name', '')}".strip())
        else:
            passed += 1
    return H2specScore(passed, failed, skipped, failures)


def test_h2spec_conformance(endpoint: H2Endpoint, tmp_path: Path) -> None:
    """h2spec's suite against the server; the score is printed, and every case passes but 3.5 #2 over h2c."""
    binary = find_h2spec()
    report = tmp_path / "h2spec.xml"
    # /upload reads the whole request body before it answers, as Kestrel's h2spec app does: an app that
    # answers first ends the stream (RST_STREAM NO_ERROR, RFC 9113 section 8.1), and the frames h2spec sends
    # after that are then ignored as RFC 9113 section 5.1 requires, not answered with the error it expects.
    argv = [binary, "-h", "127.0.0.1", "-p", str(endpoint.port), "-P", "/upload", "-o", "3", "-j", str(report)]
    argv += ["-t", "-k"] if endpoint.tls else []
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    assert report.exists(), done.stdout[-2000:] + done.stderr[-2000:]
    score = parse_junit(report)
    print(f"h2spec over {endpoint.transport}: {score.passed}/{score.run} passed, {score.skipped} skipped")
    for failure in score.failures[:20]:
        print(f"  failed: {failure}")
    assert score.run >= 140, done.stdout[-2000:]
    # Over h2c, case 3.5 #2 (an invalid preface must get GOAWAY) cannot pass: such a connection is HTTP/1.1.
    unexpected = [f for f in score.failures if endpoint.tls or "invalid connection preface" not in f]
    assert not unexpected, unexpected
