"""PNG plots of the benchmark suite: reactor_mgmt next to its peers, measured side by side in one
run by the suite's own code (tick.py, loadgen.py, realistic.py and servers/).

    python benchmarks/plots.py                  # all three plots into benchmarks/plots/ (1-2 min on 2 cores)
    python benchmarks/plots.py --quick          # smoke run (~10 s) into a temporary directory
    python benchmarks/plots.py --only tick,rtt --out DIR --json DATA.json
    python benchmarks/plots.py --replot DATA.json   # redraw from --json data, measuring nothing

  tick.png    idle loop iteration cost against the number of idle connections (tick.py's
              workers: bare select(0), srv.poll(0), one iteration of a running asyncio/uvloop
              loop, asyncore, Twisted where importable)
  rtt.png     the distribution of ping round-trip latency: all servers up at once, one client
              alternating between them in slices, everything pinned to one CPU (as run.py's rtt)
  frames.png  how late the frames of a 60 Hz host with 4 ms of work per frame start, idle and
              under a flood (realistic.py's host workload), reactor_mgmt against the floor

Measuring needs only the standard library; drawing needs matplotlib (the project's `bench`
extra), imported only to draw, with the Agg backend. A full run also writes the "## Plots"
section of benchmarks/RESULTS.md (a link and a one-line caption with the numbers per plot;
run.py keeps that section). Exits 1 if a measurement failed (a wrong reply fails it, as
everywhere in the suite); the plots then leave that server out and say so.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [HERE, os.path.join(HERE, "servers")]

import loadgen  # noqa: E402
import realistic  # noqa: E402
import soak  # noqa: E402
import tick  # noqa: E402
from realistic_load import pct  # noqa: E402  (pct(sorted values, 0.99))

PLOTS = ("tick", "rtt", "frames")
FULL = dict(
    tick_ns=[0, 100, 1000, 3000, 10000],
    tick_rounds=9,
    rtt_n=20000,
    rtt_slices=20,
    frame_rounds=5,
    host_idle_s=0.5,
    host_flood_s=2.0,
    frame_retries=2,
    quiet_pct=40.0,
)
# --quick: a smoke run (small counts, one round, no retries)
QUICK = dict(FULL, tick_ns=[0, 100], tick_rounds=3, rtt_n=1000, rtt_slices=2, frame_rounds=1, host_idle_s=0.3)
QUICK.update(host_flood_s=0.6, frame_retries=0)

TICK_KINDS = ["bare", "reactor_mgmt", "asyncio_iter", "uvloop_iter", "asyncore", "twisted"]
TICK_LABELS = {
    "bare": "bare DefaultSelector().select(0)",
    "reactor_mgmt": "reactor_mgmt srv.poll(0)",
    "asyncio_iter": "asyncio, one iteration of run_forever()",
    "uvloop_iter": "uvloop, one iteration of run_forever()",
    "asyncore": "asyncore.loop(0, use_poll=True, count=1)",
    "twisted": "Twisted reactor.iterate(0)",
}
RTT_SERVERS = ["floor", realistic.RM, realistic.RM_FOREVER, "asyncio", "uvloop", "node"]
FRAME_SERVERS = ["floor", realistic.RM]
LABELS = dict(
    realistic.SHORT,
    **{
        realistic.RM: "reactor_mgmt host loop",
        realistic.RM_FOREVER: "reactor_mgmt serve_forever()",
        "floor": "floor (selectors)",
    },
)
# one colour per server in every plot (the floor and the bare selector are the same baseline)
STYLE = {
    "bare": ("black", "-"),
    "floor": ("black", "-"),
    "reactor_mgmt": ("tab:red", "-"),
    realistic.RM: ("tab:red", "-"),
    realistic.RM_FOREVER: ("tab:red", ":"),
    "asyncio_iter": ("tab:blue", "-"),
    "asyncio": ("tab:blue", "-"),
    "uvloop_iter": ("tab:green", "-"),
    "uvloop": ("tab:green", "-"),
    "node": ("tab:purple", "-"),
    "asyncore": ("tab:gray", "-"),
    "twisted": ("tab:orange", "-"),
}


def log(msg):
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


# ------------------------------------------------------------- measuring --


def measure_tick(p):
    """tick.measure over the kinds this Python has: {"ns": [...], "kinds": {kind: {n: {...}}}}."""
    kinds = [k for k in TICK_KINDS if tick.available(k)]
    log("tick: %s at %s idle connections, %d rounds" % (", ".join(kinds), p["tick_ns"], p["tick_rounds"]))
    res = tick.measure(p["tick_ns"], p["tick_rounds"], kinds, log=log)
    out = {k: {} for k in kinds}
    for n, per_kind in res.items():
        for k, v in per_kind.items():
            out[k][str(n)] = v
    return {"ns": list(p["tick_ns"]), "kinds": out}


def measure_rtt(p):
    """Ping round trips (ns) to every server, all up at once: one blocking connection each, the
    client and every server pinned to one CPU (as run.py's rtt: the software path of both sides,
    not the cross-CPU wake-ups of a small VM), slices of n/slices round trips per server, the
    order rotating and reversing each slice so that a shared machine's drift hits all alike."""
    env = realistic.rm_env(ROOT)
    names, servers, socks, out = [], {}, {}, {"servers": {}, "errors": {}}
    for name in RTT_SERVERS:
        ok, why = realistic.available(name)
        if ok:
            names.append(name)
        else:
            out["errors"][name] = "skipped: " + why
    saved = os.sched_getaffinity(0)
    cpu = {max(saved)}
    try:
        for name in names:
            try:
                srv = realistic.Server(name, env)
                servers[name] = srv
                realistic.probe(srv.port)
                srv.pin(cpu)
                s = loadgen.connect(srv.port)
                s.settimeout(None)
                loadgen.set_kernel_timeouts(s, 10.0)
                socks[name] = s
            except (RuntimeError, OSError) as e:
                out["errors"][name] = "start/probe: %s" % e
        os.sched_setaffinity(0, cpu)
        live = [name for name in names if name in socks]
        samples = {name: [] for name in live}
        per = max(1, p["rtt_n"] // p["rtt_slices"])
        log("rtt: %s, %d round trips each in %d slices" % (", ".join(live), per * p["rtt_slices"], p["rtt_slices"]))
        for name in live:
            loadgen.rtt_samples(socks[name], 0, warmup=200)
        for i in range(p["rtt_slices"]):
            order = live[i % len(live) :] + live[: i % len(live)]
            for name in order if i % 2 == 0 else order[::-1]:
                if name in samples:
                    try:
                        samples[name].extend(loadgen.rtt_samples(socks[name], per, warmup=10))
                    except (loadgen.Failed, OSError) as e:
                        out["errors"][name] = "%s: %s" % (type(e).__name__, e)
                        del samples[name]
        for name, lat in samples.items():
            try:
                loadgen.assert_no_extra(socks[name], "rtt")
            except loadgen.Failed as e:
                out["errors"][name] = str(e)
                continue
            out["servers"][name] = [round(x / 1e3, 2) for x in lat]
            v = sorted(lat)
            log("  %-17s p50 %.1f us, p99 %.1f us" % (LABELS[name], pct(v, 0.5) / 1e3, pct(v, 0.99) / 1e3))
    finally:
        os.sched_setaffinity(0, saved)
        for s in socks.values():
            s.close()
        for srv in servers.values():
            srv.stop()
    return out


def noise(res):
    """% of a CPU that other processes used during a measurement (realistic.py's other_cpu_pct)."""
    return res.get("other_cpu_pct") or 0.0


def measure_frames(p):
    """realistic.py's host workload (60 Hz, 4 ms of work per frame, an idle window and then a
    flood of 32 one-shot clients plus a pipeliner), rounds alternating the floor and
    reactor_mgmt's host loop (poll(timeout=time_left, budget=0.002)); every frame's lateness.
    As in realistic.py, an attempt during which other processes used more than quiet_pct of a
    CPU is taken again (frame_retries times at most) and the quietest attempt is kept."""
    env = realistic.rm_env(ROOT)
    hp = dict(host_idle_s=p["host_idle_s"], host_flood_s=p["host_flood_s"], srcs=32)
    out = {"servers": {name: [] for name in FRAME_SERVERS}, "errors": {}}
    for r in range(p["frame_rounds"]):
        for name in FRAME_SERVERS if r % 2 == 0 else FRAME_SERVERS[::-1]:
            if name in out["errors"]:
                continue
            res = None
            for _attempt in range(1 + p["frame_retries"]):
                try:
                    got = realistic.measure_host(name, env, hp, realistic.steal_s)
                except (RuntimeError, OSError, ValueError) as e:
                    got = {"ok": False, "error": "%s: %s" % (type(e).__name__, e)}
                if not got.get("ok"):
                    res = got  # a failure is never retried away
                    break
                if res is None or noise(got) < noise(res):
                    res = got
                if noise(res) <= p["quiet_pct"]:
                    break
            if not res.get("ok") or not res.get("late_ms"):
                out["errors"][name] = res.get("error", "no per-frame figures")
                log("frames round %d %-13s FAILED: %s" % (r + 1, LABELS[name], out["errors"][name]))
                continue
            keep = (
                "late_ms",
                "idle_late_ms",
                "late_p99_ms",
                "late_max_ms",
                "conn_s",
                "pipe_req_s",
                "steal_ms",
                "other_cpu_pct",
            )
            out["servers"][name].append({k: res.get(k) for k in keep})
            log("frames round %d %-13s %s" % (r + 1, LABELS[name], realistic.summary("host", res)))
    for name in out["errors"]:
        out["servers"].pop(name, None)
    return out


# --------------------------------------------------------------- drawing --


def pyplot():
    """matplotlib, imported only here (the suite runs without it), on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path):
    fig.savefig(path, dpi=100, metadata={"Software": None})
    pyplot().close(fig)
    log("wrote %s (%d bytes)" % (path, os.path.getsize(path)))


def plain_numbers(axis, minor=False):
    """Tick labels of a log axis as 20, 50, 100 rather than 2x10^1 (minor ones too, on a short axis)."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    fmt = FuncFormatter(lambda v, _pos: "%g" % v)
    axis.set_major_formatter(fmt)
    axis.set_minor_formatter(fmt if minor else NullFormatter())


def draw_tick(data, path, note):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for kind, per_n in data["kinds"].items():
        pts = [(int(n), v) for n, v in per_n.items() if "ns" in v]
        if not pts:
            continue
        pts.sort()
        xs = [n for n, _ in pts]
        ys = [v["ns"] for _, v in pts]
        lo = [y - min(v["samples"]) for y, (_, v) in zip(ys, pts)]
        hi = [max(v["samples"]) - y for y, (_, v) in zip(ys, pts)]
        color, ls = STYLE[kind]
        ax.errorbar(
            xs,
            ys,
            yerr=[lo, hi],
            color=color,
            linestyle=ls,
            marker="o",
            capsize=3,
            linewidth=2.5 if kind == "reactor_mgmt" else 1.5,
            label=TICK_LABELS[kind],
        )
    ax.set_xscale("symlog", linthresh=100)
    ax.set_yscale("log")
    ax.set_xticks(data["ns"])
    ax.set_xticklabels([f"{n:,}" for n in data["ns"]])
    ax.set_xlabel("idle connections registered")
    ax.set_ylabel("ns per idle loop iteration (median; bars: min-max of rounds)")
    ax.set_title("Idle tick cost against the number of connections")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.text(0.01, 0.01, note, fontsize=7, color="gray")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    save(fig, path)


def draw_rtt(data, path, note):
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 5))
    for name, lat in data["servers"].items():
        v = sorted(lat)
        n = len(v)
        color, ls = STYLE[name]
        label = "%s: p50 %.1f, p99 %.1f us" % (LABELS[name], pct(v, 0.5), pct(v, 0.99))
        width = 2.5 if name == realistic.RM else 1.5
        left.plot(v, [(i + 1) / n for i in range(n)], color=color, linestyle=ls, linewidth=width, label=label)
        right.plot(v, [(n - i) / n for i in range(n)], color=color, linestyle=ls, linewidth=width, label=label)
    if data["servers"]:  # the body of the distributions; the right panel has the whole tail
        left.set_xlim(
            0.9 * min(min(v) for v in data["servers"].values()),
            1.5 * max(pct(sorted(v), 0.99) for v in data["servers"].values()),
        )
    for ax in (left, right):
        ax.set_xscale("log")
        plain_numbers(ax.xaxis, minor=ax is left)
        ax.set_xlabel("ping round trip (us), client and servers on one CPU")
        ax.grid(True, which="both", alpha=0.3)
    left.set_ylabel("fraction of round trips at most this long")
    left.set_title("Round-trip latency (CDF)")
    left.legend(fontsize=8, loc="lower right")
    right.set_yscale("log")
    right.set_ylabel("fraction of round trips at least this long")
    right.set_title("The tail (log scale)")
    fig.text(0.01, 0.01, note, fontsize=7, color="gray")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    save(fig, path)


