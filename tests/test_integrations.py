# Host integrations: attach_asyncio, start_thread, and adopting listening sockets made elsewhere
# (listen_socket / listen_fd). The asyncio tests run a real event loop in the test thread and a
# real client on it; each one is built so that the integration path it names is the only way
# the reply can arrive (no other timer or socket event would deliver it within the deadline).
from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from typing import List

import pytest

import reactor_mgmt
from conftest import TIMEOUT, RawClient
from reactor_mgmt import ConfigError, Pending


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT * 2))


async def open_client(server: reactor_mgmt.Server):
    host, port = server.addresses[0]
    return await asyncio.wait_for(asyncio.open_connection(host, port), TIMEOUT)


async def read_lines(reader: asyncio.StreamReader, count: int, timeout: float = TIMEOUT) -> List[str]:
    lines = []
    for _ in range(count):
        line = await asyncio.wait_for(reader.readline(), timeout)
        assert line.endswith(b"\n"), f"connection ended after {lines!r} + {line!r}"
        lines.append(line.decode().rstrip("\n"))
    return lines


def blocking_client(server: reactor_mgmt.Server) -> socket.socket:
    sock = socket.create_connection(server.addresses[0], timeout=TIMEOUT)
    return sock


def recv_lines(sock: socket.socket, count: int) -> List[str]:
    data = b""
    while data.count(b"\n") < count:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data.decode().splitlines()


# ---- attach_asyncio ----


def test_asyncio_serves_commands_on_the_loop_thread(make_server):
    server = make_server(idle_timeout=0)
    threads = []

    @server.command
    def where() -> str:
        threads.append(threading.get_ident())
        return "here"

    async def main():
        handle = server.attach_asyncio()
        assert server.owner_thread == threading.get_ident()
        reader, writer = await open_client(server)
        writer.write(b"ping\nwhere\n")
        assert await read_lines(reader, 2) == ["pong", "here"]
        writer.close()
        handle.detach()

    run(main())
    assert threads == [threading.get_ident()]


def test_asyncio_leftover_work_is_polled_again_without_a_socket_event(make_server):
    # 2 commands per tick: after the first poll the other 48 lines are already read and
    # queued, so no socket event will come; only the `busy` -> call_soon path serves them.
    server = make_server(idle_timeout=0, max_commands_per_tick=2)

    async def main():
        server.attach_asyncio()
        reader, writer = await open_client(server)
        writer.write(b"".join(b"echo %d\n" % i for i in range(50)))
        assert await read_lines(reader, 50) == [str(i) for i in range(50)]
        writer.close()

    run(main())


def test_asyncio_timer_fires_idle_timeout_and_pending_timeout(make_server):
    server = make_server(idle_timeout=0.2)

    @server.command
    def later() -> Pending:
        return Pending(timeout=0.1)

    async def main():
        server.attach_asyncio()
        reader, writer = await open_client(server)
        writer.write(b"later\n")
        assert await read_lines(reader, 1) == ["ERR timeout"]
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""  # reaped as idle
        assert time.monotonic() - started < TIMEOUT
        writer.close()

    run(main())


def test_asyncio_watch_streams_on_the_timer(make_server):
    server = make_server(idle_timeout=0)

    async def main():
        server.attach_asyncio()
        reader, writer = await open_client(server)
        writer.write(b"watch 0.1 ping\n")
        assert await read_lines(reader, 3) == ["pong", "pong", "pong"]
        writer.write(b"stop\necho done\n")  # any line stops the subscription, and is consumed
        lines = []
        while not lines or lines[-1] != "done":
            lines += await read_lines(reader, 1)
        assert set(lines[:-1]) <= {"pong"}  # ticks already sent before the stop arrived
        writer.close()

    run(main())


def test_asyncio_pending_resolved_by_a_coroutine_is_delivered(make_server):
    # pending_timeout=0 and no idle timeout: no timer exists, so only kick() (called by wake()
    # when the coroutine resolves) can get this reply out.
    server = make_server(idle_timeout=0, pending_timeout=0)

    @server.command
    def slow() -> Pending:
        pending = Pending()

        async def finish():
            await asyncio.sleep(0.05)
            pending.resolve("finished")

        asyncio.ensure_future(finish())
        return pending

    async def main():
        server.attach_asyncio()
        reader, writer = await open_client(server)
        writer.write(b"slow\necho after\n")
        assert await read_lines(reader, 2) == ["finished", "after"]
        writer.close()

    run(main())


