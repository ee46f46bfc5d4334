"""Imports point one way: parsers never see ASGI, the ASGI cycle never sees a parser, and nothing
below the CLI reads argv or the environment. No module imports, at run time, one that imports it back:
the server builds the WebSocket upgrade handler and hands it to ServerState, which never imports a
protocol; the CLI picks one server process or the supervisor, handing the supervisor the worker's code
(worker.py), so the server and the supervisor never import each other; a subpackage's modules never
import through its __init__. Type-only imports may point up the layers only where listed below."""

from __future__ import annotations

import ast
from dataclasses import dataclass
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
    for name in (
        "http11.py",
        "http11_output.py",
        "request_head.py",
        "timeouts.py",
        "cycle.py",
        "writer.py",
        "flow.py",
        "rejection.py",
        "screen.py",
        "websocket.py",
    ):
        imports = imported_modules(PACKAGE / "protocols" / name)
        assert not imports & {"httptools", "h11"}, name
    assert not imported_modules(PACKAGE / "asgi.py") & {"httptools", "h11"}


def test_the_request_cycle_knows_no_wire_protocol() -> None:
    # It talks to its Stream; HTTP/1.1 framing (and later HTTP/2 frames) stay on the other side of it.
    imports = imported_modules(PACKAGE / "protocols" / "cycle.py")
    wire = {m for m in imports if m.startswith(("kestrelpy.protocols.http11", "kestrelpy.protocols.websocket"))}
    assert not wire | (imports & {"kestrelpy.protocols.writer", "httptools", "h11"})


def test_every_listed_type_only_import_is_still_there() -> None:
    edges = {(e.source, e.target) for e in import_graph() if e.type_only}
    assert set(TYPE_ONLY_UPWARD) <= edges, set(TYPE_ONLY_UPWARD) - edges


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


# -- no import cycles ------------------------------------------------------------------------------
#
# The graph has an edge A -> B when module A imports module B of this package: at module level or
# inside a function (it runs sooner or later), with relative imports resolved. `from P import name`
# is an edge to P.name when that is a module, else to P; and when P is a subpackage it is an edge to P
# as well, since P's namespace (its __init__) is consulted first: a subpackage's own modules import
# their siblings directly (`import kestrelpy.guard.linux as linux`), never through its facade. Edges
# into the root package are left out: its __init__ only re-exports the public API and runs before any
# module of the package anyway (`from kestrelpy import platform` is the usual spelling for a sibling).
# Imports under `if TYPE_CHECKING:` are type-only: they never run.

ROOT = PACKAGE.name

# Type-only imports that point up the layers (from what is used to what uses it), each closing a loop
# with the imports that point down. Nothing else may close one, and these must stay type-only.
TYPE_ONLY_UPWARD = {
    ("kestrelpy.state", "kestrelpy.protocols.http11"): "ServerState.connections holds connections",
    ("kestrelpy.state", "kestrelpy.protocols.http2"): "ServerState.connections holds HTTP/2 connections too",
    ("kestrelpy.state", "kestrelpy.protocols.websocket"): "ServerState.upgrade is the handler the server built",
    ("kestrelpy.guard.screen", "kestrelpy.guard.runner"): "the screen reads the host through a HostIO",
}


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    type_only: bool
    line: int


def module_names() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_edges(module: str, path: Path, modules: dict[str, Path]) -> list[Edge]:
    """Every import in `module` of another module of the package, with where it is and whether it only
    runs for a type checker."""
    is_package = path.name == "__init__.py"
    edges: list[Edge] = []

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    def add(target: str | None, node: ast.stmt, type_only: bool) -> None:
        if target is not None and target not in (module, ROOT):
            edges.append(Edge(module, target, type_only, node.lineno))

    def visit(node: ast.AST, type_only: bool) -> None:
        if isinstance(node, ast.If) and is_type_checking(node.test):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, type_only)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(known(alias.name), node, type_only)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                add(submodule if submodule in modules else known(source), node, type_only)
            if source in modules and modules[source].name == "__init__.py" and source != ROOT:
                add(source, node, type_only)
        for inner in ast.iter_child_nodes(node):
            visit(inner, type_only)

    visit(ast.parse(path.read_text()), False)
    return edges


def import_graph() -> list[Edge]:
    modules = module_names()
    return [edge for name, path in sorted(modules.items()) for edge in import_edges(name, path, modules)]


def cycles(edges: list[Edge]) -> list[str]:
    """Each strongly connected group of modules, shown as one loop through it with the import lines."""
    graph: dict[str, dict[str, Edge]] = {}
    for edge in edges:
        graph.setdefault(edge.source, {}).setdefault(edge.target, edge)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def connect(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, {}):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [show_loop(graph, group) for group in groups]


def show_loop(graph: dict[str, dict[str, Edge]], group: set[str]) -> str:
    """The shortest loop from the group's first module back to it, staying inside the group; `module:line`
    is where that module imports the next one."""
    start = min(group)
    paths: dict[str, list[Edge]] = {start: []}
    queue = [start]
    for node in queue:
        for target, edge in sorted(graph[node].items()):
            if target == start:
                steps = [*paths[node], edge]
                shown = " -> ".join(f"{e.source}:{e.line}{' (type-only)' if e.type_only else ''}" for e in steps)
                return f"{shown} -> {start}   [group: {', '.join(sorted(group))}]"
            if target in group and target not in paths:
                paths[target] = [*paths[node], edge]
                queue.append(target)
    raise AssertionError(f"no loop through {start}")


def test_the_import_graph_sees_what_it_checks() -> None:
    """The checks below pass on an empty graph too; this one does not."""
    edges = {(e.source, e.target): e.type_only for e in import_graph()}
    assert edges[("kestrelpy.protocols.http11_h11", "kestrelpy.protocols.http11")] is False
    assert edges[("kestrelpy.protocols.http11", "kestrelpy.state")] is True  # under `if TYPE_CHECKING:`
    assert edges[("kestrelpy.server", "kestrelpy.guard")] is False  # inside a function
    assert edges[("kestrelpy.guard.command", "kestrelpy.guard.messages")] is False  # from kestrelpy.guard import m
    assert edges[("kestrelpy.guard.command", "kestrelpy.guard")] is False  # ...through the package, too
    assert ("kestrelpy.sockets", "kestrelpy.platform") in edges  # from kestrelpy import platform
    assert not {target for _, target in edges} & {ROOT}
    assert cycles([Edge("a", "b", False, 1), Edge("b", "c", False, 2), Edge("c", "a", False, 3)]) == [
        "a:1 -> b:2 -> c:3 -> a   [group: a, b, c]"
    ]


def test_no_import_cycles_at_run_time() -> None:
    found = cycles([edge for edge in import_graph() if not edge.type_only])
    assert not found, "import cycles:\n" + "\n".join(found)


def test_only_the_listed_type_only_imports_close_a_loop() -> None:
    kept = [e for e in import_graph() if not (e.type_only and (e.source, e.target) in TYPE_ONLY_UPWARD)]
    found = cycles(kept)
    assert not found, "import loops (a type-only import that points up the layers belongs in TYPE_ONLY_UPWARD):\n" + (
        "\n".join(found)
    )
