# Property tests of hostile input against the caps. test_protocol.py pins the core's exact
# output; this file throws random bytes at it (NUL, 0xFF, stray and split IAC sequences, CR
# floods, lines far past the cap, invalid UTF-8) and checks what must hold whatever arrives:
# nothing is buffered past the cap at any point, the result does not depend on how the bytes
# were cut into reads, and, through a real socket, the host's poll() never raises, the
# server's buffers stay under their caps and a well-behaved client next door is still served.
from __future__ import annotations

import socket
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import reactor_mgmt
from reactor_mgmt._protocol import (
    END_SESSION,
    LINE_TOO_LONG,
    BadEncoding,
    EndSession,
    LineBuffer,
    LineTooLong,
    ParseError,
    RequestDecoder,
    TelnetFilter,
    TlsOnPlainPort,
    looks_like_http,
    split_words,
)

# Fragments chosen to hit every state of the telnet filter and the line splitter, mixed with
# plain random bytes. Several are deliberately incomplete (a lone IAC, IAC SB with no SE, half
# a UTF-8 sequence) so that cuts land inside them.
HOSTILE = [
    b"\n",
    b"\r\n",
    b"\r",
    b"\r\r\r",
    b"\x00",
    b"\r\x00",
    b"\xff",
    b"\xff\xff",
    b"\xff\xfb\x01",
    b"\xff\xfd",
    b"\xff\xfa\x18\x01",
    b"\xff\xf0",
    b"\xff\xfa\xff\xff\xff\xf0",
    b"\xff\xf1",
    b"\xff\xf4",
    b"\xff\xec",
    b"\x04",
    b"\x04\n",
    b"\xe2\x82",
    b"\xac",
    b"\x80",
    b"\xc3\x28",
    b"ping",
    b"echo a b",
    b'{"cmd": "x"}',
    b" \t ",
    b"GET / HTTP/1.1",
    b"x" * 40,
    b"\x7f\x1b[A",
]
fragments = st.one_of(st.sampled_from(HOSTILE), st.binary(max_size=24))
byte_streams = st.lists(fragments, max_size=50).map(b"".join)
max_lines = st.sampled_from([1, 2, 7, 16, 64])


@st.composite
def cut_up(draw, data: bytes):
    """``data`` split at random points, empty pieces included."""
    points = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    pieces, start = [], 0
    for point in points:
        pieces.append(data[start:point])
        start = point
    pieces.append(data[start:])
    return pieces


_TOO_LONG_MARKER = type(LINE_TOO_LONG)  # one class; the JSON flavour is another instance


def _plain(items: list) -> list:
    return ["TOO LONG" if isinstance(item, _TOO_LONG_MARKER) else item for item in items]


def _model_lines(data: bytes, max_line: int) -> list:
    """What LineBuffer must produce, written the obvious way: split on LF, drop one CR."""
    *complete, tail = data.split(b"\n")
    out = []
    for line in complete + ([tail] if tail else []):
        if line.endswith(b"\r"):
            line = line[:-1]
        out.append("TOO LONG" if len(line) > max_line else line)
    return out


@settings(max_examples=200, deadline=None)
@given(byte_streams, max_lines, st.data())
def test_line_buffer_never_holds_more_than_the_cap_and_matches_the_model(data, max_line, draw):
    buffer = LineBuffer(max_line)
    out = []
    for piece in draw.draw(cut_up(data)):
        out.extend(buffer.feed(piece))
        assert buffer.buffered <= max_line + 1
        for line in out:
            assert isinstance(line, _TOO_LONG_MARKER) or len(line) <= max_line
    out.extend(buffer.feed_eof())
    assert buffer.buffered == 0
    assert _plain(out) == _model_lines(data, max_line)


@settings(max_examples=200, deadline=None)
@given(byte_streams, st.data())
def test_telnet_filter_is_cut_independent_and_never_grows_the_stream(data, draw):
    whole = TelnetFilter().feed(data)
    telnet = TelnetFilter()
    pieces = b""
    for piece in draw.draw(cut_up(data)):
        out = telnet.feed(piece)
        assert len(out) <= len(piece) + 1  # + an IAC held from the last piece, kept with its byte
        pieces += out
    assert pieces == whole and len(whole) <= len(data)
    if b"\xff" not in data and b"\r\x00" not in data:
        assert whole == data  # nothing to filter: bytes pass untouched