def _add_hold(server: reactor_mgmt.Server) -> List[reactor_mgmt.Connection]:
    """Adds `hold`, which answers "held" and hands its connection to the test."""
    conns: List[reactor_mgmt.Connection] = []

    @server.command
    def hold(conn: reactor_mgmt.Connection) -> str:
        conns.append(conn)
        return "held"

    return conns


async def _attach_and_hold(server: reactor_mgmt.Server):
    server.attach_asyncio()
    reader, writer = await open_client(server)
    writer.write(b"hold\n")
    assert await read_lines(reader, 1) == ["held"]
    return reader, writer


def test_asyncio_connection_closed_by_a_coroutine(make_server):
    server = make_server(idle_timeout=0)
    conns = _add_hold(server)

    async def main():
        reader, writer = await _attach_and_hold(server)
        conns[0].close()  # outside any poll(): Connection.close() must wake the loop
        assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
        writer.close()

    run(main())


def test_asyncio_cross_thread_resolution_uses_the_waker(make_server):
    server = make_server(idle_timeout=0, pending_timeout=0)

    @server.command
    def offload() -> Pending:
        pending = Pending()

        def work():
            time.sleep(0.05)
            server.call_soon_threadsafe(lambda: pending.resolve("from a thread"))

        threading.Thread(target=work, daemon=True).start()
        return pending

    async def main():
        server.attach_asyncio()
        reader, writer = await open_client(server)
        writer.write(b"offload\n")
        assert await read_lines(reader, 1) == ["from a thread"]
        writer.close()

    run(main())


def test_asyncio_call_later_from_another_thread_rearms_the_timer(make_server):
    server = make_server(idle_timeout=0)

    async def main():
        loop = asyncio.get_running_loop()
        fired = loop.create_future()
        server.attach_asyncio()
        await asyncio.sleep(0.05)  # the loop is idle, with no timer armed
        threading.Thread(target=server.call_later, args=(0.05, fired.set_result, "fired")).start()
        assert await asyncio.wait_for(fired, TIMEOUT) == "fired"

    run(main())


def test_asyncio_callback_exception_is_reported_and_serving_goes_on(make_server):
    server = make_server(idle_timeout=0)
    reported = []

    def boom():
        raise RuntimeError("boom")

    async def main():
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda loop, context: reported.append(context.get("exception")))
        server.attach_asyncio()
        server.call_soon_threadsafe(boom)
        reader, writer = await open_client(server)
        writer.write(b"ping\n")
        assert await read_lines(reader, 1) == ["pong"]
        writer.close()

    run(main())
    assert [type(exc) for exc in reported] == [RuntimeError]


def test_asyncio_budget_is_passed_to_poll(make_server, monkeypatch):
    server = make_server(idle_timeout=0)
    budgets = []
    real_poll = server.poll

    def spy(timeout=0.0, budget=None):
        budgets.append(budget)
        return real_poll(timeout, budget)

    monkeypatch.setattr(server, "poll", spy)

    async def main():
        server.attach_asyncio(budget=0.002)
        reader, writer = await open_client(server)
        writer.write(b"ping\n")
        assert await read_lines(reader, 1) == ["pong"]
        writer.close()

    run(main())
    assert budgets and set(budgets) == {0.002}


def test_asyncio_detach_stops_serving_and_restores_the_owner(make_server):
    server = make_server(idle_timeout=0)
    owner = server.owner_thread

    async def main():
        handle = server.attach_asyncio()
        reader, writer = await open_client(server)
        writer.write(b"ping\n")
        assert await read_lines(reader, 1) == ["pong"]
        handle.detach()
        handle.detach()  # idempotent
        assert "detached" in repr(handle)
        assert not asyncio.get_running_loop().remove_reader(server.fileno())  # already removed
        writer.write(b"ping\n")
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(reader.readline(), 0.3)
        server.poll(0)  # the host can take over again
        assert await read_lines(reader, 1) == ["pong"]
        writer.close()
        server.attach_asyncio().detach()  # and attach again after a detach

    run(main())
    assert server.owner_thread == owner


