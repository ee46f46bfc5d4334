"""Imports point one way: parsers never see ASGI, the ASGI cycle never sees a parser, and nothing
below the CLI reads argv or the environment."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "kestrelpy"


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_parser_adapters_import_only_the_shared_connection() -> None:
    for name in ("http11_httptools.py", "http11_h11.py"):
        imports = imported_modules(PACKAGE / "protocols" / name)
        shared_cycle = {"kestrelpy.protocols.cycle", "kestrelpy.protocols.writer", "kestrelpy.asgi"}
        assert not imports & shared_cycle, name


def test_shared_code_never_imports_a_parser() -> None:
    for name in ("http11.py", "cycle.py", "writer.py", "flow.py", "rejection.py", "screen.py", "websocket.py"):
        imports = imported_modules(PACKAGE / "protocols" / name)
        assert not imports & {"httptools", "h11"}, name
    assert not imported_modules(PACKAGE / "asgi.py") & {"httptools", "h11"}


def test_only_the_cli_reads_argv_or_environment() -> None:
    for path in PACKAGE.rglob("*.py"):
        if path.name in ("cli.py", "__main__.py") or "guard" in path.parts:
            continue
        text = path.read_text()
        assert "sys.argv" not in text, path
        assert "os.environ" not in text and "os.getenv" not in text, path


def test_websocket_library_is_imported_only_by_the_websocket_protocol() -> None:
    # It is an optional extra: every other module must import without it.
    for path in PACKAGE.rglob("*.py"):
        if path.name != "websocket.py":
            assert not {m for m in imported_modules(path) if m.split(".")[0] == "websockets"}, path
