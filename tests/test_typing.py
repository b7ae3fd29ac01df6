# The package ships py.typed, so its types are checked the way its users' tools check them
# (issue 20): `mypy --strict` on the package and on tests/typing_usage.py, a user's program that
# uses every public entry point, and pyright on both (standard mode, against Python 3.9, as
# configured in pyproject.toml). Any error fails. typing_usage.py is also run, so the code that
# is checked is code that works. mypy and pyright come with the `test` extra: without one the
# test is skipped, but under CI a missing checker fails, as a missing client does (require_tool).
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from typing import List

import pytest

from conftest import IN_CI, ROOT

USAGE = os.path.join("tests", "typing_usage.py")


def require_module(name: str) -> None:
    if importlib.util.find_spec(name) is not None:
        return
    message = f"{name} is not installed (it comes with the test extra: pip install -e '.[test]')"
    if IN_CI:
        pytest.fail(message + " (CI must install it: see .ci/run)")
    pytest.skip(message)


def run(command: List[str], timeout: float) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=ROOT, PYRIGHT_PYTHON_IGNORE_WARNINGS="1")
    return subprocess.run(
        command,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize("target", ["reactor_mgmt", USAGE])
def test_mypy_strict(target: str) -> None:
    require_module("mypy")
    # No cache: nothing is written into the checkout, and each run checks from scratch.
    result = run([sys.executable, "-m", "mypy", "--strict", "--cache-dir", os.devnull, target], timeout=110)
    assert result.returncode == 0, f"mypy --strict {target}:\n{result.stdout}"


def test_pyright() -> None:
    require_module("pyright")
    # --pythonpath: resolve imports in this interpreter's environment (a CI venv), not whatever
    # `python` the PATH finds; --warnings: a warning fails too.
    result = run(
        [sys.executable, "-m", "pyright", "--pythonpath", sys.executable, "--warnings", "reactor_mgmt", USAGE],
        timeout=110,
    )
    assert result.returncode == 0, f"pyright reactor_mgmt {USAGE}:\n{result.stdout}"


def test_usage_module_runs() -> None:
    result = run([sys.executable, USAGE], timeout=60)
    assert result.returncode == 0 and "typing_usage: ok" in result.stdout, result.stdout
