"""Certificate findings as a user meets them: `kestrelpy check --json` on real files, a root-only key read by
uid 65534 (the Let's Encrypt privkey.pem case), and a server that refuses to start on an expired certificate
with the guard's explanation instead of binding."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import site
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import kestrelpy

trustme = pytest.importorskip("trustme")

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
APP = "async def app(scope, receive, send):\n    pass\n"


@pytest.fixture
def workdir() -> Iterator[tuple[Path, dict[str, str]]]:
    """A directory uid 65534 can enter (pytest's tmp_path is private to root), and an environment that
    imports this kestrelpy."""
    root = Path(tempfile.mkdtemp(prefix="kestrelpy-guard-tls-"))
    try:
        os.chmod(root, 0o755)
        project = str(Path(kestrelpy.__file__).resolve().parents[1])
        paths = [project, *site.getsitepackages(), os.environ.get("PYTHONPATH", "")]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(p for p in paths if p),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        env.pop("KESTRELPY_SSL_KEYFILE_PASSWORD", None)
        yield root, env
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _write(root: Path, **kwargs: datetime.datetime) -> tuple[Path, Path]:
    issued = trustme.CA().issue_cert("localhost", **kwargs)
    cert, key = root / "fullchain.pem", root / "privkey.pem"
    cert.write_bytes(b"".join(b.bytes() for b in issued.cert_chain_pems))
    key.write_bytes(issued.private_key_pem.bytes())
    os.chmod(cert, 0o644)
    os.chmod(key, 0o600)
    return cert, key


def _check(
    python: str, cert: Path, key: Path, env: dict[str, str], prefix: list[str] | None = None
) -> dict[str, object]:
    argv = [*(prefix or []), python, "-m", "kestrelpy", "check", "--json", "--urls", "https://localhost:8443"]
    argv += ["--ssl-certfile", str(cert), "--ssl-keyfile", str(key)]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
    assert "Traceback" not in done.stderr, done.stderr
    document: dict[str, object] = json.loads(done.stdout)
    document["returncode"] = done.returncode
    return document


def _codes(document: dict[str, object]) -> list[str]:
    findings = document["findings"]
    assert isinstance(findings, list)
    return [f["code"] for f in findings]


def test_check_json_reports_an_expired_certificate(workdir: tuple[Path, dict[str, str]]) -> None:
    root, env = workdir
    now = datetime.datetime.now(datetime.timezone.utc)
    cert, key = _write(root, not_before=now - datetime.timedelta(days=60), not_after=now - datetime.timedelta(days=3))
    document = _check(sys.executable, cert, key, env)
    assert "KP-TLS-EXPIRED" in _codes(document)
    assert document["returncode"] == 1 and document["ok"] is False
    facts = document["facts"]
    assert isinstance(facts, dict) and facts["tls"]["certfile"] == str(cert)


def test_check_json_reports_a_missing_key(workdir: tuple[Path, dict[str, str]]) -> None:
    root, env = workdir
    cert, key = _write(root)
    key.unlink()
    document = _check(sys.executable, cert, key, env)
    assert _codes(document)[:1] == ["KP-TLS-FILE-MISSING"]
    facts = document["facts"]
    assert isinstance(facts, dict)
    assert [(f["role"], f["exists"]) for f in facts["tls"]["files"]] == [
        ("--ssl-certfile", True),
        ("--ssl-keyfile", False),
    ]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_server_does_not_start_on_an_expired_certificate(workdir: tuple[Path, dict[str, str]], workers: str) -> None:
    root, env = workdir
    now = datetime.datetime.now(datetime.timezone.utc)
    cert, key = _write(root, not_before=now - datetime.timedelta(days=60), not_after=now - datetime.timedelta(days=3))
    (root / "tls_app.py").write_text(APP, encoding="utf-8")
    argv = [sys.executable, "-m", "kestrelpy", "tls_app:app", "--app-dir", str(root), "--port", "0"]
    argv += ["--ssl-certfile", str(cert), "--ssl-keyfile", str(key), "--workers", workers]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "[KP-TLS-EXPIRED]" in done.stderr and "How to fix it:" in done.stderr
    assert "Traceback" not in done.stderr
    assert "press CTRL+C" not in done.stderr  # nothing was bound


def _unprivileged_python(env: dict[str, str]) -> str | None:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for exe in dict.fromkeys([sys.executable, f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"]):
        if os.path.exists(exe):
            probe = [*NOBODY, "/bin/sh", "-c", 'exec "$0" -c "import kestrelpy.guard.command"', exe]
            if subprocess.run(probe, env=env, capture_output=True, timeout=20).returncode == 0:
                return exe
    return None


def test_root_only_key_is_unreadable_for_uid_65534(workdir: tuple[Path, dict[str, str]]) -> None:
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("needs root on Linux to own the key and run the check as uid 65534")
    if shutil.which("setpriv") is None:
        pytest.skip("needs util-linux `setpriv`")
    root, env = workdir
    python = _unprivileged_python(env)
    if python is None:
        pytest.skip("no interpreter uid 65534 may run with kestrelpy importable")
    cert, key = _write(root)  # privkey.pem: root:root 0600, as Let's Encrypt leaves it
    document = _check(python, cert, key, env, prefix=NOBODY)
    assert _codes(document) == ["KP-TLS-FILE-UNREADABLE"]
    findings = document["findings"]
    assert isinstance(findings, list)
    summary, remedies = findings[0]["summary"], " ".join(findings[0]["remedies"])
    assert "uid 65534" in summary and "root:" in summary and "mode 0600" in summary
    assert "setfacl -m u:" in remedies and str(key) in remedies
    assert document["returncode"] == 1
    # root may read it: the same files pass
    assert "KP-TLS-FILE-UNREADABLE" not in _codes(_check(sys.executable, cert, key, env))


def test_server_starts_and_says_which_name_the_certificate_lacks(workdir: tuple[Path, dict[str, str]]) -> None:
    root, env = workdir
    issued = trustme.CA().issue_cert("example.org")
    cert, key = root / "fullchain.pem", root / "privkey.pem"
    cert.write_bytes(b"".join(b.bytes() for b in issued.cert_chain_pems))
    key.write_bytes(issued.private_key_pem.bytes())
    (root / "tls_app.py").write_text(APP, encoding="utf-8")
    argv = [sys.executable, "-m", "kestrelpy", "tls_app:app", "--app-dir", str(root), "--port", "0"]
    argv += ["--ssl-certfile", str(cert), "--ssl-keyfile", str(key), "--lifespan", "off"]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env)
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "press CTRL+C" in line:
                break
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    text = "".join(lines)
    assert "press CTRL+C" in text, text
    assert "KP-TLS-NAME-MISMATCH on 127.0.0.1:0: The certificate" in text and "does not name 127.0.0.1" in text
