"""Import cost: milliseconds that `import reactor_mgmt` adds over
`import selectors, socket`, from `python -X importtime` (stdlib, 3.9+).

For each command the cumulative column of every top-level import line is
summed, leaving out the modules the interpreter imports at start-up (found
by running `-c pass`): they are the same for both commands, but `site` alone
varies by 10 ms from run to run (a .pth file can import a package), which
drowned the difference. Runs alternate between the two commands, and the
result is the median of the paired differences.

    python benchmarks/importcost.py [--runs 9]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BASE = "import selectors, socket"
TARGET = "import reactor_mgmt"


def total_us(stderr, skip=frozenset()):
    """Sum of the cumulative column of the top-level imports not named in ``skip``."""
    total = 0
    for line in stderr.splitlines():
        if not line.startswith("import time:"):
            continue
        parts = line.split("|")
        if len(parts) != 3:
            continue
        try:
            cum = int(parts[1])
        except ValueError:
            continue  # the header line
        name = parts[2][1:]  # one separator space, then 2 spaces per nesting level
        if not name.startswith(" ") and name.strip() not in skip:
            total += cum
    return total


def top_level_names(stderr):
    names = set()
    for line in stderr.splitlines():
        parts = line.split("|")
        if line.startswith("import time:") and len(parts) == 3 and not parts[2][1:].startswith(" "):
            names.add(parts[2].strip())
    return names


def run_importtime(code):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], cwd=ROOT, env=env, capture_output=True, timeout=60, text=True
    )
    if r.returncode != 0:
        raise RuntimeError("%r failed: %s" % (code, r.stderr.strip().splitlines()[-1:]))
    return r.stderr


def measure(runs=9):
    run_importtime(TARGET)  # compile .pyc files first
    startup = frozenset(top_level_names(run_importtime("pass")))
    base, target = [], []
    for _ in range(runs):
        base.append(total_us(run_importtime(BASE), startup))
        target.append(total_us(run_importtime(TARGET), startup))
    added = statistics.median(t - b for t, b in zip(target, base))
    return {
        "ok": True,
        "runs": runs,
        "base_ms": statistics.median(base) / 1000.0,
        "target_ms": statistics.median(target) / 1000.0,
        "added_ms": added / 1000.0,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=9)
    a = p.parse_args()
    try:
        res = measure(a.runs)
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        res = {"ok": False, "error": str(e)}
    print(json.dumps(res))


if __name__ == "__main__":
    main()
