"""The ASGI lifespan protocol: startup before serving, shutdown after the last connection closes.

`auto` tolerates apps that do not speak lifespan (they raise or return at once on the unknown scope
type); `on` treats that as a startup failure; `off` never calls the app with a lifespan scope.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio

from kestrelpy.asgi import ASGI_VERSION, LIFESPAN_SPEC_VERSION, ASGIApp, Message
from kestrelpy.errors import LifespanStartupError

logger = logging.getLogger("kestrelpy.error")


class Lifespan:
    def __init__(self, app: ASGIApp, mode: str) -> None:
        self.app = app
        self.mode = mode
        self.state: dict[str, Any] = {}
        self._send_to_app, self._app_inbox = anyio.create_memory_object_stream[Message](2)
        self._startup_done = anyio.Event()
        self._shutdown_done = anyio.Event()
        self._startup_failed: str | None = None
        self._shutdown_failed: str | None = None
        self._unsupported = False
        self._error: BaseException | None = None

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    async def main(self) -> None:
        """Runs the app's lifespan call for the whole life of the server (in the server's task group)."""
        scope = {
            "type": "lifespan",
            "asgi": {"version": ASGI_VERSION, "spec_version": LIFESPAN_SPEC_VERSION},
            "state": self.state,
        }
        try:
            await self.app(scope, self._receive, self._send)
        except BaseException as exc:
            self._error = exc
            if self.mode == "auto" and not self._startup_done.is_set():
                self._unsupported = True
                logger.info("ASGI lifespan is not supported by the app; continuing without it.")
                logger.debug("Lifespan error", exc_info=exc)
            else:
                logger.error("Exception in ASGI lifespan", exc_info=exc)
            if isinstance(exc, anyio.get_cancelled_exc_class()):
                raise
        else:
            if not self._startup_done.is_set():
                self._unsupported = True
        finally:
            self._startup_done.set()
            self._shutdown_done.set()

    async def _receive(self) -> Message:
        return await self._app_inbox.receive()

    async def _send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "lifespan.startup.complete":
            self._startup_done.set()
        elif kind == "lifespan.startup.failed":
            self._startup_failed = str(message.get("message", ""))
            self._startup_done.set()
        elif kind == "lifespan.shutdown.complete":
            self._shutdown_done.set()
        elif kind == "lifespan.shutdown.failed":
            self._shutdown_failed = str(message.get("message", ""))
            self._shutdown_done.set()
        else:
            raise RuntimeError(f"Unexpected ASGI lifespan message {kind!r}.")

    async def startup(self) -> None:
        await self._send_to_app.send({"type": "lifespan.startup"})
        await self._startup_done.wait()
        if self._startup_failed is not None:
            raise LifespanStartupError(f"Application startup failed: {self._startup_failed or 'no message'}")
        if self._unsupported and self.mode == "on":
            detail = f": {type(self._error).__name__}: {self._error}" if self._error else ""
            raise LifespanStartupError(f"Application startup failed (--lifespan on){detail}")
        if self._error is not None and not self._unsupported:
            raise LifespanStartupError(f"Application startup failed: {self._error}")

    async def shutdown(self) -> None:
        if self._unsupported or self._error is not None or self._shutdown_done.is_set():
            return
        await self._send_to_app.send({"type": "lifespan.shutdown"})
        await self._shutdown_done.wait()
        if self._shutdown_failed is not None:
            logger.error("Application shutdown failed: %s", self._shutdown_failed or "no message")