def test_asyncio_close_detaches_before_the_selector_goes(make_server):
    server = make_server()

    async def main():
        loop = asyncio.get_running_loop()
        handle = server.attach_asyncio()
        fd = server.fileno()
        server.close()
        assert handle.detached
        assert not loop.remove_reader(fd)  # the loop no longer watches the closed descriptor
        # A new descriptor that reuses the number can be watched by the loop as usual.
        a, b = socket.socketpair()
        try:
            loop.add_reader(a.fileno(), lambda: None)
            assert loop.remove_reader(a.fileno())
        finally:
            a.close()
            b.close()

    run(main())


def test_asyncio_close_after_the_loop_is_gone(make_server):
    server = make_server()

    async def main():
        return server.attach_asyncio()

    handle = run(main())  # asyncio.run() closed its loop; the server is still attached to it
    server.close()
    assert handle.detached and server.integration is None


def test_asyncio_work_queued_after_the_loop_is_gone_does_not_raise(make_server):
    # Between asyncio.run() returning and server.close(), the host may still log (into a
    # `log tail`), write to a connection or arm a timer: nobody serves the server, but those
    # calls used to raise RuntimeError("Event loop is closed") into the host's own code.
    server = make_server(idle_timeout=0)
    conns = _add_hold(server)

    async def main():
        _, writer = await _attach_and_hold(server)
        writer.close()

    run(main())
    server.call_later(1, lambda: None)
    conns[0].write("after the loop")
    server.close()


def test_asyncio_attach_that_fails_leaves_the_server_free(make_server):
    server = make_server()
    dead = asyncio.new_event_loop()
    dead.close()
    with pytest.raises(RuntimeError):
        server.attach_asyncio(dead)
    assert server.integration is None
    server.start_thread().stop(TIMEOUT)  # free for a thread, or another loop


def test_asyncio_server_closed_by_a_handler_detaches(make_server):
    server = make_server(idle_timeout=0)
    server.add_command("shutdown", lambda: server.call_soon_threadsafe(server.close) or "bye")

    async def main():
        handle = server.attach_asyncio()
        reader, writer = await open_client(server)
        writer.write(b"shutdown\n")
        assert await read_lines(reader, 1) == ["bye"]
        deadline = time.monotonic() + TIMEOUT
        while not handle.detached and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert handle.detached and server.closed
        writer.close()

    run(main())


def test_asyncio_loop_that_is_not_running_yet(make_server):
    server = make_server(idle_timeout=0)
    loop = asyncio.new_event_loop()
    try:
        handle = server.attach_asyncio(loop)

        async def main():
            reader, writer = await open_client(server)
            writer.write(b"ping\n")
            assert await read_lines(reader, 1) == ["pong"]
            writer.close()

        loop.run_until_complete(asyncio.wait_for(main(), TIMEOUT))
        handle.detach()  # loop not running: removed at once
        assert not loop.remove_reader(server.fileno())
    finally:
        loop.close()


def test_asyncio_loop_running_in_another_thread(make_server):
    server = make_server(idle_timeout=0)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        handle = server.attach_asyncio(loop)  # installed by the loop itself, on its thread
        client = blocking_client(server)
        client.sendall(b"ping\n")
        assert recv_lines(client, 1) == ["pong"]
        assert server.owner_thread == thread.ident
        handle.detach()  # from a foreign thread: the removal is queued to the loop
        removed = asyncio.run_coroutine_threadsafe(_reader_removed(loop, server.fileno()), loop)
        assert removed.result(TIMEOUT) is True
        client.close()
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(TIMEOUT)
        loop.close()


def test_asyncio_loop_attached_before_it_runs_on_another_thread(make_server):
    # Attached from this thread while not running, then run by another: the first tick moves
    # owner_thread to the thread that really runs the handlers.
    server = make_server(idle_timeout=0)
    loop = asyncio.new_event_loop()
    handle = server.attach_asyncio(loop)
    assert server.owner_thread == threading.get_ident()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        client = blocking_client(server)
        client.sendall(b"ping\n")
        assert recv_lines(client, 1) == ["pong"]
        assert server.owner_thread == thread.ident
        client.close()
        loop.call_soon_threadsafe(handle.detach)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(TIMEOUT)
        loop.close()
    assert handle.detached


async def _reader_removed(loop, fd) -> bool:
    await asyncio.sleep(0)
    return not loop.remove_reader(fd)


