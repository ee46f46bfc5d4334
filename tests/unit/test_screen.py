"""The h11 path's chunked-body screen against llhttp itself: each chunk line and trailer section here is
also fed to httptools, so the tables below say what the installed llhttp does, not what we believe."""

from __future__ import annotations

import httptools
import pytest

from kestrelpy.protocols.screen import ChunkScreen

HEAD = b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"


class _Recorder:
    def __init__(self) -> None:
        self.trailers: list[tuple[bytes, bytes]] = []
        self.in_trailers = False
        self.complete = False

    def on_chunk_header(self) -> None:
        self.in_trailers = True

    def on_body(self, body: bytes) -> None:
        self.in_trailers = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.in_trailers:
            self.trailers.append((name.lower(), value.strip(b" \t")))

    def on_message_complete(self) -> None:
        self.complete = True


def llhttp(body: bytes, pieces: int = 1) -> tuple[bool, list[tuple[bytes, bytes]]]:
    """Whether llhttp still accepts a chunked body fed after HEAD (in `pieces` reads of about equal
    size), and the trailer fields it has handed on."""
    recorder = _Recorder()
    parser = httptools.HttpRequestParser(recorder)
    parser.feed_data(HEAD)
    step = max(1, -(-len(body) // pieces))
    try:
        for at in range(0, len(body), step):
            parser.feed_data(body[at : at + step])
    except httptools.HttpParserError:
        return False, recorder.trailers
    return True, recorder.trailers


def screen(body: bytes, pieces: int = 1) -> tuple[bool, list[tuple[bytes, bytes]]]:
    chunks = ChunkScreen()
    step = max(1, -(-len(body) // pieces))
    for at in range(0, len(body), step):
        chunks.feed(body[at : at + step])
    return not chunks.failed, chunks.trailers


# RFC 9112 section 7.1.1: chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] ),
# chunk-ext-val = token / quoted-string.
VALID_EXTENSIONS = {
    "name-only": b"5;last",
    "quoted-with-semicolon-and-escaped-quote": b'6;a="q;uo\\"ted";b',
    "token-value": b"5;a=b",
    "several": b'5;a=b;c="d e";f',
    "quoted-equals": b'5;a="x=y"',
    "quoted-empty": b'5;a=""',
    "quoted-escaped-backslash": b'5;a="\\\\"',
    "quoted-pair-of-any-vchar": b'5;a="\\x"',
    "quoted-htab": b'5;a="\t"',
    "quoted-obs-text": b'5;a="\x80"',
    # llhttp accepts these, which the grammar does not allow; extensions are ignored, so this path does too
    "empty-value": b"5;a=",
    "empty-name": b"5;=b",
    "empty-extension": b"5;;a",
    "token-then-quoted": b'5;a=b"c"',
}

REFUSED_EXTENSIONS = {
    # BWS: RFC 9110 section 5.6.3 says a sender MUST NOT generate it; llhttp refuses it
    "space-before-semicolon": b"5 ;a",
    "space-after-semicolon": b"5; a",
    "space-before-equals": b"5;a =b",
    "space-after-equals": b"5;a= b",
    "htab-before-semicolon": b"5\t;a",
    "semicolon-at-end": b"5;",
    "semicolon-after-name-at-end": b"5;a;",
    "unterminated-quote": b'5;a="x',
    "quote-ended-by-escaped-quote-only": b'5;a="x\\"',
    "text-after-quote": b'5;a="x"y',
    "second-equals": b"5;a=b=c",
    "non-token-in-name": b"5;a@b",
    "non-token-in-value": b"5;a=b@",
    "delete-in-quotes": b'5;a="\x7f"',
    "obs-text-in-token": b"5;a=\x80",
    "control-in-quotes": b'5;a="\x01"',
    "space-in-token": b"5;a=b c",
}


@pytest.mark.parametrize("line", VALID_EXTENSIONS.values(), ids=VALID_EXTENSIONS.keys())
def test_valid_chunk_extensions_are_accepted_as_by_llhttp(line: bytes) -> None:
    body = line + b"\r\n" + b"x" * int(line.split(b";")[0], 16) + b"\r\n0\r\n\r\n"
    assert llhttp(body)[0]
    assert screen(body)[0]


@pytest.mark.parametrize("line", REFUSED_EXTENSIONS.values(), ids=REFUSED_EXTENSIONS.keys())
def test_malformed_chunk_extensions_are_refused_as_by_llhttp(line: bytes) -> None:
    body = line + b"\r\n" + b"x" * int(line[:1], 16) + b"\r\n0\r\n\r\n"
    assert not llhttp(body)[0]
    assert not screen(body)[0]


@pytest.mark.parametrize(
    ("part", "refused"),
    [
        (b"5;a b", True),
        (b"5 ", True),
        (b'5;a="x\\\r', True),
        (b"5;\r", True),
        (b"fffffffffffffffff", True),  # past 64 bits
        (b'5;a="x;\\"', False),
        (b"5;a=b", False),
        (b"5;a=b\r", False),
        (b"0000000000000000000000005", False),
        (b"5\r\nxxxxxY", True),  # anything but CR after the data
        (b"5\r\nxxxxx\r", False),
    ],
)
def test_a_chunk_line_is_refused_at_its_first_wrong_byte(part: bytes, refused: bool) -> None:
    """A line that has not ended yet is refused as soon as llhttp refuses it, so that a client that
    stops there gets the same answer from both parsers."""
    assert llhttp(part)[0] is not refused
    assert screen(part)[0] is not refused


TRAILER_SECTIONS = [
    b"X: 1\r\n",  # not handed on yet: llhttp waits for the next line
    b"X: 1\r\nY",  # the read ends inside the next name: handed on
    b"X: 1\r\nY: 2\r\n\r\n",
    b"X: 1\r\n\r",
    b"X: 1\r\n ",  # obs-fold: refused before X is handed on
    b"X: 1\r\nY\x00: 2\r\n",  # a bad name: refused before X is handed on
    b"X: 1\r\nY: \x01\r\n",  # a bad value: X was handed on at Y's colon
    b"X: 1\r\nConnection : a\r\n",  # llhttp ends this name at the space, handing on X, then refuses
    b"X: 1\r\nKeep-Alive : a\r\n",  # an ordinary name: refused first
    b"X: 1\r\nY\r\n",
    b"X: 1\r\nY\n",
    b"X: 1\r\nContent-Length: 1\r\n\r\n",  # refused at its colon, X handed on first
    b"X: 1\r\nTransfer-Encoding: chunked\r\n\r\n",  # refused at its value
    b"Transfer-Encoding:\r\n",
    b"Transfer-Encoding:\r\n\r\n",  # an empty one: refused at the next line
    b"Transfer-Encoding:\r\n ",
    b"X:\r\nY:   \r\n\r\n",  # empty values are fields too
]


@pytest.mark.parametrize("trailers", TRAILER_SECTIONS)
@pytest.mark.parametrize("pieces", [1, 3])
def test_trailer_fields_are_handed_on_when_llhttp_hands_them_on(trailers: bytes, pieces: int) -> None:
    """The connection refuses forbidden trailer fields and counts the others against its limits as each
    is handed on: the screen hands them on at the points llhttp does, so both paths answer alike."""
    body = b"3\r\nabc\r\n0\r\n" + trailers
    expected = llhttp(body, pieces)
    accepted, handed_on = screen(body, pieces)
    # Content-Length and Transfer-Encoding are refused by llhttp itself (the connection names them as
    # forbidden trailers); the screen hands them on for the connection to refuse.
    framing = [field for field in handed_on if field[0] in (b"content-length", b"transfer-encoding")]
    assert (accepted, [field for field in handed_on if field not in framing]) == expected
    assert not framing or not accepted
