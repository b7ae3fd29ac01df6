# Unit tests of the sans-I/O core: bytes in, lines and events out, no sockets. The hypothesis
# properties pin the fast paths to the slow ones and make the output independent of how the
# input happens to be split into reads, which is the one thing a socket test cannot vary.
from __future__ import annotations

import shlex

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reactor_mgmt._protocol import (
    BAD_ENCODING,
    DEFAULT_MAX_LINE,
    END_SESSION,
    LINE_TOO_LONG,
    LINE_TOO_LONG_JSON,
    LineBuffer,
    LineTooLong,
    ParseError,
    RequestDecoder,
    TelnetFilter,
    looks_like_http,
    split_words,
)

IAC = b"\xff"
WILL, WONT, DO, DONT, SB, SE, IP, EOF_, NOP = (
    bytes([b]) for b in (0xFB, 0xFC, 0xFD, 0xFE, 0xFA, 0xF0, 0xF4, 0xEC, 0xF1)
)


def feed_all(feeder, chunks, eof=True):
    """Feeds every chunk to a RequestDecoder or LineBuffer and collects the output."""
    out = []
    for chunk in chunks:
        out.extend(feeder.feed(chunk))
    if eof:
        out.extend(feeder.feed_eof())
    return out


def decode(chunks, max_line=DEFAULT_MAX_LINE, eof=True):
    return feed_all(RequestDecoder(max_line), chunks, eof)


def exact(items) -> list:
    """Decoder output with LineTooLong's json flag made visible (its == ignores the flag)."""
    return [("too_long", item.limit, item.json) if isinstance(item, LineTooLong) else item for item in items]


def cut(data: bytes, points) -> list:
    points = sorted({p for p in points if 0 < p < len(data)})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def telnet(chunks) -> bytes:
    f = TelnetFilter()
    return b"".join(f.feed(c) for c in chunks)


# ---- telnet filter ----


def test_telnet_plain_text_passes_through():
    assert telnet([b"ping\r\n"]) == b"ping\r\n"


def test_telnet_iac_iac_is_a_literal_ff():
    assert telnet([b"a" + IAC + IAC + b"b"]) == b"a\xffb"


@pytest.mark.parametrize("verb", [WILL, WONT, DO, DONT])
def test_telnet_negotiation_removed(verb):
    assert telnet([b"pi" + IAC + verb + b"\x01" + b"ng\n"]) == b"ping\n"


def test_telnet_negotiation_option_may_be_any_byte():
    # The option byte is swallowed even when it is IAC, LF or 0x04.
    for option in (IAC, b"\n", b"\x04", b"\x00"):
        assert telnet([IAC + DO + option + b"x"]) == b"x"


def test_telnet_subnegotiation_removed_with_escaped_iac_inside():
    block = IAC + SB + b"\x18\x00xterm" + IAC + IAC + b"\n\x04" + IAC + SE
    assert telnet([b"a" + block + b"b\n"]) == b"ab\n"


def test_telnet_two_byte_commands_removed():
    assert telnet([b"a" + IAC + NOP + b"b"]) == b"ab"


@pytest.mark.parametrize("byte", [b"p", b"\n", b"\r", b"\xeb"])
def test_telnet_iac_before_a_byte_that_is_no_command_is_data(byte):
    # Not telnet (commands are 0xEC-0xFF): a raw client's 0xFF stays, with the byte after it,
    # however the feeds are cut, so the line fails its UTF-8 check instead of losing a byte.
    assert telnet([b"a" + IAC + byte + b"b"]) == b"a\xff" + byte + b"b"
    assert telnet([b"a" + IAC, byte + b"b"]) == b"a\xff" + byte + b"b"


def test_telnet_subnegotiation_that_never_ends_is_cut_short():
    # A raw client's IAC SB with no IAC SE swallowed the rest of its session, silently.
    # The byte that reaches the cap stays, after the 0xFF put in the block's place.
    garbage = b"x" * 1024
    assert telnet([b"a" + IAC + SB + garbage + b"b\nping\n"]) == b"a\xffxb\nping\n"
    assert telnet([b"a" + IAC + SB + garbage[:500], garbage[500:] + b"b\n"]) == b"a\xffxb\n"
    assert telnet([IAC + SB + garbage[:-1] + IAC + SE + b"ok"]) == b"ok"  # at the limit: still telnet
    # A line end that reaches it still ends the line: the next request is not merged into it.
    assert telnet([IAC + SB + garbage[:-1] + b"\nping\n"]) == b"\xff\nping\n"
    # IAC pairs count too (raw data full of 0xFF bytes): uncounted, 1,200 bytes of them
    # swallowed the line after them, and 200 KB left the filter inside the block.
    pairs = (IAC + b"\x01") * 600
    assert telnet([IAC + SB + pairs + b"\nping\n"]) == b"\xff\x01" + (IAC + b"\x01") * 88 + b"\nping\n"
    assert telnet([IAC + SB + pairs[:1022] + IAC + SE + b"ok"]) == b"ok"  # at the limit: still telnet


