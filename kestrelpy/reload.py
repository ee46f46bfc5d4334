"""--reload: which file changes restart the workers, and the watcher that notices them.

Watching uses `watchfiles` (inotify, FSEvents, ReadDirectoryChangesW through one Rust library), an
optional dependency: `pip install 'kestrelpy[reload]'`. Nothing here imports it until --reload is used.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from fnmatch import fnmatch
from pathlib import Path, PurePath
from typing import Any

from kestrelpy.errors import ConfigError

DEFAULT_INCLUDES = ("*.py",)
# Hidden files and directories (.git, .venv, editor swap files), bytecode, backups, caches.
DEFAULT_EXCLUDES = (".*", "*.py[cod]", "*~", "__pycache__", "node_modules")
DEBOUNCE_MS = 400  # one editor save often writes several events; gather them into one restart

OnChanges = Callable[[list[str]], None]


class SourceFilter:
    """A change counts when its file name matches an include glob and no path part below the watched
    directory matches an exclude glob (so a project inside ~/.local is still watched)."""

    def __init__(self, roots: Sequence[Path], includes: Sequence[str], excludes: Sequence[str]) -> None:
        self.roots = [root.resolve() for root in roots]
        self.includes = tuple(includes) or DEFAULT_INCLUDES
        self.excludes = (*DEFAULT_EXCLUDES, *excludes)

    def __call__(self, change: Any, path: str) -> bool:
        return self.matches(path)

    def matches(self, path: str) -> bool:
        pure = PurePath(path)
        parts = pure.parts
        for root in self.roots:
            try:
                parts = pure.relative_to(root).parts
                break
            except ValueError:
                continue
        if any(fnmatch(part, pattern) for part in parts for pattern in self.excludes):
            return False
        return any(fnmatch(pure.name, pattern) for pattern in self.includes)


def watch_for_changes(
    dirs: Sequence[str], includes: Sequence[str], excludes: Sequence[str]
) -> Callable[[OnChanges, threading.Event], None]:
    """Check that watching can work, and return the blocking watch loop (run it in a thread)."""
    try:
        import watchfiles
    except ImportError:
        raise ConfigError("--reload needs the watchfiles package: pip install 'kestrelpy[reload]'") from None
    roots = [Path(d).resolve() for d in dirs]
    for root in roots:
        if not root.is_dir():
            raise ConfigError(f"--reload-dir {str(root)!r} is not a directory")
    source_filter = SourceFilter(roots, includes, excludes)

    def watch(on_changes: OnChanges, stop: threading.Event) -> None:
        for changes in watchfiles.watch(
            *roots,
            watch_filter=source_filter,
            debounce=DEBOUNCE_MS,
            stop_event=stop,
            raise_interrupt=False,
        ):
            on_changes(sorted({path for _, path in changes}))

    return watch
