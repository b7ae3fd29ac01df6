# The benchmark suite keeps working. Nothing here times anything (speed targets live in
# benchmarks/, never in tests); these runs are tiny, and what they assert is behaviour: the load
# generator checks every reply byte for byte against real peers, so a short run is also a
# pipelining check of the server, and benchmarks/where.py reaches into the server's internals,
# which a refactor could break without anyone noticing until the next full run.
from __future__ import annotations

import importlib.util
import json
import os
import struct
import subprocess
import sys

import pytest

from conftest import ROOT

BENCH = os.path.join(ROOT, "benchmarks")


def run_tool(script: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, os.path.join(BENCH, script), *args],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def last_json(proc: subprocess.CompletedProcess) -> dict:
    lines = proc.stdout.strip().splitlines()
    assert lines, f"no output; stderr: {proc.stderr[-2000:]}"
    return json.loads(lines[-1])


def test_where_runs_every_path_and_finds_every_stage() -> None:
    result = last_json(run_tool("where.py", "--json", "--requests", "3000", "--rounds", "1"))
    assert result["ok"], result.get("error")  # every path's output matched the expected stream
    assert set(result["ns"]) == {"reactor_mgmt", "reactor_mgmt_1024", "host_echo", "contract", "asyncio_protocol"}
    assert all(ns > 0 for ns in result["ns"].values())
    # Each stage wraps a real method of the server; a renamed one fails the run above, and one
    # that is no longer called shows up here as missing. Sending is inside the session's turn.
    for stages in (result["stages"], result["host_stages"]):
        assert {"feed", "service", "flush"} <= set(stages)
        assert stages["flush"] < stages["service"] < stages["total"]
    assert any("reactor_mgmt/_dispatch.py" in row["function"] for row in result["profile"])
    assert result["markdown"].startswith("## Profile: echo with the kernel stubbed out")


def test_flood_reports_its_polls_and_the_hosts_steal_time() -> None:
    result = last_json(run_tool("flood.py", "--duration", "0.5"))
    assert result["ok"], result.get("error")  # the flood client checked every reply
    assert result["poll_returned_work"] and result["polls"] > 0 and result["client_requests"] > 0
    assert 0 < result["p50_us"] <= result["p99_us"] <= result["max_us"]
    assert "steal_ms" in result


