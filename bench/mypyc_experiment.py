#!/usr/bin/env python
"""Experiment: what compiling the per-request modules with mypyc would gain. Nothing compiled is shipped.

Copies kestrelpy/ as it is right now into two scratch trees, compiles the hot-path modules of one of
them with mypyc (modules that fail to compile are reported with mypyc's reasons and left out), then
measures both trees with bench/micro.py, interleaved, and optionally with a short pinned wrk run of
bench/run.py.

    python bench/mypyc_experiment.py                           # compile, then micro.py, 3 rounds
    python bench/mypyc_experiment.py --modules cycle,writer --http httptools,h11
    python bench/mypyc_experiment.py --wrk --wrk-rounds 3      # also wrk plaintext, both trees pinned

Needs mypy (which ships mypyc), setuptools and a C compiler in the running interpreter's environment.
The scratch trees are kept under bench/out/mypyc/ so a result can be traced to the code it measured.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = REPO_ROOT / "bench" / "out" / "mypyc"
# kestrelpy/protocols/<name>.py. The h11 adapter is in the list because an interpreted class cannot
# subclass a compiled one: once http11 is compiled, its subclass H11Connection has to be too.
CANDIDATES = ("cycle", "writer", "http11", "http11_httptools", "http11_h11")
# A compiled class cannot subclass an interpreted one that has __slots__: the adapters need http11.
NEEDS = {"http11_httptools": "http11", "http11_h11": "http11"}
COMPILE_TIMEOUT_S = 1200.0
MICRO_TIMEOUT_S = 1800.0
MAX_ATTEMPTS = 4
SUMMARY = "SUMMARY.txt"  # what was compiled, beside the trees
# mypy settings for the compile: the project's own, minus strictness (mypyc needs types, not style).
MYPY_FLAGS = (
    "--ignore-missing-imports",
    "--follow-imports=silent",  # other modules are imported as Python, not checked
    "--python-version",
    f"{sys.version_info[0]}.{sys.version_info[1]}",
)
# Starts the kestrelpy CLI with one tree first on sys.path (the cwd stays the repository root for bench.apps).
CLI_IN_TREE = "import sys; sys.path.insert(0, {tree!r}); from kestrelpy.cli import main; sys.exit(main(sys.argv[1:]))"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- snapshot


def snapshot(into: Path, commit: str | None) -> str:
    """Copy kestrelpy/ (from the working tree, or as of `commit`) into `into`; describe what was copied."""
    if commit is None:
        shutil.copytree(REPO_ROOT / "kestrelpy", into / "kestrelpy", ignore=shutil.ignore_patterns("__pycache__"))
        state = f"working tree at commit {git('rev-parse', '--short', 'HEAD').strip()}"
        edited = git("status", "--porcelain", "--", "kestrelpy").splitlines()
        if edited:
            state += " plus uncommitted changes to " + ", ".join(line[3:] for line in edited)
    else:
        into.mkdir(parents=True)
        archive = subprocess.run(
            ["git", "archive", "--format=tar", commit, "kestrelpy"], cwd=REPO_ROOT, capture_output=True, timeout=60
        )
        if archive.returncode != 0:
            raise SystemExit(f"git archive {commit} failed: {archive.stderr.decode().strip()}")
        subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True, timeout=60)
        state = f"commit {git('rev-parse', '--short', commit).strip()}"
    digest = hashlib.sha256()
    for path in sorted((into / "kestrelpy").rglob("*.py")):
        digest.update(str(path.relative_to(into)).encode() + b"\0" + path.read_bytes())
    return f"{state}; sha256 of the copied sources {digest.hexdigest()[:12]}"


def git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30, check=False)
    return done.stdout.rstrip() or "unknown"  # porcelain lines start with a space


# --------------------------------------------------------------------------- compile


def module_path(name: str) -> str:
    return f"kestrelpy/protocols/{name}.py"


def run_mypyc(tree: Path, modules: Sequence[str]) -> tuple[bool, str]:
    """Compile `modules` together in `tree` (extension modules land beside the sources)."""
    argv = [sys.executable, "-m", "mypyc", *MYPY_FLAGS, *(module_path(m) for m in modules)]
    env = {**os.environ, "MYPYC_OPT_LEVEL": os.environ.get("MYPYC_OPT_LEVEL", "3")}
    started = time.monotonic()
    try:
        done = subprocess.run(
            argv, cwd=tree, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S, env=env, check=False
        )
    except subprocess.TimeoutExpired:
        return False, f"mypyc did not finish within {COMPILE_TIMEOUT_S:.0f} s"
    log(f"mypyc {', '.join(modules)}: exit {done.returncode} after {time.monotonic() - started:.0f} s")
    return done.returncode == 0, done.stdout + done.stderr


def errors_by_module(output: str, modules: Sequence[str]) -> dict[str, list[str]]:
    """mypy/mypyc `path:line: error: ...` lines, grouped by the candidate module they point at."""
    found: dict[str, list[str]] = {}
    for line in output.splitlines():
        match = re.match(r"(kestrelpy/\S+?\.py):\d+: error: (.*)", line.strip())
        if match is None:
            continue
        for name in modules:
            if match.group(1) == module_path(name):
                found.setdefault(name, []).append(line.strip())
    return found


def compile_what_compiles(
    tree: Path, wanted: Sequence[str], mirror: Path
) -> tuple[list[str], dict[str, list[str]], list[str]]:
    """Compile `wanted`, working around what mypyc suggests a workaround for and dropping modules it
    still refuses. Returns (compiled modules, refused modules with mypyc's reasons, workarounds applied).
    Workarounds go into `mirror` too (they do nothing at run time without mypyc), so both trees run
    the same source."""
    refused: dict[str, list[str]] = {}
    patched: list[str] = []
    modules = list(wanted)
    for _ in range(MAX_ATTEMPTS):
        if not modules:
            break
        ok, output = run_mypyc(tree, modules)
        if ok:
            return modules, refused, patched
        clean_build(tree)
        applied = apply_workarounds(tree, output) if not patched else []
        if applied:
            apply_workarounds(mirror, output)
            patched += applied
            continue
        blamed = errors_by_module(output, modules)
        if not blamed:  # not attributable to one module (a compiler or build failure): give up
            refused.update({m: [output.strip()[-2000:]] for m in modules})
            return [], refused, patched
        refused.update(blamed)
        for name, needed in NEEDS.items():
            if needed in blamed and name in modules and name not in blamed:
                refused[name] = [f"left out with {needed}: its class subclasses one defined there"]
        modules = [m for m in modules if m not in refused]
    return [], refused, patched


NATIVE_SUBCLASS_ERROR = re.compile(
    r"(kestrelpy/\S+?\.py):(\d+): error: Inheriting from most builtin types is unimplemented"
)
NON_NATIVE = "@mypyc_attr(native_class=False)  # mypyc: a subclass of a builtin type stays a Python class"


def apply_workarounds(tree: Path, output: str) -> list[str]:
    """mypyc's own suggestion for a class inheriting from a builtin type (an exception, list): leave that
    class a Python class. Returns what was changed."""
    lines_by_file: dict[str, list[int]] = {}
    for match in NATIVE_SUBCLASS_ERROR.finditer(output):
        lines_by_file.setdefault(match.group(1), []).append(int(match.group(2)))
    changed = []
    for relative, numbers in lines_by_file.items():
        path = tree / relative
        lines = path.read_text().splitlines(keepends=True)
        for number in sorted(set(numbers), reverse=True):
            line = lines[number - 1]
            indent = line[: len(line) - len(line.lstrip())]
            lines.insert(number - 1, f"{indent}{NON_NATIVE}\n")
            changed.append(f"{relative}:{number} `{line.strip()}` left a Python class (mypyc_attr(native_class=False))")
        lines.insert(first_import_line(path), "from mypy_extensions import mypyc_attr\n")
        path.write_text("".join(lines))
    return changed


def first_import_line(path: Path) -> int:
    """Index (0-based) of the line after the module's docstring and `from __future__` imports."""
    body = ast.parse(path.read_text()).body
    after = 0
    for node in body:
        is_docstring = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and node is body[0]
        if is_docstring or (isinstance(node, ast.ImportFrom) and node.module == "__future__"):
            after = node.end_lineno or after
        else:
            break
    return after


def clean_build(tree: Path) -> None:
    shutil.rmtree(tree / "build", ignore_errors=True)
    for path in tree.rglob("*.so"):
        path.unlink()


def check_compiled(tree: Path, modules: Sequence[str]) -> None:
    """Refuse to measure unless every compiled module really imports as an extension module."""
    code = (
        f"import sys; sys.path.insert(0, {str(tree)!r}); import importlib\n"
        f"for name in {list(modules)!r}:\n"
        "    mod = importlib.import_module('kestrelpy.protocols.' + name)\n"
        "    assert mod.__file__.endswith('.so'), mod.__file__\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the compiled tree does not import its extension modules: {done.stderr.strip()[-800:]}")


# --------------------------------------------------------------------------- measure


def run_micro(pure: Path, compiled: Path, args: argparse.Namespace) -> str:
    argv = [
        sys.executable, str(REPO_ROOT / "bench" / "micro.py"), "--compare", str(pure), str(compiled),
        "--http", args.http, "--workloads", args.workloads, "--rounds", str(args.rounds),
        "--repeats", str(args.repeats),
    ]  # fmt: skip
    # A workload that fails in one tree is reported in the table, not fatal.
    done = subprocess.run(argv, stdout=subprocess.PIPE, text=True, timeout=MICRO_TIMEOUT_S, check=False)
    return done.stdout


def run_wrk(pure: Path, compiled: Path, args: argparse.Namespace) -> int:
    """bench/run.py's plaintext workload with both trees (and uvicorn, the runner's baseline)."""
    sys.path.insert(0, str(REPO_ROOT))
    runner = importlib.import_module("bench.run")
    for name, tree in (("kestrelpy-pure", pure), ("kestrelpy-mypyc", compiled)):
        code = CLI_IN_TREE.format(tree=str(tree))

        def build(app: str, port: int, code: str = code) -> list[str]:
            return ["-c", code, app, "--host", runner.HOST, "--port", str(port), "--no-access-log"]

        runner.SERVERS[name] = runner.Server(name, "kestrelpy", build)
    result: int = runner.main([
        "--servers", "kestrelpy-pure,kestrelpy-mypyc,uvicorn", "--workloads", args.wrk_workloads,
        "--rounds", str(args.wrk_rounds), "--duration", str(args.wrk_duration),
    ])  # fmt: skip
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modules", default=",".join(CANDIDATES), help="kestrelpy/protocols modules to compile")
    parser.add_argument("--commit", help="measure kestrelpy/ as of this commit instead of the working tree")
    parser.add_argument("--http", default="all", help="parsers for micro.py (httptools, h11 or all)")
    parser.add_argument("--workloads", default="all", help="micro.py workloads")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved micro.py rounds")
    parser.add_argument("--repeats", type=int, default=3, help="micro.py repeats per round")
    parser.add_argument("--reuse", type=Path, help="measure the trees of an earlier run (a bench/out/mypyc/ dir)")
    parser.add_argument("--no-micro", action="store_true", help="skip bench/micro.py (with --wrk)")
    parser.add_argument("--wrk", action="store_true", help="also a short pinned wrk run of both trees")
    parser.add_argument("--wrk-workloads", default="plaintext", help="bench/run.py workloads for --wrk")
    parser.add_argument("--wrk-rounds", type=int, default=3)
    parser.add_argument("--wrk-duration", type=int, default=3)
    args = parser.parse_args(argv)
    wanted = [m.strip() for m in args.modules.split(",") if m.strip()]
    unknown = [m for m in wanted if not (REPO_ROOT / module_path(m)).is_file()]
    if unknown:
        raise SystemExit(f"no such module: {', '.join(unknown)}")

    if args.reuse is not None:
        work = args.reuse.resolve()
        pure, compiled = work / "pure", work / "compiled"
        print((work / SUMMARY).read_text(), flush=True)
    else:
        work = OUT_DIR / time.strftime("%Y%m%d-%H%M%S")
        pure, compiled = work / "pure", work / "compiled"
        if not prepare(pure, compiled, wanted, args.commit, work):
            return 1
    if not args.no_micro:
        print("\n" + run_micro(pure, compiled, args), flush=True)
    if args.wrk:
        return run_wrk(pure, compiled, args)
    return 0


def prepare(pure: Path, compiled: Path, wanted: Sequence[str], commit: str | None, work: Path) -> bool:
    """Snapshot, compile and check; print (and keep beside the trees) what was compiled and what not."""
    state = snapshot(pure, commit)
    shutil.copytree(pure, compiled)
    log(f"measuring kestrelpy at {state}")
    done, refused, patched = compile_what_compiles(compiled, wanted, mirror=pure)
    lines = [f"kestrelpy state: {state}", f"Python {sys.version.split()[0]}; scratch trees in {work}", ""]
    lines.append(f"compiled with mypyc: {', '.join(done) or 'nothing'}")
    lines += [f"workaround in both trees: {change}" for change in patched]
    for name, reasons in refused.items():
        lines.append(f"not compiled: {name}")
        lines += [f"    {reason}" for reason in reasons[:10]]
    summary = "\n".join(lines)
    (work / SUMMARY).write_text(summary + "\n")
    print(summary, flush=True)
    if done:
        check_compiled(compiled, done)
    return bool(done)


if __name__ == "__main__":
    sys.exit(main())
