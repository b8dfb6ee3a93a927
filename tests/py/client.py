#!/usr/bin/env python3
"""Test client run inside a sandbox: many parallel HTTPS requests, each checked for who answered.

client.py parallel --cafile CA --count N --target NAME=IP[:PORT] [--target ...]
  Spreads N requests over the targets (round robin), all in flight at once, and prints one JSON
  list of {"target", "answered_by", "peer"} or {"target", "error"}.
client.py connect HOST PORT
  Connects, reads until EOF (or 5 s), prints JSON {"connected", "received", "error"}.
client.py raw HOST PORT HEX WAIT
  Connects, sends the bytes HEX (may be empty), then reads until EOF or WAIT seconds; prints JSON
  {"closed_by_peer", "elapsed", "received_hex", "error"}.
client.py urllib URL [--cafile CA]
  Fetches URL with urllib (default trust unless --cafile) and prints JSON {"status", "body",
  "issuer", "subject_alt_names"} of the certificate the client was shown.
"""
import struct
import time
import urllib.request
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


def raw(args):
    out = {"closed_by_peer": False, "elapsed": None, "received_hex": "", "error": None}
    start = time.monotonic()
    try:
        sock = socket.create_connection((args.host, args.port), timeout=args.wait)
        if args.hex:
            sock.sendall(bytes.fromhex(args.hex))
        data = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                out["closed_by_peer"] = True
                break
            data += chunk
        out["received_hex"] = data.hex()
    except socket.timeout:
        out["error"] = "timeout"
    except ConnectionResetError:
        out["closed_by_peer"] = True
    except Exception as exc:
        out["error"] = repr(exc)
    out["elapsed"] = time.monotonic() - start
    print(json.dumps(out))


def reset_mid_request(args):
    """Completes TLS, starts a 1 MB upload, sends 10 KiB of it, then resets the connection."""
    context = ssl.create_default_context(cafile=args.cafile)
    sock = socket.create_connection((args.host, args.port), timeout=10)
    tls = context.wrap_socket(sock, server_hostname=args.name)
    tls.sendall(f"POST /sha256 HTTP/1.1\r\nHost: {args.name}\r\nContent-Length: 1000000\r\n\r\n".encode())
    tls.sendall(b"y" * 10240)
    time.sleep(0.2)
    # wrap_socket took over the descriptor: set linger 0 on the TLS socket, then close = RST.
    tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    tls.close()
    print(json.dumps({"reset": True}))


def hold(args):
    """Opens COUNT TLS connections (at most 200 handshakes at a time), does one GET on each,
    prints HELD, keeps them all open HOLD seconds, closes them and prints a JSON summary."""
    import asyncio

    context = ssl.create_default_context(cafile=args.cafile)
    errors = []
    conns = []

    async def open_one(sem):
        async with sem:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(args.ip, args.port, ssl=context, server_hostname=args.name), 60)
                writer.write(f"GET / HTTP/1.1\r\nHost: {args.name}\r\n\r\n".encode())
                await writer.drain()
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
                length = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")][0].split(b":")[1])
                await asyncio.wait_for(reader.readexactly(length), 60)
                conns.append(writer)
            except Exception as exc:
                errors.append(repr(exc))

    async def main():
        start = time.monotonic()
        sem = asyncio.Semaphore(200)
        await asyncio.gather(*(open_one(sem) for _ in range(args.count)))
        opened = time.monotonic() - start
        print("HELD", len(conns), flush=True)
        await asyncio.sleep(args.hold)
        for writer in conns:
            writer.close()
        await asyncio.gather(*(w.wait_closed() for w in conns), return_exceptions=True)
        print(json.dumps({"held": len(conns), "errors": errors[:20], "error_count": len(errors),
                          "open_seconds": opened}), flush=True)

    asyncio.run(main())


def hostile(args):
    """COUNT hostile connections at once, in equal shares: random bytes, a truncated ClientHello,
    an oversized ClientHello, and a slowloris trickle of a ClientHello (one byte every TRICKLE
    seconds). Prints JSON: how many the peer closed, how many were answered with data, timings."""
    import asyncio
    import random

    hello = open(args.hello, "rb").read()
    rng = random.Random(1)
    kinds = ["random", "truncated", "oversized", "slowloris"]
    results = {k: {"closed": 0, "answered": 0, "other": 0, "max_seconds": 0.0} for k in kinds}

    def payload(kind):
        if kind == "random":
            return bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 4096)))
        if kind == "truncated":
            return hello[: rng.randint(1, len(hello) - 1)]
        if kind == "oversized":
            # A handshake record claiming a 64 KiB ClientHello, then 16 KiB of filler records.
            body = b"\x01" + (65536).to_bytes(3, "big") + b"\x03\x03" + bytes(16000)
            return b"\x16\x03\x01" + len(body).to_bytes(2, "big") + body
        return hello

    async def one(kind):
        start = time.monotonic()
        try:
            reader, writer = await asyncio.open_connection(args.ip, args.port)
            data = payload(kind)
            if kind == "slowloris":
                for byte in data:
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(args.trickle)
                    if reader.at_eof():
                        break
            else:
                writer.write(data)
                await writer.drain()
            received = await asyncio.wait_for(reader.read(), args.wait)
            results[kind]["answered" if received else "closed"] += 1
            writer.close()
        except (ConnectionResetError, BrokenPipeError):
            results[kind]["closed"] += 1
        except Exception:
            results[kind]["other"] += 1
        results[kind]["max_seconds"] = max(results[kind]["max_seconds"], time.monotonic() - start)

    async def main():
        await asyncio.gather(*(one(kinds[i % 4]) for i in range(args.count)))
        print(json.dumps(results), flush=True)

    asyncio.run(main())


def fetch_urllib(args):
    context = ssl.create_default_context(cafile=args.cafile) if args.cafile else ssl.create_default_context()
    with urllib.request.urlopen(args.url, context=context, timeout=20) as resp:
        # The socket is released once the body is read: take the certificate first.
        cert = resp.fp.raw._sock.getpeercert()
        body = resp.read().decode(errors="replace")
        print(json.dumps({
            "status": resp.status,
            "body": body,
            "issuer": dict(x[0] for x in cert.get("issuer", ())),
            "subject_alt_names": [list(x) for x in cert.get("subjectAltName", ())],
        }))


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
    r = sub.add_parser("raw")
    r.add_argument("host")
    r.add_argument("port", type=int)
    r.add_argument("hex")
    r.add_argument("wait", type=float)
    u = sub.add_parser("urllib")
    u.add_argument("url")
    u.add_argument("--cafile")
    m = sub.add_parser("reset-mid-request")
    m.add_argument("host")
    m.add_argument("port", type=int)
    m.add_argument("name")
    m.add_argument("cafile")
    h = sub.add_parser("hold")
    h.add_argument("ip")
    h.add_argument("port", type=int)
    h.add_argument("name")
    h.add_argument("cafile")
    h.add_argument("--count", type=int, required=True)
    h.add_argument("--hold", type=float, required=True)
    x = sub.add_parser("hostile")
    x.add_argument("ip")
    x.add_argument("port", type=int)
    x.add_argument("--hello", required=True)
    x.add_argument("--count", type=int, default=1000)
    x.add_argument("--trickle", type=float, default=0.5)
    x.add_argument("--wait", type=float, default=30)
    args = parser.parse_args()
    commands = {
        "hold": hold,
        "hostile": hostile,
        "parallel": parallel,
        "connect": connect,
        "raw": raw,
        "urllib": fetch_urllib,
        "reset-mid-request": reset_mid_request,
    }
    return commands[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
