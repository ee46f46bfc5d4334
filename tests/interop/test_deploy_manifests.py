"""deploy/kubernetes.yaml and the Dockerfile, checked for structure and against kestrelpy's own CLI.
(The Dockerfile is also built and run for real by ci/dockerfile-smoke.sh in CI.)"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
from typing import Any

import pytest

from kestrelpy.cli import build_parser, config_from
from tests.support.interop import ROOT

yaml = pytest.importorskip("yaml", reason="PyYAML is in the test extra: pip install -e '.[test]'")


def manifests() -> dict[str, dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all((ROOT / "deploy" / "kubernetes.yaml").read_text()) if d]
    by_kind = {d["kind"]: d for d in docs}
    assert sorted(by_kind) == ["Deployment", "Service"] and len(docs) == 2
    return by_kind


def container() -> dict[str, Any]:
    [only] = manifests()["Deployment"]["spec"]["template"]["spec"]["containers"]
    return only


def port_number(c: dict[str, Any], ref: int | str) -> int:
    if isinstance(ref, int):
        return ref
    [port] = [p["containerPort"] for p in c["ports"] if p.get("name") == ref]
    return int(port)


def served_config() -> Any:
    c = container()
    assert c["command"] == ["kestrelpy"]
    env = {e["name"]: e["value"] for e in c.get("env", [])}
    return config_from(build_parser().parse_args(c["args"]), env)  # the flags must parse as kestrelpy's


def test_manifest_loads_and_wires_service_to_deployment() -> None:
    docs = manifests()
    deployment, service = docs["Deployment"], docs["Service"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    [svc_port] = service["spec"]["ports"]
    assert port_number(container(), svc_port["targetPort"]) == 8080


def test_container_listens_on_8080_everywhere() -> None:
    config = served_config()
    assert config.port == 8080 and config.host == "0.0.0.0"
    assert [p["containerPort"] for p in container()["ports"]] == [8080]


def test_probes_hit_a_route_the_app_answers() -> None:
    c = container()
    spec = importlib.util.spec_from_file_location("deployed_hello", ROOT / "examples" / "hello.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    app = module.app

    for probe in ("readinessProbe", "livenessProbe"):
        get = c[probe]["httpGet"]
        assert port_number(c, get["port"]) == 8080
        assert asgi_get(app, get["path"])[0] == 200, probe


def test_grace_period_covers_shutdown_delay_plus_graceful_timeout() -> None:
    config = served_config()
    grace = manifests()["Deployment"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert config.shutdown_delay > 0
    assert grace > config.shutdown_delay + config.timeout_graceful_shutdown


def test_runs_as_non_root() -> None:
    pod = manifests()["Deployment"]["spec"]["template"]["spec"]["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] > 0
    assert container()["securityContext"]["allowPrivilegeEscalation"] is False
    assert f"USER {pod['runAsUser']}" in (ROOT / "Dockerfile").read_text()


def test_dockerfile_shape() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.12-slim$", text, re.M)
    assert re.search(r"^EXPOSE 8080$", text, re.M)
    assert re.search(r"^HEALTHCHECK .*\n?.*CMD \[", text, re.M)
    user = re.search(r"^USER (\d+)", text, re.M)
    assert user is not None and int(user.group(1)) != 0
    [cmd] = re.findall(r"^CMD (.+)$", text, re.M)
    argv = json.loads(cmd)  # exec form: a JSON list, so SIGTERM reaches kestrelpy as PID 1
    assert argv[0] == "kestrelpy"
    config = config_from(build_parser().parse_args(argv[1:]), {})
    assert (config.host, config.port) == ("0.0.0.0", 8080)


def asgi_get(app: Any, path: str) -> tuple[int, bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope: dict[str, Any] = {"type": "http", "path": path, "method": "GET", "headers": [], "scheme": "http"}
    scope["client"] = None
    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])
