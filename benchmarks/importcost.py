"""Import cost: milliseconds that `import reactor_mgmt` adds over
`import selectors, socket`, from `python -X importtime` (stdlib, 3.9+).

For each command the cumulative column of every top-level import line is
summed (interpreter start-up imports included: they are the same in both
and cancel out); runs alternate between the two commands and the medians
are subtracted.

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


def total_us(stderr):
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
        if not name.startswith(" "):
            total += cum
    return total


def one(code):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    r = subprocess.run([sys.executable, "-X", "importtime", "-c", code], cwd=ROOT, env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60,
                       universal_newlines=True)
    if r.returncode != 0:
        raise RuntimeError("%r failed: %s" % (code, r.stderr.strip().splitlines()[-1:]))
    return total_us(r.stderr)


def measure(runs=9):
    one(TARGET)  # compile .pyc files first
    one(BASE)
    base, target = [], []
    for _ in range(runs):
        base.append(one(BASE))
        target.append(one(TARGET))
    return {"ok": True, "runs": runs, "base_ms": statistics.median(base) / 1000.0,
            "target_ms": statistics.median(target) / 1000.0,
            "added_ms": (statistics.median(target) - statistics.median(base)) / 1000.0}


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=9)
    a = p.parse_args()
    try:
        res = measure(a.runs)
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        res = {"ok": False, "error": str(e)}
    print(json.dumps(res))


if __name__ == "__main__":
    main()