@pytest.mark.parametrize("before", [b"", b"ping\n", b"pi", b"ping\r\n"], ids=["first", "line", "half-line", "crlf"])
def test_a_tls_client_hello_on_the_plain_port_is_told_at_once(before):
    # Its random bytes may hold an IAC SB that swallows the rest, and it holds no sure line end:
    # it waited for one, and its client for a ServerHello, until a timeout. At a line's start
    # only, however the reads cut it (the two bytes too).
    from reactor_mgmt._protocol import TLS_ON_PLAIN_PORT

    hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\xff\xfa" + bytes(range(200))
    data = before + hello
    expected = ["ping"] if before.endswith(b"\n") else []
    if before == b"pi":  # within a line: part of that line, which never ends
        expected, hello_told = [], False
    else:
        expected, hello_told = expected + [TLS_ON_PLAIN_PORT, END_SESSION], True
    for cut in range(1, len(before) + 3):
        decoder = RequestDecoder()
        items = decoder.feed(data[:cut]) + decoder.feed(data[cut:])
        assert items == expected, cut
        if hello_told:
            assert decoder.feed(b"ping\n") == [] and decoder.feed_eof() == []
    assert RequestDecoder().feed(b"echo \x16\x03\n") == ["echo \x16\x03"]  # within a line: a line


def test_telnet_cr_nul_ends_the_line():
    # What telnet sends for Enter in character mode: as CR NUL became a bare CR, no LF ever
    # came and no request typed there was answered.
    assert telnet([b"a\r\x00b"]) == b"a\r\nb"
    assert decode([b"ping\r\x00echo x\r\x00"]) == ["ping", "echo x"]


@pytest.mark.parametrize("chunks", [[b"ping\r\x00\n"], [b"ping\r\x00", b"\n"], [b"ping\r\x00", b"", b"\necho x\n"]])
@pytest.mark.parametrize("keep_blank", [False, True], ids=["", "subscribed"])
def test_telnet_cr_nul_lf_is_one_line_end_not_two(chunks, keep_blank):
    # Not telnet, but it was one line end before CR NUL ended lines: a blank line after it would
    # stop a subscription the line started (noted in blank_after, or, one running, delivered).
    decoder = RequestDecoder()
    decoder.keep_blank = keep_blank
    items = [item for chunk in chunks for item in decoder.feed(chunk)]
    assert items == ["ping", "echo x"][: 1 + (len(chunks) == 3)] and decoder.blank_after is None


def test_telnet_cr_nul_split_across_feeds():
    assert telnet([b"a\r", b"\x00b"]) == b"a\r\nb"
    assert telnet([b"a\r", b"", b"\x00b"]) == b"a\r\nb"


def test_telnet_nul_not_after_cr_is_kept():
    assert telnet([b"a\x00b"]) == b"a\x00b"
    assert telnet([b"a\r", b"x\x00"]) == b"a\rx\x00"


@pytest.mark.parametrize("ender", [IP, EOF_])
def test_telnet_ip_and_eof_end_the_session(ender):
    f = TelnetFilter()
    assert f.feed(b"ping\n" + IAC + ender + b"status\n") == b"ping\n"
    assert f.ended
    assert f.feed(b"more\n") == b""


@pytest.mark.parametrize("ender", [IP, EOF_])
def test_decoder_ip_and_eof_give_end_session_after_earlier_lines(ender):
    d = RequestDecoder()
    assert d.feed(b"ping\necho a\n" + IAC + ender + b"status\n") == ["ping", "echo a", END_SESSION]
    assert d.ended
    assert d.feed(b"status\n") == []
    assert d.feed_eof() == []


