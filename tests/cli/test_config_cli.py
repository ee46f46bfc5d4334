"""The config file as a user meets it: real `kestrelpy` processes started in a directory holding the file."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.process_log import LISTENING, Running, kestrelpy_in

APPS = Path(__file__).parent  # cli_apps.py


def serve_and_stop(proc: subprocess.Popen[str], procs: list[subprocess.Popen[str]]) -> str:
    """Wait for 'Listening on', check the app answers there, stop with SIGTERM; return the log."""
    procs.append(proc)
    server = Running(proc)
    server.port = int(server.expect(LISTENING.pattern).group(1))
    response = httpx.get(server.url + "/")
    assert response.status_code == 200 and response.text == "ok"
    proc.send_signal(signal.SIGTERM)
    code, log = server.finish()
    assert code == 0, log
    return log


def test_config_flag_names_the_file_that_sets_app_and_port(tmp_path: Path, procs: list[subprocess.Popen[str]]) -> None:
    config = tmp_path / "site.toml"
    config.write_text(f'app = "cli_apps:hello"\napp_dir = "{APPS}"\nhost = "127.0.0.1"\nport = 0\n')
    log = serve_and_stop(kestrelpy_in(tmp_path, "--config", str(config)), procs)
    assert f"Configuration from {config}" in log


def test_kestrelpy_alone_reads_kestrelpy_toml_in_the_working_directory(
    tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    (tmp_path / "kestrelpy.toml").write_text(
        f'app = "cli_apps:hello"\napp_dir = "{APPS}"\nhost = "127.0.0.1"\nport = 0\nserver_header = false\n'
    )
    log = serve_and_stop(kestrelpy_in(tmp_path), procs)
    assert f"Configuration from {tmp_path / 'kestrelpy.toml'}" in log


def test_config_json_reports_where_each_value_came_from(tmp_path: Path) -> None:
    (tmp_path / "kestrelpy.toml").write_text('app = "main:app"\nport = 9001\nbacklog = 10\ntimeout_keep_alive = 7\n')
    proc = kestrelpy_in(tmp_path, "config", "--json", "--port", "9002", env={"KESTRELPY_BACKLOG": "20"})
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    report = json.loads(out)
    options = report["options"]
    path = str(tmp_path / "kestrelpy.toml")
    assert report["file"] == path
    assert options["port"] == {"value": 9002, "source": "cli", "from": "--port"}
    assert options["backlog"] == {"value": 20, "source": "env", "from": "KESTRELPY_BACKLOG"}
    assert options["timeout_keep_alive"] == {"value": 7.0, "source": "file", "from": f"{path}:4"}
    assert options["app"] == {"value": "main:app", "source": "file", "from": f"{path}:1"}
    assert options["workers"] == {"value": 1, "source": "default", "from": None}


def test_a_typo_exits_2_with_the_file_line_and_a_suggestion(tmp_path: Path) -> None:
    (tmp_path / "kestrelpy.toml").write_text('app = "main:app"\ntimeout_keepalive = 3\n')
    proc = kestrelpy_in(tmp_path)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    path = tmp_path / "kestrelpy.toml"
    assert err == f"kestrelpy: error: {path}:2: unknown key `timeout_keepalive`; did you mean `timeout_keep_alive`?\n"


def test_config_output_cut_short_by_its_reader_is_no_error(tmp_path: Path) -> None:
    """`kestrelpy config | head -1`: the reader closes the pipe after one line; no traceback, exit 0."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "kestrelpy", "config", "examples.hello:app"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()  # before the rest is written: the writer meets a closed pipe
    err = proc.stderr.read()
    assert proc.wait(timeout=30) == 0, err
    assert b"Traceback" not in err and b"BrokenPipe" not in err


ENDPOINT_FILE = """\
app = "cli_apps:hello"
app_dir = "{apps}"

[endpoints.web]
url = "http://127.0.0.1:0"

[endpoints.secure]
url = "https://127.0.0.1:18443"
certificate = {{ path = "{missing}" }}
"""


