# The package as a user gets it: built into a wheel, installed into a fresh virtualenv from that
# wheel alone (no index, no dependencies, nothing from this checkout on the path), then used:
# the import and __version__, the examples package, py.typed, the console script's --version,
# and the demo daemon answering `ping` over a socket.
#
# The wheel: the one named by REACTOR_MGMT_WHEEL when it is set (.ci/run sets it to the wheel it
# built with `python -m build` from the sdist and checked with twine, so the tests try the very
# file a release would upload, on every Python that runs the whole suite). Otherwise the test builds
# one offline, with the setuptools of the interpreter running the tests (--no-build-isolation):
# pyproject.toml needs setuptools>=77 (the SPDX license string), and without it the test is
# skipped, saying so; under CI (CI set) it fails instead. It takes a few seconds, most of them
# creating the virtualenv.
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

import reactor_mgmt

ROOT = Path(__file__).resolve().parent.parent
SETUPTOOLS_NEEDED = (77,)
STEP_TIMEOUT = 60
WHEEL_VARIABLE = "REACTOR_MGMT_WHEEL"
IN_CI = bool(os.environ.get("CI"))


def _cannot_run(reason: str) -> None:
    """Skip, saying why; under CI, fail: there the wheel must be tested."""
    if IN_CI:
        pytest.fail(f"{reason} (under CI the wheel must be tested: .ci/run sets {WHEEL_VARIABLE})", pytrace=False)
    pytest.skip(reason)


def _setuptools_problem() -> str:
    try:
        import setuptools
    except ImportError:
        return "setuptools is not installed"
    try:
        version = tuple(int(part) for part in setuptools.__version__.split(".")[:2])
    except ValueError:
        return ""
    if version < SETUPTOOLS_NEEDED:
        return f"setuptools {setuptools.__version__} is installed"
    return ""


def _run(args, cwd: Path, env: dict, timeout: float = STEP_TIMEOUT) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(arg) for arg in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def _clean_env(home: Path) -> dict:
    """The environment of a user's shell: nothing that points Python at this checkout."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PYTHON", "COVERAGE_", "PIP_", "VIRTUAL_ENV"))
    }
    env.update(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONDONTWRITEBYTECODE="1", HOME=str(home))
    return env


def _build_wheel(tmp_path: Path, env: dict) -> Path:
    problem = _setuptools_problem()
    if problem:
        _cannot_run(
            f"building the wheel offline needs setuptools>=77 in this interpreter ({problem}); "
            f"pip install 'setuptools>=77' to run this test, or set {WHEEL_VARIABLE} to a built wheel"
        )
    # Build from a copy of what the sdist would hold, so no build/ or egg-info lands in the checkout.
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "reactor_mgmt", source / "reactor_mgmt", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    wheels = tmp_path / "wheels"
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            source,
            "-w",
            wheels,
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
        ],
        cwd=tmp_path,
        env=env,
    )
    built = sorted(wheels.glob("*.whl"))
    assert len(built) == 1, built
    return built[0]


def test_the_wheel_installs_into_a_fresh_venv_and_runs(tmp_path):
    if subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode != 0:
        _cannot_run("pip is not available to this interpreter")
    env = _clean_env(tmp_path)
    given = os.environ.get(WHEEL_VARIABLE)
    if given:
        wheel = Path(given).resolve()
        assert wheel.is_file(), f"{WHEEL_VARIABLE}={given}: no such file (did the wheel build fail?)"
    else:
        wheel = _build_wheel(tmp_path, env)
    assert wheel.name == f"reactor_mgmt-{reactor_mgmt.__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(f"reactor_mgmt-{reactor_mgmt.__version__}.dist-info/METADATA").decode()
    assert "reactor_mgmt/py.typed" in names
    assert "reactor_mgmt/examples/__init__.py" in names
    assert f"\nVersion: {reactor_mgmt.__version__}\n" in metadata
    for label in ("Homepage", "Documentation", "Changelog", "Issues"):
        assert f"\nProject-URL: {label}, " in metadata, label
    runtime = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert not runtime, f"runtime dependencies crept in: {runtime}"

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=tmp_path, env=env)
    python = venv / "bin" / "python"
    _run([python, "-m", "pip", "install", "--no-index", "--no-deps", "-q", wheel], cwd=tmp_path, env=env)

    # Run from an empty directory, so only the installed copy can be imported.
    work = tmp_path / "work"
    work.mkdir()
    proc = _run(
        [
            python,
            "-c",
            "import os, reactor_mgmt, reactor_mgmt.examples; "
            "print(reactor_mgmt.__version__); print(os.path.dirname(reactor_mgmt.__file__))",
        ],
        cwd=work,
        env=env,
    )
    version, location = proc.stdout.split("\n")[:2]
    assert version == reactor_mgmt.__version__
    assert Path(location).resolve().is_relative_to(venv.resolve()), location
    assert (Path(location) / "py.typed").is_file()

    expected = f"reactor-mgmt {reactor_mgmt.__version__}\n"
    assert _run([venv / "bin" / "reactor-mgmt", "--version"], cwd=work, env=env).stdout == expected
    assert _run([python, "-m", "reactor_mgmt", "--version"], cwd=work, env=env).stdout == expected

    # The demo, on a port the kernel picks, found through its address file.
    address_file = work / "demo.addr"
    demo = subprocess.Popen(
        [python, "-m", "reactor_mgmt", "demo", "--port", "0", "--address-file", address_file],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + STEP_TIMEOUT
        while not (address_file.exists() and address_file.read_text().strip()):
            assert demo.poll() is None, f"the demo exited early:\n{demo.communicate()[1]}"
            assert time.monotonic() < deadline, "the demo did not write its address file"
            time.sleep(0.05)
        host, _, port = address_file.read_text().splitlines()[0].rpartition(":")
        with socket.create_connection((host, int(port)), timeout=10) as conn:
            conn.sendall(b"ping\n")
            conn.shutdown(socket.SHUT_WR)
            reply = b""
            while True:
                data = conn.recv(4096)
                if not data:
                    break
                reply += data
        assert reply == b"pong\n"
        assert (
            _run([venv / "bin" / "reactor-mgmt", "--address-file", address_file, "ping"], cwd=work, env=env).stdout
            == "pong\n"
        )
    finally:
        if demo.poll() is None:
            demo.send_signal(signal.SIGTERM)
        try:
            _, stderr = demo.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            demo.kill()
            demo.communicate()
            raise
    assert demo.returncode == 0, stderr
