#!/usr/bin/env python3
"""Test client run inside a sandbox: many parallel HTTPS requests, each checked for who answered.

client.py parallel --cafile CA --count N --target NAME=IP[:PORT] [--target ...]
  Spreads N requests over the targets (round robin), all in flight at once, and prints one JSON
  list of {"target", "answered_by", "peer"} or {"target", "error"}.
client.py connect HOST PORT
  Connects, reads until EOF (or 5 s), prints JSON {"connected", "received", "error"}.
"""
import argparse
import http.client
import json
import socket
import ssl
import sys
import threading


def fetch(name, ip, port, context, barrier, results, index):
    try:
        barrier.wait(timeout=30)
        sock = socket.create_connection((ip, port), timeout=20)
        tls = context.wrap_socket(sock, server_hostname=name)
        conn = http.client.HTTPSConnection(name, port, context=context, timeout=20)
        conn.sock = tls
        conn.request("GET", "/")
        body = json.loads(conn.getresponse().read())
        conn.close()
        results[index] = {"target": name, "answered_by": body["name"], "peer": body["peer"]}
    except Exception as exc:  # report, never hide
        results[index] = {"target": name, "error": repr(exc)}


def parallel(args):
    context = ssl.create_default_context(cafile=args.cafile)
    targets = []
    for spec in args.target:
        name, _, addr = spec.partition("=")
        ip, port = (addr.rsplit(":", 1) if addr.count(":") == 1 else (addr.strip("[]"), "443"))
        targets.append((name, ip.strip("[]"), int(port)))
    results = [None] * args.count
    barrier = threading.Barrier(args.count)
    threads = []
    for i in range(args.count):
        name, ip, port = targets[i % len(targets)]
        t = threading.Thread(target=fetch, args=(name, ip, port, context, barrier, results, i))
        t.start()
        threads.append(t)
    for t in threads:
        t.join(timeout=60)
    print(json.dumps(results))


def connect(args):
    out = {"connected": False, "received": "", "error": None}
    try:
        sock = socket.create_connection((args.host, args.port), timeout=5)
        out["connected"] = True
        sock.sendall(b"hello\n")
        data = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        out["received"] = data.decode(errors="replace")
    except Exception as exc:
        out["error"] = repr(exc)
    print(json.dumps(out))


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("parallel")
    p.add_argument("--cafile", required=True)
    p.add_argument("--count", type=int, default=50)
    p.add_argument("--target", action="append", required=True)
    c = sub.add_parser("connect")
    c.add_argument("host")
    c.add_argument("port", type=int)
    args = parser.parse_args()
    return parallel(args) if args.cmd == "parallel" else connect(args)


if __name__ == "__main__":
    sys.exit(main())
