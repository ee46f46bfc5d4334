"""The documentation cannot drift from the code: docs/flags.md is what the generator writes from the option
declarations, every flag the parsers know is in it, the prose names only flags that exist, the nginx
snippets are the tested configuration, and every relative link in the Markdown files resolves."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from kestrelpy import docs_flags
from kestrelpy.cli import build_parser
from kestrelpy.config import flag_name, options
from kestrelpy.guard.command import build_parser as build_check_parser

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
FLAGS_MD = DOCS / "flags.md"
PROSE = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
MARKDOWN = sorted(
    {*ROOT.glob("*.md"), *DOCS.glob("*.md"), *(ROOT / "bench").glob("*.md"), *(ROOT / "tests").rglob("*.md")}
)

FENCE = re.compile(r"^```")
INLINE_CODE = re.compile(r"`[^`]*`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def server_flags() -> set[str]:
    return {s for action in build_parser()._actions for s in action.option_strings}


def check_flags() -> set[str]:
    return {s for action in build_check_parser()._actions for s in action.option_strings}


def outside_fences(text: str) -> Iterator[str]:
    """The lines of a Markdown text that are not inside a ``` block."""
    fenced = False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            yield line


def fenced_blocks(text: str, language: str | None = None) -> Iterator[list[str]]:
    """The lines of each ``` block, or only of those opened as ```language."""
    block: list[str] | None = None
    opened_as = ""
    for line in text.splitlines():
        stripped = line.strip()
        if FENCE.match(stripped):
            if block is None:
                block, opened_as = [], stripped[3:].strip()
            else:
                if language is None or opened_as == language:
                    yield block
                block = None
            continue
        if block is not None:
            block.append(line)


# -- the generated flag reference --------------------------------------------------------------------------


def test_flag_reference_is_what_the_generator_writes() -> None:
    written = FLAGS_MD.read_text(encoding="utf-8")
    expected = docs_flags.render()
    if written != expected:
        diff = difflib.unified_diff(
            written.splitlines(), expected.splitlines(), "docs/flags.md", "generated", lineterm="", n=1
        )
        pytest.fail("docs/flags.md is out of date: run `python -m kestrelpy.docs_flags`\n" + "\n".join(list(diff)[:40]))


def test_every_flag_the_parsers_know_is_in_the_reference() -> None:
    text = FLAGS_MD.read_text(encoding="utf-8")
    missing = sorted(flag for flag in server_flags() | check_flags() if f"`{flag}" not in text)
    assert not missing, f"not in docs/flags.md: {missing}; run `python -m kestrelpy.docs_flags`"
    assert "`APP`" in text


def test_every_option_is_in_a_section_of_the_reference() -> None:
    stray = [flag_name(f) for _owner, f in options() if f.metadata.get("group") not in docs_flags.GROUPS]
    assert not stray, f"give these options group= one of {list(docs_flags.GROUPS)}: {stray}"


def test_the_generator_reports_a_stale_file(tmp_path: Path) -> None:
    target = tmp_path / "flags.md"
    target.write_text(docs_flags.render().replace("KESTRELPY_PORT", "KESTRELPY_PORTS"), encoding="utf-8")
    assert docs_flags.main(["--check", "--output", str(target)]) == 1
    assert docs_flags.main(["--output", str(target)]) == 0
    assert docs_flags.main(["--check", "--output", str(target)]) == 0


def test_markdown_in_help_text_is_shown_literally() -> None:
    assert docs_flags._prose("besides .*, *~, __pycache__ and SO_REUSEPORT; `a|b`") == (
        r"besides .\*, \*~, \_\_pycache\_\_ and SO_REUSEPORT; `a\|b`"
    )


def test_the_server_never_imports_the_generator() -> None:
    for path in (ROOT / "kestrelpy").rglob("*.py"):
        if path.name != "docs_flags.py":
            assert "docs_flags" not in path.read_text(encoding="utf-8"), path


# -- hand-written pages --------------------------------------------------------------------------------------


