"""`FdInfo`, the one fact class an ordinary start may need (for an inherited socket), in a module of its own
so that describing a descriptor does not load every other fact class; facts.py re-exports it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FdInfo:
    """An inherited socket, inspected instead of probing privileges (the bind already happened)."""

    fd: int
    is_socket: bool
    listening: bool = False
    family: int | None = None
    address: str | None = None
    port: int | None = None