TELNET_SAMPLE = (
    b"pi"
    + IAC
    + WILL
    + b"\x01ng\r\n"
    + IAC
    + SB
    + b"\x18\x00x"
    + IAC
    + IAC
    + b"y"
    + IAC
    + SE
    + b"echo "
    + IAC
    + IAC
    + b"\r\x00z\r\n"
    + IAC
    + NOP
    + b"status\n"
    + IAC
    + DO
    + IAC
    + b"x\n"
)


def test_telnet_sample_whole():
    assert telnet([TELNET_SAMPLE]) == b"ping\r\necho \xff\r\nz\r\nstatus\nx\n"


def test_telnet_split_at_every_single_cut():
    whole = telnet([TELNET_SAMPLE])
    for i in range(1, len(TELNET_SAMPLE)):
        assert telnet([TELNET_SAMPLE[:i], TELNET_SAMPLE[i:]]) == whole, i


def test_telnet_fed_one_byte_at_a_time():
    whole = telnet([TELNET_SAMPLE])
    assert telnet([bytes([b]) for b in TELNET_SAMPLE]) == whole


@pytest.mark.parametrize("ender", [IP, EOF_])
def test_session_ender_split_at_every_cut(ender):
    data = b"ping\r\n" + IAC + DO + b"\x03" + IAC + ender + b"status\n"
    for i in range(1, len(data)):
        assert decode([data[:i], data[i:]]) == ["ping", END_SESSION], i


# ---- Ctrl-D ----


def test_ctrl_d_on_empty_line_ends_session():
    d = RequestDecoder()
    assert d.feed(b"\x04") == [END_SESSION]
    assert d.ended
    assert d.feed(b"ping\n") == []


def test_ctrl_d_at_start_of_line_after_earlier_lines():
    d = RequestDecoder()
    assert d.feed(b"ping\n") == ["ping"]
    assert d.feed(b"\x04") == [END_SESSION]


def test_ctrl_d_after_newline_in_same_chunk():
    assert decode([b"ping\n\x04status\n"]) == ["ping", END_SESSION]


def test_ctrl_d_mid_line_is_data():
    d = RequestDecoder()
    assert d.feed(b"pi") == []
    assert d.feed(b"\x04") == []
    assert not d.ended
    assert d.feed(b"ng\n") == ["pi\x04ng"]


def test_ctrl_d_after_over_long_line_start_is_mid_line():
    d = RequestDecoder(max_line=4)
    assert d.feed(b"abcdefgh") == [LineTooLong(4)]
    assert d.feed(b"\x04") == []  # still inside the discarded line
    assert d.feed(b"\nping\n") == ["ping"]
    assert not d.ended


def test_ctrl_d_split_at_every_cut():
    data = b"ping\n\x04abc\nstatus\n"
    for i in range(1, len(data)):
        assert decode([data[:i], data[i:]]) == ["ping", END_SESSION], i


# ---- line buffer ----


def test_lines_lf_and_crlf():
    assert feed_all(LineBuffer(), [b"a\nb\r\nc\r\n"]) == [b"a", b"b", b"c"]


def test_lone_cr_inside_line_is_kept():
    assert feed_all(LineBuffer(), [b"a\rb\n"]) == [b"a\rb"]


def test_crlf_split_between_feeds():
    lb = LineBuffer()
    assert lb.feed(b"ping\r") == []
    assert lb.buffered == 5
    assert lb.feed(b"\nstatus\r") == [b"ping"]
    assert lb.feed(b"\n") == [b"status"]
    assert lb.buffered == 0


def test_crlf_split_on_a_line_of_exactly_max_line():
    # The CR of a full-length line sits in the buffer alone; it must not count against the cap.
    lb = LineBuffer(4)
    assert lb.feed(b"abcd\r") == []
    assert lb.buffered == 5
    assert lb.feed(b"\n") == [b"abcd"]


def test_eof_flushes_final_line_without_newline():
    lb = LineBuffer()
    assert lb.feed(b"a\nstatus") == [b"a"]
    assert lb.feed_eof() == [b"status"]
    assert lb.feed_eof() == []


def test_eof_strips_trailing_cr():
    lb = LineBuffer()
    lb.feed(b"status\r")
    assert lb.feed_eof() == [b"status"]


def test_eof_on_over_long_tail_reports_it():
    lb = LineBuffer(4)
    assert lb.feed(b"abcde") == []  # max_line + 1 may be a CR waiting for its LF
    assert lb.feed_eof() == [LINE_TOO_LONG]


