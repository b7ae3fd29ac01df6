"""reactor_mgmt peer: the library's own Server with serve_forever().

Run with the repository root on PYTHONPATH (run.py does that)."""

from _common import HOST, announce, parse_args, raise_nofile


def main():
    args = parse_args(__doc__)
    raise_nofile()
    from reactor_mgmt import Server

    srv = Server(host=HOST, port=args.port, max_connections=20000, idle_timeout=0)
    announce(srv.addresses[0][1])
    try:
        srv.serve_forever()
    finally:
        srv.close()


if __name__ == "__main__":
    main()
