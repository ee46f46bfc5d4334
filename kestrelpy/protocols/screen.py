"""Screens over raw request bytes, for a parser more tolerant than llhttp.

RFC 9112 lets a server tolerate some syntax (bare LF line ends, obs-fold, leading empty lines) and
leaves other details to the implementation. llhttp refuses most of it; h11 accepts it. So that both
parser paths give one answer to the same bytes, the h11 adapter runs these checks on what it is about
to parse and refuses what llhttp would refuse. They read bytes and return verdicts; no parser, no I/O.
"""

from __future__ import annotations

import re

# One pass finds everything a head must not hold:
# - control bytes other than HTAB, CR and LF: RFC 9110 section 5.5 keeps them out of field values, and
#   some consumers split lines on \x0b, \x0c or \x1c-\x1e (the CVE-2026-44546 class); obs-text
#   (\x80-\xff, so \x85 too) stays allowed, inside its one value;
# - a CR not followed by LF, an LF not preceded by CR (RFC 9112 section 2.2; CVE-2022-32214);
# - obs-fold, a line starting with SP or HTAB (RFC 9112 section 5.2; CVE-2022-32215, CVE-2024-27982);
# - a field name with a byte that is not a token character, or none at all (RFC 9110 section 5.1).
_REFUSED = re.compile(
    rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\r(?!\n)|(?<!\r)\n|\n[ \t]|\n:"
    rb"|\r\n[!#$%&'*+\-.^_`|~0-9A-Za-z]*[^!#$%&'*+\-.^_`|~0-9A-Za-z:\r\n]"
)
_VERSION_AT_END = re.compile(rb" HTTP/[0-9]\.[0-9]$")
_CONTENT_LENGTH = re.compile(rb"\ncontent-length[ \t]*:([^\r\n]*)", re.IGNORECASE)


# The methods llhttp knows; it refuses any other token, so this path does too (CONNECT is answered by
# the shared connection like any request with an unusable target).
METHODS = frozenset(
    b"DELETE GET HEAD POST PUT CONNECT OPTIONS TRACE COPY LOCK MKCOL MOVE PROPFIND PROPPATCH SEARCH UNLOCK "
    b"BIND REBIND UNBIND ACL REPORT MKACTIVITY CHECKOUT MERGE M-SEARCH NOTIFY SUBSCRIBE UNSUBSCRIBE PATCH "
    b"PURGE MKCALENDAR LINK UNLINK SOURCE QUERY".split()
)


_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
# A plainly well-formed head: method, target without controls or spaces, version, then field lines with
# token names and values free of control bytes other than HTAB, each ended by CRLF. One linear match
# settles most heads; only the others get the detailed checks.
_WELL_FORMED = re.compile(
    rb"(" + _TOKEN + rb") ([^\x00-\x20\x7f]+) HTTP/[0-9]\.[0-9]\r\n(?:" + _TOKEN + rb":[^\x00-\x08\x0a-\x1f\x7f]*\r\n)*"
)


def _target_form(method: bytes, target: bytes) -> bool:
    """llhttp refuses a target that is not origin-, absolute- or asterisk-form (CONNECT aside)."""
    return target[:1] == b"/" or target == b"*" or b"://" in target or method == b"CONNECT"


def _single_length(head: bytes) -> bool:
    lengths = _CONTENT_LENGTH.findall(head)
    return len(lengths) < 2 and not (lengths and b"," in lengths[0])