def median_round(rounds):
    """The round with the median flood p99 (the one drawn frame by frame)."""
    return sorted(rounds, key=lambda r: r["late_p99_ms"])[len(rounds) // 2]


def draw_frames(data, path, note):
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 5))
    for name, rounds in data["servers"].items():
        color, _ls = STYLE[name]
        label = LABELS[name]
        r = median_round(rounds)
        late = r["late_ms"]
        left.plot(
            [i / 60.0 for i in range(len(late))],
            late,
            color=color,
            marker=".",
            linewidth=0.8,
            label="%s: p99 %.2f ms, serving %s conn/s + %s req/s"
            % (label, r["late_p99_ms"], "{:,.0f}".format(r["conn_s"]), "{:,.0f}".format(r["pipe_req_s"])),
        )
        for key, ls, what in (("idle_late_ms", "--", "idle"), ("late_ms", "-", "flood")):
            v = sorted(x for rr in rounds for x in (rr[key] or ()))
            if v:
                right.plot(
                    v,
                    [(i + 1) / len(v) for i in range(len(v))],
                    color=color,
                    linestyle=ls,
                    linewidth=2.5 if name == realistic.RM else 1.5,
                    label="%s, %s: p99 %.2f ms (all frames)" % (label, what, pct(v, 0.99)),
                )
    left.axhline(1.0, color="gray", linestyle=":", linewidth=1)
    left.set_xlabel("frame number / 60 (s into the flood), the round with the median p99")
    left.set_ylabel("frame start, ms after it was due")
    left.set_title("60 Hz host, 4 ms of work a frame, under a flood")
    top = max((max(r["late_ms"]) for rounds in data["servers"].values() for r in [median_round(rounds)]), default=1)
    left.set_ylim(bottom=-0.02 * top, top=1.35 * top)  # room for the legend above the frames
    left.legend(fontsize=8, loc="upper right")
    left.grid(True, alpha=0.3)
    right.axvline(1.0, color="gray", linestyle=":", linewidth=1)
    right.set_xscale("log")
    plain_numbers(right.xaxis)
    right.set_xlabel("frame start, ms after it was due (dotted: the 1 ms target for p99)")
    right.set_ylabel("fraction of frames at most this late")
    right.set_title("All rounds: idle (dashed) and flood (solid)")
    right.legend(fontsize=8, loc="upper left")
    right.grid(True, which="both", alpha=0.3)
    fig.text(0.01, 0.01, note, fontsize=7, color="gray")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    save(fig, path)