def test_readme_flag_table_shows_the_declared_defaults() -> None:
    """The README's short table of the most used flags: real flags, with the defaults `--help` shows."""
    defaults = {}
    for action in build_parser()._actions:
        _help, default = docs_flags._help_and_default(action)
        for spelling in action.option_strings:
            defaults[spelling] = default
    rows = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| `--")]
    assert len(rows) >= 5
    for row in rows:
        flag_cell, default_cell = (cell.strip() for cell in row.strip("|").split("|")[:2])
        flag = flag_cell.strip("`").split()[0].rstrip("`")
        assert flag in defaults, f"README.md names {flag}, which `kestrelpy --help` does not know"
        assert default_cell == f"`{defaults[flag]}`", f"README.md gives {flag} the default {default_cell}"


@pytest.mark.parametrize("page", PROSE, ids=lambda p: str(p.relative_to(ROOT)))
def test_prose_names_only_real_flags(page: Path) -> None:
    """`--flag` in inline code, and the flags of example `kestrelpy` command lines, exist."""
    known_server, known_check = server_flags(), check_flags()
    text = page.read_text(encoding="utf-8")
    named: list[tuple[str, set[str]]] = []
    for line in outside_fences(text):
        for span in INLINE_CODE.findall(line):
            if span.startswith("`--"):
                named.append((re.split(r"[\s=`]", span[1:])[0], known_server | known_check))
    for block in fenced_blocks(text):
        for line in block:
            command = line.split("#")[0].split()
            if command[:2] == ["kestrelpy", "check"]:
                named += [(word, known_check) for word in command if word.startswith("--")]
            elif command[:1] == ["kestrelpy"]:
                named += [(word, known_server) for word in command if word.startswith("--")]
    unknown = sorted({flag for flag, known in named if flag not in known})
    assert not unknown, f"{page.name} names flags kestrelpy does not have: {unknown}"


# Pages whose nginx snippet is a different config, checked against a running nginx by its own test.
NGINX_SNIPPETS_TESTED_ELSEWHERE = {"tls.md": "tests/interop/test_nginx_tls.py"}


@pytest.mark.parametrize(
    "page", [p for p in PROSE if p.name not in NGINX_SNIPPETS_TESTED_ELSEWHERE], ids=lambda p: str(p.relative_to(ROOT))
)
def test_nginx_snippets_are_the_tested_config(page: Path) -> None:
    conf = (ROOT / "deploy" / "nginx.conf").read_text(encoding="utf-8")
    deployed = {" ".join(line.split("#")[0].split()) for line in conf.splitlines()}
    for block in fenced_blocks(page.read_text(encoding="utf-8"), "nginx"):
        for line in block:
            directive = " ".join(line.split("#")[0].split())
            if directive.endswith(";") and not directive.startswith(("map ", "server unix:")):
                assert directive in deployed, f"{page.name} shows {directive!r}, which deploy/nginx.conf does not have"


# -- links -----------------------------------------------------------------------------------------------------


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces as hyphens,
    a repeated heading numbered -1, -2, ..."""
    anchors: set[str] = set()
    for line in outside_fences(markdown):
        match = HEADING.match(line)
        if not match:
            continue
        slug = re.sub(r"[^\w\- ]", "", match.group(2).lower()).replace(" ", "-")
        candidate, n = slug, 0
        while candidate in anchors:
            n += 1
            candidate = f"{slug}-{n}"
        anchors.add(candidate)
    return anchors


def test_anchors_follow_github() -> None:
    page = "# When the port will not bind\n## `kestrelpy check`\n## Linux: port 80\n## Notes\n## Notes\n"
    assert github_anchors(page) == {
        "when-the-port-will-not-bind",
        "kestrelpy-check",
        "linux-port-80",
        "notes",
        "notes-1",
    }


@pytest.mark.parametrize("page", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for line in outside_fences(page.read_text(encoding="utf-8")):
        for target in LINK.findall(INLINE_CODE.sub("", line)):
            if re.match(r"[a-z][a-z+.-]*:", target):  # https:, mailto: ...
                continue
            path_part, _, anchor = target.partition("#")
            linked = (page.parent / path_part).resolve() if path_part else page
            if not linked.exists():
                broken.append(f"{target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in github_anchors(linked.read_text(encoding="utf-8")):
                broken.append(f"{target} (no such heading)")
    assert not broken, f"{page.relative_to(ROOT)}: {broken}"