def test_a_quick_run_checks_every_reply_and_keeps_the_hand_written_sections(tmp_path) -> None:
    report = tmp_path / "RESULTS.md"
    report.write_text("# old\n\n## Targets\n\nstale\n\n## Soak\n\nsoak figures\n\n## Where the time goes\n\nnotes\n")
    proc = run_tool(
        "run.py",
        "--quick",
        "--only",
        "pipeline,echo,rtt,fanin",
        "--peers",
        "floor,asyncio_protocol,reactor_mgmt",
        "--output",
        str(report),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = report.read_text()
    assert "FAILED" not in text, text  # a dropped or garbled reply is reported as FAILED
    assert "stale" not in text
    assert text.index("## Soak\n\nsoak figures") < text.index("## Where the time goes\n\nnotes")
    targets = [
        line for line in text.splitlines() if line.startswith(("| rtt median", "| Fan-in req/s", "| Fan-in p99"))
    ]
    assert len(targets) == 3
    assert all(line.rstrip(" |").endswith(("PASS", "FAIL")) for line in targets), targets
    # Pipelines of identical requests are measured side by side too, and shown without a limit
    # (issue 16 retired them as targets)
    retired = [line for line in text.splitlines() if line.startswith(("| Pipeline vs", "| Echo vs"))]
    assert len(retired) == 4
    assert all(
        line.endswith("(identical requests; not a target) | " + line.split(" | ")[1] + " | - | - |") for line in retired
    )
    for name in ("Echo vs asyncio Protocol", "Pipeline vs asyncio Protocol", "Pipeline vs floor"):
        assert any(line.startswith(f"| {name} (side by side) (identical") for line in retired), retired
    assert "reactor_mgmt / peer per run: echo vs asyncio Protocol " in text
    assert "; pipeline vs asyncio Protocol " in text and "; pipeline vs floor " in text
    # fan-in's side-by-side phases also give each server's CPU per request, as evidence
    assert "| Fan-in server CPU per request vs floor (side by side; not a target) | " in text
    assert "## Profile: echo with the kernel stubbed out" in text
    for server in ("floor (selectors loop)", "asyncio Protocol", "reactor_mgmt"):
        assert f"| {server} |" in text


def test_a_target_against_a_peer_left_out_is_not_run_rather_than_failed(tmp_path) -> None:
    report = tmp_path / "RESULTS.md"
    proc = run_tool("run.py", "--quick", "--only", "pipeline", "--peers", "floor,reactor_mgmt", "--output", str(report))
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {
        line.split(" | ")[0].lstrip("| "): line
        for line in report.read_text().splitlines()
        if line.startswith("| Pipeline vs")
    }
    suffix = " (identical requests; not a target)"  # retired as targets by issue 16, still measured
    assert rows["Pipeline vs asyncio Protocol (side by side)" + suffix].endswith("| n/a (not run) | - | - |")
    assert rows["Pipeline vs floor (side by side)" + suffix].split(" | ")[1].endswith("x")  # measured


REALISTIC_CELLS = ("churn32_json", "rtt_json", "pipe_echo", "host")


def test_a_quick_realistic_run_checks_every_reply(tmp_path) -> None:
    # benchmarks/realistic.py: one-shot JSON connections, JSON round trips, distinct pipelined
    # echoes and the 60 Hz host under a flood, against the floor and reactor_mgmt's host loop.
    raw, report = tmp_path / "realistic.json", tmp_path / "REALISTIC.md"
    proc = run_tool(
        "realistic.py",
        "--quick",
        "--only",
        ",".join(REALISTIC_CELLS),
        "--peers",
        "floor,reactor_mgmt",
        "--json",
        str(raw),
        "--output",
        str(report),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = json.loads(raw.read_text())
    assert set(runs) == {f"{w}/{p}" for w in REALISTIC_CELLS for p in ("floor", "reactor_mgmt")}
    for key, rounds in runs.items():
        assert rounds and all(r["ok"] for r in rounds), (key, rounds)  # every reply checked out
    for peer in ("floor", "reactor_mgmt"):
        assert runs[f"churn32_json/{peer}"][0]["conns"] > 0
        assert runs[f"churn32_json/{peer}"][0]["server_cpu_s"] > 0
        assert runs[f"rtt_json/{peer}"][0]["round_trips"] > 0
        assert runs[f"pipe_echo/{peer}"][0]["requests"] > 0
        host = runs[f"host/{peer}"][0]
        assert host["conns"] > 0 and host["pipe_requests"] > 0 and host["frames"] > 0
        assert host["late_p99_ms"] is not None
    text = report.read_text()
    assert "## Failures" not in text, text
    assert not [line for line in text.splitlines() if line.startswith("|") and "FAILED" in line], text
    assert "| 60 Hz host under a flood: frames late, p99 | " in text
    assert "| one-shot, 32 clients, JSON: conn/s vs floor | " in text


def test_the_realistic_load_generator_fails_a_wrong_reply() -> None:
    # A server whose `status` is one space off: the run must fail, not report a rate.
    import socket
    import threading

    lsock = socket.create_server(("127.0.0.1", 0))
    lsock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = lsock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(5)
                data = b""
                while not data.endswith(b"\n"):
                    more = conn.recv(100)
                    if not more:
                        break
                    data += more
                conn.sendall(b"service:  reactor-bench\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        proc = run_tool(
            "realistic_load.py",
            "churn",
            "--port",
            str(lsock.getsockname()[1]),
            "--conc",
            "1",
            "--duration",
            "0.2",
            timeout=60,
        )
    finally:
        stop.set()
        thread.join(5)
        lsock.close()
    result = last_json(proc)
    assert proc.returncode == 1 and not result["ok"]
    assert "wrong reply" in result["error"], result


def test_the_toolkit_and_tls_cost_benchmarks_run_and_check_their_replies() -> None:
    toolkit = last_json(run_tool("toolkit_cost.py", "--json", "--rounds", "1", "--calls", "200", "--requests", "300"))
    assert set(toolkit["idle_ns"]) == set(toolkit["request_ns"]) == {"off", "on", "on+audit", "on, no gap"}
    assert all(ns > 0 for ns in toolkit["request_ns"].values())
    tls = last_json(run_tool("tls_cost.py", "--json", "--rounds", "2", "--rtts", "50", "--conns", "5"))
    assert tls["plain"]["churn_per_s"] > 0 and tls["tls"]["rtt_p50_us"] > 0
    assert "| TLS / plaintext |" in tls["markdown"]


def test_the_plot_script_measures_without_matplotlib() -> None:
    # matplotlib is the optional `bench` extra: plots.py imports it only to draw.
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import plots; "
        "assert 'matplotlib' not in sys.modules, 'plots.py imported matplotlib at import time'"
    )
    proc = subprocess.run([sys.executable, "-c", code, BENCH], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.skipif(
    importlib.util.find_spec("matplotlib") is None,
    reason="matplotlib is not installed (the optional `bench` extra); plots.py cannot draw",
)
def test_a_quick_plot_run_writes_png_files_and_links_them(tmp_path) -> None:
    out, report, raw = tmp_path / "plots", tmp_path / "RESULTS.md", tmp_path / "plots.json"
    report.write_text("# results\n\n## Targets\n\nrun.py's\n\n## Soak\n\nsoak figures\n")
    proc = run_tool("plots.py", "--quick", "--out", str(out), "--results", str(report), "--json", str(raw), timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]  # every round trip and frame measured
    for name in ("tick", "rtt", "frames"):
        png = (out / f"{name}.png").read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and png[12:16] == b"IHDR", name
        assert png.endswith(b"IEND\xaeB`\x82"), name
        width, height = struct.unpack(">II", png[16:24])
        assert width >= 600 and height >= 400, (name, width, height)
    data = json.loads(raw.read_text())
    assert not data["tick"]["errors"] and {"bare", "reactor_mgmt"} <= set(data["tick"]["kinds"])
    assert {"floor", "reactor_mgmt"} <= set(data["rtt"]["servers"])
    assert all(len(lat) == 1000 for lat in data["rtt"]["servers"].values())
    for peer in ("floor", "reactor_mgmt"):
        rounds = data["frames"]["servers"][peer]
        assert rounds and all(r["late_ms"] and r["idle_late_ms"] for r in rounds)
    text = report.read_text()
    assert text.index("run.py's") < text.index("## Plots\n") < text.index("## Soak\n\nsoak figures")
    for name in ("tick", "rtt", "frames"):
        link = next(line for line in text.splitlines() if line.endswith(f"](plots/{name}.png)  "))
        caption = text.splitlines()[text.splitlines().index(link) + 1]
        assert caption.startswith("Read "), caption