def test_asyncio_needs_a_loop_and_only_one_integration(make_server):
    server = make_server()
    with pytest.raises(ConfigError, match="needs a loop"):
        server.attach_asyncio()

    async def main():
        handle = server.attach_asyncio()
        with pytest.raises(ConfigError, match="already driven"):
            server.attach_asyncio()
        with pytest.raises(ConfigError, match="already driven"):
            server.start_thread()
        handle.detach()

    run(main())
    server.close()

    async def closed():
        with pytest.raises(ConfigError, match="closed"):
            server.attach_asyncio()

    run(closed())


# ---- start_thread ----


def test_thread_runs_handlers_on_its_thread_and_stops(make_server):
    server = make_server(idle_timeout=0)
    owner = server.owner_thread
    seen = []

    @server.command
    def where() -> str:
        seen.append(threading.current_thread().name)
        return "here"

    handle = server.start_thread(name="mgmt-test")
    try:
        assert handle.alive and "running" in repr(handle)
        assert server.owner_thread == handle.thread.ident
        client = blocking_client(server)
        client.sendall(b"ping\nwhere\n")
        assert recv_lines(client, 2) == ["pong", "here"]
        client.close()
    finally:
        assert handle.stop(TIMEOUT) is True
    assert not handle.alive and "stopped" in repr(handle)
    assert seen == ["mgmt-test"]
    assert server.owner_thread == owner
    # The host can poll it itself again, or start another thread.
    server.start_thread().stop(TIMEOUT)


def test_thread_stop_wakes_a_blocked_poll_at_once(make_server):
    server = make_server(idle_timeout=0)
    handle = server.start_thread(poll_interval=60.0)
    time.sleep(0.05)  # let it block in select()
    started = time.monotonic()
    assert handle.stop(TIMEOUT)
    assert time.monotonic() - started < TIMEOUT / 2


def test_thread_close_stops_the_thread_first(make_server):
    server = make_server(idle_timeout=0)
    handle = server.start_thread()
    server.close()
    assert not handle.alive


def test_thread_pending_handed_back_from_the_main_thread(make_server):
    # The documented hand-off: the handler queues work for the main thread, which answers
    # through call_soon_threadsafe; nothing of the server is touched from the main thread.
    server = make_server(idle_timeout=0, pending_timeout=0)
    work: List[tuple] = []
    lock = threading.Lock()

    @server.command
    def compute(n: int) -> Pending:
        pending = Pending()
        with lock:
            work.append((n, pending))
        return pending

    handle = server.start_thread()
    try:
        client = blocking_client(server)
        client.sendall(b"compute 21\n")
        deadline = time.monotonic() + TIMEOUT
        while True:
            with lock:
                if work:
                    n, pending = work.pop()
                    break
            assert time.monotonic() < deadline, "the handler never ran"
            time.sleep(0.005)
        server.call_soon_threadsafe(lambda: pending.resolve(n * 2))
        assert recv_lines(client, 1) == ["42"]
        client.close()
    finally:
        handle.stop(TIMEOUT)


def test_thread_timers_run(make_server):
    server = make_server(idle_timeout=0.1)
    handle = server.start_thread()
    try:
        client = blocking_client(server)
        assert client.recv(100) == b""  # reaped as idle by a timer in the thread
        client.close()
        fired = threading.Event()
        server.call_later(0.05, fired.set)  # from a foreign thread: kick() re-arms the wait
        assert fired.wait(TIMEOUT)
    finally:
        handle.stop(TIMEOUT)


def test_thread_survives_a_raising_callback(make_server, caplog):
    server = make_server(idle_timeout=0)
    handle = server.start_thread()
    try:
        with caplog.at_level(logging.ERROR, logger="reactor_mgmt"):
            server.call_soon_threadsafe(lambda: 1 / 0)
            client = blocking_client(server)
            client.sendall(b"ping\n")
            assert recv_lines(client, 1) == ["pong"]
            client.close()
            # The thread logs it: after the reply, when the connection was read in the poll
            # that ran the callback (a read comes before the poll's callbacks).
            deadline = time.monotonic() + TIMEOUT
            while not any("carrying on" in record.getMessage() for record in caplog.records):
                assert time.monotonic() < deadline, "the callback's exception was never logged"
                time.sleep(0.01)
        assert handle.alive
    finally:
        handle.stop(TIMEOUT)


