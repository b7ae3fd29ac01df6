# Discovery: every server that asks to be found writes one small JSON file about itself into a
# per-user directory, and `reactor-mgmt ls` / `--app NAME` read them back. The directory is
# $XDG_RUNTIME_DIR/reactor_mgmt/ (a per-user tmpfs that the session manager makes), or else
# /tmp/reactor_mgmt-UID/; either is created with mode 0700 and refused, as ssh refuses its
# files, when another user owns it or anyone else may read or write it: a file there says where
# to send a token.
#
# A file is named NAME.PID.json (NAME.PID.2.json for a second server of that name in one
# process) and written atomically (a hidden temporary file, then rename), so readers never see
# half of one. A file whose pid no longer exists is stale: instances() skips it and removes it.
#
# So is a file whose pid now belongs to another process (the server was SIGKILLed, the pid
# reused): trusting it would send the command, an HMAC proof, or over a Unix socket even the
# token, to whoever now holds the recorded address. On Linux the file records its process's
# start as /proc/PID/stat gives it (field 22: clock ticks since boot) and the boot's id, and a
# process whose start differs is another one, as is one on another boot; where either side
# cannot read the boot id, the start ticks are compared alone. A file without them (an older
# writer, or one that could not read /proc) is checked by wall clock: a process that started
# more than _SLACK after the record's "registered" (the writer's time.time() when it wrote the
# file, after its process began; an older writer's file has only "started", its Server's time at
# construction) is not its writer; such a file is skipped, not removed, as a clock stepped
# forward since would make the check misjudge a live server. ("started" is not the writer's own
# time: a relistening forked child registers with its parent's Server.) Where /proc is not
# there (macOS, the BSDs), only the pid's existence is checked, as before: the instance is then
# not "verified", and the CLI sends no cleartext token to its Unix socket (see
# _cli._app_endpoints).
#
# A pid is only a pid in its PID namespace: a directory shared between containers holds files
# whose pids mean other processes here, or none. So a file records its writer's namespace
# (/proc/self/ns/pid), and a reader in another one, or one that cannot tell its own, lists the
# file as not verified and never judges it stale: nothing is removed but what is proven stale.
#
# unregister() removes a file only while it is still this process's
# own (its pid inside, and the inode and contents this process wrote), so a forked child that
# inherits the server never deletes its parent's entry, nor anyone a file written since.
from __future__ import annotations

import json
import os
import re
import stat
import sys
import time
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Tuple, Union

from ._errors import ReactorMgmtError

_SUFFIX = ".json"
_LATEST_START = 1e11  # seconds since the epoch (the year 5138): a later start time is corrupt
_SLACK = 2.0  # seconds: /proc/stat's btime is whole seconds, and the start is in clock ticks
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")
_written: Dict[str, Tuple[int, int, bytes]] = {}  # path -> (st_dev, st_ino, contents) of the files written here


class DiscoveryError(ReactorMgmtError):
    """The discovery directory cannot be used safely (another owner, open permissions)."""


class Instance(NamedTuple):
    """One live server, as its discovery file describes it."""

    name: str
    pid: int
    addresses: List[str]  # HOST:PORT, [V6]:PORT or a Unix socket path, as reactor-mgmt -c takes them
    started: float  # time.time() when it started
    token_required: bool
    tls: bool
    path: str  # the discovery file
    # Whether the process at pid was checked to be the one that wrote the file (its start time,
    # on Linux); False where only the pid's existence could be checked.
    verified: bool = True


def directory() -> str:
    """Where discovery files live: $XDG_RUNTIME_DIR/reactor_mgmt, else /tmp/reactor_mgmt-UID."""
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if runtime and os.path.isabs(runtime):  # the spec says to ignore a relative path
        return os.path.join(runtime, "reactor_mgmt")
    return f"/tmp/reactor_mgmt-{os.getuid()}"


def default_name() -> str:
    """A name for a server that gives none: its program's, as `ps` would show it."""
    program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if program in ("", "-c", "-m", "__main__.py"):
        program = "python"
    return program[:-3] if program.endswith(".py") else program


