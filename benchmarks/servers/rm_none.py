from _common import HOST, announce, parse_args, raise_nofile
import os
def main():
    args = parse_args(__doc__)
    raise_nofile()
    from reactor_mgmt import Server
    srv = Server(host=HOST, port=args.port, max_connections=20000, idle_timeout=0)
    announce(srv.addresses[0][1])
    t = os.environ.get("PT", "none")
    t = None if t == "none" else float(t)
    while True:
        srv.poll(t)
if __name__ == "__main__":
    main()
