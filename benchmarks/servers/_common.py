"""Helpers shared by the peer servers (stdlib only, Python 3.9+).

Every peer is started as ``python benchmarks/servers/<peer>.py [--port 0]``.
It binds 127.0.0.1 only, prints the bound port as the first line of stdout
and then serves until it is killed.
"""
import argparse
import resource
import sys

HOST = "127.0.0.1"
BACKLOG = 1024
MAX_LINE = 65536  # a line longer than this closes the connection


def raise_nofile():
    """Raise the soft RLIMIT_NOFILE to the hard limit (10,000+ connections)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else 1 << 20
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def parse_args(description):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--port", type=int, default=0)
    return p.parse_args()


def announce(port):
    """First line of stdout: the bound port (the runner waits for it)."""
    sys.stdout.write("%d\n" % port)
    sys.stdout.flush()

