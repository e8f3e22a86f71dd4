#!/usr/bin/env python3
"""A plain TCP target farm for bench/scale.py: N listening sockets on 127.0.0.x, accept-and-close.

Binds ``--addresses`` loopback addresses (127.0.0.<first-address>, the next, …) × ``--per-address``
sockets each (kernel-chosen ports), writes the ``host:port`` list as JSON to
``--out``, then accepts and closes connections until ``--lifetime`` seconds have
passed or it is signalled. Never binds 0.0.0.0.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import selectors
import signal
import socket
import time


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--addresses", type=int, default=100)
    ap.add_argument("--first-address", type=int, default=1, help="bind 127.0.0.<first> onwards")
    ap.add_argument("--per-address", type=int, default=100)
    ap.add_argument("--out", required=True)
    ap.add_argument("--lifetime", type=float, default=1800.0)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.addresses * args.per_address + 256
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(need, soft), hard), hard))
    sel = selectors.DefaultSelector()
    targets = []
    if args.first_address < 1 or args.first_address + args.addresses - 1 > 254:
        raise SystemExit("addresses must stay within 127.0.0.1-127.0.0.254")
    if need > hard:
        raise SystemExit(f"{need} sockets need more than the hard fd limit {hard}: split over several listeners")
    for a in range(args.first_address, args.first_address + args.addresses):
        host = f"127.0.0.{a}"
        for _ in range(args.per_address):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, 0))
            s.listen(128)
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
            targets.append(f"{host}:{s.getsockname()[1]}")
    with open(args.out + ".tmp", "w") as fh:
        json.dump(targets, fh)
    os.replace(args.out + ".tmp", args.out)

    stopping = False

    def _stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    deadline = time.monotonic() + args.lifetime
    while not stopping and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.5):
            lsock = key.fileobj
            while True:
                try:
                    conn, _addr = lsock.accept()  # type: ignore[union-attr]
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break
                conn.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