# -------------------------------------------------------------- captions --


def duration(ns):
    if ns >= 1e6:
        return "%.1f ms" % (ns / 1e6)
    if ns >= 1e4:
        return "%.0f us" % (ns / 1e3)
    return f"{ns:,.0f} ns"


def tick_caption(data):
    k = data["kinds"]

    def ns(kind, n):
        v = k.get(kind, {}).get(str(n), {})
        return v.get("ns")

    lo, hi = min(data["ns"]), max(data["ns"])
    parts = []
    rm = [ns("reactor_mgmt", n) for n in data["ns"]]
    if None not in rm and ns("bare", lo) and ns("bare", hi):
        parts.append(
            "reactor_mgmt's `poll(0)` stays flat, %s-%s from %s to %s connections (%.2fx and %.2fx "
            "a bare `select(0)`)"
            % (
                f"{min(rm):,.0f}",
                duration(max(rm)),
                f"{lo:,}",
                f"{hi:,}",
                rm[0] / ns("bare", lo),
                rm[-1] / ns("bare", hi),
            )
        )
    for kind, what in (("asyncio_iter", "an asyncio iteration"), ("uvloop_iter", "uvloop's")):
        if ns(kind, hi):
            parts.append("%s %s" % (what, duration(ns(kind, hi))))
    if ns("asyncore", hi):
        parts.append("asyncore grows with every connection, to %s at %s" % (duration(ns("asyncore", hi)), f"{hi:,}"))
    return "Read how each loop's idle iteration grows with idle connections (log scales): " + "; ".join(parts) + "."