def strict_head(head: bytes, complete: bool) -> bool:
    """True when a head (complete up to its final CRLF, or the part read so far) is one llhttp would
    also accept, or could still accept once the rest arrives.

    h11 tolerates what RFC 9112 lets a server tolerate and llhttp refuses: bare LF line ends (section
    2.2), obs-fold (section 5.2, the CVE-2022-32215 and CVE-2024-27982 class), control bytes in values,
    repeated or listed Content-Length values that agree (RFC 9110 section 8.6), and methods llhttp does
    not know. Refusing them on this path too gives both parsers one answer: 400 and close; checking the
    part read so far refuses them as early as llhttp does.
    """
    if complete:
        match = _WELL_FORMED.fullmatch(head)
        if match is not None:
            method, target = match.group(1, 2)
            return method in METHODS and _target_form(method, target) and _single_length(head)
    space = head.find(b" ")
    if space >= 0:
        if head[:space] not in METHODS:
            return False
    elif complete or not any(method.startswith(head) for method in METHODS):
        return False
    line_end = head.find(b"\r\n")
    if line_end >= 0:
        if not complete and _VERSION_AT_END.search(head, 0, line_end) is None:
            return False  # a complete request line must end in HTTP/x.y, which llhttp checks at once
        if not _target_form(head[:space], head[space + 1 : head.rfind(b" ", 0, line_end)]):
            return False
    if _REFUSED.search(head) is not None:
        return False
    return not complete or _single_length(head)


_CHUNK_LINE = re.compile(
    rb"([0-9A-Fa-f]+)(?:;[!#$%&'*+\-.^_`|~0-9A-Za-z]+(?:=(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+|\"[^\"\x00-\x1f]*\"))?)*"
)
_TRAILER_LINE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\x00-\x08\x0a-\x1f\x7f]*")
CHUNK_LINE_MAX = 64 * 1024  # a chunk-size line or trailer line longer than this is refused
_SIZE, _DATA, _DATA_END, _TRAILER, _DONE = range(5)


class ChunkScreen:
    """Follows a chunked body's framing alongside h11 (RFC 9112 section 7.1) and refuses what llhttp
    refuses and h11 lets through: whitespace after the size, bare CR or LF in a size, extension or
    trailer line, sizes beyond 64 bits, anything but CRLF after chunk data (the CVE-2025-43859 class),
    obs-fold in trailers. The data itself is only counted, never copied.

    It may read ahead of h11; `data_seen` says how many body bytes came before the bad line, so the
    connection hands the app exactly those and then refuses, in the order llhttp would."""

    __slots__ = ("_left", "_line", "_state", "data_seen", "failed", "trailers")

    def __init__(self) -> None:
        self._state = _SIZE
        self._left = 0
        self._line = b""
        self.data_seen = 0  # chunk data bytes before the current position
        self.failed = False
        # Trailer fields complete so far and not yet taken: the connection counts them against its
        # limits as they arrive, as the httptools path does, rather than once h11 has the whole section.
        self.trailers: list[tuple[bytes, bytes]] = []

    def feed(self, data: bytes) -> None:
        if not self.failed and not self._feed(data):
            self.failed = True

    def _feed(self, data: bytes) -> bool:
        """False once the framing is one llhttp would refuse."""
        at, end = 0, len(data)
        while at < end:
            state = self._state
            if state == _DATA:
                take = min(self._left, end - at)
                at += take
                self._left -= take
                self.data_seen += take
                if not self._left:
                    self._state = _DATA_END
                continue
            if state == _DONE:
                return True
            newline = data.find(b"\n", at)
            if newline < 0:
                line = self._line = self._line + data[at:]
                # A CR anywhere but at the end cannot start a line end: refused at once, as llhttp does.
                return len(line) <= CHUNK_LINE_MAX and b"\r" not in line[:-1]
            line = self._line + data[at:newline]
            self._line = b""
            at = newline + 1
            if line[-1:] != b"\r" or b"\r" in line[:-1] or len(line) > CHUNK_LINE_MAX:
                return False
            line = line[:-1]
            if state == _DATA_END:
                if line:
                    return False
                self._state = _SIZE
            elif state == _SIZE:
                match = _CHUNK_LINE.fullmatch(line)
                if match is None:
                    return False
                size = int(match.group(1), 16)
                if size >= 1 << 64:
                    return False
                self._left = size
                self._state = _DATA if size else _TRAILER
            elif not line:
                self._state = _DONE
            elif _TRAILER_LINE.fullmatch(line) is None:
                return False
            else:
                name, _, value = line.partition(b":")
                self.trailers.append((name.lower(), value.strip(b" \t")))
        return True