def test_a_callback_that_raises_as_the_thread_ends_is_logged(make_server, caplog):
    # A callback that closes the server and then raises ended the thread, as it should, but
    # its exception went nowhere: not logged, not raised.
    server = make_server(idle_timeout=0)
    handle = server.start_thread()

    def close_then_fail() -> None:
        server.close()
        raise RuntimeError("after the close")

    with caplog.at_level(logging.ERROR, logger="reactor_mgmt"):
        server.call_soon_threadsafe(close_then_fail)
        deadline = time.monotonic() + TIMEOUT
        while handle.alive:
            assert time.monotonic() < deadline, "the thread did not end"
            time.sleep(0.01)
    (record,) = [record for record in caplog.records if "a callback raised" in record.getMessage()]
    assert record.getMessage().endswith("; ending") and "after the close" in str(record.exc_info[1])


def test_thread_stopped_from_its_own_handler(make_server):
    server = make_server(idle_timeout=0)
    results = []
    holder = {}

    @server.command
    def stop() -> str:
        results.append(holder["handle"].stop(TIMEOUT))
        return "stopping"

    holder["handle"] = handle = server.start_thread()
    client = blocking_client(server)
    client.sendall(b"stop\n")
    assert recv_lines(client, 1) == ["stopping"]
    handle.thread.join(TIMEOUT)
    assert not handle.alive
    assert results == [False]  # it cannot join itself; it only asked
    # Once the thread is gone the server is free again, as after a stop() from outside.
    assert server.integration is None and server.owner_thread == threading.get_ident()
    server.start_thread().stop(TIMEOUT)
    client.close()
    server.close()


def test_thread_handler_raising_system_exit_closes_the_server_and_says_so(make_server, caplog):
    # sys.exit() in a handler ends only the polling thread. It used to die silently, leaving a
    # server that accepts connections and never answers them.
    server = make_server(idle_timeout=0)

    @server.command
    def shutdown() -> str:
        raise SystemExit(0)

    with caplog.at_level(logging.CRITICAL, logger="reactor_mgmt"):
        handle = server.start_thread()
        client = blocking_client(server)
        client.sendall(b"ping\nshutdown\n")
        assert recv_lines(client, 3) == ["pong", "ERR server shutting down"]  # then EOF, not silence
        handle.thread.join(TIMEOUT)
    assert not handle.alive and server.closed and server.integration is None
    assert any("thread ended on SystemExit; closing the server" in r.getMessage() for r in caplog.records)
    client.close()


@pytest.mark.parametrize("selector", ["PollSelector", "SelectSelector"])
def test_thread_stop_wakes_a_blocked_poll_with_any_selector(make_server, monkeypatch, selector):
    # The waker is made before the thread blocks: made later by stop(), a poll()/select()
    # selector already waiting never saw it, and stop() waited out its timeout.
    import selectors

    monkeypatch.setattr(selectors, "DefaultSelector", getattr(selectors, selector))
    server = make_server(idle_timeout=0)
    handle = server.start_thread()
    time.sleep(0.1)  # let it block
    started = time.monotonic()
    assert handle.stop(3)
    assert time.monotonic() - started < 2


def test_thread_log_tail_never_misses_a_wake_from_another_thread(make_server):
    # emit() on the host's thread and the subscriber draining on the polling thread: a record
    # appended just as the subscriber found the queue empty and parked was left without a
    # wake, and so was every record after it. A deque whose len() (called by emit() between
    # its checks and its append) pauses on the host's thread opens that window every time.
    import collections

    host = threading.get_ident()

    class SlowLen(collections.deque):
        def __bool__(self) -> bool:
            return super().__len__() > 0

        def __len__(self) -> int:
            if threading.get_ident() == host:
                time.sleep(0.05)
            return super().__len__()

    logger = logging.getLogger("tailrace")
    logger.setLevel(logging.INFO)
    server = make_server(idle_timeout=0, log_tail=True)
    handle = server.start_thread()
    client = blocking_client(server)
    try:
        client.sendall(b"log tail\n")
        deadline = time.monotonic() + TIMEOUT
        tail = None
        while tail is None or not tail.subscribers:
            assert time.monotonic() < deadline
            tail = next((h for h in logging.getLogger().handlers if type(h).__name__ == "_LogTail"), None)
            time.sleep(0.01)
        subscriber = tail.subscribers[0]
        subscriber.records = SlowLen(subscriber.records)
        logger.info("record-A")
        logger.info("record-B")
        lines = recv_lines(client, 2)
        assert [line.split()[-1] for line in lines] == ["record-A", "record-B"]
    finally:
        client.close()
        handle.stop(TIMEOUT)