def rtt_caption(data):
    s = {name: sorted(v) for name, v in data["servers"].items()}
    parts = []
    for name, v in s.items():
        ratio = ""
        if name != "floor" and "floor" in s:
            ratio = " (%.2fx)" % (pct(v, 0.5) / pct(s["floor"], 0.5))
        parts.append("%s %.1f / %.1f%s" % (LABELS[name], pct(v, 0.5), pct(v, 0.99), ratio))
    return (
        "Read the horizontal gap between the curves as the extra cost per round trip and the right panel "
        "as the tail; ping, one connection per server, all up at once and pinned to one CPU, p50 / p99 us "
        "(p50 vs the floor): " + ", ".join(parts) + "; a tail that every server shows alike is the machine's."
    )


def frames_caption(data):
    parts = []
    for name, rounds in data["servers"].items():
        p99s = [r["late_p99_ms"] for r in rounds]
        idle = [pct(sorted(r["idle_late_ms"]), 0.99) for r in rounds if r["idle_late_ms"]]
        parts.append(
            "%s %.2f ms (rounds %s; idle %s; served %s conn/s + %s req/s; other processes %.0f%% "
            "of a CPU)"
            % (
                LABELS[name],
                statistics.median(p99s),
                ", ".join("%.1f" % x for x in p99s),
                "%.1f ms" % statistics.median(idle) if idle else "-",
                "{:,.0f}".format(statistics.median(r["conn_s"] for r in rounds)),
                "{:,.0f}".format(statistics.median(r["pipe_req_s"] for r in rounds)),
                statistics.median(noise(r) for r in rounds),
            )
        )
    return (
        "Read how late a 60 Hz host's frames start (4 ms of work each) while its socket is flooded by 32 "
        "one-shot clients and a pipeliner, against the 1 ms target; flood p99, median of rounds: "
        + "; ".join(parts)
        + "."
    )