def test_max_line_must_be_positive():
    with pytest.raises(ValueError):
        LineBuffer(0)


@pytest.mark.parametrize("max_line", [DEFAULT_MAX_LINE, 8])
def test_overrun_reported_once_then_recovers(max_line):
    lb = LineBuffer(max_line)
    out = lb.feed(b"ok\n" + b"x" * (max_line + 10))
    assert out == [b"ok", LINE_TOO_LONG]
    assert lb.buffered == 0
    for _ in range(5):
        assert lb.feed(b"x" * (max_line * 3)) == []
        assert lb.buffered == 0
    assert lb.feed(b"xx\nnext\n") == [b"next"]
    assert lb.feed(b"y" * max_line + b"\n") == [b"y" * max_line]  # exactly the cap is fine


@pytest.mark.parametrize("max_line", [DEFAULT_MAX_LINE, 8])
def test_overrun_in_one_chunk_with_its_newline(max_line):
    lb = LineBuffer(max_line)
    assert lb.feed(b"a\n" + b"x" * (max_line + 1) + b"\nb\n") == [b"a", LINE_TOO_LONG, b"b"]


@pytest.mark.parametrize("max_line", [DEFAULT_MAX_LINE, 8])
def test_overrun_decoder_gives_one_line_too_long(max_line):
    items = decode([b"ping\n", b"z" * (max_line + 1), b"z" * max_line, b"\n", b"echo hi\n"], max_line)
    assert items == ["ping", LineTooLong(max_line), "echo hi"]
    assert items[1].message == f"line too long (limit {max_line} bytes)"
    assert items[1].code == "too_long"


def test_over_long_json_line_is_marked_json_however_it_arrives():
    # Its error goes back as a JSON reply, so the marker must say so on every path: reported
    # with its newline, reported mid-line, and reported at EOF.
    for chunks in ([b'{"cmd": "x"}\n'], [b'{"cm', b'd": "x"}\n'], [b'{"cmd"'], [b'  {"cmd": "x"}']):
        assert feed_all(LineBuffer(5), chunks) == [LINE_TOO_LONG_JSON], chunks
        (item,) = decode(chunks, 5)
        assert item == LineTooLong(5) and item.json, chunks
    assert feed_all(LineBuffer(5), [b"abcdef\n"]) == [LINE_TOO_LONG]
    assert not decode([b"abcdef"], 5)[0].json
    assert feed_all(LineBuffer(4), [b"      {\n"]) == feed_all(LineBuffer(4), [b"      ", b"{\n"])


@pytest.mark.parametrize("piece", [1, 7, 1000, 4096])
def test_buffer_never_exceeds_max_line_plus_one(piece):
    max_line = 1000
    lb = LineBuffer(max_line)
    line = b"q" * 50_000
    reported = []
    for i in range(0, len(line), piece):
        reported.extend(lb.feed(line[i : i + piece]))
        assert lb.buffered <= max_line + 1
    assert reported == [LINE_TOO_LONG]
    assert lb.feed(b"\nok\n") == [b"ok"]


def test_long_line_fed_byte_by_byte_is_linear():
    # A quadratic implementation (re-joining or re-scanning the buffered line on each feed)
    # needs ~2e10 byte operations for this and trips the pytest timeout; a linear one takes
    # well under a second. The assertion on the buffer size proves nothing was dropped.
    size = 200_000
    lb = LineBuffer(max_line=1 << 20)
    feed = lb.feed
    for _ in range(size):
        feed(b"a")
    assert lb.buffered == size
    assert lb.feed(b"\n") == [b"a" * size]


def test_decoder_long_line_fed_byte_by_byte():
    size = 100_000
    d = RequestDecoder(max_line=1 << 20)
    for _ in range(size):
        assert d.feed(b"a") == []
    assert d.buffered == size
    assert d.feed(b"\n") == ["a" * size]


# ---- decoder: encoding, blank lines ----


def test_invalid_utf8_is_reported_in_place():
    items = decode([b"ping\n\xc3(\n\xe2\x82\xac echo\n"])
    assert items == ["ping", BAD_ENCODING, "\u20ac echo"]
    assert items[1].message == "request is not valid UTF-8"


def test_invalid_utf8_from_escaped_iac():
    assert decode([b"a\n" + IAC + IAC + b"\nb\n"]) == ["a", BAD_ENCODING, "b"]


