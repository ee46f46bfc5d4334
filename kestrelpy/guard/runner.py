"""The guard's only door to the operating system.

Every probe reads the host through a `HostIO`: file text (/proc, /sys), external command output, a few
values only a system call can give (effective uid, the owner of our network namespace, an inherited
socket's state, whether an address belongs to this host) and, on Windows, the raw TCP table from the IP
Helper API. Three implementations:

* `SystemIO`    the real host, chosen by `sys.platform`; commands run with a timeout of at most 2 s
                (system.py, kept apart so that an ordinary start loads only it);
* `FixtureIO`   recorded answers, for tests and for replaying a user's `--dump-facts` directory;
* `RecordingIO` wraps another HostIO and keeps everything it answered, then writes it out in the layout
                `FixtureIO.from_dir()` reads back.

Nothing in this module raises for a missing file or program: the answer is None and the probe decides
what that means.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from kestrelpy.guard.facts import FdInfo, NetnsOwner, TlsFile
from kestrelpy.guard.system import COMMAND_TIMEOUT, CommandResult, SystemIO, decode_output

__all__ = [
    "COMMAND_TIMEOUT",
    "CommandResult",
    "FixtureIO",
    "HostIO",
    "RecordingIO",
    "SystemIO",
    "command_key",
    "decode_output",
    "default_io",
]


class HostIO(Protocol):
    """What a probe may ask the host. Implementations never raise for missing things; they answer None."""

    @property
    def platform(self) -> str: ...

    def read_text(self, path: str) -> str | None: ...

    def list_dir(self, path: str) -> list[str] | None: ...

    def readlink(self, path: str) -> str | None: ...

    def run(self, argv: Sequence[str], timeout: float = COMMAND_TIMEOUT) -> CommandResult | None: ...

    def env(self, name: str) -> str | None: ...

    def euid(self) -> int | None: ...

    def user_name(self, uid: int) -> str | None: ...

    def netns_owner(self) -> NetnsOwner: ...

    def resolve(self, host: str) -> tuple[str, ...]: ...

    def inspect_fd(self, fd: int) -> FdInfo: ...

    def clock_ticks(self) -> int: ...

    def byteorder(self) -> str: ...

    def tcp_table(self, family: int) -> bytes | None: ...

    def sock_diag(self, family: int, states: int) -> bytes | None: ...

    def address_is_local(self, host: str) -> bool | None:
        """Whether a socket could bind `host` (an IP literal, maybe with a `%zone`; for a name, every address
        it resolves to): False when the host does not have the address, None when that cannot be told."""
        ...

    def file_access(self, path: str, role: str) -> TlsFile:
        """Whether `path` exists and this process (its effective uid) may read it, with its owner and mode."""
        ...


def command_key(argv: Sequence[str]) -> str:
    return " ".join(argv)


class FixtureIO:
    """Recorded answers. Anything not given is missing (files, commands) or a neutral default.

    A plain class rather than a dataclass: generating dataclass methods for eighteen fields costs more
    at import than the probes it stands in for.
    """

    def __init__(
        self,
        *,
        platform: str = "linux",
        files: Mapping[str, str] | None = None,
        commands: Mapping[str, str] | None = None,  # command_key(argv) -> stdout
        command_codes: Mapping[str, int] | None = None,
        dirs: Mapping[str, list[str]] | None = None,
        links: Mapping[str, str] | None = None,
        environ: Mapping[str, str] | None = None,
        uid: int | None = 1000,
        users: Mapping[int, str] | None = None,
        owner: NetnsOwner = "own",
        hosts: Mapping[str, tuple[str, ...]] | None = None,
        fd_infos: Mapping[int, FdInfo] | None = None,
        ticks: int = 100,
        order: str = "little",
        tcp_tables: Mapping[int, bytes] | None = None,
        diag: Mapping[int, bytes] | None = None,  # family -> raw sock_diag replies
        local: Mapping[str, bool | None] | None = None,  # address -> address_is_local() answer
        access: Mapping[str, TlsFile] | None = None,  # path -> file_access() answer; default: from `files`
    ) -> None:
        self.platform = platform
        self.files = files
        self.commands = commands
        self.command_codes = command_codes
        self.dirs = dirs
        self.links = links
        self.environ = environ
        self.uid = uid
        self.users = users
        self.owner: NetnsOwner = owner
        self.hosts = hosts
        self.fd_infos = fd_infos
        self.ticks = ticks
        self.order = order
        self.tcp_tables = tcp_tables
        self.diag = diag
        self.local = local
        self.access = access
        self.ran: list[str] = []

    def read_text(self, path: str) -> str | None:
        return (self.files or {}).get(path)

    def list_dir(self, path: str) -> list[str] | None:
        entries = (self.dirs or {}).get(path)
        return list(entries) if entries is not None else None

    def readlink(self, path: str) -> str | None:
        return (self.links or {}).get(path)

    def run(self, argv: Sequence[str], timeout: float = COMMAND_TIMEOUT) -> CommandResult | None:
        key = command_key(argv)
        self.ran.append(key)
        out = (self.commands or {}).get(key)
        if out is None:
            return None
        return CommandResult((self.command_codes or {}).get(key, 0), out)

    def env(self, name: str) -> str | None:
        return (self.environ or {}).get(name)

    def euid(self) -> int | None:
        return self.uid

    def user_name(self, uid: int) -> str | None:
        return (self.users or {}).get(uid)

    def netns_owner(self) -> NetnsOwner:
        return self.owner

    def resolve(self, host: str) -> tuple[str, ...]:
        return (self.hosts or {}).get(host, ())

    def inspect_fd(self, fd: int) -> FdInfo:
        return (self.fd_infos or {}).get(fd, FdInfo(fd, is_socket=False))

    def clock_ticks(self) -> int:
        return self.ticks

    def byteorder(self) -> str:
        return self.order

    def tcp_table(self, family: int) -> bytes | None:
        return (self.tcp_tables or {}).get(family)

    def sock_diag(self, family: int, states: int) -> bytes | None:
        return (self.diag or {}).get(family)

    def address_is_local(self, host: str) -> bool | None:
        return (self.local or {}).get(host)  # not recorded: unknown

    def file_access(self, path: str, role: str) -> TlsFile:
        recorded = (self.access or {}).get(path)
        if recorded is not None:
            return dataclasses.replace(recorded, role=role)
        present = path in (self.files or {})
        return TlsFile(path, role, exists=present, readable=present)

    @classmethod
    def from_dir(cls, directory: str | os.PathLike[str]) -> FixtureIO:
        """Replay a directory written by `RecordingIO.dump()` (`kestrelpy check --dump-facts DIR`)."""
        import json

        root = Path(directory)
        manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))

        def text(name: str) -> str:
            return (root / name).read_text(encoding="utf-8")

        return cls(
            platform=manifest["platform"],
            files={path: text(name) for path, name in manifest.get("files", {}).items()},
            commands={key: text(entry["file"]) for key, entry in manifest.get("commands", {}).items()},
            command_codes={key: entry["returncode"] for key, entry in manifest.get("commands", {}).items()},
            dirs=manifest.get("dirs"),
            links=manifest.get("links"),
            environ=manifest.get("env"),
            uid=manifest.get("euid"),
            users={int(k): v for k, v in manifest.get("users", {}).items()},
            owner=manifest.get("netns_owner", "unknown"),
            hosts={k: tuple(v) for k, v in manifest.get("hosts", {}).items()},
            fd_infos={int(k): FdInfo(**v) for k, v in manifest.get("fds", {}).items()},
            ticks=manifest.get("clock_ticks", 100),
            order=manifest.get("byteorder", "little"),
            tcp_tables={int(k): (root / v).read_bytes() for k, v in manifest.get("tcp_tables", {}).items()},
            diag={int(k): (root / v).read_bytes() for k, v in manifest.get("sock_diag", {}).items()},
            local=manifest.get("local_addresses"),
            access={k: TlsFile(**v) for k, v in manifest.get("file_access", {}).items()},
        )


_PRIVATE_KEY = re.compile(r"-----BEGIN ([A-Z ]*)PRIVATE KEY-----.*?-----END \1PRIVATE KEY-----", re.S)
_REDACTED = r"-----BEGIN \1PRIVATE KEY-----\n(not recorded)\n-----END \1PRIVATE KEY-----"


def _file_name(prefix: str, key: str, suffix: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._=-]+", "_", key).strip("_")[:80] or "root"
    return f"{prefix}/{slug}{suffix}"


class RecordingIO:
    """Answers from another HostIO, remembered so they can be written out as a replayable directory."""

    def __init__(self, inner: HostIO) -> None:
        self._inner = inner
        self.files: dict[str, str] = {}
        self.commands: dict[str, CommandResult] = {}
        self.dirs: dict[str, list[str]] = {}
        self.links: dict[str, str] = {}
        self.environ: dict[str, str] = {}
        self.users: dict[int, str] = {}
        self.hosts: dict[str, tuple[str, ...]] = {}
        self.fds: dict[int, FdInfo] = {}
        self.tcp_tables: dict[int, bytes] = {}
        self.diag: dict[int, bytes] = {}
        self.local: dict[str, bool | None] = {}
        self.access: dict[str, TlsFile] = {}
        self._euid: int | None = None
        self._owner: NetnsOwner | None = None

    @property
    def platform(self) -> str:
        return self._inner.platform

    def read_text(self, path: str) -> str | None:
        text = self._inner.read_text(path)
        if text is not None:
            self.files[path] = _PRIVATE_KEY.sub(_REDACTED, text)  # a bug report must never carry a key
        return text

    def list_dir(self, path: str) -> list[str] | None:
        entries = self._inner.list_dir(path)
        if entries is not None:
            self.dirs[path] = entries
        return entries

    def readlink(self, path: str) -> str | None:
        target = self._inner.readlink(path)
        if target is not None:
            self.links[path] = target
        return target

    def run(self, argv: Sequence[str], timeout: float = COMMAND_TIMEOUT) -> CommandResult | None:
        result = self._inner.run(argv, timeout)
        if result is not None:
            self.commands[command_key(argv)] = result
        return result

    def env(self, name: str) -> str | None:
        value = self._inner.env(name)
        if value is not None:
            self.environ[name] = value
        return value

    def euid(self) -> int | None:
        self._euid = self._inner.euid()
        return self._euid

    def user_name(self, uid: int) -> str | None:
        name = self._inner.user_name(uid)
        if name is not None:
            self.users[uid] = name
        return name

    def netns_owner(self) -> NetnsOwner:
        self._owner = self._inner.netns_owner()
        return self._owner

    def resolve(self, host: str) -> tuple[str, ...]:
        self.hosts[host] = self._inner.resolve(host)
        return self.hosts[host]

    def inspect_fd(self, fd: int) -> FdInfo:
        self.fds[fd] = self._inner.inspect_fd(fd)
        return self.fds[fd]

    def clock_ticks(self) -> int:
        return self._inner.clock_ticks()

    def byteorder(self) -> str:
        return self._inner.byteorder()

    def tcp_table(self, family: int) -> bytes | None:
        data = self._inner.tcp_table(family)
        if data is not None:
            self.tcp_tables[family] = data
        return data

    def sock_diag(self, family: int, states: int) -> bytes | None:
        data = self._inner.sock_diag(family, states)
        if data is not None:
            self.diag[family] = data
        return data

    def address_is_local(self, host: str) -> bool | None:
        self.local[host] = self._inner.address_is_local(host)
        return self.local[host]

    def file_access(self, path: str, role: str) -> TlsFile:
        self.access[path] = self._inner.file_access(path, role)
        return self.access[path]

    def dump(self, directory: str | os.PathLike[str]) -> list[str]:
        """Write every answer under `directory`; returns the relative paths written."""
        import json

        root = Path(directory)
        written: list[str] = []

        def put(name: str, data: str | bytes) -> str:
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(data, bytes):
                path.write_bytes(data)
            else:
                path.write_text(data, encoding="utf-8")
            written.append(name)
            return name

        files = {p: put(_file_name("files", p, ".txt"), t) for p, t in sorted(self.files.items())}
        commands = {
            key: {
                "file": put(_file_name("commands", key, ".txt"), r.stdout),
                "returncode": r.returncode,
                "timed_out": r.timed_out,
            }
            for key, r in sorted(self.commands.items())
        }
        tables = {str(f): put(f"tcp_table_v{f}.bin", data) for f, data in self.tcp_tables.items()}
        diag = {str(f): put(f"sock_diag_v{f}.bin", data) for f, data in self.diag.items()}
        manifest = {
            "platform": self.platform,
            "euid": self._euid,
            "netns_owner": self._owner or "unknown",
            "clock_ticks": self.clock_ticks(),
            "byteorder": self.byteorder(),
            "files": files,
            "commands": commands,
            "dirs": self.dirs,
            "links": self.links,
            "env": self.environ,
            "users": {str(k): v for k, v in self.users.items()},
            "hosts": {k: list(v) for k, v in self.hosts.items()},
            "fds": {str(k): dataclasses.asdict(v) for k, v in self.fds.items()},
            "tcp_tables": tables,
            "sock_diag": diag,
            "local_addresses": dict(sorted(self.local.items())),
            "file_access": {k: dataclasses.asdict(v) for k, v in sorted(self.access.items())},
        }
        put("manifest.json", json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        return written


def default_io() -> HostIO:
    return SystemIO()
