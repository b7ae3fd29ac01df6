"""TLS beside plaintext: round trips and one-shot connections on one reactor_mgmt server.

    python benchmarks/tls_cost.py            # Markdown on stdout
    python benchmarks/tls_cost.py --json     # one JSON line

The server runs in its own process, as the README tells hosts to run it (a loop calling
``poll(timeout, budget=0.002)``), with two listeners: plaintext and TLS (a self-signed RSA 2048
certificate made with ``openssl req`` at start). This process is the client. Rounds alternate
plaintext and TLS, and each cell is the median of the rounds, so a noisy moment on a shared
machine hits both. Every reply is checked.

* rtt: ``ping`` round trips on one connection, median and p99 in microseconds;
* churn: one-shot connections (connect, handshake for TLS, ``status``, read to EOF), per second.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

SERVER = r"""
import ssl, sys, time
sys.path.insert(0, sys.argv[1])
import reactor_mgmt
ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain(sys.argv[2], sys.argv[3])
server = reactor_mgmt.Server("127.0.0.1", 0, max_connections=1024)
server.listen_tcp("127.0.0.1", 0, tls=ctx)
server.add_command("status", lambda: {"service": "bench", "state": "running", "workers": 4, "load": 0.75})
print(" ".join(str(a[1]) for a in server.addresses), flush=True)
while True:
    server.poll(timeout=0.016, budget=0.002)
"""
STATUS = b"service: bench\nstate:   running\nworkers: 4\nload:    0.75\n"


def rtt(port: int, context, count: int) -> list:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    if context is not None:
        sock = context.wrap_socket(sock, server_hostname="127.0.0.1")
    times = []
    for _ in range(count):
        start = time.perf_counter()
        sock.sendall(b"ping\n")
        data = b""
        while not data.endswith(b"\n"):
            data += sock.recv(64)
        times.append((time.perf_counter() - start) * 1e6)
        if data != b"pong\n":
            raise AssertionError(f"wrong reply {data!r}")
    sock.close()
    return times


def churn(port: int, context, count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        if context is not None:
            sock = context.wrap_socket(sock, server_hostname="127.0.0.1")
        sock.sendall(b"status\n")
        data = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
            if data == STATUS:
                break
        if data != STATUS:
            raise AssertionError(f"wrong reply {data!r}")
        sock.close()
    return count / (time.perf_counter() - start)


def measure(rounds: int, rtts: int, conns: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
                "-keyout",
                key,
                "-out",
                cert,
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        proc = subprocess.Popen([sys.executable, "-c", SERVER, ROOT, cert, key], stdout=subprocess.PIPE)
        try:
            plain_port, tls_port = map(int, proc.stdout.readline().split())
            context = ssl.create_default_context(cafile=cert)
            result = {"plain": {"rtt": [], "churn": []}, "tls": {"rtt": [], "churn": []}}
            for index in range(rounds):
                order = [("plain", plain_port, None), ("tls", tls_port, context)]
                for name, port, ctx in order if index % 2 == 0 else order[::-1]:
                    result[name]["rtt"].extend(rtt(port, ctx, rtts))
                    result[name]["churn"].append(churn(port, ctx, conns))
        finally:
            proc.kill()
            proc.wait()
    out = {}
    for name, cells in result.items():
        times = sorted(cells["rtt"])
        out[name] = {
            "rtt_p50_us": statistics.median(times),
            "rtt_p99_us": times[int(len(times) * 0.99)],
            "churn_per_s": statistics.median(cells["churn"]),
        }
    return out


def render(result: dict, command: str) -> str:
    plain, tls = result["plain"], result["tls"]
    return "\n".join(
        [
            "## TLS beside plaintext",
            "",
            f"Written by `{command}`.",
            "",
            "| listener | rtt p50 us | rtt p99 us | one-shot connections/s |",
            "|---|---|---|---|",
            f"| plaintext | {plain['rtt_p50_us']:.0f} | {plain['rtt_p99_us']:.0f} | {plain['churn_per_s']:.0f} |",
            f"| TLS | {tls['rtt_p50_us']:.0f} | {tls['rtt_p99_us']:.0f} | {tls['churn_per_s']:.0f} |",
            f"| TLS / plaintext | {tls['rtt_p50_us'] / plain['rtt_p50_us']:.2f}x | "
            f"{tls['rtt_p99_us'] / plain['rtt_p99_us']:.2f}x | {tls['churn_per_s'] / plain['churn_per_s']:.2f}x |",
            "",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--rtts", type=int, default=2000)
    parser.add_argument("--conns", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = measure(args.rounds, args.rtts, args.conns)
    command = "python benchmarks/tls_cost.py"
    result["markdown"] = render(result, command)
    print(json.dumps(result) if args.json else result["markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