def test_utf8_character_split_across_feeds():
    data = "echo h\u00e9llo \u20ac\n".encode()
    for i in range(1, len(data)):
        assert decode([data[:i], data[i:]]) == ["echo h\u00e9llo \u20ac"]


def test_blank_lines_dropped_and_lines_stripped():
    assert decode([b"\n\r\n  \n\t ping  \r\n\n"]) == ["ping"]


def test_the_decoder_says_where_a_blank_line_followed_a_line():
    # The blank lines are dropped, but blank_after says how many items came after each one
    # that followed a line: a subscription the line before it starts stops at once (the
    # dispatcher). It speaks of the last read alone.
    d = RequestDecoder()
    assert d.feed(b"\nwatch 1 ping\n\n \necho hi\nping\n\n") == ["watch 1 ping", "echo hi", "ping"]
    assert d.blank_after == frozenset({2, 0})
    assert d.feed(b"ping\n") == ["ping"] and d.blank_after is None
    assert d.feed(b"\nping\n") == ["ping"] and d.blank_after is None  # no line before it
    assert d.feed(b"ping\n") == ["ping"] and d.blank_after is None


def test_decoder_buffered_reports_partial_line():
    d = RequestDecoder()
    d.feed(b"ping\nsta")
    assert d.buffered == 3


# ---- split_words ----


def test_split_words_quotes():
    assert split_words("""kick "Big Bob" 'too loud'""") == ["kick", "Big Bob", "too loud"]


def test_split_words_escapes():
    assert split_words(r"say a\ b \"c\" 'd\e'") == ["say", "a b", '"c"', "d\\e"]


def test_split_words_plain():
    assert split_words("  show   jobs\t1 ") == ["show", "jobs", "1"]
    assert split_words("") == []


@pytest.mark.parametrize("line", ['say "open', "say 'open", "say trailing\\"])
def test_split_words_unbalanced(line):
    with pytest.raises(ParseError, match="cannot parse request"):
        split_words(line)


def test_split_words_odd_whitespace_matches_shlex():
    # str.split() splits on \v, \f, \x1c and NBSP; shlex does not. The fast path must agree.
    for line in ["a\x0bb c", "a\x0cb", "a\x1cb", "a\u00a0b", "a\u2028b"]:
        assert split_words(line) == shlex.split(line), repr(line)


quote_free = st.text(alphabet=st.characters(blacklist_characters="\"'\\", blacklist_categories=("Cs",)), max_size=60)


@settings(max_examples=300, deadline=None)
@given(quote_free)
def test_split_words_fast_path_equals_shlex(line):
    assert split_words(line) == shlex.split(line)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["a", "bc", " ", "\t", '"x y"', "'q'", "\\ ", "z"]), max_size=12))
def test_split_words_with_quotes_equals_shlex(parts):
    line = "".join(parts)
    try:
        expected = shlex.split(line)
    except ValueError:
        with pytest.raises(ParseError):
            split_words(line)
    else:
        assert split_words(line) == expected


# ---- looks_like_http ----


@pytest.mark.parametrize(
    "line",
    [
        "GET / HTTP/1.1",
        "POST /api HTTP/1.0",
        "OPTIONS * HTTP/1.1",
        "Host: localhost:8123",
        "host:x",
    ],
)
def test_looks_like_http_true(line):
    assert looks_like_http(line)


@pytest.mark.parametrize(
    "line",
    [
        "GET",
        "GET /",
        "get / HTTP/1.1",
        "status",
        "echo GET / HTTP/1.1",
        "FOO / HTTP/1.1",
        "GET  / HTTP/1.1",
        "hostname",
        "",
    ],
)
def test_looks_like_http_false(line):
    assert not looks_like_http(line)


# ---- properties ----

# Byte material that exercises every branch: telnet commands, CR NUL, CRLF, Ctrl-D, bad UTF-8.
ATOMS = [
    b"a",
    b"ping",
    b"echo x",
    b" ",
    b"\n",
    b"\r",
    b"\r\n",
    b"\x00",
    b"\x04",
    b"\xff",
    IAC + IAC,
    IAC + DO + b"\x01",
    IAC + WILL,
    IAC + SB + b"\x18" + IAC + IAC + b"\n" + IAC + SE,
    IAC + NOP,
    IAC + IP,
    IAC + EOF_,
    b"\xc3",
    b"\xc3\xa9",
    b"\xe2\x82\xac",
    b"{",
    b"\t",
]
byte_streams = st.one_of(
    st.lists(st.sampled_from(ATOMS), max_size=40).map(b"".join),
    st.binary(max_size=200),
)