def format_address(address: Any) -> str:
    """An address as ``reactor-mgmt -c`` takes it: ``host:port``, ``[v6]:port`` or a path."""
    if isinstance(address, tuple):
        host, port = str(address[0]), address[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    text = os.fsdecode(address)
    if text[:1] in ("\0", "@") or ("/" not in text and re.match(r"^(\[.*\]|[^:]+):[0-9]+$", text)):
        return text  # an abstract Unix socket name, or already host:port
    return os.path.abspath(text)  # a relative socket path means nothing to another process


def _check(path: str, info: os.stat_result) -> None:
    if not stat.S_ISDIR(info.st_mode):
        raise DiscoveryError(f"discovery directory {path} is not a directory")
    if info.st_uid != os.getuid():
        raise DiscoveryError(
            f"discovery directory {path} is owned by uid {info.st_uid}, not by this "
            f"user ({os.getuid()}): refusing to use it"
        )
    if info.st_mode & 0o077:
        raise DiscoveryError(
            f"discovery directory {path} has mode {stat.S_IMODE(info.st_mode):04o}: "
            "others may read or write it, refusing to use it (chmod 700 it)"
        )


def _safe_directory(create: bool) -> Optional[str]:
    """The discovery directory, checked; None when it does not exist and ``create`` is false."""
    path = directory()
    if create:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            raise DiscoveryError(f"cannot create discovery directory {path}: {exc.strerror}") from None
    try:
        info = os.lstat(path)  # lstat: a symlink planted in /tmp is not a directory of ours
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DiscoveryError(f"cannot use discovery directory {path}: {exc.strerror}") from None
    _check(path, info)
    return path


def _safe_name(name: str) -> str:
    """The name as it goes into a file name."""
    return _UNSAFE_NAME.sub("_", name).strip(".") or "server"


def register(
    name: str,
    pid: int,
    addresses: Iterable[Any],
    started: float,
    token_required: bool,
    *,
    tls: bool = False,
    unique: bool = False,
    path: Optional[str] = None,
) -> str:
    """Writes (or rewrites) this process's discovery file and returns its path.

    ``addresses`` may be ``(host, port)`` tuples, Unix socket paths or ``host:port`` strings.
    Calling it again with the same name and pid replaces the file, as after a new listener;
    with ``unique``, a file this process still has under that name is kept, and the new one is
    NAME.PID.2.json (.3, ...): two servers of one process with the same name are both found.
    ``path``, a file an earlier call returned, is rewritten (a server's new listener).
    Raises DiscoveryError when the directory is not safe to use.
    """
    folder = _safe_directory(create=True)
    assert folder is not None
    if path is None:
        safe_name = _safe_name(name)
        path = os.path.join(folder, f"{safe_name}.{pid}{_SUFFIX}")
        copy = 1
        while unique and path in _written:
            copy += 1
            path = os.path.join(folder, f"{safe_name}.{pid}.{copy}{_SUFFIX}")
    record: Dict[str, Any] = {
        "name": name,
        "pid": pid,
        "addresses": [format_address(address) for address in addresses],
        "started": started,
        "token": bool(token_required),
        "tls": bool(tls),
    }
    if pid == os.getpid():  # which process this is, beyond its pid (see the top of this file)
        # /proc/self, not /proc/PID: in a PID namespace whose /proc is another namespace's (a
        # container without a /proc of its own), /proc/PID is some other process.
        ticks, boot_id, namespace = _start_ticks("self"), _boot_id(), _pid_namespace()
        if ticks is not None:
            record["proc_start"] = ticks
        if boot_id is not None:
            record["boot_id"] = boot_id
        if namespace is not None:
            record["pid_ns"] = namespace
        # For the wall-clock check where the start ticks cannot be compared: this process began
        # before now. (``started`` may be older than this process: a relistening forked child
        # registers with its parent's Server.)
        record["registered"] = time.time()
    contents = (json.dumps(record) + "\n").encode()
    temporary = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(contents)
        os.replace(temporary, path)
        info = os.lstat(path)
    except OSError as exc:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise DiscoveryError(f"cannot write discovery file {path}: {exc.strerror}") from None
    _written[path] = (info.st_dev, info.st_ino, contents)
    return path


def unregister(path: str) -> bool:
    """Removes a discovery file that register() wrote in this process, if it is still that file;
    True when it was removed. A forked child calling it leaves its parent's file alone."""
    written = _written.get(path)
    try:
        info = os.lstat(path)
        with open(path, "rb") as handle:
            contents = handle.read()
        if written is not None and (info.st_dev, info.st_ino, contents) != written:
            return False  # replaced since: someone else's now
        try:
            record = json.loads(contents)
        except ValueError:
            return False
        if not isinstance(record, dict) or record.get("pid") != os.getpid():
            return False
        os.unlink(path)
    except OSError:
        return False
    finally:
        if written is not None and _written.get(path) == written:
            del _written[path]
    return True


def _read(path: str) -> Optional[Dict[str, Any]]:
    try:
        with open(path) as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    except (OSError, OverflowError, ValueError):
        return False
    return _proc_stat(pid)[:1] != ["Z"]  # a zombie has closed its sockets; it is gone but for wait()


def _proc_stat(pid: Union[int, str]) -> List[str]:
    """The fields of /proc/PID/stat from the state (field 3) on, or [] where it cannot be read
    (not Linux, no such process). The command name before them may hold spaces and parens."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except (OSError, ValueError):
        return []
    return data.rpartition(b")")[2].decode("ascii", "replace").split()


def _start_ticks(pid: Union[int, str]) -> Optional[int]:
    """When the process began, in clock ticks since boot (field 22), or None."""
    fields = _proc_stat(pid)
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _read_proc(path: str) -> Optional[str]:
    try:
        with open(path) as handle:
            return handle.read()
    except (OSError, ValueError):
        return None


def _pid_namespace() -> Optional[str]:
    """This process's PID namespace, as /proc/self/ns/pid names it ("pid:[4026531836]"), or
    None where /proc does not tell."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except (OSError, ValueError):
        return None


def _readers_namespace() -> Optional[str]:
    """The PID namespace whose pids this process's /proc and kill() go by, or None where that
    cannot be told: no /proc, or a /proc mounted for another namespace (/proc/self is then not
    os.getpid(), and /proc/PID shows some other process)."""
    try:
        if os.readlink("/proc/self") != str(os.getpid()):
            return None
    except (OSError, ValueError):
        return None
    return _pid_namespace()


def _boot_id() -> Optional[str]:
    """This boot's id, or None where /proc does not tell."""
    boot_id = _read_proc("/proc/sys/kernel/random/boot_id")
    if boot_id is None:
        return None
    return boot_id.strip() or None


def _start_time(pid: int) -> Optional[float]:
    """When the process began, by the wall clock (boot time plus its start ticks), or None."""
    ticks, stat_text = _start_ticks(pid), _read_proc("/proc/stat")
    if ticks is None or stat_text is None:
        return None
    try:
        hertz = os.sysconf("SC_CLK_TCK")
        boot = next(float(line.split()[1]) for line in stat_text.splitlines() if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return boot + ticks / hertz if hertz > 0 else None


_SAME, _OTHER, _OTHER_BY_CLOCK, _UNKNOWN = "same", "other", "other by clock", "unknown"


def _time_in(record: Dict[str, Any], key: str) -> Optional[float]:
    """A time.time() value the record holds under ``key``, or None (missing, out of range)."""
    value = record.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < _LATEST_START:
        return float(value)
    return None


def _writer_check(record: Dict[str, Any], pid: int, boot_id: Optional[str]) -> str:
    """Whether the live process at ``pid`` wrote ``record``: _SAME, _OTHER, _OTHER_BY_CLOCK (it
    began after the record was written, by the wall clock) or _UNKNOWN. ``boot_id`` is this
    boot's, or None where it cannot be read."""
    ticks = record.get("proc_start")
    if isinstance(ticks, int) and not isinstance(ticks, bool):
        current = _start_ticks(pid)
        if current is not None:
            if current != ticks:
                return _OTHER
            recorded_boot = record.get("boot_id")
            if isinstance(recorded_boot, str) and boot_id is not None and recorded_boot != boot_id:
                return _OTHER  # a file from before a reboot, whose start ticks happen to match
            return _SAME  # the ticks alone when either side has no boot id
    # "registered": when the writer wrote it (its process began before); an older writer's
    # file has only "started", its Server's construction time.
    written = _time_in(record, "registered")
    if written is None:
        written = _time_in(record, "started")
    if written is not None:
        began = _start_time(pid)
        if began is not None:
            return _OTHER_BY_CLOCK if began > written + _SLACK else _SAME
    return _UNKNOWN


def instances(name: Optional[str] = None) -> List[Instance]:
    """The live servers registered in the discovery directory (only those called ``name``,
    when given), by name then pid. Stale files, whose pid is gone or is another process's now,
    are removed on the way (see the top of this module); with ``name``, only that name's files
    are checked, as /proc is read for each one. Raises DiscoveryError when the directory is
    not safe to read."""
    folder = _safe_directory(create=False)
    if folder is None:
        return []
    found: List[Instance] = []
    boot_id, namespace = _boot_id(), _readers_namespace()
    for entry in sorted(os.listdir(folder)):
        if entry.startswith(".") or not entry.endswith(_SUFFIX):
            continue
        path = os.path.join(folder, entry)
        record = _read(path)
        instance = None if record is None else _instance(record, path)
        if instance is None or record is None:
            continue  # not one of ours, or unreadable: leave it
        if name is not None and instance.name != name:
            continue  # another app's: not worth its /proc reads here (`ls` checks every file)
        recorded_namespace = record.get("pid_ns")
        if isinstance(recorded_namespace, str) and recorded_namespace != namespace:
            # Written in another PID namespace (a container sharing the directory), or here
            # where this process cannot tell its own: its pid names nothing here, so nothing
            # proves the file stale, and nothing that its server wrote it.
            writer = _UNKNOWN
        else:
            writer = _writer_check(record, instance.pid, boot_id) if _alive(instance.pid) else _OTHER
        if writer == _OTHER_BY_CLOCK:
            continue  # not trusted; kept, as the clock may have been stepped since it was written
        if writer == _OTHER:
            try:
                os.unlink(path)
            except OSError:
                pass
            continue
        found.append(instance._replace(verified=writer == _SAME))
    found.sort(key=lambda instance: (instance.name, instance.pid))
    return found


def _instance(record: Dict[str, Any], path: str) -> Optional[Instance]:
    pid, addresses, name = record.get("pid"), record.get("addresses"), record.get("name")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0 or not isinstance(name, str):
        return None
    if not isinstance(addresses, list) or not all(isinstance(address, str) for address in addresses):
        return None
    started = record.get("started", 0.0)
    # time.time() as a server wrote it: anything else (1e300, a 400-digit int, NaN, a string) is
    # no record of ours, and would overflow float() here or localtime() in `ls`.
    if not isinstance(started, (int, float)) or isinstance(started, bool) or not 0 <= started < _LATEST_START:
        return None
    return Instance(
        name,
        pid,
        addresses,
        float(started),
        bool(record.get("token")),
        bool(record.get("tls")),
        path,
    )


def label(instance: Union[Instance, Any]) -> str:
    """How `--app` names an instance: NAME[PID], and NAME[PID.2] (.3, ...) for the second
    server of that name in one process (its file NAME.PID.2.json), so that each has a label of
    its own."""
    stem = os.path.basename(instance.path)[: -len(_SUFFIX)]
    prefix = f"{_safe_name(instance.name)}.{instance.pid}."
    copy = stem[len(prefix) :] if stem.startswith(prefix) else ""
    return f"{instance.name}[{instance.pid}.{copy}]" if copy.isdigit() else f"{instance.name}[{instance.pid}]"


def pick_address(instance: Union[Instance, Any]) -> Optional[str]:
    """The address to reach an instance at: its Unix socket when it has one (local, plain),
    else its first TCP address."""
    addresses: List[str] = list(instance.addresses)
    for address in addresses:
        if "/" in address:
            return address
    return addresses[0] if addresses else None