def test_thread_stop_timeout_and_close_warning(make_server, caplog, monkeypatch):
    from reactor_mgmt import _integrations

    monkeypatch.setattr(_integrations, "_CLOSE_JOIN_TIMEOUT", 0.05)
    server = make_server(idle_timeout=0)
    release = threading.Event()
    entered = threading.Event()

    @server.command
    def block() -> str:
        entered.set()
        release.wait(TIMEOUT)
        return "released"

    handle = server.start_thread()
    client = blocking_client(server)
    try:
        client.sendall(b"block\n")
        assert entered.wait(TIMEOUT)
        assert handle.stop(timeout=0.05) is False  # a handler blocks: the thread cannot stop yet
        assert handle.alive
        with caplog.at_level(logging.WARNING, logger="reactor_mgmt"):
            server.close()  # gives up waiting, and says so
        assert any("did not stop" in record.getMessage() for record in caplog.records)
    finally:
        release.set()
        handle.thread.join(TIMEOUT)
        client.close()
    assert handle.stop(TIMEOUT) is True


# ---- adopting listening sockets ----


def test_listen_socket_adopts_a_pre_bound_tcp_socket(make_server, tmp_path):
    address_file = str(tmp_path / "addr")
    server = make_server(port=None, address_file=address_file)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    address = server.listen_socket(sock)
    assert address == sock.getsockname()
    assert server.addresses == [address] and server.port == address[1]
    assert open(address_file).read() == f"127.0.0.1:{address[1]}\n"
    client = RawClient(server)
    assert client.request("ping") == ["pong"]
    assert client.request("level") == ["operator"]  # TCP's default level
    client.close()
    server.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=TIMEOUT)


def test_listen_socket_level_and_refusals(make_server):
    server = make_server(port=None)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    with pytest.raises(ConfigError, match="not listening"):
        server.listen_socket(sock)
    sock.listen(4)
    server.listen_socket(sock, level="user")
    client = RawClient(server)
    assert client.request("level") == ["user"]
    client.close()


def test_listen_fd_takes_a_descriptor_number(make_server):
    server = make_server(port=None)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    address = sock.getsockname()
    fd = sock.detach()  # as systemd would hand it over: a bare number
    assert server.listen_fd(fd) == address
    client = RawClient(server)
    assert client.request("ping") == ["pong"]
    client.close()
    server.close()  # the server owns the descriptor now and closed it
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=TIMEOUT)


def test_listen_fd_refuses_without_closing_the_callers_descriptor(make_server, tmp_path):
    server = make_server(port=None)
    read_end, write_end = os.pipe()
    try:
        with pytest.raises(ConfigError, match="not a socket"):
            server.listen_fd(read_end)
        os.fstat(read_end)  # still open
    finally:
        os.close(read_end)
        os.close(write_end)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound, not listening
    try:
        with pytest.raises(ConfigError, match="not listening"):
            server.listen_fd(sock.fileno())
        assert sock.getsockname()[1] > 0  # the caller's socket is still usable
    finally:
        sock.close()
    assert server.addresses == []


def test_listen_socket_and_fd_adopt_unix_sockets(make_server, tmp_path):
    server = make_server(port=None)
    path = str(tmp_path / "adopted.sock")
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(path)
    unix.listen(8)
    assert server.listen_socket(unix) == path
    other_path = str(tmp_path / "by-fd.sock")
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(other_path)
    other.listen(8)
    assert server.listen_fd(other.detach(), level="operator") == other_path
    first = RawClient(server, path)
    assert first.request("level") == ["admin"]  # Unix sockets default to admin
    second = RawClient(server, other_path)
    assert second.request("level") == ["operator"]
    first.close()
    second.close()
    server.close()
    # The socket files belong to whoever created them (systemd, say): adopting does not delete.
    assert os.path.exists(path) and os.path.exists(other_path)


@pytest.mark.skipif(
    not hasattr(socket, "AF_UNIX") or os.uname().sysname != "Linux", reason="abstract Unix socket names are Linux-only"
)
def test_listen_socket_adopts_an_abstract_unix_socket(make_server):
    server = make_server(port=None)
    name = f"\0reactor_mgmt_test_{os.getpid()}_{time.monotonic_ns()}"
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(name)
    unix.listen(8)
    address = server.listen_socket(unix)
    assert isinstance(address, str) and address == name
    client = RawClient(server, address)
    assert client.request("ping") == ["pong"]
    client.close()
