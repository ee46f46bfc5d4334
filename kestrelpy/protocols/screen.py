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
_TRANSFER_ENCODING = re.compile(rb"\ntransfer-encoding:", re.IGNORECASE)


# The methods llhttp knows; it refuses any other token, so this path does too (CONNECT is answered by
# the shared connection like any request with an unusable target).
METHODS = frozenset(
    b"DELETE GET HEAD POST PUT CONNECT OPTIONS TRACE COPY LOCK MKCOL MOVE PROPFIND PROPPATCH SEARCH UNLOCK "
    b"BIND REBIND UNBIND ACL REPORT MKACTIVITY CHECKOUT MERGE M-SEARCH NOTIFY SUBSCRIBE UNSUBSCRIBE PATCH "
    b"PURGE MKCALENDAR LINK UNLINK SOURCE QUERY".split()
)
# Methods llhttp reads on to the request line's version before refusing them in an HTTP request: RTSP's,
# and PRI (the HTTP/2 preface). The start of one is not wrong yet, on this path either.
REFUSED_AT_VERSION = frozenset(
    b"DESCRIBE ANNOUNCE SETUP PLAY PAUSE TEARDOWN GET_PARAMETER SET_PARAMETER REDIRECT RECORD FLUSH PRI".split()
)
_METHOD_STARTS = METHODS | REFUSED_AT_VERSION
_HTTP_VERSION = re.compile(rb" HTTP/[0-9]\.[0-9]")


_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
# A plainly well-formed head: method, target without controls or spaces, version, then field lines with
# token names and values free of control bytes other than HTAB, each ended by CRLF. One linear match
# settles most heads; only the others get the detailed checks.
_WELL_FORMED = re.compile(
    rb"(" + _TOKEN + rb") ([^\x00-\x20\x7f]+) HTTP/[0-9]\.[0-9]\r\n(?:" + _TOKEN + rb":[^\x00-\x08\x0a-\x1f\x7f]*\r\n)*"
)


def _target_form(method: bytes, target: bytes) -> bool:
    """llhttp refuses a target that is not origin-, absolute- or asterisk-form (CONNECT aside). It reads
    anything that starts with `*` as asterisk-form: the shared connection refuses all but `*` itself
    (and that for any method but OPTIONS), after the checks h11 makes first on this path (Host)."""
    return target[:1] in (b"/", b"*") or b"://" in target or method == b"CONNECT"


def _single_length(head: bytes) -> bool:
    lengths = _CONTENT_LENGTH.findall(head)
    if not lengths:
        return True
    # llhttp refuses a value past 64 bits (h11 would read any number).
    value = lengths[0].strip(b" \t")
    return (
        len(lengths) == 1
        and b"," not in value
        and _TRANSFER_ENCODING.search(head) is None  # (_with_coding, knowing there is a Content-Length)
        and (len(value) < 20 or _fits_64(value))
    )


def _fits_64(value: bytes) -> bool:
    return not value.isdigit() or int(value) < 1 << 64


# A Content-Length field of a head still arriving: its value so far (after the whitespace llhttp skips),
# and how far its line end has arrived.
_LENGTH_SO_FAR = re.compile(rb"(?<=\n)content-length:[ \t]*([^\r\n]*)(\r?\n?)", re.IGNORECASE)
_LENGTH_VALUE = re.compile(rb"([0-9]*)[ \t]*")


def _lengths_so_far(head: bytes) -> bool:
    """False once the Content-Length fields of an incomplete head are ones llhttp has already refused: a
    value that is not digits (then whitespace), one past 64 bits, an empty one once the next line has
    begun, or a second value. A complete head is h11's to check, with the same answer."""
    seen = False
    for match in _LENGTH_SO_FAR.finditer(head):
        value, line_end = match.groups()
        if value:
            digits = _LENGTH_VALUE.fullmatch(value)
            if seen or digits is None or (digits.group(1) and int(digits.group(1)) >= 1 << 64):
                return False
            seen = seen or line_end != b""  # the value is one once its CR arrives
        elif line_end == b"\r\n" and match.end() < len(head):
            return False
    return True