def test_check_reads_the_endpoints_of_the_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    (tmp_path / "kestrelpy.toml").write_text(ENDPOINT_FILE.format(apps=APPS, missing=missing))
    proc = kestrelpy_in(tmp_path, "check")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1, err
    assert out.splitlines()[:2] == [
        "Listening on 127.0.0.1:18443 ([endpoints.secure]) will fail [KP-TLS-FILE-MISSING]",
        f"[endpoints.secure] certificate.path {missing} does not exist.",
    ]
    proc = kestrelpy_in(tmp_path, "check", "--json")
    out, _ = proc.communicate(timeout=30)
    assert json.loads(out)["endpoints"] == ["127.0.0.1:0 ([endpoints.web])", "127.0.0.1:18443 ([endpoints.secure])"]


def test_check_with_an_address_flag_looks_at_it_instead_of_the_tables(tmp_path: Path) -> None:
    (tmp_path / "kestrelpy.toml").write_text(ENDPOINT_FILE.format(apps=APPS, missing=tmp_path / "missing.pem"))
    proc = kestrelpy_in(tmp_path, "check", "--json", "--port", "18001")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert json.loads(out)["endpoints"] == ["127.0.0.1:18001"]


def test_check_reports_a_bad_config_file_as_the_server_does(tmp_path: Path) -> None:
    (tmp_path / "site.toml").write_text('[endpoints.web]\nurl = "http://127.0.0.1:80"\ncertificate = { path = "c" }\n')
    proc = kestrelpy_in(tmp_path, "check", "--config", "site.toml")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert err == (
        "kestrelpy check: error: site.toml:3: the non-HTTPS endpoint [endpoints.web] (http://127.0.0.1:80) sets "
        "certificate, which only an https:// endpoint uses; make its url https:// or remove certificate\n"
    )