@settings(max_examples=250, deadline=None)
@given(byte_streams, max_lines, st.data())
def test_decoder_caps_and_events_whatever_the_cuts(data, max_line, draw):
    whole_decoder = RequestDecoder(max_line)
    whole = whole_decoder.feed(data) + whole_decoder.feed_eof()
    decoder = RequestDecoder(max_line)
    items = []
    for piece in draw.draw(cut_up(data)):
        items.extend(decoder.feed(piece))
        assert decoder.buffered <= max_line + 1
    items.extend(decoder.feed_eof())
    assert items == whole  # the same lines and events however the reads were cut
    for item in items:
        assert isinstance(item, (str, LineTooLong, BadEncoding, EndSession, TlsOnPlainPort)), item
        if isinstance(item, str):
            assert item and item == item.strip() and "\n" not in item
            assert len(item.encode()) <= max_line
    # END_SESSION comes at most once, last, and the decoder is deaf after it.
    assert END_SESSION not in items[:-1]
    if items and items[-1] == END_SESSION:
        assert decoder.feed(b"ping\n") == [] and decoder.feed_eof() == []


# Bytes a line may hold that no other layer acts on (no LF, CR, NUL, IAC, Ctrl-D): what is
# left to the UTF-8 check alone, valid or not, with the ends stripping would take off.
_LINE_BYTES = st.lists(
    st.sampled_from(
        [b"a", b"{", b" ", b"\t", b"\x80", b"\xc3\xa9", b"\xc3", b"\xe2\x82\xac", b"\xed\xa0\x80", b"\xf0\x9f"]
    ),
    max_size=6,
).map(b"".join)


@given(st.lists(_LINE_BYTES, min_size=1, max_size=12))
def test_each_line_is_its_text_or_bad_encoding_as_a_strict_decode_says(lines):
    # The decoder decodes a read with a bad line in it once, with surrogateescape, and tells
    # the bad lines by their escaped bytes; a strict decode of each line must agree.
    from reactor_mgmt._protocol import BAD_ENCODING, BAD_ENCODING_JSON

    def strict(line: bytes):
        try:
            return line.decode().strip()
        except UnicodeDecodeError:
            return BAD_ENCODING_JSON if line.lstrip()[:1] == b"{" else BAD_ENCODING

    expected = [item for item in map(strict, lines) if item != ""]
    assert RequestDecoder().feed(b"\n".join(lines) + b"\n") == expected


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=40))
def test_request_parsing_of_any_text_fails_only_with_parse_error(line):
    try:
        words = split_words(line)
    except ParseError:
        pass
    else:
        assert all(isinstance(word, str) for word in words)
    assert looks_like_http(line) in (True, False)


# ---- through a real server ----

_TOO_LONG = b"ERR line too long"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(byte_streams, min_size=1, max_size=6))
def test_random_bytes_over_a_socket_never_reach_the_host_or_the_neighbours(chunks):
    caps = dict(max_line=64, high_water=2048, max_output=16384, idle_timeout=0)
    with reactor_mgmt.Server("127.0.0.1", 0, **caps) as server:
        hostile = socket.create_connection(server.addresses[0], timeout=5)
        hostile.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        neighbour = socket.create_connection(server.addresses[0], timeout=5)
        server.poll(0)
        try:
            for chunk in chunks:
                try:
                    hostile.sendall(chunk)
                except OSError:  # the server may have closed it (telnet IP, Ctrl-D, HTTP)
                    break
                for _ in range(3):
                    server.poll(0)  # raising here would be the host's problem: it must not
                    for conn in server.connections:
                        assert conn.decoder is None or conn.decoder.buffered <= server.max_line + 1
                        assert conn.transport.out_size <= server.max_output + server.high_water
                        assert conn.queue is None or len(conn.queue) <= 65536
            neighbour.sendall(b"echo still here\n")
            reply = b""
            deadline = time.monotonic() + 5
            neighbour.setblocking(False)
            while not reply.endswith(b"\n"):
                assert time.monotonic() < deadline, reply
                server.poll(0.005)
                try:
                    reply += neighbour.recv(4096)
                except BlockingIOError:
                    pass
            assert reply == b"still here\n"
            # Whatever the hostile client got back is whole lines of valid UTF-8.
            hostile.setblocking(False)
            received = b""
            for _ in range(20):
                server.poll(0)
                try:
                    chunk = hostile.recv(65536)
                except (BlockingIOError, ConnectionResetError):
                    continue
                if not chunk:
                    break
                received += chunk
            received.decode("utf-8")
            assert all(len(line) < 70000 for line in received.split(b"\n"))
        finally:
            hostile.close()
            neighbour.close()