def _with_coding(head: bytes) -> bool:
    """Content-Length beside Transfer-Encoding: llhttp refuses it as soon as the second name ends, before
    h11 would look at Host (RFC 9112 section 6.1 lets a server refuse it; the shared check does too)."""
    return _TRANSFER_ENCODING.search(head) is not None and _CONTENT_LENGTH.search(head) is not None


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
        method = head[:space]
        if method not in METHODS:
            if method == b"PRI":  # llhttp reads the whole head of what may be the HTTP/2 preface
                return not complete
            return not complete and method in REFUSED_AT_VERSION and _HTTP_VERSION.search(head) is None
    elif complete or not any(method.startswith(head) for method in _METHOD_STARTS):
        return False
    line_end = head.find(b"\r\n")
    if line_end >= 0:
        if not complete and _VERSION_AT_END.search(head, 0, line_end) is None:
            return False  # a complete request line must end in HTTP/x.y, which llhttp checks at once
        if not _target_form(head[:space], head[space + 1 : head.rfind(b" ", 0, line_end)]):
            return False
    if _REFUSED.search(head) is not None:
        return False
    return _single_length(head) if complete else not _with_coding(head) and _lengths_so_far(head)


# Chunk lines as llhttp reads them (RFC 9112 section 7.1.1):
#   chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
#   chunk-ext-val = token / quoted-string
# with a quoted-string's qdtext and quoted-pair from RFC 9110 section 5.6.4 (so `;` and `=` may stand
# inside quotes, and `\"` does not end them). llhttp departs from the grammar in two ways, and this path
# does too, so both parsers answer alike: it refuses BWS (whitespace around `;` and `=`, which RFC 9110
# section 5.6.3 says a sender MUST NOT generate), and it accepts an empty name or value (`;=v`, `;n=`,
# `;;n`) and a token followed by a quoted-string as one value (`;n=a"b"`), but not a `;` that ends the
# line. Extensions are otherwise ignored, as section 7.1.1 requires of unknown ones.
_TCHAR = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
_QUOTED_CHAR = rb"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])"  # qdtext / quoted-pair
_CHUNK_EXT = rb";" + _TCHAR + rb"*(?:=" + _TCHAR + rb'*(?:"' + _QUOTED_CHAR + rb'*")?)?'
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]+)(?:" + _CHUNK_EXT + rb")*(?<!;)")
# What a chunk line may start with: llhttp refuses a line at its first wrong byte, so this path refuses
# a line as soon as what has arrived of it can no longer become a valid one.
_CHUNK_LINE_START = re.compile(
    rb"(?:([0-9A-Fa-f]+)(?:" + _CHUNK_EXT + rb")*(?:;" + _TCHAR + rb"*=" + _TCHAR + rb'*"' + _QUOTED_CHAR + rb"*\\?)?)?"
)
_NOT_TCHAR = re.compile(rb"[^!#$%&'*+\-.^_`|~0-9A-Za-z]")
_NOT_FIELD_VCHAR = re.compile(rb"[^\t\x20-\x7e\x80-\xff]")  # RFC 9110 section 5.5: HTAB, SP, VCHAR, obs-text
# Field names llhttp reads specially: it ends such a name at a space (and refuses the line after that).
_LLHTTP_SPECIAL_NAMES = frozenset(
    (b"connection", b"content-length", b"proxy-connection", b"transfer-encoding", b"upgrade")
)
CHUNK_LINE_MAX = 64 * 1024  # a chunk-size line or trailer line longer than this is refused
_SIZE, _DATA, _DATA_END, _TRAILER, _DONE = range(5)


def _chunk_size(line: bytes, complete: bool) -> int:
    """The size a chunk line (without its CRLF) gives, or -1 when llhttp would refuse it (or, for a line not
    yet complete, what has arrived of it)."""
    match = (_CHUNK_LINE if complete else _CHUNK_LINE_START).fullmatch(line)
    if match is None:
        return -1
    digits = match.group(1)
    size = int(digits, 16) if digits else 0
    return size if size < 1 << 64 else -1  # llhttp refuses a size past 64 bits as soon as it overflows