CAPTIONS = {"tick": tick_caption, "rtt": rtt_caption, "frames": frames_caption}
DRAW = {"tick": draw_tick, "rtt": draw_rtt, "frames": draw_frames}
TITLES = {
    "tick": "Idle tick cost against connections",
    "rtt": "Round-trip latency distribution",
    "frames": "Frame lateness of a 60 Hz host under a flood",
}


def section(data, out_dir, results_path):
    meta = data["meta"]
    rel = os.path.relpath(out_dir, os.path.dirname(os.path.abspath(results_path)))
    lines = [
        "## Plots",
        "",
        "Written by `%s` on %s (%.0f s; %s, %s CPUs, %s). The numbers in each caption are "
        "the ones drawn."
        % (meta["cmd"], meta["started"], meta["elapsed_s"], meta["python"], meta["nproc"], meta["cpu"]),
        "",
    ]
    for name in PLOTS:
        if name in data and data[name].get("ok", True) and data[name].get("caption"):
            lines.append("![%s](%s/%s.png)  " % (TITLES[name], rel, name))
            lines.append(data[name]["caption"])
            lines.append("")
    errors = [
        "%s / %s: %s" % (name, srv, e)
        for name in PLOTS
        if name in data
        for srv, e in sorted(data[name].get("errors", {}).items())
    ]
    if errors:
        lines.append("Left out: " + "; ".join(errors) + ".")
        lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------ main --


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small counts (~10 s); writes to a temporary directory")
    ap.add_argument("--only", default=",".join(PLOTS), help="plots: " + ",".join(PLOTS))
    ap.add_argument("--out", default=None, help="directory for the PNGs (default benchmarks/plots)")
    ap.add_argument(
        "--results",
        default=None,
        help="Markdown file whose '## Plots' section to rewrite (default benchmarks/RESULTS.md; "
        "not with --quick unless given)",
    )
    ap.add_argument("--no-write", action="store_true", help="leave RESULTS.md alone")
    ap.add_argument("--json", default=None, help="also write the measured data here")
    ap.add_argument("--replot", default=None, help="draw from a --json file instead of measuring")
    args = ap.parse_args(argv)
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    for x in only:
        if x not in PLOTS:
            ap.error("unknown plot %r (choose from %s)" % (x, ", ".join(PLOTS)))
    if importlib.util.find_spec("matplotlib") is None:
        log("plots.py needs matplotlib: pip install matplotlib (the project's `bench` extra)")
        return 2
    out_dir = args.out or (tempfile.mkdtemp(prefix="reactor-plots-") if args.quick else os.path.join(HERE, "plots"))
    results = args.results or (None if args.quick else os.path.join(HERE, "RESULTS.md"))
    os.makedirs(out_dir, exist_ok=True)

    if args.replot:
        with open(args.replot) as f:
            data = json.load(f)
    else:
        p = QUICK if args.quick else FULL
        info = realistic.machine_info()
        cmd = "python benchmarks/plots.py" + (
            ""
            if not (sys.argv[1:] if argv is None else argv)
            else " " + " ".join(sys.argv[1:] if argv is None else argv)
        )
        data = {
            "meta": dict(
                info,
                cmd=cmd,
                quick=args.quick,
                started=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            )
        }
        sys.path.insert(0, os.path.join(HERE, "servers"))
        from _common import raise_nofile

        raise_nofile()
        t0 = time.monotonic()
        for name, fn in (("tick", measure_tick), ("rtt", measure_rtt), ("frames", measure_frames)):
            if name in only:
                t = time.monotonic()
                data[name] = fn(p)
                log("%s: %.0f s" % (name, time.monotonic() - t))
        data["meta"]["elapsed_s"] = time.monotonic() - t0
        if "tick" in data:
            data["tick"]["errors"] = {
                k: v["error"] for k, per_n in data["tick"]["kinds"].items() for v in per_n.values() if "error" in v
            }
        if args.json:
            with open(args.json, "w") as f:
                json.dump(data, f)
    meta = data["meta"]
    note = "%s | %s, %s CPUs | %s%s" % (
        meta["started"],
        meta["python"],
        meta["nproc"],
        meta["cmd"],
        " | QUICK smoke run, not for comparison" if meta.get("quick") else "",
    )
    failed = False
    for name in PLOTS:
        if name not in data or name not in only:
            continue
        failed = failed or bool(
            data[name].get("errors") and any(not e.startswith("skipped") for e in data[name]["errors"].values())
        )
        has = data[name]["kinds"] if name == "tick" else data[name]["servers"]
        if not has:
            log("%s: nothing measured, no plot" % name)
            continue
        DRAW[name](data[name], os.path.join(out_dir, name + ".png"), note)
        data[name]["caption"] = CAPTIONS[name](data[name])
        print("%s.png: %s" % (name, data[name]["caption"]))
    for name in PLOTS:
        for srv, e in sorted(data.get(name, {}).get("errors", {}).items()):
            print("%s / %s: %s" % (name, srv, e))
    if results and not args.no_write:
        soak.write_section(results, section(data, out_dir, results), heading="## Plots", before="## Soak")
        log("wrote the '## Plots' section of %s" % os.path.relpath(results))
    print("plots in %s" % out_dir)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