def test_endpoints_are_served_and_a_command_line_address_replaces_them(
    tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    (tmp_path / "kestrelpy.toml").write_text(
        f'app = "cli_apps:hello"\napp_dir = "{APPS}"\n\n[endpoints.web]\nurl = "http://127.0.0.1:0"\n'
    )
    log = serve_and_stop(kestrelpy_in(tmp_path), procs)
    assert "Not listening on" not in log
    log = serve_and_stop(kestrelpy_in(tmp_path, "--port", "0"), procs)
    assert (
        f"WARNING  Not listening on [endpoints.web] from {tmp_path / 'kestrelpy.toml'}: --port names the endpoints "
        "instead\n" in log
    )


def test_config_prints_the_endpoint_tables(tmp_path: Path) -> None:
    (tmp_path / "kestrelpy.toml").write_text(
        'app = "main:app"\n[endpoints.secure]\nurl = "https://127.0.0.1:8443"\nprotocols = "http1"\n'
        'certificate = { path = "c.pem", password_env = "SECURE_PW" }\n'
    )
    proc = kestrelpy_in(tmp_path, "config", env={"SECURE_PW": "hunter2"})
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert out.endswith(
        f"\n[endpoints.secure]  # file {tmp_path / 'kestrelpy.toml'}:2\n"
        'url = "https://127.0.0.1:8443"\nprotocols = "http1"\n'
        'certificate = { "path" = "c.pem", "password_env" = "SECURE_PW" }\n'
    )
    assert "hunter2" not in out
    proc = kestrelpy_in(tmp_path, "config", "--json", "--urls", "http://127.0.0.1:1", env={"SECURE_PW": "x"})
    report = json.loads(proc.communicate(timeout=30)[0])
    assert report["endpoints"] == {}
    assert report["endpoints_not_used"].endswith("--urls names the endpoints instead")


CRASHING_APP = """\
async def app(scope, receive, send):
    if scope["type"] == "http" and scope["path"] == "/crash":
        raise RuntimeError("boom")
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
"""


def test_log_format_json_writes_one_object_per_server_line(tmp_path: Path, procs: list[subprocess.Popen[str]]) -> None:
    (tmp_path / "crashing.py").write_text(CRASHING_APP)
    (tmp_path / "kestrelpy.toml").write_text('app = "crashing:app"\nport = 0\nlog_format = "json"\n')
    proc = kestrelpy_in(tmp_path, "--app-dir", str(tmp_path), "--no-access-log")
    procs.append(proc)
    server = Running(proc)
    server.port = int(server.expect(LISTENING.pattern).group(1))
    assert httpx.get(server.url + "/crash").status_code == 500
    server.expect("boom")
    proc.send_signal(signal.SIGTERM)
    code, log = server.finish()
    assert code == 0, log
    records = [json.loads(line) for line in log.splitlines()]  # every line is one JSON object
    for record in records:
        assert set(record) - {"exception"} == {"time", "level", "logger", "message"}
        assert record["time"].endswith("Z")
    first = records[0]
    assert (first["level"], first["logger"]) == ("INFO", "kestrelpy.config")
    assert first["message"] == f"Configuration from {tmp_path / 'kestrelpy.toml'}"
    (crash,) = [r for r in records if "exception" in r]
    assert crash["level"] == "ERROR" and crash["logger"] == "kestrelpy.error"
    assert crash["exception"].startswith("Traceback (most recent call last):")
    assert crash["exception"].endswith("RuntimeError: boom")


@pytest.mark.parametrize("kind", ["json", "toml", "yaml"])
def test_log_config_routes_the_access_log_to_a_file(
    tmp_path: Path, procs: list[subprocess.Popen[str]], kind: str
) -> None:
    access = tmp_path / "access.log"
    schema = {
        "formatters": {"bare": {"format": "ACCESS %(message)s"}},
        "handlers": {"file": {"class": "logging.FileHandler", "filename": str(access), "formatter": "bare"}},
        "loggers": {"kestrelpy.access": {"handlers": ["file"], "level": "INFO", "propagate": False}},
    }
    if kind == "json":
        text = json.dumps(schema)
    elif kind == "toml":
        text = (
            '[formatters.bare]\nformat = "ACCESS %(message)s"\n'
            f'[handlers.file]\nclass = "logging.FileHandler"\nfilename = "{access}"\nformatter = "bare"\n'
            '[loggers."kestrelpy.access"]\nhandlers = ["file"]\nlevel = "INFO"\npropagate = false\n'
        )
    else:
        yaml = pytest.importorskip("yaml")
        text = yaml.safe_dump(schema)
    (tmp_path / f"logging.{kind}").write_text(text)
    proc = kestrelpy_in(
        tmp_path, "cli_apps:hello", "--app-dir", str(APPS), "--port", "0", "--log-config", f"logging.{kind}"
    )
    log = serve_and_stop(proc, procs)
    assert "Listening on" in log  # the server's own lines keep their default handler
    assert access.read_text().startswith("ACCESS 127.0.0.1:")
    assert '"GET / HTTP/1.1" 200' in access.read_text()


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "log.json",
            "{",
            "not valid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
        ),
        ("log.toml", "version = ", "not valid TOML: Invalid value"),  # then where, worded by the Python version
        ("log.ini", "[loggers]", "give a .json, .toml, .yaml or .yml file"),
        ("log.json", "[]", "expected a table of logging settings (dictConfig), not a list"),
        (
            "log.json",
            '{"handlers": {"h": {"class": "no.such.Handler"}}}',
            "logging refused it: Unable to configure handler 'h'",  # then the cause, worded by the Python version
        ),
    ],
)
def test_a_bad_log_config_exits_2_with_one_line(tmp_path: Path, name: str, text: str, message: str) -> None:
    (tmp_path / name).write_text(text)
    proc = kestrelpy_in(tmp_path, "cli_apps:hello", "--app-dir", str(APPS), "--log-config", name)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert err.startswith(f"kestrelpy: error: --log-config {name}: {message}")
    assert err.count("\n") == 1 and "Traceback" not in err
    if name.endswith(".json") and "refused" not in message:
        assert err == f"kestrelpy: error: --log-config {name}: {message}\n"
