# Each fast path in the library must give exactly what its slow path gives. These tests pin
# them together: the registry's line cache against full parsing, and the direct epoll wait
# against the plain selectors API.
from __future__ import annotations

import selectors
import socket

import pytest

import reactor_mgmt
from reactor_mgmt import CommandError, Pending

from conftest import RawClient


def _add_probe_commands(server: reactor_mgmt.Server) -> None:
    @server.command
    def info():
        return {"answer": 42, "name": "probe"}

    @server.command
    def boom():
        raise RuntimeError("boom")

    @server.command
    def refuse():
        raise CommandError("refused on purpose")

    @server.command(level="admin")
    def secret():
        return "the secret"

    @server.command
    def later():
        pending = Pending()
        pending.resolve("done later")
        return pending

    @server.command
    def shout(*words):
        return " ".join(words).upper() + "\n"


LINES = ["ping", "echo a  b", "info", "boom", "refuse", "secret", "later", "shout x y", "echo"]


def _replies(client: RawClient, lines) -> bytes:
    client.buffer = b""
    client.send("".join(line + "\n" for line in lines) + "ping\n")
    # The trailing ping marks the end of this batch's replies.
    client.wait_for(lambda buf: buf.endswith(b"pong\n") and buf.count(b"\n") >= len(lines) + 1)
    return client.buffer


def test_line_cache_gives_the_same_bytes_as_the_slow_path(make_server):
    server = make_server("127.0.0.1", level="operator")
    _add_probe_commands(server)
    client = RawClient(server)
    cold = _replies(client, LINES)
    cached = set(server.registry.line_cache)
    # Everything cacheable is cached by now, and things that must not be are not.
    assert {"ping", "echo a  b", "info", "boom", "refuse", "later", "shout x y", "echo"} <= cached
    warm = _replies(client, LINES)
    assert warm == cold
    assert b"ERR permission denied: 'secret' needs admin" in warm
    assert b"ERR internal error (RuntimeError)" in warm
    assert b"answer: 42" in warm
    client.close()


def test_line_cache_respects_levels_and_authentication(make_server):
    server = make_server("127.0.0.1", level="admin", token="s3cret")
    _add_probe_commands(server)
    admin = RawClient(server)
    assert admin.request("auth s3cret") == ["OK"]
    assert admin.request("secret") == ["the secret"]
    assert "secret" in server.registry.line_cache
    stranger = RawClient(server)
    assert stranger.request("secret") == ["ERR authentication required (send 'auth TOKEN')"]
    assert stranger.request("ping") == ["pong"]  # pre-auth commands stay allowed when cached
    lowered = RawClient(server)
    lowered.request("auth s3cret")
    assert lowered.request("level user") == ["user"]
    assert lowered.request("secret") == ["ERR permission denied: 'secret' needs admin"]
    for c in (admin, stranger, lowered):
        c.close()


def test_line_cache_is_cleared_when_commands_change(server, client):
    assert client.request("ping") == ["pong"]
    assert "ping" in server.registry.line_cache
    server.remove_command("ping")
    assert server.registry.line_cache == {}
    assert client.request("ping")[0].startswith("ERR unknown command 'ping'")
    server.add_command("ping", lambda: "PONG")
    assert client.request("ping") == ["PONG"]


def test_quoted_lines_are_never_cached(server, client):
    assert client.request('echo "a  b"') == ["a  b"]
    assert client.request("echo 'x'") == ["x"]
    assert not any("'" in line or '"' in line for line in server.registry.line_cache)


def test_line_cache_stays_bounded(server, client):
    client.send("".join(f"echo {i}\n" for i in range(2000)))
    got = client.lines(2000)
    assert got == [str(i) for i in range(2000)]
    assert len(server.registry.line_cache) <= 512


def test_generic_selectors_path_matches_the_epoll_path(monkeypatch):
    """With the epoll shortcut disabled, the server runs on the selectors API alone."""
    transcripts = []
    for disable in (False, True):
        if disable:
            monkeypatch.setattr(selectors, "EpollSelector", type("NotEpoll", (), {}), raising=False)
        server = reactor_mgmt.Server("127.0.0.1", 0)
        try:
            assert (server._select.__name__ == "select_generic") == disable
            client = RawClient(server)
            client.send("ping\necho hello world\nnope\n")
            transcripts.append(client.lines(3))
            client.shutdown()
            client.read_until_closed()
            client.close()
            assert server.poll(0) == 0
        finally:
            server.close()
    assert transcripts[0] == transcripts[1] == ["pong", "hello world", "ERR unknown command 'nope' (try 'help')"]


# ---- the batch decoder's no-strip path against the plain definition ----

from hypothesis import given, settings, strategies as st

from reactor_mgmt._protocol import RequestDecoder, _needs_strip

_line_text = st.text(alphabet=st.sampled_from(list("ab {\"'\t\r\x0b\x0c\x1c\x1f\xa0\u2003é")), max_size=12)


@settings(max_examples=300, deadline=None)
@given(st.lists(_line_text, max_size=20))
def test_batch_decode_equals_strip_per_line(lines):
    encoded = [line.replace("\r", "").encode() for line in lines]
    data = b"".join(line + b"\n" for line in encoded)
    expected = [line.decode().strip() for line in encoded]
    expected = [line for line in expected if line]
    assert RequestDecoder().feed(data) == expected


def test_needs_strip_spots_whitespace_at_any_line_end():
    assert not _needs_strip(b"ping\necho a b\nstatus")
    for text in (b" ping", b"ping ", b"a\n b", b"a \nb", b"a\tb", b"a\x0bb", b"caf\xc3\xa9", b"a\x1fb"):
        assert _needs_strip(text), text