def cuts_within(data: bytes):
    return st.lists(st.integers(min_value=1, max_value=max(1, len(data) - 1)), max_size=12)


@settings(max_examples=300, deadline=None)
@given(byte_streams, st.data(), st.sampled_from([4, 16, DEFAULT_MAX_LINE]))
def test_decoder_output_independent_of_cuts(data, draw, max_line):
    points = draw.draw(cuts_within(data))
    whole = decode([data], max_line)
    assert exact(decode(cut(data, points), max_line)) == exact(whole)
    assert whole.count(END_SESSION) <= 1
    assert END_SESSION not in whole[:-1]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(ATOMS), max_size=25).map(b"".join), st.sampled_from([4, DEFAULT_MAX_LINE]))
def test_decoder_byte_at_a_time_equals_whole(data, max_line):
    assert exact(decode([bytes([b]) for b in data], max_line)) == exact(decode([data], max_line))


@settings(max_examples=300, deadline=None)
@given(byte_streams, st.data(), st.sampled_from([1, 4, 16, DEFAULT_MAX_LINE]))
def test_line_buffer_output_independent_of_cuts(data, draw, max_line):
    points = draw.draw(cuts_within(data))
    whole = feed_all(LineBuffer(max_line), [data])
    lb = LineBuffer(max_line)
    pieces = []
    for chunk in cut(data, points):
        pieces.extend(lb.feed(chunk))
        assert lb.buffered <= max_line + 1
    pieces.extend(lb.feed_eof())
    assert pieces == whole


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.text(alphabet=st.characters(blacklist_characters="\n\x04", blacklist_categories=("Cs",)), max_size=20),
        max_size=10,
    )
)
def test_line_buffer_matches_reference_split(lines):
    data = "".join(line + "\n" for line in lines).encode()
    expected = [line.encode()[:-1] if line.endswith("\r") else line.encode() for line in lines]
    expected = [
        (LINE_TOO_LONG_JSON if line.lstrip()[:1] == b"{" else LINE_TOO_LONG) if len(line) > 16 else line
        for line in expected
    ]
    assert feed_all(LineBuffer(16), [data]) == expected


line_bytes = st.one_of(
    st.text(alphabet=st.characters(blacklist_characters="\n\r\x04", blacklist_categories=("Cs",)), max_size=15).map(
        str.encode
    ),
    st.sampled_from([b"\xc3", b"ok\xff\xfe", b"\xe2\x82", b"\x80abc"]),  # never valid UTF-8
)


@settings(max_examples=300, deadline=None)
@given(st.lists(line_bytes, max_size=12))
def test_batch_decode_equals_per_line_decode(raw_lines):
    # RequestDecoder decodes a whole batch with one call and falls back to one line at a time
    # when any line is bad; both must give what decoding each line alone gives.
    d = RequestDecoder()
    batch = d._decode(list(raw_lines))
    per_line = [d._decode_one(line) for line in raw_lines]
    per_line = [item for item in per_line if item != ""]
    assert batch == per_line
    # Through the public API too: IAC bytes are escaped so the telnet layer passes them through.
    wire = b"".join(line.replace(b"\xff", b"\xff\xff") + b"\n" for line in raw_lines)
    assert decode([wire]) == per_line
    assert decode([wire[: len(wire) // 2], wire[len(wire) // 2 :]]) == per_line


def test_a_decoder_fed_whole_lines_makes_no_layers():
    # Idle memory per connection: a client that sends one line per read (nc, a script) leaves a
    # decoder without its telnet and line layers; the first partial line makes them, and the
    # lines that follow decode the same.
    d = RequestDecoder()
    assert d.feed(b"ping\n") == ["ping"] and d.feed(b"status\n") == ["status"]
    assert d._telnet is None and d._lines is None and d.buffered == 0
    assert d.feed(b"ec") == [] and d.buffered == 2
    assert d._lines is not None
    assert d.feed(b"ho hi\nping\n") == ["echo hi", "ping"]
    assert RequestDecoder().feed_eof() == []
    assert RequestDecoder().feed(b"x" * 10 + b"\n") == ["x" * 10]
