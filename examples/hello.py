"""The example app the README runs: `kestrelpy examples.hello:app`."""

import json


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/json":
        body = json.dumps({"message": "Hello, world!", "path": scope["path"]}).encode()
        content_type = b"application/json"
    else:
        body = b"Hello, world!\n"
        content_type = b"text/plain; charset=utf-8"
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
