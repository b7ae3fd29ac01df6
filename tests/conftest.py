# Shared test helpers. Tests talk to real servers over real sockets on 127.0.0.1 port 0; the
# server is driven by the test's own thread calling poll(), exactly as a host would, so there is
# no background thread to race with. Every socket has a timeout and every wait has a deadline.
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from typing import Callable, Iterator, List, Optional

import pytest

import reactor_mgmt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IN_CI = bool(os.environ.get("CI"))
TIMEOUT = 10.0


def require_tool(*names: str) -> str:
    """Path of the first tool found; skip without it, but fail under CI (a missing client is a
    broken CI image, not an excuse)."""
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    message = f"{' / '.join(names)} is not installed"
    if IN_CI:
        pytest.fail(message + " (CI must install it: see .ci/run)")
    pytest.skip(message)
    raise AssertionError("unreachable")


class RawClient:
    """A blocking test client whose reads keep the server polling, so one thread does both."""

    def __init__(self, server: reactor_mgmt.Server, address=None, family=socket.AF_INET) -> None:
        self.server = server
        address = address if address is not None else server.addresses[0]
        if isinstance(address, str):
            family = socket.AF_UNIX
        elif ":" in address[0]:
            family = socket.AF_INET6
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(address)
        self.sock.setblocking(False)
        self.buffer = b""
        self.eof = False
        self.pump()  # let the server accept

    def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode()
        self.sock.setblocking(True)
        self.sock.settimeout(TIMEOUT)
        self.sock.sendall(data)
        self.sock.setblocking(False)

    def shutdown(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    def pump(self, rounds: int = 1) -> None:
        for _ in range(rounds):
            self.server.poll(0)
            self._drain()

    def _drain(self) -> None:
        while not self.eof:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return
            except ConnectionResetError:
                self.eof = True
                return
            if not data:
                self.eof = True
                return
            self.buffer += data

    def wait_for(self, predicate: Callable[[bytes], bool], timeout: float = TIMEOUT) -> bytes:
        deadline = time.monotonic() + timeout
        while not predicate(self.buffer):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; received so far: {self.buffer[-2000:]!r}")
            if self.eof:
                raise AssertionError(f"connection closed; received: {self.buffer[-2000:]!r}")
            self.server.poll(0.01)
            self._drain()
        return self.buffer

    def lines(self, count: int, timeout: float = TIMEOUT) -> List[str]:
        """Waits for ``count`` complete lines, returns them and removes them from the buffer."""
        self.wait_for(lambda buf: buf.count(b"\n") >= count, timeout)
        parts = self.buffer.split(b"\n")
        taken, rest = parts[:count], parts[count:]
        self.buffer = b"\n".join(rest)
        return [part.decode() for part in taken]

    def request(self, line: str, lines: int = 1) -> List[str]:
        self.send(line + "\n")
        return self.lines(lines)

    def read_until_closed(self, timeout: float = TIMEOUT) -> bytes:
        deadline = time.monotonic() + timeout
        while not self.eof:
            if time.monotonic() > deadline:
                raise AssertionError(f"server did not close; received: {self.buffer[-2000:]!r}")
            self.server.poll(0.01)
            self._drain()
        return self.buffer

    def close(self) -> None:
        self.sock.close()


# ---- every transcript test, with the caches on and off ----
#
# The registry's line cache (Registry.parse) is the one cache left in the library; the private
# switch Server(_caches=False) turns it off. Every test that gets its server from the `server`
# or `make_server` fixture (or from `client`, which uses `server`) runs twice: as
# test_x[cached] and as test_x[uncached]. The same assertions on both runs pin the cached path
# to the general one, byte for byte. A test that builds reactor_mgmt.Server(...) itself runs
# once, with the caches on.
#
# Modules that run once: those that drive subprocesses (the demo, the examples, the CLI, real
# clients, the benchmarks) or measure memory rather than replies, where a second run costs
# seconds and compares nothing; and test_caches, whose tests build both kinds of server
# themselves and compare them.
_SINGLE_RUN_MODULES = frozenset(
    {
        "test_benchmarks.py",
        "test_caches.py",
        "test_cli.py",
        "test_demo.py",
        "test_examples.py",
        "test_interactive.py",
        "test_memory_cycles.py",
        "test_real_clients.py",
    }
)
# What the hook applies; test_caches uses it by hand on the tests of its own that run both ways.
CACHE_MODES = pytest.mark.parametrize("caches", [True, False], ids=["cached", "uncached"], indirect=True)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "caches" not in metafunc.fixturenames:
        return
    if os.path.basename(metafunc.module.__file__) in _SINGLE_RUN_MODULES:
        return
    for marker in metafunc.definition.iter_markers("parametrize"):  # a test that chose for itself
        names = marker.args[0]
        if "caches" in ([n.strip() for n in names.split(",")] if isinstance(names, str) else names):
            return
    metafunc.parametrize("caches", [True, False], ids=["cached", "uncached"], indirect=True)  # as CACHE_MODES


@pytest.fixture
def caches(request) -> bool:
    """Whether this run's fixture servers have their caches on (see pytest_generate_tests)."""
    return getattr(request, "param", True)


@pytest.fixture
def server(caches: bool) -> Iterator[reactor_mgmt.Server]:
    srv = reactor_mgmt.Server("127.0.0.1", 0, _caches=caches)
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture
def make_server(caches: bool) -> Iterator[Callable[..., reactor_mgmt.Server]]:
    created: List[reactor_mgmt.Server] = []

    def factory(*args, **kwargs) -> reactor_mgmt.Server:
        kwargs.setdefault("port", 0)
        kwargs.setdefault("_caches", caches)
        srv = reactor_mgmt.Server(*args, **kwargs)
        created.append(srv)
        return srv

    yield factory
    for srv in created:
        srv.close()


@pytest.fixture
def client(server) -> Iterator[RawClient]:
    c = RawClient(server)
    try:
        yield c
    finally:
        c.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def default_sigint() -> None:
    """A child's preexec_fn: Ctrl-C at its default, whatever the test run inherited. A run
    started in the background by a non-interactive shell ignores SIGINT, children inherit that,
    and Python then installs no handler: a child sent Ctrl-C by a test would go on for good."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def child_env(extra: Optional[dict] = None) -> dict:
    """Environment for a child process that runs this checkout's reactor_mgmt."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("REACTOR_MGMT_TOKEN", None)
    if extra:
        env.update(extra)
    return env


class ServerThread:
    """One background thread polling several servers, for blocking clients (the Python Client,
    the CLI in a subprocess) that cannot drive poll() themselves. Register commands first; the
    handlers then run on this thread. stop() joins it and closes the servers."""

    def __init__(self, *servers: reactor_mgmt.Server) -> None:
        import selectors
        import threading

        self.servers = list(servers)
        self._stopping = False
        self._selector = selectors.DefaultSelector()
        for srv in self.servers:
            self._selector.register(srv.fileno(), selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = threading.Event()
        self._thread.start()
        self._started.wait(TIMEOUT)

    def _run(self) -> None:
        import threading

        for srv in self.servers:  # Pending.resolve() on this thread must not go via the waker
            srv.owner_thread = threading.get_ident()
        self._started.set()
        while not self._stopping:
            if not sum(srv.poll(0) for srv in self.servers):
                self._selector.select(0.01)  # timers do not show on fileno(): keep it short

    def stop(self) -> None:
        self._stopping = True
        self._thread.join(TIMEOUT)
        self._selector.close()
        for srv in self.servers:
            srv.close()

    def __enter__(self) -> ServerThread:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


class Daemon:
    """A subprocess (the demo or an example) that announces its address in a file."""

    def __init__(self, args: List[str], address_file: str, env: Optional[dict] = None) -> None:
        self.address_file = address_file
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = ROOT + os.pathsep + full_env.get("PYTHONPATH", "")
        full_env.pop("REACTOR_MGMT_TOKEN", None)
        if env:
            full_env.update(env)
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=full_env,
            cwd=ROOT,
        )
        deadline = time.monotonic() + TIMEOUT
        while not (os.path.exists(address_file) and open(address_file).read().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                out, err = self.proc.communicate(timeout=5)
                raise AssertionError(f"daemon did not start: {err.decode()[-2000:]}")
            time.sleep(0.02)
        self.address = open(address_file).read().split()[0]
        host, _, port = self.address.rpartition(":")
        self.host, self.port = host.strip("[]"), int(port)

    def stop(self) -> tuple[int, str, str]:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            out, err = self.proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate(timeout=TIMEOUT)
        return self.proc.returncode, out.decode(), err.decode()


@pytest.fixture
def demo(tmp_path) -> Iterator[Daemon]:
    """The demo daemon on an ephemeral port, in its own process."""
    address_file = str(tmp_path / "demo.addr")
    daemon = Daemon(["-m", "reactor_mgmt", "demo", "--port", "0", "--address-file", address_file], address_file)
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="module")
def slow_demo(tmp_path_factory) -> Iterator[Daemon]:
    """One demo per test module, ticking once a second so its sample jobs stay queued for the
    whole module (at the default 50 Hz they are done within seconds)."""
    address_file = str(tmp_path_factory.mktemp("slow_demo") / "demo.addr")
    daemon = Daemon(
        ["-m", "reactor_mgmt", "demo", "--port", "0", "--rate", "1", "--address-file", address_file], address_file
    )
    try:
        yield daemon
    finally:
        daemon.stop()
