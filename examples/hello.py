"""The example app the README runs: `kestrelpy examples.hello:app`.

    /          Hello, world!
    /json      a small JSON document
    /healthz   ok (for container health checks and Kubernetes probes)
    /whoami    JSON: the process uid, and the client, scheme and server as the app sees them

Lifespan startup and shutdown are logged, so a graceful stop shows "Application shutdown complete".
"""

import json
import os
import sys


def _log(message):
    print(f"examples.hello[{os.getpid()}]: {message}", file=sys.stderr, flush=True)


async def _lifespan(receive, send):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            _log("Application startup complete")
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            _log("Application shutdown complete")
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    path = scope["path"]
    content_type = b"application/json"
    if path == "/json":
        body = json.dumps({"message": "Hello, world!", "path": path}).encode()
    elif path == "/whoami":
        client = scope.get("client")
        server = scope.get("server")
        body = json.dumps(
            {
                "uid": os.getuid() if hasattr(os, "getuid") else None,
                "client": list(client) if client else None,
                "scheme": scope["scheme"],
                "server": list(server) if server else None,
            }
        ).encode()
    elif path == "/healthz":
        body, content_type = b"ok\n", b"text/plain; charset=utf-8"
    else:
        body, content_type = b"Hello, world!\n", b"text/plain; charset=utf-8"
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
