"""kestrelpy: a fast, strict ASGI server that owns its sockets and explains its startup failures."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from kestrelpy.config import Config, Limits
from kestrelpy.server import Server

__all__ = ["Config", "Limits", "Server", "__version__", "run"]


def run(app: Any, **options: Any) -> None:
    """Serve `app` (a callable or 'module:attr') until interrupted: `kestrelpy.run(app, port=8080)`.

    Keyword arguments are Config fields; `log_level` and `access_log` also set up logging.
    """
    from kestrelpy import logs
    from kestrelpy.cli import serve

    config = Config(app=app, **options)
    logs.configure_for(config)
    serve(config)
