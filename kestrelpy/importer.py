"""Loading the application from `module:attribute` (with --factory and --app-dir)."""

from __future__ import annotations

import importlib
import inspect
import sys
from typing import Any

from kestrelpy.asgi import ASGIApp, Receive, Scope, Send
from kestrelpy.errors import AppImportError


def import_from_string(target: str) -> Any:
    module_name, sep, attrs = target.partition(":")
    if not sep or not module_name or not attrs:
        raise AppImportError(f"APP must look like 'module:attribute', got {target!r}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise AppImportError(f"Could not import module {module_name!r}: {exc}") from None
        raise AppImportError(f"Error while importing {module_name!r}: {exc}") from exc
    except Exception as exc:
        raise AppImportError(f"Error while importing {module_name!r}: {type(exc).__name__}: {exc}") from exc
    obj: Any = module
    for attr in attrs.split("."):
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            raise AppImportError(f"Attribute {attrs!r} not found in module {module_name!r}.") from None
    return obj


def load_app(app: Any, *, factory: bool = False, app_dir: str = ".") -> ASGIApp:
    """The ASGI 3 callable for `app`, which is a 'module:attr' string or the app itself."""
    if isinstance(app, str):
        if app_dir and app_dir not in sys.path:
            sys.path.insert(0, app_dir)
        app = import_from_string(app)
    if factory:
        if not callable(app):
            raise AppImportError("--factory was given but the target is not callable.")
        try:
            app = app()
        except Exception as exc:
            raise AppImportError(f"Error while calling the app factory: {type(exc).__name__}: {exc}") from exc
    if not callable(app):
        raise AppImportError(f"The app must be an ASGI callable, got {type(app).__name__}.")
    return app if is_asgi3(app) else _Asgi2Adapter(app)


def is_asgi3(app: Any) -> bool:
    """ASGI 3 apps are awaited with (scope, receive, send); ASGI 2 ones are called with scope first."""
    if inspect.isclass(app):
        return False
    if inspect.iscoroutinefunction(app):
        return True
    call = getattr(app, "__call__", None)  # noqa: B004
    return inspect.iscoroutinefunction(call)


class _Asgi2Adapter:
    """Runs an ASGI 2 ("double callable") app as ASGI 3."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        instance = self.app(scope)
        await instance(receive, send)
