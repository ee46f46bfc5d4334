"""--reload: a real watcher thread in the supervisor, real file edits, real worker restarts."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

from tests.support.supervised import get, start, stop

pytest.importorskip("watchfiles")

APP = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = {body!r}
    await send({{"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]}})
    await send({{"type": "http.response.body", "body": body}})
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals drive this test")
def test_an_edit_restarts_the_worker_and_a_syntax_error_waits_for_the_fix(tmp_path: Path) -> None:
    source = tmp_path / "reload_app.py"
    source.write_text(APP.format(body=b"first"))
    (tmp_path / "notes.txt").write_text("not watched")
    server = start("reload_app:app", "--reload", "--reload-dir", str(tmp_path), app_dir=tmp_path)
    try:
        assert get(server.port) == (200, "first")

        mark = server.mark()
        (tmp_path / "notes.txt").write_text("still not watched")
        source.write_text(APP.format(body=b"second edit"))
        server.expect(r"Detected changes in .*reload_app\.py; restarting", after=mark)
        server.expect(r"Worker \[\d+\] is serving", after=mark)
        assert get(server.port) == (200, "second edit")
        assert not any("notes.txt" in line for line in server.log[mark:])

        mark = server.mark()
        source.write_text("async def app(scope, receive, send:\n")
        server.expect(r"Worker \[\d+\] could not start: .*SyntaxError", after=mark)
        server.expect(r"waiting for a file to change", after=mark)
        assert server.proc.poll() is None

        mark = server.mark()
        source.write_text(APP.format(body=b"third, fixed"))
        server.expect(r"Worker \[\d+\] is serving", after=mark)
        assert get(server.port) == (200, "third, fixed")

        server.signal(signal.SIGTERM)
        code, log = server.finish()
        assert code == 0, log
    finally:
        stop(server.proc)