class ChunkScreen:
    """Follows a chunked body's framing alongside h11 (RFC 9112 section 7.1) and refuses what llhttp
    refuses and h11 lets through: whitespace after the size, bare CR or LF in a size, extension or
    trailer line, malformed extensions, sizes beyond 64 bits, anything but CRLF after chunk data (the
    CVE-2025-43859 class), obs-fold in trailers. The data itself is only counted, never copied.

    It may read ahead of h11; `data_seen` says how many body bytes came before the bad line, so the
    connection hands the app exactly those and then refuses, in the order llhttp would.

    Trailer fields are handed on (in `trailers`) at the moments llhttp hands them to the other path: a
    field once the next line shows a field name (at its colon, or when a read ends inside the name) or
    the section ends. llhttp refuses Content-Length in a trailer at its colon, and Transfer-Encoding at
    the first byte of its value (or, empty, at the next line): those are handed on at that point, so the
    connection refuses them as forbidden trailers, as it does on the other path."""

    __slots__ = ("_left", "_line", "_pending", "_state", "data_seen", "failed", "trailers")

    def __init__(self) -> None:
        self._state = _SIZE
        self._left = 0
        self._line = b""
        self.data_seen = 0  # chunk data bytes before the current position
        self.failed = False
        # Trailer fields complete so far and not yet taken: the connection counts them against its
        # limits as they arrive, as the httptools path does, rather than once h11 has the whole section.
        self.trailers: list[tuple[bytes, bytes]] = []
        self._pending: tuple[bytes, bytes] | None = None  # the last trailer field, until llhttp would hand it on

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
                return self._line_so_far(line, complete=False)
            line = self._line + data[at:newline]
            self._line = b""
            at = newline + 1
            if not self._line_so_far(line, complete=True):
                return False
        return True

    def _line_so_far(self, line: bytes, complete: bool) -> bool:
        """Check a line (without its LF; `complete` once that has arrived) and act on it. False once
        llhttp would have refused it."""
        if len(line) > CHUNK_LINE_MAX:
            return False
        state = self._state
        if state == _TRAILER:
            return self._trailer_line(line, complete)
        if not complete:
            # A CR anywhere but at the end cannot start a line end: refused at once, as llhttp does.
            if state == _DATA_END:
                return line == b"\r"
            return _chunk_size(line[:-1], True) >= 0 if line[-1:] == b"\r" else _chunk_size(line, False) >= 0
        if line[-1:] != b"\r":
            return False
        line = line[:-1]
        if state == _DATA_END:
            if line:
                return False
            self._state = _SIZE
            return True
        size = _chunk_size(line, True)
        if size < 0:
            return False
        self._left = size
        self._state = _DATA if size else _TRAILER
        return True

    def _trailer_line(self, line: bytes, complete: bool) -> bool:
        """One trailer line so far, read as llhttp reads it (see the class notes on when fields are
        handed on). False once llhttp would have refused it."""
        if self._pending is not None and self._pending[0] == b"transfer-encoding":
            # (empty: any value is refused at its first byte) llhttp refuses it at the next byte that
            # does not start obs-fold.
            if not line and not complete:
                return True
            if line[:1] not in (b" ", b"\t"):
                self._hand_on_pending()
            return False
        if line[:1] == b"\r":
            if len(line) > 1:
                return False
            if complete:  # the end of the trailer section
                self._hand_on_pending()
                self._state = _DONE
            return True
        colon = line.find(b":")
        name = line if colon < 0 else line[:colon]
        bad = _NOT_TCHAR.search(name)
        if bad is not None or not name:
            if bad is not None and name[bad.start()] == 0x20 and name[: bad.start()].lower() in _LLHTTP_SPECIAL_NAMES:
                self._hand_on_pending()
            return False
        if colon < 0:  # a name so far: llhttp hands on the field before it when a read ends inside it
            if not complete:
                self._hand_on_pending()
            return not complete
        self._hand_on_pending()  # a field name is complete: llhttp hands on the field before it
        name = name.lower()
        value = line[colon + 1 :]
        if name == b"content-length":
            self.trailers.append((name, value.strip(b" \t\r")))
            return False
        if name == b"transfer-encoding":
            start = value.lstrip(b" \t")[:1]
            if start and start != b"\r":
                self.trailers.append((name, value.strip(b" \t\r")))
                return False
        end = len(value) - 1 if value[-1:] == b"\r" else len(value)
        if _NOT_FIELD_VCHAR.search(value, 0, end) is not None:
            return False
        if complete:
            if end == len(value):  # a bare LF
                return False
            self._pending = (name, value[:end].strip(b" \t"))
        return True

    def _hand_on_pending(self) -> None:
        if self._pending is not None:
            self.trailers.append(self._pending)
            self._pending = None
